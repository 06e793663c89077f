"""Trace cases on the node: follow released and delivered trace events, keep the cases durable,
run the clock, and hand the TraceUpdates the core generates to the outbound path.

The rules are in :mod:`gateway.core.tracing`; this module is wiring. :meth:`Tracing.follow` runs
first in every batch the executor executes (:class:`~gateway.node.loop.Executor`): it feeds the
batch's observed events to the tracker, adds each transition's audit entry to the batch, and
releases the events generated through :meth:`OutboundCore.take` exactly as the national system's
events (their envelopes, audit entries and quarantines join the same batch). The executor calls
:meth:`Tracing.save` once the batch's audit entries are durable, before its deliveries are
journaled, its envelopes sent and its offsets committed. If the node stops in between, the batch
is read again: what the tracker has seen (by event id) moves nothing twice, and a generated event
is made again with the same id, so its recipient drops the copy; a crash between the audit sync
and the save can audit a transition twice, never lose one.

Store: SQLite, ``<state>/trace.sqlite`` (write-ahead log, so ``fxgw trace`` reads while the
node runs; ``synchronous = FULL``). Not the journals' database (:mod:`gateway.node.journals`):
those hold expiring ids, written and synced with each batch's deliveries, while a case lives
until it is answered or withdrawn, is changed by outbound batches and by the clock too, and is
read by the CLI by request reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import orjson

from gateway.audit.chain import Value
from gateway.core.effects import AuditEntry, Batch, Observed
from gateway.core.outbound import NoCommonVersion, OutboundCore
from gateway.core.tracing import (
    TRACE_TYPES,
    UPDATE,
    Case,
    Result,
    Tracker,
    Transition,
    case_from_json,
    case_to_json,
)
from gateway.errors import StorageError
from gateway.node.config import NodeConfig
from gateway.node.loop import Executor
from gateway.node.metrics import Metrics

TRACE_FILE = "trace.sqlite"
KEEP_CLOSED = timedelta(days=30)
"""How long a closed case stays in the node's memory (a late event for it still matches)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    request_id TEXT NOT NULL,
    traced TEXT NOT NULL,
    reference TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (request_id, traced)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cases_reference ON cases (reference);
