"""The sans-I/O cores: a plain event in, sealed envelopes out; envelope bytes in, a delivery out."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from gateway.contract.schemas import SchemaRegistry
from gateway.core.effects import DeliveredEntry, Limits
from gateway.core.inbound import Delivery, DuplicateDrop, Expired, InboundCore, Rejection
from gateway.core.outbound import (
    MAX_DERIVED_FROM,
    OutboundCore,
    Outcome,
    PlainEvent,
    ReceivedEvent,
    Refused,
    parse_plain_event,
)
from gateway.core.routing import Route
from gateway.crypto.envelope import DataKeyRing, Handling, Header, message_id_for, seal
from gateway.crypto.keys import AgencyKeys, generate_signing_key
from gateway.crypto.trust import TrustList, authority_keys, load_trust_list, sign_trust_list
from gateway.dev.demo import seizure_nl, seizure_us, trace_request_nl
from gateway.dev.sandbox import Federation
from gateway.errors import PeerError, RecordInvalid, UnknownEventType
from gateway.node.config import load_config
from gateway.policy.engine import Denied, Plan, Policy, apply_plan, load_policy
from gateway.policy.transforms import Pseudonymiser
from gateway.types import AgencyId, EventId, EventType, MessageId
from tests.unit.conftest import NOW, repo_file

TTL = timedelta(days=7)
PSEUDONYMS = Pseudonymiser(b"\x05" * 32)
SEIZURE = EventType("fxgw.SeizureEvent")


@pytest.fixture(scope="module")
def nl_policy(registry: SchemaRegistry) -> Policy:
    """NL-POL's example release policy."""
    return load_policy(repo_file("policies", "nl-pol.yaml"), registry)


def _core(
    keys: AgencyKeys,
    registry: SchemaRegistry,
    policy: Policy,
    trust: TrustList,
    fed: Federation,
) -> OutboundCore:
    return OutboundCore(
        keys=keys,
        registry=registry,
        policy=policy,
        trust=trust,
        routes=load_config(fed.config("NL-POL")).routes_in_force,
        ttl=TTL,
        pseudonymiser=PSEUDONYMS,
    )


@pytest.fixture
def outbound(
    nl_keys: AgencyKeys,
    registry: SchemaRegistry,
    nl_policy: Policy,
    trust: TrustList,
    fed: Federation,
) -> OutboundCore:
    """NL-POL's outbound core with its sandbox routes."""
    return _core(nl_keys, registry, nl_policy, trust, fed)


@pytest.fixture
def be_inbound(be_keys: AgencyKeys, registry: SchemaRegistry, trust: TrustList) -> InboundCore:
    """BE-FPJ's inbound core."""
    return InboundCore(be_keys, registry, trust)


@pytest.fixture
def us_inbound(us_keys: AgencyKeys, registry: SchemaRegistry, trust: TrustList) -> InboundCore:
    """US-ATF's inbound core."""
    return InboundCore(us_keys, registry, trust)


@pytest.fixture
def seizure(registry: SchemaRegistry) -> PlainEvent:
    """NL-POL's demo seizure, parsed."""
    return parse_plain_event(seizure_nl(), registry)


def _by_recipient(outcome: Outcome) -> dict[str, bytes]:
    return {sealed.header.recipient: sealed.data for sealed in outcome.envelopes}


def _trust_without_encryption_key(fed: Federation, tmp_path: Path, agency: str) -> TrustList:
    """The sandbox trust list with ``agency``'s encryption key removed, signed again."""
    assert fed.trust_file is not None and fed.authority is not None
    data = yaml.safe_load(fed.trust_file.read_text(encoding="utf-8"))
    for entry in data["agencies"]:
        if entry["id"] == agency:
            entry["keys"] = [key for key in entry["keys"] if key["use"] != "encrypt"]
    path = tmp_path / "trust.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    Path(f"{path}.sig").write_bytes(sign_trust_list(path.read_bytes(), fed.authority))
    pinned = authority_keys(load_config(fed.config("NL-POL")).trust.pinned)
    return load_trust_list(path, pinned, now=NOW)


def _seal_raw(
    registry: SchemaRegistry,
    trust: TrustList,
    sender: AgencyKeys,
    body: bytes,
    *,
    event_type: str = SEIZURE,
    fingerprint: bytes | None = None,
    message_id: str | None = None,
    handling: Handling | None = None,
    event_id: str = "raw-1",
) -> bytes:
    """An envelope ``sender`` signs for BE-FPJ around ``body``, with a header as given."""
    public = trust.encryption_key("BE-FPJ", NOW)
    assert public is not None
    header = Header(
        message_id=MessageId(message_id or message_id_for(sender.agency, event_id, "BE-FPJ")),
        event_id=EventId(event_id),
        sender=sender.agency,
        recipient=AgencyId("BE-FPJ"),
        event_type=EventType(event_type),
        schema_fingerprint=fingerprint or registry.get(SEIZURE).fingerprint,
        policy_id="test@1",
        policy_rule="test",
        policy_digest=b"\x00" * 32,
        handling=handling or Handling("H1", "testing", "A", 1, "NONE"),
        created_at=NOW,
        expires_at=NOW + TTL,
    )
    data_key = DataKeyRing().key_for(AgencyId("BE-FPJ"), public, NOW)
    return seal(header, body, signer=sender.signing, data_key=data_key, codec=registry).data


