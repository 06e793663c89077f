"""The inbound core: envelope bytes in, what must happen out.

Sans-I/O. :meth:`InboundCore.receive` opens the envelope (trust list, signature, addressee,
freshness, decryption: see :func:`gateway.crypto.envelope.open_envelope`), drops a message id it
has already delivered, decodes the body with the schema named by its fingerprint, checks that the
body agrees with the signed header, and returns a :class:`Delivery`. Anything a peer got wrong
comes back as a :class:`Rejection` with a reason code.

:meth:`InboundCore.take` turns that into :class:`~gateway.core.effects.Effects`: the delivery
document, the journal entry, the signed receipt, the quarantine record and the audit entries.
Only an envelope whose signature verified against the trust list is answered with a receipt
(REJECTED included): receipts are never built from a header nobody vouched for. The size of the
raw bytes is checked before anything else, and nothing of an unverified header is quoted.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nacl.exceptions
import nacl.signing
import orjson

from gateway.audit.chain import Value
from gateway.contract.schemas import Schema, SchemaRegistry
from gateway.contract.versions import Contract, ContractVersion, missing_fields
from gateway.core.effects import (
    AuditEntry,
    Deliver,
    DeliveredEntry,
    DeliveredLookup,
    Effects,
    Limits,
    Observed,
    Receipt,
    Remember,
    merge,
    quarantine,
)
from gateway.crypto.envelope import (
    ENVELOPE_TYPE,
    Handling,
    Header,
    UnwrapCache,
    message_id_for,
    open_envelope,
    read_header,
    signing_input,
)
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.receipts import RECEIPT_TYPE, make_receipt
from gateway.crypto.receipts import Outcome as ReceiptOutcome
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError, RecordInvalid, UnknownEventType
from gateway.types import AgencyId, EventId, MessageId


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def handling_notice(handling: Handling, sender: str) -> str:
    """The marking a national system shows with the record, in words."""
    code = handling.code
    if code == "H0":
        return "H0: for preventing and combating crime only"
    if code == "H1":
        return f"H1: not to be used in judicial proceedings without the consent of {sender}"
    if code == "H2":
        return f"H2: not to be disseminated further without the consent of {sender}"
    return f"H3: restricted by {sender}: {handling.conditions or 'see the sender'}"


def retain_until(header: Header) -> datetime | None:
    """The end of the retention the sender set, counted from creation; None when unset."""
    days = header.handling.retention_days
    return None if days is None else header.created_at + timedelta(days=days)


def restriction(header: Header) -> dict[str, object]:
    """The sender's conditions as answers a national system can act on without reading the
    handling code: whether the record may be passed on, whose consent it needs otherwise, until
    when it may be kept, and the id an event made from it must name in ``derived_from`` so that
    this node holds that event to the same restriction."""
    h = header.handling
    free = h.code != "H2" and h.onward_transfer == "ALLOWED"
    until = retain_until(header)
    return {
        "onward_transfer": h.onward_transfer,
        "forward_without_consent": free,
        "consent_from": None if free else header.sender,
        "judicial_use_without_consent": h.code != "H1",
        "conditions": h.conditions if h.code == "H3" else None,
        "retain_until": None if until is None else _stamp(until),
        "derived_from": header.event_id,
    }


@dataclass(frozen=True, slots=True)
class Delivery:
    """An opened, checked envelope and its decoded record."""

    header: Header
    record: dict[str, object]
    digest: bytes
    received_at: datetime
    not_in_sender_version: tuple[str, ...] = ()
    """Fields of this node's contract version the sender's version lacks (null here)."""
    contract_version: str | None = None
    """The oldest contract version with the schema the sender wrote the body in (None: this
    node's only one)."""

    def provenance(self) -> dict[str, object]:
        """Where the record came from and under which conditions (JSON-ready, no payload)."""
        h = self.header
        return {
            "message_id": h.message_id,
            "event_id": h.event_id,
            "event_type": h.event_type,
            "sender": h.sender,
            "recipient": h.recipient,
            "schema_fingerprint": h.schema_fingerprint.hex(),
            "policy_id": h.policy_id,
            "policy_rule": h.policy_rule,
            "policy_digest": h.policy_digest.hex(),
            "handling": h.handling.to_avro(),
            "handling_notice": handling_notice(h.handling, h.sender),
            "restriction": restriction(h),
            "retain_until": _stamp(until) if (until := retain_until(h)) is not None else None,
            "withheld": [
                *h.withheld,
                *(p for p in self.not_in_sender_version if p not in h.withheld),
            ],
            "transformed": list(h.transformed),
            "created_at": _stamp(h.created_at),
            "expires_at": _stamp(h.expires_at),
            "received_at": _stamp(self.received_at),
            "sender_key_id": h.sender_key_id,
            "envelope_sha256": base64.b16encode(self.digest).decode("ascii").lower(),
            "envelope_format": h.format_version,
            "contract_version": self.contract_version,
        }


@dataclass(frozen=True, slots=True)
class Rejection:
    """An envelope that will not be delivered: reason code, detail (no payload), and the header
    only when its signature verified against the trust list (otherwise nobody vouches for it;
    of a format-2 envelope, only its clear part: no event id)."""

    reason: str
    detail: str
    header: Header | None
    digest: bytes


@dataclass(frozen=True, slots=True)
class DuplicateDrop:
    """An envelope whose message id was delivered before."""

    header: Header
    digest: bytes


@dataclass(frozen=True, slots=True)
class Expired:
    """An authentic envelope whose retention period ended before it arrived: not delivered and
    not kept (a handling decision, not a fault)."""

    header: Header
    digest: bytes


Received = Delivery | Rejection | DuplicateDrop | Expired


@dataclass(slots=True)
class InboundCore:
    """Envelope checks and decoding for one receiving agency. ``trust`` may be swapped."""

    keys: AgencyKeys
    registry: SchemaRegistry
    trust: TrustList
    max_skew: timedelta = timedelta(minutes=5)
    max_lifetime: timedelta = timedelta(days=30)
    cache: UnwrapCache = field(default_factory=UnwrapCache)
    contract: Contract | None = None
    """Every contract version the node knows, ``registry`` being its own one's (None: it
    reads only that one)."""
    versions_seen: set[tuple[str, int, str | None]] = field(default_factory=set)
    """(sender, envelope format, contract version) of the deliveries since start."""
    takes: Mapping[str, Callable[[Delivery, datetime], Effects]] = field(default_factory=dict)
    """Event types the node answers itself (``fxgw.HitEvaluation``): such a delivery is
    journaled and receipted like any other but not handed to the national system; that
    function returns what else must happen."""

    def receive(self, data: bytes, now: datetime, delivered: Container[str]) -> Received:
        """Open, check and decode one envelope; ``delivered`` holds the message ids already
        delivered. Never raises for a peer's fault."""
        try:
            codec, wire_format = self._wire(data)
            opened = open_envelope(
                data,
                keys=self.keys,
                trust=self.trust,
                cache=self.cache,
                codec=codec,
                now=now,
                max_skew=self.max_skew,
                max_lifetime=self.max_lifetime,
                format_version=wire_format,
            )
            header = opened.header
            if header.message_id in delivered:
                return DuplicateDrop(header, opened.digest)
            until = retain_until(header)
            if until is not None and until <= now:
                return Expired(header, opened.digest)
            writer, version = self._writer(header.schema_fingerprint)
            if writer.full_name != header.event_type:
                raise RecordInvalid(
                    f"header names {header.event_type} but the fingerprint is {writer.full_name}"
                )
            if not writer.is_event:
                raise RecordInvalid(f"{writer.full_name} is not an event type")
            record = self.registry.decode(writer.full_name, opened.plaintext, writer)
            check_agreement(header, record)
        except PeerError as exc:
            return Rejection(exc.reason, str(exc), self._verified(data, now), _sha(data))
        except (ValueError, TypeError, OverflowError, RecursionError, KeyError) as exc:
            # bytes a peer crafted to trip a library: still the peer's fault, never a crash
            return Rejection(
                "malformed",
                f"the envelope could not be read ({type(exc).__name__})",
                self._verified(data, now),
                _sha(data),
            )
        if version is None:
            return Delivery(header, record, opened.digest, now)
        assert self.contract is not None
        own = self.contract.version_of(self.registry)
        gap = missing_fields(header.event_type, own, version)
        return Delivery(header, record, opened.digest, now, gap, version.label)

    def _wire(self, data: bytes) -> tuple[SchemaRegistry, int]:
        """The schemas and the format version to read envelope ``data`` with: any envelope
        format of the contract versions this node has (the current and the earlier ones).

        :raises PeerError: ``malformed``, a format none of them has.
        """
        if self.contract is None:
            return self.registry, self.registry.get(ENVELOPE_TYPE).format
        return self.contract.reader_for(ENVELOPE_TYPE, data)

    def _receipt_wire(self, sender: str) -> tuple[SchemaRegistry, int]:
        """The schemas and the format of a receipt to ``sender``: those of the newest contract
        version it reads that this node has too (else this node's own)."""
        if self.contract is None:
            return self.registry, self.registry.get(RECEIPT_TYPE).format
        agency = self.trust.agency(sender)
        version = self.contract.newest_of(agency.contract_versions) if agency else None
        registry = self.registry if version is None else version.registry
        return registry, registry.get(RECEIPT_TYPE).format

    def _writer(self, fingerprint: bytes) -> tuple[Schema, ContractVersion | None]:
        """The writer's schema of a body, from any version of the contract this node knows,
        and the (oldest) version it comes from (None without a contract).

        :raises UnknownEventType: no version known here has that fingerprint, or only one of
            another major version.
        """
        if self.contract is None:
            return self.registry.by_fingerprint(fingerprint), None
        version, schema = self.contract.by_fingerprint(fingerprint)
        own = self.contract.version_of(self.registry)
        if version.major != own.major:  # resolution is only checked within a major version
            raise UnknownEventType(
                f"the body is in contract version {version.label}; this node resolves only"
                f" versions {own.major}.x"
            )
        return schema, version

    def _verified(self, data: bytes, now: datetime) -> Header | None:
        """The header of ``data`` if its sender's key is on the trust list and the signature
        over header and body verifies; otherwise None."""
        try:
            header, header_bytes, ciphertext, signature = read_header(data, *self._wire(data))
            public = self.trust.signing_key(header.sender, header.sender_key_id, header.created_at)
            nacl.signing.VerifyKey(public).verify(
                signing_input(header_bytes, ciphertext), signature
            )
            if header.sealed_read and header.message_id != message_id_for(
                header.sender, header.event_id, header.recipient
            ):
                return None  # an answer is addressed by message id: only the derived one
        except (PeerError, nacl.exceptions.BadSignatureError, ValueError, TypeError, KeyError):
            return None
        except (OverflowError, RecursionError):
            return None
        return header

    def take(
        self, data: bytes, now: datetime, delivered: DeliveredLookup, limits: Limits
    ) -> Effects:
        """Everything that must happen because ``data`` arrived in our inbox.

        Too large: quarantined unread. Delivered: the delivery, its journal entry, a DELIVERED
        receipt. Seen before: a receipt as of the first delivery (the same envelope again gets
        the same receipt, byte for byte). Expired retention: a REJECTED receipt. Anything else:
        quarantined, and answered with a REJECTED receipt only when the signature verified.
        """
        now_ms = _ms(now)
        if len(data) > limits.max_envelope_bytes:
            return quarantine(
                data,
                reason="too_large",
                detail=f"{len(data)} bytes; this node takes envelopes up to "
                f"{limits.max_envelope_bytes}",
                direction="inbound",
                now_ms=now_ms,
                limits=limits,
                log_event="envelope_rejected",
            )
        result = self.receive(data, now, delivered)
        own = self.takes.get(result.header.event_type) if isinstance(result, Delivery) else None
        if isinstance(result, Delivery) and own is not None:
            return merge(self._deliver(result, None, now), own(result, now))
        if isinstance(result, Delivery):
            document = self._document(result, limits)
            if isinstance(document, bytes):
                return self._deliver(result, document, now)
            result = document
        if isinstance(result, DuplicateDrop):
            return self._duplicate(result, delivered, now)
        if isinstance(result, Expired):
            h = result.header
            expired = AuditEntry(
                "expired",
                _inbound_data(h, result.digest, "retention_expired"),
                "retention_expired_not_delivered",
                "retention_expired",
            )
            answer = self._answer(h, result.digest, "REJECTED", "retention_expired", now)
            return merge(Effects(audit=(expired,)), answer)
        return self._reject(data, result, now, limits)

    def _document(self, result: Delivery, limits: Limits) -> bytes | Rejection:
        """The delivery document, or why there can be none: a number that is not finite (json
        refuses NaN and infinities; they are not exchanged), or more bytes than the national
        system takes."""
        try:
            document = delivery_document(result, self.registry)
        except ValueError:
            return Rejection(
                "non_finite_number",
                "the record holds a number that is not finite",
                result.header,
                result.digest,
            )
        except (PeerError, TypeError, KeyError) as exc:  # never a crash on a peer's record
            return Rejection(
                "schema_invalid",
                f"the record cannot be written as a delivery document ({type(exc).__name__})",
                result.header,
                result.digest,
            )
        if len(document) > limits.max_delivery_bytes:
            return Rejection(
                "delivery_too_large",
                f"the delivery document would be {len(document)} bytes; the national system "
                f"takes up to {limits.max_delivery_bytes}",
                result.header,
                result.digest,
            )
        return document

    def _deliver(self, result: Delivery, document: bytes | None, now: datetime) -> Effects:
        """The delivery of ``document`` (None: journaled only), its audit entry and receipt."""
        h = result.header
        until = retain_until(h) or now + timedelta(days=365)
        deliver = Deliver(
            message_id=h.message_id,
            event_id=h.event_id,
            event_type=h.event_type,
            sender=h.sender,
            handling=h.handling.code,
            document=document or b"",
            entry=DeliveredEntry(_ms(h.expires_at), _ms(now), result.digest),
            remember=Remember(
                h.event_id, h.sender, h.handling.code, h.handling.onward_transfer, _ms(until)
            ),
            created_ms=_ms(h.created_at),
            to_sink=document is not None,
        )
        data = {
            **_inbound_data(h, result.digest, None),
            "contract_version": result.contract_version,
        }
        counts = (f"envelope_format_{h.format_version}", f"contract_{result.contract_version}")
        delivered = AuditEntry(
            "delivery", data, "delivered", "delivered", routine=True, counts=counts
        )
        versions = (h.sender, h.format_version, result.contract_version)
        first = () if versions in self.versions_seen else (_versions_seen(*versions),)
        self.versions_seen.add(versions)
        return merge(
            Effects(
                deliveries=(deliver,),
                audit=(*first, delivered),
                observed=(Observed(False, h.event_type, h.sender, result.record),),
            ),
            self._answer(h, result.digest, "DELIVERED", None, now),
        )

    def _duplicate(
        self, result: DuplicateDrop, delivered: DeliveredLookup, now: datetime
    ) -> Effects:
        h = result.header
        # answered as of the first delivery; the very same envelope again gets the very same
        # receipt, byte for byte
        first = delivered.get(h.message_id)
        at = now if first is None else datetime.fromtimestamp(first.recorded_ms / 1000, UTC)
        outcome: ReceiptOutcome = (
            "DELIVERED" if first is not None and first.digest == result.digest else "DUPLICATE"
        )
        duplicate = AuditEntry(
            "duplicate", _inbound_data(h, result.digest, None), "duplicate_dropped", "duplicates"
        )
        return merge(Effects(audit=(duplicate,)), self._answer(h, result.digest, outcome, None, at))

    def _reject(self, data: bytes, rejection: Rejection, now: datetime, limits: Limits) -> Effects:
        h = rejection.header
        ids: dict[str, Value] = {}
        if h is not None:
            ids = {"message_id": h.message_id, "sender": h.sender}
            if h.sealed_read:
                ids["event_id"] = h.event_id
        quarantined = quarantine(
            data,
            reason=rejection.reason,
            detail=rejection.detail,
            direction="inbound",
            now_ms=_ms(now),
            limits=limits,
            extra=tuple((f"fxgw-{k.replace('_', '-')}", str(v).encode()) for k, v in ids.items()),
            data=ids,
            log_event="envelope_rejected",
        )
        if h is None or h.recipient != self.keys.agency:
            return quarantined  # nobody vouches for the header, or it is not ours to answer
        return merge(
            quarantined, self._answer(h, rejection.digest, "REJECTED", rejection.reason, now)
        )

    def refused_delivery(self, d: Deliver, detail: str, now: datetime, limits: Limits) -> Effects:
        """A delivery the national system's cluster refused after all (a limit set above the
        topic's): the whole document is quarantined (bounded), and the sender is told REJECTED
        instead of DELIVERED."""
        ids: dict[str, Value] = {
            "message_id": d.message_id,
            "event_id": d.event_id,
            "sender": d.sender,
        }
        quarantined = quarantine(
            d.document,
            reason="delivery_refused",
            detail=detail,
            direction="delivery",
            now_ms=_ms(now),
            limits=limits,
            data=ids,
        )
        answer = self._receipt_effects(
            d.message_id,
            d.event_id,
            d.sender,
            d.entry.expires_ms,
            d.entry.digest or b"",
            "REJECTED",
            "delivery_refused",
            now,
        )
        return merge(quarantined, answer)

    def _answer(
        self, h: Header, digest: bytes, outcome: ReceiptOutcome, reason: str | None, at: datetime
    ) -> Effects:
        """The signed receipt for a verified header, and its audit entry."""
        return self._receipt_effects(
            h.message_id, h.event_id, h.sender, _ms(h.expires_at), digest, outcome, reason, at
        )

    def _receipt_effects(
        self,
        message_id: str,
        event_id: str,
        sender: str,
        expires_ms: int,
        digest: bytes,
        outcome: ReceiptOutcome,
        reason: str | None,
        at: datetime,
    ) -> Effects:
        """A signed receipt to ``sender`` and its audit entry."""
        codec, wire_format = self._receipt_wire(sender)
        data = make_receipt(
            message_id=MessageId(message_id),
            event_id=EventId(event_id) if event_id else None,
            sender=AgencyId(sender),
            recipient=self.keys.agency,
            envelope_digest=digest,
            outcome=outcome,
            reason=reason,
            received_at=at,
            signer=self.keys.signing,
            codec=codec,
            format_version=wire_format,
        )
        sent = AuditEntry(
            "receipt_sent",
            {
                "message_id": message_id,
                "sender": sender,
                "outcome": outcome,
                "reason": reason,
                "receipt_sha256": hashlib.sha256(data).hexdigest(),
            },
            "receipt_sent",
            "receipts_sent",
            routine=outcome == "DELIVERED",
        )
        receipt = Receipt(sender, message_id, data, expires_ms)
        return Effects(receipts=(receipt,), audit=(sent,))


_ORIGIN = {
    "fxgw.SeizureEvent": "reporting_agency",
    "fxgw.TraceRequest": "requesting_agency",
    "fxgw.TraceResponse": "responding_agency",
    "fxgw.TraceUpdate": "sending_agency",
    "fxgw.HitEvaluation": "sending_agency",
}
"""Per event type, the field naming the agency the event comes from: it must be the sender."""


def check_agreement(header: Header, record: Mapping[str, object]) -> None:
    """The body must agree with the signed header: same event id, and the agency the event names
    as its origin is the sender (or the recipient itself, when its own event comes back to it).
    (Numbers that are not finite are refused when the delivery document is written.)

    :raises PeerError: ``body_header_mismatch``.
    """
    if record.get("event_id") != header.event_id:
        raise PeerError(
            "the body's event_id differs from the signed header's", reason="body_header_mismatch"
        )
    origin_field = _ORIGIN.get(header.event_type)
    origin = record.get(origin_field) if origin_field else None
    # an event may come back to the agency that reported it (onward transfer back to origin)
    if isinstance(origin, Mapping) and origin.get("agency_id") not in (
        header.sender,
        header.recipient,
    ):
        raise PeerError(
            f"{origin_field}.agency_id is not the signing sender", reason="body_header_mismatch"
        )


def delivery_document(delivery: Delivery, registry: SchemaRegistry) -> bytes:
    """The JSON document of one delivery: ``{"event_type", "provenance", "record"}``, the record
    in its JSON form (dates ISO-8601, bytes base64)."""
    document = {
        "event_type": delivery.header.event_type,
        "provenance": delivery.provenance(),
        "record": registry.to_json_decoded(delivery.header.event_type, delivery.record),
    }
    # orjson: a tenth of json's time; it writes NaN as null, so the JSON form refuses non-finite
    # numbers itself (ValueError), and it raises a TypeError for what JSON cannot hold
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def _inbound_data(h: Header, digest: bytes, reason: str | None) -> dict[str, Value]:
    """What the log and the audit trail say of an envelope taken in (metadata only)."""
    return {
        "message_id": h.message_id,
        "event_id": h.event_id,
        "event_type": h.event_type,
        "sender": h.sender,
        "policy_id": h.policy_id,
        "policy_digest": h.policy_digest.hex(),
        "handling": h.handling.code,
        "retention_days": h.handling.retention_days,
        "envelope_sha256": digest.hex(),
        "envelope_format": h.format_version,
        "reason": reason,
    }


def _versions_seen(sender: str, envelope_format: int, contract_version: str | None) -> AuditEntry:
    """The first delivery from ``sender`` in this envelope format and contract version since
    the node started: said once, so operators see which versions their peers speak."""
    data: dict[str, Value] = {
        "sender": sender,
        "envelope_format": envelope_format,
        "contract_version": contract_version,
    }
    return AuditEntry("peer_versions", data, "peer_versions_seen", "peer_versions_seen")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