"""
_PUT = "INSERT OR REPLACE INTO cases VALUES (?, ?, ?, ?, ?, ?)"
_ALL = "SELECT body FROM cases"
_LIVE = f"{_ALL} WHERE state NOT IN ('answered', 'withdrawn') OR updated_ms >= ?"
_FIND = f"{_ALL} WHERE request_id = ? OR reference = ?"


def _ms(moment: datetime | None) -> int:
    return 0 if moment is None else int(moment.timestamp() * 1000)


class TraceStore:
    """The cases of one node in SQLite."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        """Open (or, unless ``readonly``, create) ``<state_dir>/trace.sqlite``.

        :raises StorageError: it cannot be opened (or, ``readonly``, does not exist yet).
        """
        self.path = state_dir / TRACE_FILE
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                state_dir.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None)
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.path}: cannot open the trace cases: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def save(self, cases: Iterable[Case]) -> None:
        """Write ``cases`` in one commit.

        :raises StorageError: the disk refused (retriable: nothing was written).
        """
        rows = [
            (
                c.request_id,
                c.traced,
                c.reference,
                c.state,
                _ms(c.updated_at),
                orjson.dumps(case_to_json(c)),
            )
            for c in cases
        ]
        try:
            with contextlib.closing(self._db.cursor()) as cursor:
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    cursor.executemany(_PUT, rows)
                    cursor.execute("COMMIT")
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot save trace cases: {exc}") from exc

    def _read(self, query: str, values: tuple[object, ...] = ()) -> Iterator[Case]:
        try:
            rows = self._db.execute(query, values).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot read trace cases: {exc}") from exc
        for (body,) in rows:
            yield case_from_json(orjson.loads(body))

    def live(self, since: datetime) -> list[Case]:
        """Open cases, and closed ones changed since ``since``."""
        return list(self._read(_LIVE, (_ms(since),)))

    def all(self) -> list[Case]:
        """Every case, oldest request first."""
        return sorted(self._read(_ALL), key=lambda c: (c.requested_at, c.request_id, c.traced))

    def find(self, key: str) -> list[Case]:
        """The cases of a request, by its event id or its reference."""
        return list(self._read(_FIND, (key, key)))


def _entry(t: Transition) -> AuditEntry:
    data: dict[str, Value] = dict(t.audit_data())
    if t.matched:
        return AuditEntry("trace_transition", data, "trace_transition", "trace_transitions")
    return AuditEntry("trace_unmatched", data, "trace_unmatched", "trace_unmatched", warn=True)


def _skipped(event: Mapping[str, object]) -> AuditEntry:
    """A generated TraceUpdate not sent: its recipient cannot read one."""
    record = cast("Mapping[str, object]", event["record"])
    data: dict[str, Value] = {
        "request_event_id": str(record["request_event_id"]),
        "event_id": str(record["event_id"]),
        "status": str(record["status"]),
        "recipient": cast("list[str]", event["recipients"])[0],
        "why": "the recipient reads no contract version with fxgw.TraceUpdate",
    }
    return AuditEntry("trace_update_skipped", data, "trace_update_skipped", "trace_updates_skipped")


class Tracing:
    """The node's trace cases: the tracker, its store, and its clock."""

    def __init__(
        self,
        config: NodeConfig,
        outbound: OutboundCore,
        metrics: Metrics,
        now: Callable[[], datetime],
    ) -> None:
        self._outbound = outbound
        self._metrics = metrics
        self._now = now
        self._every_s = config.tracing.check_every_seconds
        self.tracker = Tracker(config.agency, config.tracing.deadlines, self._country)
        self._store: TraceStore | None = None
        self._changed: set[tuple[str, str]] = set()
        """Cases changed since the last save."""

    def _country(self, agency: str) -> str:
        known = self._outbound.trust.agency(agency)
        return known.country if known is not None else agency[:2]

    def _reads_updates(self, event: Mapping[str, object]) -> bool:
        """Whether this node has fxgw.TraceUpdate and the event's recipient reads a contract
        version with it (a peer on 1.0 or 1.1 is never sent one)."""
        core = self._outbound
        (recipient,) = cast("list[str]", event["recipients"])
        agency = core.trust.agency(recipient)
        if agency is None or UPDATE not in core.registry.event_types:
            return False
        try:
            core.version_for(agency, UPDATE)
        except NoCommonVersion:
            return False
        return True

    def open(self, state_dir: Path) -> None:
        """Open the store and load the live cases.

        :raises StorageError: the store cannot be opened or read.
        """
        self._store = TraceStore(state_dir)
        for case in self._store.live(self._now() - KEEP_CLOSED):
            self.tracker.cases[case.key] = case
        self._count()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def follow(self, batch: Batch) -> None:
        """Follow the trace events of ``batch`` (before it is executed): add the transitions'
        audit entries and the generated events' effects to it; :meth:`save` makes the cases
        changed durable."""
        observed = [o for o in batch.observed if o.event_type in TRACE_TYPES]
        if observed:
            self._apply(batch, self._observe(observed))

    def _observe(self, observed: Iterable[Observed]) -> Result:
        result, now = Result(), self._now()
        for o in observed:
            seen = self.tracker.released if o.released else self.tracker.delivered
            result += seen(o.event_type, o.record, o.peer, now)
        return result

    def _apply(self, batch: Batch, result: Result) -> None:
        """Add ``result`` to ``batch``: audit entries, and the effects of releasing the events
        it generated (whose own releases move the cases further)."""
        while result.transitions or result.send:
            batch.audit.extend(_entry(t) for t in result.transitions)
            self._changed.update(c.key for c in result.cases)
            now = self._now()
            sendable = [e for e in result.send if self._reads_updates(e)]
            batch.audit.extend(_skipped(e) for e in result.send if e not in sendable)
            made = [self._outbound.take(orjson.dumps(e), now) for e in sendable]
            for effects in made:
                batch.add(effects)
            result = self._observe(o for effects in made for o in effects.observed)

    async def save(self) -> None:
        """Commit the cases changed since the last save, as they are now (a retried save never
        writes back an older state).

        :raises StorageError: the disk refused (retriable: nothing was written).
        """
        if not self._changed:
            return
        assert self._store is not None
        keys = set(self._changed)
        self._store.save(self.tracker.cases[key] for key in keys)
        self._changed -= keys
        self._count()

    def _count(self) -> None:
        counts: Counter[tuple[str, str]] = Counter(
            (c.role, c.state) for c in self.tracker.cases.values()
        )
        self._metrics.trace_cases(counts)

    async def run(self, stop: asyncio.Event, executor: Executor) -> None:
        """Every ``tracing.check_every_seconds``: mark what is overdue, send the reminders due
        (through ``executor``, which saves the cases after the batch's audit entries)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._every_s)
            if stop.is_set():
                return
            batch = Batch()
            self._apply(batch, self.tracker.due(self._now()))
            if batch.audit:
                await executor.execute(batch)
