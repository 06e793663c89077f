"""What the cores decide must happen, as values; the node executes them batch by batch.

A core takes one input (a plain event, envelope bytes, a receipt) and returns :class:`Effects`:
envelopes to publish, receipts to send, deliveries to hand to the national system, quarantine
records, and audit entries. The node executes a whole poll batch of them together (every produce
in flight at once, one audit fsync, one journal sync) and commits the batch's offsets only when
all of it is durable. Which entry is audited and which receipt answers what is decided in the
cores, never in the node.

Also here: the size :class:`Limits` a node enforces, and :func:`quarantine`, which turns a
record that cannot be handled into a bounded quarantine record (raw bytes up to a limit,
otherwise their digest and a prefix; detail and header values truncated; original sizes stated).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.audit.chain import Value

Headers = tuple[tuple[str, bytes], ...]
"""Kafka record headers: (name, value) pairs."""

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes a node accepts and writes, checked before any expensive work.

    The byte limits must fit the topics' ``max.message.bytes`` (the broker default is 1 MiB).
    """

    max_event_bytes: int = MIB
    """A plain event from the national system."""
    max_envelope_bytes: int = MIB - 64 * KIB
    """An envelope, taken in or sent out (below the broker's default 1 MiB, leaving room for
    the record's key, headers and batch)."""
    max_delivery_bytes: int = MIB - 64 * KIB
    """A delivery document for the national system (the same room)."""
    max_receipt_bytes: int = 64 * KIB
    """A receipt taken in."""
    quarantine_raw_bytes: int = 256 * KIB
    """A quarantined record's raw bytes are kept whole up to this size."""
    quarantine_prefix_bytes: int = 4 * KIB
    """Beyond that, only this many leading bytes (and the digest of all of them) are kept."""
    detail_chars: int = 512
    """Longest detail text and header value in a quarantine record, log line or audit entry."""
    max_parked_bytes: int = 256 * MIB
    """Records parked for one topic that refuses them (a recipient's missing inbox)."""


@dataclass(frozen=True, slots=True)
class DeliveredEntry:
    """When a message was delivered, until when it is remembered, and the digest of the
    envelope that delivered it (so that the same envelope again gets the same receipt)."""

    expires_ms: int
    recorded_ms: int
    digest: bytes | None


class DeliveredLookup(Protocol):
    """The message ids this node has delivered (the journal, plus the batch in hand)."""

    def __contains__(self, message_id: object) -> bool: ...

    def get(self, message_id: str) -> DeliveredEntry | None: ...


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decision: written to the audit trail, logged (same metadata) and counted."""

    kind: str
    data: Mapping[str, Value]
    log_event: str
    counter: str
    warn: bool = False
    log_data: Mapping[str, Value] | None = None
    """What the log line says, when shorter than the audit entry (default: the same)."""
    routine: bool = False
    """An everyday outcome (released, delivered, answered DELIVERED): logged as one count per
    batch, each entry itself only at debug level; the audit trail holds every one of them."""
    counts: tuple[str, ...] = ()
    """Further counters the entry adds one to (say, the envelope format a delivery came in)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A sealed envelope to publish to its recipient's inbox."""

    recipient: str
    sender: str
    message_id: str
    data: bytes
    expires_ms: int
    """Past this the recipient refuses it as stale: a parked envelope is kept until then."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed receipt to publish to the envelope's sender."""

    sender: str
    message_id: str
    data: bytes
    expires_ms: int
    """When the envelope it answers expires: a parked receipt is kept until then."""


@dataclass(frozen=True, slots=True)
class Remember:
    """An event received from a peer, noted so that its handling limits forwarding."""

    event_id: str
    sender: str
    code: str
    onward_transfer: str
    until_ms: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """A delivery for the national system: the JSON document, and what the journal keeps."""

    message_id: str
    event_id: str
    event_type: str
    sender: str
    handling: str
    document: bytes
    entry: DeliveredEntry
    remember: Remember
    created_ms: int = 0
    """When the sender created the envelope (its clock), for the delivery latency metric."""
    to_sink: bool = True
    """False for a message the node answers itself (``fxgw.HitEvaluation``): journaled, so a
    copy is a duplicate, but never handed to the national system."""


@dataclass(frozen=True, slots=True)
class Quarantine:
    """A record that cannot be handled, in bounded form, for the local quarantine topic."""

    value: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class Observed:
    """An event released to a peer, or delivered from one, as the node follows it beyond the
    pipeline (trace cases: :mod:`gateway.node.tracing`). It never leaves the node."""

    released: bool
    event_type: str
    peer: str
    """The recipient of a release; the signing sender of a delivery."""
    record: Mapping[str, object]
    """The whole record of a release; the released view of a delivery."""


