"""The audit log on disk: segment files, crash recovery, checkpoints, rotation, export.

Blocking file I/O, called from the node between two events. The chain itself (hashing,
checkpoint signatures, verification) is :mod:`gateway.audit.chain`.

A node's audit folder (mode 0700) holds:

- ``audit-000001.jsonl``, ``audit-000002.jsonl``, ...: the segments (mode 0600), one entry per
  line. Once a segment holds ``segment_entries`` entries, the next one is started: the old one is
  closed with a ``segment_end`` entry and a checkpoint that signs it, the new one opens with a
  ``segment_start`` entry naming the old one and its last seq and hash.
- ``audit-head.json``: a copy of the latest checkpoint and where it is, replaced atomically after
  each checkpoint is on disk, so that cutting the log back past a checkpoint is noticed.

Entries are buffered in memory and written as whole lines; :meth:`AuditLog.sync` writes and
fsyncs them (the node calls it before it commits a Kafka offset). A crash can leave a torn last
line: :meth:`AuditLog.open` cuts it off and records a ``recovered`` entry saying how many bytes
went, so the log verifies again and the cut is on the record.

An export (:func:`export`) is one JSON document a third party can verify with nothing else::

    {"format": "fxgw-audit-export-1", "agency": "NL-POL", "exported_at": "...Z",
     "public_keys": {"<key id>": "<base64 Ed25519 public key>"},
     "head": "<the text of audit-head.json>" or null,
     "segments": [{"name": "audit-000001.jsonl", "complete": true, "lines": ["<line>", ...]}]}

``lines`` are the segment's lines without their newline, exactly as on disk (the export is
ASCII JSON; bytes that are not UTF-8 travel as ``\\udcXX`` escapes). ``complete`` is false when
the segment's last line has no newline. ``head`` is present only when the export reaches the
log's last segment.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.audit.chain import (
    CHECKPOINT,
    GENESIS,
    HEAD_FILE,
    RECOVERED,
    SEGMENT_END,
    SEGMENT_START,
    STRUCTURAL_KINDS,
    Entry,
    EntryError,
    Head,
    Problem,
    Report,
    checkpoint_data,
    make_entry,
    parse_head,
    parse_line,
    segment_name,
    segment_number,
    split_lines,
    verify,
)
from gateway.crypto.keys import SigningKey
from gateway.errors import ConfigError, StorageError

EXPORT_FORMAT = "fxgw-audit-export-1"


def format_time(moment: datetime) -> str:
    """``moment`` (timezone-aware) as the audit's UTC time: ``2026-11-28T15:12:00.123Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _storage_error(path: Path, what: str, exc: OSError, *, retriable: bool = True) -> StorageError:
    error = StorageError(f"{path}: {what}: {exc.strerror or exc}")
    error.retriable = retriable
    return error


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])


