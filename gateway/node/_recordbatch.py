"""Read Kafka record batches (message format v2) record by record, naming the ones that are bad.

aiokafka's record parser stops at the first record it cannot parse (a header key that is not
UTF-8, a batch whose CRC does not match, a malformed record) and raises; the records after it in
the same batch are then out of reach through the client. No library reads a batch *around* a bad
record, so this module does: it walks the batches of a raw fetch response the way aiokafka's
fetcher does (control batches and aborted transactions are skipped under ``read_committed``), and
returns every record of each batch, the bad ones marked with a short reason. It is used only to
step over records the client cannot parse (see :class:`gateway.node.transport.Consumer`).

The wire format (``DefaultRecordBatch`` in the Kafka protocol guide)::

    baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 | crc uint32
    | attributes int16 | lastOffsetDelta int32 | baseTimestamp int64 | maxTimestamp int64
    | producerId int64 | producerEpoch int16 | baseSequence int32 | records count int32 | records

    record: length varint | attributes | timestampDelta varlong | offsetDelta varint
            | keyLength varint | key | valueLength varint | value | headers count varint
            | [headerKeyLength varint | headerKey (UTF-8) | headerValueLength varint | value]

Pure: bytes in, values out. The CRC-32C and the decompressors come from the caller (the transport
module, which owns the Kafka client library).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_HEADER = struct.Struct(">qiibIhiqqqhii")
_LOG_OVERHEAD = 12  # baseOffset + batchLength: what precedes the length-counted part
_MAGIC_AT = 16  # where both the old message sets and v2 batches keep their format version
_CRC_FROM = 21  # the CRC covers everything from the attributes on
_CODEC_MASK = 0x07
_LOG_APPEND_TIME = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20
_ABORT_MARKER = 0

NOT_UTF8_HEADER_KEY = "header key is not UTF-8"
BAD_CRC = "record batch fails its CRC-32C check"
MALFORMED_RECORD = "record is malformed"
MALFORMED_BATCH = "record batch is malformed"
MAX_MARKERS = 10_000
"""The most unreadable-record markers returned for one batch in one read."""

Decompress = Callable[[int, bytes], bytes]
"""Decompress a batch's records: ``(codec id, data) -> data``; raises on any failure."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as stored; ``unreadable`` holds the reason when it cannot be parsed."""

    offset: int
    timestamp_ms: int
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class BatchRecords:
    """The records of one batch at or after the fetch offset, and the offset after the batch.

    ``faulty`` is true when the client library would fail on this batch: a record is unreadable,
    or the batch itself is not well formed after its last record. Control batches and aborted
    transactions yield no records.
    """

    records: tuple[RawRecord, ...]
    next_offset: int
    faulty: bool


class _Malformed(Exception):
    """The bytes do not follow the record format (internal to this module)."""


def read_batches(
    data: bytes,
    *,
    fetch_offset: int,
    aborted_transactions: Iterable[tuple[int, int]] = (),
    read_committed: bool = True,
    crc32c: Callable[[bytes], int],
    decompress: Decompress,
) -> list[BatchRecords]:
    """Every complete batch in ``data`` (a fetch response's record set for one partition), in
    order. A truncated batch at the end (a fetch response may cut the last one) is left out.

    ``aborted_transactions`` are the fetch response's ``(producer id, first offset)`` pairs; with
    ``read_committed`` the batches of aborted transactions are skipped, as the client does.
    Never raises for the content of ``data``: what cannot be read is returned marked.
    """
    aborted = sorted(aborted_transactions, key=lambda pair: pair[1])
    aborted_producers: set[int] = set()
    batches: list[BatchRecords] = []
    pos = 0
    while len(data) - pos >= _LOG_OVERHEAD:
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + _LOG_OVERHEAD + length
        if length < _HEADER.size - _LOG_OVERHEAD:
            # too short for a batch header: nothing after it can be located either
            reason = MALFORMED_BATCH
            if length >= _MAGIC_AT - _LOG_OVERHEAD + 1 and end <= len(data):
                reason = f"message format v{data[pos + _MAGIC_AT]} is not supported"
            batches.append(_unreadable_batch(base_offset, base_offset + 1, fetch_offset, reason))
            break
        if end > len(data):
            break  # the broker cuts the last batch at the fetch size; it is fetched again
        raw = data[pos:end]
        pos = end
        header = _HEADER.unpack_from(raw)
        magic, attributes, last_delta, producer_id = header[3], header[5], header[6], header[9]
        next_offset = base_offset + last_delta + 1
        if magic != 2:  # v0 and v1 message sets: their offset field is the (last) offset
            reason = f"message format v{magic} is not supported"
            batches.append(_unreadable_batch(base_offset, base_offset + 1, fetch_offset, reason))
            continue
        if crc32c(raw[_CRC_FROM:]) != header[4]:
            batches.append(_unreadable_batch(base_offset, next_offset, fetch_offset, BAD_CRC))
            continue
        if read_committed:
            while aborted and aborted[0][1] <= base_offset:
                aborted_producers.add(aborted.pop(0)[0])
            if attributes & _CONTROL:
                if _is_abort_marker(raw, attributes, decompress):
                    aborted_producers.discard(producer_id)
            elif attributes & _TRANSACTIONAL and producer_id in aborted_producers:
                batches.append(BatchRecords((), next_offset, faulty=False))
                continue
        if attributes & _CONTROL:
            batches.append(BatchRecords((), next_offset, faulty=False))
            continue
        batches.append(_read_records(raw, header, next_offset, fetch_offset, decompress))
    return batches


