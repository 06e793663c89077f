"""Sealing and opening envelopes: one released view, for one recipient, signed by its sender.

An envelope (``schemas/avro/1.0/fxgw.Envelope.avsc``) is an Avro record of three parts:

- ``header``: in the clear, so that routing, audit and receipts never need the body;
- ``ciphertext``: the released record (Avro-encoded) under XChaCha20-Poly1305 with a 32-byte
  data key; the Avro encoding of the header is the associated data, so a header cannot be
  swapped onto another body;
- ``signature``: Ed25519 by the sender over :func:`signing_input` (a context label, the header
  bytes and the ciphertext), so anyone with the trust list can check the origin without
  decrypting, and a recipient cannot re-address an envelope without breaking it.

Data keys are made per (recipient, recipient key, epoch), rotated by age and by use count, and
travel wrapped (an X25519 sealed box) to the recipient's key in the header. Both sides cache
them: the sender reuses the current key for its epoch, the recipient keeps unwrapped keys so
that the X25519 operation runs once per epoch, not once per envelope.

Opening is all-or-nothing: :func:`open_envelope` returns the plaintext only after every check
passed, and raises a :class:`~gateway.errors.PeerError` otherwise. Pure: no I/O, time is passed in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from gateway.crypto.keys import AgencyKeys, SigningKey
from gateway.crypto.limits import MAX_BYTES, MAX_NAME, MAX_PATHS, MAX_TEXT, check_sizes
from gateway.crypto.trust import PublicKey, TrustList
from gateway.errors import (
    BadSignature,
    DecryptionFailed,
    MalformedEnvelope,
    NotForUs,
    PeerError,
    Stale,
    UntrustedSender,
)
from gateway.types import AgencyId, EventId, EventType, KeyId, MessageId

FORMAT_VERSION = 1
HEADER_TYPE = "fxgw.EnvelopeHeader"
ENVELOPE_TYPE = "fxgw.Envelope"
_SIGNING_CONTEXT = b"fxgw.envelope.v1\x00"
_KEY_BYTES = 32
_NO_KEY = KeyId("")  # a template before seal() fills in the key ids
_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES


class Codec(Protocol):
    """Avro encoding by type name (the schema registry is one)."""

    def encode(self, name: str, record: Mapping[str, object]) -> bytes: ...

    def write(self, name: str, record: Mapping[str, object]) -> bytes: ...

    def decode(self, name: str, data: bytes) -> dict[str, object]: ...

    def decode_prefix(self, name: str, data: bytes) -> tuple[dict[str, object], int]: ...

    def layout(self, name: str) -> tuple[tuple[str, str], ...]: ...


_CONCATENATED = (("header", HEADER_TYPE), ("ciphertext", "bytes"), ("signature", "bytes"))
"""The envelope layout whose Avro encoding is the header's bytes followed by two ``bytes``
values (Avro encodes a record as its fields one after the other): such an envelope is written
and read around the header bytes, which are needed anyway for the signature, instead of being
encoded twice and re-encoded once more for the canonical check. Any other layout (a later
format may have one) goes through the codec."""


def avro_bytes(value: bytes) -> bytes:
    """Avro's encoding of a ``bytes`` value: its length as a zig-zag varint, then the bytes."""
    n, prefix = len(value) << 1, bytearray()  # zig-zag of a length (never negative)
    while n > 0x7F:
        prefix.append((n & 0x7F) | 0x80)
        n >>= 7
    prefix.append(n)
    return bytes(prefix) + value


def _read_avro_bytes(data: bytes, start: int) -> tuple[bytes, int]:
    """The ``bytes`` value Avro encodes at ``start`` and the offset after it; only the canonical
    (shortest) length prefix is accepted.

    :raises MalformedEnvelope: truncated, a negative or non-canonical length.
    """
    n, shift, pos = 0, 0, start
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedEnvelope("not an envelope: truncated or overlong length")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    length = (n >> 1) ^ -(n & 1)
    if length < 0 or pos + length > len(data):
        raise MalformedEnvelope("not an envelope: a length is negative or past the end")
    value = data[pos : pos + length]
    if avro_bytes(value)[: pos - start] != data[start:pos]:
        raise MalformedEnvelope("envelope is not in canonical Avro encoding")
    return value, pos + length


