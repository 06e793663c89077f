"""The node: wires config, cores, Kafka, sinks and the journal together, and owns the loops.

No business rule lives here: what to release and what to accept is decided by
:class:`~gateway.core.outbound.OutboundCore` and :class:`~gateway.core.inbound.InboundCore`.
The node reads, hands over, writes, and commits offsets only once what it read is durably handled:

- outbound: an event's offset is committed after every envelope made from it is acknowledged
  by the exchange cluster (or the event was quarantined locally);
- inbound: an envelope's offset is committed after the sink holds the delivery, the journal
  of delivered ids is synced (or the envelope was quarantined), and its receipt is published;
- receipts: a receipt's offset is committed after it is recorded.

Every decision is written to the audit trail (:mod:`gateway.audit.store`), and every commit waits
for the audit trail to be on disk: nothing is acknowledged that is not recorded.

A failure of Kafka or of the disk is retried with back-off, never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import structlog

from gateway.audit.chain import CHECKPOINT, Value
from gateway.audit.store import AuditLog
from gateway.contract.schemas import SchemaRegistry
from gateway.core.inbound import (
    Delivery,
    DuplicateDrop,
    Expired,
    InboundCore,
    Rejection,
    retain_until,
)
from gateway.core.outbound import OutboundCore, Outcome, ReceivedEvent, parse_plain_event
from gateway.crypto.envelope import DataKeyRing, Header, Sealed
from gateway.crypto.keys import (
    AgencyKeys,
    load_encryption_key,
    load_pseudonym_key,
    load_signing_key,
)
from gateway.crypto.receipts import Outcome as ReceiptOutcome
from gateway.crypto.receipts import make_receipt, open_receipt
from gateway.crypto.trust import TrustList, authority_keys, load_trust_list
from gateway.errors import ConfigError, InfrastructureError, PeerError, TrustError
from gateway.node.config import NodeConfig
from gateway.node.journals import DeliveredJournal, ReceivedEvents
from gateway.node.sinks import KafkaSink, Sink, SpoolSink, delivery_document
from gateway.node.transport import Consumer, Headers, Producer, TopicSpec, ensure_topics, read_topic
from gateway.policy.engine import Policy, load_policy
from gateway.policy.transforms import Pseudonymiser

log = structlog.get_logger("fxgw.node")
T = TypeVar("T")


def _inbound_data(h: Header, digest: bytes, reason: str | None) -> dict[str, Value]:
    """What the log and the audit trail say of an envelope taken in (metadata only)."""
    return {
        "message_id": h.message_id,
        "event_id": h.event_id,
        "event_type": h.event_type,
        "sender": h.sender,
        "policy_id": h.policy_id,
        "policy_digest": h.policy_digest.hex(),
        "handling": h.handling.code,
        "retention_days": h.handling.retention_days,
        "envelope_sha256": digest.hex(),
        "reason": reason,
    }


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything a node loads from files at start-up."""

    keys: AgencyKeys
    registry: SchemaRegistry
    trust: TrustList
    policy: Policy
    pseudonymiser: Pseudonymiser | None


