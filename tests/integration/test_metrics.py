"""Metrics and health of running nodes on a real Kafka, read over HTTP on 127.0.0.1.

Two nodes exchange events and each one's ``/metrics`` counts exactly that traffic; ``/readyz``
follows the broker: ready, not ready naming kafka while it is stopped, ready again after.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.dev.demo import seizure_nl
from gateway.dev.kafka import LocalKafka
from gateway.dev.sandbox import Federation, build_federation
from tests.http import get
from tests.integration.conftest import delivered, national_send, running, wait_until
from tests.processes import two_agencies

pytestmark = [pytest.mark.integration]

EVENTS = 5
RECEIPTS_BACK = (
    "fxgw_receipts_received_total",
    (("outcome", "DELIVERED"), ("recipient", "BE-FPJ")),
)


def _serve_metrics(fed: Federation, *agencies: str) -> None:
    """Have the nodes serve /metrics on a free port of 127.0.0.1."""
    for agency in agencies:
        path = fed.config(agency)
        config = yaml.safe_load(path.read_text())
        config.update(metrics_port=0, metrics_address="127.0.0.1")
        path.write_text(yaml.safe_dump(config))


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a node's /metrics, by name and labels."""
    status, body = await asyncio.to_thread(get, port, "/metrics")
    assert 200 == status
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await asyncio.to_thread(get, port, "/readyz")
    return status, json.loads(body)


class TestMetricsOfAnExchange:
    """NL-POL sends N seizures to BE-FPJ; both nodes' metrics count them."""

    @pytest.mark.timeout(120)
    async def test_counters_match_the_traffic(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """Released N to BE-FPJ and N DELIVERED receipts at the sender; received and delivered
        N from NL-POL, N receipts sent, at the receiver; nothing awaited at the end."""
        fed = build_federation(
            tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=two_agencies("kafka")
        )
        _serve_metrics(fed, "NL-POL", "BE-FPJ")
        async with running(fed, "NL-POL", "BE-FPJ") as nodes:
            ports = {a: n.metrics_port or 0 for a, n in nodes.items()}
            assert all(p > 0 for p in ports.values()), ports
            await national_send(fed, "NL-POL", *(seizure_nl() for _ in range(EVENTS)))

            async def settled() -> bool:
                sender = await _scrape(ports["NL-POL"])
                return sender.get(RECEIPTS_BACK, 0) >= EVENTS

            await wait_until(settled, "all receipts back at the sender", within_s=60)
            sender = await _scrape(ports["NL-POL"])
            receiver = await _scrape(ports["BE-FPJ"])
            documents = await delivered(fed, "BE-FPJ")
        assert EVENTS == len(documents)
        assert EVENTS == sender[("fxgw_released_total", (("recipient", "BE-FPJ"),))]
        assert EVENTS == sender[RECEIPTS_BACK]
        assert 0 == sender[("fxgw_receipts_outstanding", ())]
        assert EVENTS == sender[("fxgw_receipt_latency_seconds_count", ())]
        assert EVENTS == sender[("fxgw_outcomes_total", (("kind", "released"),))]
        assert EVENTS == receiver[("fxgw_received_total", (("sender", "NL-POL"),))]
        assert EVENTS == receiver[("fxgw_delivered_total", (("sender", "NL-POL"),))]
        assert (
            EVENTS
            == receiver[
                ("fxgw_receipts_sent_total", (("outcome", "DELIVERED"), ("sender", "NL-POL")))
            ]
        )
        assert EVENTS == receiver[("fxgw_delivery_latency_seconds_count", ())]
        assert receiver[("fxgw_audit_entries_written_total", ())] >= 2 * EVENTS
        assert receiver[("fxgw_audit_fsync_seconds_count", ())] >= 1
        inbox = f"{topic_prefix}.inbox.BE-FPJ"
        assert 0 == receiver[("fxgw_consumer_lag", (("topic", inbox),))]
        assert not any(name == "fxgw_rejected_total" for name, _ in receiver)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A Kafka of this module alone, which the readiness test stops and starts."""
    with LocalKafka(nodes=1, workdir=tmp_path_factory.mktemp("readyz-kafka")) as cluster:
        yield cluster


class TestReadinessFollowsTheBroker:
    """/readyz: 200, then 503 naming kafka while the only broker is stopped, then 200."""

    @pytest.mark.timeout(180)
    async def test_not_ready_while_the_broker_is_down(
        self, tmp_path: Path, kafka: LocalKafka, topic_prefix: str
    ) -> None:
        """The node stays alive and healthy throughout; only readiness changes."""
        fed = build_federation(
            tmp_path / "fed",
            kafka.bootstrap_servers,
            prefix=topic_prefix,
            agencies=two_agencies("kafka")[1:],
        )
        _serve_metrics(fed, "BE-FPJ")
        seen: list[tuple[int, dict[str, Any]]] = []

        async def readiness_is(port: int, status: int) -> bool:
            seen.append(await _readyz(port))
            return seen[-1][0] == status

        async with running(fed, "BE-FPJ") as nodes:
            port = nodes["BE-FPJ"].metrics_port
            assert port is not None
            await wait_until(lambda: readiness_is(port, 200), "ready", within_s=30)
            await asyncio.to_thread(kafka.stop_node, 0)
            try:
                await wait_until(lambda: readiness_is(port, 503), "not ready", within_s=60)
                down = seen[-1][1]
                health = await asyncio.to_thread(get, port, "/healthz")
            finally:
                await asyncio.to_thread(kafka.start_node, 0)
            await wait_until(lambda: readiness_is(port, 200), "ready again", within_s=90)
        assert "kafka" in down["failed"]
        assert "unreachable" == down["checks"]["kafka"]
        assert 200 == health[0]
        checks = seen[-1][1]["checks"]
        assert {"kafka": "ok", "consuming": "ok", "audit": "ok", "trust": "ok"} == checks
