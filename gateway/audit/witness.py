"""Witnessed checkpoints: a log's signed checkpoints held by other agencies. Pure.

A node's own checkpoints (:mod:`gateway.audit.chain`) live on the node that signs them, so
whoever controls that node can cut its log back or rewrite it and sign again. Each node therefore
publishes its newest checkpoint on the exchange (``<prefix>.checkpoints.<agency>``) as a
:class:`Checkpoint` record, which holds no event metadata: agency, log, seq and hash of the entry
signed, key id, signature and time. ``log`` is the hash of the log's first entry: it tells the
logs of an agency's replicas apart (each has its own state folder and chain).

Other agencies' nodes witness it (:class:`WitnessCore`): the record is size-checked and rate-
limited per agency before any signature work, its signature is checked against the trust list,
and it is compared with what this witness saw of that log before (:class:`WitnessBook`): a later
seq is countersigned (:class:`Witnessed`), audited and sent back on
``<prefix>.witness.<agency>``; the same seq with another hash, or a seq before the newest
witnessed that was never seen, is a fork: audited as ``witness_fork`` (with the conflicting
signed checkpoint, which is the proof), logged and counted, never countersigned. Anything else
is ignored with a reason code. The origin keeps the countersignatures it gets back as
``witness_receipt`` entries.

:func:`check_log` compares a log with witnessed checkpoints: a log that ends before a witnessed
seq was cut; an entry whose hash differs from the witnessed one was rewritten (even if re-signed
with the agency's own key). What stays unproven: entries after the newest witnessed checkpoint
(a checkpoint is published at most every ``publish_every_seconds``), and anything a witness and
the origin agree to forge together.

No library does this; the records are canonical JSON like the audit entries.
"""

from __future__ import annotations

import base64
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

from gateway.audit.chain import (
    Entry,
    EntryError,
    Value,
    check_ed25519,
    check_signature,
    parse_line,
)
from gateway.audit.store import format_time
from gateway.core.effects import AuditEntry
from gateway.crypto.keys import SigningKey
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError

