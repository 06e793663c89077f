"""Trace requests as tracked cases: which requests are open, which are late, what became of them.

A case is one trace request as one traced agency sees it: a request routed to two countries is
two cases, keyed by (request event id, traced agency). The node that sent the request holds it in
the role ``requester``, the node that received it in the role ``traced``. Each side follows the
same events, as this node releases them or has them delivered:

- ``fxgw.TraceRequest``: the case starts, ``submitted``, due by the request time plus the
  deadline of its priority (:class:`Deadlines`); the traced side, with ``auto_acknowledge``,
  sends an ACKNOWLEDGED ``fxgw.TraceUpdate`` carrying that deadline;
- ``fxgw.TraceUpdate``: ACKNOWLEDGED -> ``acknowledged`` (its ``due_by`` is the deadline
  agreed), IN_PROGRESS -> ``in_progress``, REMINDER -> ``overdue`` (the reminder counted),
  WITHDRAWN -> ``withdrawn``;
- ``fxgw.TraceResponse``: ``answered``, with the outcome (found, partial, not found, refused);
- the clock (:meth:`Tracker.due`): a case past its deadline and not closed becomes ``overdue``;
  the requester sends a REMINDER then, and again every ``remind_every``, up to ``max_reminders``.

An event that does not fit (an update or response for an unknown request, an update after the
case closed) is an unmatched :class:`Transition`: audited as such, never an error; the event
itself was delivered anyway. The same event seen twice (a batch redone after a crash) changes
nothing, and the events generated here have deterministic ids (uuid5), so that a retry re-sends
the same message id and the recipient drops the copy. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gateway.errors import PeerError
from gateway.types import AgencyId

REQUEST = "fxgw.TraceRequest"
UPDATE = "fxgw.TraceUpdate"
RESPONSE = "fxgw.TraceResponse"
TRACE_TYPES = frozenset({REQUEST, UPDATE, RESPONSE})

Role = Literal["requester", "traced"]
State = Literal["submitted", "acknowledged", "in_progress", "overdue", "answered", "withdrawn"]
CLOSED: frozenset[str] = frozenset({"answered", "withdrawn"})
OUTCOMES: Mapping[str, str] = {
    "TRACED": "found",
    "PARTIALLY_TRACED": "partial",
    "NOT_FOUND": "not_found",
    "REFUSED": "refused",
}
"""A TraceResponse's outcome, in the words of a case."""
_STEP_STATE: Mapping[str, State] = {
    "ACKNOWLEDGED": "acknowledged",
    "IN_PROGRESS": "in_progress",
    "REMINDER": "overdue",
    "WITHDRAWN": "withdrawn",
}
HISTORY = 64
"""Transitions a case keeps: the first one and the latest ones."""
_IDS = uuid.UUID("5d0f3c1e-8a52-4c8e-9c61-7e1f0b9a2d44")
"""Namespace of the ids of the events generated here."""


class UrgentWithoutJustification(PeerError):
    """An URGENT trace request that does not say why it is urgent."""

    reason = "urgent_without_justification"


def admit(event_type: str, record: Mapping[str, object]) -> None:
    """Refuse what the trace workflow cannot take from the national system.

    :raises UrgentWithoutJustification: an URGENT TraceRequest without urgency_justification.
    """
    if (
        event_type == REQUEST
        and record.get("priority") == "URGENT"
        and not str(record.get("urgency_justification") or "").strip()
    ):
        raise UrgentWithoutJustification(
            "urgency_justification: an URGENT trace request must say why it is urgent;"
            " fill in urgency_justification or send it as ROUTINE"
        )


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long a traced agency has per priority, and how the requester chases."""

    routine: timedelta = timedelta(days=30)
    urgent: timedelta = timedelta(hours=48)
    remind_every: timedelta = timedelta(days=7)
    max_reminders: int = 3
    auto_acknowledge: bool = True

    def due_by(self, requested_at: datetime, priority: str) -> datetime:
        """The deadline of a request made at ``requested_at`` with ``priority``."""
        return requested_at + (self.urgent if priority == "URGENT" else self.routine)


@dataclass(frozen=True, slots=True)
class Step:
    """One transition in a case's history."""

    state: str
    at: datetime
    event_id: str
    what: str
    """What happened: request, acknowledged, in_progress, reminder, withdrawn, answered,
    overdue."""


