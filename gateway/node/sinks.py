"""Where deliveries go: the agency's local inbound topic, or a spool directory.

Both take the JSON document the inbound core built (``{"event_type", "provenance", "record"}``)
a whole batch at a time, and both are made exactly-once together with the delivered-message
journal, each in the order its own recovery needs (:attr:`Sink.journal_first`):

- :class:`KafkaSink` publishes first and journals after: a crash in between leaves deliveries in
  the topic that the journal lacks, and :meth:`KafkaSink.recover` finds them there (with the
  envelope digest and time from their provenance, so the receipt is the same one).
- :class:`SpoolSink` cannot see a file once the national system has taken it, so it journals
  first: it writes each document to a hidden temp file (fsynced), the node journals the batch,
  and only then are the files renamed into view. :meth:`SpoolSink.recover` finishes the renames
  a crash interrupted and deletes temp files the journal never took (their envelopes were not
  committed, so they are read again). The national system must ignore files whose name starts
  with a dot.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Container, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from gateway.core.effects import Deliver, DeliveredEntry, Remember
from gateway.errors import StorageError, TransportError
from gateway.node.transport import Cluster, Producer, read_topic

Recovered = tuple[DeliveredEntry | None, Remember | None]
"""What a sink knows of a delivery the journal missed: its journal entry and received event."""


class Sink(Protocol):
    """Takes a batch of deliveries and makes them durable and visible to the national system."""

    journal_first: bool
    """Whether the batch is journaled before :meth:`publish` (else after it)."""

    async def stage(self, items: Sequence[Deliver]) -> None:
        """Prepare the batch without making it visible.

        :raises InfrastructureError: retriable; call again.
        """

    async def publish(self, items: Sequence[Deliver]) -> list[TransportError | None]:
        """Make the items visible; per item, None or the classified error.

        :raises InfrastructureError: retriable, for the whole batch; call again.
        """

    async def missing(self, items: Sequence[Deliver], since_ms: int) -> list[Deliver]:
        """Of items whose publishing failed ambiguously, those that did not arrive after all."""

    async def recover(self, known: Container[str], since_ms: int) -> dict[str, Recovered]:
        """Deliveries a crash left outside the journal, by message id, with what is known of
        them.

        :raises InfrastructureError: retriable.
        """


class KafkaSink:
    """Delivers to the local inbound topic, keyed by event id, with the message id in a header."""

    journal_first = False

    def __init__(self, producer: Producer, bootstrap: Cluster, topic: str) -> None:
        self._producer = producer
        self._bootstrap = bootstrap
        self.topic = topic

    async def stage(self, items: Sequence[Deliver]) -> None:
        """Nothing to prepare: the topic is the only store."""

    async def publish(self, items: Sequence[Deliver]) -> list[TransportError | None]:
        """Publish all items together and wait for every in-sync replica's acknowledgement."""
        return await self._producer.send_each(
            [
                (
                    self.topic,
                    d.document,
                    d.event_id.encode("utf-8"),
                    (
                        ("fxgw-message-id", d.message_id.encode("utf-8")),
                        ("fxgw-event-type", d.event_type.encode("utf-8")),
                        ("fxgw-sender", d.sender.encode("utf-8")),
                        ("fxgw-handling", d.handling.encode("utf-8")),
                    ),
                )
                for d in items
            ]
        )

    async def missing(self, items: Sequence[Deliver], since_ms: int) -> list[Deliver]:
        """Items not found in the topic since ``since_ms`` (so re-sending one makes no copy)."""
        found = await self.recover(set(), since_ms)
        return [d for d in items if d.message_id not in found]

    async def recover(self, known: Container[str], since_ms: int) -> dict[str, Recovered]:
        """Scan the topic from ``since_ms`` for message ids not in ``known``; each delivery
        document gives back the journal entry and the received event (handling included)."""
        records = await read_topic(self._bootstrap, self.topic, since_ms=since_ms)
        found: dict[str, Recovered] = {}
        for m in records:
            raw_id = m.header("fxgw-message-id")
            if raw_id is None:
                continue
            message_id = raw_id.decode("utf-8", errors="replace")
            if message_id not in known:
                found[message_id] = _entry_of(m.value)
        return found


