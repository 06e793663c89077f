"""The federation's Avro contract: load it, fingerprint it, check records against it, convert.

Pure: apart from reading the schema folder in :meth:`SchemaRegistry.load`, nothing here does I/O.

The libraries do the Avro work (see :mod:`gateway.contract._avro`): the Apache ``avro`` package
parses the files, with named types across them; fastavro computes the Parsing Canonical Form
(fingerprints are its SHA-256), encodes, decodes and resolves one version's data to another's.
What is ours: the Python and JSON forms of the national system (below), and checks whose errors
name the field by its path and never quote a value.

The contract
------------
- A version of the contract is a folder of ``.avsc`` files (``schemas/avro/1.0``; the versions
  themselves are :mod:`gateway.contract.versions`'). Each file defines one named type
  and is named after its full name (``fxgw.Firearm.avsc``); it may define further named types
  inline (an enum inside a record, say). Files refer to each other's types by name, in any order.
  Every named type, wherever defined, gets a :class:`Schema`.
- A record that carries the custom attribute ``"fxgw.event": true`` is a domain event type
  (:attr:`SchemaRegistry.event_types`). Only events, the envelope and the receipt travel.
- A schema's fingerprint is the SHA-256 of the Avro *Parsing Canonical Form* of its
  self-contained definition: every named type it uses is written out at its first use. A change
  to ``fxgw.Firearm`` therefore changes the fingerprint of every event that carries firearms,
  while docs, defaults, aliases, logical types and custom attributes do not count (per the spec).

The Python form (what :meth:`SchemaRegistry.encode` takes and :meth:`SchemaRegistry.decode` gives)
------------------------------------------------------------------------------------------------
``null`` None; ``boolean`` bool; ``int``/``long`` int (32/64-bit range); ``float``/``double``
float (an int is accepted); ``string`` str; ``bytes`` bytes; ``enum`` the symbol as str; ``fixed``
bytes of the declared size; ``array`` list; ``map`` dict with str keys; ``record`` dict (a field
with a default may be left out and is filled in; an unknown key is an error); ``date``
``datetime.date``; ``timestamp-millis``/``-micros`` a timezone-aware ``datetime`` (millisecond
precision for ``-millis``: finer digits are refused, not silently dropped); ``local-timestamp-*``
a naive ``datetime``; ``time-millis``/``-micros`` a naive ``datetime.time``; ``uuid`` ``uuid.UUID``.
A union is its plain value. For every record ``r`` that encode accepts, with every field given,
``decode(encode(r)) == r`` (timestamps come back in UTC, which compares equal; a ``float`` field
keeps 32 bits, so a value not exact in 32 bits comes back rounded). Logical types ``decimal`` and
``duration`` are refused at load; unknown logical types are ignored, as the spec asks.

The JSON form (what the national system writes; :meth:`SchemaRegistry.from_json` and
:meth:`SchemaRegistry.to_json`)
-------------------------------------------------------------------------------------------
As the Python form, except: ``date`` is ``"YYYY-MM-DD"``; ``timestamp-millis``/``-micros`` is an
ISO-8601 string with ``Z`` or an offset (digits finer than the type are truncated) or an integer
count of milliseconds/microseconds since the epoch; ``time-*`` is ``"HH:MM:SS[.fff]"``; ``uuid`` is
its string; ``bytes`` and ``fixed`` are standard base64; a ``float`` is rounded to 32 bits.
Unions are the plain value, not Avro-JSON's ``{"type": value}`` tagged form; enums are the
symbol. :meth:`~SchemaRegistry.to_json` writes timestamps in UTC with ``Z``, and
``from_json(to_json(r)) == r``.

Errors
------
- :class:`~gateway.errors.SchemaError` (our contract is broken): at load, naming the file and,
  where it can be found, the line.
- :class:`~gateway.errors.UnknownEventType`: a name or fingerprint the contract does not define.
- :class:`~gateway.errors.RecordInvalid`: a record does not conform. ``field`` is the dotted path of
  the first bad field, with array indexes (``firearms[2].calibre``); the message says what was
  expected and what type was found. Messages never quote the value itself (only map keys, as part
  of a path): they end up in logs and quarantine reasons, which hold metadata only.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import dataclasses
import datetime as dt
import difflib
import functools
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn, TypeVar, cast

from gateway.contract import _avro
from gateway.errors import RecordInvalid, SchemaError, UnknownEventType
from gateway.types import EventType

__all__ = [
    "EVENT_ATTRIBUTE",
    "FieldInfo",
    "FieldNotFound",
    "Schema",
    "SchemaRegistry",
    "parsing_canonical_form",
]

EVENT_ATTRIBUTE = "fxgw.event"
"""Custom schema attribute that marks a record as a domain event type (value ``true``)."""
FORMAT_ATTRIBUTE = "fxgw.format"
"""Custom schema attribute of a record that travels framed by its own format version (the
envelope, the receipt): that version, a positive integer; 1 when absent."""

_NAMED_KINDS = frozenset({"record", "enum", "fixed"})
# (base type, logicalType) -> the kind we report and enforce. Exactly the pairs fastavro converts;
# any other logicalType is ignored, as the spec asks, and the base type is used.
_LOGICAL = {
    ("int", "date"): "date",
    ("int", "time-millis"): "time-millis",
    ("long", "time-micros"): "time-micros",
    ("long", "timestamp-millis"): "timestamp-millis",
    ("long", "timestamp-micros"): "timestamp-micros",
    ("long", "local-timestamp-millis"): "local-timestamp-millis",
    ("long", "local-timestamp-micros"): "local-timestamp-micros",
    ("string", "uuid"): "uuid",
}
# Logical types with a Python form we do not promise to round-trip; refused at load rather than
# half supported.
_UNSUPPORTED_LOGICAL = frozenset({"decimal", "duration"})
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)  # the epoch of the local-timestamp types
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_RE = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?")
_AWARE_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})"
)
_NAIVE_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?")


# --- the parsed type tree (internal) -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Primitive:
    kind: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Logical:
    kind: str
    base: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Array:
    items: _Type


@dataclasses.dataclass(frozen=True, slots=True)
class _Map:
    values: _Type


@dataclasses.dataclass(frozen=True, slots=True)
class _Union:
    branches: tuple[_Type, ...]


@dataclasses.dataclass(eq=False, slots=True)
class _Enum:
    name: str
    source: str
    doc: str | None
    aliases: tuple[str, ...]
    symbols: tuple[str, ...]
    default: str | None


@dataclasses.dataclass(eq=False, slots=True)
class _Fixed:
    name: str
    source: str
    doc: str | None
    aliases: tuple[str, ...]
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: _Type
    doc: str | None
    aliases: tuple[str, ...]
    has_default: bool
    default: object


@dataclasses.dataclass(eq=False, slots=True)
class _Record:
    # Mutable and compared by identity: a record is registered before its fields are built, so
    # that a recursive reference to it resolves.
    name: str
    source: str
    doc: str | None
    aliases: tuple[str, ...]
    attributes: dict[str, object]
    fields: list[_Field] = dataclasses.field(default_factory=list)


_Named = _Record | _Enum | _Fixed
_Type = _Primitive | _Logical | _Array | _Map | _Union | _Named


# --- public values -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FieldInfo:
    """One field of a record schema, as a release policy and a data generator need to see it.

    ``path`` is dotted from the top record; an array adds ``[]`` and a map ``{}`` to the path of
    the field that holds it (``firearms[].serial_number``, ``persons[].agency.agency_id``).
    ``kind`` is the field's type with a nullable union unwrapped and the logical type winning
    over its base type: one of ``null, boolean, int, long, float, double, bytes, string, enum,
    fixed, record, array, map, union`` (a union of several non-null types) or a logical type
    (``date, time-millis, time-micros, timestamp-millis, timestamp-micros,
    local-timestamp-millis, local-timestamp-micros, uuid``).
    """

    path: str
    name: str
    kind: str
    nullable: bool
    """The field's type is a union with ``null``: a policy may withhold it."""
    doc: str | None = None
    children: tuple[FieldInfo, ...] = ()
    """Fields of the record held, directly or as the items (values) of an array (map); empty
    where a recursive type refers back to a record it is inside of."""
    item_kind: str | None = None
    """For an array (a map): the kind of its items (values)."""
    item_nullable: bool = False
    """For an array (a map): the items (values) may be null."""
    symbols: tuple[str, ...] = ()
    """For an enum, or an array or map of enums: the symbols."""
    type_name: str | None = None
    """Full name of the record, enum or fixed type held (directly or as items or values)."""
    size: int | None = None
    """For a fixed type (or array or map of it): its size in bytes."""
    has_default: bool = False
    """The field may be left out of a record; it is filled with its default."""


