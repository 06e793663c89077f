"""The receipts core: a receipt's bytes in, what must happen out.

Sans-I/O. A receipt addressed to this node (as the envelope's sender) is verified against the
trust list and audited as ``receipt_received``; anything else is quarantined in bounded form.
The size is checked before the bytes are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract
from gateway.core.effects import AuditEntry, Effects, Limits, quarantine
from gateway.crypto.receipts import RECEIPT_TYPE, open_receipt
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError
from gateway.types import AgencyId


@dataclass(slots=True)
class ReceiptsCore:
    """Receipt intake for one sending agency. ``trust`` may be swapped (hot reload)."""

    agency: AgencyId
    registry: SchemaRegistry
    trust: TrustList
    limits: Limits = field(default_factory=Limits)
    contract: Contract | None = None
    """Every contract version the node has: a receipt may come in any receipt format of
    theirs (None: only ``registry``'s)."""

    def take(self, raw: bytes, now: datetime) -> Effects:
        """Verify and audit one receipt, or quarantine it."""
        now_ms = int(now.timestamp() * 1000)
        if len(raw) > self.limits.max_receipt_bytes:
            return quarantine(
                raw,
                reason="too_large",
                detail=f"{len(raw)} bytes; receipts are at most {self.limits.max_receipt_bytes}",
                direction="receipts",
                now_ms=now_ms,
                limits=self.limits,
                log_event="receipt_rejected",
            )
        try:
            codec, wire_format = self._wire(raw)
            r = open_receipt(
                raw,
                trust=self.trust,
                codec=codec,
                agency=self.agency,
                now=now,
                format_version=wire_format,
            )
        except PeerError as exc:
            return quarantine(
                raw,
                reason=exc.reason,
                detail=str(exc),
                direction="receipts",
                now_ms=now_ms,
                limits=self.limits,
                log_event="receipt_rejected",
            )
        data: dict[str, str | None] = {
            "message_id": r.message_id,
            "event_id": r.event_id,  # None from format 2: correlated by message id
            "recipient": r.recipient,
            "outcome": r.outcome,
            "reason": r.reason,
            "received_at": r.received_at.isoformat().replace("+00:00", "Z"),
            "envelope_sha256": r.envelope_digest.hex(),
            "signing_key_id": r.signing_key_id,
            "receipt_format": str(r.format_version),
        }
        entry = AuditEntry(
            "receipt_received",
            data,
            "receipt_received",
            "receipts_received",
            routine=r.outcome == "DELIVERED",
            counts=(f"receipt_format_{r.format_version}",),
        )
        return Effects(audit=(entry,))

    def _wire(self, raw: bytes) -> tuple[SchemaRegistry, int]:
        """The schemas and format version to read receipt ``raw`` with.

        :raises PeerError: ``malformed``, a receipt format this node does not have.
        """
        if self.contract is None:
            return self.registry, self.registry.get(RECEIPT_TYPE).format
        return self.contract.reader_for(RECEIPT_TYPE, raw)