def replace_file(path: Path, data: bytes) -> None:
    """Put ``data`` in ``path`` (mode 0600) atomically: written to a temporary file beside it,
    fsynced, renamed over it, and the folder fsynced.

    :raises OSError: the disk refused (the temporary file is removed).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _segments(folder: Path) -> list[int]:
    numbers = (segment_number(p.name) for p in folder.iterdir() if p.is_file())
    return sorted(n for n in numbers if n is not None)


class AuditLog:
    """An open audit log: append entries, sync them, checkpoint, close.

    Open it with :meth:`open`. One process at a time: the folder is locked while it is open.
    """

    def __init__(
        self,
        folder: Path,
        signer: SigningKey,
        now: Callable[[], datetime],
        checkpoint_every: int,
        segment_entries: int,
        lock_fd: int,
    ) -> None:
        self._folder = folder
        self._signer = signer
        self._now = now
        self._checkpoint_every = checkpoint_every
        self._segment_entries = segment_entries
        self._lock_fd: int | None = lock_fd
        self._fd: int | None = None
        self._number = 0
        self._lines = 0
        self._pending = bytearray()
        """Entries appended but not yet written to the segment."""
        self._unsynced = bytearray()
        """Entries written to the segment since its last successful fsync: after a failed fsync
        the kernel may have dropped them, so they are written again from here."""
        self._synced_size = 0
        self._broken = False
        self._last: Entry | None = None
        self._last_checkpoint: Entry | None = None
        self._log_id: str | None = None
        self._since_checkpoint = 0
        self._due_checkpoint = False
        self._due_rotate = False
        self._due_head: Head | None = None
        self._ended = False
        self._written = 0
        self._deferred: list[tuple[str, Mapping[str, object]]] = []
        """Entries appended while a rotation is half done (the old segment is closed, the new
        one not yet started): they go into the new segment once it is."""

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        folder: Path,
        signer: SigningKey,
        *,
        now: Callable[[], datetime],
        checkpoint_every: int = 100,
        segment_entries: int = 10_000,
    ) -> AuditLog:
        """Open (or start) the audit log in ``folder`` and continue its chain.

        A torn or unreadable last line of the last segment (a crash mid-write) is cut off and a
        ``recovered`` entry records how many bytes were cut. A rotation that a crash interrupted
        is finished.

        :raises StorageError: the folder cannot be created, read or locked (another process has
            the log open), or the last entry cannot be read even after the torn line is cut.
        :raises ValueError: ``checkpoint_every`` or ``segment_entries`` is below 1.
        """
        if checkpoint_every < 1 or segment_entries < 1:
            raise ValueError("checkpoint_every and segment_entries must be at least 1")
        try:
            if not folder.exists():
                folder.mkdir(mode=0o700, parents=True)
                folder.chmod(0o700)
            lock_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise _storage_error(folder, "cannot open the audit folder", exc) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            raise _storage_error(
                folder, "the audit log is open in another process", exc, retriable=False
            ) from exc
        log = cls(folder, signer, now, checkpoint_every, segment_entries, lock_fd)
        try:
            log._recover()
        except BaseException:
            log._release()
            raise
        return log

    def _recover(self) -> None:
        try:
            numbers = _segments(self._folder)
        except OSError as exc:
            raise _storage_error(self._folder, "cannot list the audit folder", exc) from exc
        if not numbers:
            self._start_segment(1)
            self.sync()
            return
        number = numbers[-1]
        path = self._folder / segment_name(number)
        lines, cut = self._repair(path)
        if not lines:
            if number == 1:
                self._start_segment(1)
            else:
                self._continue_after(number - 1)
                self._start_segment(number)
        else:
            self._resume(number, lines)
        if cut is not None:
            self._write(
                RECOVERED,
                {
                    "segment": path.name,
                    "bytes_cut": len(cut),
                    "cut_sha256": hashlib.sha256(cut).hexdigest(),
                },
            )
        self.sync()

    def _repair(self, path: Path) -> tuple[list[bytes], bytes | None]:
        """The complete lines of the last segment, after cutting off a torn last line."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _storage_error(path, "cannot read the audit segment", exc) from exc
        lines = split_lines(data)
        cut: bytes | None = None
        if lines and not lines[-1].endswith(b"\n"):
            cut = lines.pop()
        elif lines:
            try:
                parse_line(lines[-1])
            except EntryError:
                cut = lines.pop()
        if cut is not None:
            try:
                with path.open("r+b") as f:
                    f.truncate(len(data) - len(cut))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise _storage_error(path, "cannot cut the torn last line", exc) from exc
        return lines, cut

    def _parse_last(self, path: Path, line: bytes) -> Entry:
        try:
            return parse_line(line)
        except EntryError as exc:
            raise StorageError(
                f"{path}: the last entry cannot be read ({exc}); the chain cannot be continued. "
                "Run 'fxgw audit verify' on the folder and move the damaged segment away"
            ) from exc

    def _continue_after(self, number: int) -> None:
        """Take up the chain at the end of segment ``number``, which must be closed."""
        path = self._folder / segment_name(number)
        try:
            lines = split_lines(path.read_bytes())
        except OSError as exc:
            raise _storage_error(path, "cannot read the audit segment", exc) from exc
        if len(lines) < 2 or parse_line_kind(lines[-2]) != SEGMENT_END:
            raise StorageError(
                f"{path}: the segment after it is empty, but this one is not closed; run "
                "'fxgw audit verify' on the folder"
            )
        last = self._parse_last(path, lines[-1])
        self._last, self._number, self._lines = last, number, len(lines)
        self._last_checkpoint = last

    def _resume(self, number: int, lines: list[bytes]) -> None:
        path = self._folder / segment_name(number)
        last = self._parse_last(path, lines[-1])
        self._last, self._number, self._lines = last, number, len(lines)
        self._since_checkpoint = len(lines)
        for index in range(len(lines) - 1, -1, -1):
            if parse_line_kind(lines[index]) == CHECKPOINT:
                self._last_checkpoint = parse_line(lines[index])
                self._since_checkpoint = len(lines) - 1 - index
                if not (self._folder / HEAD_FILE).exists():
                    self._write_head(Head(path.name, index + 1, lines[index]))
                break
        closed = (
            last.kind == CHECKPOINT
            and len(lines) >= 2
            and parse_line_kind(lines[-2]) == SEGMENT_END
        )
        if closed:
            self._start_segment(number + 1)
            return
        self._open_segment(number)
        if last.kind == SEGMENT_END:
            self._checkpoint()
            self._start_segment(number + 1)

    # --- writing ---------------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """The audit folder."""
        return self._folder

    @property
    def last(self) -> Entry | None:
        """The newest entry (written or still buffered)."""
        return self._last

    @property
    def last_checkpoint(self) -> Entry | None:
        """The newest checkpoint on disk (None until the first is written)."""
        return self._last_checkpoint

    @property
    def log_id(self) -> str | None:
        """The hash of the log's first entry, which names this log among an agency's (each
        replica keeps its own); None when the first segment cannot be read."""
        if self._log_id is None:
            path = self._folder / segment_name(1)
            with contextlib.suppress(OSError, EntryError), path.open("rb") as f:
                self._log_id = parse_line(f.readline()).hash
        return self._log_id

    @property
    def written(self) -> int:
        """Entries written since the log was opened (checkpoints and segment starts included)."""
        return self._written

    @property
    def segment(self) -> Path:
        """The segment being written."""
        return self._folder / segment_name(self._number)

    def append(self, kind: str, data: Mapping[str, object]) -> Entry | None:
        """Add an entry (buffered; :meth:`sync` makes it durable) and return it; None while a
        rotation that a disk fault interrupted is unfinished (the entry then follows the next
        segment's start, once a sync finishes the rotation).

        Checkpoints and rotation happen on their own, as configured, at the next :meth:`sync`
        (so that appending never fails for the sake of a checkpoint).

        :raises ValueError: ``data`` is not metadata (see
            :func:`gateway.audit.chain.make_entry`), or ``kind`` is one the log writes itself
            (checkpoint, segment_start, ...).
        :raises StorageError: the segment cannot be written.
        :raises RuntimeError: the log is closed.
        """
        if kind in STRUCTURAL_KINDS:
            raise ValueError(f"'{kind}' entries are written by the audit log itself")
        if self._ended:
            make_entry(1, format_time(self._now()), kind, data, GENESIS)  # metadata only
            self._deferred.append((kind, dict(data)))
            return None
        entry = self._write(kind, data)
        if self._since_checkpoint >= self._checkpoint_every:
            self._due_checkpoint = True
        if self._lines >= self._segment_entries:
            self._due_rotate = True
        return entry

    def sync(self) -> None:
        """Write what is buffered and fsync it; then do the checkpoint, head update or rotation
        that is due.

        After a failed write or fsync nothing is taken as durable: the next call truncates the
        segment back to its last synced size and writes everything since again from memory, so
        calling again after an error is always right.

        :raises StorageError: the disk refused (retriable: call again).
        """
        self._sync_data()
        if self._due_head is not None:
            self._write_head(self._due_head)
        if self._due_rotate:
            self._rotate()
        elif self._due_checkpoint:
            self._checkpoint()
        if self._pending:  # entries a finished rotation wrote into the new segment
            self._sync_data()

    def _sync_data(self) -> None:
        if self._fd is None:
            return
        try:
            if self._broken:
                self._rewrite()
            self._flush()
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = True
            raise _storage_error(self.segment, "cannot make the audit log durable", exc) from exc
        self._synced_size += len(self._unsynced)
        self._unsynced.clear()

    def _rewrite(self) -> None:
        """Reopen the segment, cut it back to what was last synced, and write the rest again."""
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = os.open(self.segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, self._synced_size)
        _write_all(self._fd, self._unsynced)
        self._broken = False

    def checkpoint(self) -> Entry:
        """Sign the chain's head with a checkpoint entry and make everything durable.

        Returns the checkpoint (the newest one when nothing came after it).

        :raises StorageError: the segment or the head file cannot be written.
        :raises RuntimeError: the log is closed.
        """
        return self._checkpoint()

    def use_signer(self, signer: SigningKey) -> None:
        """Sign the checkpoints from now on with ``signer`` (the node's signing key was
        rotated). Checkpoint first what was written under the key in force (:meth:`checkpoint`),
        so that each checkpoint is signed by the key in force when its entries were written;
        a verifier then needs every signing key the agency used (the trust list keeps them
        listed, revoked or not)."""
        self._signer = signer

    def close(self) -> None:
        """Checkpoint what is not yet covered, sync and close. Closing twice is harmless.

        :raises StorageError: the last writes failed.
        """
        if self._fd is None and not self._ended:
            self._release()
            return
        try:
            if self._ended:  # finish the interrupted rotation, so deferred entries are kept
                self._rotate()
            self._checkpoint()
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = None
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the lock
            self._lock_fd = None

    def _write(self, kind: str, data: Mapping[str, object]) -> Entry:
        if self._fd is None:
            raise RuntimeError("the audit log is closed")
        last = self._last
        entry = make_entry(
            last.seq + 1 if last else 1,
            format_time(self._now()),
            kind,
            data,
            last.hash if last else GENESIS,
        )
        self._pending += entry.to_line()
        self._last = entry
        self._lines += 1
        self._written += 1
        self._since_checkpoint += 1
        return entry

    def _flush(self) -> None:
        """Write the pending entries to the segment (they stay in memory until synced)."""
        assert self._fd is not None
        pending, self._pending = self._pending, bytearray()
        self._unsynced += pending
        try:
            _write_all(self._fd, pending)
        except OSError:
            self._broken = True  # a partial write: the rewrite starts from the synced size
            raise

    def _checkpoint(self) -> Entry:
        last = self._last
        assert last is not None  # a log always holds its segment_start
        if last.kind == CHECKPOINT:
            self._sync_data()
            if self._due_head is not None:
                self._write_head(self._due_head)
            self._last_checkpoint = last
            return last
        entry = self._write(CHECKPOINT, checkpoint_data(last, self._signer))
        self._since_checkpoint = 0
        self._due_checkpoint = False
        self._due_head = Head(self.segment.name, self._lines, entry.to_line())
        self._sync_data()
        self._last_checkpoint = entry  # durable now: it may be published
        self._write_head(self._due_head)
        return entry

    def _write_head(self, head: Head) -> None:
        path = self._folder / HEAD_FILE
        try:
            replace_file(path, head.to_bytes())
        except OSError as exc:
            raise _storage_error(path, "cannot write the audit head", exc) from exc
        if self._due_head == head:
            self._due_head = None

    def _rotate(self) -> None:
        # each step may fail and be tried again at the next sync; none is done twice
        if not self._ended:
            name, following = self.segment.name, segment_name(self._number + 1)
            self._write(
                SEGMENT_END,
                {"segment": name, "entries": self._lines + 1, "next_segment": following},
            )
            self._ended = True
        self._checkpoint()
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._start_segment(self._number + 1)
        self._ended = False
        self._due_rotate = False
        deferred, self._deferred = self._deferred, []
        for kind, data in deferred:
            self._write(kind, data)

    def _open_segment(self, number: int) -> None:
        path = self._folder / segment_name(number)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._synced_size = os.fstat(self._fd).st_size
            _fsync_dir(self._folder)
        except OSError as exc:
            raise _storage_error(path, "cannot open the audit segment", exc) from exc
        self._number = number
        self._unsynced.clear()
        self._broken = False

    def _start_segment(self, number: int) -> None:
        """Open segment ``number`` (new or empty) and write its ``segment_start`` entry."""
        last = self._last
        self._open_segment(number)
        self._lines = 0
        self._write(
            SEGMENT_START,
            {
                "segment": segment_name(number),
                "previous_segment": segment_name(number - 1) if last else None,
                "previous_last_seq": last.seq if last else None,
                "previous_last_hash": last.hash if last else None,
            },
        )