class FieldNotFound(KeyError):
    """A field path that the schema does not have; a :class:`KeyError` with a readable message."""

    def __init__(self, schema: str, path: str, suggestion: str | None) -> None:
        self.schema = schema
        self.path = path
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        self.message = f"{schema} has no field {path!r}{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def _without_docs(definition: object) -> object:
    """A JSON definition with every ``doc`` string of a type or a field left out (a default
    value is kept as it is, whatever keys it has)."""
    if isinstance(definition, dict):
        return {
            k: v if k == "default" else _without_docs(v)
            for k, v in definition.items()
            if k != "doc"
        }
    if isinstance(definition, list):
        return [_without_docs(item) for item in definition]
    return definition


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    """One named type of the contract, resolved and self-contained.

    ``parsed`` and ``tree`` are internal (the fastavro adapter's schema and our parsed type tree);
    they take no part in comparison.
    """

    full_name: EventType
    fingerprint: bytes
    """SHA-256 of :attr:`canonical_form` (UTF-8)."""
    canonical_form: str
    """Avro Parsing Canonical Form of the self-contained definition."""
    is_event: bool
    """The record carries ``"fxgw.event": true``."""
    fields: tuple[FieldInfo, ...]
    """Top-level fields, in schema order (empty for an enum or fixed type)."""
    doc: str | None
    parsed: _avro.ParsedSchema = dataclasses.field(compare=False, repr=False)
    tree: _Type = dataclasses.field(compare=False, repr=False)
    format: int = 1
    """The record's ``"fxgw.format"`` attribute (1 when absent)."""
    definition_digest: str = ""
    """SHA-256 (hex) of the file that defines the type, as JSON with sorted keys and without
    its ``doc`` strings: unlike the fingerprint, it covers defaults, aliases, logical types,
    ``order`` and the ``fxgw.*`` attributes, all that changes how a record is read or
    exchanged, so that a released version is frozen in all of it. Taken from the file as
    written (not from our resolved form), so a later gateway computes the same digest."""

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as 64 lower-case hex digits."""
        return self.fingerprint.hex()

    @property
    def kind(self) -> str:
        """``record``, ``enum`` or ``fixed``."""
        return _kind(self.tree)

    def iter_fields(self) -> Iterator[FieldInfo]:
        """Every field at every depth, depth-first, each field before its children."""

        def walk(infos: tuple[FieldInfo, ...]) -> Iterator[FieldInfo]:
            for info in infos:
                yield info
                yield from walk(info.children)

        return walk(self.fields)

    def field(self, path: str) -> FieldInfo:
        """The field at ``path`` (``firearms[].serial_number``).

        :raises FieldNotFound: no such path (a :class:`KeyError`); the message suggests the
            closest path that exists.
        """
        paths = []
        for info in self.iter_fields():
            if info.path == path:
                return info
            paths.append(info.path)
        close = difflib.get_close_matches(path, paths, n=1)
        raise FieldNotFound(self.full_name, path, close[0] if close else None)


# --- loading -------------------------------------------------------------------------------------


class _Problem(Exception):
    """A defect in a schema definition; ``needle`` is a JSON string to find the line by."""

    def __init__(self, message: str, *, source: str, needle: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.needle = needle


def _as_object(value: object) -> Mapping[str, object] | None:
    if isinstance(value, dict):
        return cast("dict[str, object]", value)
    return None


def _as_list(value: object) -> list[object] | None:
    if isinstance(value, list):
        return cast("list[object]", value)
    return None


def _check_defaults(record: _Record) -> None:
    for field in record.fields:
        if not field.has_default:
            continue
        try:
            _default_value(field.type, field.default)
        except ValueError as exc:
            raise _Problem(
                f"{record.name}, field {field.name}: invalid default: {exc}",
                source=record.source,
                needle=field.name,
            ) from exc


def _parse_sources(
    sources: list[tuple[str, object]],
    *,
    expected_names: Mapping[str, str] | None = None,
) -> dict[str, Schema]:
    """Build a :class:`Schema` for every named type defined by ``sources`` (label, JSON).

    Parsing, with named types across files, is the Apache ``avro`` package's: the reference
    implementation refuses what fastavro lets through (a field or a type defined twice, two
    union branches of one type, a union in a union, a bad name or size). What is ours: the
    order of the files (a file may use a type another file defines, in either direction), the
    file naming rule, the logical types we refuse, field names, defaults, and the messages.

    :raises _Problem: the first defect found.
    """
    for source, definition in sources:
        body = _as_object(definition)
        if body is None or body.get("type") not in _NAMED_KINDS:
            raise _Problem(
                "a schema file must hold one named type (a JSON object whose type is record, enum "
                "or fixed)",
                source=source,
            )
    for source, definition in sources:
        refused = _unsupported_logical(definition)
        if refused is not None:
            raise _Problem(
                f"logical type {refused!r} is not supported by the gateway; carry the value as"
                " a string",
                source=source,
                needle=refused,
            )
    try:
        parsed, origin = _avro.parse_named(sources)
    except _avro.ParseFailure as exc:
        raise _Problem(exc.message, source=exc.source, needle=exc.needle) from exc
    if expected_names is not None:
        for source, full in parsed:
            if expected_names[source] != full:
                raise _Problem(
                    f"the file defines {full} but is named {expected_names[source]}.avsc; name "
                    f"the file {full}.avsc",
                    source=source,
                    needle=full.rpartition(".")[2],
                )
    tree = _Tree(origin)
    for name in origin:
        tree.named(name)
    files = dict(sources)
    schemas: dict[str, Schema] = {}
    for full, node in tree.built.items():
        if isinstance(node, _Record):
            _check_defaults(node)
        schemas[full] = _make_schema(node, _digest_of(files.get(node.source)))
    return schemas


def _digest_of(definition: object) -> str:
    """:attr:`Schema.definition_digest` of a file's JSON definition."""
    text = json.dumps(_without_docs(definition), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _unsupported_logical(definition: object) -> str | None:
    """The first logical type of ``definition`` the gateway refuses (before ``avro`` judges
    the type's other attributes)."""
    if isinstance(definition, list):
        return next((r for d in definition if (r := _unsupported_logical(d))), None)
    if isinstance(definition, dict):
        logical = definition.get("logicalType")
        if logical in _UNSUPPORTED_LOGICAL:
            return str(logical)
        return next(
            (r for v in definition.values() if (r := _unsupported_logical(v)) is not None), None
        )
    return None


class _Tree:
    """Our type tree, built from the Apache ``avro`` package's parsed schemas."""

    def __init__(self, origin: Mapping[str, tuple[str, _avro.NamedAvroSchema]]) -> None:
        self.origin = origin
        """Full name -> (the file that defines it, its parsed schema)."""
        self.built: dict[str, _Named] = {}

    def node(self, schema: _avro.AvroSchema, where: str, source: str) -> _Type:
        kind, parts = _avro.describe(schema)
        if kind == "union":
            branches = cast("list[_avro.AvroSchema]", parts["branches"])
            return _Union(tuple(self.node(b, where, source) for b in branches))
        if kind == "array":
            items = cast("_avro.AvroSchema", parts["items"])
            return _Array(self.node(items, f"{where} items", source))
        if kind == "map":
            values = cast("_avro.AvroSchema", parts["values"])
            return _Map(self.node(values, f"{where} values", source))
        if kind in _NAMED_KINDS or kind == "error":
            return self.named(str(parts["name"]))
        logical = parts.get("logical")
        if logical in _UNSUPPORTED_LOGICAL:
            raise _Problem(
                f"{where}: logical type {logical!r} is not supported by the gateway; "
                "carry the value as a string",
                source=source,
                needle=str(logical),
            )
        if isinstance(logical, str) and (kind, logical) in _LOGICAL:
            return _Logical(_LOGICAL[(kind, logical)], kind)
        return _Primitive(kind)

    def named(self, full: str) -> _Named:
        if full in self.built:
            return self.built[full]
        source, schema = self.origin[full]
        kind, parts = _avro.describe(schema)
        short = full.rpartition(".")[2]
        doc = cast("str | None", parts["doc"])
        aliases = cast("tuple[str, ...]", parts["aliases"])
        node: _Named
        if kind == "enum":
            symbols = cast("tuple[str, ...]", parts["symbols"])
            node = _Enum(full, source, doc, aliases, symbols, cast("str | None", parts["default"]))
        elif kind == "fixed":
            node = _Fixed(full, source, doc, aliases, cast(int, parts["size"]))
        elif kind == "error":
            raise _Problem(
                f"{full}: type 'error' belongs to Avro protocols; use 'record'",
                source=source,
                needle="error",
            )
        else:
            attributes = cast("dict[str, object]", parts["attributes"])
            if not isinstance(attributes.get(EVENT_ATTRIBUTE, False), bool):
                raise _Problem(
                    f"{full}: {EVENT_ATTRIBUTE!r} must be true or false",
                    source=source,
                    needle=EVENT_ATTRIBUTE,
                )
            record = _Record(full, source, doc, aliases, attributes)
            self.built[full] = record  # before the fields: they may refer back to the record
            for field in cast("list[_avro.AvroField]", parts["fields"]):
                name, field_type, info = _avro.describe_field(field)
                if not _NAME_RE.fullmatch(name):
                    raise _Problem(
                        f"{full}: field name {json.dumps(name)} must match [A-Za-z_][A-Za-z0-9_]*",
                        source=source,
                        needle=name or short,
                    )
                record.fields.append(
                    _Field(
                        name=name,
                        type=self.node(field_type, f"{full}, field {name}", source),
                        doc=cast("str | None", info["doc"]),
                        aliases=cast("tuple[str, ...]", info["aliases"]),
                        has_default=bool(info["has_default"]),
                        default=info["default"],
                    )
                )
            return record
        self.built[full] = node
        return node


def _make_schema(node: _Named, definition_digest: str) -> Schema:
    definition = _fastavro_definition(node, set())
    try:
        parsed = _avro.parse(definition)
        canonical = _avro.canonical_form(definition)
    except SchemaError as exc:
        raise _Problem(exc.message, source=node.source, needle=node.name) from exc
    is_event = isinstance(node, _Record) and node.attributes.get(EVENT_ATTRIBUTE) is True
    wire_format = node.attributes.get(FORMAT_ATTRIBUTE, 1) if isinstance(node, _Record) else 1
    if type(wire_format) is not int or not 0 < wire_format < 64:
        raise _Problem(
            f"{node.name}: {FORMAT_ATTRIBUTE} must be an integer from 1 to 63",
            source=node.source,
            needle=FORMAT_ATTRIBUTE,
        )
    return Schema(
        full_name=EventType(node.name),
        fingerprint=hashlib.sha256(canonical.encode("utf-8")).digest(),
        canonical_form=canonical,
        is_event=is_event,
        fields=_field_infos(node, "", (node.name,)) if isinstance(node, _Record) else (),
        doc=node.doc,
        parsed=parsed,
        tree=node,
        format=wire_format,
        definition_digest=definition_digest,
    )


def _line_of(text: str, needle: str | None) -> int | None:
    """The line of the first ``"name": "<needle>"`` in ``text``, else of ``"<needle>"``."""
    if needle is None:
        return None
    quoted = json.dumps(needle)
    found = re.search(r'"name"\s*:\s*' + re.escape(quoted), text)
    index = found.start() if found else text.find(quoted)
    return None if index < 0 else text.count("\n", 0, index) + 1


def parsing_canonical_form(definition: object) -> str:
    """The Avro Parsing Canonical Form of one self-contained schema definition (parsed JSON),
    as fastavro computes it (full names, only the attributes that matter for parsing, a named
    type written out at its first use; logical types, docs, defaults, aliases and custom
    attributes dropped).

    :raises SchemaError: the definition is not a valid schema.
    """
    return _avro.canonical_form(cast(_avro.Definition, definition))


def _fastavro_definition(node: _Type, seen: set[str]) -> _avro.Definition:
    """The self-contained definition handed to fastavro (and to the compatibility checker):
    what encoding and schema resolution need (types, names, aliases, defaults), no docs."""
    if isinstance(node, _Primitive):
        return node.kind
    if isinstance(node, _Logical):
        return {"type": node.base, "logicalType": node.kind}
    if isinstance(node, _Array):
        return {"type": "array", "items": _fastavro_definition(node.items, seen)}
    if isinstance(node, _Map):
        return {"type": "map", "values": _fastavro_definition(node.values, seen)}
    if isinstance(node, _Union):
        return [_fastavro_definition(branch, seen) for branch in node.branches]
    if node.name in seen:
        return node.name
    seen.add(node.name)
    named: dict[str, object] = {"name": node.name}
    if node.aliases:
        named["aliases"] = list(node.aliases)
    if isinstance(node, _Enum):
        named.update(type="enum", symbols=list(node.symbols))
        if node.default is not None:
            named["default"] = node.default
        return named
    if isinstance(node, _Fixed):
        return {"type": "fixed", **named, "size": node.size}
    fields: list[object] = []
    for field in node.fields:
        entry: dict[str, object] = {
            "name": field.name,
            "type": _fastavro_definition(field.type, seen),
        }
        if field.aliases:
            entry["aliases"] = list(field.aliases)
        if field.has_default:
            entry["default"] = field.default
        fields.append(entry)
    return {"type": "record", **named, "fields": fields}


# --- field descriptions --------------------------------------------------------------------------


def _kind(node: _Type) -> str:
    if isinstance(node, _Primitive | _Logical):
        return node.kind
    if isinstance(node, _Array):
        return "array"
    if isinstance(node, _Map):
        return "map"
    if isinstance(node, _Union):
        return "union"
    if isinstance(node, _Record):
        return "record"
    if isinstance(node, _Enum):
        return "enum"
    return "fixed"


def _type_name(node: _Type) -> str:
    """A named type's full name, else :func:`_kind`."""
    return node.name if isinstance(node, _Record | _Enum | _Fixed) else _kind(node)


def _is_null(node: _Type) -> bool:
    return isinstance(node, _Primitive) and node.kind == "null"


def _unwrap_nullable(node: _Type) -> tuple[_Type, bool]:
    """The type without its ``null`` branch, and whether there was one."""
    if not isinstance(node, _Union):
        return node, _is_null(node)
    rest = tuple(branch for branch in node.branches if not _is_null(branch))
    nullable = len(rest) != len(node.branches)
    if len(rest) == 1:
        return rest[0], nullable
    if not rest and nullable:
        return _Primitive("null"), True
    return _Union(rest), nullable


def _field_infos(record: _Record, prefix: str, stack: tuple[str, ...]) -> tuple[FieldInfo, ...]:
    return tuple(_field_info(field, f"{prefix}{field.name}", stack) for field in record.fields)


def _field_info(field: _Field, path: str, stack: tuple[str, ...]) -> FieldInfo:
    inner, nullable = _unwrap_nullable(field.type)
    item_kind: str | None = None
    item_nullable = False
    if isinstance(inner, _Array | _Map):
        item, item_nullable = _unwrap_nullable(
            inner.items if isinstance(inner, _Array) else inner.values
        )
        item_kind = _kind(item)
        marker = "[]" if isinstance(inner, _Array) else "{}"
        children, symbols, type_name, size = _details(item, path + marker, stack)
    else:
        children, symbols, type_name, size = _details(inner, path, stack)
    return FieldInfo(
        path=path,
        name=field.name,
        kind=_kind(inner),
        nullable=nullable,
        doc=field.doc,
        children=children,
        item_kind=item_kind,
        item_nullable=item_nullable,
        symbols=symbols,
        type_name=type_name,
        size=size,
        has_default=field.has_default,
    )


def _details(
    node: _Type, path: str, stack: tuple[str, ...]
) -> tuple[tuple[FieldInfo, ...], tuple[str, ...], str | None, int | None]:
    """Children, symbols, type name and size of a (non-null) type, following nested containers."""
    if isinstance(node, _Record):
        # A recursive type would describe itself forever; its repetition gets no children.
        children: tuple[FieldInfo, ...] = (
            () if node.name in stack else _field_infos(node, path + ".", (*stack, node.name))
        )
        return children, (), node.name, None
    if isinstance(node, _Enum):
        return (), node.symbols, node.name, None
    if isinstance(node, _Fixed):
        return (), (), node.name, node.size
    if isinstance(node, _Array | _Map):
        item, _ = _unwrap_nullable(node.items if isinstance(node, _Array) else node.values)
        return _details(item, path + ("[]" if isinstance(node, _Array) else "{}"), stack)
    return (), (), None, None


# --- checking and converting records -------------------------------------------------------------
# Each conversion (check the Python form, read the JSON form, write it, check the ints of decoded
# data) is compiled once per record type from the type tree into nested closures, so a value costs
# no dispatch on its node's kind and builds no path. A value that does not fit raises _Bad with the
# message; every record, array and map on the way up adds its step, so that the error names the
# field (``firearms[2].calibre``) while the values that fit pay nothing for it.


class _Bad(Exception):
    """A value that does not fit: the message, and the steps to it, innermost first. Never
    leaves this module: the registry raises it as :class:`RecordInvalid`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.steps: list[str] = []

    def at(self, step: str) -> _Bad:
        self.steps.append(step)
        return self

    def invalid(self) -> RecordInvalid:
        path = ""
        for step in reversed(self.steps):  # ".name", "[2]" or "['key']"
            path += step[1:] if not path and step.startswith(".") else step
        return RecordInvalid(self.message, field=path if self.steps else None)


_Convert = Callable[[object], object]
_IMMUTABLE = (type(None), bool, int, float, str, bytes, dt.date, dt.time, uuid.UUID)


def _same(value: object) -> object:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _Mode:
    """One conversion. A *checking* mode (the Python form, the JSON form read) checks every
    value, fills in defaults and refuses unknown and missing fields; a trusting one (the JSON
    form written, the ints of decoded data) takes what a decode gave, and a part that it would
    leave as it is compiles to None."""

    leaf: Callable[[_Type, bool], _Convert | None]
    """A primitive, logical, enum or fixed type's conversion (given whether null is allowed,
    for the message), or None to keep the value."""
    checking: bool
    rebuild: bool = True
    """Records come out as new dicts (else the value itself, only checked)."""


def _compile(
    node: _Type, mode: _Mode, records: dict[tuple[int, int], list[_Convert]], or_null: bool = False
) -> _Convert | None:
    """``node``'s conversion in ``mode``; ``records``: the record types under way, whose
    recursive references go through the record's cell."""
    if isinstance(node, _Union) and mode is _DEFAULT:
        return _first_branch(node, mode, records)
    if isinstance(node, _Union):
        rest, nullable = _unwrap_nullable(node)
        if isinstance(rest, _Union):
            return _compile_union(node, rest, mode, records, nullable)
        inner = _compile(rest, mode, records, or_null=nullable)
        if inner is None or not nullable:
            return inner
        return lambda value: None if value is None else inner(value)
    if isinstance(node, _Array | _Map):
        items = _compile(node.items if isinstance(node, _Array) else node.values, mode, records)
        if items is None and not mode.checking:
            return None
        return (_array if isinstance(node, _Array) else _map)(node, items or _same, or_null)
    if isinstance(node, _Record):
        return _compile_record(node, mode, records, or_null)
    return mode.leaf(node, or_null)


