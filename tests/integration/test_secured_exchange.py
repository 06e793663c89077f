"""The exchange over a secured Kafka: TLS, mutual TLS and SASL, least-privilege ACLs.

A second local broker plays the federation's exchange cluster: SSL (mutual TLS) and SASL_SSL
listeners, the StandardAuthorizer, SCRAM users made when its storage is formatted, and each
agency's ACLs granted with Kafka's own AclCommand from :mod:`gateway.node.acls`. The session's
plaintext broker plays every agency's local cluster. The nodes run as in production: no
development mode, so a plaintext exchange, local topics on the exchange cluster or topics short
of their config would refuse the start.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import aiokafka
import aiokafka.errors
import pytest
import yaml
from aiokafka.structs import TopicPartition
from structlog.testing import capture_logs

from gateway.dev.demo import seizure_nl
from gateway.dev.kafka import LocalKafka, Secured
from gateway.dev.sandbox import Federation, build_federation
from gateway.dev.tls import Issued, LocalCA
from gateway.node.acls import Grant, agency_grants
from gateway.node.config import exchange_topic_specs, load_config
from gateway.node.runtime import Node
from gateway.node.transport import Cluster, Secret, ensure_topics
from tests.integration.conftest import (
    delivered,
    national_send,
    quarantined,
    running,
    wait_until,
)
from tests.integration.test_parking import _states

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@asynccontextmanager
async def running_unready(fed: Federation, agency: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run one node that cannot become ready (its inbox loop may not join its group): the
    task, without waiting for readiness; stopped at the end of the block."""
    node = Node(load_config(fed.config(agency)))
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop), name=agency)
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


AGENCIES = ("NL-POL", "BE-FPJ", "US-ATF")
# how each agency proves who it is: SCRAM, a client certificate, PLAIN (all over TLS)
METHOD = {"NL-POL": "SCRAM-SHA-512", "BE-FPJ": "mTLS", "US-ATF": "PLAIN"}


@dataclass
class Exchange:
    """The secured exchange cluster and what its clients need."""

    kafka: LocalKafka
    ca_file: Path
    certs: dict[str, Issued]
    passwords: dict[str, str]
    root: Path

    def security(self, agency: str, folder: Path) -> tuple[str, dict[str, object]]:
        """The bootstrap list and the ``security`` block of ``agency``'s node config; its
        password goes to a 0600 file in ``folder``."""
        method = METHOD[agency]
        if method == "mTLS":
            cert = self.certs[agency]
            tls = {"ca_file": str(self.ca_file), "cert_file": str(cert.cert_file)}
            tls["key_file"] = str(cert.key_file)
            return self.kafka.ssl_bootstrap_servers, {"protocol": "SSL", "tls": tls}
        secret = folder / "exchange.password"
        secret.write_text(self.passwords[agency] + "\n")
        secret.chmod(0o600)
        sasl = {"mechanism": method, "username": agency, "password_file": str(secret)}
        block = {"protocol": "SASL_SSL", "tls": {"ca_file": str(self.ca_file)}, "sasl": sasl}
        return self.kafka.sasl_ssl_bootstrap_servers, block

    def cluster(self, agency: str) -> Cluster:
        """``agency``'s credentials, for a test's own client."""
        secret = self.root / f"{agency}.password"
        secret.write_text(self.passwords[agency])
        secret.chmod(0o600)
        return Cluster(
            self.kafka.sasl_ssl_bootstrap_servers,
            protocol="SASL_SSL",
            ca_file=self.ca_file,
            sasl_mechanism="SCRAM-SHA-512",
            username=agency,
            password=Secret("test", secret),
        )


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """A secured one-broker exchange cluster with a user and a certificate per agency."""
    root = tmp_path_factory.mktemp("secured")
    ca = LocalCA(root / "tls")
    broker = ca.issue("broker", server=True)
    certs = {a: ca.issue(a) for a in AGENCIES}
    passwords = {a: secrets.token_hex(16) for a in AGENCIES}
    secured = Secured(ca.ca_file, broker.keystore, tuple(passwords.items()))
    with LocalKafka(nodes=1, workdir=root / "kafka", secured=secured) as kafka:
        yield Exchange(kafka, ca.ca_file, certs, passwords, root)


async def _federation(
    root: Path, exchange: Exchange, local_bootstrap: str, prefix: str, grants: list[Grant]
) -> Federation:
    """Three agencies whose nodes reach ``exchange`` with their own credentials, with the
    exchange topics provisioned by the operator and ``grants`` applied."""
    fed = build_federation(root, local_bootstrap, prefix=prefix)
    single = {"replication": 1, "min_insync_replicas": 1}  # a one-broker test cluster
    for agency in AGENCIES:
        path = fed.config(agency)
        node = yaml.safe_load(path.read_text())
        del node["development"]
        bootstrap, security = exchange.security(agency, path.parent)
        node["exchange"].update(
            bootstrap_servers=bootstrap, security=security, provision_inboxes=False, topics=single
        )
        node["local"]["topics"] = dict(single)
        path.write_text(yaml.safe_dump(node, sort_keys=False))
    # the federation operator provisions the exchange topics, as the super user
    config = load_config(fed.config("NL-POL"))
    await ensure_topics(exchange.kafka.bootstrap_servers, exchange_topic_specs(config, AGENCIES))
    for grant in grants:
        exchange.kafka.grant(grant.arguments())
    return fed