def parse_line_kind(line: bytes) -> str | None:
    """The kind of the entry on ``line``, or None when the line is not an entry."""
    try:
        return parse_line(line).kind
    except EntryError:
        return None


def read_entries(folder: Path) -> list[Entry]:
    """Every complete entry of the log in ``folder``, in order, without verifying the chain
    (for views such as ``fxgw status``; ``fxgw audit verify`` judges integrity). A line being
    written by the node at that moment is skipped.

    :raises ConfigError: ``folder`` is not an audit folder or cannot be read.
    """
    segments, _ = _read_folder(folder)
    entries: list[Entry] = []
    for _, lines in segments:
        for line in lines:
            with contextlib.suppress(EntryError):
                entries.append(parse_line(line))
    return entries


# --- verification and export ---------------------------------------------------------------------


def _read_folder(folder: Path) -> tuple[list[tuple[str, list[bytes]]], bytes | None]:
    if not folder.is_dir():
        raise ConfigError("not an audit folder (it does not exist)", file=str(folder))
    try:
        numbers = _segments(folder)
        segments = [
            (segment_name(n), split_lines((folder / segment_name(n)).read_bytes())) for n in numbers
        ]
        head_path = folder / HEAD_FILE
        head = head_path.read_bytes() if head_path.exists() else None
    except OSError as exc:
        raise ConfigError(f"cannot read the audit log: {exc.strerror}", file=str(folder)) from exc
    if not segments:
        raise ConfigError("no audit segments (audit-*.jsonl) in this folder", file=str(folder))
    if len(segments) > 1 and not segments[-1][1]:
        segments.pop()  # a crash between creating a segment and writing its first entry
    return segments, head


