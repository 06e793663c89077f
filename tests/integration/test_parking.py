"""Faults tied to one recipient or to our own side, on a real Kafka.

A recipient whose inbox is missing gets its envelopes parked durably and offered again with
back-off, without holding up the other recipients; a node whose state folder is held by another
process stops at once with a clear message and its own exit code.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.audit.status import build_view, to_json
from gateway.audit.store import AuditLog, read_entries
from gateway.crypto.keys import load_signing_key
from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import Federation
from gateway.node.config import load_config
from tests.integration.conftest import delivered, national_send, running, wait_until


async def _admin(fed: Federation) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=fed.bootstrap, client_id="test-admin")
    await admin.start()
    return admin


def _states(fed: Federation, agency: str) -> dict[str, str]:
    """Per recipient, the state of the sender's transfers (the status fold)."""
    config = load_config(fed.config(agency))
    view = build_view((e.kind, e.at, e.data) for e in read_entries(config.audit_dir))
    rows = to_json(view, datetime.now(UTC), config.exchange.receipt_timeout)
    return {str(r["recipient"]): str(r["state"]) for r in rows}


class TestParking:
    """A recipient whose inbox refuses envelopes is parked, not waited on."""

    async def test_missing_inbox_parks_one_recipient_and_resumes(
        self, federation: Federation
    ) -> None:
        """US-ATF's inbox is gone: BE-FPJ still gets the seizure, US-ATF's envelope is parked
        (status 'parked'); once the inbox is back it is sent and delivered, once."""
        us_inbox = federation.inbox("US-ATF")
        async with running(federation, "NL-POL", "BE-FPJ"):
            admin = await _admin(federation)
            try:
                await admin.delete_topics([us_inbox])
            finally:
                await admin.close()
            await asyncio.sleep(1.0)  # let the deletion reach every broker's metadata
            await national_send(federation, "NL-POL", seizure_nl())
            await wait_until(
                lambda: _count(delivered(federation, "BE-FPJ"), 1), "BE-FPJ's delivery"
            )
            await wait_until(
                lambda: _states(federation, "NL-POL").get("US-ATF") == "parked",
                "US-ATF's envelope parked",
            )
            parked_dir = load_config(federation.config("NL-POL")).state_dir / "parked"
            files = list(parked_dir.glob(f"{us_inbox}/*.rec"))
            print(f"\nparked files: {len(files)}")
            assert 1 == len(files)
            admin = await _admin(federation)
            try:
                await admin.create_topics([NewTopic(us_inbox, 1, 1)])
            finally:
                await admin.close()
            await wait_until(
                lambda: not list(parked_dir.glob(f"{us_inbox}/*.rec")),
                "the parked envelope sent",
                within_s=90,
            )
        async with running(federation, "NL-POL", "US-ATF"):
            await wait_until(
                lambda: _count(delivered(federation, "US-ATF"), 1), "US-ATF's delivery"
            )
            await wait_until(
                lambda: _states(federation, "NL-POL").get("US-ATF") == "delivered",
                "US-ATF's receipt",
            )
        assert 1 == len(await delivered(federation, "US-ATF"))
        assert 1 == len(await delivered(federation, "BE-FPJ"))


async def _count(pending: object, at_least: int) -> bool:
    return len(await pending) >= at_least  # type: ignore[arg-type, misc]


class TestFatalFault:
    """A fault of our own side that retrying cannot mend stops the node with a clear exit."""

    def test_state_folder_held_by_another_process_stops_the_node(
        self, federation: Federation, tmp_path: Path
    ) -> None:
        """With its audit folder locked by another process, 'fxgw run' exits 3 and says why."""
        config = load_config(federation.config("BE-FPJ"))
        signer = load_signing_key(config.keys.signing)
        with AuditLog.open(config.audit_dir, signer, now=lambda: datetime.now(UTC)):
            result = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(config.path)],
                capture_output=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        stderr = result.stderr.decode(errors="replace")
        assert 3 == result.returncode, stderr[-2000:]
        assert "another process" in stderr
        events = [json.loads(line)["event"] for line in stderr.splitlines() if line[:1] == "{"]
        assert "node_stopped_on_fault" in events
        assert not any("Unclosed" in str(e) for e in events)  # everything opened was closed
