"""The audit trail: chain, checkpoints, crash recovery, rotation, tamper detection and export."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import (
    GENESIS,
    Entry,
    EntryError,
    Head,
    checkpoint_data,
    make_entry,
    parse_head,
    parse_line,
    split_lines,
    verify,
)
from gateway.audit.store import HEAD_FILE, AuditLog, export, verify_export, verify_folder
from gateway.cli.main import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, main
from gateway.crypto.keys import SigningKey, generate_signing_key
from gateway.dev.sandbox import Federation
from gateway.errors import StorageError
from gateway.types import KeyId

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SIGNER = generate_signing_key(KeyId("NL-POL/sign/test"))
KEYS = {SIGNER.key_id: SIGNER.public}
FXGW = Path(sys.executable).with_name("fxgw")


def _clock() -> Callable[[], datetime]:
    """A clock that moves on by 1 ms at each reading."""
    ticks = iter(range(10**9))
    return lambda: T0 + timedelta(milliseconds=next(ticks))


def _open(folder: Path, **kwargs: int) -> AuditLog:
    return AuditLog.open(folder, SIGNER, now=_clock(), **kwargs)


def _release(i: int) -> dict[str, object]:
    return {
        "message_id": f"m-{i}",
        "recipient": "BE-FPJ",
        "withheld": ["serial_number"],
        "retention_days": 30,
        "urgent": False,
        "reason": None,
    }


def _write_log(folder: Path, entries: int, *, close: bool = True, **kwargs: int) -> AuditLog:
    log = _open(folder, **kwargs)
    for i in range(entries):
        log.append("release", _release(i))
        log.sync()  # as a node does after each batch: due checkpoints and rotations happen here
    if close:
        log.close()
    else:
        log.sync()
    return log


def _seg(folder: Path, number: int) -> Path:
    return folder / f"audit-{number:06d}.jsonl"


def _lines(path: Path) -> list[bytes]:
    return split_lines(path.read_bytes())


def _put(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _entries(folder: Path) -> list[Entry]:
    return [parse_line(line) for p in sorted(folder.glob("audit-*.jsonl")) for line in _lines(p)]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """A closed log of 3 segments: checkpoints every 4 entries, 8 entries per segment."""
    folder = tmp_path / "audit"
    _write_log(folder, 16, checkpoint_every=4, segment_entries=8)
    assert 3 == len(list(folder.glob("audit-*.jsonl")))
    return folder


class TestEntry:
    """Canonical encoding, hashing and parsing of one entry."""

    def test_round_trip(self) -> None:
        """A line parses back to the entry it was made from, whose hash matches its contents."""
        entry = make_entry(1, "2026-11-28T12:00:00.000Z", "release", _release(1), GENESIS)
        assert entry == parse_line(entry.to_line())
        assert entry.hash == entry.content_hash()

    def test_line_is_canonical_json(self) -> None:
        """Sorted keys, no spaces, raw UTF-8, one trailing newline."""
        entry = make_entry(3, "2026-11-28T12:00:00.000Z", "rejection", {"r": "Ünïcode"}, GENESIS)
        line = entry.to_line()
        document = json.loads(line)
        assert line.endswith(b"}\n") and line.count(b"\n") == 1
        assert ["at", "data", "hash", "kind", "prev", "seq"] == list(document)
        assert b" " not in line and "Ünïcode".encode() in line

    @settings(max_examples=300, deadline=None)
    @given(
        seq=st.integers(min_value=1, max_value=2**63),
        kind=st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True),
        prev=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        data=st.dictionaries(
            st.text(),
            st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.text(), max_size=3),
            max_size=5,
        ),
    )
    def test_line_and_hash_are_the_plain_canonical_form(
        self, seq: int, kind: str, prev: str, data: dict[str, object]
    ) -> None:
        """The entry is encoded in pieces (its data once, for both hash and line); the result is
        exactly json.dumps(sort_keys, no spaces, raw UTF-8) of the whole entry, so logs written
        before and after verify alike."""
        surrogate = any(
            "\ud800" <= c <= "\udfff" for v in (*data, *map(str, data.values())) for c in v
        )
        if surrogate:
            with pytest.raises(ValueError):
                make_entry(seq, "2026-11-28T12:00:00.000Z", kind, data, prev)
            return
        entry = make_entry(seq, "2026-11-28T12:00:00.000Z", kind, data, prev)
        document = {"seq": seq, "at": entry.at, "kind": kind, "data": data, "prev": prev}

        def plain(d: dict[str, object]) -> bytes:
            return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

        assert entry.hash == hashlib.sha256(b"fxgw.audit.v1\x00" + plain(document)).hexdigest()
        assert entry.to_line() == plain({**document, "hash": entry.hash}) + b"\n"
        assert entry.to_line() == parse_line(entry.to_line()).to_line()
        assert entry.hash == parse_line(entry.to_line()).content_hash()

    @pytest.mark.parametrize(
        "data",
        [
            {"nested": {"field": "value"}},
            {"number": 1.5},
            {"list": [1, 2]},
            {1: "key is not a string"},
            {"bytes": b"raw"},
            {"surrogate": "\ud800"},
        ],
    )
    def test_non_metadata_is_refused(self, data: dict[object, object]) -> None:
        """Only str, int, bool, None and lists of str under str keys go into an entry."""
        with pytest.raises(ValueError):
            make_entry(1, "2026-11-28T12:00:00.000Z", "release", data, GENESIS)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "line",
        [b"not json\n", b"[]\n", b'{"seq": 1}\n', b"\xff\xfe\n"],
    )
    def test_a_line_that_is_no_entry_is_an_entry_error(self, line: bytes) -> None:
        """parse_line says clearly why a line is not an entry."""
        with pytest.raises(EntryError):
            parse_line(line)

    def test_checkpoint_signs_the_head(self) -> None:
        """A checkpoint's data names the head's seq and hash and the signing key."""
        head = make_entry(7, "2026-11-28T12:00:00.000Z", "release", {}, GENESIS)
        data = checkpoint_data(head, SIGNER)
        assert (7, head.hash, "NL-POL/sign/test") == (
            data["head_seq"],
            data["head_hash"],
            data["key_id"],
        )
        assert 64 == len(base64.b64decode(str(data["signature"])))


class TestAuditLog:
    """Append, sync, checkpoint, close and reopen; crash recovery; rotation."""

    def test_untouched_log_verifies(self, tmp_path: Path) -> None:
        """A log written and closed verifies, every entry covered by a checkpoint."""
        folder = tmp_path / "audit"
        _write_log(folder, 10)
        report = verify_folder(folder, KEYS)
        assert report.ok, report.problem
        assert (1, 12, 0) == (report.first_seq, report.last_seq, report.unsigned_tail)
        assert ("NL-POL/sign/test",) == report.key_ids
        assert 0o700 == folder.stat().st_mode & 0o777
        assert {0o600} == {p.stat().st_mode & 0o777 for p in folder.iterdir()}

    def test_reopen_continues_the_chain(self, tmp_path: Path) -> None:
        """After a restart, seq and prev go on from the last entry; the log still verifies."""
        folder = tmp_path / "audit"
        _write_log(folder, 3)
        with _open(folder) as log:
            entry = log.append("delivery", {"message_id": "m-9"})
        before = _entries(folder)[entry.seq - 2]
        assert before.hash == entry.prev and before.seq + 1 == entry.seq
        assert verify_folder(folder, KEYS).ok

    def test_append_refuses_non_metadata_and_structural_kinds(self, tmp_path: Path) -> None:
        """A dict value, or a kind only the log writes, is refused and nothing is written."""
        with _open(tmp_path / "audit") as log:
            with pytest.raises(ValueError, match="not metadata"):
                log.append("release", {"record": {"serial_number": "X123"}})
            with pytest.raises(ValueError, match="written by the audit log itself"):
                log.append("checkpoint", {})
        assert "X123" not in (tmp_path / "audit" / "audit-000001.jsonl").read_text()

    def test_a_second_open_of_the_same_folder_is_refused(self, tmp_path: Path) -> None:
        """Only one process (or node) writes a log at a time."""
        with _open(tmp_path / "audit"), pytest.raises(StorageError, match="another process"):
            _open(tmp_path / "audit")

    def test_checkpoints_come_every_n_entries(self, tmp_path: Path) -> None:
        """With checkpoint_every=5, a checkpoint follows every fifth entry."""
        folder = tmp_path / "audit"
        log = _write_log(folder, 12, close=False, checkpoint_every=5)
        log.close()
        kinds = [e.kind for e in _entries(folder)]
        assert [5, 11, 15] == [i for i, k in enumerate(kinds) if k == "checkpoint"]

    def test_torn_last_line_is_cut_and_recorded(self, tmp_path: Path) -> None:
        """A crash mid-write leaves half a line: reopening cuts it, records how many bytes went,
        and the log verifies again."""
        folder = tmp_path / "audit"
        _write_log(folder, 5, close=False).close()
        torn = make_entry(99, "2026-11-28T12:00:00.000Z", "release", {}, GENESIS).to_line()[:40]
        with _seg(folder, 1).open("ab") as f:
            f.write(torn)
        broken = verify_folder(folder, KEYS)
        assert not broken.ok and broken.problem is not None
        assert "incomplete" in broken.problem.what
        with _open(folder):
            pass
        recovered = [e for e in _entries(folder) if e.kind == "recovered"]
        assert [{"segment": "audit-000001.jsonl", "bytes_cut": 40}] == [
            {k: e.data[k] for k in ("segment", "bytes_cut")} for e in recovered
        ]
        assert verify_folder(folder, KEYS).ok

    def test_crash_before_close_leaves_an_unsigned_tail(self, tmp_path: Path) -> None:
        """Entries synced after the last checkpoint verify, but are reported as not covered."""
        folder = tmp_path / "audit"
        log = _write_log(folder, 7, close=False, checkpoint_every=5)
        crashed = tmp_path / "crashed"
        shutil.copytree(folder, crashed)  # the disk as a crash leaves it (no final checkpoint)
        log.close()
        report = verify_folder(crashed, KEYS)
        assert report.ok, report.problem
        assert (6, 3) == (report.last_checkpoint_seq, report.unsigned_tail)
        assert "3 entries after the last checkpoint (seq 6)" in "\n".join(report.summary())
        with _open(crashed) as reopened:
            reopened.append("delivery", {"message_id": "m-after"})
        assert verify_folder(crashed, KEYS).ok

    def test_crash_between_rotation_and_segment_start(self, log_dir: Path, tmp_path: Path) -> None:
        """An empty newest segment (created, nothing written yet) is taken up on reopen."""
        crashed = tmp_path / "crashed"
        shutil.copytree(log_dir, crashed)
        _seg(crashed, 3).unlink()
        (crashed / HEAD_FILE).unlink()
        _seg(crashed, 3).write_bytes(b"")
        with _open(crashed) as log:
            log.append("delivery", {"message_id": "m-1"})
        report = verify_folder(crashed, KEYS)
        assert report.ok, report.problem
        assert "segment_start" == _entries(crashed)[-3].kind

    def test_rotation_across_segments_verifies(self, log_dir: Path) -> None:
        """Three segments, seq unbroken, each closed segment ends signed."""
        report = verify_folder(log_dir, KEYS)
        assert report.ok, report.problem
        entries = _entries(log_dir)
        assert list(range(1, len(entries) + 1)) == [e.seq for e in entries]
        starts = [e.data for e in entries if e.kind == "segment_start"]
        assert [None, "audit-000001.jsonl", "audit-000002.jsonl"] == [
            s["previous_segment"] for s in starts
        ]
        assert all(len(_lines(_seg(log_dir, n))) <= 10 for n in (1, 2))


def _problem(report_folder: Path) -> tuple[str, int | None, str]:
    report = verify_folder(report_folder, KEYS)
    assert not report.ok and report.problem is not None
    return report.problem.segment, report.problem.line, report.problem.what


class TestTampering:
    """Each change is reported at its first place, in plain words."""

    def test_one_byte_edited(self, log_dir: Path) -> None:
        """A byte of an entry's data changed: that entry was altered."""
        path = _seg(log_dir, 2)
        lines = _lines(path)
        seq = parse_line(lines[2]).seq
        lines[2] = lines[2].replace(b"BE-FPJ", b"BE-FPK")
        _put(path, lines)
        segment, line, what = _problem(log_dir)
        assert ("audit-000002.jsonl", 3) == (segment, line)
        assert f"entry {seq} was altered (its hash does not match its contents)" == what

    def test_entry_deleted(self, log_dir: Path) -> None:
        """A line removed: the next line is reported, naming the missing seq."""
        path = _seg(log_dir, 2)
        lines = _lines(path)
        seq = parse_line(lines[3]).seq
        del lines[3]
        _put(path, lines)
        segment, line, what = _problem(log_dir)
        assert ("audit-000002.jsonl", 4) == (segment, line)
        assert (
            f"entry {seq} is missing or entries were reordered (expected seq {seq}, "
            f"found {seq + 1})"
        ) == what

    def test_two_entries_swapped(self, log_dir: Path) -> None:
        """Two neighbours swapped: the first of them is reported out of order."""
        path = _seg(log_dir, 1)
        lines = _lines(path)
        lines[1], lines[2] = lines[2], lines[1]
        _put(path, lines)
        segment, line, what = _problem(log_dir)
        assert ("audit-000001.jsonl", 2) == (segment, line)
        assert "entry 2 is missing or entries were reordered (expected seq 2, found 3)" == what

    def test_forged_entry_inserted(self, log_dir: Path) -> None:
        """An entry inserted with a correctly computed hash is caught by the next link."""
        path = _seg(log_dir, 2)
        lines = _lines(path)
        before = parse_line(lines[2])
        forged = make_entry(before.seq + 1, before.at, "release", _release(666), before.hash)
        lines.insert(3, forged.to_line())
        _put(path, lines)
        segment, line, what = _problem(log_dir)
        assert ("audit-000002.jsonl", 4) == (segment, line)
        assert what.startswith(f"an entry was inserted at line 4 (seq {forged.seq})")

    def test_forged_entry_inserted_and_chain_rebuilt(self, log_dir: Path) -> None:
        """Inserting and re-hashing every later entry still fails at the next checkpoint."""
        path = _seg(log_dir, 2)
        lines = _lines(path)
        entries = [parse_line(line) for line in lines]
        forged = make_entry(entries[1].seq + 1, entries[1].at, "release", {}, entries[1].hash)
        rebuilt, prev = [entries[0], entries[1], forged], forged
        for e in entries[2:]:
            data = dict(e.data)
            if e.kind == "checkpoint":
                data["head_seq"], data["head_hash"] = prev.seq, prev.hash
            elif e.kind == "segment_end":
                data["entries"] = int(str(data["entries"])) + 1
            prev = make_entry(prev.seq + 1, e.at, e.kind, data, prev.hash)
            rebuilt.append(prev)
        _put(path, [e.to_line() for e in rebuilt])
        first_checkpoint = next(i for i, e in enumerate(rebuilt) if e.kind == "checkpoint")
        segment, line, what = _problem(log_dir)
        assert ("audit-000002.jsonl", first_checkpoint + 1) == (segment, line)
        assert "signature does not verify" in what

    def test_entry_replaced_with_a_recomputed_hash(self, log_dir: Path) -> None:
        """An entry swapped for a forgery with the same seq and a valid hash of its own is
        caught where the next entry fails to link to it."""
        path = _seg(log_dir, 3)
        lines = _lines(path)
        original = parse_line(lines[2])
        forged = make_entry(original.seq, original.at, "release", _release(666), original.prev)
        lines[2] = forged.to_line()
        _put(path, lines)
        segment, line, what = _problem(log_dir)
        assert ("audit-000003.jsonl", 3) == (segment, line)
        assert what.startswith(f"entry {original.seq} was replaced")

    def test_tail_cut_including_a_checkpoint(self, log_dir: Path) -> None:
        """The last lines, with the last checkpoint, removed: the log was cut, and where."""
        path = _seg(log_dir, 3)
        lines = _lines(path)
        kept = lines[:-3]
        _put(path, kept)
        segment, line, what = _problem(log_dir)
        assert ("audit-000003.jsonl", len(kept) + 1) == (segment, line)
        assert what.startswith("the log was cut")

    def test_tail_cut_and_head_file_deleted(self, log_dir: Path) -> None:
        """Deleting the head file as well is reported: the log holds checkpoints but no head."""
        _put(_seg(log_dir, 3), _lines(_seg(log_dir, 3))[:-2])
        (log_dir / HEAD_FILE).unlink()
        segment, line, what = _problem(log_dir)
        assert (HEAD_FILE, None) == (segment, line)
        assert "missing" in what

    def test_damaged_head_file(self, log_dir: Path) -> None:
        """A head file whose checkpoint was edited no longer matches the log."""
        head = log_dir / HEAD_FILE
        head.write_bytes(head.read_bytes().replace(b'\\"head_seq\\":', b'\\"head_seq\\": '))
        segment, _, what = _problem(log_dir)
        assert "audit-000003.jsonl" == segment
        assert "differs from the checkpoint the head file recorded" in what

    def test_cut_back_to_an_earlier_checkpoint_with_its_head_is_not_detected(
        self, log_dir: Path
    ) -> None:
        """The limit: whoever cuts the log back to an earlier checkpoint *and* rewrites the head
        file to match leaves a log that verifies; only a copy held elsewhere shows the cut."""
        path = _seg(log_dir, 3)
        lines = _lines(path)
        index = max(i for i, line in enumerate(lines[:-1]) if b'"kind":"checkpoint"' in line)
        _put(path, lines[: index + 1])
        head = Head(path.name, index + 1, lines[index])
        (log_dir / HEAD_FILE).write_bytes(head.to_bytes())
        assert verify_folder(log_dir, KEYS).ok

    def test_middle_segment_deleted(self, log_dir: Path) -> None:
        """A whole segment removed from the middle is named."""
        _seg(log_dir, 2).unlink()
        segment, line, what = _problem(log_dir)
        assert ("audit-000003.jsonl", 1) == (segment, line)
        assert "segment audit-000002.jsonl is missing" in what

    def test_first_segment_deleted(self, log_dir: Path) -> None:
        """A node's folder holds its whole log: one that starts after the first segment (the
        beginning deleted) fails, naming where it starts. (An export of later segments still
        verifies from where it starts: test_export_of_one_segment.)"""
        _seg(log_dir, 1).unlink()
        segment, line, what = _problem(log_dir)
        assert ("audit-000002.jsonl", 1) == (segment, line)
        assert "the beginning of the log is missing" in what
        assert "follows audit-000001.jsonl" in what

    def test_end_of_a_middle_segment_cut(self, log_dir: Path) -> None:
        """A closed segment that lost its last lines is named, at the first line missing."""
        path = _seg(log_dir, 1)
        kept = _lines(path)[:-3]
        _put(path, kept)
        segment, line, what = _problem(log_dir)
        assert ("audit-000001.jsonl", len(kept) + 1) == (segment, line)
        assert what.startswith("the end of audit-000001.jsonl is missing")

    def test_checkpoint_signed_by_another_key(self, tmp_path: Path) -> None:
        """A checkpoint signed with another key, under our key id or its own, fails."""
        folder = tmp_path / "audit"
        other = generate_signing_key(KeyId("NL-POL/sign/test"))
        with AuditLog.open(folder, other, now=_clock()) as log:
            log.append("release", _release(1))
        segment, line, what = _problem(folder)
        assert ("audit-000001.jsonl", 3) == (segment, line)
        assert "signature does not verify" in what
        stranger = generate_signing_key(KeyId("XX-POL/sign/1"))
        report = verify_folder(folder, {stranger.key_id: stranger.public})
        assert report.problem is not None and "not a trusted key" in report.problem.what


