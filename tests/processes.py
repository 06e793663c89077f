"""Gateway nodes as OS processes, and what fault tests read back afterwards.

A fault test runs every node as its own process (``python -m gateway.cli run -c node.yaml``, as
an operator would), each in a process group of its own, so that SIGKILL takes that node and
nothing else, and each node's JSON logs go to a file rather than into the test's output, which
then holds only the figures the test prints.

What is read back is read from where the evidence lives: the local inbound topic or the taken
spool files (deliveries), the sender's receipts topic (receipts, each verified against the trust
list), the audit trail (releases), ``fxgw status --json`` and ``fxgw audit verify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from gateway.audit.store import read_entries
from gateway.contract.versions import newest_registry
from gateway.crypto.envelope import PairKeys, keyed_message_id
from gateway.crypto.keys import load_encryption_key
from gateway.crypto.receipts import Receipt, open_receipt
from gateway.crypto.trust import authority_keys, load_trust_list
from gateway.dev.sandbox import THREE_AGENCIES, AgencySpec, Federation, replace_sink
from gateway.errors import PeerError
from gateway.node.config import load_config
from gateway.node.transport import Producer, read_topic
from gateway.types import AgencyId

REPO = Path(__file__).resolve().parents[1]

EU_ONLY: tuple[dict[str, object], ...] = ({"event": "fxgw.SeizureEvent", "to": {"groups": ["EU"]}},)
"""NL-POL's seizure route within a two-agency federation: to BE-FPJ only (no US-ATF, which
would be refused and quarantined for every event, and so add noise to the figures)."""


def two_agencies(sink: str) -> tuple[AgencySpec, ...]:
    """NL-POL sending seizures to BE-FPJ alone; BE-FPJ delivering to ``sink`` (kafka, spool)."""
    nl, be = THREE_AGENCIES[0], THREE_AGENCIES[1]
    return replace_sink((replace(nl, routes=EU_ONLY), be), "BE-FPJ", sink)


class NodeProcess:
    """One gateway node, run as ``python -m gateway.cli run`` in its own process group."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.starts = 0
        self.kills = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._scan: tuple[tuple[int, str], int] = ((0, ""), 0)

    def start(self) -> None:
        """Start the node (it must not be running)."""
        assert not self.alive, "the node is running already"
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        """Whether the node's process is running."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code of the last run, or None while it runs (or before the first)."""
        return None if self._process is None else self._process.poll()

    def kill(self) -> None:
        """SIGKILL the node's process group, as a crash would, and reap it."""
        process = self._process
        assert process is not None and process.poll() is None, "the node is not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.kills += 1

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the node's group and wait (SIGKILL after ``timeout``); its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        return process.returncode

    def logged_since_start(self, event: str) -> bool:
        """Whether the current run has logged ``event`` (a structlog event name); reads on from
        where the last call for the same run stopped, at a line boundary."""
        needle = f'"event": "{event}"'.encode()
        if self._scan[0] != (self.starts, event):
            self._scan = ((self.starts, event), self._log_offset)
        try:
            with self.log.open("rb") as f:
                f.seek(self._scan[1])
                text = f.read()
        except FileNotFoundError:
            return False
        complete = text[: text.rfind(b"\n") + 1]
        self._scan = (self._scan[0], self._scan[1] + len(complete))
        return needle in complete

    def log_events(self, *names: str) -> list[dict[str, object]]:
        """Every log entry (of every run) whose event is one of ``names``."""
        found: list[dict[str, object]] = []
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") in names:
                    found.append(entry)
        return found

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the node's log (for failure messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


async def wait_for(
    check: Callable[[], object | Awaitable[object]],
    what: str,
    *,
    within_s: float,
    watch: Sequence[NodeProcess] = (),
    every_s: float = 0.25,
) -> None:
    """Poll ``check`` until it is truthy; fail after ``within_s`` or when a watched node exits."""
    deadline = time.monotonic() + within_s
    while True:
        for node in watch:
            if not node.alive:
                raise AssertionError(
                    f"node {node.config.parent.name} exited ({node.returncode}) while waiting "
                    f"for {what}:\n{node.tail()}"
                )
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(every_s)


async def wait_started(node: NodeProcess, within_s: float = 60.0) -> None:
    """Wait until the node's current run has logged ``node_started``."""
    await wait_for(
        lambda: node.logged_since_start("node_started"),
        f"{node.config.parent.name} to start",
        within_s=within_s,
        watch=[node],
    )


