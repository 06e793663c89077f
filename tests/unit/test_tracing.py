"""The trace workflow's pure core: cases, transitions, deadlines, reminders, unmatched events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gateway.contract.schemas import SchemaRegistry
from gateway.core.outbound import parse_plain_event
from gateway.core.tracing import (
    HISTORY,
    Case,
    Deadlines,
    Tracker,
    UrgentWithoutJustification,
    owed,
    update_id,
)
from gateway.node.config import TracingModel
from gateway.types import AgencyId
from tests.unit.conftest import repo_file

T0 = datetime(2026, 11, 21, 14, 5, tzinfo=UTC)
DEADLINES = Deadlines(
    routine=timedelta(days=30),
    urgent=timedelta(hours=48),
    remind_every=timedelta(days=7),
    max_reminders=2,
)
URGENT_EXAMPLE = "trace_request_nl_urgent_fn_be.json"
COUNTRIES = {"NL-POL": "NL", "BE-FPJ": "BE", "US-ATF": "US"}


def _tracker(agency: str, deadlines: Deadlines = DEADLINES) -> Tracker:
    return Tracker(AgencyId(agency), deadlines, COUNTRIES.__getitem__)


def _request(priority: str = "ROUTINE", event_id: str = "req-1") -> dict[str, object]:
    return {
        "event_id": event_id,
        "requested_at": T0,
        "requesting_agency": {"agency_id": "NL-POL", "country": "NL"},
        "request_reference": "AMS-TR-1",
        "priority": priority,
        "urgency_justification": "life at risk" if priority == "URGENT" else None,
    }


def _update(
    status: str,
    sender: str = "BE-FPJ",
    to: str = "NL-POL",
    event_id: str | None = None,
    **more: object,
) -> dict[str, object]:
    return {
        "event_id": event_id or f"upd-{status}",
        "sent_at": T0,
        "sending_agency": {"agency_id": sender, "country": COUNTRIES[sender]},
        "to_agency": {"agency_id": to, "country": COUNTRIES[to]},
        "request_event_id": "req-1",
        "request_reference": "AMS-TR-1",
        "status": status,
        "due_by": None,
        "reminder_count": None,
        "remarks": None,
        **more,
    }


def _response(
    outcome: str = "TRACED", event_id: str = "resp-1", **more: object
) -> dict[str, object]:
    return {
        "event_id": event_id,
        "responded_at": T0,
        "responding_agency": {"agency_id": "BE-FPJ", "country": "BE"},
        "request_event_id": "req-1",
        "request_reference": "AMS-TR-1",
        "requesting_agency": {"agency_id": "NL-POL", "country": "NL"},
        "outcome": outcome,
        "remarks": None,
        **more,
    }


def _case(tracker: Tracker, traced: str = "BE-FPJ") -> Case:
    return tracker.cases[("req-1", traced)]


class TestRequester:
    """The node that sent the request."""

    def test_released_request_opens_a_submitted_case_per_traced_agency(self) -> None:
        """One request released to two agencies is two cases, each submitted."""
        nl = _tracker("NL-POL")
        first = nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        nl.released("fxgw.TraceRequest", _request(), "US-ATF", T0)
        assert [("requester", None, "submitted")] == [
            (t.role, t.before, t.after) for t in first.transitions
        ]
        assert {("req-1", "BE-FPJ"), ("req-1", "US-ATF")} == set(nl.cases)
        assert () == first.send

    def test_deadline_per_priority(self) -> None:
        """ROUTINE and URGENT requests are due after their own deadlines."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request("URGENT"), "BE-FPJ", T0)
        nl.released("fxgw.TraceRequest", _request("ROUTINE", "req-2"), "BE-FPJ", T0)
        assert T0 + timedelta(hours=48) == _case(nl).due_by
        assert T0 + timedelta(days=30) == nl.cases[("req-2", "BE-FPJ")].due_by

    def test_acknowledged_in_progress_answered(self) -> None:
        """Delivered updates and the response move the case to its answer."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        agreed = T0 + timedelta(days=20)
        nl.delivered("fxgw.TraceUpdate", _update("ACKNOWLEDGED", due_by=agreed), "BE-FPJ", T0)
        assert ("acknowledged", agreed) == (_case(nl).state, _case(nl).due_by)
        nl.delivered("fxgw.TraceUpdate", _update("IN_PROGRESS"), "BE-FPJ", T0)
        result = nl.delivered("fxgw.TraceResponse", _response("PARTIALLY_TRACED"), "BE-FPJ", T0)
        assert [("in_progress", "answered", "partial")] == [
            (t.before, t.after, t.outcome) for t in result.transitions
        ]
        steps = [s.what for s in _case(nl).history]
        assert ["request", "acknowledged", "in_progress", "answered"] == steps

    def test_refused_keeps_the_reason(self) -> None:
        """A REFUSED answer closes the case as refused, with the remarks as the reason."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        nl.delivered("fxgw.TraceResponse", _response("REFUSED", remarks="no MLA"), "BE-FPJ", T0)
        assert ("answered", "refused", "no MLA") == (
            _case(nl).state,
            _case(nl).outcome,
            _case(nl).reason,
        )

    def test_overdue_then_reminders_up_to_the_max(self) -> None:
        """Past the deadline: overdue and a reminder at once, then every remind_every, up to
        max_reminders; never before the deadline."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request("URGENT"), "BE-FPJ", T0)
        assert () == nl.due(T0 + timedelta(hours=47)).transitions
        late = T0 + timedelta(hours=49)
        first = nl.due(late)
        assert ["overdue", "reminder"] == [t.what for t in first.transitions]
        assert 1 == len(first.send)
        record = first.send[0]["record"]
        assert isinstance(record, dict)
        assert ("REMINDER", 1, ["BE-FPJ"]) == (
            record["status"],
            record["reminder_count"],
            first.send[0]["recipients"],
        )
        assert () == nl.due(late + timedelta(days=1)).send
        second = nl.due(late + timedelta(days=7))
        assert [2] == [t.reminders for t in second.transitions]
        assert () == nl.due(late + timedelta(days=30)).send
        assert 2 == _case(nl).reminders

    def test_released_reminder_is_not_a_second_transition(self) -> None:
        """The release of a reminder the clock made changes nothing more."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        tick = nl.due(T0 + timedelta(days=31))
        record = tick.send[0]["record"]
        assert isinstance(record, dict)
        again = nl.released("fxgw.TraceUpdate", {**_update("REMINDER"), **record}, "BE-FPJ", T0)
        assert () == again.transitions

    def test_closed_cases_are_not_chased(self) -> None:
        """An answered or withdrawn case never becomes overdue."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        nl.released("fxgw.TraceUpdate", _update("WITHDRAWN", "NL-POL", "BE-FPJ"), "BE-FPJ", T0)
        assert "withdrawn" == _case(nl).state
        tick = nl.due(T0 + timedelta(days=365))
        assert ((), ()) == (tick.transitions, tick.send)

    def test_agreed_later_deadline_lifts_overdue(self) -> None:
        """An update with a deadline still ahead ends the overdue state; without one it stays."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        late = T0 + timedelta(days=31)
        nl.due(late)
        nl.delivered("fxgw.TraceUpdate", _update("IN_PROGRESS", event_id="a"), "BE-FPJ", late)
        assert "overdue" == _case(nl).state
        later = _update("IN_PROGRESS", event_id="b", due_by=late + timedelta(days=5))
        nl.delivered("fxgw.TraceUpdate", later, "BE-FPJ", late)
        assert "in_progress" == _case(nl).state


