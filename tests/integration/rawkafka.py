"""Records no well-behaved Kafka client would write, put on a topic with a raw ProduceRequest.

aiokafka's producer encodes header keys from ``str``, so it cannot write a header key that is not
valid UTF-8; the broker, however, stores header keys as opaque bytes. Here a record batch is built
with a placeholder key, the placeholder's bytes are overwritten in place (same length, so every
varint length stays right), the batch's CRC-32C is recomputed, and the batch goes to the
partition leader in a ProduceRequest through aiokafka's client.
"""

from __future__ import annotations

import struct

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBase, DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

_PLACEHOLDER = "fxgw-test-placeholder-header-key"


def batch_with_header_key(value: bytes, header_key: bytes) -> bytes:
    """A one-record batch (magic 2, uncompressed) whose only header key is ``header_key``."""
    if len(header_key) != len(_PLACEHOLDER):
        header_key = (header_key * len(_PLACEHOLDER))[: len(_PLACEHOLDER)]
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=len(value) + 1024,
    )
    builder.append(0, timestamp=None, key=None, value=value, headers=[(_PLACEHOLDER, b"x")])
    batch = bytearray(builder.build())
    at = batch.rindex(_PLACEHOLDER.encode())
    batch[at : at + len(header_key)] = header_key
    crc = calc_crc32c(bytes(batch[DefaultRecordBase.ATTRIBUTES_OFFSET :]))
    struct.pack_into(">I", batch, DefaultRecordBase.CRC_OFFSET, crc)
    return bytes(batch)


async def produce_raw_batch(bootstrap: str, topic: str, batch: bytes, partition: int = 0) -> None:
    """Send ``batch`` to ``topic``'s partition leader (acks=all) and check the answer."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="test-raw-produce")
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        if leader is None or leader < 0:
            raise AssertionError(f"no leader for {topic}:{partition}")
        request = ProduceRequest(
            transactional_id=None,
            required_acks=-1,
            timeout=10_000,
            topics=[(topic, [(partition, batch)])],
        )
        response = await client.send(leader, request)
        errors = [p[1] for _, partitions in response.topics for p in partitions]
        if errors != [0]:
            raise AssertionError(f"the broker refused the raw batch: error codes {errors}")
    finally:
        await client.close()
