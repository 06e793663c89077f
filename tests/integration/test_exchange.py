"""Three agencies on a real Kafka: release, one recipient per envelope, quarantine of bad ones."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.core.outbound import parse_plain_event
from gateway.crypto.envelope import open_envelope
from gateway.crypto.keys import generate_signing_key
from gateway.dev.demo import seizure_nl, seizure_us, trace_request_nl, trace_response_be
from gateway.dev.sandbox import Federation
from gateway.errors import NotForUs
from gateway.node.transport import read_topic
from gateway.types import KeyId
from tests.integration.conftest import (
    delivered,
    national_send,
    publish_raw,
    quarantined,
    running,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _reasons(messages: list[object]) -> list[str]:
    return sorted((m.header("fxgw-reason") or b"").decode() for m in messages)  # type: ignore[attr-defined]


class TestSeizureFanOut:
    """A seizure from NL-POL reaches BE-FPJ (EU) and US-ATF (non-EU) in two released forms."""

    async def test_each_recipient_gets_only_what_the_policy_allows(
        self, federation: Federation
    ) -> None:
        """BE-FPJ gets the EU view, US-ATF firearms only; withheld values never arrive."""
        event = seizure_nl()
        async with running(federation, "NL-POL", "BE-FPJ", "US-ATF"):
            await national_send(federation, "NL-POL", event)
            await wait_until(
                lambda: _both(federation), "deliveries at BE-FPJ and US-ATF", within_s=60
            )
            be = (await delivered(federation, "BE-FPJ"))[0]
            us = (await delivered(federation, "US-ATF"))[0]
        source = event["record"]
        assert isinstance(source, dict)
        assert "seizure-eu" == be["provenance"]["policy_rule"]  # type: ignore[index]
        assert "seizure-partners" == us["provenance"]["policy_rule"]  # type: ignore[index]
        be_record, us_record = be["record"], us["record"]
        assert isinstance(be_record, dict) and isinstance(us_record, dict)
        assert "Jansen" == be_record["persons"][0]["family_name"]
        assert be_record["persons"][0]["address"] is None
        assert "[REDACTED]" == be_record["persons"][0]["identity_document_number"]
        assert "NL-2026-RTM-004512" == be_record["case_reference"]
        assert re.fullmatch("[A-Z2-7]{26}", us_record["persons"][0]["family_name"])
        assert us_record["persons"][0]["given_names"] is None
        assert "30-39" == us_record["persons"][0]["age_band"]
        assert us_record["case_reference"] is None
        assert "FN4711-22" == us_record["firearms"][0]["serial_number"]
        assert "persons[].given_names" in us["provenance"]["withheld"]  # type: ignore[index]
        assert "persons[].address" in be["provenance"]["withheld"]  # type: ignore[index]
        # values of withheld fields appear nowhere in what was delivered
        for doc, secrets in (
            (be, ["NX1234567", "Havenstraat", "Kade 3", "51.9225"]),
            (us, ["Jansen", "Pieter", "NL-2026-RTM-004512", "Rotterdam", "NX1234567"]),
        ):
            text = json.dumps(doc)
            for secret in secrets:
                assert secret not in text

    async def test_a_recipient_cannot_open_another_recipients_envelope(
        self, federation: Federation
    ) -> None:
        """US-ATF's keys refuse BE-FPJ's envelope; put in US-ATF's inbox it is quarantined."""
        async with running(federation, "NL-POL", "BE-FPJ", "US-ATF") as nodes:
            await national_send(federation, "NL-POL", seizure_nl())
            await wait_until(lambda: _both(federation), "deliveries")
            for_be = (await read_topic(federation.bootstrap, federation.inbox("BE-FPJ")))[0]
            us = nodes["US-ATF"].inbound
            with pytest.raises(NotForUs):
                open_envelope(
                    for_be.value,
                    keys=us.keys,
                    trust=us.trust,
                    cache=us.cache,
                    codec=us.registry,
                    now=datetime.now(UTC),
                    format_version=2,  # the sandbox speaks contract 1.1
                )
            await publish_raw(federation, federation.inbox("US-ATF"), for_be.value)
            await wait_until(
                lambda: _count(quarantined(federation, "US-ATF"), 1), "US-ATF quarantine"
            )
            q = await quarantined(federation, "US-ATF")
            assert ["not_for_us"] == _reasons(q)
            assert for_be.value == q[0].value
            assert 1 == len(await delivered(federation, "US-ATF"))


