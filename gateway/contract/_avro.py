"""Typed adapter around fastavro, and around the Apache ``avro`` package's schema parser: the
only module of the package that imports fastavro, and the only one that parses with ``avro``.

fastavro's functions take and return loosely typed values (``Any``) and raise a zoo of exception
types (``EOFError``, ``IndexError``, ``UnicodeDecodeError``, ``OverflowError``, ...). This module
gives the rest of the package a small typed surface and translates every fastavro failure into
one of our errors at the boundary, chained to the original:

- :func:`parse` turns a self-contained schema definition into an opaque :class:`ParsedSchema`
  (a fastavro failure is a :class:`~gateway.errors.SchemaError`);
- :func:`write` and :func:`read` encode and decode one datum with Avro's binary encoding and no
  framing (a failure is a :class:`~gateway.errors.RecordInvalid`);
- :func:`problems` is fastavro's own validation, returned as messages;
- :func:`canonical_form` is fastavro's Parsing Canonical Form (fingerprints are its SHA-256).

- :func:`parse_named` parses the files of a contract version with ``avro`` (strict: it is the
  reference implementation) and :func:`describe` / :func:`describe_field` read its schemas back
  as plain values, so that no other module depends on its classes.

Nothing here knows about the federation's schemas; :mod:`gateway.contract.schemas` decides what
to call.
"""

from __future__ import annotations

import difflib
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import avro.errors
import avro.name
import avro.schema
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form
from fastavro.types import Schema as _FastavroSchema
from fastavro.validation import ValidationError, validate

from gateway.errors import RecordInvalid, SchemaError

__all__ = [
    "ParseFailure",
    "ParsedSchema",
    "canonical_form",
    "describe",
    "describe_field",
    "parse",
    "parse_named",
    "problems",
    "read",
    "write",
]

AvroSchema = avro.schema.Schema
NamedAvroSchema = avro.schema.NamedSchema
AvroField = avro.schema.Field
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_UNRESOLVED = re.compile(r"Could not make an Avro Schema object from ([A-Za-z_][A-Za-z0-9_.]*)")
_TAKEN = re.compile(r'The name "([^"]+)" is already in use')

Definition = str | list[object] | dict[str, object]
"""A schema definition as JSON: a type name, a union (list) or a complex type (object)."""


@dataclass(frozen=True, slots=True, eq=False)
class ParsedSchema:
    """A schema parsed by fastavro; opaque outside this module.

    Compared by identity: two parses of one definition are different objects, and the parsed
    form holds unhashable dicts.
    """

    definition: Definition
    """The definition it was parsed from (self-contained: every named type defined inline)."""
    _parsed: _FastavroSchema


def parse(definition: Definition) -> ParsedSchema:
    """Parse a self-contained schema definition (no references to types defined elsewhere).

    :raises SchemaError: fastavro cannot parse the definition (no file is named; the caller
        knows which file it came from).
    """
    try:
        # named_schemas starts empty for every call, so no definition leaks into another.
        parsed = parse_schema(definition, named_schemas={})
    except Exception as exc:
        # fastavro raises SchemaParseException, UnknownType, KeyError, TypeError, ... for a bad
        # definition; all of them mean the same thing to us.
        raise SchemaError(f"fastavro cannot parse the schema: {exc!r}") from exc
    return ParsedSchema(definition=definition, _parsed=parsed)


def write(schema: ParsedSchema, datum: object) -> bytes:
    """Encode ``datum`` with Avro's binary encoding (no header, no schema id).

    The datum is expected to conform already (:mod:`gateway.contract.schemas` validates first, with
    better messages); this is the last line of defence.

    :raises RecordInvalid: fastavro refuses the datum.
    """
    buffer = io.BytesIO()
    try:
        schemaless_writer(buffer, schema._parsed, datum)
    except Exception as exc:
        # fastavro signals a non-conforming datum with ValueError, TypeError, AttributeError,
        # struct.error, OverflowError, ... depending on the type and on the compiled module.
        # Only the exception's type: fastavro's messages may quote the value, and ours end up in
        # logs that must hold no payload. The chained exception keeps the details.
        raise RecordInvalid(f"cannot be encoded ({type(exc).__name__})") from exc
    return buffer.getvalue()


