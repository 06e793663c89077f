"""Typed adapter around fastavro: the only module of the package that imports it.

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

Nothing here knows about the federation's schemas; :mod:`gateway.contract.schemas` decides what
to call.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form
from fastavro.types import Schema as _FastavroSchema
from fastavro.validation import ValidationError, validate

from gateway.errors import RecordInvalid, SchemaError

__all__ = ["ParsedSchema", "canonical_form", "parse", "problems", "read", "write"]

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
    left = len(data) - source.tell()
    if left:
        raise RecordInvalid(f"bytes do not decode with this schema: {left} trailing bytes")
    return datum


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
