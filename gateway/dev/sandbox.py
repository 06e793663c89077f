"""A complete local federation in one folder: authority, agencies, keys, trust list, node configs.

Used by ``fxgw demo`` and by the integration tests, so both run exactly the files an operator
would write: key files from :mod:`gateway.crypto.keys`, a trust list signed by an authority key, the
release policies of ``policies/`` (as shipped, :data:`gateway.resources.POLICIES`), and one
``node.yaml`` per agency.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import yaml

from gateway import resources
from gateway.contract.versions import Contract
from gateway.crypto import keys
from gateway.crypto.trust import sign_trust_list
from gateway.types import AgencyId

POLICIES = resources.POLICIES
"""The example release policies, as shipped with the package (``policies/`` of the repository)."""


@dataclass(frozen=True, slots=True)
class AgencySpec:
    """One agency of the sandbox federation."""

    agency: str
    country: str
    groups: tuple[str, ...]
    roles: tuple[str, ...] = ("trace",)
    legal_bases: tuple[str, ...] = ()
    sink: Literal["kafka", "spool"] = "kafka"
    routes: tuple[dict[str, object], ...] = ()
    schemas: Path | None = None
    """The node's contract (default: the one shipped with the package)."""
    contract_versions: tuple[str, ...] = ()
    """The contract versions the trust list says the agency reads (default: every version of
    the node's contract, so that the sandbox speaks the newest envelope format)."""


DEFAULT_ROUTES: tuple[dict[str, object], ...] = (
    {"event": "fxgw.SeizureEvent", "to": {"groups": ["EU"]}},
    {
        "event": "fxgw.TraceRequest",
        "to": {
            "countries_from": ["firearm.manufacture_country", "firearm.import_country"],
            "role": "trace",
        },
    },
    {"event": "fxgw.TraceResponse", "to": {"agencies_from": ["requesting_agency.agency_id"]}},
    {"event": "fxgw.TraceUpdate", "to": {"agencies_from": ["to_agency.agency_id"]}},
)

THREE_AGENCIES: tuple[AgencySpec, ...] = (
    AgencySpec(
        "NL-POL",
        "NL",
        ("EU", "INTERPOL"),
        # EU agencies are parties to the EU-US agreement too; the shipped policies name both
        # bases, and a trust list of a federation without US-ATF must still know them
        legal_bases=("EU-LED", "MLAT-EU-US"),
        routes=(
            {"event": "fxgw.SeizureEvent", "to": {"groups": ["EU"], "agencies": ["US-ATF"]}},
            *DEFAULT_ROUTES[1:],
        ),
    ),
    AgencySpec(
        "BE-FPJ", "BE", ("EU", "INTERPOL"), sink="spool", legal_bases=("EU-LED", "MLAT-EU-US")
    ),
    AgencySpec(
        "US-ATF",
        "US",
        ("INTERPOL",),
        legal_bases=("MLAT-EU-US",),
        routes=(
            {"event": "fxgw.SeizureEvent", "to": {"agencies": ["NL-POL", "BE-FPJ"]}},
            *DEFAULT_ROUTES[1:],
        ),
    ),
)


EU_PARTNER_COUNTRIES = ("DE", "FR", "IT", "ES", "AT", "PT", "PL", "SE", "DK", "FI", "IE", "LU")
"""Countries of the extra EU partners of :func:`seizure_exchange`, beyond BE-FPJ."""


def seizure_exchange(recipients: int = 1) -> tuple[AgencySpec, ...]:
    """NL-POL sending every seizure to ``recipients`` EU partners, and nothing else.

    The first partner is BE-FPJ, delivering to its local Kafka topic; the others are
    ``<country>-POL`` agencies whose nodes need not run (they have no policy file). All of them
    are EU members under ``EU-LED``, so NL-POL's policy releases the same view to each. This is
    the federation ``fxgw bench`` measures: one recipient for the pipeline, more for fan-out.
    """
    if not 1 <= recipients <= 1 + len(EU_PARTNER_COUNTRIES):
        raise ValueError(f"recipients must be 1..{1 + len(EU_PARTNER_COUNTRIES)}, got {recipients}")
    partners = [AgencySpec("BE-FPJ", "BE", ("EU", "INTERPOL"), legal_bases=("EU-LED",))]
    partners += [
        AgencySpec(f"{country}-POL", country, ("EU",), legal_bases=("EU-LED",))
        for country in EU_PARTNER_COUNTRIES[: recipients - 1]
    ]
    sender = AgencySpec(
        "NL-POL",
        "NL",
        ("EU", "INTERPOL"),
        # NL-POL's policy names both bases; a trust list that knows neither would refuse it
        legal_bases=("EU-LED", "MLAT-EU-US"),
        routes=(
            {
                "event": "fxgw.SeizureEvent",
                "to": {"agencies": [p.agency for p in partners]},
            },
        ),
    )
    return (sender, *partners)


