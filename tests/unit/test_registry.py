"""The synthetic registry of the hit/no-hit tests and benchmark, and the benchmark's smoke run."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.identifiers import identifier, normalise_serial
from gateway.dev.hitbench import measure
from gateway.dev.registry import absent, generate, identifiers, read_by_officer

REGISTRY = generate(2_000, seed=5)


class TestGenerate:
    """Generated registries."""

    def test_deterministic(self) -> None:
        """One seed, one registry; another seed, another."""
        assert REGISTRY == generate(2_000, seed=5)
        assert REGISTRY != generate(2_000, seed=6)

    def test_realistic_shapes(self) -> None:
        """Serials with letter prefixes, separators and leading zeros, several makers, some
        records without a calibre, all of them queryable."""
        serials = [h.serial for h in REGISTRY]
        assert any(s[0].isalpha() for s in serials)
        assert any("-" in s for s in serials)
        assert any(normalise_serial(s) != s for s in serials)
        assert len({h.make for h in REGISTRY}) > 10
        assert 0 < sum(h.calibre is None for h in REGISTRY) < len(REGISTRY) / 5
        assert all(isinstance(identifier(h.make, h.serial), bytes) for h in REGISTRY)

    def test_absent(self) -> None:
        """Absent records share no identifier with the registry."""
        missing = absent(500, seed=9, registry=REGISTRY)
        assert 500 == len(missing)
        assert set() == identifiers(missing) & identifiers(REGISTRY)


class TestOfficerReadings:
    """What an officer writes normalises to the record's identifier."""

    @given(st.integers(0, 2**32))
    def test_same_identifier(self, seed: int) -> None:
        """Every reading of every record gives the record's identifier."""
        rng = random.Random(seed)
        for holding in rng.sample(REGISTRY, 50):
            read = read_by_officer(holding, rng)
            assert identifier(holding.make, holding.serial, holding.calibre) == identifier(
                read.make, read.serial, read.calibre
            )

    def test_readings_differ_from_record(self) -> None:
        """Readings are not copies of the record."""
        rng = random.Random(3)
        readings = [read_by_officer(h, rng) for h in REGISTRY[:200]]
        assert sum(r.serial != h.serial for r, h in zip(readings, REGISTRY, strict=False)) > 150


class TestHitbench:
    """The benchmark, with tiny numbers."""

    def test_smoke(self) -> None:
        """Every figure is there; no false negative; rates are positive."""
        figures = measure(records=300, fp_bound=1e-2, queries=20, fp_samples=2_000)
        assert 0 == figures["false_negatives"] == figures["false_negatives_all_members"]
        assert 20 == figures["true_hits_asked"]
        assert figures["elements"] > 300
        assert figures["fp_expected"] <= 0.5e-2
        assert min(figures["round_trips_per_second"], figures["prf_per_second"]) > 0
        assert figures["largest_shard_bytes"] <= figures["filter_bytes"]