def _array(node: _Array | _Map, convert: _Convert, or_null: bool) -> _Convert:
    def convert_array(value: object) -> object:
        if not isinstance(value, list):
            raise _mismatch(node, value, or_null)
        items = cast("list[object]", value)
        try:
            return [convert(item) for item in items]
        except _Bad:
            for i, item in enumerate(items):  # once more, to find the first that does not fit
                try:
                    convert(item)
                except _Bad as bad:
                    raise bad.at(f"[{i}]") from None
            raise

    return convert_array


def _map(node: _Array | _Map, convert: _Convert, or_null: bool) -> _Convert:
    def convert_map(value: object) -> object:
        if not isinstance(value, Mapping):
            raise _mismatch(node, value, or_null)
        out: dict[str, object] = {}
        for key, item in cast("Mapping[object, object]", value).items():
            if not isinstance(key, str):
                raise _Bad(f"map keys must be strings, got {_describe(key)}")
            try:
                out[key] = convert(item)
            except _Bad as bad:
                raise bad.at(f"[{key!r}]") from None
        return out

    return convert_map


def _compile_union(
    node: _Union,
    rest: _Union,
    mode: _Mode,
    records: dict[tuple[int, int], list[_Convert]],
    or_null: bool,
) -> _Convert | None:
    """A union of several non-null types: checked, the first branch that takes the value; written
    as JSON, the first whose check passes; in decoded data, not looked into (which branch a
    value was written with is not known after decoding)."""
    if mode is _INTS:
        return None
    test = _CONFORM if mode is _TO_JSON else mode
    branches = [
        (
            _compile(b, test, records) or _same,
            (_compile(b, mode, records) or _same) if mode is _TO_JSON else None,
        )
        for b in rest.branches
    ]

    def convert_union(value: object) -> object:
        if value is None and or_null:
            return None
        for check, write in branches:
            try:
                checked = check(value)
            except _Bad:
                continue
            return checked if write is None else write(value)
        if mode is _TO_JSON and isinstance(value, float):
            _finite(value)  # not a finite number: ValueError, as anywhere else in to_json
        raise _mismatch(node, value, False)

    return convert_union


