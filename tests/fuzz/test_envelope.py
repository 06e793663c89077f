"""Fuzzing the envelope readers: :func:`read_header` and :func:`open_envelope`.

Three kinds of input: arbitrary bytes, valid envelopes (sealed with the sandbox's keys) after
random edits, and well-formed, freshly signed envelopes whose header fields hold hostile values
(in format 2 also the sealed inner header, sealed again with a valid data key). Every test runs
for both envelope formats (contract 1.0's format 1 and 1.1's format 2). Whatever comes in, a
reader returns or raises one of the errors its docstring names, quickly.

Budget (see tests/fuzz/conftest.py): derandomized and modest by default; for a long run by hand,
``FXGW_FUZZ_EXAMPLES=20000 pytest tests/fuzz -p no:cacheprovider``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.contract import _avro
from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract
from gateway.crypto.envelope import (
    ENVELOPE_TYPE,
    HEADER_TYPE,
    DataKeyRing,
    Handling,
    Header,
    PairKeys,
    Sealed,
    UnwrapCache,
    keyed_message_id,
    message_id_for,
    open_envelope,
    read_header,
    seal,
    signing_input,
)
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList
from gateway.errors import (
    BadSignature,
    DecryptionFailed,
    MalformedEnvelope,
    MessageIdMismatch,
    NotForUs,
    Stale,
    UntrustedSender,
)
from gateway.node.config import DEFAULT_SCHEMAS
from gateway.types import AgencyId, EventId, EventType, MessageId
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

OPEN_ERRORS = (
    MalformedEnvelope,
    UntrustedSender,
    BadSignature,
    NotForUs,
    Stale,
    DecryptionFailed,
    MessageIdMismatch,
)
"""What open_envelope may raise, as its docstring says."""
CASES = corpus("envelope")


@pytest.fixture(scope="module", params=["1.0", "1.1"], ids=["format1", "format2"])
def registry(request: pytest.FixtureRequest) -> SchemaRegistry:
    """Both envelope formats: contract 1.0's (format 1) and 1.1's (format 2)."""
    return Contract.load(DEFAULT_SCHEMAS).version(str(request.param)).registry


def _format(registry: SchemaRegistry) -> int:
    return registry.get(ENVELOPE_TYPE).format


@dataclass(frozen=True, slots=True)
class Samples:
    """Valid envelopes from NL-POL (the first three to BE-FPJ, the last to US-ATF) and the
    plaintext each holds."""

    envelopes: tuple[bytes, ...]
    plaintexts: tuple[bytes, ...]

    @property
    def first(self) -> bytes:
        return self.envelopes[0]

    def __repr__(self) -> str:
        return f"Samples({len(self.envelopes)} envelopes)"  # short in hypothesis's reports


@pytest.fixture(scope="module")
def samples(registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys) -> Samples:
    """A few sealed envelopes, to edit and to splice."""
    views = [
        ("BE-FPJ", b"released record bytes"),
        ("BE-FPJ", b""),
        ("BE-FPJ", b"x" * 300),
        ("US-ATF", b"another view"),
    ]
    sealed = []
    for i, (recipient, plaintext) in enumerate(views):
        public = trust.encryption_key(recipient, NOW)
        assert public is not None
        event_id = f"ev-{i}"
        template = replace(
            _template(registry),
            message_id=_message_id(registry, nl_keys, public.public, event_id, recipient),
            event_id=EventId(event_id),
            recipient=AgencyId(recipient),
            withheld=("persons",),
            transformed=("recovery_location.latitude",),
            sender_encryption_key_id=nl_keys.encryption[0].key_id,
        )
        sealed.append(_seal(registry, trust, nl_keys, template, plaintext))
    return Samples(tuple(s.data for s in sealed), tuple(plaintext for _, plaintext in views))


def _message_id(
    registry: SchemaRegistry, nl_keys: AgencyKeys, public: bytes, event_id: str, recipient: str
) -> str:
    """The message id NL-POL gives ``event_id`` for ``recipient`` in the registry's format."""
    if _format(registry) == 1:
        return message_id_for("NL-POL", event_id, recipient)
    pair = PairKeys().derive(nl_keys.encryption[0], public, sending=True)
    return keyed_message_id(pair, "NL-POL", event_id, recipient)


def _seal(
    registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, template: Header, body: bytes
) -> Sealed:
    public = trust.encryption_key(template.recipient, NOW)
    assert public is not None
    data_key = DataKeyRing().key_for(template.recipient, public, NOW)
    return seal(
        template,
        body,
        signer=nl_keys.signing,
        data_key=data_key,
        codec=registry,
        format_version=_format(registry),
    )


def _open(registry: SchemaRegistry, trust: TrustList, keys: AgencyKeys, data: bytes) -> bytes:
    return open_envelope(
        data,
        keys=keys,
        trust=trust,
        cache=UnwrapCache(),
        codec=registry,
        now=NOW,
        format_version=_format(registry),
    ).plaintext