@dataclass(frozen=True, slots=True)
class Case:
    """One trace request as one traced agency sees it."""

    request_id: str
    traced: str
    requester: str
    role: Role
    reference: str
    priority: str
    requested_at: datetime
    due_by: datetime
    state: State
    outcome: str | None = None
    reason: str | None = None
    """Why the request was refused (the response's remarks), or withdrawn."""
    reminders: int = 0
    reminded_at: datetime | None = None
    updated_at: datetime | None = None
    history: tuple[Step, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.request_id, self.traced)

    @property
    def closed(self) -> bool:
        return self.state in CLOSED

    def seen(self, event_id: str) -> bool:
        return any(s.event_id == event_id for s in self.history)

    def moved(
        self, state: State, at: datetime, event_id: str, what: str, **changes: object
    ) -> Case:
        """This case after one more transition (history bounded to :data:`HISTORY`)."""
        history = (*self.history, Step(state, at, event_id, what))
        if len(history) > HISTORY:
            history = (history[0], *history[len(history) - HISTORY + 1 :])
        return dataclasses.replace(
            self,
            state=state,
            updated_at=at,
            history=history,
            **changes,  # type: ignore[arg-type]  # Case fields; replace() checks the names
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """What one event or tick did to a case (or, unmatched, could not do), for the audit
    trail: metadata only (ids, agencies, states, outcome codes)."""

    request_id: str
    traced: str
    requester: str | None
    role: Role | None
    before: str | None
    after: str | None
    event_id: str
    event_type: str
    what: str
    outcome: str | None = None
    reminders: int = 0
    matched: bool = True

    def audit_data(self) -> dict[str, str | int | None]:
        """The audit entry's fields."""
        return {
            "request_event_id": self.request_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "role": self.role,
            "requester": self.requester,
            "traced": self.traced,
            "from": self.before,
            "to": self.after,
            "step": self.what,
            "outcome": self.outcome,
            "reminder_count": self.reminders,
        }


@dataclass(frozen=True, slots=True)
class Result:
    """What an observation or a tick did: transitions, cases changed, and events to send."""

    transitions: tuple[Transition, ...] = ()
    cases: tuple[Case, ...] = ()
    send: tuple[dict[str, object], ...] = ()
    """Plain events (the national system's JSON form) to hand to the outbound path."""

    def __add__(self, other: Result) -> Result:
        return Result(
            self.transitions + other.transitions, self.cases + other.cases, self.send + other.send
        )


def _json_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def update_id(request_id: str, traced: str, status: str, count: int = 1) -> str:
    """The event id of a generated TraceUpdate: the same for the same step, every time."""
    return str(uuid.uuid5(_IDS, f"{request_id}/{traced}/{status}/{count}"))


@dataclass(slots=True)
class Tracker:
    """The cases of one agency's node, and the rules that move them.

    ``cases`` holds the open cases and recently closed ones (the node loads them from its
    store); ``country_of`` names an agency's country (from the trust list) for the AgencyRef
    of a generated update.
    """

    agency: AgencyId
    deadlines: Deadlines
    country_of: Callable[[str], str]
    cases: dict[tuple[str, str], Case] = field(default_factory=dict)

    def released(
        self, event_type: str, record: Mapping[str, object], recipient: str, now: datetime
    ) -> Result:
        """This node released ``record`` to ``recipient``."""
        return self._observe(event_type, record, self.agency, recipient, now)

    def delivered(
        self, event_type: str, record: Mapping[str, object], sender: str, now: datetime
    ) -> Result:
        """``sender`` (the signing sender) had ``record`` delivered to this node."""
        return self._observe(event_type, record, sender, self.agency, now)

    def _observe(
        self,
        event_type: str,
        record: Mapping[str, object],
        sender: str,
        recipient: str,
        now: datetime,
    ) -> Result:
        if event_type == REQUEST:
            return self._request(record, sender, recipient, now)
        if event_type == UPDATE:
            return self._update(record, sender, recipient, now)
        if event_type == RESPONSE:
            return self._response(record, sender, now)
        return Result()

    def _request(
        self, record: Mapping[str, object], sender: str, recipient: str, now: datetime
    ) -> Result:
        request_id = str(record["event_id"])
        role: Role = "requester" if sender == self.agency else "traced"
        known = self.cases.get((request_id, recipient))
        if known is not None:  # seen before: nothing moves, but the acknowledgement is re-sent
            return Result(send=self._acknowledgement(known))
        requested_at = record["requested_at"]
        assert isinstance(requested_at, datetime)
        priority = str(record["priority"])
        case = Case(
            request_id=request_id,
            traced=recipient,
            requester=sender,
            role=role,
            reference=str(record["request_reference"]),
            priority=priority,
            requested_at=requested_at,
            due_by=self.deadlines.due_by(requested_at, priority),
            state="submitted",
        ).moved("submitted", now, request_id, "request")
        self.cases[case.key] = case
        moved = Transition(
            request_id, recipient, sender, role, None, "submitted", request_id, REQUEST, "request"
        )
        return Result((moved,), (case,), self._acknowledgement(case))

    def _acknowledgement(self, case: Case) -> tuple[dict[str, object], ...]:
        if case.role != "traced" or not self.deadlines.auto_acknowledge or case.closed:
            return ()
        return (self._event(case, "ACKNOWLEDGED", case.requester, due_by=case.due_by),)

    def _event(
        self,
        case: Case,
        status: str,
        to: str,
        *,
        count: int = 1,
        due_by: datetime | None = None,
        remarks: str | None = None,
        now: datetime | None = None,
    ) -> dict[str, object]:
        """A TraceUpdate from this node about ``case``, in the national system's JSON form."""
        record: dict[str, object] = {
            "event_id": update_id(case.request_id, case.traced, status, count),
            # the same step is the same event every time it is made: stable fields only
            "sent_at": _json_time(now or case.history[0].at),
            "sending_agency": {"agency_id": self.agency, "country": self.country_of(self.agency)},
            "to_agency": {"agency_id": to, "country": self.country_of(to)},
            "request_event_id": case.request_id,
            "request_reference": case.reference,
            "status": status,
            "due_by": None if due_by is None else _json_time(due_by),
            "reminder_count": count if status == "REMINDER" else None,
            "remarks": remarks,
        }
        return {"event_type": UPDATE, "record": record, "recipients": [to]}

    def withdrawal(self, case: Case, reason: str, now: datetime) -> dict[str, object]:
        """The WITHDRAWN TraceUpdate a requester sends to close ``case``."""
        return self._event(case, "WITHDRAWN", case.traced, remarks=reason, now=now)

    def _update(
        self, record: Mapping[str, object], sender: str, recipient: str, now: datetime
    ) -> Result:
        status = str(record["status"])
        # ACKNOWLEDGED and IN_PROGRESS come from the traced agency; REMINDER and WITHDRAWN go to it
        traced = sender if status in ("ACKNOWLEDGED", "IN_PROGRESS") else recipient
        event_id = str(record["event_id"])
        case = self.cases.get((str(record["request_event_id"]), traced))
        if case is not None and case.seen(event_id):
            return Result()
        target = _STEP_STATE.get(status)
        what = status.lower()
        if case is None or case.closed or target is None:
            return self._unmatched(record, traced, case, event_id, UPDATE, what)
        changes: dict[str, object] = {}
        due_by = record.get("due_by")
        if isinstance(due_by, datetime) and status in ("ACKNOWLEDGED", "IN_PROGRESS"):
            changes["due_by"] = due_by  # the deadline the traced agency accepted
        else:
            due_by = case.due_by
        # a late case stays overdue until it closes or a later deadline is agreed
        late = case.state == "overdue" and isinstance(due_by, datetime) and due_by <= now
        state: State = "overdue" if late and target != "withdrawn" else target
        if status == "REMINDER":
            count = record.get("reminder_count")
            changes["reminders"] = max(case.reminders, count if isinstance(count, int) else 1)
            changes["reminded_at"] = now
        if status == "WITHDRAWN":
            changes["reason"] = record.get("remarks")
        return self._move(case, state, now, event_id, UPDATE, what, **changes)

    def _response(self, record: Mapping[str, object], sender: str, now: datetime) -> Result:
        event_id = str(record["event_id"])
        case = self.cases.get((str(record["request_event_id"]), sender))
        if case is not None and case.seen(event_id):
            return Result()
        outcome = OUTCOMES.get(str(record.get("outcome")))
        if case is None or case.state == "answered":
            return self._unmatched(record, sender, case, event_id, RESPONSE, "answered", outcome)
        reason = record.get("remarks") if outcome == "refused" else None
        return self._move(
            case, "answered", now, event_id, RESPONSE, "answered", outcome=outcome, reason=reason
        )

    def _move(
        self,
        case: Case,
        state: State,
        now: datetime,
        event_id: str,
        event_type: str,
        what: str,
        **changes: object,
    ) -> Result:
        after = case.moved(state, now, event_id, what, **changes)
        self.cases[after.key] = after
        moved = Transition(
            case.request_id,
            case.traced,
            case.requester,
            case.role,
            case.state,
            state,
            event_id,
            event_type,
            what,
            after.outcome,
            after.reminders,
        )
        return Result((moved,), (after,))

    def _unmatched(
        self,
        record: Mapping[str, object],
        traced: str,
        case: Case | None,
        event_id: str,
        event_type: str,
        what: str,
        outcome: str | None = None,
    ) -> Result:
        """An event that does not fit the state machine: said, and nothing else changes."""
        moved = Transition(
            str(record["request_event_id"]),
            traced,
            case.requester if case else None,
            case.role if case else None,
            case.state if case else None,
            None,
            event_id,
            event_type,
            what,
            outcome,
            matched=False,
        )
        return Result((moved,))

    def due(self, now: datetime) -> Result:
        """What the clock says at ``now``: open cases past their deadline become overdue, and
        the requester's overdue cases are chased (a REMINDER at once, then every
        ``remind_every``, up to ``max_reminders``)."""
        result = Result()
        for case in list(self.cases.values()):
            if case.closed or case.due_by > now:
                continue
            if case.state != "overdue":
                marker = f"overdue:{_json_time(case.due_by)}"
                result += self._move(case, "overdue", now, marker, "clock", "overdue")
                case = self.cases[case.key]
            result += self._chase(case, now)
        return result

    def _chase(self, case: Case, now: datetime) -> Result:
        d = self.deadlines
        if case.role != "requester" or case.reminders >= d.max_reminders:
            return Result()
        if case.reminded_at is not None and now < case.reminded_at + d.remind_every:
            return Result()
        count = case.reminders + 1
        event = self._event(case, "REMINDER", case.traced, count=count, due_by=case.due_by, now=now)
        record = event["record"]
        assert isinstance(record, dict)
        moved = self._move(
            case,
            "overdue",
            now,
            str(record["event_id"]),
            UPDATE,
            "reminder",
            reminders=count,
            reminded_at=now,
        )
        return Result(moved.transitions, moved.cases, (event,))


def case_to_json(case: Case) -> dict[str, object]:
    """``case`` as JSON-ready values (times ISO 8601, UTC): what the store keeps and what
    ``fxgw trace --json`` shows."""
    return {
        "request_event_id": case.request_id,
        "traced": case.traced,
        "requester": case.requester,
        "role": case.role,
        "request_reference": case.reference,
        "priority": case.priority,
        "requested_at": _json_time(case.requested_at),
        "due_by": _json_time(case.due_by),
        "state": case.state,
        "outcome": case.outcome,
        "reason": case.reason,
        "reminders": case.reminders,
        "reminded_at": None if case.reminded_at is None else _json_time(case.reminded_at),
        "updated_at": None if case.updated_at is None else _json_time(case.updated_at),
        "history": [
            {"state": s.state, "at": _json_time(s.at), "event_id": s.event_id, "step": s.what}
            for s in case.history
        ],
    }


def case_from_json(data: Mapping[str, Any]) -> Case:
    """The case :func:`case_to_json` wrote.

    :raises KeyError, ValueError: ``data`` is not such a case.
    """

    def when(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    return Case(
        request_id=data["request_event_id"],
        traced=data["traced"],
        requester=data["requester"],
        role=data["role"],
        reference=data["request_reference"],
        priority=data["priority"],
        requested_at=datetime.fromisoformat(data["requested_at"]),
        due_by=datetime.fromisoformat(data["due_by"]),
        state=data["state"],
        outcome=data["outcome"],
        reason=data["reason"],
        reminders=data["reminders"],
        reminded_at=when(data["reminded_at"]),
        updated_at=when(data["updated_at"]),
        history=tuple(
            Step(s["state"], datetime.fromisoformat(s["at"]), s["event_id"], s["step"])
            for s in data["history"]
        ),
    )


def owed(cases: Iterable[Case]) -> list[Case]:
    """The open cases this agency must answer, soonest deadline first."""
    return sorted((c for c in cases if c.role == "traced" and not c.closed), key=lambda c: c.due_by)
