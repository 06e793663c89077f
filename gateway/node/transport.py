"""Kafka, behind our own types. The only module that imports aiokafka.

- :class:`Producer`: idempotent, ``acks=all``; :meth:`Producer.send` returns once the record is
  durably in the cluster (all in-sync replicas have it).
- :class:`Consumer`: a consumer-group member with auto-commit off; the node commits an offset
  only after the sink and the dedup journal hold what came before it.
- :func:`ensure_topics`: create the topics a node needs, if missing, and check the ones that
  exist against the node's replication, ``min.insync.replicas`` and message size.
- :class:`Cluster`: where a cluster is and how to authenticate to it (TLS, mutual TLS, SASL
  PLAIN or SCRAM-SHA-512); every client takes one, or a plain bootstrap list (plaintext).
- :class:`ClusterProbe`: whether a cluster answers a metadata request now (for ``/readyz``).

Every aiokafka exception is translated to :class:`~gateway.errors.TransportError` here, with the
original chained, and ``retriable`` taken from aiokafka's own flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiokafka
import aiokafka.codec as codec_module
import aiokafka.errors
import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from gateway.errors import (
    AccessRefused,
    CommitRefused,
    ConfigError,
    GroupRefused,
    RecordRefused,
    TopicRefused,
    TransportError,
)
from gateway.node._recordbatch import BatchRecords, RawRecord, read_batches

Headers = tuple[tuple[str, bytes], ...]

CLOSE_WAIT_S = 10.0
"""How long a client may take to close: stopping a node must not hang on a cluster that is
gone (everything not acknowledged is uncommitted, so it is read again after the restart)."""

_log = structlog.get_logger("fxgw.transport")


@dataclass(frozen=True, slots=True)
class Message:
    """One record read from Kafka.

    ``unreadable`` is set (to a short reason, e.g. ``header key is not UTF-8``) for a record the
    Kafka client cannot parse; such a message has only its coordinates (topic, partition,
    offset): no key, an empty value and no headers. It comes in its place in the partition's
    order, and committing it moves past it like any other message.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int
    unreadable: str | None = None

    def header(self, name: str) -> bytes | None:
        """The first header called ``name``, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


@dataclass(frozen=True, slots=True)
class Secret:
    """Where a secret is: the first line of a file private to the node's user, or an
    environment variable. Read when a client is made, never kept, never shown."""

    field: str
    """The config field that names it (``exchange.security.sasl.password_file``), for errors."""
    file: Path | None = None
    env: str | None = None

    def problem(self) -> str | None:
        """Why the secret cannot be read now (None: it can)."""
        try:
            self.read()
        except ConfigError as exc:
            return exc.message
        return None

    def read(self) -> str:
        """:raises ConfigError: the variable is unset, or the file is missing, empty or
        readable by others; naming the field and what to do."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"{self.field}: the environment variable {self.env} is not set")
            return value
        assert self.file is not None
        private_file_problem = _private_file_problem(self.file)
        if private_file_problem:
            raise ConfigError(f"{self.field}: {private_file_problem}")
        try:
            lines = self.file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.field}: cannot read {self.file}: {exc}") from exc
        if not lines or not lines[0]:
            raise ConfigError(f"{self.field}: {self.file} is empty; its first line is the secret")
        return lines[0]


def _private_file_problem(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return f"no file at {path}"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path} is accessible to others (mode {stat.S_IMODE(mode):04o});"
            f" run 'chmod 600 {path}'"
        )
    return None


