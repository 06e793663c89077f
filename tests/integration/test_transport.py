"""The Kafka consumer on a real broker: records the client cannot parse are stepped over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from gateway.node.transport import Consumer, Message, Producer, TopicSpec, ensure_topics
from tests.recordbatches import bad, good, produce_raw, record_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NOT_UTF8 = "header key is not UTF-8"


@pytest.fixture
async def topic(kafka_bootstrap: str, topic_prefix: str) -> str:
    """A new one-partition topic."""
    name = f"{topic_prefix}.records"
    await ensure_topics(kafka_bootstrap, [TopicSpec(name)])
    return name


@pytest.fixture
async def consumer(kafka_bootstrap: str, topic: str, topic_prefix: str) -> AsyncIterator[Consumer]:
    """A started group member on ``topic``."""
    c = _consumer(kafka_bootstrap, topic, f"{topic_prefix}.group")
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def _consumer(bootstrap: str, topic: str, group: str, max_poll_records: int = 500) -> Consumer:
    return Consumer(
        [topic],
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="test-consumer",
        max_poll_records=max_poll_records,
    )


async def _send(bootstrap: str, topic: str, *values: bytes, partition: int = 0) -> None:
    """Valid records, written by our own producer."""
    producer = Producer(bootstrap, "test-producer")
    await producer.start()
    try:
        for value in values:
            await producer._producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def _drain(
    consumer: Consumer, count: int, *, max_records: int | None = None, within_s: float = 30.0
) -> list[Message]:
    """Poll (and commit each batch) until ``count`` messages came, then poll twice more to see
    that nothing else comes."""
    got: list[Message] = []
    deadline = time.monotonic() + within_s
    quiet = 0
    while quiet < 2:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} messages in time"
        batch = await consumer.poll(timeout_ms=500, max_records=max_records)
        got.extend(batch)
        await consumer.commit(batch)
        quiet = quiet + 1 if len(got) >= count and not batch else 0
    return got


def _seen(messages: list[Message]) -> list[tuple[int, int, bytes, str | None]]:
    return [(m.partition, m.offset, m.value, m.unreadable) for m in messages]


async def _committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


class TestConsumerUnreadableRecords:
    """Consumer.poll on a partition holding records whose header key is not UTF-8."""

    async def test_bad_record_between_valid_ones(
        self, kafka_bootstrap: str, topic: str, topic_prefix: str, consumer: Consumer
    ) -> None:
        """Every valid record once, in order; one marker at the bad offset; committed past it."""
        await _send(kafka_bootstrap, topic, b"v0", b"v1")
        await produce_raw(kafka_bootstrap, topic, 0, record_batch([bad()]))
        await _send(kafka_bootstrap, topic, b"v3", b"v4")
        got = await _drain(consumer, 5)
        assert [
            (0, 0, b"v0", None),
            (0, 1, b"v1", None),
            (0, 2, b"", NOT_UTF8),
            (0, 3, b"v3", None),
            (0, 4, b"v4", None),
        ] == _seen(got)
        marker = got[2]
        assert (None, (), topic) == (marker.key, marker.headers, marker.topic)
        assert {0: 5} == await _committed(kafka_bootstrap, f"{topic_prefix}.group")

    async def test_bad_records_in_a_row_and_at_both_ends_of_a_batch(
        self, kafka_bootstrap: str, topic: str, consumer: Consumer
    ) -> None:
        """Bad records first, last and side by side in one batch, and good ones between."""
        await produce_raw(
            kafka_bootstrap,
            topic,
            0,
            record_batch([bad(), bad(), good(b"g2"), bad(), good(b"g4"), bad()]),
            record_batch([good(b"g6"), good(b"g7")]),
            record_batch([bad(), bad(), bad()]),
            record_batch([good(b"g11")]),
        )
        got = await _drain(consumer, 12)
        expected_bad = {0, 1, 3, 5, 8, 9, 10}
        assert [
            (
                0,
                o,
                b"" if o in expected_bad else b"g%d" % o,
                NOT_UTF8 if o in expected_bad else None,
            )
            for o in range(12)
        ] == _seen(got)

    async def test_small_polls_across_a_bad_batch(
        self, kafka_bootstrap: str, topic: str, consumer: Consumer
    ) -> None:
        """With max_records=1 each record still comes once, in order."""
        await produce_raw(
            kafka_bootstrap,
            topic,
            0,
            record_batch([good(b"g0"), bad(), good(b"g2"), good(b"g3")]),
            record_batch([good(b"g4")]),
        )
        got = await _drain(consumer, 5, max_records=1)
        assert [0, 1, 2, 3, 4] == [m.offset for m in got]
        assert [None, NOT_UTF8, None, None, None] == [m.unreadable for m in got]

    async def test_restart_committed_inside_a_bad_batch(
        self, kafka_bootstrap: str, topic: str, topic_prefix: str
    ) -> None:
        """A member that starts after the marker, inside the bad record's batch, reads the rest."""
        await produce_raw(
            kafka_bootstrap, topic, 0, record_batch([good(b"g0"), bad(), good(b"g2"), good(b"g3")])
        )
        group = f"{topic_prefix}.restart"
        first = _consumer(kafka_bootstrap, topic, group)
        await first.start()
        try:
            got: list[Message] = []
            deadline = time.monotonic() + 30
            while not any(m.unreadable for m in got):
                assert time.monotonic() < deadline
                got.extend(await first.poll(timeout_ms=500))
            marker = next(m for m in got if m.unreadable)
            await first.commit([marker])  # crash after handling the marker only
        finally:
            await first.stop()
        second = _consumer(kafka_bootstrap, topic, group)
        await second.start()
        try:
            rest = await _drain(second, 2)
        finally:
            await second.stop()
        assert [(0, 2, b"g2", None), (0, 3, b"g3", None)] == _seen(rest)

    async def test_records_drained_from_another_partition_are_not_lost(
        self, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """Records the client drained from a good partition in the failed poll come once."""
        topic = f"{topic_prefix}.two"
        await ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=2)])
        await _send(kafka_bootstrap, topic, b"a0", partition=0)
        await _send(kafka_bootstrap, topic, b"b0", partition=1)
        consumer = _consumer(kafka_bootstrap, topic, f"{topic_prefix}.two")
        await consumer.start()
        try:
            got = await _drain(consumer, 2)
            # Partition 0's records are fetched and buffered first, partition 1's bad batch
            # after them; the next poll drains partition 0, then fails on partition 1.
            await _send(kafka_bootstrap, topic, b"a1", b"a2", b"a3", partition=0)
            await asyncio.sleep(1.5)
            await produce_raw(
                kafka_bootstrap, topic, 1, record_batch([good(b"b1"), bad(), good(b"b3")])
            )
            await asyncio.sleep(1.5)
            got += await _drain(consumer, 4)
        finally:
            await consumer.stop()
        assert [b"a0", b"a1", b"a2", b"a3"] == [m.value for m in got if m.partition == 0]
        assert [
            (1, 0, b"b0", None),
            (1, 1, b"b1", None),
            (1, 2, b"", NOT_UTF8),
            (1, 3, b"b3", None),
        ] == _seen([m for m in got if m.partition == 1])

    async def test_many_partitions_with_bad_records(
        self, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """Four partitions, bad records in two of them: each partition complete and in order."""
        topic = f"{topic_prefix}.four"
        await ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=4)])
        for p in range(4):
            await _send(
                kafka_bootstrap, topic, *(b"%d-%d" % (p, i) for i in range(100)), partition=p
            )
        for p in (1, 3):
            await produce_raw(kafka_bootstrap, topic, p, record_batch([bad(), good(b"%d-x" % p)]))
            await _send(kafka_bootstrap, topic, b"%d-last" % p, partition=p)
        consumer = _consumer(kafka_bootstrap, topic, f"{topic_prefix}.four", max_poll_records=30)
        await consumer.start()
        try:
            got = await _drain(consumer, 406)
        finally:
            await consumer.stop()
        for p in range(4):
            mine = [m for m in got if m.partition == p]
            assert list(range(len(mine))) == [m.offset for m in mine]
            tail = [b"", b"%d-x" % p, b"%d-last" % p] if p in (1, 3) else []
            assert [b"%d-%d" % (p, i) for i in range(100)] + tail == [m.value for m in mine]

    async def test_gzip_batch_with_a_bad_record(
        self, kafka_bootstrap: str, topic: str, consumer: Consumer
    ) -> None:
        """A compressed batch the broker accepted is read around its bad record."""
        await produce_raw(
            kafka_bootstrap,
            topic,
            0,
            record_batch([good(b"g0"), bad(), good(b"g2")], gzip_records=True),
        )
        got = await _drain(consumer, 3)
        assert [(0, 0, b"g0", None), (0, 1, b"", NOT_UTF8), (0, 2, b"g2", None)] == _seen(got)

    async def test_null_header_value_is_read_as_empty(
        self, kafka_bootstrap: str, topic: str, consumer: Consumer
    ) -> None:
        """A header with a null value (valid on the wire) does not break the batch."""
        producer = Producer(kafka_bootstrap, "test-producer")
        await producer.start()
        try:
            await producer._producer.send_and_wait(topic, b"v", headers=[("h", None)])
        finally:
            await producer.stop()
        (message,) = await _drain(consumer, 1)
        assert (("h", b""),) == message.headers


