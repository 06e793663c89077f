"""Signed receipts: what a receiving node did with an envelope, told back to its sender.

Pure: :func:`make_receipt` builds and signs one, :func:`open_receipt` checks one. A receipt is an
Avro ``fxgw.Receipt`` record; its signature is Ed25519 over a context label and the Avro encoding
of the same record with an empty signature, by the receiving agency's key on the trust list. It
carries metadata only: ids, the envelope's digest, the outcome and the reason code. Format 2
(contract 1.1) has no event id either: the exchange learns nothing of the event from a receipt,
and the sender, who keeps the message id of every release in its audit trail, correlates by
message id. A REJECTED receipt for an envelope refused before decryption (after its signature
verified) is keyed by its message id alone.

Identity and idempotence: a receipt is about one envelope as received (``message_id`` and
``envelope_digest``). Ed25519 signatures are deterministic, so the same fields always give the
same bytes: a node that receives a delivered envelope again answers with the receipt it gave the
first time, byte for byte, and receipts are never receipted, so there is no loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

import nacl.exceptions
import nacl.signing

from gateway.crypto.envelope import Codec, avro_bytes
from gateway.crypto.keys import SigningKey
from gateway.crypto.limits import MAX_BYTES, MAX_NAME, check_sizes
from gateway.crypto.trust import TrustList
from gateway.errors import BadSignature, MalformedEnvelope, NotForUs, PeerError
from gateway.types import AgencyId, EventId, KeyId, MessageId

RECEIPT_TYPE = "fxgw.Receipt"
FORMAT_VERSION = 1
_SIGNING_CONTEXT = b"fxgw.receipt.v1\x00"

Outcome = Literal["DELIVERED", "REJECTED", "DUPLICATE"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """One receipt (see ``fxgw.Receipt``)."""

    message_id: MessageId
    event_id: EventId | None
    """None in format 2 (and when the envelope was refused before decryption)."""
    sender: AgencyId
    """The envelope's sender: who receives this receipt."""
    recipient: AgencyId
    """The envelope's recipient: who issued and signed this receipt."""
    envelope_digest: bytes
    outcome: Outcome
    reason: str | None
    received_at: datetime
    signing_key_id: KeyId
    signature: bytes = b""
    format_version: int = FORMAT_VERSION

    def to_avro(self) -> dict[str, object]:
        """The Avro record form."""
        return {
            "format_version": self.format_version,
            "message_id": self.message_id,
            "event_id": self.event_id or "",  # format 1 only: a format without it ignores it
            "sender": self.sender,
            "recipient": self.recipient,
            "envelope_digest": self.envelope_digest,
            "outcome": self.outcome,
            "reason": self.reason,
            "received_at": self.received_at,
            "signing_key_id": self.signing_key_id,
            "signature": self.signature,
        }


def _signing_input(receipt: Receipt, codec: Codec) -> bytes:
    # write, not encode: a receipt is built by our code from verified values, or was just
    # decoded; fastavro's writer still refuses a value of the wrong type
    return _SIGNING_CONTEXT + codec.write(RECEIPT_TYPE, replace(receipt, signature=b"").to_avro())


def _millis(moment: datetime) -> datetime:
    return moment - timedelta(microseconds=moment.microsecond % 1000)


def make_receipt(
    *,
    message_id: MessageId,
    event_id: EventId | None,
    sender: AgencyId,
    recipient: AgencyId,
    envelope_digest: bytes,
    outcome: Outcome,
    reason: str | None,
    received_at: datetime,
    signer: SigningKey,
    codec: Codec,
    format_version: int = FORMAT_VERSION,
) -> bytes:
    """The signed receipt, Avro-encoded in receipt format ``format_version`` (``codec`` has
    that format's receipt type; ``received_at`` is cut to milliseconds, as Avro keeps it).
    ``reason`` is required for REJECTED and refused otherwise."""
    if (outcome == "REJECTED") != (reason is not None):
        raise ValueError("a reason code goes with REJECTED and only with it")
    unsigned = Receipt(
        message_id,
        event_id,
        sender,
        recipient,
        envelope_digest,
        outcome,
        reason,
        _millis(received_at),
        signer.key_id,
        format_version=format_version,
    )
    unsigned_bytes = codec.write(RECEIPT_TYPE, unsigned.to_avro())
    signature = signer.sign(_SIGNING_CONTEXT + unsigned_bytes)
    if _signature_last(codec):
        # the empty signature is the one byte 0x00 at the end: put the signature in its place
        return unsigned_bytes[:-1] + avro_bytes(signature)
    return codec.write(RECEIPT_TYPE, replace(unsigned, signature=signature).to_avro())


