"""A receiving node whose state folder turns read-only for a while, then full for a while, while
traffic flows: it takes no work it cannot record, gives no false duplicate and no second receipt,
never exits, and picks up again by itself once the disk is back.

The state folder is a small tmpfs mounted for the test (the tests run as root, and root ignores
``chmod``). Making that mount itself read-only is refused by the kernel while the node holds
files open for writing (``mount -o remount,ro``, and a bind remount of it, fail with EBUSY), so
the read-only phase mounts a read-only bind of the folder over itself: every path the node opens,
creates, renames or truncates from then on is refused (EROFS), while writes to descriptors it
opened before still land, exactly as ``chmod a-w`` does to an unprivileged process. The full
phase fills the tmpfs with a ballast file, so every write, also to open descriptors, fails with
ENOSPC until the ballast is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import build_federation
from gateway.node.config import load_config
from gateway.node.transport import Producer
from tests.processes import (
    Figures,
    NodeProcess,
    audit_kinds,
    audit_verify,
    check_receipts,
    expected_ids,
    inbound_ids,
    topic_size,
    two_agencies,
    wait_for,
    wait_started,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(300)]

PHASE_S = 8.0
"""How long the disk stays read-only, and then full."""
RATE = (10, 0.5)
"""The national system sends 10 seizures every 0.5 s, before, during and after the faults."""


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def _mounted(path: Path) -> int:
    """How many mounts are stacked on ``path``."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return sum(1 for line in lines if line.split()[4] == str(path))


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``path`` for the block (skip the test if mounting is not
    allowed here); everything stacked on it is unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (root and CAP_SYS_ADMIN needed): {exc}")
    try:
        yield
    finally:
        for lazy in (False, False, False, True):  # the read-only bind, then the tmpfs
            if not _mounted(path):
                break
            flags = ["-l"] if lazy else []
            subprocess.run(["umount", *flags, str(path)], check=False, capture_output=True)


def make_read_only(path: Path) -> None:
    """Mount a read-only bind of ``path`` over itself."""
    _mount("--bind", str(path), str(path))
    _mount("-o", "remount,bind,ro", str(path))


def make_writable(path: Path) -> None:
    """Take the read-only bind away again."""
    subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=30)


def fill(path: Path) -> int:
    """Write a ballast file into ``path`` until the file system is full; its size."""
    chunk = b"\0" * (256 * 1024)
    written = 0
    with (path / "ballast").open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return written


