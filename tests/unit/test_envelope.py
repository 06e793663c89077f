"""Envelopes: open(seal(x)) == x for the addressee only; any altered byte is refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract.schemas import SchemaRegistry
from gateway.crypto.envelope import (
    ENVELOPE_TYPE,
    HEADER_TYPE,
    DataKeyRing,
    Handling,
    Header,
    Sealed,
    UnwrapCache,
    message_id_for,
    open_envelope,
    seal,
)
from gateway.crypto.keys import AgencyKeys, generate_encryption_key, generate_signing_key
from gateway.crypto.trust import TrustList
from gateway.errors import (
    BadSignature,
    DecryptionFailed,
    MalformedEnvelope,
    NotForUs,
    PeerError,
    Stale,
    UntrustedSender,
)
from gateway.types import AgencyId, EventId, EventType, KeyId
from tests.contracts import V1_2_EDITS, Edit, version_folder
from tests.unit.conftest import NOW

HANDLING = Handling("H2", "test", "B", 2, "NONE", 30, None)


def _template(recipient: str = "BE-FPJ") -> Header:
    return Header(
        message_id=message_id_for("NL-POL", "ev-1", recipient),
        event_id=EventId("ev-1"),
        sender=AgencyId("NL-POL"),
        recipient=AgencyId(recipient),
        event_type=EventType("fxgw.SeizureEvent"),
        schema_fingerprint=b"\x01" * 32,
        policy_id="nl-pol-release@1",
        policy_rule="seizure-eu",
        policy_digest=b"\x02" * 32,
        handling=HANDLING,
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
        withheld=("persons",),
    )


def _seal(
    registry: SchemaRegistry,
    trust: TrustList,
    sender: AgencyKeys,
    plaintext: bytes,
    recipient: str = "BE-FPJ",
) -> Sealed:
    public = trust.encryption_key(recipient, NOW)
    assert public is not None
    data_key = DataKeyRing().key_for(AgencyId(recipient), public, NOW)
    return seal(
        _template(recipient), plaintext, signer=sender.signing, data_key=data_key, codec=registry
    )


def _open(
    registry: SchemaRegistry, trust: TrustList, keys: AgencyKeys, data: bytes, **kw: object
) -> bytes:
    return open_envelope(
        data,
        keys=keys,
        trust=trust,
        cache=UnwrapCache(),
        codec=registry,
        now=kw.pop("now", NOW),
        **kw,  # type: ignore[arg-type]
    ).plaintext


class TestRoundTrip:
    """The addressee opens what was sealed for it."""

    @settings(max_examples=30, deadline=None)
    @given(plaintext=st.binary(max_size=2048))
    def test_open_seal_is_identity(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        plaintext: bytes,
    ) -> None:
        """open(seal(x)) == x."""
        sealed = _seal(registry, trust, nl_keys, plaintext)
        assert plaintext == _open(registry, trust, be_keys, sealed.data)

    def test_header_carries_key_ids(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """The sealed header names the signing key and the recipient's encryption key."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        assert nl_keys.signing.key_id == sealed.header.sender_key_id
        assert be_keys.encryption[0].key_id == sealed.header.recipient_key_id
        assert 24 == len(sealed.header.nonce)

    def test_another_recipient_cannot_open(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, us_keys: AgencyKeys
    ) -> None:
        """US-ATF's keys refuse an envelope sealed for BE-FPJ."""
        sealed = _seal(registry, trust, nl_keys, b"secret")
        with pytest.raises(NotForUs):
            _open(registry, trust, us_keys, sealed.data)

    def test_readdressed_header_breaks_the_signature(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, us_keys: AgencyKeys
    ) -> None:
        """Changing the recipient in the header (to re-address it) fails the signature check."""
        sealed = _seal(registry, trust, nl_keys, b"secret")
        record = registry.decode("fxgw.Envelope", sealed.data)
        header = dict(record["header"])  # type: ignore[call-overload]
        header["recipient"] = "US-ATF"
        forged = registry.encode("fxgw.Envelope", {**record, "header": header})
        with pytest.raises(BadSignature):
            _open(registry, trust, us_keys, forged)


