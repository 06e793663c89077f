"""Fuzzing :func:`gateway.crypto.receipts.open_receipt`.

Three kinds of input: arbitrary bytes, valid receipts (signed with the sandbox's keys) after
random edits, and well-formed receipts, signed by BE-FPJ, whose fields hold hostile values.
Whatever comes in, open_receipt returns a receipt or raises one of the errors it names, quickly.

Budget (see tests/fuzz/conftest.py): derandomized and modest by default; for a long run by hand,
``FXGW_FUZZ_EXAMPLES=20000 pytest tests/fuzz -p no:cacheprovider``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.contract import _avro
from gateway.contract.schemas import SchemaRegistry
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.receipts import RECEIPT_TYPE, Outcome, Receipt, make_receipt, open_receipt
from gateway.crypto.trust import TrustList
from gateway.errors import BadSignature, MalformedEnvelope, NotForUs, UntrustedSender
from gateway.types import AgencyId, EventId, MessageId
from tests.fuzz.conftest import MAX_DETAIL, NOW, TIMEOUT, budget, corpus, read_case
from tests.strategies import (
    AGENCIES,
    avro_like_bytes,
    hostile_bytes,
    hostile_text,
    hostile_times,
    mutated,
)

pytestmark = TIMEOUT

OPEN_ERRORS = (MalformedEnvelope, NotForUs, UntrustedSender, BadSignature)
"""What open_receipt may raise, as its docstring says."""
CASES = corpus("receipt")
OUTCOMES: tuple[tuple[Outcome, str | None], ...] = (
    ("DELIVERED", None),
    ("REJECTED", "bad_signature"),
    ("DUPLICATE", None),
)
"""The outcome and reason of each sample receipt."""


@dataclass(frozen=True, slots=True)
class Samples:
    """Valid receipts from BE-FPJ to NL-POL, one for each of :data:`OUTCOMES`."""

    receipts: tuple[bytes, ...]

    @property
    def first(self) -> bytes:
        return self.receipts[0]

    def __repr__(self) -> str:
        return f"Samples({len(self.receipts)} receipts)"  # short in hypothesis's reports


@pytest.fixture(scope="module")
def samples(registry: SchemaRegistry, be_keys: AgencyKeys) -> Samples:
    """A few signed receipts, to edit and to splice."""
    return Samples(
        tuple(
            make_receipt(
                message_id=MessageId("0c0215f58ea14cfcf1b3594741987cb7"),
                event_id=EventId(f"ev-{i}"),
                sender=AgencyId("NL-POL"),
                recipient=be_keys.agency,
                envelope_digest=bytes(range(32)),
                outcome=outcome,
                reason=reason,
                received_at=NOW,
                signer=be_keys.signing,
                codec=registry,
            )
            for i, (outcome, reason) in enumerate(OUTCOMES)
        )
    )


def _open(registry: SchemaRegistry, trust: TrustList, data: bytes) -> Receipt:
    return open_receipt(data, trust=trust, codec=registry, agency=AgencyId("NL-POL"), now=NOW)


def open_or_refuse(registry: SchemaRegistry, trust: TrustList, data: bytes) -> Receipt | None:
    """The receipt NL-POL opens, or None when open_receipt raised one of the errors it names,
    with a short message."""
    try:
        return _open(registry, trust, data)
    except OPEN_ERRORS as exc:
        assert type(exc) in OPEN_ERRORS
        assert len(str(exc)) <= MAX_DETAIL
        return None


_IDS = st.one_of(hostile_text(), st.sampled_from(AGENCIES))
RECEIPT_VALUES = {
    "format_version": st.one_of(st.sampled_from((0, 1, 2, -1)), st.integers(-(2**31), 2**31 - 1)),
    "message_id": hostile_text(),
    "event_id": hostile_text(),
    "sender": _IDS,
    "recipient": _IDS,
    "envelope_digest": hostile_bytes(),
    "outcome": st.sampled_from(("DELIVERED", "REJECTED", "DUPLICATE")),
    "reason": st.one_of(st.none(), hostile_text()),
    "received_at": hostile_times(),
    "signing_key_id": hostile_text(),
    "signature": hostile_bytes(),
}
"""A hostile value for each receipt field, of the field's Avro type (so that it encodes)."""


@dataclass(frozen=True, slots=True)
class Hostile:
    """How to spoil a valid receipt: fields to replace, and whether BE-FPJ signs the result."""

    fields: dict[str, object]
    resign: bool


HOSTILE = st.builds(
    Hostile, fields=st.fixed_dictionaries({}, optional=RECEIPT_VALUES), resign=st.booleans()
)


def spoil(
    registry: SchemaRegistry, be_keys: AgencyKeys, original: bytes, hostile: Hostile
) -> bytes:
    """``original`` with the hostile values of ``hostile``, encoded as a well-formed receipt
    (with fastavro alone: every value is of its field's type already)."""
    schema = registry.get(RECEIPT_TYPE).parsed
    record = {**registry.decode(RECEIPT_TYPE, original), **hostile.fields}
    if hostile.resign and "signature" not in hostile.fields:
        unsigned = _avro.write(schema, {**record, "signature": b""})
        record["signature"] = be_keys.signing.sign(b"fxgw.receipt.v1\x00" + unsigned)
    return _avro.write(schema, record)


class TestOpenReceipt:
    """open_receipt returns a receipt or raises one of the errors it names."""

    @budget()
    @given(data=st.one_of(st.binary(max_size=1024), avro_like_bytes()))
    def test_arbitrary_bytes(self, registry: SchemaRegistry, trust: TrustList, data: bytes) -> None:
        """Random and Avro-shaped bytes are refused."""
        assert open_or_refuse(registry, trust, data) is None

    @budget()
    @given(choice=st.data())
    def test_edited_receipts(
        self, registry: SchemaRegistry, trust: TrustList, samples: Samples, choice: st.DataObject
    ) -> None:
        """An edited receipt is refused; only untouched bytes (the original, or a whole donor
        after a splice) give a receipt, and the one signed in them."""
        data = choice.draw(mutated(samples.first, samples.receipts[1:]))
        receipt = open_or_refuse(registry, trust, data)
        if receipt is not None:
            assert data in samples.receipts
            assert OUTCOMES[samples.receipts.index(data)] == (receipt.outcome, receipt.reason)

    @budget(0.5)
    @given(hostile=HOSTILE)
    def test_hostile_fields(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        be_keys: AgencyKeys,
        samples: Samples,
        hostile: Hostile,
    ) -> None:
        """Signed receipts with hostile field values are opened or refused, never a crash."""
        open_or_refuse(registry, trust, spoil(registry, be_keys, samples.first, hostile))


@pytest.mark.skipif(not CASES, reason="no stored receipt inputs")
class TestReceiptRegressions:
    """Every input a fuzz run found crashing is refused with the right error."""

    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
    def test_stored_input(self, registry: SchemaRegistry, trust: TrustList, path: Path) -> None:
        """The stored bytes are refused as malformed by open_receipt."""
        with pytest.raises(MalformedEnvelope) as caught:
            _open(registry, trust, read_case(path))
        assert MalformedEnvelope is type(caught.value)