def _verify_with_head(
    segments: list[tuple[str, list[bytes]]],
    public_keys: Mapping[str, bytes],
    head_raw: bytes | None,
    *,
    head_required: bool,
) -> Report:
    if head_raw is None:
        report = verify(segments, public_keys, from_start=head_required)
        if report.ok and report.checkpoints and head_required:
            return _fail(
                report,
                Problem(
                    HEAD_FILE,
                    None,
                    None,
                    f"{HEAD_FILE} is missing, though the log holds checkpoints: it was deleted, "
                    "so a cut at the end of the log could go unnoticed",
                ),
            )
        return report
    try:
        head = parse_head(head_raw)
    except EntryError as exc:
        report = verify(segments, public_keys, from_start=head_required)
        return _fail(report, Problem(HEAD_FILE, None, None, f"the head file is damaged: {exc}"))
    return verify(segments, public_keys, head=head, from_start=head_required)


def _fail(report: Report, problem: Problem) -> Report:
    return replace(report, ok=False, problem=problem)


def verify_folder(folder: Path, public_keys: Mapping[str, bytes]) -> Report:
    """Verify a node's audit folder (all its segments and its head file).

    :raises ConfigError: the folder does not exist, cannot be read, or holds no segments.
    """
    segments, head = _read_folder(folder)
    return _verify_with_head(segments, public_keys, head, head_required=True)


