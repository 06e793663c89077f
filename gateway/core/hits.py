"""Hit/no-hit queries: epochs, the holders' signed filters, and the rate a holder answers at. Pure.

A holder publishes, per epoch, a filter of the PRF values of its holdings
(:mod:`gateway.crypto.filters`) on its own compacted exchange topic
``<prefix>.hitfilters.<agency>``, one ``fxgw.HitFilter`` record per shard, keyed by agency and
shard and signed with the holder's signing key (:func:`filter_records`). A querying node keeps
the newest complete, verified filter of each holder (:class:`FilterBook`); a record that is
oversized, unsigned, signed by a key the trust list does not hold, or for an epoch that is over,
is refused with a reason code (:func:`check_filter`), and never replaces a filter already held.

Epochs are counted in whole days since 1970-01-01 (:func:`epoch_of`): a holder's OPRF key
changes with each, so PRF values of two epochs cannot be linked, and a filter is not used after
its epoch (plus a grace period in which the previous epoch still answers, so a query in flight
at the turn does not fail).

A holder answers blind evaluations at a bounded rate per requester (:class:`Allowance`, a
token bucket counted in evaluated points): nobody can enumerate its holdings faster than that,
and every refusal is audited with the requester.

Queries (:class:`HitsCore`): the querying node blinds, the holder evaluates, the querying node
unblinds and tests the filter; both sides' messages are ``fxgw.HitEvaluation`` plain events
released through the outbound core and taken in through the inbound core like any other.

No library does this: it is the federation's own protocol, in the contract's record types.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nacl.exceptions
import nacl.signing

from gateway.audit.chain import Value
from gateway.contract.schemas import SchemaRegistry
from gateway.core.effects import (
    AuditEntry,
    Deliver,
    DeliveredEntry,
    Effects,
    Limits,
    Remember,
    merge,
    quarantine,
)
from gateway.core.identifiers import NotQueryable, identifier
from gateway.core.inbound import Delivery, delivery_document
from gateway.core.outbound import PlainEvent
from gateway.crypto import oprf
from gateway.crypto.envelope import Handling, Header, message_id_for
from gateway.crypto.filters import HoldingsFilter, Shard
from gateway.crypto.keys import SigningKey
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError
from gateway.types import AgencyId, EventId, EventType

FILTER_TYPE = "fxgw.HitFilter"
MAX_FILTER_RECORD_BYTES = 768 * 1024
"""A filter record read from the exchange; larger ones are refused unread (a shard is at most
512 KiB by construction)."""
MAX_SHARDS = 4096
_FILTER_DOMAIN = b"fxgw.hitfilter.v1\x00"
_EPOCH_ZERO = datetime(1970, 1, 1, tzinfo=UTC)


def shard_lookup(shards: Sequence[bytes]) -> Callable[[bytes], bool]:
    """The membership test of a filter given as its shards' bytes.

    :raises PeerError: ``filter_malformed``, a shard that does not decode.
    """
    return HoldingsFilter.from_shards([Shard.from_bytes(s) for s in shards]).contains


def epoch_of(moment: datetime, days: int) -> int:
    """The epoch ``moment`` falls in, for epochs of ``days`` days counted from 1970-01-01."""
    return (moment - _EPOCH_ZERO) // timedelta(days=days)


def epoch_window(epoch: int, days: int) -> tuple[datetime, datetime]:
    """When ``epoch`` starts and ends."""
    start = _EPOCH_ZERO + timedelta(days=days * epoch)
    return start, start + timedelta(days=days)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _time(ms: object) -> datetime:
    if isinstance(ms, datetime):
        return ms
    if not isinstance(ms, int):
        raise PeerError("filter record time is not a timestamp", reason="filter_malformed")
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class FilterShard:
    """One verified shard of a holder's filter for one epoch."""

    agency: str
    epoch: int
    valid_from: datetime
    valid_until: datetime
    shard: int
    shards: int
    data: bytes


def _signed_bytes(registry: SchemaRegistry, record: Mapping[str, object]) -> bytes:
    """What a filter record's signature covers: the record with an empty signature."""
    return _FILTER_DOMAIN + registry.write(FILTER_TYPE, {**record, "signature": b""})


