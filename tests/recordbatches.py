"""Kafka record batches as a broken client would write them, for tests.

aiokafka's batch builder refuses nothing we need, but it writes header keys as UTF-8 text only. A
batch is built with a placeholder key of the same length, the placeholder's bytes are replaced by
the bad ones, and the batch CRC-32C is computed again with aiokafka's own helper, so the batch is
valid in every other respect (the broker checks the CRC and the record structure, and accepts it).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiokafka
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

BAD_KEY = b"\xff\xfe\xfd-not-utf8"
"""A header key that is not UTF-8 (0xff never occurs in UTF-8)."""

_CRC_AT, _CRC_FROM, _ATTRIBUTES_AT, _HEADER_SIZE = 17, 21, 21, 61


@dataclass(frozen=True)
class Rec:
    """One record to put in a batch; header keys are raw bytes (any bytes at all)."""

    value: bytes | None = b""
    key: bytes | None = None
    headers: Sequence[tuple[bytes, bytes | None]] = field(default_factory=tuple)


def good(value: bytes) -> Rec:
    """A record with a valid header."""
    return Rec(value, headers=((b"fxgw-test", b"ok"),))


def bad(value: bytes = b"unreadable") -> Rec:
    """A record whose header key is not UTF-8."""
    return Rec(value, headers=((BAD_KEY, b"v"),))


def record_batch(
    records: Sequence[Rec],
    *,
    gzip_records: bool = False,
    producer_id: int = -1,
    transactional: bool = False,
    control: bool = False,
    timestamp_ms: int = 1_700_000_000_000,
) -> bytes:
    """One v2 record batch holding ``records`` (base offset 0; the broker assigns offsets)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=int(transactional),
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1,
        batch_size=16 * 1024 * 1024,
    )
    replacements: list[tuple[bytes, bytes]] = []
    for index, record in enumerate(records):
        headers: list[tuple[str, bytes | None]] = []
        for number, (name, value) in enumerate(record.headers):
            try:
                headers.append((name.decode("utf-8"), value))
            except UnicodeDecodeError:
                placeholder = _placeholder(index * 100 + number, len(name))
                replacements.append((placeholder, name))
                headers.append((placeholder.decode("ascii"), value))
        builder.append(
            index,
            timestamp=timestamp_ms + index,
            key=record.key,
            value=record.value,
            headers=headers,
        )
    data = bytearray(builder.build())
    for placeholder, raw in replacements:
        assert 1 == data.count(placeholder)
        at = data.index(placeholder)
        data[at : at + len(raw)] = raw
    if gzip_records:
        body = gzip.compress(bytes(data[_HEADER_SIZE:]))
        data[_HEADER_SIZE:] = body
        struct.pack_into(">i", data, 8, len(data) - 12)
    attributes = struct.unpack_from(">h", data, _ATTRIBUTES_AT)[0]
    attributes |= (0x01 if gzip_records else 0) | (0x20 if control else 0)
    struct.pack_into(">h", data, _ATTRIBUTES_AT, attributes)
    return with_crc(bytes(data))


def with_crc(batch: bytes) -> bytes:
    """``batch`` with its CRC-32C computed again (after its bytes were changed)."""
    data = bytearray(batch)
    struct.pack_into(">I", data, _CRC_AT, calc_crc32c(bytes(data[_CRC_FROM:])))
    return bytes(data)


def abort_marker(producer_id: int) -> bytes:
    """The control batch that ends (aborts) ``producer_id``'s transaction."""
    marker = Rec(value=b"\x00\x00\x00\x00\x00\x00", key=struct.pack(">hh", 0, 0))
    return record_batch([marker], producer_id=producer_id, transactional=True, control=True)


def _placeholder(number: int, length: int) -> bytes:
    text = f"~{number:04d}~"
    assert length >= len(text), "bad header keys in tests are at least 6 bytes long"
    return (text + "~" * length)[:length].encode("ascii")


async def produce_raw(bootstrap: str, topic: str, partition: int, *batches: bytes) -> list[int]:
    """Write ``batches`` to one partition with plain ProduceRequests (acks=all), one after the
    other; returns each batch's base offset."""
    client = aiokafka.AIOKafkaClient(bootstrap_servers=bootstrap, client_id="test-raw-producer")
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        offsets = []
        for batch in batches:
            request = ProduceRequest(None, -1, 30_000, [(topic, [(partition, batch)])])
            response = await client.send(leader, request)
            ((_, ((_, error_code, offset, *_),)),) = response.topics
            assert 0 == error_code, f"the broker refused the batch (error {error_code})"
            offsets.append(int(offset))
        return offsets
    finally:
        await client.close()
