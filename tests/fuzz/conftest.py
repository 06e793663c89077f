"""Fixtures, example budget and regression corpus of the fuzz tests.

The fixtures are those of the unit tests (schemas, a sandbox federation's keys and trust list).

Budget: each fuzz test runs under :func:`budget`. By default that is the ``fuzz-ci`` profile: a
modest, derandomized number of examples (the same ones on every run, so CI never flakes), with
the whole suite well under a minute. ``FXGW_FUZZ_EXAMPLES=N`` switches to ``fuzz-long``: ``N``
examples per test, random, with the pytest timeout scaled to match. Either way an example that
takes longer than :data:`DEADLINE` fails: a reader must never stall on a peer's bytes.

Every input a fuzz run found crashing is kept under ``tests/data/fuzz/<target>/`` and replayed
by :func:`corpus` and :func:`read_case`.
"""

from __future__ import annotations

import gzip
import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.unit.conftest import NOW, be_keys, fed, nl_keys, registry, registry2, trust, us_keys

__all__ = [
    "DEADLINE",
    "MAX_DETAIL",
    "NOW",
    "TIMEOUT",
    "be_keys",
    "budget",
    "corpus",
    "fed",
    "nl_keys",
    "read_case",
    "registry",
    "registry2",
    "trust",
    "us_keys",
]

CI_EXAMPLES = 100
"""Examples per fuzz test (before its weight) when ``FXGW_FUZZ_EXAMPLES`` is not set."""
DEADLINE = timedelta(seconds=2)
"""Longest time one example may take: generous, it catches runaway work, not slowness."""
MAX_DETAIL = 2048
"""Longest message of a PeerError: it is logged and travels in a header of the quarantined
record, so it must not grow with the input (a peer's values are quoted, if at all, bounded)."""
DATA = Path(__file__).resolve().parents[1] / "data" / "fuzz"

_LONG = os.environ.get("FXGW_FUZZ_EXAMPLES", "").strip()
_COMMON = settings(
    deadline=DEADLINE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-ci", _COMMON, max_examples=CI_EXAMPLES, derandomize=True, database=None
)
settings.register_profile(
    "fuzz-long", _COMMON, max_examples=int(_LONG or CI_EXAMPLES), print_blob=True
)
_PROFILE = settings.get_profile("fuzz-long" if _LONG else "fuzz-ci")

TIMEOUT = pytest.mark.timeout(300 + (_PROFILE.max_examples // 10 if _LONG else 0))
"""The pytest timeout of a fuzz test, scaled to the budget (about 0.1 s per example)."""


def budget(weight: float = 1.0) -> settings:
    """The settings of one fuzz test: the profile's examples times ``weight`` (for targets whose
    examples are much dearer or cheaper than the rest), at least ten."""
    return settings(_PROFILE, max_examples=max(10, int(_PROFILE.max_examples * weight)))


def corpus(target: str) -> list[Path]:
    """The stored inputs of ``target`` (``tests/data/fuzz/<target>/``), sorted by name."""
    folder = DATA / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def read_case(path: Path) -> bytes:
    """A stored input: ``.hex`` files hold hex digits (whitespace and ``#`` comment lines are
    ignored), ``.gz`` files the gzipped input (for the huge ones); any other file is the raw
    input itself."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix != ".hex":
        return path.read_bytes()
    lines = path.read_text(encoding="ascii").splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.lstrip().startswith("#")))
