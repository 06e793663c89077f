"""Metrics from audit entries with bounded labels, receipts awaited, expiry warnings, and the
HTTP endpoint: /metrics, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from gateway.core.effects import AuditEntry
from gateway.crypto.trust import TrustList
from gateway.errors import ConfigError
from gateway.node.health import MetricsServer, Readiness
from gateway.node.metrics import Metrics, Outstanding, expiries, sample, warn_expiring
from gateway.types import AgencyId
from tests.http import get

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
AGENCIES = frozenset({"NL-POL", "BE-FPJ", "US-ATF"})


class _Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _metrics(clock: _Clock | None = None, counters: Counter[str] | None = None) -> Metrics:
    return Metrics(
        counters if counters is not None else Counter(),
        lambda: AGENCIES,
        receipt_timeout=timedelta(seconds=300),
        clock=clock or _Clock(),
    )


def _entry(kind: str, **data: str | None) -> AuditEntry:
    return AuditEntry(kind, data, kind, kind)


def _value(m: Metrics, name: str, **labels: str) -> float:
    return sample(m.registry, name, labels)


class TestObserve:
    """Each audit entry kind lands in its series, with agency and reason labels bounded."""

    def test_outbound_decisions_per_recipient(self) -> None:
        """Releases, denials and refusals are counted per recipient (and reason)."""
        m = _metrics()
        m.observe(
            [
                _entry("release", message_id="m1", recipient="BE-FPJ"),
                _entry("release", message_id="m2", recipient="BE-FPJ"),
                _entry("release_denied", recipient="US-ATF", reason="no_rule"),
                _entry("release_refused", recipient="US-ATF", reason="no_recipient_key"),
            ]
        )
        assert 2 == _value(m, "fxgw_released_total", recipient="BE-FPJ")
        assert 1 == _value(m, "fxgw_denied_total", recipient="US-ATF", reason="no_rule")
        assert 1 == _value(m, "fxgw_refused_total", recipient="US-ATF", reason="no_recipient_key")

    def test_inbound_outcomes_per_sender(self) -> None:
        """Delivered, duplicate, expired and rejected envelopes all count as received."""
        m = _metrics()
        m.observe(
            [
                _entry("delivery", sender="NL-POL"),
                _entry("duplicate", sender="NL-POL"),
                _entry("expired", sender="NL-POL"),
                _entry("quarantine", direction="inbound", reason="bad_signature", sender="NL-POL"),
                _entry("receipt_sent", sender="NL-POL", outcome="DELIVERED"),
            ]
        )
        assert 4 == _value(m, "fxgw_received_total", sender="NL-POL")
        assert 1 == _value(m, "fxgw_delivered_total", sender="NL-POL")
        assert 1 == _value(m, "fxgw_duplicates_total", sender="NL-POL")
        assert 1 == _value(m, "fxgw_rejected_total", sender="NL-POL", reason="retention_expired")
        assert 1 == _value(m, "fxgw_rejected_total", sender="NL-POL", reason="bad_signature")
        assert 1 == _value(m, "fxgw_quarantined_total", direction="inbound", reason="bad_signature")
        assert 1 == _value(m, "fxgw_receipts_sent_total", sender="NL-POL", outcome="DELIVERED")

    def test_hit_no_hit_series(self) -> None:
        """Evaluations a holder served or refused per requester, results by status, and each
        holder's filter size and epoch; a requester's own record of a refusal is not counted
        as an evaluation."""
        m = _metrics()
        m.observe(
            [
                _entry("hit_evaluated", requester="NL-POL"),
                _entry("hit_refused", requester="NL-POL", reason="rate_limited"),
                _entry("hit_refused", requester="NL-POL", holder="BE-FPJ", reason="rate_limited"),
                _entry("hit_refused", requester="NL-POL", reason="a value"),
                _entry("hit_result", status="PARTIAL"),
                AuditEntry(
                    "hit_filter", {"holder": "BE-FPJ", "epoch": 20425, "bytes": 300}, "f", "f"
                ),
            ]
        )
        served = ("fxgw_hit_evaluations_total", "NL-POL")
        assert 1 == _value(m, served[0], requester=served[1], outcome="served")
        assert 1 == _value(m, served[0], requester=served[1], outcome="rate_limited")
        assert 1 == _value(m, served[0], requester=served[1], outcome="other")
        assert 1 == _value(m, "fxgw_hit_queries_total", status="PARTIAL")
        assert 300 == _value(m, "fxgw_hit_filter_bytes", holder="BE-FPJ")
        assert 20425 == _value(m, "fxgw_hit_filter_epoch", holder="BE-FPJ")

    def test_labels_never_carry_a_value_from_outside_the_fixed_sets(self) -> None:
        """A sender off the trust list is ``unknown``, an unlisted reason or direction
        ``other``: a forged header cannot make up label values."""
        m = _metrics()
        m.observe(
            [
                _entry("quarantine", direction="inbound", reason="made-up", sender="Serial-12345"),
                _entry("quarantine", direction="fx.inbox.BE-FPJ", reason="record_unreadable"),
            ]
        )
        exposed = "\n".join(
            f"{s.name}{s.labels}" for family in m.registry.collect() for s in family.samples
        )
        assert "Serial-12345" not in exposed and "made-up" not in exposed
        assert "fx.inbox" not in exposed
        assert 1 == _value(m, "fxgw_rejected_total", sender="unknown", reason="other")
        assert 1 == _value(
            m, "fxgw_quarantined_total", direction="other", reason="record_unreadable"
        )

    def test_node_counters_are_exported_as_they_are(self) -> None:
        """``fxgw_outcomes_total`` shows the node's counters, read at scrape time."""
        counters: Counter[str] = Counter()
        m = _metrics(counters=counters)
        counters["retries"] += 3
        assert 3 == _value(m, "fxgw_outcomes_total", kind="retries")


