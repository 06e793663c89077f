"""Generalisation in decimal arithmetic: a value on a grid line or with exactly the allowed
digits stays as written, and nothing is ever rounded up."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.transforms import RoundNumber, _round_number


class TestExactGeneralisation:
    @pytest.mark.parametrize(
        ("rule", "value", "expected"),
        [
            (RoundNumber(grid=0.01), 5.1, 5.1),  # binary floating point gave 5.09
            (RoundNumber(grid=0.1), 51.9105, 51.9),  # ... and 51.900000000000006
            (RoundNumber(grid=0.25), 4.47917, 4.25),
            (RoundNumber(grid=0.1), -5.15, -5.2),  # down, also below zero
            (RoundNumber(precision=2), 0.29, 0.29),  # ... and 0.28
            (RoundNumber(precision=1), -0.05, -0.1),
            (RoundNumber(precision=3), 51.9225, 51.922),
            (RoundNumber(step=10), 1987, 1980),
        ],
    )
    def test_known_values(self, rule: RoundNumber, value: float, expected: float) -> None:
        assert expected == _round_number(rule, value)

    def test_infinities_pass_and_nan_is_refused(self) -> None:
        """An infinity has no finer digits to cut; a NaN has no cell (the release is refused)."""
        assert math.inf == _round_number(RoundNumber(grid=0.1), math.inf)
        with pytest.raises(ValueError, match="NaN"):
            _round_number(RoundNumber(precision=2), math.nan)

    @given(
        value=st.floats(allow_nan=False, allow_infinity=False),
        grid=st.sampled_from([0.001, 0.01, 0.1, 0.25, 0.3, 1.0, 5.0]),
    )
    def test_grid_is_a_whole_number_of_cells_never_above(self, value: float, grid: float) -> None:
        """The result, read as written, is a whole number of grid cells at or below the value
        and less than one cell below it."""
        result = _round_number(RoundNumber(grid=grid), value)
        exact, written, cell = Decimal(repr(result)), Decimal(repr(value)), Decimal(repr(grid))
        assert result <= value
        if abs(value) < 1e15:  # beyond that a double cannot hold every cell boundary
            with localcontext(prec=800):  # exact differences of tiny values
                assert (exact / cell) == (exact / cell).to_integral_value()
                assert written - exact < cell

    @given(
        value=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
        places=st.integers(min_value=0, max_value=6),
    )
    def test_precision_keeps_at_most_the_places(self, value: float, places: int) -> None:
        """At most ``places`` decimals remain, the value is never rounded up, and a value
        with no more places than that is kept as it is."""
        result = _round_number(RoundNumber(precision=places), value)
        exact = Decimal(repr(result))
        assert result <= value
        assert exact == exact.quantize(Decimal(1).scaleb(-places))
        if Decimal(repr(value)) == Decimal(repr(value)).quantize(Decimal(1).scaleb(-places)):
            assert result == value
