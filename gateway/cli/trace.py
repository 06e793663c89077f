"""``fxgw trace``: the node's trace cases (its requests, what it owes), and withdrawing one.

Reads ``<state>/trace.sqlite`` while the node runs (write-ahead log); a withdrawal is a plain
WITHDRAWN TraceUpdate handed to the node's outbound path the way ``fxgw send`` hands events.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway.core.tracing import Case, Tracker, case_to_json, owed
from gateway.node.config import NodeConfig, load_config
from gateway.node.tracing import TRACE_FILE, TraceStore
from gateway.types import AgencyId

EXIT_OK, EXIT_NOT_FOUND = 0, 1


def _cases(config: NodeConfig) -> TraceStore | None:
    """The node's case store, read-only; None when the node never ran."""
    if not (config.state_dir / TRACE_FILE).is_file():
        return None
    return TraceStore(config.state_dir, readonly=True)


def _stamp(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def render(cases: Sequence[Case]) -> str:
    """A compact table of ``cases``, one line each."""
    header = ("REQUEST", "REFERENCE", "ROLE", "PEER", "PRIORITY", "STATE", "OUTCOME", "DUE BY")
    rows = [header] + [
        (
            c.request_id,
            c.reference,
            c.role,
            c.traced if c.role == "requester" else c.requester,
            c.priority,
            c.state + (f" ({c.reminders} reminders)" if c.reminders else ""),
            c.outcome or "-",
            _stamp(c.due_by),
        )
        for c in cases
    ]
    return _table(rows)


def render_case(case: Case) -> str:
    """One case in full, its history oldest first."""
    lines = [
        f"request {case.request_id} ({case.reference}), {case.priority}",
        f"  {case.requester} asked {case.traced}; this node is the {case.role}",
        f"  state {case.state}; outcome {case.outcome or '-'}; due by {_stamp(case.due_by)};"
        f" reminders {case.reminders}",
    ]
    if case.reason:
        lines.append(f"  reason: {case.reason}")
    history = [("AT", "STEP", "STATE", "EVENT")] + [
        (_stamp(s.at), s.what, s.state, s.event_id) for s in case.history
    ]
    lines.append("  " + _table(history).replace("\n", "\n  "))
    return "\n".join(lines)


def cmd_trace_list(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    store = _cases(config)
    cases = [] if store is None else store.all()
    cases = owed(cases) if args.owed else [c for c in cases if c.role == "requester"]
    if args.overdue:
        cases = [c for c in cases if c.state == "overdue"]
    if args.json:
        print(json.dumps([case_to_json(c) for c in cases], ensure_ascii=False, indent=1))
    elif cases:
        print(render(cases))
    else:
        print("no trace cases" + (" (the node has not run)" if store is None else ""))
    return EXIT_OK


def _found(config: NodeConfig, key: str) -> list[Case]:
    store = _cases(config)
    return [] if store is None else store.find(key)


def cmd_trace_show(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    cases = _found(config, args.id)
    if not cases:
        print(f"no trace case has request event id or reference {args.id!r}")
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps([case_to_json(c) for c in cases], ensure_ascii=False, indent=1))
    else:
        print("\n\n".join(render_case(c) for c in cases))
    return EXIT_OK


def cmd_trace_withdraw(args: argparse.Namespace) -> int:
    from gateway.cli.main import hand_over, node_trust

    config = load_config(Path(args.config))
    cases = [c for c in _found(config, args.id) if c.role == "requester" and not c.closed]
    if not cases:
        print(f"no open trace request of this node has event id or reference {args.id!r}")
        return EXIT_NOT_FOUND
    trust = node_trust(config)
    tracker = Tracker(
        config.agency, config.tracing.deadlines, lambda a: trust.agencies[AgencyId(a)].country
    )
    now = datetime.now(UTC)
    lines = [json.dumps(tracker.withdrawal(c, args.reason, now)).encode() for c in cases]
    where = hand_over(config, lines)
    print(f"withdrawal of {len(cases)} trace case(s) sent to {where}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``trace`` command and its subcommands."""
    trace = sub.add_parser("trace", help="trace requests: open, late, answered, owed")
    tsub = trace.add_subparsers(dest="trace_command", required=True)
    p = tsub.add_parser("list", help="this node's trace requests (or, --owed, what it owes)")
    p.add_argument("-c", "--config", required=True, help="the node's node.yaml")
    p.add_argument("--overdue", action="store_true", help="only those past their deadline")
    p.add_argument(
        "--owed", action="store_true", help="requests this agency must answer, soonest first"
    )
    p.add_argument("--json", action="store_true", help="as JSON, with each case's history")
    p.set_defaults(func=cmd_trace_list)
    p = tsub.add_parser("show", help="one trace request's cases, with their history")
    p.add_argument("id", help="the request's event id or its reference")
    p.add_argument("-c", "--config", required=True, help="the node's node.yaml")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_trace_show)
    p = tsub.add_parser("withdraw", help="withdraw an open trace request of this node")
    p.add_argument("id", help="the request's event id or its reference")
    p.add_argument("-c", "--config", required=True, help="the node's node.yaml")
    p.add_argument("--reason", required=True, help="why, for the traced agency")
    p.set_defaults(func=cmd_trace_withdraw)
