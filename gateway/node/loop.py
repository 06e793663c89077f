"""One generic loop per input: poll a batch -> hand it to a core -> execute the effects -> make
them durable -> commit.

The cores decide; this module only executes, in an order that keeps every guarantee:

1. audit entries are appended (and logged and counted, with the same metadata);
2. deliveries are staged (spool: hidden temp files);
3. the audit trail is fsynced once for the batch (group commit; the trail may run ahead of the
   effects after a crash, never behind);
4. deliveries are journaled and published, in the order the sink's recovery needs;
5. envelopes, receipts and quarantine records are produced all together and every
   acknowledgement awaited;
6. the received-events journal is synced; then the caller commits the batch's offsets.

Failures are classified once (:class:`~gateway.errors.InfrastructureError` flags): a retriable
fault is retried with back-off and rate-limited log lines, repeating only the step that failed
(so a failed fsync never turns into a second receipt or a false duplicate); a record the cluster
refuses is quarantined and the stream goes on; a fatal fault of our own side is raised, to stop
the node with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import structlog

from gateway.audit.chain import Value
from gateway.audit.store import AuditLog
from gateway.core.effects import (
    AuditEntry,
    Batch,
    Deliver,
    DeliveredEntry,
    Effects,
    Envelope,
    Headers,
    Limits,
)
from gateway.core.outbound import ReceivedEvent
from gateway.errors import (
    CommitRefused,
    InfrastructureError,
    RecordRefused,
    StorageError,
    TopicRefused,
    TransportError,
)
from gateway.node.journals import DeliveredJournal, ReceivedEvents
from gateway.node.metrics import Metrics
from gateway.node.parked import Parked, ParkedRecord
from gateway.node.sinks import Sink
from gateway.node.transport import Producer
from gateway.types import AgencyId

T = TypeVar("T")


class Follower(Protocol):
    """What follows each batch beyond the pipeline: :meth:`follow` adds to the batch before it
    is executed (audit entries, envelopes), :meth:`save` makes what it changed durable once the
    batch's audit entries are (so a crash can repeat an entry, never lose one)."""

    def follow(self, batch: Batch) -> None: ...

    async def save(self) -> None:
        """:raises StorageError: the disk refused (retriable)."""


log = structlog.get_logger("fxgw.node")