def filter_records(
    agency: str,
    epoch: int,
    days: int,
    shards: Sequence[bytes],
    signer: SigningKey,
    registry: SchemaRegistry,
) -> list[tuple[bytes, bytes]]:
    """The signed ``fxgw.HitFilter`` records of one epoch's filter, as (key, value) pairs for
    the compacted topic: the key is agency and shard index, so each shard replaces its
    predecessor of the last epoch."""
    start, end = epoch_window(epoch, days)
    out = []
    for index, data in enumerate(shards):
        record: dict[str, object] = {
            "agency": agency,
            "epoch": epoch,
            "valid_from": _ms(start),
            "valid_until": _ms(end),
            "shard": index,
            "shards": len(shards),
            "data": data,
            "signing_key_id": signer.key_id,
            "signature": b"",
        }
        record["signature"] = signer.sign(_signed_bytes(registry, record))
        out.append((f"{agency}/{index}".encode(), registry.write(FILTER_TYPE, record)))
    return out


def check_filter(
    raw: bytes, registry: SchemaRegistry, trust: TrustList, now: datetime, grace: timedelta
) -> FilterShard:
    """A filter record read from the exchange, verified: size, layout, signature of a key the
    trust list holds for the agency it names, and an epoch not over (``grace`` after its end).

    :raises PeerError: ``filter_oversized``, ``filter_malformed``, ``filter_unsigned`` or
        ``filter_stale``.
    """
    if len(raw) > MAX_FILTER_RECORD_BYTES:
        raise PeerError(f"filter record of {len(raw)} bytes", reason="filter_oversized")
    try:
        record = registry.decode(FILTER_TYPE, raw)
    except PeerError as exc:
        raise PeerError(str(exc), reason="filter_malformed") from exc
    shard, shards = record["shard"], record["shards"]
    if not (isinstance(shards, int) and isinstance(shard, int) and 0 <= shard < shards):
        raise PeerError("filter shard index out of range", reason="filter_malformed")
    if shards > MAX_SHARDS:
        raise PeerError(f"filter of {shards} shards", reason="filter_malformed")
    agency, key_id, signature = record["agency"], record["signing_key_id"], record["signature"]
    assert isinstance(agency, str) and isinstance(key_id, str) and isinstance(signature, bytes)
    try:
        public = trust.signing_key(agency, key_id, now)
    except PeerError as exc:
        raise PeerError(str(exc), reason="filter_unsigned") from exc
    try:
        nacl.signing.VerifyKey(public).verify(_signed_bytes(registry, record), signature)
    except (ValueError, nacl.exceptions.BadSignatureError) as exc:
        raise PeerError(
            f"filter signature does not verify with {key_id}", reason="filter_unsigned"
        ) from exc
    valid_until = _time(record["valid_until"])
    if now > valid_until + grace:
        raise PeerError("filter of an epoch that is over", reason="filter_stale")
    epoch, data = record["epoch"], record["data"]
    assert isinstance(epoch, int) and isinstance(data, bytes)
    return FilterShard(agency, epoch, _time(record["valid_from"]), valid_until, shard, shards, data)


@dataclass(slots=True)
class _Filter:
    epoch: int
    shards: int
    valid_until: datetime
    parts: dict[int, bytes] = field(default_factory=dict)
    contains: Callable[[bytes], bool] | None = None

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.shards


