"""Firearm identifiers for hit/no-hit queries: normalised make, serial and calibre, and the
canonical bytes that holder and querier both feed to the OPRF. Pure.

What no library gives: serial numbers are stamped by hand-fed machines and read by tired officers;
the rules below (which separators, which look-alike characters, which corporate suffixes) are a
federation decision, not a Unicode or locale one, so they live here, small and tested against
the known-answer table ``tests/data/serials.yaml``. ``unicodedata`` does the Unicode part.

The contract (holder and querier MUST produce byte-identical identifiers, or a real hit is missed):

    identifier = b"fxgw-hit-v1" || field(make) || field(serial) || field(calibre)
    field(s)   = len(utf8(s)) as 2 bytes big-endian || utf8(s)

with each part normalised by the functions below, and ``calibre`` the empty string when the
record or the query has none. A change to any rule below is a new version tag, never an edit.

Calibre: a holder's record with a calibre is put in its filter twice, as (make, serial, "") and
as (make, serial, calibre) (:func:`filter_identifiers`); a query asks for the first, and when it
names a calibre for the narrower second too (:mod:`gateway.core.hits`), so a holder's record
without a calibre is still found on make and serial.

Security: these rules only decide which records compare equal. Every look-alike mapping merges
distinct serials, so it can only add false hits (a hit leads to a trace request, which compares
the full records), never hide a true one; the serial is never sent in clear (the OPRF blinds
it). Obliterated or partial serials are never queried: a wildcard would let a querier probe
many serials in one go, and a two-character serial hits everywhere; they go to a trace request.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "IDENTIFIER_TAG",
    "NotQueryable",
    "Unqueryable",
    "filter_identifiers",
    "identifier",
    "normalise_calibre",
    "normalise_make",
    "normalise_serial",
]

IDENTIFIER_TAG = b"fxgw-hit-v1"
"""The version tag that starts every identifier."""
MIN_SERIAL = 3
"""Fewer normalised serial characters than this is a partial serial."""
MAX_FIELD = 64
"""Longest normalised make, serial or calibre, in characters; no real marking is longer."""

_MAKE_ALIASES = {
    "FN": (
        "FNHERSTAL",
        "FABRIQUENATIONALE",
        "FABRIQUENATIONALEHERSTAL",
        "FABRIQUENATIONALEDHERSTAL",
    ),
    "SMITHWESSON": ("SW", "SMITHANDWESSON"),
    "HECKLERKOCH": ("HK", "HECKLERUNDKOCH", "HECKLERANDKOCH"),
    "CZ": ("CESKAZBROJOVKA", "CZUB", "CESKAZBROJOVKAUHERSKYBROD"),
    "SIGSAUER": ("SIG", "SIGARMS"),
    "WALTHER": ("CARLWALTHER",),
    "BERETTA": ("PIETROBERETTA", "FABBRICADARMIPIETROBERETTA"),
    "ZASTAVA": ("ZASTAVAARMS", "ZASTAVAORUZJE"),
    "RUGER": ("STURMRUGER",),
    "COLT": ("COLTS", "COLTSMANUFACTURING"),
}
"""Canonical make -> the other markings of that maker (after the rules of normalise_make)."""
_MAKES = {alias: name for name, aliases in _MAKE_ALIASES.items() for alias in aliases}
_SUFFIXES = frozenset(
    {"GMBH", "GESMBH", "AG", "KG", "SA", "SPA", "SRL", "SAS", "INC", "LLC", "LTD", "CO", "CORP"}
    | {"CORPORATION", "COMPANY", "AS", "DOO", "BV", "NV"}
)
"""Corporate forms dropped from the end of a make: they vary in marking and registers."""

_CALIBRE_ALIASES = {
    "9X19": ("9", "9PARABELLUM", "9PARA", "9LUGER", "9X19PARABELLUM", "9X19LUGER", "9X19NATO"),
    "9X17": ("380ACP", "380AUTO", "9KURZ", "9SHORT", "9BROWNINGSHORT"),
    "38SPL": ("38SPECIAL", "38SP", "38SWSPECIAL"),
    "22LR": ("22LONGRIFLE",),
    "45ACP": ("45AUTO",),
    "357MAG": ("357MAGNUM",),
    "40SW": ("40SMITHWESSON",),
    "12GA": ("12GAUGE", "12G", "12BORE"),
}
"""Canonical calibre -> its other spellings (after the rules of normalise_calibre)."""
_CALIBRES = {alias: name for name, aliases in _CALIBRE_ALIASES.items() for alias in aliases}

_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_WILDCARDS = re.compile(r"[?*_…]|\.\.")
_NOT_ALNUM = re.compile(r"[\W_]+")
_RUN_ZEROS = re.compile(r"(?<![0-9])0+(?=[0-9])")
_DIGIT_MM = re.compile(r"(?<=[0-9])MM")


class Unqueryable(StrEnum):
    """Why a record cannot be asked about (or found) by a hit/no-hit query."""

    OBLITERATED = "obliterated"
    PARTIAL = "partial"
    MISSING_MAKE = "missing_make"
    MISSING_SERIAL = "missing_serial"
    TOO_LONG = "too_long"


@dataclass(frozen=True, slots=True)
class NotQueryable:
    """An expected outcome, not an error: this record goes to a trace request instead. ``field``
    names the field at fault; the message says what to do and never quotes a value."""

    reason: Unqueryable
    field: str
    message: str


def _fold(text: str) -> str:
    """Upper case without accents (NFKD, combining marks dropped)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def normalise_make(make: str) -> str:
    """The canonical make: upper case without accents, apostrophes dropped, separators and
    punctuation removed, trailing corporate forms (GmbH, S.A., Inc, ...) dropped, then the alias
    table applied: ``"FN Herstal S.A."`` and ``"Fabrique Nationale"`` give ``"FN"``,
    ``"Smith & Wesson"`` and ``"S&W"`` give ``"SMITHWESSON"``. Empty when nothing is left."""
    words = [w for w in _NOT_ALNUM.split(_fold(make).replace("'", "").replace(".", "")) if w]
    while len(words) > 1 and words[-1] in _SUFFIXES:
        words.pop()
    joined = "".join(words)
    return _MAKES.get(joined, joined)


