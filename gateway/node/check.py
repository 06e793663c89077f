"""``fxgw config check``: everything a node would load, checked at once.

The node itself stops at the first bad file (it must not run on half a configuration); an
operator fixing a new node wants every problem in one pass. So this module runs the node's own
loaders (the config model, the key loader, the contract, the trust list with its signature, the
policy checks) each on its own, keeps going after a failure wherever the next check does not
depend on it, and adds what only a whole view can see: routes against the contract and the trust
list (an unknown event type, group, country, agency, role or field path would silently route to
nobody), and the Kafka files and secrets the node would read when it connects.

Every problem is a :class:`~gateway.errors.ConfigError`: file, line where known, and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from pathlib import Path

from gateway._yamlfile import YamlDocument, read_yaml, validate_all
from gateway.contract.schemas import FieldNotFound, SchemaRegistry
from gateway.contract.versions import Contract
from gateway.crypto.keys import (
    AgencyKeys,
    load_encryption_key,
    load_oprf_seed,
    load_pseudonym_key,
    load_signing_key,
)
from gateway.crypto.trust import TrustList, authority_keys, load_trust_list
from gateway.errors import ConfigError, UnknownEventType
from gateway.node.config import NodeConfig, RouteModel
from gateway.node.files import (
    check_own_keys,
    load_agency_keys,
    load_checked_policy,
    own_agency,
    own_entry,
    own_version,
)
from gateway.node.hits import MAX_BAD_LINES_LISTED, read_holdings


def check_node(path: Path, now: datetime) -> list[ConfigError]:
    """Every problem of the node config at ``path`` and of the files it names (empty: none)."""
    try:
        document = read_yaml(path, "node config")
    except ConfigError as exc:
        return [exc]
    config, problems = validate_all(
        document, NodeConfig, "node config", ConfigError, context={"base": path.resolve().parent}
    )
    if config is None:
        return problems
    config._path = path
    where = str(path)
    for block, cluster in (("exchange", config.exchange.cluster), ("local", config.local.cluster)):
        line = document.line_of((block, "security"))
        problems += [ConfigError(p, file=where, line=line) for p in cluster.problems()]
    keys: AgencyKeys | None = None
    try:
        keys = load_agency_keys(config)
    except ConfigError as exc:
        # the node stops at the first bad key file: each on its own, to name every bad one
        found = _key_file_problems(config)
        problems += found or [exc]  # none alone: the files disagree with each other
    contract: Contract | None = None
    try:
        contract = Contract.load(config.schemas)
    except ConfigError as exc:
        problems.append(exc)
    trust: TrustList | None = None
    try:
        trust = load_trust_list(
            config.trust.file,
            authority_keys(config.trust.pinned),
            now=now,
            threshold=config.trust.threshold,
        )
    except ConfigError as exc:
        problems.append(exc)
    if contract is None or trust is None:
        return problems
    registry = contract.newest.registry
    try:
        if keys is None:  # the key files' problems are reported above
            registry = own_version(config, contract, own_agency(config, trust)).registry
        else:
            registry = own_entry(config, trust, contract, keys.signing.key_id, now).registry
            check_own_keys(config, trust, keys, now)
    except ConfigError as exc:
        problems.append(exc)
    problems += _attempt(
        lambda: load_checked_policy(
            config,
            registry,
            trust,
            can_pseudonymise=config.keys.pseudonym is not None,
            contract=contract,
        )
    )
    problems += route_problems(config, document, registry, trust)
    problems += hits_problems(config)
    for i, agency in enumerate(config.witness.agencies or ()):
        if agency not in trust.agencies:
            problems.append(
                ConfigError(
                    f"witness.agencies[{i}]: {agency} is not on the trust list"
                    f"{_suggest(agency, trust.agencies)}",
                    file=str(config.path),
                    line=document.line_of(("witness", "agencies", i)),
                )
            )
    return problems


def hits_problems(config: NodeConfig) -> list[ConfigError]:
    """A holder's OPRF seed file and holdings file (each line that is not a record, by its
    number; never a value)."""
    hits = config.hits
    if hits.seed is None or hits.holdings is None:
        return []
    problems = _attempt(partial(load_oprf_seed, hits.seed))
    try:
        holdings = read_holdings(hits.holdings, hits.max_holdings_bytes)
    except ConfigError as exc:
        return [*problems, exc]
    for number in holdings.bad_lines[:MAX_BAD_LINES_LISTED]:
        problems.append(
            ConfigError(
                "not a holdings record: one JSON object with string 'make' and 'serial_number'"
                " (optional 'calibre', 'serial_obliterated') per line; fix or remove the line",
                file=str(hits.holdings),
                line=number,
            )
        )
    return problems


def _key_file_problems(config: NodeConfig) -> list[ConfigError]:
    problems = _attempt(partial(load_signing_key, config.keys.signing))
    for key in config.keys.encryption:
        problems += _attempt(partial(load_encryption_key, key))
    if config.keys.pseudonym is not None:
        problems += _attempt(partial(load_pseudonym_key, config.keys.pseudonym))
    return problems


def route_problems(
    config: NodeConfig, document: YamlDocument, registry: SchemaRegistry, trust: TrustList
) -> list[ConfigError]:
    """Each route's names that the contract or the trust list does not know."""
    known: dict[str, set[str]] = {
        "agencies": set(trust.agencies),
        "groups": {g for a in trust.agencies.values() for g in a.groups},
        "countries": {a.country for a in trust.agencies.values()},
    }
    roles = {r for a in trust.agencies.values() for r in a.roles}
    problems: list[ConfigError] = []

    def problem(message: str, *loc: str | int) -> None:
        line = document.line_of(("routes", *loc))
        problems.append(ConfigError(message, file=str(config.path), line=line))

    for i, route in enumerate(config.routes):
        try:
            schema = registry.get(route.event)
        except UnknownEventType:
            problem(
                f"routes[{i}].event: {route.event} is not an event type of the contract"
                f"{_suggest(route.event, registry.event_types)}",
                i,
                "event",
            )
            continue
        if not schema.is_event:
            problem(f"routes[{i}].event: {route.event} is not an event type", i, "event")
        for kind, names in _named(route):
            for name in names:
                if name not in known[kind]:
                    problem(
                        f"routes[{i}].to.{kind}: {name} is not on the trust list"
                        f"{_suggest(name, known[kind])}",
                        i,
                        "to",
                        kind,
                    )
        if route.to.role is not None and route.to.role not in roles:
            problem(
                f"routes[{i}].to.role: no agency on the trust list has role {route.to.role}"
                f"{_suggest(route.to.role, roles)}",
                i,
                "to",
                "role",
            )
        for kind in ("agencies_from", "countries_from"):
            for field in getattr(route.to, kind):
                try:
                    schema.field(field)
                except FieldNotFound as exc:
                    problem(f"routes[{i}].to.{kind}: {exc.message}", i, "to", kind)
    return problems


def _named(route: RouteModel) -> Iterable[tuple[str, list[str]]]:
    return (
        ("agencies", route.to.agencies),
        ("groups", route.to.groups),
        ("countries", route.to.countries),
    )


def _suggest(name: str, among: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(among), n=1)
    return f"; did you mean {close[0]}?" if close else "; check the spelling"


def _attempt(load: Callable[[], object]) -> list[ConfigError]:
    try:
        load()
    except ConfigError as exc:
        return [exc]
    return []
