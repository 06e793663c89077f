"""What became of each message a node released: a fold over its audit trail.

Pure. The audit trail already records every release decision and every receipt that came back
(:mod:`gateway.node.runtime` writes them), so the status view needs no store of its own and
can never disagree with the evidence. For each message released: ``released`` (no receipt yet),
``delivered``, ``duplicate`` (the recipient had it already), ``rejected`` (with the reason
code), ``parked`` (the recipient's inbox refused it; offered again with back-off), ``not_sent``
(parked until it expired, or no room to park it), or ``overdue`` (no receipt within the
configured time). Denials and refusals show in an
event's fan-out, so one query answers "where did event X go, and where did it not?".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

State = Literal["released", "parked", "not_sent", "delivered", "duplicate", "rejected", "overdue"]

_RANK = {"REJECTED": 1, "DUPLICATE": 2, "DELIVERED": 3}
"""A later, better receipt wins: a re-release delivered after a rejection is delivered."""


@dataclass(slots=True)
class Transfer:
    """One envelope released to one recipient, and what its receipt said."""

    message_id: str
    event_id: str
    event_type: str
    recipient: str
    rule: str
    released_at: datetime
    receipt: str | None = None
    reason: str | None = None
    receipt_at: datetime | None = None
    parking: Literal["parked", "not_sent"] | None = None
    """Parked because the recipient's inbox refused it, or given up (expired, no room)."""

    def state(self, now: datetime, timeout: timedelta) -> State:
        """The transfer's state at ``now``."""
        if self.receipt == "DELIVERED":
            return "delivered"
        if self.receipt == "DUPLICATE":
            return "duplicate"
        if self.receipt == "REJECTED":
            return "rejected"
        if self.parking is not None:
            return self.parking
        return "overdue" if now - self.released_at > timeout else "released"


@dataclass(slots=True)
class FanOut:
    """Everything one event became: envelopes per recipient, denials and refusals."""

    event_id: str
    transfers: list[Transfer] = field(default_factory=list)
    not_released: list[tuple[str, str, str]] = field(default_factory=list)
    """(recipient, ``denied`` or ``refused``, reason code)."""


@dataclass(slots=True)
class StatusView:
    """Transfers in release order, and receipts that matched no release."""

    transfers: dict[str, Transfer] = field(default_factory=dict)
    fan_outs: dict[str, FanOut] = field(default_factory=dict)
    unmatched_receipts: int = 0

    def counts(self, now: datetime, timeout: timedelta) -> dict[State, int]:
        """How many transfers are in each state."""
        totals: dict[State, int] = {}
        for transfer in self.transfers.values():
            state = transfer.state(now, timeout)
            totals[state] = totals.get(state, 0) + 1
        return totals


_PARKING: dict[str, Literal["parked", "not_sent"] | None] = {
    "parked": "parked",
    "unparked": None,
    "parked_expired": "not_sent",
    "park_dropped": "not_sent",
    "record_refused": "not_sent",
}
"""Audit kinds that move a transfer in and out of parking."""


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("audit time is not a string")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def build_view(entries: Iterable[tuple[str, str, Mapping[str, object]]]) -> StatusView:
    """Fold audit entries ``(kind, at, data)`` into the status of every release.

    The fold does not depend on order: a receipt recorded before its release entry (possible
    when a crash left the trail behind the exchange) is applied when the release turns up.
    """
    view = StatusView()
    early: dict[str, list[Mapping[str, object]]] = {}
    for kind, at, data in entries:
        if kind == "release":
            transfer = Transfer(
                message_id=_text(data, "message_id"),
                event_id=_text(data, "event_id"),
                event_type=_text(data, "event_type"),
                recipient=_text(data, "recipient"),
                rule=_text(data, "rule"),
                released_at=_time(at),
            )
            held = view.transfers.get(transfer.message_id)
            if held is None:  # a re-release keeps the first time and any receipt
                view.transfers[transfer.message_id] = transfer
                fan_out = view.fan_outs.setdefault(transfer.event_id, FanOut(transfer.event_id))
                fan_out.transfers.append(transfer)
                for receipt in early.pop(transfer.message_id, []):
                    _apply_receipt(transfer, receipt)
        elif kind in ("release_denied", "release_refused"):
            event_id = _text(data, "event_id")
            fan_out = view.fan_outs.setdefault(event_id, FanOut(event_id))
            verdict = "denied" if kind == "release_denied" else "refused"
            fan_out.not_released.append((_text(data, "recipient"), verdict, _text(data, "reason")))
        elif kind in _PARKING:
            target = view.transfers.get(_text(data, "message_id"))
            if target is not None:
                target.parking = _PARKING[kind]
        elif kind == "receipt_received":
            if _text(data, "outcome") not in _RANK:
                view.unmatched_receipts += 1
                continue
            target = view.transfers.get(_text(data, "message_id"))
            if target is None:
                early.setdefault(_text(data, "message_id"), []).append(data)
            else:
                _apply_receipt(target, data)
    view.unmatched_receipts += sum(len(receipts) for receipts in early.values())
    return view


def _apply_receipt(target: Transfer, data: Mapping[str, object]) -> None:
    """Record a receipt on its transfer; a better outcome wins over an earlier one."""
    outcome = _text(data, "outcome")
    if target.receipt is None or _RANK[outcome] >= _RANK[target.receipt]:
        target.receipt = outcome
        reason = data.get("reason")
        target.reason = reason if isinstance(reason, str) else None
        target.receipt_at = _time(data.get("received_at"))


def render(
    view: StatusView, now: datetime, timeout: timedelta, *, event_id: str | None, limit: int
) -> str:
    """A table for people: the latest ``limit`` transfers, or one event's fan-out."""
    lines: list[str] = []
    if event_id is not None:
        fan_out = view.fan_outs.get(event_id)
        if fan_out is None:
            return f"event {event_id}: nothing in the audit trail\n"
        lines.append(f"event {event_id}:")
        for t in fan_out.transfers:
            lines.append("  " + _row(t, now, timeout))
        for recipient, verdict, reason in fan_out.not_released:
            lines.append(f"  {recipient:<10} {verdict:<9} {reason}")
        return "\n".join(lines) + "\n"
    counts = view.counts(now, timeout)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no releases"
    lines.append(f"{len(view.transfers)} message(s) released: {summary}")
    if view.unmatched_receipts:
        lines.append(f"{view.unmatched_receipts} receipt(s) matched no release of this node")
    for t in list(view.transfers.values())[-limit:]:
        lines.append(_row(t, now, timeout))
    return "\n".join(lines) + "\n"


def _row(t: Transfer, now: datetime, timeout: timedelta) -> str:
    state = t.state(now, timeout)
    reason = f" ({t.reason})" if t.reason else ""
    released = t.released_at.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{released}  {t.message_id}  {t.event_id:<24} {t.recipient:<10} "
        f"{state}{reason}  [{t.rule}]"
    )


def to_json(view: StatusView, now: datetime, timeout: timedelta) -> list[dict[str, object]]:
    """Every transfer, JSON-ready."""
    return [
        {
            "message_id": t.message_id,
            "event_id": t.event_id,
            "event_type": t.event_type,
            "recipient": t.recipient,
            "rule": t.rule,
            "released_at": t.released_at.isoformat(),
            "state": t.state(now, timeout),
            "reason": t.reason,
            "receipt_at": t.receipt_at.isoformat() if t.receipt_at else None,
        }
        for t in view.transfers.values()
    ]