@dataclass(frozen=True, slots=True)
class Cluster:
    """One Kafka cluster: its bootstrap servers and how a client proves who it is.

    Secrets (the SASL password, the client key's password) are :class:`Secret` references,
    read each time a client is made: a rotated password is taken at the next connection, and
    no Cluster holds one.
    """

    bootstrap_servers: str
    protocol: Protocol = "PLAINTEXT"
    ca_file: Path | None = None
    """PEM bundle of the CAs the brokers' certificates chain to (None: the system's)."""
    check_hostname: bool = True
    cert_file: Path | None = None
    """PEM client certificate, for mutual TLS (with ``key_file``)."""
    key_file: Path | None = None
    key_password: Secret | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: Secret | None = None
    where: str = "cluster"
    """The config block (``exchange``, ``local``) that describes it, for errors."""

    @property
    def encrypted(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def problems(self) -> list[str]:
        """Every file or secret this cluster names that cannot be used now."""
        found: list[str] = []
        tls = f"{self.where}.security.tls"
        for name, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file)):
            if path is not None and not path.is_file():
                found.append(f"{tls}.{name}: no file at {path}")
        if self.key_file is not None:
            problem = _private_file_problem(self.key_file)
            if problem:
                found.append(f"{tls}.key_file: {problem}")
        for secret in (self.key_password, self.password):
            problem = secret.problem() if secret is not None else None
            if problem:
                found.append(problem)
        return found

    def client_options(self) -> dict[str, object]:
        """The aiokafka client arguments for this cluster.

        :raises ConfigError: a file or secret it names cannot be used (every problem named).
        :raises TransportError: the TLS files are there but unusable (retrying cannot help).
        """
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.protocol,
        }
        if self.encrypted:
            try:
                context = create_ssl_context(
                    cafile=self.ca_file,
                    certfile=self.cert_file,
                    keyfile=self.key_file,
                    # never None: OpenSSL would prompt on the terminal for an encrypted key
                    password=self.key_password.read() if self.key_password else "",
                )
            except (OSError, ssl.SSLError) as exc:
                error = TransportError(
                    f"{self.where} TLS set-up: {type(exc).__name__}: {exc.strerror or exc}"
                )
                error.retriable = False
                raise error from exc
            context.check_hostname = self.check_hostname
            options["ssl_context"] = context
        if self.sasl_mechanism is not None:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password.read() if self.password else None,
            )
        return options