def _first_branch(
    node: _Union, mode: _Mode, records: dict[tuple[int, int], list[_Convert]]
) -> _Convert:
    """A union's default: a value of its first branch (the Avro spec's rule)."""
    if not node.branches:
        return lambda value: _refuse(node, value, False)
    convert = _compile(node.branches[0], mode, records) or _same

    def convert_default(value: object) -> object:
        try:
            return convert(value)
        except _Bad:
            raise _Bad(
                f"a union's default must be a value of its first branch "
                f"({_expected(node.branches[0])}); for a nullable field put 'null' first and "
                "default to null"
            ) from None

    return convert_default


def _compile_record(
    node: _Record, mode: _Mode, records: dict[tuple[int, int], list[_Convert]], or_null: bool
) -> _Convert | None:
    key = (id(node), id(mode))
    under_way = records.get(key)
    if under_way is not None:
        return lambda value: under_way[0](value)
    cell: list[_Convert] = [_same]
    records[key] = cell
    fields = [(field, _compile(field.type, mode, records)) for field in node.fields]
    del records[key]
    if not mode.checking:
        if not mode.rebuild and all(convert is None for _, convert in fields):
            return None
        taken = [(field.name, convert or _same) for field, convert in fields]
        cell[0] = functools.partial(_taken, taken, mode.rebuild)
        return cell[0]
    checked = [
        (field.name, convert or _same, _default_of(field, mode), _expected(field.type))
        for field, convert in fields
    ]

    def convert_record(value: object) -> object:
        if not isinstance(value, dict) and not isinstance(value, Mapping):
            raise _mismatch(node, value, or_null)
        given = cast("Mapping[str, object]", value)
        out: dict[str, object] = {}
        found = 0
        for name, convert, default, expected in checked:
            if name in given:
                try:
                    out[name] = convert(given[name])
                except _Bad as bad:
                    raise bad.at("." + name) from None
                found += 1
            elif default is not None:
                out[name] = default()
            else:
                raise _Bad(f"missing required field (expected {expected})").at("." + name)
        if found != len(given):
            unknown = next(str(key) for key in given if key not in out)
            raise _Bad(f"unknown field: {node.name} has no such field").at("." + unknown)
        return out

    cell[0] = convert_record
    return convert_record