class TestTraced:
    """The node that received the request."""

    def test_delivered_request_is_owed_and_acknowledged(self) -> None:
        """The traced side owes the answer and acknowledges with the deadline."""
        be = _tracker("BE-FPJ")
        result = be.delivered("fxgw.TraceRequest", _request("URGENT"), "NL-POL", T0)
        assert [("traced", "submitted")] == [(t.role, t.after) for t in result.transitions]
        (event,) = result.send
        record = event["record"]
        assert isinstance(record, dict)
        assert ("ACKNOWLEDGED", "2026-11-23T14:05:00.000Z", ["NL-POL"]) == (
            record["status"],
            record["due_by"],
            event["recipients"],
        )
        assert update_id("req-1", "BE-FPJ", "ACKNOWLEDGED") == record["event_id"]
        assert ["req-1"] == [c.request_id for c in owed(be.cases.values())]

    def test_generated_acknowledgement_parses(self, registry2: SchemaRegistry) -> None:
        """The acknowledgement is a valid plain event of the contract."""
        be = _tracker("BE-FPJ")
        (event,) = be.delivered("fxgw.TraceRequest", _request(), "NL-POL", T0).send
        parsed = parse_plain_event(event, registry2)
        assert ("fxgw.TraceUpdate", ("NL-POL",)) == (parsed.event_type, parsed.recipients)

    def test_no_auto_acknowledge(self) -> None:
        """With auto_acknowledge off nothing is sent."""
        be = _tracker("BE-FPJ", Deadlines(auto_acknowledge=False))
        assert () == be.delivered("fxgw.TraceRequest", _request(), "NL-POL", T0).send

    def test_own_acknowledgement_and_answer_move_the_case(self) -> None:
        """Releasing the acknowledgement and the response moves the traced side's case."""
        be = _tracker("BE-FPJ")
        (event,) = be.delivered("fxgw.TraceRequest", _request(), "NL-POL", T0).send
        record = event["record"]
        assert isinstance(record, dict)
        ack = _update("ACKNOWLEDGED", event_id=str(record["event_id"]))
        be.released("fxgw.TraceUpdate", ack, "NL-POL", T0)
        be.released("fxgw.TraceResponse", _response("NOT_FOUND"), "NL-POL", T0)
        assert ("answered", "not_found") == (_case(be).state, _case(be).outcome)
        assert [] == owed(be.cases.values())

    def test_reminder_received_marks_overdue_without_chasing(self) -> None:
        """A delivered reminder marks the case overdue and counts; the traced side never
        sends reminders itself."""
        be = _tracker("BE-FPJ")
        be.delivered("fxgw.TraceRequest", _request(), "NL-POL", T0)
        reminder = _update("REMINDER", "NL-POL", "BE-FPJ", reminder_count=1)
        be.delivered("fxgw.TraceUpdate", reminder, "NL-POL", T0)
        assert ("overdue", 1) == (_case(be).state, _case(be).reminders)
        tick = be.due(T0 + timedelta(days=90))
        assert () == tick.send

    def test_redelivered_request_resends_the_same_acknowledgement(self) -> None:
        """A request seen again moves nothing and re-sends the very same acknowledgement."""
        be = _tracker("BE-FPJ")
        first = be.delivered("fxgw.TraceRequest", _request(), "NL-POL", T0)
        again = be.delivered("fxgw.TraceRequest", _request(), "NL-POL", T0 + timedelta(hours=1))
        assert () == again.transitions
        assert first.send == again.send