@dataclass(frozen=True, slots=True)
class Kill:
    """One SIGKILL: what its delay was counted from, the delay, and what the node had done."""

    clock: str
    delay_s: float
    shown: int
    """Deliveries (or envelopes) visible at the kill."""
    left: int
    """Records the node had taken in but not committed (work its next run does again)."""

    def __str__(self) -> str:
        return f"{self.clock}+{self.delay_s:.2f}s:{self.shown}/{self.left}"


async def kill_while_busy(
    node: NodeProcess,
    rng: random.Random,
    clocks: Sequence[str],
    *,
    began: Callable[[str, int], bool | Awaitable[bool]],
    shown: Callable[[], Awaitable[int]],
    left: Callable[[], Awaitable[int]],
    refill: Callable[[], Awaitable[None]],
    max_kills: int,
) -> list[Kill]:
    """Start ``node`` and SIGKILL it, again and again, until ``len(clocks)`` kills have landed
    while it still had work it had not committed; refill its backlog while it is down.

    Each kill comes 0.05-0.6 s after its clock: ``start`` is the process start (recovery, group
    join); any other clock is when ``began(clock, shown_before_start)`` turns true. A kill that
    lands after the node has caught up does not count, and the same clock is tried again (at
    most ``max_kills`` kills in all).
    """
    kills: list[Kill] = []
    while (landed := sum(k.left > 0 for k in kills)) < len(clocks):
        assert node.kills < max_kills, f"only {landed} of {node.kills} kills found work left"
        clock = clocks[landed]
        before = await shown()
        node.start()
        if clock != "start":
            await wait_for(
                partial(began, clock, before),
                f"{node.config.parent.name} to {clock} after a restart",
                within_s=60,
                watch=[node],
                every_s=0.05,
            )
        delay = rng.uniform(0.05, 0.6)
        await asyncio.sleep(delay)
        node.kill()
        kills.append(Kill(clock, delay, await shown(), await left()))
        if sum(k.left > 0 for k in kills) < len(clocks):
            await refill()
    return kills


async def send_events(bootstrap: str, topic: str, events: Sequence[dict[str, object]]) -> None:
    """Put plain events on a national outbound topic, as the national system would."""
    producer = Producer(bootstrap, "test-national-system")
    await producer.start()
    try:
        for start in range(0, len(events), 200):
            chunk = events[start : start + 200]
            await producer.send_many([(topic, json.dumps(e).encode(), None, ()) for e in chunk])
    finally:
        await producer.stop()


def expected_ids(
    fed: Federation, events: Sequence[dict[str, object]], sender: str, recipient: str
) -> set[str]:
    """The message ids the envelopes of ``events`` carry: keyed (format 2) by the pair's
    encryption keys, as the sending node derives them."""
    (mine,) = load_config(fed.config(sender)).keys.encryption  # the sandbox gives one each
    (yours,) = load_config(fed.config(recipient)).keys.encryption
    ours, theirs = load_encryption_key(mine), load_encryption_key(yours).public
    pair_key = PairKeys().derive(ours, theirs, sending=True)
    return {
        keyed_message_id(pair_key, sender, str(e["record"]["event_id"]), recipient)  # type: ignore[index]
        for e in events
    }


async def inbound_ids(bootstrap: str, topic: str) -> list[str]:
    """The message id of every delivery on a local inbound topic, duplicates included."""
    ids: list[str] = []
    if not await topic_size(bootstrap, topic):
        return ids  # (also while it does not exist: reading it would wait for it)
    for m in await read_topic(bootstrap, topic, timeout_s=60):
        raw = m.header("fxgw-message-id")
        ids.append(raw.decode() if raw is not None else "(none)")
    return ids


async def topic_size(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (the sum of its partitions' end offsets; 0 while it does
    not exist); cheap enough to poll, unlike reading the records."""
    # the admin client asks for this topic's metadata without waiting for it to exist (a
    # consumer subscribed to a missing topic waits 40 s for it)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-size")
    try:
        await admin.start()
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        return 0
    partitions = [TopicPartition(topic, int(p["partition"])) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="test-size")
    try:
        await consumer.start()
        ends = await consumer.end_offsets(partitions)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> int:
    """The offsets consumer group ``group`` has committed on ``topic`` (summed over partitions;
    0 before its first commit)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-offsets")
    try:
        await admin.start()
        for _ in range(50):  # a fresh cluster has no group coordinator for a moment
            with contextlib.suppress(GroupCoordinatorNotAvailableError):
                offsets = await admin.list_consumer_group_offsets(group)
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"no group coordinator for {group}")
    finally:
        await admin.close()
    return int(sum(max(o.offset, 0) for tp, o in offsets.items() if tp.topic == topic))