def _all_grants(prefix: str) -> list[Grant]:
    return [g for a in AGENCIES for g in agency_grants(a, AGENCIES, prefix)]


def _audited(fed: Federation, agency: str, kind: str) -> bool:
    """Whether ``agency``'s audit trail holds an entry of ``kind``."""
    folder = load_config(fed.config(agency)).audit_dir
    return any(f'"kind":"{kind}"' in p.read_text() for p in folder.glob("audit-*.jsonl"))


async def _count(pending: object, at_least: int) -> bool:
    return len(await pending) >= at_least  # type: ignore[arg-type, misc]


class TestSecuredExchange:
    """Seizures and receipts flow over TLS and SASL, in production mode."""

    async def test_every_agency_on_its_own_credentials(
        self, tmp_path: Path, exchange: Exchange, kafka_bootstrap: str
    ) -> None:
        """SCRAM, mutual TLS and PLAIN over TLS: delivered, receipted, nothing quarantined."""
        fed = await _federation(
            tmp_path / "fed", exchange, kafka_bootstrap, "fxs1", _all_grants("fxs1")
        )
        async with running(fed, *AGENCIES):
            await national_send(fed, "NL-POL", seizure_nl(), seizure_nl())
            await wait_until(lambda: _count(delivered(fed, "BE-FPJ"), 2), "BE-FPJ's deliveries")
            await wait_until(lambda: _count(delivered(fed, "US-ATF"), 2), "US-ATF's deliveries")
            await wait_until(
                lambda: (
                    {"BE-FPJ": "delivered", "US-ATF": "delivered"}
                    == {k: v for k, v in _states(fed, "NL-POL").items()}
                ),
                "both receipts at NL-POL",
            )
            # the least privilege covers witnessed checkpoints, both ways
            await wait_until(
                lambda: (
                    _audited(fed, "US-ATF", "witnessed")
                    and _audited(fed, "NL-POL", "witness_receipt")
                ),
                "NL-POL's checkpoints witnessed by US-ATF and countersigned back",
            )
        assert 2 == len(await delivered(fed, "BE-FPJ"))
        assert 2 == len(await delivered(fed, "US-ATF"))
        for agency in AGENCIES:
            assert [] == await quarantined(fed, agency)
        assert not load_config(fed.config("NL-POL")).development

    async def test_an_agency_cannot_read_or_join_another_agencys_inbox(
        self, tmp_path: Path, exchange: Exchange, kafka_bootstrap: str
    ) -> None:
        """With NL-POL's credentials, BE-FPJ's inbox cannot be read, nor its group joined;
        NL-POL's own inbox can."""
        await _federation(tmp_path / "fed", exchange, kafka_bootstrap, "fxs2", _all_grants("fxs2"))
        options = exchange.cluster("NL-POL").client_options()

        async def read(topic: str, group: str | None) -> None:
            consumer = aiokafka.AIOKafkaConsumer(
                **options, group_id=group, auto_offset_reset="earliest", client_id="spy"
            )
            await consumer.start()
            try:
                if group is None:
                    consumer.assign([TopicPartition(topic, 0)])
                else:
                    consumer.subscribe([topic])
                await asyncio.wait_for(consumer.getmany(timeout_ms=3000), 30)
            finally:
                await consumer.stop()

        with pytest.raises(aiokafka.errors.TopicAuthorizationFailedError):
            await read("fxs2.inbox.BE-FPJ", None)
        with pytest.raises(aiokafka.errors.TopicAuthorizationFailedError):
            await read("fxs2.witness.BE-FPJ", None)  # BE-FPJ's countersignatures: its own
        with pytest.raises(aiokafka.errors.GroupAuthorizationFailedError):
            await read("fxs2.inbox.NL-POL", "fxgw.fxs2.BE-FPJ.inbox")
        await read("fxs2.inbox.NL-POL", "fxgw.fxs2.NL-POL.inbox")  # its own: allowed

    async def test_a_denied_inbox_is_reported_and_stalls_nothing(
        self, tmp_path: Path, exchange: Exchange, kafka_bootstrap: str
    ) -> None:
        """NL-POL may not write to US-ATF's inbox: its envelope is parked with the denial as
        the reason, BE-FPJ's is delivered meanwhile; once granted, US-ATF gets it, once."""
        prefix = "fxs3"
        denied = "fxs3.inbox.US-ATF"
        grants = []
        for grant in _all_grants(prefix):
            if grant.principal == "User:NL-POL" and denied in grant.names:
                grant = replace(grant, names=tuple(n for n in grant.names if n != denied))
            grants.append(grant)
        fed = await _federation(tmp_path / "fed", exchange, kafka_bootstrap, prefix, grants)
        async with running(fed, *AGENCIES) as nodes:
            await national_send(fed, "NL-POL", seizure_nl())
            await wait_until(lambda: _count(delivered(fed, "BE-FPJ"), 1), "BE-FPJ's delivery")
            await wait_until(
                lambda: _states(fed, "NL-POL").get("US-ATF") == "parked", "US-ATF's parked"
            )
            audit = (load_config(fed.config("NL-POL")).audit_dir).glob("*")
            text = "".join(p.read_text(errors="replace") for p in audit if p.is_file())
            assert f"{denied}: not authorized to write" in text
            print(f"\ncounters at NL-POL while denied: {dict(nodes['NL-POL'].counters)}")
            # the node goes on: a second seizure reaches BE-FPJ while US-ATF is still denied
            await national_send(fed, "NL-POL", seizure_nl())
            await wait_until(lambda: _count(delivered(fed, "BE-FPJ"), 2), "BE-FPJ's second")
            exchange.kafka.grant(
                Grant("User:NL-POL", ("Write", "Describe"), "topic", (denied,)).arguments()
            )
            await wait_until(
                lambda: _count(delivered(fed, "US-ATF"), 2), "US-ATF's deliveries", within_s=150
            )
        assert 2 == len(await delivered(fed, "US-ATF"))
        assert 2 == len(await delivered(fed, "BE-FPJ"))

    async def test_a_denied_read_is_reported_and_stalls_nothing(
        self, tmp_path: Path, exchange: Exchange, kafka_bootstrap: str
    ) -> None:
        """NL-POL may not use its consumer groups on the exchange: its inbox and receipts loops
        retry, saying why; it keeps releasing (BE-FPJ delivers) and stays up; once the group
        ACL is granted, the receipts come in."""
        prefix = "fxs5"
        grants = [
            g
            for g in _all_grants(prefix)
            if not (g.principal == "User:NL-POL" and g.resource == "group")
        ]
        fed = await _federation(tmp_path / "fed", exchange, kafka_bootstrap, prefix, grants)
        with capture_logs() as logs:
            async with running(fed, "BE-FPJ", "US-ATF"), running_unready(fed, "NL-POL") as nl:
                await national_send(fed, "NL-POL", seizure_nl())
                await wait_until(lambda: _count(delivered(fed, "BE-FPJ"), 1), "BE-FPJ's delivery")
                await wait_until(lambda: _count(delivered(fed, "US-ATF"), 1), "US-ATF's delivery")
                denied = [
                    e
                    for e in logs
                    if e["event"] == "retrying" and "GroupAuthorizationFailed" in e["error"]
                ]
                assert denied, "the denial is not in the log"
                assert "ACLs" in denied[0]["error"]
                assert "released" == _states(fed, "NL-POL").get("BE-FPJ")
                assert not nl.done()  # still running
                group = [g for g in _all_grants(prefix) if g.principal == "User:NL-POL"][-1]
                exchange.kafka.grant(group.arguments())
                await wait_until(
                    lambda: (
                        _states(fed, "NL-POL") == {"BE-FPJ": "delivered", "US-ATF": "delivered"}
                    ),
                    "both receipts at NL-POL once granted",
                    within_s=120,
                )
        print(f"\ndenial log lines while denied: {len(denied)}")


