"""The node's Prometheus metrics: what the audit entries, the counters and the loops say, as
``fxgw_*`` series in a registry of the node's own.

prometheus_client does the metric types, their thread-safe values, the registry and the text
exposition (served by :mod:`gateway.node.health`). What is ours, because no library knows it:

- the mapping from our audit entries to labelled series (:meth:`Metrics.observe`). It is fed
  from :meth:`~gateway.node.loop.Executor.record`, the one place where every decision is counted,
  logged and audited, so the metrics cannot disagree with the counters or the trail; every other
  counter of the node is exported as it is by :class:`_CountersCollector` at scrape time;
- bounded labels: an agency label is an id on the trust list in force or ``unknown``, a reason
  code one of :data:`REASONS` or ``other``; never a field value;
- the receipts still awaited (:class:`Outstanding`), kept in memory from this start on with the
  same meaning as ``fxgw status`` (sent, no receipt yet; overdue after the receipt timeout);
- expiry of the trust list and of the node's own keys (their windows on the trust list), and the
  warnings ahead of it.

Everything here runs on the node's event loop except scraping, which reads prometheus_client
values (thread-safe) and the plain numbers :meth:`Metrics.refresh` left there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.core.effects import AuditEntry
from gateway.crypto.trust import TrustList

log = structlog.get_logger("fxgw.metrics")

REASONS = frozenset(
    {
        # quarantine and rejection (gateway.errors and the cores)
        "invalid",
        "malformed",
        "too_large",
        "schema_invalid",
        "unknown_event_type",
        "untrusted_sender",
        "bad_signature",
        "not_for_us",
        "decryption_failed",
        "stale",
        "duplicate",
        "body_header_mismatch",
        "non_finite_number",
        "delivery_too_large",
        "delivery_refused",
        "record_unreadable",
        "release_failed",
        "retention_expired",
        # release denied (policy) or refused (fail closed)
        "no_rule",
        "ambiguous_rules",
        "onward_transfer_refused",
        "envelope_too_large",
        "no_common_contract_version",
        "no_recipient_key",
        "unknown_recipient",
        "trust_list_expired",
    }
)
"""The reason codes a label may carry; any other value is counted as ``other``."""

DIRECTIONS = frozenset({"inbound", "outbound", "receipts", "delivery"})
"""Where a quarantined record came from; an unreadable record names its topic, counted as
``other``."""

OUTCOMES = frozenset({"DELIVERED", "DUPLICATE", "REJECTED"})

MAX_OUTSTANDING = 200_000
"""Receipts awaited that are tracked one by one; beyond it the oldest are only counted."""

SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


HIT_REASONS = frozenset({"rate_limited", "epoch_unknown", "not_served", "bad_point"})


def _hit_reason(value: object) -> str:
    return value if isinstance(value, str) and value in HIT_REASONS else "other"


def _number(value: object) -> int:
    return value if isinstance(value, int) else 0


def _reason(value: object) -> str:
    return value if isinstance(value, str) and value in REASONS else "other"


class Outstanding:
    """Messages sent and not yet answered by a receipt, oldest first (status's ``released`` and
    ``overdue`` states). Parked messages are not awaited until they are sent; a message given up
    (expired while parked, refused by the cluster) is not awaited at all."""

    def __init__(self, limit: int = MAX_OUTSTANDING) -> None:
        self._limit = limit
        self._sent: dict[str, float] = {}
        """Message id -> release time (unix seconds), in release order."""
        self._parked: dict[str, float] = {}
        self._untracked = 0
        """Awaited messages beyond the limit: the oldest, so overdue soonest."""

    def released(self, message_id: str, at: float) -> None:
        if message_id in self._sent or message_id in self._parked:
            return  # a re-release keeps the first time, as the status view does
        self._sent[message_id] = at
        if len(self._sent) > self._limit:
            del self._sent[next(iter(self._sent))]
            self._untracked += 1

    def parked(self, message_id: str) -> None:
        at = self._sent.pop(message_id, None)
        if at is not None:
            self._parked[message_id] = at

    def unparked(self, message_id: str) -> None:
        at = self._parked.pop(message_id, None)
        if at is not None:
            self._sent[message_id] = at

    def given_up(self, message_id: str) -> None:
        self._sent.pop(message_id, None)
        self._parked.pop(message_id, None)

    def answered(self, message_id: str) -> float | None:
        """Forget ``message_id``; when it was released, if this node saw it."""
        at = self._sent.pop(message_id, None)
        if at is None:
            at = self._parked.pop(message_id, None)
        if at is None and self._untracked:
            self._untracked -= 1
        return at

    def count(self) -> int:
        return len(self._sent) + self._untracked

    def overdue(self, now: float, timeout_s: float) -> int:
        """How many were released more than ``timeout_s`` before ``now``."""
        overdue = self._untracked
        for at in self._sent.values():  # release order: the overdue ones come first
            if now - at <= timeout_s:
                break
            overdue += 1
        return overdue


class _CountersCollector(Collector):
    """Every counter of the node (``Node.counters``) as ``fxgw_outcomes_total{kind}``: the names
    come from the code (audit entries' ``counter``, ``retries``, ``reloads``...), a bounded set;
    and the audit trail's own count of entries written, ``fxgw_audit_entries_written_total``."""

    def __init__(self, counters: Counter[str], audit_written: Callable[[], int]) -> None:
        self._counters = counters
        self._audit_written = audit_written

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "fxgw_outcomes",
            "Decisions and events of the node by kind, as counted for the shutdown summary.",
            labels=["kind"],
        )
        for kind, value in sorted(dict(self._counters).items()):
            family.add_metric([kind], value)
        yield family
        yield CounterMetricFamily(
            "fxgw_audit_entries_written",
            "Audit entries written since start (checkpoints included).",
            value=self._audit_written(),
        )


