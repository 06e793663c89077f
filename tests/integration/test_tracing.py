"""Trace requests as a tracked workflow, three agencies on a real Kafka: an urgent request is
acknowledged, worked on and answered within its deadline with a custody chain; a routine one is
acknowledged, goes overdue and is chased; both sides agree on each case; every audit verifies."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import main
from gateway.dev.demo import trace_request_nl, trace_response_be
from gateway.dev.sandbox import Federation
from tests.integration.conftest import delivered, national_send, running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

AGENCIES = ("NL-POL", "BE-FPJ", "US-ATF")
TRACING = {
    "routine": 4,  # seconds: the routine request goes overdue while the test watches
    "urgent": 300,  # the urgent one is answered well within
    "remind_every": 600,
    "max_reminders": 2,
    "check_every_seconds": 0.5,
}
CUSTODY = [
    ("1998-04-14", "MANUFACTURE", "FN Herstal", "FN Herstal export"),
    ("1998-05-02", "EXPORT", "FN Herstal export", "Wapenhandel Noord BV"),
    ("1999-02-11", "IMPORT", "FN Herstal", "Wapenhandel Noord BV"),
    ("1999-03-01", "DISTRIBUTION", "Wapenhandel Noord BV", "Jachtwinkel De Vries"),
    ("1999-03-20", "DEALER", "Jachtwinkel De Vries", "Jachtwinkel De Vries Assen"),
    ("1999-08-30", "RETAIL_SALE", "Jachtwinkel De Vries Assen", "Pieter Jansen"),
]


@pytest.fixture
def traced(federation: Federation) -> Federation:
    """The sandbox federation with deadlines of seconds in every node's tracing block."""
    for agency in AGENCIES:
        path = federation.config(agency)
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["tracing"] = dict(TRACING)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return federation


def _routine_to_us() -> dict[str, object]:
    """NL-POL asks US-ATF, ROUTINE, about a US-made revolver."""
    event = trace_request_nl()
    record = event["record"]
    assert isinstance(record, dict)
    record.update(
        event_id=f"NL-POL-TR-{uuid.uuid4().hex[:12]}",
        request_reference="NL-TRACE-ROUTINE-1",
        priority="ROUTINE",
        urgency_justification=None,
    )
    record["firearm"] = {
        "item_id": "2",
        "serial_number": "DYU4417",
        "make": "Smith & Wesson",
        "firearm_type": "REVOLVER",
        "manufacture_country": "US",
    }
    return event


def _in_progress(request: dict[str, object]) -> dict[str, object]:
    """BE-FPJ's national system says it is working on ``request``."""
    return {
        "event_type": "fxgw.TraceUpdate",
        "record": {
            "event_id": f"BE-FPJ-TU-{uuid.uuid4().hex[:12]}",
            "sent_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "sending_agency": {"agency_id": "BE-FPJ", "country": "BE"},
            "to_agency": {"agency_id": "NL-POL", "country": "NL"},
            "request_event_id": request["event_id"],
            "request_reference": request["request_reference"],
            "status": "IN_PROGRESS",
        },
    }


def _answer(request: dict[str, object], provenance: dict[str, object]) -> dict[str, object]:
    """BE-FPJ's TRACED answer with the whole chain of custody, to the first retail purchaser."""
    event = trace_response_be(request, provenance)
    record = event["record"]
    assert isinstance(record, dict)
    record["transfer_history"] = [
        {"date": d, "stage": s, "from_party": f, "to_party": t, "country": "BE"}
        for d, s, f, t in CUSTODY
    ]
    return event


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert 0 == main(["trace", *args, "--json"])
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def _of_type(documents: list[dict[str, object]], event_type: str) -> list[dict[str, object]]:
    return [d for d in documents if d["event_type"] == event_type]


def _state(rows: list[dict[str, object]], request_id: str, traced: str) -> tuple[object, ...]:
    (row,) = [r for r in rows if (r["request_event_id"], r["traced"]) == (request_id, traced)]
    return (row["state"], row["outcome"], row["due_by"])