class Retry:
    """Back-off for retriable infrastructure faults, with at most one log line per fault kind
    every ``log_every`` seconds (the count of retries in between is logged with it)."""

    def __init__(
        self, stop: asyncio.Event, counters: Counter[str], *, log_every: float = 10.0
    ) -> None:
        self._stop = stop
        self._counters = counters
        self._log_every = log_every
        self._last_logged: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    async def __call__(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` until it succeeds.

        :raises InfrastructureError: a fatal or non-retriable fault (our side is broken), or
            any fault once stopping has begun (the batch stays uncommitted and is redone).
        """
        delay = 0.1
        while True:
            try:
                return await action()
            except InfrastructureError as exc:
                if exc.fatal or not exc.retriable or self._stop.is_set():
                    raise
                self._counters["retries"] += 1
                self._note(what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def backoff(self, what: str, error: InfrastructureError, attempt: int) -> None:
        """Wait before the next attempt of a step that failed ``attempt`` times already (0.1 s,
        doubling to 5 s), logging as :meth:`__call__` does.

        :raises InfrastructureError: ``error``, if it is fatal or stopping has begun.
        """
        if error.fatal or self._stop.is_set():
            raise error
        delay = min(0.1 * 2**attempt, 5.0)
        self._counters["retries"] += 1
        self._note(what, error, delay)
        await asyncio.sleep(delay)

    def _note(self, what: str, exc: InfrastructureError, delay: float) -> None:
        key = f"{what}:{type(exc).__name__}"
        now = time.monotonic()
        if now - self._last_logged.get(key, -self._log_every) < self._log_every:
            self._quiet[key] += 1
            return
        self._last_logged[key] = now
        log.warning(
            "retrying",
            what=what,
            error=str(exc)[:512],
            delay_s=round(delay, 2),
            suppressed=self._quiet.pop(key, 0),
        )


ROUTINE_LOG_EVERY_S = 10.0
"""At most one log line per kind of everyday outcome in this many seconds (with its count)."""


@dataclass(slots=True)
class Topics:
    """Where effects go."""

    agency: AgencyId
    prefix: str
    quarantine: str

    def inbox(self, agency: str) -> str:
        return f"{self.prefix}.inbox.{agency}"

    def receipts(self, agency: str) -> str:
        return f"{self.prefix}.receipts.{agency}"


@dataclass(slots=True)
class Executor:
    """Executes the effects of a batch and makes them durable."""

    audit: AuditLog
    exchange: Producer
    local: Producer
    topics: Topics
    limits: Limits
    retry: Retry
    counters: Counter[str]
    now_ms: Callable[[], int]
    sink: Sink | None = None
    delivered: DeliveredJournal | None = None
    received: ReceivedEvents | None = None
    parked: Parked | None = None
    refuse: Callable[[Deliver, str], Effects] | None = None
    """What answers a delivery the local cluster refused (the inbound core decides)."""
    bound: structlog.stdlib.BoundLogger = field(default_factory=lambda: log)
    metrics: Metrics | None = None
    """Fed with every decision recorded, the audit fsync times and delivery latencies."""
    audit_failing: Callable[[bool], None] = lambda failing: None
    """Told after each audit fsync whether it failed (for the readiness check)."""
    follower: Follower | None = None
    """Follows every batch beyond the pipeline (trace cases, :mod:`gateway.node.tracing`)."""
    clock: Callable[[], float] = time.monotonic
    routine_every_s: float = ROUTINE_LOG_EVERY_S
    _routine: Counter[str] = field(default_factory=Counter)
    """Everyday outcomes not yet logged, by log event."""
    _routine_logged: dict[str, float] = field(default_factory=dict)
    """When each kind of everyday outcome was last logged (clock seconds)."""

    async def execute(self, batch: Batch) -> None:
        """Execute ``batch`` until every effect is durable (or raise a fatal error)."""
        if self.follower is not None:
            self.follower.follow(batch)
        self.record(batch.audit)
        started_ms = self.now_ms()
        if batch.deliveries:
            await self.retry("stage deliveries", partial(self._stage, batch.deliveries))
        await self.retry("sync audit", self.sync_audit)
        if self.follower is not None:  # after its audit entries, before the journal
            await self.retry("save followed state", self.follower.save)
        if batch.deliveries:
            await self._deliver(batch, started_ms)
        await self._produce(batch)
        if batch.late:
            await self.retry("park records", self._sync_parked)
            await self.retry("sync audit", self.sync_audit)

    def record(self, entries: Sequence[AuditEntry]) -> None:
        """Count, log and audit each decision, with the same metadata. Everyday outcomes are
        logged as a count per kind: the first at once, then at most one line per
        :attr:`routine_every_s` with the count since the last (each one at debug level)."""
        now = self.clock()
        for entry in entries:
            self.counters[entry.counter] += 1
            for name in entry.counts:
                self.counters[name] += 1
            fields = entry.data if entry.log_data is None else entry.log_data
            if entry.routine:
                self._routine[entry.log_event] += 1
                self.bound.debug(entry.log_event, **fields)  # a no-op unless at debug level
            else:
                (self.bound.warning if entry.warn else self.bound.info)(entry.log_event, **fields)
            self.audit.append(entry.kind, entry.data)
        if self.metrics is not None:
            self.metrics.observe(entries)
        for event in [e for e in self._routine if self._routine_due(e, now)]:
            self.bound.info(event, count=self._routine.pop(event))
            self._routine_logged[event] = now

    def flush_routine(self) -> None:
        """Log the everyday outcomes counted since their last line (at shutdown)."""
        for event, count in self._routine.items():
            self.bound.info(event, count=count)
        self._routine.clear()

    def _routine_due(self, event: str, now: float) -> bool:
        last = self._routine_logged.get(event)
        return last is None or now - last >= self.routine_every_s

    async def _stage(self, items: Sequence[Deliver]) -> None:
        assert self.sink is not None
        await self.sink.stage([d for d in items if d.to_sink])

    async def sync_audit(self) -> None:
        """Make the audit trail durable."""
        started = time.perf_counter()
        try:
            self.audit.sync()
        except BaseException:
            self.audit_failing(True)
            raise
        self.audit_failing(False)
        if self.metrics is not None:
            self.metrics.audit_fsync.observe(time.perf_counter() - started)

    async def _sync_journals(self) -> None:
        assert self.delivered is not None
        self.delivered.sync()  # one commit for the delivered ids and the received events

    async def _journal(self, items: Sequence[Deliver]) -> None:
        """Journal the deliveries: their message ids and, in the same commit, the received
        events (whose handling limits forwarding, so they must never be lost to a crash once
        the message counts as delivered)."""
        assert self.delivered is not None and self.received is not None
        for d in items:
            e, r = d.entry, d.remember
            self.delivered.remember(d.message_id, e.expires_ms, e.recorded_ms, e.digest)
            self.received.remember(
                r.event_id, ReceivedEvent(r.sender, r.code, r.onward_transfer), r.until_ms
            )
        await self.retry("sync journal", self._sync_journals)

    async def _deliver(self, batch: Batch, started_ms: int) -> None:
        sink = self.sink
        assert sink is not None
        items = list(batch.deliveries)
        if sink.journal_first:
            await self._journal(items)
        pending, attempt, refused = [d for d in items if d.to_sink], 0, []
        since = started_ms - 60_000
        while pending:
            results = await self.retry("deliver", partial(sink.publish, pending))
            again: list[Deliver] = []
            first: TransportError | None = None
            for d, result in zip(pending, results, strict=True):
                if result is None:
                    continue
                if isinstance(result, RecordRefused):
                    refused.append((d, result))
                elif result.fatal or not result.retriable:
                    raise result
                else:
                    again.append(d)
                    first = first or result
            pending = []
            if first is not None:
                await self.retry.backoff("deliver", first, attempt)
                attempt += 1
                # an unanswered send may still have arrived: re-send only what did not
                pending = await self.retry("check deliveries", partial(sink.missing, again, since))
        gone = {d.message_id for d, _ in refused}
        for d, error in refused:
            self._refused_delivery(batch, d, error)
        if not sink.journal_first:
            await self._journal([d for d in items if d.message_id not in gone])
        if self.metrics is not None:
            self.metrics.delivered_at(
                d.created_ms for d in items if d.created_ms and d.message_id not in gone
            )

    def _refused_delivery(self, batch: Batch, d: Deliver, error: TransportError) -> None:
        """The local cluster refused one delivery as a record: the core decides what answers it
        (quarantine, a REJECTED receipt in place of the DELIVERED one); it is not journaled."""
        assert self.refuse is not None
        effects = self.refuse(d, str(error))
        batch.receipts[:] = [r for r in batch.receipts if r.message_id != d.message_id]
        batch.receipts.extend(effects.receipts)
        batch.quarantines.extend(effects.quarantines)
        self.record(effects.audit)
        batch.late = True

    async def _produce(self, batch: Batch) -> None:
        exchange = [
            Outgoing(self.topics.inbox(e.recipient), e.data, e.message_id, e.expires_ms, _ids(e))
            for e in batch.envelopes
        ]
        exchange += [
            Outgoing(self.topics.receipts(r.sender), r.data, r.message_id, r.expires_ms, ())
            for r in batch.receipts
        ]
        local = [
            Outgoing(self.topics.quarantine, q.value, None, 0, q.headers) for q in batch.quarantines
        ]
        attempt = 0
        while exchange or local:
            sent = await asyncio.gather(
                self.exchange.send_each([o.record for o in exchange]),
                self.local.send_each([o.record for o in local]),
            )
            exchange = self._unsent(batch, exchange, sent[0], park=True)
            local = self._unsent(batch, local, sent[1], park=False)
            failed = [r for r in (*sent[0], *sent[1]) if _retriable(r)]
            if failed and failed[0] is not None:
                await self.retry.backoff("produce", failed[0], attempt)
                attempt += 1

    def _unsent(
        self,
        batch: Batch,
        items: list[Outgoing],
        results: list[TransportError | None],
        *,
        park: bool,
    ) -> list[Outgoing]:
        """The records to send again; a refused topic's records are parked (exchange side), a
        refused record noted, and a fault that is neither retriable nor tied to a record or a
        topic raised (our side is broken)."""
        again: list[Outgoing] = []
        for item, result in zip(items, results, strict=True):
            if result is None:
                continue
            if result.fatal:
                raise result
            if park and isinstance(result, TopicRefused):
                try:
                    self._park(batch, item, result)
                except StorageError:
                    again.append(item)  # the disk refused: parked on a later pass
            elif isinstance(result, RecordRefused):
                self._refused_record(batch, item, result)
            elif not result.retriable:
                raise result
            else:
                again.append(item)
        return again

    def _park(self, batch: Batch, item: Outgoing, error: TransportError) -> None:
        """Keep a record for a topic that refuses it now; a task offers it again later.

        :raises StorageError: the record could not be written (nothing was recorded).
        """
        assert item.message_id is not None
        data: dict[str, Value] = {
            "topic": item.topic,
            "message_id": item.message_id,
            "reason": str(error)[:512],
        }
        expired = item.expires_ms <= self.now_ms()
        fits = (
            not expired
            and self.parked is not None
            and self.parked.park(
                item.topic,
                item.message_id,
                item.expires_ms,
                item.record[2],
                item.value,
                item.headers,
            )
        )
        kind = "parked" if fits else "park_dropped"
        self.record([AuditEntry(kind, data, kind, kind, warn=True)])
        batch.late = True

    def _refused_record(self, batch: Batch, item: Outgoing, error: TransportError) -> None:
        """A record the cluster refused outright (the cores keep within the size limits, so
        this is a misconfigured limit); audited, and shown as not sent."""
        data: dict[str, Value] = {
            "topic": item.topic,
            "message_id": item.message_id,
            "bytes": len(item.value),
            "error": str(error)[:512],
        }
        self.record(
            [AuditEntry("record_refused", data, "record_refused", "refused_by_cluster", True)]
        )
        batch.late = True

    async def send_dropping(self, records: list[tuple[str, bytes, bytes | None, Headers]]) -> None:
        """Publish records nothing depends on (countersignatures): retriable faults are retried,
        a record or topic refused is logged, counted as ``record_dropped`` and dropped.

        :raises InfrastructureError: a fatal fault.
        """
        attempt = 0
        while records:
            results = await self.exchange.send_each(records)
            again, first = [], None
            for record, result in zip(records, results, strict=True):
                if result is None:
                    continue
                if result.fatal:
                    raise result
                if result.retriable and not isinstance(result, RecordRefused | TopicRefused):
                    again.append(record)
                    first = first or result
                    continue
                self.counters["record_dropped"] += 1
                self.bound.warning("record_dropped", topic=record[0], error=str(result)[:512])
            records = again
            if first is not None:
                await self.retry.backoff("send", first, attempt)
                attempt += 1

    async def _sync_parked(self) -> None:
        if self.parked is not None:
            self.parked.sync()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce, with what parking it needs."""

    topic: str
    value: bytes
    message_id: str | None
    expires_ms: int
    headers: Headers

    @property
    def record(self) -> tuple[str, bytes, bytes | None, Headers]:
        """As the producer takes it: topic, value, key, headers."""
        key = self.message_id.encode() if self.message_id is not None else None
        return (self.topic, self.value, key, self.headers)


def _ids(e: Envelope) -> Headers:
    return (("fxgw-sender", e.sender.encode()), ("fxgw-message-id", e.message_id.encode()))


def _retriable(result: TransportError | None) -> bool:
    return result is not None and result.retriable and not result.fatal


async def offer_parked(executor: Executor, stop: asyncio.Event, *, every_s: float = 1.0) -> None:
    """Offer parked records to their topics again, oldest first, with back-off per topic (up
    to a minute), until the topic takes them or they expire; each outcome is audited."""
    parked = executor.parked
    assert parked is not None
    due: dict[str, tuple[float, float]] = {}
    """Per topic: when to try next (monotonic seconds), and the delay after that."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        for topic in parked.topics():
            next_try, delay = due.get(topic, (0.0, 1.0))
            if time.monotonic() < next_try:
                continue
            records = parked.oldest(topic, 200)
            now_ms = executor.now_ms()
            live = [r for r in records if r.expires_ms > now_ms]
            entries = [
                _parked_entry("parked_expired", r) for r in records if r.expires_ms <= now_ms
            ]
            results = await executor.exchange.send_each(
                [(r.topic, r.value, r.key, r.headers) for r in live], probe=True
            )
            refused = False
            for r, result in zip(live, results, strict=True):
                if result is not None and result.fatal:
                    raise result
                if result is None:
                    entries.append(_parked_entry("unparked", r))
                elif isinstance(result, RecordRefused):
                    entries.append(_parked_entry("park_dropped", r))
                else:
                    refused = True
                    continue
                parked.remove(r)
            for r in records:
                if r.expires_ms <= now_ms:
                    parked.remove(r)
            if entries:
                executor.record(entries)
                await executor.retry("sync audit", executor.sync_audit)
            due[topic] = (time.monotonic() + delay, min(delay * 2, 60.0)) if refused else (0, 1)


def _parked_entry(kind: str, r: ParkedRecord) -> AuditEntry:
    data: dict[str, Value] = {"topic": r.topic, "message_id": r.message_id}
    return AuditEntry(kind, data, kind, kind, warn=kind != "unparked")


class Pending:
    """The delivered-message journal plus the deliveries of the batch in hand, so that a second
    copy of a message within one batch is a duplicate too."""

    def __init__(self, journal: DeliveredJournal) -> None:
        self._journal = journal
        self._batch: dict[str, DeliveredEntry] = {}

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._batch or message_id in self._journal

    def get(self, message_id: str) -> DeliveredEntry | None:
        return self._batch.get(message_id) or self._journal.get(message_id)

    def clear(self) -> None:
        """Start a new batch (the last one is in the journal now)."""
        self._batch.clear()

    def add(self, effects: Effects) -> Effects:
        for d in effects.deliveries:
            self._batch[d.message_id] = d.entry
        return effects


async def unless_stopped(stop: asyncio.Event, work: Coroutine[object, object, object]) -> bool:
    """Await ``work`` unless ``stop`` is set first (then ``work`` is cancelled); whether it
    finished."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, InfrastructureError):
                await task
    if task.cancelled():
        return False
    task.result()
    return True


async def committed(
    name: str, committing: asyncio.Task[None] | None, bound: structlog.stdlib.BoundLogger
) -> None:
    """Wait for the offset commit under way in loop ``name``, if any.

    :raises InfrastructureError: a fault of our own side (the node stops).
    """
    if committing is None:
        return
    try:
        await committing
    except CommitRefused as exc:
        # the partitions moved: their new owner reads these records again and answers them
        # from the journals; this node goes on with what it has
        bound.warning("commit_refused", loop=name, error=str(exc)[:512])
