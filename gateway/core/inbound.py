"""The inbound core: envelope bytes in, a delivery (or a rejection) out.

Sans-I/O: :meth:`InboundCore.receive` opens the envelope (trust list, signature, addressee,
freshness, decryption: see :func:`gateway.crypto.envelope.open_envelope`), drops a message id it has
already delivered, decodes the body with the schema named by its fingerprint, and returns a
:class:`Delivery`. Anything a peer got wrong comes back as a :class:`Rejection` with a reason code;
the node quarantines it and goes on.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.contract.schemas import SchemaRegistry
from gateway.crypto.envelope import Handling, Header, UnwrapCache, open_envelope, read_header
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError, RecordInvalid


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


@dataclass(frozen=True, slots=True)
class Delivery:
    """An opened, checked envelope and its decoded record."""

    header: Header
    record: dict[str, object]
    digest: bytes
    received_at: datetime

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
            "retain_until": _stamp(until) if (until := retain_until(h)) is not None else None,
            "withheld": list(h.withheld),
            "transformed": list(h.transformed),
            "created_at": _stamp(h.created_at),
            "expires_at": _stamp(h.expires_at),
            "received_at": _stamp(self.received_at),
            "sender_key_id": h.sender_key_id,
            "envelope_sha256": base64.b16encode(self.digest).decode("ascii").lower(),
        }


@dataclass(frozen=True, slots=True)
class Rejection:
    """An envelope that will not be delivered: reason code, detail (no payload), and the header
    when it could be parsed."""

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

    def receive(self, data: bytes, now: datetime, delivered: Container[str]) -> Received:
        """Open, check and decode one envelope; ``delivered`` holds the message ids already
        delivered. Never raises for a peer's fault."""
        try:
            opened = open_envelope(
                data,
                keys=self.keys,
                trust=self.trust,
                cache=self.cache,
                codec=self.registry,
                now=now,
                max_skew=self.max_skew,
                max_lifetime=self.max_lifetime,
            )
            header = opened.header
            if header.message_id in delivered:
                return DuplicateDrop(header, opened.digest)
            until = retain_until(header)
            if until is not None and until <= now:
                return Expired(header, opened.digest)
            schema = self.registry.by_fingerprint(header.schema_fingerprint)
            if schema.full_name != header.event_type:
                raise RecordInvalid(
                    f"header names {header.event_type} but the fingerprint is {schema.full_name}"
                )
            if not schema.is_event:
                raise RecordInvalid(f"{schema.full_name} is not an event type")
            record = self.registry.decode(schema.full_name, opened.plaintext)
        except PeerError as exc:
            return Rejection(exc.reason, str(exc), _try_header(data, self.registry), _sha(data))
        except (ValueError, TypeError, OverflowError, RecursionError, KeyError) as exc:
            # bytes a peer crafted to trip a library: still the peer's fault, never a crash
            return Rejection(
                "malformed",
                f"the envelope could not be read ({type(exc).__name__})",
                _try_header(data, self.registry),
                _sha(data),
            )
        return Delivery(header, record, opened.digest, now)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _try_header(data: bytes, registry: SchemaRegistry) -> Header | None:
    try:
        return read_header(data, registry)[0]
    except (PeerError, ValueError, TypeError, OverflowError, RecursionError, KeyError):
        return None