@dataclass(slots=True)
class Federation:
    """The files of a sandbox federation."""

    root: Path
    prefix: str
    bootstrap: str
    configs: dict[AgencyId, Path] = field(default_factory=dict)
    authority: keys.SigningKey | None = None
    trust_file: Path | None = None

    def config(self, agency: str) -> Path:
        """The node.yaml of ``agency``."""
        return self.configs[AgencyId(agency)]

    def local_topic(self, agency: str, kind: str) -> str:
        """A local topic of ``agency``: ``outbound``, ``inbound`` or ``quarantine``."""
        return f"{self.prefix}.local.{agency}.{kind}"

    def inbox(self, agency: str) -> str:
        """The exchange inbox topic of ``agency``."""
        return f"{self.prefix}.inbox.{agency}"

    def spool_in(self, agency: str) -> Path:
        """The inbound spool folder of ``agency``."""
        return self.root / agency / "spool" / "in"

    def spool_out(self, agency: str) -> Path:
        """The outbound spool folder of ``agency``."""
        return self.root / agency / "spool" / "out"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_federation(
    root: Path,
    bootstrap: str,
    *,
    prefix: str = "fx",
    agencies: Sequence[AgencySpec] = THREE_AGENCIES,
    policies: Path = POLICIES,
    now: datetime | None = None,
    replication: int = 1,
) -> Federation:
    """Write keys, a signed trust list and node configs for ``agencies`` under ``root``.

    The nodes run in development mode: one plaintext cluster (``bootstrap``) serves as both
    exchange and local cluster, and topics are created with ``replication`` replicas (with
    ``min.insync.replicas`` one less, at least 1).
    """
    now = now or datetime.now(UTC)
    fed = Federation(root, prefix, bootstrap)
    authority_dir = root / "authority"
    fed.authority = keys.generate_signing_key(keys.new_key_id(AgencyId("FED"), "sign", now))
    keys.write_key_file(authority_dir / "FED.authority.key", fed.authority, owner="FED")
    entries: list[dict[str, object]] = []
    for spec in agencies:
        agency = AgencyId(spec.agency)
        key_dir = root / agency / "keys"
        signing = keys.generate_signing_key(keys.new_key_id(agency, "sign", now))
        encryption = keys.generate_encryption_key(keys.new_key_id(agency, "encrypt", now))
        keys.write_key_file(key_dir / f"{agency}.sign.key", signing, owner=agency)
        keys.write_key_file(key_dir / f"{agency}.enc.key", encryption, owner=agency)
        pseudonym = keys.generate_pseudonym_key(keys.new_key_id(agency, "pseudonym", now))
        keys.write_key_file(key_dir / f"{agency}.pseudonym.key", pseudonym, owner=agency)
        entry = keys.public_entry(
            agency,
            spec.country,
            signing,
            encryption,
            groups=spec.groups,
            valid_from=now - timedelta(hours=1),
            valid_until=now + timedelta(days=365),
        )
        entry["roles"] = list(spec.roles)
        entry["legal_bases"] = list(spec.legal_bases)
        entry["contract_versions"] = list(
            spec.contract_versions
            or (v.label for v in Contract.load(spec.schemas or resources.SCHEMAS))
        )
        entries.append(entry)
    trust = {
        "federation": "fxgw-sandbox",
        "version": 1,
        "issued_at": _stamp(now - timedelta(minutes=1)),
        "expires_at": _stamp(now + timedelta(days=30)),
        "agencies": entries,
    }
    trust_file = root / "trust" / "trust.yaml"
    trust_file.parent.mkdir(parents=True, exist_ok=True)
    trust_file.write_text(yaml.safe_dump(trust, sort_keys=False), encoding="utf-8")
    Path(f"{trust_file}.sig").write_bytes(sign_trust_list(trust_file.read_bytes(), fed.authority))
    fed.trust_file = trust_file
    topics = {"replication": replication, "min_insync_replicas": max(1, replication - 1)}
    for spec in agencies:
        agency = AgencyId(spec.agency)
        node = {
            "agency": agency,
            "keys": {
                "signing": f"keys/{agency}.sign.key",
                "encryption": [f"keys/{agency}.enc.key"],
                "pseudonym": f"keys/{agency}.pseudonym.key",
            },
            "trust": {
                "file": "../trust/trust.yaml",
                "authority_keys": [
                    {
                        "id": fed.authority.key_id,
                        "public": base64.b64encode(fed.authority.public).decode("ascii"),
                    }
                ],
            },
            "policy": str(policies / f"{agency.lower()}.yaml"),
            **({"schemas": str(spec.schemas)} if spec.schemas else {}),
            "state_dir": "state",
            "development": True,
            "exchange": {
                "bootstrap_servers": bootstrap,
                "topics": dict(topics),
                "topic_prefix": prefix,
                "provision_inboxes": True,
            },
            "local": {
                "bootstrap_servers": bootstrap,
                "topics": dict(topics),
                "outbound_topic": fed.local_topic(agency, "outbound"),
                "inbound_topic": fed.local_topic(agency, "inbound"),
                "quarantine_topic": fed.local_topic(agency, "quarantine"),
            },
            "spool": {"outbound_dir": "spool/out", "inbound_dir": "spool/in"},
            "delivery": {"sink": spec.sink},
            "routes": list(spec.routes or DEFAULT_ROUTES),
        }
        path = root / agency / "node.yaml"
        path.write_text(yaml.safe_dump(node, sort_keys=False), encoding="utf-8")
        fed.configs[agency] = path
    return fed


def replace_sink(agencies: Sequence[AgencySpec], agency: str, sink: str) -> tuple[AgencySpec, ...]:
    """``agencies`` with ``agency`` delivering to ``sink`` (``kafka`` or ``spool``)."""
    if sink not in ("kafka", "spool"):
        raise ValueError(f"unknown sink {sink!r}")
    return tuple(
        replace(spec, sink="kafka" if sink == "kafka" else "spool")
        if spec.agency == agency
        else spec
        for spec in agencies
    )
