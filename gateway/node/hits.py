"""Hit/no-hit queries in the node: the holder's filter, published; the other holders' filters,
read; the queries' timeouts. Wiring only: the protocol is :mod:`gateway.core.hits`.

A holder reads its holdings file (JSON lines), computes the PRF of every record's identifiers
with the key of the current epoch, builds the filter and publishes its signed shards on its own
compacted topic ``<prefix>.hitfilters.<agency>`` (tombstoning the shard keys a smaller filter no
longer has): at start, when the epoch changes and when the file changes. The PRF work (about
6,000 a second per core) runs in a worker thread, so the node's loops go on meanwhile.

Every node reads the other agencies' filter topics from the beginning, without a consumer group
(a compacted topic is state, not a stream to resume), into the core's filter book.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
import structlog

from gateway.audit.chain import Value
from gateway.core.effects import AuditEntry, Batch
from gateway.core.hits import HitsCore, epoch_of, filter_records
from gateway.core.identifiers import NotQueryable, filter_identifiers, identifier
from gateway.crypto import oprf
from gateway.crypto.filters import HoldingsFilter
from gateway.crypto.keys import SigningKey
from gateway.crypto.trust import TrustList
from gateway.errors import ConfigError, InfrastructureError
from gateway.node.config import NodeConfig
from gateway.node.loop import Executor
from gateway.node.transport import Consumer, read_topic

log = structlog.get_logger("fxgw.node")

MAX_BAD_LINES_LISTED = 20


@dataclass(slots=True)
class Holdings:
    """What a holdings file gave: the identifiers to put in the filter, and what was left out
    (counts and line numbers only: never a value)."""

    identifiers: list[bytes] = field(default_factory=list)
    records: int = 0
    unqueryable: Counter[str] = field(default_factory=Counter)
    bad_lines: list[int] = field(default_factory=list)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def read_holdings(path: Path, max_bytes: int) -> Holdings:
    """The holdings file: one JSON object a line with ``make``, ``serial_number`` and optional
    ``calibre`` and ``serial_obliterated``. A line that is not such an object is counted by its
    number; a record no query could name (obliterated, partial) is counted by reason.

    :raises ConfigError: the file is missing, unreadable or larger than ``max_bytes``.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(
                f"holdings file of {size} bytes; hits.max_holdings_bytes is {max_bytes}:"
                " raise it or split the file",
                file=str(path),
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the holdings: {exc.strerror}", file=str(path)) from exc
    out = Holdings()
    seen: dict[bytes, None] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        make = _text(obj.get("make")) if isinstance(obj, dict) else None
        serial = _text(obj.get("serial_number")) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or make is None or serial is None:
            out.bad_lines.append(number)
            continue
        out.records += 1
        calibre, obliterated = _text(obj.get("calibre")), obj.get("serial_obliterated") is True
        found = filter_identifiers(make, serial, calibre, obliterated=obliterated)
        if not found:
            why = identifier(make, serial, calibre, obliterated=obliterated)
            out.unqueryable[why.reason.value if isinstance(why, NotQueryable) else "other"] += 1
        seen.update(dict.fromkeys(found))
    out.identifiers = list(seen)
    return out


def build_shards(
    identifiers: list[bytes], key: oprf.OprfKey, fp_bound: float, max_shard_bytes: int
) -> list[bytes]:
    """The filter of the PRF values of ``identifiers`` under ``key``, as shard bytes. CPU-bound:
    run it in a worker thread."""
    outputs = [key.prf(i) for i in identifiers]
    built = HoldingsFilter.build(outputs, fp_bound, max_shard_bytes=max_shard_bytes)
    return [s.to_bytes() for s in built.shards]


async def publish_filters(
    config: NodeConfig,
    core: HitsCore,
    executor: Executor,
    signer: Callable[[], SigningKey],
    now: Callable[[], datetime],
    stop: asyncio.Event,
) -> None:
    """Publish this holder's filter at start, at each new epoch and when the holdings file
    changes (checked every ``hits.check_every_seconds``); each publication audited."""
    hits, agency = config.hits, config.agency
    assert hits.holdings is not None
    published: tuple[int, int, int] | None = None
    state: tuple[int, int, int] | None
    keys: set[bytes] | None = None
    while not stop.is_set():
        epoch = epoch_of(now(), hits.epoch_days)
        try:
            stat = os.stat(hits.holdings)
            state = (epoch, stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            log.warning("hit_holdings_unreadable", file=str(hits.holdings), error=exc.strerror)
            state = published
        if state is not None and state != published:
            try:
                holdings = await asyncio.to_thread(
                    read_holdings, hits.holdings, hits.max_holdings_bytes
                )
            except ConfigError as exc:
                log.warning("hit_holdings_unreadable", error=str(exc)[:512])
            else:
                shards = await asyncio.to_thread(
                    build_shards,
                    holdings.identifiers,
                    core.key(epoch),
                    hits.fp_bound,
                    hits.max_shard_bytes,
                )
                if keys is None:  # what the topic holds from before this start
                    keys = await executor.retry("read own filter", lambda: _keys_on(config))
                keys = await _publish(config, core, executor, signer, epoch, shards, keys)
                _audit_published(executor, agency, epoch, holdings, shards)
                await executor.retry("sync audit", executor.sync_audit)
                published = state
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=hits.check_every_seconds)


async def _keys_on(config: NodeConfig) -> set[bytes]:
    """The keys this holder's filter topic holds a live (not tombstoned) record under."""
    records = await read_topic(config.exchange.cluster, config.hitfilters_topic(config.agency))
    live: dict[bytes, bool] = {}
    for m in records:
        if m.key is not None:
            live[m.key] = bool(m.value)
    return {k for k, alive in live.items() if alive}


async def _publish(
    config: NodeConfig,
    core: HitsCore,
    executor: Executor,
    signer: Callable[[], SigningKey],
    epoch: int,
    shards: list[bytes],
    before: set[bytes],
) -> set[bytes]:
    """Publish the signed shards and tombstone the keys of shards the filter no longer has;
    the keys now on the topic."""
    records = filter_records(
        config.agency, epoch, config.hits.epoch_days, shards, signer(), core.registry
    )
    topic = config.hitfilters_topic(config.agency)
    now_keys = {k for k, _ in records}
    sends: list[tuple[str, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]] = [
        (topic, value, k, ()) for k, value in records
    ]
    sends += [(topic, None, k, ()) for k in sorted(before - now_keys)]
    await executor.retry("publish filter", lambda: executor.exchange.send_many(sends))
    return now_keys


def _audit_published(
    executor: Executor, agency: str, epoch: int, holdings: Holdings, shards: list[bytes]
) -> None:
    data: dict[str, Value] = {
        "holder": agency,
        "epoch": epoch,
        "records": holdings.records,
        "identifiers": len(holdings.identifiers),
        "shards": len(shards),
        "bytes": sum(len(s) for s in shards),
        "unqueryable": [f"{k}: {n}" for k, n in sorted(holdings.unqueryable.items())],
        "bad_lines": len(holdings.bad_lines),
        "first_bad_lines": [str(n) for n in holdings.bad_lines[:MAX_BAD_LINES_LISTED]],
    }
    warn = bool(holdings.bad_lines)
    executor.record(
        [AuditEntry("hit_filter_published", data, "hit_filter_published", "hit_published", warn)]
    )


async def read_filters(
    config: NodeConfig,
    core: HitsCore,
    executor: Executor,
    agencies: Sequence[str],
    trust: Callable[[], TrustList],
    now: Callable[[], datetime],
    stop: asyncio.Event,
) -> None:
    """Read the filter topics of ``agencies`` from the beginning, for as long as the node runs,
    into ``core``'s filter book (no consumer group: nothing is committed)."""
    consumer = Consumer(
        [config.hitfilters_topic(a) for a in agencies],
        bootstrap_servers=config.exchange.cluster,
        group_id=None,
        client_id=f"fxgw-{config.agency}-hitfilters",
    )
    try:
        await executor.retry("start filter reader", consumer.start)
        while not stop.is_set():
            messages = await executor.retry(
                "poll filters", lambda: consumer.poll(timeout_ms=300, max_records=64)
            )
            if not messages:
                continue
            at, listed, limits = now(), trust(), executor.limits
            await executor.execute(
                Batch.of(core.take_filter(m.value, listed, at, limits) for m in messages)
            )
    finally:
        with contextlib.suppress(InfrastructureError):
            await consumer.stop()


async def expire_queries(
    core: HitsCore, executor: Executor, now: Callable[[], datetime], stop: asyncio.Event
) -> None:
    """Deliver the results of queries whose time is up, every second; at stop, those of every
    query in flight (their blinding scalars do not outlive the process)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        batch = Batch.of([core.expire(now())])
        if batch.deliveries or batch.audit:
            await executor.execute(batch)
    batch = Batch.of([core.forget_all(now())])
    if batch.deliveries:
        await executor.execute(batch)