class TestQuarantine:
    """Envelopes that fail a check go to quarantine with a reason and are never delivered."""

    @pytest.mark.parametrize("where", ["header", "ciphertext", "signature"])
    async def test_an_envelope_altered_in_transit_is_quarantined(
        self, federation: Federation, where: str
    ) -> None:
        """One flipped bit anywhere in the envelope: quarantined, and the stream goes on."""
        async with running(federation, "NL-POL", "BE-FPJ"):
            await national_send(federation, "NL-POL", seizure_nl())
            await wait_until(lambda: _count(delivered(federation, "BE-FPJ"), 1), "first delivery")
            original = (await read_topic(federation.bootstrap, federation.inbox("BE-FPJ")))[0].value
            altered = bytearray(original)
            offset = {
                "header": 40,
                "ciphertext": len(original) - 100,
                "signature": len(original) - 5,
            }
            altered[offset[where]] ^= 0x04
            await publish_raw(federation, federation.inbox("BE-FPJ"), bytes(altered))
            await national_send(federation, "NL-POL", seizure_nl())
            await wait_until(lambda: _count(delivered(federation, "BE-FPJ"), 2), "second delivery")
            await wait_until(lambda: _count(quarantined(federation, "BE-FPJ"), 1), "quarantine")
            q = await quarantined(federation, "BE-FPJ")
        assert 1 == len(q)
        assert _reasons(q)[0] in {"bad_signature", "malformed", "untrusted_sender", "not_for_us"}
        assert bytes(altered) == q[0].value
        assert 2 == len(await delivered(federation, "BE-FPJ"))

    async def test_an_envelope_signed_by_an_unlisted_key_is_quarantined(
        self, federation: Federation
    ) -> None:
        """A well-formed envelope whose signing key is not on the trust list is refused."""
        async with running(federation, "NL-POL", "BE-FPJ") as nodes:
            nl = nodes["NL-POL"]
            rogue = replace(
                nl.outbound,
                keys=replace(
                    nl.outbound.keys, signing=generate_signing_key(KeyId("NL-POL/sign/x"))
                ),
            )
            event = parse_plain_event(seizure_nl(), nl.registry)
            sealed = rogue.release(event, datetime.now(UTC)).envelopes
            forged = next(s for s in sealed if s.header.recipient == "BE-FPJ")
            await publish_raw(federation, federation.inbox("BE-FPJ"), forged.data)
            await wait_until(lambda: _count(quarantined(federation, "BE-FPJ"), 1), "quarantine")
            q = await quarantined(federation, "BE-FPJ")
            assert ["untrusted_sender"] == _reasons(q)
            assert [] == await delivered(federation, "BE-FPJ")

    async def test_a_nonconforming_event_is_quarantined_locally_and_the_stream_goes_on(
        self, federation: Federation
    ) -> None:
        """The national system's bad events are quarantined with the field named; good ones flow."""
        bad = seizure_nl()
        record = bad["record"]
        assert isinstance(record, dict)
        record["firearms"][0]["calibre"] = 9  # type: ignore[index]
        async with running(federation, "NL-POL", "BE-FPJ"):
            await national_send(
                federation, "NL-POL", bad, {"event_type": "fxgw.Nope", "record": {}}
            )
            await national_send(federation, "NL-POL", seizure_nl())
            await wait_until(lambda: _count(delivered(federation, "BE-FPJ"), 1), "delivery")
            await wait_until(lambda: _count(quarantined(federation, "NL-POL"), 2), "quarantine")
            q = await quarantined(federation, "NL-POL")
        assert ["schema_invalid", "unknown_event_type"] == _reasons(q)
        details = [(m.header("fxgw-detail") or b"").decode() for m in q]
        assert any("firearms[0].calibre" in d for d in details)