class TestProductionChecks:
    """What a node refuses at start outside development mode."""

    async def test_topics_short_of_the_config_refuse_the_start(
        self, tmp_path: Path, exchange: Exchange, kafka_bootstrap: str
    ) -> None:
        """Topics with fewer replicas, a lower min.insync.replicas and a smaller
        max.message.bytes than the config asks: 'fxgw run' exits, naming each topic, setting
        and the fix."""
        fed = await _federation(tmp_path / "fed", exchange, kafka_bootstrap, "fxs4", [])
        path = fed.config("US-ATF")
        node = yaml.safe_load(path.read_text())
        node["exchange"]["topics"].update(
            max_message_bytes=4 * 1024 * 1024, replication=3, min_insync_replicas=2
        )
        path.write_text(yaml.safe_dump(node, sort_keys=False))
        for grant in agency_grants("US-ATF", AGENCIES, "fxs4"):
            exchange.kafka.grant(grant.arguments())
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        stderr = result.stderr.decode(errors="replace")
        assert 2 == result.returncode, stderr[-2000:]
        assert "topic fxs4.inbox.US-ATF has max.message.bytes=1048576" in stderr
        assert "at least 4194304" in stderr
        assert (
            "topic fxs4.inbox.US-ATF has 1 replica(s) per partition, the node's config asks for 3"
            in stderr
        )
        assert "topic fxs4.receipts.US-ATF has min.insync.replicas=1" in stderr
        assert "fxgw topics provision" in stderr
