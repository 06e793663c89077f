"""Sealing and opening envelopes: one released view, for one recipient, signed by its sender.

An envelope (``schemas/avro/<version>/fxgw.Envelope.avsc``) is an Avro record of three parts:

- ``header``: in the clear, so that the exchange can route it and anyone with the trust list
  can check it;
- ``ciphertext``: under XChaCha20-Poly1305 with a 32-byte data key; the Avro encoding of the
  header is the associated data, so a header cannot be swapped onto another body;
- ``signature``: Ed25519 by the sender over :func:`signing_input` (a context label, the header
  bytes and the ciphertext), so anyone with the trust list can check the origin without
  decrypting, and a recipient cannot re-address an envelope without breaking it.

Two layouts, told apart by the codec's header type (a format's schemas say which it has):

- **format 1** (contract 1.0) has everything in the clear header: event id and type, schema
  fingerprint, policy id, digest and rule, handling, withheld and transformed paths; the
  ciphertext is the body alone, and the message id an unkeyed hash of sender, event id and
  recipient (:func:`message_id_for`). A node keeps reading and writing it for peers that speak
  only 1.0.
- **format 2** (contract 1.1) keeps in the clear only what the exchange and the signature check
  need: format, message id, sender, recipient, key ids, wrapped data key, nonce, created and
  expiry times, so a clear header has one size per sender, recipient and key set. The rest (the
  inner header) is sealed with the body as one ``fxgw.SealedContent`` record, padded to a size
  class (:func:`padded_size`) so that the envelope's size does not tell the event type.

Message ids of format 2 are keyed (:func:`keyed_message_id`): HMAC-SHA256 of sender, event id
and recipient under a pairwise key that only the two parties derive (X25519 of the sender's
encryption key and the recipient's, through BLAKE2b with a context label; the sender's key id
travels in the clear header). Nobody else can confirm a guessed event id, and the recipient,
who recomputes it after decryption from the sealed event id, refuses one that does not match
(``message_id_mismatch``), so nobody can shadow another sender's message in its duplicate log.
The pairwise key is derived once per key pair and cached (:class:`PairKeys`), like data keys.

Key rotation and duplicates: the message id depends on the key pair, so a re-release of an
event after either side rotated its X25519 key is a new message to the recipient (delivered
again, with the same event id in its provenance), not a duplicate. Duplicates come from a
sender's retries after a crash or an outage, minutes apart, within one key pair (keys overlap
for days during a rotation and the sender keeps its current key until the trust list replaces
it); a national system that must never see an event twice deduplicates on the event id it is
given. This is the price of an id nobody outside the pair can compute.

Data keys are made per (recipient, recipient key, epoch), rotated by age and by use count, and
travel wrapped (an X25519 sealed box) to the recipient's key in the header. Both sides cache
them: the sender reuses the current key for its epoch, the recipient keeps unwrapped keys so
that the X25519 operation runs once per epoch, not once per envelope.

Opening is all-or-nothing: :func:`open_envelope` returns the plaintext only after every check
passed, and raises a :class:`~gateway.errors.PeerError` otherwise. Pure: no I/O, time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
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

from gateway.crypto.keys import AgencyKeys, EncryptionKey, SigningKey
from gateway.crypto.limits import MAX_BYTES, MAX_NAME, MAX_PATHS, MAX_TEXT, check_sizes
from gateway.crypto.trust import PublicKey, TrustList
from gateway.errors import (
    BadSignature,
    DecryptionFailed,
    MalformedEnvelope,
    MessageIdMismatch,
    NotForUs,
    PeerError,
    Stale,
    UntrustedSender,
)
from gateway.types import AgencyId, EventId, EventType, KeyId, MessageId

FORMAT_VERSION = 1
HEADER_TYPE = "fxgw.EnvelopeHeader"
ENVELOPE_TYPE = "fxgw.Envelope"
SEALED_TYPE = "fxgw.SealedContent"
"""Format 2: what the ciphertext holds before padding (inner header and body)."""
_SIGNING_CONTEXT = b"fxgw.envelope.v1\x00"
_KEY_BYTES = 32
_NO_KEY = KeyId("")  # a template before seal() fills in the key ids
_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_MESSAGE_ID_CONTEXT = b"fxgw.message-id.v2\x00"
_PAIR_PERSON = b"fxgw.pair-key.v2"  # BLAKE2b personalisation: 16 bytes at most


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
    """Everything an envelope says of itself: the clear header (``fxgw.EnvelopeHeader``) and,
    in format 2, the inner header sealed with the body (``fxgw.SealedContent``).

    A sender fills the descriptive fields; :func:`seal` fills the key ids, the wrapped data key
    and the nonce. A format-2 header read from the clear part alone (before decryption) has
    the inner fields empty (:attr:`sealed_read` False).
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
    sender_encryption_key_id: KeyId = _NO_KEY
    """Format 2: the sender's X25519 key the message id is keyed with."""
    sealed_read: bool = True
    """False for a format-2 header of which only the clear part was read."""

    def clear_avro(self) -> dict[str, object]:
        """The Avro record form of the format-2 clear header."""
        return {
            "format_version": self.format_version,
            "message_id": self.message_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "sender_key_id": self.sender_key_id,
            "sender_encryption_key_id": self.sender_encryption_key_id,
            "recipient_key_id": self.recipient_key_id,
            "wrapped_key": self.wrapped_key,
            "nonce": self.nonce,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    def sealed_avro(self, body: bytes) -> dict[str, object]:
        """The Avro record form of the format-2 sealed content: inner header and ``body``."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_fingerprint": self.schema_fingerprint,
            "policy_id": self.policy_id,
            "policy_rule": self.policy_rule,
            "policy_digest": self.policy_digest,
            "handling": self.handling.to_avro(),
            "withheld": list(self.withheld),
            "transformed": list(self.transformed),
            "body": body,
        }

    def to_avro(self) -> dict[str, object]:
        """The Avro record form of the format-1 header."""
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
        """Build from the Avro record form of a format-1 header (already schema-checked)."""
        clear = cls.from_clear({**record, "sender_encryption_key_id": _NO_KEY})
        return replace(clear.with_sealed(record), data_key_id=str(record["data_key_id"]))

    @classmethod
    def from_clear(cls, record: Mapping[str, object]) -> Header:
        """Build from a format-2 clear header's record (already schema-checked); the inner
        fields stay empty until :meth:`with_sealed`."""
        return cls(
            format_version=_int(record["format_version"]),
            message_id=MessageId(str(record["message_id"])),
            event_id=EventId(""),
            sender=AgencyId(str(record["sender"])),
            recipient=AgencyId(str(record["recipient"])),
            event_type=EventType(""),
            schema_fingerprint=b"",
            policy_id="",
            policy_rule="",
            policy_digest=b"",
            handling=_UNREAD,
            created_at=_time(record["created_at"]),
            expires_at=_time(record["expires_at"]),
            sender_key_id=KeyId(str(record["sender_key_id"])),
            sender_encryption_key_id=KeyId(str(record["sender_encryption_key_id"])),
            recipient_key_id=KeyId(str(record["recipient_key_id"])),
            wrapped_key=_bytes(record["wrapped_key"]),
            nonce=_bytes(record["nonce"]),
            sealed_read=False,
        )

    def with_sealed(self, record: Mapping[str, object]) -> Header:
        """This clear header with the inner header of a decrypted ``fxgw.SealedContent``."""
        handling = record["handling"]
        if not isinstance(handling, Mapping):
            raise MalformedEnvelope("handling is not a record")
        return replace(
            self,
            event_id=EventId(str(record["event_id"])),
            event_type=EventType(str(record["event_type"])),
            schema_fingerprint=_bytes(record["schema_fingerprint"]),
            policy_id=str(record["policy_id"]),
            policy_rule=str(record["policy_rule"]),
            policy_digest=_bytes(record["policy_digest"]),
            handling=Handling.from_avro(handling),
            withheld=_strings(record["withheld"]),
            transformed=_strings(record["transformed"]),
            sealed_read=True,
        )


_UNREAD = Handling("", "", "", 0, "")
"""The handling of a format-2 header whose sealed part was not read."""


def seals_metadata(codec: Codec) -> bool:
    """Whether ``codec``'s envelope format seals the event's metadata with the body (format 2
    and later: the clear header has no event id), rather than putting it in the clear."""
    return ("event_id", "string") not in codec.layout(HEADER_TYPE)


_PAD_MIN = 4096
_PAD_LINEAR = 256 * 1024
_PAD_STEP = 64 * 1024


def padded_size(length: int) -> int:
    """The size class of ``length`` bytes of sealed content: the smallest power of two from
    4 KiB up to 256 KiB, then the smallest multiple of 64 KiB, that holds the content and at
    least one byte of padding. Seizures and trace requests of usual size (1-3 KiB with their
    inner header) share the smallest class; the larger classes double, so a size says little
    more than an order of magnitude; and a body that fitted the exchange's envelope limit
    (``limits.max_envelope_bytes``, 960 KiB by default) before padding is refused as
    ``envelope_too_large`` only when it is within 64 KiB of the limit."""
    need = length + 1
    if need <= _PAD_LINEAR:
        return max(_PAD_MIN, 1 << (need - 1).bit_length())
    return -(-need // _PAD_STEP) * _PAD_STEP


def pad(content: bytes) -> bytes:
    """``content`` padded to its size class (ISO/IEC 7816-4, as libsodium's ``sodium_pad``: one
    0x80 byte, then zeros; written out here, a third of the binding's time)."""
    return content + b"\x80" + bytes(padded_size(len(content)) - len(content) - 1)


def unpad(padded: bytes) -> bytes:
    """The content of ``padded``, checked: the padding is well formed and the length is the
    size class of the content (so one content has exactly one padded form).

    :raises MalformedEnvelope: bad padding, or not the content's size class.
    """
    try:
        content = nacl.bindings.sodium_unpad(padded, max(len(padded), 1))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise MalformedEnvelope("the sealed content's padding is malformed") from exc
    if padded_size(len(content)) != len(padded):
        raise MalformedEnvelope("the sealed content is not padded to its size class")
    return content


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


def keyed_message_id(pair_key: bytes, sender: str, event_id: str, recipient: str) -> MessageId:
    """The format-2 message id of ``event_id`` from ``sender`` to ``recipient``: HMAC-SHA256
    under their pairwise key (:meth:`PairKeys.derive`), so only the two parties can compute it
    or confirm a guessed event id; stable for one key pair, so a retry is a duplicate."""
    message = _MESSAGE_ID_CONTEXT + f"{sender}\x00{event_id}\x00{recipient}".encode()
    return MessageId(hmac.digest(pair_key, message, "sha256").hex()[:32])


@dataclass(slots=True)
class PairKeys:
    """Pairwise message-id keys, one per (our X25519 key, their X25519 key, direction), derived
    once and kept (least recently used out): the X25519 operation runs once per key pair, not
    once per envelope."""

    capacity: int = 1024
    _keys: OrderedDict[tuple[bytes, bytes, bool], bytes] = field(default_factory=OrderedDict)

    def derive(self, ours: EncryptionKey, theirs: bytes, *, sending: bool) -> bytes:
        """The key for messages between our ``ours`` and their public key ``theirs``; with
        ``sending``, we are the sender. Both sides get the same key: BLAKE2b, keyed with the
        X25519 shared secret, of a context label, the sender's and the recipient's public keys.

        :raises DecryptionFailed: ``theirs`` is not a usable X25519 public key.
        """
        slot = (ours.public, theirs, sending)
        key = self._keys.get(slot)
        if key is not None:
            self._keys.move_to_end(slot)
            return key
        try:
            shared = nacl.bindings.crypto_scalarmult(bytes(ours.key), theirs)
        except (nacl.exceptions.CryptoError, RuntimeError, ValueError, TypeError) as exc:
            raise DecryptionFailed("no pairwise key with the peer's X25519 key") from exc
        keys = (ours.public, theirs) if sending else (theirs, ours.public)
        key = hashlib.blake2b(b"".join(keys), key=shared, person=_PAIR_PERSON).digest()[:32]
        self._keys[slot] = key
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return key

    def clear(self) -> None:
        """Forget every key (our keys changed)."""
        self._keys.clear()


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
    pairs: PairKeys = field(default_factory=PairKeys)
    """The sender's pairwise message-id keys."""

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
    pairs: PairKeys = field(default_factory=PairKeys)
    """The recipient's pairwise message-id keys."""

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
        if key_ids:
            self.pairs.clear()
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
    """Encrypt ``plaintext`` (the encoded body) for the template's recipient and sign the
    result, in envelope format ``format_version`` (``codec`` has that format's envelope types;
    when it seals the metadata, the inner header goes with the body, padded to its size class).

    The template's crypto fields are replaced: signer key id, recipient key id, data key id and
    wrapped key, and a fresh random nonce. Its message id is the caller's
    (:func:`message_id_for` in format 1, :func:`keyed_message_id` in format 2).
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
    if seals_metadata(codec):
        header_record = header.clear_avro()
        plaintext = pad(codec.write(SEALED_TYPE, header.sealed_avro(plaintext)))
    else:
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
    "sender_encryption_key_id",
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
        if "event_id" in header_record:
            _check_handling_sizes(header_record, "header")
            header = Header.from_avro(header_record)
        else:
            header = Header.from_clear(header_record)
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
    if header.sealed_read and not is_valid_event_id(header.event_id):
        raise MalformedEnvelope("event id has characters or a length outside the federation's rule")
    return header, header_bytes, ciphertext, signature


def _check_handling_sizes(record: Mapping[str, object], where: str) -> None:
    handling = record["handling"]
    if isinstance(handling, Mapping):
        check_sizes(handling, _HANDLING_LIMITS, f"{where}.handling")


def _peer_encryption_key(trust: TrustList, header: Header) -> bytes:
    """The sender's X25519 key the header names for its message id, listed and valid when the
    envelope was made.

    :raises UntrustedSender: not listed for the sender, revoked or outside its window.
    """
    agency = trust.agency(header.sender)
    for key in agency.keys if agency is not None else ():
        if key.key_id == header.sender_encryption_key_id and key.use == "encrypt":
            if key.valid_at(header.created_at):
                return key.public
            break
    raise UntrustedSender(
        f"the sender's encryption key id in the header is not a valid key of {header.sender}"
    )


def _open_sealed(
    header: Header,
    content: bytes,
    codec: Codec,
    keys: AgencyKeys,
    trust: TrustList,
    pairs: PairKeys,
) -> tuple[Header, bytes]:
    """The full header and the body of a decrypted format-2 envelope, its message id checked.

    :raises MalformedEnvelope: bad padding, not a sealed content, an inner field too long, or
        an event id outside the federation's rule.
    :raises MessageIdMismatch: the message id is not the pair's for the sealed event id.
    """
    try:
        record = codec.decode(SEALED_TYPE, unpad(content))
        check_sizes(record, _HEADER_LIMITS, "sealed")
        _check_handling_sizes(record, "sealed")
        full = header.with_sealed(record)
        body = _bytes(record["body"])
    except MalformedEnvelope:
        raise
    except (PeerError, KeyError) as exc:
        raise MalformedEnvelope(f"not a sealed content: {exc}") from exc
    if not is_valid_event_id(full.event_id):
        raise MalformedEnvelope("event id has characters or a length outside the federation's rule")
    ours = keys.encryption_key(header.recipient_key_id)
    if ours is None:  # unwrapping succeeded with it, so a reload just dropped it
        raise NotForUs(f"this node no longer holds {header.recipient_key_id!r}")
    pair_key = pairs.derive(ours, _peer_encryption_key(trust, header), sending=False)
    expected = keyed_message_id(pair_key, full.sender, full.event_id, full.recipient)
    if not hmac.compare_digest(expected, header.message_id):
        # a message id chosen freely could shadow another sender's message in our duplicate log
        raise MessageIdMismatch(
            "the message id is not the one sender and recipient derive for the sealed event id"
        )
    return full, body


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
    :raises MessageIdMismatch: format 2: the message id is not the one the pair derives for
        the sealed event id.
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
    if not header.sealed_read:
        _peer_encryption_key(trust, header)  # before any work for an unlisted key
    elif header.message_id != message_id_for(header.sender, header.event_id, header.recipient):
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
    if not header.sealed_read:
        header, plaintext = _open_sealed(header, plaintext, codec, keys, trust, cache.pairs)
    return Opened(header, plaintext, hashlib.sha256(data).digest())
