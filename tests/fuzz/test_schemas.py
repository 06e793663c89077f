"""Fuzzing the Avro contract's readers: :meth:`SchemaRegistry.decode` and
:meth:`SchemaRegistry.from_json`.

decode is fed arbitrary bytes and valid encodings (of the sample events and of hand-written
envelope parts) after random edits (huge and negative lengths and counts among them), for every
event type and for the envelope, its header and the receipt; from_json is fed valid JSON forms
with hostile values put in at random places (deep nesting, huge integers, NaN and infinities,
wrong types) and hostile documents.
Either reader returns a record that encode and to_json accept, or raises RecordInvalid, quickly.

Budget (see tests/fuzz/conftest.py): derandomized and modest by default; for a long run by hand,
``FXGW_FUZZ_EXAMPLES=20000 pytest tests/fuzz -p no:cacheprovider``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from gateway.contract import _avro
from gateway.contract.schemas import SchemaRegistry
from gateway.errors import RecordInvalid
from tests.fuzz.conftest import MAX_DETAIL, TIMEOUT, budget, corpus, read_case
from tests.strategies import avro_like_bytes, hostile_text, mutated, records_for

pytestmark = TIMEOUT

EVENT_TYPES = ("fxgw.SeizureEvent", "fxgw.TraceRequest", "fxgw.TraceResponse")
TRAVELLING = (*EVENT_TYPES, "fxgw.Envelope", "fxgw.EnvelopeHeader", "fxgw.Receipt")
"""Every record type whose bytes come from a peer."""
CASES = corpus("schemas")
EVENTS = Path(__file__).resolve().parents[1] / "data" / "events"


def _check_decoded(registry: SchemaRegistry, name: str, data: bytes) -> None:
    """decode gives a record that conforms (encode and to_json accept it), or RecordInvalid."""
    try:
        record = registry.decode(name, data)
    except RecordInvalid:
        return
    registry.to_json(name, record)
    registry.encode(name, record)


def _check_converted(registry: SchemaRegistry, name: str, document: object) -> None:
    """from_json gives a record that validate takes as it is, whose JSON form reads back the
    same; or it raises RecordInvalid naming a field, or the whole document when that is not an
    object, in a message that quotes no value."""
    try:
        record = registry.from_json(name, document)  # type: ignore[arg-type]
    except RecordInvalid as exc:
        assert (exc.field is None) == (not isinstance(document, dict))
        assert len(str(exc)) <= MAX_DETAIL
        return
    assert record == registry.validate(name, record)
    assert record == registry.from_json(
        name, json.loads(json.dumps(registry.to_json(name, record)))
    )


# --- valid records to start from ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Originals:
    """Valid records of every travelling type: the sample events of tests/data/events in their
    JSON form, and the Avro encodings of those and of an envelope, its header and a receipt."""

    documents: dict[str, tuple[dict[str, object], ...]]
    encodings: dict[str, tuple[bytes, ...]]

    def __repr__(self) -> str:
        return "Originals()"  # short in hypothesis's reports


_NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
_HEADER: dict[str, object] = {
    "format_version": 1,
    "message_id": "0c0215f58ea14cfcf1b3594741987cb7",
    "event_id": "ev-1",
    "sender": "NL-POL",
    "recipient": "BE-FPJ",
    "event_type": "fxgw.SeizureEvent",
    "schema_fingerprint": b"\x01" * 32,
    "policy_id": "nl-pol-release@2",
    "policy_rule": "seizure-eu",
    "policy_digest": b"\x02" * 32,
    "handling": {
        "code": "H3",
        "purpose": "fuzzing",
        "source_evaluation": "B",
        "information_evaluation": 2,
        "retention_days": 30,
        "onward_transfer": "WITH_CONSENT",
        "conditions": "none",
    },
    "created_at": _NOW,
    "expires_at": _NOW + dt.timedelta(days=1),
    "withheld": ["persons", "seizing_officer"],
    "transformed": ["recovery_location.latitude"],
    "sender_key_id": "NL-POL/sign/20261128T120000Z",
    "recipient_key_id": "BE-FPJ/encrypt/20261128T120000Z",
    "data_key_id": "4539ac21f20836fd9b473cd167b7483d",
    "wrapped_key": b"\x03" * 80,
    "nonce": b"\x04" * 24,
}
_RECEIPT: dict[str, object] = {
    "format_version": 1,
    "message_id": "0c0215f58ea14cfcf1b3594741987cb7",
    "event_id": "ev-1",
    "sender": "NL-POL",
    "recipient": "BE-FPJ",
    "envelope_digest": b"\x05" * 32,
    "outcome": "REJECTED",
    "reason": "bad_signature",
    "received_at": _NOW,
    "signing_key_id": "BE-FPJ/sign/20261128T120000Z",
    "signature": b"\x06" * 64,
}


@pytest.fixture(scope="module")
def originals(registry: SchemaRegistry) -> Originals:
    """The records to edit, from the sample events and hand-written envelope parts."""
    documents: dict[str, tuple[dict[str, object], ...]] = {}
    for path in sorted(EVENTS.glob("*.json")):
        sample = json.loads(path.read_text(encoding="utf-8"))
        name = sample["event_type"]
        documents[name] = (*documents.get(name, ()), sample["record"])
    encodings = {
        name: tuple(registry.encode(name, registry.from_json(name, d)) for d in found)
        for name, found in documents.items()
    }
    encodings["fxgw.EnvelopeHeader"] = (registry.encode("fxgw.EnvelopeHeader", _HEADER),)
    encodings["fxgw.Envelope"] = tuple(
        registry.encode(
            "fxgw.Envelope",
            {"header": _HEADER, "ciphertext": b"\x07" * size, "signature": b"\x08" * 64},
        )
        for size in (0, 40, 300)
    )
    encodings["fxgw.Receipt"] = (
        registry.encode("fxgw.Receipt", _RECEIPT),
        registry.encode("fxgw.Receipt", {**_RECEIPT, "outcome": "DELIVERED", "reason": None}),
    )
    assert set(EVENT_TYPES) == set(documents)
    return Originals(documents, encodings)


# --- hostile JSON --------------------------------------------------------------------------------

_NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from((2**31, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400), 10**4000)),
    st.floats(),  # NaN and the infinities among them
)
_TEXTS = st.one_of(
    hostile_text(),
    st.sampled_from(
        (
            "2026-13-45",
            "0000-01-01",
            "9999-12-31T23:59:59.999-01:00",
            "0001-01-01T00:00:00+01:00",
            "0001-01-01T00:00:00Z",
            "2026-11-20T25:61:61Z",
            "\u0662\u0660\u0662\u0666-\u0661\u0661-\u0662\u0660",  # Arabic-Indic digits
            "2026-11-20T09:42:17.250+99:99",
            "24:00:00",
            "not-a-uuid",
            "AAAA=",
            "====",
            "-1",
            "1e999",
        )
    ),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _TEXTS)


def _nest(depth: int, kind: str) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def hostile_json() -> SearchStrategy[object]:
    """JSON-like values a national system (or a buggy one) may hand over: wrong types, huge
    integers, NaN and infinities, odd strings, and structures nested far beyond the stack."""
    deep = st.builds(
        _nest, st.sampled_from((100, 1_100, 20_000)), st.sampled_from(("list", "dict"))
    )
    return st.one_of(
        deep,
        st.recursive(
            _SCALARS,
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ),
    )


def _replace(document: object, choice: st.DataObject, value: object) -> object:
    """``document`` with one place (the root, or somewhere inside) holding ``value``."""
    if isinstance(document, dict) and document and choice.draw(st.booleans(), label="descend"):
        key = choice.draw(st.sampled_from(sorted(document)), label="key")
        return {**document, key: _replace(document[key], choice, value)}
    if isinstance(document, list) and document and choice.draw(st.booleans(), label="descend"):
        index = choice.draw(st.integers(0, len(document) - 1), label="index")
        return [*document[:index], _replace(document[index], choice, value), *document[index + 1 :]]
    if isinstance(document, dict) and choice.draw(st.booleans(), label="add"):
        return {**document, choice.draw(st.text(max_size=12), label="new key"): value}
    return value


# --- the tests -----------------------------------------------------------------------------------


class TestDecode:
    """decode returns a conforming record or raises RecordInvalid, for every travelling type."""

    @pytest.mark.parametrize("name", TRAVELLING)
    @budget(0.5)
    @given(data=st.one_of(st.binary(max_size=1024), avro_like_bytes()))
    def test_arbitrary_bytes(self, registry: SchemaRegistry, name: str, data: bytes) -> None:
        """Random and Avro-shaped bytes decode to a conforming record or are refused."""
        _check_decoded(registry, name, data)

    @pytest.mark.parametrize("name", TRAVELLING)
    @budget(0.5)
    @given(choice=st.data())
    def test_edited_encodings(
        self, registry: SchemaRegistry, originals: Originals, name: str, choice: st.DataObject
    ) -> None:
        """The encoding of a valid record, edited, decodes to a conforming record or is
        refused."""
        encodings = originals.encodings[name]
        original = choice.draw(st.sampled_from(encodings), label="original")
        edited = choice.draw(mutated(original, encodings), label="edited")
        _check_decoded(registry, name, edited)


class TestFromJson:
    """from_json returns a record or raises RecordInvalid, whatever the document holds."""

    @pytest.mark.parametrize("name", EVENT_TYPES)
    @budget(0.5)
    @given(choice=st.data())
    def test_hostile_values_in_valid_documents(
        self, registry: SchemaRegistry, originals: Originals, name: str, choice: st.DataObject
    ) -> None:
        """A valid JSON form with a hostile value somewhere is converted or refused."""
        document = choice.draw(st.sampled_from(originals.documents[name]), label="document")
        value = choice.draw(hostile_json(), label="value")
        _check_converted(registry, name, _replace(document, choice, value))

    @pytest.mark.parametrize("name", EVENT_TYPES)
    @budget(0.5)
    @given(document=hostile_json())
    def test_hostile_documents(self, registry: SchemaRegistry, name: str, document: object) -> None:
        """A hostile document (a record or anything else) is converted or refused."""
        _check_converted(registry, name, document)


class TestForms:
    """The conversions agree with each other and with fastavro, for any conforming record."""

    @pytest.mark.parametrize("name", EVENT_TYPES)
    @budget(0.5)
    @given(choice=st.data())
    def test_json_form_round_trip(
        self, registry: SchemaRegistry, name: str, choice: st.DataObject
    ) -> None:
        """The JSON form of a record reads back as the record, its fields in schema order, and
        what a decode gives is written alike."""
        record = registry.validate(name, choice.draw(records_for(registry.get(name))))
        document = registry.to_json(name, record)
        assert [f.name for f in registry.get(name).fields] == list(document)
        assert record == registry.from_json(name, json.loads(json.dumps(document)))
        decoded = registry.decode(name, registry.encode(name, record))
        assert json.dumps(document) == json.dumps(registry.to_json_decoded(name, decoded))

    @pytest.mark.parametrize("name", EVENT_TYPES)
    @budget(0.5)
    @given(choice=st.data())
    def test_fastavro_takes_what_validate_takes(
        self, registry: SchemaRegistry, name: str, choice: st.DataObject
    ) -> None:
        """A record validate takes is one fastavro's own validation takes too."""
        record = registry.validate(name, choice.draw(records_for(registry.get(name))))
        assert () == _avro.problems(registry.get(name).parsed, record)


class TestContractRegressions:
    """Every input a fuzz run found crashing is refused by decode, naming the field."""

    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
    def test_stored_bytes(self, registry: SchemaRegistry, path: Path) -> None:
        """The stored bytes (named ``<type>.<what>.hex``) are refused, naming a field."""
        name = ".".join(path.name.split(".")[:2])
        with pytest.raises(RecordInvalid) as caught:
            registry.decode(name, read_case(path))
        assert RecordInvalid is type(caught.value)
        assert caught.value.field is not None
