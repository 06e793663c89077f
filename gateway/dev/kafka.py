"""Start a real Apache Kafka (KRaft) on 127.0.0.1 without Docker, for tests and local runs.

The broker's jars come from Maven Central (``deploy/kafka/pom.xml``, resolved once into ``~/.m2``;
the resulting classpath is cached in ``~/.cache/fxgw/kafka/<version>/classpath.txt``, or under
``$FXGW_CACHE_DIR`` instead of ``~/.cache/fxgw``), or from an official distribution when
``KAFKA_HOME`` is set. Every node is a combined broker and controller with its own free ports and
log directory; all nodes of a cluster share one cluster id and a static controller quorum.

With ``secured`` given, every node also has an SSL listener (mutual TLS: the client certificate's
common name is the principal) and a SASL_SSL listener (SCRAM-SHA-512 and PLAIN), the
StandardAuthorizer denies what no ACL allows, and the SCRAM users are created when the storage is
formatted. The PLAINTEXT listener stays, for the brokers, the controllers and the launcher's own
tools: on 127.0.0.1 its anonymous principal is a super user (a development shortcut, named as
such; a real cluster has no such listener). :meth:`LocalKafka.grant` runs Kafka's own AclCommand.

This module is a development tool: standard library only, no asyncio, nothing imported from the
rest of the gateway but its errors and where the launcher files are. Command line::

    python -m gateway.dev.kafka start [--nodes N] [--dir D] [--heap-mb M] [--version V]
    python -m gateway.dev.kafka classpath [--version V]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

from gateway.errors import ConfigError, InfrastructureError
from gateway.resources import KAFKA_LAUNCHER

__all__ = [
    "DEFAULT_VERSION",
    "LocalKafka",
    "Secured",
    "classpath_cache_file",
    "main",
    "new_cluster_id",
    "resolve_classpath",
]

DEFAULT_VERSION = "4.1.1"

_HOST = "127.0.0.1"
_POM = KAFKA_LAUNCHER / "pom.xml"
_LOG_CONFIG = KAFKA_LAUNCHER / "log4j2.properties"
# Logged once by kafka.server.KafkaRaftServer when the broker is unfenced and serving clients.
_STARTED_LINE = b"Kafka Server started"
_MAVEN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 60.0
_STOP_GRACE_S = 20.0
# A broker's clean shutdown needs the controller quorum to approve it (and the raft leader tries
# for 5 s to hand over); once most nodes are gone it can only wait, for up to 5 minutes.
_QUORUMLESS_GRACE_S = 6.0
_TAIL_BYTES = 4000
_JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    # Kafka logs from its own shutdown hook; log4j's hook must not close the log before that
    # (it would warn on stdout and lose the shutdown lines). Files are flushed on every line.
    "-Dlog4j2.shutdownHookEnabled=false",
)


# --- classpath -----------------------------------------------------------------------------------


def new_cluster_id() -> str:
    """Return a random cluster id, as ``kafka-storage random-uuid`` prints it (22 characters)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        # Like Kafka's Uuid.randomUuid: an id starting with "-" reads as an option to the tools.
        if not cluster_id.startswith("-"):
            return cluster_id


