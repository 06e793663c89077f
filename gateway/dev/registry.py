"""A synthetic national firearms registry, for tests and the hit/no-hit benchmark: deterministic
for a seed, with real manufacturers, serials of the shapes they stamp (letter prefixes, digit
runs with leading zeros, separators), calibres, and what an officer reading a worn marking may
write instead (case, separators, O for 0, l for 1, another spelling of the make or calibre).

Development tool only: a production node never imports it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gateway.core.identifiers import NotQueryable, identifier

__all__ = ["Holding", "absent", "generate", "identifiers", "read_by_officer"]

_MAKERS: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (("Glock", "GLOCK Ges.m.b.H."), ("LLLDDD", "LLLDDD"), ("9x19mm", ".45 ACP", ".380 ACP")),
    (("FN Herstal", "FN", "Fabrique Nationale"), ("DDLLDDDDD", "LDDDDDD"), ("9x19mm",)),
    (("Beretta", "Pietro Beretta S.p.A."), ("LDDDDDL", "LLLDDDDDD"), ("9x19mm", ".22 LR")),
    (("Walther", "Carl Walther GmbH"), ("DDDDDD", "LLDDDDD"), ("9x19mm", ".22 LR")),
    (("CZ", "Česká zbrojovka a.s."), ("LDDDDDD", "DDDDDDD"), ("9x19mm", "7.62x25")),
    (("Smith & Wesson", "S&W"), ("LLLDDDD", "DDDDDDD"), (".38 Special", ".357 Magnum")),
    (("Zastava", "Zastava Oružje"), ("DDDDDD", "LDD-DDDDDD"), ("7.62x39mm", "7.65 Browning")),
    (("SIG Sauer", "SIG"), ("DDLDDDDDD", "LLLDDDDDD"), ("9x19mm", ".40 S&W")),
    (("Heckler & Koch", "H&K"), ("DD-DDDDDD",), ("9x19mm", "5.56x45")),
    (("Sturm, Ruger & Co.", "Ruger"), ("DDD-DDDDD",), (".22 LR", "9x19mm")),
    (("Colt", "Colt's Manufacturing Company"), ("DDDDDDL", "LLDDDDD"), (".45 ACP", ".38 Special")),
    (("Ekol",), ("LDDDDDD",), ("9mm P.A.K.",)),
    (("Tanfoglio",), ("LDDDDDD", "LLDDDDDD"), ("9x19mm",)),
    (("Kalashnikov Concern",), ("DDDDDDDDD", "LLDDDD"), ("7.62x39mm",)),
)
"""(spellings of the make, serial shapes: L letter, D digit, others literal, calibres)."""
_CALIBRE_SPELLINGS = (
    ("9x19mm", "9mm Parabellum", "9 x 19", "9mm Luger"),
    (".38 Special", "38 SPL"),
    (".45 ACP", ".45 Auto"),
    (".380 ACP", "9mm kurz"),
    (".22 LR", "22 long rifle"),
    ("7.62x39mm", "7,62 x 39"),
    (".357 Magnum", "357 MAG"),
)
_LETTERS = "ABCDEFGHJKMNPRSTUVWXYZ"
_SEPARATORS = ("", " ", "-", ".", "/")


@dataclass(frozen=True, slots=True)
class Holding:
    """One registry record as the national system holds it."""

    make: str
    serial: str
    calibre: str | None


def _serial(shape: str, rng: random.Random) -> str:
    return "".join(
        rng.choice(_LETTERS) if c == "L" else str(rng.randrange(10)) if c == "D" else c
        for c in shape
    )


def generate(n: int, seed: int) -> list[Holding]:
    """``n`` records, the same for the same seed; about one in ten without a calibre."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data must repeat for a seed
    holdings = []
    for _ in range(n):
        makes, shapes, calibres = rng.choice(_MAKERS)
        calibre = rng.choice(calibres) if rng.random() > 0.1 else None
        holdings.append(Holding(rng.choice(makes), _serial(rng.choice(shapes), rng), calibre))
    return holdings


def identifiers(holdings: Iterable[Holding]) -> set[bytes]:
    """Every identifier a holder of ``holdings`` puts in its filter."""
    held = set()
    for holding in holdings:
        for calibre in {None, holding.calibre}:
            outcome = identifier(holding.make, holding.serial, calibre)
            if not isinstance(outcome, NotQueryable):
                held.add(outcome)
    return held


def absent(n: int, seed: int, registry: Iterable[Holding]) -> list[Holding]:
    """``n`` records whose identifiers (with and without calibre) are not in ``registry``."""
    held = identifiers(registry)
    found: list[Holding] = []
    while len(found) < n:
        seed += 1_000_003
        fresh = generate(n - len(found), seed)
        found += [h for h in fresh if not identifiers([h]) & held]
    return found


def _respell(text: str, choices: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    return next((group for group in choices if text in group), (text,))


def read_by_officer(holding: Holding, rng: random.Random) -> Holding:
    """The record as an officer may write it from the weapon: another spelling of make and
    calibre, case changed, separators added or dropped, 0 read as O, 1 as l or I, zero padding
    added to a digit run. It normalises to the same identifier as ``holding``."""
    makes = _respell(holding.make, (m for m, _, _ in _MAKERS))
    calibre = holding.calibre and rng.choice(_respell(holding.calibre, _CALIBRE_SPELLINGS))
    serial = re.sub(r"[\W_]", "", holding.serial)
    if rng.random() < 0.3:
        serial = re.sub(r"(?<=[A-Z])(?=[0-9])", "0" * rng.randrange(1, 3), serial, count=1)
    serial = "".join(
        c + (rng.choice(_SEPARATORS) if rng.random() < 0.2 else "") for c in serial
    ).strip(" -./")
    serial = serial.translate(str.maketrans("01", rng.choice("0O") + rng.choice("1lI")))
    serial = serial.lower() if rng.random() < 0.5 else serial
    return replace(holding, make=rng.choice(makes).upper(), serial=serial, calibre=calibre)