def load_node_files(config: NodeConfig, now: datetime) -> Loaded:
    """Load keys, schemas, trust list and policy; refuse anything inconsistent.

    :raises ConfigError: a file is missing or invalid (the message names it and the fix).
    """
    signing = load_signing_key(config.signing_key)
    encryption = tuple(load_encryption_key(p) for p in config.encryption_keys)
    keys = AgencyKeys(config.agency, signing, encryption)
    registry = SchemaRegistry.load(config.schemas_dir)
    trust_state = config.state_dir / "trust-version"
    min_version = int(trust_state.read_text()) if trust_state.exists() else 0
    trust = load_trust_list(
        config.trust_file,
        authority_keys(config.authority_keys),
        now=now,
        min_version=min_version,
    )
    me = trust.agency(config.agency)
    if me is None:
        raise TrustError(
            f"this node's agency {config.agency} is not on the trust list",
            file=str(config.trust_file),
        )
    try:
        trust.signing_key(config.agency, signing.key_id, now)
    except PeerError as exc:
        raise TrustError(
            f"our signing key {signing.key_id!r} is not valid on the trust list ({exc}); "
            "publish its public entry (fxgw keygen prints it) before starting the node",
            file=str(config.trust_file),
        ) from exc
    pseudonymiser = None
    if config.pseudonym_key is not None:
        pseudonymiser = Pseudonymiser(load_pseudonym_key(config.pseudonym_key).secret)
    policy = load_checked_policy(
        config, registry, trust, can_pseudonymise=pseudonymiser is not None
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically_replace(trust_state, str(trust.version).encode())
    return Loaded(keys, registry, trust, policy, pseudonymiser)


def load_checked_policy(
    config: NodeConfig, registry: SchemaRegistry, trust: TrustList, *, can_pseudonymise: bool
) -> Policy:
    """Load the node's policy and check it against the trust list and the node's keys.

    :raises ConfigError: invalid, another agency's, rules that disagree for some agency, or
        pseudonyms asked for without a pseudonym secret.
    """
    policy = load_policy(config.policy_file, registry)
    if policy.agency != config.agency:
        raise ConfigError(
            f"policy belongs to {policy.agency}, but this node is {config.agency}",
            file=str(config.policy_file),
        )
    policy.check_against(trust)
    if policy.uses_pseudonyms and not can_pseudonymise:
        raise ConfigError(
            "the policy pseudonymises fields but keys.pseudonym names no secret; create one "
            "with 'fxgw keygen' and add it to the node config",
            file=str(config.path),
        )
    return policy


def write_atomically_replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)


