"""Envelope and receipt format 2 (contract 1.1): a minimal clear header, keyed message ids,
receipts without event metadata, padded sizes; format 1 still opens beside it."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace
from datetime import timedelta

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract
from gateway.core.effects import Limits
from gateway.core.inbound import Delivery, InboundCore
from gateway.core.outbound import OutboundCore, PlainEvent, parse_plain_event
from gateway.crypto import envelope
from gateway.crypto.envelope import (
    HEADER_TYPE,
    DataKeyRing,
    Header,
    PairKeys,
    Sealed,
    UnwrapCache,
    keyed_message_id,
    message_id_for,
    open_envelope,
    pad,
    padded_size,
    read_header,
    seal,
    unpad,
)
from gateway.crypto.keys import AgencyKeys, generate_encryption_key
from gateway.crypto.receipts import open_receipt
from gateway.crypto.trust import TrustList
from gateway.dev.demo import seizure_nl, trace_request_nl
from gateway.dev.sandbox import Federation
from gateway.errors import MalformedEnvelope, MessageIdMismatch
from gateway.node.config import DEFAULT_SCHEMAS, load_config
from gateway.policy.engine import load_policy
from gateway.resources import POLICIES
from gateway.types import AgencyId, EventId, KeyId
from tests.unit.conftest import NOW
from tests.unit.test_envelope import _template

CLEAR_FIELDS = {
    "format_version",
    "message_id",
    "sender",
    "recipient",
    "sender_key_id",
    "sender_encryption_key_id",
    "recipient_key_id",
    "wrapped_key",
    "nonce",
    "created_at",
    "expires_at",
}


def _pair_key(sender: AgencyKeys, trust: TrustList, recipient: str) -> bytes:
    public = trust.encryption_key(recipient, NOW)
    assert public is not None
    return PairKeys().derive(sender.encryption[0], public.public, sending=True)


def _seal2(
    registry2: SchemaRegistry,
    trust: TrustList,
    sender: AgencyKeys,
    body: bytes,
    *,
    event_id: str = "ev-1",
    message_id: str | None = None,
) -> bytes:
    public = trust.encryption_key("BE-FPJ", NOW)
    assert public is not None
    mid = message_id or keyed_message_id(
        _pair_key(sender, trust, "BE-FPJ"), sender.agency, event_id, "BE-FPJ"
    )
    template = replace(
        _template(),
        message_id=mid,
        event_id=EventId(event_id),
        sender=sender.agency,
        sender_encryption_key_id=sender.encryption[0].key_id,
    )
    data_key = DataKeyRing().key_for(AgencyId("BE-FPJ"), public, NOW)
    return seal(
        template, body, signer=sender.signing, data_key=data_key, codec=registry2, format_version=2
    ).data


def _open2(registry2: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys, data: bytes) -> Header:
    return open_envelope(
        data,
        keys=be_keys,
        trust=trust,
        cache=UnwrapCache(),
        codec=registry2,
        now=NOW,
        format_version=2,
    ).header


@pytest.fixture
def outbound2(
    nl_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList, fed: Federation
) -> OutboundCore:
    """NL-POL's outbound core speaking contract 1.1 (envelope format 2)."""
    return OutboundCore(
        keys=nl_keys,
        registry=registry2,
        policy=load_policy(POLICIES / "nl-pol.yaml", registry2),
        trust=trust,
        routes=load_config(fed.config("NL-POL")).routes_in_force,
        ttl=timedelta(days=1),
    )


