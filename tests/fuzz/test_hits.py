"""Fuzzing hit/no-hit queries: whatever a peer puts in a filter record or in the points of a
HitEvaluation, the node answers with effects (a quarantine, a refusal, an unanswered holder),
never with an exception."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.contract.schemas import SchemaRegistry
from gateway.core.hits import epoch_of
from gateway.core.inbound import Delivery
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList
from tests.fuzz.conftest import TIMEOUT, budget
from tests.strategies import hostile_bytes, mutated
from tests.unit.test_hits import LIMITS, NOW, REGISTRY, SEED, _Node, _publish

pytestmark = TIMEOUT

POINTS = st.lists(st.binary(min_size=32, max_size=32) | hostile_bytes(), max_size=6)


@pytest.fixture(scope="module")
def nodes(
    nl_keys: AgencyKeys, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
) -> tuple[_Node, _Node, bytes]:
    """NL-POL querying, BE-FPJ holding; and one valid filter record of BE-FPJ."""
    be = _Node(be_keys, registry2, trust, seed=SEED)
    return _Node(nl_keys, registry2, trust), be, _publish(be, REGISTRY, trust)


def _delivery(node: _Node, sender: _Node, **record: object) -> Delivery:
    """A HitEvaluation from ``sender`` as ``node``'s inbound core would deliver it."""
    event = sender.hits._evaluation(node.outbound.agency, NOW, epoch=epoch_of(NOW, 1))
    effects = sender.outbound.take_event(event, b"{}", NOW)
    [envelope] = effects.envelopes
    delivered = node.inbound.receive(envelope.data, NOW, set())
    assert isinstance(delivered, Delivery)
    return Delivery(delivered.header, {**delivered.record, **record}, delivered.digest, NOW)


class TestFilterRecords:
    @budget(weight=2)
    @given(st.data())
    def test_quarantined_or_taken(
        self, nodes: tuple[_Node, _Node, bytes], data: st.DataObject
    ) -> None:
        """A mutated or hostile filter record is quarantined with a reason; it never raises."""
        nl, _, valid = nodes
        raw = data.draw(mutated(valid) | hostile_bytes())
        effects = nl.hits.take_filter(raw, nl.outbound.trust, NOW, LIMITS)
        assert len(effects.quarantines) <= 1
        assert all(a.kind in ("quarantine", "hit_filter") for a in effects.audit)


class TestEvaluations:
    @budget(weight=2)
    @given(POINTS)
    def test_a_request_is_evaluated_or_refused(
        self, nodes: tuple[_Node, _Node, bytes], points: list[bytes]
    ) -> None:
        """Any points: the holder answers with an evaluation or a refusal reason."""
        nl, be, _ = nodes
        effects = be.hits.take(_delivery(be, nl, blinded=points), NOW + timedelta(seconds=1))
        [entry] = [a for a in effects.audit if a.kind in ("hit_evaluated", "hit_refused")]
        assert entry.kind == "hit_evaluated" or entry.data["reason"] in (
            "bad_point",
            "rate_limited",
        )

    @budget()
    @given(POINTS)
    def test_an_answer_is_used_or_named_unanswered(
        self, nodes: tuple[_Node, _Node, bytes], evaluated: list[bytes]
    ) -> None:
        """Any evaluated points in an answer: a result with a hit, no hit, or the holder named
        as unanswered."""
        nl, be, _ = nodes
        nl.hits.take_filter(nodes[2], nl.outbound.trust, NOW, LIMITS)
        nl.ask(make="Glock", serial_number="BXK512")
        [query] = [q for q in nl.hits._pending.values() if "BE-FPJ" in q.asked]
        reply = _delivery(
            nl,
            be,
            in_reply_to=query.asked["BE-FPJ"].request_id,
            epoch=query.asked["BE-FPJ"].epoch,
            evaluated=evaluated,
        )
        effects = nl.hits.take(reply, NOW)
        [delivery] = effects.deliveries
        assert delivery.event_type == "fxgw.HitResult"