class Node:
    """One agency's gateway node."""

    def __init__(self, config: NodeConfig, *, now: Callable[[], datetime] = _now) -> None:
        self.config = config
        self._now = now
        loaded = load_node_files(config, now())
        self.registry = loaded.registry
        self.outbound = OutboundCore(
            keys=loaded.keys,
            registry=loaded.registry,
            policy=loaded.policy,
            trust=loaded.trust,
            routes=config.routes,
            ttl=config.ttl,
            keyring=DataKeyRing(config.data_key_max_age, config.data_key_max_uses),
            pseudonymiser=loaded.pseudonymiser,
        )
        self.inbound = InboundCore(
            keys=loaded.keys,
            registry=loaded.registry,
            trust=loaded.trust,
            max_skew=config.max_skew,
            max_lifetime=config.max_lifetime,
        )
        self.counters: Counter[str] = Counter()
        self.ready = asyncio.Event()
        self._audit_log: AuditLog | None = None
        self._log = log.bind(agency=config.agency)

    # --- wiring ----------------------------------------------------------------------------------

    @property
    def audit(self) -> AuditLog:
        """The audit trail (open while the node runs)."""
        if self._audit_log is None:
            raise RuntimeError("the audit trail is open only while the node runs")
        return self._audit_log

    def _record_loaded(self, what: set[str]) -> None:
        """Audit which policy, trust list and keys are in force (ids and digests only)."""
        policy, trust, keys = self.outbound.policy, self.outbound.trust, self.outbound.keys
        if "policy" in what:
            self.audit.append(
                "policy_loaded",
                {"policy_id": policy.policy_id, "policy_digest": policy.digest.hex()},
            )
        if "trust" in what:
            self.audit.append(
                "trust_loaded",
                {
                    "federation": trust.federation,
                    "version": trust.version,
                    "digest": trust.digest.hex(),
                    "expires_at": trust.expires_at.isoformat(),
                },
            )
        if "keys" in what:
            self.audit.append(
                "keys_loaded",
                {
                    "signing_key_id": keys.signing.key_id,
                    "encryption_key_ids": [k.key_id for k in keys.encryption],
                },
            )

    def _exchange_topics(self) -> list[TopicSpec]:
        """Our inbox and receipts topics; with ``provision_inboxes`` (dev and test clusters),
        every listed agency's too. In production the federation operator creates them."""
        c = self.config
        agencies = sorted(self.outbound.trust.agencies) if c.provision_inboxes else [c.agency]
        names = [c.inbox_topic(a) for a in agencies] + [c.receipts_topic(a) for a in agencies]
        return [TopicSpec(n) for n in names]

    def _local_topics(self) -> list[TopicSpec]:
        c = self.config
        names = [c.quarantine_topic] + [t for t in (c.outbound_topic, c.inbound_topic) if t]
        return [TopicSpec(n) for n in names]

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then finish the batch in hand and close.

        :raises InfrastructureError: Kafka or the disk failed at start-up.
        """
        c = self.config
        await ensure_topics(c.exchange_bootstrap, self._exchange_topics())
        await ensure_topics(c.local_bootstrap, self._local_topics())
        self._exchange = Producer(c.exchange_bootstrap, f"fxgw-{c.agency}-exchange")
        self._local = (
            self._exchange
            if c.local_bootstrap == c.exchange_bootstrap
            else Producer(c.local_bootstrap, f"fxgw-{c.agency}-local")
        )
        await self._exchange.start()
        if self._local is not self._exchange:
            await self._local.start()
        sink: Sink
        if c.sink == "kafka":
            assert c.inbound_topic is not None  # checked by the config model
            sink = KafkaSink(self._local, c.inbound_topic)
        else:
            assert c.spool_inbound is not None  # checked by the config model
            sink = SpoolSink(c.spool_inbound)
        journal = DeliveredJournal(c.state_dir / "delivered.journal", _ms(self._now()))
        self.received = ReceivedEvents(c.state_dir / "received.journal", _ms(self._now()))
        self.outbound.received = self.received
        self._audit_log = AuditLog.open(c.audit_dir, self.outbound.keys.signing, now=self._now)
        self._record_loaded({"policy", "trust", "keys"})
        await self._recover_deliveries(journal, sink)
        tasks = [
            asyncio.create_task(self._inbound_loop(stop, sink, journal), name="inbound"),
            asyncio.create_task(self._watch_loop(stop, sink), name="watch"),
            asyncio.create_task(self._receipts_loop(stop), name="receipts"),
        ]
        if c.outbound_topic:
            tasks.append(asyncio.create_task(self._outbound_loop(stop), name="outbound"))
        if c.spool_outbound:
            tasks.append(asyncio.create_task(self._spool_loop(stop), name="spool"))
        self._log.info("node_started", tasks=[t.get_name() for t in tasks])
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
            journal.close()
            self.received.close()
            self.audit.close()
            await self._exchange.stop()
            if self._local is not self._exchange:
                await self._local.stop()
            self._log.info("node_stopped", counters=dict(self.counters))

    async def _watch_loop(self, stop: asyncio.Event, sink: Sink) -> None:
        """Hot reload of the policy and the trust list, the spool's retention sweep, and a signed
        audit checkpoint each minute in which entries were written (so that a quiet node does
        not leave its recent entries unsigned for long).

        A changed file is loaded and checked in full before it replaces the one in force, between
        two events; a file that fails keeps the last good version in force and says why.
        """
        c = self.config
        sig = c.trust_file.with_name(c.trust_file.name + ".sig")
        watched = {"policy": c.policy_file, "trust": c.trust_file, "trust-signature": sig}
        seen = {name: _stat(path) for name, path in watched.items()}
        last_sweep = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            changed = {n for n, p in watched.items() if _stat(p) != seen[n]}
            if changed:
                seen = {name: _stat(path) for name, path in watched.items()}
                self.reload({"trust" if n == "trust-signature" else n for n in changed})
            if loop.time() - last_sweep > 60:
                last_sweep = loop.time()
                if isinstance(sink, SpoolSink):
                    for message_id in sink.purge_expired(self._now()):
                        self.counters["retention_purged"] += 1
                        self._log.info("retention_purged", message_id=message_id)
                        self.audit.append("retention_purged", {"message_id": message_id})
                last = self.audit.last
                if last is not None and last.kind != CHECKPOINT:
                    await self._retry("audit checkpoint", self._checkpoint_audit, stop)

    def reload(self, changed: set[str]) -> bool:
        """Load the changed files (``policy``, ``trust``) and swap them in if all are valid.

        Returns True when the new versions are in force; on any error the old ones stay.
        """
        c = self.config
        try:
            trust = self.outbound.trust
            if "trust" in changed:
                trust = load_trust_list(
                    c.trust_file,
                    authority_keys(c.authority_keys),
                    now=self._now(),
                    min_version=trust.version,
                )
            policy = load_checked_policy(
                c, self.registry, trust, can_pseudonymise=self.outbound.pseudonymiser is not None
            )
        except ConfigError as exc:
            self.counters["reload_failed"] += 1
            self._log.error("reload_failed", files=sorted(changed), error=str(exc))
            if self._audit_log is not None:
                self._audit_log.append(
                    "reload_failed", {"files": sorted(changed), "error": str(exc)}
                )
                self._audit_log.sync()
            return False
        self.outbound.trust = trust
        self.inbound.trust = trust
        self.outbound.policy = policy
        write_atomically_replace(c.state_dir / "trust-version", str(trust.version).encode())
        self.counters["reloads"] += 1
        if self._audit_log is not None:
            self._record_loaded(changed | {"policy"})
            self._audit_log.sync()
        self._log.info(
            "reloaded",
            files=sorted(changed),
            policy=policy.policy_id,
            policy_digest=policy.digest.hex(),
            trust_version=trust.version,
        )
        return True

    async def _recover_deliveries(self, journal: DeliveredJournal, sink: Sink) -> None:
        """Add to the journal what the sink holds but the journal missed (a crash between the
        sink's acknowledgement and the journal's sync)."""
        now_ms = _ms(self._now())
        expires = now_ms + int(self.config.max_lifetime.total_seconds() * 1000)
        found = sink.delivered_ids()
        if isinstance(sink, KafkaSink):
            since = (journal.newest_recorded_ms or 0) - 300_000
            floor = now_ms - int(self.config.max_lifetime.total_seconds() * 1000)
            records = await read_topic(
                self.config.local_bootstrap, sink.topic, since_ms=max(since, floor)
            )
            found |= {
                m.header("fxgw-message-id").decode()  # type: ignore[union-attr]  # filtered below
                for m in records
                if m.header("fxgw-message-id") is not None
            }
        added = 0
        for message_id in found:
            if message_id not in journal:
                journal.remember(message_id, expires, now_ms)
                # delivered just before a crash, before its audit entry was on disk
                self.audit.append("delivery_recovered", {"message_id": message_id})
                added += 1
        self.audit.sync()
        journal.sync()
        self._log.info("deliveries_recovered", known=len(journal), added=added)

    async def _retry(self, what: str, action: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        """Run ``action`` until it succeeds; back off on retriable infrastructure errors."""
        delay = 0.2
        while True:
            try:
                return await action()
            except InfrastructureError as exc:
                if stop.is_set():
                    raise  # shutting down: the offset stays uncommitted, the work is redone
                self.counters["retries"] += 1
                level = self._log.warning if exc.retriable else self._log.error
                level("retrying", what=what, error=str(exc), delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _quarantine(
        self, raw: bytes, reason: str, detail: str, direction: str, extra: Headers = ()
    ) -> None:
        headers: Headers = (
            ("fxgw-reason", reason.encode()),
            ("fxgw-detail", detail.encode()),
            ("fxgw-direction", direction.encode()),
            ("fxgw-quarantined-at", _ms(self._now()).to_bytes(8, "big")),
            *extra,
        )
        await self._local.send(self.config.quarantine_topic, raw, headers=headers)
        self.counters[f"quarantined_{direction}"] += 1
        self.audit.append(
            "quarantine",
            {
                "direction": direction,
                "reason": reason,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "bytes": len(raw),
            },
        )

    # --- outbound --------------------------------------------------------------------------------

    async def _outbound_loop(self, stop: asyncio.Event) -> None:
        c = self.config
        assert c.outbound_topic is not None
        consumer = Consumer(
            [c.outbound_topic],
            bootstrap_servers=c.local_bootstrap,
            group_id=f"fxgw.{c.agency}.outbound",
            client_id=f"fxgw-{c.agency}-outbound",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.poll(timeout_ms=300, max_records=200)
                for message in batch:
                    await self._retry(
                        "release", partial(self.release_one, message.value, message.topic), stop
                    )
                await self._retry("sync audit", self._sync_audit, stop)
                await self._retry("commit outbound", partial(consumer.commit, batch), stop)
        finally:
            await consumer.stop()

    async def release_one(self, raw: bytes, source: str) -> Outcome | None:
        """Release one plain event: publish its envelopes, quarantine it if it is invalid.

        :raises InfrastructureError: publishing failed (the caller retries the same event; the
            message ids are the same, so recipients drop what they already have).
        """
        now = self._now()
        try:
            event = parse_plain_event(raw, self.registry)
        except PeerError as exc:
            self._log.warning("event_rejected", source=source, reason=exc.reason, detail=str(exc))
            await self._quarantine(raw, exc.reason, str(exc), "outbound")
            return None
        try:
            outcome = self.outbound.release(event, now)
        except PeerError as exc:  # a released view that does not encode: keep the event
            self._log.error("release_failed", event_id=event.event_id, reason=exc.reason)
            await self._quarantine(raw, "release_failed", str(exc), "outbound")
            return None
        await self._publish(outcome.envelopes)
        for sealed in outcome.envelopes:
            h = sealed.header
            self._decide(
                "release",
                {
                    "message_id": h.message_id,
                    "event_id": h.event_id,
                    "event_type": h.event_type,
                    "recipient": h.recipient,
                    "policy_id": h.policy_id,
                    "policy_digest": h.policy_digest.hex(),
                    "rule": h.policy_rule,
                    "handling": h.handling.code,
                    "purpose": h.handling.purpose,
                    "retention_days": h.handling.retention_days,
                    "onward_transfer": h.handling.onward_transfer,
                    "kept": list(outcome.kept.get(h.message_id, ())),
                    "transformed": list(h.transformed),
                    "withheld": list(h.withheld),
                    "envelope_sha256": hashlib.sha256(sealed.data).hexdigest(),
                    "recipient_key_id": h.recipient_key_id,
                },
                log_event="released",
                counter="released",
            )
        for denied in outcome.denied:
            self._decide(
                "release_denied",
                {
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "recipient": denied.recipient,
                    "reason": denied.reason,
                    "policy_id": self.outbound.policy.policy_id,
                },
                log_event="not_released",
                counter="denied",
            )
        for refused in outcome.refused:
            self._decide(
                "release_refused",
                {
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "recipient": refused.recipient,
                    "reason": refused.reason,
                    "detail": refused.detail,
                },
                log_event="release_refused",
                counter="refused",
                warn=True,
            )
            await self._quarantine(
                raw,
                refused.reason,
                f"recipient {refused.recipient}: {refused.detail}",
                "outbound",
                (("fxgw-recipient", refused.recipient.encode()),),
            )
        return outcome

    async def _publish(self, envelopes: tuple[Sealed, ...]) -> None:
        if not envelopes:
            return
        await self._exchange.send_many(
            [
                (
                    self.config.inbox_topic(s.header.recipient),
                    s.data,
                    s.header.message_id.encode(),
                    (
                        ("fxgw-sender", s.header.sender.encode()),
                        ("fxgw-message-id", s.header.message_id.encode()),
                    ),
                )
                for s in envelopes
            ]
        )

    async def _spool_loop(self, stop: asyncio.Event) -> None:
        """Release every ``*.jsonl``/``*.json`` file dropped into the outbound spool folder, one
        event per line; then move the file to ``done/``."""
        folder = self.config.spool_outbound
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
                for line in path.read_bytes().splitlines():
                    if line.strip():
                        await self._retry(
                            "release", partial(self.release_one, line, str(path)), stop
                        )
                await self._retry("sync audit", self._sync_audit, stop)
                os.replace(path, done / path.name)
            if not files:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)

    # --- inbound ---------------------------------------------------------------------------------

    async def _inbound_loop(
        self, stop: asyncio.Event, sink: Sink, journal: DeliveredJournal
    ) -> None:
        c = self.config
        consumer = Consumer(
            [c.inbox_topic(c.agency)],
            bootstrap_servers=c.exchange_bootstrap,
            group_id=f"fxgw.{c.agency}.inbox",
            client_id=f"fxgw-{c.agency}-inbox",
        )
        await consumer.start()
        self.ready.set()
        try:
            while not stop.is_set():
                batch = await consumer.poll(timeout_ms=300, max_records=200)
                for message in batch:
                    await self._retry(
                        "deliver", partial(self._receive_one, message.value, sink, journal), stop
                    )
                if batch:
                    # audit first: after a crash the trail may hold a delivery the journal
                    # missed (the recovery scan then finds it in the sink), never the reverse
                    await self._retry("sync audit", self._sync_audit, stop)
                    journal.sync()
                    self.received.sync()
                    await self._retry("commit inbox", partial(consumer.commit, batch), stop)
        finally:
            await consumer.stop()

    async def _receive_one(self, raw: bytes, sink: Sink, journal: DeliveredJournal) -> None:
        now = self._now()
        result = self.inbound.receive(raw, now, journal)
        if isinstance(result, Delivery):
            h = result.header
            await sink.deliver(result, delivery_document(result, self.registry))
            journal.remember(h.message_id, _ms(h.expires_at), _ms(now), result.digest)
            until = retain_until(h) or now + timedelta(days=365)
            self.received.remember(
                h.event_id,
                ReceivedEvent(h.sender, h.handling.code, h.handling.onward_transfer),
                _ms(until),
            )
            self._decide(
                "delivery",
                _inbound_data(h, result.digest, None),
                log_event="delivered",
                counter="delivered",
            )
            await self._send_receipt(h, result.digest, "DELIVERED", None, now)
        elif isinstance(result, DuplicateDrop):
            h = result.header
            self._decide(
                "duplicate",
                _inbound_data(h, result.digest, None),
                log_event="duplicate_dropped",
                counter="duplicates",
            )
            # a duplicate is answered as of the first delivery; the very same envelope again
            # gets the very same receipt, byte for byte
            first = journal.get(h.message_id)
            at = now if first is None else datetime.fromtimestamp(first.recorded_ms / 1000, UTC)
            same = first is not None and first.digest == result.digest
            await self._send_receipt(
                h, result.digest, "DELIVERED" if same else "DUPLICATE", None, at
            )
        elif isinstance(result, Expired):
            h = result.header
            self._decide(
                "expired",
                _inbound_data(h, result.digest, "retention_expired"),
                log_event="retention_expired_not_delivered",
                counter="retention_expired",
            )
            await self._send_receipt(h, result.digest, "REJECTED", "retention_expired", now)
        else:
            await self._reject(raw, result)
            if result.header is not None:
                await self._send_receipt(
                    result.header, result.digest, "REJECTED", result.reason, now
                )

    async def _send_receipt(
        self,
        h: Header,
        digest: bytes,
        outcome: ReceiptOutcome,
        reason: str | None,
        at: datetime,
    ) -> None:
        """Publish a signed receipt to the sender's receipts topic. A sender not on the trust
        list gets none: there is nobody to address it to, and nobody to trust it."""
        if self.inbound.trust.agency(h.sender) is None or h.recipient != self.config.agency:
            return
        receipt = make_receipt(
            message_id=h.message_id,
            event_id=h.event_id,
            sender=h.sender,
            recipient=self.config.agency,
            envelope_digest=digest,
            outcome=outcome,
            reason=reason,
            received_at=at,
            signer=self.outbound.keys.signing,
            codec=self.registry,
        )
        await self._exchange.send(
            self.config.receipts_topic(h.sender), receipt, key=h.message_id.encode()
        )
        self.counters["receipts_sent"] += 1
        self.audit.append(
            "receipt_sent",
            {
                "message_id": h.message_id,
                "sender": h.sender,
                "outcome": outcome,
                "reason": reason,
                "receipt_sha256": hashlib.sha256(receipt).hexdigest(),
            },
        )

    # --- receipts --------------------------------------------------------------------------------

    async def _receipts_loop(self, stop: asyncio.Event) -> None:
        """Take in the receipts recipients send back; each is verified and audited."""
        c = self.config
        consumer = Consumer(
            [c.receipts_topic(c.agency)],
            bootstrap_servers=c.exchange_bootstrap,
            group_id=f"fxgw.{c.agency}.receipts",
            client_id=f"fxgw-{c.agency}-receipts",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.poll(timeout_ms=300, max_records=500)
                for message in batch:
                    await self._retry(
                        "take receipt", partial(self._take_receipt, message.value), stop
                    )
                if batch:
                    await self._retry("sync audit", self._sync_audit, stop)
                    await self._retry("commit receipts", partial(consumer.commit, batch), stop)
        finally:
            await consumer.stop()

    async def _take_receipt(self, raw: bytes) -> None:
        now = self._now()
        try:
            r = open_receipt(
                raw,
                trust=self.inbound.trust,
                codec=self.registry,
                agency=self.config.agency,
                now=now,
            )
        except PeerError as exc:
            self.counters["receipts_rejected"] += 1
            self._log.warning("receipt_rejected", reason=exc.reason, detail=str(exc))
            await self._quarantine(raw, exc.reason, str(exc), "receipts")
            return
        self._decide(
            "receipt_received",
            {
                "message_id": r.message_id,
                "event_id": r.event_id,
                "recipient": r.recipient,
                "outcome": r.outcome,
                "reason": r.reason,
                "received_at": r.received_at.isoformat().replace("+00:00", "Z"),
                "envelope_sha256": r.envelope_digest.hex(),
                "signing_key_id": r.signing_key_id,
            },
            log_event="receipt_received",
            counter="receipts_received",
        )

    def _decide(
        self,
        kind: str,
        data: Mapping[str, Value],
        *,
        log_event: str,
        counter: str,
        warn: bool = False,
    ) -> None:
        """Count one decision, log it and write it to the audit trail, with the same metadata
        (ids, reason codes, field paths; never a field value)."""
        self.counters[counter] += 1
        (self._log.warning if warn else self._log.info)(log_event, **data)
        self.audit.append(kind, data)

    async def _checkpoint_audit(self) -> None:
        self.audit.checkpoint()

    async def _sync_audit(self) -> None:
        """Make the audit trail durable (before any offset is committed)."""
        self.audit.sync()

    async def _reject(self, raw: bytes, rejection: Rejection) -> None:
        h = rejection.header
        extra: Headers = ()
        if h is not None:
            extra = (
                ("fxgw-message-id", h.message_id.encode()),
                ("fxgw-sender", h.sender.encode()),
            )
        self._log.warning(
            "envelope_rejected",
            reason=rejection.reason,
            detail=rejection.detail,
            message_id=h.message_id if h else None,
            sender=h.sender if h else None,
        )
        await self._quarantine(raw, rejection.reason, rejection.detail, "inbound", extra)
