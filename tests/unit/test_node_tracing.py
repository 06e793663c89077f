"""Trace cases on the node: following a batch, the durable store, generated events released."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.contract.schemas import SchemaRegistry
from gateway.core.effects import AuditEntry, Batch, Observed
from gateway.core.outbound import OutboundCore, parse_plain_event
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList
from gateway.dev.demo import trace_request_nl
from gateway.dev.sandbox import Federation
from gateway.errors import StorageError
from gateway.node.config import load_config
from gateway.node.metrics import Metrics, sample
from gateway.node.tracing import TraceStore, Tracing
from gateway.policy.engine import load_policy
from tests.unit.conftest import NOW, repo_file


@pytest.fixture
def be_tracing(
    tmp_path: Path,
    fed: Federation,
    be_keys: AgencyKeys,
    registry2: SchemaRegistry,
    trust: TrustList,
) -> Tracing:
    """BE-FPJ's trace cases, with its own outbound core (newest contract), its store open."""
    config = load_config(fed.config("BE-FPJ"))
    outbound = OutboundCore(
        keys=be_keys,
        registry=registry2,
        policy=load_policy(repo_file("policies", "be-fpj.yaml"), registry2),
        trust=trust,
        routes=config.routes_in_force,
        ttl=timedelta(days=1),
    )
    metrics = Metrics(Counter(), lambda: trust.agencies, receipt_timeout=timedelta(minutes=5))
    tracing = Tracing(config, outbound, metrics, lambda: NOW)
    tracing.open(tmp_path)
    return tracing


def _delivered_request(registry2: SchemaRegistry) -> Observed:
    event = parse_plain_event(trace_request_nl(), registry2)
    return Observed(False, event.event_type, "NL-POL", event.record)


class TestFollow:
    """A batch's trace events move the cases before the batch is executed."""

    async def test_request_delivered_is_acknowledged_through_the_outbound_path(
        self, be_tracing: Tracing, registry2: SchemaRegistry, tmp_path: Path
    ) -> None:
        """The acknowledgement is sealed for the requester in the same batch, both transitions
        are audited, and the case is durable."""
        request = _delivered_request(registry2)
        batch = Batch(observed=[request])
        be_tracing.follow(batch)
        await be_tracing.save()
        assert ["NL-POL"] == [e.recipient for e in batch.envelopes]
        steps = [(a.kind, a.data["step"]) for a in batch.audit if a.kind.startswith("trace")]
        assert [("trace_transition", "request"), ("trace_transition", "acknowledged")] == steps
        assert "release" in {a.kind for a in batch.audit}
        be_tracing.close()
        (case,) = TraceStore(tmp_path, readonly=True).all()
        assert ("traced", "acknowledged") == (case.role, case.state)

    async def test_a_batch_redone_moves_nothing_and_sends_the_same_message(
        self, be_tracing: Tracing, registry2: SchemaRegistry
    ) -> None:
        """The same batch again (a crash before its commit): no transition, the very same
        message id."""
        request = _delivered_request(registry2)
        first, again = Batch(observed=[request]), Batch(observed=[request])
        be_tracing.follow(first)
        await be_tracing.save()
        be_tracing.follow(again)
        await be_tracing.save()
        assert [] == [a for a in again.audit if a.kind.startswith("trace")]
        assert [e.message_id for e in first.envelopes] == [e.message_id for e in again.envelopes]

    async def test_durable_only_once_saved(
        self, be_tracing: Tracing, registry2: SchemaRegistry, tmp_path: Path
    ) -> None:
        """follow changes nothing on disk; save (after the batch's audit sync) commits it."""
        be_tracing.follow(Batch(observed=[_delivered_request(registry2)]))
        reader = TraceStore(tmp_path, readonly=True)
        assert [] == reader.all()
        await be_tracing.save()
        assert ["acknowledged"] == [c.state for c in reader.all()]

    async def test_cases_are_loaded_again_at_open(
        self, be_tracing: Tracing, registry2: SchemaRegistry, tmp_path: Path
    ) -> None:
        """A restarted node knows its cases (and counts them)."""
        be_tracing.follow(Batch(observed=[_delivered_request(registry2)]))
        await be_tracing.save()
        be_tracing.close()
        be_tracing.tracker.cases.clear()
        be_tracing.open(tmp_path)
        assert ["acknowledged"] == [c.state for c in be_tracing.tracker.cases.values()]
        gauge = sample(
            be_tracing._metrics.registry, "fxgw_traces", {"role": "traced", "state": "acknowledged"}
        )
        assert 1.0 == gauge

    async def test_other_events_are_ignored(self, be_tracing: Tracing) -> None:
        """A seizure released changes nothing."""
        batch = Batch(observed=[Observed(True, "fxgw.SeizureEvent", "NL-POL", {"event_id": "x"})])
        be_tracing.follow(batch)
        await be_tracing.save()
        assert ([], []) == (batch.audit, batch.envelopes)


class TestStore:
    """The SQLite store of cases."""

    def test_missing_store_cannot_be_read(self, tmp_path: Path) -> None:
        """Reading a node's cases before it ever ran says which file is missing."""
        with pytest.raises(StorageError, match=r"trace\.sqlite"):
            TraceStore(tmp_path, readonly=True).all()

    async def test_find_by_reference_or_id(
        self, be_tracing: Tracing, registry2: SchemaRegistry, tmp_path: Path
    ) -> None:
        """A case is found by its request's event id and by its reference."""
        request = _delivered_request(registry2)
        be_tracing.follow(Batch(observed=[request]))
        await be_tracing.save()
        store = TraceStore(tmp_path, readonly=True)
        by_id = store.find(str(request.record["event_id"]))
        by_reference = store.find(str(request.record["request_reference"]))
        assert 1 == len(by_id)
        assert by_id == by_reference


class TestMetrics:
    """Reminders sent are counted from the audit entries."""

    def test_reminders_sent(self, trust: TrustList) -> None:
        """A requester's reminder counts; a reminder received, or another step, does not."""
        metrics = Metrics(Counter(), lambda: trust.agencies, receipt_timeout=timedelta(minutes=5))
        entries = [
            AuditEntry("trace_transition", {"step": s, "role": r}, "t", "t")
            for s, r in [
                ("reminder", "requester"),
                ("reminder", "traced"),
                ("overdue", "requester"),
            ]
        ]
        metrics.observe(entries)
        assert 1.0 == sample(metrics.registry, "fxgw_trace_reminders_sent_total", {})
