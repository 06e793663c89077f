"""The node config file (``node.yaml``): who this node is, its keys, files, topics and routes.

Relative paths in the file are resolved against the file's own folder, so a node's config,
keys and state can move together.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway._yamlfile import load_model, read_yaml
from gateway.core.effects import MIB, Limits
from gateway.core.routing import Route
from gateway.errors import ConfigError
from gateway.node.transport import Cluster, Secret, TopicSpec
from gateway.resources import SCHEMAS
from gateway.types import AgencyId

DEFAULT_SCHEMAS = SCHEMAS
"""The contract a node loads when its config names no ``schemas`` folder: the one shipped."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeysModel(_Strict):
    signing: str
    encryption: list[str] = Field(min_length=1)
    pseudonym: str | None = None


class AuthorityKeyModel(_Strict):
    id: str
    public: str


class TrustModel(_Strict):
    file: str
    authority_keys: list[AuthorityKeyModel] = Field(min_length=1)


class TlsModel(_Strict):
    ca_file: str | None = None
    check_hostname: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    key_password_file: str | None = None
    key_password_env: str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TlsModel:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS); set both or neither")
        if self.key_password_file is not None and self.key_password_env is not None:
            raise ValueError("set key_password_file or key_password_env, not both")
        return self


class SaslModel(_Strict):
    mechanism: Literal["PLAIN", "SCRAM-SHA-512"]
    username: str = Field(min_length=1)
    password_file: str | None = None
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one_password(self) -> SaslModel:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError(
                "set exactly one of password_file and password_env (a password is never written"
                " in the node config)"
            )
        return self


class SecurityModel(_Strict):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    tls: TlsModel | None = None
    sasl: SaslModel | None = None

    @model_validator(mode="after")
    def _fits_protocol(self) -> SecurityModel:
        if self.protocol.startswith("SASL_") and self.sasl is None:
            raise ValueError(f"protocol {self.protocol} needs a sasl block")
        if not self.protocol.startswith("SASL_") and self.sasl is not None:
            raise ValueError(f"a sasl block needs protocol SASL_SSL, not {self.protocol}")
        if self.protocol not in ("SSL", "SASL_SSL") and self.tls is not None:
            raise ValueError(f"a tls block needs protocol SSL or SASL_SSL, not {self.protocol}")
        return self


class TopicsModel(_Strict):
    """Settings of the topics the node creates, and the least it accepts of existing ones."""

    replication: int = Field(default=3, ge=1)
    min_insync_replicas: int = Field(default=2, ge=1)
    partitions: int = Field(default=1, ge=1)
    retention_hours: float = Field(default=168, gt=0)
    max_message_bytes: int = Field(default=MIB, ge=64 * 1024, le=64 * MIB)

    @model_validator(mode="after")
    def _isr_fits(self) -> TopicsModel:
        if self.min_insync_replicas > self.replication:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) is more than replication"
                f" ({self.replication}): no write could ever be acknowledged"
            )
        return self


class ExchangeModel(_Strict):
    bootstrap_servers: str = Field(min_length=1)
    security: SecurityModel | None = None
    topics: TopicsModel = TopicsModel()
    topic_prefix: str = Field(default="fx", pattern=r"^[A-Za-z0-9._-]+$")
    provision_inboxes: bool = False
    receipt_timeout_seconds: float = Field(default=300, gt=0)


class LocalModel(_Strict):
    bootstrap_servers: str = Field(min_length=1)
    security: SecurityModel | None = None
    topics: TopicsModel = TopicsModel()
    outbound_topic: str | None = None
    inbound_topic: str | None = None
    quarantine_topic: str


class SpoolModel(_Strict):
    outbound_dir: str | None = None
    inbound_dir: str | None = None


class DeliveryModel(_Strict):
    sink: Literal["kafka", "spool"] = "kafka"


class EnvelopeModel(_Strict):
    ttl_hours: float = Field(default=168, gt=0)
    max_skew_seconds: float = Field(default=300, ge=0)
    max_lifetime_days: float = Field(default=30, gt=0)
    data_key_max_age_minutes: float = Field(default=60, gt=0)
    data_key_max_uses: int = Field(default=10_000, ge=1)


_LIMITS = Limits()


