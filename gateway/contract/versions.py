"""The contract's versions: every version of the federation's Avro contract a node keeps.

Agencies never upgrade on the same day, so the contract is a set of versions, listed oldest first
in a manifest, ``contract.yaml``, beside one folder of ``.avsc`` files per version::

    schemas/avro/contract.yaml
    schemas/avro/1.0/fxgw.SeizureEvent.avsc ...
    schemas/avro/1.1/...

A version is named ``MAJOR.MINOR``. Every minor version must be backward and forward compatible
with every other version of its major (:mod:`gateway.contract.compat` checks it; CI runs
``fxgw schema check --against all``); a change that cannot be starts a new major version.

A released version is frozen: the manifest records the SHA-256 fingerprint of each of its types,
and loading refuses a folder whose types no longer have them, naming the type and what to do.
The newest version may be a draft (no fingerprints yet), for the working contract before its
release; ``fxgw schema check`` prints the fingerprints to record.

A folder of ``.avsc`` files without a manifest is a contract of one draft version, named after
the folder when that is a version (``1.0``) and otherwise ``1.0``, the version every contract
folder from before versions existed holds (a configuration that still points at one keeps
working).

Why our own code: fastavro and the Apache ``avro`` package load one schema set at a time; what a
set of versions is, and which are frozen, is the federation's own convention.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydantic

from gateway._yamlfile import YamlDocument, load_model, read_yaml
from gateway.contract.schemas import Schema, SchemaRegistry
from gateway.errors import PeerError, SchemaError, UnknownEventType

__all__ = [
    "MANIFEST",
    "Contract",
    "ContractVersion",
    "convert",
    "missing_fields",
    "newest_registry",
    "peek_format",
]

MANIFEST = "contract.yaml"
FIRST_VERSION = "1.0"
WIRE_TYPES = ("fxgw.Envelope", "fxgw.Receipt")
"""The types framed by their own format version, which a receiver reads before anything else."""
_LABEL = re.compile(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class _VersionModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    version: str
    fingerprints: dict[str, str] | None = None
    definitions: dict[str, str] | None = None


class _ManifestModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    versions: list[_VersionModel] = pydantic.Field(min_length=1)


@dataclass(frozen=True, slots=True, eq=False)
class ContractVersion:
    """One version of the contract: its schemas, and whether it is released (frozen)."""

    label: str
    """``MAJOR.MINOR``."""
    folder: Path
    registry: SchemaRegistry
    released: bool

    @property
    def major(self) -> int:
        """The major version."""
        return _order(self.label)[0]


class Contract:
    """Every version of the contract a node keeps, oldest first."""

    def __init__(self, versions: list[ContractVersion]) -> None:
        if not versions:
            raise SchemaError("a contract needs at least one version")
        self.versions = tuple(versions)
        self._by_label = {v.label: v for v in versions}
        self._by_fingerprint: dict[bytes, tuple[ContractVersion, Schema]] = {}
        for version in versions:  # a type unchanged across versions keeps its oldest entry
            for schema in version.registry:
                self._by_fingerprint.setdefault(schema.fingerprint, (version, schema))
        self._formats = {name: _formats(versions, name) for name in WIRE_TYPES}

    @classmethod
    def load(cls, root: Path) -> Contract:
        """Load the manifest in ``root`` and every version it lists, or, without a manifest,
        the folder's ``.avsc`` files as one draft version.

        :raises SchemaError: the manifest or a version is broken, or a released version's
            types no longer have the fingerprints the manifest records (naming file, line and
            type).
        """
        manifest = root / MANIFEST
        if not manifest.is_file():
            label = root.name if _LABEL.fullmatch(root.name) else FIRST_VERSION
            return cls([ContractVersion(label, root, SchemaRegistry.load(root), False)])
        document = read_yaml(manifest, "contract manifest", SchemaError)
        model = load_model(document, _ManifestModel, "contract manifest", SchemaError)
        labels = [entry.version for entry in model.versions]
        for index, label in enumerate(labels):
            at = ("versions", index, "version")
            if not _LABEL.fullmatch(label):
                raise _error(document, at, f"version '{label}' is not MAJOR.MINOR (e.g. 1.0)")
            if index and _order(label) <= _order(labels[index - 1]):
                raise _error(
                    document,
                    at,
                    f"version {label} is listed after {labels[index - 1]}: list the versions"
                    " oldest first, each once",
                )
        versions: list[ContractVersion] = []
        for index, entry in enumerate(model.versions):
            if entry.fingerprints is None and index != len(model.versions) - 1:
                raise _error(
                    document,
                    ("versions", index, "version"),
                    f"version {entry.version} has no fingerprints: only the newest version may"
                    " be a draft; record the fingerprints `fxgw schema check` prints",
                )
            folder = root / entry.version
            registry = SchemaRegistry.load(folder)
            if entry.fingerprints is not None:
                _check_frozen(entry.version, registry, entry.fingerprints, document, index)
                _check_definitions(entry.version, registry, entry.definitions, document, index)
            versions.append(
                ContractVersion(entry.version, folder, registry, entry.fingerprints is not None)
            )
        return cls(versions)

    def __iter__(self) -> Iterator[ContractVersion]:
        return iter(self.versions)

    @property
    def newest(self) -> ContractVersion:
        """The newest version (the working contract when it is a draft)."""
        return self.versions[-1]

    def version(self, label: str) -> ContractVersion:
        """The version named ``label``.

        :raises SchemaError: the contract has no such version (the message lists those it has).
        """
        try:
            return self._by_label[label]
        except KeyError:
            known = ", ".join(v.label for v in self.versions)
            raise SchemaError(f"the contract has no version {label} (it has {known})") from None

    def version_of(self, registry: SchemaRegistry) -> ContractVersion:
        """The version whose schemas are ``registry`` (the node's own, say)."""
        return next(v for v in self.versions if v.registry is registry)

    def newest_of(self, labels: Iterable[str]) -> ContractVersion | None:
        """The newest version of this contract among ``labels`` (those a peer speaks), or None
        when there is no common version."""
        wanted = set(labels)
        return next((v for v in reversed(self.versions) if v.label in wanted), None)

    def formats(self, name: str) -> dict[int, ContractVersion]:
        """For a type framed by its own format version (``fxgw.Envelope``, ``fxgw.Receipt``):
        each format this contract has, with the newest version that writes it."""
        return self._formats[name]

    def reader_for(self, name: str, data: bytes) -> tuple[SchemaRegistry, int]:
        """The schemas and the format version to read ``data`` with, a ``name``
        (``fxgw.Envelope`` or ``fxgw.Receipt``) in any format of this contract's versions.

        :raises PeerError: ``malformed``: a format none of them has (garbage and a peer's
            newer format look the same; the detail names the format), or bytes that do not
            start with a format version.
        """
        wire_format = peek_format(data)
        known = self._formats[name]
        version = known.get(wire_format)
        if version is None:
            raise PeerError(
                f"{name} format {wire_format} is not one this node reads"
                f" ({', '.join(str(f) for f in sorted(known))})",
                reason="malformed",
            )
        return version.registry, wire_format

    def by_fingerprint(self, fingerprint: bytes) -> tuple[ContractVersion, Schema]:
        """The schema with this fingerprint, in the oldest version that has it.

        :raises UnknownEventType: no version of the contract has a type with that fingerprint.
        """
        try:
            return self._by_fingerprint[fingerprint]
        except KeyError:
            raise UnknownEventType(
                f"no version of the contract has a schema with fingerprint {fingerprint.hex()}"
            ) from None


def _error(document: YamlDocument, at: tuple[str | int, ...], message: str) -> SchemaError:
    return SchemaError(message, file=str(document.path), line=document.line_of(at))


def peek_format(data: bytes) -> int:
    """The format version an envelope or a receipt says it has, read before anything else:
    the first field of both is ``format_version``, so it is the first Avro int of the bytes.

    :raises PeerError: ``malformed``, the bytes do not start with a small non-negative int.
    """
    value = shift = 0
    for byte in data[:2]:  # formats 0..63 take one byte; allow a second for a clear message
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            number = (value >> 1) ^ -(value & 1)
            if number < 0:
                break
            return number
    raise PeerError("the bytes do not start with a format version", reason="malformed")


def _formats(versions: list[ContractVersion], name: str) -> dict[int, ContractVersion]:
    """Format version -> the newest version writing it; one format, one schema: a version that
    changes the type must give it a new ``fxgw.format``."""
    found: dict[int, ContractVersion] = {}
    for version in versions:
        if name not in version.registry:
            continue
        schema = version.registry.get(name)
        earlier = found.get(schema.format)
        if earlier is not None and earlier.registry.get(name).fingerprint != schema.fingerprint:
            raise SchemaError(
                f"{name} differs between versions {earlier.label} and {version.label} but both"
                f' say format {schema.format}: a changed {name} needs a new "fxgw.format"',
                file=str(version.folder / f"{name}.avsc"),
            )
        found[schema.format] = version
    return found


def _order(label: str) -> tuple[int, int]:
    major, _, minor = label.partition(".")
    return int(major), int(minor)


def _check_frozen(
    label: str,
    registry: SchemaRegistry,
    recorded: dict[str, str],
    document: YamlDocument,
    index: int,
) -> None:
    """Every type of released version ``label`` (entry ``index`` of the manifest) has the
    fingerprint the manifest records, and the manifest records every type."""
    manifest = document.path
    for name, value in recorded.items():
        at = ("versions", index, "fingerprints", name)
        if not _FINGERPRINT.fullmatch(value):
            raise _error(document, at, f"{name}: a fingerprint is 64 lowercase hex digits")
        if name not in registry:
            raise _error(
                document,
                at,
                f"released version {label} has no type {name} any more: a released version"
                " never changes; put changes into a new version",
            )
        actual = registry.get(name).fingerprint.hex()
        if actual != value:
            raise _error(
                document,
                at,
                f"{name} in released version {label} has fingerprint {actual}, the manifest"
                f" records {value}: a released version never changes; restore"
                f" {manifest.parent / label} and put changes into a new version",
            )
    missing = sorted(set(registry.names) - set(recorded))
    if missing:
        raise SchemaError(
            f"released version {label} has types the manifest does not record: "
            f"{', '.join(missing)}; a released version never changes",
            file=str(manifest),
            line=document.line_of(("versions", index, "fingerprints")),
        )


def _check_definitions(
    label: str,
    registry: SchemaRegistry,
    recorded: dict[str, str] | None,
    document: YamlDocument,
    index: int,
) -> None:
    """Every type of released version ``label`` has the definition digest the manifest
    records: what the fingerprint leaves out (defaults, aliases, logical types, ``fxgw.*``
    attributes) is frozen too; only ``doc`` strings may still be edited."""
    at: tuple[str | int, ...] = ("versions", index, "fingerprints")
    if recorded is None:
        raise _error(
            document,
            at,
            f"released version {label} records no definitions: add the 'definitions' that"
            " `fxgw schema check` prints, so that defaults and attributes are frozen too",
        )
    for name in registry.names:
        value = recorded.get(name)
        actual = registry.get(name).definition_digest
        if value == actual:
            continue
        at = ("versions", index, "definitions") + ((name,) if value is not None else ())
        raise _error(
            document,
            at,
            f"{name} in released version {label} has definition digest {actual}, the manifest"
            f" records {value or 'none'}: a default, alias, logical type or fxgw attribute was"
            f" changed (only docs may be); restore {document.path.parent / label} and put"
            " changes into a new version",
        )
    extra = sorted(set(recorded) - set(registry.names))
    if extra:
        raise _error(
            document,
            ("versions", index, "definitions", extra[0]),
            f"released version {label} has no type {extra[0]} any more: a released version"
            " never changes; put changes into a new version",
        )


def missing_fields(name: str, have: ContractVersion, lack: ContractVersion) -> tuple[str, ...]:
    """The field paths of type ``name`` that version ``have`` has and version ``lack`` lacks
    (the outermost of each: a missing record's own fields are not listed again)."""
    return _missing(name, have.registry, lack.registry)


@functools.cache
def _missing(name: str, have: SchemaRegistry, lack: SchemaRegistry) -> tuple[str, ...]:
    present = {info.path for info in lack.get(name).iter_fields()}
    gone: list[str] = []
    for info in have.get(name).iter_fields():
        if info.path not in present and not any(
            info.path.startswith((g + ".", g + "[]", g + "{}")) for g in gone
        ):
            gone.append(info.path)
    return tuple(gone)


def convert(
    name: str, record: Mapping[str, object], source: ContractVersion, target: ContractVersion
) -> dict[str, object]:
    """``record`` (of type ``name`` in version ``source``) in version ``target``'s shape, by
    Avro schema resolution: fields ``target`` lacks are dropped, fields ``source`` lacks take
    ``target``'s defaults.

    :raises RecordInvalid: the record does not encode with ``source``'s schema, or the versions
        cannot be resolved (a breaking change between them).
    """
    data = source.registry.write(name, record)
    return target.registry.decode(name, data, writer=source.registry.get(name))


def newest_registry(root: Path) -> SchemaRegistry:
    """The schemas of the newest version of the contract in ``root`` (see :meth:`Contract.load`).

    :raises SchemaError: the contract is broken.
    """
    return Contract.load(root).newest.registry
