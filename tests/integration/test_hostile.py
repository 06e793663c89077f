"""Hostile records put straight onto a running node's inbox, in the middle of valid traffic.

BE-FPJ runs as an OS process with its stderr in a file (so its log volume is measured, library
records included, and "never exits" means the process is still there); NL-POL runs in this event
loop, sends valid seizures through its national outbound topic, and lends its keys to seal the
authentic-but-bad envelopes. The hostile records go onto BE-FPJ's inbox with a plain aiokafka
producer, or, for a header key that is not UTF-8, with a raw ProduceRequest.

What must hold: every hostile record is quarantined once, in bounded form, with the reason
expected; every valid event is delivered exactly once; only envelopes whose signature verified
are answered with a receipt; the node stays up; its log stays small, line by line and in all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiokafka
import pytest
import yaml

from gateway.core.outbound import OutboundCore, parse_plain_event
from gateway.crypto.envelope import ENVELOPE_TYPE, DataKeyRing, Header, message_id_for, seal
from gateway.crypto.keys import SigningKey, generate_signing_key
from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import THREE_AGENCIES, Federation, build_federation, replace_sink
from gateway.node.transport import Message, TopicSpec, ensure_topics, read_topic
from gateway.types import AgencyId, EventId
from tests.integration.conftest import delivered, national_send, quarantined, running, wait_until
from tests.processes import NodeProcess
from tests.recordbatches import bad, produce_raw, record_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

KIB = 1024
MIB = 1024 * KIB
SENDER = AgencyId("NL-POL")
RECEIVER = AgencyId("BE-FPJ")
LIMITS = {
    "max_envelope_bytes": MIB,
    "max_delivery_bytes": 512 * KIB,
    "quarantine_raw_bytes": 256 * KIB,
}
"""BE-FPJ's size limits, written into its node.yaml (envelope and quarantine at the defaults)."""
INBOX_MAX_MESSAGE_BYTES = 4 * MIB
"""BE-FPJ's inbox takes records above the node's own limit, so that those reach the node."""
VALID = 40
ROUNDS = 5
HEADER_VALUE_MAX = KIB
LOG_LINE_MAX = 4 * KIB
QUARANTINE_HEADERS = ("fxgw-reason", "fxgw-detail", "fxgw-original-bytes", "fxgw-sha256")


@dataclass(frozen=True, slots=True)
class Hostile:
    """One hostile record, the quarantine reason it must get, and the receipt it must get
    (only an envelope whose signature verifies is answered)."""

    name: str
    data: bytes
    reason: str
    answered: str | None = None
    """The message id a REJECTED receipt must answer, or None for no receipt at all."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class Forge:
    """Builds hostile envelopes for BE-FPJ from a real release of NL-POL (policy, handling and
    crypto fields as NL-POL would fill them)."""

    def __init__(self, nl: OutboundCore) -> None:
        self.nl = nl
        self.now = datetime.now(UTC).replace(microsecond=0)
        event = parse_plain_event(seizure_nl(), nl.registry)
        outcome = nl.release(event, self.now)
        self.base = next(s.header for s in outcome.envelopes if s.header.recipient == RECEIVER)
        self.record = event.record
        public = nl.trust.encryption_key(RECEIVER, self.now)
        assert public is not None
        self.data_key = DataKeyRing().key_for(RECEIVER, public, self.now)

    def header(self, event_id: str, **changes: object) -> Header:
        """A header for ``event_id`` as NL-POL would write it, with ``changes``."""
        header = replace(
            self.base,
            event_id=EventId(event_id),
            message_id=message_id_for(SENDER, event_id, RECEIVER),
            created_at=self.now,
            expires_at=self.now + timedelta(days=1),
        )
        return replace(header, **changes)  # type: ignore[arg-type]  # fields of Header

    def body(self, event_id: str, **changes: object) -> dict[str, object]:
        """NL-POL's seizure record under ``event_id``, with ``changes``."""
        return {**self.record, "event_id": event_id, **changes}

    def sealed(
        self, header: Header, record: dict[str, object], signer: SigningKey | None = None
    ) -> bytes:
        """``record`` encrypted for BE-FPJ and signed (by NL-POL unless ``signer`` is given)."""
        body = self.nl.registry.encode(header.event_type, record)
        signer = signer or self.nl.keys.signing
        return seal(
            header, body, signer=signer, data_key=self.data_key, codec=self.nl.registry
        ).data

    def unsigned(self, header: Header) -> bytes:
        """A well-formed envelope around ``header`` with an empty signature."""
        return self.nl.registry.encode(
            ENVELOPE_TYPE,
            {"header": header.to_avro(), "ciphertext": os.urandom(64), "signature": b""},
        )