class TestOutboundCore:
    """release routes, applies the policy per recipient and seals one envelope each."""

    def test_one_envelope_per_recipient(
        self, outbound: OutboundCore, seizure: PlainEvent, nl_policy: Policy
    ) -> None:
        """A Dutch seizure goes to US-ATF (listed) and BE-FPJ (EU group), each under its rule."""
        outcome = outbound.release(seizure, NOW)
        assert () == outcome.denied
        assert () == outcome.refused
        assert ["US-ATF", "BE-FPJ"] == [s.header.recipient for s in outcome.envelopes]
        assert {"BE-FPJ": "seizure-eu", "US-ATF": "seizure-partners"} == {
            s.header.recipient: s.header.policy_rule for s in outcome.envelopes
        }
        for sealed in outcome.envelopes:
            header = sealed.header
            assert ("NL-POL", seizure.event_id, SEIZURE) == (
                header.sender,
                header.event_id,
                header.event_type,
            )
            assert message_id_for("NL-POL", seizure.event_id, header.recipient) == (
                header.message_id
            )
            assert (nl_policy.policy_id, nl_policy.digest) == (
                header.policy_id,
                header.policy_digest,
            )
            assert (NOW, NOW + TTL) == (header.created_at, header.expires_at)
        assert 2 == len({s.header.message_id for s in outcome.envelopes})

    def test_same_event_gives_the_same_message_ids(
        self, outbound: OutboundCore, seizure: PlainEvent
    ) -> None:
        """Releasing an event again (after a crash) gives the same message ids, so the
        recipients drop the second copy as a duplicate."""
        first = outbound.release(seizure, NOW)
        again = outbound.release(seizure, NOW + timedelta(minutes=3))
        assert [s.header.message_id for s in first.envelopes] == [
            s.header.message_id for s in again.envelopes
        ]

    def test_unknown_explicit_recipient_is_refused(
        self, outbound: OutboundCore, seizure_event: dict[str, object], registry: SchemaRegistry
    ) -> None:
        """An explicit recipient not on the trust list is refused; the others are still sealed."""
        event = parse_plain_event({**seizure_event, "recipients": ["XX-NOPE"]}, registry)
        outcome = outbound.release(event, NOW)
        assert (Refused("XX-NOPE", "unknown_recipient", "not on the trust list"),) == (
            outcome.refused
        )
        assert ["US-ATF", "BE-FPJ"] == [s.header.recipient for s in outcome.envelopes]

    def test_explicit_sender_is_ignored(
        self, outbound: OutboundCore, seizure_event: dict[str, object], registry: SchemaRegistry
    ) -> None:
        """Naming the sender itself as a recipient neither seals nor refuses anything for it."""
        event = parse_plain_event({**seizure_event, "recipients": ["NL-POL"]}, registry)
        outcome = outbound.release(event, NOW)
        assert ["US-ATF", "BE-FPJ"] == [s.header.recipient for s in outcome.envelopes]
        assert () == outcome.refused

    def test_recipient_without_encryption_key_is_refused(
        self,
        nl_keys: AgencyKeys,
        registry: SchemaRegistry,
        nl_policy: Policy,
        fed: Federation,
        tmp_path: Path,
        seizure: PlainEvent,
    ) -> None:
        """An agency listed without a valid encryption key is refused with no_recipient_key."""
        trust = _trust_without_encryption_key(fed, tmp_path, "BE-FPJ")
        outcome = _core(nl_keys, registry, nl_policy, trust, fed).release(seizure, NOW)
        assert [("BE-FPJ", "no_recipient_key")] == [
            (r.recipient, r.reason) for r in outcome.refused
        ]
        assert ["US-ATF"] == [s.header.recipient for s in outcome.envelopes]

    def test_expired_encryption_keys_are_refused(
        self, outbound: OutboundCore, seizure: PlainEvent
    ) -> None:
        """After the trust list's own expiry, nothing is sealed and every recipient is refused."""
        outcome = outbound.release(seizure, NOW + timedelta(days=400))
        assert () == outcome.envelopes
        assert [("US-ATF", "trust_list_expired"), ("BE-FPJ", "trust_list_expired")] == [
            (r.recipient, r.reason) for r in outcome.refused
        ]

    def test_policy_denial_is_reported_not_sealed(
        self,
        nl_keys: AgencyKeys,
        registry: SchemaRegistry,
        trust: TrustList,
        fed: Federation,
        tmp_path: Path,
        seizure: PlainEvent,
    ) -> None:
        """A recipient no rule covers comes back in ``denied`` with no_rule; others are sealed."""
        path = tmp_path / "eu-only.yaml"
        path.write_text(
            "policy: {id: eu-only, version: 1, agency: NL-POL}\n"
            "rules:\n"
            "  - id: seizure-eu\n"
            "    event: fxgw.SeizureEvent\n"
            "    to: {groups: [EU]}\n"
            "    handling: {code: H2, purpose: testing, source: B, information: 2}\n"
            "    fields: {event_id: keep, reported_at: keep, reporting_agency: keep,"
            " 'firearms[].item_id': keep}\n",
            encoding="utf-8",
        )
        policy = load_policy(path, registry)
        outcome = _core(nl_keys, registry, policy, trust, fed).release(seizure, NOW)
        assert (Denied(AgencyId("US-ATF"), SEIZURE, "no_rule"),) == outcome.denied
        assert ["BE-FPJ"] == [s.header.recipient for s in outcome.envelopes]
        assert () == outcome.refused

    @pytest.mark.parametrize("latitude", [1e308, -1e308, float("inf"), float("nan")])
    def test_extreme_coordinate_does_not_stop_the_stream(
        self, outbound: OutboundCore, registry: SchemaRegistry, latitude: float
    ) -> None:
        """A double the schema accepts, in a field the policy generalises, either releases or
        fails as a PeerError (which the node quarantines); nothing else may escape release."""
        event = seizure_nl()
        record = event["record"]
        assert isinstance(record, dict)
        record["recovery_location"]["latitude"] = latitude
        try:
            outcome = outbound.release(parse_plain_event(event, registry), NOW)
        except PeerError:
            return
        assert ["US-ATF", "BE-FPJ"] == [s.header.recipient for s in outcome.envelopes]

    @pytest.mark.parametrize(
        ("routes", "why"),
        [((), "no route for its type"), (None, "its routes named no recipient")],
    )
    def test_an_event_routed_to_nobody_is_audited(
        self, outbound: OutboundCore, routes: tuple[Route, ...] | None, why: str
    ) -> None:
        """An event no route covers, or whose routes name nobody (a trace of a firearm made
        and imported here), is audited and logged as not routed: never silently dropped."""
        event = trace_request_nl()
        record = event["record"]
        assert isinstance(record, dict)
        record["firearm"]["manufacture_country"] = "NL"
        record["firearm"]["import_country"] = "NL"
        if routes is not None:
            outbound.routes = routes
        effects = outbound.take(json.dumps(event).encode(), NOW)
        assert () == effects.envelopes
        assert [("not_routed", why)] == [(e.kind, e.data["why"]) for e in effects.audit]
        assert effects.audit[0].warn

    def test_trace_request_goes_to_the_country_of_manufacture(
        self, outbound: OutboundCore, registry: SchemaRegistry
    ) -> None:
        """A trace of a Belgian pistol imported into NL is sent to BE-FPJ only (NL is us)."""
        event = parse_plain_event(trace_request_nl(), registry)
        outcome = outbound.release(event, NOW)
        assert [("BE-FPJ", "trace-request-urgent")] == [
            (s.header.recipient, s.header.policy_rule) for s in outcome.envelopes
        ]

    def test_envelope_header_lists_withheld_fields(
        self, outbound: OutboundCore, seizure: PlainEvent, nl_policy: Policy, trust: TrustList
    ) -> None:
        """Each header carries the withheld and transformed lists of its recipient's view."""
        outcome = outbound.release(seizure, NOW)
        for sealed in outcome.envelopes:
            agency = trust.agencies[sealed.header.recipient]
            plan = nl_policy.plan_for(SEIZURE, agency, seizure.record)
            assert isinstance(plan, Plan)
            released = apply_plan(
                plan, seizure.record, recipient=agency.agency_id, pseudonymiser=PSEUDONYMS, now=NOW
            )
            assert released.withheld == sealed.header.withheld
            assert released.transformed == sealed.header.transformed


