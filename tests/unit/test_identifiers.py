"""Firearm identifier normalisation: the known-answer table and its properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.identifiers import (
    IDENTIFIER_TAG,
    NotQueryable,
    Unqueryable,
    filter_identifiers,
    identifier,
    normalise_calibre,
    normalise_make,
    normalise_serial,
)

TABLE: dict[str, list[dict[str, Any]]] = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "data" / "serials.yaml").read_text(encoding="utf-8")
)
SERIALS = st.text(alphabet="ABCDEFGHJKMNPRSTUVWXYZ0123456789abcdefz", min_size=1, max_size=16)
SEPARATORS = st.sampled_from([" ", "-", ".", "/", "\t", ":", "\N{EN DASH}"])


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [repr(row.get("raw", row.get("serial"))) for row in rows]


class TestKnownAnswers:
    """The rows of tests/data/serials.yaml."""

    def test_table_is_large_enough(self) -> None:
        """The table holds at least 40 rows, refused ones included."""
        assert sum(len(rows) for rows in TABLE.values()) >= 40

    @pytest.mark.parametrize("row", TABLE["serials"], ids=_ids(TABLE["serials"]))
    def test_serial(self, row: dict[str, Any]) -> None:
        """A raw serial normalises to the pinned form."""
        assert row["normalised"] == normalise_serial(row["raw"])

    @pytest.mark.parametrize("row", TABLE["makes"], ids=_ids(TABLE["makes"]))
    def test_make(self, row: dict[str, Any]) -> None:
        """A raw make normalises to the pinned form."""
        assert row["normalised"] == normalise_make(row["raw"])

    @pytest.mark.parametrize("row", TABLE["calibres"], ids=_ids(TABLE["calibres"]))
    def test_calibre(self, row: dict[str, Any]) -> None:
        """A raw calibre normalises to the pinned form (None for none)."""
        assert row["normalised"] == normalise_calibre(row["raw"])

    @pytest.mark.parametrize("row", TABLE["refused"], ids=_ids(TABLE["refused"]))
    def test_refused(self, row: dict[str, Any]) -> None:
        """A record that cannot be queried says why and which field, quoting no value."""
        outcome = identifier(row["make"], row["serial"], obliterated=row.get("obliterated", False))
        assert isinstance(outcome, NotQueryable)
        assert (Unqueryable(row["reason"]), row["field"]) == (outcome.reason, outcome.field)
        assert not (row["serial"] or "").strip() or row["serial"] not in outcome.message


class TestIdentifier:
    """The canonical identifier bytes, the contract between holder and querier."""

    def test_layout(self) -> None:
        """Version tag, then make, serial and calibre, each with a 2-byte length."""
        expected = IDENTIFIER_TAG + b"\x00\x02FN" + b"\x00\x05AB123" + b"\x00\x049X19"
        assert expected == identifier("FN Herstal", "ab-00123", "9mm Parabellum")

    def test_no_calibre_is_empty_field(self) -> None:
        """No calibre, or one that normalises to nothing, is the empty third field."""
        expected = IDENTIFIER_TAG + b"\x00\x05GLOCK" + b"\x00\x03123" + b"\x00\x00"
        assert expected == identifier("Glock", "123") == identifier("Glock", "123", " - ")

    def test_fields_cannot_slide(self) -> None:
        """Length prefixes keep (make, serial) pairs that concatenate alike apart."""
        assert identifier("CZ", "A1234") != identifier("CZA", "1234")

    def test_filter_holds_wide_and_narrow(self) -> None:
        """A record with a calibre is found by a query with or without that calibre."""
        held = filter_identifiers("Glock", "BXY123", "9x19mm")
        assert [identifier("glock", "bxy-123"), identifier("GLOCK", "BXY 123", "9mm")] == held

    def test_filter_without_calibre(self) -> None:
        """A record without a calibre is put in the filter once."""
        assert [identifier("Glock", "BXY123")] == filter_identifiers("Glock", "BXY123", None)

    def test_filter_skips_unqueryable(self) -> None:
        """An obliterated or partial serial is never put in a filter."""
        assert [] == filter_identifiers("Glock", "BXY123", "9mm", obliterated=True)
        assert [] == filter_identifiers("Glock", "BX?123", "9mm")


class TestProperties:
    """Properties of normalisation over generated serials."""

    @given(SERIALS)
    def test_idempotent(self, serial: str) -> None:
        """Normalising a normalised serial changes nothing."""
        once = normalise_serial(serial)
        assert once == normalise_serial(once)

    @given(SERIALS, st.lists(st.tuples(st.integers(0, 16), SEPARATORS), max_size=4))
    def test_separator_insensitive(self, serial: str, cuts: list[tuple[int, str]]) -> None:
        """Separators anywhere leave the serial as it was."""
        spaced = serial
        for at, separator in cuts:
            spaced = spaced[:at] + separator + spaced[at:]
        assert normalise_serial(serial) == normalise_serial(spaced)

    @given(SERIALS)
    def test_case_insensitive(self, serial: str) -> None:
        """Lower and upper case normalise alike."""
        assert normalise_serial(serial.lower()) == normalise_serial(serial.upper())

    @given(SERIALS)
    def test_look_alikes(self, serial: str) -> None:
        """O and 0, I, L and 1 normalise alike."""
        swapped = serial.replace("0", "O").replace("1", "l")
        assert normalise_serial(serial) == normalise_serial(swapped)

    @given(st.text(max_size=12), st.text(max_size=12), st.text(max_size=8) | st.none())
    def test_identifier_total(self, make: str, serial: str, calibre: str | None) -> None:
        """Any text gives either tagged identifier bytes or a reason, never an exception."""
        outcome = identifier(make, serial, calibre)
        assert isinstance(outcome, NotQueryable) or outcome.startswith(IDENTIFIER_TAG)