def _options(cluster: Cluster | str) -> dict[str, object]:
    return (cluster if isinstance(cluster, Cluster) else Cluster(cluster)).client_options()


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create (or to check, if it exists): name, partitions, replication factor,
    the least ``min.insync.replicas`` it must have, and further topic configs."""

    name: str
    partitions: int = 1
    replication: int = 1
    configs: tuple[tuple[str, str], ...] = ()
    min_insync_replicas: int | None = None
    max_message_bytes: int | None = None
    """The least ``max.message.bytes`` the topic must allow (and is created with)."""


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
    aiokafka.errors.TransactionalIdAuthorizationFailed,
    aiokafka.errors.SaslAuthenticationFailed,
)


def translate(what: str, exc: BaseException) -> TransportError:
    """Our error for an aiokafka (or socket) exception, classified once: tied to one record,
    to one topic, fatal to our side, or retriable infrastructure."""
    text = f"{what}: {type(exc).__name__}"
    if isinstance(exc, aiokafka.errors.GroupAuthorizationFailedError):
        return GroupRefused(f"{text}: the exchange's ACLs do not let this agency use the group")
    if isinstance(exc, aiokafka.errors.TopicAuthorizationFailedError):
        return TopicRefused(f"{text}: the ACLs do not let this agency use the topic")
    if isinstance(exc, _RECORD_TIED):
        return RecordRefused(text)
    if isinstance(exc, _TOPIC_TIED):
        return TopicRefused(text)
    if isinstance(exc, _OUR_SIDE):
        return AccessRefused(text)
    if isinstance(exc, aiokafka.errors.CommitFailedError | aiokafka.errors.IllegalStateError):
        return CommitRefused(text)
    error = TransportError(f"{text}: {exc}")
    if isinstance(exc, aiokafka.errors.KafkaError):
        error.retriable = bool(getattr(exc, "retriable", False)) or isinstance(
            exc, aiokafka.errors.KafkaConnectionError | aiokafka.errors.KafkaTimeoutError
        )
    return error


async def _close(what: str, closing: Coroutine[object, object, object]) -> None:
    """Await a client's close, at most :data:`CLOSE_WAIT_S`.

    aiokafka's close cancels its background fetch task and, when the cluster is gone, can let
    that cancellation escape; the client is closed all the same, so it is not taken for a
    cancellation of ours.

    :raises TransportError: the close failed or did not finish in time.
    """
    try:
        async with _translated(what):
            await asyncio.wait_for(closing, CLOSE_WAIT_S)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


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
                    # a header value may be null on the wire; we hand on bytes (empty for null)
                    headers=tuple((str(k), bytes(v or b"")) for k, v in (r.headers or ())),
                    timestamp_ms=int(r.timestamp),
                )
            )
    return messages


class Producer:
    """An idempotent producer with ``acks=all``."""

    def __init__(
        self,
        bootstrap_servers: Cluster | str,
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
            **_options(bootstrap_servers),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            # no lingering: a batch's sends are issued together before any is awaited, so they
            # share requests anyway; waiting for more would only add to every event's latency
            linger_ms=0,
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
        """Flush what is pending and disconnect; a cluster that does not answer is given up
        after :data:`CLOSE_WAIT_S` (what was not acknowledged was not committed either).

        :raises TransportError: the cluster did not let us close in time.
        """
        await _close("producer stop", self._producer.stop())

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
        self, records: Sequence[tuple[str, bytes | None, bytes | None, Headers]]
    ) -> list[tuple[int, int]]:
        """Publish several records, batched, and wait until the cluster has all of them (a
        value of None is a tombstone, for a compacted topic).

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
    """A consumer-group member with manual commits, that steps over records it cannot parse.

    With ``instance_id`` it is a *static* member of its group (KIP-345): a node restarted under
    the same id, even after SIGKILL, gets its partitions back at once instead of after the old
    member's session timeout. Each running member of a group needs its own id (two replicas
    under one id fence each other).
    """

    # With static membership a restarted node takes its partitions back at once, whatever the
    # session timeout. The timeout decides two other things: how long the partitions of a member
    # that is gone for good (or hung) wait before the group gives them to another replica, and
    # how long a stalled member (a long GC or fsync, CPU starvation on a small pod, a broker
    # leader change) may go without a heartbeat before it is expelled, which costs a rebalance
    # and re-reading what was not committed. 30 s rides out such stalls and still hands a dead
    # replica's work on within half a minute; it is inside the brokers' default bounds
    # (group.min/max.session.timeout.ms: 6 s / 30 min). Heartbeats every tenth of it (Kafka
    # advises at most a third): nine can be lost before the member is expelled, and a rebalance
    # another member starts is noticed within 3 s.
    SESSION_TIMEOUT_MS = 30_000
    HEARTBEAT_INTERVAL_MS = 3_000

    def __init__(
        self,
        topics: Iterable[str],
        *,
        bootstrap_servers: Cluster | str,
        group_id: str | None,
        client_id: str,
        max_poll_records: int = 500,
        instance_id: str | None = None,
        gather_ms: int | None = None,
    ) -> None:
        """``gather_ms``: let the broker gather records for up to this long (or until about
        a megabyte is there) before it answers a fetch; for inputs where fewer, larger batches
        matter more than a few hundred milliseconds of delay."""
        self._group_id = group_id
        gather = (
            {}
            if gather_ms is None
            else {"fetch_max_wait_ms": gather_ms, "fetch_min_bytes": 1 << 20}
        )
        topics = list(topics)

        def make() -> aiokafka.AIOKafkaConsumer:
            consumer = aiokafka.AIOKafkaConsumer(
                **_options(bootstrap_servers),
                group_id=group_id,
                group_instance_id=instance_id if group_id is not None else None,
                client_id=client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                max_poll_records=max_poll_records,
                session_timeout_ms=self.SESSION_TIMEOUT_MS,
                heartbeat_interval_ms=self.HEARTBEAT_INTERVAL_MS,
                **gather,
            )
            consumer.subscribe(topics, listener=_Forget(self))
            return consumer

        self._make = make
        self._consumer = make()
        self._next: dict[TopicPartition, int] = {}
        """Per partition: the offset after the last record returned (or held in ``_held``)."""
        self._held: list[Message] = []
        """Records read around an unparseable one, not yet returned (per partition in order)."""
        self._fruitless = 0

    async def start(self) -> None:
        """Connect and join the group. A start that failed leaves a fresh client behind (an
        aiokafka consumer cannot be started twice), so that it can be called again.

        :raises TransportError: the cluster cannot be reached, or refuses the group.
        """
        try:
            async with _translated("consumer start"):
                await self._consumer.start()
        except BaseException:
            failed, self._consumer = self._consumer, self._make()
            with contextlib.suppress(TransportError):
                await _close("consumer close", failed.stop())
            raise

    async def stop(self) -> None:
        """Leave the group and disconnect (uncommitted records will be read again).

        A static member does not leave: its partitions wait for it (up to the session timeout).
        A cluster that does not answer is given up after :data:`CLOSE_WAIT_S`.

        :raises TransportError: the cluster did not let us close in time.
        """
        await _close("consumer stop", self._consumer.stop())

    async def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Message]:
        """The next batch of records (possibly empty), in offset order per partition.

        A record the client cannot parse (a header key that is not UTF-8, a corrupt batch) comes
        back in its place as a :class:`Message` with ``unreadable`` set; it never raises, and
        nothing before or after it is lost or repeated.

        :raises TransportError: the cluster failed in a way the client does not retry.
        """
        if not self._held:
            failure: Exception | None = None
            async with _translated("poll"):
                try:
                    batches = await self._consumer.getmany(
                        timeout_ms=timeout_ms, max_records=max_records
                    )
                except _UNPARSEABLE as exc:
                    failure = exc
                if failure is not None:
                    self._held = await self._read_around(failure, timeout_ms)
            if failure is None:
                self._fruitless = 0
                messages = _messages(batches)
                for m in messages:
                    self._next[TopicPartition(m.topic, m.partition)] = m.offset + 1
                return messages
        count = len(self._held) if max_records is None else max_records
        taken, self._held = self._held[:count], self._held[count:]
        return taken

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

    def lag(self) -> int | None:
        """Records behind the high watermark, summed over the partitions assigned, as far as
        known: a partition counts once a fetch has told its high watermark and a record of it
        has been returned since it was assigned (None when no partition is known yet)."""
        known = [
            (hw, self._next[tp])
            for tp in self._consumer.assignment()
            if tp in self._next and (hw := self._consumer.highwater(tp)) is not None
        ]
        if not known:
            return None
        return sum(max(0, int(hw) - position) for hw, position in known)

    # --- stepping over what the client cannot parse ----------------------------------------------
    #
    # When aiokafka fails to parse a record, ``getmany`` raises and leaves this state behind
    # (aiokafka/consumer/fetcher.py): the records it had drained before the failure, from other
    # partitions and from the failing one, are lost to us while those partitions' positions have
    # moved past them; the failing partition's position stays before the bad record, so the next
    # fetch fails on it again, for ever. And every record after the bad one in its batch is out of
    # the client's reach, since its parser raises at the bad one each time. So: every partition
    # goes back to the offset after the last record we returned; each is fetched raw from there
    # and read with :mod:`gateway.node._recordbatch`; in the partitions holding a bad record,
    # everything up to the end of that record's batch is returned from this read (the bad record
    # as an unreadable marker), and the client resumes after that batch.

    async def _read_around(self, failure: Exception, timeout_ms: int) -> list[Message]:
        try:
            positions = {tp: await self._resume_offset(tp) for tp in self._consumer.assignment()}
            self._seek_assigned(positions)
            reads = {tp: await self._fetch_raw(tp, offset) for tp, offset in positions.items()}
        except aiokafka.errors.KafkaError as exc:
            if not exc.retriable:
                raise
            # the client's next fetch fails on the same record and this is tried again
            _log.warning("record_parse_failed", error=type(failure).__name__, retry=str(exc))
            await asyncio.sleep(min(timeout_ms, 1000) / 1000)
            return []
        assigned = self._consumer.assignment()  # a rebalance may have run meanwhile
        reads = {tp: batches for tp, batches in sorted(reads.items()) if tp in assigned}
        self._fruitless = (
            0 if any(_through_faulty(r) for r in reads.values()) else (self._fruitless + 1)
        )
        # aiokafka failed but no bad record shows in our own read: a transient fault (a batch
        # damaged in transit) and the client's next fetch will do. If it keeps failing, our read
        # is taken as it is, a batch at a time, so the stream moves on whatever the cause.
        fallback = self._fruitless >= _FRUITLESS_LIMIT
        found: list[Message] = []
        ends: dict[TopicPartition, int] = {}
        for tp, batches in reads.items():
            taken = _through_faulty(batches) or (batches[:1] if fallback else [])
            if taken:
                found.extend(_message(tp, r) for batch in taken for r in batch.records)
                ends[tp] = taken[-1].next_offset
        self._seek_assigned(ends)
        self._next.update(ends)
        unreadable = [m for m in found if m.unreadable is not None]
        for m in unreadable:
            _log.warning(
                "record_unreadable",
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                reason=m.unreadable,
            )
        if not unreadable:
            _log.warning(
                "record_parse_failed",
                error=type(failure).__name__,
                partitions=len(reads),
                stepped_over=len(found),
                attempt=self._fruitless,
            )
        if not found:  # let the client fetch again, but not in a tight loop
            await asyncio.sleep(min(timeout_ms, 1000) / 1000)
        return found

    def _seek_assigned(self, positions: dict[TopicPartition, int]) -> None:
        assigned = self._consumer.assignment()
        for tp, offset in positions.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)

    def _forget(self, revoked: Iterable[TopicPartition]) -> None:
        """Drop what is known of partitions taken away (another member reads them now)."""
        gone = set(revoked)
        for tp in gone:
            self._next.pop(tp, None)
        self._held = [m for m in self._held if TopicPartition(m.topic, m.partition) not in gone]

    async def _resume_offset(self, tp: TopicPartition) -> int:
        """The offset after the last record returned from ``tp``: for a partition nothing has been
        returned from since it was assigned, where the group's committed offset (or, with none,
        the start of the log, as ``auto_offset_reset="earliest"``) put it."""
        if tp in self._next:
            return self._next[tp]
        if self._group_id is not None:
            committed = await self._consumer.committed(tp)
            if committed is not None:
                return int(committed)
        return int((await self._consumer.beginning_offsets([tp]))[tp])

    async def _fetch_raw(self, tp: TopicPartition, offset: int) -> list[BatchRecords]:
        """The record batches of ``tp`` from ``offset``, fetched past the client's parser.

        :raises KafkaError: the fetch failed (translated by the caller).
        """
        # The consumer's own client: it holds the connections (with their security settings)
        # and the cluster metadata; aiokafka has no public call that returns raw batches.
        client = self._consumer._client
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            raise aiokafka.errors.LeaderNotAvailableError(f"no leader known for {tp}")
        request = FetchRequest(
            max_wait_time=500,
            min_bytes=1,
            max_bytes=_RAW_FETCH_BYTES,
            isolation_level=1,  # read_committed, as the consumer
            topics=[(tp.topic, [(tp.partition, offset, _RAW_FETCH_BYTES)])],
        )
        response = await client.send(leader, request)
        for _topic, partitions in response.topics:
            for partition, error_code, _highwater, *part_data in partitions:
                if partition != tp.partition:
                    continue
                error = aiokafka.errors.for_code(error_code)
                if error is aiokafka.errors.OffsetOutOfRangeError:
                    return []  # the client resets the position by its own rule
                if error is not aiokafka.errors.NoError:
                    raise error(f"raw fetch of {tp} at {offset}")
                # v4: lso, aborted, records; v5-10: lso, log start, aborted, records;
                # v11: lso, log start, aborted, preferred replica, records
                aborted = part_data[2] if response.API_VERSION >= 11 else part_data[-2]
                return read_batches(
                    bytes(part_data[-1] or b""),
                    fetch_offset=offset,
                    aborted_transactions=[(int(p), int(o)) for p, o in aborted or ()],
                    crc32c=calc_crc32c,
                    decompress=_decompress,
                )
        return []