def export(
    folder: Path,
    out: Path,
    public_keys: Mapping[str, bytes],
    *,
    agency: str | None = None,
    segments: Sequence[int] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Write an export of the log (or of the segments numbered ``segments``) to ``out``.

    ``public_keys`` are the keys a third party verifies the checkpoints with (key id to 32-byte
    Ed25519 public key); give every key that signed a checkpoint in the segments. The file is
    written atomically with mode 0600. Returns the names of the segments exported.

    :raises ConfigError: the folder is not an audit folder, or a segment asked for is not there.
    :raises StorageError: ``out`` cannot be written.
    """
    found, head = _read_folder(folder)
    by_number = {segment_number(name): (name, lines) for name, lines in found}
    wanted = sorted(set(segments)) if segments else sorted(n for n in by_number if n is not None)
    missing = [n for n in wanted if n not in by_number]
    if missing:
        raise ConfigError(
            f"no segment {', '.join(segment_name(n) for n in missing)} in this folder",
            file=str(folder),
        )
    chosen = [by_number[n] for n in wanted]
    reaches_end = wanted[-1] == max(n for n in by_number if n is not None)
    document = {
        "format": EXPORT_FORMAT,
        "agency": agency,
        "exported_at": format_time(now or datetime.now(UTC)),
        "public_keys": {k: base64.b64encode(v).decode("ascii") for k, v in public_keys.items()},
        "head": head.decode("utf-8", "surrogateescape") if head and reaches_end else None,
        "segments": [
            {
                "name": name,
                "complete": not lines or lines[-1].endswith(b"\n"),
                "lines": [
                    line.removesuffix(b"\n").decode("utf-8", "surrogateescape") for line in lines
                ],
            }
            for name, lines in chosen
        ],
    }
    data = (json.dumps(document, indent=1, ensure_ascii=True) + "\n").encode("ascii")
    try:
        replace_file(out, data)
    except OSError as exc:
        raise _storage_error(out, "cannot write the export", exc) from exc
    return [name for name, _ in chosen]


def _line_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")  # damaged beyond what we wrote: fails verification


def export_agency(path: Path) -> str | None:
    """The agency an export names as its writer (None: it names none).

    :raises ConfigError: not a readable JSON file.
    """
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"not a readable export: {exc}", file=str(path)) from exc
    agency = document.get("agency") if isinstance(document, dict) else None
    return agency if isinstance(agency, str) else None


def read_export(path: Path) -> tuple[dict[str, bytes], list[tuple[str, list[bytes]]], bytes | None]:
    """The public keys, the segments (as :func:`gateway.audit.chain.verify` takes them) and the head
    file of an export.

    :raises ConfigError: not a readable export file.
    """
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the export: {exc.strerror}", file=str(path)) from exc
    except ValueError as exc:
        raise ConfigError(f"not a JSON export: {exc}", file=str(path)) from exc
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"not an {EXPORT_FORMAT} file", file=str(path))
    try:
        keys = {
            str(k): base64.b64decode(v, validate=True) for k, v in document["public_keys"].items()
        }
        segments = []
        for segment in document["segments"]:
            lines = [_line_bytes(text) + b"\n" for text in segment["lines"]]
            if lines and segment["complete"] is False:
                lines[-1] = lines[-1].removesuffix(b"\n")
            segments.append((str(segment["name"]), lines))
        head = document.get("head")
        head_raw = _line_bytes(head) if isinstance(head, str) else None
    except (KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise ConfigError(
            f"malformed export ({type(exc).__name__}: {exc})", file=str(path)
        ) from exc
    bad = [k for k, v in keys.items() if len(v) != 32]
    if bad:
        raise ConfigError(f"public key {bad[0]} is not 32 bytes", file=str(path))
    return keys, segments, head_raw


def log_segments(path: Path) -> list[tuple[str, list[bytes]]]:
    """The segments of an audit folder or an export, as :func:`gateway.audit.chain.verify`
    takes them.

    :raises ConfigError: neither a readable audit folder nor a readable export.
    """
    return _read_folder(path)[0] if path.is_dir() else read_export(path)[1]


def verify_export(path: Path, public_keys: Mapping[str, bytes] | None = None) -> Report:
    """Verify an export written by :func:`export`, with the public keys it carries, or with
    ``public_keys`` when given (a verifier who holds the agency's keys from elsewhere).

    :raises ConfigError: not a readable export file.
    """
    carried, segments, head = read_export(path)
    if not segments:
        raise ConfigError("the export holds no segments", file=str(path))
    keys = carried if public_keys is None else public_keys
    return _verify_with_head(segments, keys, head, head_required=False)
