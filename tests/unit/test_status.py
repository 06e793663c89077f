"""The sender's status view: a fold of its audit trail into the fate of every message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.audit.status import build_view, render, to_json

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=5)


def _at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _release(message_id: str, recipient: str, event_id: str = "ev-1", at: int = 0) -> tuple:
    data = {
        "message_id": message_id,
        "event_id": event_id,
        "event_type": "fxgw.SeizureEvent",
        "recipient": recipient,
        "rule": "r",
    }
    return ("release", _at(at), data)


def _receipt(message_id: str, outcome: str, reason: str | None = None, at: int = 1) -> tuple:
    data = {"message_id": message_id, "outcome": outcome, "reason": reason, "received_at": _at(at)}
    return ("receipt_received", _at(at), data)


def test_each_state() -> None:
    """Delivered, rejected with its reason, still in time, and overdue."""
    view = build_view(
        [
            _release("m1", "BE-FPJ"),
            _release("m2", "US-ATF"),
            _release("m3", "DE-BKA"),
            _release("m4", "FR-PN", at=400),
            _receipt("m1", "DELIVERED"),
            _receipt("m2", "REJECTED", "schema_invalid"),
        ]
    )
    now = T0 + timedelta(seconds=500)
    states = {t["message_id"]: (t["state"], t["reason"]) for t in to_json(view, now, TIMEOUT)}
    assert {
        "m1": ("delivered", None),
        "m2": ("rejected", "schema_invalid"),
        "m3": ("overdue", None),
        "m4": ("released", None),
    } == states
    assert {"delivered": 1, "rejected": 1, "overdue": 1, "released": 1} == view.counts(now, TIMEOUT)


def test_delivery_after_a_rejection_wins_and_duplicates_do_not_demote() -> None:
    """A re-release delivered after a rejection is delivered; a later DUPLICATE leaves it so."""
    view = build_view(
        [
            _release("m1", "BE-FPJ"),
            _receipt("m1", "REJECTED", "stale"),
            _release("m1", "BE-FPJ", at=60),
            _receipt("m1", "DELIVERED", at=61),
            _receipt("m1", "DUPLICATE", at=62),
        ]
    )
    (row,) = to_json(view, T0 + timedelta(hours=1), TIMEOUT)
    assert ("delivered", None) == (row["state"], row["reason"])
    assert T0.isoformat() == row["released_at"]  # the first release counts


def test_receipt_for_an_unknown_message_is_counted_not_shown() -> None:
    """A receipt that matches no release of ours is reported as such."""
    view = build_view([_receipt("zz", "DELIVERED")])
    assert 1 == view.unmatched_receipts
    assert "1 receipt(s) matched no release" in render(view, T0, TIMEOUT, event_id=None, limit=10)


def test_fan_out_of_one_event() -> None:
    """A query by event id lists every recipient: released, denied by policy, refused."""
    view = build_view(
        [
            _release("m1", "BE-FPJ", event_id="ev-9"),
            _release("m2", "US-ATF", event_id="ev-9"),
            (
                "release_denied",
                _at(0),
                {"event_id": "ev-9", "recipient": "CH-FP", "reason": "no_rule"},
            ),
            (
                "release_refused",
                _at(0),
                {"event_id": "ev-9", "recipient": "DE-BKA", "reason": "no_recipient_key"},
            ),
            _release("m3", "BE-FPJ", event_id="ev-other"),
            _receipt("m1", "DELIVERED"),
        ]
    )
    text = render(view, T0 + timedelta(seconds=10), TIMEOUT, event_id="ev-9", limit=10)
    lines = text.splitlines()
    assert "event ev-9:" == lines[0]
    assert 5 == len(lines)
    assert any("BE-FPJ" in line and "delivered" in line for line in lines)
    assert any("US-ATF" in line and "released" in line for line in lines)
    assert any("CH-FP" in line and "denied" in line and "no_rule" in line for line in lines)
    assert any("DE-BKA" in line and "refused" in line for line in lines)
    assert "ev-other" not in text


def test_receipt_recorded_before_its_release_counts() -> None:
    """A receipt that reached the trail before its release entry is applied when it turns up."""
    view = build_view([_receipt("m1", "DELIVERED", at=1), _release("m1", "BE-FPJ", at=2)])
    (row,) = to_json(view, T0 + timedelta(hours=1), TIMEOUT)
    assert ("delivered", 0) == (row["state"], view.unmatched_receipts)


def test_parking_shows_until_the_record_leaves_or_expires() -> None:
    """Parked, it is 'parked'; unparked, it waits for its receipt; expired, it is 'not_sent'."""
    parked = [_release("m1", "XX-NEW"), ("parked", _at(1), {"message_id": "m1"})]
    later = T0 + timedelta(seconds=10)
    (row,) = to_json(build_view(parked), later, TIMEOUT)
    assert "parked" == row["state"]
    unparked = [*parked, ("unparked", _at(5), {"message_id": "m1"})]
    (row,) = to_json(build_view(unparked), later, TIMEOUT)
    assert "released" == row["state"]
    expired = [*parked, ("parked_expired", _at(5), {"message_id": "m1"})]
    (row,) = to_json(build_view(expired), later, TIMEOUT)
    assert "not_sent" == row["state"]
