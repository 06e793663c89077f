"""``fxgw demo``: three agencies exchange seizures and a trace round trip on a real Kafka.

It starts a local single-node Kafka (see :mod:`gateway.dev.kafka`), builds a sandbox federation
(:mod:`gateway.dev.sandbox`: NL-POL and BE-FPJ in the EU, US-ATF outside it), runs the three nodes,
and plays the national systems: NL-POL reports a seizure and asks for a trace of a Belgian
pistol, US-ATF reports a seizure, BE-FPJ answers the trace. Then it shows that an envelope
altered in transit and one signed by a key outside the trust list are quarantined, and that
one agency cannot open another's envelope. It prints what each agency released and received,
and stops everything.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from gateway.audit.status import build_view
from gateway.audit.store import read_entries, verify_folder
from gateway.crypto.envelope import ENVELOPE_TYPE, open_envelope
from gateway.crypto.keys import generate_signing_key, load_signing_key
from gateway.dev.sandbox import Federation, build_federation
from gateway.errors import PeerError
from gateway.node.config import load_config
from gateway.node.runtime import Node
from gateway.node.transport import Message, Producer, read_topic
from gateway.types import KeyId

AGENCIES = ("NL-POL", "BE-FPJ", "US-ATF")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _agency_ref(agency: str, country: str) -> dict[str, object]:
    return {"agency_id": agency, "country": country, "name": None}


def seizure_nl() -> dict[str, object]:
    """A Dutch seizure: two firearms, a possessor with identity data."""
    return {
        "event_type": "fxgw.SeizureEvent",
        "record": {
            "event_id": f"NL-POL-SZ-{uuid.uuid4().hex[:12]}",
            "reported_at": _now_iso(),
            "reporting_agency": _agency_ref("NL-POL", "NL"),
            "case_reference": "NL-2026-RTM-004512",
            "crime_code": "ARMS-TRAFFICKING",
            "recovery_date": "2026-11-20",
            "recovery_location": {
                "country": "NL",
                "region": "Zuid-Holland",
                "locality": "Rotterdam",
                "address": "Havenstraat 12",
                "latitude": 51.9225,
                "longitude": 4.47917,
                "description": "vehicle boot, port area",
            },
            "circumstances": "vehicle check at the port",
            "firearms": [
                {
                    "item_id": "1",
                    "serial_number": "FN4711-22",
                    "serial_obliterated": False,
                    "make": "FN Herstal",
                    "model": "FN 509",
                    "firearm_type": "PISTOL",
                    "calibre": "9x19mm",
                    "manufacture_country": "BE",
                    "manufacture_year": 2019,
                    "importer": "Wapenhandel Noord BV",
                    "import_country": "NL",
                    "import_marking": "NL 19",
                    "additional_markings": ["proof mark LG"],
                },
                {
                    "item_id": "2",
                    "serial_number": None,
                    "serial_obliterated": True,
                    "make": "Zastava",
                    "model": "M70",
                    "firearm_type": "ASSAULT_RIFLE",
                    "calibre": "7.62x39mm",
                    "manufacture_country": "RS",
                },
            ],
            "persons": [
                {
                    "role": "POSSESSOR",
                    "family_name": "Jansen",
                    "given_names": "Pieter",
                    "birth_date": "1988-04-17",
                    "nationality": "NL",
                    "identity_document_number": "NX1234567",
                    "address": "Kade 3, Rotterdam",
                }
            ],
            "exchange_flagged": True,
        },
    }


def seizure_us() -> dict[str, object]:
    """A US seizure of one revolver."""
    return {
        "event_type": "fxgw.SeizureEvent",
        "record": {
            "event_id": f"US-ATF-SZ-{uuid.uuid4().hex[:12]}",
            "reported_at": _now_iso(),
            "reporting_agency": _agency_ref("US-ATF", "US"),
            "case_reference": "ATF-2026-0931",
            "recovery_date": "2026-11-18",
            "recovery_location": {"country": "US", "region": "TX", "locality": "Houston"},
            "firearms": [
                {
                    "item_id": "A",
                    "serial_number": "SW-98312",
                    "make": "Smith & Wesson",
                    "model": "686",
                    "firearm_type": "REVOLVER",
                    "calibre": ".357 Magnum",
                    "manufacture_country": "US",
                }
            ],
            "persons": [{"role": "SUSPECT", "family_name": "Doe", "given_names": "John"}],
        },
    }


def trace_request_nl() -> dict[str, object]:
    """NL-POL asks for the trace of a pistol made in Belgium and imported into the Netherlands."""
    return {
        "event_type": "fxgw.TraceRequest",
        "record": {
            "event_id": f"NL-POL-TR-{uuid.uuid4().hex[:12]}",
            "requested_at": _now_iso(),
            "requesting_agency": _agency_ref("NL-POL", "NL"),
            "request_reference": "NL-TRACE-2026-0077",
            "priority": "URGENT",
            "urgency_justification": "suspect in custody, 48 h limit",
            "firearm": {
                "item_id": "1",
                "serial_number": "FN4711-22",
                "make": "FN Herstal",
                "model": "FN 509",
                "firearm_type": "PISTOL",
                "calibre": "9x19mm",
                "manufacture_country": "BE",
                "import_country": "NL",
            },
            "case_reference": "NL-2026-RTM-004512",
            "recovery_date": "2026-11-20",
            "recovery_location": {"country": "NL", "locality": "Rotterdam"},
            "possessor": {"role": "POSSESSOR", "family_name": "Jansen", "given_names": "Pieter"},
            "requesting_officer": {
                "role": "OFFICER",
                "family_name": "de Vries",
                "email": "trace-desk@politie.example",
            },
        },
    }


def trace_response_be(
    request: dict[str, object], provenance: dict[str, object]
) -> dict[str, object]:
    """BE-FPJ's answer to a trace request it received."""
    return {
        "event_type": "fxgw.TraceResponse",
        "record": {
            "event_id": f"BE-FPJ-TS-{uuid.uuid4().hex[:12]}",
            "responded_at": _now_iso(),
            "responding_agency": _agency_ref("BE-FPJ", "BE"),
            "request_event_id": provenance["event_id"],
            "request_reference": request["request_reference"],
            "requesting_agency": request["requesting_agency"],
            "outcome": "TRACED",
            "firearm": request["firearm"],
            "manufacturer_record": "shipped 2019-06-02 to Wapenhandel Noord BV (NL)",
            "first_retail_dealer": {
                "role": "DEALER",
                "family_name": "Wapenhandel Noord BV",
                "address": "Industrieweg 4, Groningen",
            },
            "sale_date": "2019-09-14",
            "transfer_history": [
                {
                    "date": "2019-06-02",
                    "from_party": "FN Herstal",
                    "to_party": "Wapenhandel Noord BV",
                    "country": "BE",
                    "document_reference": "EXP-19-5531",
                },
            ],
        },
    }