class TestTraceWorkflow:
    async def test_answered_in_time_and_chased_when_overdue(
        self, traced: Federation, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Urgent NL-POL -> BE-FPJ: acknowledged automatically, in progress, answered TRACED
        within its deadline, the custody chain as BE-FPJ's policy allows. Routine NL-POL ->
        US-ATF: acknowledged, never answered, overdue, a reminder reaches US-ATF's national
        system. Both sides' lists agree; every audit trail verifies."""
        fed = traced
        config = {a: str(fed.config(a)) for a in AGENCIES}
        urgent, routine = trace_request_nl(), _routine_to_us()
        urgent_id = str(urgent["record"]["event_id"])  # type: ignore[index]
        routine_id = str(routine["record"]["event_id"])  # type: ignore[index]
        async with running(fed, *AGENCIES):
            await national_send(fed, "NL-POL", urgent, routine)

            async def acknowledged() -> bool:
                rows = _cli(capsys, "list", "-c", config["NL-POL"])
                states = {(r["request_event_id"], r["state"]) for r in rows}
                return (urgent_id, "acknowledged") in states

            await wait_until(acknowledged, "BE-FPJ's acknowledgement at NL-POL")
            (request,) = _of_type(await delivered(fed, "BE-FPJ"), "fxgw.TraceRequest")
            record, provenance = request["record"], request["provenance"]
            assert isinstance(record, dict) and isinstance(provenance, dict)
            await national_send(fed, "BE-FPJ", _in_progress(record))
            await wait_until(
                lambda: (
                    _state(_cli(capsys, "list", "-c", config["NL-POL"]), urgent_id, "BE-FPJ")[0]
                    == "in_progress"
                ),
                "in progress at NL-POL",
            )
            await national_send(fed, "BE-FPJ", _answer(record, provenance))

            async def settled() -> bool:
                nl = _cli(capsys, "list", "-c", config["NL-POL"])
                reminders = _of_type(await delivered(fed, "US-ATF"), "fxgw.TraceUpdate")
                return _state(nl, urgent_id, "BE-FPJ")[0] == "answered" and any(
                    d["record"]["status"] == "REMINDER"  # type: ignore[index]
                    for d in reminders
                )

            await wait_until(settled, "the answer at NL-POL and the reminder at US-ATF", 90)
            requester = _cli(capsys, "list", "-c", config["NL-POL"])
            overdue = _cli(capsys, "list", "-c", config["NL-POL"], "--overdue")
            be_case = _cli(capsys, "show", urgent_id, "-c", config["BE-FPJ"])
            be_owed = _cli(capsys, "list", "-c", config["BE-FPJ"], "--owed")

            async def us_sees_reminder() -> bool:
                owed = _cli(capsys, "list", "-c", config["US-ATF"], "--owed")
                return bool(owed) and owed[0]["reminders"] == 1

            await wait_until(us_sees_reminder, "the reminder in US-ATF's case")
            us_owed = _cli(capsys, "list", "-c", config["US-ATF"], "--owed")
            at_nl = await delivered(fed, "NL-POL")
            at_us = await delivered(fed, "US-ATF")

        # both sides agree on each case: state, outcome and the deadline agreed
        assert ("answered", "found") == _state(requester, urgent_id, "BE-FPJ")[:2]
        assert _state(requester, urgent_id, "BE-FPJ") == _state(be_case, urgent_id, "BE-FPJ")
        assert [] == be_owed  # answered: BE-FPJ owes nothing
        assert ("overdue", None) == _state(requester, routine_id, "US-ATF")[:2]
        assert _state(requester, routine_id, "US-ATF") == _state(us_owed, routine_id, "US-ATF")
        assert [routine_id] == [r["request_event_id"] for r in overdue]
        # answered within its deadline, after acknowledged and in progress
        (urgent_case,) = [r for r in requester if r["request_event_id"] == urgent_id]
        history = urgent_case["history"]
        assert isinstance(history, list)
        steps = [h["step"] for h in history]
        assert ["request", "acknowledged", "in_progress", "answered"] == steps
        answered_at = datetime.fromisoformat(history[-1]["at"])
        assert answered_at < datetime.fromisoformat(str(urgent_case["due_by"]))
        # the routine request: acknowledged with its deadline, then chased once
        (routine_case,) = [r for r in requester if r["request_event_id"] == routine_id]
        routine_steps = [h["step"] for h in routine_case["history"]]  # type: ignore[union-attr]
        assert ["request", "acknowledged", "overdue", "reminder"] == routine_steps
        assert 1 == routine_case["reminders"] == us_owed[0]["reminders"]
        # US-ATF's national system got the acknowledgement's counterpart: the reminder
        (reminder,) = [
            d
            for d in _of_type(at_us, "fxgw.TraceUpdate")
            if d["record"]["status"] == "REMINDER"  # type: ignore[index]
        ]
        assert (routine_id, 1) == (
            reminder["record"]["request_event_id"],  # type: ignore[index]
            reminder["record"]["reminder_count"],  # type: ignore[index]
        )
        # the custody chain arrived with its stages and dates; the purchaser stayed withheld
        (response,) = _of_type(at_nl, "fxgw.TraceResponse")
        chain = response["record"]["transfer_history"]  # type: ignore[index]
        assert [(d, s) for d, s, _, _ in CUSTODY] == [(t["date"], t["stage"]) for t in chain]
        assert {None} == {t["to_party"] for t in chain}
        assert "transfer_history[].to_party" in response["provenance"]["withheld"]  # type: ignore[index]
        # every audit trail verifies
        for agency in AGENCIES:
            assert 0 == main(["audit", "verify", "-c", config[agency]]), agency
        capsys.readouterr()
        audit = Path(fed.config("NL-POL")).parent / "state" / "audit"
        text = "".join(p.read_text(errors="replace") for p in audit.glob("*") if p.is_file())
        assert "trace_transition" in text
        assert "NL-TRACE-ROUTINE-1" not in text  # a request reference is never audited
