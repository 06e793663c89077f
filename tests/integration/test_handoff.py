"""The national system's side: `fxgw send`, the spool folders, fail-closed refusals, clean logs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.cli.main import main
from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import Federation
from tests.integration.conftest import (
    delivered,
    leaked,
    leaves,
    national_send,
    quarantined,
    running,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class TestSendCommand:
    """`fxgw send` puts events on the outbound path and rejects bad lines by field."""

    async def test_send_rejects_a_bad_line_and_sends_the_rest(
        self, federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The bad line is named with its line number and field; the good ones are released."""
        bad = seizure_nl()
        bad["record"]["recovery_date"] = "20-11-2026"  # type: ignore[index]
        events = tmp_path / "events.jsonl"
        events.write_text(
            "\n".join(json.dumps(e) for e in (seizure_nl(), bad, seizure_nl())) + "\n"
        )
        async with running(federation, "NL-POL", "BE-FPJ"):
            args = ["send", "-c", str(federation.config("NL-POL")), str(events)]
            code = await asyncio.to_thread(main, args)
            out = capsys.readouterr().out
            await wait_until(lambda: _at_least(federation, "BE-FPJ", 2), "two deliveries")
        assert 1 == code
        assert f"{events}:2: rejected (schema_invalid)" in out
        assert "recovery_date" in out
        assert "20-11-2026" not in out  # the message names the field, never the value
        assert "sent 2 events" in out


class TestSpool:
    """The spool folders work as the Kafka topics do."""

    async def test_spool_file_is_released_and_moved_to_done(self, federation: Federation) -> None:
        """A JSON-lines file dropped in NL-POL's outbound spool reaches BE-FPJ's inbound spool."""
        outbox = federation.spool_out("NL-POL")
        outbox.mkdir(parents=True, exist_ok=True)
        async with running(federation, "NL-POL", "BE-FPJ"):
            tmp = outbox / ".batch.tmp"
            tmp.write_text(json.dumps(seizure_nl()) + "\n" + json.dumps(seizure_nl()) + "\n")
            tmp.rename(outbox / "batch.jsonl")
            await wait_until(lambda: _at_least(federation, "BE-FPJ", 2), "spool deliveries")
            await wait_until(lambda: (outbox / "done" / "batch.jsonl").exists(), "file moved")
        files = sorted(federation.spool_in("BE-FPJ").glob("*.json"))
        assert 2 == len(files)
        document = json.loads(files[0].read_text())
        assert {"event_type", "provenance", "record"} == set(document)
        assert not (outbox / "batch.jsonl").exists()


class TestFailClosed:
    """A recipient the node cannot serve gets nothing; the event is kept in quarantine."""

    async def test_unknown_recipient_is_refused_and_others_still_served(
        self, federation: Federation
    ) -> None:
        """A recipient not on the trust list is refused; BE-FPJ and US-ATF still get theirs."""
        event = seizure_nl()
        event["recipients"] = ["DE-BKA"]
        async with running(federation, "NL-POL", "BE-FPJ", "US-ATF"):
            await national_send(federation, "NL-POL", event)
            await wait_until(lambda: _at_least(federation, "BE-FPJ", 1), "BE delivery")
            await wait_until(lambda: _at_least(federation, "US-ATF", 1), "US delivery")
            await wait_until(lambda: _quarantine_count(federation, "NL-POL", 1), "quarantine")
            q = await quarantined(federation, "NL-POL")
        assert 1 == len(q)
        assert b"unknown_recipient" == q[0].header("fxgw-reason")
        assert b"DE-BKA" == q[0].header("fxgw-recipient")
        assert event == json.loads(q[0].value)


class TestLogs:
    """No field value of an event ever appears in a log entry."""

    async def test_log_entries_hold_no_field_values(self, federation: Federation) -> None:
        """Across release, delivery and a rejection, log entries carry metadata only."""
        event = seizure_nl()
        bad = seizure_nl()
        bad["record"]["firearms"][0]["calibre"] = 9  # type: ignore[index]
        with capture_logs() as entries:
            async with running(federation, "NL-POL", "BE-FPJ", "US-ATF"):
                await national_send(federation, "NL-POL", event, bad)
                await wait_until(lambda: _at_least(federation, "US-ATF", 1), "delivery")
                await wait_until(lambda: _quarantine_count(federation, "NL-POL", 1), "quarantine")
        assert any(e["event"] == "delivered" for e in entries)
        assert any(e["event"] == "event_rejected" for e in entries)
        record = event["record"]
        assert isinstance(record, dict)
        metadata = {record["event_id"], bad["record"]["event_id"], "NL-POL"}  # type: ignore[index]
        values = {v for v in leaves(record) + leaves(bad["record"]) if len(v) >= 4} - metadata
        text = json.dumps(entries, default=str)
        assert [] == leaked(values, text)


async def _at_least(fed: Federation, agency: str, count: int) -> bool:
    return len(await delivered(fed, agency)) >= count


async def _quarantine_count(fed: Federation, agency: str, count: int) -> bool:
    return len(await quarantined(fed, agency)) >= count
