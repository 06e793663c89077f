"""Nodes ride out a broker outage: bounded logs while it is down, and work again when it is back.

The module runs its own single-node Kafka (the session's broker is shared with other tests and
must not go away), stops it for about 20 s while two node processes run, and starts it again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.kafka import LocalKafka
from gateway.dev.sandbox import THREE_AGENCIES, Federation, build_federation
from tests.integration.conftest import delivered, national_send, wait_until
from tests.processes import NodeProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OUTAGE_S = 20.0
MAX_LINES_PER_NODE = 400
"""Log lines a node may write while the broker is down for OUTAGE_S (unbounded, aiokafka wrote
about 10,000 a second)."""
MAX_LINE_CHARS = 16_384


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A Kafka of this module alone, which the test stops and starts."""
    with LocalKafka(nodes=1, workdir=tmp_path_factory.mktemp("outage-kafka")) as cluster:
        yield cluster


def _two_agencies(tmp_path: Path, kafka: LocalKafka, prefix: str) -> Federation:
    """NL-POL and BE-FPJ on ``kafka``."""
    return build_federation(
        tmp_path / "fed", kafka.bootstrap_servers, prefix=prefix, agencies=THREE_AGENCIES[:2]
    )


def _lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8", errors="replace").splitlines()


class TestBrokerOutage:
    """The only broker is stopped for about 20 s under two running nodes."""

    async def test_logs_stay_bounded_and_nodes_resume(
        self, tmp_path: Path, kafka: LocalKafka, topic_prefix: str
    ) -> None:
        """Few log lines while the broker is down; an event sent after it is back is delivered."""
        fed = _two_agencies(tmp_path, kafka, topic_prefix)
        logs = {a: tmp_path / f"{a}.log" for a in ("NL-POL", "BE-FPJ")}
        nodes = {a: NodeProcess(fed.config(a), logs[a]) for a in logs}
        for node in nodes.values():
            node.start()
        try:

            async def arrived(count: int) -> bool:
                return len(await delivered(fed, "BE-FPJ")) >= count

            await national_send(fed, "NL-POL", seizure_nl())
            await wait_until(lambda: arrived(1), "a delivery before the outage", within_s=90)
            before = {a: len(_lines(log)) for a, log in logs.items()}
            asked_at = time.monotonic()
            await asyncio.to_thread(kafka.stop_node, 0)
            stopped_at = time.monotonic()
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(kafka.start_node, 0)
            outage_s = time.monotonic() - asked_at  # from the stop request until it serves again
            during = {a: len(_lines(log)) - before[a] for a, log in logs.items()}
            assert all(n.alive for n in nodes.values()), "a node exited in the outage"
            await national_send(fed, "NL-POL", seizure_nl())
            await wait_until(lambda: arrived(2), "a delivery after the outage", within_s=120)
        finally:
            for node in nodes.values():
                node.stop()
        print(
            f"\nbroker stopped for {OUTAGE_S:.0f} s; {outage_s:.1f} s from the stop request until"
            f" it served again (its shutdown took {stopped_at - asked_at:.1f} s)"
        )
        for agency, count in during.items():
            print(f"{agency}: {count} log lines in those {outage_s:.1f} s")
        for agency, log in logs.items():
            lines = _lines(log)
            assert all(len(line) <= MAX_LINE_CHARS for line in lines)
            assert all(isinstance(json.loads(line), dict) for line in lines), agency
        assert all(count <= MAX_LINES_PER_NODE for count in during.values()), during


class TestStopDuringOutage:
    """SIGTERM while the only broker is down still stops the node."""

    async def test_a_node_stops_while_the_broker_is_gone(
        self, tmp_path: Path, kafka: LocalKafka, topic_prefix: str
    ) -> None:
        """The node does not hang on a cluster that cannot answer; it exits on its own."""
        fed = _two_agencies(tmp_path, kafka, topic_prefix)
        log = tmp_path / "BE-FPJ.log"
        node = NodeProcess(fed.config("BE-FPJ"), log)
        node.start()
        try:
            await wait_until(lambda: "node_started" in log.read_text(), "start", within_s=90)
            await asyncio.to_thread(kafka.stop_node, 0)
            asked = time.monotonic()
            # SIGTERM, and SIGKILL after 120 s: a hang shows as -9 in the exit code
            code = await asyncio.to_thread(node.stop, 120)
            took = time.monotonic() - asked
        finally:
            if node.alive:
                node.kill()
            await asyncio.to_thread(kafka.start_node, 0)
        print(f"\nstopped {took:.1f} s after SIGTERM with the broker gone; exit code {code}")
        assert code in (0, 3), _lines(log)[-5:]