@pytest.fixture
def seizure_event() -> dict[str, object]:
    """NL-POL's demo seizure in the national system's JSON form."""
    return seizure_nl()


class TestInboundCore:
    """receive opens, checks and decodes; a peer's fault is a Rejection, not an exception."""

    def test_delivery_is_the_released_view(
        self,
        outbound: OutboundCore,
        be_inbound: InboundCore,
        seizure: PlainEvent,
        nl_policy: Policy,
        trust: TrustList,
    ) -> None:
        """BE-FPJ receives exactly the view NL-POL's policy releases to it, with provenance."""
        sealed = _by_recipient(outbound.release(seizure, NOW))["BE-FPJ"]
        result = be_inbound.receive(sealed, NOW + timedelta(seconds=2), set())
        assert isinstance(result, Delivery)
        plan = nl_policy.plan_for(SEIZURE, trust.agencies[AgencyId("BE-FPJ")], seizure.record)
        assert isinstance(plan, Plan)
        released = apply_plan(
            plan, seizure.record, recipient="BE-FPJ", pseudonymiser=PSEUDONYMS, now=NOW
        )
        assert released.record == result.record
        provenance = result.provenance()
        assert "seizure-eu" == provenance["policy_rule"]
        assert list(released.withheld) == provenance["withheld"]
        assert list(released.transformed) == provenance["transformed"]
        assert ("NL-POL", "BE-FPJ", seizure.event_id) == (
            provenance["sender"],
            provenance["recipient"],
            provenance["event_id"],
        )
        assert hashlib.sha256(sealed).hexdigest() == provenance["envelope_sha256"]
        assert "persons[].address" in provenance["withheld"]

    def test_us_delivery_is_its_own_view(
        self,
        outbound: OutboundCore,
        us_inbound: InboundCore,
        seizure: PlainEvent,
    ) -> None:
        """US-ATF gets the partner view: no case reference, no names in clear."""
        sealed = _by_recipient(outbound.release(seizure, NOW))["US-ATF"]
        result = us_inbound.receive(sealed, NOW, set())
        assert isinstance(result, Delivery)
        assert "seizure-partners" == result.header.policy_rule
        assert result.record["case_reference"] is None
        assert "case_reference" in result.header.withheld
        persons = result.record["persons"]
        assert isinstance(persons, list)
        assert "Jansen" not in json.dumps([p["family_name"] for p in persons])

    def test_another_agency_cannot_read(
        self, outbound: OutboundCore, us_inbound: InboundCore, seizure: PlainEvent
    ) -> None:
        """US-ATF's core rejects BE-FPJ's envelope as not_for_us, keeping its header."""
        sealed = _by_recipient(outbound.release(seizure, NOW))["BE-FPJ"]
        result = us_inbound.receive(sealed, NOW, set())
        assert isinstance(result, Rejection)
        assert "not_for_us" == result.reason
        assert result.header is not None and "BE-FPJ" == result.header.recipient
        assert hashlib.sha256(sealed).digest() == result.digest

    def test_delivered_message_is_a_duplicate(
        self, outbound: OutboundCore, be_inbound: InboundCore, seizure: PlainEvent
    ) -> None:
        """A message id already in the delivered set is dropped as a duplicate."""
        sealed = _by_recipient(outbound.release(seizure, NOW))["BE-FPJ"]
        message_id = message_id_for("NL-POL", seizure.event_id, "BE-FPJ")
        result = be_inbound.receive(sealed, NOW, {message_id})
        assert isinstance(result, DuplicateDrop)
        assert message_id == result.header.message_id

    def test_re_released_event_is_a_duplicate(
        self, outbound: OutboundCore, be_inbound: InboundCore, seizure: PlainEvent
    ) -> None:
        """The same event released twice: the second envelope is a duplicate of the first."""
        delivered: set[str] = set()
        first = _by_recipient(outbound.release(seizure, NOW))["BE-FPJ"]
        result = be_inbound.receive(first, NOW, delivered)
        assert isinstance(result, Delivery)
        delivered.add(result.header.message_id)
        second = _by_recipient(outbound.release(seizure, NOW + timedelta(minutes=1)))["BE-FPJ"]
        assert first != second
        assert isinstance(be_inbound.receive(second, NOW, delivered), DuplicateDrop)

    def test_altered_envelope_is_rejected(
        self, outbound: OutboundCore, be_inbound: InboundCore, seizure: PlainEvent
    ) -> None:
        """A flipped byte anywhere in the envelope gives a Rejection, never a Delivery."""
        sealed = _by_recipient(outbound.release(seizure, NOW))["BE-FPJ"]
        for index in (0, len(sealed) // 3, len(sealed) // 2, len(sealed) - 1):
            altered = bytearray(sealed)
            altered[index] ^= 0x40
            result = be_inbound.receive(bytes(altered), NOW, set())
            assert isinstance(result, Rejection), index

    def test_garbage_is_malformed(self, be_inbound: InboundCore) -> None:
        """Bytes that are no envelope are rejected as malformed, without a header."""
        result = be_inbound.receive(b"\x00not an envelope", NOW, set())
        assert isinstance(result, Rejection)
        assert ("malformed", None) == (result.reason, result.header)

    def test_expired_envelope_is_stale(
        self, outbound: OutboundCore, be_inbound: InboundCore, seizure: PlainEvent
    ) -> None:
        """After its lifetime an envelope is rejected as stale."""
        sealed = _by_recipient(outbound.release(seizure, NOW))["BE-FPJ"]
        result = be_inbound.receive(sealed, NOW + TTL + timedelta(minutes=1), set())
        assert isinstance(result, Rejection)
        assert "stale" == result.reason

    def test_unknown_schema_is_rejected(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_inbound: InboundCore,
    ) -> None:
        """A signed envelope naming a schema fingerprint the contract lacks is rejected."""
        data = _seal_raw(registry, trust, nl_keys, b"", fingerprint=b"\x01" * 32)
        result = be_inbound.receive(data, NOW, set())
        assert isinstance(result, Rejection)
        assert "unknown_event_type" == result.reason

    def test_type_and_fingerprint_must_agree(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_inbound: InboundCore,
    ) -> None:
        """A header naming one event type with another type's fingerprint is rejected."""
        data = _seal_raw(registry, trust, nl_keys, b"", event_type="fxgw.TraceRequest")
        result = be_inbound.receive(data, NOW, set())
        assert isinstance(result, Rejection)
        assert "schema_invalid" == result.reason
        assert "fxgw.TraceRequest" in result.detail

    def test_undecodable_body_is_rejected(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_inbound: InboundCore,
    ) -> None:
        """An authentic envelope whose body is not a record of its schema is schema_invalid."""
        data = _seal_raw(registry, trust, nl_keys, b"\x02not a seizure record")
        result = be_inbound.receive(data, NOW, set())
        assert isinstance(result, Rejection)
        assert "schema_invalid" == result.reason
        assert result.header is not None and "raw-1" == result.header.event_id

    def test_authentic_raw_envelope_is_delivered(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_inbound: InboundCore,
        seizure: PlainEvent,
    ) -> None:
        """The raw helper's envelope around a valid record is delivered (the controls above
        fail for the reason they name, not for the helper)."""
        body = registry.encode(SEIZURE, seizure.record)
        data = _seal_raw(registry, trust, nl_keys, body, event_id=seizure.event_id)
        result = be_inbound.receive(data, NOW, set())
        assert isinstance(result, Delivery)
        assert seizure.record == result.record

    def test_message_id_of_another_sender_is_refused(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        us_keys: AgencyKeys,
        outbound: OutboundCore,
        be_inbound: InboundCore,
        seizure: PlainEvent,
    ) -> None:
        """Message ids are derived from (sender, event id, recipient): an envelope from US-ATF
        carrying the id of NL-POL's envelope must not be delivered, or it would make BE-FPJ
        drop NL-POL's genuine envelope as a duplicate."""
        stolen = message_id_for("NL-POL", seizure.event_id, "BE-FPJ")
        body = registry.encode(SEIZURE, seizure.record)
        forged = _seal_raw(registry, trust, us_keys, body, message_id=stolen)
        result = be_inbound.receive(forged, NOW, set())
        delivered = {result.header.message_id} if isinstance(result, Delivery) else set()
        genuine = _by_recipient(outbound.release(seizure, NOW))["BE-FPJ"]
        assert isinstance(result, Rejection)
        assert isinstance(be_inbound.receive(genuine, NOW, delivered), Delivery)

    def test_us_seizure_reaches_nl(
        self,
        us_keys: AgencyKeys,
        nl_keys: AgencyKeys,
        registry: SchemaRegistry,
        trust: TrustList,
        fed: Federation,
    ) -> None:
        """US-ATF's seizure, under its own policy and routes, is delivered to NL-POL."""
        policy = load_policy(repo_file("policies", "us-atf.yaml"), registry)
        core = OutboundCore(
            us_keys, registry, policy, trust, load_config(fed.config("US-ATF")).routes_in_force, TTL
        )
        event = parse_plain_event(seizure_us(), registry)
        outcome = core.release(event, NOW)
        assert ["NL-POL", "BE-FPJ"] == [s.header.recipient for s in outcome.envelopes]
        result = InboundCore(nl_keys, registry, trust).receive(
            _by_recipient(outcome)["NL-POL"], NOW, set()
        )
        assert isinstance(result, Delivery)
        assert event.record["firearms"] == result.record["firearms"]


class TestParsePlainEvent:
    """parse_plain_event validates the national system's JSON and names the field at fault."""

    def test_mapping_and_bytes_agree(self, registry: SchemaRegistry) -> None:
        """The same event parses alike from a mapping and from JSON bytes."""
        event = seizure_nl()
        parsed = parse_plain_event(event, registry)
        assert parsed == parse_plain_event(json.dumps(event).encode(), registry)
        record = event["record"]
        assert isinstance(record, dict)
        assert (SEIZURE, record["event_id"], ()) == (
            parsed.event_type,
            parsed.event_id,
            parsed.recipients,
        )

    def test_recipients_are_kept(self, registry: SchemaRegistry) -> None:
        """Explicit recipients are kept in order."""
        event = {**seizure_nl(), "recipients": ["US-CBP", "DE-BKA"]}
        assert ("US-CBP", "DE-BKA") == parse_plain_event(event, registry).recipients

    @pytest.mark.parametrize(
        ("path", "value", "field", "says"),
        [
            (("firearms", 0, "calibre"), 9, "firearms[0].calibre", "expected string or null"),
            (("firearms", 1, "firearm_type"), "BAZOOKA", "firearms[1].firearm_type", "one of"),
            (("persons", 0, "role"), None, "persons[0].role", "got null"),
            (("recovery_date",), "yesterday", "recovery_date", "YYYY-MM-DD"),
            (("firearms", 0, "colour"), "red", "firearms[0].colour", "unknown field"),
            (("event_id",), "", "event_id", "must be 1-128 letters"),
            (("event_id",), "../../spool/x", "event_id", "must be 1-128 letters"),
            (("event_id",), "ev 1\nforged line", "event_id", "must be 1-128 letters"),
        ],
    )
    def test_record_errors_name_the_field(
        self,
        registry: SchemaRegistry,
        path: tuple[str | int, ...],
        value: object,
        field: str,
        says: str,
    ) -> None:
        """A bad value is refused as schema_invalid, naming the path inside the record."""
        event = seizure_nl()
        node: object = event["record"]
        for step in path[:-1]:
            node = node[step]  # type: ignore[index]
        node[path[-1]] = value  # type: ignore[index]
        with pytest.raises(RecordInvalid) as info:
            parse_plain_event(event, registry)
        assert field == info.value.field
        assert "schema_invalid" == info.value.reason
        assert str(info.value).startswith(f"{field}: ")
        assert says in str(info.value)

    def test_missing_required_field(self, registry: SchemaRegistry) -> None:
        """A missing required field inside a list item is named with its index."""
        event = seizure_nl()
        record = copy.deepcopy(event["record"])
        assert isinstance(record, dict)
        del record["firearms"][1]["item_id"]
        with pytest.raises(RecordInvalid) as info:
            parse_plain_event({**event, "record": record}, registry)
        assert "firearms[1].item_id" == info.value.field
        assert "missing required field" in str(info.value)

    def test_errors_never_show_values(self, registry: SchemaRegistry) -> None:
        """An error names field and type, not the value the national system sent."""
        event = seizure_nl()
        record = event["record"]
        assert isinstance(record, dict)
        record["firearms"][0]["barrel_length_mm"] = "Jansen-1988-04-17"
        record["persons"][0]["gender"] = 12345678
        with pytest.raises(RecordInvalid) as info:
            parse_plain_event(event, registry)
        assert "Jansen-1988-04-17" not in str(info.value)

    def test_unknown_top_level_key(self, registry: SchemaRegistry) -> None:
        """A key besides event_type, record and recipients is refused, naming the key."""
        with pytest.raises(RecordInvalid, match="unexpected key") as info:
            parse_plain_event({**seizure_nl(), "priority": "high"}, registry)
        assert "priority" == info.value.field

    def test_unknown_event_type(self, registry: SchemaRegistry) -> None:
        """An event type the contract does not define is UnknownEventType."""
        with pytest.raises(UnknownEventType) as info:
            parse_plain_event({**seizure_nl(), "event_type": "fxgw.ParkingTicket"}, registry)
        assert "unknown_event_type" == info.value.reason
        assert "fxgw.ParkingTicket" in str(info.value)

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"event_type": None}, "event_type"),
            ({"recipients": "BE-FPJ"}, "recipients"),
            ({"recipients": ["BE-FPJ", 7]}, "recipients"),
            ({"record": ["not", "a", "record"]}, "record"),
        ],
    )
    def test_bad_envelope_keys(
        self, registry: SchemaRegistry, change: dict[str, object], field: str
    ) -> None:
        """A missing event type, a bad recipients list or a non-object record names the key."""
        with pytest.raises(RecordInvalid) as info:
            parse_plain_event({**seizure_nl(), **change}, registry)
        assert field == info.value.field

    def test_missing_record(self, registry: SchemaRegistry) -> None:
        """An event without a record names 'record'."""
        with pytest.raises(RecordInvalid) as info:
            parse_plain_event({"event_type": "fxgw.SeizureEvent"}, registry)
        assert "record" == info.value.field

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"not json at all", "not valid JSON"),
            (b"\xff\xfe{}", "not valid JSON"),
            (b"", "not valid JSON"),
            (b'{"event_type": NaN}', "not valid JSON"),
            (b'{"event_type": "\\ud800"}', "not valid JSON"),
            (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
            (b"[1, 2, 3]", "not a JSON object"),
            (b'"a string"', "not a JSON object"),
        ],
    )
    def test_bytes_that_are_no_event(
        self, registry: SchemaRegistry, data: bytes, message: str
    ) -> None:
        """Bytes that are not a JSON object are refused, naming no field."""
        with pytest.raises(RecordInvalid, match=message) as info:
            parse_plain_event(data, registry)
        assert info.value.field is None

    def test_a_byte_order_mark_is_no_fault(self, registry: SchemaRegistry) -> None:
        """A file saved with a UTF-8 byte order mark still parses, from its first line on."""
        data = json.dumps(seizure_nl()).encode()
        event = parse_plain_event(b"\xef\xbb\xbf" + data, registry)
        assert event == parse_plain_event(data, registry)