class LimitsModel(_Strict):
    """Sizes in bytes; they must fit the topics' ``max.message.bytes``."""

    max_event_bytes: int = Field(default=_LIMITS.max_event_bytes, ge=1024, le=64 * MIB)
    max_envelope_bytes: int = Field(default=_LIMITS.max_envelope_bytes, ge=1024, le=64 * MIB)
    max_delivery_bytes: int = Field(default=_LIMITS.max_delivery_bytes, ge=1024, le=64 * MIB)
    max_receipt_bytes: int = Field(default=_LIMITS.max_receipt_bytes, ge=1024, le=MIB)
    quarantine_raw_bytes: int = Field(default=_LIMITS.quarantine_raw_bytes, ge=0, le=64 * MIB)
    quarantine_prefix_bytes: int = Field(default=_LIMITS.quarantine_prefix_bytes, ge=0, le=MIB)
    detail_chars: int = Field(default=_LIMITS.detail_chars, ge=64, le=65536)
    max_parked_bytes: int = Field(default=_LIMITS.max_parked_bytes, ge=0, le=64 * 1024 * MIB)


class RouteToModel(_Strict):
    agencies: list[str] = []
    groups: list[str] = []
    countries: list[str] = []
    agencies_from: list[str] = []
    countries_from: list[str] = []
    role: str | None = None


class RouteModel(_Strict):
    event: str
    to: RouteToModel


class NodeModel(_Strict):
    agency: str = Field(pattern=r"^[A-Z]{2}-[A-Z0-9-]+$")
    keys: KeysModel
    trust: TrustModel
    policy: str
    schemas: str | None = None
    contract_version: str | None = None
    state_dir: str
    exchange: ExchangeModel
    local: LocalModel
    spool: SpoolModel = SpoolModel()
    delivery: DeliveryModel = DeliveryModel()
    envelope: EnvelopeModel = EnvelopeModel()
    limits: LimitsModel = LimitsModel()
    routes: list[RouteModel] = []
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = Field(default="127.0.0.1", min_length=1)
    expiry_warning_days: float = Field(default=14, ge=0)
    # Kafka allows these characters in a group.instance.id, up to 249 of them, not "." or ".."
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
    development: bool = False
    """Development mode: a plaintext exchange, local topics on the exchange cluster and
    under-replicated topics are warned about instead of refused. Never in production."""

    @model_validator(mode="after")
    def _sink_has_a_target(self) -> NodeModel:
        if self.delivery.sink == "kafka" and not self.local.inbound_topic:
            raise ValueError("delivery.sink is 'kafka' but local.inbound_topic is not set")
        if self.delivery.sink == "spool" and not self.spool.inbound_dir:
            raise ValueError("delivery.sink is 'spool' but spool.inbound_dir is not set")
        return self

    @model_validator(mode="after")
    def _limits_fit_topics(self) -> NodeModel:
        room = 64 * 1024  # a record's key, headers and batch framing
        for limit, size, topics in (
            ("max_envelope_bytes", self.limits.max_envelope_bytes, "exchange"),
            ("max_delivery_bytes", self.limits.max_delivery_bytes, "local"),
        ):
            allowed = getattr(self, topics).topics.max_message_bytes
            if size + room > allowed:
                raise ValueError(
                    f"limits.{limit} ({size}) plus 64 KiB for headers does not fit"
                    f" {topics}.topics.max_message_bytes ({allowed}); lower the one or raise"
                    " the other"
                )
        return self

    @model_validator(mode="after")
    def _production_safe(self) -> NodeModel:
        if self.development:
            return self
        protocol = self.exchange.security.protocol if self.exchange.security else "PLAINTEXT"
        if protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(
                f"exchange.security.protocol is {protocol}: the exchange cluster is shared between"
                " agencies, so the node reaches it over TLS (SSL with a client certificate, or"
                " SASL_SSL); set exchange.security, or development: true for a test cluster"
            )
        if _servers(self.local.bootstrap_servers) & _servers(self.exchange.bootstrap_servers):
            raise ValueError(
                "local.bootstrap_servers names a broker of the exchange cluster: the local topics"
                " (plaintext events and deliveries, quarantine) must stay on the agency's own"
                " cluster; point local.bootstrap_servers at it, or set development: true"
            )
        return self


