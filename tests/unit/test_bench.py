"""The benchmark's arithmetic and options, with values alone (the runs need Kafka: see
tests/integration/test_bench.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gateway.dev.bench import (
    EXIT_BELOW_FLOOR,
    EXIT_OK,
    BenchOptions,
    RateLatency,
    SeizureEvents,
    SoakRow,
    cpu_between,
    percentile,
    ratio_verdict,
    soak_summary,
)
from gateway.dev.sandbox import build_federation, seizure_exchange
from gateway.errors import ConfigError
from gateway.node.config import load_config
from gateway.node.files import load_node_files
from tests.unit.conftest import NOW


class TestPercentile:
    """Nearest-rank percentiles, with missing arrivals as infinity."""

    def test_median_of_odd_count(self) -> None:
        """The median of five values is the third smallest."""
        assert 3.0 == percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50)

    def test_high_percentile_of_small_sample_is_its_maximum(self) -> None:
        """p99.9 of ten values is the largest of them."""
        assert 10.0 == percentile([float(v) for v in range(1, 11)], 99.9)

    def test_missing_arrival_makes_the_tail_infinite(self) -> None:
        """One event in a hundred that never arrived makes p99.9 infinite but not p50."""
        values = [0.01] * 99 + [math.inf]
        assert 0.01 == percentile(values, 50)
        assert math.isinf(percentile(values, 99.9))

    def test_no_values_is_an_error(self) -> None:
        """A percentile of nothing is refused."""
        with pytest.raises(ValueError):
            percentile([], 50)


class TestCpuBetween:
    """CPU spent in a window, from cumulative samples."""

    SAMPLES = ((10.0, 1.0), (11.0, 1.5), (12.0, 2.5))

    def test_interpolates_between_samples(self) -> None:
        """Half-way between two samples counts half the CPU between them."""
        assert 0.75 == pytest.approx(cpu_between(self.SAMPLES, 10.5, 11.5))

    def test_window_beyond_the_samples_holds_the_nearest(self) -> None:
        """Before the first and after the last sample, the nearest sample holds."""
        assert 1.5 == pytest.approx(cpu_between(self.SAMPLES, 0.0, 99.0))

    def test_no_samples_is_no_cpu(self) -> None:
        """A process never sampled spent nothing we know of."""
        assert 0.0 == cpu_between([], 0.0, 1.0)


class TestRateLatency:
    """Latency figures of one offered rate."""

    def test_all_arrived_in_step_is_not_saturated(self) -> None:
        """Events that all arrive 10 ms after being sent give 10 ms percentiles."""
        sent = {str(i).encode(): i / 100 for i in range(100)}
        arrivals = {k: t + 0.010 for k, t in sent.items()}
        result = RateLatency.of(100, sent, arrivals, cpu_s=0.5)
        assert False is result.saturated
        assert 10.0 == pytest.approx(result.p50_ms)
        assert 10.0 == pytest.approx(result.p999_ms)
        assert 100 == result.arrived
        assert 0.005 == pytest.approx(result.cpu_s_per_event)

    def test_missing_arrivals_saturate_and_blank_the_tail(self) -> None:
        """Events that never arrived mark the rate saturated and leave p99.9 unknown."""
        sent = {str(i).encode(): i / 100 for i in range(100)}
        arrivals = {k: t + 0.010 for k, t in list(sent.items())[:90]}
        result = RateLatency.of(100, sent, arrivals, cpu_s=0.5)
        assert True is result.saturated
        assert result.p999_ms is None
        assert 90 == result.arrived

    def test_deliveries_falling_behind_saturate(self) -> None:
        """All events arrived, but at half the offered rate: saturated, percentiles kept."""
        sent = {str(i).encode(): i / 100 for i in range(100)}
        arrivals = {str(i).encode(): i / 50 for i in range(100)}
        result = RateLatency.of(100, sent, arrivals, cpu_s=0.5)
        assert True is result.saturated
        assert result.p50_ms is not None


class TestRatioVerdict:
    """The --min-ratio gate."""

    def test_no_floor_passes(self) -> None:
        """Without --min-ratio any ratio passes."""
        assert (EXIT_OK, None) == ratio_verdict(0.001, None)

    def test_ratio_at_the_floor_passes(self) -> None:
        """A ratio equal to the floor passes."""
        assert (EXIT_OK, None) == ratio_verdict(0.02, 0.02)

    def test_ratio_below_the_floor_fails(self) -> None:
        """A ratio below the floor exits 1 with a message naming both numbers."""
        code, message = ratio_verdict(0.01, 0.02)
        assert EXIT_BELOW_FLOOR == code
        assert message is not None and "0.0100" in message and "0.0200" in message


class TestSoakSummary:
    """What a soak says about memory."""

    def test_growth_is_measured_from_warm_up_per_100k_events(self) -> None:
        """RSS growth counts from the row where a tenth of the events had arrived."""
        rows = [
            SoakRow(0.5, 0, (5.0,), (0.0,)),
            SoakRow(5.0, 10_000, (50.0,), (1.0,)),
            SoakRow(10.0, 60_000, (60.0,), (2.0,)),
            SoakRow(15.0, 110_000, (55.0,), (3.0,)),
        ]
        summary = soak_summary(["NL-POL"], rows, total=100_000)
        expected = {
            "rss_mib_after_warmup": 50.0,
            "rss_mib_peak": 60.0,
            "rss_mib_last": 55.0,
            "growth_mib_per_100k_events": 5.0,
        }
        assert {"NL-POL": expected} == summary


class TestBenchOptions:
    """Command-line options over the quick and the full defaults."""

    def test_quick_defaults_apply_when_nothing_is_given(self) -> None:
        """--quick alone gives the quick run."""
        assert BenchOptions.quick_run() == BenchOptions.from_arguments({"quick": True})

    def test_given_options_override_the_defaults(self) -> None:
        """An option given on the command line replaces its quick default; None leaves it."""
        options = BenchOptions.from_arguments(
            {"quick": True, "rates": (10,), "events": None, "command": "bench"}
        )
        assert (10,) == options.rates
        assert BenchOptions.quick_run().events == options.events

    @pytest.mark.parametrize(
        "change",
        [{"events": 1}, {"rates": (0,)}, {"seconds": 0.0}, {"fanout": (14,)}, {"min_ratio": 0}],
    )
    def test_invalid_options_are_refused(self, change: dict[str, object]) -> None:
        """Too few events, a zero rate or time, 14 recipients or a zero floor are refused."""
        with pytest.raises(ConfigError):
            BenchOptions.from_arguments(change).validate()


class TestSeizureEvents:
    """The events the benchmark feeds."""

    def test_each_event_has_its_own_id_as_key(self) -> None:
        """Every event is the template with a fresh event id, which is also its key."""
        events = SeizureEvents("t1").take(3)
        ids = [json.loads(value)["record"]["event_id"] for _, value in events]
        assert [key.decode() for key, _ in events] == ids
        assert 3 == len(set(ids))

    def test_missing_template_names_the_file(self, tmp_path: Path) -> None:
        """Without a source checkout the error names the missing template."""
        with pytest.raises(ConfigError, match="template"):
            SeizureEvents("t1", tmp_path / "absent.json")


class TestSeizureExchange:
    """The benchmark's federation: NL-POL sending every seizure to n EU partners."""

    @pytest.mark.parametrize("recipients", [1, 3, 10])
    def test_sender_routes_seizures_to_n_partners_and_loads(
        self, tmp_path: Path, recipients: int
    ) -> None:
        """NL-POL's node files load (policy checked against the trust list) with n partners."""
        agencies = seizure_exchange(recipients)
        fed = build_federation(tmp_path, "127.0.0.1:1", agencies=agencies, now=NOW)
        config = load_config(fed.config("NL-POL"))
        loaded = load_node_files(config, NOW)
        assert "BE-FPJ" == agencies[1].agency
        assert recipients + 1 == len(loaded.trust.agencies)
        assert 1 == len(config.routes_in_force)

    def test_more_partners_than_the_sandbox_has_are_refused(self) -> None:
        """Asking for more partners than there are countries is an error."""
        with pytest.raises(ValueError):
            seizure_exchange(99)
