"""Data protection through real nodes: events whose every free-text field holds a value found
nowhere else are exchanged by NL-POL, BE-FPJ and US-ATF on the session's Kafka, and then every
place such a value could end up is searched for it.

- no value withheld from a recipient reaches that recipient (its delivery documents);
- no value at all is in an audit file, a log entry, a quarantine topic or a raw exchange topic
  (inbox and receipts: values, keys and headers);
- what a recipient receives has the same shape (rule, handling, withheld and transformed lists,
  which fields are set) whether the values it cannot see are there or not (the policy loader
  refuses a condition on a field the rule does not release in clear, so no condition can be
  hidden from a recipient).
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterator

from structlog.testing import capture_logs

from gateway.contract.schemas import FieldInfo, SchemaRegistry
from gateway.contract.versions import Contract
from gateway.core.routing import values_at
from gateway.dev.demo import seizure_nl, seizure_us, trace_request_nl
from gateway.dev.sandbox import Federation
from gateway.node.config import load_config
from gateway.node.transport import Message, read_topic
from tests.integration.conftest import (
    delivered,
    national_send,
    quarantined,
    running,
    wait_until,
)

AGENCIES = ("NL-POL", "BE-FPJ", "US-ATF")
_ROUTING = frozenset(
    {"event_id", "agency_id", "country", "nationality", "manufacture_country", "import_country"}
)
"""Strings that name agencies, countries and events: routing reads them, the exchange needs
some of them; they stay as the demo has them."""


def _token() -> str:
    return "zq" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12))


def _unique(fields: tuple[FieldInfo, ...], record: dict[str, object]) -> None:
    """Give every free-text field of ``record`` (JSON form) a value of its own, in place."""
    for info in fields:
        value = record.get(info.name)
        if info.kind == "string" and info.name not in _ROUTING:
            record[info.name] = _token()
        elif info.kind == "record" and isinstance(value, dict):
            _unique(info.children, value)
        elif info.kind == "array" and isinstance(value, list):
            for i, item in enumerate(value):
                if info.item_kind == "string":
                    value[i] = _token()
                elif isinstance(item, dict):
                    _unique(info.children, item)


def _unique_event(registry: SchemaRegistry, event: dict[str, object]) -> dict[str, object]:
    record = event["record"]
    assert isinstance(record, dict)
    _unique(registry.get(str(event["event_type"])).fields, record)
    return event


def _tokens(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _tokens(v)
    elif isinstance(value, list):
        for v in value:
            yield from _tokens(v)
    elif isinstance(value, str) and value.startswith("zq"):
        yield value


def _raw(messages: list[Message]) -> str:
    """A topic's records as text: keys, headers and values (undecodable bytes dropped)."""
    parts: list[bytes] = []
    for m in messages:
        parts.extend((m.key or b"", m.value or b""))
        parts.extend(v for _, v in m.headers)
    return b"\n".join(parts).decode("utf-8", errors="ignore")


def _shape(document: dict[str, object]) -> tuple[object, ...]:
    """What a delivery looks like without its values."""
    provenance = document["provenance"]
    assert isinstance(provenance, dict)

    def mask(value: object) -> object:
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value is not None

    return (
        provenance["policy_rule"],
        json.dumps(provenance["handling"], sort_keys=True),
        tuple(provenance["withheld"]),
        tuple(provenance["transformed"]),
        json.dumps(mask(document["record"]), sort_keys=True),
    )


def _clear(record: dict[str, object], path: str) -> None:
    """Set the field at the dotted ``path`` (``[]`` walks a list) to null wherever it occurs."""
    head, _, rest = path.partition(".")
    name = head.removesuffix("[]")
    value = record.get(name)
    if not rest:
        record[name] = None
    elif isinstance(value, dict):
        _clear(value, rest)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                _clear(item, rest)


async def _deliveries(fed: Federation, agency: str, at_least: int) -> list[dict[str, object]]:
    async def enough() -> bool:
        return len(await delivered(fed, agency)) >= at_least

    await wait_until(enough, f"{at_least} deliveries at {agency}")
    return await delivered(fed, agency)