def _servers(bootstrap: str) -> set[str]:
    return {s.strip().lower() for s in bootstrap.split(",") if s.strip()}


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A validated node config with paths resolved."""

    path: Path
    agency: AgencyId
    signing_key: Path
    encryption_keys: tuple[Path, ...]
    pseudonym_key: Path | None
    trust_file: Path
    authority_keys: tuple[tuple[str, str], ...]
    policy_file: Path
    schemas_dir: Path
    contract_version: str | None
    """The contract version of the national system's events and deliveries (None: the newest
    the trust list lists for this agency)."""
    state_dir: Path
    exchange: Cluster
    """The exchange cluster, shared by the federation: inboxes and receipts."""
    exchange_topics: TopicsModel
    topic_prefix: str
    provision_inboxes: bool
    receipt_timeout: timedelta
    """A released message with no receipt after this long is reported overdue."""
    local: Cluster
    """The agency's own cluster: the national system's events, deliveries, quarantine."""
    local_topics: TopicsModel
    outbound_topic: str | None
    inbound_topic: str | None
    quarantine_topic: str
    spool_outbound: Path | None
    spool_inbound: Path | None
    sink: Literal["kafka", "spool"]
    ttl: timedelta
    max_skew: timedelta
    max_lifetime: timedelta
    data_key_max_age: timedelta
    data_key_max_uses: int
    routes: tuple[Route, ...]
    metrics_port: int | None
    """Where ``/metrics``, ``/healthz`` and ``/readyz`` are served (0: a free port; None: not
    served)."""
    instance_id: str
    """This node's static member id in every consumer group it joins (Kafka's
    ``group.instance.id``): a node restarted under the same id gets its partitions back at once.
    Each replica of an agency needs its own."""
    limits: Limits = field(default_factory=Limits)
    development: bool = False
    metrics_address: str = "127.0.0.1"
    """The address the metrics port is bound to (loopback unless set)."""
    expiry_warning: timedelta = timedelta(days=14)
    """Warn (log and ``fxgw_expires_soon``) when the trust list or an own key expires within
    this long."""

    def inbox_topic(self, agency: str) -> str:
        """The exchange topic an agency reads its envelopes from."""
        return f"{self.topic_prefix}.inbox.{agency}"

    def receipts_topic(self, agency: str) -> str:
        """The exchange topic an agency reads receipts from."""
        return f"{self.topic_prefix}.receipts.{agency}"

    def group_id(self, loop: str) -> str:
        """The consumer group of one of the node's loops (``inbox``, ``receipts``,
        ``outbound``): ``fxgw.<agency>.<loop>``, with the topic prefix after ``fxgw.`` when it
        is not the default ``fx``, so that two exchanges on one cluster never share a group (a
        static member of the one would hold up the other's rebalances for a session timeout)."""
        scope = "" if self.topic_prefix == "fx" else f"{self.topic_prefix}."
        return f"fxgw.{scope}{self.agency}.{loop}"

    @property
    def audit_dir(self) -> Path:
        """The node's audit trail: segments and checkpoints under the state folder."""
        return self.state_dir / "audit"


def load_config(path: Path) -> NodeConfig:
    """Read and validate ``node.yaml``.

    :raises ConfigError: naming file, line and field.
    """
    document = read_yaml(path, "node config")
    model = load_model(document, NodeModel, "node config", ConfigError)
    base = path.resolve().parent

    def resolve(value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else base / candidate

    routes = tuple(
        Route(
            event_type=r.event,
            agencies=tuple(r.to.agencies),
            groups=tuple(r.to.groups),
            countries=tuple(r.to.countries),
            agencies_from=tuple(r.to.agencies_from),
            countries_from=tuple(r.to.countries_from),
            role=r.to.role,
        )
        for r in model.routes
    )
    return NodeConfig(
        path=path,
        agency=AgencyId(model.agency),
        signing_key=resolve(model.keys.signing),
        encryption_keys=tuple(resolve(p) for p in model.keys.encryption),
        pseudonym_key=resolve(model.keys.pseudonym) if model.keys.pseudonym else None,
        trust_file=resolve(model.trust.file),
        authority_keys=tuple((k.id, k.public) for k in model.trust.authority_keys),
        policy_file=resolve(model.policy),
        schemas_dir=resolve(model.schemas) if model.schemas else DEFAULT_SCHEMAS,
        contract_version=model.contract_version,
        state_dir=resolve(model.state_dir),
        exchange=_cluster(model.exchange, "exchange", resolve),
        exchange_topics=model.exchange.topics,
        topic_prefix=model.exchange.topic_prefix,
        provision_inboxes=model.exchange.provision_inboxes,
        receipt_timeout=timedelta(seconds=model.exchange.receipt_timeout_seconds),
        local=_cluster(model.local, "local", resolve),
        local_topics=model.local.topics,
        outbound_topic=model.local.outbound_topic,
        inbound_topic=model.local.inbound_topic,
        quarantine_topic=model.local.quarantine_topic,
        spool_outbound=resolve(model.spool.outbound_dir) if model.spool.outbound_dir else None,
        spool_inbound=resolve(model.spool.inbound_dir) if model.spool.inbound_dir else None,
        sink=model.delivery.sink,
        ttl=timedelta(hours=model.envelope.ttl_hours),
        max_skew=timedelta(seconds=model.envelope.max_skew_seconds),
        max_lifetime=timedelta(days=model.envelope.max_lifetime_days),
        data_key_max_age=timedelta(minutes=model.envelope.data_key_max_age_minutes),
        data_key_max_uses=model.envelope.data_key_max_uses,
        routes=routes,
        metrics_port=model.metrics_port,
        instance_id=model.instance_id
        or default_instance_id(model.agency, resolve(model.state_dir)),
        limits=Limits(**model.limits.model_dump()),
        development=model.development,
        metrics_address=model.metrics_address,
        expiry_warning=timedelta(days=model.expiry_warning_days),
    )


def _cluster(
    model: ExchangeModel | LocalModel, where: str, resolve: Callable[[str], Path]
) -> Cluster:
    """The cluster ``model`` describes. Its files and secrets are read when a client is made
    (and checked by ``fxgw config check``), so a config loads where they are not mounted."""
    security = model.security
    if security is None:
        return Cluster(model.bootstrap_servers, where=where)
    tls = security.tls or TlsModel()
    sasl = security.sasl
    key_password = None
    if tls.key_password_file or tls.key_password_env:
        key_password = Secret(
            f"{where}.security.tls.key_password",
            resolve(tls.key_password_file) if tls.key_password_file else None,
            tls.key_password_env,
        )
    password = None
    if sasl is not None:
        password = Secret(
            f"{where}.security.sasl.password",
            resolve(sasl.password_file) if sasl.password_file else None,
            sasl.password_env,
        )
    return Cluster(
        model.bootstrap_servers,
        protocol=security.protocol,
        ca_file=resolve(tls.ca_file) if tls.ca_file else None,
        check_hostname=tls.check_hostname,
        cert_file=resolve(tls.cert_file) if tls.cert_file else None,
        key_file=resolve(tls.key_file) if tls.key_file else None,
        key_password=key_password,
        sasl_mechanism=sasl.mechanism if sasl else None,
        username=sasl.username if sasl else None,
        password=password,
        where=where,
    )


def topic_spec(name: str, settings: TopicsModel) -> TopicSpec:
    """The spec of a topic on a cluster with these settings."""
    retention_ms = round(settings.retention_hours * 3_600_000)
    return TopicSpec(
        name,
        partitions=settings.partitions,
        replication=settings.replication,
        min_insync_replicas=settings.min_insync_replicas,
        max_message_bytes=settings.max_message_bytes,
        configs=(("retention.ms", str(retention_ms)),),
    )


def exchange_topic_specs(config: NodeConfig, agencies: Iterable[str]) -> list[TopicSpec]:
    """The inbox and receipts topics of ``agencies`` on the exchange cluster."""
    agencies = list(agencies)
    names = [config.inbox_topic(a) for a in agencies] + [config.receipts_topic(a) for a in agencies]
    return [topic_spec(n, config.exchange_topics) for n in names]


def default_instance_id(agency: str, state_dir: Path, host: str | None = None) -> str:
    """``<agency>.<host name>.<8 hex digits of the state folder's path>``: stable across restarts
    of one node, and different for replicas on other hosts or with other state folders (as each
    replica has its own). Where host names change on every start (a Kubernetes Deployment), set
    ``instance_id`` instead, e.g. from a StatefulSet's pod name."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", host if host is not None else socket.gethostname())
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return f"{agency}.{host[:100] or 'host'}.{digest}"
