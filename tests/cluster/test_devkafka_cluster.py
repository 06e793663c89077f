"""gateway.dev.kafka with three nodes: replicated writes survive losing a node, which comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.dev.kafka import LocalKafka

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalKafka]:
    """One three-node Kafka for the whole module."""
    with LocalKafka(nodes=3, heap_mb=384) as kafka:
        yield kafka


async def _wait_for_full_isr(bootstrap: str, topic: str, *, create: bool = False) -> None:
    """Wait until nodes 0, 1 and 2 are all in the ISR of ``topic`` (creating it first)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if create:
            await admin.create_topics([NewTopic(topic, 1, 3)])
        async with asyncio.timeout(30):
            while True:
                (description,) = await admin.describe_topics([topic])
                partitions = description["partitions"]
                if partitions and {0, 1, 2} == set(partitions[0]["isr"]):
                    return
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < count:
                record = await consumer.getone()
                values.append(record.value)
        return values
    finally:
        await consumer.stop()


class TestLocalKafkaCluster:
    def test_three_nodes_on_loopback(self, cluster: LocalKafka) -> None:
        """Three distinct client ports on 127.0.0.1, all nodes running."""
        addresses = cluster.bootstrap_servers.split(",")
        assert len(set(addresses)) == 3
        assert all(address.startswith("127.0.0.1:") for address in addresses)
        assert all(cluster.is_running(i) for i in range(3))

    async def test_acks_all_survives_a_killed_node(self, cluster: LocalKafka) -> None:
        """With RF 3 and min.insync 2, acks=all writes go on after SIGKILL of a node."""
        topic = "devkafka.replicated"
        await _wait_for_full_isr(cluster.bootstrap_servers, topic, create=True)
        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap_servers, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before")
            cluster.kill_node(0)
            assert cluster.pid(0) is None
            async with asyncio.timeout(30):
                await producer.send_and_wait(topic, b"after")
        finally:
            await producer.stop()
            cluster.start_node(0)
        assert cluster.is_running(0)
        assert await _read_all(cluster.bootstrap_servers, topic, 2) == [b"before", b"after"]

    async def test_restarted_node_catches_up(self, cluster: LocalKafka) -> None:
        """A node stopped cleanly and started again serves the data written meanwhile."""
        topic = "devkafka.catch-up"
        await _wait_for_full_isr(cluster.bootstrap_servers, topic, create=True)
        cluster.stop_node(2)
        try:
            producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap_servers, acks="all")
            await producer.start()
            try:
                async with asyncio.timeout(30):
                    await producer.send_and_wait(topic, b"while-down")
            finally:
                await producer.stop()
        finally:
            cluster.start_node(2)
        # Back in the ISR means node 2 has copied the record it missed.
        await _wait_for_full_isr(cluster.bootstrap_servers, topic)
