"""The node config file (``node.yaml``): who this node is, its keys, files, topics and routes.

:class:`NodeConfig` is the pydantic model of the file itself: what the node uses is what the
file says, validated, with relative paths resolved against the file's own folder (so a node's
config, keys and state can move together). A few properties derive what the file states in
other units (``ttl`` from ``ttl_hours``, the Kafka :class:`~gateway.node.transport.Cluster` of
a ``security`` block); nothing is copied into a second class.

Secrets never appear in the file: a password or key password is named by ``*_file`` (first
line of a 0600 file) or ``*_env`` (an environment variable), and read when a client is made.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import socket
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway._yamlfile import load_model, read_yaml
from gateway.core.effects import MIB, Limits
from gateway.core.routing import Route
from gateway.core.tracing import Deadlines
from gateway.errors import ConfigError
from gateway.node.transport import Cluster, Secret, TopicSpec
from gateway.resources import SCHEMAS
from gateway.types import AgencyId

DEFAULT_SCHEMAS = SCHEMAS
"""The contract a node loads when its config names no ``schemas`` folder: the one shipped."""


def _resolved(value: Path, info: ValidationInfo) -> Path:
    """``value`` with ``~`` expanded and, if relative, taken from the config file's folder."""
    value = value.expanduser()
    base = (info.context or {}).get("base")
    return value if value.is_absolute() or base is None else Path(base) / value