class TestUnmatched:
    """Events that do not fit the state machine."""

    def test_response_to_an_unknown_request(self) -> None:
        """A response nobody asked for is unmatched, and no case appears."""
        nl = _tracker("NL-POL")
        result = nl.delivered("fxgw.TraceResponse", _response(), "BE-FPJ", T0)
        assert [(False, None, "answered")] == [
            (t.matched, t.after, t.what) for t in result.transitions
        ]
        assert {} == nl.cases

    def test_update_after_the_answer(self) -> None:
        """An update after the answer is unmatched; the case stays answered."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        nl.delivered("fxgw.TraceResponse", _response(), "BE-FPJ", T0)
        result = nl.delivered("fxgw.TraceUpdate", _update("IN_PROGRESS"), "BE-FPJ", T0)
        assert [(False, "answered")] == [(t.matched, t.before) for t in result.transitions]
        assert "answered" == _case(nl).state

    def test_unknown_status(self) -> None:
        """A status of a later contract version (OTHER here) is unmatched."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        result = nl.delivered("fxgw.TraceUpdate", _update("OTHER"), "BE-FPJ", T0)
        assert [False] == [t.matched for t in result.transitions]

    def test_audit_data_holds_no_reference_or_remark(self) -> None:
        """The audit fields are ids, agencies, states and codes only."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        refused = _response("REFUSED", remarks="secret reason")
        (moved,) = nl.delivered("fxgw.TraceResponse", refused, "BE-FPJ", T0).transitions
        values = set(map(str, moved.audit_data().values()))
        assert not {"AMS-TR-1", "secret reason"} & values
        assert "refused" == moved.audit_data()["outcome"]


class TestIdempotence:
    """Seeing the same event twice changes nothing."""

    def test_same_update_twice(self) -> None:
        """A redelivered update is no second transition."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        nl.delivered("fxgw.TraceUpdate", _update("ACKNOWLEDGED"), "BE-FPJ", T0)
        before = _case(nl)
        assert () == nl.delivered("fxgw.TraceUpdate", _update("ACKNOWLEDGED"), "BE-FPJ", T0).cases
        assert () == nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0).transitions
        assert before == _case(nl)

    def test_same_response_twice(self) -> None:
        """A redelivered response is no second answer (and not unmatched)."""
        nl = _tracker("NL-POL")
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        nl.delivered("fxgw.TraceResponse", _response(), "BE-FPJ", T0)
        assert () == nl.delivered("fxgw.TraceResponse", _response(), "BE-FPJ", T0).transitions

    def test_generated_ids_are_deterministic(self) -> None:
        """The same step gets the same id; another step, agency or count another one."""
        ids = {
            update_id("req-1", "BE-FPJ", "REMINDER", 1),
            update_id("req-1", "BE-FPJ", "REMINDER", 2),
            update_id("req-1", "US-ATF", "REMINDER", 1),
            update_id("req-1", "BE-FPJ", "ACKNOWLEDGED"),
        }
        assert 4 == len(ids)
        assert update_id("req-1", "BE-FPJ", "REMINDER", 1) == update_id(
            "req-1", "BE-FPJ", "REMINDER", 1
        )

    def test_history_is_bounded(self) -> None:
        """A case keeps its first transition and the latest ones."""
        nl = _tracker("NL-POL", Deadlines(max_reminders=200, remind_every=timedelta(seconds=1)))
        nl.released("fxgw.TraceRequest", _request(), "BE-FPJ", T0)
        for n in range(100):
            nl.due(T0 + timedelta(days=31, seconds=n))
        history = _case(nl).history
        assert (HISTORY, "request", 100) == (len(history), history[0].what, _case(nl).reminders)