@dataclass(frozen=True, slots=True)
class Handling:
    """Handling conditions attached by the sender's policy (see ``fxgw.Handling``)."""

    code: str
    purpose: str
    source_evaluation: str
    information_evaluation: int
    onward_transfer: str
    retention_days: int | None = None
    conditions: str | None = None

    def to_avro(self) -> dict[str, object]:
        """The Avro record form."""
        return {
            "code": self.code,
            "purpose": self.purpose,
            "source_evaluation": self.source_evaluation,
            "information_evaluation": self.information_evaluation,
            "retention_days": self.retention_days,
            "onward_transfer": self.onward_transfer,
            "conditions": self.conditions,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, object]) -> Handling:
        """Build from the Avro record form (already schema-checked)."""
        retention = record["retention_days"]
        conditions = record["conditions"]
        if retention is not None and not 0 < _int(retention) <= MAX_RETENTION_DAYS:
            raise MalformedEnvelope(f"retention_days must be 1..{MAX_RETENTION_DAYS}")
        return cls(
            code=str(record["code"]),
            purpose=str(record["purpose"]),
            source_evaluation=str(record["source_evaluation"]),
            information_evaluation=_int(record["information_evaluation"]),
            onward_transfer=str(record["onward_transfer"]),
            retention_days=None if retention is None else _int(retention),
            conditions=None if conditions is None else str(conditions),
        )


MAX_RETENTION_DAYS = 36_525
"""A century: the longest retention a handling code may set (policies are checked against it)."""


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise MalformedEnvelope(f"expected an integer, got {type(value).__name__}")
    return value


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedEnvelope(f"expected bytes, got {type(value).__name__}")
    return value