def _unreadable_batch(
    base_offset: int, next_offset: int, fetch_offset: int, reason: str
) -> BatchRecords:
    """A batch none of whose records can be read: one marker per offset it covers.

    At most :data:`MAX_MARKERS` at a time (a corrupt header may claim any range); the batch's
    ``next_offset`` then stops after the last marker, and the next read goes on from there.
    """
    first = max(base_offset, fetch_offset)
    end = min(max(next_offset, first + 1), first + MAX_MARKERS)  # always a step forward
    records = tuple(RawRecord(o, -1, unreadable=reason) for o in range(first, end))
    return BatchRecords(records, end, faulty=True)


def _is_abort_marker(raw: bytes, attributes: int, decompress: Decompress) -> bool:
    """Whether a control batch's first record is an abort marker (key: version, type=0)."""
    try:
        records = _records_part(raw, attributes, decompress)
        length, pos = _varint(records, 0)
        record = _parse_record(records[pos : pos + length], 0, 0, 0)
    except Exception:  # a decompressor's failure, or a malformed record: not a marker
        return False
    key = record.key or b""
    return len(key) >= 4 and struct.unpack_from(">h", key, 2)[0] == _ABORT_MARKER


def _records_part(raw: bytes, attributes: int, decompress: Decompress) -> bytes:
    body = raw[_HEADER.size :]
    codec = attributes & _CODEC_MASK
    return decompress(codec, body) if codec else body


def _read_records(
    raw: bytes,
    header: tuple[int, ...],
    next_offset: int,
    fetch_offset: int,
    decompress: Decompress,
) -> BatchRecords:
    base_offset, attributes, first_ts, max_ts, count = (
        header[0],
        header[5],
        header[7],
        header[8],
        header[12],
    )
    try:
        body = _records_part(raw, attributes, decompress)
    except Exception as exc:  # any decompressor's failure: the whole batch is unreadable
        reason = f"records cannot be decompressed (codec {attributes & _CODEC_MASK}): {exc}"
        return _unreadable_batch(base_offset, next_offset, fetch_offset, reason[:200])
    log_append = bool(attributes & _LOG_APPEND_TIME)
    records: list[RawRecord] = []
    faulty = False
    pos = 0
    for index in range(max(count, 0)):
        try:
            length, start = _varint(body, pos)
            if length < 0 or start + length > len(body):
                raise _Malformed
        except _Malformed:
            # no length to step over: nothing after this point can be located
            rest = _unreadable_batch(
                base_offset + index, next_offset, fetch_offset, MALFORMED_BATCH
            )
            return BatchRecords((*records, *rest.records), rest.next_offset, faulty=True)
        pos = start + length
        record = _parse_record(body[start:pos], base_offset, first_ts, base_offset + index)
        if log_append:
            record = RawRecord(
                record.offset, max_ts, record.key, record.value, record.headers, record.unreadable
            )
        faulty = faulty or record.unreadable is not None
        if record.offset >= fetch_offset:
            records.append(record)
    if pos != len(body) or count < 0:
        faulty = True  # trailing bytes or a bad count: the client fails after the last record
    return BatchRecords(tuple(records), next_offset, faulty)


def _parse_record(data: bytes, base_offset: int, first_ts: int, fallback: int) -> RawRecord:
    """One record from exactly its bytes; a record that cannot be parsed comes back marked."""
    offset, timestamp = fallback, first_ts
    try:
        _, pos = _varint(data, 0)  # attributes (unused; read as the client reads them)
        ts_delta, pos = _varint(data, pos)
        timestamp = first_ts + ts_delta
        offset_delta, pos = _varint(data, pos)
        offset = base_offset + offset_delta
        key, pos = _bytes(data, pos)
        value, pos = _bytes(data, pos)
        count, pos = _varint(data, pos)
        if count < 0:
            raise _Malformed
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            name, pos = _bytes(data, pos)
            if name is None:
                raise _Malformed
            header_value, pos = _bytes(data, pos)
            try:
                headers.append((name.decode("utf-8"), header_value))
            except UnicodeDecodeError:
                return RawRecord(offset, timestamp, unreadable=NOT_UTF8_HEADER_KEY)
        if pos != len(data):
            raise _Malformed
    except _Malformed:
        return RawRecord(offset, timestamp, unreadable=MALFORMED_RECORD)
    return RawRecord(offset, timestamp, key, value, tuple(headers))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint (at most 10 bytes) at ``pos``: its value and the position after it."""
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
    raise _Malformed


def _bytes(data: bytes, pos: int) -> tuple[bytes | None, int]:
    """A varint length and that many bytes (None for length -1)."""
    length, pos = _varint(data, pos)
    if length < 0:
        return None, pos
    if pos + length > len(data):
        raise _Malformed
    return data[pos : pos + length], pos + length
