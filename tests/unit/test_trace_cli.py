"""``fxgw trace list``, ``show`` and ``withdraw`` on a node's case store."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import main
from gateway.contract.schemas import SchemaRegistry
from gateway.core.outbound import parse_plain_event
from gateway.core.tracing import Deadlines, Tracker
from gateway.dev.sandbox import build_federation
from gateway.node.config import load_config
from gateway.node.tracing import TraceStore
from gateway.types import AgencyId
from tests.unit.conftest import NOW

COUNTRIES = {"NL-POL": "NL", "BE-FPJ": "BE", "US-ATF": "US"}


def _request(event_id: str, reference: str, priority: str = "ROUTINE") -> dict[str, object]:
    return {
        "event_id": event_id,
        "requested_at": NOW,
        "request_reference": reference,
        "priority": priority,
    }


@pytest.fixture
def node_yaml(tmp_path: Path) -> Path:
    """NL-POL's sandbox config, handing events over through its spool folder."""
    fed = build_federation(tmp_path / "fed", "127.0.0.1:1", now=NOW)
    path = fed.config("NL-POL")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["local"]["outbound_topic"] = None
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def seeded(node_yaml: Path) -> Path:
    """NL-POL's store: an acknowledged request to BE-FPJ, an overdue one to US-ATF, and a
    request from US-ATF it owes an answer to."""
    nl = Tracker(AgencyId("NL-POL"), Deadlines(routine=timedelta(days=1)), COUNTRIES.__getitem__)
    nl.released("fxgw.TraceRequest", _request("req-be", "AMS-1", "URGENT"), "BE-FPJ", NOW)
    ack = {
        "event_id": "ack-1",
        "status": "ACKNOWLEDGED",
        "request_event_id": "req-be",
        "due_by": NOW + timedelta(days=9),
    }
    nl.delivered("fxgw.TraceUpdate", ack, "BE-FPJ", NOW)
    nl.released("fxgw.TraceRequest", _request("req-us", "AMS-2"), "US-ATF", NOW)
    nl.delivered("fxgw.TraceRequest", _request("req-in", "ATF-9"), "US-ATF", NOW)
    nl.due(NOW + timedelta(days=2))
    store = TraceStore(load_config(node_yaml).state_dir)
    store.save(nl.cases.values())
    store.close()
    return node_yaml


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert 0 == main(["trace", *args, "--json"])
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


class TestList:
    """fxgw trace list."""

    def test_before_the_node_ran(self, node_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """No store yet: an empty list, said in words."""
        assert 0 == main(["trace", "list", "-c", str(node_yaml)])
        assert "no trace cases (the node has not run)\n" == capsys.readouterr().out
        assert [] == _json(capsys, "list", "-c", str(node_yaml))

    def test_requests_overdue_and_owed(
        self, seeded: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The node's requests; --overdue the late ones; --owed what it must answer."""
        c = str(seeded)
        mine = _json(capsys, "list", "-c", c)
        assert [("req-be", "acknowledged"), ("req-us", "overdue")] == sorted(
            (r["request_event_id"], r["state"]) for r in mine
        )
        late = _json(capsys, "list", "-c", c, "--overdue")
        assert [("req-us", 1)] == [(r["request_event_id"], r["reminders"]) for r in late]
        owed = _json(capsys, "list", "-c", c, "--owed")
        assert [("req-in", "traced", "US-ATF")] == [
            (r["request_event_id"], r["role"], r["requester"]) for r in owed
        ]

    def test_table(self, seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The human form is a table with a header and one line per case."""
        assert 0 == main(["trace", "list", "-c", str(seeded)])
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:3] == ["REQUEST", "REFERENCE", "ROLE"]
        assert 3 == len(lines)
        assert "overdue (1 reminders)" in next(line for line in lines if "req-us" in line)


class TestShow:
    """fxgw trace show."""

    def test_by_reference_with_history(
        self, seeded: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Found by its reference; the history lists each step."""
        (case,) = _json(capsys, "show", "AMS-1", "-c", str(seeded))
        history = case["history"]
        assert isinstance(history, list)
        assert ["request", "acknowledged"] == [h["step"] for h in history]
        assert 0 == main(["trace", "show", "req-be", "-c", str(seeded)])
        out = capsys.readouterr().out
        assert "NL-POL asked BE-FPJ; this node is the requester" in out
        assert "acknowledged" in out

    def test_unknown(self, seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown id exits 1, saying so."""
        assert 1 == main(["trace", "show", "nope", "-c", str(seeded)])
        assert "no trace case" in capsys.readouterr().out


class TestWithdraw:
    """fxgw trace withdraw."""

    def test_hands_a_withdrawn_update_to_the_outbound_path(
        self, seeded: Path, registry2: SchemaRegistry, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A WITHDRAWN TraceUpdate for the traced agency lands in the spool, with the reason."""
        assert 0 == main(["trace", "withdraw", "AMS-2", "-c", str(seeded), "--reason", "solved"])
        assert "withdrawal of 1 trace case(s) sent to spool" in capsys.readouterr().out
        (spooled,) = load_config(seeded).spool.outbound_dir.glob("*.jsonl")  # type: ignore[union-attr]
        event = parse_plain_event(spooled.read_bytes().strip(), registry2)
        record = event.record
        assert ("WITHDRAWN", "req-us", "solved", ("US-ATF",)) == (
            record["status"],
            record["request_event_id"],
            record["remarks"],
            event.recipients,
        )

    def test_only_open_requests_of_this_node(
        self, seeded: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A request this node owes an answer to cannot be withdrawn by it."""
        assert 1 == main(["trace", "withdraw", "ATF-9", "-c", str(seeded), "--reason", "x"])
        assert "no open trace request of this node" in capsys.readouterr().out