def _entry_of(document: bytes) -> Recovered:
    """The journal entry and received event a delivery document implies (from its provenance:
    digest, times, sender, handling)."""
    try:
        provenance = json.loads(document)["provenance"]
        digest = bytes.fromhex(provenance["envelope_sha256"])
        received = datetime.fromisoformat(provenance["received_at"])
        expires = datetime.fromisoformat(provenance["expires_at"])
        handling = provenance["handling"]
        until = provenance["retain_until"]
        remember = Remember(
            str(provenance["event_id"]),
            str(provenance["sender"]),
            str(handling["code"]),
            str(handling["onward_transfer"]),
            _ms(datetime.fromisoformat(until)) if until else _ms(received) + _YEAR_MS,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None
    return DeliveredEntry(_ms(expires), _ms(received), digest), remember


_YEAR_MS = 365 * 24 * 3600 * 1000
"""How long a received event is remembered when its sender set no retention."""


def _ms(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)


class SpoolSink:
    """Writes each delivery as ``<message id>.json`` into a directory, exactly once."""

    journal_first = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _final(self, message_id: str) -> Path:
        return self.directory / f"{message_id}.json"

    def _temp(self, message_id: str) -> Path:
        return self.directory / f".{message_id}.json.tmp"

    async def stage(self, items: Sequence[Deliver]) -> None:
        """Write every document to its hidden temp file and fsync it.

        :raises StorageError: the disk refused.
        """
        try:
            for d in items:
                with self._temp(d.message_id).open("wb") as f:
                    f.write(d.document)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(self.directory)  # the names too, before the journal says "delivered"
        except OSError as exc:
            raise StorageError(f"{self.directory}: cannot write a delivery: {exc}") from exc

    async def publish(self, items: Sequence[Deliver]) -> list[TransportError | None]:
        """Rename the temp files into view, then fsync the folder.

        :raises StorageError: the disk refused (renaming again is harmless).
        """
        try:
            for d in items:
                temp = self._temp(d.message_id)
                if temp.exists():
                    os.replace(temp, self._final(d.message_id))
            _fsync_dir(self.directory)
        except OSError as exc:
            raise StorageError(f"{self.directory}: cannot publish a delivery: {exc}") from exc
        return [None] * len(items)

    async def missing(self, items: Sequence[Deliver], since_ms: int) -> list[Deliver]:
        """Renames never fail ambiguously."""
        return list(items)

    async def recover(self, known: Container[str], since_ms: int) -> dict[str, Recovered]:
        """Finish the renames of journaled deliveries; delete temp files never journaled.

        Returns nothing to add to the journal: a spooled delivery is journaled before it shows.
        """
        try:
            for temp in self.directory.glob(".*.json.tmp"):
                message_id = temp.name[1 : -len(".json.tmp")]
                if message_id in known:
                    os.replace(temp, self._final(message_id))
                else:
                    temp.unlink()
            _fsync_dir(self.directory)
        except OSError as exc:
            raise StorageError(f"{self.directory}: cannot recover deliveries: {exc}") from exc
        return {}

    def purge_expired(self, now: datetime) -> list[str]:
        """Delete the delivered files whose sender-set retention has ended; their message ids.

        The national system is expected to take files promptly; what it leaves here past the
        retention the sender set is removed, as the handling conditions require.
        """
        purged: list[str] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                until = json.loads(path.read_bytes())["provenance"].get("retain_until")
                ends = datetime.fromisoformat(until) if isinstance(until, str) else None
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # not ours, or being taken by the national system right now
            if ends is not None and ends <= now:
                path.unlink(missing_ok=True)
                purged.append(path.stem)
        return purged


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename, with fsyncs; keep an existing file.

    :raises StorageError: the disk refused.
    """
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"{path}: cannot write: {exc}") from exc
