"""A sending node killed with SIGKILL again and again while it releases a backlog from its
outbound topic: every event arrives once, and its status shows each release delivered once."""

from __future__ import annotations

import asyncio
import os
import random
import time
from functools import partial
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import build_federation
from gateway.node.config import load_config
from gateway.node.transport import TopicSpec, ensure_topics
from tests.processes import (
    Figures,
    NodeProcess,
    audit_verify,
    backlog_left,
    check_receipts,
    expected_ids,
    inbound_ids,
    kill_while_busy,
    released_ids,
    send_events,
    status_rows,
    topic_size,
    two_agencies,
    wait_for,
    wait_started,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(300)]

TRANCHE = int(os.environ.get("FXGW_FAULT_TRANCHE", "2500"))
"""Events the national system adds to NL-POL's outbound topic while its node is down."""
CLOCKS = ("start", "take", "publish", "take", "publish")
"""What each SIGKILL comes 0.05-0.6 s after: the process start, the restarted node taking events
(its first release decision), or its first new envelope showing in BE-FPJ's inbox."""
MAX_KILLS = len(CLOCKS) + 3
"""A kill that lands after the node caught up is repeated, this many kills at most."""


class TestSenderKilledWhileReleasing:
    """NL-POL's node works through a backlog on its outbound topic and is killed with SIGKILL
    at random moments; BE-FPJ's node runs throughout."""

    async def test_each_event_delivered_once_and_each_release_delivered_in_status(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """SIGKILLs of the sender: each event delivered once, each release delivered once."""
        figures = Figures("sender-sigkill-loop")
        seed = int(os.environ.get("FXGW_FAULT_SEED", str(time.time_ns() % 1_000_000)))
        rng = random.Random(seed)
        fed = build_federation(
            tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=two_agencies("kafka")
        )
        nl = NodeProcess(fed.config("NL-POL"), tmp_path / "nl-pol.log")
        be = NodeProcess(fed.config("BE-FPJ"), tmp_path / "be-fpj.log")
        outbound = fed.local_topic("NL-POL", "outbound")
        inbox = fed.inbox("BE-FPJ")
        events: list[dict[str, object]] = []

        async def backlog(count: int) -> None:
            """The national system adds ``count`` seizures while NL-POL's node is down."""
            assert not nl.alive
            tranche = [seizure_nl() for _ in range(count)]
            events.extend(tranche)
            await send_events(kafka_bootstrap, outbound, tranche)

        async def began(clock: str, before: int) -> bool:
            if clock == "take":
                return nl.logged_since_start("released")
            return await topic_size(kafka_bootstrap, inbox) > before

        try:
            await ensure_topics(kafka_bootstrap, [TopicSpec(outbound)])
            be.start()
            await wait_started(be)
            await backlog(TRANCHE)
            kills = await kill_while_busy(
                nl,
                rng,
                CLOCKS,
                began=began,
                shown=partial(topic_size, kafka_bootstrap, inbox),
                left=partial(
                    backlog_left,
                    kafka_bootstrap,
                    load_config(fed.config("NL-POL")).group_id("outbound"),
                    outbound,
                ),
                refill=partial(backlog, TRANCHE),
                max_kills=MAX_KILLS,
            )
            wanted = expected_ids(fed, events, "NL-POL", "BE-FPJ")
            nl.start()
            inbound = fed.local_topic("BE-FPJ", "inbound")

            async def all_in() -> bool:
                return set(await inbound_ids(kafka_bootstrap, inbound)) >= wanted

            await wait_for(all_in, "every delivery", within_s=120, watch=[nl, be], every_s=1)

            def all_delivered_in_status() -> bool:
                rows = status_rows(nl.config)
                return {str(r["message_id"]) for r in rows if r["state"] == "delivered"} >= wanted

            await wait_for(
                all_delivered_in_status, "status: all delivered", within_s=60, watch=[nl, be]
            )
            await asyncio.sleep(3.0)  # time for a late duplicate to show
            assert (True, True) == (nl.alive, be.alive)
        finally:
            nl_code, be_code = nl.stop(), be.stop()
        ids = await inbound_ids(kafka_bootstrap, inbound)
        rows = status_rows(nl.config)
        receipts = await check_receipts(kafka_bootstrap, nl.config)
        releases = released_ids(nl.config)
        verified = {a: audit_verify(fed.config(a)) for a in ("NL-POL", "BE-FPJ")}
        figures.sent = len(events)
        figures.delivered = len(set(ids) & wanted)
        figures.duplicates = len(ids) - len(set(ids))
        figures.lost = len(wanted - set(ids))
        figures.receipts = receipts.records
        figures.extra = {
            "seed": seed,
            "kills": nl.kills,
            "kill(clock+delay:in_inbox/uncommitted)": " ".join(map(str, kills)),
            "envelopes_in_inbox": await topic_size(kafka_bootstrap, inbox),
            "release_entries": len(releases),
            "re_released": len(releases) - len(set(releases)),
            "receipt_outcomes": dict(receipts.outcomes),
            "status_rows": len(rows),
        }
        figures.print()
        assert len(CLOCKS) == sum(k.left > 0 for k in kills)  # kills during the backlog
        assert 0 == figures.lost
        assert 0 == figures.duplicates
        assert set() == set(ids) - wanted
        assert sorted(wanted) == sorted(str(r["message_id"]) for r in rows)
        assert {"delivered"} == {r["state"] for r in rows}
        assert 0 == receipts.unverified
        assert wanted == receipts.messages
        assert {m: 1 for m in wanted} == receipts.distinct_delivered()
        # a copy the sender released again after a crash is answered DUPLICATE, nothing else
        assert set() == {o for v in receipts.other_outcomes().values() for o in v} - {"DUPLICATE"}
        assert {"NL-POL": 0, "BE-FPJ": 0} == {a: v.returncode for a, v in verified.items()}, {
            a: v.stdout + v.stderr for a, v in verified.items()
        }
        assert (0, 0) == (nl_code, be_code)
