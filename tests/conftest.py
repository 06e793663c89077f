"""Shared fixtures: one real Kafka per test session.

The broker is chosen in this order:

1. ``FXGW_TEST_KAFKA=host:port[,...]``: an external cluster someone already runs;
2. testcontainers' Kafka, when a Docker engine answers;
3. otherwise :class:`gateway.dev.kafka.LocalKafka`, a KRaft broker started from the Apache Kafka
   jars on Maven Central (Java 17 and Maven needed).

Each test works under its own topic prefix, so tests share the broker without sharing topics.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from gateway.cli.main import configure_logging


def _docker_engine_reachable() -> bool:
    """True when a Docker engine answers on DOCKER_HOST (or the default unix socket)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(host.removeprefix("unix://"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.")
        if host.startswith("tcp://"):
            address, _, port = host.removeprefix("tcp://").rpartition(":")
            with socket.create_connection((address, int(port)), timeout=1.0):
                return True
    except OSError:
        return False
    return False


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    """Structured logs as in production (pytest captures stderr per test)."""
    configure_logging("info")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the session's real Kafka."""
    external = os.environ.get("FXGW_TEST_KAFKA")
    if external:
        yield external
        return
    if _docker_engine_reachable():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the module moved; same class
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from gateway.dev.kafka import LocalKafka

    with LocalKafka(nodes=1, workdir=tmp_path_factory.mktemp("kafka")) as kafka:
        yield kafka.bootstrap_servers


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of this test alone."""
    return f"t{uuid.uuid4().hex[:10]}"
