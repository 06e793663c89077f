"""``fxgw bench --quick`` against the session's real Kafka: a complete, sane report, and the
throughput gate.

The floor is about half the lowest gateway/relay throughput ratio measured on a 2-core VM with
the batched node while other test suites ran beside it (0.10 to 0.20 over five runs; the
relay's rate swings most, with whatever else the machine runs). It catches a gateway that got
much slower; it is not the target (0.25). No absolute time is asserted: absolute figures depend
on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.dev.bench import TEMPLATE
from tests.integration.conftest import leaked, leaves

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FLOOR = 0.05


@pytest.fixture(scope="module")
def quick(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """One quick bench run: the finished process, its report, and its output folder."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "bench",
            "--quick",
            "--bootstrap",
            kafka_bootstrap,
            "--out",
            str(out),
            "--min-ratio",
            str(FLOOR),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return done, report, out


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


class TestQuickBench:
    """The quick benchmark, as CI runs it."""

    def test_exits_zero_with_the_ratio_above_the_floor(
        self, quick: tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]
    ) -> None:
        """The run succeeds, and gateway/relay throughput is at least the floor."""
        done, report, _ = quick
        assert 0 == done.returncode, done.stdout[-2000:] + done.stderr[-4000:]
        assert report["ratio"]["throughput"] >= FLOOR

    def test_every_event_arrives_exactly_once(
        self, quick: tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]
    ) -> None:
        """Both pipelines and every fan-out deliver each event sent once, nothing lost."""
        _, report, _ = quick
        for kind in ("relay", "gateway"):
            figures = report["throughput"][kind]
            assert figures["events"] == figures["records"] == figures["distinct"], kind
        for run in report["fanout"]:
            expected = run["events"] * run["recipients"]
            assert expected == run["envelopes"] == run["distinct"], run["recipients"]
        for kind in ("relay", "gateway"):
            first = report["latency"][kind]["rates"][0]
            assert first["sent"] == first["arrived"], kind

    def test_every_figure_is_present_and_positive(
        self, quick: tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]
    ) -> None:
        """Throughput, CPU per event, latency percentiles, fan-out and RSS are all positive."""
        _, report, _ = quick
        figures = [report["ratio"]["throughput"], report["ratio"]["cpu_per_event"]]
        for kind in ("relay", "gateway"):
            throughput = report["throughput"][kind]
            figures += [throughput["events_per_s"], throughput["cpu_s_per_event"]]
            figures += [p["rss_peak_mib"] for p in throughput["processes"]]
            figures += [p["cpu_total_s"] for p in throughput["processes"]]
            first = report["latency"][kind]["rates"][0]
            figures += [first["p50_ms"], first["p99_ms"], first["p999_ms"]]
            figures += list(report["memory"]["rss_peak_mib"][kind].values())
        assert [1, 3, 10] == [run["recipients"] for run in report["fanout"]]
        for run in report["fanout"]:
            figures += [run["envelopes_per_s"], run["events_per_s"], run["cpu_s_per_event"]]
        assert all(_positive(f) for f in figures), figures
        assert {"NL-POL", "BE-FPJ"} == set(report["memory"]["rss_peak_mib"]["gateway"])

    def test_writes_the_plot_and_prints_the_table(
        self, quick: tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]
    ) -> None:
        """latency.png is a PNG image, and the table names throughput and fan-out."""
        done, _, out = quick
        assert (out / "latency.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert "throughput (events/s)" in done.stdout
        assert "fan-out" in done.stdout

    def test_its_output_holds_no_event_values(
        self, quick: tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]
    ) -> None:
        """Neither the table nor the bench's own log entries carry a field value of the events."""
        done, _, _ = quick
        record = json.loads(TEMPLATE.read_bytes())["record"]
        metadata = {"NL-POL", "BE-FPJ"}
        values = {v for v in leaves(record) if len(v) >= 4} - metadata
        assert [] == leaked(values, done.stdout + done.stderr)


class TestSoak:
    """``fxgw bench --soak N``, in small."""

    def test_soak_writes_rss_over_time(self, tmp_path: Path, kafka_bootstrap: str) -> None:
        """A short soak delivers every event and writes the RSS series, summary and plot."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "bench",
                "--soak",
                "150",
                "--bootstrap",
                kafka_bootstrap,
                "--out",
                str(tmp_path),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
        assert 0 == done.returncode, done.stderr[-4000:]
        summary = json.loads((tmp_path / "soak.json").read_text())
        rows = (tmp_path / "soak.csv").read_text().splitlines()
        assert 150 == summary["events"]
        assert {"NL-POL", "BE-FPJ"} == set(summary["memory"])
        assert rows[0].startswith("elapsed_s,arrived,NL-POL_rss_mib,BE-FPJ_rss_mib")
        assert "150" == rows[-1].split(",")[1]
        assert (tmp_path / "soak.png").read_bytes().startswith(b"\x89PNG")