def read(schema: ParsedSchema, data: bytes, reader: ParsedSchema | None = None) -> object:
    """Decode one datum written by :func:`write` with ``schema``; all bytes must be used. With
    ``reader``, the datum is resolved to that schema (Avro schema resolution: fields the writer
    lacks take the reader's defaults, fields the reader lacks are skipped).

    :raises RecordInvalid: the bytes are truncated, carry trailing garbage, or do not decode
        with this schema (bad union index, bad enum index, invalid UTF-8, date out of range, ...).
    """
    datum, end = read_prefix(schema, data, reader)
    left = len(data) - end
    if left:
        raise RecordInvalid(f"bytes do not decode with this schema: {left} trailing bytes")
    return datum


def read_prefix(
    schema: ParsedSchema, data: bytes, reader: ParsedSchema | None = None
) -> tuple[object, int]:
    """Decode one datum from the start of ``data``, as :func:`read` does; the datum and the
    offset where it ends (what follows is the caller's).

    :raises RecordInvalid: the bytes are truncated or do not decode with this schema.
    """
    # A plain BytesIO: fastavro (1.9, the floor in pyproject.toml, and later) refuses a string,
    # bytes or fixed value shorter than its length prefix, or with a negative one, by itself
    # (EOFError). A reader written in Python would cost a Python call per byte read: seconds
    # for a megabyte of one-byte array items.
    source = io.BytesIO(data)
    try:
        target = None if reader is None else reader._parsed
        datum = cast(object, schemaless_reader(source, schema._parsed, target))
    except Exception as exc:
        # Garbage input makes fastavro fail in many ways (EOFError, IndexError, KeyError,
        # UnicodeDecodeError, OverflowError, ValueError, MemoryError on absurd lengths, ...).
        # As in write(): no fastavro message, which may quote the bytes.
        raise RecordInvalid(f"bytes do not decode with this schema ({type(exc).__name__})") from exc
    return datum, source.tell()


def problems(schema: ParsedSchema, datum: object) -> tuple[str, ...]:
    """fastavro's own validation of ``datum``: its messages, empty when it accepts the datum."""
    try:
        validate(datum, schema._parsed, raise_errors=True, strict=True)
    except ValidationError as exc:
        return tuple(str(error) for error in cast("list[object]", exc.errors))
    return ()


def canonical_form(definition: Definition) -> str:
    """fastavro's Parsing Canonical Form of a self-contained definition (for cross-checks).

    :raises SchemaError: fastavro cannot parse the definition.
    """
    try:
        # the canonical form drops defaults: one the type does not admit (the Avro project's
        # own canonical-form vectors have a "true" string for a boolean) does not matter here
        parsed = parse_schema(definition, named_schemas={}, _ignore_default_error=True)
        return to_parsing_canonical_form(parsed)
    except Exception as exc:
        # Same family of fastavro exceptions as in parse().
        raise SchemaError(f"fastavro cannot parse the schema: {exc!r}") from exc


class ParseFailure(Exception):
    """A definition ``avro`` refuses: what, in which source, and a text to find its line by."""

    def __init__(self, message: str, source: str, needle: str | None = None) -> None:
        super().__init__(message)
        self.message, self.source, self.needle = message, source, needle


def parse_named(
    sources: Sequence[tuple[str, object]],
) -> tuple[list[tuple[str, str]], dict[str, tuple[str, NamedAvroSchema]]]:
    """Parse named-type definitions (label, JSON) that may use each other's types, in whatever
    order they come: each source's full name, and every named type defined anywhere, with the
    source defining it.

    :raises ParseFailure: a definition is invalid, uses a type nobody defines, or defines a
        type another source defines too.
    """
    names = avro.name.Names(validate_names=True)
    origin: dict[str, tuple[str, NamedAvroSchema]] = {}
    tops: list[tuple[str, str]] = []
    pending = list(sources)
    while pending:
        postponed: list[tuple[str, object]] = []
        unknown: tuple[str, object, str] | None = None
        for source, definition in pending:
            trial = avro.name.Names(validate_names=True)
            trial.names = dict(names.names)
            try:
                with warnings.catch_warnings():  # logical types are the caller's to judge
                    warnings.simplefilter("ignore", avro.errors.IgnoredLogicalType)
                    schema = avro.schema.make_avsc_object(definition, trial)
            except Exception as exc:  # avro raises SchemaParseException, InvalidName, ...
                missing = _UNRESOLVED.search(str(exc))
                if missing and missing.group(1) not in (*_PRIMITIVES, "None"):
                    postponed.append((source, definition))
                    unknown = unknown or (source, definition, missing.group(1))
                    continue
                raise _failure(exc, source, definition, origin) from exc
            for full in trial.names.keys() - names.names.keys():
                origin[full] = (source, trial.names[full])
            names = trial
            tops.append((source, str(getattr(schema, "fullname", ""))))
        if unknown is not None and len(postponed) == len(pending):
            source, definition, name = unknown
            raise ParseFailure(_unknown_type(definition, name, list(origin)), source, name)
        pending = postponed
    return tops, origin


