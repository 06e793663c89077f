"""The audit chain: entry hashing, chaining, checkpoint signing and verification. Pure.

An audit log is a sequence of entries, one canonical JSON object per line, split into segment
files (``audit-000001.jsonl``, ...; :mod:`gateway.audit.store` writes them). An entry holds metadata
only (ids, digests, reason codes), never an event's field values::

    {"at":"2026-11-28T15:12:00.123Z","data":{...},"hash":"<hex>","kind":"release","prev":"<hex>","seq":17}

- ``seq`` counts from 1 across the whole log and never resets at a segment boundary;
- ``prev`` is the ``hash`` of the entry before (64 zeros for the first entry of the log);
- ``hash`` is SHA-256 of ``fxgw.audit.v1\\0`` followed by the canonical bytes of the entry
  without its ``hash`` key (``json.dumps(sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)``, UTF-8). A line must be exactly the canonical encoding of its entry.

Structure the verifier insists on:

- every segment starts with a ``segment_start`` entry naming itself and the segment before it
  (with that segment's last seq and hash);
- a closed segment ends with a ``segment_end`` entry (its name, its entry count and the next
  segment's name) followed by a checkpoint that signs it, so the end of a closed segment cannot be
  cut or moved without breaking a signature;
- a ``checkpoint`` entry is an ordinary chain entry whose data is ``{"head_seq", "head_hash",
  "key_id", "signature"}``: an Ed25519 signature by the node's signing key over
  ``fxgw.audit.checkpoint.v1\\0`` + ``f"{head_seq}:{head_hash}"``, where the head is the entry
  right before the checkpoint. The signature vouches, through the chain, for every entry up to
  and including the head.

The node also keeps a copy of its latest checkpoint beside the segments (the *head*, see
:class:`Head`), so that cutting entries a checkpoint covered is noticed even when the cut takes
that checkpoint with it.

What :func:`verify` proves, and what it cannot:

- any change to the bytes of an entry, any entry removed, reordered or inserted (even with a
  correctly computed hash), a segment missing between two others, or the end of a closed segment
  cut, is reported at its first place (segment and line);
- whoever rewrites the chain from some entry on (recomputing every hash) is caught at the next
  checkpoint, which cannot be re-signed without the node's private key; the report then names
  that checkpoint and the range of entries it covers, not the exact entry changed;
- entries after the last checkpoint (``Report.unsigned_tail``) could be cut or rewritten without
  trace; the report says how many there are;
- a cut back to an earlier checkpoint (or the deletion of the newest segments) with the head
  file rewritten to match goes unnoticed here, and whoever holds the signing key can rewrite
  the log and sign it again, or forge a whole new one.

Those last two are what witnessed checkpoints (:mod:`gateway.audit.witness`) answer: other
agencies countersign and keep the node's published checkpoints, and
:func:`gateway.audit.witness.check_log` finds a log that ends before, or differs at, a witnessed
seq. Still unproven with them: the entries after the newest witnessed checkpoint, and a log
forged by the node and its witnesses together.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import nacl.exceptions
import nacl.signing

from gateway.crypto.keys import SigningKey

Value: TypeAlias = str | int | bool | list[str] | None
"""What an entry's data may hold: metadata scalars, or a list of strings."""

GENESIS = "0" * 64
"""The ``prev`` of the very first entry of a log."""

CHECKPOINT = "checkpoint"
SEGMENT_START = "segment_start"
SEGMENT_END = "segment_end"
RECOVERED = "recovered"
STRUCTURAL_KINDS = frozenset({CHECKPOINT, SEGMENT_START, SEGMENT_END, RECOVERED})

"""Kinds only the log itself writes; callers of the log may not append them."""

HEAD_FILE = "audit-head.json"
"""The file, beside the segments, that holds a copy of the latest checkpoint."""
HEAD_FORMAT = "fxgw-audit-head-1"

