"""The compatibility gate: can one version of the contract read what another wrote?

The verdict is the Apache ``avro`` package's schema-resolution checker
(:class:`avro.compatibility.ReaderWriterCompatibilityChecker`, the one Confluent's and Aiven's
schema registries follow). Per type that travels (every record no other record refers to: the
event types, the envelope, the receipt), two directions are checked:

- **backward**: the newer version reads what the older one wrote (a receiver that upgraded);
- **forward**: the older version reads what the newer one wrote (a receiver that did not).

Why our own code around it: the library's report points into the schema JSON (``/fields/8/...``)
and loses the place for some mismatches; :func:`check` walks reader and writer side by side and
asks the library about each field, so a problem is named by its field path
(``firearms[].serial_obliterated``) with the library's reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import WIRE_TYPES

__all__ = ["Problem", "TypeReport", "check", "roots"]

_CHECKER = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]  # untyped in avro


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a reader cannot read a writer's data."""

    path: str
    """The field's path in the type (``firearms[].calibre``); ``""`` for the type itself."""
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '(the type)'}: {self.reason}"


@dataclass(frozen=True, slots=True)
class TypeReport:
    """One type, checked in both directions between the working and a kept version."""

    name: str
    backward: tuple[Problem, ...]
    """Why the working version cannot read the kept one's data (empty: it can)."""
    forward: tuple[Problem, ...]
    """Why the kept version cannot read the working one's data (empty: it can)."""

    @property
    def compatible(self) -> bool:
        return not self.backward and not self.forward


def roots(registry: SchemaRegistry) -> tuple[str, ...]:
    """The record types no other record type refers to: the ones that travel."""
    referred: set[str] = set()
    records = [s for s in registry if s.kind == "record"]
    for schema in records:
        referred.update(n for n in _named_in(schema.parsed.definition) if n != schema.full_name)
    return tuple(sorted(s.full_name for s in records if s.full_name not in referred))


def check(working: SchemaRegistry, kept: SchemaRegistry) -> list[TypeReport]:
    """Each type that travels in either version, checked both ways; a type the working version
    dropped cannot be read by it (backward), nor written for the kept version (forward)."""
    reports = []
    for name in sorted(set(roots(working)) | set(roots(kept))):
        if name not in working or name not in kept:
            if name in kept:  # dropped: data of the kept version has no reader any more
                gone = (Problem("", "the working version has no such type"),)
                reports.append(TypeReport(name, gone, gone))
            continue  # new in the working version: nobody older sends it
        if name in WIRE_TYPES and working.get(name).format != kept.get(name).format:
            continue  # a new wire format: read with its own schema, never resolved to the old
        new = _avro(working, name)
        old = _avro(kept, name)
        reports.append(TypeReport(name, _problems(new, old, ""), _problems(old, new, "")))
    return reports


def _avro(registry: SchemaRegistry, name: str) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(registry.get(name).parsed.definition))


def _named_in(definition: object) -> Iterator[str]:
    """Full names of the named types defined anywhere in a self-contained definition."""
    if isinstance(definition, list):
        for branch in definition:
            yield from _named_in(branch)
    elif isinstance(definition, dict):
        if definition.get("type") in ("record", "enum", "fixed"):
            name = str(definition["name"])
            namespace = definition.get("namespace")
            yield name if "." in name or not namespace else f"{namespace}.{name}"
        for key in ("fields", "items", "values", "type"):
            if key in definition:
                yield from _named_in(definition[key])


def _compatible(reader: avro.schema.Schema, writer: avro.schema.Schema) -> bool:
    result = _CHECKER.get_compatibility(reader, writer)
    return bool(result.compatibility is SchemaCompatibilityType.compatible)