def classpath_cache_file(version: str = DEFAULT_VERSION) -> Path:
    """Return where the resolved classpath of Kafka ``version`` is cached (per content of the
    pom, so that a changed pom is resolved again)."""
    root = os.environ.get("FXGW_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "fxgw"
    pom = hashlib.sha256(_POM.read_bytes()).hexdigest()[:12] if _POM.is_file() else "no-pom"
    return base / "kafka" / version / pom / "classpath.txt"


def resolve_classpath(version: str = DEFAULT_VERSION, *, refresh: bool = False) -> str:
    """Return a Java classpath holding a Kafka broker and a log4j2 backend.

    With ``KAFKA_HOME`` set, that distribution's ``libs/*`` is used (and ``version`` ignored).
    Otherwise Maven resolves ``deploy/kafka/pom.xml`` on first use (downloading into ``~/.m2``)
    and the result is cached; the cache is redone when ``refresh`` is true or a jar is missing.

    :raises ConfigError: ``KAFKA_HOME`` is not a Kafka distribution, or the pom is missing.
    :raises InfrastructureError: Maven is missing or failed to resolve the jars.
    """
    home = os.environ.get("KAFKA_HOME")
    if home:
        libs = Path(home) / "libs"
        if not any(libs.glob("kafka_2.*.jar")):
            raise ConfigError(
                "KAFKA_HOME does not look like an Apache Kafka distribution (no"
                " libs/kafka_2.*.jar); unset it to use Maven, or point it at an unpacked"
                " kafka_2.13-4.x.tgz",
                file=str(libs),
            )
        return str(libs / "*")

    cache = classpath_cache_file(version)
    if not refresh and cache.is_file():
        classpath = cache.read_text(encoding="utf-8").strip()
        if classpath and all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
            return classpath
    classpath = _maven_classpath(version, cache.parent)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Written whole and renamed, so a concurrent reader never sees half a classpath.
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".classpath.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(classpath + "\n")
    os.replace(tmp, cache)
    return classpath


def _maven_classpath(version: str, scratch: Path) -> str:
    if not _POM.is_file():
        raise ConfigError(
            "the Kafka launcher's pom is missing (it ships in the package as"
            " gateway/_data/kafka/pom.xml, from deploy/kafka/); reinstall fxgw, or set KAFKA_HOME",
            file=str(_POM),
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        error = InfrastructureError(
            "Maven (mvn) is not on PATH; install Maven 3.8+ or set KAFKA_HOME to a Kafka"
            " distribution"
        )
        error.retriable = False
        raise error
    scratch.mkdir(parents=True, exist_ok=True)
    out_file = scratch / f"classpath.{os.getpid()}.mvn"
    command = [
        mvn,
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(_POM),
        f"-Dkafka.version={version}",
        "dependency:build-classpath",
        f"-Dmdep.outputFile={out_file}",
        f"-Dmdep.pathSeparator={os.pathsep}",
    ]
    done, output = _run_captured(
        command, _MAVEN_TIMEOUT_S, f"Maven did not resolve Kafka {version}"
    )
    try:
        classpath = out_file.read_text(encoding="utf-8").strip() if out_file.is_file() else ""
    finally:
        out_file.unlink(missing_ok=True)
    if done.returncode != 0 or not classpath:
        raise InfrastructureError(
            f"Maven could not resolve Kafka {version} (exit {done.returncode}); is the version"
            f" published and Maven Central reachable?\n{_tail_text(output)}"
        )
    return classpath


def _run_captured(
    command: list[str], timeout: float, late: str
) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run ``command`` without stdin; its result and its output (stdout then stderr) as text.

    :raises InfrastructureError: ``late``, when it did not finish within ``timeout`` seconds.
    """
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InfrastructureError(f"{late} within {timeout:.0f} s") from exc
    return done, (done.stdout + done.stderr).decode("utf-8", "replace")


# --- the cluster ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Secured:
    """What a secured cluster needs: PEM files and the SASL users."""

    ca_file: Path
    """The CA bundle that client certificates must chain to."""
    keystore_file: Path
    """The brokers' private key and certificate (valid for 127.0.0.1), in one PEM file."""
    users: tuple[tuple[str, str], ...] = ()
    """SCRAM-SHA-512 and PLAIN users: (name, password). Names and passwords of letters,
    digits, ``-`` and ``_``."""

    def __post_init__(self) -> None:
        for name, password in self.users:
            if not (_TOKEN.fullmatch(name) and _TOKEN.fullmatch(password)):
                raise ValueError("user names and passwords are letters, digits, - and _")


_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(slots=True)
class _Node:
    """One combined broker+controller: its ports, files, and the running JVM if any."""

    index: int
    port: int
    controller_port: int
    directory: Path
    ssl_port: int = 0
    sasl_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0

    @property
    def properties_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def kafka_log(self) -> Path:
        """The log4j file (WARN and the start-up line), see ``deploy/kafka/log4j2.properties``."""
        return self.directory / "kafka.log"

    @property
    def stdout_log(self) -> Path:
        return self.directory / "stdout.log"


class LocalKafka:
    """A Kafka cluster of ``nodes`` combined broker+controller JVMs on 127.0.0.1.

    Node ``i`` has ``node.id=i``. Ports are picked free at :meth:`start` and kept for the life of
    the object, so a node restarted with :meth:`start_node` comes back on the same address. With
    ``workdir`` given, data and logs stay there and a later start reuses them (same cluster id);
    without it a temporary directory is made and removed by :meth:`stop`.
    """

    def __init__(
        self,
        nodes: int = 1,
        workdir: Path | None = None,
        heap_mb: int = 512,
        version: str = DEFAULT_VERSION,
        secured: Secured | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        if heap_mb < 128:
            raise ValueError(f"heap_mb must be at least 128, got {heap_mb}")
        self.nodes = nodes
        self.heap_mb = heap_mb
        self.version = version
        self.secured = secured
        self._workdir = workdir.resolve() if workdir is not None else None
        self._owns_workdir = False
        self._cluster_id = ""
        self._classpath = ""
        self._members: list[_Node] = []
        self._atexit_registered = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The directory holding every node's config, data and logs (after :meth:`start`)."""
        if self._workdir is None:
            raise RuntimeError("LocalKafka has no work directory before start()")
        return self._workdir

    @property
    def cluster_id(self) -> str:
        """The KRaft cluster id shared by all nodes (after :meth:`start`)."""
        self._require_started()
        return self._cluster_id

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:port,...`` for every node, in node order."""
        self._require_started()
        return ",".join(f"{_HOST}:{node.port}" for node in self._members)

    @property
    def ssl_bootstrap_servers(self) -> str:
        """The SSL (mutual TLS) listeners of a secured cluster."""
        self._require_secured()
        return ",".join(f"{_HOST}:{node.ssl_port}" for node in self._members)

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """The SASL_SSL listeners of a secured cluster."""
        self._require_secured()
        return ",".join(f"{_HOST}:{node.sasl_port}" for node in self._members)

    def grant(self, arguments: Sequence[str], timeout: float = 60.0) -> str:
        """Run Kafka's AclCommand (``kafka-acls.sh``) with ``arguments`` (``--add ...``) against
        this cluster, as the super user of the PLAINTEXT listener; return what it printed.

        :raises InfrastructureError: the command failed or timed out.
        """
        self._require_secured()
        return self.run_tool(
            "org.apache.kafka.tools.AclCommand",
            ["--bootstrap-server", self.bootstrap_servers, *arguments],
            timeout,
        )

    def run_tool(self, main_class: str, arguments: Sequence[str], timeout: float = 60.0) -> str:
        """Run one of Kafka's command-line tools on this cluster's classpath.

        :raises InfrastructureError: the tool failed or timed out; with its output.
        """
        self._require_started()
        command = [
            "java",
            f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
            "-cp",
            self._classpath,
            main_class,
            *arguments,
        ]
        done, output = _run_captured(command, timeout, f"{main_class} did not finish")
        if done.returncode != 0:
            raise InfrastructureError(
                f"{main_class} failed (exit {done.returncode})\n{_tail_text(output)}"
            )
        return output

    def node_bootstrap(self, i: int) -> str:
        """``127.0.0.1:port`` of node ``i`` alone."""
        self._require_started()
        return f"{_HOST}:{self._node(i).port}"

    def log_file(self, i: int) -> Path:
        """The log4j file of node ``i`` (WARN and above)."""
        self._require_started()
        return self._node(i).kafka_log

    def pid(self, i: int) -> int | None:
        """The process id of node ``i``'s JVM, or None when it is not running."""
        self._require_started()
        process = self._node(i).process
        return process.pid if process is not None and process.poll() is None else None

    def is_running(self, i: int) -> bool:
        """Whether node ``i``'s JVM is alive."""
        return self.pid(i) is not None

    def start(self, timeout: float = 120.0) -> None:
        """Resolve the jars, format the nodes' storage, start them, and wait until all serve.

        Returns once every node has logged that it started and accepts TCP connections on its
        client port. ``timeout`` covers formatting and start-up, not a first Maven download. On
        any failure every node started here is stopped again.

        :raises InfrastructureError: Maven, formatting or a node failed, or ``timeout`` passed;
            the message holds the tail of the failing node's log.
        :raises ConfigError: ``workdir`` holds a cluster of another shape, or the pom is missing.
        """
        if self._members:
            raise RuntimeError("LocalKafka.start() called twice; use start_node() for one node")
        self._classpath = resolve_classpath(self.version)
        # The one-time Maven download (its own limit) does not count against ``timeout``.
        deadline = time.monotonic() + timeout
        if not _LOG_CONFIG.is_file():
            raise ConfigError("the Kafka launcher's log config is missing", file=str(_LOG_CONFIG))
        self._prepare_workdir()
        per_node = 4 if self.secured else 2
        ports = _free_ports(per_node * self.nodes)
        self._members = [
            _Node(
                index=i,
                port=ports[per_node * i],
                controller_port=ports[per_node * i + 1],
                directory=self.workdir / f"node-{i}",
                ssl_port=ports[per_node * i + 2] if self.secured else 0,
                sasl_port=ports[per_node * i + 3] if self.secured else 0,
            )
            for i in range(self.nodes)
        ]
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            for node in self._members:
                node.directory.mkdir(parents=True, exist_ok=True)
                node.properties_file.write_text(self._server_properties(node), encoding="utf-8")
            self._format(self._members, deadline)
            for node in self._members:
                self._launch(node)
            for node in self._members:
                self._wait_ready(node, deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a grace period); idempotent.

        Leaves no JVM behind. Removes the work directory if it was a temporary one made here.
        """
        self._terminate(self._members, _STOP_GRACE_S)
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._owns_workdir = False
        self._members = []

    def stop_node(self, i: int, timeout: float = _STOP_GRACE_S) -> None:
        """Shut node ``i`` down cleanly (SIGTERM; SIGKILL if it is not gone after ``timeout``).

        The last node of a cluster whose quorum is already gone cannot shut down cleanly; it is
        killed after a few seconds.
        """
        self._terminate([self._started_node(i)], timeout)

    def kill_node(self, i: int) -> None:
        """Kill node ``i`` at once (SIGKILL), as a crash would."""
        node = self._started_node(i)
        if node.process is not None:
            _signal(node, signal.SIGKILL)
            self._reap(node, 10.0)

    def start_node(self, i: int, timeout: float = 60.0) -> None:
        """Start node ``i`` again, on its old ports and data, and wait until it serves.

        :raises InfrastructureError: the node did not come up within ``timeout``.
        """
        node = self._started_node(i)
        if node.process is not None and node.process.poll() is None:
            return
        deadline = time.monotonic() + timeout
        self._launch(node)
        self._wait_ready(node, deadline)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap_servers if self._members else "not started"
        return f"LocalKafka(nodes={self.nodes}, version={self.version!r}, {where})"

    # -- steps --------------------------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="fxgw-kafka-"))
            self._owns_workdir = True
        self._workdir.mkdir(parents=True, exist_ok=True)
        # The cluster id and shape are kept so that a later run on the same directory reuses the
        # formatted storage instead of failing on a cluster id mismatch.
        marker = self._workdir / "cluster.json"
        if marker.is_file():
            try:
                saved = json.loads(marker.read_text(encoding="utf-8"))
                cluster_id, nodes = str(saved["cluster_id"]), int(saved["nodes"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    "unreadable; delete the work directory to start afresh", file=str(marker)
                ) from exc
            if nodes != self.nodes:
                raise ConfigError(
                    f"this work directory holds a {nodes}-node cluster, not {self.nodes};"
                    " use another --dir or delete this one",
                    file=str(marker),
                )
            self._cluster_id = cluster_id
        else:
            self._cluster_id = new_cluster_id()
            marker.write_text(
                json.dumps({"cluster_id": self._cluster_id, "nodes": self.nodes}) + "\n",
                encoding="utf-8",
            )

    def _server_properties(self, node: _Node) -> str:
        replication = min(self.nodes, 3)
        min_isr = max(1, replication - 1)
        voters = ",".join(f"{m.index}@{_HOST}:{m.controller_port}" for m in self._members)
        settings: dict[str, object] = {
            "process.roles": "broker,controller",
            "node.id": node.index,
            # A static quorum: the same list on every node, no --standalone/--initial-controllers.
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{_HOST}:{node.port},CONTROLLER://{_HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{node.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": node.data_dir,
            "num.partitions": 1,
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            # Fewer internal partitions than the default 50: the first group join and the first
            # transaction come quicker on a small machine; clients see no difference.
            "offsets.topic.num.partitions": 5,
            "transaction.state.log.num.partitions": 5,
            "share.coordinator.state.topic.num.partitions": 5,
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            # A killed node is fenced (and leaves the ISR) after 3 s rather than 9 s, so fault
            # tests stay short.
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 3000,
        }
        if self.secured is not None:
            settings.update(self._secured_properties(node, self.secured))
        lines = [f"# Written by gateway.dev.kafka for node {node.index}; rewritten on each start."]
        lines += [f"{key}={value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _secured_properties(node: _Node, secured: Secured) -> dict[str, object]:
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in secured.users)
        return {
            "listeners": (
                f"PLAINTEXT://{_HOST}:{node.port},CONTROLLER://{_HOST}:{node.controller_port},"
                f"SSL://{_HOST}:{node.ssl_port},SASL_SSL://{_HOST}:{node.sasl_port}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://{_HOST}:{node.port},SSL://{_HOST}:{node.ssl_port},"
                f"SASL_SSL://{_HOST}:{node.sasl_port}"
            ),
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # the brokers, controllers and launcher tools on the loopback PLAINTEXT listener
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": secured.keystore_file,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": secured.ca_file,
            "listener.name.ssl.ssl.client.auth": "required",
            # the principal of a client certificate is its common name: User:NL-POL
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.sasl_ssl.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            ),
        }

    def _format(self, members: Sequence[_Node], deadline: float) -> None:
        # One JVM per node, run side by side; --ignore-formatted makes a reused workdir fine.
        running: list[tuple[_Node, subprocess.Popen[bytes], IO[bytes]]] = []
        try:
            for node in members:
                log = (node.directory / "format.log").open("wb")
                command = [
                    "java",
                    f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
                    f"-Dkafka.logs.dir={node.directory}",
                    "-cp",
                    self._classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    f"--cluster-id={self._cluster_id}",
                    "-c",
                    str(node.properties_file),
                ]
                for name, password in self.secured.users if self.secured else ():
                    command += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
                process = _popen(command, node.directory, log)
                running.append((node, process, log))
            for node, process, _ in running:
                try:
                    code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired as exc:
                    raise InfrastructureError(
                        f"formatting node {node.index} timed out\n"
                        f"{_tail_file(node.directory / 'format.log')}"
                    ) from exc
                if code != 0:
                    raise InfrastructureError(
                        f"formatting the storage of node {node.index} failed (exit {code})\n"
                        f"{_tail_file(node.directory / 'format.log')}"
                    )
        finally:
            for _, process, format_log in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                format_log.close()

    def _launch(self, node: _Node) -> None:
        node.log_offset = node.kafka_log.stat().st_size if node.kafka_log.exists() else 0
        command = [
            "java",
            f"-Xmx{self.heap_mb}m",
            f"-Xms{self.heap_mb}m",
            *_JVM_FLAGS,
            f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
            f"-Dkafka.logs.dir={node.directory}",
            "-cp",
            self._classpath,
            "kafka.Kafka",
            str(node.properties_file),
        ]
        with node.stdout_log.open("ab") as log:
            node.process = _popen(command, node.directory, log)

    def _wait_ready(self, node: _Node, deadline: float) -> None:
        process = node.process
        assert process is not None
        while True:
            code = process.poll()
            if code is not None:
                node.process = None
                raise InfrastructureError(
                    f"Kafka node {node.index} exited with {code} while starting\n"
                    f"{self._tails(node)}"
                )
            if _logged_since(node.kafka_log, node.log_offset, _STARTED_LINE) and _accepts(
                node.port
            ):
                return
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"Kafka node {node.index} did not start in time (port {node.port})\n"
                    f"{self._tails(node)}"
                )
            time.sleep(0.1)

    def _terminate(self, targets: Sequence[_Node], grace: float) -> None:
        """SIGTERM ``targets`` and wait; SIGKILL what is left after ``grace``, or sooner once
        fewer than a majority of the cluster's nodes are alive (nothing can approve a clean
        shutdown then)."""
        for node in targets:
            _signal(node, signal.SIGTERM)
        majority = self.nodes // 2 + 1
        give_up = time.monotonic() + grace
        quorum_gone = False
        while pending := [node for node in targets if _alive(node)]:
            if not quorum_gone and sum(map(_alive, self._members)) < majority:
                quorum_gone = True
                give_up = min(give_up, time.monotonic() + _QUORUMLESS_GRACE_S)
            if time.monotonic() >= give_up:
                for node in pending:
                    _signal(node, signal.SIGKILL)
                break
            time.sleep(0.05)
        for node in targets:
            self._reap(node, _STOP_GRACE_S)

    def _reap(self, node: _Node, timeout: float) -> None:
        process = node.process
        if process is None:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        node.process = None

    # -- helpers ------------------------------------------------------------------------------

    def _tails(self, node: _Node) -> str:
        return (
            f"--- {node.stdout_log} ---\n{_tail_file(node.stdout_log)}\n"
            f"--- {node.kafka_log} ---\n{_tail_file(node.kafka_log)}"
        )

    def _require_secured(self) -> None:
        self._require_started()
        if self.secured is None:
            raise RuntimeError("this LocalKafka was started without secured=")

    def _require_started(self) -> None:
        if not self._members:
            raise RuntimeError("LocalKafka is not started")

    def _node(self, i: int) -> _Node:
        if not 0 <= i < len(self._members):
            raise IndexError(f"no node {i}; this cluster has nodes 0..{len(self._members) - 1}")
        return self._members[i]

    def _started_node(self, i: int) -> _Node:
        self._require_started()
        return self._node(i)


def _popen(command: list[str], cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    try:
        # Own session: a Ctrl-C in the terminal reaches only us, and we stop the JVMs in order.
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        error = InfrastructureError("java is not on PATH; Kafka 4.x needs Java 17 or later")
        error.retriable = False
        raise error from exc


def _alive(node: _Node) -> bool:
    return node.process is not None and node.process.poll() is None


def _signal(node: _Node, signum: signal.Signals) -> None:
    if node.process is not None and node.process.poll() is None:
        node.process.send_signal(signum)


def _free_ports(count: int) -> list[int]:
    """Pick ``count`` distinct free TCP ports on 127.0.0.1 (all held open until all are known)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_HOST, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _logged_since(path: Path, offset: int, needle: bytes) -> bool:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return needle in log.read()
    except FileNotFoundError:
        return False


def _tail_file(path: Path) -> str:
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - _TAIL_BYTES))
            return log.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log)"


