"""Reading record batches around records the Kafka client cannot parse (no broker needed)."""

from __future__ import annotations

import gzip
import struct

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c

from gateway.node._recordbatch import (
    BAD_CRC,
    MALFORMED_BATCH,
    MALFORMED_RECORD,
    MAX_MARKERS,
    NOT_UTF8_HEADER_KEY,
    BatchRecords,
    RawRecord,
    read_batches,
)
from tests.recordbatches import Rec, abort_marker, bad, good, record_batch, with_crc


def _gunzip(codec: int, data: bytes) -> bytes:
    if codec != 1:
        raise ValueError(f"codec {codec} is not used in these tests")
    return gzip.decompress(data)


def _read(data: bytes, fetch_offset: int = 0, **kwargs: object) -> list[BatchRecords]:
    return read_batches(
        data, fetch_offset=fetch_offset, crc32c=calc_crc32c, decompress=_gunzip, **kwargs
    )  # type: ignore[arg-type]  # kwargs are read_batches' own keywords


def _at(batch: bytes, base_offset: int) -> bytes:
    """``batch`` as the broker stores it at ``base_offset`` (the CRC does not cover it)."""
    return struct.pack(">q", base_offset) + batch[8:]


def _summary(batches: list[BatchRecords]) -> list[tuple[int, bytes | None, str | None]]:
    return [(r.offset, r.value, r.unreadable) for b in batches for r in b.records]


def _aiokafka_records(data: bytes) -> list[RawRecord]:
    """What the client library itself reads from ``data`` (it raises on a bad record)."""
    records = MemoryRecords(data)
    found = []
    while records.has_next():
        batch = records.next_batch()
        assert batch is not None
        for r in batch:
            found.append(RawRecord(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)))
    return found


