"""Shared hypothesis strategies.

:func:`records_for` generates valid records, in the Python form, for any record schema of the
contract: tests of the policy engine, the envelope and the pipeline reuse it. :func:`mutated`,
:func:`avro_like_bytes` and the ``hostile_*`` strategies make the bad input the fuzz tests
(``tests/fuzz``) feed to every reader of a peer's bytes.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from gateway.contract.schemas import FieldInfo, Schema

__all__ = [
    "AGENCIES",
    "COUNTRIES",
    "INTERESTING_INTS",
    "avro_ints",
    "avro_like_bytes",
    "hostile_bytes",
    "hostile_text",
    "hostile_times",
    "mutated",
    "records_for",
    "zigzag",
]

AGENCIES = ("NL-POL", "BE-FPJ", "US-ATF", "DE-BKA", "FR-DCPJ")
"""Agency ids of the sandbox federation."""
COUNTRIES = ("NL", "BE", "US", "DE", "FR", "AT", "IT", "CZ", "RS", "HR", "TR", "BR")
"""ISO 3166-1 alpha-2 codes that firearm records commonly name."""

_FAMILY = (
    "Jansen",
    "Peeters",
    "Müller",
    "Dubois",
    "Smith",
    "Horvat",
    "Nowak",
    "Öztürk",
    "Ó Briain",
)
_GIVEN = ("Anouk", "Luka", "Jean-Marc", "Zoë", "Mehmet", "Siobhán", "John Q.")
_MAKES = ("Glock", "FN Herstal", "Beretta", "Walther", "CZ", "Smith & Wesson", "Zastava", "Ekol")
_MODELS = ("17 Gen4", "Browning High Power", "92FS", "P99", "75 B", "642", "M70", "Firat Compact")
_CALIBRES = ("9x19mm", ".38 Special", ".22 LR", "7.62x39mm", "12 GA", "9mm P.A.K.", ".45 ACP")
_COUNTRY_FIELDS = frozenset({"country", "nationality", "manufacture_country", "import_country"})
_OFFSETS = (dt.UTC, dt.timezone(dt.timedelta(hours=1)), dt.timezone(dt.timedelta(hours=-5)))

# Any Unicode a national system may hold (no lone surrogates: they cannot be UTF-8 encoded).
_TEXT = st.text(st.characters(codec="utf-8"), max_size=24)


def records_for(schema: Schema) -> SearchStrategy[dict[str, object]]:
    """Records that conform to the record ``schema``, in the Python form encode accepts.

    Every field is present (so ``decode(encode(r)) == r`` holds exactly); a nullable field is
    sometimes None; arrays and maps have 0 to 3 items. Strings are realistic where the field name
    says what they hold (agency ids, country codes, names, makes, calibres, serial numbers) and
    arbitrary Unicode elsewhere; timestamps have millisecond precision and various UTC offsets.

    :raises NotImplementedError: the schema is not a record, or holds a union of several
        non-null types (which :class:`FieldInfo` does not describe).
    """
    if schema.kind != "record":
        raise NotImplementedError(f"{schema.full_name} is not a record schema")
    return _record(schema.fields)


def _record(fields: tuple[FieldInfo, ...]) -> SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({info.name: _field(info) for info in fields})


def _field(info: FieldInfo) -> SearchStrategy[object]:
    value = _value(info.kind, info)
    return st.one_of(st.none(), value) if info.nullable else value


def _value(kind: str, info: FieldInfo) -> SearchStrategy[object]:
    if kind in ("array", "map"):
        if info.item_kind in ("array", "map"):
            raise NotImplementedError(f"{info.path}: no strategy for nested containers")
        item = _value(info.item_kind or "null", info)
        if info.item_nullable:
            item = st.one_of(st.none(), item)
        if kind == "array":
            return st.lists(item, max_size=3)
        return st.dictionaries(st.text(max_size=8), item, max_size=3)
    if kind == "record":
        return _record(info.children)
    if kind == "enum":
        return st.sampled_from(info.symbols)
    if kind == "fixed":
        size = info.size or 0
        return st.binary(min_size=size, max_size=size)
    if kind == "string":
        return _string(info.name)
    strategy = _SCALARS.get(kind)
    if strategy is None:
        raise NotImplementedError(f"{info.path}: no strategy for kind {kind!r}")
    if kind == "int" and info.name.endswith("_year"):
        return st.integers(1850, 2026)
    if kind == "int" and info.name.endswith("_mm"):
        return st.integers(20, 1200)
    if kind == "double" and info.name == "latitude":
        return st.floats(-90, 90)
    if kind == "double" and info.name == "longitude":
        return st.floats(-180, 180)
    if kind == "bytes" and info.name.endswith("digest"):
        return st.binary(min_size=32, max_size=32)
    if kind == "bytes" and info.name == "signature":
        return st.binary(min_size=64, max_size=64)
    return strategy


def _string(name: str) -> SearchStrategy[object]:
    if name == "agency_id" or name in ("sender", "recipient"):
        return st.sampled_from(AGENCIES)
    if name in _COUNTRY_FIELDS:
        return st.sampled_from(COUNTRIES)
    if name.endswith("event_id") or name == "message_id":
        return st.uuids().map(str)
    if name == "family_name":
        return st.one_of(st.sampled_from(_FAMILY), _TEXT)
    if name == "given_names":
        return st.one_of(st.sampled_from(_GIVEN), _TEXT)
    if name == "make":
        return st.sampled_from(_MAKES)
    if name == "model":
        return st.sampled_from(_MODELS)
    if name == "calibre":
        return st.sampled_from(_CALIBRES)
    if name == "serial_number":
        return st.from_regex(r"[A-Z]{0,3}[0-9]{3,8}[A-Z]?", fullmatch=True)
    if name == "gender":
        return st.sampled_from(("F", "M", "X"))
    return _TEXT


def _millis(value: dt.datetime) -> dt.datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


_MIN = dt.datetime(1900, 1, 1)
_MAX = dt.datetime(2100, 1, 1)

_SCALARS: dict[str, SearchStrategy[object]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "double": st.floats(allow_nan=False, allow_infinity=False),
    "bytes": st.binary(max_size=48),
    "date": st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31)),
    "timestamp-millis": st.datetimes(_MIN, _MAX, timezones=st.sampled_from(_OFFSETS)).map(_millis),
    "timestamp-micros": st.datetimes(_MIN, _MAX, timezones=st.sampled_from(_OFFSETS)),
    "local-timestamp-millis": st.datetimes(_MIN, _MAX).map(_millis),
    "local-timestamp-micros": st.datetimes(_MIN, _MAX),
    "time-millis": st.times().map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000)),
    "time-micros": st.times(),
    "uuid": st.uuids(),
}


# --- hostile input, for the fuzz tests (tests/fuzz) ----------------------------------------------

INTERESTING_INTS = (
    0,
    1,
    -1,
    63,
    64,
    127,
    128,
    255,
    256,
    65_535,
    2**31 - 1,
    -(2**31),
    2**31,
    2**32,
    2**40,
    -(2**40),
    2**62,
    2**63 - 1,
    -(2**63),
)
"""Integers at the edges of Avro's int and long ranges and of varint byte boundaries."""


