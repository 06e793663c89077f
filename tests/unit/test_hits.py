"""Hit/no-hit queries: epochs, signed filter records, the filter book and the holder's rate."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.contract.schemas import SchemaRegistry
from gateway.core.effects import Effects, Limits, merge
from gateway.core.hits import (
    EVALUATION_TYPE,
    FILTER_TYPE,
    MAX_FILTER_RECORD_BYTES,
    QUERY_TYPE,
    Allowance,
    FilterBook,
    FilterShard,
    HitsCore,
    HitSettings,
    check_filter,
    epoch_of,
    epoch_window,
    filter_records,
)
from gateway.core.identifiers import filter_identifiers
from gateway.core.inbound import InboundCore
from gateway.core.outbound import OutboundCore
from gateway.crypto.filters import HoldingsFilter
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.oprf import OprfKey, blind
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError
from gateway.policy.engine import load_policy
from tests.unit.conftest import repo_file

NOW = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)
TTL = timedelta(days=7)


class TestEpochs:
    def test_an_epoch_spans_its_days_and_holds_its_moments(self) -> None:
        """epoch_window(epoch_of(t)) contains t and is ``days`` long."""
        for days in (1, 7, 30):
            start, end = epoch_window(epoch_of(NOW, days), days)
            assert start <= NOW < end
            assert timedelta(days=days) == end - start

    def test_the_next_day_is_the_next_epoch_of_one_day(self) -> None:
        """Daily epochs change at midnight UTC."""
        midnight = datetime(2026, 12, 4, tzinfo=UTC)
        assert epoch_of(midnight, 1) == epoch_of(midnight - timedelta(microseconds=1), 1) + 1


def _records(
    keys: AgencyKeys, registry: SchemaRegistry, shards: list[bytes], epoch: int | None = None
) -> list[tuple[bytes, bytes]]:
    return filter_records(
        "BE-FPJ", epoch_of(NOW, 1) if epoch is None else epoch, 1, shards, keys.signing, registry
    )


class TestFilterRecords:
    def test_a_signed_record_verifies_and_keeps_its_shard(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Each shard becomes one record keyed agency/index, verified against the trust list."""
        records = _records(be_keys, registry2, [b"one", b"two"])
        assert [b"BE-FPJ/0", b"BE-FPJ/1"] == [k for k, _ in records]
        shard = check_filter(records[1][1], registry2, trust, NOW, GRACE)
        assert ("BE-FPJ", 1, 2, b"two") == (shard.agency, shard.shard, shard.shards, shard.data)
        assert shard.valid_from <= NOW < shard.valid_until

    def test_any_changed_byte_is_refused(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Flipping any byte of a record fails: unsigned, malformed or out of range."""
        raw = _records(be_keys, registry2, [b"holdings"])[0][1]
        for i in range(len(raw)):
            tampered = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
            with pytest.raises(PeerError) as info:
                check_filter(tampered, registry2, trust, NOW, GRACE)
            assert info.value.reason in {"filter_unsigned", "filter_malformed", "schema_invalid"}

    def test_a_record_signed_by_another_agency_is_refused(
        self, nl_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """NL-POL's key cannot sign BE-FPJ's filter."""
        raw = _records(nl_keys, registry2, [b"x"])[0][1]
        with pytest.raises(PeerError) as info:
            check_filter(raw, registry2, trust, NOW, GRACE)
        assert "filter_unsigned" == info.value.reason

    def test_a_filter_of_an_epoch_that_is_over_is_refused(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Yesterday's filter is refused once the grace period after its end has passed."""
        raw = _records(be_keys, registry2, [b"x"], epoch=epoch_of(NOW, 1) - 1)[0][1]
        assert check_filter(raw, registry2, trust, NOW.replace(hour=0, minute=30), GRACE)
        with pytest.raises(PeerError) as info:
            check_filter(raw, registry2, trust, NOW, GRACE)
        assert "filter_stale" == info.value.reason

    def test_an_oversized_record_is_refused_unread(
        self, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Size is checked before any decoding."""
        with pytest.raises(PeerError) as info:
            check_filter(b"\0" * (MAX_FILTER_RECORD_BYTES + 1), registry2, trust, NOW, GRACE)
        assert "filter_oversized" == info.value.reason

    def test_a_shard_index_outside_the_count_is_refused(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """shard must be below shards."""
        record = registry2.decode(FILTER_TYPE, _records(be_keys, registry2, [b"x"])[0][1])
        bad = registry2.write(FILTER_TYPE, {**record, "shard": 3})
        with pytest.raises(PeerError) as info:
            check_filter(bad, registry2, trust, NOW, GRACE)
        assert "filter_malformed" == info.value.reason


def _shard(epoch: int, index: int, count: int, data: bytes = b"d") -> FilterShard:
    start, end = epoch_window(epoch, 1)
    return FilterShard("BE-FPJ", epoch, start, end, index, count, data)


class TestFilterBook:
    def test_a_filter_is_used_once_all_its_shards_are_in(self) -> None:
        """Shards assemble; the filter is held only when complete."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        assert not book.add(_shard(epoch, 1, 2, b"b"))
        assert {} == book.holders(NOW, GRACE)
        assert book.add(_shard(epoch, 0, 2, b"a"))
        assert {"BE-FPJ": epoch} == book.holders(NOW, GRACE)
        assert (epoch, [b"a", b"b"]) == book.shards("BE-FPJ")

    def test_a_newer_epoch_replaces_the_held_one_only_when_complete(self) -> None:
        """Until the new epoch's filter is whole, the old one answers."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        book.add(_shard(epoch - 1, 0, 1, b"old"))
        book.add(_shard(epoch, 0, 2, b"new0"))
        assert (epoch - 1, [b"old"]) == book.shards("BE-FPJ")
        book.add(_shard(epoch, 1, 2, b"new1"))
        assert (epoch, [b"new0", b"new1"]) == book.shards("BE-FPJ")

    def test_an_older_epoch_never_replaces_a_newer_one(self) -> None:
        """A replayed old filter is ignored."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        book.add(_shard(epoch, 0, 1, b"new"))
        assert not book.add(_shard(epoch - 1, 0, 1, b"old"))
        assert (epoch, [b"new"]) == book.shards("BE-FPJ")

    def test_a_filter_past_its_epoch_and_grace_is_not_offered(self) -> None:
        """holders() leaves out a filter whose epoch ended more than the grace ago."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        book.add(_shard(epoch, 0, 1))
        assert {} == book.holders(NOW + timedelta(days=1, hours=2), GRACE)


class TestAllowance:
    def test_a_burst_is_granted_then_refused_with_the_wait(self) -> None:
        """burst points at once; the next point waits 60/per_minute seconds."""
        allowance = Allowance(per_minute=60, burst=5)
        assert [None] * 5 == [allowance.take("NL-POL", 1, NOW) for _ in range(5)]
        assert 1000 == allowance.take("NL-POL", 1, NOW)
        assert allowance.take("NL-POL", 1, NOW + timedelta(seconds=1)) is None

    def test_requesters_have_their_own_buckets(self) -> None:
        """One requester's flood does not spend another's allowance."""
        allowance = Allowance(per_minute=1, burst=1)
        assert allowance.take("NL-POL", 1, NOW) is None
        assert allowance.take("NL-POL", 1, NOW) is not None
        assert allowance.take("US-ATF", 1, NOW) is None

    def test_more_points_than_the_burst_are_never_granted(self) -> None:
        """A request larger than the bucket is refused outright."""
        assert 60_000 == Allowance(per_minute=600, burst=4).take("NL-POL", 5, NOW)

    def test_the_table_of_requesters_is_bounded(self) -> None:
        """Past max_requesters, the table stays at its bound."""
        allowance = Allowance(per_minute=1, burst=1, max_requesters=8)
        for i in range(100):
            allowance.take(f"XX-{i}", 1, NOW)
        assert 8 == len(allowance._buckets)


# --- queries: both sides, end to end through the outbound and inbound cores ---------------------

SEED = bytes(range(32))
REGISTRY = [("Glock", "BXK512", "9x19mm"), ("Beretta", "P-004711", None), ("CZ", "A00123", None)]
LIMITS = Limits()


class _Node:
    """One agency's cores, wired as the node wires them (no I/O)."""

    def __init__(
        self,
        keys: AgencyKeys,
        registry: SchemaRegistry,
        trust: TrustList,
        *,
        seed: bytes | None = None,
        allowance: Allowance | None = None,
    ) -> None:
        policy = load_policy(repo_file("policies", f"{keys.agency.lower()}.yaml"), registry)
        self.outbound = OutboundCore(
            keys=keys, registry=registry, policy=policy, trust=trust, routes=(), ttl=TTL
        )
        self.inbound = InboundCore(keys=keys, registry=registry, trust=trust)
        self.hits = HitsCore(
            keys.agency,
            keys.agency[:2],
            registry,
            lambda event, now: self.outbound.take_event(event, b"{}", now),
            HitSettings(query_timeout=timedelta(seconds=30)),
            seed=seed,
            allowance=allowance or Allowance(60, 120),
        )
        self.outbound.takes = {QUERY_TYPE: self.hits.query}
        self.inbound.takes = {EVALUATION_TYPE: self.hits.take}

    def ask(self, now: datetime = NOW, **record: object) -> Effects:
        """The national system hands over a HitQuery."""
        fields = {"event_id": f"Q-{uuid.uuid4().hex}", "requested_at": "2026-12-03T13:00:00Z"}
        event = {"event_type": QUERY_TYPE, "record": {**fields, **record}}
        return self.outbound.take(json.dumps(event).encode(), now)

    def receive(self, effects: Effects, now: datetime = NOW) -> Effects:
        """Every envelope of ``effects`` addressed to this agency, taken in."""
        mine = [e for e in effects.envelopes if e.recipient == self.outbound.agency]
        return merge(*(self.inbound.take(e.data, now, set(), LIMITS) for e in mine))


def _publish(holder: _Node, records: list[tuple[str, str, str | None]], trust: TrustList) -> bytes:
    """The holder's filter of ``records``, signed, read into its own book's shape: the raw
    records a querier takes."""
    key = OprfKey.derive(SEED, epoch_of(NOW, 1))
    outputs = [key.prf(i) for r in records for i in filter_identifiers(*r)]
    shards = [s.to_bytes() for s in HoldingsFilter.build(outputs, 1e-3).shards]
    signer = holder.outbound.keys.signing
    [(_, raw)] = filter_records("BE-FPJ", epoch_of(NOW, 1), 1, shards, signer, holder.hits.registry)
    return raw


@pytest.fixture
def pair(
    nl_keys: AgencyKeys, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
) -> tuple[_Node, _Node]:
    """NL-POL querying, BE-FPJ holding REGISTRY; NL-POL holds BE-FPJ's filter."""
    nl, be = _Node(nl_keys, registry2, trust), _Node(be_keys, registry2, trust, seed=SEED)
    taken = nl.hits.take_filter(_publish(be, REGISTRY, trust), trust, NOW, LIMITS)
    assert ["hit_filter"] == [a.kind for a in taken.audit]
    return nl, be


def _point() -> bytes:
    """A valid blinded point."""
    return blind(b"any identifier").point


def _result(effects: Effects) -> dict[str, object]:
    [delivery] = [d for d in effects.deliveries if d.event_type == "fxgw.HitResult"]
    document = json.loads(delivery.document)
    assert "fxgw.HitResult" == document["event_type"]
    record: dict[str, object] = document["record"]
    return record


def _round_trip(nl: _Node, be: _Node, **query: object) -> tuple[Effects, Effects, Effects]:
    asked = nl.ask(**query)
    answered = be.receive(asked)
    return asked, answered, nl.receive(answered)


class TestQueries:
    def test_a_record_the_holder_has_is_a_hit_however_it_is_typed(
        self, pair: tuple[_Node, _Node]
    ) -> None:
        """Case, separators and O-for-0 do not hide a hit; the calibre narrows it."""
        nl, be = pair
        for make, serial in (
            ("Glock", "BXK512"),
            ("glock ges.m.b.h.", "bxk-512"),
            ("CZ", "AO0123"),
        ):
            *_, done = _round_trip(nl, be, make=make, serial_number=serial)
            result = _result(done)
            assert ("ANSWERED", ["BE-FPJ"], ["BE-FPJ"]) == (
                result["status"],
                result["hits"],
                result["asked"],
            )
        *_, done = _round_trip(nl, be, make="Glock", serial_number="BXK512", calibre="9 x 19")
        result = _result(done)
        assert (["BE-FPJ"], ["BE-FPJ"], True) == (
            result["hits"],
            result["calibre_hits"],
            result["narrowed_by_calibre"],
        )

    def test_a_calibre_narrows_the_answer_never_the_search(self, pair: tuple[_Node, _Node]) -> None:
        """A calibre the holder's record lacks, or records otherwise, still finds make and
        serial (hits), and only calibre_hits says whether the calibre matched too; the
        holder is asked two points."""
        nl, be = pair
        for query in (
            {"make": "Glock", "serial_number": "BXK512", "calibre": ".45 ACP"},
            {"make": "Beretta", "serial_number": "P4711", "calibre": "9x19"},
        ):
            asked, _, done = _round_trip(nl, be, **query)
            result = _result(done)
            assert ("ANSWERED", ["BE-FPJ"], [], True) == (
                result["status"],
                result["hits"],
                result["calibre_hits"],
                result["narrowed_by_calibre"],
            )
            hit_query = next(a for a in asked.audit if a.kind == "hit_query")
            assert 2 == hit_query.data["points"]

    def test_a_record_the_holder_lacks_is_no_hit(self, pair: tuple[_Node, _Node]) -> None:
        """Another serial, or another make, answers with no hit."""
        nl, be = pair
        for query in (
            {"make": "Glock", "serial_number": "BXK513"},
            {"make": "Glock", "serial_number": "BXK513", "calibre": "9x19"},
            {"make": "Beretta", "serial_number": "BXK512"},
        ):
            *_, done = _round_trip(nl, be, **query)
            assert ("ANSWERED", [], []) == (
                _result(done)["status"],
                _result(done)["hits"],
                _result(done)["calibre_hits"],
            )

    def test_the_request_and_answer_travel_as_sealed_events_and_are_not_delivered(
        self, pair: tuple[_Node, _Node]
    ) -> None:
        """Each side journals and receipts the HitEvaluation, releases under its policy's
        rule, and hands nothing but the result to its national system."""
        nl, be = pair
        asked, answered, done = _round_trip(nl, be, make="Glock", serial_number="BXK512")
        assert ["BE-FPJ"] == [e.recipient for e in asked.envelopes]
        assert ["NL-POL"] == [e.recipient for e in answered.envelopes]
        for effects in (answered, done):
            [journaled] = [d for d in effects.deliveries if d.event_type == EVALUATION_TYPE]
            assert (False, b"") == (journaled.to_sink, journaled.document)
            assert ["DELIVERED"] == [
                a.data["outcome"] for a in effects.audit if a.kind == "receipt_sent"
            ]
        rules = {a.data["rule"] for e in (asked, answered) for a in e.audit if a.kind == "release"}
        assert {"hit-evaluation"} == rules
        assert [] == [d for d in asked.deliveries + answered.deliveries if d.to_sink]

    def test_the_result_is_a_delivery_document_naming_the_node_itself(
        self, pair: tuple[_Node, _Node]
    ) -> None:
        """Same document shape as a received event; sender and recipient are NL-POL."""
        nl, be = pair
        *_, done = _round_trip(nl, be, make="Glock", serial_number="BXK512", query_reference="R1")
        [delivery] = [d for d in done.deliveries if d.to_sink]
        document = json.loads(delivery.document)
        assert {"event_type", "provenance", "record"} == set(document)
        provenance = document["provenance"]
        assert ("NL-POL", "NL-POL") == (provenance["sender"], provenance["recipient"])
        assert ("R1", delivery.event_id) == (
            document["record"]["query_reference"],
            provenance["event_id"],
        )

    def test_obliterated_and_partial_serials_are_not_queried(
        self, pair: tuple[_Node, _Node]
    ) -> None:
        """Nobody is asked; the result says why, naming the field, never the value."""
        nl, _ = pair
        for query, reason in (
            ({"serial_number": "BXK512", "serial_obliterated": True}, "obliterated"),
            ({"serial_number": "BX?512"}, "partial"),
            ({"serial_number": "12"}, "partial"),
        ):
            effects = nl.ask(make="Glock", **query)
            result = _result(effects)
            assert ("NOT_QUERIED", [], ()) == (result["status"], result["asked"], effects.envelopes)
            assert str(result["reason"]).startswith(reason)

    def test_a_requester_over_its_rate_is_refused_and_both_sides_audit_it(
        self, nl_keys: AgencyKeys, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Past the burst, the holder refuses with the wait; the result is PARTIAL."""
        nl = _Node(nl_keys, registry2, trust)
        be = _Node(be_keys, registry2, trust, seed=SEED, allowance=Allowance(1, 2))
        nl.hits.take_filter(_publish(be, REGISTRY, trust), trust, NOW, LIMITS)
        outcomes = [_round_trip(nl, be, make="Glock", serial_number="BXK512") for _ in range(3)]
        assert ["ANSWERED", "ANSWERED", "PARTIAL"] == [_result(o[2])["status"] for o in outcomes]
        _, answered, done = outcomes[2]
        [unanswered] = _result(done)["unanswered"]  # type: ignore[misc]
        assert unanswered.startswith("BE-FPJ: rate_limited (retry after ")
        holder_side = [a.data for a in answered.audit if a.kind == "hit_refused"]
        requester_side = [a.data for a in done.audit if a.kind == "hit_refused"]
        assert [("rate_limited", "NL-POL", None)] == [
            (d["reason"], d["requester"], d.get("holder")) for d in holder_side
        ]
        assert [("rate_limited", "NL-POL", "BE-FPJ")] == [
            (d["reason"], d["requester"], d.get("holder")) for d in requester_side
        ]

    def test_a_holder_without_a_seed_or_for_another_epoch_refuses(
        self,
        pair: tuple[_Node, _Node],
        be_keys: AgencyKeys,
        registry2: SchemaRegistry,
        trust: TrustList,
    ) -> None:
        """not_served without holdings; epoch_unknown for an epoch other than its own."""
        nl, be = pair
        event = nl.hits._evaluation("BE-FPJ", NOW, epoch=epoch_of(NOW, 1) - 1, blinded=[_point()])
        answered = be.receive(nl.outbound.take_event(event, b"{}", NOW))
        assert ["epoch_unknown"] == [
            a.data["reason"] for a in answered.audit if a.kind == "hit_refused"
        ]
        no_seed = _Node(be_keys, registry2, trust)
        answered = no_seed.receive(nl.ask(make="Glock", serial_number="BXK512"))
        assert ["not_served"] == [
            a.data["reason"] for a in answered.audit if a.kind == "hit_refused"
        ]

    def test_a_hostile_point_is_refused_and_costs_its_allowance(
        self, pair: tuple[_Node, _Node], nl_keys: AgencyKeys
    ) -> None:
        """The identity point is not evaluated: bad_point."""
        nl, be = pair
        event = nl.hits._evaluation("BE-FPJ", NOW, epoch=epoch_of(NOW, 1), blinded=[bytes(32)])
        answered = be.receive(nl.outbound.take_event(event, b"{}", NOW))
        assert ["bad_point"] == [
            a.data["reason"] for a in answered.audit if a.kind == "hit_refused"
        ]
        assert 119 == int(be.hits.allowance._buckets["NL-POL"][0])

    def test_an_answer_nobody_waits_for_is_audited_and_dropped(
        self, pair: tuple[_Node, _Node]
    ) -> None:
        """An answer to an unknown request delivers nothing to the national system."""
        nl, be = pair
        answered = be.receive(nl.ask(make="Glock", serial_number="BXK512"))
        fresh = _Node(nl.outbound.keys, nl.hits.registry, nl.outbound.trust)
        taken = fresh.receive(answered)
        assert ["hit_answer_unmatched"] == [a.kind for a in taken.audit if a.kind.startswith("hit")]
        assert [] == [d for d in taken.deliveries if d.to_sink]

    def test_a_holder_that_does_not_answer_in_time_is_named(
        self, pair: tuple[_Node, _Node]
    ) -> None:
        """After the query timeout the result is PARTIAL; at stop, every query in flight."""
        nl, _ = pair
        nl.ask(make="Glock", serial_number="BXK512")
        assert () == nl.hits.expire(NOW + timedelta(seconds=29)).deliveries
        result = _result(nl.hits.expire(NOW + timedelta(seconds=30)))
        assert ("PARTIAL", ["BE-FPJ: no answer in time"]) == (
            result["status"],
            result["unanswered"],
        )
        nl.ask(make="Glock", serial_number="BXK512")
        result = _result(nl.hits.forget_all(NOW))
        assert ["BE-FPJ: the node stopped before the answer"] == result["unanswered"]
        assert () == nl.hits.expire(NOW + timedelta(days=1)).deliveries

    def test_an_agency_named_without_a_filter_is_unanswered(
        self, pair: tuple[_Node, _Node]
    ) -> None:
        """Naming only an agency with no filter asks nobody: PARTIAL at once."""
        nl, _ = pair
        effects = nl.ask(make="Glock", serial_number="BXK512", agencies=["US-ATF"])
        result = _result(effects)
        assert ("PARTIAL", [], ["US-ATF: no usable filter"]) == (
            result["status"],
            result["asked"],
            result["unanswered"],
        )

    def test_the_trail_holds_no_identifier_and_no_point(self, pair: tuple[_Node, _Node]) -> None:
        """Audit entries of both sides name ids, agencies and counts; never a serial, a make, a
        blinded or evaluated point."""
        nl, be = pair
        asked = nl.ask(make="Glock", serial_number="BXK512")
        [query] = nl.hits._pending.values()
        point = query.asked["BE-FPJ"].blinded[0].point
        answered = be.receive(asked)
        done = nl.receive(answered)
        trail = json.dumps([dict(a.data) for e in (asked, answered, done) for a in e.audit])
        assert point.hex() not in trail and base64.b64encode(point).decode() not in trail
        for secret in ("BXK512", "Glock", "GLOCK"):
            assert secret not in trail
        kinds = [
            a.kind for e in (asked, answered, done) for a in e.audit if a.kind.startswith("hit")
        ]
        assert ["hit_query", "hit_evaluated", "hit_result"] == kinds