_ENTRY_DOMAIN = b"fxgw.audit.v1\x00"
_CHECKPOINT_DOMAIN = b"fxgw.audit.checkpoint.v1\x00"
_KEYS = frozenset({"seq", "at", "kind", "data", "prev", "hash"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SEGMENT = re.compile(r"audit-(\d{6,})\.jsonl")


class EntryError(ValueError):
    """A line is not a well-formed audit entry."""


def segment_name(number: int) -> str:
    """The file name of segment ``number`` (1-based), e.g. ``audit-000001.jsonl``."""
    return f"audit-{number:06d}.jsonl"


def segment_number(name: str) -> int | None:
    """The number of a segment file name, or None when ``name`` is not one."""
    match = _SEGMENT.fullmatch(name)
    return int(match.group(1)) if match else None


def split_lines(data: bytes) -> list[bytes]:
    """A segment's bytes as lines, each with its newline; a torn last line keeps none."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1].removesuffix(b"\n")
    return lines if lines[-1] else lines[:-1]


def _canonical(document: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not encodable as UTF-8: {exc.reason}") from exc


def _check_data(data: Mapping[str, object]) -> dict[str, Value]:
    checked: dict[str, Value] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"audit data keys must be strings, not {type(key).__name__}")
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"audit data '{key}': a list may hold strings only")
            checked[key] = list(value)
        elif value is None or isinstance(value, str | int | bool):
            checked[key] = value
        else:
            raise ValueError(
                f"audit data '{key}': {type(value).__name__} is not metadata "
                "(only str, int, bool, None or a list of str)"
            )
    return checked


@dataclass(frozen=True, slots=True)
class Entry:
    """One link of the chain."""

    seq: int
    at: str
    kind: str
    data: Mapping[str, Value]
    prev: str
    hash: str
    line: bytes = field(default=b"", compare=False, repr=False)
    """Its canonical line, when it was made here (:func:`make_entry`); read entries leave it
    empty, so that :meth:`to_line` encodes what was read."""

    def to_line(self) -> bytes:
        """The canonical line, with its trailing newline."""
        if self.line:
            return self.line
        head, tail = _halves(self.seq, self.at, self.kind, self.data, self.prev)
        return _joined(head, tail, self.hash)

    def content_hash(self) -> str:
        """The hash this entry's contents call for (equal to :attr:`hash` when untouched)."""
        return _hash_of(*_halves(self.seq, self.at, self.kind, self.data, self.prev))


def _halves(
    seq: int, at: str, kind: str, data: Mapping[str, Value], prev: str
) -> tuple[bytes, bytes]:
    """The canonical encoding of an entry without its hash, split where ``"hash"`` sorts in.

    Equal to :func:`_canonical` of ``{"seq", "at", "kind", "data", "prev"}`` (the keys sort as
    at, data, [hash,] kind, prev, seq), with the data encoded once for both the hash and the
    line; ``at``, ``kind`` and ``prev`` are checked by :func:`make_entry` to need no escaping.
    """
    head = b'{"at":"' + at.encode("ascii") + b'","data":' + _canonical(data)
    tail = f',"kind":"{kind}","prev":"{prev}","seq":{seq}}}'.encode("ascii")
    return head, tail


def _joined(head: bytes, tail: bytes, digest: str) -> bytes:
    return head + b',"hash":"' + digest.encode("ascii") + b'"' + tail + b"\n"


def _hash_of(head: bytes, tail: bytes) -> str:
    return hashlib.sha256(_ENTRY_DOMAIN + head + tail).hexdigest()


def make_entry(seq: int, at: str, kind: str, data: Mapping[str, object], prev: str) -> Entry:
    """A new entry, hashed.

    :raises ValueError: ``data`` holds something other than metadata (a str, int, bool, None or
        a list of str under a str key), or ``seq``, ``at``, ``kind`` or ``prev`` is malformed.
    """
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"seq must be a positive integer, not {seq!r}")
    if not _AT.fullmatch(at):
        raise ValueError(f"time must be UTC with milliseconds, e.g. 2026-11-28T15:12:00.123Z: {at}")
    if not _KIND.fullmatch(kind):
        raise ValueError(f"kind must be lower-case letters, digits and '_': {kind!r}")
    if not _HEX64.fullmatch(prev):
        raise ValueError("prev must be 64 lower-case hex digits")
    checked = _check_data(data)
    head, tail = _halves(seq, at, kind, checked, prev)
    digest = _hash_of(head, tail)
    return Entry(seq, at, kind, checked, prev, digest, _joined(head, tail, digest))


def parse_line(line: bytes) -> Entry:
    """The entry a line holds (with or without its trailing newline), as written.

    The hash is *not* checked here (see :meth:`Entry.content_hash`), so that a verifier can say
    which entry was altered.

    :raises EntryError: not UTF-8 JSON, not an object with exactly the entry's keys, a field of
        the wrong type, or data that is not metadata.
    """
    try:
        document = json.loads(line.removesuffix(b"\n").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EntryError(f"not a JSON line: {exc}") from exc
    if not isinstance(document, dict):
        raise EntryError("not a JSON object")
    if set(document) != _KEYS:
        raise EntryError(f"keys are {sorted(document)}, expected {sorted(_KEYS)}")
    seq, at, kind, data = document["seq"], document["at"], document["kind"], document["data"]
    prev, digest = document["prev"], document["hash"]
    if not isinstance(data, dict):
        raise EntryError("'data' is not an object")
    if not isinstance(at, str) or not isinstance(kind, str) or not isinstance(prev, str):
        raise EntryError("'at', 'kind' and 'prev' must be strings")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise EntryError("'hash' is not 64 lower-case hex digits")
    try:
        entry = make_entry(seq, at, kind, data, prev)
    except ValueError as exc:
        raise EntryError(str(exc)) from exc
    return Entry(entry.seq, entry.at, entry.kind, entry.data, entry.prev, digest)


# --- checkpoints ---------------------------------------------------------------------------------


def checkpoint_message(head_seq: int, head_hash: str) -> bytes:
    """The bytes a checkpoint signature covers."""
    return _CHECKPOINT_DOMAIN + f"{head_seq}:{head_hash}".encode("ascii")


def checkpoint_data(head: Entry, signer: SigningKey) -> dict[str, Value]:
    """The data of a checkpoint entry that signs ``head`` (the entry right before it)."""
    signature = signer.sign(checkpoint_message(head.seq, head.hash))
    return {
        "head_seq": head.seq,
        "head_hash": head.hash,
        "key_id": str(signer.key_id),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def check_checkpoint(
    checkpoint: Entry, head: Entry | None, public_keys: Mapping[str, bytes]
) -> str | None:
    """Why ``checkpoint`` does not vouch for ``head`` (the entry before it), or None if it does.

    With ``head`` None only the signature over the head the checkpoint names is checked.
    """
    data = checkpoint.data
    head_seq, head_hash = data.get("head_seq"), data.get("head_hash")
    key_id, signature = data.get("key_id"), data.get("signature")
    if (
        set(data) != {"head_seq", "head_hash", "key_id", "signature"}
        or not isinstance(head_seq, int)
        or isinstance(head_seq, bool)
        or not isinstance(head_hash, str)
        or not isinstance(key_id, str)
        or not isinstance(signature, str)
    ):
        return "is malformed (its data must be head_seq, head_hash, key_id and signature)"
    if head is not None and (head_seq != head.seq or head_hash != head.hash):
        return (
            f"names head seq {head_seq} but the entry before it is seq {head.seq} with another hash"
            if head_seq != head.seq
            else f"names a hash for entry {head_seq} that is not the hash of the entry before it"
        )
    return check_signature(head_seq, head_hash, key_id, signature, public_keys)


def check_signature(
    head_seq: int, head_hash: str, key_id: str, signature: str, public_keys: Mapping[str, bytes]
) -> str | None:
    """Why ``signature`` (base64) by ``key_id`` is not a checkpoint signature over head
    ``head_seq``/``head_hash`` with one of ``public_keys``, or None if it is."""
    public = public_keys.get(key_id)
    if public is None:
        known = ", ".join(sorted(public_keys)) or "none"
        return f"is signed with key {key_id}, which is not a trusted key (trusted: {known})"
    return check_ed25519(public, checkpoint_message(head_seq, head_hash), signature, key_id)


def check_ed25519(public: bytes, message: bytes, signature: str, key_id: str) -> str | None:
    """Why ``signature`` (base64) is not ``public``'s Ed25519 signature of ``message``, or None."""
    try:
        raw = base64.b64decode(signature, validate=True)
        nacl.signing.VerifyKey(public).verify(message, raw)
    except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError) as exc:
        return f"signature does not verify with key {key_id} ({type(exc).__name__})"
    return None


# --- the head ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """The latest checkpoint, as the node copied it beside the log: where it is, and the line."""

    segment: str
    line: int
    checkpoint: bytes

    def to_bytes(self) -> bytes:
        """The head file's contents (JSON)."""
        document = {
            "format": HEAD_FORMAT,
            "segment": self.segment,
            "line": self.line,
            "checkpoint": self.checkpoint.removesuffix(b"\n").decode("utf-8"),
        }
        return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


def parse_head(raw: bytes) -> Head:
    """Read a head file's contents.

    :raises EntryError: not a head document.
    """
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EntryError(f"not a JSON document: {exc}") from exc
    if (
        not isinstance(document, dict)
        or document.get("format") != HEAD_FORMAT
        or not isinstance(document.get("segment"), str)
        or not isinstance(document.get("line"), int)
        or not isinstance(document.get("checkpoint"), str)
    ):
        raise EntryError(f"not an {HEAD_FORMAT} document")
    return Head(document["segment"], document["line"], document["checkpoint"].encode("utf-8"))


# --- verification --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """The first place where the log is not what was written."""

    segment: str
    line: int | None
    """1-based line in ``segment``; None when the problem is not one line."""
    seq: int | None
    """The seq expected there."""
    what: str

    def __str__(self) -> str:
        where = f"{self.segment}:{self.line}" if self.line is not None else self.segment
        return f"{where}: {self.what}"


@dataclass(frozen=True, slots=True)
class Report:
    """What a verification found.

    ``ok`` is True when every entry read is intact, linked and in order, every checkpoint
    verifies, no covered entry is missing, and no segment is missing between the first and the
    last. ``unsigned_tail`` entries after the last checkpoint are intact as far as the chain can
    tell, but could have been cut or rewritten without trace: it is a warning, not a failure.
    """

    ok: bool
    entries: int
    checkpoints: int
    last_checkpoint_seq: int | None
    """Seq of the last checkpoint entry verified (None when there is none)."""
    unsigned_tail: int
    """Entries after the last checkpoint, which no signature covers."""
    segments: tuple[str, ...] = ()
    first_seq: int | None = None
    last_seq: int | None = None
    key_ids: tuple[str, ...] = ()
    """Keys that signed the checkpoints verified."""
    closed: bool = False
    """The last segment read ends with its closing entries (the node rotated past it)."""
    problem: Problem | None = None

    def summary(self) -> list[str]:
        """The report in plain words, one line each; the problem, if any, first."""
        lines = []
        if self.problem is not None:
            lines.append(f"TAMPERED: {self.problem}")
        span = f"seq {self.first_seq}..{self.last_seq}" if self.last_seq is not None else "none"
        if self.problem is not None:
            span += ", up to the problem"
        lines.append(
            f"{len(self.segments)} segment(s), {self.entries} entries ({span}), "
            f"{self.checkpoints} checkpoint(s) signed by {', '.join(self.key_ids) or 'no key'}"
        )
        if self.first_seq is not None and self.first_seq > 1:
            lines.append(
                f"the log read starts at seq {self.first_seq}: entries before it were not given"
            )
        if self.problem is None:
            if self.last_checkpoint_seq is None:
                lines.append(
                    f"warning: no checkpoint: none of the {self.unsigned_tail} entries is covered "
                    "by a signature"
                )
            elif self.unsigned_tail:
                lines.append(
                    f"warning: {self.unsigned_tail} entries after the last checkpoint (seq "
                    f"{self.last_checkpoint_seq}) are not covered by a signed checkpoint; they "
                    "could have been cut or changed without trace"
                )
            else:
                lines.append(
                    f"every entry is covered by a signed checkpoint (last at seq "
                    f"{self.last_checkpoint_seq})"
                )
        return lines


@dataclass(slots=True)
class _Walk:
    """The verifier's running state."""

    public_keys: Mapping[str, bytes]
    head: Head | None
    entries: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    first_seq: int | None = None
    expected_seq: int | None = None
    previous: Entry | None = None
    before_previous: Entry | None = None
    previous_line: int = 0
    previous_in: str = ""
    previous_segment: str | None = None
    previous_number: int | None = None
    closed: bool = False
    head_seen: bool = False
    head_entry: Entry | None = None
    segments: list[str] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)
    from_start: bool = False


class _Found(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.what)
        self.problem = problem


def verify(
    entries_by_segment: Iterable[tuple[str, list[bytes]]],
    public_keys: Mapping[str, bytes],
    *,
    head: Head | None = None,
    from_start: bool = False,
) -> Report:
    """Check a log: segments in order, each as its file name and its lines.

    A line is the raw bytes including its newline; a last line without one is a torn write.
    The first segment given may start anywhere in the log (an export of later segments); from
    there on, every entry must be intact, follow the one before it, and every checkpoint must
    verify with ``public_keys`` (key id to 32-byte Ed25519 public key). Give ``head`` (the copy
    of the latest checkpoint the node keeps) when the segments run to the end of the log: then
    that checkpoint must be found where the head says, so a cut that removed it is detected.
    Give ``from_start`` when the segments are a whole log (a node's folder: nothing is ever
    pruned): then the first must be the log's first, so a deleted beginning is detected.

    Never raises for what the lines hold: every finding is in the report.
    """
    walk = _Walk(public_keys, head, from_start=from_start)
    problem: Problem | None = None
    try:
        if head is not None:
            with contextlib.suppress(EntryError):
                walk.head_entry = parse_line(head.checkpoint)
        for name, lines in entries_by_segment:
            _segment(walk, name, lines)
        if head is not None and not walk.head_seen:
            walk.head_entry = _check_head(head, public_keys)
            raise _Found(_cut(walk, head))
    except _Found as found:
        problem = found.problem
    last = walk.previous
    unsigned = 0
    if last is not None:
        covered = walk.last_checkpoint_seq or ((walk.first_seq or 1) - 1)
        unsigned = last.seq - covered
    return Report(
        ok=problem is None,
        entries=walk.entries,
        checkpoints=walk.checkpoints,
        last_checkpoint_seq=walk.last_checkpoint_seq,
        unsigned_tail=unsigned,
        segments=tuple(walk.segments),
        first_seq=walk.first_seq,
        last_seq=last.seq if last is not None else None,
        key_ids=tuple(sorted(walk.key_ids)),
        closed=walk.closed,
        problem=problem,
    )


def _segment(walk: _Walk, name: str, lines: list[bytes]) -> None:
    number = segment_number(name)
    if number is None:
        raise _Found(Problem(name, None, walk.expected_seq, "not an audit segment name"))
    if walk.previous_number is not None and walk.previous_segment is not None:
        if number <= walk.previous_number:
            raise _Found(
                Problem(
                    name,
                    None,
                    walk.expected_seq,
                    f"segments out of order: {name} after {walk.previous_segment}",
                )
            )
        if not walk.closed:
            raise _Found(_unclosed(walk, lines))
        if number != walk.previous_number + 1:
            missing = segment_name(walk.previous_number + 1)
            raise _Found(
                Problem(
                    name,
                    1,
                    walk.expected_seq,
                    f"segment {missing} is missing (the log goes from {walk.previous_segment} "
                    f"to {name})",
                )
            )
    walk.segments.append(name)
    walk.closed = False
    if not lines:
        raise _Found(Problem(name, None, walk.expected_seq, "the segment is empty"))
    for number_in_file, line in enumerate(lines, start=1):
        _line(walk, name, number_in_file, line)
    walk.previous_segment, walk.previous_number = name, number


def _unclosed(walk: _Walk, next_lines: list[bytes]) -> Problem:
    """The problem with a segment that is followed by another but does not end closed."""
    assert walk.previous is not None and walk.previous_segment is not None
    said = ""
    try:
        first = parse_line(next_lines[0]) if next_lines else None
    except EntryError:
        first = None
    if first is not None and isinstance(first.data.get("previous_last_seq"), int):
        said = f"; the next segment says it ended at seq {first.data['previous_last_seq']}"
    return Problem(
        walk.previous_segment,
        walk.previous_line + 1,
        walk.previous.seq + 1,
        f"the end of {walk.previous_segment} is missing: it stops at seq {walk.previous.seq} "
        f"without its segment_end entry and closing checkpoint{said}",
    )


def _line(walk: _Walk, name: str, line_no: int, line: bytes) -> None:
    expected = walk.expected_seq
    label = f"entry {expected}" if expected is not None else "the entry"
    if not line.endswith(b"\n"):
        raise _Found(
            Problem(
                name,
                line_no,
                expected,
                f"{label} is incomplete (its line has no newline): the node stopped in the "
                "middle of writing it, or the file was cut; the node cuts such a line off "
                "the next time it opens the log",
            )
        )
    try:
        entry = parse_line(line)
    except EntryError as exc:
        raise _Found(
            Problem(name, line_no, expected, f"{label} was altered or damaged: {exc}")
        ) from exc
    if entry.content_hash() != entry.hash:
        raise _Found(
            Problem(
                name,
                line_no,
                expected,
                f"entry {expected or entry.seq} was altered (its hash does not match its contents)",
            )
        )
    if entry.to_line() != line:
        raise _Found(
            Problem(
                name,
                line_no,
                expected,
                f"entry {expected or entry.seq} was altered (the line is not in canonical form)",
            )
        )
    _link(walk, name, line_no, entry)
    if line_no == 1:
        _segment_start(walk, name, entry)
    elif entry.kind == SEGMENT_START:
        raise _Found(
            Problem(name, line_no, entry.seq, "a segment_start entry in the middle of a segment")
        )
    if walk.closed:
        raise _Found(
            Problem(
                name,
                line_no,
                entry.seq,
                f"entry {entry.seq} follows the closing checkpoint of {name}: it was inserted",
            )
        )
    if entry.kind == CHECKPOINT:
        _checkpoint(walk, name, line_no, entry)
    if entry.kind == SEGMENT_END:
        data = entry.data
        if data.get("segment") != name or data.get("entries") != line_no:
            raise _Found(
                Problem(
                    name,
                    line_no,
                    entry.seq,
                    f"the segment_end entry says segment {data.get('segment')} with "
                    f"{data.get('entries')} entries, but it is line {line_no} of {name}",
                )
            )
    if walk.head_entry is not None and entry.seq == walk.head_entry.seq:
        _match_head(walk, name, line_no, entry)
    walk.before_previous, walk.previous = walk.previous, entry
    walk.previous_line, walk.previous_in = line_no, name
    walk.expected_seq = entry.seq + 1
    walk.entries += 1


def _link(walk: _Walk, name: str, line_no: int, entry: Entry) -> None:
    """Check that ``entry`` follows the previous entry read."""
    previous, expected = walk.previous, walk.expected_seq
    if previous is None or expected is None:
        walk.first_seq = entry.seq
        if entry.seq == 1 and entry.prev != GENESIS:
            raise _Found(
                Problem(name, line_no, 1, "entry 1 does not start the chain (its prev is not zero)")
            )
        return
    if entry.seq == expected and entry.prev == previous.hash:
        return
    if (
        entry.seq == expected - 1
        and walk.before_previous is not None
        and entry.prev == walk.before_previous.hash
    ):
        raise _Found(
            Problem(
                walk.previous_in,
                walk.previous_line,
                previous.seq,
                f"an entry was inserted at line {walk.previous_line} (seq {previous.seq}): the "
                f"next entry carries the same seq and links to the entry before it",
            )
        )
    if entry.seq != expected:
        raise _Found(
            Problem(
                name,
                line_no,
                expected,
                f"entry {expected} is missing or entries were reordered (expected seq "
                f"{expected}, found {entry.seq})",
            )
        )
    raise _Found(
        Problem(
            walk.previous_in,
            walk.previous_line,
            previous.seq,
            f"entry {previous.seq} was replaced: the entry after it ({name}:{line_no}, seq "
            f"{entry.seq}) does not link to it (or that entry's prev was changed)",
        )
    )


def _segment_start(walk: _Walk, name: str, entry: Entry) -> None:
    data = entry.data
    if entry.kind != SEGMENT_START or data.get("segment") != name:
        raise _Found(
            Problem(
                name,
                1,
                entry.seq,
                f"the segment does not start with its segment_start entry (found "
                f"{entry.kind} naming {data.get('segment')}): its beginning was cut or it was "
                "renamed",
            )
        )
    declared = data.get("previous_segment")
    if walk.previous is None:
        if (declared is None) != (entry.seq == 1):
            raise _Found(Problem(name, 1, entry.seq, "the segment_start entry contradicts its seq"))
        if walk.from_start and entry.seq != 1:
            raise _Found(
                Problem(
                    name,
                    1,
                    1,
                    f"the beginning of the log is missing: the first segment here is {name},"
                    f" which follows {declared} (seq {entry.seq} onwards); a node never removes"
                    " its segments",
                )
            )
        return
    if declared != walk.previous_segment or data.get("previous_last_seq") != walk.previous.seq:
        raise _Found(
            Problem(
                name,
                1,
                entry.seq,
                f"{name} says it follows {declared} ending at seq "
                f"{data.get('previous_last_seq')}, but {walk.previous_segment} ends at seq "
                f"{walk.previous.seq}",
            )
        )


def _checkpoint(walk: _Walk, name: str, line_no: int, entry: Entry) -> None:
    head = walk.previous
    if head is None:
        raise _Found(Problem(name, line_no, entry.seq, "a checkpoint with no entry before it"))
    why = check_checkpoint(entry, head, walk.public_keys)
    if why is not None:
        since = (walk.last_checkpoint_seq or 0) + 1
        raise _Found(
            Problem(
                name,
                line_no,
                entry.seq,
                f"the checkpoint at seq {entry.seq} {why}: entries {since}..{head.seq} were "
                "altered, inserted, removed or reordered, or the checkpoint was forged",
            )
        )
    walk.checkpoints += 1
    walk.last_checkpoint_seq = entry.seq
    walk.key_ids.add(str(entry.data["key_id"]))
    if head.kind == SEGMENT_END:
        walk.closed = True


def _match_head(walk: _Walk, name: str, line_no: int, entry: Entry) -> None:
    assert walk.head is not None
    walk.head_seen = True
    head = walk.head
    if entry.to_line() != head.checkpoint.removesuffix(b"\n") + b"\n" or (name, line_no) != (
        head.segment,
        head.line,
    ):
        raise _Found(
            Problem(
                name,
                line_no,
                entry.seq,
                f"entry {entry.seq} differs from the checkpoint the head file recorded for it "
                f"({head.segment}:{head.line})",
            )
        )


def _check_head(head: Head, public_keys: Mapping[str, bytes]) -> Entry:
    """The checkpoint the head holds, checked on its own (hash and signature)."""
    try:
        checkpoint = parse_line(head.checkpoint)
    except EntryError as exc:
        raise _Found(Problem(HEAD_FILE, None, None, f"the head file is damaged: {exc}")) from exc
    why = check_checkpoint(checkpoint, None, public_keys)
    if checkpoint.kind != CHECKPOINT or checkpoint.content_hash() != checkpoint.hash:
        why = "is not an intact checkpoint entry"
    if why is not None:
        raise _Found(Problem(HEAD_FILE, None, checkpoint.seq, f"the head file's checkpoint {why}"))
    return checkpoint


def _cut(walk: _Walk, head: Head) -> Problem:
    """The problem with a log that ends before the checkpoint its head records."""
    assert walk.head_entry is not None
    last_seq = walk.previous.seq if walk.previous is not None else 0
    return Problem(
        walk.previous_in or head.segment,
        walk.previous_line + 1 if walk.previous_in else None,
        last_seq + 1,
        f"the log was cut: it ends at seq {last_seq}, but the head file records a signed "
        f"checkpoint at seq {walk.head_entry.seq} ({head.segment}:{head.line}); entries from "
        f"seq {last_seq + 1} on are gone",
    )
