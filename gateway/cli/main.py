"""The ``fxgw`` command: keys, trust list, policy and schema checks, sending, running, demo.

Exit codes: 0 done; 1 some input was rejected (each rejection is printed with its file, line and
field); 2 the command could not run (bad config or files; the message says what to fix); 3 a
running node stopped on a fault of our own side that retrying cannot mend (refused credentials,
a locked or lost state folder).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import secrets
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import yaml

from gateway.cli import trace
from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract, ContractVersion, newest_registry
from gateway.errors import ConfigError, GatewayError, InfrastructureError, PeerError
from gateway.types import AgencyId, KeyId

if TYPE_CHECKING:
    from gateway.audit.witness import WitnessReport
    from gateway.crypto.keys import KeyUse
    from gateway.crypto.trust import TrustList
    from gateway.node.config import NodeConfig

EXIT_OK, EXIT_REJECTED, EXIT_ERROR, EXIT_FATAL = 0, 1, 2, 3


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (a test harness may swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _CurrentStderr()


def configure_logging(level: str = "info", *, json_logs: bool = True) -> None:
    """Structured logs on stderr: one JSON object per line (metadata only, never payload), ours
    and the libraries' (aiokafka) alike, rate-limited per message and with every field's length
    capped (:mod:`gateway.node.logs`)."""
    from gateway.node.logs import configure

    configure(level, _STDERR, json_logs=json_logs)  # type: ignore[arg-type]  # a TextIO stand-in


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


# --- keygen --------------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.crypto import keys

    out = Path(args.out)
    now = datetime.now(UTC)
    if args.authority:
        key_id = keys.new_key_id(AgencyId(args.id), "sign", now)
        signing = keys.generate_signing_key(key_id)
        keys.write_key_file(out / f"{args.id}.authority.key", signing, owner=args.id)
        _print(
            yaml.safe_dump(
                {
                    "authority_keys": [
                        {"id": key_id, "public": base64.b64encode(signing.public).decode()}
                    ]
                },
                sort_keys=False,
            ).rstrip()
        )
        return EXIT_OK
    if args.only:
        if not args.agency:
            raise ConfigError("keygen --only needs --agency")
        return _keygen_one(AgencyId(args.agency), args.only, out, now, args)
    if not args.agency or not args.country:
        raise ConfigError("keygen needs --agency and --country (or --authority --id)")
    agency = AgencyId(args.agency)
    signing = keys.generate_signing_key(keys.new_key_id(agency, "sign", now))
    encryption = keys.generate_encryption_key(keys.new_key_id(agency, "encrypt", now))
    keys.write_key_file(out / f"{agency}.sign.key", signing, owner=agency)
    keys.write_key_file(out / f"{agency}.enc.key", encryption, owner=agency)
    pseudonym = keys.generate_pseudonym_key(keys.new_key_id(agency, "pseudonym", now))
    keys.write_key_file(out / f"{agency}.pseudonym.key", pseudonym, owner=agency)
    entry = keys.public_entry(
        agency,
        args.country,
        signing,
        encryption,
        groups=tuple(g for g in args.groups.split(",") if g),
        valid_from=now - timedelta(minutes=5),
        valid_until=now + timedelta(days=args.valid_days),
    )
    _print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return EXIT_OK


_ONLY: dict[str, tuple[KeyUse, str]] = {
    "signing": ("sign", "sign"),
    "encryption": ("encrypt", "enc"),
    "pseudonym": ("pseudonym", "pseudonym"),
    "oprf-seed": ("oprf", "oprf"),
}
"""``keygen --only`` kind: (key use in the key id, part of the file name)."""


def _keygen_one(
    agency: AgencyId, kind: str, out: Path, now: datetime, args: argparse.Namespace
) -> int:
    """One new key of ``kind`` for a rotation, in a file of its own (the key id's time in its
    name, so no key file in ``out`` is touched); prints its trust-list entry."""
    from gateway.crypto import keys

    use, part = _ONLY[kind]
    valid_from = _when(args.valid_from) if args.valid_from else now - timedelta(minutes=5)
    # ids are by the second, and the key this one replaces may be that young (or was made
    # elsewhere): a random tail keeps the new id apart from every other on the trust list
    tail = secrets.token_hex(3)
    key_id = KeyId(f"{keys.new_key_id(agency, use, now)}-{tail}")
    path = out / f"{agency}.{part}.{now.strftime('%Y%m%dT%H%M%SZ')}-{tail}.key"
    key: keys.SigningKey | keys.EncryptionKey | keys.PseudonymKey | keys.OprfSeed
    if kind == "signing":
        key = keys.generate_signing_key(key_id)
    elif kind == "encryption":
        key = keys.generate_encryption_key(key_id)
    elif kind == "pseudonym":
        key = keys.generate_pseudonym_key(key_id)
    else:
        key = keys.generate_oprf_seed(key_id)
    keys.write_key_file(path, key, owner=agency)
    _print(f"# wrote {path} ({key_id}); put it in place of the file node.yaml names")
    if isinstance(key, keys.OprfSeed):
        _print("# the hit/no-hit OPRF seed never leaves the node: name it in hits.seed")
        return EXIT_OK
    if isinstance(key, keys.PseudonymKey):
        _print("# a pseudonym secret never leaves the node: nothing to publish")
        return EXIT_OK
    entry = keys.public_key_entry(
        key, valid_from=valid_from, valid_until=valid_from + timedelta(days=args.valid_days)
    )
    _print(f"# add under agencies[id={agency}].keys of the trust list:")
    _print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return EXIT_OK


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--valid-from {text!r}: not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise ConfigError(f"--valid-from {text!r}: give the time zone, e.g. 2026-12-04T12:00:00Z")
    return moment


# --- trust ---------------------------------------------------------------------------------------


def cmd_trust_sign(args: argparse.Namespace) -> int:
    from gateway.crypto.keys import load_signing_key
    from gateway.crypto.trust import sign_trust_list, signature_key_ids
    from gateway.node.files import write_atomically_replace

    authority = load_signing_key(Path(args.key))
    path = Path(args.file)
    sig_path = Path(f"{path}.sig")
    existing = sig_path.read_bytes() if sig_path.exists() and not args.replace else None
    signed = sign_trust_list(path.read_bytes(), authority, existing)
    write_atomically_replace(sig_path, signed)
    signers = signature_key_ids(signed)
    _print(
        f"signed {path} with {authority.key_id}: {sig_path} holds {len(signers)} signature(s)"
        f" ({', '.join(signers)})"
    )
    return EXIT_OK


def cmd_trust_verify(args: argparse.Namespace) -> int:
    from gateway.crypto.trust import authority_keys, load_trust_list
    from gateway.node.config import load_config

    if args.config:
        config = load_config(Path(args.config))
        pinned = authority_keys(config.trust.pinned)
        path = Path(args.file) if args.file else config.trust.file
        threshold = args.threshold or config.trust.threshold
        trust = load_trust_list(path, pinned, now=datetime.now(UTC), threshold=threshold)
    else:
        if not args.file:
            raise ConfigError("give -c NODE.yaml, or a FILE and --authority-key ID=BASE64")
        path = Path(args.file)
        trust = _given_trust(path, args.authority_key, args.threshold)
    _print(
        f"{path}: valid, federation {trust.federation} version {trust.version}, "
        f"{len(trust.agencies)} agencies, expires {trust.expires_at.isoformat()}"
    )
    return EXIT_OK


# --- policy and schema ---------------------------------------------------------------------------


def _registry(schemas: str | None) -> SchemaRegistry:
    from gateway.node.config import DEFAULT_SCHEMAS

    return newest_registry(Path(schemas) if schemas else DEFAULT_SCHEMAS)


def _given_trust(path: Path, authority: list[str] | None, threshold: int | None) -> TrustList:
    """A trust list given on the command line, verified against the authority keys given
    (``ID=BASE64``) with ``threshold`` signatures (default 1)."""
    from gateway.crypto.trust import authority_keys, load_trust_list

    if not authority:
        raise ConfigError(
            f"{path}: give the federation authority's keys: --authority-key ID=BASE64"
        )
    pairs = [tuple(item.split("=", 1)) for item in authority]
    pinned = authority_keys((k, v) for k, v in pairs)
    return load_trust_list(path, pinned, now=datetime.now(UTC), threshold=threshold or 1)


def _signing_keys(trust: TrustList, agency: str) -> dict[str, bytes]:
    """Every signing key the trust list holds for ``agency`` (old ones too, for old
    checkpoints), by key id.

    :raises ConfigError: the agency is not on the list.
    """
    listed = trust.agency(agency)
    if listed is None:
        raise ConfigError(f"{agency} is not on the trust list")
    return {key.key_id: key.public for key in listed.keys if key.use == "sign"}


def node_trust(config: NodeConfig) -> TrustList:
    """The trust list a node's config names, verified against its pinned authority keys."""
    from gateway.crypto.trust import authority_keys, load_trust_list

    pinned = authority_keys(config.trust.pinned)
    return load_trust_list(
        config.trust.file, pinned, now=datetime.now(UTC), threshold=config.trust.threshold
    )