@functools.cache
def _sample_log() -> tuple[tuple[tuple[str, tuple[bytes, ...]], ...], bytes]:
    """A closed log of three segments, as bytes, and its head file (built once)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "audit"
        _write_log(folder, 10, checkpoint_every=3, segment_entries=6)
        segments = tuple((p.name, tuple(_lines(p))) for p in sorted(folder.glob("audit-*.jsonl")))
        return segments, (folder / HEAD_FILE).read_bytes()


def _verify_sample(segments: list[tuple[str, list[bytes]]]) -> bool:
    return verify(segments, KEYS, head=parse_head(_sample_log()[1])).ok


class TestProperties:
    """Any single change anywhere is detected."""

    def test_sample_log_verifies(self) -> None:
        """The untouched sample verifies (the baseline of the properties below)."""
        segments, _ = _sample_log()
        assert 3 <= len(segments)
        assert _verify_sample([(n, list(ls)) for n, ls in segments])

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_any_byte_flip_is_detected(self, data: st.DataObject) -> None:
        """Changing any one byte of any line of any segment makes verification fail."""
        segments = [(n, list(ls)) for n, ls in _sample_log()[0]]
        s = data.draw(st.integers(0, len(segments) - 1))
        lines = segments[s][1]
        i = data.draw(st.integers(0, len(lines) - 1))
        j = data.draw(st.integers(0, len(lines[i]) - 1))
        new = data.draw(st.integers(0, 255).filter(lambda b: b != lines[i][j]))
        changed = bytearray(b"".join(lines))
        changed[sum(len(x) for x in lines[:i]) + j] = new
        segments[s] = (segments[s][0], split_lines(bytes(changed)))
        assert not _verify_sample(segments)

    @given(st.data())
    def test_removing_any_line_is_detected(self, data: st.DataObject) -> None:
        """Dropping any one line, the very last included, makes verification fail."""
        segments = [(n, list(ls)) for n, ls in _sample_log()[0]]
        s = data.draw(st.integers(0, len(segments) - 1))
        del segments[s][1][data.draw(st.integers(0, len(segments[s][1]) - 1))]
        assert not _verify_sample(segments)


class TestExport:
    """An export verifies on a machine that has nothing else."""

    def test_export_verifies_alone(self, log_dir: Path, tmp_path: Path) -> None:
        """Export, move the file to an empty folder, verify it with what it carries."""
        out = tmp_path / "export.json"
        assert 3 == len(export(log_dir, out, KEYS, agency="NL-POL"))
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        moved = shutil.move(out, elsewhere / "evidence.json")
        shutil.rmtree(log_dir)
        report = verify_export(Path(moved))
        assert report.ok, report.problem
        assert (1, 0) == (report.first_seq, report.unsigned_tail)

    def test_export_of_one_segment(self, log_dir: Path, tmp_path: Path) -> None:
        """A middle segment alone verifies, starting at its own first seq."""
        out = tmp_path / "seg2.json"
        export(log_dir, out, KEYS, segments=[2])
        report = verify_export(out)
        assert report.ok, report.problem
        assert report.first_seq is not None and report.first_seq > 1
        assert report.closed

    def test_tampered_export_fails(self, log_dir: Path, tmp_path: Path) -> None:
        """Editing a line inside the export is caught, naming segment and line."""
        out = tmp_path / "export.json"
        export(log_dir, out, KEYS)
        document = json.loads(out.read_text())
        document["segments"][0]["lines"][2] = document["segments"][0]["lines"][2].replace(
            "m-1", "m-7"
        )
        out.write_text(json.dumps(document))
        report = verify_export(out)
        assert report.problem is not None
        assert ("audit-000001.jsonl", 3) == (report.problem.segment, report.problem.line)

    def test_export_keys_can_be_overridden(self, log_dir: Path, tmp_path: Path) -> None:
        """A verifier who pins the agency's key from the trust list does not trust the export's."""
        out = tmp_path / "export.json"
        impostor = generate_signing_key(KeyId("NL-POL/sign/test"))
        export(log_dir, out, {impostor.key_id: impostor.public})
        assert not verify_export(out).ok
        assert verify_export(out, KEYS).ok


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FXGW), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _key_arg(key: SigningKey) -> str:
    return f"{key.key_id}={base64.b64encode(key.public).decode()}"


class TestCommand:
    """``fxgw audit export`` and ``fxgw audit verify``."""

    def test_export_then_verify_with_the_console_command(
        self, log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Export with --dir and --key; the console command verifies the file in an empty
        folder (exit 0), and reports a tampered copy with segment and line (exit 1)."""
        out = tmp_path / "export.json"
        args = ["audit", "export", "--dir", str(log_dir), "--key", _key_arg(SIGNER)]
        assert EXIT_OK == main([*args, "--out", str(out)])
        assert "exported 3 segment(s)" in capsys.readouterr().out
        alone = tmp_path / "alone"
        alone.mkdir()
        shutil.move(out, alone / "evidence.json")
        result = _run("audit", "verify", "evidence.json", cwd=alone)
        assert EXIT_OK == result.returncode, result.stdout + result.stderr
        assert "evidence.json: intact" in result.stdout
        document = json.loads((alone / "evidence.json").read_text())
        del document["segments"][1]["lines"][4]
        (alone / "evidence.json").write_text(json.dumps(document))
        result = _run("audit", "verify", "evidence.json", cwd=alone)
        assert EXIT_REJECTED == result.returncode
        assert "TAMPERED: audit-000002.jsonl:5: entry" in result.stdout

    def test_verify_a_folder_with_a_pinned_key(
        self, log_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A folder verifies with --key; with another key it is reported, exit 1."""
        assert EXIT_OK == main(["audit", "verify", str(log_dir), "--key", _key_arg(SIGNER)])
        other = generate_signing_key(KeyId("NL-POL/sign/test"))
        assert EXIT_REJECTED == main(["audit", "verify", str(log_dir), "--key", _key_arg(other)])
        assert "signature does not verify" in capsys.readouterr().out

    def test_verify_with_the_node_config(
        self, fed: Federation, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With -c, the folder is <state_dir>/audit and the keys are the agency's own."""
        from gateway.crypto.keys import load_signing_key
        from gateway.node.config import load_config

        config = load_config(fed.config("NL-POL"))
        folder = config.audit_dir
        existed = folder.exists()
        try:
            with AuditLog.open(folder, load_signing_key(config.keys.signing), now=_clock()) as log:
                log.append("release", _release(1))
            assert EXIT_OK == main(["audit", "verify", "-c", str(fed.config("NL-POL"))])
            assert f"{folder}: intact" in capsys.readouterr().out
        finally:
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)

    def test_an_export_with_a_swapped_key_fails_against_the_trust_list(
        self, fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A log rewritten and signed with an attacker's key carrying NL-POL's real key id, its
        export carrying that key: intact by the keys it carries, NOT INTACT by the keys the
        trust list holds for NL-POL (checked with -c of any node of the federation, or with
        --trust and the authority's key); a trust list not signed by that key is refused."""
        from gateway.crypto.keys import load_signing_key
        from gateway.node.config import load_config

        real = load_signing_key(load_config(fed.config("NL-POL")).keys.signing)
        exports = {}
        for name, signer in (
            ("genuine", real),
            ("forged", generate_signing_key(KeyId(real.key_id))),  # same id, another key
        ):
            folder = tmp_path / name
            with AuditLog.open(folder, signer, now=_clock()) as log:
                log.append("release", _release(1))
            exports[name] = tmp_path / f"{name}.json"
            export(folder, exports[name], {signer.key_id: signer.public}, agency="NL-POL")
        be = str(fed.config("BE-FPJ"))
        assert EXIT_OK == main(["audit", "verify", str(exports["forged"])])  # its own keys
        assert "anyone could have put them there" in capsys.readouterr().out
        assert EXIT_OK == main(["audit", "verify", str(exports["genuine"]), "-c", be])
        assert "in the federation trust list" in capsys.readouterr().out
        assert EXIT_REJECTED == main(["audit", "verify", str(exports["forged"]), "-c", be])
        out = capsys.readouterr().out
        assert "NOT INTACT" in out
        assert "signature does not verify" in out
        # an auditor without a node: the signed trust list and the authority's key
        assert fed.trust_file is not None and fed.authority is not None
        trust = ["--trust", str(fed.trust_file), "--authority-key", _key_arg(fed.authority)]
        assert EXIT_OK == main(["audit", "verify", str(exports["genuine"]), *trust])
        assert f"signing keys in {fed.trust_file}" in capsys.readouterr().out
        assert EXIT_REJECTED == main(["audit", "verify", str(exports["forged"]), *trust])
        assert "signature does not verify" in capsys.readouterr().out
        stranger = _key_arg(generate_signing_key(KeyId("authority/other")))
        forged_list = ["--trust", str(fed.trust_file), "--authority-key", stranger]
        assert EXIT_ERROR == main(["audit", "verify", str(exports["genuine"]), *forged_list])

    @pytest.mark.parametrize(
        "args",
        [
            ["audit", "verify", "/nonexistent/audit", "--key", _key_arg(SIGNER)],
            ["audit", "verify", "/nonexistent/audit"],
            ["audit", "export", "--out", "x.json"],
        ],
    )
    def test_usage_errors_exit_2(self, args: list[str]) -> None:
        """A missing folder, no keys, or no source: exit 2 with a message."""
        assert EXIT_ERROR == main(args)


class _FailingFsync:
    """os.fsync that fails from its ``start``-th call until ``healed`` is set."""

    def __init__(self, real: Callable[[int], None], start: int) -> None:
        self.real, self.start, self.calls, self.healed = real, start, 0, False

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if not self.healed and self.calls >= self.start:
            raise OSError(5, "Input/output error")
        self.real(fd)


class TestDiskFaults:
    """A failed fsync is never taken as success, and a retry repeats nothing."""

    def test_failed_fsync_is_written_again_then_verifies(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After a failed fsync the entries since the last good one are written again: each once."""
        folder = tmp_path / "audit"
        log = _open(folder, checkpoint_every=1000)
        log.append("release", _release(1))
        failing = _FailingFsync(os.fsync, start=1)
        monkeypatch.setattr("gateway.audit.store.os.fsync", failing)
        with pytest.raises(StorageError):
            log.sync()
        log.append("release", _release(2))
        failing.healed = True
        log.sync()
        log.close()
        ids = [e.data.get("message_id") for e in _entries(folder) if e.kind == "release"]
        assert ["m-1", "m-2"] == ids
        assert verify_folder(folder, KEYS).ok

    def test_rotation_interrupted_by_the_disk_keeps_the_chain(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An entry appended while a failed rotation waits lands in the next segment, and the
        whole log verifies (no entry after a segment's closing checkpoint)."""
        folder = tmp_path / "audit"
        log = _open(folder, checkpoint_every=1000, segment_entries=4)
        for i in range(3):
            log.append("release", _release(i))
        failing = _FailingFsync(os.fsync, start=2)  # the data sync passes, the rotation's fails
        monkeypatch.setattr("gateway.audit.store.os.fsync", failing)
        with pytest.raises(StorageError):
            log.sync()
        assert log.append("release", _release(99)) is None  # waits for the next segment
        failing.healed = True
        log.sync()
        log.close()
        report = verify_folder(folder, KEYS)
        assert report.ok, report.problem
        second = [parse_line(line) for line in _lines(_seg(folder, 2))]
        assert "m-99" in [e.data.get("message_id") for e in second]