class FilterBook:
    """The newest complete filter of each holder, and the one being assembled. A filter of an
    older epoch than the one held is ignored; a complete newer one replaces it."""

    def __init__(self) -> None:
        self._held: dict[str, _Filter] = {}
        self._coming: dict[str, _Filter] = {}

    def add(self, shard: FilterShard) -> bool:
        """Take one verified shard; True when it completed a filter now in use."""
        held = self._held.get(shard.agency)
        if held is not None and shard.epoch < held.epoch:
            return False
        if held is not None and shard.epoch == held.epoch and shard.shards == held.shards:
            held.parts[shard.shard] = shard.data  # a re-published shard of the filter held
            held.contains = None
            return False
        coming = self._coming.get(shard.agency)
        if coming is None or (coming.epoch, coming.shards) != (shard.epoch, shard.shards):
            if coming is not None and coming.epoch > shard.epoch:
                return False
            coming = _Filter(shard.epoch, shard.shards, shard.valid_until)
            self._coming[shard.agency] = coming
        coming.parts[shard.shard] = shard.data
        if not coming.complete:
            return False
        self._held[shard.agency] = self._coming.pop(shard.agency)
        return True

    def holders(self, now: datetime, grace: timedelta) -> dict[str, int]:
        """The holders whose filter is usable at ``now``, with its epoch."""
        return {a: f.epoch for a, f in self._held.items() if now <= f.valid_until + grace}

    def lookup(self, agency: str) -> Callable[[bytes], bool] | None:
        """The membership test of the filter held for ``agency`` (decoded once per filter)."""
        held = self._held.get(agency)
        if held is None:
            return None
        if held.contains is None:
            held.contains = shard_lookup(self._ordered(held))
        return held.contains

    def shards(self, agency: str) -> tuple[int, Sequence[bytes]] | None:
        """The epoch and shards (in order) of the filter held for ``agency``."""
        held = self._held.get(agency)
        if held is None:
            return None
        return held.epoch, self._ordered(held)

    @staticmethod
    def _ordered(held: _Filter) -> list[bytes]:
        return [held.parts[i] for i in range(held.shards)]


class Allowance:
    """A token bucket per requester, in evaluated points: ``per_minute`` refill, ``burst``
    at most. Its table is bounded: past ``max_requesters`` the fullest buckets (the idlest
    requesters) are forgotten, which only ever refills them."""

    def __init__(self, per_minute: float, burst: int, max_requesters: int = 4096) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_requesters = max_requesters
        self._buckets: dict[str, tuple[float, datetime]] = {}

    def take(self, requester: str, points: int, now: datetime) -> int | None:
        """Spend ``points`` of ``requester``'s allowance; None when granted, else how many
        milliseconds until it would be (nothing is spent then)."""
        tokens, at = self._buckets.get(requester, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, (now - at).total_seconds()) * self.rate)
        if tokens >= points:
            self._remember(requester, tokens - points, now)
            return None
        self._remember(requester, tokens, now)
        if points > self.burst or self.rate <= 0:
            return 60_000
        return math.ceil((points - tokens) / self.rate * 1000)

    def _remember(self, requester: str, tokens: float, now: datetime) -> None:
        if requester not in self._buckets and len(self._buckets) >= self.max_requesters:
            fullest = max(self._buckets, key=lambda r: self._buckets[r][0])
            del self._buckets[fullest]
        self._buckets[requester] = (tokens, now)


# --- queries: the querying node and the holder ---------------------------------------------------

QUERY_TYPE = "fxgw.HitQuery"
RESULT_TYPE = "fxgw.HitResult"
EVALUATION_TYPE = "fxgw.HitEvaluation"
MAX_POINTS = 4
"""Blinded points one request may carry."""
_RESULT_HANDLING = Handling(
    code="H1",
    purpose="hit/no-hit query result",
    source_evaluation="A",
    information_evaluation=1,
    onward_transfer="NONE",
)
"""The handling of a result the node delivers to its own national system: a hit names agencies
that may hold a record, to be confirmed by a trace request, not passed on."""


@dataclass(frozen=True, slots=True)
class HitSettings:
    """What a node's ``hits`` config says, in the units the core takes."""

    epoch_days: int = 1
    grace: timedelta = timedelta(hours=1)
    query_timeout: timedelta = timedelta(minutes=1)
    max_pending: int = 1000


@dataclass(slots=True)
class _Ask:
    """One holder asked for one query: what unblinds and tests its answer."""

    request_id: str
    epoch: int
    blinded: tuple[oprf.Blinded, ...]
    """One per identifier of the query, in order (make and serial; and with the calibre)."""
    contains: Callable[[bytes], bool]


@dataclass(slots=True)
class _Query:
    """A query in flight; its identifier and blinding scalars live only here, in memory."""

    event_id: str
    reference: str | None
    identifiers: tuple[bytes, ...]
    """Make and serial; then make, serial and calibre when the query names a calibre."""
    narrowed: bool
    deadline: datetime
    asked: dict[str, _Ask] = field(default_factory=dict)
    hits: set[str] = field(default_factory=set)
    calibre_hits: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    unanswered: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.answered) + len(set(self.unanswered) & set(self.asked)) >= len(self.asked)


