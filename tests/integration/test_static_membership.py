"""A receiving node killed with SIGKILL and started again takes its partitions back at once.

Each of its consumers is a static group member (``instance_id`` in node.yaml). Without that,
the restarted node waits until the group coordinator expires the killed member, a whole session
timeout (``Consumer.SESSION_TIMEOUT_MS``), before it is given the inbox partition again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import THREE_AGENCIES, build_federation
from gateway.node.transport import Consumer
from tests.integration.conftest import delivered, national_send, running, wait_until
from tests.processes import NodeProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


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
        receiver = NodeProcess(fed.config("BE-FPJ"), log)
        receiver.start()
        try:
            async with running(fed, "NL-POL"):
                await national_send(fed, "NL-POL", seizure_nl())

                async def arrived(count: int) -> bool:
                    return len(await delivered(fed, "BE-FPJ")) >= count

                await wait_until(lambda: arrived(1), "the first delivery", within_s=90)
                receiver.kill()
                await national_send(fed, "NL-POL", seizure_nl())  # waits in the inbox
                restarted_at = time.monotonic()
                receiver.start()
                await wait_until(lambda: arrived(2), "a delivery after the restart", within_s=90)
                took_s = time.monotonic() - restarted_at
        finally:
            receiver.stop()
        session_s = Consumer.SESSION_TIMEOUT_MS / 1000
        print(f"\nrestarted node delivered {took_s:.1f} s after its start (session {session_s} s)")
        assert took_s < session_s / 2
        assert 0 == receiver.returncode