class TestReceiptsAwaited:
    """Outstanding and overdue receipts, and the time from release to receipt."""

    def test_a_receipt_ends_the_wait_and_is_timed(self) -> None:
        """Released at t, answered at t+2: nothing outstanding, one latency of 2 s."""
        clock = _Clock()
        m = _metrics(clock)
        m.observe([_entry("release", message_id="m1", recipient="BE-FPJ")])
        m.refresh()
        assert 1 == _value(m, "fxgw_receipts_outstanding")
        clock.now += 2
        m.observe(
            [_entry("receipt_received", message_id="m1", recipient="BE-FPJ", outcome="DELIVERED")]
        )
        m.refresh()
        assert 0 == _value(m, "fxgw_receipts_outstanding")
        assert 1 == _value(
            m, "fxgw_receipts_received_total", recipient="BE-FPJ", outcome="DELIVERED"
        )
        assert 1 == _value(m, "fxgw_receipt_latency_seconds_count")
        assert 2 == _value(m, "fxgw_receipt_latency_seconds_sum")

    def test_overdue_after_the_timeout(self) -> None:
        """Of two releases 400 s and 100 s old, with a 300 s timeout, one is overdue."""
        clock = _Clock()
        m = _metrics(clock)
        m.observe([_entry("release", message_id="old", recipient="BE-FPJ")])
        clock.now += 300
        m.observe([_entry("release", message_id="new", recipient="BE-FPJ")])
        clock.now += 100
        m.refresh()
        assert 2 == _value(m, "fxgw_receipts_outstanding")
        assert 1 == _value(m, "fxgw_receipts_overdue")

    def test_parked_is_not_awaited_until_sent(self) -> None:
        """A parked release waits for no receipt; unparked it does; given up it never will."""
        awaited = Outstanding()
        awaited.released("m1", 0.0)
        awaited.released("m2", 0.0)
        awaited.parked("m1")
        assert 1 == awaited.count()
        awaited.unparked("m1")
        assert 2 == awaited.count()
        awaited.given_up("m2")
        assert 1 == awaited.count()

    def test_tracking_is_bounded(self) -> None:
        """Past the limit the oldest are counted, not kept, and still overdue."""
        awaited = Outstanding(limit=2)
        for n in range(5):
            awaited.released(f"m{n}", float(n))
        assert 5 == awaited.count()
        assert 5 == awaited.overdue(1000.0, 10.0)


class TestExpiry:
    """Expiry times of the trust list and own keys, and warnings ahead of them."""

    def test_gauges_and_a_warning_within_the_window(self, trust: TrustList) -> None:
        """The trust list's expiry is exported; within the window a warning names days left."""
        m = _metrics()
        own = trust.agency("NL-POL")
        assert own is not None
        items = expiries(trust, AgencyId("NL-POL"), {k.key_id for k in own.keys})
        assert {"trust_list", "signing_key", "encryption_key"} == {i.item for i in items}
        far = m.expiring(items, timedelta(days=0), NOW)
        assert [] == far
        assert trust.expires_at.timestamp() == _value(m, "fxgw_trust_list_expiry_timestamp_seconds")
        assert 0 == _value(m, "fxgw_expires_soon", item="trust_list")
        soon_at = trust.expires_at - timedelta(days=3)
        soon = m.expiring(items, timedelta(days=14), soon_at)
        assert "trust_list" in {i.item for i in soon}
        assert 1 == _value(m, "fxgw_expires_soon", item="trust_list")
        with capture_logs() as logs:
            warn_expiring(soon, soon_at, structlog.get_logger("fxgw.test"))
        trust_warnings = [e for e in logs if e["event"] == "trust_list_expires_soon"]
        assert [3.0] == [e["days_left"] for e in trust_warnings]
        assert "warning" == trust_warnings[0]["log_level"]