def _node_contract(config: NodeConfig) -> tuple[Contract, ContractVersion, TrustList]:
    """A node's contract, the version it speaks (as the node itself chooses it) and its trust
    list.

    :raises ConfigError: the trust list does not name the node's agency, or the node's
        contract lacks a version the trust list says the agency reads.
    """
    from gateway.node.files import own_agency, own_version

    trust = node_trust(config)
    me = own_agency(config, trust)
    contract = Contract.load(config.schemas)
    return contract, own_version(config, contract, me), trust


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy.engine import check_versions, load_policy
    from gateway.policy.review import review

    trust = agency = None
    if args.config:
        from gateway.node.config import load_config

        config = load_config(Path(args.config))
        agency = config.agency
        if args.schemas:  # another contract (a draft, say), against the node's trust list
            trust = node_trust(config)
            contract = Contract.load(Path(args.schemas))
            own = contract.newest
        else:
            contract, own, trust = _node_contract(config)
    else:
        from gateway.node.config import DEFAULT_SCHEMAS

        contract = Contract.load(Path(args.schemas) if args.schemas else DEFAULT_SCHEMAS)
        own = contract.newest
    others = {v.label: v.registry for v in contract if v is not own}
    failed = 0
    for name in args.files:
        try:
            policy = load_policy(
                Path(name),
                own.registry,
                trust,
                agency,
                versions={v.label: v.registry for v in contract},
            )
            check_versions(policy, others)
        except ConfigError as exc:
            _print(f"error: {exc}")
            failed += 1
            continue
        warnings = review(policy, own.registry)
        for warning in warnings:
            _print(str(warning))
        failed += bool(warnings and args.strict)
        note = f", {len(warnings)} warnings" if warnings else ""
        _print(
            f"{name}: ok, {policy.policy_id} for {policy.agency}, {len(policy.rules)} rules{note}"
        )
    return EXIT_REJECTED if failed else EXIT_OK


