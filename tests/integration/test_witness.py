"""Witnessed checkpoints on a real Kafka: NL-POL's checkpoints are countersigned and kept by
BE-FPJ; a cut or a rewrite of NL-POL's log that its own checkpoints and head file no longer show
is found against what BE-FPJ witnessed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from gateway.audit.chain import (
    CHECKPOINT,
    HEAD_FILE,
    Head,
    checkpoint_data,
    make_entry,
    parse_line,
    split_lines,
)
from gateway.cli.main import EXIT_OK, EXIT_REJECTED, main
from gateway.crypto.keys import load_signing_key
from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import Federation
from gateway.node.config import load_config
from tests.integration.conftest import national_send, running, wait_until
from tests.integration.test_evidence import audit_entries

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _publish_often(fed: Federation, *agencies: str) -> None:
    for agency in agencies:
        path = fed.config(agency)
        config = yaml.safe_load(path.read_text())
        config["witness"] = {"publish_every_seconds": 0.5}
        path.write_text(yaml.safe_dump(config, sort_keys=False))


def _kinds(fed: Federation, agency: str, kind: str) -> list[dict[str, Any]]:
    """The data of ``agency``'s audit entries of ``kind``."""
    return [
        cast(dict[str, Any], e["data"]) for e in audit_entries(fed, agency) if e["kind"] == kind
    ]


def _segment(folder: Path) -> Path:
    [only] = sorted(folder.glob("audit-*.jsonl"))  # a young log: one segment
    return only


def _cut_back(folder: Path) -> int:
    """Cut the log back to its first checkpoint and rewrite the head file to match: the log
    alone still verifies. Returns the seq the log now ends at."""
    path = _segment(folder)
    lines = split_lines(path.read_bytes())
    index = next(i for i, line in enumerate(lines) if parse_line(line).kind == CHECKPOINT)
    path.write_bytes(b"".join(lines[: index + 1]))
    (folder / HEAD_FILE).write_bytes(Head(path.name, index + 1, lines[index]).to_bytes())
    return parse_line(lines[index]).seq


def _rewrite(folder: Path, fed: Federation) -> int:
    """Change the first release entry and recompute the chain from there, signing every
    checkpoint again with NL-POL's own key: the log alone still verifies. Returns the seq of
    the entry changed."""
    signer = load_signing_key(load_config(fed.config("NL-POL")).keys.signing)
    path = _segment(folder)
    old = [parse_line(line) for line in split_lines(path.read_bytes())]
    changed = next(e.seq for e in old if e.kind == "release")
    new, head = [], None
    for e in old:
        data = dict(e.data)
        if e.seq == changed:
            data["recipient"] = "US-ATF" if data.get("recipient") != "US-ATF" else "BE-FPJ"
        if e.kind == CHECKPOINT:
            data = checkpoint_data(new[-1], signer)
        prev = new[-1].hash if new else e.prev
        entry = make_entry(e.seq, e.at, e.kind, data, prev)
        new.append(entry)
        if e.kind == CHECKPOINT:
            head = Head(path.name, len(new), entry.to_line())
    path.write_bytes(b"".join(e.to_line() for e in new))
    assert head is not None
    (folder / HEAD_FILE).write_bytes(head.to_bytes())
    return changed


class TestWitnessedCheckpoints:
    async def test_cut_and_rewrite_are_found_with_the_witnessed_checkpoints(
        self, federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """BE-FPJ witnesses NL-POL's checkpoints and NL-POL keeps BE-FPJ's countersignatures;
        'fxgw audit verify --witnessed' passes the untouched log, and fails (exit 1) a log cut
        back or rewritten and signed again, naming the seq and BE-FPJ, where the log alone
        still verifies. NL-POL restarted on the cut log is recorded as a fork by BE-FPJ."""
        fed = federation
        _publish_often(fed, "NL-POL", "BE-FPJ")
        async with running(fed, "NL-POL", "BE-FPJ"):
            await wait_until(lambda: _kinds(fed, "BE-FPJ", "witnessed"), "a first witnessed")
            await national_send(fed, "NL-POL", seizure_nl(), seizure_nl())
            await wait_until(
                lambda: any(
                    any(
                        e["kind"] == "release"
                        for e in audit_entries(fed, "NL-POL")[: int(w["seq"])]
                    )
                    for w in _kinds(fed, "BE-FPJ", "witnessed")
                ),
                "a witnessed checkpoint covering NL-POL's releases",
            )
            await wait_until(lambda: _kinds(fed, "NL-POL", "witness_receipt"), "a receipt")
        witnessed = _kinds(fed, "BE-FPJ", "witnessed")
        assert {"NL-POL"} == {w["agency"] for w in witnessed}
        assert {"BE-FPJ"} == {r["witness"] for r in _kinds(fed, "NL-POL", "witness_receipt")}

        w_file = tmp_path / "w.json"
        be, nl = str(fed.config("BE-FPJ")), str(fed.config("NL-POL"))
        assert EXIT_OK == main(
            ["audit", "witnessed", "--agency", "NL-POL", "-c", be, "--out", str(w_file)]
        )
        assert len(witnessed) == len(json.loads(w_file.read_bytes())["records"])
        folder = load_config(fed.config("NL-POL")).audit_dir
        pristine = tmp_path / "pristine"
        shutil.copytree(folder, pristine)
        capsys.readouterr()
        assert EXIT_OK == main(["audit", "verify", "-c", nl, "--witnessed", str(w_file)])
        assert "witnessed checkpoint(s) match the log" in capsys.readouterr().out

        end = _cut_back(folder)
        assert EXIT_OK == main(["audit", "verify", "-c", nl])  # alone, it looks intact
        capsys.readouterr()
        assert EXIT_REJECTED == main(["audit", "verify", "-c", nl, "--witnessed", str(w_file)])
        out = capsys.readouterr().out
        assert f"the log was cut: it ends at seq {end}, but BE-FPJ witnessed" in out

        async with running(fed, "NL-POL", "BE-FPJ") as nodes:
            await wait_until(lambda: _kinds(fed, "BE-FPJ", "witness_fork"), "BE-FPJ's fork")
            assert nodes["BE-FPJ"].counters["witness_fork"] >= 1  # fxgw_outcomes_total
        [fork, *_] = _kinds(fed, "BE-FPJ", "witness_fork")
        assert "NL-POL" == fork["agency"] and "witnessed" in str(fork["detail"])

        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        changed = _rewrite(folder, fed)
        assert EXIT_OK == main(["audit", "verify", "-c", nl])  # re-signed: intact on its own
        capsys.readouterr()
        assert EXIT_REJECTED == main(["audit", "verify", "-c", nl, "--witnessed", str(w_file)])
        out = capsys.readouterr().out
        assert "was rewritten" in out and "BE-FPJ witnessed" in out
        rewritten = [w["seq"] for w in witnessed if w["seq"] >= changed]
        assert f"entry {min(rewritten)} was rewritten" in out

        # an export of the rewritten log, checked by any node of the federation
        export = tmp_path / "nl.json"
        assert EXIT_OK == main(["audit", "export", "-c", nl, "--out", str(export)])
        capsys.readouterr()
        assert EXIT_REJECTED == main(
            ["audit", "verify", str(export), "-c", be, "--witnessed", str(w_file)]
        )
        assert f"entry {min(rewritten)} was rewritten" in capsys.readouterr().out
