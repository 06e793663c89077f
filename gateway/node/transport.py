"""Kafka, behind our own types. The only module that imports aiokafka.

- :class:`Producer`: idempotent, ``acks=all``; :meth:`Producer.send` returns once the record is
  durably in the cluster (all in-sync replicas have it).
- :class:`Consumer`: a consumer-group member with auto-commit off; the node commits an offset
  only after the sink and the dedup journal hold what came before it.
- :func:`ensure_topics`: create the topics a node needs, if missing.

Every aiokafka exception is translated to :class:`~gateway.errors.TransportError` here, with the
original chained, and ``retriable`` taken from aiokafka's own flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiokafka
import aiokafka.errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from gateway.errors import AccessRefused, RecordRefused, TopicRefused, TransportError

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Message:
    """One record read from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int

    def header(self, name: str) -> bytes | None:
        """The first header called ``name``, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor, topic configs."""

    name: str
    partitions: int = 1
    replication: int = 1
    configs: tuple[tuple[str, str], ...] = ()


_RECORD_TIED = (
    aiokafka.errors.MessageSizeTooLargeError,
    aiokafka.errors.RecordTooLargeError,
    aiokafka.errors.RecordListTooLargeError,
    aiokafka.errors.InvalidMessageError,
    aiokafka.errors.CorruptRecordException,
)
_TOPIC_TIED = (
    aiokafka.errors.UnknownTopicOrPartitionError,
    aiokafka.errors.TopicAuthorizationFailedError,
    aiokafka.errors.InvalidTopicError,
)
_OUR_SIDE = (
    aiokafka.errors.ClusterAuthorizationFailedError,
    aiokafka.errors.GroupAuthorizationFailedError,
    aiokafka.errors.TransactionalIdAuthorizationFailed,
    aiokafka.errors.SaslAuthenticationFailed,
)


def translate(what: str, exc: BaseException) -> TransportError:
    """Our error for an aiokafka (or socket) exception, classified once: tied to one record,
    to one topic, fatal to our side, or retriable infrastructure."""
    text = f"{what}: {type(exc).__name__}"
    if isinstance(exc, _RECORD_TIED):
        return RecordRefused(text)
    if isinstance(exc, _TOPIC_TIED):
        return TopicRefused(text)
    if isinstance(exc, _OUR_SIDE):
        return AccessRefused(text)
    error = TransportError(f"{text}: {exc}")
    if isinstance(exc, aiokafka.errors.KafkaError):
        error.retriable = bool(getattr(exc, "retriable", False)) or isinstance(
            exc, aiokafka.errors.KafkaConnectionError | aiokafka.errors.KafkaTimeoutError
        )
    return error


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (aiokafka.errors.KafkaError, TimeoutError, OSError) as exc:
        raise translate(what, exc) from exc


def _messages(batches: dict[TopicPartition, list[aiokafka.ConsumerRecord]]) -> list[Message]:
    messages: list[Message] = []
    for records in batches.values():
        for r in records:
            messages.append(
                Message(
                    topic=str(r.topic),
                    partition=int(r.partition),
                    offset=int(r.offset),
                    key=r.key,
                    value=bytes(r.value) if r.value is not None else b"",
                    headers=tuple((str(k), bytes(v)) for k, v in (r.headers or ())),
                    timestamp_ms=int(r.timestamp),
                )
            )
    return messages