@dataclass(frozen=True, slots=True)
class Effects:
    """Everything that must happen because of one input."""

    envelopes: tuple[Envelope, ...] = ()
    receipts: tuple[Receipt, ...] = ()
    deliveries: tuple[Deliver, ...] = ()
    quarantines: tuple[Quarantine, ...] = ()
    audit: tuple[AuditEntry, ...] = ()
    observed: tuple[Observed, ...] = ()


@dataclass(slots=True)
class Batch:
    """The effects of a poll batch, gathered in input order."""

    envelopes: list[Envelope] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    deliveries: list[Deliver] = field(default_factory=list)
    quarantines: list[Quarantine] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    observed: list[Observed] = field(default_factory=list)
    late: bool = False
    """Audit entries or parked records were added after the batch's audit sync."""

    def add(self, effects: Effects) -> None:
        """Append one input's effects."""
        self.envelopes.extend(effects.envelopes)
        self.receipts.extend(effects.receipts)
        self.deliveries.extend(effects.deliveries)
        self.quarantines.extend(effects.quarantines)
        self.audit.extend(effects.audit)
        self.observed.extend(effects.observed)

    @classmethod
    def of(cls, many: Iterable[Effects]) -> Batch:
        """The batch of several inputs' effects."""
        batch = cls()
        for effects in many:
            batch.add(effects)
        return batch


def clip(text: str, limit: int) -> str:
    """``text`` as printable ASCII (anything else escaped, so a character can never weigh more
    than one byte in a header or a few in a JSON log line), cut to ``limit`` characters, saying
    how long it was."""
    safe = text if text.isascii() and text.isprintable() else text.encode("unicode_escape")
    shown = safe if isinstance(safe, str) else safe.decode("ascii")
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(text)} characters)"


def _clip_bytes(value: bytes, limit: int) -> bytes:
    return value if len(value) <= limit else value[:limit]


def quarantine(
    raw: bytes,
    *,
    reason: str,
    detail: str,
    direction: str,
    now_ms: int,
    limits: Limits,
    extra: Headers = (),
    data: Mapping[str, Value] | None = None,
    log_event: str = "quarantined",
) -> Effects:
    """Quarantine ``raw`` in bounded form, and audit it.

    The record holds the raw bytes when they fit ``limits.quarantine_raw_bytes``, otherwise
    only a prefix; its headers always state the reason, the (clipped) detail, the original size
    and the SHA-256 of the whole, so the record always fits the quarantine topic. ``data`` adds
    metadata to the audit entry (ids of a verified header; never a value from the record).
    """
    digest = hashlib.sha256(raw).hexdigest()
    whole = len(raw) <= limits.quarantine_raw_bytes
    value = raw if whole else raw[: limits.quarantine_prefix_bytes]
    short = clip(detail, limits.detail_chars)
    headers: Headers = (
        ("fxgw-reason", reason.encode()),
        ("fxgw-detail", short.encode()),
        ("fxgw-direction", direction.encode()),
        ("fxgw-quarantined-at", now_ms.to_bytes(8, "big")),
        ("fxgw-original-bytes", str(len(raw)).encode()),
        ("fxgw-sha256", digest.encode()),
        ("fxgw-content", b"whole" if whole else b"prefix"),
        *((name, _clip_bytes(v, limits.detail_chars)) for name, v in extra),
    )
    entry: dict[str, Value] = {
        "direction": direction,
        "reason": reason,
        "detail": short,
        "sha256": digest,
        "bytes": len(raw),
        **(data or {}),
    }
    return Effects(
        quarantines=(Quarantine(value, headers),),
        audit=(AuditEntry("quarantine", entry, log_event, f"quarantined_{direction}", warn=True),),
    )


def unreadable(
    topic: str, partition: int, offset: int, reason: str, *, now_ms: int, limits: Limits
) -> Effects:
    """A record the Kafka client could not parse (say, a header key that is not UTF-8): its bytes
    cannot be had, so the quarantine record names where it lies; nobody is answered."""
    where: Headers = (
        ("fxgw-source-topic", topic.encode()),
        ("fxgw-source-partition", str(partition).encode()),
        ("fxgw-source-offset", str(offset).encode()),
    )
    return quarantine(
        b"",
        reason="record_unreadable",
        detail=reason,
        direction=topic,
        now_ms=now_ms,
        limits=limits,
        extra=where,
        data={"topic": topic, "partition": partition, "offset": offset},
        log_event="record_unreadable",
    )


def merge(*parts: Effects) -> Effects:
    """One input's effects made of several parts, in order."""
    return Effects(
        envelopes=tuple(e for p in parts for e in p.envelopes),
        receipts=tuple(r for p in parts for r in p.receipts),
        deliveries=tuple(d for p in parts for d in p.deliveries),
        quarantines=tuple(q for p in parts for q in p.quarantines),
        audit=tuple(a for p in parts for a in p.audit),
        observed=tuple(o for p in parts for o in p.observed),
    )