def _event_id(tag: str) -> str:
    return f"NL-POL-HOSTILE-{tag}-{os.urandom(6).hex()}"


def _control_characters(count: int) -> str:
    """``count`` control characters that JSON writes as six-byte ``\\u00XX`` escapes."""
    pool = [chr(c) for c in range(0x20) if chr(c) not in "\b\t\n\f\r"]
    return "".join(pool[i % len(pool)] for i in range(count))


def hostile_records(forge: Forge) -> list[Hostile]:
    """Every hostile record of cases 1 to 5 of the brief."""
    limit = LIMITS["max_envelope_bytes"]
    records = [
        Hostile(f"random {n} bytes", os.urandom(n), reason)
        for n, reason in (
            (limit - KIB, "malformed"),
            (limit, "malformed"),
            (limit + 1, "too_large"),
            (limit + 256 * KIB, "too_large"),
        )
    ]
    records.append(
        Hostile(
            "unsigned, 400 kB ASCII sender",
            forge.unsigned(forge.header(_event_id("S1"), sender="X" * 400_000)),
            "malformed",  # beyond the header's size limits: refused before anything else
        )
    )
    records.append(
        Hostile(
            "unsigned, 200 kB message id",
            forge.unsigned(forge.header(_event_id("M"), message_id="M" * 200_000)),
            "malformed",
        )
    )
    eid = _event_id("CTRL")
    records.append(
        Hostile(
            "authentic, 200 kB of control characters in circumstances",
            forge.sealed(
                forge.header(eid), forge.body(eid, circumstances=_control_characters(200_000))
            ),
            "delivery_too_large",
            answered=message_id_for(SENDER, eid, RECEIVER),
        )
    )
    forger = generate_signing_key(forge.nl.keys.signing.key_id)
    eid = _event_id("FORGED")
    records.append(
        Hostile(
            "forged signature under NL-POL's key id, 200 kB message id",
            forge.sealed(forge.header(eid, message_id="f" * 200_000), forge.body(eid), forger),
            "malformed",
        )
    )
    eid = _event_id("FORGED2")
    records.append(
        Hostile(
            "forged signature under NL-POL's key id",
            forge.sealed(forge.header(eid), forge.body(eid), forger),
            "bad_signature",
        )
    )
    eid, other = _event_id("EID"), _event_id("OTHER")
    records.append(
        Hostile(
            "authentic, body event_id differs from the header's",
            forge.sealed(forge.header(eid), forge.body(other)),
            "body_header_mismatch",
            answered=message_id_for(SENDER, eid, RECEIVER),
        )
    )
    eid = _event_id("ORIGIN")
    us_atf = {"agency_id": "US-ATF", "country": "US", "name": None}
    records.append(
        Hostile(
            "authentic, reporting_agency US-ATF while NL-POL signs",
            forge.sealed(forge.header(eid), forge.body(eid, reporting_agency=us_atf)),
            "body_header_mismatch",
            answered=message_id_for(SENDER, eid, RECEIVER),
        )
    )
    return records


# --- the receiving node as an OS process ---------------------------------------------------------


def _federation(tmp_path: Path, bootstrap: str, prefix: str, sink: str) -> Federation:
    """The sandbox federation, BE-FPJ delivering to ``sink`` under :data:`LIMITS`, speaking
    contract 1.0: the forged envelopes are of format 1, whose clear header a forger fills with
    every field (format 2's hostile fields are fuzzed in tests/fuzz/test_envelope.py)."""
    agencies = tuple(
        replace(spec, contract_versions=("1.0",))
        for spec in replace_sink(THREE_AGENCIES, RECEIVER, sink)
    )
    fed = build_federation(tmp_path / "fed", bootstrap, prefix=prefix, agencies=agencies)
    path = fed.config(RECEIVER)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["limits"] = dict(LIMITS)
    # the exchange topics it creates take what its inbox takes (above the node's own limit)
    config["exchange"]["topics"]["max_message_bytes"] = INBOX_MAX_MESSAGE_BYTES
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return fed