async def backlog_left(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` that consumer group ``group`` has not committed yet: the work a
    node killed at this moment leaves to its next run."""
    return await topic_size(bootstrap, topic) - await committed(bootstrap, group, topic)


@dataclass(slots=True)
class ReceiptCheck:
    """A sender's receipts topic, read and verified, grouped by message id and outcome."""

    records: int = 0
    unverified: int = 0
    by_message: dict[str, dict[str, set[bytes]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set))
    )
    """message id -> outcome -> the distinct receipts (bytes) with that outcome."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """How many receipt records of each outcome."""

    @property
    def messages(self) -> set[str]:
        """Message ids with at least one verified receipt."""
        return set(self.by_message)

    def distinct(self) -> dict[str, int]:
        """Per message id, how many distinct receipts (any outcome) answer it."""
        return {m: sum(map(len, o.values())) for m, o in self.by_message.items()}

    def distinct_delivered(self) -> dict[str, int]:
        """Per message id, how many distinct DELIVERED receipts answer it."""
        return {m: len(o.get("DELIVERED", ())) for m, o in self.by_message.items()}

    def other_outcomes(self) -> dict[str, list[str]]:
        """Message ids answered with any outcome but DELIVERED, and those outcomes."""
        return {
            m: sorted(set(o) - {"DELIVERED"})
            for m, o in self.by_message.items()
            if set(o) - {"DELIVERED"}
        }


async def check_receipts(bootstrap: str, config: Path) -> ReceiptCheck:
    """Every receipt on the receipts topic of the node ``config`` describes, verified against its
    trust list."""
    c = load_config(config)
    now = datetime.now(UTC)
    trust = load_trust_list(c.trust.file, authority_keys(c.trust.pinned), now=now)
    registry = newest_registry(c.schemas)
    check = ReceiptCheck()
    for m in await read_topic(bootstrap, c.receipts_topic(c.agency), timeout_s=60):
        check.records += 1
        try:
            receipt: Receipt = open_receipt(
                m.value,
                trust=trust,
                codec=registry,
                agency=AgencyId(c.agency),
                now=now,
                format_version=registry.get("fxgw.Receipt").format,
            )
        except PeerError:  # counted, and the count is asserted
            check.unverified += 1
            continue
        check.by_message[receipt.message_id][receipt.outcome].add(m.value)
        check.outcomes[receipt.outcome] += 1
    return check


def released_ids(config: Path) -> list[str]:
    """The message id of every ``release`` entry in a node's audit trail (re-releases too)."""
    return [
        str(e.data["message_id"])
        for e in read_entries(load_config(config).audit_dir)
        if e.kind == "release"
    ]


def audit_kinds(config: Path) -> Counter[str]:
    """How many audit entries of each kind a node's trail holds."""
    return Counter(e.kind for e in read_entries(load_config(config).audit_dir))


def fxgw(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the ``fxgw`` command (``python -m gateway.cli``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def audit_verify(config: Path) -> subprocess.CompletedProcess[str]:
    """``fxgw audit verify -c config``."""
    return fxgw("audit", "verify", "-c", str(config))


def status_rows(config: Path) -> list[dict[str, object]]:
    """``fxgw status -c config --json``: every transfer the node released."""
    done = fxgw("status", "-c", str(config), "--json")
    assert 0 == done.returncode, done.stderr
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows


@dataclass(slots=True)
class Figures:
    """What a fault test measured, printed as one line."""

    test: str
    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    receipts: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def print(self) -> None:
        """Print the figures (run pytest with ``-s`` to see them)."""
        seconds = time.monotonic() - self.started
        parts = [
            f"sent={self.sent}",
            f"delivered={self.delivered}",
            f"duplicates={self.duplicates}",
            f"lost={self.lost}",
            f"receipts={self.receipts}",
            *(f"{k}={v}" for k, v in self.extra.items()),
            f"seconds={seconds:.1f}",
        ]
        sys.stdout.write(f"\nFIGURES {self.test}: {' '.join(parts)}\n")
        sys.stdout.flush()