def _tail_text(text: str) -> str:
    # Maven prints colour codes even in batch mode with -q.
    return re.sub(r"\x1b\[[0-9;]*m", "", text)[-_TAIL_BYTES:]


# --- command line --------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised from a signal handler to leave the foreground loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``start`` or ``classpath`` command; return the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.dev.kafka", description="A local Apache Kafka (KRaft), no Docker."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start Kafka and stay in the foreground")
    start.add_argument("--nodes", type=int, default=1, help="1 or 3 nodes usually (default 1)")
    start.add_argument("--dir", type=Path, default=None, help="keep data and logs here")
    start.add_argument("--heap-mb", type=int, default=512, help="JVM heap per node (default 512)")
    start.add_argument("--version", default=DEFAULT_VERSION, help="Kafka version from Maven")
    start.add_argument("--timeout", type=float, default=120.0, help="start-up limit in seconds")
    start.add_argument(
        "--secured",
        action="store_true",
        help="add SSL and SASL_SSL listeners and the StandardAuthorizer; makes a CA, a broker"
        " certificate, and a client certificate and password per --user (needs the"
        " 'cryptography' package)",
    )
    start.add_argument(
        "--user", action="append", default=[], help="with --secured: an agency principal"
    )
    classpath = commands.add_parser("classpath", help="resolve the jars and print the cache file")
    classpath.add_argument("--version", default=DEFAULT_VERSION, help="Kafka version from Maven")
    classpath.add_argument("--refresh", action="store_true", help="resolve again with Maven")
    args = parser.parse_args(argv)

    try:
        if args.command == "classpath":
            resolved = resolve_classpath(args.version, refresh=args.refresh)
            print(resolved if os.environ.get("KAFKA_HOME") else classpath_cache_file(args.version))
            return 0
        secured = _secure_files(args.dir, args.user) if args.secured else None
        return _run_foreground(
            args.nodes, args.dir, args.heap_mb, args.version, args.timeout, secured
        )
    except (ConfigError, InfrastructureError) as exc:
        print(f"devkafka: {exc}", file=sys.stderr)
        return 1