async def _national_send(
    producer: Producer, fed: Federation, agency: str, event: dict[str, object]
) -> None:
    await producer.send(fed.local_topic(agency, "outbound"), json.dumps(event).encode("utf-8"))


async def _received(fed: Federation, agency: str) -> list[dict[str, object]]:
    """What the national system of ``agency`` has been handed so far."""
    config = load_config(fed.config(agency))
    if config.delivery.sink == "spool":
        assert config.spool.inbound_dir is not None
        if not config.spool.inbound_dir.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(config.spool.inbound_dir.glob("*.json"))]
    messages = await read_topic(fed.bootstrap, fed.local_topic(agency, "inbound"))
    return [json.loads(m.value) for m in messages]


async def _wait_for(check: Callable[[], object], what: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"demo: timed out waiting for {what}")


def _present(record: object, prefix: str = "") -> list[str]:
    """Paths of the non-null leaves of a JSON record (to show what arrived, not the values)."""
    paths: list[str] = []
    if isinstance(record, dict):
        for key, value in record.items():
            paths += _present(value, f"{prefix}{key}.")
    elif isinstance(record, list):
        for item in record:
            for p in _present(item, prefix.rstrip(".") + "[]."):
                if p not in paths:
                    paths.append(p)
    elif record is not None:
        paths.append(prefix.rstrip("."))
    return paths


