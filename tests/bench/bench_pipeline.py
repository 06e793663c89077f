"""Per-record cost of each pipeline stage, measured side by side in one run.

    .venv/bin/python -m tests.bench.bench_pipeline [--rounds 7] [--n 2000]

Timing on shared machines is noisy, so the stages are interleaved round by round and the report
gives each stage's median time and its ratio to sealing (encryption + signature), the figure
that matters: how much each stage costs next to the cryptography.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.core.outbound import parse_plain_event
from gateway.crypto.envelope import (
    DataKeyRing,
    Header,
    UnwrapCache,
    message_id_for,
    open_envelope,
    seal,
)
from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import build_federation
from gateway.node.config import load_config
from gateway.node.files import load_node_files
from gateway.policy.engine import Plan, apply_plan
from gateway.types import AgencyId


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    now = datetime.now(UTC)
    fed = build_federation(Path(tempfile.mkdtemp()), "127.0.0.1:1", now=now)
    nl = load_node_files(load_config(fed.config("NL-POL")), now)
    be = load_node_files(load_config(fed.config("BE-FPJ")), now)
    registry = nl.registry
    raw = json.dumps(seizure_nl()).encode()
    event = parse_plain_event(raw, registry)
    plan = nl.policy.plan_for(event.event_type, nl.trust.agencies[AgencyId("BE-FPJ")], event.record)
    assert isinstance(plan, Plan)
    us_agency = nl.trust.agencies[AgencyId("US-ATF")]
    us_plan = nl.policy.plan_for(event.event_type, us_agency, event.record)
    assert isinstance(us_plan, Plan) and nl.policy.uses_pseudonyms
    released = apply_plan(plan, event.record, recipient="BE-FPJ", pseudonymiser=nl.pseudonymiser)
    body = registry.encode(event.event_type, released.record)
    ring = DataKeyRing()
    public = nl.trust.encryption_key("BE-FPJ", now)
    assert public is not None
    template = Header(
        message_id=message_id_for("NL-POL", event.event_id, "BE-FPJ"),
        event_id=event.event_id,
        sender=AgencyId("NL-POL"),
        recipient=AgencyId("BE-FPJ"),
        event_type=event.event_type,
        schema_fingerprint=registry.get(event.event_type).fingerprint,
        policy_id=nl.policy.policy_id,
        policy_rule=plan.rule_id,
        policy_digest=nl.policy.digest,
        handling=plan.handling,
        created_at=now.replace(microsecond=0),
        expires_at=now.replace(microsecond=0) + timedelta(days=1),
        withheld=released.withheld,
        transformed=released.transformed,
    )
    cache = UnwrapCache()

    def do_seal() -> bytes:
        key = ring.key_for(AgencyId("BE-FPJ"), public, now)
        return seal(template, body, signer=nl.keys.signing, data_key=key, codec=registry).data

    sealed = do_seal()
    stages: dict[str, Callable[[], object]] = {
        "parse+validate event (JSON)": lambda: parse_plain_event(raw, registry),
        "choose rule (plan_for)": lambda: nl.policy.plan_for(
            event.event_type, us_agency, event.record
        ),
        "apply plan, EU view": lambda: apply_plan(
            plan, event.record, recipient="BE-FPJ", pseudonymiser=nl.pseudonymiser, now=now
        ),
        "apply plan, non-EU (pseudonyms)": lambda: apply_plan(
            us_plan, event.record, recipient="US-ATF", pseudonymiser=nl.pseudonymiser, now=now
        ),
        "Avro write released view": lambda: registry.write(event.event_type, released.record),
        "seal (encrypt + sign)": do_seal,
        "open (verify + decrypt)": lambda: open_envelope(
            sealed, keys=be.keys, trust=be.trust, cache=cache, codec=registry, now=now
        ),
        "Avro decode body": lambda: registry.decode(event.event_type, body),
    }
    samples: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.rounds):
        for name, fn in stages.items():
            start = time.perf_counter()
            for _ in range(args.n):
                fn()
            samples[name].append((time.perf_counter() - start) / args.n * 1e6)
    seal_us = statistics.median(samples["seal (encrypt + sign)"])
    print(f"record: NL-POL seizure, {len(raw)} bytes JSON, {len(body)} bytes Avro released view")
    print(f"{'stage':32} {'median us':>10} {'x seal':>8}")
    for name, values in samples.items():
        us = statistics.median(values)
        print(f"{name:32} {us:10.1f} {us / seal_us:8.2f}")


if __name__ == "__main__":
    main()