def _log_figures(log: Path) -> tuple[int, int, int]:
    """Lines, bytes, and the longest line's bytes of the node's log."""
    lines = log.read_bytes().splitlines()
    return len(lines), sum(len(line) + 1 for line in lines), max(map(len, lines), default=0)


@dataclass(slots=True)
class Scene:
    """BE-FPJ running as a process, NL-POL in this event loop, and an attacker's producer."""

    fed: Federation
    node: NodeProcess
    log: Path
    nl: OutboundCore
    attacker: aiokafka.AIOKafkaProducer
    exit_code: int | None = None

    def up(self) -> None:
        """Fail at once if BE-FPJ has exited."""
        if not self.node.alive:
            raise AssertionError(
                f"BE-FPJ exited with {self.node.returncode}; its log ends:\n{self.node.tail(25)}"
            )

    def started(self) -> bool:
        """BE-FPJ has logged that its loops run (and has not exited)."""
        self.up()
        return "node_started" in self.log.read_text(encoding="utf-8")

    async def attack(self, *values: bytes) -> None:
        """Put ``values`` on BE-FPJ's inbox as they are, each acknowledged by the cluster."""
        for value in values:
            await self.attacker.send_and_wait(self.fed.inbox(RECEIVER), value)

    def at_least(
        self, n: int, read: Callable[[], Awaitable[Sequence[object]]]
    ) -> Callable[[], Awaitable[bool]]:
        """A check for :func:`wait_until`: ``read`` gives ``n`` items or more, BE-FPJ is up."""

        async def check() -> bool:
            self.up()
            return len(await read()) >= n

        return check

    async def deliveries(self) -> list[dict[str, object]]:
        """The delivery documents BE-FPJ handed to its national system."""
        return await delivered(self.fed, RECEIVER)

    async def quarantine(self) -> list[Message]:
        """BE-FPJ's quarantine topic."""
        return await quarantined(self.fed, RECEIVER)

    async def receipts(self) -> list[dict[str, object]]:
        """The receipts on NL-POL's receipts topic, decoded (not verified)."""
        topic = f"{self.fed.prefix}.receipts.{SENDER}"
        return [
            self.nl.registry.decode("fxgw.Receipt", m.value)
            for m in await read_topic(self.fed.bootstrap, topic)
        ]


@asynccontextmanager
async def scene(tmp_path: Path, bootstrap: str, prefix: str, sink: str) -> AsyncIterator[Scene]:
    """Run BE-FPJ (a process delivering to ``sink``) and NL-POL until the block ends; then stop
    BE-FPJ with SIGTERM and note its exit code."""
    fed = _federation(tmp_path, bootstrap, prefix, sink)
    await ensure_topics(
        fed.bootstrap,
        [
            TopicSpec(
                fed.inbox(RECEIVER),
                configs=(("max.message.bytes", str(INBOX_MAX_MESSAGE_BYTES)),),
            )
        ],
    )
    log = tmp_path / "be-fpj.log"
    node = NodeProcess(fed.config(RECEIVER), log)
    node.start()
    attacker = aiokafka.AIOKafkaProducer(
        bootstrap_servers=fed.bootstrap,
        client_id="test-hostile",
        acks="all",
        max_request_size=2 * INBOX_MAX_MESSAGE_BYTES,
    )
    found: Scene | None = None
    try:
        await attacker.start()
        async with running(fed, SENDER) as nodes:
            found = Scene(fed, node, log, nodes[SENDER].outbound, attacker)
            await wait_until(found.started, "BE-FPJ start")
            yield found
    finally:
        await attacker.stop()
        code = node.stop()
        if found is not None:
            found.exit_code = code


def _header(m: Message, name: str) -> str:
    return (m.header(name) or b"").decode("utf-8", errors="replace")


