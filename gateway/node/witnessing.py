"""Witnessed checkpoints on the exchange, the node's side: publish our newest checkpoint, keep
the witness book in the state folder. The decisions are in :mod:`gateway.audit.witness`; the
loops that consume the checkpoint and countersignature topics are the node's generic ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import structlog

from gateway.audit.chain import CHECKPOINT
from gateway.audit.store import AuditLog, read_entries, replace_file
from gateway.audit.witness import WitnessBook, checkpoint_of, witnessed_from
from gateway.errors import ConfigError, InfrastructureError, PeerError, StorageError
from gateway.node.transport import Producer

BOOK_FILE = "witness-book.json"
"""The witness book, in the node's state folder."""


def load_book(state_dir: Path, audit_dir: Path, book: WitnessBook) -> None:
    """Fill ``book`` from the state folder; without a readable book file, from the ``witnessed``
    entries of the audit trail (slower, but nothing witnessed is forgotten)."""
    path = state_dir / BOOK_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        book.load(path.read_bytes())
        return
    with contextlib.suppress(ConfigError):
        for entry in read_entries(audit_dir):
            if entry.kind == "witnessed":
                with contextlib.suppress(PeerError):
                    book.accept(witnessed_from(entry.data).checkpoint)


def save_book(state_dir: Path, book: WitnessBook) -> None:
    """Replace the book file atomically.

    :raises StorageError: the disk refused (retriable).
    """
    path = state_dir / BOOK_FILE
    try:
        replace_file(path, book.to_bytes())
    except OSError as exc:
        raise StorageError(f"{path}: cannot write the witness book: {exc.strerror}") from exc


async def publish_checkpoints(
    audit: AuditLog,
    producer: Producer,
    topic: str,
    agency: str,
    *,
    every_s: float,
    stop: asyncio.Event,
    counters: Counter[str],
    bound: structlog.stdlib.BoundLogger,
) -> None:
    """Every ``every_s`` seconds (the first time at once) until ``stop`` is set: sign what the
    log holds beyond its last checkpoint, and publish that newest checkpoint on ``topic`` (so
    that at most ``every_s`` seconds of the log are ever unwitnessed). A failed checkpoint or
    send is logged and tried again at the next turn; a fatal fault is raised."""
    published: int | None = None
    while not stop.is_set():
        last = audit.last
        if last is not None and last.kind != CHECKPOINT:
            try:
                audit.checkpoint()
            except InfrastructureError as exc:
                if exc.fatal:
                    raise
                bound.warning("checkpoint_failed", error=str(exc)[:512])
        entry, log_id = audit.last_checkpoint, audit.log_id
        if entry is not None and log_id is not None and entry.seq != published:
            record = checkpoint_of(agency, log_id, entry)
            [error] = await producer.send_each([(topic, record.to_bytes(), log_id.encode(), ())])
            if error is None:
                published = entry.seq
                counters["checkpoint_published"] += 1
            elif error.fatal:
                raise error
            else:
                counters["checkpoint_not_published"] += 1
                bound.warning("checkpoint_not_published", topic=topic, error=str(error)[:512])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
