"""The loop's bookkeeping of decisions: every one counted and audited, everyday ones logged as a
count per batch, the rest one line each."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.store import AuditLog, read_entries
from gateway.core.effects import AuditEntry
from gateway.crypto.keys import generate_signing_key
from gateway.node.logs import configure
from gateway.node.loop import Executor
from gateway.types import KeyId

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _executor(tmp_path: Path) -> Executor:
    audit = AuditLog.open(tmp_path / "audit", generate_signing_key(KeyId("k1")), now=lambda: NOW)
    unused: Any = None  # record() touches neither Kafka nor the sinks
    return Executor(
        audit=audit,
        exchange=unused,
        local=unused,
        topics=unused,
        limits=unused,
        retry=unused,
        counters=Counter(),
        now_ms=lambda: 0,
    )


def _entry(n: int, *, routine: bool, event: str = "released") -> AuditEntry:
    return AuditEntry("release", {"message_id": f"m{n}"}, event, event, routine=routine)


class TestRecord:
    """What one batch's decisions leave in the counters, the audit trail and the log."""

    def test_routine_outcomes_are_one_line_per_kind(
        self, tmp_path: Path, stream: io.StringIO
    ) -> None:
        """300 releases and 2 denials: 300 audit entries and counts, but three log lines."""
        executor = _executor(tmp_path)
        entries = [_entry(n, routine=True) for n in range(300)]
        entries += [_entry(n, routine=False, event="not_released") for n in range(2)]
        executor.record(entries)
        executor.audit.close()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [("not_released", None), ("not_released", None), ("released", 300)] == [
            (line["event"], line.get("count")) for line in lines
        ]
        assert {"released": 300, "not_released": 2} == executor.counters
        assert 302 == sum(1 for e in read_entries(tmp_path / "audit") if e.kind == "release")

    def test_an_entry_adds_to_its_further_counters(self, tmp_path: Path) -> None:
        """A delivery also counts the envelope format and contract version it came in."""
        executor = _executor(tmp_path)
        versions = ("envelope_format_1", "contract_1.0")
        entries = [
            AuditEntry(
                "delivery", {"m": n}, "delivered", "delivered", routine=True, counts=versions
            )
            for n in range(2)
        ]
        executor.record([*entries, _entry(9, routine=True)])
        executor.audit.close()
        expected = {"delivered": 2, "envelope_format_1": 2, "contract_1.0": 2, "released": 1}
        assert expected == executor.counters

    def test_each_routine_outcome_is_logged_at_debug(
        self, tmp_path: Path, stream: io.StringIO
    ) -> None:
        """At debug level every entry has its own line as well as the count."""
        configure("debug", stream)
        executor = _executor(tmp_path)
        executor.record([_entry(n, routine=True) for n in range(3)])
        executor.audit.close()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert ["m0", "m1", "m2", None] == [line.get("message_id") for line in lines]
        assert 3 == lines[-1]["count"]

    def test_everyday_counts_are_logged_at_most_once_per_interval(
        self, tmp_path: Path, stream: io.StringIO
    ) -> None:
        """The first batch is logged at once; later ones add up until the interval has passed
        (then one line counts them all); what is left is logged at shutdown."""
        now = [100.0]
        executor = _executor(tmp_path)
        executor.clock = lambda: now[0]
        for n, at in enumerate((100.0, 101.0, 105.0, 110.0, 111.0)):
            now[0] = at
            executor.record([_entry(n, routine=True), _entry(n + 100, routine=True)])
        executor.flush_routine()
        executor.audit.close()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [2, 6, 2] == [line["count"] for line in lines]
        assert {"released": 10} == executor.counters
