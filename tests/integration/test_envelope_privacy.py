"""What the exchange sees: three agencies on a real Kafka exchange seizures and trace requests
in envelope format 2, and a plain aiokafka consumer reading the inbox and receipts topics finds
no event metadata in keys, values or headers, only the allowed clear header, and envelope sizes
in a few classes."""

from __future__ import annotations

from collections import defaultdict

import aiokafka
import pytest

from gateway.contract.versions import Contract
from gateway.crypto.envelope import HEADER_TYPE
from gateway.dev.demo import seizure_nl, seizure_us, trace_request_nl
from gateway.dev.sandbox import Federation
from gateway.node.config import DEFAULT_SCHEMAS
from tests.integration.conftest import delivered, national_send, running, wait_until
from tests.unit.test_envelope_format2 import CLEAR_FIELDS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

AGENCIES = ("NL-POL", "BE-FPJ", "US-ATF")

Record = tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]


async def _read(bootstrap: str, topic: str) -> list[Record]:
    """Every record of ``topic``, read by a plain aiokafka consumer, as the exchange's
    operator (or a backup) could."""
    consumer = aiokafka.AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records: list[Record] = []
        while True:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                return records
            for messages in batch.values():
                records += [
                    (m.key, m.value, tuple((k, bytes(v)) for k, v in m.headers)) for m in messages
                ]
    finally:
        await consumer.stop()


def _needles(documents: list[dict[str, object]]) -> dict[str, bytes]:
    """What the exchange must not see, from the deliveries' provenance (as text and as raw
    bytes where it is a digest): event ids and types, schema fingerprints, policy ids, digests
    and rules, purposes and conditions, withheld and transformed field paths."""
    found: dict[str, bytes] = {}
    for document in documents:
        p = document["provenance"]
        assert isinstance(p, dict)
        handling = p["handling"]
        texts = [p["event_id"], p["event_type"], p["event_type"].split(".")[-1]]
        texts += [p["policy_id"], p["policy_rule"], handling["purpose"]]
        texts += [handling["conditions"] or "", *p["withheld"], *p["transformed"]]
        texts += [p["schema_fingerprint"], p["policy_digest"]]
        found.update({t: t.encode() for t in texts if len(t) >= 6})
        for digest in (p["schema_fingerprint"], p["policy_digest"]):
            found[f"raw {digest}"] = bytes.fromhex(digest)
    return found


class TestExchangeSeesNoEventMetadata:
    """Inbox and receipts topics carry nothing beyond the clear header's fields."""

    async def test_topics_hold_no_event_metadata_and_sizes_fall_into_classes(
        self, federation: Federation
    ) -> None:
        """After seizures and a trace request are delivered and receipted, no key, value or
        header of any exchange record holds event metadata; clear headers hold exactly the
        allowed fields; the seizure and the trace request NL-POL sent BE-FPJ have one size."""
        inboxes = [federation.inbox(a) for a in AGENCIES]
        receipts = [f"{federation.prefix}.receipts.{a}" for a in AGENCIES]
        async with running(federation, *AGENCIES):
            await national_send(federation, "NL-POL", seizure_nl(), trace_request_nl())
            await national_send(federation, "US-ATF", seizure_us())

            async def done() -> bool:
                be = await delivered(federation, "BE-FPJ")
                us = await delivered(federation, "US-ATF")
                answers = [r for t in receipts for r in await _read(federation.bootstrap, t)]
                nl = await delivered(federation, "NL-POL")
                # NL-POL: US-ATF's seizure and BE-FPJ's acknowledgement of the trace request
                return (len(be), len(us), len(nl), len(answers)) >= (3, 1, 2, 6)

            await wait_until(done, "deliveries and receipts", within_s=90)
            documents = [
                *await delivered(federation, "BE-FPJ"),
                *await delivered(federation, "US-ATF"),
                *await delivered(federation, "NL-POL"),
            ]
        records = {t: await _read(federation.bootstrap, t) for t in inboxes + receipts}
        needles = _needles(documents)
        assert any(n.startswith("raw ") for n in needles) and "seizure-eu" in needles
        for topic, found in records.items():
            for key, value, headers in found:
                blobs = [key or b"", value, *(n.encode() + v for n, v in headers)]
                leaks = [
                    name for name, needle in needles.items() if any(needle in b for b in blobs)
                ]
                assert [] == leaks, topic
                assert {"fxgw-sender", "fxgw-message-id"} >= {n for n, _ in headers}

        registry = Contract.load(DEFAULT_SCHEMAS).version("1.1").registry
        kinds = {d["provenance"]["message_id"]: d["event_type"] for d in documents}  # type: ignore[index]
        sizes: dict[tuple[str, str], set[int]] = defaultdict(set)
        header_sizes: dict[tuple[str, str], set[int]] = defaultdict(set)
        inbox = [r for t, found in records.items() if ".inbox." in t for r in found]
        assert 6 == len(inbox)
        for key, value, _ in inbox:
            header, end = registry.decode_prefix(HEADER_TYPE, value)
            assert CLEAR_FIELDS == set(header)
            assert 2 == header["format_version"]
            assert key == str(header["message_id"]).encode()
            pair = (str(header["sender"]), str(header["recipient"]))
            sizes[pair].add(len(value))
            header_sizes[pair].add(end)
            assert header["message_id"] in kinds
        assert all(1 == len(s) for s in header_sizes.values())  # fixed per pair
        nl_be = {
            kinds[(key or b"").decode()]
            for key, _, headers in records[federation.inbox("BE-FPJ")]
            if ("fxgw-sender", b"NL-POL") in headers
        }
        assert {"fxgw.SeizureEvent", "fxgw.TraceRequest"} <= nl_be
        assert 1 == len(sizes[("NL-POL", "BE-FPJ")])  # a seizure and a trace request, one size
        assert len({s for ss in sizes.values() for s in ss}) <= 2