class TestGathering:
    """A consumer with ``gather_ms`` takes a trickle of records in fewer, larger batches."""

    async def test_a_trickle_comes_in_fewer_batches(
        self, kafka_bootstrap: str, topic: str, topic_prefix: str
    ) -> None:
        """40 records sent one by one, 10 ms apart: a plain member sees them in many polls, a
        gathering one (the receipts loop's setting) in a few; both see all, in order."""
        members = {
            "plain": _consumer(kafka_bootstrap, topic, f"{topic_prefix}.plain"),
            "gathering": Consumer(
                [topic],
                bootstrap_servers=kafka_bootstrap,
                group_id=f"{topic_prefix}.gathering",
                client_id="test-gathering",
                gather_ms=250,
            ),
        }
        for member in members.values():
            await member.start()
        batches: dict[str, list[int]] = {name: [] for name in members}
        seen: dict[str, list[bytes]] = {name: [] for name in members}

        async def read(name: str, member: Consumer) -> None:
            while len(seen[name]) < 40:
                got = await member.poll(timeout_ms=100)
                if got:
                    batches[name].append(len(got))
                    seen[name].extend(m.value for m in got)

        try:
            readers = [asyncio.create_task(read(n, m)) for n, m in members.items()]
            producer = Producer(kafka_bootstrap, "test-producer")
            await producer.start()
            try:
                for i in range(40):
                    await producer._producer.send_and_wait(topic, b"%d" % i, partition=0)
                    await asyncio.sleep(0.01)
            finally:
                await producer.stop()
            await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
        finally:
            for member in members.values():
                await member.stop()
        print(f"\nbatches: plain {batches['plain']}, gathering {batches['gathering']}")
        expected = [b"%d" % i for i in range(40)]
        assert expected == seen["plain"] == seen["gathering"]
        assert len(batches["gathering"]) < len(batches["plain"])
