"""Field transforms of the release policy: redact, pseudonymise, generalise, truncate.

Each transform maps one field value (in the Avro record's Python form) to a value that says less.
Pure and deterministic: the same value, secret, recipient and linking scope always give the
same result, so a recipient can link events about the same person or place, as far as the
policy states, without learning who or where.

- **redact** keeps the field and replaces its value with a marker: ``[REDACTED]`` for a string
  (each item of a list of strings), empty bytes for bytes. The recipient learns that a value
  exists, not what it is.
- **pseudonymise** replaces a string with 26 base32 characters of an HMAC-SHA256 under the
  sending agency's secret (the header's ``transformed`` list tells the recipient which fields hold
  pseudonyms; there is no marker prefix, because a fixed prefix would contain short originals).
  The input is the value, its linking scope and the recipient's id, so two recipients get
  different pseudonyms for the same person and cannot join their data on them. Values are
  normalised (Unicode NFKC, case-folded, spaces collapsed) first, so "JANSEN" and "Jansen" link.
  A pseudonym never contains the original value. The linking scope is stated in the policy:

  - ``link_by`` names the fields of the value's record that together form the linking key (for a
    person: family name, given names and birth date), so the same person links across events
    while two people who only share a surname do not. The key holds for one epoch of
    ``epoch_days`` days (default 90, counted from 1970-01-01 UTC) of the *event's* time, its
    top-level timestamp: re-releasing an event (a replay, a parked recipient, ``policy
    explain``) gives the same pseudonym, and an event is linked with those of its own period.
  - without ``link_by``, or when a linking field is null or blank in the record, the scope is
    the one event: the pseudonym links within that event only. It is still a pseudonym of the
    same form, so whether the other fields were known does not show.
- **generalise** lowers precision: a float or double to ``precision`` decimal places or to a
  ``grid`` of the given size (both round down); an int or long down to a multiple of ``step``; a
  date to its ``month`` or ``year``; a timestamp to its ``hour``, ``day``, ``month`` or
  ``year``; a birth date to an ``age_band`` of ``width`` years at the event's date, written into a
  sibling string field while the date itself is withheld.
- **truncate** keeps the first ``length`` characters of a string or items of a list.
"""

from __future__ import annotations

import base64
import decimal
import hashlib
import hmac
import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_FLOOR, Decimal, localcontext
from typing import Literal

REDACTED = "[REDACTED]"
PSEUDONYM_LENGTH = 26
_MAX_DERIVATIONS = 1024
_PSEUDONYM_CONTEXT = b"fxgw.pseudonym.v2\x00"
DEFAULT_EPOCH_DAYS = 90
MAX_EPOCH_DAYS = 365
"""Longest a linking key may hold: pseudonyms rotate at least once a year."""
_DAY = 86_400

TimeUnit = Literal["hour", "day", "month", "year"]


@dataclass(frozen=True, slots=True)
class Redact:
    """Replace the value with a marker of its type."""

    def describe(self) -> str:
        return "redacted (a marker shows that a value exists)"


@dataclass(frozen=True, slots=True)
class Pseudonymise:
    """Replace a string with a keyed pseudonym, per recipient and linking scope.

    ``link_by`` names the other fields of the value's record that join it in the linking key
    (empty: the value alone), for epochs of ``epoch_days``; None links within one event only.
    """

    link_by: tuple[str, ...] | None = None
    epoch_days: int = DEFAULT_EPOCH_DAYS

    def describe(self) -> str:
        if self.link_by is None:
            scope = "links within one event only"
        else:
            with_ = f" with the same {', '.join(self.link_by)}" if self.link_by else ""
            scope = f"links the same value{with_} for {self.epoch_days}-day epochs of event time"
        return f"pseudonymised (HMAC-SHA256 per recipient; {scope})"


@dataclass(frozen=True, slots=True)
class RoundNumber:
    """Round a number down to ``precision`` decimals, a ``grid`` size, or a multiple of ``step``."""

    precision: int | None = None
    grid: float | None = None
    step: int | None = None

    def describe(self) -> str:
        if self.precision is not None:
            return f"generalised to {self.precision} decimal place(s)"
        if self.grid is not None:
            return f"generalised to a grid of {self.grid}"
        return f"generalised to a multiple of {self.step}"


@dataclass(frozen=True, slots=True)
class TruncateTime:
    """Cut a date or timestamp down to the start of its hour, day, month or year."""

    unit: TimeUnit

    def describe(self) -> str:
        return f"generalised to the {self.unit}"


@dataclass(frozen=True, slots=True)
class AgeBand:
    """Replace a birth date by an age band (``width`` years) written into the field ``into``."""

    width: int
    into: str

    def describe(self) -> str:
        return f"generalised to a {self.width}-year age band in '{self.into}'; the date is withheld"


@dataclass(frozen=True, slots=True)
class Truncate:
    """Keep the first ``length`` characters of a string, or items of a list."""

    length: int

    def describe(self) -> str:
        return f"truncated to {self.length}"


Transform = Redact | Pseudonymise | RoundNumber | TruncateTime | AgeBand | Truncate


