"""Fixtures for the pure modules: schemas, a sandbox federation's keys and trust list."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli.main import configure_logging
from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract, newest_registry
from gateway.crypto.keys import AgencyKeys, load_encryption_key, load_signing_key
from gateway.crypto.trust import TrustList, authority_keys, load_trust_list
from gateway.dev.sandbox import Federation, build_federation
from gateway.node.config import DEFAULT_SCHEMAS, load_config
from gateway.node.logs import configure

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _exchange_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SASL password the example node config (tests.unit.test_config.BASE) names."""
    monkeypatch.setenv("FXGW_TEST_PASSWORD", "not-a-real-password")


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    """Version 1.0 of the federation's schemas from schemas/avro: envelope and receipt format 1
    (what a node still speaks with peers on 1.0)."""
    return Contract.load(DEFAULT_SCHEMAS).version("1.0").registry


@pytest.fixture(scope="session")
def registry2() -> SchemaRegistry:
    """The newest version of the federation's schemas: envelope and receipt format 2."""
    return newest_registry(DEFAULT_SCHEMAS)


@pytest.fixture(scope="session")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A sandbox federation's files (no Kafka is contacted by the unit tests)."""
    return build_federation(tmp_path_factory.mktemp("fed"), "127.0.0.1:1", now=NOW)


@pytest.fixture(scope="session")
def trust(fed: Federation) -> TrustList:
    """The sandbox's verified trust list."""
    config = load_config(fed.config("NL-POL"))
    return load_trust_list(config.trust.file, authority_keys(config.trust.pinned), now=NOW)


def agency_keys(fed: Federation, agency: str) -> AgencyKeys:
    """The private keys of one sandbox agency."""
    config = load_config(fed.config(agency))
    return AgencyKeys(
        config.agency,
        load_signing_key(config.keys.signing),
        tuple(load_encryption_key(p) for p in config.keys.encryption),
    )


@pytest.fixture(scope="session")
def nl_keys(fed: Federation) -> AgencyKeys:
    """NL-POL's keys."""
    return agency_keys(fed, "NL-POL")


@pytest.fixture(scope="session")
def be_keys(fed: Federation) -> AgencyKeys:
    """BE-FPJ's keys."""
    return agency_keys(fed, "BE-FPJ")


@pytest.fixture(scope="session")
def us_keys(fed: Federation) -> AgencyKeys:
    """US-ATF's keys."""
    return agency_keys(fed, "US-ATF")


def repo_file(*parts: str) -> Path:
    """A file of the repository."""
    return Path(__file__).resolve().parents[2].joinpath(*parts)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The node's logging set-up at ``info``, writing to a buffer; the session's set-up comes
    back afterwards."""
    buffer = io.StringIO()
    configure("info", buffer)
    try:
        yield buffer
    finally:
        configure_logging("info")