async def _tamper_checks(fed: Federation, nodes: dict[str, Node], producer: Producer) -> list[str]:
    """Alter an envelope in transit, forge one with an unlisted key, and try a cross-open."""
    lines: list[str] = []
    inbox = await read_topic(fed.bootstrap, fed.inbox("BE-FPJ"))
    original: Message = inbox[0]
    # 1. one byte of the ciphertext flipped in transit
    altered = bytearray(original.value)
    altered[-80] ^= 0x01
    await producer.send(fed.inbox("BE-FPJ"), bytes(altered))
    # 2. an envelope made by someone holding a signing key that is not on the trust list
    nl = nodes["NL-POL"].outbound
    rogue = replace(nl.keys, signing=generate_signing_key(KeyId("NL-POL/sign/rogue")))
    forged_core = replace(nl, keys=rogue)
    from gateway.core.outbound import parse_plain_event

    event = parse_plain_event(seizure_nl(), nodes["NL-POL"].registry)
    forged = [
        s
        for s in forged_core.release(event, datetime.now(UTC)).envelopes
        if s.header.recipient == "BE-FPJ"
    ]
    await producer.send(fed.inbox("BE-FPJ"), forged[0].data)
    # 3. US-ATF's keys against an envelope sealed for BE-FPJ
    us = nodes["US-ATF"].inbound
    try:
        open_envelope(
            original.value,
            keys=us.keys,
            trust=us.trust,
            cache=us.cache,
            codec=us.registry,
            now=datetime.now(UTC),
            format_version=us.registry.get(ENVELOPE_TYPE).format,
        )
        lines.append("  !! US-ATF opened an envelope addressed to BE-FPJ")
    except PeerError as exc:
        lines.append(f"  US-ATF cannot open BE-FPJ's envelope: refused with '{exc.reason}'")
    return lines


async def _play(fed: Federation) -> int:
    nodes = {a: Node(load_config(fed.config(a))) for a in AGENCIES}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(node.run(stop), name=a) for a, node in nodes.items()]
    producer = Producer(fed.bootstrap, "demo-national-systems")
    await producer.start()
    try:
        await _wait_for(lambda: all(n.ready.is_set() for n in nodes.values()), "nodes to start")
        _out("three nodes running: NL-POL (EU), BE-FPJ (EU, spool sink), US-ATF (non-EU)\n")
        await _national_send(producer, fed, "NL-POL", seizure_nl())
        await _national_send(producer, fed, "US-ATF", seizure_us())
        await _national_send(producer, fed, "NL-POL", trace_request_nl())

        async def be_has_request() -> bool:
            return any(
                d["event_type"] == "fxgw.TraceRequest" for d in await _received(fed, "BE-FPJ")
            )

        await _wait_for(be_has_request, "BE-FPJ to receive the trace request")
        request_doc = next(
            d for d in await _received(fed, "BE-FPJ") if d["event_type"] == "fxgw.TraceRequest"
        )
        record = request_doc["record"]
        provenance = request_doc["provenance"]
        assert isinstance(record, dict) and isinstance(provenance, dict)
        await _national_send(producer, fed, "BE-FPJ", trace_response_be(record, provenance))

        async def all_arrived() -> bool:
            nl = await _received(fed, "NL-POL")
            be = await _received(fed, "BE-FPJ")
            us = await _received(fed, "US-ATF")
            # NL-POL: the US seizure, BE-FPJ's acknowledgement of the request and its answer
            return len(nl) >= 3 and len(be) >= 3 and len(us) >= 1

        await _wait_for(all_arrived, "every delivery")
        tamper_lines = await _tamper_checks(fed, nodes, producer)

        async def quarantined() -> bool:
            q = await read_topic(fed.bootstrap, fed.local_topic("BE-FPJ", "quarantine"))
            return len(q) >= 2

        await _wait_for(quarantined, "the altered and forged envelopes to be quarantined")

        def receipted() -> bool:
            return all(
                n.counters["receipts_received"] >= n.counters["released"] for n in nodes.values()
            )

        await _wait_for(receipted, "a signed receipt for every envelope released")
        await _report(fed, nodes, tamper_lines)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
    return 0