def _taken(fields: list[tuple[str, _Convert]], rebuild: bool, value: object) -> object:
    """A record of decoded data, its fields converted (or only checked, without ``rebuild``)."""
    record = cast("dict[str, object]", value)
    out: dict[str, object] = {}
    for name, convert in fields:
        try:
            out[name] = convert(record[name])
        except _Bad as bad:
            raise bad.at("." + name) from None
    return out if rebuild else value


def _default_of(field: _Field, mode: _Mode) -> Callable[[], object] | None:
    """What fills in ``field`` when a record leaves it out (a fresh value each time where the
    value could be changed), or None when it has no default. Computed once, except inside a
    default itself, where it waits until needed (a recursive type's default may hold itself)."""
    if not field.has_default:
        return None
    if mode is not _DEFAULT:
        value = _default_value(field.type, field.default)
        if isinstance(value, _IMMUTABLE):
            return lambda: value
    return functools.partial(_default_value, field.type, field.default)


def _default_value(node: _Type, default: object) -> object:
    """The Python form of a schema default, given in Avro's JSON encoding of defaults (bytes as
    code points 0-255, dates as days, a union's value of its first branch).

    :raises ValueError: the default does not fit the type.
    """
    try:
        return (_compile(node, _DEFAULT, {}) or _same)(default)
    except _Bad as bad:
        raise ValueError(str(bad.invalid())) from None


# --- the leaves of each conversion ---------------------------------------------------------------


def _conform_leaf(node: _Type, or_null: bool) -> _Convert:
    """The Python form's check of a primitive, logical, enum or fixed type."""
    if isinstance(node, _Primitive):
        kind = node.kind
        if kind == "string":
            return lambda value: (
                value
                if type(value) is str and value.isascii()
                else _check_text(value)
                if isinstance(value, str)
                else _refuse(node, value, or_null)
            )
        if kind in _INT_RANGE:
            low, high = _INT_RANGE[kind]
            return lambda value: (
                value
                if type(value) is int and low <= value <= high
                else _check_range(kind, cast(int, value))
                if _is_int(value)
                else _refuse(node, value, or_null)
            )
        if kind in ("float", "double"):
            return lambda value: (
                _check_float(kind, cast(float, value))
                if _is_number(value)
                else _refuse(node, value, or_null)
            )
        if kind == "bytes":
            return lambda value: (
                bytes(value)
                if isinstance(value, bytes | bytearray)
                else _refuse(node, value, or_null)
            )
        plain = bool if kind == "boolean" else type(None)
        return lambda value: value if type(value) is plain else _refuse(node, value, or_null)
    if isinstance(node, _Logical):
        return lambda value: _conform_logical(node, value, or_null)
    if isinstance(node, _Enum):
        symbols = frozenset(node.symbols)
        return lambda value: (
            value
            if type(value) is str and value in symbols
            else _not_a_symbol(node, value, or_null)
        )
    assert isinstance(node, _Fixed)
    size = node.size
    return lambda value: (
        bytes(value)
        if isinstance(value, bytes | bytearray) and len(value) == size
        else _refuse(node, value, or_null)
    )


def _from_json_leaf(node: _Type, or_null: bool) -> _Convert:
    """The JSON form's reading of a primitive, logical, enum or fixed type."""
    if isinstance(node, _Primitive) and node.kind in ("float", "double"):
        to_float = _round_float32 if node.kind == "float" else float
        check = _conform_leaf(node, or_null)
        # a float field holds 32 bits: rounded now, so that the record round-trips
        return lambda value: to_float(cast(float, check(value)))
    if (isinstance(node, _Primitive) and node.kind == "bytes") or isinstance(node, _Fixed):
        return lambda value: _from_base64(node, value, or_null)
    if isinstance(node, _Logical):
        return lambda value: _from_json_logical(node, value, or_null)
    return _conform_leaf(node, or_null)