class TestAdmit:
    """What the national system may not send."""

    @pytest.mark.parametrize("justification", [None, "", "   "])
    def test_urgent_without_justification(
        self, registry: SchemaRegistry, justification: str | None
    ) -> None:
        """An URGENT request without a justification is refused, naming the field."""
        event = {"event_type": "fxgw.TraceRequest", "record": _json_request(justification)}
        with pytest.raises(UrgentWithoutJustification, match="urgency_justification"):
            parse_plain_event(event, registry)

    def test_urgent_with_justification(self, registry: SchemaRegistry) -> None:
        """With a justification it passes."""
        event = {"event_type": "fxgw.TraceRequest", "record": _json_request("life at risk")}
        assert "9a3d7c52-41e6-4d0b-b8a2-6f5e4d3c2b1a" == parse_plain_event(event, registry).event_id


def _json_request(justification: str | None) -> dict[str, object]:
    """The shipped URGENT example request with ``justification``."""
    event = json.loads(repo_file("tests", "data", "events", URGENT_EXAMPLE).read_text())
    record: dict[str, object] = event["record"]
    return {**record, "urgency_justification": justification}


class TestConfig:
    """The ``tracing:`` block of node.yaml."""

    def test_defaults_are_production_deadlines(self) -> None:
        """Without the block: 30 days routine, 48 hours urgent, acknowledged automatically."""
        deadlines = TracingModel().deadlines
        assert (timedelta(days=30), timedelta(hours=48), True) == (
            deadlines.routine,
            deadlines.urgent,
            deadlines.auto_acknowledge,
        )

    def test_durations_in_seconds_or_iso(self) -> None:
        """Durations are seconds or ISO 8601."""
        model = TracingModel.model_validate({"routine": 5, "urgent": "PT2H", "max_reminders": 1})
        assert (timedelta(seconds=5), timedelta(hours=2), 1) == (
            model.deadlines.routine,
            model.deadlines.urgent,
            model.deadlines.max_reminders,
        )

    @pytest.mark.parametrize("bad", [{"routine": 0}, {"max_reminders": -1}, {"remind": 5}])
    def test_bad_values_are_refused(self, bad: dict[str, object]) -> None:
        """A zero deadline, a negative count or an unknown key is refused."""
        with pytest.raises(ValidationError):
            TracingModel.model_validate(bad)