def cmd_policy_schema(args: argparse.Namespace) -> int:
    from gateway.policy.engine import policy_schema_json

    sys.stdout.write(policy_schema_json())
    return EXIT_OK


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from gateway.core.outbound import parse_plain_event
    from gateway.node.config import load_config
    from gateway.node.files import load_node_files
    from gateway.policy.tools import explain

    config = load_config(Path(args.config))
    now = datetime.now(UTC)
    loaded = load_node_files(config, now)
    policy = loaded.policy
    if args.policy:
        from gateway.policy.engine import load_policy

        versions = {v.label: v.registry for v in loaded.contract}
        policy = load_policy(Path(args.policy), loaded.registry, loaded.trust, versions=versions)
    event_path = Path(args.event)
    try:
        text = event_path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the event: {exc.strerror}", file=str(event_path)) from exc
    try:
        event = parse_plain_event(text.splitlines()[0] if text else b"", loaded.registry)
    except PeerError as exc:
        _print(f"{event_path}: rejected ({exc.reason}): {exc}")
        return EXIT_REJECTED
    status = EXIT_OK
    for recipient in args.to:
        agency = loaded.trust.agency(recipient)
        if agency is None:
            _print(f"{recipient}: not on the trust list; nothing would be released")
            status = EXIT_REJECTED
            continue
        explanation = explain(
            policy,
            loaded.registry,
            event.event_type,
            event.record,
            agency,
            pseudonymiser=loaded.pseudonymiser,
            now=now,
        )
        if args.json:
            _print(json.dumps(explanation.to_json(), ensure_ascii=False))
        else:
            _print(explanation.to_text())
    return status


def cmd_policy_test(args: argparse.Namespace) -> int:
    from gateway.policy.tools import run_policy_tests

    registry = _registry(args.schemas)
    files = [Path(f) for f in args.files] or sorted(Path("policies").glob("*.test.yaml"))
    if not files:
        raise ConfigError("no policy test files given, and none in policies/*.test.yaml")
    passed = failed = 0
    for path in files:
        try:
            results = run_policy_tests(path, registry)
        except ConfigError as exc:
            _print(f"ERROR {exc}")
            failed += 1
            continue
        for result in results:
            if result.passed:
                passed += 1
                if args.verbose:
                    _print(f"PASS {path}: {result.case} -> {result.recipient}")
            else:
                failed += 1
                _print(f"FAIL {path}: {result.case} -> {result.recipient}")
                for failure in result.failures:
                    _print(f"     {failure}")
    _print(f"{passed} passed, {failed} failed")
    return EXIT_REJECTED if failed else EXIT_OK


def cmd_schema_check(args: argparse.Namespace) -> int:
    from gateway.node.config import DEFAULT_SCHEMAS

    contract = Contract.load(Path(args.dir) if args.dir else DEFAULT_SCHEMAS)
    working = contract.newest
    for version in contract:
        state = "released" if version.released else "draft"
        _print(f"version {version.label} ({state}, {version.folder})")
    _print(f"working contract: {working.label}")
    registry = working.registry
    for name in registry.event_types:
        schema = registry.get(name)
        _print(f"{name}  sha256:{schema.fingerprint.hex()}")
        if args.fields:
            for info in schema.iter_fields():
                optional = "optional" if info.nullable else "required"
                _print(f"    {info.path}  {info.kind}  {optional}")
    if not working.released:
        _print("fingerprints and definitions to record in the manifest when it is released:")
        ordered = sorted(registry, key=lambda s: s.full_name)
        _print("    fingerprints:")
        for schema in ordered:
            _print(f"      {schema.full_name}: {schema.fingerprint.hex()}")
        _print("    definitions:")
        for schema in ordered:
            _print(f"      {schema.full_name}: {schema.definition_digest}")
    broken = 0
    for kept in _kept_versions(contract, args.against):
        broken += _report_compatibility(working, kept)
    return EXIT_REJECTED if broken else EXIT_OK


def _kept_versions(contract: Contract, against: Sequence[str]) -> list[ContractVersion]:
    """The versions named by ``--against``: ``all`` (every version but the working one), a
    version of the contract, or a folder (a contract, or a folder of .avsc files)."""
    kept: list[ContractVersion] = []
    for spec in against:
        if spec == "all":
            kept.extend(v for v in contract if v is not contract.newest)
        elif Path(spec).is_dir():
            kept.extend(Contract.load(Path(spec)))
        else:
            kept.append(contract.version(spec))
    return kept


def _report_compatibility(working: ContractVersion, kept: ContractVersion) -> int:
    """Print each type's compatibility with ``kept``; the number of incompatible types that
    fail the gate (within one major version)."""
    from gateway.contract.compat import check

    same_major = working.major == kept.major
    reports = check(working.registry, kept.registry)
    bad = [r for r in reports if not r.compatible]
    verdict = "compatible" if not bad else f"{len(bad)} of {len(reports)} types incompatible"
    _print(f"against {kept.label} ({kept.folder}): {verdict}")
    for report in reports:
        backward = "ok" if not report.backward else "INCOMPATIBLE"
        forward = "ok" if not report.forward else "INCOMPATIBLE"
        _print(f"  {report.name}  backward {backward}  forward {forward}")
        for direction, problems in (("backward", report.backward), ("forward", report.forward)):
            for problem in problems:
                _print(f"      {direction}: {problem}")
    if bad and not same_major:
        _print(
            f"  {working.label} starts a new major version: it need not be compatible"
            f" with {kept.label}"
        )
        return 0
    if bad:
        _print(
            f"  a breaking change within major version {working.major}: make it compatible"
            " (e.g. give a new field a default) or start a new major version"
        )
    return len(bad)


# --- audit ---------------------------------------------------------------------------------------


def _pinned_keys(pairs: Sequence[str]) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for pair in pairs:
        key_id, _, public = pair.partition("=")
        try:
            raw = base64.b64decode(public, validate=True)
        except ValueError as exc:
            raise ConfigError(f"--key {key_id}: the public key is not base64") from exc
        if not key_id or len(raw) != 32:
            raise ConfigError(f"--key {pair!r}: give ID=BASE64 of a 32-byte Ed25519 public key")
        keys[key_id] = raw
    return keys


