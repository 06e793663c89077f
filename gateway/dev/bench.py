"""``fxgw bench``: the gateway against a bare aiokafka relay, on one real Kafka, in one run.

Two pipelines of OS processes run on the same broker, fed the same seizure events (the
two-firearm Rotterdam seizure of ``tests/data/events``, each with its own event id):

- **relay**: topic A -> relay -> topic B -> relay -> topic C (:mod:`gateway.dev.relay`), the
  shape of a sending and a receiving node with none of their work;
- **gateway**: NL-POL's national outbound topic -> sending node -> BE-FPJ's inbox -> receiving
  node (Kafka sink) -> BE-FPJ's national inbound topic, two ``fxgw run`` processes of a
  sandbox federation (:func:`gateway.dev.sandbox.seizure_exchange`).

What it measures, each pipeline the same way:

1. **throughput**: N events are preloaded, then the processes start; the rate is the events
   between the first and the last arrival at the end topic divided by that time. Arrival times
   are the broker's append times (the end topics are created with ``LogAppendTime``), read back
   afterwards, so no instrument competes for the CPU while the pipeline runs;
2. **CPU per event**: user+system CPU of the pipeline's processes over the same window, sampled
   from ``/proc`` (so start-up is left out), divided by the events in it; each process's whole
   life (``wait4`` rusage) is reported beside it;
3. **latency** at fixed offered rates: a paced producer stamps each event as it sends it, a
   consumer on the end topic stamps its arrival; p50, p99 and p99.9. A rate is saturated when
   its events are not all delivered within a drain period after the last send, or deliveries
   fall below 90 % of the rate offered; the higher rates are then not run for that pipeline
   (they would only measure a growing queue);
4. **fan-out**: the sending node alone, each event to 1, 3 and 10 recipients, counted at the
   recipients' inboxes: envelopes per second and sender CPU per event;
5. **memory**: RSS of every process, sampled with the CPU; ``--soak N`` instead feeds N events
   through the gateway and writes RSS over time.

It writes ``report.json``, ``latency.png`` (p50 and p99 against offered load) and each
process's log to ``--out``, and prints a table. ``--min-ratio X`` makes it exit 1 when the
gateway's throughput is below X times the relay's: the CI gate.

No library does this: Kafka's load tools (``kafka-producer-perf-test`` and the like) measure the
broker, not a consume-transform-produce pipeline of separate processes and its CPU per event.
The live instruments (paced producer, tail consumer, end offsets) use aiokafka directly rather
than :mod:`gateway.node.transport`: what measures must not be the code under measurement, and
the paced producer must not wait for one acknowledgement before its next send. Creating topics,
preloading and reading back go through the transport.

Linux only (``/proc``, ``wait4``). A development tool: the runtime never imports it.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiokafka
import structlog
from aiokafka.structs import TopicPartition

import gateway
from gateway.dev.kafka import LocalKafka
from gateway.dev.sandbox import build_federation, seizure_exchange
from gateway.errors import ConfigError, InfrastructureError
from gateway.node.transport import Producer, TopicSpec, ensure_topics, read_topic
from gateway.resources import EVENTS

__all__ = [
    "EXIT_BELOW_FLOOR",
    "EXIT_OK",
    "TEMPLATE",
    "BenchOptions",
    "RateLatency",
    "Report",
    "SeizureEvents",
    "SoakRow",
    "cpu_between",
    "percentile",
    "ratio_verdict",
    "run_bench",
    "soak_summary",
]

log = structlog.get_logger("fxgw.bench")

TEMPLATE = EVENTS / "seizure_nl_rotterdam_two_firearms.json"
SENDER, RECEIVER = "NL-POL", "BE-FPJ"
LOG_APPEND_TIME = (("message.timestamp.type", "LogAppendTime"),)
SAMPLE_INTERVAL_S = 0.1
STALL_S = 90.0
"""No new arrival for this long (start-up included) means the pipeline is stuck."""
STOP_GRACE_S = 30.0
WARMUP_EVENTS = 20
PRELOAD_CHUNK = 1000
MIB = 1024 * 1024

EXIT_OK, EXIT_BELOW_FLOOR = 0, 1


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run; :meth:`quick_run` gives the CI-sized run."""

    out: Path = Path("bench-out")
    bootstrap: str | None = None
    events: int = 5000
    """Events preloaded for the gateway's throughput."""
    relay_events: int = 50_000
    """Events preloaded for the relay's throughput (it needs more to run for as long)."""
    rates: tuple[int, ...] = (100, 500, 1000, 2000)
    seconds: float = 10.0
    """Sending time per offered rate."""
    fanout: tuple[int, ...] = (1, 3, 10)
    fanout_events: int = 1000
    min_ratio: float | None = None
    soak: int | None = None
    soak_max_hours: float = 12.0
    profile: bool = False
    """Run the gateway's nodes under cProfile in the throughput phase (slower; for reading)."""
    keep: bool = False
    """Keep the federation's folders (keys, configs, state, audit trails) afterwards."""
    node_log_level: str = "info"
    quick: bool = False

    @classmethod
    def quick_run(cls) -> BenchOptions:
        """The short version for CI: small N, two low rates, three seconds each."""
        return cls(
            events=1500,
            relay_events=5000,
            rates=(20, 50),
            seconds=3.0,
            fanout_events=100,
            quick=True,
        )

    @classmethod
    def from_arguments(cls, given: Mapping[str, Any]) -> BenchOptions:
        """The quick or the full run (``given["quick"]``), with every option given (not None)
        in place of its default; other keys are ignored."""
        base = cls.quick_run() if given.get("quick") else cls()
        names = set(cls.__dataclass_fields__) - {"quick"}
        return replace(base, **{k: v for k, v in given.items() if k in names and v is not None})

    def validate(self) -> BenchOptions:
        """Return self, or raise :class:`ConfigError` naming the option at fault."""
        counts = {
            "--events": self.events,
            "--relay-events": self.relay_events,
            "--fanout-events": self.fanout_events,
        }
        for name, value in counts.items():
            if value < 2:
                raise ConfigError(f"{name} must be at least 2 (a rate needs two arrivals)")
        if not self.rates or any(r <= 0 for r in self.rates):
            raise ConfigError("--rates must be positive events per second")
        if self.seconds <= 0:
            raise ConfigError("--seconds must be positive")
        if not self.fanout or any(not 1 <= k <= 13 for k in self.fanout):
            raise ConfigError("--fanout takes recipient counts from 1 to 13")
        if self.soak is not None and self.soak < 2:
            raise ConfigError("--soak must be at least 2 events")
        if self.min_ratio is not None and self.min_ratio <= 0:
            raise ConfigError("--min-ratio must be positive")
        return self


