"""Figures of hit/no-hit queries on this machine, one core: OPRF round trips and holder
evaluations per second, the time and size of a holder's filter for a registry, and the measured
false-positive rate against its expected value.

Run by hand (a million records take a few minutes)::

    python -m gateway.dev.hitbench --records 1000000 --fp-bound 1e-6

Development tool only: a production node never imports it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from gateway.core.identifiers import identifier
from gateway.crypto.filters import HoldingsFilter, Shard
from gateway.crypto.oprf import OprfKey, blind, finalize, unblind
from gateway.dev.registry import Holding, absent, generate, identifiers, read_by_officer

__all__ = ["measure"]


def _query_identifiers(holdings: list[Holding]) -> list[bytes]:
    found = [identifier(h.make, h.serial, h.calibre) for h in holdings]
    return [i for i in found if isinstance(i, bytes)]


def _round_trip(key: OprfKey, ident: bytes) -> bytes:
    """The querier's PRF output, through blind, the holder's evaluate, unblind and finalize."""
    blinded = blind(ident)
    return finalize(ident, unblind(blinded, key.evaluate(blinded.point)))


def measure(
    records: int = 1_000_000,
    fp_bound: float = 1e-6,
    queries: int = 2_000,
    fp_samples: int = 20_000_000,
    seed: int = 1,
) -> dict[str, Any]:
    """Build a holder's filter over ``records`` generated records and measure it.

    ``queries`` records of the registry, as an officer may read them, go through the whole OPRF
    round trip (timed without the lookups) and must all hit in the filter as a querier parses it
    from the shards' bytes (timed apart: it decodes every shard); ``queries`` absent records go
    through it too, and
    ``fp_samples`` random 32-byte values (PRF outputs of non-members are indistinguishable from
    them, and cost nothing to make) measure the false-positive rate."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data must repeat for a seed
    registry = generate(records, seed)
    held = sorted(identifiers(registry))
    key = OprfKey.derive(rng.randbytes(32), 1)

    started = time.perf_counter()
    outputs = [key.prf(ident) for ident in held]
    prf_seconds = time.perf_counter() - started
    started = time.perf_counter()
    holdings = HoldingsFilter.build(outputs, fp_bound)
    build_seconds = time.perf_counter() - started

    asked = _query_identifiers([read_by_officer(h, rng) for h in rng.sample(registry, queries)])
    missing = _query_identifiers(absent(queries, seed + 1, registry))
    started = time.perf_counter()
    answers = [_round_trip(key, ident) for ident in asked + missing]
    round_trip_seconds = time.perf_counter() - started
    started = time.perf_counter()
    received = HoldingsFilter.from_shards(Shard.from_bytes(s.to_bytes()) for s in holdings.shards)
    hits = [received.contains(answer) for answer in answers]  # decodes every shard once
    cold_seconds = time.perf_counter() - started
    points = [blind(ident).point for ident in asked + missing]
    started = time.perf_counter()
    for point in points:
        key.evaluate(point)
    evaluate_seconds = time.perf_counter() - started

    started = time.perf_counter()
    false_positives = sum(holdings.contains(rng.randbytes(32)) for _ in range(fp_samples))
    lookup_seconds = time.perf_counter() - started
    return {
        "records": records,
        "elements": len(held),
        "fp_bound": fp_bound,
        "rice_p": holdings.shards[0].rice_p,
        "prf_per_second": round(len(held) / prf_seconds),
        "holder_evaluations_per_second": round(len(points) / evaluate_seconds),
        "round_trips_per_second": round(len(answers) / round_trip_seconds),
        "filter_build_seconds": round(build_seconds, 2),
        "filter_parse_and_decode_seconds": round(cold_seconds, 2),
        "filter_bytes": holdings.size,
        "shards": len(holdings.shards),
        "largest_shard_bytes": max(len(s.to_bytes()) for s in holdings.shards),
        "bits_per_element": round(8 * holdings.size / max(1, len(held)), 2),
        "true_hits_asked": len(asked),
        "false_negatives": hits[: len(asked)].count(False),
        "false_negatives_all_members": sum(not holdings.contains(out) for out in outputs),
        "absent_asked": len(missing),
        "absent_hits": hits[len(asked) :].count(True),
        "fp_samples": fp_samples,
        "fp_measured": false_positives / fp_samples,
        "fp_expected": holdings.expected_fp_rate,
        "lookups_per_second": round(fp_samples / lookup_seconds),
    }


def main(argv: list[str] | None = None) -> None:
    """Run :func:`measure` with the command line's sizes and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--fp-bound", type=float, default=1e-6)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--fp-samples", type=int, default=20_000_000)
    args = parser.parse_args(argv)
    figures = measure(args.records, args.fp_bound, args.queries, args.fp_samples)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
