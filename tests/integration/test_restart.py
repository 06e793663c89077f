"""Killing a receiving node mid-stream and starting it again loses nothing and repeats nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import THREE_AGENCIES, build_federation, replace_sink
from tests.integration.conftest import delivered, national_send, running, wait_until
from tests.processes import NodeProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EVENTS = 120


class TestReceiverCrash:
    """SIGKILL of the receiving node while envelopes stream in."""

    @pytest.mark.parametrize("sink", ["kafka", "spool"])
    async def test_kill_and_restart_delivers_each_envelope_exactly_once(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, sink: str
    ) -> None:
        """Every one of the events arrives at BE-FPJ once, though its node was killed mid-stream."""
        agencies = replace_sink(THREE_AGENCIES[:2], "BE-FPJ", sink)
        fed = build_federation(
            tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=agencies
        )
        log = tmp_path / "be-node.log"
        receiver = NodeProcess(fed.config("BE-FPJ"), log)
        receiver.start()
        try:
            async with running(fed, "NL-POL"):

                async def stream() -> None:
                    for _ in range(EVENTS // 10):
                        await national_send(fed, "NL-POL", *(seizure_nl() for _ in range(10)))
                        await asyncio.sleep(0.4)  # a stream the kill lands inside

                sender = asyncio.create_task(stream())

                async def some_arrived() -> bool:
                    return len(await delivered(fed, "BE-FPJ")) >= EVENTS // 4

                await wait_until(some_arrived, "the first deliveries", within_s=90)
                receiver.kill()
                killed_at = len(await delivered(fed, "BE-FPJ"))
                await sender
                receiver.start()

                async def all_arrived() -> bool:
                    return len(await delivered(fed, "BE-FPJ")) >= EVENTS

                await wait_until(all_arrived, "every delivery after the restart", within_s=120)
                await asyncio.sleep(2.0)  # time for any duplicate to show up
                docs = await delivered(fed, "BE-FPJ")
        finally:
            receiver.stop()
        ids = [d["provenance"]["message_id"] for d in docs]  # type: ignore[index]
        assert killed_at < EVENTS, "the node was killed after the stream had ended"
        assert EVENTS == len(ids)
        assert EVENTS == len(set(ids))
        assert 0 == receiver.returncode