def _quarantine_problems(records: Sequence[Message], raw_limit: int) -> list[str]:
    """What makes a quarantine record unbounded or incomplete (empty when all are fine)."""
    problems: list[str] = []
    for m in records:
        reason = _header(m, "fxgw-reason")
        if len(m.value) > raw_limit:
            problems.append(f"{reason}: value of {len(m.value)} bytes")
        problems += [f"{reason}: no {n} header" for n in QUARANTINE_HEADERS if not m.header(n)]
        problems += [
            f"{reason}: header {name} of {len(value)} bytes"
            for name, value in m.headers
            if len(value) > HEADER_VALUE_MAX
        ]
    return problems


def _message_ids(docs: Sequence[dict[str, object]]) -> list[str]:
    return [str(d["provenance"]["message_id"]) for d in docs]  # type: ignore[index]


def _expected_ids(events: Sequence[dict[str, object]]) -> set[str]:
    return {
        message_id_for(SENDER, str(e["record"]["event_id"]), RECEIVER)  # type: ignore[index]
        for e in events
    }


class TestHostileInbox:
    """Hostile records on BE-FPJ's inbox, between valid seizures from NL-POL."""

    @pytest.mark.parametrize("sink", ["kafka", "spool"])
    async def test_hostile_records_are_quarantined_bounded_and_valid_traffic_flows(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, sink: str
    ) -> None:
        """Each hostile record quarantined bounded, each valid event delivered once, node up."""
        async with scene(tmp_path, kafka_bootstrap, topic_prefix, sink) as s:
            hostile = hostile_records(Forge(s.nl))
            answered = [h for h in hostile if h.answered is not None]
            events = [seizure_nl() for _ in range(VALID)]
            per_round = VALID // ROUNDS
            for r in range(ROUNDS):
                await national_send(s.fed, SENDER, *events[r * per_round : (r + 1) * per_round])
                await s.attack(*(h.data for h in hostile[r::ROUNDS]))
                await asyncio.sleep(0.3)
            await wait_until(s.at_least(VALID, s.deliveries), "deliveries")
            await wait_until(s.at_least(len(hostile), s.quarantine), "quarantine")
            await wait_until(s.at_least(VALID + len(answered), s.receipts), "receipts")
            await asyncio.sleep(1.5)  # time for anything extra to show up
            docs, q, receipts = await s.deliveries(), await s.quarantine(), await s.receipts()
            alive = s.node.alive
        ids = _message_ids(docs)
        by_sha = {h.sha256: h for h in hostile}
        lines, size, longest = _log_figures(s.log)
        answers = {(str(r["message_id"]), str(r["outcome"]), r["reason"]) for r in receipts}
        expected_answers = {(i, "DELIVERED", None) for i in _expected_ids(events)} | {
            (str(h.answered), "REJECTED", h.reason) for h in answered
        }
        print(
            f"\n[{sink}] sent valid={VALID} hostile={len(hostile)}; delivered={len(ids)} "
            f"unique={len(set(ids))} duplicates={len(ids) - len(set(ids))}; "
            f"quarantined={len(q)} per reason="
            f"{dict(Counter(_header(m, 'fxgw-reason') for m in q))}; receipts={len(receipts)} "
            f"per outcome={dict(Counter((r['outcome'], r['reason']) for r in receipts))}; "
            f"log lines={lines} bytes={size} longest line={longest}; exit code={s.exit_code}"
        )
        for m in q:
            h = by_sha.get(_header(m, "fxgw-sha256"))
            sizes = {k: len(v) for k, v in m.headers}
            print(f"  {h.name if h else '?'}: value={len(m.value)} header bytes={sizes}")

        assert alive, f"BE-FPJ exited; its log ends:\n{s.node.tail(25)}"
        assert 0 == s.exit_code
        assert VALID == len(ids)
        assert _expected_ids(events) == set(ids)
        assert {(h.sha256, h.reason): 1 for h in hostile} == dict(
            Counter((_header(m, "fxgw-sha256"), _header(m, "fxgw-reason")) for m in q)
        )
        assert {h.sha256: str(len(h.data)) for h in hostile} == {
            _header(m, "fxgw-sha256"): _header(m, "fxgw-original-bytes") for m in q
        }
        assert [] == _quarantine_problems(q, LIMITS["quarantine_raw_bytes"])
        assert expected_answers == answers
        assert len(expected_answers) == len(receipts)
        assert lines <= 6 * (VALID + len(hostile)) + 60
        assert size <= 256 * KIB
        assert longest <= LOG_LINE_MAX