class TestTamper:
    """Flipping any byte of any part makes the envelope unopenable."""

    @settings(max_examples=300, deadline=None)
    @given(data=st.data())
    def test_any_flipped_byte_is_refused(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        data: st.DataObject,
    ) -> None:
        """Whatever byte is altered, opening raises a PeerError and returns no plaintext."""
        sealed = _seal(registry, trust, nl_keys, b"released record bytes")
        index = data.draw(st.integers(0, len(sealed.data) - 1), label="index")
        mask = data.draw(st.integers(1, 255), label="mask")
        altered = bytearray(sealed.data)
        altered[index] ^= mask
        with pytest.raises(PeerError):
            _open(registry, trust, be_keys, bytes(altered))

    def test_appended_bytes_are_refused(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """Trailing bytes after a valid envelope make it malformed."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        with pytest.raises(MalformedEnvelope):
            _open(registry, trust, be_keys, sealed.data + b"\x00")

    def test_truncated_envelope_is_malformed(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A cut envelope is malformed."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        with pytest.raises(MalformedEnvelope):
            _open(registry, trust, be_keys, sealed.data[:-10])

    def test_unlisted_signing_key_is_untrusted(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """An envelope signed with a key that is not on the trust list is refused."""
        rogue = replace(nl_keys, signing=generate_signing_key(KeyId("NL-POL/sign/rogue")))
        sealed = _seal(registry, trust, rogue, b"x")
        with pytest.raises(UntrustedSender):
            _open(registry, trust, be_keys, sealed.data)

    def test_listed_key_id_with_other_key_fails_signature(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """Claiming NL-POL's key id while signing with another key fails the signature."""
        impostor = replace(nl_keys, signing=replace(generate_signing_key(nl_keys.signing.key_id)))
        sealed = _seal(registry, trust, impostor, b"x")
        with pytest.raises(BadSignature):
            _open(registry, trust, be_keys, sealed.data)

    def test_wrong_data_key_fails_decryption(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A data key wrapped to a key BE-FPJ does not hold is refused."""
        other = generate_encryption_key(be_keys.encryption[0].key_id)
        keys = replace(be_keys, encryption=(other,))
        sealed = _seal(registry, trust, nl_keys, b"x")
        with pytest.raises(DecryptionFailed):
            _open(registry, trust, keys, sealed.data)


class TestFreshness:
    """Expired and future-dated envelopes are stale."""

    def test_expired_is_stale(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """After expires_at the envelope is refused."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        with pytest.raises(Stale, match="expired"):
            _open(registry, trust, be_keys, sealed.data, now=NOW + timedelta(days=2))

    def test_future_dated_is_stale(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """An envelope created well ahead of the receiver's clock is refused."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        with pytest.raises(Stale, match="future"):
            _open(registry, trust, be_keys, sealed.data, now=NOW - timedelta(hours=1))


class TestDataKeys:
    """Data keys rotate by count and by age, and are cached by the recipient."""

    def test_rotation_by_count(self, trust: TrustList) -> None:
        """After max_uses envelopes a new data key is made."""
        ring = DataKeyRing(max_uses=2)
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        ids = [ring.key_for(AgencyId("BE-FPJ"), public, NOW).key_id for _ in range(5)]
        assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4]

    def test_rotation_by_age(self, trust: TrustList) -> None:
        """A key older than max_age is replaced."""
        ring = DataKeyRing(max_age=timedelta(minutes=10))
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        first = ring.key_for(AgencyId("BE-FPJ"), public, NOW).key_id
        same = ring.key_for(AgencyId("BE-FPJ"), public, NOW + timedelta(minutes=9)).key_id
        later = ring.key_for(AgencyId("BE-FPJ"), public, NOW + timedelta(minutes=10)).key_id
        assert first == same != later

    def test_recipients_have_separate_keys(self, trust: TrustList) -> None:
        """Two recipients never share a data key."""
        ring = DataKeyRing()
        be, us = trust.encryption_key("BE-FPJ", NOW), trust.encryption_key("US-ATF", NOW)
        assert be is not None and us is not None
        assert (
            ring.key_for(AgencyId("BE-FPJ"), be, NOW).secret
            != ring.key_for(AgencyId("US-ATF"), us, NOW).secret
        )

    def test_a_new_recipient_key_gets_a_new_data_key_and_the_old_one_is_dropped(
        self, trust: TrustList
    ) -> None:
        """When the trust list gives a recipient another key (or other bytes under the same
        id), the next envelope gets a fresh data key wrapped to it; the old one is not kept."""
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        ring = DataKeyRing()
        first = ring.key_for(AgencyId("BE-FPJ"), public, NOW)
        rotated = replace(
            public,
            key_id=KeyId("BE-FPJ/encrypt/rotated"),
            public=bytes(generate_encryption_key(KeyId("x")).public),
        )
        second = ring.key_for(AgencyId("BE-FPJ"), rotated, NOW)
        assert first.secret != second.secret
        assert rotated.key_id == second.recipient_key_id
        assert [(AgencyId("BE-FPJ"), rotated.key_id)] == list(ring._current)
        same_id_other_bytes = replace(rotated, public=generate_encryption_key(KeyId("y")).public)
        third = ring.key_for(AgencyId("BE-FPJ"), same_id_other_bytes, NOW)
        assert third.secret != second.secret
        assert same_id_other_bytes.public == third.recipient_public

    def test_recipient_cache_unwraps_once(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """Envelopes of one epoch share one cached unwrapped key."""
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        ring, cache = DataKeyRing(), UnwrapCache()
        for i in range(3):
            key = ring.key_for(AgencyId("BE-FPJ"), public, NOW)
            sealed = seal(
                _template(), b"%d" % i, signer=nl_keys.signing, data_key=key, codec=registry
            )
            opened = open_envelope(
                sealed.data, keys=be_keys, trust=trust, cache=cache, codec=registry, now=NOW
            )
            assert b"%d" % i == opened.plaintext
        assert 1 == len(cache._keys)

    def test_message_id_is_stable_per_event_and_recipient(self) -> None:
        """The same event to the same recipient always gets the same message id."""
        assert message_id_for("A", "e", "B") == message_id_for("A", "e", "B")
        assert message_id_for("A", "e", "B") != message_id_for("A", "e", "C")


class TestHeaderIntegrity:
    """What a signature alone cannot rule out: ids a sender made up, non-canonical bytes,
    retention beyond any law, keys or trust lists that have lapsed since signing."""

    def _seal_header(
        self, registry: SchemaRegistry, trust: TrustList, sender: AgencyKeys, header: Header
    ) -> bytes:
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        data_key = DataKeyRing().key_for(AgencyId("BE-FPJ"), public, NOW)
        return seal(header, b"x", signer=sender.signing, data_key=data_key, codec=registry).data

    def test_made_up_message_id_is_refused(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A signed envelope whose message id is not derived from (sender, event, recipient)
        is malformed: it could otherwise shadow another sender's message as a duplicate."""
        header = replace(_template(), message_id=message_id_for("US-ATF", "ev-1", "BE-FPJ"))
        data = self._seal_header(registry, trust, nl_keys, header)
        with pytest.raises(MalformedEnvelope, match="message id"):
            _open(registry, trust, be_keys, data)

    @pytest.mark.parametrize("event_id", ["../../etc/passwd", "a\nb", "x" * 129, "-lead"])
    def test_unsafe_event_id_is_refused(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        event_id: str,
    ) -> None:
        """Event ids end up in file names and journals: only the federation's safe alphabet."""
        header = replace(
            _template(),
            event_id=EventId(event_id),
            message_id=message_id_for("NL-POL", event_id, "BE-FPJ"),
        )
        data = self._seal_header(registry, trust, nl_keys, header)
        with pytest.raises(MalformedEnvelope, match="event id"):
            _open(registry, trust, be_keys, data)

    @pytest.mark.parametrize("days", [0, 36_526, 2**31 - 1])
    def test_retention_out_of_range_is_refused(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        days: int,
    ) -> None:
        """A retention of zero days or beyond a century is not a handling code we honour."""
        header = replace(_template(), handling=replace(HANDLING, retention_days=days))
        data = self._seal_header(registry, trust, nl_keys, header)
        with pytest.raises(MalformedEnvelope, match="retention_days"):
            _open(registry, trust, be_keys, data)

    def test_non_canonical_encoding_is_refused(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """The same record written with a different (still decodable) array block layout is
        refused: only the canonical bytes are accepted, so one message has one digest."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        original = sealed.data
        # the withheld array ("persons",) is one block of count 1 (zigzag 0x02); Avro also
        # allows a negative count followed by the block's byte size
        block = b"\x02\x0epersons\x00"
        assert original.count(block) == 1
        altered = original.replace(block, b"\x01\x10\x0epersons\x00")
        assert altered != original
        with pytest.raises(MalformedEnvelope, match="canonical"):
            _open(registry, trust, be_keys, altered)

    def test_key_expired_since_signing_is_refused(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """The sender's key must be valid now as well as when it signed."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        key = next(
            k for k in trust.agencies[AgencyId("NL-POL")].keys if k.key_id == nl_keys.signing.key_id
        )
        assert key.valid_until is not None
        later = key.valid_until + timedelta(seconds=1)
        lapsed = replace(trust, expires_at=later + timedelta(days=1))
        with pytest.raises(UntrustedSender):
            _open(registry, lapsed, be_keys, sealed.data, now=later, max_lifetime=timedelta(9999))

    def test_expired_trust_list_refuses_everything(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A node whose trust list has lapsed opens nothing until a newer one is installed."""
        sealed = _seal(registry, trust, nl_keys, b"x")
        lapsed = replace(trust, expires_at=NOW - timedelta(seconds=1))
        with pytest.raises(UntrustedSender, match="trust list"):
            _open(registry, lapsed, be_keys, sealed.data)


def _reordered(schema: dict[str, object]) -> None:
    """Swap the envelope's ciphertext and signature fields (a layout read through the codec)."""
    fields = schema["fields"]
    assert isinstance(fields, list)
    fields[1], fields[2] = fields[2], fields[1]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class TestLayout:
    """Envelopes of the header-ciphertext-signature layout are written and read around the
    header bytes; the bytes are exactly the codec's encoding, and every other layout goes
    through the codec."""

    @pytest.mark.parametrize(
        ("edits", "format_version"),
        [({}, 1), (V1_2_EDITS, 2), ({"fxgw.Envelope": [_reordered]}, 1)],
        ids=["format-1", "format-2", "reordered"],
    )
    def test_sealed_bytes_are_the_codec_encoding(
        self,
        tmp_path: Path,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        edits: dict[str, list[Edit]],
        format_version: int,
    ) -> None:
        """Whatever the layout, the sealed bytes decode and re-encode to themselves with the
        codec, and open again."""
        registry = SchemaRegistry.load(version_folder(tmp_path / "v", edits))
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        data_key = DataKeyRing().key_for(AgencyId("BE-FPJ"), public, NOW)
        sealed = seal(
            replace(_template(), schema_fingerprint=b"\x03" * 32),
            b"body",
            signer=nl_keys.signing,
            data_key=data_key,
            codec=registry,
            format_version=format_version,
        )
        record = registry.decode(ENVELOPE_TYPE, sealed.data)
        assert registry.write(ENVELOPE_TYPE, record) == sealed.data
        assert record["ciphertext"] != record["signature"]
        opened = _open(registry, trust, be_keys, sealed.data, format_version=format_version)
        assert b"body" == opened

    def test_an_overlong_length_prefix_is_refused(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A ciphertext length written with a needless continuation byte decodes to the same
        value but is not the canonical encoding: refused, so one message has one digest."""
        data = _seal(registry, trust, nl_keys, b"x").data
        _, header_end = registry.decode_prefix(HEADER_TYPE, data)
        record = registry.decode(ENVELOPE_TYPE, data)
        ciphertext, signature = record["ciphertext"], record["signature"]
        assert isinstance(ciphertext, bytes) and isinstance(signature, bytes)
        prefix = _varint(len(ciphertext) << 1)
        overlong = prefix[:-1] + bytes([prefix[-1] | 0x80, 0x00])
        rest = ciphertext + _varint(len(signature) << 1) + signature
        assert data == data[:header_end] + prefix + rest
        with pytest.raises(MalformedEnvelope, match="canonical"):
            _open(registry, trust, be_keys, data[:header_end] + overlong + rest)

    @pytest.mark.parametrize("length", [-1, 2**40, 2**62])
    def test_a_length_past_the_end_is_malformed(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        length: int,
    ) -> None:
        """A negative or huge ciphertext length is refused before anything is copied."""
        data = _seal(registry, trust, nl_keys, b"x").data
        _, header_end = registry.decode_prefix(HEADER_TYPE, data)
        zigzag = (length << 1) ^ (length >> 63)
        with pytest.raises(MalformedEnvelope, match="not an envelope"):
            _open(registry, trust, be_keys, data[:header_end] + _varint(zigzag) + b"\x00" * 8)
