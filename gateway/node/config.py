"""The node config file (``node.yaml``): who this node is, its keys, files, topics and routes.

Relative paths in the file are resolved against the file's own folder, so a node's config,
keys and state can move together.
"""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway._yamlfile import load_model, read_yaml
from gateway.core.effects import MIB, Limits
from gateway.core.routing import Route
from gateway.errors import ConfigError
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


class ExchangeModel(_Strict):
    bootstrap_servers: str
    topic_prefix: str = Field(default="fx", pattern=r"^[A-Za-z0-9._-]+$")
    provision_inboxes: bool = False
    receipt_timeout_seconds: float = Field(default=300, gt=0)


class LocalModel(_Strict):
    bootstrap_servers: str | None = None
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
    # Kafka allows these characters in a group.instance.id, up to 249 of them, not "." or ".."
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")

    @model_validator(mode="after")
    def _sink_has_a_target(self) -> NodeModel:
        if self.delivery.sink == "kafka" and not self.local.inbound_topic:
            raise ValueError("delivery.sink is 'kafka' but local.inbound_topic is not set")
        if self.delivery.sink == "spool" and not self.spool.inbound_dir:
            raise ValueError("delivery.sink is 'spool' but spool.inbound_dir is not set")
        return self


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
    exchange_bootstrap: str
    topic_prefix: str
    provision_inboxes: bool
    receipt_timeout: timedelta
    """A released message with no receipt after this long is reported overdue."""
    local_bootstrap: str
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
    instance_id: str
    """This node's static member id in every consumer group it joins (Kafka's
    ``group.instance.id``): a node restarted under the same id gets its partitions back at once.
    Each replica of an agency needs its own."""
    limits: Limits = field(default_factory=Limits)

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
        exchange_bootstrap=model.exchange.bootstrap_servers,
        topic_prefix=model.exchange.topic_prefix,
        provision_inboxes=model.exchange.provision_inboxes,
        receipt_timeout=timedelta(seconds=model.exchange.receipt_timeout_seconds),
        local_bootstrap=model.local.bootstrap_servers or model.exchange.bootstrap_servers,
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
    )


def default_instance_id(agency: str, state_dir: Path, host: str | None = None) -> str:
    """``<agency>.<host name>.<8 hex digits of the state folder's path>``: stable across restarts
    of one node, and different for replicas on other hosts or with other state folders (as each
    replica has its own). Where host names change on every start (a Kubernetes Deployment), set
    ``instance_id`` instead, e.g. from a StatefulSet's pod name."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", host if host is not None else socket.gethostname())
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return f"{agency}.{host[:100] or 'host'}.{digest}"