class TestReceivingSideHandling:
    """The handling a sender set travels signed in the header; the receiver enforces it."""

    def test_h1_is_marked_in_what_is_delivered(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
    ) -> None:
        """An H1 delivery carries the notice, the sender's name and the end of retention."""
        body = registry.encode(SEIZURE, seizure.record)
        h1 = Handling("H1", "testing", "A", 1, "NONE", 30)
        data = _seal_raw(registry, trust, nl_keys, body, handling=h1, event_id=seizure.event_id)
        result = be_inbound.receive(data, NOW, set())
        assert isinstance(result, Delivery)
        provenance = result.provenance()
        assert (
            "H1: not to be used in judicial proceedings without the consent of NL-POL"
            == (provenance["handling_notice"])
        )
        assert (NOW + timedelta(days=30)).isoformat().replace("+00:00", "Z") == (
            provenance["retain_until"]
        )

    def test_delivery_past_its_retention_is_dropped(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
    ) -> None:
        """An authentic envelope that arrives after the retention its sender set is Expired:
        not delivered, not quarantined."""
        body = registry.encode(SEIZURE, seizure.record)
        short = Handling("H0", "testing", "A", 1, "NONE", 1)
        data = _seal_raw(registry, trust, nl_keys, body, handling=short, event_id=seizure.event_id)
        core = be_inbound
        assert isinstance(core.receive(data, NOW + timedelta(hours=23), set()), Delivery)
        assert isinstance(core.receive(data, NOW + timedelta(days=1, seconds=1), set()), Expired)

    @pytest.mark.parametrize(
        ("code", "onward", "refused"),
        [("H2", "WITH_CONSENT", True), ("H0", "NONE", True), ("H1", "ALLOWED", False)],
    )
    def test_forwarding_follows_the_received_handling(
        self, outbound: OutboundCore, seizure: PlainEvent, code: str, onward: str, refused: bool
    ) -> None:
        """An event received from BE-FPJ under H2 (or without onward transfer) is not sent on
        to US-ATF; it may still go back to BE-FPJ. ALLOWED onward transfer is forwarded."""
        outbound.received = {seizure.event_id: ReceivedEvent("BE-FPJ", code, onward)}
        outcome = outbound.release(seizure, NOW)
        sealed_to = [s.header.recipient for s in outcome.envelopes]
        assert "BE-FPJ" in sealed_to
        if refused:
            assert [("US-ATF", "onward_transfer_refused")] == [
                (r.recipient, r.reason) for r in outcome.refused
            ]
            assert "US-ATF" not in sealed_to
        else:
            assert () == outcome.refused
            assert "US-ATF" in sealed_to

    @pytest.mark.parametrize(
        ("code", "onward", "refused"), [("H2", "ALLOWED", True), ("H0", "ALLOWED", False)]
    )
    def test_an_event_made_from_a_received_one_keeps_its_restriction(
        self, outbound: OutboundCore, seizure: PlainEvent, code: str, onward: str, refused: bool
    ) -> None:
        """A new event (its own id) that declares ``derived_from`` a received H2 event is held
        to that event's restriction: not to US-ATF, still back to the agency it came from."""
        outbound.received = {"be-ev-9": ReceivedEvent("BE-FPJ", code, onward)}
        record = outbound.registry.to_json_decoded(SEIZURE, seizure.record)
        raw = {"event_type": SEIZURE, "record": record, "derived_from": ["be-ev-9"]}
        derived = parse_plain_event(json.dumps(raw).encode(), outbound.registry)
        assert ("be-ev-9",) == derived.derived_from
        outcome = outbound.release(derived, NOW)
        sealed_to = {s.header.recipient for s in outcome.envelopes}
        assert "BE-FPJ" in sealed_to
        if refused:
            (refusal,) = outcome.refused
            assert ("US-ATF", "onward_transfer_refused") == (refusal.recipient, refusal.reason)
            assert refusal.detail.startswith("derived from be-ev-9, received from BE-FPJ under H2")
        else:
            assert "US-ATF" in sealed_to
        undeclared = outbound.release(seizure, NOW)  # the same data without the declaration
        assert "US-ATF" in {s.header.recipient for s in undeclared.envelopes}

    @pytest.mark.parametrize(
        "derived_from",
        [
            "be-ev-9",
            [1],
            ["bad id with spaces"],
            [f"ev-{i}" for i in range(MAX_DERIVED_FROM + 1)],
        ],
    )
    def test_derived_from_must_be_a_short_list_of_event_ids(
        self, registry: SchemaRegistry, seizure: PlainEvent, derived_from: object
    ) -> None:
        """Anything but a list of at most MAX_DERIVED_FROM event ids is refused, naming the key."""
        record = registry.to_json_decoded(SEIZURE, seizure.record)
        raw = {"event_type": SEIZURE, "record": record, "derived_from": derived_from}
        with pytest.raises(RecordInvalid) as caught:
            parse_plain_event(json.dumps(raw).encode(), registry)
        assert "derived_from" == caught.value.field

    @pytest.mark.parametrize(
        ("handling", "free", "consent", "judicial"),
        [
            (Handling("H2", "trace", "A", 1, "ALLOWED"), False, "NL-POL", True),
            (Handling("H1", "trace", "A", 1, "WITH_CONSENT"), False, "NL-POL", False),
            (Handling("H0", "trace", "A", 1, "ALLOWED", 30), True, None, True),
            (Handling("H3", "trace", "A", 1, "ALLOWED", None, "no copies"), True, None, True),
        ],
    )
    def test_every_delivery_states_its_restriction_for_machines(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
        handling: Handling,
        free: bool,
        consent: str | None,
        judicial: bool,
    ) -> None:
        """The delivery's provenance says, as plain values, whether the record may be passed
        on, whose consent it needs, until when it may be kept and what to declare in
        ``derived_from``."""
        body = registry.encode(SEIZURE, seizure.record)
        data = _seal_raw(
            registry, trust, nl_keys, body, handling=handling, event_id=seizure.event_id
        )
        result = be_inbound.receive(data, NOW, set())
        assert isinstance(result, Delivery)
        restriction = result.provenance()["restriction"]
        assert isinstance(restriction, dict)
        assert free == restriction["forward_without_consent"]
        assert consent == restriction["consent_from"]
        assert judicial == restriction["judicial_use_without_consent"]
        assert handling.onward_transfer == restriction["onward_transfer"]
        assert seizure.event_id == restriction["derived_from"]
        assert ("no copies" if handling.code == "H3" else None) == restriction["conditions"]
        days = handling.retention_days
        until = None if days is None else (NOW + timedelta(days=days))
        assert (None if until is None else until.isoformat().replace("+00:00", "Z")) == (
            restriction["retain_until"]
        )