class Traffic:
    """NL-POL's national system: a steady stream of seizures until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.events: list[dict[str, object]] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        producer = Producer(self.bootstrap, "test-national-system")
        await producer.start()
        try:
            while not self.stop.is_set():
                batch = [seizure_nl() for _ in range(RATE[0])]
                await producer.send_many(
                    [(self.topic, json.dumps(e).encode(), None, ()) for e in batch]
                )
                self.events.extend(batch)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=RATE[1])
        finally:
            await producer.stop()


class TestStateFolderReadOnlyThenFull:
    """BE-FPJ's state folder (journals, audit trail) is read-only for a while, then full for a
    while, as NL-POL streams seizures to it."""

    async def test_no_false_duplicate_no_second_receipt_and_traffic_resumes(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """No false duplicate, one receipt each, no exit, and traffic resumes by itself."""
        figures = Figures("state-dir-readonly-then-full")
        fed = build_federation(
            tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=two_agencies("kafka")
        )
        state = load_config(fed.config("BE-FPJ")).state_dir
        nl = NodeProcess(fed.config("NL-POL"), tmp_path / "nl-pol.log")
        be = NodeProcess(fed.config("BE-FPJ"), tmp_path / "be-fpj.log")
        inbound = fed.local_topic("BE-FPJ", "inbound")
        traffic = Traffic(kafka_bootstrap, fed.local_topic("NL-POL", "outbound"))
        phases: dict[str, int] = {}
        resumed_s: dict[str, float] = {}

        async def delivered() -> int:
            return await topic_size(kafka_bootstrap, inbound)

        async def resumed(fault: str) -> None:
            """Wait until deliveries move again after ``fault`` ended; note how long it took."""
            back, at = time.monotonic(), await delivered()

            async def moving() -> bool:
                return await delivered() > at

            await wait_for(moving, f"deliveries after the {fault}", within_s=60, watch=[be, nl])
            resumed_s[fault] = round(time.monotonic() - back, 1)

        with tmpfs(state, "16m"):
            sender = None
            try:
                be.start()
                nl.start()
                await wait_started(be)
                await wait_started(nl)
                sender = asyncio.create_task(traffic.run())

                async def flowing() -> bool:
                    return await delivered() >= 40

                await wait_for(flowing, "the first deliveries", within_s=60, watch=[be, nl])
                phases["before"] = await delivered()

                make_read_only(state)
                try:
                    await asyncio.sleep(PHASE_S)
                    assert (True, True) == (be.alive, nl.alive)
                finally:
                    phases["read_only"] = await delivered() - phases["before"]
                    make_writable(state)
                await resumed("read-only")

                at = await delivered()
                ballast = fill(state)
                try:
                    await asyncio.sleep(PHASE_S)
                    assert (True, True) == (be.alive, nl.alive)
                finally:
                    phases["full"] = await delivered() - at
                    (state / "ballast").unlink()
                await resumed("full disk")

                await asyncio.sleep(4.0)  # traffic after the faults
                traffic.stop.set()
                await sender
                wanted = expected_ids(fed, traffic.events, "NL-POL", "BE-FPJ")

                async def all_in() -> bool:
                    return set(await inbound_ids(kafka_bootstrap, inbound)) >= wanted

                await wait_for(all_in, "every delivery", within_s=90, watch=[be, nl], every_s=1)
                receipts_topic = load_config(nl.config).receipts_topic("NL-POL")

                async def all_receipted() -> bool:
                    return await topic_size(kafka_bootstrap, receipts_topic) >= len(wanted)

                await wait_for(all_receipted, "every receipt", within_s=60, watch=[be, nl])
                await asyncio.sleep(3.0)  # time for a late duplicate or second receipt to show
                alive = (be.alive, nl.alive)
            finally:
                traffic.stop.set()
                if sender is not None:
                    with contextlib.suppress(Exception):
                        await sender
                be_code, nl_code = be.stop(), nl.stop()
            verified = {a: audit_verify(fed.config(a)) for a in ("NL-POL", "BE-FPJ")}
            kinds = audit_kinds(be.config)
        ids = await inbound_ids(kafka_bootstrap, inbound)
        receipts = await check_receipts(kafka_bootstrap, nl.config)
        retries = be.log_events("retrying")
        errors = sorted({f"{r.get('what')}: {str(r.get('error'))[-60:]}" for r in retries})
        figures.sent = len(traffic.events)
        figures.delivered = len(set(ids) & wanted)
        figures.duplicates = len(ids) - len(set(ids))
        figures.lost = len(wanted - set(ids))
        figures.receipts = receipts.records
        figures.extra = {
            "delivered_before": phases["before"],
            "delivered_while_read_only": phases["read_only"],
            "delivered_while_full": phases["full"],
            "resumed_after_s": resumed_s,
            "ballast_mib": round(ballast / 2**20, 1),
            "receipt_outcomes": dict(receipts.outcomes),
            "audit_duplicates": kinds["duplicate"],
            "retry_logs": errors,
        }
        figures.print()
        assert (True, True) == alive
        assert 0 == figures.lost
        assert 0 == figures.duplicates
        assert set() == set(ids) - wanted
        assert 0 == receipts.unverified
        assert len(wanted) == receipts.records  # one receipt each, not even an identical copy
        assert {m: 1 for m in wanted} == receipts.distinct_delivered()
        assert {} == receipts.other_outcomes()
        assert 0 == kinds["duplicate"]
        # both faults reached the node
        # the full disk reaches whichever writer comes first: the audit (ENOSPC) or SQLite
        assert [True, True] == [
            any(any(f in e for f in faults) for e in errors)
            for faults in (("Read-only file system",), ("No space left on device", "disk is full"))
        ], errors
        assert {"NL-POL": 0, "BE-FPJ": 0} == {a: v.returncode for a, v in verified.items()}, {
            a: v.stdout + v.stderr for a, v in verified.items()
        }
        assert (0, 0) == (be_code, nl_code)
