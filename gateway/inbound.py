"""The inbound core: envelope bytes in, a delivery (or a rejection) out.

Sans-I/O: :meth:`InboundCore.receive` opens the envelope (trust list, signature, addressee,
freshness, decryption: see :func:`gateway.envelope.open_envelope`), drops a message id it has
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

from gateway.envelope import Header, UnwrapCache, open_envelope, read_header
from gateway.errors import PeerError, RecordInvalid
from gateway.keys import AgencyKeys
from gateway.schemas import SchemaRegistry
from gateway.trust import TrustList


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


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


Received = Delivery | Rejection | DuplicateDrop


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
            schema = self.registry.by_fingerprint(header.schema_fingerprint)
            if schema.full_name != header.event_type:
                raise RecordInvalid(
                    f"header names {header.event_type} but the fingerprint is {schema.full_name}"
                )
            record = self.registry.decode(schema.full_name, opened.plaintext)
        except PeerError as exc:
            return Rejection(exc.reason, str(exc), _try_header(data, self.registry), _sha(data))
        return Delivery(header, record, opened.digest, now)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _try_header(data: bytes, registry: SchemaRegistry) -> Header | None:
    try:
        return read_header(data, registry)[0]
    except PeerError:
        return None
