"""A holder's per-epoch filter of its holdings: a Golomb-Rice coded set (GCS) of OPRF outputs,
in shards small enough for one Kafka message each. Pure.

Construction (BIP-158's, with our parameters): each 32-byte PRF output gives a 64-bit number
``v`` (its first 8 bytes, big-endian). Its top ``s`` bits pick one of ``2**s`` shards; the
remaining bits are mapped into ``[0, n * M)`` by multiply-shift, where ``n`` is the shard's count
and ``M = 2**P``. Each shard sorts its values and Rice-codes the deltas with parameter ``P``
(quotient in unary, ``1``s ended by a ``0``, then ``P`` bits of remainder, most significant bit
first; the last byte is padded with ``0`` bits).

False positives: a non-member lands on one of ``n`` values in ``[0, n * M)`` with probability
about ``1/M`` per lookup, whatever ``n``. ``P`` is chosen so that ``1/M`` is at most HALF the
configured bound, so a measured rate stays under the bound with statistical margin (at 1e-6,
P = 21 and 1/M = 4.8e-7). Size: about P + 2 bits per element.

Shard layout (big-endian): version (1 byte, 1), s (1 byte, 0..16), shard index (4), count (4),
P (1), then the Rice-coded data. :meth:`Shard.from_bytes` checks every header field and that
the data is large enough for ``count`` codes before decoding anything, and decoding checks every
code ends inside the data: a hostile shard is refused with ``PeerError`` ``filter_malformed``.

What no library gives: the GCS packages on PyPI (``chiabip158`` and its forks) wrap Bitcoin's C++
filter with BIP-158's fixed P = 19, M = 784931 and a SipHash key from a block hash: no chosen
false-positive bound, no sharding, no documented stand-alone wire format. The coding here is a
few lines of big-integer and string work, fast enough for a million elements in pure Python.

Security: the filter holds only PRF outputs under the holder's epoch key. Without that key they
are indistinguishable from random, so the filter reveals the number of identifiers held and
nothing about which; testing it for a serial needs an OPRF evaluation by the holder (audited,
rate-limited). A new epoch key makes the old filter useless for testing new queries.
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.errors import PeerError

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "FILTER_VERSION",
    "HoldingsFilter",
    "Shard",
    "rice_parameter",
]

FILTER_VERSION = 1
DEFAULT_MAX_SHARD_BYTES = 512 * 1024
"""A shard stays under this size (header included), so a Kafka message stays under 1 MiB."""
MAX_SHARD_BITS = 16
"""At most 2**16 shards."""
MAX_RICE_P = 32
"""P above this would ask for a false-positive rate below 2**-32: no use, and it keeps n * M in
64 bits."""
_HEADER = struct.Struct(">BBIIB")
_MASK64 = (1 << 64) - 1


def _malformed(message: str) -> PeerError:
    return PeerError(f"holdings filter shard: {message}", reason="filter_malformed")


def rice_parameter(fp_bound: float) -> int:
    """The smallest P with 1/2**P at most half of ``fp_bound``.

    :raises ValueError: ``fp_bound`` is not in (2**-31, 1).
    """
    if not 2.0**-31 <= fp_bound < 1:
        raise ValueError(f"fp_bound must be between 2**-31 and 1, not {fp_bound}")
    return max(1, math.ceil(math.log2(2 / fp_bound)))


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard of a holdings filter: ``index`` of ``shards`` (a power of two), ``count`` coded
    values, Rice parameter ``rice_p``, the coded ``data``."""

    index: int
    shards: int
    count: int
    rice_p: int
    data: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """The shard's wire form (see the module docstring)."""
        bits = self.shards.bit_length() - 1
        return _HEADER.pack(FILTER_VERSION, bits, self.index, self.count, self.rice_p) + self.data

    @classmethod
    def from_bytes(cls, raw: bytes, *, max_bytes: int = 2 * DEFAULT_MAX_SHARD_BYTES) -> Shard:
        """Parse and check a shard's header and size (the data is decoded on first lookup).

        :raises PeerError: reason ``filter_malformed``, when any field or the size is wrong.
        """
        if not _HEADER.size <= len(raw) <= max_bytes:
            raise _malformed(f"{len(raw)} bytes, expected {_HEADER.size} to {max_bytes}")
        version, bits, index, count, rice_p = _HEADER.unpack_from(raw)
        data = raw[_HEADER.size :]
        if version != FILTER_VERSION:
            raise _malformed(f"version {version}, expected {FILTER_VERSION}")
        if bits > MAX_SHARD_BITS or index >= 1 << bits:
            raise _malformed(f"shard {index} of 2**{bits} is out of range")
        if not 1 <= rice_p <= MAX_RICE_P:
            raise _malformed(f"Rice parameter {rice_p} is not between 1 and {MAX_RICE_P}")
        if count * (rice_p + 1) > 8 * len(data):
            raise _malformed(f"{len(data)} data bytes cannot hold {count} codes")
        return cls(index, 1 << bits, count, rice_p, data)


def _split(output: bytes, bits: int) -> tuple[int, int]:
    """The shard index of a PRF output and the 64-bit number mapped into that shard."""
    if len(output) < 8:
        raise ValueError("a PRF output has at least 8 bytes")
    value = int.from_bytes(output[:8], "big")
    return value >> (64 - bits), (value << bits) & _MASK64