def _time(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise MalformedEnvelope(f"expected a timestamp, got {type(value).__name__}")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MalformedEnvelope(f"expected a list, got {type(value).__name__}")
    return tuple(str(item) for item in value)


@dataclass(frozen=True, slots=True)
class Header:
    """The clear header (see ``fxgw.EnvelopeHeader``).

    A sender fills the descriptive fields; :func:`seal` fills the key ids, the wrapped data key
    and the nonce.
    """

    message_id: MessageId
    event_id: EventId
    sender: AgencyId
    recipient: AgencyId
    event_type: EventType
    schema_fingerprint: bytes
    policy_id: str
    policy_rule: str
    policy_digest: bytes
    handling: Handling
    created_at: datetime
    expires_at: datetime
    withheld: tuple[str, ...] = ()
    transformed: tuple[str, ...] = ()
    sender_key_id: KeyId = _NO_KEY
    recipient_key_id: KeyId = _NO_KEY
    data_key_id: str = ""
    wrapped_key: bytes = b""
    nonce: bytes = b""
    format_version: int = FORMAT_VERSION

    def to_avro(self) -> dict[str, object]:
        """The Avro record form."""
        return {
            "format_version": self.format_version,
            "message_id": self.message_id,
            "event_id": self.event_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "event_type": self.event_type,
            "schema_fingerprint": self.schema_fingerprint,
            "policy_id": self.policy_id,
            "policy_rule": self.policy_rule,
            "policy_digest": self.policy_digest,
            "handling": self.handling.to_avro(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "withheld": list(self.withheld),
            "transformed": list(self.transformed),
            "sender_key_id": self.sender_key_id,
            "recipient_key_id": self.recipient_key_id,
            "data_key_id": self.data_key_id,
            "wrapped_key": self.wrapped_key,
            "nonce": self.nonce,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, object]) -> Header:
        """Build from the Avro record form (already schema-checked)."""
        handling = record["handling"]
        if not isinstance(handling, Mapping):
            raise MalformedEnvelope("header.handling is not a record")
        return cls(
            format_version=_int(record["format_version"]),
            message_id=MessageId(str(record["message_id"])),
            event_id=EventId(str(record["event_id"])),
            sender=AgencyId(str(record["sender"])),
            recipient=AgencyId(str(record["recipient"])),
            event_type=EventType(str(record["event_type"])),
            schema_fingerprint=_bytes(record["schema_fingerprint"]),
            policy_id=str(record["policy_id"]),
            policy_rule=str(record["policy_rule"]),
            policy_digest=_bytes(record["policy_digest"]),
            handling=Handling.from_avro(handling),
            created_at=_time(record["created_at"]),
            expires_at=_time(record["expires_at"]),
            withheld=_strings(record["withheld"]),
            transformed=_strings(record["transformed"]),
            sender_key_id=KeyId(str(record["sender_key_id"])),
            recipient_key_id=KeyId(str(record["recipient_key_id"])),
            data_key_id=str(record["data_key_id"]),
            wrapped_key=_bytes(record["wrapped_key"]),
            nonce=_bytes(record["nonce"]),
        )


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed envelope: its header and its encoded bytes, ready to publish."""

    header: Header
    data: bytes


@dataclass(frozen=True, slots=True)
class Opened:
    """An envelope that passed every check: its header and the decrypted record bytes."""

    header: Header
    plaintext: bytes
    digest: bytes


EVENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def is_valid_event_id(value: str) -> bool:
    """Event ids are 1-128 characters of letters, digits and ``. _ : -``, starting with a letter
    or digit: safe in file names, journals and log lines on every node."""
    return EVENT_ID_PATTERN.fullmatch(value) is not None


def message_id_for(sender: str, event_id: str, recipient: str) -> MessageId:
    """The message id of the envelope of ``event_id`` for ``recipient``.

    Derived, not random: if a sender releases the same event twice (a retry after a crash), the
    recipient sees the same message id and drops the second copy.
    """
    digest = hashlib.sha256(f"{sender}\x00{event_id}\x00{recipient}".encode()).hexdigest()
    return MessageId(digest[:32])


def signing_input(header_bytes: bytes, ciphertext: bytes) -> bytes:
    """What the sender signs: a context label, the header length and bytes, the ciphertext."""
    return _SIGNING_CONTEXT + len(header_bytes).to_bytes(4, "big") + header_bytes + ciphertext


@dataclass(slots=True)
class DataKey:
    """A data key of one (recipient, recipient key, epoch), with its wrapped form."""

    key_id: str
    secret: bytes
    wrapped: bytes
    recipient_key_id: KeyId
    created_at: datetime
    uses: int = 0
    recipient_public: bytes = b""
    """The recipient's public key the data key is wrapped to."""


@dataclass(slots=True)
class DataKeyRing:
    """The sender's current data key per recipient, rotated by age and by use count, and
    whenever the recipient's key changes (another key, or the same id with other bytes on a
    newer trust list): a data key is never used again once its recipient key is not the one
    the trust list gives, and the recipient's older data keys are then dropped."""

    max_age: timedelta = timedelta(hours=1)
    max_uses: int = 10_000
    _current: dict[tuple[AgencyId, KeyId], DataKey] = field(default_factory=dict)

    def key_for(self, recipient: AgencyId, recipient_key: PublicKey, now: datetime) -> DataKey:
        """The data key to use for one more envelope to ``recipient``; counts the use."""
        slot = (recipient, recipient_key.key_id)
        key = self._current.get(slot)
        if (
            key is None
            or key.uses >= self.max_uses
            or now - key.created_at >= self.max_age
            or key.recipient_public != recipient_key.public
        ):
            for other in [s for s in self._current if s[0] == recipient and s != slot]:
                del self._current[other]  # the recipient's previous key: not used again
            secret = secrets.token_bytes(_KEY_BYTES)
            wrapped = nacl.public.SealedBox(nacl.public.PublicKey(recipient_key.public)).encrypt(
                secret
            )
            key = DataKey(
                secrets.token_hex(16),
                secret,
                bytes(wrapped),
                recipient_key.key_id,
                now,
                recipient_public=recipient_key.public,
            )
            self._current[slot] = key
        key.uses += 1
        return key


@dataclass(slots=True)
class UnwrapCache:
    """The recipient's unwrapped data keys, keyed by the wrapped bytes; least recently used out."""

    capacity: int = 4096
    _keys: OrderedDict[tuple[KeyId, bytes], bytes] = field(default_factory=OrderedDict)

    def unwrap(self, keys: AgencyKeys, key_id: KeyId, wrapped: bytes) -> bytes:
        """The data key inside ``wrapped``, sealed to our key ``key_id``.

        :raises NotForUs: we hold no encryption key with that id.
        :raises DecryptionFailed: the sealed box does not open, or holds no 32-byte key.
        """
        slot = (key_id, wrapped)
        secret = self._keys.get(slot)
        if secret is not None:
            self._keys.move_to_end(slot)
            return secret
        ours = keys.encryption_key(key_id)
        if ours is None:
            raise NotForUs(f"the data key is wrapped to {key_id!r}, which this node does not hold")
        try:
            secret = nacl.public.SealedBox(ours.key).decrypt(wrapped)
        except nacl.exceptions.CryptoError as exc:
            raise DecryptionFailed("the data key does not unwrap with our key") from exc
        if len(secret) != _KEY_BYTES:
            raise DecryptionFailed("the unwrapped data key is not 32 bytes")
        self._keys[slot] = secret
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return secret

    def forget(self, key_ids: Collection[KeyId]) -> int:
        """Drop the data keys unwrapped with our keys ``key_ids`` (keys no longer held, or held
        with other bytes): an envelope wrapped to a key the node gave up must not open from
        the cache. Returns how many were dropped."""
        gone = [slot for slot in self._keys if slot[0] in key_ids]
        for slot in gone:
            del self._keys[slot]
        return len(gone)


def seal(
    template: Header,
    plaintext: bytes,
    *,
    signer: SigningKey,
    data_key: DataKey,
    codec: Codec,
    format_version: int = FORMAT_VERSION,
) -> Sealed:
    """Encrypt ``plaintext`` for the template's recipient and sign the result, in envelope
    format ``format_version`` (``codec`` has that format's envelope types).

    The template's crypto fields are replaced: signer key id, recipient key id, data key id and
    wrapped key, and a fresh random nonce.
    """
    header = replace(
        template,
        sender_key_id=signer.key_id,
        recipient_key_id=data_key.recipient_key_id,
        data_key_id=data_key.key_id,
        wrapped_key=data_key.wrapped,
        nonce=secrets.token_bytes(_NONCE_BYTES),
        format_version=format_version,
    )
    header_record = header.to_avro()
    header_bytes = codec.write(HEADER_TYPE, header_record)
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, header_bytes, header.nonce, data_key.secret
    )
    signature = signer.sign(signing_input(header_bytes, ciphertext))
    if codec.layout(ENVELOPE_TYPE) == _CONCATENATED:
        data = header_bytes + avro_bytes(ciphertext) + avro_bytes(signature)
    else:
        data = codec.write(
            ENVELOPE_TYPE,
            {"header": header_record, "ciphertext": ciphertext, "signature": signature},
        )
    return Sealed(header, data)