class TestUnverifiedText:
    """Text from a header nobody vouches for, as it reaches the quarantine and the log."""

    async def test_a_400kb_sender_of_4_byte_characters_is_neither_quoted_nor_large(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """The sender is not quoted; quarantine headers stay under 1 KiB, log lines under 4 KiB."""
        devil = "\U0001f608"
        async with scene(tmp_path, kafka_bootstrap, topic_prefix, "kafka") as s:
            forge = Forge(s.nl)
            record = forge.unsigned(forge.header(_event_id("S4"), sender=devil * 100_000))
            events = [seizure_nl(), seizure_nl()]
            await national_send(s.fed, SENDER, events[0])
            await s.attack(record)
            await national_send(s.fed, SENDER, events[1])
            await wait_until(s.at_least(2, s.deliveries), "deliveries")
            await wait_until(s.at_least(1, s.quarantine), "quarantine")
            docs, q = await s.deliveries(), await s.quarantine()
            alive = s.node.alive
        lines, size, longest = _log_figures(s.log)
        sizes = {name: len(value) for m in q for name, value in m.headers}
        print(
            f"\n[4-byte sender] record={len(record)} bytes; quarantined="
            f"{[_header(m, 'fxgw-reason') for m in q]} header bytes={sizes}; "
            f"log lines={lines} bytes={size} longest line={longest}"
        )
        log_text = s.log.read_text(encoding="utf-8")
        problems = _quarantine_problems(q, LIMITS["quarantine_raw_bytes"])
        if longest > LOG_LINE_MAX:
            problems.append(f"a log line of {longest} bytes")
        if any(devil * 4 in _header(m, "fxgw-detail") for m in q):
            problems.append("the quarantine detail quotes the unverified sender")
        if devil * 4 in log_text or json.dumps(devil * 4)[1:-1] in log_text:
            problems.append("the log quotes the unverified sender")
        assert alive
        assert _expected_ids(events) == set(_message_ids(docs))
        assert ["malformed"] == [_header(m, "fxgw-reason") for m in q]  # header size limits
        assert [] == problems


class TestHeaderKeyNotUtf8:
    """A record whose Kafka header key is not valid UTF-8, on BE-FPJ's inbox."""

    async def test_a_record_with_a_non_utf8_header_key_is_quarantined_and_the_node_goes_on(
        self, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """The record is quarantined (bounded), the node stays up, later events are delivered."""
        async with scene(tmp_path, kafka_bootstrap, topic_prefix, "kafka") as s:
            before = [seizure_nl() for _ in range(10)]
            await national_send(s.fed, SENDER, *before)
            await wait_until(s.at_least(10, s.deliveries), "deliveries before the bad record")
            batch = record_batch([bad(os.urandom(2 * KIB))])
            await produce_raw(s.fed.bootstrap, s.fed.inbox(RECEIVER), 0, batch)
            after = [seizure_nl() for _ in range(10)]
            await national_send(s.fed, SENDER, *after)
            await wait_until(s.at_least(20, s.deliveries), "deliveries after the bad record")
            await wait_until(s.at_least(1, s.quarantine), "quarantine")
            await asyncio.sleep(1.0)  # time for anything extra to show up
            docs, q = await s.deliveries(), await s.quarantine()
            alive = s.node.alive
        ids = _message_ids(docs)
        print(
            f"\n[header key] delivered={len(ids)} unique={len(set(ids))} "
            f"quarantined={[_header(m, 'fxgw-reason') for m in q]} exit code={s.exit_code}"
        )
        assert alive
        assert 0 == s.exit_code
        assert _expected_ids(before + after) == set(ids)
        assert 20 == len(ids)
        assert 1 == len(q)  # the reason is the consumer's to choose; it is printed above
        assert [] == _quarantine_problems(q, LIMITS["quarantine_raw_bytes"])
