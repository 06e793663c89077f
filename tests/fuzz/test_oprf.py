"""Fuzzing :meth:`gateway.crypto.oprf.OprfKey.evaluate` and :func:`gateway.crypto.oprf.unblind`:
whatever a peer sends as a point, the answer is a point or a PeerError, never anything else."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.crypto.oprf import OprfKey, blind, hash_to_point, unblind
from gateway.errors import PeerError
from tests.fuzz.conftest import MAX_DETAIL, TIMEOUT, budget
from tests.strategies import hostile_bytes, mutated

pytestmark = TIMEOUT

KEY = OprfKey.derive(bytes(range(32)), 1)
VALID = hash_to_point(b"fxgw-fuzz")
POINTS = st.binary(min_size=32, max_size=32) | hostile_bytes() | mutated(VALID)


class TestEvaluate:
    """The holder's side of a query."""

    @budget(weight=5)
    @given(POINTS)
    def test_point_or_peer_error(self, point: bytes) -> None:
        """evaluate returns 32 bytes or raises PeerError oprf_bad_point, with a short message."""
        try:
            assert 32 == len(KEY.evaluate(point))
        except PeerError as exc:
            assert "oprf_bad_point" == exc.reason
            assert len(str(exc)) <= MAX_DETAIL


class TestUnblind:
    """The querier's side of a query."""

    @budget(weight=2)
    @given(POINTS)
    def test_point_or_peer_error(self, point: bytes) -> None:
        """unblind returns 32 bytes or raises PeerError oprf_bad_point."""
        try:
            assert 32 == len(unblind(blind(b"fxgw-fuzz"), point))
        except PeerError as exc:
            assert "oprf_bad_point" == exc.reason
