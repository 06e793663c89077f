"""Hit/no-hit queries: epochs, the holders' signed filters, and the rate a holder answers at. Pure.

A holder publishes, per epoch, a filter of the PRF values of its holdings
(:mod:`gateway.crypto.filters`) on the exchange's compacted topic ``<prefix>.hitfilters``, one
``fxgw.HitFilter`` record per shard, keyed by agency and shard and signed with the holder's
signing key (:func:`filter_records`). A querying node keeps the newest complete, verified filter
of each holder (:class:`FilterBook`); a record that is oversized, unsigned, signed by a key the
trust list does not hold, or for an epoch that is over, is refused with a reason code
(:func:`check_filter`), and never replaces a filter already held.

Epochs are counted in whole days since 1970-01-01 (:func:`epoch_of`): a holder's OPRF key
changes with each, so PRF values of two epochs cannot be linked, and a filter is not used after
its epoch (plus a grace period in which the previous epoch still answers, so a query in flight
at the turn does not fail).

A holder answers blind evaluations at a bounded rate per requester (:class:`Allowance`, a
token bucket counted in evaluated points): nobody can enumerate its holdings faster than that,
and every refusal is audited with the requester.

No library does this: it is the federation's own protocol, in the contract's record types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nacl.exceptions
import nacl.signing

from gateway.contract.schemas import SchemaRegistry
from gateway.crypto.keys import SigningKey
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError

FILTER_TYPE = "fxgw.HitFilter"
MAX_FILTER_RECORD_BYTES = 768 * 1024
"""A filter record read from the exchange; larger ones are refused unread (a shard is at most
512 KiB by construction)."""
MAX_SHARDS = 4096
_FILTER_DOMAIN = b"fxgw.hitfilter.v1\x00"
_EPOCH_ZERO = datetime(1970, 1, 1, tzinfo=UTC)


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

    def shards(self, agency: str) -> tuple[int, Sequence[bytes]] | None:
        """The epoch and shards (in order) of the filter held for ``agency``."""
        held = self._held.get(agency)
        if held is None:
            return None
        return held.epoch, [held.parts[i] for i in range(held.shards)]


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