class TestClearHeader:
    """Only what the exchange and the signature check need is in the clear."""

    def test_clear_header_fields_are_exactly_the_allowed_ones(
        self, registry2: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys
    ) -> None:
        """The clear header decodes to the allowed field set, and no inner value is in it."""
        data = _seal2(registry2, trust, nl_keys, b"body")
        record, _ = registry2.decode_prefix(HEADER_TYPE, data)
        assert CLEAR_FIELDS == set(record)
        for secret in (b"ev-1", b"fxgw.SeizureEvent", b"nl-pol-release", b"seizure-eu", b"test"):
            assert secret not in data
        assert b"\x01" * 32 not in data and b"\x02" * 32 not in data  # fingerprint, digest

    def test_full_header_comes_back_after_decryption(
        self,
        registry2: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        """open(seal(x)) gives the body and the whole header, inner part included."""
        data = _seal2(registry2, trust, nl_keys, b"body")
        opened = open_envelope(
            data,
            keys=be_keys,
            trust=trust,
            cache=UnwrapCache(),
            codec=registry2,
            now=NOW,
            format_version=2,
        )
        template = _template()
        assert b"body" == opened.plaintext
        h = opened.header
        assert (template.event_id, template.policy_rule, template.handling, template.withheld) == (
            h.event_id,
            h.policy_rule,
            h.handling,
            h.withheld,
        )
        assert h.sealed_read and 2 == h.format_version

    def test_read_header_alone_knows_no_event(
        self, registry2: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys
    ) -> None:
        """Before decryption a format-2 header has no event id, type or policy."""
        header = read_header(_seal2(registry2, trust, nl_keys, b"b"), registry2, 2)[0]
        assert not header.sealed_read
        assert ("", "", "") == (header.event_id, header.event_type, header.policy_id)


class TestKeyedMessageId:
    """Only sender and recipient can compute or check a message id."""

    def test_not_an_unkeyed_hash_of_public_values(
        self, nl_keys: AgencyKeys, trust: TrustList
    ) -> None:
        """A guessed event id cannot be confirmed by hashing public values."""
        mid = keyed_message_id(_pair_key(nl_keys, trust, "BE-FPJ"), "NL-POL", "ev-1", "BE-FPJ")
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        parts = [b"NL-POL", b"ev-1", b"BE-FPJ"]
        candidates = {
            sep.join(order)
            for sep in (b"\x00", b"", b"|", b":")
            for order in (parts, parts[::-1], [parts[1], parts[0], parts[2]])
        }
        candidates |= {c + public.public for c in candidates} | {nl_keys.encryption[0].public}
        for c in candidates:
            for algorithm in ("sha256", "sha1", "md5", "blake2b", "sha512", "sha3_256"):
                assert hashlib.new(algorithm, c).hexdigest()[:32] != mid
        assert message_id_for("NL-POL", "ev-1", "BE-FPJ") != mid

    def test_both_sides_derive_the_same_key_and_it_changes_with_the_pair(
        self, nl_keys: AgencyKeys, be_keys: AgencyKeys, trust: TrustList
    ) -> None:
        """Sender and recipient agree on the key; another sender key gives another id."""
        nl_public = nl_keys.encryption[0].public
        receiving = PairKeys().derive(be_keys.encryption[0], nl_public, sending=False)
        assert _pair_key(nl_keys, trust, "BE-FPJ") == receiving
        rotated = generate_encryption_key(KeyId("NL-POL-enc-2"))
        be_public = be_keys.encryption[0].public
        other = PairKeys().derive(rotated, be_public, sending=True)
        assert other != receiving
        assert keyed_message_id(other, "NL-POL", "e", "BE-FPJ") != keyed_message_id(
            receiving, "NL-POL", "e", "BE-FPJ"
        )

    def test_pair_key_is_derived_once(self, nl_keys: AgencyKeys, be_keys: AgencyKeys) -> None:
        """The X25519 operation runs once per key pair: the cache answers the second time."""
        pairs = PairKeys()
        first = pairs.derive(nl_keys.encryption[0], be_keys.encryption[0].public, sending=True)
        assert first is pairs.derive(
            nl_keys.encryption[0], be_keys.encryption[0].public, sending=True
        )

    def test_message_id_of_another_event_is_refused(
        self,
        registry2: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        """The receiver recomputes the id from the sealed event id and refuses a mismatch."""
        wrong = keyed_message_id(_pair_key(nl_keys, trust, "BE-FPJ"), "NL-POL", "ev-2", "BE-FPJ")
        data = _seal2(registry2, trust, nl_keys, b"b", message_id=wrong)
        with pytest.raises(MessageIdMismatch):
            _open2(registry2, trust, be_keys, data)

    def test_another_sender_cannot_shadow_a_message(
        self,
        registry2: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        us_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        """US-ATF reusing NL-POL's message id for the same event is refused."""
        nl_id = keyed_message_id(_pair_key(nl_keys, trust, "BE-FPJ"), "NL-POL", "ev-1", "BE-FPJ")
        data = _seal2(registry2, trust, us_keys, b"b", message_id=nl_id)
        with pytest.raises(MessageIdMismatch):
            _open2(registry2, trust, be_keys, data)


class TestPadding:
    """Sealed content is padded to a few size classes, unambiguously and checked."""

    @settings(max_examples=60, deadline=None)
    @given(content=st.binary(max_size=9000))
    def test_padding_round_trips_to_its_class(self, content: bytes) -> None:
        """unpad(pad(x)) == x, and the padded length is x's size class."""
        padded = pad(content)
        assert padded_size(len(content)) == len(padded)
        assert content == unpad(padded)

    def test_classes(self) -> None:
        """Powers of two from 4 KiB to 256 KiB, then multiples of 64 KiB."""
        assert [4096, 4096, 8192, 16384, 262144, 327680] == [
            padded_size(n) for n in (0, 4095, 4096, 9000, 262143, 262144)
        ]

    @settings(max_examples=60, deadline=None)
    @given(content=st.binary(max_size=3000), data=st.data())
    def test_any_change_to_the_padding_is_refused(
        self, content: bytes, data: st.DataObject
    ) -> None:
        """A flipped padding byte never gives the content back (it is refused, or, when the
        flip writes a new 0x80 marker, reads as other content, which then fails to decode); a
        cut or an over-long padding never unpads."""
        padded = bytearray(pad(content))
        at = data.draw(st.integers(len(content), len(padded) - 1))
        padded[at] ^= data.draw(st.integers(1, 255))
        with contextlib.suppress(MalformedEnvelope):
            assert content != unpad(bytes(padded))
        with pytest.raises(MalformedEnvelope):
            unpad(pad(content)[:-1])
        with pytest.raises(MalformedEnvelope):  # well-formed, but a class too large
            unpad(nacl.bindings.sodium_pad(content, 2 * padded_size(len(content))))

    def test_envelope_padded_to_another_class_is_refused(
        self,
        registry2: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A sender padding to a class other than its content's is refused after decryption."""
        monkeypatch.setattr(
            envelope, "pad", lambda c: nacl.bindings.sodium_pad(c, 2 * padded_size(len(c)))
        )
        data = _seal2(registry2, trust, nl_keys, b"body")
        with pytest.raises(MalformedEnvelope, match="size class"):
            _open2(registry2, trust, be_keys, data)

    def test_seizure_and_trace_request_envelopes_share_a_size(
        self, outbound2: OutboundCore, registry2: SchemaRegistry
    ) -> None:
        """Envelopes of both event types to one recipient have one size."""
        sizes = set()
        for event in (seizure_nl(), trace_request_nl()):
            outcome = outbound2.release(
                parse_plain_event(json.dumps(event).encode(), registry2), NOW
            )
            sizes |= {len(s.data) for s in outcome.envelopes if s.header.recipient == "US-ATF"}
        assert 1 == len(sizes)


def _seizure_to_be(core: OutboundCore) -> tuple[PlainEvent, Sealed]:
    """NL-POL's demo seizure, and the envelope ``core`` seals of it for BE-FPJ."""
    plain = parse_plain_event(json.dumps(seizure_nl()).encode(), core.registry)
    [sealed] = [s for s in core.release(plain, NOW).envelopes if s.header.recipient == "BE-FPJ"]
    return plain, sealed


class TestInboundFormats:
    """A node on 1.1 reads format 1 and format 2; refusals still get receipts."""

    def test_format_1_and_2_both_deliver(
        self,
        outbound2: OutboundCore,
        registry: SchemaRegistry,
        registry2: SchemaRegistry,
        be_keys: AgencyKeys,
        trust: TrustList,
    ) -> None:
        """One seizure sealed in format 2 and in format 1 is delivered both ways."""
        contract = Contract.load(DEFAULT_SCHEMAS)
        be = InboundCore(be_keys, contract.newest.registry, trust, contract=contract)
        old = replace(
            outbound2, registry=registry, policy=load_policy(POLICIES / "nl-pol.yaml", registry)
        )
        for core, wire in ((outbound2, 2), (old, 1)):
            plain, sealed = _seizure_to_be(core)
            result = be.receive(sealed.data, NOW, set())
            assert isinstance(result, Delivery), result
            assert (plain.event_id, wire) == (result.header.event_id, result.header.format_version)

    def test_refused_before_decryption_gets_a_receipt_by_message_id(
        self,
        outbound2: OutboundCore,
        registry2: SchemaRegistry,
        be_keys: AgencyKeys,
        trust: TrustList,
    ) -> None:
        """A verified envelope refused as stale is answered REJECTED, keyed by its message id,
        with no event id in the receipt."""
        plain, sealed = _seizure_to_be(outbound2)
        later = NOW + timedelta(days=2)
        effects = InboundCore(be_keys, registry2, trust).take(sealed.data, later, {}, Limits())
        [receipt] = effects.receipts
        assert sealed.header.message_id == receipt.message_id
        assert plain.event_id.encode() not in receipt.data
        opened = open_receipt(
            receipt.data,
            trust=trust,
            codec=registry2,
            agency=AgencyId("NL-POL"),
            now=later,
            format_version=2,
        )
        assert (sealed.header.message_id, None, "REJECTED", "stale") == (
            opened.message_id,
            opened.event_id,
            opened.outcome,
            opened.reason,
        )


class TestOwnKey:
    """Format-2 message ids need an encryption key of our own that the trust list lists."""

    def test_no_listed_key_of_our_own_refuses_the_recipient(self, outbound2: OutboundCore) -> None:
        """A node holding only an unlisted X25519 key refuses, naming what to do."""
        stray = generate_encryption_key(KeyId("NL-POL-enc-unlisted"))
        core = replace(outbound2, keys=replace(outbound2.keys, encryption=(stray,)))
        plain = parse_plain_event(json.dumps(seizure_nl()).encode(), core.registry)
        outcome = core.release(plain, NOW)
        assert () == outcome.envelopes
        assert {"no_own_key"} == {r.reason for r in outcome.refused}
        assert all("install the key file" in r.detail for r in outcome.refused)
