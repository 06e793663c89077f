"""Evidence on a real Kafka: one signed receipt per envelope, a status view that agrees with the
receivers, and an audit trail that verifies and holds no field value."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from structlog.testing import capture_logs

from gateway.audit.status import build_view, to_json
from gateway.cli.main import main
from gateway.crypto.receipts import RECEIPT_TYPE, open_receipt
from gateway.dev.demo import seizure_nl, seizure_us
from gateway.dev.sandbox import Federation
from gateway.errors import StorageError
from gateway.node.config import load_config
from gateway.node.transport import read_topic
from gateway.types import AgencyId
from tests.integration.conftest import (
    delivered,
    leaked,
    leaves,
    national_send,
    publish_raw,
    running,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AGENCIES = ("NL-POL", "BE-FPJ", "US-ATF")
_HOUR = timedelta(hours=1)


def _now() -> datetime:
    return datetime.now(UTC)


def audit_entries(fed: Federation, agency: str) -> list[dict[str, object]]:
    """Every entry of ``agency``'s audit trail, in order (read straight from its files)."""
    folder = load_config(fed.config(agency)).audit_dir
    lines = [
        line for p in sorted(folder.glob("audit-*.jsonl")) for line in p.read_bytes().splitlines()
    ]
    return [json.loads(line) for line in lines if line.strip()]


def _strict_receiver(fed: Federation, agency: str) -> None:
    """Make ``agency`` refuse every envelope living longer than a day (senders use a week), so
    that it rejects everything it gets, as ``stale``."""
    path = fed.config(agency)
    config = yaml.safe_load(path.read_text())
    config.setdefault("envelope", {})["max_lifetime_days"] = 1
    path.write_text(yaml.safe_dump(config, sort_keys=False))


async def _receipts(fed: Federation, agency: str) -> list[bytes]:
    return [m.value for m in await read_topic(fed.bootstrap, f"{fed.prefix}.receipts.{agency}")]


def _released(fed: Federation, agency: str) -> dict[str, str]:
    return {
        str(e["data"]["message_id"]): str(e["data"]["recipient"])  # type: ignore[index]
        for e in audit_entries(fed, agency)
        if e["kind"] == "release"
    }