FilePath = Annotated[Path, AfterValidator(_resolved)]
"""A path in the file: resolved against the file's folder."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeysModel(_Strict):
    signing: FilePath
    encryption: tuple[FilePath, ...] = Field(min_length=1)
    pseudonym: FilePath | None = None


class AuthorityKeyModel(_Strict):
    id: str
    public: str
    """The authority's Ed25519 public key, standard base64 of 32 bytes."""

    @field_validator("public")
    @classmethod
    def _ed25519_public_key(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError(
                "not standard base64; copy the public key 'fxgw keygen --authority' printed"
            ) from None
        if len(raw) != 32:
            raise ValueError(
                f"an Ed25519 public key is 32 bytes, this is {len(raw)}; copy the public key"
                " 'fxgw keygen --authority' printed"
            )
        return value


class TrustModel(_Strict):
    file: FilePath
    authority_keys: list[AuthorityKeyModel] = Field(min_length=1)
    threshold: int = Field(default=1, ge=1)
    """How many of the pinned authority keys must have signed the list (k of n)."""

    @model_validator(mode="after")
    def _threshold_fits(self) -> TrustModel:
        distinct = len({k.public for k in self.authority_keys})
        if self.threshold > distinct:
            raise ValueError(
                f"threshold {self.threshold} is more than the {distinct} distinct authority"
                " key(s) pinned: no trust list could ever be accepted; pin more keys or lower it"
            )
        return self

    @property
    def pinned(self) -> tuple[tuple[str, str], ...]:
        """The authority keys as (key id, base64 public key) pairs."""
        return tuple((k.id, k.public) for k in self.authority_keys)


class TlsModel(_Strict):
    ca_file: FilePath | None = None
    check_hostname: bool = True
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    key_password_file: FilePath | None = None
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
    password_file: FilePath | None = None
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


class _ClusterModel(_Strict):
    bootstrap_servers: str = Field(min_length=1)
    security: SecurityModel | None = None
    topics: TopicsModel = TopicsModel()

    def _cluster(self, where: str) -> Cluster:
        security = self.security
        if security is None:
            return Cluster(self.bootstrap_servers, where=where)
        tls = security.tls or TlsModel()
        sasl = security.sasl
        key_password = None
        if tls.key_password_file or tls.key_password_env:
            key_password = Secret(
                f"{where}.security.tls.key_password", tls.key_password_file, tls.key_password_env
            )
        return Cluster(
            self.bootstrap_servers,
            protocol=security.protocol,
            ca_file=tls.ca_file,
            check_hostname=tls.check_hostname,
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            key_password=key_password,
            sasl_mechanism=sasl.mechanism if sasl else None,
            username=sasl.username if sasl else None,
            password=(
                Secret(f"{where}.security.sasl.password", sasl.password_file, sasl.password_env)
                if sasl
                else None
            ),
            where=where,
        )


class ExchangeModel(_ClusterModel):
    topic_prefix: str = Field(default="fx", pattern=r"^[A-Za-z0-9._-]+$")
    provision_inboxes: bool = False
    receipt_timeout_seconds: float = Field(default=300, gt=0)

    @property
    def cluster(self) -> Cluster:
        """The exchange cluster, shared by the federation: inboxes and receipts. Its files
        and secrets are read when a client is made (and checked by ``fxgw config check``)."""
        return self._cluster("exchange")

    @property
    def receipt_timeout(self) -> timedelta:
        """A released message with no receipt after this long is reported overdue."""
        return timedelta(seconds=self.receipt_timeout_seconds)


class LocalModel(_ClusterModel):
    outbound_topic: str | None = None
    inbound_topic: str | None = None
    quarantine_topic: str

    @property
    def cluster(self) -> Cluster:
        """The agency's own cluster: the national system's events, deliveries, quarantine."""
        return self._cluster("local")


class SpoolModel(_Strict):
    outbound_dir: FilePath | None = None
    inbound_dir: FilePath | None = None


class DeliveryModel(_Strict):
    sink: Literal["kafka", "spool"] = "kafka"


class EnvelopeModel(_Strict):
    ttl_hours: float = Field(default=168, gt=0)
    max_skew_seconds: float = Field(default=300, ge=0)
    max_lifetime_days: float = Field(default=30, gt=0)
    data_key_max_age_minutes: float = Field(default=60, gt=0)
    data_key_max_uses: int = Field(default=10_000, ge=1)

    @property
    def ttl(self) -> timedelta:
        return timedelta(hours=self.ttl_hours)

    @property
    def max_skew(self) -> timedelta:
        return timedelta(seconds=self.max_skew_seconds)

    @property
    def max_lifetime(self) -> timedelta:
        return timedelta(days=self.max_lifetime_days)

    @property
    def data_key_max_age(self) -> timedelta:
        return timedelta(minutes=self.data_key_max_age_minutes)


class WitnessModel(_Strict):
    """Witnessed checkpoints (:mod:`gateway.audit.witness`)."""

    agencies: list[str] | None = None
    """Whose checkpoints this node witnesses: None (the default) every other agency on the trust
    list in force; [] none."""
    publish_every_seconds: float = Field(default=10, gt=0)
    """How often the node publishes its newest checkpoint (when there is a new one)."""
    max_per_minute: int = Field(default=30, ge=1, le=6000)
    """Checkpoints witnessed per agency and minute; more are ignored (reason rate_limited)."""
    keep: int = Field(default=1000, ge=1, le=1_000_000)
    """Hashes remembered per witnessed log for fork detection (older ones are forgotten)."""


class TracingModel(_Strict):
    """Deadlines of trace requests and how the requester chases them
    (:mod:`gateway.core.tracing`). Durations: seconds, or ISO 8601 (``P30D``, ``PT48H``)."""

    routine: timedelta = Field(default=timedelta(days=30), gt=timedelta(0))
    """How long the traced agency has to answer a ROUTINE request."""
    urgent: timedelta = Field(default=timedelta(hours=48), gt=timedelta(0))
    """How long it has for an URGENT one."""
    remind_every: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    """Past the deadline, the requester sends a reminder at once and again this often..."""
    max_reminders: int = Field(default=3, ge=0, le=50)  # a case's history keeps them all
    """...up to this many."""
    auto_acknowledge: bool = True
    """The traced side acknowledges each request as it arrives, with its deadline."""
    check_every_seconds: float = Field(default=60, gt=0)
    """How often the node looks for requests that became overdue."""

    @property
    def deadlines(self) -> Deadlines:
        """These settings in the form the tracing core takes."""
        return Deadlines(
            self.routine, self.urgent, self.remind_every, self.max_reminders, self.auto_acknowledge
        )


class HitsModel(_Strict):
    """Hit/no-hit queries (:mod:`gateway.core.hits`, :mod:`gateway.node.hits`). Every node can
    query; a node with ``holdings`` and ``seed`` holds records and answers."""

    holdings: FilePath | None = None
    """The agency's holdings: JSON lines of make, serial_number, calibre, serial_obliterated."""
    seed: FilePath | None = None
    """The OPRF seed key file (``fxgw keygen --only oprf-seed``, 0600)."""
    max_holdings_bytes: int = Field(default=512 * MIB, ge=1024)
    epoch_days: int = Field(default=1, ge=1, le=366)
    """How long one OPRF key and filter live (epochs count whole days from 1970-01-01)."""
    grace_minutes: float = Field(default=60, ge=0)
    """After an epoch ends, how long its filter is still used and its key still answers."""
    fp_bound: float = Field(default=1e-6, gt=0, le=0.01)
    """The false-positive rate a holder's filter keeps under, per query."""
    max_shard_bytes: int = Field(default=512 * 1024, ge=1024, le=768 * 1024 - 4096)
    answer_per_minute: float = Field(default=60, ge=0)
    """Points evaluated per requester and minute, refilled continuously."""
    answer_burst: int = Field(default=120, ge=1)
    """Points a requester may spend at once."""
    query_timeout_seconds: float = Field(default=60, gt=0)
    """A query whose holders have not all answered by then gets a PARTIAL result."""
    max_pending: int = Field(default=1000, ge=1, le=100_000)
    """Queries in flight at once; more get NOT_QUERIED (busy)."""
    check_every_seconds: float = Field(default=10, gt=0)
    """How often the holdings file and the epoch are checked for a new filter."""

    @model_validator(mode="after")
    def _holder_pair(self) -> HitsModel:
        if (self.holdings is None) != (self.seed is None):
            raise ValueError(
                "hits.holdings and hits.seed go together (a holder publishes a filter of its"
                " holdings under keys from its seed); set both or neither"
            )
        return self

    @property
    def grace(self) -> timedelta:
        return timedelta(minutes=self.grace_minutes)

    @property
    def query_timeout(self) -> timedelta:
        return timedelta(seconds=self.query_timeout_seconds)


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

    @property
    def sizes(self) -> Limits:
        """These limits in the form the cores take."""
        return Limits(**self.model_dump())


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

    @property
    def route(self) -> Route:
        to = self.to
        return Route(
            event_type=self.event,
            agencies=tuple(to.agencies),
            groups=tuple(to.groups),
            countries=tuple(to.countries),
            agencies_from=tuple(to.agencies_from),
            countries_from=tuple(to.countries_from),
            role=to.role,
        )


class NodeConfig(_Strict):
    """A node's ``node.yaml``, validated, with paths resolved (see :func:`load_config`)."""

    agency: AgencyId = Field(pattern=r"^[A-Z]{2}-[A-Z0-9-]+$")
    keys: KeysModel
    trust: TrustModel
    policy: FilePath
    schemas: FilePath = DEFAULT_SCHEMAS
    contract_version: str | None = None
    """The contract version of the national system's events and deliveries (None: the newest
    the trust list lists for this agency)."""
    state_dir: FilePath
    exchange: ExchangeModel
    local: LocalModel
    spool: SpoolModel = SpoolModel()
    delivery: DeliveryModel = DeliveryModel()
    envelope: EnvelopeModel = EnvelopeModel()
    limits: LimitsModel = LimitsModel()
    routes: list[RouteModel] = []
    witness: WitnessModel = WitnessModel()
    tracing: TracingModel = TracingModel()
    hits: HitsModel = HitsModel()
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = Field(default="127.0.0.1", min_length=1)
    expiry_warning_days: float = Field(default=14, ge=0)
    # Kafka allows these characters in a group.instance.id, up to 249 of them, not "." or ".."
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
    """This node's static member id in every consumer group it joins (Kafka's
    ``group.instance.id``; unset: :func:`default_instance_id`): a node restarted under the same
    id gets its partitions back at once. Each replica of an agency needs its own."""
    development: bool = False
    """Development mode: a plaintext exchange, local topics on the exchange cluster and
    under-replicated topics are warned about instead of refused. Never in production."""
    _path: Path = PrivateAttr(default=Path("node.yaml"))

    @property
    def path(self) -> Path:
        """The file this config was read from."""
        return self._path

    @property
    def member_id(self) -> str:
        """``instance_id``, or the default for this host and state folder."""
        return self.instance_id or default_instance_id(self.agency, self.state_dir)

    @property
    def expiry_warning(self) -> timedelta:
        """Warn (log and ``fxgw_expires_soon``) when the trust list or an own key expires
        within this long."""
        return timedelta(days=self.expiry_warning_days)

    @property
    def routes_in_force(self) -> tuple[Route, ...]:
        return tuple(r.route for r in self.routes)

    def inbox_topic(self, agency: str) -> str:
        """The exchange topic an agency reads its envelopes from."""
        return f"{self.exchange.topic_prefix}.inbox.{agency}"

    def receipts_topic(self, agency: str) -> str:
        """The exchange topic an agency reads receipts from."""
        return f"{self.exchange.topic_prefix}.receipts.{agency}"

    def checkpoints_topic(self, agency: str) -> str:
        """The exchange topic an agency publishes its audit checkpoints on, for witnesses."""
        return f"{self.exchange.topic_prefix}.checkpoints.{agency}"

    def witness_topic(self, agency: str) -> str:
        """The exchange topic witnesses send their countersignatures of an agency's checkpoints
        back on."""
        return f"{self.exchange.topic_prefix}.witness.{agency}"

    def hitfilters_topic(self, agency: str) -> str:
        """The compacted exchange topic a holder publishes its hit/no-hit filter on."""
        return f"{self.exchange.topic_prefix}.hitfilters.{agency}"

    def group_id(self, loop: str) -> str:
        """The consumer group of one of the node's loops (``inbox``, ``receipts``,
        ``outbound``): ``fxgw.<agency>.<loop>``, with the topic prefix after ``fxgw.`` when it
        is not the default ``fx``, so that two exchanges on one cluster never share a group (a
        static member of the one would hold up the other's rebalances for a session timeout)."""
        prefix = self.exchange.topic_prefix
        scope = "" if prefix == "fx" else f"{prefix}."
        return f"fxgw.{scope}{self.agency}.{loop}"

    @property
    def audit_dir(self) -> Path:
        """The node's audit trail: segments and checkpoints under the state folder."""
        return self.state_dir / "audit"

    @model_validator(mode="after")
    def _sink_has_a_target(self) -> NodeConfig:
        if self.delivery.sink == "kafka" and not self.local.inbound_topic:
            raise ValueError("delivery.sink is 'kafka' but local.inbound_topic is not set")
        if self.delivery.sink == "spool" and not self.spool.inbound_dir:
            raise ValueError("delivery.sink is 'spool' but spool.inbound_dir is not set")
        return self

    @model_validator(mode="after")
    def _limits_fit_topics(self) -> NodeConfig:
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
    def _production_safe(self) -> NodeConfig:
        if self.development:
            return self
        protocol = self.exchange.security.protocol if self.exchange.security else "PLAINTEXT"
        if protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(
                f"exchange.security.protocol is {protocol}: the exchange cluster is shared between"
                " agencies, so the node reaches it over TLS (SSL with a client certificate, or"
                " SASL_SSL); set exchange.security, or development: true for a test cluster"
            )
        security = self.exchange.security
        if protocol == "SSL" and (
            security is None or security.tls is None or not security.tls.cert_file
        ):
            raise ValueError(
                "exchange.security.protocol is SSL without a client certificate: the exchange"
                " could not tell this agency from another; set exchange.security.tls.cert_file"
                " and key_file (mutual TLS), or use SASL_SSL"
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


def load_config(path: Path) -> NodeConfig:
    """Read and validate ``node.yaml``.

    :raises ConfigError: naming file, line and field.
    """
    document = read_yaml(path, "node config")
    config = load_model(
        document, NodeConfig, "node config", ConfigError, context={"base": path.resolve().parent}
    )
    config._path = path
    return config


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
    """The inbox, receipts, checkpoints, witness and (compacted) hit filter topics of
    ``agencies`` on the exchange cluster."""
    agencies = list(agencies)
    kinds = (config.inbox_topic, config.receipts_topic, config.checkpoints_topic)
    names = [topic(a) for topic in (*kinds, config.witness_topic) for a in agencies]
    specs = [topic_spec(n, config.exchange.topics) for n in names]
    for agency in agencies:
        spec = topic_spec(config.hitfilters_topic(agency), config.exchange.topics)
        specs.append(replace(spec, configs=(("cleanup.policy", "compact"),)))
    return specs


def default_instance_id(agency: str, state_dir: Path, host: str | None = None) -> str:
    """``<agency>.<host name>.<8 hex digits of the state folder's path>``: stable across restarts
    of one node, and different for replicas on other hosts or with other state folders (as each
    replica has its own). Where host names change on every start (a Kubernetes Deployment), set
    ``instance_id`` instead, e.g. from a StatefulSet's pod name."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", host if host is not None else socket.gethostname())
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return f"{agency}.{host[:100] or 'host'}.{digest}"
