"""The node: wiring of config, cores, Kafka, sinks, journals and loops; no business rule.

Each input (the outbound topic, the outbound spool folder, the inbox, the receipts topic, the
other agencies' checkpoints and the countersignatures of ours) has one generic loop: poll a
batch -> hand each record to its core (:mod:`gateway.core`, :mod:`gateway.audit.witness`) ->
execute the effects and make them durable (:class:`~gateway.node.loop.Executor`) -> commit the
offsets. Nothing is committed before its effects are durable. Records for a topic that refuses
them are parked and offered again by their own task; our checkpoints are published by theirs
(:mod:`gateway.node.witnessing`); hot reload and housekeeping are in
:mod:`gateway.node.watch`; the files a node loads, in :mod:`gateway.node.files`; metrics,
health and expiry warnings in :mod:`gateway.node.metrics` and :mod:`gateway.node.health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from functools import partial

import orjson
import structlog

from gateway.audit.store import AuditLog
from gateway.audit.witness import WitnessBook, WitnessCore
from gateway.contract.schemas import SchemaRegistry
from gateway.core.effects import Batch, DeliveredEntry, Effects, unreadable
from gateway.core.hits import EVALUATION_TYPE, QUERY_TYPE, Allowance, HitsCore, HitSettings
from gateway.core.inbound import InboundCore
from gateway.core.outbound import OutboundCore, PlainEvent, ReceivedEvent
from gateway.core.receipts import ReceiptsCore
from gateway.crypto.envelope import DataKeyRing
from gateway.crypto.keys import load_oprf_seed
from gateway.errors import ConfigError, InfrastructureError
from gateway.node.config import NodeConfig, exchange_topic_specs, topic_spec
from gateway.node.files import load_node_files, spool_batches
from gateway.node.health import MetricsServer, Readiness
from gateway.node.hits import expire_queries, publish_filters, read_filters
from gateway.node.journals import DeliveredJournal, Journals
from gateway.node.loop import (
    Executor,
    Pending,
    Retry,
    Topics,
    committed,
    offer_parked,
    unless_stopped,
)
from gateway.node.metrics import Metrics, expiries, warn_expiring
from gateway.node.parked import Parked
from gateway.node.sinks import KafkaSink, Sink, SpoolSink
from gateway.node.tracing import Tracing
from gateway.node.transport import (
    Cluster,
    ClusterProbe,
    Consumer,
    Message,
    Producer,
    TopicSpec,
    prepare_topics,
)
from gateway.node.watch import Watching
from gateway.node.witnessing import load_book, publish_checkpoints, save_book

log = structlog.get_logger("fxgw.node")


def _close_quietly(journals: Journals) -> None:
    """Close the journals at shutdown; a disk that refuses now loses nothing (what was not synced
    was not committed, and is read again)."""
    with contextlib.suppress(InfrastructureError):
        journals.close()


def _now() -> datetime:
    return datetime.now(UTC)


async def _async(function: Callable[..., None], *args: object) -> None:
    """``function(*args)`` as an awaitable, for :class:`Retry`."""
    function(*args)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Node(Watching):
    """One agency's gateway node: wiring of cores, Kafka, sinks, journals and loops."""

    probe_every_s = 2.0
    """How often the metrics refresh and, while the metrics port is served, Kafka is probed."""
    expiry_check_every_s = 3600.0
    """How often expiry warnings are logged (as well as at start)."""

    def __init__(self, config: NodeConfig, *, now: Callable[[], datetime] = _now) -> None:
        self.config = config
        self._now = now
        loaded = load_node_files(config, now())
        self.registry = loaded.registry
        self.limits = config.limits.sizes
        self.outbound = OutboundCore(
            keys=loaded.keys,
            registry=loaded.registry,
            policy=loaded.policy,
            trust=loaded.trust,
            routes=config.routes_in_force,
            ttl=config.envelope.ttl,
            keyring=DataKeyRing(
                config.envelope.data_key_max_age, config.envelope.data_key_max_uses
            ),
            pseudonymiser=loaded.pseudonymiser,
            limits=self.limits,
            contract=loaded.contract,
        )
        self.inbound = InboundCore(
            keys=loaded.keys,
            registry=loaded.registry,
            trust=loaded.trust,
            max_skew=config.envelope.max_skew,
            max_lifetime=config.envelope.max_lifetime,
            contract=loaded.contract,
        )
        self.receipts = ReceiptsCore(
            config.agency, loaded.registry, loaded.trust, self.limits, loaded.contract
        )
        self.witness = WitnessCore(
            config.agency,
            lambda: self.outbound.trust,
            lambda: self.outbound.keys.signing,
            witnessed=self._witnessed,
            per_minute=config.witness.max_per_minute,
            book=WitnessBook(keep=config.witness.keep),
        )
        self.hits = self._hits_core(loaded.registry)
        self.outbound.takes = {QUERY_TYPE: self.hits.query}
        self.inbound.takes = {EVALUATION_TYPE: self.hits.take}
        self.counters: Counter[str] = Counter()
        self.ready = asyncio.Event()
        self._audit_log: AuditLog | None = None
        self._log = log.bind(agency=config.agency)
        self.metrics = Metrics(
            self.counters,
            lambda: self.outbound.trust.agencies,
            receipt_timeout=config.exchange.receipt_timeout,
        )
        self.readiness = Readiness(now=now, trust_expires_at=lambda: self.outbound.trust.expires_at)
        self.tracing = Tracing(config, self.outbound, self.metrics, now)
        self._server: MetricsServer | None = None

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics``, ``/healthz`` and ``/readyz`` are served on while the node runs
        (the one the system picked, when the config says 0); None when not served."""
        return self._server.port if self._server is not None else None

    # --- wiring ----------------------------------------------------------------------------------

    def _hits_core(self, registry: SchemaRegistry) -> HitsCore:
        """Hit/no-hit queries (:mod:`gateway.node.hits`): every node queries; one with
        holdings and a seed answers. Its requests and answers go out as plain events through
        the outbound core.

        :raises ConfigError: the seed file is missing or not an OPRF seed.
        """
        c, h = self.config, self.config.hits
        own = self.outbound.trust.agency(c.agency)

        def release(event: PlainEvent, now: datetime) -> Effects:
            form = {
                "event_type": event.event_type,
                "record": registry.to_json(event.event_type, event.record),
                "recipients": list(event.recipients),
            }
            return self.outbound.take_event(event, orjson.dumps(form), now)

        return HitsCore(
            c.agency,
            own.country if own is not None else "",
            registry,
            release,
            HitSettings(h.epoch_days, h.grace, h.query_timeout, h.max_pending),
            seed=load_oprf_seed(h.seed).secret if h.seed is not None else None,
            allowance=Allowance(h.answer_per_minute, h.answer_burst),
        )

    def _witnessed(self) -> frozenset[str]:
        """The agencies whose checkpoints this node witnesses (never itself)."""
        chosen = self.config.witness.agencies
        listed = self.outbound.trust.agencies if chosen is None else chosen
        return frozenset(listed) - {self.config.agency}

    def _exchange_topics(self) -> list[TopicSpec]:
        """Our inbox, receipts, checkpoints and witness topics; with ``provision_inboxes`` (dev
        and test clusters), every listed agency's too. In production the federation operator
        creates them."""
        c = self.config
        agencies = (
            sorted(self.outbound.trust.agencies) if c.exchange.provision_inboxes else [c.agency]
        )
        return exchange_topic_specs(c, agencies)

    def _local_topics(self) -> list[TopicSpec]:
        c = self.config
        names = [c.local.quarantine_topic] + [
            t for t in (c.local.outbound_topic, c.local.inbound_topic) if t
        ]
        return [topic_spec(n, c.local.topics) for n in names]

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then finish the batch in hand and close.

        :raises InfrastructureError: Kafka or the disk failed at start-up, or a fault of our own
            side (refused credentials, lost audit storage) that retrying cannot mend.
        """
        async with contextlib.AsyncExitStack() as stack:
            self._check_expiry(warn=True)
            if self.config.metrics_port is not None:
                server = MetricsServer(
                    self.metrics,
                    self.readiness,
                    asyncio.get_running_loop(),
                    address=self.config.metrics_address,
                    port=self.config.metrics_port,
                )
                server.start()
                self._server = server
                stack.callback(self._close_server)
                self._log.info(
                    "metrics_serving", address=self.config.metrics_address, port=server.port
                )
            sink, journal = await self._open(stack, stop)
            await self._executor.retry(
                "recover deliveries", partial(self._recover_deliveries, journal, sink)
            )
            await self._serve(stop, sink, Pending(journal))

    async def _open(
        self, stack: contextlib.AsyncExitStack, stop: asyncio.Event
    ) -> tuple[Sink, DeliveredJournal]:
        """Connect, open the journals and the audit trail, each closed by ``stack``."""
        c = self.config
        await self._check_clusters()
        exchange = Producer(c.exchange.cluster, f"fxgw-{c.agency}-exchange")
        await exchange.start()
        stack.push_async_callback(exchange.stop)
        local = exchange
        if c.local.cluster != c.exchange.cluster:
            local = Producer(c.local.cluster, f"fxgw-{c.agency}-local")
            await local.start()
            stack.push_async_callback(local.stop)
        sink: Sink
        if c.delivery.sink == "kafka":
            assert c.local.inbound_topic is not None  # checked by the config model
            sink = KafkaSink(local, c.local.cluster, c.local.inbound_topic)
        else:
            assert c.spool.inbound_dir is not None  # checked by the config model
            sink = SpoolSink(c.spool.inbound_dir)
        # the audit trail first: it holds the state folder's lock (one node per folder)
        self._audit_log = AuditLog.open(c.audit_dir, self.outbound.keys.signing, now=self._now)
        stack.callback(self._audit_log.close)
        load_book(c.state_dir, c.audit_dir, self.witness.book)
        audit = self._audit_log
        self.metrics.audit_written = lambda: audit.written
        self.readiness.audit_dir = c.audit_dir
        stack.callback(setattr, self.readiness, "audit_dir", None)
        journals = Journals(c.state_dir, _ms(self._now()))
        stack.callback(_close_quietly, journals)
        journal, self.received = journals.delivered, journals.received
        self.outbound.received = self.received
        self.tracing.open(c.state_dir)
        stack.callback(self.tracing.close)
        stack.callback(self._stopped)
        self._record_loaded({"policy", "trust", "keys"})
        self._executor = Executor(
            audit=self._audit_log,
            exchange=exchange,
            local=local,
            topics=Topics(c.agency, c.exchange.topic_prefix, c.local.quarantine_topic),
            limits=self.limits,
            retry=Retry(stop, self.counters),
            counters=self.counters,
            now_ms=lambda: _ms(self._now()),
            sink=sink,
            delivered=journal,
            received=self.received,
            parked=Parked(c.state_dir / "parked", self.limits.max_parked_bytes),
            refuse=lambda d, detail: self.inbound.refused_delivery(
                d, detail, self._now(), self.limits
            ),
            bound=self._log,
            metrics=self.metrics,
            audit_failing=partial(setattr, self.readiness, "audit_failing"),
            follower=self.tracing,
        )
        return sink, journal

    async def _check_clusters(self) -> None:
        """Create the node's topics, and refuse to start (warn only in development mode) when
        existing ones are under-replicated or the local topics would share the exchange
        cluster.

        :raises ConfigError: outside development mode, naming each problem and the fix.
        """
        c = self.config
        exchange_id, problems = await prepare_topics(c.exchange.cluster, self._exchange_topics())
        local_id, local_problems = await prepare_topics(c.local.cluster, self._local_topics())
        problems += local_problems
        if c.local.bootstrap_servers == c.exchange.bootstrap_servers:
            problems.append("the local topics are on the exchange cluster (one bootstrap list)")
        elif local_id == exchange_id:
            problems.append(
                f"local.bootstrap_servers and exchange.bootstrap_servers reach one cluster"
                f" ({local_id}): the local topics must stay on the agency's own cluster"
            )
        if not problems:
            return
        if c.development:
            self._log.warning("development_mode_shortcuts", problems=problems[:20])
            return
        raise ConfigError(
            "the node's Kafka topics are not what its config asks for: "
            + "; ".join(problems)
            + ". Raise the topics' replication and min.insync.replicas (or create them with"
            " 'fxgw topics provision'), or lower exchange.topics / local.topics;"
            " development: true only warns",
            file=str(c.path),
        )

    def _stopped(self) -> None:
        executor: Executor | None = getattr(self, "_executor", None)  # None: start-up failed
        if executor is not None:
            executor.flush_routine()
        self._log.info("node_stopped", counters=dict(self.counters))

    async def _serve(self, stop: asyncio.Event, sink: Sink, pending: Pending) -> None:
        """Run the loops until ``stop`` is set or one of them fails."""
        c = self.config
        loops = {
            "inbound": self._consume(
                stop,
                "inbox",
                c.exchange.cluster,
                [c.inbox_topic(c.agency)],
                self._executing(partial(self._take_envelopes, pending)),
                ready=True,
            ),
            "receipts": self._consume(
                stop,
                "receipts",
                c.exchange.cluster,
                [c.receipts_topic(c.agency)],
                self._executing(self._take_receipts),
                gather_ms=250,  # on no event's path: a few large batches, not many small ones
            ),
            "checkpoints": publish_checkpoints(
                self.audit,
                self._executor.exchange,
                c.checkpoints_topic(c.agency),
                c.agency,
                every_s=c.witness.publish_every_seconds,
                stop=stop,
                counters=self.counters,
                bound=self._log,
            ),
            "countersigned": self._consume(
                stop,
                "countersigned",
                c.exchange.cluster,
                [c.witness_topic(c.agency)],
                self._executing(self._take_countersigned),
                gather_ms=250,
            ),
            "watch": self._watch_loop(stop, sink),
            "observe": self._observe_loop(stop),
            "parked": offer_parked(self._executor, stop),
            "tracing": self.tracing.run(stop, self._executor),
        }
        witnessed = sorted(self._witnessed())
        if witnessed:
            loops["witness"] = self._consume(
                stop,
                "witness",
                c.exchange.cluster,
                [c.checkpoints_topic(a) for a in witnessed],
                self._take_checkpoints,
                gather_ms=250,
            )
        loops.update(self._hit_loops(stop))
        if c.local.outbound_topic:
            loops["outbound"] = self._consume(
                stop,
                "outbound",
                c.local.cluster,
                [c.local.outbound_topic],
                self._executing(self._take_events),
            )
        if c.spool.outbound_dir:
            loops["spool"] = self._spool_loop(stop)
        tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
        self._log.info("node_started", tasks=list(loops))
        try:
            done, _ = await asyncio.wait(
                [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task in tasks and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]  # checked just above
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _hit_loops(self, stop: asyncio.Event) -> dict[str, Coroutine[object, object, None]]:
        """Hit/no-hit queries: the other agencies' filters read, the queries' timeouts, and
        (a holder) this node's filter published."""
        c, ex = self.config, self._executor
        others = sorted(set(self.outbound.trust.agencies) - {c.agency})
        loops = {"hitqueries": expire_queries(self.hits, ex, self._now, stop)}
        if others:  # alone on the trust list: no filter to read
            loops["hitfilters"] = read_filters(
                c, self.hits, ex, others, lambda: self.outbound.trust, self._now, stop
            )
        if c.hits.holdings is not None:
            loops["hitpublish"] = publish_filters(
                c, self.hits, ex, lambda: self.outbound.keys.signing, self._now, stop
            )
        return loops

    # --- the loops: poll a batch -> core -> effects -> durable -> commit -------------------------

    async def _consume(
        self,
        stop: asyncio.Event,
        name: str,
        cluster: Cluster,
        topics: list[str],
        handle: Callable[[Sequence[Message]], Awaitable[None]],
        *,
        ready: bool = False,
        gather_ms: int | None = None,
    ) -> None:
        c = self.config
        consumer = Consumer(
            topics,
            bootstrap_servers=cluster,
            group_id=c.group_id(name),
            client_id=f"fxgw-{c.agency}-{name}",
            instance_id=c.member_id,
            gather_ms=gather_ms,
        )
        retry = self._executor.retry
        committing: asyncio.Task[None] | None = None
        self.readiness.starting(name)
        try:
            # joining can wait on a cluster that is gone for as long as it is gone; a stop
            # request does not wait with it
            if not await unless_stopped(stop, retry(f"start {name} consumer", consumer.start)):
                return
            if ready:
                self.ready.set()
            while not stop.is_set():
                messages = await retry(
                    f"poll {name}", partial(consumer.poll, timeout_ms=300, max_records=500)
                )
                self.readiness.polled(name)
                topic = topics[0] if len(topics) == 1 else name
                self.metrics.polled(name, topic, len(messages), consumer.lag())
                if not messages:
                    continue
                await handle(messages)
                # a batch's effects are durable: its commit goes on while the next batch is
                # polled and handled, and the next commit waits for it (offsets move in order)
                await committed(name, committing, self._log)
                committing = asyncio.create_task(
                    retry(f"commit {name}", partial(consumer.commit, messages))
                )
            await committed(name, committing, self._log)
        finally:
            if committing is not None and not committing.done():
                committing.cancel()  # failing or cancelled: the records are read again
                await asyncio.gather(committing, return_exceptions=True)
            self.readiness.stopped(name)
            with contextlib.suppress(InfrastructureError):
                await consumer.stop()

    # --- metrics, health and expiry warnings -----------------------------------------------------

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _check_expiry(self, *, warn: bool) -> None:
        """Set the expiry gauges of the trust list and the node's own keys; with ``warn``, log
        a warning for each that expires within ``expiry_warning``."""
        keys = self.outbound.keys
        own = {keys.signing.key_id, *(k.key_id for k in keys.encryption)}
        now = self._now()
        soon = self.metrics.expiring(
            expiries(self.outbound.trust, self.config.agency, own), self.config.expiry_warning, now
        )
        if warn:
            warn_expiring(soon, now, self._log)

    async def _observe_loop(self, stop: asyncio.Event) -> None:
        """Refresh the gauges, re-check expiry (warnings at most every
        :attr:`expiry_check_every_s`) and, while the metrics port is served, probe Kafka for
        ``/readyz``: every cluster the node uses must answer a metadata request."""
        c = self.config
        clusters = [c.exchange.cluster] + (
            [c.local.cluster] if c.local.cluster != c.exchange.cluster else []
        )
        probes = (
            [ClusterProbe(cluster, f"fxgw-{c.agency}-probe") for cluster in clusters]
            if self._server is not None
            else []
        )
        loop = asyncio.get_running_loop()
        warned = loop.time()  # at start, by run()
        try:
            while not stop.is_set():
                due = loop.time() - warned >= self.expiry_check_every_s
                if due:
                    warned = loop.time()
                self._check_expiry(warn=due)
                if probes:
                    answers = await asyncio.gather(*(p.answers() for p in probes))
                    self.readiness.kafka = "ok" if all(answers) else "unreachable"
                self.metrics.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.probe_every_s)
        finally:
            for probe in probes:
                await probe.close()

    def _executing(
        self, take: Callable[[Sequence[Message]], Batch]
    ) -> Callable[[Sequence[Message]], Awaitable[None]]:
        """A loop's handler that executes the batch ``take`` makes of the records polled."""

        async def handle(messages: Sequence[Message]) -> None:
            await self._executor.execute(take(messages))

        return handle

    async def _take_checkpoints(self, messages: Sequence[Message]) -> None:
        """Witness other agencies' checkpoints: audit, keep the book, countersign back."""
        now = self._now()
        effects = [self.witness.take(m.value, now) for m in messages]
        await self._executor.execute(Batch(audit=[a for e in effects for a in e.audit]))
        c = self.config
        await self._executor.retry(
            "save witness book", partial(_async, save_book, c.state_dir, self.witness.book)
        )
        await self._executor.send_dropping(
            [
                (c.witness_topic(w.checkpoint.agency), w.to_bytes(), w.checkpoint.log.encode(), ())
                for e in effects
                for w in e.send
            ]
        )

    def _take_countersigned(self, messages: Sequence[Message]) -> Batch:
        now = self._now()
        return Batch(
            audit=[a for m in messages for a in self.witness.take_receipt(m.value, now).audit]
        )

    def _take(self, messages: Sequence[Message], core: Callable[[bytes], Effects]) -> Batch:
        """Each record's effects; a record the client could not parse is quarantined by where
        it lies."""
        now_ms = _ms(self._now())
        return Batch.of(
            core(m.value)
            if m.unreadable is None
            else unreadable(
                m.topic, m.partition, m.offset, m.unreadable, now_ms=now_ms, limits=self.limits
            )
            for m in messages
        )

    def _take_events(self, messages: Sequence[Message]) -> Batch:
        now = self._now()
        return self._take(messages, lambda raw: self.outbound.take(raw, now))

    def _take_envelopes(self, pending: Pending, messages: Sequence[Message]) -> Batch:
        now = self._now()
        pending.clear()
        return self._take(
            messages, lambda raw: pending.add(self.inbound.take(raw, now, pending, self.limits))
        )

    def _take_receipts(self, messages: Sequence[Message]) -> Batch:
        now = self._now()
        return self._take(messages, lambda raw: self.receipts.take(raw, now))

    async def _spool_loop(self, stop: asyncio.Event) -> None:
        """Release every ``*.jsonl``/``*.json`` file dropped into the outbound spool folder, one
        event per line, a batch of lines at a time (:func:`spool_batches`); then move the file
        to ``done/`` (a crash before that releases the file again: the envelopes carry the same
        message ids, so recipients drop the copies as duplicates)."""
        folder = self.config.spool.outbound_dir
        assert folder is not None
        done = folder / "done"
        done.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            files = sorted(
                p
                for p in folder.iterdir()
                if p.is_file() and p.suffix in (".json", ".jsonl") and not p.name.startswith(".")
            )
            for path in files:
                for lines in spool_batches(path, self.limits.max_event_bytes):
                    now = self._now()
                    await self._executor.execute(
                        Batch.of(self.outbound.take(line, now) for line in lines)
                    )
                os.replace(path, done / path.name)
            if not files:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)

    async def _recover_deliveries(self, journal: DeliveredJournal, sink: Sink) -> None:
        """Bring the journal and the sink together after a crash: deliveries the sink holds but
        the journal missed are journaled (with their first digest and time when the sink keeps
        them, so the receipt is the same one); the spool's interrupted renames are finished."""
        now_ms = _ms(self._now())
        lifetime_ms = int(self.config.envelope.max_lifetime.total_seconds() * 1000)
        since = max((journal.newest_recorded_ms or 0) - 300_000, now_ms - lifetime_ms)
        found = await sink.recover(journal, since)
        for message_id, (entry, event) in found.items():
            if entry is None:
                entry = DeliveredEntry(now_ms + lifetime_ms, now_ms, None)
            journal.remember(message_id, entry.expires_ms, entry.recorded_ms, entry.digest)
            if event is not None:  # its handling limits forwarding, as if journaled in time
                self.received.remember(
                    event.event_id,
                    ReceivedEvent(event.sender, event.code, event.onward_transfer),
                    event.until_ms,
                )
            # delivered just before a crash, before its audit entry was on disk
            self.audit.append("delivery_recovered", {"message_id": message_id})
        self.audit.sync()
        self.received.sync()
        journal.sync()
        self._log.info("deliveries_recovered", known=len(journal), added=len(found))