async def _report(fed: Federation, nodes: dict[str, Node], tamper_lines: list[str]) -> None:
    for agency in AGENCIES:
        node = nodes[agency]
        _out(f"== {agency} ({node.config.delivery.sink} sink)")
        for recipient in AGENCIES:
            if recipient == agency:
                continue
            sent = [
                m
                for m in await read_topic(fed.bootstrap, fed.inbox(recipient))
                if m.header("fxgw-sender") == agency.encode()
            ]
            if sent:
                _out(
                    f"  released {len(sent)} envelope(s) to {recipient}, "
                    f"encrypted for {recipient} alone and signed by {agency}"
                )
        if node.counters["denied"]:
            _out(f"  not released by policy: {node.counters['denied']}")
        for doc in await _received(fed, agency):
            prov = doc["provenance"]
            assert isinstance(prov, dict)
            handling = prov["handling"]
            assert isinstance(handling, dict)
            present = _present(doc["record"])
            _out(
                f"  received {doc['event_type']} from {prov['sender']} "
                f"[{handling['code']}, rule {prov['policy_rule']}]"
            )
            _out(
                f"    {len(present)} fields present, {len(prov['withheld'])} withheld by the sender"
            )
            _out(f"    present: {', '.join(present[:12])}{' ...' if len(present) > 12 else ''}")
        view = build_view((e.kind, e.at, e.data) for e in read_entries(node.config.audit_dir))
        counts = view.counts(datetime.now(UTC), node.config.exchange.receipt_timeout)
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        _out(f"  signed receipts back for its releases: {states or 'none released'}")
        quarantine = await read_topic(fed.bootstrap, fed.local_topic(agency, "quarantine"))
        for m in quarantine:
            reason = (m.header("fxgw-reason") or b"").decode()
            _out(f"  quarantined an envelope: {reason}")
        _out()
    _out("cross-agency check:")
    for line in tamper_lines:
        _out(line)


def run_demo(workdir: Path | None = None, *, keep: bool = False) -> int:
    """Run the whole demo; returns the exit code."""
    from gateway.dev.kafka import LocalKafka

    root = workdir or Path(tempfile.mkdtemp(prefix="fxgw-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    _out(f"fxgw demo in {root}")
    _out("starting a local Apache Kafka (KRaft, 127.0.0.1; the first run downloads it with Maven)")
    started = time.monotonic()
    with LocalKafka(nodes=1, workdir=root / "kafka") as kafka:
        _out(f"Kafka ready at {kafka.bootstrap_servers} in {time.monotonic() - started:.1f} s\n")
        fed = build_federation(root / "federation", kafka.bootstrap_servers, prefix="demo")
        code = asyncio.run(_play(fed))
    _out("Kafka stopped.\n")
    for agency in AGENCIES:
        config = load_config(fed.config(agency))
        public = load_signing_key(config.keys.signing)
        report = verify_folder(config.audit_dir, {public.key_id: public.public})
        verdict = "intact" if report.ok else "NOT INTACT"
        _out(
            f"audit trail of {agency}: {verdict}, {report.entries} entries, "
            f"{report.checkpoints} signed checkpoints (fxgw audit verify)"
        )
        if not report.ok:
            code = 1
    if not keep and workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return code