class Producer:
    """An idempotent producer with ``acks=all``."""

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str,
        *,
        metadata_wait_s: float = 5.0,
        hold_s: float = 30.0,
    ) -> None:
        self._metadata_wait_s = metadata_wait_s
        self._hold_s = hold_s
        self._held: dict[str, float] = {}
        """Topics refused lately, until when (monotonic seconds)."""
        self._producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=30_000,
        )

    async def start(self) -> None:
        """Connect.

        :raises TransportError: the cluster cannot be reached.
        """
        async with _translated("producer start"):
            await self._producer.start()

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        async with _translated("producer stop"):
            await self._producer.stop()

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[int, int]:
        """Publish one record and wait until the cluster has it; returns (partition, offset).

        :raises TransportError: the record was not acknowledged.
        """
        async with _translated(f"send to {topic}"):
            meta = await self._producer.send_and_wait(
                topic, value=value, key=key, headers=list(headers)
            )
        return int(meta.partition), int(meta.offset)

    async def _refusals(self, topics: set[str], probe: bool) -> dict[str, TransportError]:
        """Of ``topics``, those that cannot be written now, with why.

        A topic found missing or denied in fresh metadata is refused (:class:`TopicRefused`)
        and, unless ``probe``, answered so without asking the cluster again for a while; when
        the metadata itself cannot be had, the error is a retriable one for the whole cluster.
        """
        now = time.monotonic()
        refused: dict[str, TransportError] = {}
        client = self._producer.client
        unknown = set()
        for topic in topics:
            if not probe and self._held.get(topic, 0.0) > now:
                refused[topic] = TopicRefused(f"{topic}: refused recently; parked")
            elif client.cluster.partitions_for_topic(topic) is None:
                unknown.add(topic)
        if not unknown:
            return refused
        updated = False
        for _ in range(2):  # an update already in flight may predate the topics just added
            for topic in unknown:
                client.add_topic(topic)
            try:
                updated = bool(
                    await asyncio.wait_for(client.force_metadata_update(), self._metadata_wait_s)
                )
            except TimeoutError:
                updated = False
            if all(client.cluster.partitions_for_topic(t) is not None for t in unknown):
                return refused
        for topic in unknown:
            if client.cluster.partitions_for_topic(topic) is not None:
                continue
            if topic in client.cluster.unauthorized_topics:
                refused[topic] = TopicRefused(f"{topic}: not authorized to write")
            elif updated:
                refused[topic] = TopicRefused(f"{topic}: no such topic")
            else:
                refused[topic] = TransportError(f"{topic}: cluster metadata unavailable")
                continue
            self._held[topic] = now + self._hold_s
        return refused

    async def send_each(
        self, records: Sequence[tuple[str, bytes, bytes | None, Headers]], *, probe: bool = False
    ) -> list[TransportError | None]:
        """Publish several records, all in flight together, and wait for every answer.

        Returns, per record in order, None when the cluster has it, or the classified error
        (:class:`RecordRefused`, :class:`TopicRefused`, :class:`AccessRefused`, or a retriable
        :class:`TransportError`). Never raises for one record's failure. A topic refused
        recently is answered at once without asking the cluster, unless ``probe``.
        """
        refusals = await self._refusals({r[0] for r in records}, probe) if records else {}
        pending: list[asyncio.Future[object] | TransportError] = []
        for topic, value, key, headers in records:
            if topic in refusals:
                pending.append(refusals[topic])
                continue
            try:
                future = await self._producer.send(
                    topic, value=value, key=key, headers=list(headers)
                )
            except (aiokafka.errors.KafkaError, TimeoutError, OSError) as exc:
                pending.append(translate(f"send to {topic}", exc))
            else:
                pending.append(future)
        futures = [p for p in pending if not isinstance(p, TransportError)]
        answers = iter(await asyncio.gather(*futures, return_exceptions=True))
        results: list[TransportError | None] = []
        for (topic, *_), item in zip(records, pending, strict=True):
            if isinstance(item, TransportError):
                results.append(item)
                continue
            answer = next(answers)
            if isinstance(answer, BaseException):
                if isinstance(answer, asyncio.CancelledError):
                    raise answer
                results.append(translate(f"send to {topic}", answer))
            else:
                results.append(None)
        return results

    async def send_many(
        self, records: Sequence[tuple[str, bytes, bytes | None, Headers]]
    ) -> list[tuple[int, int]]:
        """Publish several records, batched, and wait until the cluster has all of them.

        :raises TransportError: any record was not acknowledged (some others may have been;
            callers rely on the receiver's duplicate check when they retry).
        """
        async with _translated("send batch"):
            futures = [
                await self._producer.send(topic, value=value, key=key, headers=list(headers))
                for topic, value, key, headers in records
            ]
            metas = await asyncio.gather(*futures)
        return [(int(m.partition), int(m.offset)) for m in metas]


class Consumer:
    """A consumer-group member with manual commits."""

    def __init__(
        self,
        topics: Iterable[str],
        *,
        bootstrap_servers: str,
        group_id: str | None,
        client_id: str,
        max_poll_records: int = 500,
    ) -> None:
        self._consumer = aiokafka.AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=max_poll_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )

    async def start(self) -> None:
        """Connect and join the group.

        :raises TransportError: the cluster cannot be reached.
        """
        async with _translated("consumer start"):
            await self._consumer.start()

    async def stop(self) -> None:
        """Leave the group and disconnect (uncommitted records will be read again)."""
        async with _translated("consumer stop"):
            await self._consumer.stop()

    async def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Message]:
        """The next batch of records (possibly empty), in offset order per partition."""
        async with _translated("poll"):
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return _messages(batches)

    async def commit(self, messages: Iterable[Message]) -> None:
        """Commit past every message given (the highest offset per partition, plus one).

        :raises TransportError: the commit failed (the records will be read again).
        """
        offsets: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            offsets[tp] = max(offsets.get(tp, 0), m.offset + 1)
        if offsets:
            async with _translated("commit"):
                await self._consumer.commit(offsets)


async def ensure_topics(bootstrap_servers: str, topics: Iterable[TopicSpec]) -> None:
    """Create every topic that does not exist yet (existing ones are left as they are).

    :raises TransportError: the cluster cannot be reached or refuses.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="fxgw-admin")
    async with _translated("topic administration"):
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    name=t.name,
                    num_partitions=t.partitions,
                    replication_factor=t.replication,
                    topic_configs=dict(t.configs),
                )
                for t in topics
                if t.name not in existing
            ]
            if missing:
                # another replica may create it between our listing and our request
                with contextlib.suppress(aiokafka.errors.TopicAlreadyExistsError):
                    await admin.create_topics(missing)
        finally:
            await admin.close()


async def read_topic(
    bootstrap_servers: str, topic: str, *, since_ms: int | None = None, timeout_s: float = 30.0
) -> list[Message]:
    """Every record of ``topic`` (from ``since_ms`` on, if given) up to its current end,
    read without a consumer group. For recovery scans, tools and tests.

    :raises TransportError: the cluster cannot be reached, or the end is not reached in time.
    """
    consumer = aiokafka.AIOKafkaConsumer(
        topic,  # subscribing (without a group) makes the client load the topic's metadata
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        client_id="fxgw-reader",
    )
    async with _translated(f"read {topic}"):
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                raise TransportError(f"read {topic}: no such topic")
            consumer.unsubscribe()
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            if since_ms is not None:
                found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
                for tp in tps:
                    position = found.get(tp)
                    consumer.seek(tp, position.offset if position is not None else ends[tp])
            else:
                await consumer.seek_to_beginning(*tps)
            messages: list[Message] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while True:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                if loop.time() > deadline:
                    raise TransportError(f"read {topic}: end not reached in {timeout_s} s")
                messages.extend(_messages(await consumer.getmany(timeout_ms=200)))
            return [m for m in messages if m.offset < ends[TopicPartition(m.topic, m.partition)]]
        finally:
            await consumer.stop()
