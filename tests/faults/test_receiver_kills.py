"""A receiving node killed with SIGKILL again and again while it catches up on a backlog loses
nothing, delivers nothing twice, and answers each envelope with one receipt."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from functools import partial
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import build_federation
from gateway.node.config import load_config
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
    topic_size,
    two_agencies,
    wait_for,
    wait_started,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(300)]

TRANCHE = int(os.environ.get("FXGW_FAULT_TRANCHE", "2500"))
"""Seizures NL-POL releases while BE-FPJ's node is down, before each restart."""
CLOCKS = ("start", "take", "deliver", "take", "deliver")
"""What each SIGKILL comes 0.05-0.6 s after: the process start (recovery scan, group join); the
restarted node taking envelopes (after a SIGKILL its consumer group first waits out the dead
member's 10 s session), so the kill lands in a batch's staging or durability steps; or its first
delivery showing, so the kill lands between a publish and its journal, receipts or commit."""
MAX_KILLS = len(CLOCKS) + 3
"""A kill that lands after the node caught up is repeated, this many kills at most."""


class NationalSpool:
    """BE-FPJ's national system on a spool folder: it takes (moves away) every delivered file as
    soon as it shows, so the node can no longer see it; dot-files are the node's own."""

    def __init__(self, inbox: Path, taken: Path) -> None:
        self.inbox = inbox
        self.taken = taken
        self.ids: list[str] = []
        taken.mkdir(parents=True, exist_ok=True)

    def take(self) -> None:
        """Move every visible delivery file away, keeping a second copy of a name apart."""
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.inbox.iterdir()):
                if path.name.startswith(".") or path.suffix != ".json":
                    continue
                target = self.taken / path.name
                copy = 1
                while target.exists():
                    target = self.taken / f"{path.name}.{copy}"
                    copy += 1
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, target)
                    self.ids.append(path.stem)

    async def run(self, stop: asyncio.Event) -> None:
        """Take files every 20 ms until ``stop`` is set, then once more."""
        while not stop.is_set():
            self.take()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.02)
        self.take()


class TestReceiverKilledDuringCatchUp:
    """BE-FPJ's node comes up to a backlog NL-POL released while it was down, and is killed with
    SIGKILL at random moments while it works through it."""

    @pytest.mark.parametrize("sink", ["kafka", "spool"])
    async def test_each_envelope_delivered_and_receipted_exactly_once(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, sink: str
    ) -> None:
        """SIGKILLs during catch-up: none lost or doubled, one DELIVERED receipt each."""
        figures = Figures(f"receiver-sigkill-loop[{sink}]")
        seed = int(os.environ.get("FXGW_FAULT_SEED", str(time.time_ns() % 1_000_000)))
        rng = random.Random(seed)
        fed = build_federation(
            tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=two_agencies(sink)
        )
        nl = NodeProcess(fed.config("NL-POL"), tmp_path / "nl-pol.log")
        be = NodeProcess(fed.config("BE-FPJ"), tmp_path / "be-fpj.log")
        inbound = fed.local_topic("BE-FPJ", "inbound")
        spool = NationalSpool(fed.spool_in("BE-FPJ"), tmp_path / "taken")
        stop_taking = asyncio.Event()
        taker = asyncio.create_task(spool.run(stop_taking))

        async def delivered_count() -> int:
            if sink == "kafka":
                return await topic_size(kafka_bootstrap, inbound)
            return len(spool.ids)

        events: list[dict[str, object]] = []

        async def release_while_down(count: int) -> None:
            """NL-POL releases ``count`` more seizures while BE-FPJ's node is down."""
            assert not be.alive
            tranche = [seizure_nl() for _ in range(count)]
            events.extend(tranche)
            await send_events(kafka_bootstrap, fed.local_topic("NL-POL", "outbound"), tranche)

            async def released() -> bool:
                return await topic_size(kafka_bootstrap, fed.inbox("BE-FPJ")) >= len(events)

            await wait_for(released, "the backlog in BE-FPJ's inbox", within_s=120, watch=[nl])

        async def began(clock: str, before: int) -> bool:
            if clock == "take":
                return be.logged_since_start("receipt_sent")
            return await delivered_count() > before

        async def left() -> int:
            return await backlog_left(
                kafka_bootstrap,
                load_config(fed.config("BE-FPJ")).group_id("inbox"),
                fed.inbox("BE-FPJ"),
            )

        try:
            nl.start()
            await wait_started(nl)
            await release_while_down(TRANCHE)
            kills = await kill_while_busy(
                be,
                rng,
                CLOCKS,
                began=began,
                shown=delivered_count,
                left=left,
                refill=partial(release_while_down, TRANCHE),
                max_kills=MAX_KILLS,
            )
            wanted = expected_ids(fed, events, "NL-POL", "BE-FPJ")
            be.start()

            async def all_in() -> bool:
                if sink == "kafka":
                    return set(await inbound_ids(kafka_bootstrap, inbound)) >= wanted
                return set(spool.ids) >= wanted

            await wait_for(all_in, "every delivery", within_s=120, watch=[be, nl], every_s=1)
            receipts_topic = load_config(nl.config).receipts_topic("NL-POL")

            async def all_receipted() -> bool:
                return await topic_size(kafka_bootstrap, receipts_topic) >= len(wanted)

            await wait_for(all_receipted, "every receipt", within_s=60, watch=[be, nl])
            await asyncio.sleep(3.0)  # time for a late duplicate to show
            assert (True, True) == (be.alive, nl.alive)
        finally:
            be_code, nl_code = be.stop(), nl.stop()
            stop_taking.set()
            await taker
        ids = await inbound_ids(kafka_bootstrap, inbound) if sink == "kafka" else spool.ids
        receipts = await check_receipts(kafka_bootstrap, nl.config)
        verified = {a: audit_verify(fed.config(a)) for a in ("NL-POL", "BE-FPJ")}
        leftovers = (
            sorted(p.name for p in fed.spool_in("BE-FPJ").iterdir()) if sink == "spool" else []
        )
        recovered = be.log_events("deliveries_recovered")
        figures.sent = len(events)
        figures.delivered = len(set(ids) & wanted)
        figures.duplicates = len(ids) - len(set(ids))
        figures.lost = len(wanted - set(ids))
        figures.receipts = receipts.records
        figures.extra = {
            "seed": seed,
            "kills": be.kills,
            "kill(clock+delay:delivered/uncommitted)": " ".join(map(str, kills)),
            "receipt_messages": len(receipts.messages),
            "identical_receipt_copies": receipts.records - len(receipts.messages),
            "journal_recovered": sum(int(str(e.get("added", 0))) for e in recovered),
        }
        figures.print()
        assert len(CLOCKS) == sum(k.left > 0 for k in kills)  # kills during catch-up
        assert 0 == figures.lost
        assert 0 == figures.duplicates
        assert set() == set(ids) - wanted
        assert sorted(wanted) == sorted(released_ids(nl.config))  # one release each
        assert 0 == receipts.unverified
        assert wanted == receipts.messages
        assert {m: 1 for m in wanted} == receipts.distinct()  # copies only byte-identical
        assert {m: 1 for m in wanted} == receipts.distinct_delivered()
        assert {} == receipts.other_outcomes()
        assert [] == leftovers
        assert {"NL-POL": 0, "BE-FPJ": 0} == {a: v.returncode for a, v in verified.items()}, {
            a: v.stdout + v.stderr for a, v in verified.items()
        }
        assert (0, 0) == (be_code, nl_code)
        assert load_config(be.config).delivery.sink == sink