MAX_RECORD_BYTES = 2048
"""A checkpoint or countersignature record taken from the exchange; larger ones are ignored
unread."""
CHECKPOINT_FORMAT = "fxgw-checkpoint-1"
WITNESSED_FORMAT = "fxgw-witnessed-1"
EXPORT_FORMAT = "fxgw-witnessed-export-1"
_WITNESS_DOMAIN = b"fxgw.audit.witness.v1\x00"
_AGENCY = re.compile(r"[A-Z]{2}-[A-Z0-9-]{1,60}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_TOKEN = re.compile(r"[A-Za-z0-9+/=._:-]{1,128}")
_CHECKPOINT_FIELDS = {
    "agency": _AGENCY,
    "log": _HEX64,
    "head_hash": _HEX64,
    "key_id": _TOKEN,
    "signature": _TOKEN,
    "at": _AT,
}
_WITNESS_FIELDS = {
    "witness": _AGENCY,
    "witness_key_id": _TOKEN,
    "witnessed_at": _AT,
    "countersignature": _TOKEN,
}


def _canonical(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def _checked(document: Mapping[str, object], spec: Mapping[str, re.Pattern[str]]) -> None:
    for name, pattern in spec.items():
        value = document.get(name)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise PeerError(f"field '{name}' is missing or malformed", reason="malformed")


def _document(raw: bytes, form: str, keys: Iterable[str]) -> dict[str, object]:
    if len(raw) > MAX_RECORD_BYTES:
        raise PeerError(f"{len(raw)} bytes, over {MAX_RECORD_BYTES}", reason="too_large")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # nesting within the size
        raise PeerError(f"not JSON: {type(exc).__name__}", reason="malformed") from exc
    if not isinstance(document, dict) or document.get("format") != form:
        raise PeerError(f"not an {form} record", reason="malformed")
    expected = {"format", *keys}
    if set(document) != expected:
        raise PeerError(
            f"keys are {sorted(document)[:12]}, expected {sorted(expected)}", reason="malformed"
        )
    return document


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed checkpoint of one log, as published for witnesses."""

    agency: str
    log: str
    """Hash of the log's first entry."""
    seq: int
    """Seq of the entry the checkpoint signs (its head)."""
    head_hash: str
    key_id: str
    signature: str
    at: str
    """When the checkpoint was written (the origin's clock)."""

    def fields(self) -> dict[str, Value]:
        """The record's fields (metadata only: they may go into an audit entry)."""
        return dict(asdict(self))

    def to_bytes(self) -> bytes:
        """The record as published."""
        return _canonical({"format": CHECKPOINT_FORMAT, **self.fields()})

    def check(self, public_keys: Mapping[str, bytes]) -> str | None:
        """Why the signature is not the agency's over this head, or None if it is."""
        return check_signature(self.seq, self.head_hash, self.key_id, self.signature, public_keys)


def _checkpoint_from(document: Mapping[str, object]) -> Checkpoint:
    _checked(document, _CHECKPOINT_FIELDS)
    seq = document.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise PeerError("field 'seq' is not a positive integer", reason="malformed")
    text = {k: str(document[k]) for k in _CHECKPOINT_FIELDS}
    return Checkpoint(
        text["agency"],
        text["log"],
        seq,
        text["head_hash"],
        text["key_id"],
        text["signature"],
        text["at"],
    )


def parse_checkpoint(raw: bytes) -> Checkpoint:
    """A checkpoint record taken from the exchange (signature not checked).

    :raises PeerError: too large (reason ``too_large``) or malformed (``malformed``).
    """
    return _checkpoint_from(_document(raw, CHECKPOINT_FORMAT, (*_CHECKPOINT_FIELDS, "seq")))


def checkpoint_of(agency: str, log: str, entry: Entry) -> Checkpoint:
    """The record of a checkpoint entry of the log whose first entry's hash is ``log``."""
    data = entry.data
    return Checkpoint(
        agency,
        log,
        int(data["head_seq"]),  # type: ignore[arg-type]  # the log writes an int
        str(data["head_hash"]),
        str(data["key_id"]),
        str(data["signature"]),
        entry.at,
    )


@dataclass(frozen=True, slots=True)
class Witnessed:
    """A checkpoint countersigned by a witness."""

    checkpoint: Checkpoint
    witness: str
    witness_key_id: str
    witnessed_at: str
    countersignature: str

    def fields(self) -> dict[str, Value]:
        """All fields, flat (metadata only)."""
        return {
            **self.checkpoint.fields(),
            "witness": self.witness,
            "witness_key_id": self.witness_key_id,
            "witnessed_at": self.witnessed_at,
            "countersignature": self.countersignature,
        }

    def to_bytes(self) -> bytes:
        """The record as published back to the origin."""
        return _canonical({"format": WITNESSED_FORMAT, **self.fields()})

    def check(self, witness_keys: Mapping[str, bytes]) -> str | None:
        """Why the countersignature is not the witness's, or None if it is."""
        public = witness_keys.get(self.witness_key_id)
        if public is None:
            return f"is countersigned with key {self.witness_key_id}, not a key of {self.witness}"
        message = _countersigned(self.checkpoint, self.witness, self.witnessed_at)
        return check_ed25519(public, message, self.countersignature, self.witness_key_id)


def _countersigned(checkpoint: Checkpoint, witness: str, at: str) -> bytes:
    return _WITNESS_DOMAIN + _canonical({**checkpoint.fields(), "witness": witness, "at_w": at})


def countersign(checkpoint: Checkpoint, witness: str, signer: SigningKey, at: str) -> Witnessed:
    """``witness``'s countersignature of ``checkpoint`` at time ``at``."""
    signature = signer.sign(_countersigned(checkpoint, witness, at))
    return Witnessed(
        checkpoint, witness, str(signer.key_id), at, base64.b64encode(signature).decode("ascii")
    )


def witnessed_from(document: Mapping[str, object]) -> Witnessed:
    """A countersigned checkpoint from its fields (signatures not checked).

    :raises PeerError: malformed.
    """
    _checked(document, _WITNESS_FIELDS)
    return Witnessed(
        _checkpoint_from(document),
        str(document["witness"]),
        str(document["witness_key_id"]),
        str(document["witnessed_at"]),
        str(document["countersignature"]),
    )


def parse_witnessed(raw: bytes) -> Witnessed:
    """A countersignature record taken from the exchange (signatures not checked).

    :raises PeerError: too large or malformed.
    """
    keys = (*_CHECKPOINT_FIELDS, "seq", *_WITNESS_FIELDS)
    return witnessed_from(_document(raw, WITNESSED_FORMAT, keys))


# --- what a witness saw --------------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    latest: int = 0
    hashes: OrderedDict[int, str] = field(default_factory=OrderedDict)


class WitnessBook:
    """What this witness countersigned, per (agency, log): the newest seq and the hashes of the
    last ``keep`` seqs; at most ``max_logs`` logs per agency (a new log beyond that is refused,
    so a peer cannot grow it without bound)."""

    def __init__(self, *, keep: int = 1000, max_logs: int = 16) -> None:
        self.keep = keep
        self.max_logs = max_logs
        self._logs: dict[tuple[str, str], _Seen] = {}

    def judge(self, checkpoint: Checkpoint) -> tuple[str, str]:
        """``("new", "")``, ``("duplicate", "")``, ``("fork", why)`` or ``("refused", why)``."""
        seen = self._logs.get((checkpoint.agency, checkpoint.log))
        if seen is None:
            logs = sum(1 for agency, _ in self._logs if agency == checkpoint.agency)
            if logs >= self.max_logs:
                return "refused", f"{checkpoint.agency} has {logs} logs witnessed already"
            return "new", ""
        known = seen.hashes.get(checkpoint.seq)
        if known == checkpoint.head_hash:
            return "duplicate", ""
        if known is not None:
            return "fork", f"seq {checkpoint.seq} was witnessed with hash {known}"
        if checkpoint.seq < seen.latest:
            return "fork", f"seq {checkpoint.seq} goes back before seq {seen.latest}, witnessed"
        return "new", ""

    def accept(self, checkpoint: Checkpoint) -> None:
        """Note ``checkpoint`` as witnessed."""
        seen = self._logs.setdefault((checkpoint.agency, checkpoint.log), _Seen())
        seen.latest = max(seen.latest, checkpoint.seq)
        seen.hashes[checkpoint.seq] = checkpoint.head_hash
        while len(seen.hashes) > self.keep:
            seen.hashes.popitem(last=False)

    def to_bytes(self) -> bytes:
        """The book, for the state folder."""
        return _canonical(
            {
                "format": "fxgw-witness-book-1",
                "logs": [
                    [agency, log, seen.latest, [[s, h] for s, h in seen.hashes.items()]]
                    for (agency, log), seen in sorted(self._logs.items())
                ],
            }
        )

    def load(self, raw: bytes) -> None:
        """Take up a book written by :meth:`to_bytes`.

        :raises ValueError: not such a book.
        """
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != "fxgw-witness-book-1":
            raise ValueError("not an fxgw-witness-book-1 document")
        self._logs = {
            (str(agency), str(log)): _Seen(
                int(latest), OrderedDict((int(s), str(h)) for s, h in hashes)
            )
            for agency, log, latest, hashes in document["logs"]
        }


# --- the witness and origin cores ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessEffects:
    """What one record taken from the exchange calls for."""

    audit: tuple[AuditEntry, ...] = ()
    send: tuple[Witnessed, ...] = ()
    """Countersignatures to publish to their origin."""


def _ignored(kind: str, reason: str, detail: str, **data: Value) -> WitnessEffects:
    entry = AuditEntry(
        kind,
        {**data, "reason": reason, "detail": detail[:512]},
        kind,
        f"{kind}_{reason}",
        warn=True,
        routine=True,
    )
    return WitnessEffects(audit=(entry,))


class _Rate:
    """At most ``per_minute`` records per agency in any minute-long window (fixed windows)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window: dict[str, tuple[int, int]] = {}

    def allow(self, agency: str, now: datetime) -> bool:
        minute = int(now.timestamp() // 60)
        window, used = self._window.get(agency, (minute, 0))
        if window != minute:
            window, used = minute, 0
        if len(self._window) > 4096:
            self._window.clear()  # a flood of names: forget, rather than grow
        self._window[agency] = (window, used + 1)
        return used < self.per_minute


class WitnessCore:
    """Witness other agencies' checkpoints (:meth:`take`) and keep the countersignatures of our
    own (:meth:`take_receipt`). The book and the rate windows are its state."""

    def __init__(
        self,
        agency: str,
        trust: Callable[[], TrustList],
        signer: Callable[[], SigningKey],
        *,
        witnessed: Callable[[], frozenset[str]],
        per_minute: int = 30,
        book: WitnessBook | None = None,
    ) -> None:
        self.agency = agency
        self.book = book or WitnessBook()
        self._trust = trust
        self._signer = signer
        self._witnessed = witnessed
        self._rate = _Rate(per_minute)

    def take(self, raw: bytes, now: datetime) -> WitnessEffects:
        """Witness one checkpoint record of another agency."""
        try:
            checkpoint = parse_checkpoint(raw)
        except PeerError as exc:
            return _ignored("witness_ignored", exc.reason, str(exc))
        agency = checkpoint.agency
        if agency == self.agency or agency not in self._witnessed():
            return _ignored(
                "witness_ignored", "not_witnessed", "not an agency we witness", agency=agency
            )
        if not self._rate.allow(agency, now):
            return _ignored(
                "witness_ignored", "rate_limited", "too many checkpoints", agency=agency
            )
        keys = self._keys(agency, now)
        why = checkpoint.check(keys)
        if why is not None:
            reason = "bad_signature" if checkpoint.key_id in keys else "untrusted_sender"
            return _ignored("witness_ignored", reason, why, agency=agency, seq=checkpoint.seq)
        verdict, detail = self.book.judge(checkpoint)
        if verdict == "duplicate":
            return WitnessEffects()
        if verdict == "refused":
            return _ignored("witness_ignored", "too_many_logs", detail, agency=agency)
        if verdict == "fork":
            data = {**checkpoint.fields(), "detail": detail}
            return WitnessEffects(
                audit=(AuditEntry("witness_fork", data, "witness_fork", "witness_fork", warn=True),)
            )
        self.book.accept(checkpoint)
        witnessed = countersign(checkpoint, self.agency, self._signer(), format_time(now))
        entry = AuditEntry("witnessed", witnessed.fields(), "witnessed", "witnessed", routine=True)
        return WitnessEffects(audit=(entry,), send=(witnessed,))

    def take_receipt(self, raw: bytes, now: datetime) -> WitnessEffects:
        """Keep a witness's countersignature of one of our checkpoints."""
        try:
            witnessed = parse_witnessed(raw)
        except PeerError as exc:
            return _ignored("witness_receipt_ignored", exc.reason, str(exc))
        witness = witnessed.witness
        if witnessed.checkpoint.agency != self.agency:
            return _ignored(
                "witness_receipt_ignored", "not_for_us", "another agency's", witness=witness
            )
        if not self._rate.allow(f"receipt:{witness}", now):
            return _ignored("witness_receipt_ignored", "rate_limited", "too many", witness=witness)
        why = witnessed.checkpoint.check(self._keys(self.agency, None)) or witnessed.check(
            self._keys(witness, now)
        )
        if why is not None:
            return _ignored("witness_receipt_ignored", "bad_signature", why, witness=witness)
        entry = AuditEntry(
            "witness_receipt",
            witnessed.fields(),
            "witness_receipt",
            "witness_receipt",
            routine=True,
        )
        return WitnessEffects(audit=(entry,))

    def _keys(self, agency: str, at: datetime | None) -> dict[str, bytes]:
        """The agency's signing keys on the trust list (only those valid ``at``, when given)."""
        listed = self._trust().agency(agency)
        return {
            k.key_id: k.public
            for k in (listed.keys if listed is not None else ())
            if k.use == "sign" and (at is None or k.valid_at(at))
        }


# --- a log against witnessed checkpoints ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessReport:
    """What comparing a log with witnessed checkpoints found."""

    checked: int
    """Witnessed checkpoints of this log whose seq the log holds, all matching unless a problem
    says otherwise."""
    problems: tuple[str, ...]
    newest: int | None
    """Newest witnessed seq of this log (None: none applies)."""
    before_log: int = 0
    """Witnessed checkpoints before the first entry read (an export of later segments)."""

    def summary(self, last_seq: int | None) -> list[str]:
        """In plain words; problems first."""
        lines = [f"WITNESS: {p}" for p in self.problems]
        lines.append(f"{self.checked} witnessed checkpoint(s) match the log")
        if self.newest is not None and last_seq is not None and last_seq > self.newest:
            lines.append(
                f"warning: entries after seq {self.newest} (the newest witnessed) up to seq "
                f"{last_seq} are not witnessed: a cut or rewrite there would not show"
            )
        return lines


def check_log(
    segments: Iterable[tuple[str, list[bytes]]],
    witnessed: Sequence[Witnessed],
    agency_keys: Mapping[str, bytes],
    witness_keys: Mapping[str, Mapping[str, bytes]] | None,
) -> WitnessReport:
    """Compare a log (as :func:`gateway.audit.chain.verify` takes it) with checkpoints witnessed
    for its agency: every witnessed seq must be in the log, with the witnessed hash.

    A record whose origin signature does not verify with ``agency_keys``, or (when
    ``witness_keys``, agency to key id to key, is given) whose countersignature does not verify,
    is a problem too. Without a first entry (seq 1) in ``segments`` the log's id is unknown and
    every record counts.
    """
    problems: list[str] = []
    valid: list[Witnessed] = []
    for w in witnessed:
        why = w.checkpoint.check(agency_keys)
        if why is None and witness_keys is not None:
            why = w.check(witness_keys.get(w.witness, {}))
        if why is None:
            valid.append(w)
        else:
            problems.append(f"the record of seq {w.checkpoint.seq} witnessed by {w.witness} {why}")
    hashes: dict[int, str] = {}
    wanted = {w.checkpoint.seq for w in valid}
    log_id: str | None = None
    first = last = None
    for _, lines in segments:
        for line in lines:
            try:
                entry = parse_line(line)
            except EntryError:
                continue  # the chain's verification names it
            if entry.seq == 1:
                log_id = entry.hash
            first = entry.seq if first is None else first
            last = entry.seq
            if entry.seq in wanted:
                hashes[entry.seq] = entry.hash
    ours = [w for w in valid if log_id is None or w.checkpoint.log == log_id]
    if valid and not ours:
        problems.append(
            f"none of the {len(valid)} witnessed checkpoints belongs to this log (its first entry "
            "differs): the log was replaced from its start, or they are another replica's"
        )
    checked = before = 0
    for w in sorted(ours, key=lambda w: w.checkpoint.seq):
        seq, by = w.checkpoint.seq, f"{w.witness} witnessed at {w.witnessed_at}"
        if first is None or last is None or seq > last:
            problems.append(
                f"the log was cut: it ends at seq {last or 0}, but {by} a signed checkpoint at "
                f"seq {seq}"
            )
        elif seq < first:
            before += 1
        elif hashes.get(seq) != w.checkpoint.head_hash:
            problems.append(
                f"entry {seq} was rewritten: its hash is {hashes.get(seq, 'missing')}, but {by} "
                f"hash {w.checkpoint.head_hash}"
            )
        else:
            checked += 1
    newest = max((w.checkpoint.seq for w in ours), default=None)
    return WitnessReport(checked, tuple(problems), newest, before)


def export_witnessed(witness: str, agency: str, records: Sequence[Witnessed], at: str) -> bytes:
    """The document ``fxgw audit witnessed`` writes: ``witness``'s countersigned checkpoints of
    ``agency``'s logs."""
    document = {
        "format": EXPORT_FORMAT,
        "witness": witness,
        "agency": agency,
        "exported_at": at,
        "records": [w.fields() for w in records],
    }
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("ascii")


def parse_export(raw: bytes) -> list[Witnessed]:
    """The records of a document written by :func:`export_witnessed`.

    :raises ValueError: not such a document, or a record in it is malformed (named by index).
    """
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not an {EXPORT_FORMAT} document (write one with 'fxgw audit witnessed')")
    records = document.get("records")
    if not isinstance(records, list):
        raise ValueError("'records' is not a list")
    found = []
    for index, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise PeerError("not an object")
            found.append(witnessed_from(record))
        except PeerError as exc:
            raise ValueError(f"records[{index}]: {exc}") from exc
    return found
