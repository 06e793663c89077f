"""Fuzzing the witness and origin cores (:class:`gateway.audit.witness.WitnessCore`).

Arbitrary bytes, and valid checkpoint and countersignature records after random edits: whatever
comes in, the core answers with effects (at most one countersignature, for a record whose
signature verified) and never raises.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.witness import WitnessCore, countersign, parse_checkpoint
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList
from tests.fuzz.conftest import NOW, TIMEOUT, budget
from tests.strategies import mutated
from tests.unit.test_witness import _checkpoints, _log

pytestmark = TIMEOUT
AT = "2026-11-28T12:00:00.000Z"


@pytest.fixture(scope="module")
def records(
    tmp_path_factory: pytest.TempPathFactory, nl_keys: AgencyKeys, be_keys: AgencyKeys
) -> tuple[bytes, bytes]:
    """A checkpoint of NL-POL's, and BE-FPJ's countersignature of it."""
    folder = tmp_path_factory.mktemp("witness") / "audit"
    _log(folder, nl_keys.signing, 6)
    checkpoint = _checkpoints(folder)[0]
    return checkpoint.to_bytes(), countersign(checkpoint, "BE-FPJ", be_keys.signing, AT).to_bytes()


def _core(agency: str, keys: AgencyKeys, trust: TrustList) -> WitnessCore:
    return WitnessCore(
        agency,
        lambda: trust,
        lambda: keys.signing,
        witnessed=lambda: frozenset({"NL-POL", "BE-FPJ", "US-ATF"}),
        per_minute=10**6,
    )


class TestWitnessCoreFuzz:
    @budget()
    @given(data=st.data())
    def test_never_raises(
        self,
        data: st.DataObject,
        records: tuple[bytes, bytes],
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        """Bytes or an edited record: effects, never an exception; a countersignature only for
        a record that still parses and carries NL-POL's valid signature."""
        checkpoint, countersigned = records
        raw = data.draw(
            st.one_of(
                st.binary(max_size=3000),
                mutated(checkpoint),
                mutated(countersigned),
                st.just(b"[" * 2000),
            )
        )
        witness = _core("BE-FPJ", be_keys, trust)
        effects = witness.take(raw, NOW + timedelta(seconds=1))
        assert len(effects.send) <= 1
        if effects.send:
            assert None is parse_checkpoint(raw).check(
                {nl_keys.signing.key_id: nl_keys.signing.public}
            )
        kept = _core("NL-POL", nl_keys, trust).take_receipt(raw, NOW)
        assert () == kept.send
        assert all(a.kind.startswith("witness_receipt") for a in kept.audit)