class TestReadBatches:
    """Every record of a raw fetch comes back, in order; bad ones marked with a reason."""

    def test_good_batches_read_as_the_client_reads_them(self) -> None:
        """Records with keys, null values and headers equal what aiokafka parses."""
        first = record_batch([good(b"a"), Rec(None, key=b"k", headers=((b"h", None),))])
        data = first + _at(record_batch([good(b"c")]), 2)
        batches = _read(data)
        assert _aiokafka_records(data) == [r for b in batches for r in b.records]
        assert [2, 3] == [b.next_offset for b in batches]
        assert not any(b.faulty for b in batches)

    def test_header_key_not_utf8_is_marked_and_the_batch_read_on(self) -> None:
        """A bad record in the middle of a batch: the records after it still come back."""
        data = record_batch([good(b"a"), bad(), good(b"c")])
        with pytest.raises((UnicodeDecodeError, CorruptRecordException)):
            _aiokafka_records(data)
        (batch,) = _read(data)
        assert [(0, b"a", None), (1, None, NOT_UTF8_HEADER_KEY), (2, b"c", None)] == _summary(
            [batch]
        )
        assert batch.faulty

    def test_bad_records_at_both_ends_and_in_a_row(self) -> None:
        """Bad records first, last and side by side are each marked at their own offset."""
        data = record_batch([bad(), bad(), good(b"x"), bad()]) + _at(record_batch([bad()]), 4)
        assert [
            (0, None, NOT_UTF8_HEADER_KEY),
            (1, None, NOT_UTF8_HEADER_KEY),
            (2, b"x", None),
            (3, None, NOT_UTF8_HEADER_KEY),
            (4, None, NOT_UTF8_HEADER_KEY),
        ] == _summary(_read(data))

    def test_records_before_the_fetch_offset_are_left_out_but_still_count(self) -> None:
        """Fetched from inside a batch: earlier records are skipped, the batch is still faulty."""
        (batch,) = _read(record_batch([good(b"a"), bad(), good(b"c")]), fetch_offset=2)
        assert [(2, b"c", None)] == _summary([batch])
        assert batch.faulty

    def test_gzip_batch_with_a_bad_record(self) -> None:
        """A compressed batch is decompressed and read around its bad record."""
        (batch,) = _read(record_batch([good(b"a"), bad(), good(b"c")], gzip_records=True))
        assert [(0, b"a", None), (1, None, NOT_UTF8_HEADER_KEY), (2, b"c", None)] == _summary(
            [batch]
        )

    def test_crc_mismatch_marks_every_offset_of_the_batch(self) -> None:
        """A batch whose CRC-32C fails is unreadable as a whole, one marker per offset."""
        data = bytearray(record_batch([good(b"a"), good(b"b"), good(b"c")]))
        data[-1] ^= 0x01
        (batch,) = _read(bytes(data) + _at(record_batch([good(b"d")]), 3))[:1]
        assert [(0, None, BAD_CRC), (1, None, BAD_CRC), (2, None, BAD_CRC)] == _summary([batch])
        assert 3 == batch.next_offset

    def test_corrupt_header_cannot_make_unbounded_markers(self) -> None:
        """A CRC-failing batch claiming 2**31 records gives at most MAX_MARKERS at a time."""
        data = bytearray(record_batch([good(b"a")]))
        struct.pack_into(">i", data, 23, 2**31 - 1)  # lastOffsetDelta
        (batch,) = _read(bytes(data))
        assert MAX_MARKERS == len(batch.records)
        assert MAX_MARKERS == batch.next_offset

    def test_record_of_wrong_length_is_marked_and_the_next_one_read(self) -> None:
        """A record whose fields do not fill its length is malformed; its neighbour is fine."""
        data = bytearray(record_batch([Rec(b"abc"), good(b"z")]))
        # the first record: length 1 + attributes 1 + ts delta 1 + offset delta 1 + key -1 (1)
        # + value length (1) + b"abc"; claim one header where there is none
        at = data.index(b"abc") + 3
        assert 0 == data[at]
        data[at] = 2  # header count 1 (zig-zag)
        (batch,) = _read(with_crc(bytes(data)))
        assert [(0, None, MALFORMED_RECORD), (1, b"z", None)] == _summary([batch])

    def test_length_that_cannot_be_read_marks_the_rest_of_the_batch(self) -> None:
        """A record length running past the batch: it and every later offset are unreadable."""
        data = bytearray(record_batch([good(b"a"), good(b"b"), good(b"c")]))
        second = data.index(b"b") - 1 - 1 - 1 - 1 - 1  # value length, key, offset d., ts d., attrs
        data[second - 1] = 0x7E  # its length varint: 63 bytes, more than is left
        (batch,) = _read(with_crc(bytes(data)))
        assert [
            (0, b"a", None),
            (1, None, MALFORMED_BATCH),
            (2, None, MALFORMED_BATCH),
        ] == _summary([batch])

    def test_truncated_last_batch_is_left_for_the_next_fetch(self) -> None:
        """The broker may cut the last batch at the fetch size; it is not read, nor marked."""
        data = record_batch([good(b"a")]) + _at(record_batch([good(b"b")]), 1)[:-5]
        assert [(0, b"a", None)] == _summary(_read(data))

    def test_aborted_transaction_and_control_batches_are_skipped(self) -> None:
        """Under read_committed an aborted transaction's records and the markers yield nothing."""
        data = (
            record_batch([good(b"t1"), good(b"t2")], producer_id=7, transactional=True)
            + _at(abort_marker(7), 2)
            + _at(record_batch([good(b"after")]), 3)
        )
        batches = _read(data, aborted_transactions=[(7, 0)])
        assert [(3, b"after", None)] == _summary(batches)
        assert [2, 3, 4] == [b.next_offset for b in batches]

    def test_old_message_format_is_unreadable(self) -> None:
        """A v0/v1 message set is not read; its offset is marked."""
        data = bytearray(record_batch([good(b"a")]))
        data[16] = 1  # magic
        (batch,) = _read(bytes(data))
        assert [(0, None, "message format v1 is not supported")] == _summary([batch])