class TestNothingWithheldLeaves:
    async def test_generated_values_reach_only_whom_the_policy_allows(
        self, federation: Federation
    ) -> None:
        """Seizures (flagged and not) and a trace request with a unique value in every free-text
        field: withheld values are nowhere at the recipient, and no value is in any audit
        file, log entry, quarantine or raw exchange topic. The same seizure again without the
        values withheld from a recipient reaches it in the same shape."""
        registry = Contract.load(load_config(federation.config("NL-POL")).schemas).versions[-1]
        registry = registry.registry
        flagged, unflagged = seizure_nl(), seizure_nl()
        flagged["record"]["exchange_flagged"] = True  # type: ignore[index]
        unflagged["record"]["exchange_flagged"] = False  # type: ignore[index]
        from_nl = [_unique_event(registry, e) for e in (flagged, unflagged, trace_request_nl())]
        from_us = [_unique_event(registry, seizure_us())]
        sent = {str(e["record"]["event_id"]): e for e in [*from_nl, *from_us]}  # type: ignore[index]
        everything = {t for e in sent.values() for t in _tokens(e["record"])}
        assert len(everything) > 40
        with capture_logs() as logs:
            async with running(federation, *AGENCIES):
                await national_send(federation, "NL-POL", *from_nl)
                await national_send(federation, "US-ATF", *from_us)
                at = {
                    "BE-FPJ": await _deliveries(federation, "BE-FPJ", 4),
                    "US-ATF": await _deliveries(federation, "US-ATF", 2),
                    # US-ATF's seizure, and BE-FPJ's acknowledgement of the trace request
                    "NL-POL": await _deliveries(federation, "NL-POL", 2),
                }
        checked = 0
        for agency, documents in at.items():
            text = json.dumps(documents)
            for document in documents:
                provenance = document["provenance"]
                assert isinstance(provenance, dict)
                if provenance["event_id"] not in sent:  # made by BE-FPJ's node: no value of ours
                    assert "fxgw.TraceUpdate" == document["event_type"]
                    continue
                source = sent[str(provenance["event_id"])]["record"]
                assert isinstance(source, dict)
                withheld = {
                    t for path in provenance["withheld"] for t in _tokens(values_at(source, path))
                }
                checked += len(withheld)
                leaked = sorted(t for t in withheld if t in text)
                assert [] == leaked, f"withheld from {agency} but delivered: {leaked}"
        assert checked > 10  # the policies withhold something from someone
        kept = {t for documents in at.values() for t in _tokens(documents)}
        assert kept  # and release something: the search above could find what it looks for
        places = {"logs": json.dumps(logs, default=str)}
        for agency in AGENCIES:
            audit = load_config(federation.config(agency)).audit_dir
            places[f"{agency} audit"] = "".join(p.read_text() for p in audit.glob("*"))
            places[f"{agency} quarantine"] = _raw(await quarantined(federation, agency))
            for kind in ("inbox", "receipts"):
                topic = f"{federation.prefix}.{kind}.{agency}"
                places[topic] = _raw(await read_topic(federation.bootstrap, topic))
        assert places["NL-POL audit"] and places[federation.inbox("BE-FPJ")]
        for place, text in places.items():
            assert [] == sorted(t for t in everything if t in text), place

        # the same seizure with every value withheld from the recipient emptied: the recipient
        # gets a release of the very same shape
        seizure_id = flagged["record"]["event_id"]  # type: ignore[index]
        variants = {}
        for agency in ("BE-FPJ", "US-ATF"):
            (document,) = [d for d in at[agency] if d["provenance"]["event_id"] == seizure_id]  # type: ignore[index]
            provenance = document["provenance"]
            assert isinstance(provenance, dict)
            variant = copy.deepcopy(sent[str(provenance["event_id"])])
            record = variant["record"]
            assert isinstance(record, dict)
            record["event_id"] = f"{record['event_id']}-{agency}"
            for path in provenance["withheld"]:
                _clear(record, path)
            variants[str(provenance["recipient"])] = (document, variant)
        async with running(federation, *AGENCIES):
            await national_send(federation, "NL-POL", *(v for _, v in variants.values()))
            await _deliveries(federation, "BE-FPJ", 6)
            await _deliveries(federation, "US-ATF", 3)
        for agency, (original, variant) in variants.items():
            vid = variant["record"]["event_id"]  # type: ignore[index]
            (again,) = [
                d
                for d in await delivered(federation, agency)
                if d["provenance"]["event_id"] == vid  # type: ignore[index]
            ]
            assert _shape(original) == _shape(again), agency