_HEADER_NAMES = (
    "message_id",
    "event_id",
    "sender",
    "recipient",
    "event_type",
    "policy_id",
    "policy_rule",
    "sender_key_id",
    "recipient_key_id",
    "data_key_id",
)
_HEADER_LIMITS = {
    **dict.fromkeys(_HEADER_NAMES, MAX_NAME),
    **dict.fromkeys(("schema_fingerprint", "policy_digest", "wrapped_key", "nonce"), MAX_BYTES),
    **dict.fromkeys(("withheld", "transformed"), MAX_PATHS),
}
_HANDLING_LIMITS = dict.fromkeys(("purpose", "conditions"), MAX_TEXT)


def read_header(
    data: bytes, codec: Codec, format_version: int = FORMAT_VERSION
) -> tuple[Header, bytes, bytes, bytes]:
    """Parse an envelope of format ``format_version`` (``codec`` has that format's envelope
    types) without checking it: header, header bytes, ciphertext, signature.

    :raises MalformedEnvelope: the bytes are not an envelope of a format version we speak, or a
        header field is longer than the limits of :mod:`gateway.crypto.limits`.
    """
    concatenated = codec.layout(ENVELOPE_TYPE) == _CONCATENATED
    header_record: object
    try:
        if concatenated:
            header_record, header_end = codec.decode_prefix(HEADER_TYPE, data)
            ciphertext, end = _read_avro_bytes(data, header_end)
            signature, end = _read_avro_bytes(data, end)
            if end != len(data):
                raise MalformedEnvelope(f"not an envelope: {len(data) - end} trailing bytes")
        else:
            record = codec.decode(ENVELOPE_TYPE, data)
            header_record = record["header"]
            ciphertext, signature = _bytes(record["ciphertext"]), _bytes(record["signature"])
        if not isinstance(header_record, Mapping):
            raise MalformedEnvelope("header is not a record")
        check_sizes(header_record, _HEADER_LIMITS, "header")
        handling = header_record["handling"]
        if isinstance(handling, Mapping):
            check_sizes(handling, _HANDLING_LIMITS, "header.handling")
        header = Header.from_avro(header_record)
        header_bytes = codec.write(HEADER_TYPE, header_record)
    except MalformedEnvelope:
        raise
    except (PeerError, KeyError) as exc:
        raise MalformedEnvelope(f"not an envelope: {exc}") from exc
    if header.format_version != format_version:
        raise MalformedEnvelope(f"envelope format version {header.format_version} is not spoken")
    # Avro admits several encodings of one record (block sizes, length prefixes); the signed
    # header bytes are re-encoded from the record, so only the canonical form is accepted.
    canonical = (
        header_bytes == data[:header_end]
        if concatenated
        else codec.write(ENVELOPE_TYPE, record) == data
    )
    if not canonical:
        raise MalformedEnvelope("envelope is not in canonical Avro encoding")
    if not is_valid_event_id(header.event_id):
        raise MalformedEnvelope("event id has characters or a length outside the federation's rule")
    return header, header_bytes, ciphertext, signature