class TestReadiness:
    """Each readiness check names what is wrong."""

    def _readiness(self, tmp_path: Path, clock: _Clock) -> Readiness:
        r = Readiness(now=lambda: NOW, trust_expires_at=lambda: NOW + timedelta(days=1))
        r.clock = clock
        r.kafka = "ok"
        r.audit_dir = tmp_path
        r.starting("inbox")
        r.polled("inbox")
        return r

    def test_all_ok(self, tmp_path: Path) -> None:
        """Connected, polling, a writable trail and a valid list: every check ok."""
        r = self._readiness(tmp_path, _Clock())
        assert {"kafka": "ok", "consuming": "ok", "audit": "ok", "trust": "ok"} == r.checks()

    def test_each_failure_is_named(self, tmp_path: Path) -> None:
        """Unreachable Kafka, a stalled loop, a failing fsync and an expired list."""
        clock = _Clock()
        r = self._readiness(tmp_path, clock)
        r.kafka = "unreachable"
        clock.now += r.stall_s + 1
        r.audit_failing = True
        r.trust_expires_at = lambda: NOW
        assert {
            "kafka": "unreachable",
            "consuming": "stalled",
            "audit": "not_writable",
            "trust": "expired",
        } == r.checks()

    def test_a_loop_still_joining_is_not_ready(self, tmp_path: Path) -> None:
        """A consumer that has not joined its group yet is not consuming."""
        r = self._readiness(tmp_path, _Clock())
        r.starting("receipts")
        assert "joining" == r.checks()["consuming"]


class TestMetricsServer:
    """/metrics, /healthz and /readyz on one port of 127.0.0.1."""

    async def test_metrics_are_served(self) -> None:
        """A GET of /metrics shows the node's series in Prometheus text format."""
        metrics = _metrics()
        readiness = Readiness(now=lambda: NOW, trust_expires_at=lambda: NOW)
        served = MetricsServer(
            metrics, readiness, asyncio.get_running_loop(), address="127.0.0.1", port=0
        )
        served.start()
        try:
            metrics.observe([_entry("release", message_id="m1", recipient="BE-FPJ")])
            status, body = await asyncio.to_thread(get, served.port, "/metrics")
        finally:
            served.close()
        assert 200 == status
        assert 'fxgw_released_total{recipient="BE-FPJ"} 1.0' in body.decode()
        assert "fxgw_receipts_outstanding 1.0" in body.decode()  # refreshed for the scrape

    async def test_health_and_readiness(self, tmp_path: Path) -> None:
        """/healthz is 200 while the loop answers; /readyz is 503 naming the failed checks,
        then 200 once they pass."""
        metrics = _metrics()
        readiness = Readiness(now=lambda: NOW, trust_expires_at=lambda: NOW + timedelta(days=1))
        served = MetricsServer(
            metrics, readiness, asyncio.get_running_loop(), address="127.0.0.1", port=0
        )
        served.start()
        try:
            health = await asyncio.to_thread(get, served.port, "/healthz")
            not_ready = await asyncio.to_thread(get, served.port, "/readyz")
            readiness.kafka = "ok"
            readiness.audit_dir = tmp_path
            readiness.starting("inbox")
            readiness.polled("inbox")
            ready = await asyncio.to_thread(get, served.port, "/readyz")
            missing = await asyncio.to_thread(get, served.port, "/nothing")
        finally:
            served.close()
        assert (200, {"status": "ok"}) == (health[0], json.loads(health[1]))
        assert 503 == not_ready[0]
        assert ["audit", "consuming", "kafka"] == json.loads(not_ready[1])["failed"]
        assert 200 == ready[0]
        assert "ready" == json.loads(ready[1])["status"]
        assert 404 == missing[0]

    async def test_a_loop_that_does_not_answer_is_not_healthy(self) -> None:
        """With the event loop not running, /healthz is 503 within the answer time."""
        stuck = asyncio.new_event_loop()  # never run: nothing it is handed is ever done
        readiness = Readiness(now=lambda: NOW, trust_expires_at=lambda: NOW)
        served = MetricsServer(_metrics(), readiness, stuck, address="127.0.0.1", port=0)
        served.answer_within_s = 0.2
        served.start()
        try:
            status, body = await asyncio.to_thread(get, served.port, "/healthz")
        finally:
            served.close()
            stuck.close()
        assert (503, ["event_loop"]) == (status, json.loads(body)["failed"])

    async def test_a_port_in_use_is_a_config_error(self) -> None:
        """Binding a port that is taken refuses to start, naming the setting."""
        readiness = Readiness(now=lambda: NOW, trust_expires_at=lambda: NOW)
        loop = asyncio.get_running_loop()
        first = MetricsServer(_metrics(), readiness, loop, address="127.0.0.1", port=0)
        first.start()
        try:
            second = MetricsServer(
                _metrics(), readiness, loop, address="127.0.0.1", port=first.port
            )
            with pytest.raises(ConfigError, match="metrics_port"):
                second.start()
        finally:
            first.close()
