"""Witnessed checkpoints: records, countersignatures, the witness book, the witness and origin
cores, and a log checked against what was witnessed."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.audit.chain import CHECKPOINT, HEAD_FILE, Head, split_lines
from gateway.audit.store import AuditLog, log_segments, read_entries
from gateway.audit.witness import (
    MAX_RECORD_BYTES,
    Checkpoint,
    WitnessBook,
    WitnessCore,
    Witnessed,
    WitnessReport,
    check_log,
    checkpoint_of,
    countersign,
    export_witnessed,
    parse_checkpoint,
    parse_export,
    parse_witnessed,
)
from gateway.cli.main import EXIT_OK, EXIT_REJECTED, main
from gateway.crypto.keys import AgencyKeys, SigningKey
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError
from tests.unit.conftest import NOW

AT = "2026-12-03T09:00:00.000Z"


def _clock() -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    return lambda: NOW + timedelta(milliseconds=next(ticks))


def _log(folder: Path, signer: SigningKey, entries: int, changed: int | None = None) -> AuditLog:
    """A closed log (checkpoint every 4 entries, 8 per segment); entry ``changed`` (0-based
    release) carries other data: the same log rewritten from there and signed again."""
    log = AuditLog.open(folder, signer, now=_clock(), checkpoint_every=4, segment_entries=8)
    for i in range(entries):
        log.append("release", {"message_id": f"m-{i}", "changed": i == changed})
        log.sync()
    log.close()
    return log


def _checkpoints(folder: Path, agency: str = "NL-POL") -> list[Checkpoint]:
    entries = read_entries(folder)
    return [checkpoint_of(agency, entries[0].hash, e) for e in entries if e.kind == CHECKPOINT]


def _keys(signer: SigningKey) -> dict[str, bytes]:
    return {signer.key_id: signer.public}


class TestRecords:
    def test_checkpoint_round_trip_and_signature(self, tmp_path: Path, nl_keys: AgencyKeys) -> None:
        """A published checkpoint parses back equal and verifies with the agency's key only."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        checkpoint = _checkpoints(tmp_path / "a")[0]
        assert checkpoint == parse_checkpoint(checkpoint.to_bytes())
        assert None is checkpoint.check(_keys(nl_keys.signing))
        forged = Checkpoint(**{**checkpoint.fields(), "head_hash": "0" * 64})
        assert "does not verify" in str(forged.check(_keys(nl_keys.signing)))

    def test_record_holds_no_event_metadata(self, tmp_path: Path, nl_keys: AgencyKeys) -> None:
        """Only agency, log, seq, hash, key id, signature and time are published."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        record = json.loads(_checkpoints(tmp_path / "a")[0].to_bytes())
        expected = {"format", "agency", "log", "seq", "head_hash", "key_id", "signature", "at"}
        assert expected == set(record)

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (b"{" + b" " * MAX_RECORD_BYTES + b"}", "too_large"),
            (b"not json", "malformed"),
            (b'{"format":"fxgw-checkpoint-1"}', "malformed"),
            (b"[]", "malformed"),
            (b"[" * 2000, "malformed"),  # nested too deep for the parser, within the size
        ],
    )
    def test_bad_records_are_refused_with_a_reason(self, raw: bytes, reason: str) -> None:
        """Oversized records are refused unread; others name what is wrong."""
        with pytest.raises(PeerError) as caught:
            parse_checkpoint(raw)
        assert reason == caught.value.reason

    def test_a_wrong_field_is_malformed(self, tmp_path: Path, nl_keys: AgencyKeys) -> None:
        """A seq that is not a positive integer, or an extra key, is malformed."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        record = json.loads(_checkpoints(tmp_path / "a")[0].to_bytes())
        for changed in ({**record, "seq": -1}, {**record, "seq": True}, {**record, "x": "y"}):
            with pytest.raises(PeerError, match=r"seq|keys"):
                parse_checkpoint(json.dumps(changed).encode())

    def test_countersignature_round_trip_and_tamper(
        self, tmp_path: Path, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A countersignature verifies with the witness's key; any field changed breaks it."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        witnessed = countersign(_checkpoints(tmp_path / "a")[0], "BE-FPJ", be_keys.signing, AT)
        assert witnessed == parse_witnessed(witnessed.to_bytes())
        assert None is witnessed.check(_keys(be_keys.signing))
        assert None is not witnessed.check(_keys(nl_keys.signing))
        for key, value in (("seq", 99), ("witness", "US-ATF"), ("witnessed_at", AT[:-2] + "1Z")):
            changed = json.loads(witnessed.to_bytes())
            changed[key] = value
            assert None is not parse_witnessed(json.dumps(changed).encode()).check(
                _keys(be_keys.signing)
            )


def _cp(seq: int, head_hash: str = "a" * 64, log: str = "1" * 64) -> Checkpoint:
    return Checkpoint("NL-POL", log, seq, head_hash, "k", "s", AT)


class TestWitnessBook:
    def test_new_duplicate_and_forks(self) -> None:
        """Later seqs are new; the same again a duplicate; another hash or going back a fork."""
        book = WitnessBook()
        assert ("new", "") == book.judge(_cp(10))
        book.accept(_cp(10))
        book.accept(_cp(20, "b" * 64))
        assert ("duplicate", "") == book.judge(_cp(10))
        assert "fork" == book.judge(_cp(20, "c" * 64))[0]
        assert "fork" == book.judge(_cp(15))[0]
        assert ("new", "") == book.judge(_cp(21))
        assert ("new", "") == book.judge(_cp(5, log="2" * 64))  # another replica's log

    def test_bounded(self) -> None:
        """Only ``keep`` hashes per log and ``max_logs`` logs per agency are kept."""
        book = WitnessBook(keep=2, max_logs=1)
        for seq in (1, 2, 3):
            book.accept(_cp(seq))
        assert "fork" == book.judge(_cp(1))[0]  # forgotten, and before the newest
        assert "refused" == book.judge(_cp(1, log="2" * 64))[0]

    def test_saved_and_loaded(self) -> None:
        """The book written to the state folder reads back the same."""
        book = WitnessBook()
        book.accept(_cp(10))
        again = WitnessBook()
        again.load(book.to_bytes())
        assert ("duplicate", "") == again.judge(_cp(10))
        assert "fork" == again.judge(_cp(10, "f" * 64))[0]


def _core(agency: str, keys: AgencyKeys, trust: TrustList, per_minute: int = 30) -> WitnessCore:
    return WitnessCore(
        agency,
        lambda: trust,
        lambda: keys.signing,
        witnessed=lambda: frozenset({"NL-POL", "US-ATF", "BE-FPJ"}),
        per_minute=per_minute,
    )


class TestWitnessCore:
    def test_witnessed_countersigned_and_kept_by_the_origin(
        self, tmp_path: Path, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """BE-FPJ countersigns NL-POL's checkpoint once; NL-POL keeps the countersignature."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        record = _checkpoints(tmp_path / "a")[0].to_bytes()
        witness = _core("BE-FPJ", be_keys, trust)
        effects = witness.take(record, NOW)
        assert ["witnessed"] == [a.kind for a in effects.audit]
        [sent] = effects.send
        assert None is sent.check(_keys(be_keys.signing))
        assert () == witness.take(record, NOW).audit  # a duplicate: nothing more
        kept = _core("NL-POL", nl_keys, trust).take_receipt(sent.to_bytes(), NOW)
        assert ["witness_receipt"] == [a.kind for a in kept.audit]
        assert "BE-FPJ" == kept.audit[0].data["witness"]

    def test_a_fork_is_audited_not_countersigned(
        self, tmp_path: Path, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """The same seq signed again with another hash (a rewritten log) is a fork."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        _log(tmp_path / "b", nl_keys.signing, 6, changed=1)
        first, forged = _checkpoints(tmp_path / "a")[0], _checkpoints(tmp_path / "b")[0]
        assert (first.log, first.seq) == (forged.log, forged.seq)
        assert first.head_hash != forged.head_hash
        witness = _core("BE-FPJ", be_keys, trust)
        witness.take(first.to_bytes(), NOW)
        effects = witness.take(forged.to_bytes(), NOW)
        assert () == effects.send
        [entry] = effects.audit
        assert ("witness_fork", "witness_fork", True) == (entry.kind, entry.counter, entry.warn)
        assert forged.signature == entry.data["signature"]

    @pytest.mark.parametrize(
        ("agency", "key_id", "reason"),
        [
            ("BE-FPJ", None, "not_witnessed"),  # itself
            ("US-ATF", None, "untrusted_sender"),  # NL-POL's key named as US-ATF's
            ("NL-POL", "NL-POL/sign/other", "untrusted_sender"),
        ],
    )
    def test_ignored_with_a_reason(
        self,
        tmp_path: Path,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        agency: str,
        key_id: str | None,
        reason: str,
    ) -> None:
        """Records of the witness itself, or signed with a key the agency does not hold, are
        ignored with a reason, audited and never countersigned."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        record = _checkpoints(tmp_path / "a", agency)[0].fields()
        record["key_id"] = key_id or record["key_id"]
        raw = json.dumps({"format": "fxgw-checkpoint-1", **record}).encode()
        effects = _core("BE-FPJ", be_keys, trust).take(raw, NOW)
        assert () == effects.send
        assert [reason] == [a.data["reason"] for a in effects.audit]

    def test_a_forged_signature_is_bad(
        self, tmp_path: Path, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A listed key id with a signature over another head is bad_signature."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        record = _checkpoints(tmp_path / "a")[0].fields()
        record["head_hash"] = "0" * 64
        raw = json.dumps({"format": "fxgw-checkpoint-1", **record}).encode()
        effects = _core("BE-FPJ", be_keys, trust).take(raw, NOW)
        assert ["bad_signature"] == [a.data["reason"] for a in effects.audit]

    def test_rate_limited_per_agency(
        self, tmp_path: Path, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """Beyond ``per_minute`` records of one agency in a minute, the rest are ignored
        before their signature is checked; the next minute they are taken again."""
        _log(tmp_path / "a", nl_keys.signing, 20)
        records = [c.to_bytes() for c in _checkpoints(tmp_path / "a")]
        witness = _core("BE-FPJ", be_keys, trust, per_minute=2)
        reasons = [
            [str(a.data.get("reason", a.kind)) for a in witness.take(r, NOW).audit]
            for r in records[:3]
        ]
        assert [["witnessed"], ["witnessed"], ["rate_limited"]] == reasons
        later = witness.take(records[2], NOW + timedelta(minutes=1))
        assert ["witnessed"] == [a.kind for a in later.audit]

    def test_a_receipt_for_another_agency_or_forged_is_ignored(
        self, tmp_path: Path, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """The origin keeps only countersignatures of its own checkpoints that verify."""
        _log(tmp_path / "a", nl_keys.signing, 6)
        sent = countersign(_checkpoints(tmp_path / "a")[0], "BE-FPJ", be_keys.signing, AT)
        us = _core("US-ATF", be_keys, trust).take_receipt(sent.to_bytes(), NOW)
        assert ["not_for_us"] == [a.data["reason"] for a in us.audit]
        forged = countersign(sent.checkpoint, "BE-FPJ", nl_keys.signing, AT)
        nl = _core("NL-POL", nl_keys, trust).take_receipt(forged.to_bytes(), NOW)
        assert ["bad_signature"] == [a.data["reason"] for a in nl.audit]


class TestCheckLog:
    @pytest.fixture
    def witnessed(
        self, tmp_path: Path, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> list[Witnessed]:
        _log(tmp_path / "a", nl_keys.signing, 20)
        return [countersign(c, "BE-FPJ", be_keys.signing, AT) for c in _checkpoints(tmp_path / "a")]

    def _check(
        self, folder: Path, witnessed: list[Witnessed], nl: AgencyKeys, be: AgencyKeys
    ) -> WitnessReport:
        return check_log(
            log_segments(folder), witnessed, _keys(nl.signing), {"BE-FPJ": _keys(be.signing)}
        )

    def test_the_witnessed_log_matches(
        self, tmp_path: Path, witnessed: list[Witnessed], nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """Every witnessed checkpoint is found in the untouched log."""
        report = self._check(tmp_path / "a", witnessed, nl_keys, be_keys)
        assert ((), len(witnessed)) == (report.problems, report.checked)

    def test_a_cut_tail_is_found(
        self, tmp_path: Path, witnessed: list[Witnessed], nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """The newest segments deleted: the witnessed checkpoints beyond the end name the cut."""
        folder = tmp_path / "a"
        newest = sorted(folder.glob("audit-*.jsonl"))[-2:]
        for path in newest:
            path.unlink()
        report = self._check(folder, witnessed, nl_keys, be_keys)
        assert report.problems
        assert all("the log was cut" in p and "BE-FPJ witnessed" in p for p in report.problems)

    def test_history_rewritten_and_signed_again_is_found(
        self, tmp_path: Path, witnessed: list[Witnessed], nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """The log rewritten from its 6th release on and signed again with NL-POL's own key
        verifies on its own, but not against what BE-FPJ witnessed."""
        _log(tmp_path / "b", nl_keys.signing, 20, changed=5)
        report = self._check(tmp_path / "b", witnessed, nl_keys, be_keys)
        first = next(w for w in witnessed if w.checkpoint.seq > 6).checkpoint.seq
        assert f"entry {first} was rewritten" in report.problems[0]
        assert report.checked >= 1  # the checkpoints before the change still match

    def test_records_that_do_not_verify_are_problems(
        self, tmp_path: Path, witnessed: list[Witnessed], nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A witnessed file whose countersignature is not BE-FPJ's is itself reported."""
        forged = countersign(witnessed[0].checkpoint, "BE-FPJ", nl_keys.signing, AT)
        report = self._check(tmp_path / "a", [forged], nl_keys, be_keys)
        assert "witnessed by BE-FPJ is countersigned" in report.problems[0]

    def test_another_log_is_named(
        self, tmp_path: Path, witnessed: list[Witnessed], nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A log replaced from its first entry matches none of the witnessed checkpoints."""
        log = AuditLog.open(tmp_path / "c", nl_keys.signing, now=lambda: NOW + timedelta(days=1))
        log.close()
        report = self._check(tmp_path / "c", witnessed, nl_keys, be_keys)
        assert "belongs to this log" in report.problems[0]


class TestCli:
    def test_verify_with_witnessed(
        self,
        tmp_path: Path,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """'fxgw audit verify --witnessed' exits 0 on the witnessed log, 1 once its tail is
        cut (head file rewritten to match), naming the seq and the witness."""
        folder = tmp_path / "a"
        _log(folder, nl_keys.signing, 20)
        records = [countersign(c, "BE-FPJ", be_keys.signing, AT) for c in _checkpoints(folder)]
        w = tmp_path / "w.json"
        w.write_bytes(export_witnessed("BE-FPJ", "NL-POL", records, AT))
        assert records == parse_export(w.read_bytes())
        public = base64.b64encode(nl_keys.signing.public).decode()
        key = f"--key={nl_keys.signing.key_id}={public}"
        assert EXIT_OK == main(["audit", "verify", str(folder), key, "--witnessed", str(w)])
        _cut_to_first_segment(folder)
        capsys.readouterr()
        assert EXIT_OK == main(["audit", "verify", str(folder), key])  # alone it looks intact
        assert EXIT_REJECTED == main(["audit", "verify", str(folder), key, "--witnessed", str(w)])
        out = capsys.readouterr().out
        assert "the log was cut: it ends at seq 10" in out and "BE-FPJ witnessed" in out


def _cut_to_first_segment(folder: Path) -> None:
    """Delete every segment but the first and rewrite the head file to its closing
    checkpoint: a cut the log alone cannot show."""
    for path in sorted(folder.glob("audit-*.jsonl"))[1:]:
        path.unlink()
    lines = split_lines((folder / "audit-000001.jsonl").read_bytes())
    head = Head("audit-000001.jsonl", len(lines), lines[-1])
    (folder / HEAD_FILE).write_bytes(head.to_bytes())
