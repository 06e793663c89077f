"""Three agencies on a real Kafka, two contract versions live at once: NL-POL and US-ATF on 1.0,
BE-FPJ on 1.1 (an optional field more in Firearm and in SeizureEvent). Every flow works in
every direction, each receiver gets records in its own version, the fields the other side's
version lacks are listed as withheld, and nothing is quarantined."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.dev.demo import seizure_nl, seizure_us, trace_request_nl, trace_response_be
from gateway.dev.sandbox import THREE_AGENCIES, Federation, build_federation
from tests.contracts import V1_1_EDITS, contract
from tests.integration.conftest import delivered, national_send, quarantined, running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SEIZURE_NEW = "linked_case_references"
FIREARM_NEW = "barrel_serial_number"
NEW_PATHS = {"linked_case_references", "firearms[].barrel_serial_number"}


@pytest.fixture
def federation(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Federation:
    """NL-POL and US-ATF know only contract 1.0; BE-FPJ knows 1.0 and 1.1 and speaks 1.1."""
    old = contract(tmp_path / "contract-1.0", {"1.0": {}})
    new = contract(tmp_path / "contract-1.1", {"1.0": {}, "1.1": V1_1_EDITS})
    versions = {"NL-POL": (old, ()), "US-ATF": (old, ()), "BE-FPJ": (new, ("1.0", "1.1"))}
    agencies = tuple(
        replace(spec, schemas=versions[spec.agency][0], contract_versions=versions[spec.agency][1])
        for spec in THREE_AGENCIES
    )
    return build_federation(
        tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=agencies
    )


def _seizure_be() -> dict[str, object]:
    """A Belgian seizure in contract 1.1: both new fields filled in."""
    event = seizure_nl()
    record = event["record"]
    assert isinstance(record, dict)
    record["event_id"] = f"BE-FPJ-SZ-{uuid.uuid4().hex[:12]}"
    record["reporting_agency"] = {"agency_id": "BE-FPJ", "country": "BE", "name": None}
    record[SEIZURE_NEW] = ["BE-2026-ANT-000777"]
    for firearm in record["firearms"]:
        firearm[FIREARM_NEW] = "BRL-0042"
    return event


async def _count(fed: Federation, agency: str, n: int) -> bool:
    return len(await delivered(fed, agency)) >= n


def _withheld(document: dict[str, object]) -> set[str]:
    provenance = document["provenance"]
    assert isinstance(provenance, dict)
    return set(provenance["withheld"])


def _firearms(document: dict[str, object]) -> list[dict[str, object]]:
    record = document["record"]
    assert isinstance(record, dict)
    firearms = record["firearms"] if "firearms" in record else [record["firearm"]]
    assert isinstance(firearms, list)
    return firearms


class TestTwoVersionsLive:
    async def test_every_direction_in_each_receivers_own_version(
        self, federation: Federation
    ) -> None:
        fed = federation
        async with running(fed, "NL-POL", "BE-FPJ", "US-ATF"):
            # 1.0 -> 1.1 and 1.0: NL's seizure to BE (EU) and US
            await national_send(fed, "NL-POL", seizure_nl())
            # 1.0 -> 1.0 and 1.1: US's seizure to NL and BE
            await national_send(fed, "US-ATF", seizure_us())
            # 1.1 -> 1.0: BE's seizure to NL (EU)
            await national_send(fed, "BE-FPJ", _seizure_be())
            # a trace round trip: NL (1.0) asks BE (1.1), BE answers
            await national_send(fed, "NL-POL", trace_request_nl())
            await wait_until(
                lambda: _count(fed, "BE-FPJ", 3), "NL's seizure, US's, NL's trace at BE"
            )
            docs = await delivered(fed, "BE-FPJ")
            [request] = [d for d in docs if d["event_type"] == "fxgw.TraceRequest"]
            record, provenance = request["record"], request["provenance"]
            assert isinstance(record, dict) and isinstance(provenance, dict)
            answer = trace_response_be(record, provenance)
            answer_record = answer["record"]
            assert isinstance(answer_record, dict)
            answer_record["firearm"] = {**record["firearm"], FIREARM_NEW: "BRL-0042"}
            await national_send(fed, "BE-FPJ", answer)
            await wait_until(
                lambda: _count(fed, "NL-POL", 3), "US's, BE's seizure and BE's answer at NL"
            )
            await wait_until(lambda: _count(fed, "US-ATF", 1), "NL's seizure at US")
            at = {a: await delivered(fed, a) for a in ("NL-POL", "BE-FPJ", "US-ATF")}
            lost = {a: len(await quarantined(fed, a)) for a in at}
        print(f"\ndelivered: { {a: len(d) for a, d in at.items()} }, quarantined: {lost}")
        assert {"NL-POL": 0, "BE-FPJ": 0, "US-ATF": 0} == lost
        assert 3 == len(at["NL-POL"]) and 3 == len(at["BE-FPJ"]) and 1 == len(at["US-ATF"])
        # BE-FPJ reads everything in 1.1: the new fields are there, null, and listed as withheld
        for doc in at["BE-FPJ"]:
            for firearm in _firearms(doc):
                assert FIREARM_NEW in firearm and firearm[FIREARM_NEW] is None
            assert "firearms[].barrel_serial_number" in _withheld(
                doc
            ) or "firearm.barrel_serial_number" in _withheld(doc)
        seizures_at_be = [d for d in at["BE-FPJ"] if d["event_type"] == "fxgw.SeizureEvent"]
        for doc in seizures_at_be:
            assert doc["record"][SEIZURE_NEW] is None  # type: ignore[index]
            assert NEW_PATHS <= _withheld(doc)
        # NL-POL and US-ATF read 1.0: no trace of the new fields, which BE's are listed withheld
        for agency in ("NL-POL", "US-ATF"):
            for doc in at[agency]:
                record = doc["record"]
                assert isinstance(record, dict) and SEIZURE_NEW not in record
                assert all(FIREARM_NEW not in f for f in _firearms(doc))
        from_be = [d for d in at["NL-POL"] if d["provenance"]["sender"] == "BE-FPJ"]  # type: ignore[index]
        assert {"fxgw.SeizureEvent", "fxgw.TraceResponse"} == {d["event_type"] for d in from_be}
        [be_seizure] = [d for d in from_be if d["event_type"] == "fxgw.SeizureEvent"]
        assert NEW_PATHS <= _withheld(be_seizure)
        [answer_doc] = [d for d in from_be if d["event_type"] == "fxgw.TraceResponse"]
        assert "firearm.barrel_serial_number" in _withheld(answer_doc)
        assert "TRACED" == answer_doc["record"]["outcome"]  # type: ignore[index]
        assert "BRL-0042" not in str(at["NL-POL"])  # the value of a field 1.0 lacks never left