def read_or_refuse(registry: SchemaRegistry, data: bytes) -> None:
    """read_header returns, or raises MalformedEnvelope with a short message."""
    try:
        read_header(data, registry, _format(registry))
    except MalformedEnvelope as exc:
        assert MalformedEnvelope is type(exc)
        assert len(str(exc)) <= MAX_DETAIL


def open_or_refuse(
    registry: SchemaRegistry, trust: TrustList, keys: AgencyKeys, data: bytes
) -> bytes | None:
    """open_envelope's plaintext, or None when it raised one of the errors it names, with a
    short message."""
    try:
        return _open(registry, trust, keys, data)
    except OPEN_ERRORS as exc:
        assert type(exc) in OPEN_ERRORS
        assert len(str(exc)) <= MAX_DETAIL
        return None


# --- hostile but well-formed envelopes -----------------------------------------------------------

_INT32 = st.one_of(st.sampled_from((0, 1, 2, -1)), st.integers(-(2**31), 2**31 - 1))
_TEXT_LISTS = st.one_of(
    st.lists(hostile_text(), max_size=4),
    # far beyond the header limit; the million-entry list that took seconds is a stored case
    st.sampled_from((1_025, 20_000)).map(lambda n: [""] * n),
)
_HANDLING = st.fixed_dictionaries(
    {
        "code": st.sampled_from(("H0", "H1", "H2", "H3")),
        "purpose": hostile_text(),
        "source_evaluation": st.sampled_from(("A", "B", "C", "X")),
        "information_evaluation": _INT32,
        "retention_days": st.one_of(st.none(), _INT32),
        "onward_transfer": st.sampled_from(("NONE", "WITH_CONSENT", "ALLOWED")),
        "conditions": st.one_of(st.none(), hostile_text()),
    }
)
_IDS = st.one_of(hostile_text(), st.sampled_from(AGENCIES))
HEADER_VALUES = {
    "format_version": _INT32,
    "message_id": hostile_text(),
    "event_id": hostile_text(),
    "sender": _IDS,
    "recipient": _IDS,
    "event_type": hostile_text(),
    "schema_fingerprint": hostile_bytes(),
    "policy_id": hostile_text(),
    "policy_rule": hostile_text(),
    "policy_digest": hostile_bytes(),
    "handling": _HANDLING,
    "created_at": hostile_times(),
    "expires_at": hostile_times(),
    "withheld": _TEXT_LISTS,
    "transformed": _TEXT_LISTS,
    "sender_key_id": hostile_text(),
    "recipient_key_id": hostile_text(),
    "sender_encryption_key_id": hostile_text(),
    "data_key_id": hostile_text(),
    "wrapped_key": hostile_bytes(),
    "nonce": hostile_bytes(),
}
"""A hostile value for each header field, of the field's Avro type (so that it encodes); a
format takes those of its clear header."""
INNER_FIELDS = (
    "event_id",
    "event_type",
    "schema_fingerprint",
    "policy_id",
    "policy_rule",
    "policy_digest",
    "handling",
    "withheld",
    "transformed",
)
"""The fields format 2 seals with the body."""


@dataclass(frozen=True, slots=True)
class Hostile:
    """How to spoil a valid envelope: header fields to replace, the body or signature to replace,
    whether to derive the message id again and whether to sign the result with NL-POL's key."""

    header: dict[str, object]
    envelope: dict[str, object]
    rederive: bool
    resign: bool


HOSTILE = st.builds(
    Hostile,
    header=st.fixed_dictionaries({}, optional=HEADER_VALUES),
    envelope=st.fixed_dictionaries(
        {}, optional={"ciphertext": hostile_bytes(), "signature": hostile_bytes()}
    ),
    rederive=st.booleans(),
    resign=st.booleans(),
)


def spoil(
    registry: SchemaRegistry, nl_keys: AgencyKeys, original: bytes, hostile: Hostile
) -> bytes:
    """``original`` with the hostile values of ``hostile``, encoded as a well-formed envelope.

    Encoded with fastavro alone: the registry's own checks would take seconds over the huge
    values, and every value here is of its field's type already.
    """
    record = registry.decode(ENVELOPE_TYPE, original)
    clear = record["header"]
    assert isinstance(clear, dict)
    header = {**clear, **{k: v for k, v in hostile.header.items() if k in clear}}
    if hostile.rederive and _format(registry) == 1:
        header["message_id"] = message_id_for(
            str(header["sender"]), str(header["event_id"]), str(header["recipient"])
        )
    envelope = {**record, "header": header, **hostile.envelope}
    if hostile.resign and "signature" not in hostile.envelope:
        header_bytes = _avro.write(registry.get(HEADER_TYPE).parsed, header)
        ciphertext = envelope["ciphertext"]
        assert isinstance(ciphertext, bytes)
        envelope["signature"] = nl_keys.signing.sign(signing_input(header_bytes, ciphertext))
    return _avro.write(registry.get(ENVELOPE_TYPE).parsed, envelope)


# --- the tests -----------------------------------------------------------------------------------