@dataclass(frozen=True, slots=True)
class Expiry:
    """Something that stops working at a known time."""

    item: str
    """``trust_list``, ``signing_key`` or ``encryption_key``."""
    key_id: str
    at: datetime


def expiries(trust: TrustList, agency: str, key_ids: Collection[str]) -> list[Expiry]:
    """When the trust list and this node's own keys (``key_ids``, their windows on the list)
    expire."""
    found = [Expiry("trust_list", "", trust.expires_at)]
    own = trust.agency(agency)
    for key in own.keys if own is not None else ():
        if key.key_id in key_ids:
            item = "signing_key" if key.use == "sign" else "encryption_key"
            found.append(Expiry(item, key.key_id, key.valid_until))
    return found


class Metrics:
    """The ``fxgw_*`` metrics of one node, in their own registry."""

    def __init__(
        self,
        counters: Counter[str],
        agencies: Callable[[], Collection[str]],
        *,
        receipt_timeout: timedelta,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``agencies``: the ids on the trust list in force (the only agency label values)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._agencies = agencies
        self._clock = clock
        self._timeout_s = receipt_timeout.total_seconds()
        self.outstanding = Outstanding()
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> PromCounter:
            return PromCounter(name, doc, labels, registry=r)

        self.released = counter("fxgw_released", "Envelopes released.", ("recipient",))
        self.denied = counter("fxgw_denied", "Releases the policy denied.", ("recipient", "reason"))
        self.refused = counter(
            "fxgw_refused", "Releases the node refused (fail closed).", ("recipient", "reason")
        )
        self.received = counter("fxgw_received", "Envelopes taken in.", ("sender",))
        self.delivered = counter("fxgw_delivered", "Envelopes delivered.", ("sender",))
        self.duplicates = counter("fxgw_duplicates", "Duplicate envelopes dropped.", ("sender",))
        self.rejected = counter(
            "fxgw_rejected", "Envelopes rejected (quarantined or expired).", ("sender", "reason")
        )
        self.quarantined = counter(
            "fxgw_quarantined", "Records quarantined.", ("direction", "reason")
        )
        self.receipts_sent = counter("fxgw_receipts_sent", "Receipts sent.", ("sender", "outcome"))
        self.receipts_received = counter(
            "fxgw_receipts_received", "Verified receipts received.", ("recipient", "outcome")
        )
        self.receipts_outstanding = Gauge(
            "fxgw_receipts_outstanding",
            "Envelopes sent since this start whose receipt has not come.",
            registry=r,
        )
        self.receipts_overdue = Gauge(
            "fxgw_receipts_overdue",
            "Outstanding envelopes older than exchange.receipt_timeout_seconds.",
            registry=r,
        )
        self.audit_fsync = Histogram(
            "fxgw_audit_fsync_seconds",
            "Time to make a batch's audit entries durable.",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "fxgw_consumer_lag",
            "Records behind the high watermark, per topic.",
            ["topic"],
            registry=r,
        )
        self.batch_size = Histogram(
            "fxgw_batch_size",
            "Records per poll batch.",
            ["loop"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "fxgw_delivery_latency_seconds",
            "From an envelope's creation at the sender to its delivery here.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.receipt_latency = Histogram(
            "fxgw_receipt_latency_seconds",
            "From a release here to its receipt coming back.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.trust_expiry = Gauge(
            "fxgw_trust_list_expiry_timestamp_seconds",
            "When the trust list in force expires (unix seconds).",
            registry=r,
        )
        self.key_expiry = Gauge(
            "fxgw_key_expiry_timestamp_seconds",
            "When the node's own keys leave their window on the trust list (unix seconds).",
            ["use", "key_id"],
            registry=r,
        )
        self.expires_soon = Gauge(
            "fxgw_expires_soon",
            "1 when the item expires within the warning window (expiry_warning_days).",
            ["item"],
            registry=r,
        )
        self.ready = Gauge(
            "fxgw_ready", "1 when the readiness check passes, per check.", ["check"], registry=r
        )
        self.traces = Gauge(
            "fxgw_traces",
            "Trace cases this node holds (open, and closed in the last 30 days).",
            ["role", "state"],
            registry=r,
        )
        self.reminders_sent = counter("fxgw_trace_reminders_sent", "Trace reminders sent.", ())
        self.hit_evaluations = counter(
            "fxgw_hit_evaluations",
            "Hit/no-hit evaluation requests this holder answered (outcome: served or the"
            " refusal reason).",
            ("requester", "outcome"),
        )
        self.hit_queries = counter("fxgw_hit_queries", "Hit/no-hit results by status.", ("status",))
        self.hit_filter_bytes = Gauge(
            "fxgw_hit_filter_bytes", "Size of each holder's filter in use.", ["holder"], registry=r
        )
        self.hit_filter_epoch = Gauge(
            "fxgw_hit_filter_epoch", "Epoch of each holder's filter in use.", ["holder"], registry=r
        )
        self.audit_written: Callable[[], int] = lambda: 0
        """Entries the open audit trail has written (set by the node once it is open)."""
        r.register(_CountersCollector(counters, lambda: self.audit_written()))

    # --- fed by the loops ------------------------------------------------------------------------

    def _agency(self, value: object) -> str:
        return value if isinstance(value, str) and value in self._agencies() else "unknown"

    def observe(self, entries: Iterable[AuditEntry]) -> None:
        """Count decisions by their audit entries (:meth:`Executor.record` calls this)."""
        now = self._clock()
        for entry in entries:
            self._observe(entry.kind, entry.data, now)

    def _observe(self, kind: str, data: Mapping[str, object], now: float) -> None:
        message_id = _text(data, "message_id")
        if kind == "release":
            self.released.labels(self._agency(data.get("recipient"))).inc()
            self.outstanding.released(message_id, now)
        elif kind in ("release_denied", "release_refused"):
            family = self.denied if kind == "release_denied" else self.refused
            family.labels(self._agency(data.get("recipient")), _reason(data.get("reason"))).inc()
        elif kind in ("delivery", "duplicate", "expired"):
            sender = self._agency(data.get("sender"))
            self.received.labels(sender).inc()
            if kind == "delivery":
                self.delivered.labels(sender).inc()
            elif kind == "duplicate":
                self.duplicates.labels(sender).inc()
            else:
                self.rejected.labels(sender, "retention_expired").inc()
        elif kind == "quarantine":
            direction = _text(data, "direction")
            reason = _reason(data.get("reason"))
            self.quarantined.labels(direction if direction in DIRECTIONS else "other", reason).inc()
            if direction == "inbound":
                sender = self._agency(data.get("sender"))
                self.received.labels(sender).inc()
                self.rejected.labels(sender, reason).inc()
        elif kind in ("hit_evaluated", "hit_refused") and "holder" not in data:  # holder side
            outcome = "served" if kind == "hit_evaluated" else _hit_reason(data.get("reason"))
            self.hit_evaluations.labels(self._agency(data.get("requester")), outcome).inc()
        elif kind == "hit_result":
            self.hit_queries.labels(_text(data, "status") or "other").inc()
        elif kind in ("hit_filter", "hit_filter_published"):
            holder = self._agency(data.get("holder"))
            self.hit_filter_bytes.labels(holder).set(float(_number(data.get("bytes"))))
            self.hit_filter_epoch.labels(holder).set(float(_number(data.get("epoch"))))
        elif kind == "receipt_sent":
            outcome = _text(data, "outcome")
            self.receipts_sent.labels(
                self._agency(data.get("sender")), outcome if outcome in OUTCOMES else "other"
            ).inc()
        elif kind == "receipt_received":
            outcome = _text(data, "outcome")
            self.receipts_received.labels(
                self._agency(data.get("recipient")), outcome if outcome in OUTCOMES else "other"
            ).inc()
            released_at = self.outstanding.answered(message_id)
            if released_at is not None:
                self.receipt_latency.observe(max(0.0, now - released_at))
        elif kind == "trace_transition":
            if data.get("step") == "reminder" and data.get("role") == "requester":
                self.reminders_sent.inc()
        elif kind == "parked":
            self.outstanding.parked(message_id)
        elif kind == "unparked":
            self.outstanding.unparked(message_id)
        elif kind in ("parked_expired", "park_dropped", "record_refused"):
            self.outstanding.given_up(message_id)

    def trace_cases(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the trace case gauge: cases by (role, state)."""
        self.traces.clear()
        for (role, state), count in counts.items():
            self.traces.labels(role, state).set(count)

    def delivered_at(self, created_ms: Iterable[int]) -> None:
        """Deliveries made now, of envelopes created at ``created_ms`` (the sender's clock)."""
        now = self._clock()
        for ms in created_ms:
            self.delivery_latency.observe(max(0.0, now - ms / 1000))

    def polled(self, loop: str, topic: str, records: int, lag: int | None) -> None:
        """A poll of ``loop`` returned ``records``; ``lag`` is the consumer's lag, if known."""
        if records:
            self.batch_size.labels(loop).observe(records)
        if lag is not None:
            self.consumer_lag.labels(topic).set(lag)

    def refresh(self) -> None:
        """Bring the gauges computed from loop state up to date (on the event loop)."""
        self.receipts_outstanding.set(self.outstanding.count())
        self.receipts_overdue.set(self.outstanding.overdue(self._clock(), self._timeout_s))

    def expiring(self, items: Iterable[Expiry], window: timedelta, now: datetime) -> list[Expiry]:
        """Set the expiry gauges; the items that expire within ``window`` of ``now``."""
        soon: list[Expiry] = []
        flags: dict[str, int] = {"trust_list": 0, "signing_key": 0, "encryption_key": 0}
        for item in items:
            if item.item == "trust_list":
                self.trust_expiry.set(item.at.timestamp())
            else:
                use = "sign" if item.item == "signing_key" else "encrypt"
                self.key_expiry.labels(use, item.key_id).set(item.at.timestamp())
            if item.at - now <= window:
                soon.append(item)
                flags[item.item] = 1
        for name, flag in flags.items():
            self.expires_soon.labels(name).set(flag)
        return soon


def warn_expiring(
    soon: Iterable[Expiry], now: datetime, bound: structlog.stdlib.BoundLogger
) -> None:
    """One warning per item expiring soon: ``trust_list_expires_soon`` or ``key_expires_soon``,
    with the days left (negative once it has expired)."""
    for item in soon:
        days_left = round((item.at - now).total_seconds() / 86400, 1)
        if item.item == "trust_list":
            bound.warning(
                "trust_list_expires_soon", days_left=days_left, expires_at=item.at.isoformat()
            )
        else:
            bound.warning(
                "key_expires_soon",
                key=item.item,
                key_id=item.key_id,
                days_left=days_left,
                expires_at=item.at.isoformat(),
            )


def sample(
    registry: CollectorRegistry, name: str, labels: Mapping[str, str] | None = None
) -> float:
    """One sample's value, 0 when absent (for tests and the CLI)."""
    value = registry.get_sample_value(name, dict(labels or {}))
    return 0.0 if value is None else value


def names(registry: CollectorRegistry) -> Iterator[str]:
    """The metric family names of ``registry``."""
    for family in registry.collect():
        yield family.name