class _Seen(dict[str, DeliveredEntry]):
    """A delivered-message lookup made of a plain dict."""


class TestInboundEffects:
    """What the inbound core decides must happen: bounded quarantine, verified-only receipts."""

    def _raw(
        self, registry: SchemaRegistry, trust: TrustList, nl: AgencyKeys, record: dict[str, object]
    ) -> bytes:
        body = registry.write(SEIZURE, record)  # a peer's bytes: no check of ours
        event_id = str(record["event_id"])
        return _seal_raw(registry, trust, nl, body, event_id=event_id)

    def test_delivery_comes_with_journal_entry_receipt_and_audit(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
    ) -> None:
        """A valid envelope: one delivery, one DELIVERED receipt to NL-POL, two audit entries
        (the first from a sender in a format and version also says so, once)."""
        effects = be_inbound.take(
            self._raw(registry, trust, nl_keys, seizure.record), NOW, _Seen(), Limits()
        )
        assert 1 == len(effects.deliveries) and 1 == len(effects.receipts)
        assert "NL-POL" == effects.receipts[0].sender
        assert ["peer_versions", "delivery", "receipt_sent"] == [a.kind for a in effects.audit]
        assert () == effects.quarantines
        again = be_inbound.take(
            self._raw(registry, trust, nl_keys, seizure.record), NOW, _Seen(), Limits()
        )
        assert ["delivery", "receipt_sent"] == [a.kind for a in again.audit]

    def test_oversize_bytes_are_quarantined_unread_in_bounded_form(
        self, be_inbound: InboundCore
    ) -> None:
        """Bytes over the envelope limit: a prefix and a digest are kept, no receipt is sent."""
        limits = Limits(
            max_envelope_bytes=2048, quarantine_raw_bytes=1024, quarantine_prefix_bytes=100
        )
        raw = b"\xff" * 5000
        effects = be_inbound.take(raw, NOW, _Seen(), limits)
        (record,) = effects.quarantines
        headers = dict(record.headers)
        assert (100, b"too_large", b"5000") == (
            len(record.value),
            headers["fxgw-reason"],
            headers["fxgw-original-bytes"],
        )
        assert hashlib.sha256(raw).hexdigest().encode() == headers["fxgw-sha256"]
        assert () == effects.receipts

    @pytest.mark.parametrize(
        ("message_id", "reason"),
        [("m" * 200_000, "malformed"), ("m" * 40, "bad_signature")],
        ids=["huge-message-id", "plain-message-id"],
    )
    def test_forged_signature_gets_no_receipt(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
        message_id: str,
        reason: str,
    ) -> None:
        """An envelope signed by a key not on the trust list is quarantined, never answered, and
        nothing of its header is quoted; a header field beyond its size limit is refused before
        the signature is even looked at."""
        forger = AgencyKeys(
            nl_keys.agency, generate_signing_key(nl_keys.signing.key_id), nl_keys.encryption
        )
        body = registry.encode(SEIZURE, seizure.record)
        raw = _seal_raw(registry, trust, forger, body, message_id=message_id)
        effects = be_inbound.take(raw, NOW, _Seen(), Limits())
        assert () == effects.receipts
        assert reason == effects.audit[0].data["reason"]
        assert all(message_id not in str(v) for v in effects.audit[0].data.values())
        assert all(len(v) <= 1024 for _, v in effects.quarantines[0].headers)

    def test_body_event_id_other_than_the_header_is_refused(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
    ) -> None:
        """An authentic envelope whose body names another event id is quarantined with its own
        reason, and answered REJECTED (the signature verified)."""
        body = registry.encode(SEIZURE, seizure.record)
        raw = _seal_raw(registry, trust, nl_keys, body, event_id="another-event")
        effects = be_inbound.take(raw, NOW, _Seen(), Limits())
        assert () == effects.deliveries
        assert "body_header_mismatch" == effects.audit[0].data["reason"]
        assert 1 == len(effects.receipts)

    def test_reporting_agency_other_than_the_sender_is_refused(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
    ) -> None:
        """NL-POL cannot deliver a seizure that says US-ATF reported it."""
        record = copy.deepcopy(seizure.record)
        record["reporting_agency"] = {**record["reporting_agency"], "agency_id": "US-ATF"}  # type: ignore[dict-item]
        effects = be_inbound.take(
            self._raw(registry, trust, nl_keys, record), NOW, _Seen(), Limits()
        )
        assert () == effects.deliveries
        assert "body_header_mismatch" == effects.audit[0].data["reason"]

    @pytest.mark.parametrize("number", ["nan", "inf", "-inf"])
    def test_non_finite_number_is_refused(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
        number: str,
    ) -> None:
        """A NaN or an infinity in the body is refused on the way in, as on the way out (the
        delivery document's JSON writer would turn it into null)."""
        record = copy.deepcopy(seizure.record)
        record["recovery_location"] = {**record["recovery_location"], "latitude": float(number)}  # type: ignore[dict-item]
        effects = be_inbound.take(
            self._raw(registry, trust, nl_keys, record), NOW, _Seen(), Limits()
        )
        assert () == effects.deliveries
        assert "non_finite_number" == effects.audit[0].data["reason"]

    def test_delivery_document_over_the_limit_is_refused(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
    ) -> None:
        """A document the national system's topic could not take is refused, not stalled on."""
        effects = be_inbound.take(
            self._raw(registry, trust, nl_keys, seizure.record),
            NOW,
            _Seen(),
            Limits(max_delivery_bytes=200),
        )
        assert () == effects.deliveries
        assert "delivery_too_large" == effects.audit[0].data["reason"]
        assert 1 == len(effects.receipts)

    def test_replay_gets_the_first_receipt_byte_for_byte(
        self,
        be_inbound: InboundCore,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        seizure: PlainEvent,
    ) -> None:
        """The same envelope again, later: a duplicate answered with the very first receipt."""
        raw = self._raw(registry, trust, nl_keys, seizure.record)
        first = be_inbound.take(raw, NOW, _Seen(), Limits())
        (d,) = first.deliveries
        again = be_inbound.take(
            raw, NOW + timedelta(minutes=5), _Seen({d.message_id: d.entry}), Limits()
        )
        assert first.receipts == again.receipts
        assert "duplicate" == again.audit[0].kind