# --- pure helpers --------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``values`` (which need not be sorted).

    A missing arrival counts as ``math.inf``, so a percentile that falls on one is infinite.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_between(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """CPU seconds spent between ``start`` and ``end``, from (time, cumulative CPU) samples.

    Linear between samples; before the first or after the last, the nearest sample holds.
    """

    def at(moment: float) -> float:
        if not samples:
            return 0.0
        if moment <= samples[0][0]:
            return samples[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if t0 <= moment <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)
        return samples[-1][1]

    return max(0.0, at(end) - at(start))


def ratio_verdict(ratio: float, min_ratio: float | None) -> tuple[int, str | None]:
    """The exit code for a gateway/relay throughput ``ratio``, and what to say when it fails."""
    if min_ratio is None or ratio >= min_ratio:
        return EXIT_OK, None
    return (
        EXIT_BELOW_FLOOR,
        f"gateway/relay throughput ratio {ratio:.4f} is below the floor {min_ratio:.4f}",
    )


SUSTAINED = 0.9
"""A pipeline carries a rate when its deliveries keep up with at least this share of it."""


@dataclass(frozen=True, slots=True)
class RateLatency:
    """End-to-end latency of one pipeline at one offered rate."""

    rate: int
    sent: int
    arrived: int
    offered_per_s: float
    """The rate the paced producer really sent at (first to last send)."""
    achieved_per_s: float
    """Deliveries per second, from the first send to the last arrival."""
    saturated: bool
    """Some events did not arrive in time, or deliveries fell behind the offered rate."""
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    cpu_s_per_event: float
    """CPU of the pipeline's processes while the rate ran, per event delivered."""

    @classmethod
    def of(
        cls,
        rate: int,
        sent: Mapping[bytes, float],
        arrivals: Mapping[bytes, float],
        cpu_s: float,
    ) -> RateLatency:
        """Summarise send and arrival times (seconds, one clock) of the events in ``sent``.

        An event with no arrival counts as infinitely late, so a percentile that falls on one
        is None.
        """
        latencies = [arrivals.get(key, math.inf) - at for key, at in sent.items()]
        arrived = [arrivals[key] for key in sent if key in arrivals]
        first, last = min(sent.values()), max(sent.values())
        offered = (len(sent) - 1) / (last - first) if last > first else float(rate)
        achieved = len(arrived) / (max(arrived) - first) if arrived else 0.0

        def ms(p: float) -> float | None:
            value = percentile(latencies, p)
            return round(value * 1000, 3) if math.isfinite(value) else None

        finite = [v for v in latencies if math.isfinite(v)]
        return cls(
            rate=rate,
            sent=len(sent),
            arrived=len(arrived),
            offered_per_s=round(offered, 2),
            achieved_per_s=round(achieved, 2),
            saturated=len(arrived) < len(sent) or achieved < SUSTAINED * offered,
            p50_ms=ms(50),
            p99_ms=ms(99),
            p999_ms=ms(99.9),
            max_ms=round(max(finite) * 1000, 3) if finite else None,
            cpu_s_per_event=round(cpu_s / max(1, len(arrived)), 7),
        )


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    """One process of a measurement."""

    name: str
    cpu_window_s: float
    """User+system CPU within the measured window."""
    cpu_total_s: float | None
    """User+system CPU of its whole life, start-up and shutdown included (``wait4``)."""
    rss_mib: float
    """RSS at the end of the window."""
    rss_peak_mib: float
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class Throughput:
    """One pipeline's sustained throughput: preloaded events, first to last arrival."""

    events: int
    records: int
    """Records counted at the end topics (``events`` x recipients when nothing is lost)."""
    distinct: int
    """Distinct (topic, event id) among them."""
    seconds: float
    events_per_s: float
    records_per_s: float
    cpu_s: float
    cpu_s_per_event: float
    processes: tuple[ProcessFigures, ...]


@dataclass(frozen=True, slots=True)
class LatencyRun:
    """One pipeline at each offered rate, up to the first it could not carry."""

    rates: tuple[RateLatency, ...]
    skipped_rates: tuple[int, ...]
    drain_s: float
    processes: tuple[ProcessFigures, ...]


@dataclass(frozen=True, slots=True)
class FanOut:
    """The sending node alone, each event to ``recipients`` recipients."""

    recipients: int
    throughput: Throughput

    @property
    def cpu_s_per_envelope(self) -> float:
        return self.throughput.cpu_s_per_event / self.recipients


@dataclass(frozen=True, slots=True)
class Report:
    """Everything one run measured."""

    started_at: str
    seconds: float
    machine: dict[str, object]
    options: dict[str, object]
    relay: Throughput
    gateway: Throughput
    relay_latency: LatencyRun
    gateway_latency: LatencyRun
    fanout: tuple[FanOut, ...]

    @property
    def throughput_ratio(self) -> float:
        """Gateway events/s over relay events/s."""
        return self.gateway.events_per_s / self.relay.events_per_s

    @property
    def cpu_ratio(self) -> float:
        """Gateway CPU per event over relay CPU per event."""
        return self.gateway.cpu_s_per_event / self.relay.cpu_s_per_event

    def memory(self) -> dict[str, dict[str, float]]:
        """Peak RSS (MiB) of every process of each pipeline, over all its runs."""
        peaks: dict[str, dict[str, float]] = {"relay": {}, "gateway": {}}
        runs = [
            ("relay", self.relay.processes),
            ("relay", self.relay_latency.processes),
            ("gateway", self.gateway.processes),
            ("gateway", self.gateway_latency.processes),
        ]
        for kind, processes in runs:
            for p in processes:
                peaks[kind][p.name] = max(peaks[kind].get(p.name, 0.0), p.rss_peak_mib)
        return peaks

    def to_json(self) -> dict[str, object]:
        """The report as written to ``report.json``."""
        return {
            "version": 1,
            "started_at": self.started_at,
            "seconds": self.seconds,
            "machine": self.machine,
            "options": self.options,
            "throughput": {"relay": asdict(self.relay), "gateway": asdict(self.gateway)},
            "ratio": {
                "throughput": round(self.throughput_ratio, 5),
                "cpu_per_event": round(self.cpu_ratio, 3),
            },
            "latency": {
                "relay": asdict(self.relay_latency),
                "gateway": asdict(self.gateway_latency),
            },
            "fanout": [
                {
                    "recipients": f.recipients,
                    "events": f.throughput.events,
                    "envelopes": f.throughput.records,
                    "distinct": f.throughput.distinct,
                    "seconds": f.throughput.seconds,
                    "envelopes_per_s": f.throughput.records_per_s,
                    "events_per_s": f.throughput.events_per_s,
                    "cpu_s_per_event": f.throughput.cpu_s_per_event,
                    "cpu_s_per_envelope": round(f.cpu_s_per_envelope, 7),
                    "processes": [asdict(p) for p in f.throughput.processes],
                }
                for f in self.fanout
            ],
            "memory": {"rss_peak_mib": self.memory()},
        }


# --- events --------------------------------------------------------------------------------------


class SeizureEvents:
    """Plain seizure events from the template, each with an event id of its own."""

    def __init__(self, run: str, template: Path = TEMPLATE) -> None:
        try:
            document = json.loads(template.read_bytes())
        except OSError as exc:
            raise ConfigError(
                "the benchmark's event template is missing (it ships as gateway/_data/events/);"
                " reinstall fxgw",
                file=str(template),
            ) from exc
        self._type = document["event_type"]
        self._record = document["record"]
        self._run = run
        self._next = 0

    def take(self, count: int) -> list[tuple[bytes, bytes]]:
        """The next ``count`` events as (key, value): the key is the event id."""
        events = []
        for _ in range(count):
            event_id = f"{SENDER}-BENCH-{self._run}-{self._next:08d}"
            self._next += 1
            record = {**self._record, "event_id": event_id}
            value = json.dumps({"event_type": self._type, "record": record}).encode()
            events.append((event_id.encode(), value))
        return events


# --- processes -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Child:
    """One OS process of a pipeline, in a process group of its own."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    """(wall time, cumulative user+system CPU seconds, RSS bytes)."""
    cpu_total_s: float | None = None
    exit_code: int | None = None

    _TICK = os.sysconf("SC_CLK_TCK")
    _PAGE = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> None:
        """Add one sample from ``/proc`` (nothing once the process is gone)."""
        try:
            stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        except OSError:
            return
        fields = stat.rsplit(")", 1)[1].split()
        # fields 14, 15 and 24 of proc(5), counted from the state field (the 3rd)
        cpu = (int(fields[11]) + int(fields[12])) / self._TICK
        rss = int(fields[21]) * self._PAGE
        if rss:  # a zombie reports 0
            self.samples.append((time.time(), cpu, rss))

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds this process spent between two wall-clock times."""
        return cpu_between([(t, c) for t, c, _ in self.samples], start, end)

    def rss_mib(self, start: float = 0.0, end: float = math.inf) -> tuple[float, float]:
        """(last, peak) RSS in MiB over the samples between two wall-clock times."""
        rss = [r for t, _, r in self.samples if start <= t <= end] or [
            r for _, _, r in self.samples[-1:]
        ]
        if not rss:
            return 0.0, 0.0
        return round(rss[-1] / MIB, 1), round(max(rss) / MIB, 1)

    def alive(self) -> bool:
        return self.exit_code is None

    def reap(self, flags: int) -> bool:
        """Collect the exit status and rusage if the process has ended; True once it has."""
        if self.exit_code is not None:
            return True
        try:
            pid, status, usage = os.wait4(self.popen.pid, flags)
        except ChildProcessError:
            self.exit_code = self.popen.returncode if self.popen.returncode is not None else -1
            return True
        if pid == 0:
            return False
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code
        self.cpu_total_s = usage.ru_utime + usage.ru_stime
        return True


class Children:
    """Starts a measurement's processes, samples them, and stops every one, also on failure."""

    def __init__(self, logs: Path, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.logs = logs
        self.interval_s = interval_s
        self.children: list[Child] = []
        self._sampler: asyncio.Task[None] | None = None

    def start(self, name: str, argv: Sequence[str]) -> Child:
        """Start ``argv`` with its output in ``<logs>/<name>.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{name}.log"
        source_root = str(Path(gateway.__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # the children import the very package this process runs, wherever it came from
            "PYTHONPATH": os.pathsep.join(
                p for p in (source_root, os.environ.get("PYTHONPATH")) if p
            ),
        }
        with path.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,  # its own group, so a kill reaches all it may start
                preexec_fn=_stop_with(os.getpid()),
            )
        child = Child(name, popen, path)
        self.children.append(child)
        child.sample()
        return child

    def check_alive(self) -> None:
        """:raises InfrastructureError: a process ended on its own (its log is named)."""
        for child in self.children:
            if child.reap(os.WNOHANG):
                error = InfrastructureError(
                    f"{child.name} exited with status {child.exit_code} during the benchmark;"
                    f" see {child.log}"
                )
                error.retriable = False
                raise error

    async def _sample(self) -> None:
        while True:
            for child in self.children:
                if child.alive():
                    child.sample()
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> Children:
        self._sampler = asyncio.create_task(self._sample(), name="bench-sampler")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """SIGTERM every process, wait for a clean exit, then SIGKILL its group; idempotent."""
        for child in self.children:
            if child.alive():
                child.sample()
                _signal_group(child.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while not all(c.reap(os.WNOHANG) for c in self.children):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for child in self.children:
            if not child.reap(os.WNOHANG):
                # still ours (not reaped), so its group id cannot have been reused
                log.warning("bench_process_killed", process=child.name, grace_s=STOP_GRACE_S)
                _signal_group(child.popen.pid, signal.SIGKILL)
                child.reap(0)
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds all processes spent between two wall-clock times."""
        return sum(c.cpu_between(start, end) for c in self.children)

    def describe(self, start: float, end: float) -> tuple[ProcessFigures, ...]:
        """Per process: CPU in the window, CPU of its whole life, RSS (last and peak)."""
        figures = []
        for c in self.children:
            last, peak = c.rss_mib(start, end)
            figures.append(
                ProcessFigures(
                    name=c.name,
                    cpu_window_s=round(c.cpu_between(start, end), 3),
                    cpu_total_s=None if c.cpu_total_s is None else round(c.cpu_total_s, 3),
                    rss_mib=last,
                    rss_peak_mib=peak,
                    exit_code=c.exit_code,
                )
            )
        return tuple(figures)


def _stop_with(parent: int) -> Callable[[], None]:
    """In the child, before exec: have the kernel send SIGTERM when the bench dies, even by
    SIGKILL, so that no pipeline process outlives it."""

    # loaded here: between fork and exec the child only makes the one call (no imports, locks)
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arrange() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the bench died before the request took effect
            os._exit(1)

    return arrange


_PR_SET_PDEATHSIG = 1


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


# --- pipelines -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The processes of one pipeline, where events go in, and where they are counted."""

    kind: str
    source: str
    ends: tuple[str, ...]
    processes: tuple[tuple[str, tuple[str, ...]], ...]
    copies: int = 1
    """Records per event at the ends (the recipients, for fan-out)."""
    middle: tuple[str, ...] = ()
    """Topics between the processes that no process creates itself."""

    async def create_topics(self, bootstrap: str) -> None:
        """The source, the middle and the ends (ends stamped with the broker's append time)."""
        specs = [TopicSpec(t) for t in (self.source, *self.middle)]
        specs += [TopicSpec(t, configs=LOG_APPEND_TIME) for t in self.ends]
        await ensure_topics(bootstrap, specs)

    def profiled(self, folder: Path) -> Pipeline:
        """The same, each Python process run under cProfile writing ``<folder>/<name>.prof``."""
        folder.mkdir(parents=True, exist_ok=True)
        processes = tuple(
            (name, (argv[0], "-m", "cProfile", "-o", str(folder / f"{name}.prof"), *argv[1:]))
            for name, argv in self.processes
        )
        return replace(self, processes=processes)


def relay_pipeline(bootstrap: str, prefix: str) -> Pipeline:
    """A -> relay-1 -> B -> relay-2 -> C."""
    a, b, c = (f"{prefix}.relay.{name}" for name in "abc")

    def relay(name: str, source: str, target: str) -> tuple[str, tuple[str, ...]]:
        argv = (sys.executable, "-m", "gateway.dev.relay", "--bootstrap", bootstrap)
        return name, (*argv, "--source", source, "--target", target, "--group", f"{prefix}.{name}")

    return Pipeline("relay", a, (c,), (relay("relay-1", a, b), relay("relay-2", b, c)), middle=(b,))


def gateway_pipeline(
    bootstrap: str,
    prefix: str,
    root: Path,
    *,
    recipients: int = 1,
    receiver: bool = True,
    log_level: str = "info",
) -> Pipeline:
    """NL-POL's node, and BE-FPJ's (Kafka sink) when ``receiver``; without it the ends are the
    recipients' inboxes."""
    fed = build_federation(root, bootstrap, prefix=prefix, agencies=seizure_exchange(recipients))

    def node(agency: str) -> tuple[str, tuple[str, ...]]:
        argv = (sys.executable, "-m", "gateway.cli", "--log-level", log_level, "run")
        return agency, (*argv, "-c", str(fed.config(agency)))

    source = fed.local_topic(SENDER, "outbound")
    if receiver:
        return Pipeline(
            "gateway",
            source,
            (fed.local_topic(RECEIVER, "inbound"),),
            (node(SENDER), node(RECEIVER)),
        )
    partners = [spec.agency for spec in seizure_exchange(recipients)[1:]]
    ends = tuple(fed.inbox(agency) for agency in partners)
    return Pipeline("gateway-sender", source, ends, (node(SENDER),), copies=recipients)


# --- Kafka instruments ---------------------------------------------------------------------------


async def preload(bootstrap: str, topic: str, events: Sequence[tuple[bytes, bytes]]) -> None:
    """Write ``events`` to ``topic`` and wait until the cluster has them all."""
    producer = Producer(bootstrap, "fxgw-bench-preload")
    await producer.start()
    try:
        for i in range(0, len(events), PRELOAD_CHUNK):
            chunk = events[i : i + PRELOAD_CHUNK]
            await producer.send_many([(topic, value, key, ()) for key, value in chunk])
    finally:
        await producer.stop()


@asynccontextmanager
async def end_counter(bootstrap: str, topics: Sequence[str]) -> AsyncIterator[Any]:
    """A function that returns how many records the topics hold (sum of end offsets)."""
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap, client_id="fxgw-bench-counter", enable_auto_commit=False
    )
    await consumer.start()
    tps = [TopicPartition(t, 0) for t in topics]

    async def count() -> int:
        offsets = await consumer.end_offsets(tps)
        return int(sum(offsets.values()))

    try:
        yield count
    finally:
        await consumer.stop()


class Tail:
    """Reads the end topics as records arrive, and stamps each key's first arrival."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.arrivals: dict[bytes, float] = {}
        self.records = 0
        self._consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="fxgw-bench-tail",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._tps = [TopicPartition(t, 0) for t in topics]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        self._task = asyncio.create_task(self._read(), name="bench-tail")

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for r in records:
                    self.arrivals.setdefault(bytes(r.key), now)
                    self.records += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


async def pace(
    producer: Any, topic: str, events: Sequence[tuple[bytes, bytes]], rate: float
) -> dict[bytes, float]:
    """Send ``events`` at ``rate`` per second; return each key's send time (perf_counter).

    A send that falls behind its schedule goes at once, so the offered rate holds on average.
    """
    sent: dict[bytes, float] = {}
    pending = []
    start = time.perf_counter()
    for i, (key, value) in enumerate(events):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[key] = time.perf_counter()
        pending.append(await producer.send(topic, value=value, key=key))
    await asyncio.gather(*pending)
    return sent


# --- measurements --------------------------------------------------------------------------------


async def _wait_for(
    count: Callable[[], Awaitable[int]],
    expected: int,
    children: Children,
    what: str,
    limit_s: float,
) -> None:
    """Until ``await count()`` reaches ``expected``.

    :raises InfrastructureError: no progress for ``STALL_S``, a process died, or ``limit_s``
        passed.
    """
    started = last_progress = time.monotonic()
    seen = -1
    while True:
        children.check_alive()
        arrived = await count()
        now = time.monotonic()
        if arrived >= expected:
            return
        if arrived > seen:
            seen, last_progress = arrived, now
        if now - last_progress > STALL_S or now - started > limit_s:
            error = InfrastructureError(
                f"{what}: {arrived} of {expected} arrived, none for {now - last_progress:.0f} s;"
                f" see the logs in {children.logs}"
            )
            error.retriable = False
            raise error
        await asyncio.sleep(0.2)


async def measure_throughput(
    bootstrap: str,
    pipeline: Pipeline,
    events: Sequence[tuple[bytes, bytes]],
    logs: Path,
    limit_s: float = 3600.0,
) -> Throughput:
    """Preload ``events``, start the pipeline, time the first to the last arrival at its ends.

    :raises InfrastructureError: the pipeline stalled or a process died.
    :raises ConfigError: too few events to time.
    """
    await pipeline.create_topics(bootstrap)
    await preload(bootstrap, pipeline.source, events)
    expected = len(events) * pipeline.copies
    log.info("bench_throughput", pipeline=pipeline.kind, events=len(events), records=expected)
    async with Children(logs) as children, end_counter(bootstrap, pipeline.ends) as count:
        for name, argv in pipeline.processes:
            children.start(name, argv)
        await _wait_for(count, expected, children, f"{pipeline.kind} throughput", limit_s)
        await children.stop()
    records = [m for t in pipeline.ends for m in await read_topic(bootstrap, t, timeout_s=300)]
    stamps = sorted(m.timestamp_ms / 1000 for m in records)
    first, last = stamps[0], stamps[-1]
    span = last - first
    if span <= 0:
        raise ConfigError(
            f"every {pipeline.kind} record arrived within one millisecond; give more events"
        )
    # the work between the first and the last arrival moved the other records on
    moved = len(records) - 1
    cpu = children.cpu_between(first, last)
    return Throughput(
        events=len(events),
        records=len(records),
        distinct=len({(m.topic, m.key) for m in records}),
        seconds=round(span, 3),
        events_per_s=round(moved / pipeline.copies / span, 2),
        records_per_s=round(moved / span, 2),
        cpu_s=round(cpu, 3),
        cpu_s_per_event=round(cpu / (moved / pipeline.copies), 7),
        processes=children.describe(first, last),
    )


async def measure_latency(
    bootstrap: str,
    pipeline: Pipeline,
    factory: SeizureEvents,
    rates: Sequence[int],
    seconds: float,
    logs: Path,
) -> LatencyRun:
    """Offer each rate for ``seconds``; stop at the first rate the pipeline cannot carry.

    :raises InfrastructureError: the pipeline did not start, or a process died.
    """
    await pipeline.create_topics(bootstrap)
    drain_s = max(2.0, seconds)
    results: list[RateLatency] = []
    skipped: tuple[int, ...] = ()
    # a national system's producer: the node's settings
    producer = aiokafka.AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="fxgw-bench-paced",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
    )
    tail = Tail(bootstrap, pipeline.ends)
    async with Children(logs) as children:
        for name, argv in pipeline.processes:
            children.start(name, argv)
        await producer.start()
        try:
            await tail.start()

            async def arrived_count() -> int:
                return len(tail.arrivals)

            warmup = await pace(producer, pipeline.source, factory.take(WARMUP_EVENTS), 20.0)
            await _wait_for(arrived_count, len(warmup), children, f"{pipeline.kind} warm-up", 300)
            for index, rate in enumerate(rates):
                log.info("bench_latency", pipeline=pipeline.kind, rate=rate, seconds=seconds)
                batch = factory.take(max(2, round(rate * seconds)))
                began = time.time()
                sent = await pace(producer, pipeline.source, batch, rate)
                deadline = time.perf_counter() + drain_s
                while time.perf_counter() < deadline and not tail.arrivals.keys() >= sent.keys():
                    children.check_alive()
                    await asyncio.sleep(0.05)
                ended = time.time()
                cpu = children.cpu_between(began, ended)
                result = RateLatency.of(rate, sent, tail.arrivals, cpu)
                results.append(result)
                if result.saturated:
                    skipped = tuple(rates[index + 1 :])
                    log.info(
                        "bench_saturated",
                        pipeline=pipeline.kind,
                        rate=rate,
                        achieved_per_s=result.achieved_per_s,
                    )
                    break
        finally:
            await tail.stop()
            await producer.stop()
        await children.stop()
    return LatencyRun(tuple(results), skipped, drain_s, children.describe(0.0, math.inf))


# --- the run -------------------------------------------------------------------------------------


def _require_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "fxgw bench draws its plots with matplotlib: pip install 'fxgw[bench]'"
        ) from exc


def run_bench(options: BenchOptions) -> int:
    """Run the benchmark (or, with ``soak``, the soak) and write its report.

    Returns 0, or 1 when the gateway/relay throughput ratio is below ``min_ratio``.

    :raises InfrastructureError: Kafka or a pipeline process failed (its log is named).
    :raises ConfigError: an option is invalid, matplotlib is missing, or this is not Linux.
    """
    options.validate()
    if not Path("/proc/self/stat").exists():
        raise ConfigError("fxgw bench reads CPU and memory from /proc: it runs on Linux only")
    _require_plotting()
    # a topic just created has no leader for a moment; the client retries and says so
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    # SIGTERM unwinds like Ctrl-C, through every finally that stops a process or Kafka
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(options)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _run(options: BenchOptions) -> int:
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fxgw-bench-"))
    kafka: LocalKafka | None = None
    try:
        bootstrap = options.bootstrap
        if bootstrap is None:
            log.info("bench_kafka_starting")
            kafka = LocalKafka(nodes=1, workdir=work / "kafka")
            kafka.start()
            bootstrap = kafka.bootstrap_servers
        if options.soak is not None:
            asyncio.run(_soak(options, options.soak, bootstrap, work, out))
            return EXIT_OK
        report = asyncio.run(_bench(options, bootstrap, work, out))
    finally:
        if kafka is not None:
            kafka.stop()
        if options.keep:
            log.info("bench_work_kept", folder=str(work))
        else:
            shutil.rmtree(work, ignore_errors=True)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
    plot_latency(report, out / "latency.png")
    sys.stdout.write(render_table(report))
    code, message = ratio_verdict(report.throughput_ratio, options.min_ratio)
    if message:
        sys.stdout.write(f"FAIL: {message}\n")
    return code


async def _bench(options: BenchOptions, bootstrap: str, work: Path, out: Path) -> Report:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}"
    factory = SeizureEvents(run)
    logs = out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    started = datetime.now(UTC)
    begun = time.monotonic()
    load_at_start = os.getloadavg()[0]
    level = options.node_log_level

    gateway = gateway_pipeline(bootstrap, f"{prefix}.tp", work / "tp", log_level=level)
    if options.profile:
        gateway = gateway.profiled(out / "profiles")
    relay_tp = await measure_throughput(
        bootstrap,
        relay_pipeline(bootstrap, f"{prefix}.tp"),
        factory.take(options.relay_events),
        logs / "throughput-relay",
    )
    gateway_tp = await measure_throughput(
        bootstrap, gateway, factory.take(options.events), logs / "throughput-gateway"
    )
    relay_lat = await measure_latency(
        bootstrap,
        relay_pipeline(bootstrap, f"{prefix}.lat"),
        factory,
        options.rates,
        options.seconds,
        logs / "latency-relay",
    )
    gateway_lat = await measure_latency(
        bootstrap,
        gateway_pipeline(bootstrap, f"{prefix}.lat", work / "lat", log_level=level),
        factory,
        options.rates,
        options.seconds,
        logs / "latency-gateway",
    )
    fanout = []
    for k in options.fanout:
        sender = gateway_pipeline(
            bootstrap,
            f"{prefix}.fan{k}",
            work / f"fan{k}",
            recipients=k,
            receiver=False,
            log_level=level,
        )
        events = factory.take(options.fanout_events)
        result = await measure_throughput(bootstrap, sender, events, logs / f"fanout-{k}")
        fanout.append(FanOut(k, result))
    return Report(
        started_at=started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        seconds=round(time.monotonic() - begun, 1),
        machine=_machine(
            bootstrap if options.bootstrap else "local, started by the bench", load_at_start
        ),
        options=_options_json(options),
        relay=relay_tp,
        gateway=gateway_tp,
        relay_latency=relay_lat,
        gateway_latency=gateway_lat,
        fanout=tuple(fanout),
    )


def _machine(kafka: str, load_at_start: float) -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka": kafka,
        # other work on the machine skews every figure: how busy was it before and after?
        "loadavg_1min_at_start": round(load_at_start, 2),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
    }


def _options_json(options: BenchOptions) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}


# --- soak ----------------------------------------------------------------------------------------


SOAK_BACKLOG = 2000
"""Events fed ahead of the deliveries during a soak: enough to keep the gateway busy, few
enough that a million-event soak does not first fill the disk."""
SOAK_ROW_S = 5.0


@dataclass(frozen=True, slots=True)
class SoakRow:
    """One line of ``soak.csv``."""

    elapsed_s: float
    arrived: int
    rss_mib: tuple[float, ...]
    cpu_s: tuple[float, ...]


def soak_summary(
    names: Sequence[str], rows: Sequence[SoakRow], total: int
) -> dict[str, dict[str, float]]:
    """Per process: RSS once 10 % of the events had arrived (after warm-up), at its peak and
    at the end, and the growth from the first to the last, per 100 000 events."""
    warm = next((r for r in rows if r.arrived >= total / 10), rows[0])
    last = rows[-1]
    events = max(1, last.arrived - warm.arrived)
    return {
        name: {
            "rss_mib_after_warmup": round(warm.rss_mib[i], 1),
            "rss_mib_peak": round(max(r.rss_mib[i] for r in rows), 1),
            "rss_mib_last": round(last.rss_mib[i], 1),
            "growth_mib_per_100k_events": round(
                (last.rss_mib[i] - warm.rss_mib[i]) * 100_000 / events, 2
            ),
        }
        for i, name in enumerate(names)
    }


async def _soak(options: BenchOptions, total: int, bootstrap: str, work: Path, out: Path) -> None:
    """Feed ``total`` events through the gateway, at most ``SOAK_BACKLOG`` ahead of the
    deliveries, and write RSS and CPU over time to ``soak.csv``, a summary to ``soak.json`` and
    a plot to ``soak.png``.

    :raises InfrastructureError: the pipeline stalled, a process died, or the time ran out.
    """
    run = uuid.uuid4().hex[:8]
    factory = SeizureEvents(run)
    level = options.node_log_level
    pipeline = gateway_pipeline(bootstrap, f"soak{run}", work / "soak", log_level=level)
    await pipeline.create_topics(bootstrap)
    limit = time.monotonic() + options.soak_max_hours * 3600
    csv = out / "soak.csv"
    rows: list[SoakRow] = []
    began = time.time()
    load_at_start = os.getloadavg()[0]
    async with (
        Children(out / "logs" / "soak", interval_s=1.0) as children,
        end_counter(bootstrap, pipeline.ends) as count,
    ):
        for name, argv in pipeline.processes:
            children.start(name, argv)
        names = [c.name for c in children.children]
        header = ["elapsed_s", "arrived"]
        header += [f"{n}_rss_mib" for n in names] + [f"{n}_cpu_s" for n in names]
        csv.write_text(",".join(header) + "\n")
        fed = arrived = 0
        last_progress = time.monotonic()
        next_row = 0.0
        while arrived < total:
            children.check_alive()
            if fed < total and fed - arrived < SOAK_BACKLOG:
                size = min(SOAK_BACKLOG, total - fed)
                await preload(bootstrap, pipeline.source, factory.take(size))
                fed += size
            counted = await count()
            if counted > arrived:
                arrived, last_progress = counted, time.monotonic()
            stalled = time.monotonic() - last_progress > STALL_S
            if stalled or time.monotonic() > limit:
                why = "no progress" if stalled else f"not done in {options.soak_max_hours} h"
                error = InfrastructureError(
                    f"soak: {arrived} of {total} arrived, {why}; see the logs in {children.logs}"
                )
                error.retriable = False
                raise error
            elapsed = time.time() - began
            sampled = all(c.samples for c in children.children)
            if sampled and (elapsed >= next_row or arrived >= total):
                next_row = elapsed + SOAK_ROW_S
                latest = [c.samples[-1] for c in children.children]
                row = SoakRow(
                    round(elapsed, 1),
                    arrived,
                    tuple(round(rss / MIB, 2) for _, _, rss in latest),
                    tuple(round(cpu, 2) for _, cpu, _ in latest),
                )
                rows.append(row)
                with csv.open("a") as f:
                    f.write(",".join(map(str, (row.elapsed_s, row.arrived, *row.rss_mib))))
                    f.write("," + ",".join(map(str, row.cpu_s)) + "\n")
                log.info("bench_soak", arrived=arrived, total=total)
            await asyncio.sleep(0.5)
        ended = time.time()
        await children.stop()
    memory = soak_summary(names, rows, total)
    summary = {
        "events": total,
        "seconds": round(ended - began, 1),
        "events_per_s": round(total / (ended - began), 2),
        "memory": memory,
        "processes": [asdict(p) for p in children.describe(began, ended)],
        "machine": _machine(
            bootstrap if options.bootstrap else "local, started by the bench", load_at_start
        ),
    }
    (out / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_soak(names, rows, out / "soak.png")
    lines = [f"soak: {total} events in {summary['seconds']} s, RSS in MiB:"]
    lines += [
        f"  {name}: {m['rss_mib_after_warmup']} after warm-up, peak {m['rss_mib_peak']}, last"
        f" {m['rss_mib_last']} ({m['growth_mib_per_100k_events']:+} per 100k events)"
        for name, m in memory.items()
    ]
    lines += [f"written: {csv}, {out / 'soak.json'}, {out / 'soak.png'}", ""]
    sys.stdout.write("\n".join(lines))


# --- output --------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(report: Report) -> str:
    """The short table printed at the end of a run."""
    r, g, m = report.relay, report.gateway, report.machine
    lines = [
        f"fxgw bench: {m['cpus']} CPUs, Python {m['python']}, {report.seconds:.0f} s;"
        f" load average {m['loadavg_1min_at_start']} at the start,"
        f" {m['loadavg_1min_at_end']} at the end",
        "",
        f"{'':28}{'relay':>12}{'gateway':>12}{'gateway/relay':>15}",
        f"{'throughput (events/s)':28}{r.events_per_s:>12.1f}{g.events_per_s:>12.1f}"
        f"{report.throughput_ratio:>15.4f}",
        f"{'CPU per event (ms)':28}{r.cpu_s_per_event * 1000:>12.3f}"
        f"{g.cpu_s_per_event * 1000:>12.3f}{report.cpu_ratio:>15.1f}",
        f"{'events counted / sent':28}{f'{r.distinct}/{r.events}':>12}"
        f"{f'{g.distinct}/{g.events}':>12}",
        "",
        "latency ms p50 / p99 / p99.9 at offered rate (events/s)",
    ]

    def cell(run: LatencyRun, rate: int) -> str:
        for x in run.rates:
            if x.rate == rate:
                if x.saturated:
                    return f"saturated: {x.achieved_per_s:.0f}/s delivered"
                return f"{_ms(x.p50_ms)} / {_ms(x.p99_ms)} / {_ms(x.p999_ms)}"
        return "not run (saturated below)"

    rates = sorted(
        {x.rate for run in (report.relay_latency, report.gateway_latency) for x in run.rates}
        | set(report.relay_latency.skipped_rates)
        | set(report.gateway_latency.skipped_rates)
    )
    for rate in rates:
        lines.append(
            f"  {rate:>6}  relay {cell(report.relay_latency, rate):<28}"
            f"gateway {cell(report.gateway_latency, rate)}"
        )
    lines += ["", "fan-out, sending node alone: recipients, envelopes/s, events/s, CPU ms/event"]
    for f in report.fanout:
        t = f.throughput
        lines.append(
            f"  {f.recipients:>3}  {t.records_per_s:>10.1f}  {t.events_per_s:>9.1f}"
            f"  {t.cpu_s_per_event * 1000:>8.2f}"
        )
    memory = report.memory()
    lines += [
        "",
        "peak RSS (MiB): "
        + "; ".join(
            f"{kind} " + ", ".join(f"{n} {v:.0f}" for n, v in peaks.items())
            for kind, peaks in memory.items()
        ),
        "",
    ]
    return "\n".join(lines)


def plot_latency(report: Report, path: Path) -> None:
    """Latency p50 and p99 against offered load, relay and gateway; saturated rates marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    top = 1.0
    colours = {"relay": "tab:blue", "gateway": "tab:red"}
    runs = {"relay": report.relay_latency, "gateway": report.gateway_latency}
    for kind, run in runs.items():
        for key, style, marker in (("p50_ms", "-", "o"), ("p99_ms", "--", "s")):
            points = [(x.rate, getattr(x, key)) for x in run.rates if not x.saturated]
            if points:
                xs, ys = zip(*points, strict=True)
                label = f"{kind} {key[:3]}"
                ax.plot(xs, ys, style, marker=marker, color=colours[kind], label=label)
                top = max(top, *ys)
    for kind, run in runs.items():
        saturated = [x.rate for x in run.rates if x.saturated] + list(run.skipped_rates)
        if saturated:
            ax.scatter(
                saturated,
                [top * 2] * len(saturated),
                marker="x",
                color=colours[kind],
                label=f"{kind} saturated (not carried)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    m = report.machine
    ax.set_title(
        f"fxgw bench: end-to-end latency against offered load\n"
        f"{m['cpus']} CPUs, Python {m['python']}; x: rate not carried (saturated)",
        fontsize="medium",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_soak(names: Sequence[str], rows: Sequence[SoakRow], path: Path) -> None:
    """RSS of each process against events delivered."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, name in enumerate(names):
        ax.plot([r.arrived for r in rows], [r.rss_mib[i] for r in rows], label=name)
    ax.set_xlabel("events delivered")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("fxgw bench --soak: memory of the gateway's processes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