class TestTraceRoundTrip:
    """A trace request goes to the country of manufacture; the answer comes back."""

    async def test_trace_request_and_response(self, federation: Federation) -> None:
        """NL-POL asks about a Belgian pistol; BE-FPJ receives it and its answer reaches NL-POL."""
        async with running(federation, "NL-POL", "BE-FPJ", "US-ATF"):
            await national_send(federation, "NL-POL", trace_request_nl())
            await wait_until(lambda: _count(delivered(federation, "BE-FPJ"), 1), "request at BE")
            request = (await delivered(federation, "BE-FPJ"))[0]
            assert "fxgw.TraceRequest" == request["event_type"]
            record, provenance = request["record"], request["provenance"]
            assert isinstance(record, dict) and isinstance(provenance, dict)
            possessor = record["possessor"]
            assert isinstance(possessor, dict)  # urgent: a pseudonym, no name
            assert re.fullmatch("[A-Z2-7]{26}", possessor["family_name"])
            assert possessor["given_names"] is None
            await national_send(federation, "BE-FPJ", trace_response_be(record, provenance))

            async def responses() -> list[dict[str, object]]:
                documents = await delivered(federation, "NL-POL")
                return [d for d in documents if d["event_type"] == "fxgw.TraceResponse"]

            await wait_until(responses, "response at NL")
            (response,) = await responses()
            at_nl = {d["event_type"] for d in await delivered(federation, "NL-POL")}
            us = await delivered(federation, "US-ATF")
        assert "fxgw.TraceResponse" == response["event_type"]
        assert "BE-FPJ" == response["provenance"]["sender"]  # type: ignore[index]
        assert "TRACED" == response["record"]["outcome"]  # type: ignore[index]
        assert [] == us  # nobody routed the trace to US-ATF
        # BE-FPJ's node acknowledged the request by itself (tracing.auto_acknowledge)
        assert {"fxgw.TraceUpdate", "fxgw.TraceResponse"} == at_nl


class TestUsSeizure:
    """US-ATF's seizure reaches both EU agencies under its partner rule."""

    async def test_us_seizure_reaches_nl_and_be(self, federation: Federation) -> None:
        """Both recipients get firearms but no persons."""
        async with running(federation, "NL-POL", "BE-FPJ", "US-ATF"):
            await national_send(federation, "US-ATF", seizure_us())
            await wait_until(lambda: _count(delivered(federation, "NL-POL"), 1), "NL delivery")
            await wait_until(lambda: _count(delivered(federation, "BE-FPJ"), 1), "BE delivery")
            for agency in ("NL-POL", "BE-FPJ"):
                doc = (await delivered(federation, agency))[0]
                assert doc["record"]["persons"] is None  # type: ignore[index]
                assert "SW-98312" == doc["record"]["firearms"][0]["serial_number"]  # type: ignore[index]