def _encode(values: list[int], rice_p: int) -> bytes:
    """Rice-code the deltas of sorted ``values``; built as one string of ``0``/``1`` (C-speed
    joins and one base-2 conversion instead of a loop over bits)."""
    low, form, previous, codes = (1 << rice_p) - 1, f"0{rice_p}b", 0, []
    for value in values:
        delta, previous = value - previous, value
        codes.append("1" * (delta >> rice_p) + "0" + format(delta & low, form))
    bits = "".join(codes)
    size = (len(bits) + 7) // 8
    return int(bits + "0" * (8 * size - len(bits)), 2).to_bytes(size, "big") if bits else b""


def _decode(shard: Shard) -> array[int]:
    """The sorted values of a shard.

    :raises PeerError: reason ``filter_malformed``, a code runs past the data, or a value past
        the shard's range.
    """
    data, rice_p = shard.data, shard.rice_p
    bits = format(int.from_bytes(data, "big"), f"0{8 * len(data)}b") if data else ""
    values, position, value = array("Q"), 0, 0
    for _ in range(shard.count):
        stop = bits.find("0", position)
        if stop < 0 or stop + 1 + rice_p > len(bits):
            raise _malformed("a code runs past the end of the data")
        value += (stop - position) << rice_p | int(bits[stop + 1 : stop + 1 + rice_p], 2)
        if value >= shard.count << rice_p:
            raise _malformed("a value lies outside the shard's range")
        values.append(value)
        position = stop + 1 + rice_p
    if len(bits) - position >= 8 or "1" in bits[position:]:
        raise _malformed("data goes on past the last code")
    return values


@dataclass(frozen=True, slots=True)
class HoldingsFilter:
    """A complete set of shards, with each shard decoded on its first lookup and kept."""

    shards: tuple[Shard, ...]
    _decoded: dict[int, array[int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        outputs: Iterable[bytes],
        fp_bound: float,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    ) -> HoldingsFilter:
        """The filter of ``outputs`` (PRF outputs; duplicates count once), with the fewest shards
        that keep each under ``max_shard_bytes``.

        :raises ValueError: ``fp_bound`` out of range, or no sharding fits ``max_shard_bytes``.
        """
        rice_p = rice_parameter(fp_bound)
        distinct = list(set(outputs))
        estimate = len(distinct) * (rice_p + 2) / 8 * 1.1
        bits = 0
        while bits < MAX_SHARD_BITS and estimate > (max_shard_bytes - _HEADER.size) << bits:
            bits += 1
        while bits <= MAX_SHARD_BITS:
            built = cls._with_bits(distinct, rice_p, bits)
            if all(len(shard.to_bytes()) <= max_shard_bytes for shard in built.shards):
                return built
            bits += 1
        raise ValueError(f"{len(distinct)} elements do not fit {max_shard_bytes}-byte shards")

    @classmethod
    def _with_bits(cls, outputs: list[bytes], rice_p: int, bits: int) -> HoldingsFilter:
        grouped: list[list[int]] = [[] for _ in range(1 << bits)]
        for output in outputs:
            index, rest = _split(output, bits)
            grouped[index].append(rest)
        shards = []
        for index, rests in enumerate(grouped):
            scale = len(rests) << rice_p
            values = sorted((rest * scale) >> 64 for rest in rests)
            shards.append(Shard(index, 1 << bits, len(values), rice_p, _encode(values, rice_p)))
        return cls(tuple(shards))

    @classmethod
    def from_shards(cls, shards: Iterable[Shard]) -> HoldingsFilter:
        """A filter from shards received from a holder, in any order.

        :raises PeerError: reason ``filter_malformed``, when shards are missing, repeated, or
            disagree on their total or Rice parameter.
        """
        ordered = tuple(sorted(shards, key=lambda shard: shard.index))
        if not ordered:
            raise _malformed("no shard")
        total, rice_p = ordered[0].shards, ordered[0].rice_p
        if [s.index for s in ordered] != list(range(total)) or any(
            (s.shards, s.rice_p) != (total, rice_p) for s in ordered
        ):
            raise _malformed(f"expected shards 0 to {total - 1} of one filter, each once")
        return cls(ordered)

    def contains(self, output: bytes) -> bool:
        """Whether the PRF ``output`` may be held: always True for a member, True with
        probability about 2**-P for a non-member.

        :raises PeerError: reason ``filter_malformed``, the shard it falls in does not decode.
        """
        index, rest = _split(output, len(self.shards).bit_length() - 1)
        shard = self.shards[index]
        if (values := self._decoded.get(index)) is None:
            values = self._decoded[index] = _decode(shard)
        target = (rest * (shard.count << shard.rice_p)) >> 64
        at = bisect_left(values, target)
        return at < len(values) and values[at] == target

    @property
    def size(self) -> int:
        """Bytes of all shards on the wire."""
        return sum(len(shard.to_bytes()) for shard in self.shards)

    @property
    def count(self) -> int:
        """Values held."""
        return sum(shard.count for shard in self.shards)

    @property
    def expected_fp_rate(self) -> float:
        """The chance that one lookup of a non-member answers True: 1/M."""
        return 2.0 ** -self.shards[0].rice_p