def _normalise(value: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


@dataclass(frozen=True, slots=True)
class Pseudonymiser:
    """Makes pseudonyms under one agency's secret."""

    secret: bytes

    def pseudonym(self, value: str, recipient: str, scope: tuple[str, ...]) -> str:
        """The pseudonym of ``value`` for ``recipient`` within ``scope`` (see
        :func:`link_scope`); never contains ``value``."""
        normal = _normalise(value)
        message = _PSEUDONYM_CONTEXT + json.dumps([recipient, *scope, normal]).encode()
        for counter in range(_MAX_DERIVATIONS):
            digest = hmac.new(self.secret, message + counter.to_bytes(4, "big"), hashlib.sha256)
            text = base64.b32encode(digest.digest()).decode("ascii")[:PSEUDONYM_LENGTH]
            # a short original can occur in the output by chance; derive again (still stable)
            if not value or (value not in text and (not normal or normal not in text.casefold())):
                return text
        # only a value of one base32 character could get here, with odds below 2**-800
        raise ValueError("no pseudonym free of the original could be derived")


@dataclass(frozen=True, slots=True)
class Context:
    """What a transform may depend on besides the value."""

    recipient: str
    pseudonymiser: Pseudonymiser | None
    reference: datetime
    """The event's own time: age bands are computed at this instant, pseudonym epochs from it."""
    event_id: str = ""
    """The event's id: the scope of a pseudonym that links within one event."""


def _key_part(value: object) -> str | None:
    """A linking field's value as key text; None when it is null or blank."""
    if isinstance(value, str):
        return _normalise(value) or None
    if isinstance(value, date):
        return value.isoformat()
    return None if value is None else json.dumps(value, default=str)


def link_scope(
    t: Pseudonymise, value: str, record: Mapping[str, object], ctx: Context
) -> tuple[str, ...]:
    """What the pseudonym of ``value`` links on besides the value: the other linking fields of
    ``record`` (the value's own record) and the epoch of the event's time; the event alone when
    ``t`` names no linking key, or the value or another linking field is null or blank."""
    if t.link_by is not None and _key_part(value) is not None:
        parts = [_key_part(record.get(name)) for name in t.link_by]
        if None not in parts:
            epoch = math.floor(ctx.reference.timestamp() / (t.epoch_days * _DAY))
            return ("epoch", str(t.epoch_days), str(epoch), *(p for p in parts if p is not None))
    return ("event", ctx.event_id)


_EXACT_INTEGERS = 2.0**52
_EXACT = decimal.Context(prec=800, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
"""Digits enough that a quotient of two doubles' shortest reprs (at most 17 digits each, within
10**±330) is never rounded up across a whole number before it is floored."""


def _round_number(t: RoundNumber, value: float | int) -> float | int:
    """Round down in decimal arithmetic, on the number as written (its shortest repr): 5.1 on
    a grid of 0.01 stays 5.1, and 0.29 to 2 places stays 0.29, where binary floating point
    would give 5.09 and 0.28.

    :raises ValueError: ``value`` is NaN (no cell to put it in).
    """
    if t.step is not None:
        return int(value) - int(value) % t.step
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN cannot be generalised")
        if math.isinf(value):
            return value
    with localcontext(_EXACT):
        if t.grid is not None:
            grid = Decimal(repr(t.grid))
            cells = (Decimal(repr(value)) / grid).to_integral_value(rounding=ROUND_FLOOR)
            return float(cells * grid)
        assert t.precision is not None
        if isinstance(value, int) or abs(value) >= _EXACT_INTEGERS:
            return value  # no decimals to cut: a float this large is already a whole number
        places = Decimal(1).scaleb(-t.precision)
        return float(Decimal(repr(value)).quantize(places, rounding=ROUND_FLOOR))


def _truncate_time(unit: TimeUnit, value: date | datetime) -> date | datetime:
    if isinstance(value, datetime):
        if unit == "hour":
            return value.replace(minute=0, second=0, microsecond=0)
        if unit == "day":
            return value.replace(hour=0, minute=0, second=0, microsecond=0)
        if unit == "month":
            return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return value.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "month":
        return value.replace(day=1)
    if unit == "year":
        return value.replace(month=1, day=1)
    return value


def age_band(born: date, at: date, width: int) -> str | None:
    """``'30-39'`` for someone born on ``born``, at ``at``, in bands of ``width`` years."""
    age = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    if age < 0:
        return None
    low = age // width * width
    return f"{low}-{low + width - 1}"


def apply_transform(
    t: Transform, value: object, ctx: Context, record: Mapping[str, object] | None = None
) -> object:
    """``value`` transformed by ``t`` (None stays None); ``record`` is the record holding it (a
    pseudonym's linking fields). The load-time checks of the policy make sure ``t`` suits the
    field's type; a value of another type is withheld (None)."""
    if value is None:
        return None
    if isinstance(value, list):
        if isinstance(t, Truncate):
            return value[: t.length]
        return [apply_transform(t, item, ctx, record) for item in value]
    if isinstance(t, Redact):
        if isinstance(value, bytes):
            return b""
        return REDACTED if isinstance(value, str) else None
    if isinstance(t, Pseudonymise):
        if isinstance(value, str) and ctx.pseudonymiser is not None:
            scope = link_scope(t, value, record or {}, ctx)
            return ctx.pseudonymiser.pseudonym(value, ctx.recipient, scope)
        return None
    if isinstance(t, RoundNumber):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _round_number(t, value)
        return None
    if isinstance(t, TruncateTime):
        return _truncate_time(t.unit, value) if isinstance(value, date) else None
    if isinstance(t, Truncate):
        return value[: t.length] if isinstance(value, str) else None
    if isinstance(t, AgeBand):
        if isinstance(value, date) and not isinstance(value, datetime):
            return age_band(value, ctx.reference.date(), t.width)
        return None
    raise AssertionError(f"unknown transform {t!r}")  # pragma: no cover