class TestExplainPredictsDelivery:
    """`fxgw policy explain` is the policy author's preview: what it prints must be what
    arrives, field for field."""

    async def test_eu_and_non_eu_views_arrive_as_explained(
        self, federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The same seizure reaches BE-FPJ (EU) and US-ATF (non-EU) in two different released
        forms, each exactly the record, rule, handling and field lists explain predicted."""
        event = seizure_nl()
        event_file = tmp_path / "seizure.json"
        event_file.write_text(json.dumps(event))
        argv = ["policy", "explain", "-c", str(federation.config("NL-POL"))]
        argv += ["--event", str(event_file), "--to", "BE-FPJ", "US-ATF", "--json"]
        capsys.readouterr()
        assert 0 == await asyncio.to_thread(main, argv)
        lines = capsys.readouterr().out.splitlines()
        predicted = {p["recipient"]: p for p in map(json.loads, lines)}
        assert {"BE-FPJ", "US-ATF"} == set(predicted)
        assert predicted["BE-FPJ"]["released"] != predicted["US-ATF"]["released"]
        async with running(federation, "NL-POL", "BE-FPJ", "US-ATF"):
            await national_send(federation, "NL-POL", event)
            await wait_until(lambda: _both(federation), "deliveries at BE-FPJ and US-ATF")
        for agency in ("BE-FPJ", "US-ATF"):
            (arrived,) = await delivered(federation, agency)
            provenance = arrived["provenance"]
            assert isinstance(provenance, dict)
            expected = predicted[agency]
            assert expected["released"] == arrived["record"]
            assert expected["rule"] == provenance["policy_rule"]
            assert expected["handling"] == provenance["handling"]
            assert expected["withheld"] == provenance["withheld"]
            assert expected["transformed"] == provenance["transformed"]


class TestOnwardTransfer:
    """A receiving node refuses to pass on what it was given under H2, also inside a new event
    that declares it was made from it."""

    async def test_h2_seizure_is_not_forwarded_but_may_go_back(
        self, federation: Federation
    ) -> None:
        """BE-FPJ's national system re-sends NL-POL's H2 seizure to US-ATF and NL-POL: BE-FPJ's
        node refuses US-ATF (quarantined with the reason) and sends NL-POL its copy back."""
        async with running(federation, "NL-POL", "BE-FPJ", "US-ATF"):
            await national_send(federation, "NL-POL", seizure_nl())
            await wait_until(lambda: _both(federation), "deliveries at BE-FPJ and US-ATF")
            (received,) = await delivered(federation, "BE-FPJ")
            provenance = received["provenance"]
            assert isinstance(provenance, dict)
            assert "H2" == provenance["handling"]["code"]  # type: ignore[index]
            onward = {
                "event_type": "fxgw.SeizureEvent",
                "record": received["record"],
                "recipients": ["US-ATF", "NL-POL"],
            }
            await national_send(federation, "BE-FPJ", onward)
            # a new Belgian event made from the received one, declared as such
            restriction = provenance["restriction"]
            assert isinstance(restriction, dict)
            assert (False, "NL-POL") == (
                restriction["forward_without_consent"],
                restriction["consent_from"],
            )
            copied = dict(received["record"])  # type: ignore[arg-type]
            copied["event_id"] = "BE-FPJ-SZ-derived-1"
            copied["reporting_agency"] = {"agency_id": "BE-FPJ", "country": "BE", "name": None}
            derived = {
                "event_type": "fxgw.SeizureEvent",
                "record": copied,
                "recipients": ["US-ATF"],
                "derived_from": [restriction["derived_from"]],
            }
            await national_send(federation, "BE-FPJ", derived)
            await wait_until(
                lambda: _count(quarantined(federation, "BE-FPJ"), 2), "refusals at BE-FPJ"
            )
            await wait_until(lambda: _count(delivered(federation, "NL-POL"), 1), "back at NL")
        refusals = await quarantined(federation, "BE-FPJ")
        assert [b"onward_transfer_refused"] * 2 == [r.header("fxgw-reason") for r in refusals]
        assert [b"US-ATF"] * 2 == [r.header("fxgw-recipient") for r in refusals]
        assert b"derived from" in (refusals[1].header("fxgw-detail") or b"")
        assert 1 == len(await delivered(federation, "US-ATF"))  # only NL-POL's own release


async def _both(fed: Federation) -> bool:
    return bool(await delivered(fed, "BE-FPJ")) and bool(await delivered(fed, "US-ATF"))


async def _count(pending: object, at_least: int) -> bool:
    items = await pending  # type: ignore[misc]
    return len(items) >= at_least