class TestReadHeader:
    """read_header returns a header or raises MalformedEnvelope, whatever the bytes."""

    @budget()
    @given(data=st.one_of(st.binary(max_size=2048), avro_like_bytes()))
    def test_arbitrary_bytes(self, registry: SchemaRegistry, data: bytes) -> None:
        """Random and Avro-shaped bytes are parsed or refused as malformed."""
        read_or_refuse(registry, data)

    @budget()
    @given(choice=st.data())
    def test_edited_envelopes(
        self, registry: SchemaRegistry, samples: Samples, choice: st.DataObject
    ) -> None:
        """A valid envelope after flips, insertions, deletions, cuts and splices is parsed or
        refused as malformed."""
        read_or_refuse(registry, choice.draw(mutated(samples.first, samples.envelopes[1:])))

    @budget(0.5)
    @given(hostile=HOSTILE)
    def test_hostile_fields(
        self, registry: SchemaRegistry, nl_keys: AgencyKeys, samples: Samples, hostile: Hostile
    ) -> None:
        """Well-formed envelopes with hostile header values are parsed or refused as malformed."""
        read_or_refuse(registry, spoil(registry, nl_keys, samples.first, hostile))


class TestOpenEnvelope:
    """open_envelope returns the plaintext of an untouched envelope only, and otherwise raises
    one of the errors it names."""

    @budget()
    @given(data=st.one_of(st.binary(max_size=2048), avro_like_bytes()))
    def test_arbitrary_bytes(
        self, registry: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys, data: bytes
    ) -> None:
        """Random and Avro-shaped bytes never open."""
        assert open_or_refuse(registry, trust, be_keys, data) is None

    @budget()
    @given(choice=st.data())
    def test_edited_envelopes(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        be_keys: AgencyKeys,
        samples: Samples,
        choice: st.DataObject,
    ) -> None:
        """An edited envelope never opens; only untouched bytes (the original, or a whole donor
        after a splice) give a plaintext, and the one sealed in them."""
        data = choice.draw(mutated(samples.first, samples.envelopes[1:]))
        plaintext = open_or_refuse(registry, trust, be_keys, data)
        if plaintext is not None:
            assert data in samples.envelopes
            assert samples.plaintexts[samples.envelopes.index(data)] == plaintext

    @budget(0.5)
    @given(hostile=HOSTILE)
    def test_hostile_fields(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        samples: Samples,
        hostile: Hostile,
    ) -> None:
        """Signed envelopes with hostile header values are opened or refused, never a crash."""
        open_or_refuse(registry, trust, be_keys, spoil(registry, nl_keys, samples.first, hostile))

    @budget(0.5)
    @given(inner=st.fixed_dictionaries({}, optional={k: HEADER_VALUES[k] for k in INNER_FIELDS}))
    def test_hostile_sealed_fields(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
        inner: dict[str, object],
    ) -> None:
        """Format 2: validly sealed and signed envelopes whose inner header holds hostile values
        are opened (the message id then matches the sealed event id) or refused."""
        handling = inner.pop("handling", None)
        values: dict[str, object] = {
            **inner,
            **({"handling": Handling(**handling)} if isinstance(handling, dict) else {}),
        }
        for name in ("withheld", "transformed"):
            if name in values:
                values[name] = tuple(values[name])  # type: ignore[call-overload]
        public = trust.encryption_key("BE-FPJ", NOW)
        assert public is not None
        event_id = str(values.get("event_id", "ev-1"))
        template = replace(
            _template(registry),
            sender_encryption_key_id=nl_keys.encryption[0].key_id,
            message_id=_message_id(registry, nl_keys, public.public, event_id, "BE-FPJ"),
            **values,  # type: ignore[arg-type]
        )
        data = _seal(registry, trust, nl_keys, template, b"body").data
        opened = open_or_refuse(registry, trust, be_keys, data)
        if not inner:
            assert b"body" == opened  # the unspoiled envelope opens: the test reaches the checks


def _template(registry: SchemaRegistry) -> Header:
    return Header(
        message_id=MessageId(""),
        event_id=EventId("ev-1"),
        sender=AgencyId("NL-POL"),
        recipient=AgencyId("BE-FPJ"),
        event_type=EventType("fxgw.SeizureEvent"),
        schema_fingerprint=registry.get("fxgw.SeizureEvent").fingerprint,
        policy_id="nl-pol-release@2",
        policy_rule="seizure-eu",
        policy_digest=b"\x02" * 32,
        handling=Handling("H2", "fuzzing", "B", 2, "WITH_CONSENT", 30, None),
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
    )


@pytest.mark.skipif(not CASES, reason="no stored envelope inputs")
class TestEnvelopeRegressions:
    """Every input a fuzz run found crashing is refused with the right error."""

    @pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
    def test_stored_input(
        self,
        registry: SchemaRegistry,
        trust: TrustList,
        be_keys: AgencyKeys,
        path: Path,
    ) -> None:
        """The stored bytes are refused as malformed by read_header and by open_envelope."""
        data = read_case(path)
        with pytest.raises(MalformedEnvelope) as by_read:
            read_header(data, registry, _format(registry))
        with pytest.raises(MalformedEnvelope) as by_open:
            _open(registry, trust, be_keys, data)
        assert (MalformedEnvelope, MalformedEnvelope) == (type(by_read.value), type(by_open.value))