def _node_audit_keys(
    config_path: str, *, agency: str | None = None
) -> tuple[Path, str, dict[str, bytes]]:
    """A node's audit folder, agency and checkpoint keys: every signing key the trust list holds
    for the agency (old ones too, for older checkpoints), and the public half of its key file.
    With ``agency`` (another agency's export), that agency's keys in the node's trust list."""
    from gateway.crypto.keys import load_signing_key
    from gateway.node.config import load_config

    config = load_config(Path(config_path))
    whose = agency or config.agency
    keys: dict[str, bytes] = {}
    errors: list[str] = []
    try:
        keys.update(_signing_keys(node_trust(config), whose))
    except ConfigError as exc:
        errors.append(str(exc))
    if whose == config.agency:
        try:
            signing = load_signing_key(config.keys.signing)
            keys[signing.key_id] = signing.public
        except ConfigError as exc:
            errors.append(str(exc))
    if not keys:
        raise ConfigError(
            "no public key to check the checkpoints with: "
            + "; ".join(errors)
            + "; or give --key ID=BASE64",
            file=str(config.path),
        )
    return config.audit_dir, whose, keys


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway.audit.store import export_agency, read_export, verify_export, verify_folder

    pinned = _pinned_keys(args.key or [])
    target = Path(args.path) if args.path else None
    keys = pinned
    source = "given with --key"
    agency: str | None = None
    if target is None or target.is_dir():
        if args.config and not pinned:
            folder, agency, keys = _node_audit_keys(args.config)
            source = "the agency's signing keys in the trust list and key file"
        elif args.config:
            from gateway.node.config import load_config

            folder = load_config(Path(args.config)).audit_dir
        elif target is None:
            raise ConfigError("give an audit folder or an export file, or -c NODE.yaml")
        elif not pinned:
            raise ConfigError("to verify an audit folder, give -c NODE.yaml or --key ID=BASE64")
        target = target or folder
        report = verify_folder(target, keys)
    else:
        # the checkpoints are checked with the keys the federation lists for the exporting
        # agency, not with the keys the export carries (which whoever wrote it chose)
        if args.trust and not pinned:
            agency = export_agency(target)
            trust = _given_trust(Path(args.trust), args.authority_key, args.threshold)
            keys = _signing_keys(trust, agency or "")
            source = f"the exporting agency's signing keys in {args.trust}"
        elif args.config and not pinned:
            agency = export_agency(target)
            _, _, keys = _node_audit_keys(args.config, agency=agency)
            source = "the exporting agency's signing keys in the federation trust list"
        elif not pinned:
            keys = read_export(target)[0]
            source = (
                "carried by the export, so anyone could have put them there: give -c"
                " NODE.yaml or --trust to check them against the federation trust list"
            )
        report = verify_export(target, keys)
    lines = report.summary()
    ok = report.ok
    if args.witnessed:
        if agency is None and not target.is_dir():
            agency = export_agency(target)
        witnessed = _witnessed_report(target, args, agency, keys)
        ok = ok and not witnessed.problems
        lines += witnessed.summary(report.last_seq)
    _print(f"{target}: {'intact' if ok else 'NOT INTACT'}")
    for line in lines:
        _print(f"  {line}")
    _print(f"  public keys ({source}):")
    for key_id, public in sorted(keys.items()):
        _print(f"    {key_id}  {base64.b64encode(public).decode()}")
    return EXIT_OK if ok else EXIT_REJECTED


