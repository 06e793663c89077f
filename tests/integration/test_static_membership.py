"""A receiving node killed with SIGKILL and started again takes its partitions back at once.

Each of its consumers is a static group member (``instance_id`` in node.yaml). Without that,
the restarted node waits until the group coordinator expires the killed member, a whole session
timeout (``Consumer.SESSION_TIMEOUT_MS``), before it is given the inbox partition again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import THREE_AGENCIES, build_federation
from gateway.node.transport import Consumer
from tests.integration.conftest import delivered, national_send, running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _start_node(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL the process group if it is not gone in 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class TestStaticMembership:
    """SIGKILL of a receiving node, and its restart under the same instance id."""

    async def test_restarted_node_consumes_well_inside_the_session_timeout(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """The restarted node delivers again in under half a session timeout after its start."""
        fed = build_federation(
            tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=THREE_AGENCIES[:2]
        )
        log = tmp_path / "be-node.log"
        receiver = _start_node(fed.config("BE-FPJ"), log)
        try:
            async with running(fed, "NL-POL"):
                await national_send(fed, "NL-POL", seizure_nl())

                async def arrived(count: int) -> bool:
                    return len(await delivered(fed, "BE-FPJ")) >= count

                await wait_until(lambda: arrived(1), "the first delivery", within_s=90)
                receiver.send_signal(signal.SIGKILL)
                receiver.wait(timeout=10)
                await national_send(fed, "NL-POL", seizure_nl())  # waits in the inbox
                restarted_at = time.monotonic()
                receiver = _start_node(fed.config("BE-FPJ"), log)
                await wait_until(lambda: arrived(2), "a delivery after the restart", within_s=90)
                took_s = time.monotonic() - restarted_at
        finally:
            _stop(receiver)
        session_s = Consumer.SESSION_TIMEOUT_MS / 1000
        print(f"\nrestarted node delivered {took_s:.1f} s after its start (session {session_s} s)")
        assert took_s < session_s / 2
        assert 0 == receiver.returncode