def _reason(reader: avro.schema.Schema, writer: avro.schema.Schema) -> str:
    result = _CHECKER.get_compatibility(reader, writer)
    return "; ".join(sorted(str(m) for m in result.messages)) or "not compatible"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _problems(
    reader: avro.schema.Schema,
    writer: avro.schema.Schema,
    path: str,
    seen: frozenset[tuple[int, int]] = frozenset(),
) -> tuple[Problem, ...]:
    """Why ``reader`` cannot read ``writer``'s data, each named by the deepest field path the
    walk can pair up; empty when the library finds them compatible. ``seen``: the record
    pairs under way, where a recursive type stops."""
    pair = (id(reader), id(writer))
    if pair in seen:
        return ()
    if _compatible(reader, writer):
        return tuple(_meaning_changes(reader, writer, path, seen))
    seen = seen | {pair}
    found: list[Problem] = []
    if isinstance(reader, avro.schema.RecordSchema) and isinstance(
        writer, avro.schema.RecordSchema
    ):
        if reader.fullname != writer.fullname:
            return (Problem(path, f"record {writer.fullname} read as {reader.fullname}"),)
        written = {f.name: f for f in writer.fields}
        for field in reader.fields:
            source = written.get(field.name) or next(
                (written[a] for a in (field.props.get("aliases") or ()) if a in written), None
            )
            if source is None:
                if not field.has_default:
                    found.append(
                        Problem(
                            _join(path, field.name),
                            "the writer's version lacks this field and the reader's has no"
                            " default for it",
                        )
                    )
            else:
                found.extend(_problems(field.type, source.type, _join(path, field.name), seen))
    elif isinstance(reader, avro.schema.ArraySchema) and isinstance(
        writer, avro.schema.ArraySchema
    ):
        found.extend(_problems(reader.items, writer.items, f"{path}[]", seen))
    elif isinstance(reader, avro.schema.MapSchema) and isinstance(writer, avro.schema.MapSchema):
        found.extend(_problems(reader.values, writer.values, f"{path}{{}}", seen))
    elif isinstance(writer, avro.schema.UnionSchema):
        for branch in writer.schemas:  # each branch the writer may pick must be readable
            found.extend(_problems(reader, branch, path, seen))
    elif isinstance(reader, avro.schema.UnionSchema):
        same = [b for b in reader.schemas if _kind(b) == _kind(writer)]
        if same:
            found.extend(_problems(same[0], writer, path, seen))
    return tuple(found) or (Problem(path, _reason(reader, writer)),)


def _meaning_changes(
    reader: avro.schema.Schema,
    writer: avro.schema.Schema,
    path: str,
    seen: frozenset[tuple[int, int]] = frozenset(),
) -> Iterator[Problem]:
    """Logical-type changes, which Avro resolution ignores (a ``date`` int is promoted to a
    ``timestamp-millis`` long without complaint) but which change what the values mean."""
    if isinstance(reader, avro.schema.RecordSchema):
        pair = (id(reader), id(writer))
        if pair in seen:
            return
        seen = seen | {pair}
    if isinstance(reader, avro.schema.RecordSchema) and isinstance(
        writer, avro.schema.RecordSchema
    ):
        written = {f.name: f for f in writer.fields}
        for field in reader.fields:
            if field.name in written:
                yield from _meaning_changes(
                    field.type, written[field.name].type, _join(path, field.name), seen
                )
    elif isinstance(reader, avro.schema.ArraySchema) and isinstance(
        writer, avro.schema.ArraySchema
    ):
        yield from _meaning_changes(reader.items, writer.items, f"{path}[]", seen)
    elif isinstance(reader, avro.schema.MapSchema) and isinstance(writer, avro.schema.MapSchema):
        yield from _meaning_changes(reader.values, writer.values, f"{path}{{}}", seen)
    elif isinstance(reader, avro.schema.UnionSchema) or isinstance(writer, avro.schema.UnionSchema):
        readers = reader.schemas if isinstance(reader, avro.schema.UnionSchema) else [reader]
        writers = writer.schemas if isinstance(writer, avro.schema.UnionSchema) else [writer]
        for branch in writers:
            same = [r for r in readers if _kind(r) == _kind(branch)]
            candidates = same or [r for r in readers if _compatible(r, branch)]
            if candidates:
                yield from _meaning_changes(candidates[0], branch, path, seen)
    else:
        was, now = writer.props.get("logicalType"), reader.props.get("logicalType")
        if was != now:
            yield Problem(
                path,
                f"the writer's {was or writer.type} is read as {now or reader.type}:"
                " the values would change meaning",
            )


def _kind(schema: avro.schema.Schema) -> str:
    name = getattr(schema, "fullname", None)
    return str(name) if isinstance(schema, avro.schema.NamedSchema) and name else str(schema.type)