class ClusterProbe:
    """Asks a cluster for its metadata over a client of its own, kept between probes."""

    def __init__(self, bootstrap_servers: Cluster | str, client_id: str) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._client: aiokafka.AIOKafkaClient | None = None

    async def answers(self, timeout_s: float = 5.0) -> bool:
        """Whether a broker of the cluster answered a metadata request within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                if self._client is None:
                    client = aiokafka.AIOKafkaClient(
                        **_options(self._bootstrap),
                        client_id=self._client_id,
                        request_timeout_ms=int(timeout_s * 1000),
                    )
                    try:
                        await client.bootstrap()
                    except BaseException:
                        with contextlib.suppress(TransportError):
                            await _close("probe close", client.close())
                        raise
                    self._client = client
                await self._client.fetch_all_metadata()
            return True
        except (aiokafka.errors.KafkaError, TimeoutError, OSError):
            return False

    async def close(self) -> None:
        """Close the probe's client (a cluster that does not answer is given up in time)."""
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(TransportError):
                await _close("probe close", client.close())


class _Forget(aiokafka.ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base class
    """Tells the consumer which partitions were taken away in a rebalance."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._consumer._forget(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing to do: a partition's first position comes from the group's commit."""


_UNPARSEABLE = (
    UnicodeDecodeError,
    aiokafka.errors.CorruptRecordException,
    aiokafka.errors.UnsupportedCodecError,
)
"""What aiokafka raises from ``getmany`` for a record it cannot parse: its C parser raises
UnicodeDecodeError for a header key that is not UTF-8, its Python parser CorruptRecordException."""
_FRUITLESS_LIMIT = 3
_RAW_FETCH_BYTES = 2 * 1024 * 1024
"""Twice the client's ``max_partition_fetch_bytes``: a raw read from a later offset than the
client's failed fetch still reaches as far."""


def _through_faulty(batches: Sequence[BatchRecords]) -> list[BatchRecords]:
    """The batches up to and including the first faulty one (none if none is faulty)."""
    for index, batch in enumerate(batches):
        if batch.faulty:
            return list(batches[: index + 1])
    return []


def _message(tp: TopicPartition, record: RawRecord) -> Message:
    if record.unreadable is not None:
        return Message(
            tp.topic,
            tp.partition,
            record.offset,
            None,
            b"",
            (),
            record.timestamp_ms,
            record.unreadable,
        )
    return Message(
        topic=tp.topic,
        partition=tp.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=tuple((k, v or b"") for k, v in record.headers),
        timestamp_ms=record.timestamp_ms,
    )


def _decompress(codec: int, data: bytes) -> bytes:
    """Decompress a v2 batch's records with the client library's codecs."""
    decoders = {
        1: codec_module.gzip_decode,
        2: codec_module.snappy_decode,
        3: codec_module.lz4_decode,
        4: codec_module.zstd_decode,
    }
    if codec not in decoders:
        raise ValueError(f"unknown compression codec {codec}")
    return bytes(decoders[codec](data))


async def ensure_topics(bootstrap_servers: Cluster | str, topics: Iterable[TopicSpec]) -> list[str]:
    """Create every topic that does not exist yet; check the ones that do (see
    :func:`prepare_topics`, which also says which cluster it reached).

    :raises TransportError: the cluster cannot be reached or refuses.
    """
    return (await prepare_topics(bootstrap_servers, topics))[1]


async def prepare_topics(
    cluster: Cluster | str, topics: Iterable[TopicSpec]
) -> tuple[str, list[str]]:
    """The id of the cluster reached (two bootstrap lists may reach one cluster), and how its
    topics fall short of ``topics``.

    A missing topic is created with its partitions, replication factor,
    ``min.insync.replicas``, ``max.message.bytes`` and further configs. An existing topic is
    left as it is, and each way it falls short of its spec (fewer replicas, a lower
    ``min.insync.replicas``, a smaller ``max.message.bytes``) is returned, one line per topic
    and shortfall: whether that refuses the start is the caller's call.

    :raises TransportError: the cluster cannot be reached or refuses.
    """
    specs = {t.name: t for t in topics}
    admin = AIOKafkaAdminClient(**_options(cluster), client_id="fxgw-admin")
    async with _translated("topic administration"):
        await admin.start()
        try:
            found_id = str((await admin.describe_cluster())["cluster_id"])
            existing = set(await admin.list_topics())
            missing = [_new_topic(t) for name, t in specs.items() if name not in existing]
            if missing:
                # another replica may create it between our listing and our request
                with contextlib.suppress(aiokafka.errors.TopicAlreadyExistsError):
                    await admin.create_topics(missing)
            present = [specs[n] for n in sorted(specs) if n in existing]
            return found_id, await _shortfalls(admin, present) if present else []
        finally:
            await admin.close()


def _new_topic(spec: TopicSpec) -> NewTopic:
    configs = dict(spec.configs)
    if spec.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(spec.min_insync_replicas)
    if spec.max_message_bytes is not None:
        configs["max.message.bytes"] = str(spec.max_message_bytes)
    return NewTopic(
        name=spec.name,
        num_partitions=spec.partitions,
        replication_factor=spec.replication,
        topic_configs=configs,
    )


async def _shortfalls(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> list[str]:
    """How existing topics fall short of their specs (empty: they do not)."""
    problems: list[str] = []
    described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
    for spec in specs:
        partitions = described.get(spec.name, {}).get("partitions", [])
        replicas = min((len(p["replicas"]) for p in partitions), default=0)
        if replicas < spec.replication:
            problems.append(
                f"topic {spec.name} has {replicas} replica(s) per partition, the node's config asks"
                f" for {spec.replication}"
            )
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    configs: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for _code, _message, _type, name, entries in response.resources:
            configs[name] = {entry[0]: entry[1] for entry in entries}
    for spec in specs:
        actual = configs.get(spec.name, {})
        for key, wanted in (
            ("min.insync.replicas", spec.min_insync_replicas),
            ("max.message.bytes", spec.max_message_bytes),
        ):
            value = actual.get(key)
            if wanted is not None and value is not None and int(value) < wanted:
                problems.append(
                    f"topic {spec.name} has {key}={value}, the node's config asks for at least"
                    f" {wanted}"
                )
    return problems


async def read_topic(
    bootstrap_servers: Cluster | str,
    topic: str,
    *,
    since_ms: int | None = None,
    timeout_s: float = 30.0,
) -> list[Message]:
    """Every record of ``topic`` (from ``since_ms`` on, if given) up to its current end,
    read without a consumer group. For recovery scans, tools and tests.

    :raises TransportError: the cluster cannot be reached, or the end is not reached in time.
    """
    consumer = aiokafka.AIOKafkaConsumer(
        topic,  # subscribing (without a group) makes the client load the topic's metadata
        **_options(bootstrap_servers),
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