def normalise_serial(serial: str) -> str:
    """The canonical serial: upper case without accents; every character that is not a letter or
    digit dropped (spaces, hyphens, dots, slashes, ...); look-alikes mapped O->0, I->1, L->1;
    leading zeros dropped from every run of digits (keeping its last digit).

    Decisions: S/5, B/8 and Z/2 are NOT mapped: they are told apart on a legible stamp, and mapping
    them would merge the letter prefixes makers use (a false hit for every serial that differs
    only there). O/0 and I/L/1 are merged because stamps and fonts make them one glyph. Zero
    padding is a habit of registers, not of markings, so it goes in every digit run, after a
    letter prefix too (``"AB00123"`` is ``"AB123"``): the cost is a rare false hit between serials
    of one make that differ only in padding. Wildcards are not checked here (see
    :func:`identifier`)."""
    folded = "".join(w for w in _NOT_ALNUM.split(_fold(serial)))
    return _RUN_ZEROS.sub("", folded.translate(_LOOK_ALIKES))


def normalise_calibre(calibre: str | None) -> str | None:
    """The canonical calibre, or None when there is none: upper case, the multiplication sign
    read as ``X``, ``MM`` after a number dropped, punctuation and spaces removed, then the alias
    table: ``"9x19mm"``, ``"9mm Parabellum"`` and ``"9 x 19"`` give ``"9X19"``; ``".38 Special"``
    and ``"38 SPL"`` give ``"38SPL"``. Calibres not in the table keep their compact form."""
    if calibre is None:
        return None
    compact = "".join(_NOT_ALNUM.split(_fold(calibre).replace("\N{MULTIPLICATION SIGN}", "X")))
    compact = _DIGIT_MM.sub("", compact)
    return _CALIBRES.get(compact, compact) or None


def _field(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def identifier(
    make: str | None, serial: str | None, calibre: str | None = None, *, obliterated: bool = False
) -> bytes | NotQueryable:
    """The canonical identifier bytes of (make, serial, calibre) as the module docstring defines
    them, or why there is none: obliterated serial, partial serial (a wildcard ``? * _ …`` or
    ``..``, or fewer than :data:`MIN_SERIAL` characters once normalised), missing make or serial,
    a field longer than :data:`MAX_FIELD` characters."""
    if obliterated:
        return NotQueryable(
            Unqueryable.OBLITERATED, "serial", "obliterated serial: send a trace request"
        )
    if serial is None or not serial.strip():
        return NotQueryable(Unqueryable.MISSING_SERIAL, "serial", "no serial: send a trace request")
    if _WILDCARDS.search(serial):
        return NotQueryable(
            Unqueryable.PARTIAL, "serial", "serial holds a wildcard: send a trace request"
        )
    norm_make = normalise_make(make or "")
    if not norm_make:
        return NotQueryable(Unqueryable.MISSING_MAKE, "make", "no make: fill in the make")
    norm_serial = normalise_serial(serial)
    if len(norm_serial) < MIN_SERIAL:
        return NotQueryable(
            Unqueryable.PARTIAL,
            "serial",
            f"serial has fewer than {MIN_SERIAL} letters or digits: send a trace request",
        )
    norm_calibre = normalise_calibre(calibre) or ""
    for name, value in (("make", norm_make), ("serial", norm_serial), ("calibre", norm_calibre)):
        if len(value) > MAX_FIELD:
            return NotQueryable(
                Unqueryable.TOO_LONG,
                name,
                f"{name} is longer than {MAX_FIELD} characters once normalised: check the record",
            )
    return IDENTIFIER_TAG + _field(norm_make) + _field(norm_serial) + _field(norm_calibre)


def filter_identifiers(
    make: str | None, serial: str | None, calibre: str | None = None, *, obliterated: bool = False
) -> list[bytes]:
    """The identifiers a holder puts in its filter for one record: (make, serial, "") and, when
    the record has a calibre, (make, serial, calibre) too; none for a record that no query could
    name (see :func:`identifier`: the holder counts those apart)."""
    wide = identifier(make, serial, None, obliterated=obliterated)
    if isinstance(wide, NotQueryable):
        return []
    narrow = identifier(make, serial, calibre, obliterated=obliterated)
    return [wide] if narrow == wide or isinstance(narrow, NotQueryable) else [wide, narrow]