def _signature_last(codec: Codec) -> bool:
    """Whether the receipt type ends with its ``bytes`` signature, so that the signed bytes are
    the receipt's own with the signature's encoding swapped for an empty one."""
    return codec.layout(RECEIPT_TYPE)[-1] == ("signature", "bytes")


_NAMES = ("message_id", "event_id", "sender", "recipient", "reason", "signing_key_id")
_LIMITS = {
    **dict.fromkeys(_NAMES, MAX_NAME),
    **dict.fromkeys(("envelope_digest", "signature"), MAX_BYTES),
}


def open_receipt(
    data: bytes,
    *,
    trust: TrustList,
    codec: Codec,
    agency: AgencyId,
    now: datetime,
    format_version: int = FORMAT_VERSION,
) -> Receipt:
    """Check a receipt of format ``format_version`` (``codec`` has that format's receipt type)
    addressed to ``agency`` (the envelope's sender).

    :raises MalformedEnvelope: not a canonical receipt of a format we speak, or a field longer
        than the limits of :mod:`gateway.crypto.limits`.
    :raises NotForUs: a receipt for another sender.
    :raises UntrustedSender: the issuer or its key is not on the trust list, or not valid now.
    :raises BadSignature: the signature does not verify.
    """
    try:
        record = codec.decode(RECEIPT_TYPE, data)
        check_sizes(record, _LIMITS, "receipt")
        if codec.write(RECEIPT_TYPE, record) != data:
            raise MalformedEnvelope("receipt is not in canonical Avro encoding")
        receipt = _from_avro(record, format_version)
    except MalformedEnvelope:
        raise
    except (PeerError, KeyError, TypeError, ValueError) as exc:
        # the codec says RecordInvalid for bytes that do not decode: to the sender of the
        # envelope, a receipt it cannot read is a malformed receipt, whatever the layer
        raise MalformedEnvelope(f"not a receipt ({type(exc).__name__})") from exc
    if receipt.sender != agency:
        raise NotForUs(f"receipt for {receipt.sender}, not for {agency}")
    public = trust.signing_key(receipt.recipient, receipt.signing_key_id, now)
    if _signature_last(codec):  # canonical bytes, checked above: no second encoding
        signed = _SIGNING_CONTEXT + data[: -len(avro_bytes(receipt.signature))] + b"\x00"
    else:
        signed = _signing_input(receipt, codec)
    try:
        nacl.signing.VerifyKey(public).verify(signed, receipt.signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise BadSignature(f"receipt signature by {receipt.signing_key_id!r} fails") from exc
    return receipt


def _from_avro(record: dict[str, object], format_version: int) -> Receipt:
    if record["format_version"] != format_version:
        raise MalformedEnvelope(f"receipt format version {record['format_version']} not spoken")
    outcome = record["outcome"]
    if outcome != "DELIVERED" and outcome != "REJECTED" and outcome != "DUPLICATE":
        raise MalformedEnvelope("unknown receipt outcome")
    received_at, digest, signature = (
        record["received_at"],
        record["envelope_digest"],
        record["signature"],
    )
    if not isinstance(received_at, datetime):
        raise MalformedEnvelope("received_at is not a timestamp")
    if not isinstance(digest, bytes) or not isinstance(signature, bytes):
        raise MalformedEnvelope("digest and signature are bytes")
    reason, event_id = record["reason"], record.get("event_id")
    return Receipt(
        MessageId(str(record["message_id"])),
        EventId(str(event_id)) if event_id else None,
        AgencyId(str(record["sender"])),
        AgencyId(str(record["recipient"])),
        digest,
        outcome,
        None if reason is None else str(reason),
        received_at,
        KeyId(str(record["signing_key_id"])),
        signature,
        format_version,
    )


__all__ = ["RECEIPT_TYPE", "Outcome", "Receipt", "make_receipt", "open_receipt"]