def _secure_files(workdir: Path | None, users: Sequence[str]) -> Secured:
    """A CA, a broker certificate, and per user a client certificate and a password file
    (0600), under ``<workdir>/tls`` (a temporary folder without ``--dir``)."""
    from gateway.dev.tls import LocalCA  # a development dependency, for this mode only

    folder = (workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="fxgw-"))) / "tls"
    ca = LocalCA(folder)
    broker = ca.issue("broker", server=True)
    passwords: list[tuple[str, str]] = []
    for user in users:
        ca.issue(user)
        password = uuid.uuid4().hex
        secret = folder / f"{user}.password"
        secret.unlink(missing_ok=True)
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(password + "\n")
        passwords.append((user, password))
    return Secured(ca.ca_file, broker.keystore, tuple(passwords))


def _run_foreground(
    nodes: int,
    workdir: Path | None,
    heap_mb: int,
    version: str,
    timeout: float,
    secured: Secured | None = None,
) -> int:
    kafka = LocalKafka(
        nodes=nodes, workdir=workdir, heap_mb=heap_mb, version=version, secured=secured
    )
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        kafka.start(timeout=timeout)
        print(f"BOOTSTRAP={kafka.bootstrap_servers}", flush=True)
        if secured is not None:
            print(f"SSL_BOOTSTRAP={kafka.ssl_bootstrap_servers}", flush=True)
            print(f"SASL_SSL_BOOTSTRAP={kafka.sasl_ssl_bootstrap_servers}", flush=True)
            print(f"CA_FILE={secured.ca_file}", flush=True)
            print(
                f"devkafka: per user, <name>.pem/.key and <name>.password in"
                f" {secured.ca_file.parent}; the PLAINTEXT listener is a super user",
                file=sys.stderr,
                flush=True,
            )
        print(f"devkafka: Kafka {version}, logs in {kafka.workdir}", file=sys.stderr, flush=True)
        while True:
            dead = [i for i in range(nodes) if not kafka.is_running(i)]
            if dead:
                print(f"devkafka: node(s) {dead} exited; stopping", file=sys.stderr, flush=True)
                return 1
            time.sleep(1.0)
    except _Stop:
        return 0
    finally:
        # Signals that arrive while stopping must not cut the shutdown short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        kafka.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
