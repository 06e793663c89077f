"""Hit/no-hit queries: epochs, signed filter records, the filter book and the holder's rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.contract.schemas import SchemaRegistry
from gateway.core.hits import (
    FILTER_TYPE,
    MAX_FILTER_RECORD_BYTES,
    Allowance,
    FilterBook,
    FilterShard,
    check_filter,
    epoch_of,
    epoch_window,
    filter_records,
)
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList
from gateway.errors import PeerError

NOW = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)


class TestEpochs:
    def test_an_epoch_spans_its_days_and_holds_its_moments(self) -> None:
        """epoch_window(epoch_of(t)) contains t and is ``days`` long."""
        for days in (1, 7, 30):
            start, end = epoch_window(epoch_of(NOW, days), days)
            assert start <= NOW < end
            assert timedelta(days=days) == end - start

    def test_the_next_day_is_the_next_epoch_of_one_day(self) -> None:
        """Daily epochs change at midnight UTC."""
        midnight = datetime(2026, 12, 4, tzinfo=UTC)
        assert epoch_of(midnight, 1) == epoch_of(midnight - timedelta(microseconds=1), 1) + 1


def _records(
    keys: AgencyKeys, registry: SchemaRegistry, shards: list[bytes], epoch: int | None = None
) -> list[tuple[bytes, bytes]]:
    return filter_records(
        "BE-FPJ", epoch_of(NOW, 1) if epoch is None else epoch, 1, shards, keys.signing, registry
    )


class TestFilterRecords:
    def test_a_signed_record_verifies_and_keeps_its_shard(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Each shard becomes one record keyed agency/index, verified against the trust list."""
        records = _records(be_keys, registry2, [b"one", b"two"])
        assert [b"BE-FPJ/0", b"BE-FPJ/1"] == [k for k, _ in records]
        shard = check_filter(records[1][1], registry2, trust, NOW, GRACE)
        assert ("BE-FPJ", 1, 2, b"two") == (shard.agency, shard.shard, shard.shards, shard.data)
        assert shard.valid_from <= NOW < shard.valid_until

    def test_any_changed_byte_is_refused(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Flipping any byte of a record fails: unsigned, malformed or out of range."""
        raw = _records(be_keys, registry2, [b"holdings"])[0][1]
        for i in range(len(raw)):
            tampered = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
            with pytest.raises(PeerError) as info:
                check_filter(tampered, registry2, trust, NOW, GRACE)
            assert info.value.reason in {"filter_unsigned", "filter_malformed", "schema_invalid"}

    def test_a_record_signed_by_another_agency_is_refused(
        self, nl_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """NL-POL's key cannot sign BE-FPJ's filter."""
        raw = _records(nl_keys, registry2, [b"x"])[0][1]
        with pytest.raises(PeerError) as info:
            check_filter(raw, registry2, trust, NOW, GRACE)
        assert "filter_unsigned" == info.value.reason

    def test_a_filter_of_an_epoch_that_is_over_is_refused(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Yesterday's filter is refused once the grace period after its end has passed."""
        raw = _records(be_keys, registry2, [b"x"], epoch=epoch_of(NOW, 1) - 1)[0][1]
        assert check_filter(raw, registry2, trust, NOW.replace(hour=0, minute=30), GRACE)
        with pytest.raises(PeerError) as info:
            check_filter(raw, registry2, trust, NOW, GRACE)
        assert "filter_stale" == info.value.reason

    def test_an_oversized_record_is_refused_unread(
        self, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """Size is checked before any decoding."""
        with pytest.raises(PeerError) as info:
            check_filter(b"\0" * (MAX_FILTER_RECORD_BYTES + 1), registry2, trust, NOW, GRACE)
        assert "filter_oversized" == info.value.reason

    def test_a_shard_index_outside_the_count_is_refused(
        self, be_keys: AgencyKeys, registry2: SchemaRegistry, trust: TrustList
    ) -> None:
        """shard must be below shards."""
        record = registry2.decode(FILTER_TYPE, _records(be_keys, registry2, [b"x"])[0][1])
        bad = registry2.write(FILTER_TYPE, {**record, "shard": 3})
        with pytest.raises(PeerError) as info:
            check_filter(bad, registry2, trust, NOW, GRACE)
        assert "filter_malformed" == info.value.reason


def _shard(epoch: int, index: int, count: int, data: bytes = b"d") -> FilterShard:
    start, end = epoch_window(epoch, 1)
    return FilterShard("BE-FPJ", epoch, start, end, index, count, data)


class TestFilterBook:
    def test_a_filter_is_used_once_all_its_shards_are_in(self) -> None:
        """Shards assemble; the filter is held only when complete."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        assert not book.add(_shard(epoch, 1, 2, b"b"))
        assert {} == book.holders(NOW, GRACE)
        assert book.add(_shard(epoch, 0, 2, b"a"))
        assert {"BE-FPJ": epoch} == book.holders(NOW, GRACE)
        assert (epoch, [b"a", b"b"]) == book.shards("BE-FPJ")

    def test_a_newer_epoch_replaces_the_held_one_only_when_complete(self) -> None:
        """Until the new epoch's filter is whole, the old one answers."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        book.add(_shard(epoch - 1, 0, 1, b"old"))
        book.add(_shard(epoch, 0, 2, b"new0"))
        assert (epoch - 1, [b"old"]) == book.shards("BE-FPJ")
        book.add(_shard(epoch, 1, 2, b"new1"))
        assert (epoch, [b"new0", b"new1"]) == book.shards("BE-FPJ")

    def test_an_older_epoch_never_replaces_a_newer_one(self) -> None:
        """A replayed old filter is ignored."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        book.add(_shard(epoch, 0, 1, b"new"))
        assert not book.add(_shard(epoch - 1, 0, 1, b"old"))
        assert (epoch, [b"new"]) == book.shards("BE-FPJ")

    def test_a_filter_past_its_epoch_and_grace_is_not_offered(self) -> None:
        """holders() leaves out a filter whose epoch ended more than the grace ago."""
        book, epoch = FilterBook(), epoch_of(NOW, 1)
        book.add(_shard(epoch, 0, 1))
        assert {} == book.holders(NOW + timedelta(days=1, hours=2), GRACE)


class TestAllowance:
    def test_a_burst_is_granted_then_refused_with_the_wait(self) -> None:
        """burst points at once; the next point waits 60/per_minute seconds."""
        allowance = Allowance(per_minute=60, burst=5)
        assert [None] * 5 == [allowance.take("NL-POL", 1, NOW) for _ in range(5)]
        assert 1000 == allowance.take("NL-POL", 1, NOW)
        assert allowance.take("NL-POL", 1, NOW + timedelta(seconds=1)) is None

    def test_requesters_have_their_own_buckets(self) -> None:
        """One requester's flood does not spend another's allowance."""
        allowance = Allowance(per_minute=1, burst=1)
        assert allowance.take("NL-POL", 1, NOW) is None
        assert allowance.take("NL-POL", 1, NOW) is not None
        assert allowance.take("US-ATF", 1, NOW) is None

    def test_more_points_than_the_burst_are_never_granted(self) -> None:
        """A request larger than the bucket is refused outright."""
        assert 60_000 == Allowance(per_minute=600, burst=4).take("NL-POL", 5, NOW)

    def test_the_table_of_requesters_is_bounded(self) -> None:
        """Past max_requesters, the table stays at its bound."""
        allowance = Allowance(per_minute=1, burst=1, max_requesters=8)
        for i in range(100):
            allowance.take(f"XX-{i}", 1, NOW)
        assert 8 == len(allowance._buckets)
