"""Receipts: signed by the receiving agency, checked by the sender, the same bytes every time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import VerifyKey

from gateway.contract.schemas import SchemaRegistry
from gateway.crypto.keys import AgencyKeys, generate_signing_key
from gateway.crypto.receipts import RECEIPT_TYPE, make_receipt, open_receipt
from gateway.crypto.trust import TrustList
from gateway.errors import BadSignature, NotForUs, PeerError, UntrustedSender
from gateway.types import AgencyId, EventId, KeyId, MessageId
from tests.contracts import V1_2_EDITS, Edit, version_folder
from tests.unit.conftest import NOW

DIGEST = bytes(range(32))


def _receipt(registry: SchemaRegistry, keys: AgencyKeys, **changes: object) -> bytes:
    fields: dict[str, object] = {
        "message_id": MessageId("m" * 32),
        "event_id": EventId("ev-1"),
        "sender": AgencyId("NL-POL"),
        "recipient": keys.agency,
        "envelope_digest": DIGEST,
        "outcome": "DELIVERED",
        "reason": None,
        "received_at": NOW,
        "signer": keys.signing,
        "codec": registry,
    }
    fields.update(changes)
    return make_receipt(**fields)  # type: ignore[arg-type]


def test_round_trip(registry: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys) -> None:
    """NL-POL opens BE-FPJ's receipt and reads what BE-FPJ did."""
    data = _receipt(registry, be_keys, outcome="REJECTED", reason="schema_invalid")
    receipt = open_receipt(data, trust=trust, codec=registry, agency=AgencyId("NL-POL"), now=NOW)
    assert ("REJECTED", "schema_invalid") == (receipt.outcome, receipt.reason)
    assert (AgencyId("BE-FPJ"), DIGEST) == (receipt.recipient, receipt.envelope_digest)
    assert NOW == receipt.received_at


def test_same_fields_give_the_same_bytes(registry: SchemaRegistry, be_keys: AgencyKeys) -> None:
    """A second receipt for the same envelope is byte-identical (idempotent)."""
    assert _receipt(registry, be_keys) == _receipt(registry, be_keys)
    assert _receipt(registry, be_keys) != _receipt(registry, be_keys, outcome="DUPLICATE")


def test_receipt_for_another_sender_is_refused(
    registry: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys
) -> None:
    """US-ATF does not accept a receipt meant for NL-POL."""
    data = _receipt(registry, be_keys)
    with pytest.raises(NotForUs):
        open_receipt(data, trust=trust, codec=registry, agency=AgencyId("US-ATF"), now=NOW)


def test_unlisted_key_is_refused(
    registry: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys
) -> None:
    """A receipt signed by a key that is not on the trust list is untrusted."""
    rogue = replace(be_keys, signing=generate_signing_key(KeyId("BE-FPJ/sign/rogue")))
    with pytest.raises(UntrustedSender):
        open_receipt(
            _receipt(registry, rogue),
            trust=trust,
            codec=registry,
            agency=AgencyId("NL-POL"),
            now=NOW,
        )


def test_claimed_issuer_with_another_key_fails(
    registry: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys
) -> None:
    """Using BE-FPJ's key id but another private key fails the signature."""
    impostor = replace(be_keys, signing=generate_signing_key(be_keys.signing.key_id))
    with pytest.raises(BadSignature):
        open_receipt(
            _receipt(registry, impostor),
            trust=trust,
            codec=registry,
            agency=AgencyId("NL-POL"),
            now=NOW,
        )


def test_reason_goes_with_rejected_only(registry: SchemaRegistry, be_keys: AgencyKeys) -> None:
    """A rejection names its reason; a delivery has none."""
    with pytest.raises(ValueError, match="reason"):
        _receipt(registry, be_keys, outcome="REJECTED")
    with pytest.raises(ValueError, match="reason"):
        _receipt(registry, be_keys, reason="stale")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_is_refused(
    registry: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys, data: st.DataObject
) -> None:
    """Any altered byte of a receipt makes it fail as a peer error."""
    receipt = _receipt(registry, be_keys, outcome="REJECTED", reason="stale")
    index = data.draw(st.integers(0, len(receipt) - 1))
    altered = bytearray(receipt)
    altered[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(PeerError):
        open_receipt(
            bytes(altered), trust=trust, codec=registry, agency=AgencyId("NL-POL"), now=NOW
        )


@pytest.mark.parametrize(
    ("edits", "format_version"),
    [({}, 1), (V1_2_EDITS, 2)],
    ids=["signature-last", "field-after-signature"],
)
def test_the_signature_covers_the_receipt_with_an_empty_signature(
    tmp_path: Path,
    trust: TrustList,
    be_keys: AgencyKeys,
    edits: dict[str, list[Edit]],
    format_version: int,
) -> None:
    """Whatever the field order (format 1 ends with the signature, the test's format 2 has a
    field after it), a receipt is the codec's encoding of its record, signed over the context
    label and the record's encoding with an empty signature; and it opens."""
    codec = SchemaRegistry.load(version_folder(tmp_path / "v", edits))
    data = _receipt(codec, be_keys, format_version=format_version)
    record = codec.decode(RECEIPT_TYPE, data)
    assert codec.write(RECEIPT_TYPE, record) == data
    signature = record["signature"]
    assert isinstance(signature, bytes)
    unsigned = codec.write(RECEIPT_TYPE, {**record, "signature": b""})
    VerifyKey(trust.signing_key(be_keys.agency, be_keys.signing.key_id, NOW)).verify(
        b"fxgw.receipt.v1\x00" + unsigned, signature
    )
    opened = open_receipt(
        data,
        trust=trust,
        codec=codec,
        agency=AgencyId("NL-POL"),
        now=NOW,
        format_version=format_version,
    )
    assert "DELIVERED" == opened.outcome
