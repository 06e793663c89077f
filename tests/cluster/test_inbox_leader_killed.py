"""On a 3-node cluster with every topic replicated 3 times (min.insync.replicas 2), SIGKILL of
the broker that leads BE-FPJ's inbox partition, while NL-POL streams seizures to BE-FPJ, loses
nothing, doubles nothing, and stops neither node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from gateway.dev.demo import seizure_nl
from gateway.dev.kafka import LocalKafka
from gateway.dev.sandbox import build_federation
from gateway.node.config import load_config
from gateway.node.transport import Producer, TopicSpec, ensure_topics
from tests.processes import (
    Figures,
    NodeProcess,
    audit_verify,
    check_receipts,
    expected_ids,
    inbound_ids,
    status_rows,
    topic_size,
    two_agencies,
    wait_for,
    wait_started,
)

pytestmark = [pytest.mark.cluster, pytest.mark.faults, pytest.mark.timeout(300)]

EVENTS = 600
CHUNK = (10, 0.3)
"""The national system sends 10 seizures every 0.3 s."""
REPLICATED = (("min.insync.replicas", "2"),)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A three-node KRaft cluster for this module."""
    with LocalKafka(nodes=3, heap_mb=384, workdir=tmp_path_factory.mktemp("kafka3")) as kafka:
        yield kafka


async def describe(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, list[int]]]:
    """Per topic, the leader and the in-sync replicas of partition 0."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = {}
        for d in await admin.describe_topics(topics):
            for p in d["partitions"] if d["error_code"] == 0 else ():
                if p["partition"] == 0:
                    found[d["topic"]] = (int(p["leader"]), sorted(int(r) for r in p["isr"]))
        return found
    finally:
        await admin.close()


class TestInboxLeaderKilled:
    """SIGKILL of the leader of BE-FPJ's inbox partition while envelopes stream into it."""

    async def test_every_event_delivered_once_and_nodes_keep_running(
        self, tmp_path: Path, cluster: LocalKafka
    ) -> None:
        """Every seizure delivered and receipted once; neither node exits; audits verify."""
        figures = Figures("inbox-leader-sigkill")
        bootstrap = cluster.bootstrap_servers
        fed = build_federation(
            tmp_path / "fed", bootstrap, prefix="fx3", agencies=two_agencies("kafka"), replication=3
        )
        configs = {a: load_config(fed.config(a)) for a in ("NL-POL", "BE-FPJ")}
        names = [
            n
            for c in configs.values()
            for n in (
                c.inbox_topic(c.agency),
                c.receipts_topic(c.agency),
                c.local.outbound_topic,
                c.local.inbound_topic,
                c.local.quarantine_topic,
            )
            if n is not None
        ]
        # as production would have them, before any node starts (nodes create only what is
        # missing)
        await ensure_topics(bootstrap, [TopicSpec(n, 1, 3, REPLICATED) for n in names])

        async def fully_replicated() -> bool:
            found = await describe(bootstrap, names)
            return all([0, 1, 2] == found.get(n, (-1, []))[1] for n in names)

        await wait_for(fully_replicated, "every topic in sync on 3 nodes", within_s=60)
        inbox, inbound = fed.inbox("BE-FPJ"), fed.local_topic("BE-FPJ", "inbound")
        outbound = fed.local_topic("NL-POL", "outbound")
        nl = NodeProcess(fed.config("NL-POL"), tmp_path / "nl-pol.log")
        be = NodeProcess(fed.config("BE-FPJ"), tmp_path / "be-fpj.log")
        events = [seizure_nl() for _ in range(EVENTS)]
        killed: int | None = None
        timeline: dict[str, object] = {}
        try:
            be.start()
            nl.start()
            await wait_started(be)
            await wait_started(nl)
            producer = Producer(bootstrap, "test-national-system")
            await producer.start()
            try:
                for start in range(0, EVENTS, CHUNK[0]):
                    chunk = events[start : start + CHUNK[0]]
                    await producer.send_many(
                        [(outbound, json.dumps(e).encode(), None, ()) for e in chunk]
                    )
                    if killed is None and start >= EVENTS // 3:
                        leader, isr = (await describe(bootstrap, [inbox]))[inbox]
                        timeline["inbox_before_kill"] = await topic_size(bootstrap, inbox)
                        timeline["inbound_before_kill"] = await topic_size(bootstrap, inbound)
                        timeline["leader_isr"] = f"{leader}/{isr}"
                        cluster.kill_node(leader)
                        killed = leader
                        timeline["killed_at_s"] = round(time.monotonic() - figures.started, 1)
                    assert (True, True) == (nl.alive, be.alive)
                    await asyncio.sleep(CHUNK[1])
            finally:
                await producer.stop()
            new_leader, isr = (await describe(bootstrap, [inbox]))[inbox]
            timeline["leader_isr_after"] = f"{new_leader}/{isr}"
            wanted = expected_ids(fed, events, "NL-POL", "BE-FPJ")

            async def all_in() -> bool:
                return set(await inbound_ids(bootstrap, inbound)) >= wanted

            await wait_for(all_in, "every delivery", within_s=120, watch=[nl, be], every_s=1)

            def all_delivered_in_status() -> bool:
                rows = status_rows(nl.config)
                return {str(r["message_id"]) for r in rows if r["state"] == "delivered"} >= wanted

            await wait_for(
                all_delivered_in_status, "status: all delivered", within_s=60, watch=[nl, be]
            )
            await asyncio.sleep(3.0)  # time for a late duplicate to show
            alive = (nl.alive, be.alive)
        finally:
            nl_code, be_code = nl.stop(), be.stop()
            if killed is not None:
                with contextlib.suppress(Exception):
                    cluster.start_node(killed)  # for any later test of the module
        ids = await inbound_ids(bootstrap, inbound)
        receipts = await check_receipts(bootstrap, nl.config)
        verified = {a: audit_verify(fed.config(a)) for a in ("NL-POL", "BE-FPJ")}
        retries = sorted(
            {
                f"{n.config.parent.name} {r.get('what')}"
                for n in (nl, be)
                for r in n.log_events("retrying")
            }
        )
        figures.sent = len(events)
        figures.delivered = len(set(ids) & wanted)
        figures.duplicates = len(ids) - len(set(ids))
        figures.lost = len(wanted - set(ids))
        figures.receipts = receipts.records
        figures.extra = {
            **timeline,
            "envelopes_in_inbox": await topic_size(bootstrap, inbox),
            "receipt_outcomes": dict(receipts.outcomes),
            "retried": retries,
        }
        figures.print()
        assert killed in (0, 1, 2)
        assert (True, True) == alive
        assert 0 == figures.lost
        assert 0 == figures.duplicates
        assert set() == set(ids) - wanted
        assert 0 == receipts.unverified
        assert {m: 1 for m in wanted} == receipts.distinct_delivered()
        assert set() == {o for v in receipts.other_outcomes().values() for o in v} - {"DUPLICATE"}
        assert {"NL-POL": 0, "BE-FPJ": 0} == {a: v.returncode for a, v in verified.items()}, {
            a: v.stdout + v.stderr for a, v in verified.items()
        }
        assert (0, 0) == (nl_code, be_code)
