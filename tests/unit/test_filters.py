"""The Golomb-Rice coded holdings filter: no false negatives, bounded false positives, hostile
shards refused."""

from __future__ import annotations

import random
import struct

import pytest

from gateway.crypto.filters import HoldingsFilter, Shard, rice_parameter
from gateway.errors import PeerError

RNG = random.Random(11)
MEMBERS = [RNG.randbytes(32) for _ in range(100_000)]
NON_MEMBERS = [RNG.randbytes(32) for _ in range(200_000)]
BOUND = 1e-3
FILTER = HoldingsFilter.build(MEMBERS, BOUND, max_shard_bytes=64 * 1024)


def _refused(raw: bytes) -> PeerError:
    """The error of parsing ``raw`` and looking up a value in it, which must be a PeerError."""
    with pytest.raises(PeerError) as caught:
        shard = Shard.from_bytes(raw)
        for value in MEMBERS[:50]:
            HoldingsFilter.from_shards([shard]).contains(value)
    return caught.value


class TestParameters:
    """P keeps the expected false-positive rate at most half the bound."""

    @pytest.mark.parametrize(("bound", "p"), [(0.5, 2), (1e-3, 11), (1e-6, 21), (2**-20, 21)])
    def test_rice_parameter(self, bound: float, p: int) -> None:
        """1/2**P is at most bound/2, and 2/2**P is above it (the smallest such P)."""
        assert p == rice_parameter(bound)
        assert 2.0**-p <= bound / 2 < 2.0 ** (1 - p)

    @pytest.mark.parametrize("bound", [0.0, 1.0, -1.0, 1e-12])
    def test_bad_bound(self, bound: float) -> None:
        """A bound outside (2**-31, 1) is refused."""
        with pytest.raises(ValueError, match="fp_bound"):
            rice_parameter(bound)


class TestLookups:
    """Members are always found; non-members rarely."""

    def test_no_false_negative(self) -> None:
        """Every one of 100,000 members is found."""
        assert [] == [value for value in MEMBERS if not FILTER.contains(value)]

    def test_false_positive_rate(self) -> None:
        """Over 200,000 non-members, the rate is at most the bound (expected: half of it)."""
        hits = sum(FILTER.contains(value) for value in NON_MEMBERS)
        assert hits / len(NON_MEMBERS) <= BOUND
        assert FILTER.expected_fp_rate <= BOUND / 2

    def test_duplicates_count_once(self) -> None:
        """Outputs given twice are held once."""
        assert 3 == HoldingsFilter.build(MEMBERS[:3] * 2, BOUND).count

    def test_empty(self) -> None:
        """An agency that holds nothing publishes one empty shard, which finds nothing."""
        empty = HoldingsFilter.build([], BOUND)
        assert (1, 0) == (len(empty.shards), empty.count)
        parsed = HoldingsFilter.from_shards([Shard.from_bytes(empty.shards[0].to_bytes())])
        assert not any(parsed.contains(value) for value in MEMBERS[:1000])


class TestShards:
    """Shard sizes and the wire form."""

    def test_size_cap(self) -> None:
        """No shard exceeds the cap; the cap forced several shards."""
        assert len(FILTER.shards) >= 4
        assert all(len(shard.to_bytes()) <= 64 * 1024 for shard in FILTER.shards)
        assert len(MEMBERS) == FILTER.count

    def test_bits_per_element(self) -> None:
        """About P + 2 bits per element."""
        p = FILTER.shards[0].rice_p
        assert p + 1 < 8 * FILTER.size / FILTER.count < p + 2.5

    def test_round_trip(self) -> None:
        """Shards parsed from their bytes, in any order, give the same filter and answers."""
        shards = [Shard.from_bytes(shard.to_bytes()) for shard in reversed(FILTER.shards)]
        parsed = HoldingsFilter.from_shards(shards)
        assert FILTER.shards == parsed.shards
        assert all(parsed.contains(value) for value in MEMBERS[::100])

    def test_incomplete_set(self) -> None:
        """A missing or repeated shard is refused."""
        for shards in (FILTER.shards[1:], (*FILTER.shards, FILTER.shards[0]), ()):
            with pytest.raises(PeerError) as caught:
                HoldingsFilter.from_shards(shards)
            assert "filter_malformed" == caught.value.reason

    def test_cap_too_small(self) -> None:
        """A cap no sharding can meet is a ValueError naming the cap."""
        with pytest.raises(ValueError, match="11-byte"):
            HoldingsFilter.build(MEMBERS[:1000], BOUND, max_shard_bytes=11)


SMALL = HoldingsFilter.build(MEMBERS[:50], BOUND).shards[0].to_bytes()


class TestHostileShards:
    """A shard that is not what it claims is refused with filter_malformed."""

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"", id="empty"),
            pytest.param(SMALL[:10], id="header-cut"),
            pytest.param(SMALL[:-1], id="data-cut"),
            pytest.param(SMALL[:11], id="no-data"),
            pytest.param(b"\x02" + SMALL[1:], id="version"),
            pytest.param(SMALL[:1] + b"\x11" + SMALL[2:], id="too-many-shards"),
            pytest.param(SMALL[:2] + b"\x00\x00\x00\x01" + SMALL[6:], id="index"),
            pytest.param(SMALL[:6] + struct.pack(">I", 10**6) + SMALL[10:], id="count"),
            pytest.param(SMALL[:10] + b"\x00" + SMALL[11:], id="p-zero"),
            pytest.param(SMALL[:10] + b"\x40" + SMALL[11:], id="p-huge"),
            pytest.param(SMALL[:11] + b"\xff" * (len(SMALL) - 11), id="all-ones"),
            pytest.param(SMALL + b"\x00", id="trailing"),
            pytest.param(SMALL[:-1] + b"\xff", id="padding-bits"),
            pytest.param(SMALL[:-8] + b"\xff" * 8, id="value-out-of-range"),
            pytest.param(SMALL + bytes(2 * 512 * 1024), id="oversized"),
        ],
    )
    def test_refused(self, raw: bytes) -> None:
        """Cut, padded, edited or oversized shards raise PeerError filter_malformed."""
        assert "filter_malformed" == _refused(raw).reason

    def test_every_flip_is_refused_or_harmless(self) -> None:
        """Flipping any bit of the data gives a PeerError or a shard that still decodes, never
        another exception."""
        for at in range(11, len(SMALL)):
            for bit in (1, 0x80):
                raw = bytearray(SMALL)
                raw[at] ^= bit
                try:
                    HoldingsFilter.from_shards([Shard.from_bytes(bytes(raw))]).contains(MEMBERS[0])
                except PeerError as exc:
                    assert "filter_malformed" == exc.reason