def zigzag(value: int) -> bytes:
    """``value`` as an Avro long: zig-zag, then a little-endian base-128 varint (any size)."""
    folded = value * 2 if value >= 0 else -value * 2 - 1
    out = bytearray()
    while folded > 0x7F:
        out.append(folded & 0x7F | 0x80)
        folded >>= 7
    out.append(folded)
    return bytes(out)


def avro_ints() -> SearchStrategy[int]:
    """Integers as a peer may encode them: edges of the ranges, and anything in 64 bits."""
    return st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-(2**63), 2**63 - 1))


def avro_like_bytes() -> SearchStrategy[bytes]:
    """Byte strings made of Avro-shaped tokens: varints (lengths, counts, union indexes, huge and
    negative ones among them), length-prefixed strings and raw bytes, so that a decoder gets
    past the first field more often than with random bytes alone."""
    token = st.one_of(
        avro_ints().map(zigzag),
        st.integers(0, 40).map(zigzag),
        st.text(max_size=40).map(lambda t: zigzag(len(t.encode())) + t.encode()),
        st.binary(max_size=24),
        # an overlong varint: continuation bytes well past the ten a 64-bit long needs
        st.integers(11, 64).map(lambda n: b"\xff" * n + b"\x01"),
    )
    return st.lists(token, max_size=40).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn, original: bytes, donors: tuple[bytes, ...] = ()) -> bytes:
    """``original`` after one to four random edits: a flipped byte, an insertion, a deletion, a
    truncation, a splice with one of ``donors`` (or itself), a repeated chunk, or an Avro varint
    (a huge or negative length or count) written over a few bytes."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4), label="edits")):
        at = draw(st.integers(0, len(data)), label="at")
        edit = draw(
            st.sampled_from(("flip", "insert", "delete", "truncate", "splice", "repeat", "varint")),
            label="edit",
        )
        if edit == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255), label="mask")
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16), label="inserted")
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 32), label="deleted")]
        elif edit == "truncate":
            del data[at:]
        elif edit == "splice":
            donor = draw(st.sampled_from((bytes(data), *donors)), label="donor")
            data[at:] = donor[draw(st.integers(0, len(donor)), label="from") :]
        elif edit == "repeat":
            chunk = bytes(data[at : at + draw(st.integers(1, 64), label="chunk")])
            data[at:at] = chunk * draw(st.integers(1, 8), label="times")
        elif edit == "varint":
            replaced = draw(st.integers(0, 10), label="replaced")
            data[at : at + replaced] = zigzag(draw(avro_ints(), label="value"))
    return bytes(data)


def hostile_text() -> SearchStrategy[str]:
    """Strings a hostile peer may send: empty, control characters, any Unicode, and huge."""
    return st.one_of(
        st.just(""),
        st.text(st.characters(codec="utf-8"), max_size=64),
        st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=16),
        st.builds(
            lambda char, size: char * size,
            st.characters(codec="utf-8"),
            st.sampled_from((129, 257, 4097, 65_537, 1_000_000)),
        ),
    )


def hostile_bytes() -> SearchStrategy[bytes]:
    """Byte strings of every length near the ones keys, nonces and signatures have, and huge."""
    return st.one_of(
        st.binary(max_size=100),
        st.builds(
            lambda byte, size: byte * size,
            st.binary(min_size=1, max_size=1),
            st.sampled_from((23, 24, 25, 31, 32, 33, 63, 64, 65, 79, 80, 81, 65_537, 1_000_000)),
        ),
    )


def hostile_times() -> SearchStrategy[dt.datetime]:
    """Timestamps (millisecond precision, UTC) across the whole range Python can hold."""
    edges = (
        dt.datetime.min.replace(tzinfo=dt.UTC),
        dt.datetime.max.replace(microsecond=999_000, tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    )
    return st.one_of(
        st.sampled_from(edges),
        st.datetimes(timezones=st.just(dt.UTC)).map(_millis),
    )