def _witnessed_report(
    target: Path, args: argparse.Namespace, agency: str | None, keys: dict[str, bytes]
) -> WitnessReport:
    """The log at ``target`` against the checkpoints in the ``--witnessed`` files (those of
    ``agency``, when known), their countersignatures checked with -c's trust list."""
    from gateway.audit.store import log_segments
    from gateway.audit.witness import check_log, parse_export
    from gateway.node.config import load_config

    records = []
    for name in args.witnessed:
        try:
            records += parse_export(Path(name).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", file=name) from exc
        except ValueError as exc:
            raise ConfigError(str(exc), file=name) from exc
    records = [w for w in records if agency is None or w.checkpoint.agency == agency]
    witness_keys: dict[str, dict[str, bytes]] | None = None
    if args.config:
        trust = node_trust(load_config(Path(args.config)))
        witness_keys = {
            w.witness: {k.key_id: k.public for k in listed.keys if k.use == "sign"}
            for w in records
            if (listed := trust.agency(w.witness)) is not None
        }
    report = check_log(log_segments(target), records, keys, witness_keys)
    if witness_keys is None:
        _print("  warning: countersignatures not checked (give -c NODE.yaml for the trust list)")
    return report


def cmd_audit_witnessed(args: argparse.Namespace) -> int:
    from gateway.audit.store import format_time, read_entries
    from gateway.audit.witness import export_witnessed, witnessed_from
    from gateway.node.config import load_config

    config = load_config(Path(args.config))
    records = []
    for entry in read_entries(config.audit_dir):
        if entry.kind == "witnessed" and entry.data.get("agency") == args.agency:
            with contextlib.suppress(PeerError):
                records.append(witnessed_from(entry.data))
    data = export_witnessed(config.agency, args.agency, records, format_time(datetime.now(UTC)))
    if args.out:
        Path(args.out).write_bytes(data)
        _print(f"{len(records)} checkpoint(s) of {args.agency} witnessed by {config.agency}")
    else:
        sys.stdout.write(data.decode("ascii"))
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    from gateway.audit.store import export, verify_export

    pinned = _pinned_keys(args.key or [])
    agency: str | None = None
    if args.config:
        folder, agency, keys = _node_audit_keys(args.config)
    elif not (args.dir and pinned):
        raise ConfigError("give -c NODE.yaml, or --dir FOLDER and --key ID=BASE64")
    folder = Path(args.dir) if args.dir else folder
    keys = pinned or keys
    out = Path(args.out)
    names = export(folder, out, keys, agency=agency, segments=args.segment)
    report = verify_export(out)
    _print(f"exported {len(names)} segment(s) of {folder} to {out}: {', '.join(names)}")
    for line in report.summary():
        _print(f"  {line}")
    return EXIT_OK if report.ok else EXIT_REJECTED


# --- send and run --------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.audit.status import build_view, render, to_json
    from gateway.audit.store import read_entries
    from gateway.node.config import load_config

    config = load_config(Path(args.config))
    if not config.audit_dir.is_dir():
        _print(f"{config.audit_dir}: no audit trail yet (the node has not run)")
        return EXIT_OK
    entries = [(e.kind, e.at, e.data) for e in read_entries(config.audit_dir)]
    view = build_view(entries)
    now = datetime.now(UTC)
    if args.json:
        rows = to_json(view, now, config.exchange.receipt_timeout)
        if args.event:
            rows = [r for r in rows if r["event_id"] == args.event]
        _print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        text = render(
            view, now, config.exchange.receipt_timeout, event_id=args.event, limit=args.limit
        )
        _print(text.rstrip("\n"))
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    from gateway.core.outbound import parse_plain_event
    from gateway.node.config import load_config

    config = load_config(Path(args.config))
    registry = _node_contract(config)[1].registry  # the node parses events in its own version
    path = Path(args.file)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read events: {exc.strerror}", file=str(path)) from exc
    good: list[bytes] = []
    rejected = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parse_plain_event(line, registry)
        except PeerError as exc:
            rejected += 1
            _print(f"{path}:{number}: rejected ({exc.reason}): {exc}")
            continue
        good.append(line)
    if good:
        _print(f"sent {len(good)} events to {hand_over(config, good)}")
    if rejected:
        _print(f"{rejected} events rejected; fix the named fields and send them again")
    return EXIT_REJECTED if rejected else EXIT_OK


def hand_over(config: NodeConfig, lines: Sequence[bytes]) -> str:
    """Hand plain events (JSON lines) to the node's outbound path: its outbound topic, else its
    spool folder; where they went.

    :raises ConfigError: the node has neither.
    """
    if config.local.outbound_topic:
        asyncio.run(_send_to_topic(config, config.local.outbound_topic, lines))
        return f"topic {config.local.outbound_topic}"
    if config.spool.outbound_dir:
        from gateway.node.sinks import write_atomically

        config.spool.outbound_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        write_atomically(config.spool.outbound_dir / f"{stamp}.jsonl", b"\n".join(lines) + b"\n")
        return f"spool {config.spool.outbound_dir}"
    raise ConfigError(
        "the node has neither local.outbound_topic nor spool.outbound_dir", file=str(config.path)
    )


async def _send_to_topic(config: NodeConfig, topic: str, lines: Sequence[bytes]) -> None:
    from gateway.node.config import topic_spec
    from gateway.node.transport import Producer, ensure_topics

    await ensure_topics(config.local.cluster, [topic_spec(topic, config.local.topics)])
    producer = Producer(config.local.cluster, "fxgw-send")
    await producer.start()
    try:
        await producer.send_many([(topic, line, None, ()) for line in lines])
    finally:
        await producer.stop()


def _stamp_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cmd_hit_query(args: argparse.Namespace) -> int:
    """Hand a fxgw.HitQuery to the node; with --wait, print its fxgw.HitResult; with --trace,
    open a trace request to the agencies that hit."""
    from gateway.core.outbound import parse_plain_event
    from gateway.node.config import load_config

    config = load_config(Path(args.config))
    if args.trace and not args.wait:
        raise ConfigError("--trace needs --wait (the trace goes to the agencies that hit)")
    registry = _node_contract(config)[1].registry
    query_id = f"{config.agency}-HQ-{secrets.token_hex(12)}"
    record = {
        "event_id": query_id,
        "requested_at": _stamp_now(),
        "make": args.make,
        "serial_number": args.serial,
        "calibre": args.calibre,
        "serial_obliterated": args.obliterated or None,
        "query_reference": args.reference,
        "agencies": args.agency or None,
    }
    line = json.dumps({"event_type": "fxgw.HitQuery", "record": record}).encode()
    try:
        parse_plain_event(line, registry)
    except PeerError as exc:
        _print(f"rejected ({exc.reason}): {exc}")
        return EXIT_REJECTED
    since_ms = int(datetime.now(UTC).timestamp() * 1000) - 1000
    where = hand_over(config, [line])
    if not args.json:
        _print(f"query {query_id} sent to {where}")
    if not args.wait:
        return EXIT_OK
    result = asyncio.run(_hit_result(config, query_id, since_ms, args.wait))
    if result is None:
        _print(f"no result for {query_id} within {args.wait:g} s; the node delivers it later")
        return EXIT_REJECTED
    if args.json:
        _print(json.dumps(result, ensure_ascii=False))
    else:
        _print(
            f"{result['status']}: hits {', '.join(result['hits']) or 'none'}; asked"
            f" {', '.join(result['asked']) or 'nobody'}"
            + (
                f"\n  with the calibre too: {', '.join(result['calibre_hits']) or 'none'}"
                if result["narrowed_by_calibre"]
                else ""
            )
            + "".join(f"\n  unanswered {u}" for u in result["unanswered"])
            + (f"\n  reason: {result['reason']}" if result["reason"] else "")
        )
    if args.trace and result["hits"]:
        trace = _trace_request(config, registry, record, result)
        _print(f"trace request {trace} to {', '.join(result['hits'])} sent")
    return EXIT_OK


async def _hit_result(
    config: NodeConfig, query_id: str, since_ms: int, wait_s: float
) -> dict[str, Any] | None:
    """The fxgw.HitResult record for ``query_id`` where the node delivers (spool folder or
    local inbound topic), once there; None after ``wait_s`` seconds."""
    from gateway.node.transport import read_topic

    deadline = asyncio.get_running_loop().time() + wait_s
    read: set[Path] = set()  # spool files already looked at: deliveries are never rewritten
    while True:
        if config.delivery.sink == "spool":
            assert config.spool.inbound_dir is not None
            folder = config.spool.inbound_dir
            fresh = set(folder.glob("*.json")) - read if folder.is_dir() else set()
            read |= fresh
            documents = [p.read_bytes() for p in fresh]
        else:
            assert config.local.inbound_topic is not None
            messages = await read_topic(
                config.local.cluster, config.local.inbound_topic, since_ms=since_ms
            )
            documents = [m.value for m in messages]
        for raw in documents:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                document = json.loads(raw)
                record = document["record"]
                if (
                    document["event_type"] == "fxgw.HitResult"
                    and record["query_event_id"] == query_id
                ):
                    return dict(record)
        if asyncio.get_running_loop().time() > deadline:
            return None
        await asyncio.sleep(0.5)


def _trace_request(
    config: NodeConfig,
    registry: SchemaRegistry,
    query: dict[str, object],
    result: dict[str, Any],
) -> str:
    """A fxgw.TraceRequest of the firearm queried, to the agencies that hit (explicit
    recipients), handed to the node; its event id."""
    from gateway.core.outbound import parse_plain_event

    trust = node_trust(config).agency(config.agency)
    event_id = f"{config.agency}-TR-{secrets.token_hex(12)}"
    record = {
        "event_id": event_id,
        "requested_at": _stamp_now(),
        "requesting_agency": {
            "agency_id": config.agency,
            "country": trust.country if trust is not None else config.agency[:2],
        },
        "request_reference": str(query["query_reference"] or query["event_id"]),
        "priority": "ROUTINE",
        "firearm": {
            "item_id": str(query["event_id"]),
            "make": query["make"],
            "serial_number": query["serial_number"],
            "calibre": query["calibre"],
        },
        "remarks": f"hit/no-hit query {query['event_id']}: a record is held here",
    }
    event = {"event_type": "fxgw.TraceRequest", "record": record, "recipients": result["hits"]}
    line = json.dumps(event).encode()
    parse_plain_event(line, registry)  # our own event: a failure here is a bug, not input
    hand_over(config, [line])
    return event_id


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.node.config import load_config
    from gateway.node.runtime import Node

    config = load_config(Path(args.config))
    node = Node(config)
    # what was loaded lives as long as the node: keep it out of every full collection, which
    # otherwise walks the contract, the policy and the libraries each time (tens of ms)
    gc.freeze()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await node.run(stop)

    try:
        asyncio.run(main())
    except InfrastructureError as exc:
        # our own side is broken beyond retrying (refused credentials, a second process on the
        # state folder, lost audit storage): stop with a clear message instead of spinning
        structlog.get_logger("fxgw.node").critical(
            "node_stopped_on_fault", error=str(exc)[:512], fault=type(exc).__name__
        )
        sys.stderr.write(f"fxgw: stopped: {exc}; fix it and start the node again\n")
        return EXIT_FATAL
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from gateway.node.check import check_node

    failed = 0
    for name in args.config:
        problems = check_node(Path(name), datetime.now(UTC))
        for problem in problems:
            _print(f"{problem}")
        _print(f"{name}: {len(problems)} problem(s)" if problems else f"{name}: OK")
        failed += bool(problems)
    return EXIT_REJECTED if failed else EXIT_OK


def cmd_acls(args: argparse.Namespace) -> int:
    from gateway.node.acls import script
    from gateway.node.config import load_config

    config = load_config(Path(args.config))
    agencies = sorted(node_trust(config).agencies)
    bootstrap = args.bootstrap_server or config.exchange.bootstrap_servers
    _print(
        script(agencies, config.exchange.topic_prefix, bootstrap, args.command_config).rstrip("\n")
    )
    return EXIT_OK


def cmd_topics_provision(args: argparse.Namespace) -> int:
    from gateway.node.config import exchange_topic_specs, load_config
    from gateway.node.transport import ensure_topics

    config = load_config(Path(args.config))
    agencies = sorted(node_trust(config).agencies)
    specs = exchange_topic_specs(config, agencies)
    problems = asyncio.run(ensure_topics(config.exchange.cluster, specs))
    for problem in problems:
        _print(f"not as configured: {problem}")
    settings = config.exchange.topics
    _print(
        f"{len(specs)} topics of {len(agencies)} agencies on {config.exchange.bootstrap_servers}:"
        f" replication {settings.replication}, min.insync.replicas"
        f" {settings.min_insync_replicas}, {len(problems)} not as configured"
    )
    return EXIT_REJECTED if problems else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.dev.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, keep=args.keep)


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway.dev.bench import BenchOptions, run_bench

    return run_bench(BenchOptions.from_arguments(vars(args)))