def _new_id(agency: str) -> str:
    return f"{agency}-HE-{uuid.uuid4().hex}"


def _result_id(query_id: str) -> str:
    return f"HR-{hashlib.sha256(query_id.encode()).hexdigest()[:32]}"


@dataclass(slots=True)
class HitsCore:
    """Hit/no-hit queries of one node, both sides. Pure: it takes parsed events and deliveries
    and returns effects; its state is the filter book, the queries in flight (in memory only:
    their blinding scalars never reach a disk) and the holder's allowance per requester.

    Querying: a ``fxgw.HitQuery`` from the national system (:meth:`query`) is normalised,
    blinded once per holder with a usable filter, and each holder is sent a
    ``fxgw.HitEvaluation`` request through ``release`` (the outbound core: policy, sealing,
    signing, audit). Each answer (:meth:`take`) is unblinded and tested against that holder's
    filter; when every holder answered, or at the timeout (:meth:`expire`), a ``fxgw.HitResult``
    is delivered to the national system.

    Holding (``seed`` set): a request is answered with the evaluation of its points under the
    key of the epoch it names (current, or previous within the grace), or refused
    (``rate_limited``, ``epoch_unknown``, ``bad_point``, ``not_served``), the answer released
    through ``release`` too. Audit entries hold metadata only: ids, agencies, epochs, point
    counts, outcomes, reasons; never an identifier, a point or a PRF value.
    """

    agency: str
    country: str
    registry: SchemaRegistry
    release: Callable[[PlainEvent, datetime], Effects]
    """Releases a plain event through the outbound core (explicit recipients)."""
    settings: HitSettings = field(default_factory=HitSettings)
    seed: bytes | None = None
    """The holder's long-term OPRF seed; None: this node holds nothing and answers nothing."""
    allowance: Allowance = field(default_factory=lambda: Allowance(60, 120))
    book: FilterBook = field(default_factory=lambda: FilterBook())
    _pending: dict[str, _Query] = field(default_factory=dict)
    _requests: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Request event id -> (query event id, holder)."""
    _keys: dict[int, oprf.OprfKey] = field(default_factory=dict)

    # --- querying ---------------------------------------------------------------------------

    def query(self, event: PlainEvent, now: datetime) -> Effects:
        """Ask the holders about the firearm a ``fxgw.HitQuery`` names."""
        r = event.record
        reference = _opt_str(r.get("query_reference"))
        if event.event_id in self._pending:
            return Effects()  # the national system sent it again while it is in flight
        make, serial = _opt_str(r.get("make")), _opt_str(r.get("serial_number"))
        obliterated = bool(r.get("serial_obliterated"))
        ident = identifier(make, serial, None, obliterated=obliterated)
        # a calibre narrows the answer, never the search: a holder's record without a calibre
        # is only under make and serial, so both are asked (two points)
        narrow = identifier(make, serial, _opt_str(r.get("calibre")), obliterated=obliterated)
        narrowed = isinstance(narrow, bytes) and narrow != ident
        query = _Query(event.event_id, reference, (), narrowed, now + self.settings.query_timeout)
        if isinstance(ident, NotQueryable):
            return self._finish(query, now, reason=f"{ident.reason.value}: {ident.message}")
        if len(self._pending) >= self.settings.max_pending:
            why = "busy: too many queries in flight; send the query again later"
            return self._finish(query, now, reason=why)
        query.identifiers = (ident, narrow) if narrowed and isinstance(narrow, bytes) else (ident,)
        usable = self.book.holders(now, self.settings.grace)
        wanted = r.get("agencies")
        names = sorted(usable) if not isinstance(wanted, list) else [str(a) for a in wanted]
        parts: list[Effects] = []
        for holder in dict.fromkeys(names):
            if holder == self.agency:
                continue
            epoch = usable.get(holder)
            try:
                contains = self.book.lookup(holder) if epoch is not None else None
            except PeerError as exc:
                query.unanswered[holder] = f"{holder}: {exc.reason}"
                continue
            if epoch is None or contains is None:
                query.unanswered[holder] = f"{holder}: no usable filter"
                continue
            blinded = tuple(oprf.blind(i) for i in query.identifiers)
            request = self._evaluation(holder, now, epoch=epoch, blinded=[b.point for b in blinded])
            released = self.release(request, now)
            parts.append(released)
            if any(e.recipient == holder for e in released.envelopes):
                query.asked[holder] = _Ask(request.event_id, epoch, blinded, contains)
                self._requests[request.event_id] = (query.event_id, holder)
            elif (reason := _refusal(released, named=isinstance(wanted, list))) is not None:
                query.unanswered[holder] = f"{holder}: not released ({reason})"
        data: dict[str, Value] = {
            "query_event_id": query.event_id,
            "asked": sorted(query.asked),
            "epochs": [f"{a}:{query.asked[a].epoch}" for a in sorted(query.asked)],
            "points": len(query.asked) * len(query.identifiers),
            "narrowed_by_calibre": query.narrowed,
            "unanswered": sorted(query.unanswered),
        }
        parts.append(Effects(audit=(AuditEntry("hit_query", data, "hit_query", "hit_queries"),)))
        if not query.asked:
            parts.append(self._finish(query, now))
        else:
            self._pending[query.event_id] = query
        return merge(*parts)

    def _answer(self, delivery: Delivery, now: datetime) -> Effects:
        r, holder = delivery.record, delivery.header.sender
        found = self._requests.pop(str(r.get("in_reply_to")), None)
        query = self._pending.get(found[0]) if found is not None else None
        if found is None or query is None or found[1] != holder:
            data: dict[str, Value] = {"message_id": delivery.header.message_id, "holder": holder}
            kind = "hit_answer_unmatched"
            return Effects(audit=(AuditEntry(kind, data, kind, "hit_unmatched", warn=True),))
        ask = query.asked[holder]
        refused, evaluated = _opt_str(r.get("refused")), r.get("evaluated")
        parts: list[Effects] = []
        if refused is not None:
            retry = r.get("retry_after_ms")
            query.unanswered[holder] = f"{holder}: {refused}" + (
                f" (retry after {retry} ms)" if isinstance(retry, int) else ""
            )
            data = {
                "query_event_id": query.event_id,
                "holder": holder,
                "requester": self.agency,
                "reason": refused,
                "retry_after_ms": retry if isinstance(retry, int) else None,
            }
            entry = AuditEntry("hit_refused", data, "hit_refused", f"hit_refused_{refused}", True)
            parts.append(Effects(audit=(entry,)))
        elif (
            r.get("epoch") != ask.epoch
            or not isinstance(evaluated, list)
            or len(evaluated) != len(ask.blinded)
        ):
            query.unanswered[holder] = f"{holder}: bad_answer"
        else:
            try:
                matched = [
                    ask.contains(oprf.finalize(i, oprf.unblind(b, e)))
                    for i, b, e in zip(query.identifiers, ask.blinded, evaluated, strict=True)
                ]
            except PeerError as exc:
                query.unanswered[holder] = f"{holder}: {exc.reason}"
            else:
                query.answered.add(holder)
                if matched[0]:
                    query.hits.add(holder)
                if matched[0] and matched[1:] == [True]:
                    query.calibre_hits.add(holder)
        if query.done:
            parts.append(self._finish(query, now))
        return merge(*parts)

    def expire(self, now: datetime, *, why: str = "no answer in time") -> Effects:
        """Results for the queries whose time is up: PARTIAL, naming who did not answer."""
        late = [q for q in self._pending.values() if q.deadline <= now]
        for query in late:
            for holder in set(query.asked) - query.answered - set(query.unanswered):
                query.unanswered[holder] = f"{holder}: {why}"
        return merge(*(self._finish(q, now) for q in late))

    def forget_all(self, now: datetime) -> Effects:
        """Results for every query in flight, because the node is stopping and their blinding
        scalars go with it: PARTIAL, naming who did not answer."""
        for query in self._pending.values():
            query.deadline = now
        return self.expire(now, why="the node stopped before the answer")

    def _finish(self, query: _Query, now: datetime, *, reason: str | None = None) -> Effects:
        """The ``fxgw.HitResult`` of ``query``, delivered to the national system, audited."""
        self._pending.pop(query.event_id, None)
        for ask in query.asked.values():
            self._requests.pop(ask.request_id, None)
        status = "NOT_QUERIED" if reason else "PARTIAL" if query.unanswered else "ANSWERED"
        now = _millis(now)
        record: dict[str, object] = {
            "event_id": _result_id(query.event_id),
            "query_event_id": query.event_id,
            "query_reference": query.reference,
            "answered_at": now,
            "status": status,
            "hits": sorted(query.hits),
            "calibre_hits": sorted(query.calibre_hits),
            "asked": sorted(query.asked),
            "unanswered": [query.unanswered[a] for a in sorted(query.unanswered)],
            "narrowed_by_calibre": query.narrowed and not reason,
            "reason": reason,
        }
        data: dict[str, Value] = {
            "query_event_id": query.event_id,
            "status": status,
            "hits": sorted(query.hits),
            "asked": sorted(query.asked),
            "unanswered": sorted(query.unanswered),
        }
        entry = AuditEntry("hit_result", data, "hit_result", f"hit_results_{status.lower()}")
        return Effects(deliveries=(self._deliver(record, now),), audit=(entry,))

    def _deliver(self, record: dict[str, object], now: datetime) -> Deliver:
        """A result as a delivery like any received event's, its provenance naming this node."""
        event_id = str(record["event_id"])
        agency = AgencyId(self.agency)
        body = self.registry.write(RESULT_TYPE, record)
        header = Header(
            message_id=message_id_for(agency, event_id, agency),
            event_id=EventId(event_id),
            sender=agency,
            recipient=agency,
            event_type=EventType(RESULT_TYPE),
            schema_fingerprint=self.registry.get(RESULT_TYPE).fingerprint,
            policy_id="fxgw.hits",
            policy_rule="hit-result",
            policy_digest=b"",
            handling=_RESULT_HANDLING,
            created_at=now,
            expires_at=now + timedelta(days=1),
        )
        digest = hashlib.sha256(body).digest()
        document = delivery_document(Delivery(header, record, digest, now), self.registry)
        ms = int(now.timestamp() * 1000)
        return Deliver(
            message_id=header.message_id,
            event_id=event_id,
            event_type=RESULT_TYPE,
            sender=agency,
            handling=_RESULT_HANDLING.code,
            document=document,
            entry=DeliveredEntry(ms + 86_400_000, ms, digest),
            remember=Remember(event_id, agency, "H1", "NONE", ms + 86_400_000),
        )

    # --- holding ----------------------------------------------------------------------------

    def take(self, delivery: Delivery, now: datetime) -> Effects:
        """A delivered ``fxgw.HitEvaluation``: a request to answer, or an answer to a query."""
        if delivery.record.get("in_reply_to") is None:
            return self._request(delivery, now)
        return self._answer(delivery, now)

    def served_epochs(self, now: datetime) -> tuple[int, ...]:
        """The epochs a holder evaluates for at ``now``: the current one and, within the grace
        after it began, the previous one."""
        days = self.settings.epoch_days
        current = epoch_of(now, days)
        started, _ = epoch_window(current, days)
        return (current, current - 1) if now < started + self.settings.grace else (current,)

    def key(self, epoch: int) -> oprf.OprfKey:
        """The holder's OPRF key of ``epoch`` (this node must hold a seed)."""
        assert self.seed is not None
        key = self._keys.get(epoch)
        if key is None:
            self._keys = {e: k for e, k in self._keys.items() if e >= epoch - 1}
            key = self._keys[epoch] = oprf.OprfKey.derive(self.seed, epoch)
        return key

    def _request(self, delivery: Delivery, now: datetime) -> Effects:
        r, requester = delivery.record, delivery.header.sender
        sent = r.get("blinded")
        points = [p for p in sent if isinstance(p, bytes)] if isinstance(sent, list) else []
        epoch = r.get("epoch")
        retry: int | None = None
        evaluated: list[bytes] = []
        reason: str | None = None
        if self.seed is None:
            reason = "not_served"
        elif not 1 <= len(points) <= MAX_POINTS or r.get("evaluated"):
            reason = "bad_point"
        elif not isinstance(epoch, int) or epoch not in self.served_epochs(now):
            reason = "epoch_unknown"
        elif (retry := self.allowance.take(requester, len(points), now)) is not None:
            reason = "rate_limited"
        else:
            try:
                evaluated = [self.key(int(epoch)).evaluate(p) for p in points]
            except PeerError:
                reason = "bad_point"
        answer = self._evaluation(
            requester,
            now,
            epoch=epoch if isinstance(epoch, int) else 0,
            in_reply_to=delivery.header.event_id,
            evaluated=evaluated if reason is None else [],
            refused=reason,
            retry_after_ms=retry,
        )
        data: dict[str, Value] = {
            "request_event_id": delivery.header.event_id,
            "message_id": delivery.header.message_id,
            "requester": requester,
            "epoch": epoch if isinstance(epoch, int) else None,
            "points": len(points),
        }
        if reason is None:
            entry = AuditEntry("hit_evaluated", data, "hit_evaluated", "hit_evaluations_served")
        else:
            data.update(reason=reason, retry_after_ms=retry)
            entry = AuditEntry("hit_refused", data, "hit_refused", f"hit_refused_{reason}", True)
        return merge(Effects(audit=(entry,)), self.release(answer, now))

    def _evaluation(
        self,
        recipient: str,
        now: datetime,
        *,
        epoch: int,
        blinded: Sequence[bytes] = (),
        evaluated: Sequence[bytes] = (),
        in_reply_to: str | None = None,
        refused: str | None = None,
        retry_after_ms: int | None = None,
    ) -> PlainEvent:
        """A ``fxgw.HitEvaluation`` to ``recipient`` as a plain event for the outbound core."""
        event_id = _new_id(self.agency)
        record: dict[str, object] = {
            "event_id": event_id,
            "sent_at": _millis(now),
            "sending_agency": {"agency_id": self.agency, "country": self.country, "name": None},
            "in_reply_to": in_reply_to,
            "epoch": epoch,
            "blinded": list(blinded),
            "evaluated": list(evaluated),
            "refused": refused,
            "retry_after_ms": retry_after_ms,
        }
        return PlainEvent(EventType(EVALUATION_TYPE), EventId(event_id), record, (recipient,))

    # --- filters ----------------------------------------------------------------------------

    def take_filter(self, raw: bytes, trust: TrustList, now: datetime, limits: Limits) -> Effects:
        """One record of a holder's filter topic: kept in the book when it verifies (audited
        when it completes a filter), else quarantined with its reason. An empty record is a
        tombstone of a shard a smaller filter no longer has: nothing to do."""
        if not raw:
            return Effects()
        try:
            shard = check_filter(raw, self.registry, trust, now, self.settings.grace)
        except PeerError as exc:
            return quarantine(
                raw,
                reason=exc.reason,
                detail=str(exc),
                direction="hitfilters",
                now_ms=int(now.timestamp() * 1000),
                limits=limits,
                log_event="hit_filter_refused",
            )
        if shard.agency == self.agency or not self.book.add(shard):
            return Effects()
        held = self.book.shards(shard.agency)
        size = sum(len(s) for s in held[1]) if held else 0
        data: dict[str, Value] = {
            "holder": shard.agency,
            "epoch": shard.epoch,
            "shards": shard.shards,
            "bytes": size,
        }
        return Effects(audit=(AuditEntry("hit_filter", data, "hit_filter", "hit_filters"),))


def _millis(moment: datetime) -> datetime:
    """``moment`` cut to whole milliseconds, as Avro's timestamp-millis holds it."""
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _refusal(effects: Effects, *, named: bool) -> str | None:
    """Why a request was not released, from its audit entries: a refusal (fail closed), or a
    policy denial when the query named the holder (a holder the policy does not ask, asked by
    nobody in particular, is simply not asked)."""
    for entry in effects.audit:
        if entry.kind == "release_refused" or (named and entry.kind == "release_denied"):
            return str(entry.data.get("reason"))
    return None