class TestReceiptsAndStatus:
    """Three agencies; BE-FPJ is made to reject, so both outcomes come back."""

    async def test_one_receipt_per_envelope_and_status_agrees(
        self, federation: Federation, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each envelope NL-POL and US-ATF release gets exactly one verified receipt back; the
        senders' status views say delivered where the receiver delivered, rejected (stale) where
        it refused."""
        _strict_receiver(federation, "BE-FPJ")
        async with running(federation, *AGENCIES) as nodes:
            await national_send(federation, "NL-POL", seizure_nl(), seizure_nl())
            await national_send(federation, "US-ATF", seizure_us())

            async def all_receipted() -> bool:
                for sender in ("NL-POL", "US-ATF"):
                    released = _released(federation, sender)
                    if len(released) < (4 if sender == "NL-POL" else 2):
                        return False
                    if len(await _receipts(federation, sender)) < len(released):
                        return False
                    taken = [
                        e
                        for e in audit_entries(federation, sender)
                        if e["kind"] == "receipt_received"
                    ]
                    if len(taken) < len(released):
                        return False
                return True

            await wait_until(all_receipted, "receipts back at both senders", within_s=90)
            registry = nodes["NL-POL"].registry
            trust = nodes["NL-POL"].inbound.trust
        assert [] == await delivered(federation, "BE-FPJ")
        for sender in ("NL-POL", "US-ATF"):
            released = _released(federation, sender)
            receipts = [
                open_receipt(
                    r,
                    trust=trust,
                    codec=registry,
                    agency=AgencyId(sender),
                    now=_now(),
                    format_version=registry.get(RECEIPT_TYPE).format,
                )
                for r in await _receipts(federation, sender)
            ]
            assert sorted(released) == sorted(r.message_id for r in receipts)  # one each
            for receipt in receipts:
                assert released[receipt.message_id] == receipt.recipient
                expected = (
                    ("REJECTED", "stale")
                    if receipt.recipient == "BE-FPJ"
                    else (
                        "DELIVERED",
                        None,
                    )
                )
                assert expected == (receipt.outcome, receipt.reason)
            entries = audit_entries(federation, sender)
            view = build_view((str(e["kind"]), str(e["at"]), e["data"]) for e in entries)  # type: ignore[misc]
            states = {row["message_id"]: row["state"] for row in to_json(view, _now(), _HOUR)}
            assert {
                m: ("rejected" if recipient == "BE-FPJ" else "delivered")
                for m, recipient in released.items()
            } == states
        to_us = next(
            e["data"]
            for e in audit_entries(federation, "NL-POL")
            if e["kind"] == "release" and e["data"]["recipient"] == "US-ATF"  # type: ignore[index]
        )
        assert isinstance(to_us, dict)
        assert "firearms[].serial_number" in to_us["kept"]
        assert "persons[].family_name" in to_us["transformed"]
        assert "case_reference" in to_us["withheld"]
        assert ("seizure-partners", "H1") == (to_us["rule"], to_us["handling"])
        capsys.readouterr()
        assert 0 == main(["status", "-c", str(federation.config("NL-POL")), "--json"])
        rows = json.loads(capsys.readouterr().out)
        assert {r["recipient"]: r["state"] for r in rows} == {
            "BE-FPJ": "rejected",
            "US-ATF": "delivered",
        }
        assert {r["reason"] for r in rows if r["recipient"] == "BE-FPJ"} == {"stale"}
        delivered_at = {
            d["provenance"]["message_id"]  # type: ignore[index]
            for agency in ("NL-POL", "US-ATF")
            for d in await delivered(federation, agency)
        }
        receipted = {
            m
            for s in ("NL-POL", "US-ATF")
            for m, r in _released(federation, s).items()
            if r != "BE-FPJ"
        }
        assert receipted == delivered_at

    async def test_a_replayed_envelope_gets_the_same_receipt(self, federation: Federation) -> None:
        """An envelope delivered and then replayed into the inbox is answered with the receipt
        the first copy got, byte for byte, and is not delivered again."""
        async with running(federation, "NL-POL", "US-ATF"):
            await national_send(federation, "NL-POL", seizure_nl())

            async def receipted() -> bool:
                return len(await _receipts(federation, "NL-POL")) >= 1

            await wait_until(receipted, "first receipt")
            (envelope,) = await read_topic(federation.bootstrap, federation.inbox("US-ATF"))
            await publish_raw(federation, federation.inbox("US-ATF"), envelope.value)

            async def twice() -> bool:
                return len(await _receipts(federation, "NL-POL")) >= 2

            await wait_until(twice, "second receipt")
        first, second = await _receipts(federation, "NL-POL")
        assert first == second
        assert 1 == len(await delivered(federation, "US-ATF"))


class TestAuditFailure:
    """A node whose audit trail cannot be written takes no new work until it can."""

    async def test_no_offset_is_committed_while_the_audit_cannot_be_synced(
        self, federation: Federation
    ) -> None:
        """US-ATF's disk refuses the audit sync: it says why and delivers nothing (nothing is
        delivered before its audit entry is durable); once the disk is back, the waiting event
        is delivered, then the next, and nothing twice."""
        with capture_logs() as logs:
            async with running(federation, "NL-POL", "US-ATF") as nodes:
                audit = nodes["US-ATF"].audit
                real_sync = audit.sync
                broken = True

                def sync() -> None:
                    if broken:
                        raise StorageError("audit folder: No space left on device")
                    real_sync()

                audit.sync = sync  # type: ignore[method-assign]
                await national_send(federation, "NL-POL", seizure_nl())

                def stuck() -> bool:
                    return any(
                        e["event"] == "retrying" and e.get("what") == "sync audit" for e in logs
                    )

                await wait_until(stuck, "the node to report the audit failure")
                await asyncio.sleep(3)
                assert 0 == len(await delivered(federation, "US-ATF"))
                broken = False
                await wait_until(lambda: _count(delivered(federation, "US-ATF"), 1), "first")
                await national_send(federation, "NL-POL", seizure_nl())
                await wait_until(lambda: _count(delivered(federation, "US-ATF"), 2), "second")
        assert 2 == len(await delivered(federation, "US-ATF"))
        assert any("No space left" in str(e.get("error")) for e in logs)


async def _count(pending: object, at_least: int) -> bool:
    return len(await pending) >= at_least  # type: ignore[arg-type, misc]


class TestAuditTrail:
    """The audit trail of a node that released, delivered and rejected."""

    async def test_audit_and_logs_hold_no_field_values(self, federation: Federation) -> None:
        """No string or number of any event sent appears in any audit file or log entry."""
        events = [seizure_nl(), seizure_nl()]
        us_event = seizure_us()
        with capture_logs() as logs:
            async with running(federation, *AGENCIES):
                await national_send(federation, "NL-POL", *events)
                await national_send(federation, "US-ATF", us_event)

                async def done() -> bool:
                    return (
                        len(await delivered(federation, "NL-POL")) >= 1
                        and len(await delivered(federation, "BE-FPJ")) >= 3
                    )

                await wait_until(done, "deliveries")
        records = [e["record"] for e in [*events, us_event]]
        metadata = {r["event_id"] for r in records} | set(AGENCIES)  # type: ignore[index]
        values = {v for r in records for v in leaves(r) if len(v) >= 4} - metadata
        assert len(values) > 20
        audit_text = "".join(
            p.read_text()
            for a in AGENCIES
            for p in load_config(federation.config(a)).audit_dir.glob("*")
        )
        assert "release" in audit_text and "delivery" in audit_text
        log_text = json.dumps(logs, default=str)
        assert [] == leaked(values, audit_text)
        assert [] == leaked(values, log_text)