def _failure(
    exc: Exception, source: str, definition: object, origin: dict[str, tuple[str, NamedAvroSchema]]
) -> ParseFailure:
    top = definition.get("name") if isinstance(definition, dict) else None
    text = str(exc)
    taken = _TAKEN.search(text)
    if taken:
        full = taken.group(1)
        other = origin[full][0] if full in origin else "this file"
        message = f"named type {full} is defined twice (also in {other}); keep one definition"
        return ParseFailure(message, source, full.rpartition(".")[2])
    if "from None" in text:
        return ParseFailure(f"{top}: a field or an item has no 'type'", source, None)
    return ParseFailure(f"{top}: {text}", source, str(top) if top else None)


def _unknown_type(definition: object, name: str, known: list[str]) -> str:
    """Where ``name`` is used in ``definition``, and the closest known name."""
    where = _user_of(definition, name) or str(
        definition.get("name") if isinstance(definition, dict) else "schema"
    )
    close = difflib.get_close_matches(name, [*known, *sorted(_PRIMITIVES)], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"{where}: unknown type {name!r}: not a primitive type, and no schema in the folder "
        f"defines it{hint}"
    )


def _user_of(definition: object, name: str, owner: str = "", namespace: str = "") -> str | None:
    """``"<record>, field <field>"`` of the first field whose type uses ``name``."""
    if isinstance(definition, list):
        for branch in definition:
            found = _user_of(branch, name, owner, namespace)
            if found:
                return found
    elif isinstance(definition, str):
        short = name.rpartition(".")[2]
        return owner if definition in (name, short) and owner else None
    elif isinstance(definition, dict):
        if definition.get("type") == "record":
            record = str(definition.get("name", ""))
            space = str(definition.get("namespace", namespace) or "")
            full = record if "." in record or not space else f"{space}.{record}"
            for field in definition.get("fields") or []:
                if isinstance(field, dict):
                    where = f"{full}, field {field.get('name')}"
                    found = _user_of(field.get("type"), name, where, full.rpartition(".")[0])
                    if found:
                        return found
        for key in ("items", "values", "type"):
            if key in definition and definition.get("type") != "record":
                found = _user_of(definition[key], name, owner, namespace)
                if found:
                    return found
    return None


def describe(schema: AvroSchema) -> tuple[str, dict[str, object]]:
    """An ``avro`` schema as its kind and its parts, plain values (named parts as schemas)."""
    if isinstance(schema, avro.schema.UnionSchema):
        return "union", {"branches": list(schema.schemas)}
    if isinstance(schema, avro.schema.ArraySchema):
        return "array", {"items": schema.items}
    if isinstance(schema, avro.schema.MapSchema):
        return "map", {"values": schema.values}
    props = cast("dict[str, object]", schema.props)
    if isinstance(schema, avro.schema.NamedSchema):
        aliases = props.get("aliases") or ()
        space = schema.fullname.rpartition(".")[0]
        parts: dict[str, object] = {
            "name": schema.fullname,
            "doc": props.get("doc"),
            "aliases": tuple(
                a if "." in a or not space else f"{space}.{a}" for a in cast("list[str]", aliases)
            ),
        }
        if isinstance(schema, avro.schema.EnumSchema):
            parts.update(symbols=tuple(schema.symbols), default=props.get("default"))
        elif isinstance(schema, avro.schema.FixedSchema):
            parts.update(size=schema.size)
        elif isinstance(schema, avro.schema.RecordSchema):
            known = {"type", "name", "namespace", "doc", "aliases", "fields"}
            parts.update(
                fields=list(schema.fields),
                attributes={k: v for k, v in props.items() if k not in known},
            )
        return str(schema.type), parts
    return str(schema.type), {"logical": props.get("logicalType")}


def describe_field(field: AvroField) -> tuple[str, AvroSchema, dict[str, object]]:
    """A record field's name, type and the rest (doc, aliases, has_default, default)."""
    props = cast("dict[str, object]", field.props)
    aliases = cast("list[str]", props.get("aliases") or [])
    info: dict[str, object] = {
        "doc": props.get("doc"),
        "aliases": tuple(a for a in aliases if isinstance(a, str)),
        "has_default": "default" in props,
        "default": props.get("default"),
    }
    return str(field.name), field.type, info
