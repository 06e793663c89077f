"""The files a node loads at start-up (keys, schemas, trust list, policy), checked together.

Every problem is a :class:`~gateway.errors.ConfigError` naming the file and the fix, so a node
refuses to start on a bad set of files, and the CLI's checks load the very same set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract, ContractVersion
from gateway.crypto.keys import (
    AgencyKeys,
    EncryptionKey,
    load_encryption_key,
    load_pseudonym_key,
    load_signing_key,
)
from gateway.crypto.trust import Agency, TrustList, authority_keys, load_trust_list
from gateway.errors import ConfigError, KeyFileError, PeerError, SchemaError, TrustError
from gateway.node.config import NodeConfig
from gateway.policy.engine import Policy, check_versions, load_policy
from gateway.policy.transforms import Pseudonymiser


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything a node loads from files at start-up."""

    keys: AgencyKeys
    contract: Contract
    own: ContractVersion
    """The version of the national system's events (and of the node's deliveries)."""
    trust: TrustList
    policy: Policy
    pseudonymiser: Pseudonymiser | None

    @property
    def registry(self) -> SchemaRegistry:
        """The schemas of the node's own version."""
        return self.own.registry


def load_node_files(config: NodeConfig, now: datetime) -> Loaded:
    """Load keys, schemas, trust list and policy; refuse anything inconsistent.

    :raises ConfigError: a file is missing or invalid (the message names it and the fix).
    """
    keys = load_agency_keys(config)
    signing = keys.signing
    contract = Contract.load(config.schemas)
    trust_state = config.state_dir / "trust-version"
    min_version = int(trust_state.read_text()) if trust_state.exists() else 0
    trust = load_trust_list(
        config.trust.file,
        authority_keys(config.trust.pinned),
        now=now,
        min_version=min_version,
        threshold=config.trust.threshold,
    )
    own = own_entry(config, trust, contract, signing.key_id, now)
    check_own_keys(config, trust, keys, now)
    registry = own.registry
    pseudonymiser = Pseudonymiser(keys.pseudonym.secret) if keys.pseudonym else None
    policy = load_checked_policy(
        config, registry, trust, can_pseudonymise=pseudonymiser is not None, contract=contract
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically_replace(trust_state, str(trust.version).encode())
    return Loaded(keys, contract, own, trust, policy, pseudonymiser)


def load_agency_keys(config: NodeConfig) -> AgencyKeys:
    """Load the key files the config names (``keys.signing``, every ``keys.encryption``,
    ``keys.pseudonym``). The same encryption key in two files (a rotation copies the current
    key to the previous key's file) is held once.

    :raises KeyFileError: a file is missing, readable by others or malformed, or two files
        hold different encryption keys under one id.
    """
    signing = load_signing_key(config.keys.signing)
    encryption: dict[str, EncryptionKey] = {}
    for path in config.keys.encryption:
        key = load_encryption_key(path)
        held = encryption.setdefault(key.key_id, key)
        if held.public != key.public:
            raise KeyFileError(
                f"holds another key under the id {key.key_id!r} of an earlier file of"
                " keys.encryption; a key id names one key: make a new key with"
                " 'fxgw keygen --only encryption'",
                file=str(path),
            )
    pseudonym = load_pseudonym_key(config.keys.pseudonym) if config.keys.pseudonym else None
    return AgencyKeys(config.agency, signing, tuple(encryption.values()), pseudonym)


def check_own_keys(config: NodeConfig, trust: TrustList, keys: AgencyKeys, now: datetime) -> None:
    """The node's private keys fit the trust list: the signing key is listed and valid for this
    agency now and its public half is the one listed; each encryption key listed under its id
    is this agency's and has the listed public half (a key not listed is kept only to open
    envelopes still in flight, or is about to be published); and the key senders encrypt to
    now (the newest valid one listed for this agency) is held, so nothing sent to us is lost.

    :raises TrustError: a key does not fit, naming it and the fix.
    """
    me = own_agency(config, trust)
    where = str(config.trust.file)
    try:
        listed_signing = trust.signing_key(config.agency, keys.signing.key_id, now)
    except PeerError as exc:
        raise TrustError(
            f"our signing key {keys.signing.key_id!r} is not valid on the trust list ({exc});"
            " publish its public entry ('fxgw keygen --only signing' prints it) first",
            file=where,
        ) from exc
    if listed_signing != keys.signing.public:
        raise TrustError(
            f"the trust list lists another public key under our signing key id"
            f" {keys.signing.key_id!r}: {config.keys.signing} is not the key that was published",
            file=where,
        )
    mine = {k.key_id: k for k in me.keys}
    others = {k.key_id for a in trust.agencies.values() if a is not me for k in a.keys}
    for key in keys.encryption:
        entry = mine.get(key.key_id)
        if key.key_id in others:
            raise TrustError(
                f"our encryption key id {key.key_id!r} is listed for another agency", file=where
            )
        if entry is not None and (entry.use != "encrypt" or entry.public != key.public):
            raise TrustError(
                f"the trust list lists another public key under our encryption key id"
                f" {key.key_id!r}: the file of keys.encryption holding it is not the key that"
                " was published",
                file=where,
            )
    current = trust.encryption_key(config.agency, now)
    if current is not None and keys.encryption_key(current.key_id) is None:
        raise TrustError(
            f"senders encrypt to {current.key_id!r}, the newest valid encryption key listed for"
            f" {config.agency}, and no file of keys.encryption holds it: keep that key's file"
            " until the trust list no longer gives it (envelopes to it would not open)",
            file=where,
        )


def load_checked_policy(
    config: NodeConfig,
    registry: SchemaRegistry,
    trust: TrustList,
    *,
    can_pseudonymise: bool,
    contract: Contract | None = None,
    names: bool = True,
) -> Policy:
    """Load the node's policy and check it against the trust list, the node's keys and every
    version of its ``contract`` (``registry`` being its own version's).

    With ``names`` false (a reload of the trust list alone), recipients the trust list no
    longer names are let pass: they cover and exclude nobody, and refusing the list would keep
    the one it replaces, and the keys it may have revoked, in force.

    :raises ConfigError: invalid, another agency's, naming recipients the trust list does not
        know, rules that disagree for some agency, a field a rule may leave null that another
        version requires, or pseudonyms asked for without a pseudonym secret.
    """
    versions = {v.label: v.registry for v in contract} if contract is not None else None
    policy = load_policy(
        config.policy, registry, trust if names else None, config.agency, versions=versions
    )
    if not names:
        policy.check_against(trust, config.agency, names=False)
    if contract is not None:
        own = contract.version_of(registry)
        check_versions(policy, {v.label: v.registry for v in contract if v is not own})
    if policy.uses_pseudonyms and not can_pseudonymise:
        raise ConfigError(
            "the policy pseudonymises fields but keys.pseudonym names no secret; create one "
            "with 'fxgw keygen' and add it to the node config",
            file=str(config.path),
        )
    return policy


def write_atomically_replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def stat_of(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: its inode (a file moved into place), time and size."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


SPOOL_BATCH_LINES = 500
"""Events of a spool file taken as one batch: a file of any size is read a batch at a time."""


def spool_batches(path: Path, max_line: int) -> Iterator[list[bytes]]:
    """The non-blank lines of ``path`` in batches of :data:`SPOOL_BATCH_LINES`, without their
    line ends. A line longer than ``max_line`` bytes is cut just past it (the core refuses it as
    too large) and the rest of it skipped, so memory stays bounded whatever the file holds."""
    batch: list[bytes] = []
    with path.open("rb") as file:
        while line := file.readline(max_line + 1):
            if len(line) > max_line and not line.endswith(b"\n"):
                while (rest := file.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass
            line = line.rstrip(b"\r\n")
            if line.strip():
                batch.append(line)
            if len(batch) == SPOOL_BATCH_LINES:
                yield batch
                batch = []
    if batch:
        yield batch


def own_agency(config: NodeConfig, trust: TrustList) -> Agency:
    """The trust list's entry for this node's agency.

    :raises TrustError: the agency is not on the list.
    """
    me = trust.agency(config.agency)
    if me is None:
        raise TrustError(
            f"this node's agency {config.agency} is not on the trust list",
            file=str(config.trust.file),
        )
    return me


def own_entry(
    config: NodeConfig, trust: TrustList, contract: Contract, signing_key_id: str, now: datetime
) -> ContractVersion:
    """Check the trust list's entry for this node's agency, and return the node's own contract
    version (:func:`own_version`): the agency is listed, and its signing key is valid there.

    :raises ConfigError: the agency or its signing key is missing or not valid, or the
        versions do not fit (see :func:`own_version`).
    """
    me = own_agency(config, trust)
    try:
        trust.signing_key(config.agency, signing_key_id, now)
    except PeerError as exc:
        raise TrustError(
            f"our signing key {signing_key_id!r} is not valid on the trust list ({exc}); "
            "publish its public entry (fxgw keygen prints it) before starting the node",
            file=str(config.trust.file),
        ) from exc
    return own_version(config, contract, me)


def own_version(config: NodeConfig, contract: Contract, me: Agency) -> ContractVersion:
    """The node's own contract version; every version the trust list says this agency reads
    must be in the node's contract, since peers encode for it in those.

    :raises ConfigError: a version is missing, or ``contract_version`` names none there is.
    """
    missing = [v for v in me.contract_versions if v not in {x.label for x in contract}]
    if missing:
        raise TrustError(
            f"the trust list says {config.agency} reads contract version(s) "
            f"{', '.join(missing)}, which this node's contract ({config.schemas}) does not"
            " have: install them, or ask the federation authority to correct the list",
            file=str(config.trust.file),
        )
    if config.contract_version is not None:
        try:
            pinned = contract.version(config.contract_version)
        except SchemaError as exc:
            raise ConfigError(f"contract_version: {exc}", file=str(config.path)) from None
        if pinned.label not in me.contract_versions:
            raise ConfigError(
                f"contract_version: {pinned.label} is not among the versions the trust list "
                f"says {config.agency} reads ({', '.join(me.contract_versions)}): peers would "
                "not know it; choose one of those, or ask the federation authority to list it",
                file=str(config.path),
            )
        return pinned
    own = contract.newest_of(me.contract_versions)
    assert own is not None  # every listed version is there (checked above), and there is one
    return own