def open_envelope(
    data: bytes,
    *,
    keys: AgencyKeys,
    trust: TrustList,
    cache: UnwrapCache,
    codec: Codec,
    now: datetime,
    max_skew: timedelta = timedelta(minutes=5),
    max_lifetime: timedelta = timedelta(days=30),
    format_version: int = FORMAT_VERSION,
) -> Opened:
    """Check and decrypt an envelope addressed to ``keys.agency``.

    In order: parse, sender key on the trust list (valid at creation, not revoked), signature,
    addressee, freshness, data key, body. Returns only when all pass.

    :raises MalformedEnvelope: not an envelope.
    :raises UntrustedSender: sender or signing key not on the trust list, or not valid.
    :raises BadSignature: header or ciphertext altered, or signed by another key.
    :raises NotForUs: addressed to another agency, or to a key we do not hold.
    :raises Stale: expired, created in the future, or living longer than ``max_lifetime``.
    :raises DecryptionFailed: the data key or the body does not decrypt.
    """
    header, header_bytes, ciphertext, signature = read_header(data, codec, format_version)
    if trust.expires_at <= now:
        raise UntrustedSender("the trust list in force has expired; install a newer one")
    public = trust.signing_key(header.sender, header.sender_key_id, header.created_at)
    # valid when signed, and still valid now: a key that expired since is no longer accepted
    trust.signing_key(header.sender, header.sender_key_id, now)
    try:
        nacl.signing.VerifyKey(public).verify(signing_input(header_bytes, ciphertext), signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise BadSignature(
            f"signature by {header.sender_key_id!r} does not verify over header and body"
        ) from exc
    if header.recipient != keys.agency:
        raise NotForUs(f"addressed to {header.recipient}, not to {keys.agency}")
    if header.message_id != message_id_for(header.sender, header.event_id, header.recipient):
        # a message id chosen freely could shadow another sender's message in our duplicate log
        raise MalformedEnvelope(
            "message id is not the one derived from sender, event and recipient"
        )
    if header.expires_at <= now:
        raise Stale(f"expired at {header.expires_at.isoformat()}")
    if header.created_at > now + max_skew:
        raise Stale(f"created in the future ({header.created_at.isoformat()})")
    if header.expires_at - header.created_at > max_lifetime:
        raise Stale("lifetime longer than this node accepts")
    secret = cache.unwrap(keys, header.recipient_key_id, header.wrapped_key)
    try:
        plaintext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, header_bytes, header.nonce, secret
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise DecryptionFailed("the body does not authenticate under its data key") from exc
    return Opened(header, plaintext, hashlib.sha256(data).digest())
