"""Size limits on envelope headers and receipts: honest maxima pass, one more is malformed."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.contract.schemas import SchemaRegistry
from gateway.crypto.envelope import (
    DataKeyRing,
    Handling,
    Header,
    UnwrapCache,
    message_id_for,
    open_envelope,
    seal,
)
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.limits import MAX_BYTES, MAX_NAME, MAX_PATHS, MAX_TEXT, check_sizes
from gateway.crypto.receipts import make_receipt, open_receipt
from gateway.crypto.trust import TrustList
from gateway.errors import MalformedEnvelope, PolicyError
from gateway.policy.engine import load_policy
from gateway.types import AgencyId, EventId, EventType, MessageId
from tests.unit.conftest import NOW

LIMITS = {"name": MAX_NAME, "digest": MAX_BYTES, "paths": MAX_PATHS}


class TestCheckSizes:
    """check_sizes names the first field over its limit, and never its value."""

    def test_values_at_their_limits_pass(self) -> None:
        """A string, bytes and a list exactly at their limits are accepted."""
        record = {"name": "n" * MAX_NAME, "digest": b"d" * MAX_BYTES, "paths": ["p"] * MAX_PATHS}
        assert check_sizes(record, LIMITS, "header") is None

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("name", "\x00" * (MAX_NAME + 1), f"header.name is longer than {MAX_NAME} characters"),
            ("digest", b"d" * (MAX_BYTES + 1), f"header.digest is longer than {MAX_BYTES} bytes"),
            ("paths", ["p"] * (MAX_PATHS + 1), f"header.paths has more than {MAX_PATHS} entries"),
            (
                "paths",
                ["p" * (MAX_NAME + 1)],
                f"header.paths has an entry longer than {MAX_NAME} characters",
            ),
        ],
    )
    def test_one_more_is_malformed(self, field: str, value: object, message: str) -> None:
        """One character, byte or entry more is refused, naming the field only."""
        with pytest.raises(MalformedEnvelope) as caught:
            check_sizes({field: value}, LIMITS, "header")
        assert message == str(caught.value)

    def test_fields_not_named_and_other_types_are_not_checked(self) -> None:
        """Only the fields given limits are checked, and only strings, bytes and lists."""
        record = {"other": "x" * 10_000, "name": 10**100}
        assert check_sizes(record, LIMITS, "header") is None


def _sealed(
    registry: SchemaRegistry, trust: TrustList, sender: AgencyKeys, header: Header
) -> bytes:
    public = trust.encryption_key("BE-FPJ", NOW)
    assert public is not None
    data_key = DataKeyRing().key_for(AgencyId("BE-FPJ"), public, NOW)
    return seal(header, b"x", signer=sender.signing, data_key=data_key, codec=registry).data


def _largest_header(event_id: str = "e" * 128) -> Header:
    return Header(
        message_id=message_id_for("NL-POL", event_id, "BE-FPJ"),
        event_id=EventId(event_id),
        sender=AgencyId("NL-POL"),
        recipient=AgencyId("BE-FPJ"),
        event_type=EventType("fxgw.SeizureEvent"),
        schema_fingerprint=b"\x01" * 32,
        policy_id="p" * MAX_NAME,
        policy_rule="r" * MAX_NAME,
        policy_digest=b"\x02" * 32,
        handling=Handling("H3", "u" * MAX_TEXT, "B", 2, "NONE", 30, "c" * MAX_TEXT),
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
        withheld=tuple(f"{i:0{MAX_NAME}d}" for i in range(MAX_PATHS)),
        transformed=("t" * MAX_NAME,),
    )


class TestHeaderLimits:
    """An envelope whose header is as large as the limits allow opens; one beyond does not."""

    def test_largest_honest_header_opens(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """Every header field at its limit: the envelope opens."""
        data = _sealed(registry, trust, nl_keys, _largest_header())
        opened = open_envelope(
            data, keys=be_keys, trust=trust, cache=UnwrapCache(), codec=registry, now=NOW
        )
        assert b"x" == opened.plaintext

    def test_one_path_too_many_is_malformed(
        self, registry: SchemaRegistry, trust: TrustList, nl_keys: AgencyKeys, be_keys: AgencyKeys
    ) -> None:
        """A signed envelope withholding one path more than the limit is malformed."""
        header = _largest_header()
        header = replace(header, withheld=(*header.withheld, "persons"))
        data = _sealed(registry, trust, nl_keys, header)
        with pytest.raises(MalformedEnvelope, match=r"header\.withheld has more than"):
            open_envelope(
                data, keys=be_keys, trust=trust, cache=UnwrapCache(), codec=registry, now=NOW
            )


class TestReceiptLimits:
    """A receipt's fields are held to the same limits."""

    def test_long_reason_is_malformed(
        self, registry: SchemaRegistry, trust: TrustList, be_keys: AgencyKeys
    ) -> None:
        """A reason code longer than a name may be is refused, naming the field."""
        data = make_receipt(
            message_id=MessageId("m" * 32),
            event_id=EventId("ev-1"),
            sender=AgencyId("NL-POL"),
            recipient=be_keys.agency,
            envelope_digest=b"\x00" * 32,
            outcome="REJECTED",
            reason="r" * (MAX_NAME + 1),
            received_at=NOW,
            signer=be_keys.signing,
            codec=registry,
        )
        with pytest.raises(MalformedEnvelope, match=r"receipt\.reason is longer than"):
            open_receipt(data, trust=trust, codec=registry, agency=AgencyId("NL-POL"), now=NOW)


class TestPolicyLimits:
    """A policy cannot make a sender write a header that receivers refuse for its size."""

    @pytest.mark.parametrize(
        ("line", "text"),
        [
            (3, f"  id: {'p' * 129}"),
            (6, f"  - id: {'r' * (MAX_NAME + 1)}"),
            (
                9,
                "    handling: {code: H2, source: B, information: 2, purpose: "
                + "u" * (MAX_TEXT + 1)
                + "}",
            ),
        ],
    )
    def test_too_long_is_refused_at_its_line(
        self, registry: SchemaRegistry, tmp_path: Path, line: int, text: str
    ) -> None:
        """A policy id, rule id or purpose beyond the header limits is refused at its line."""
        lines = [
            "policy:",
            "  agency: NL-POL",
            "  id: limits",
            "  version: 1",
            "rules:",
            "  - id: seizure",
            "    event: fxgw.SeizureEvent",
            "    to: {all: true}",
            "    handling: {code: H2, purpose: testing, source: B, information: 2}",
        ]
        lines[line - 1] = text
        path = tmp_path / "limits.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(PolicyError) as caught:
            load_policy(path, registry)
        assert (str(path), line) == (caught.value.file, caught.value.line)

    def test_policy_at_the_limits_loads(self, registry: SchemaRegistry, tmp_path: Path) -> None:
        """The longest policy id, version, rule id and purpose the limits allow are accepted."""
        path = tmp_path / "limits.yaml"
        path.write_text(
            "policy: {agency: NL-POL, id: " + "p" * 128 + ", version: 999999999}\n"
            "rules:\n"
            "  - id: " + "r" * MAX_NAME + "\n"
            "    event: fxgw.SeizureEvent\n"
            "    to: {all: true}\n"
            "    handling: {code: H2, purpose: " + "u" * MAX_TEXT + ", source: B, information: 2}\n"
            "    fields: {event_id: keep, reported_at: keep, reporting_agency: keep,"
            " firearms: keep}\n",
            encoding="utf-8",
        )
        policy = load_policy(path, registry)
        assert MAX_NAME >= len(policy.policy_id)