def _default_leaf(node: _Type, or_null: bool) -> _Convert:
    """A schema default's reading, of a primitive, logical, enum or fixed type."""
    if isinstance(node, _Fixed) or (isinstance(node, _Primitive) and node.kind == "bytes"):
        return lambda value: _from_code_points(node, value, or_null)
    if isinstance(node, _Logical):
        base = _conform_leaf(_Primitive(node.base), or_null)
        return lambda value: _from_json_logical(node, base(value), or_null)
    return _from_json_leaf(node, or_null)


def _to_json_leaf(node: _Type, or_null: bool) -> _Convert | None:
    """The JSON form written, of a primitive, logical, enum or fixed type (None: as it is)."""
    if isinstance(node, _Fixed) or (isinstance(node, _Primitive) and node.kind == "bytes"):
        return lambda value: base64.b64encode(cast(bytes, value)).decode("ascii")
    if isinstance(node, _Primitive):
        return _finite if node.kind in ("float", "double") else None
    if isinstance(node, _Logical):
        kind = node.kind
        return lambda value: _to_json_logical(kind, value)
    return None


def _int_leaf(node: _Type, or_null: bool) -> _Convert | None:
    """A plain ``int`` in decoded data: fastavro reads an Avro int as a long, so bytes may carry
    one that encode and to_json would refuse (the logical types built on int fail to decode
    when out of range instead)."""
    if isinstance(node, _Primitive) and node.kind == "int":
        low, high = _INT_RANGE["int"]
        return lambda value: (
            value if low <= cast(int, value) <= high else _check_range("int", cast(int, value))
        )
    return None


_CONFORM = _Mode(_conform_leaf, checking=True)
_FROM_JSON = _Mode(_from_json_leaf, checking=True)
_TO_JSON = _Mode(_to_json_leaf, checking=False)
_INTS = _Mode(_int_leaf, checking=False, rebuild=False)
_DEFAULT = _Mode(_default_leaf, checking=True)


# --- what the leaves check, and their messages ---------------------------------------------------


def _expected(node: _Type) -> str:
    if isinstance(node, _Union):
        inner, nullable = _unwrap_nullable(node)
        if isinstance(inner, _Union):
            names = [_expected(branch) for branch in inner.branches]
        else:
            names = [] if _is_null(inner) else [_expected(inner)]
        return " or ".join([*names, "null"] if nullable else names) or "nothing (empty union)"
    if isinstance(node, _Record):
        return f"record {node.name}"
    if isinstance(node, _Enum):
        return f"enum {node.name}"
    if isinstance(node, _Fixed):
        return f"fixed {node.name} ({node.size} bytes)"
    return _kind(node)


