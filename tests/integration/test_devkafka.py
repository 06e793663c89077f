"""gateway.dev.kafka on a real single-node Kafka: it serves clients and stops without traces."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.dev.kafka import LocalKafka, classpath_cache_file, resolve_classpath
from gateway.errors import AccessRefused, ConfigError, InfrastructureError
from gateway.node.transport import Cluster, Producer, Secret

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def local_kafka() -> Iterator[LocalKafka]:
    """One single-node Kafka for the whole module."""
    with LocalKafka(nodes=1) as kafka:
        yield kafka


@pytest.fixture
async def admin(local_kafka: LocalKafka) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client on the module's Kafka."""
    client = AIOKafkaAdminClient(bootstrap_servers=local_kafka.bootstrap_servers)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_mentioning(text: str) -> list[int]:
    """Pids of processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (Linux /proc/net).

    Java listens on IPv6 sockets; an IPv4-mapped address (``::ffff:127.0.0.1``) is given as IPv4.
    """
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            hex_address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(hex_address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(packed)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            found.add(str(address))
    return found


class TestLocalKafka:
    async def test_produce_and_consume_one_message(
        self, local_kafka: LocalKafka, admin: AIOKafkaAdminClient
    ) -> None:
        """A record produced with acks=all is read back by a consumer group."""
        await admin.create_topics([NewTopic("devkafka.roundtrip", 1, 1)])
        producer = AIOKafkaProducer(
            bootstrap_servers=local_kafka.bootstrap_servers, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            sent = await producer.send_and_wait("devkafka.roundtrip", b"seizure-1", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            "devkafka.roundtrip",
            bootstrap_servers=local_kafka.bootstrap_servers,
            group_id="devkafka-test",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            received = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        assert (sent.offset, received.key, received.value) == (0, b"k", b"seizure-1")

    async def test_topics_are_not_created_on_demand(
        self, local_kafka: LocalKafka, admin: AIOKafkaAdminClient
    ) -> None:
        """auto.create.topics.enable is off, as in production."""
        producer = AIOKafkaProducer(
            bootstrap_servers=local_kafka.bootstrap_servers, request_timeout_ms=1500
        )
        await producer.start()
        try:
            with pytest.raises(Exception):  # noqa: B017 - aiokafka's KafkaTimeoutError or similar
                await producer.send_and_wait("devkafka.never-created", b"x")
        finally:
            await producer.stop()
        assert "devkafka.never-created" not in await admin.list_topics()

    def test_listens_on_loopback_only(self, local_kafka: LocalKafka) -> None:
        """The client and controller ports are bound to 127.0.0.1 and nothing wider."""
        properties = (local_kafka.workdir / "node-0" / "server.properties").read_text()
        controller_port = int(properties.split("CONTROLLER://127.0.0.1:")[1].split()[0])
        client_port = int(local_kafka.bootstrap_servers.rsplit(":", 1)[1])
        for port in (client_port, controller_port):
            assert _listening_addresses(port) == {"127.0.0.1"}

    def test_stop_leaves_no_process(self, tmp_path: Path) -> None:
        """After stop() the JVM is gone and nothing runs from the work directory."""
        kafka = LocalKafka(nodes=1, workdir=tmp_path / "kafka", heap_mb=256)
        kafka.start()
        pid = kafka.pid(0)
        assert pid is not None and _alive(pid)
        kafka.stop()
        assert not _alive(pid)
        assert _processes_mentioning(str(tmp_path)) == []

    def test_start_timeout_raises_and_cleans_up(self, tmp_path: Path) -> None:
        """A start that cannot finish in time raises InfrastructureError and leaves no JVM."""
        kafka = LocalKafka(nodes=1, workdir=tmp_path / "kafka", heap_mb=256)
        with pytest.raises(InfrastructureError, match="node 0"):
            kafka.start(timeout=0.5)
        assert _processes_mentioning(str(tmp_path)) == []


class TestResolveClasspath:
    def test_stale_cache_is_resolved_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cached classpath naming a missing jar is replaced by a fresh Maven resolution."""
        monkeypatch.delenv("KAFKA_HOME", raising=False)
        monkeypatch.setenv("FXGW_CACHE_DIR", str(tmp_path))
        cache = classpath_cache_file()
        cache.parent.mkdir(parents=True)
        cache.write_text(str(tmp_path / "gone.jar") + "\n")
        classpath = resolve_classpath()
        jars = classpath.split(os.pathsep)
        assert all(Path(jar).is_file() for jar in jars)
        assert any(Path(jar).name.startswith("kafka_2.13-") for jar in jars)
        assert classpath == cache.read_text().strip()

    def test_kafka_home_libs_are_used(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With KAFKA_HOME set, its libs/* is the classpath, and a broker starts from it."""
        monkeypatch.delenv("KAFKA_HOME", raising=False)
        jars = [Path(jar) for jar in resolve_classpath().split(os.pathsep)]
        home = tmp_path / "kafka_2.13"
        (home / "libs").mkdir(parents=True)
        for jar in jars:  # the layout of an unpacked distribution, with the same jars
            (home / "libs" / jar.name).symlink_to(jar)
        monkeypatch.setenv("KAFKA_HOME", str(home))
        assert str(home / "libs" / "*") == resolve_classpath()
        with LocalKafka(nodes=1, workdir=tmp_path / "work", heap_mb=256) as kafka:
            assert kafka.is_running(0)

    def test_kafka_home_without_kafka_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A KAFKA_HOME that is not a Kafka distribution is a configuration error."""
        monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
        with pytest.raises(ConfigError, match="KAFKA_HOME"):
            resolve_classpath()


class TestSecuredCommandLine:
    """`python -m gateway.dev.kafka start --secured --user X`: authenticated, authorised."""

    def test_users_authenticate_and_acls_are_enforced(self, tmp_path: Path) -> None:
        """The printed SASL_SSL address takes the user's password over TLS (the printed CA),
        no write is allowed before an ACL grants it, every listener is on 127.0.0.1, and
        SIGTERM stops it."""
        command = [sys.executable, "-m", "gateway.dev.kafka", "start", "--dir", str(tmp_path)]
        process = subprocess.Popen(
            [*command, "--secured", "--user", "NL-POL"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            printed: dict[str, str] = {}
            while len(printed) < 4:
                line = process.stdout.readline()  # bounded by the test's timeout
                assert line, "the launcher exited before it printed its addresses"
                key, _, value = line.strip().partition("=")
                printed[key] = value
            for key in ("BOOTSTRAP", "SSL_BOOTSTRAP", "SASL_SSL_BOOTSTRAP"):
                assert _listening_addresses(int(printed[key].rsplit(":", 1)[1])) == {"127.0.0.1"}
            secret = tmp_path / "tls" / "NL-POL.password"
            assert 0o600 == secret.stat().st_mode & 0o777
            cluster = Cluster(
                printed["SASL_SSL_BOOTSTRAP"],
                protocol="SASL_SSL",
                ca_file=Path(printed["CA_FILE"]),
                sasl_mechanism="SCRAM-SHA-512",
                username="NL-POL",
                password=Secret("test", secret),
            )
            asyncio.run(_refused_write(cluster))
        finally:
            process.send_signal(signal.SIGTERM)
            assert 0 == process.wait(60)
            if process.stdout is not None:
                process.stdout.close()


async def _refused_write(cluster: Cluster) -> None:
    """Authenticated as the cluster's user (a wrong password would fail the SASL handshake
    first), a producer is refused by the authorizer: no ACL grants it anything yet."""
    producer = Producer(cluster, "test-secured")
    with pytest.raises(AccessRefused, match="ClusterAuthorizationFailed"):
        await producer.start()
    await producer.stop()