# --- parser --------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers, comma-separated") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxgw", description=__doc__)
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info (warning for the demo, whose report goes to stdout)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="make an agency's signing and encryption keys (0600)")
    p.add_argument("--agency", help="agency id, e.g. NL-POL")
    p.add_argument("--country", help="ISO 3166-1 alpha-2 country code")
    p.add_argument("--groups", default="", help="comma-separated groups, e.g. EU,INTERPOL")
    p.add_argument("--valid-days", type=int, default=365)
    p.add_argument("--authority", action="store_true", help="make a federation authority key")
    p.add_argument("--id", default="FED", help="authority id (with --authority)")
    p.add_argument("--out", required=True, help="folder for the private key files")
    p.add_argument(
        "--only",
        choices=sorted(_ONLY),
        help="make one new key of this kind alone (a rotation), in a file of its own",
    )
    p.add_argument(
        "--valid-from",
        help="with --only: start of the key's window on the trust list (ISO 8601; default now)",
    )
    p.set_defaults(func=cmd_keygen)

    trust = sub.add_parser("trust", help="sign or verify the federation trust list")
    tsub = trust.add_subparsers(dest="trust_command", required=True)
    p = tsub.add_parser(
        "sign", help="add the authority key's signature to FILE.sig (k of n authorities sign)"
    )
    p.add_argument("--key", required=True)
    p.add_argument(
        "--replace", action="store_true", help="drop the signatures FILE.sig holds already"
    )
    p.add_argument("file")
    p.set_defaults(func=cmd_trust_sign)
    p = tsub.add_parser("verify", help="check a trust list and its signature")
    p.add_argument("-c", "--config")
    p.add_argument("--authority-key", action="append", help="ID=BASE64 public key")
    p.add_argument(
        "--threshold",
        type=int,
        help="valid signatures needed, by distinct authority keys (default: -c's, or 1)",
    )
    p.add_argument("file", nargs="?")
    p.set_defaults(func=cmd_trust_verify)

    policy = sub.add_parser("policy", help="check release policies")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    p = psub.add_parser("check", help="validate policy files against the schemas")
    p.add_argument("--schemas")
    p.add_argument(
        "-c",
        "--config",
        help="also check against this node's trust list and agency (recipients, rule overlaps)",
    )
    p.add_argument(
        "--strict", action="store_true", help="fail (exit 1) on warnings too, as CI does"
    )
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_policy_check)
    p = psub.add_parser(
        "schema", help="print the JSON Schema of policy files (policies/policy.schema.json)"
    )
    p.set_defaults(func=cmd_policy_schema)
    p = psub.add_parser("explain", help="what an event would release to a recipient, and why")
    p.add_argument("-c", "--config", required=True, help="the sending node's node.yaml")
    p.add_argument("--policy", help="explain this policy file instead of the node's")
    p.add_argument("--event", required=True, help="a plain event (JSON), as for fxgw send")
    p.add_argument("--to", required=True, action="extend", nargs="+", help="recipient agency id(s)")
    p.add_argument("--json", action="store_true", help="one JSON object per recipient")
    p.set_defaults(func=cmd_policy_explain)
    p = psub.add_parser("test", help="run the test cases stored beside the policies")
    p.add_argument("--schemas")
    p.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    p.add_argument("files", nargs="*", help="*.test.yaml files (default: policies/*.test.yaml)")
    p.set_defaults(func=cmd_policy_test)

    schema = sub.add_parser("schema", help="inspect the Avro schemas")
    ssub = schema.add_subparsers(dest="schema_command", required=True)
    p = ssub.add_parser(
        "check",
        help="load the contract, print its versions and fingerprints, check compatibility",
    )
    p.add_argument("dir", nargs="?", help="the contract (default: the one shipped with fxgw)")
    p.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="VERSION|DIR|all",
        help="check the working (newest) version against a kept version, a folder, or all"
        " other versions; exit 1 on a breaking change within one major version",
    )
    p.add_argument("--fields", action="store_true", help="also list every field path")
    p.set_defaults(func=cmd_schema_check)

    p = sub.add_parser("status", help="what became of the messages this node released")
    p.add_argument("-c", "--config", required=True, help="the node's node.yaml")
    p.add_argument("--event", help="show the whole fan-out of this event id")
    p.add_argument("--limit", type=int, default=20, help="latest transfers to list")
    p.add_argument("--json", action="store_true", help="every transfer, as JSON")
    p.set_defaults(func=cmd_status)
    audit = sub.add_parser("audit", help="verify or export the tamper-evident audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    p = asub.add_parser(
        "verify",
        help="check the chain and checkpoint signatures of an audit folder or export",
        description="Exit 0: intact; 1: something was altered, removed, reordered, inserted or "
        "cut (the first place is named); 2: the command could not run. A folder's public keys "
        "come from -c (the trust list's signing keys for the agency, and the public half of its "
        "key file) or --key; an export's from the federation trust list (-c, or --trust with "
        "--authority-key), or --key; without any, from the export itself, which proves nothing "
        "about who wrote it.",
    )
    p.add_argument("path", nargs="?", help="an audit folder or an export file (default: -c's)")
    p.add_argument("-c", "--config", help="the node's node.yaml")
    p.add_argument("--key", action="append", help="ID=BASE64 public key (repeat for each)")
    p.add_argument(
        "--trust", metavar="FILE", help="a signed trust list to take an export's keys from"
    )
    p.add_argument("--authority-key", action="append", help="with --trust: ID=BASE64 authority key")
    p.add_argument("--threshold", type=int, help="with --trust: authority signatures needed")
    p.add_argument(
        "--witnessed",
        action="append",
        metavar="FILE",
        help="checkpoints another agency witnessed ('fxgw audit witnessed'): the log must hold "
        "each of them (repeat for each witness)",
    )
    p.set_defaults(func=cmd_audit_verify)
    p = asub.add_parser(
        "witnessed",
        help="the checkpoints of another agency this node witnessed, as JSON",
        description="Read from the node's audit trail ('witnessed' entries); give the file to "
        "'fxgw audit verify --witnessed' to check that agency's log against them.",
    )
    p.add_argument("-c", "--config", required=True, help="the witness node's node.yaml")
    p.add_argument("--agency", required=True, help="whose checkpoints")
    p.add_argument("--out", help="write to this file (default: standard output)")
    p.set_defaults(func=cmd_audit_witnessed)
    p = asub.add_parser(
        "export", help="write the log, or some segments, with the public keys, as one JSON file"
    )
    p.add_argument("-c", "--config", help="the node's node.yaml (folder <state_dir>/audit)")
    p.add_argument("--dir", help="the audit folder (instead of -c's; needs --key)")
    p.add_argument("--key", action="append", help="ID=BASE64 public key (repeat for each)")
    p.add_argument("--out", required=True, help="the export file to write")
    p.add_argument(
        "--segment", type=int, action="append", help="segment number to export (default: all)"
    )
    p.set_defaults(func=cmd_audit_export)

    p = sub.add_parser("send", help="hand plain events (JSON lines) to the node's outbound path")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("file")
    p.set_defaults(func=cmd_send)

    trace.add_parser(sub)
    hit = sub.add_parser("hit", help="hit/no-hit queries: does any agency hold this firearm?")
    hsub = hit.add_subparsers(dest="hit_command", required=True)
    p = hsub.add_parser(
        "query",
        help="hand a fxgw.HitQuery to the node's outbound path; --wait prints its result",
        description="The node asks every agency that publishes a filter (or --agency ones) "
        "obliviously: they learn nothing of the firearm; the result names the agencies that "
        "may hold a record (see README, 'Hit/no-hit queries').",
    )
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--make", required=True, help="manufacturer as marked")
    p.add_argument("--serial", required=True, help="serial number as read")
    p.add_argument("--calibre", help="calibre as marked, to narrow the query")
    p.add_argument("--obliterated", action="store_true", help="the serial was removed or altered")
    p.add_argument("--reference", help="your own reference, quoted in the result")
    p.add_argument("--agency", action="append", help="ask only this agency (repeatable)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait this long for the result")
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    p.add_argument(
        "--trace", action="store_true", help="open a trace request to the agencies that hit"
    )
    p.set_defaults(func=cmd_hit_query)

    p = sub.add_parser("run", help="run the node")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "bench",
        help="the gateway against a bare aiokafka relay: throughput, CPU, latency, fan-out",
        description="Runs a bare aiokafka relay and the gateway (two processes each) on one "
        "real Kafka; writes report.json, latency.png and the processes' logs to --out and "
        "prints a table. Exit 1 when gateway/relay throughput is below --min-ratio.",
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", default=Path("bench-out"), help="default: bench-out/"
    )
    p.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="host:port of a Kafka to use (default: start one)"
    )
    p.add_argument("--quick", action="store_true", help="the short version for CI (< 2 min)")
    p.add_argument(
        "--events", type=int, metavar="N", help="gateway throughput run (5000; quick 1500)"
    )
    p.add_argument(
        "--relay-events", type=int, metavar="N", help="relay throughput run (50000; quick 5000)"
    )
    p.add_argument(
        "--rates", type=_ints, metavar="R,R", help="events/s (100,500,1000,2000; quick 20,50)"
    )
    p.add_argument("--seconds", type=float, metavar="S", help="per offered rate (10; quick 3)")
    p.add_argument("--fanout", type=_ints, metavar="K,K", help="recipients per event (1,3,10)")
    p.add_argument(
        "--fanout-events", type=int, metavar="N", help="events per fan-out run (1000; quick 100)"
    )
    p.add_argument(
        "--min-ratio", type=float, metavar="X", help="exit 1 if gateway/relay throughput is lower"
    )
    p.add_argument("--soak", type=int, metavar="N", help="instead: N events, RSS over time")
    p.add_argument(
        "--soak-max-hours", type=float, metavar="H", help="give the soak up after this long (12)"
    )
    p.add_argument("--profile", action="store_true", help="cProfile the nodes (throughput run)")
    p.add_argument(
        "--node-log-level",
        choices=["debug", "info", "warning", "error"],
        help="the nodes' log level (info, as an operator runs them)",
    )
    p.add_argument("--keep", action="store_true", help="keep the federation's folders")
    p.set_defaults(func=cmd_bench)

    config_parser = sub.add_parser("config", help="check node configs")
    csub = config_parser.add_subparsers(dest="config_command", required=True)
    p = csub.add_parser(
        "check",
        help="everything a node would load (config, keys, trust list, contract, policy, routes,"
        " Kafka files and secrets), every problem at once",
    )
    p.add_argument("-c", "--config", action="append", required=True, help="a node.yaml")
    p.set_defaults(func=cmd_config_check)

    p = sub.add_parser(
        "acls",
        help="print the kafka-acls.sh script giving every agency of the trust list least privilege",
    )
    p.add_argument("-c", "--config", required=True, help="a node.yaml of the federation")
    p.add_argument("--bootstrap-server", help="default: the config's exchange bootstrap servers")
    p.add_argument("--command-config", help="kafka-acls.sh --command-config (admin credentials)")
    p.set_defaults(func=cmd_acls)

    topics = sub.add_parser("topics", help="the exchange cluster's topics")
    tsub2 = topics.add_subparsers(dest="topics_command", required=True)
    p = tsub2.add_parser(
        "provision",
        help="create every agency's inbox, receipts, checkpoints and witness topics as the"
        " config's exchange.topics"
        " says; report existing ones that fall short",
    )
    p.add_argument(
        "-c", "--config", required=True, help="a node.yaml whose exchange credentials may create"
    )
    p.set_defaults(func=cmd_topics_provision)

    p = sub.add_parser("demo", help="three agencies on a local Kafka, end to end")
    p.add_argument("--dir", help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fxgw`` command."""
    args = build_parser().parse_args(argv)
    quiet_demo = args.command == "demo" and args.log_level is None
    configure_logging(args.log_level or ("warning" if quiet_demo else "info"))
    if quiet_demo:  # the client library's start-up chatter would drown the report
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        code = args.func(args)
    except GatewayError as exc:
        sys.stderr.write(f"fxgw: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