def _describe(value: object) -> str:
    """The type of a value, in words; never the value (messages end up in logs)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dt.datetime):
        return "naive datetime" if value.utcoffset() is None else "datetime"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def _mismatch(node: _Type, value: object, or_null: bool) -> _Bad:
    expected = _expected(node) + (" or null" if or_null else "")
    return _Bad(f"expected {expected}, got {_describe(value)}")


def _refuse(node: _Type, value: object, or_null: bool) -> NoReturn:
    raise _mismatch(node, value, or_null)


def _not_a_symbol(node: _Enum, value: object, or_null: bool) -> NoReturn:
    if isinstance(value, str):
        null = ", or null" if or_null else ""
        raise _Bad(
            f"expected one of {', '.join(node.symbols)}{null} ({node.name}), got another string"
        )
    raise _mismatch(node, value, or_null)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(kind: str, value: int) -> int:
    low, high = _INT_RANGE[kind]
    if not low <= value <= high:
        bits = 32 if kind == "int" else 64
        raise _Bad(f"expected {kind}, got an int outside the {bits}-bit range")
    return value


def _check_float(kind: str, value: int | float) -> int | float:
    try:
        as_float = float(value)
    except OverflowError:
        raise _Bad(f"expected {kind}, got an int too large for it") from None
    if not math.isfinite(as_float):
        raise _Bad("not a finite number")
    if kind == "float" and abs(as_float) > _FLOAT32_MAX:
        raise _Bad("expected float, got a number beyond 32-bit float range")
    return value


def _check_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(
            "expected string, got a string that is not valid Unicode (lone surrogate)"
        ) from None
    return value


def _conform_logical(node: _Logical, value: object, or_null: bool) -> object:
    kind = node.kind
    if kind == "date":
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
    elif kind in ("timestamp-millis", "timestamp-micros"):
        if isinstance(value, dt.datetime) and value.utcoffset() is not None:
            try:
                value.astimezone(dt.UTC)
            except OverflowError:
                raise _Bad(f"expected {kind}, got a datetime out of range") from None
            return _check_precision(kind, value, value.microsecond)
        if isinstance(value, dt.datetime):
            raise _Bad(f"expected {kind} (a timezone-aware datetime), got a naive datetime")
    elif kind in ("local-timestamp-millis", "local-timestamp-micros"):
        if isinstance(value, dt.datetime) and value.utcoffset() is None:
            return _check_precision(kind, value, value.microsecond)
    elif kind in ("time-millis", "time-micros"):
        if isinstance(value, dt.time) and value.utcoffset() is None:
            return _check_precision(kind, value, value.microsecond)
    elif isinstance(value, uuid.UUID):  # uuid
        return value
    raise _mismatch(node, value, or_null)


def _check_precision(kind: str, value: object, microsecond: int) -> object:
    if kind.endswith("-millis") and microsecond % 1000:
        raise _Bad(f"expected {kind}, got a value with sub-millisecond digits (truncate them)")
    return value


def _from_base64(node: _Type, value: object, or_null: bool) -> bytes:
    if not isinstance(value, str):
        raise _mismatch(node, value, or_null)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(
            f"expected {_expected(node)} as base64, got a string that is not base64"
        ) from None
    if isinstance(node, _Fixed) and len(data) != node.size:
        raise _Bad(f"expected {_expected(node)} as base64, got {len(data)} bytes")
    return data


def _from_code_points(node: _Type, value: object, or_null: bool) -> bytes:
    if not isinstance(value, str):
        raise _mismatch(node, value, or_null)
    try:
        data = value.encode("latin-1")
    except UnicodeEncodeError:
        raise _Bad("a bytes default is a string of code points 0-255") from None
    if isinstance(node, _Fixed) and len(data) != node.size:
        raise _Bad(f"expected {_expected(node)}, got {len(data)} bytes")
    return data


def _round_float32(value: float) -> float:
    return ctypes.c_float(value).value


_UNITS = {"millis": 1000, "micros": 1}  # microseconds per unit


def _from_json_logical(node: _Logical, value: object, or_null: bool = False) -> object:
    kind = node.kind
    try:
        if kind == "date":
            if isinstance(value, str) and _DATE_RE.fullmatch(value):
                return dt.date.fromisoformat(value)
            if _is_int(value):  # days since the epoch: the Avro form, used by schema defaults
                return dt.date(1970, 1, 1) + dt.timedelta(days=cast(int, value))
        elif kind == "uuid":
            if isinstance(value, str):
                return uuid.UUID(value)
        elif kind.startswith("time-"):
            unit = _UNITS[kind.removeprefix("time-")]
            if isinstance(value, str) and _TIME_RE.fullmatch(value):
                return _truncate(dt.time.fromisoformat(value), unit)
            if _is_int(value):
                since_midnight = dt.datetime.min + dt.timedelta(
                    microseconds=cast(int, value) * unit
                )
                if since_midnight.date() == dt.datetime.min.date():
                    return since_midnight.time()
        else:
            local = kind.startswith("local-")
            unit = _UNITS[kind.rpartition("-")[2]]
            epoch = _EPOCH_NAIVE if local else _EPOCH
            if _is_int(value):
                return epoch + dt.timedelta(microseconds=cast(int, value) * unit)
            pattern = _NAIVE_RE if local else _AWARE_RE
            if isinstance(value, str) and pattern.fullmatch(value):
                parsed = dt.datetime.fromisoformat(value)
                if not local:
                    parsed = parsed.astimezone(dt.UTC)
                return _truncate(parsed, unit)
    except (ValueError, OverflowError):
        raise _Bad(
            f"expected {_json_expected(kind)}, got an invalid or out-of-range value"
        ) from None
    null = " or null" if or_null else ""
    raise _Bad(f"expected {_json_expected(kind)}{null}, got {_describe(value)}")


def _json_expected(kind: str) -> str:
    if kind == "date":
        return "date as YYYY-MM-DD"
    if kind == "uuid":
        return "uuid as a string"
    if kind.startswith("time-"):
        return f"{kind} as HH:MM:SS[.fff]"
    if kind.startswith("local-"):
        return f"{kind} as an ISO-8601 date-time without offset, or an integer"
    return f"{kind} as an ISO-8601 date-time with Z or an offset, or an integer since the epoch"


_Clock = TypeVar("_Clock", dt.datetime, dt.time)


def _truncate(value: _Clock, unit: int) -> _Clock:
    return value.replace(microsecond=value.microsecond // unit * unit)


def _finite(value: object) -> object:
    """A float or double for the JSON form, which has no NaN and no infinities.

    :raises ValueError: the number is not finite (a peer's bytes can carry one).
    """
    if not math.isfinite(cast(float, value)):
        raise ValueError("not a finite number")
    return value


def _to_json_logical(kind: str, value: object) -> object:
    spec = "milliseconds" if kind.endswith("-millis") else "microseconds"
    if isinstance(value, dt.datetime):
        if kind.startswith("local-"):
            return value.isoformat(timespec=spec)
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"
    if isinstance(value, dt.date | dt.time):
        return value.isoformat() if isinstance(value, dt.date) else value.isoformat(timespec=spec)
    return str(value)  # uuid


_Step = str | None
"""A field name, or None for every item of a list (or value of a map)."""


@functools.cache
def _filled_in(reader: _Record, writer: _Record) -> tuple[tuple[tuple[_Step, ...], _Field], ...]:
    """Where resolving ``writer``'s data to ``reader`` fills in defaults: the steps down to a
    record, and the reader's field there that the writer lacks."""
    found: list[tuple[tuple[_Step, ...], _Field]] = []

    def walk(r: _Type, w: _Type, steps: tuple[_Step, ...], seen: frozenset[int]) -> None:
        r, _ = _unwrap_nullable(r)
        w, _ = _unwrap_nullable(w)
        if isinstance(r, _Array | _Map) and isinstance(w, _Array | _Map):
            walk(
                r.items if isinstance(r, _Array) else r.values,
                w.items if isinstance(w, _Array) else w.values,
                (*steps, None),
                seen,
            )
        elif isinstance(r, _Record) and isinstance(w, _Record) and id(r) not in seen:
            written = {f.name: f for f in w.fields}
            for field in r.fields:
                source = written.get(field.name) or next(
                    (written[a] for a in field.aliases if a in written), None
                )
                if source is None:
                    found.append((steps, field))
                else:
                    walk(field.type, source.type, (*steps, field.name), seen | {id(r)})

    walk(reader, writer, (), frozenset())
    return tuple(found)


def _put_default(value: object, steps: tuple[_Step, ...], field: _Field) -> None:
    if not steps:
        if isinstance(value, dict):
            value[field.name] = _default_value(field.type, field.default)
        return
    step, rest = steps[0], steps[1:]
    if step is None:
        items = (
            value if isinstance(value, list) else value.values() if isinstance(value, dict) else ()
        )
        for item in items:
            _put_default(item, rest, field)
    elif isinstance(value, dict) and value.get(step) is not None:
        _put_default(value[step], rest, field)


class _Compiled:
    """A record type's conversions, compiled on first use."""

    __slots__ = ("check_ints", "conform", "from_json", "to_json")

    def __init__(self, node: _Record) -> None:
        self.conform = cast(_Convert, _compile(node, _CONFORM, {}))
        self.from_json = cast(_Convert, _compile(node, _FROM_JSON, {}))
        self.to_json = cast(_Convert, _compile(node, _TO_JSON, {}))
        self.check_ints = _compile(node, _INTS, {})


def _run(convert: _Convert, value: object) -> dict[str, object]:
    try:
        return cast("dict[str, object]", convert(value))
    except _Bad as bad:
        raise bad.invalid() from None


# --- the registry --------------------------------------------------------------------------------


class SchemaRegistry:
    """Every named type of the contract, by full name and by fingerprint; encode and decode.

    Immutable after construction; safe to share between threads.
    """

    __slots__ = ("_by_fingerprint", "_by_name", "_compiled", "_layouts")

    def __init__(self, schemas: Iterable[Schema]) -> None:
        """Index ``schemas`` (normally use :meth:`load`).

        :raises ValueError: two schemas share a full name.
        """
        self._by_name: dict[str, Schema] = {}
        self._by_fingerprint: dict[bytes, Schema] = {}
        self._compiled: dict[str, _Compiled] = {}  # built on first use; the same each time
        self._layouts: dict[str, tuple[tuple[str, str], ...]] = {}  # likewise
        for schema in schemas:
            if schema.full_name in self._by_name:
                raise ValueError(f"two schemas are named {schema.full_name}")
            self._by_name[schema.full_name] = schema
            self._by_fingerprint[schema.fingerprint] = schema

    @classmethod
    def load(cls, directory: Path) -> SchemaRegistry:
        """Load every ``*.avsc`` file of ``directory`` and resolve references between them.

        Every file must hold one named type and be called ``<full name>.avsc``; references
        between files may go in any direction. Defaults are checked against their types.

        :raises SchemaError: the folder is missing or empty, or a file is unreadable, is not
            JSON, is not a valid schema, refers to an unknown type, defines a type twice, or has a
            default that does not fit its field. The error names the file and, where it can, the
            line.
        """
        if not directory.is_dir():
            raise SchemaError(
                "schema folder not found (point the gateway at the federation's schemas/avro)",
                file=str(directory),
            )
        paths = sorted(directory.glob("*.avsc"))
        if not paths:
            raise SchemaError("no .avsc files in the schema folder", file=str(directory))
        texts: dict[str, str] = {}
        sources: list[tuple[str, object]] = []
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SchemaError(f"cannot read the schema file: {exc}", file=str(path)) from exc
            try:
                definition = cast(object, json.loads(text))
            except json.JSONDecodeError as exc:
                raise SchemaError(
                    f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(path), line=exc.lineno
                ) from exc
            texts[str(path)] = text
            sources.append((str(path), definition))
        expected = {str(path): path.name.removesuffix(".avsc") for path in paths}
        try:
            schemas = _parse_sources(sources, expected_names=expected)
        except _Problem as exc:
            line = _line_of(texts.get(exc.source, ""), exc.needle)
            raise SchemaError(exc.message, file=exc.source, line=line) from exc
        return cls(schemas.values())

    @classmethod
    def from_definitions(cls, definitions: Mapping[str, object]) -> SchemaRegistry:
        """Build a registry from parsed JSON definitions, keyed by a label used in errors.

        Each definition is one named type, as in a file; file names are not checked.

        :raises SchemaError: as :meth:`load`, naming the label.
        """
        try:
            schemas = _parse_sources(list(definitions.items()))
        except _Problem as exc:
            raise SchemaError(exc.message, file=exc.source) from exc
        return cls(schemas.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Schema]:
        return iter(self._by_name[name] for name in sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> tuple[EventType, ...]:
        """Full names of every named type, sorted."""
        return tuple(EventType(name) for name in sorted(self._by_name))

    @property
    def event_types(self) -> tuple[EventType, ...]:
        """Full names of the domain event types (records with ``"fxgw.event": true``), sorted."""
        return tuple(
            EventType(name) for name in sorted(self._by_name) if self._by_name[name].is_event
        )

    def get(self, name: str) -> Schema:
        """The schema with full name ``name``.

        :raises UnknownEventType: the contract defines no type of that name.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownEventType(f"the contract defines no type {name!r}") from None

    def by_fingerprint(self, fingerprint: bytes) -> Schema:
        """The schema whose fingerprint is ``fingerprint`` (32 bytes).

        :raises UnknownEventType: no schema has that fingerprint (another version of the
            contract, or garbage).
        """
        try:
            return self._by_fingerprint[fingerprint]
        except KeyError:
            raise UnknownEventType(
                f"no schema in the contract has fingerprint {fingerprint.hex()}"
            ) from None

    def _compiled_for(self, name: str) -> _Compiled:
        compiled = self._compiled.get(name)
        if compiled is None:
            _, node = self._record(name)
            compiled = self._compiled[name] = _Compiled(node)
        return compiled

    def _record(self, name: str) -> tuple[Schema, _Record]:
        schema = self.get(name)
        if not isinstance(schema.tree, _Record):
            raise UnknownEventType(f"{name} is an Avro {schema.kind}, not a record type")
        return schema, schema.tree

    def validate(self, name: str, record: Mapping[str, object]) -> dict[str, object]:
        """Check ``record`` against the record type ``name``; return it with defaults filled in.

        :raises UnknownEventType: no record type of that name.
        :raises RecordInvalid: the record does not conform; ``field`` names the first bad field.
        """
        return _run(self._compiled_for(name).conform, record)

    def encode(self, name: str, record: Mapping[str, object]) -> bytes:
        """Validate ``record`` and encode it with Avro's binary encoding (no framing, no header).

        :raises UnknownEventType: no record type of that name.
        :raises RecordInvalid: the record does not conform; ``field`` names the first bad field
            (``firearms[2].calibre``), the message what was expected.
        """
        return _avro.write(self.get(name).parsed, self.validate(name, record))

    def write(self, name: str, record: Mapping[str, object]) -> bytes:
        """Encode a record that conforms already (just decoded, or built by our own code from
        conforming values), without :meth:`encode`'s check; fastavro's writer still refuses a
        value of the wrong type.

        :raises UnknownEventType: no record type of that name.
        :raises RecordInvalid: fastavro refuses the record (no field is named).
        """
        schema, _ = self._record(name)
        return _avro.write(schema.parsed, record)

    def decode(self, name: str, data: bytes, writer: Schema | None = None) -> dict[str, object]:
        """Decode bytes written by :meth:`encode` with the same schema, or with ``writer`` (the
        same type in another version of the contract), resolved to this registry's type. The
        record returned is one encode and to_json accept.

        :raises UnknownEventType: no record type of that name.
        :raises RecordInvalid: the bytes are truncated, have trailing bytes, do not decode, or
            carry an ``int`` beyond 32 bits (reason ``schema_invalid``).
        """
        schema = self.get(name)
        compiled = self._compiled_for(name)
        if writer is not None and writer.fingerprint != schema.fingerprint:
            datum = _avro.read(writer.parsed, data, schema.parsed)
            if isinstance(writer.tree, _Record) and isinstance(datum, dict):
                # fastavro fills a field the writer lacks with the default as written in the
                # schema (JSON); ours is the Python form
                for steps, field in _filled_in(cast(_Record, schema.tree), writer.tree):
                    _put_default(datum, steps, field)
        else:
            datum = _avro.read(schema.parsed, data)
        return self._checked(compiled, datum)

    def decode_prefix(self, name: str, data: bytes) -> tuple[dict[str, object], int]:
        """Decode a record of this registry's type from the start of ``data``, as :meth:`decode`
        does; the record and the offset where its bytes end (what follows is the caller's).

        :raises UnknownEventType: no record type of that name.
        :raises RecordInvalid: the bytes are truncated, do not decode, or carry an ``int``
            beyond 32 bits.
        """
        compiled = self._compiled_for(name)
        datum, end = _avro.read_prefix(self.get(name).parsed, data)
        return self._checked(compiled, datum), end

    def layout(self, name: str) -> tuple[tuple[str, str], ...]:
        """The fields of record type ``name`` in order, each with its type: the full name of a
        named type, the name of a primitive type, else its kind (``union``, ``array``, ...).

        :raises UnknownEventType: no record type of that name.
        """
        layout = self._layouts.get(name)
        if layout is None:
            _, node = self._record(name)
            layout = self._layouts[name] = tuple((f.name, _type_name(f.type)) for f in node.fields)
        return layout

    @staticmethod
    def _checked(compiled: _Compiled, datum: object) -> dict[str, object]:
        if not isinstance(datum, dict):
            raise RecordInvalid(f"bytes decode to {_describe(datum)}, not a record")
        if compiled.check_ints is not None:
            _run(compiled.check_ints, datum)
        return cast("dict[str, object]", datum)

    def from_json(self, name: str, obj: Mapping[str, object]) -> dict[str, object]:
        """Convert the national system's JSON form of a record to the Python form.

        See the module docstring for the JSON form. Missing fields with a default are filled in.

        :raises UnknownEventType: no record type of that name.
        :raises RecordInvalid: a value does not fit its field (wrong type, bad date string, enum
            symbol unknown, unknown or missing field); ``field`` names it.
        """
        return _run(self._compiled_for(name).from_json, obj)

    def to_json(self, name: str, record: Mapping[str, object]) -> dict[str, object]:
        """The JSON form of a record (json.dumps can write it): ISO dates, UTC ``Z`` timestamps,
        base64 bytes.

        :raises UnknownEventType: no record type of that name.
        :raises RecordInvalid: the record does not conform (it is validated first).
        """
        return self.to_json_decoded(name, self.validate(name, record))

    def to_json_decoded(self, name: str, record: Mapping[str, object]) -> dict[str, object]:
        """:meth:`to_json` of a record just decoded with this registry (so it conforms, and is
        not checked again).

        :raises UnknownEventType: no record type of that name.
        """
        return _run(self._compiled_for(name).to_json, record)
