"""Both keys of two agencies rotated during live traffic, on the real Kafka.

Seizures flow from NL-POL to BE-FPJ without pause (receipts back) while (a) the federation
publishes a trust list listing NL-POL's and BE-FPJ's new signing and encryption keys (the new
encryption keys valid a few seconds later, so that each agency holds its new private key before
senders use it), (b) both agencies put their new key files in place (the old encryption key
stays in the second file of ``keys.encryption`` while envelopes to it drain), and (c) a later
trust list revokes the old keys. Then an envelope signed with NL-POL's revoked key, made after
the revocation, is put on BE-FPJ's inbox. Every event sent must be delivered exactly once, and
the forged one quarantined.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from gateway.audit.store import read_entries
from gateway.cli.main import main
from gateway.core.outbound import parse_plain_event
from gateway.crypto import keys as keyfiles
from gateway.crypto.envelope import ENVELOPE_TYPE, read_header
from gateway.crypto.trust import sign_trust_list
from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import Federation, build_federation, seizure_exchange
from gateway.node.config import load_config
from gateway.node.runtime import Node
from gateway.node.transport import Producer, read_topic
from tests.integration.conftest import delivered, publish_raw, quarantined, running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

AGENCIES = ("NL-POL", "BE-FPJ")
RATE_PER_S = 40
ENCRYPTION_DELAY = timedelta(seconds=8)
"""How long after publication the new encryption keys become valid: each agency installs its
new private key within it, so no sender encrypts to a key its recipient does not hold yet."""


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Rotation:
    """The files of the rotation: new key files, trust-list versions, and the figures."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.old: dict[str, dict[str, str]] = {}
        self.new: dict[str, dict[str, object]] = {}
        self.timings: dict[str, float] = {}
        self.secrets: set[str] = set()
        """Every private key of the run (base64), old and new: none may appear in a log."""
        for agency in AGENCIES:
            config = load_config(fed.config(agency))
            self.old[agency] = {
                "sign": keyfiles.load_signing_key(config.keys.signing).key_id,
                "encrypt": keyfiles.load_encryption_key(config.keys.encryption[0]).key_id,
            }
            # a second encryption slot, holding the current key: the old key goes there
            path = fed.config(agency)
            data = yaml.safe_load(path.read_text())
            keys_dir = path.parent / "keys"
            self.secrets |= {json.loads(p.read_bytes())["private"] for p in keys_dir.glob("*.key")}
            shutil.copy2(keys_dir / f"{agency}.enc.key", keys_dir / f"{agency}.enc.previous.key")
            # the test keeps the old signing key, to forge with it after its revocation
            shutil.copy2(keys_dir / f"{agency}.sign.key", keys_dir / "old-sign.key")
            data["keys"]["encryption"] = [
                f"keys/{agency}.enc.key",
                f"keys/{agency}.enc.previous.key",
            ]
            path.write_text(yaml.safe_dump(data, sort_keys=False))

    def make_keys(self, capsys: pytest.CaptureFixture[str]) -> None:
        """New signing and encryption keys of each agency, made as an operator makes them
        (``fxgw keygen --only``), into a folder of their own; their printed entries kept."""
        for agency in AGENCIES:
            out = self.fed.root / agency / "new-keys"
            for kind, part in (("signing", "sign"), ("encryption", "enc")):
                capsys.readouterr()
                assert 0 == main(["keygen", "--agency", agency, "--only", kind, "--out", str(out)])
                (entry,) = yaml.safe_load(capsys.readouterr().out)
                (path,) = out.glob(f"{agency}.{part}.*.key")
                self.secrets.add(json.loads(path.read_bytes())["private"])
                self.new.setdefault(agency, {})[part] = path
                self.new[agency][f"{part}-entry"] = entry
            # the new keys must not collide with the agency's current ones
            assert self.new[agency]["sign-entry"]["id"] != self.old[agency]["sign"]  # type: ignore[index]

    def publish(self, version: int, *, revoke: bool, now: datetime) -> None:
        """Trust list ``version``: every agency's new keys listed (encryption keys valid from
        ``now`` + :data:`ENCRYPTION_DELAY` when first published), with the old ones revoked
        when ``revoke``; signed with the sandbox authority key; both files moved into place."""
        fed = self.fed
        assert fed.trust_file is not None and fed.authority is not None
        data = yaml.safe_load(fed.trust_file.read_text())
        data["version"] = version
        data["issued_at"] = _stamp(now - timedelta(seconds=30))
        for agency in data["agencies"]:
            new = self.new[agency["id"]]
            listed = {k["id"] for k in agency["keys"]}
            for part in ("sign", "enc"):
                entry = dict(new[f"{part}-entry"])  # type: ignore[call-overload]
                if part == "enc":
                    entry["valid_from"] = _stamp(now + ENCRYPTION_DELAY)
                if entry["id"] not in listed:
                    agency["keys"].append(entry)
            if revoke:
                agency["revoked"] = sorted(self.old[agency["id"]].values())
        raw = yaml.safe_dump(data, sort_keys=False).encode()
        tmp = fed.trust_file.with_name(".trust.yaml.new")
        tmp.write_bytes(raw)
        Path(f"{tmp}.sig").write_bytes(sign_trust_list(raw, fed.authority))
        os.replace(f"{tmp}.sig", f"{fed.trust_file}.sig")
        os.replace(tmp, fed.trust_file)

    def install_keys(self) -> None:
        """Each agency's new key files moved into the places node.yaml names."""
        for agency in AGENCIES:
            keys_dir = self.fed.config(agency).parent / "keys"
            new = self.new[agency]
            os.replace(new["sign"], keys_dir / f"{agency}.sign.key")  # type: ignore[arg-type]
            os.replace(new["enc"], keys_dir / f"{agency}.enc.key")  # type: ignore[arg-type]

    def drop_old_encryption_keys(self) -> None:
        """Envelopes to the old encryption keys have drained: the second slot gets the new key
        too (held once), so the old private key is gone from the node."""
        for agency in AGENCIES:
            keys_dir = self.fed.config(agency).parent / "keys"
            tmp = keys_dir / ".previous.tmp"
            shutil.copy2(keys_dir / f"{agency}.enc.key", tmp)
            os.replace(tmp, keys_dir / f"{agency}.enc.previous.key")


class Traffic:
    """The national system of NL-POL, sending seizures without pause until stopped."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.sent: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        producer = Producer(self.fed.bootstrap, "test-national-system")
        await producer.start()
        topic = self.fed.local_topic("NL-POL", "outbound")
        try:
            while not self.stop.is_set():
                batch = [seizure_nl() for _ in range(RATE_PER_S // 10)]
                await producer.send_many([(topic, json.dumps(e).encode(), None, ()) for e in batch])
                self.sent.extend(str(e["record"]["event_id"]) for e in batch)  # type: ignore[index]
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()


def _event_ids(documents: list[dict[str, object]]) -> list[str]:
    return [str(d["provenance"]["event_id"]) for d in documents]  # type: ignore[index]


async def _delivered_at_least(fed: Federation, count: int) -> bool:
    return len(await delivered(fed, "BE-FPJ")) >= count


def _in_force(nodes: dict[str, Node], version: int) -> bool:
    return all(n.outbound.trust.version >= version for n in nodes.values())


async def test_rotating_both_keys_during_live_traffic_loses_nothing(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """0 lost, 0 twice; every envelope answered with a DELIVERED receipt; envelopes signed and
    encrypted under old and new keys alike; after the revocation, an envelope signed with
    NL-POL's revoked key is quarantined as untrusted_sender and not delivered; both audit
    trails verify across the rotation."""
    fed = build_federation(
        tmp_path / "fed", kafka_bootstrap, prefix=topic_prefix, agencies=seizure_exchange(1)
    )
    rotation = Rotation(fed)
    rotation.make_keys(capsys)
    traffic = Traffic(fed)
    started = time.monotonic()
    async with running(fed, *AGENCIES) as nodes:
        sender = asyncio.create_task(traffic.run())
        await wait_until(lambda: _delivered_at_least(fed, 20), "traffic flowing")

        # (a) the new keys on the trust list, hot-reloaded by both nodes
        t = time.monotonic()
        published = datetime.now(UTC)
        rotation.publish(2, revoke=False, now=published)
        await wait_until(lambda: _in_force(nodes, 2), "trust list 2 in force")
        rotation.timings["trust list 2 in force (s)"] = time.monotonic() - t

        # (b) the new key files, hot-reloaded; the old encryption key stays in the second slot
        t = time.monotonic()
        rotation.install_keys()
        new_ids = {a: str(rotation.new[a]["sign-entry"]["id"]) for a in AGENCIES}  # type: ignore[index]
        await wait_until(
            lambda: all(nodes[a].outbound.keys.signing.key_id == new_ids[a] for a in AGENCIES),
            "new keys in force",
        )
        rotation.timings["new key files in force (s)"] = time.monotonic() - t
        assert 2 == len(nodes["BE-FPJ"].inbound.keys.encryption)

        # senders move to the new encryption keys when they become valid; then everything
        # sent so far (signed or encrypted under an old key) drains, receipts included
        await asyncio.sleep(
            max(0.0, (published + ENCRYPTION_DELAY - datetime.now(UTC)).total_seconds()) + 2
        )
        t = time.monotonic()
        mark = len(traffic.sent)
        await wait_until(lambda: _delivered_at_least(fed, mark), "old-key envelopes drained", 90)
        await wait_until(
            lambda: nodes["NL-POL"].counters["receipts_received"] >= mark,
            "old-key receipts drained",
            90,
        )
        rotation.timings["drain (s)"] = time.monotonic() - t

        # (c) the old keys revoked; the old private encryption keys removed
        t = time.monotonic()
        revoked_at = datetime.now(UTC)
        rotation.publish(3, revoke=True, now=revoked_at)
        await wait_until(lambda: _in_force(nodes, 3), "trust list 3 in force")
        rotation.timings["revocation in force (s)"] = time.monotonic() - t
        rotation.drop_old_encryption_keys()
        await wait_until(
            lambda: all(len(nodes[a].inbound.keys.encryption) == 1 for a in AGENCIES),
            "old encryption keys removed",
        )

        # a forgery under the revoked signing key, made after the revocation
        nl = nodes["NL-POL"]
        old_signing = keyfiles.load_signing_key(
            fed.config("NL-POL").parent / "keys" / "old-sign.key"
        )
        assert rotation.old["NL-POL"]["sign"] == old_signing.key_id
        rogue = replace(nl.outbound, keys=replace(nl.outbound.keys, signing=old_signing))
        forged_event = parse_plain_event(seizure_nl(), nl.registry)
        (forged,) = [
            s
            for s in rogue.release(forged_event, datetime.now(UTC)).envelopes
            if s.header.recipient == "BE-FPJ"
        ]
        assert forged.header.created_at > revoked_at
        await publish_raw(fed, fed.inbox("BE-FPJ"), forged.data)
        await wait_until(
            lambda: _count_at_least(quarantined(fed, "BE-FPJ"), 1), "forgery quarantined"
        )

        await asyncio.sleep(3)  # traffic under the new keys alone
        traffic.stop.set()
        await sender
        sent = list(traffic.sent)
        t = time.monotonic()
        await wait_until(lambda: _delivered_at_least(fed, len(sent)), "all delivered", 120)
        await wait_until(lambda: nl.counters["receipts_received"] >= len(sent), "all receipts", 120)
        rotation.timings["final drain (s)"] = time.monotonic() - t
        documents = await delivered(fed, "BE-FPJ")
        quarantine = await quarantined(fed, "BE-FPJ")
        inbox = await read_topic(fed.bootstrap, fed.inbox("BE-FPJ"))
        registry = nl.registry
    elapsed = time.monotonic() - started

    received = _event_ids(documents)
    twice = [e for e, n in Counter(received).items() if n > 1]
    lost = sorted(set(sent) - set(received))
    assert [] == lost
    assert [] == twice
    assert sorted(sent) == sorted(received)
    assert forged_event.event_id not in received
    assert ["untrusted_sender"] == [(m.header("fxgw-reason") or b"").decode() for m in quarantine]
    assert forged.data == quarantine[0].value

    wire = registry.get(ENVELOPE_TYPE).format  # format 2: the sandbox speaks contract 1.1
    headers = [read_header(m.value, registry, wire)[0] for m in inbox]
    by_signer = Counter(h.sender_key_id for h in headers)
    by_recipient_key = Counter(h.recipient_key_id for h in headers)
    new_sign = str(rotation.new["NL-POL"]["sign-entry"]["id"])  # type: ignore[index]
    new_enc = str(rotation.new["BE-FPJ"]["enc-entry"]["id"])  # type: ignore[index]
    assert by_signer[rotation.old["NL-POL"]["sign"]] > 0 and by_signer[new_sign] > 0
    assert by_recipient_key[rotation.old["BE-FPJ"]["encrypt"]] > 0 and by_recipient_key[new_enc] > 0
    delivered_by_signer = Counter(
        str(d["provenance"]["sender_key_id"])  # type: ignore[index]
        for d in documents
    )

    audit = read_entries(load_config(fed.config("NL-POL")).audit_dir)
    receipts = [e.data for e in audit if e.kind == "receipt_received"]
    # receipt format 2 has no event id: the sender maps message ids through its releases
    released = {e.data["message_id"]: e.data["event_id"] for e in audit if e.kind == "release"}
    assert sorted(sent) == sorted(str(released[r["message_id"]]) for r in receipts)
    assert {None} == {r["event_id"] for r in receipts}
    assert {"DELIVERED"} == {r["outcome"] for r in receipts}
    receipt_signers = Counter(str(r["signing_key_id"]) for r in receipts)
    assert receipt_signers[rotation.old["BE-FPJ"]["sign"]] > 0
    assert receipt_signers[str(rotation.new["BE-FPJ"]["sign-entry"]["id"])] > 0  # type: ignore[index]
    loaded = [e.data for e in audit if e.kind == "keys_loaded"]
    assert new_sign == loaded[-1]["signing_key_id"]

    logs = capsys.readouterr().err
    assert "keys_loaded" in logs or "reloaded" in logs  # the nodes' log lines were captured
    assert [] == [secret[:16] for secret in rotation.secrets if secret[:16] in logs]
    for agency in AGENCIES:
        assert 0 == main(["audit", "verify", "-c", str(fed.config(agency))]), agency
    verify_output = capsys.readouterr().out
    with capsys.disabled():
        print(
            f"\nkey rotation under live traffic: {len(sent)} events sent, {len(received)}"
            f" delivered ({len(set(received))} distinct), {len(lost)} lost, {len(twice)} twice,"
            f" {len(receipts)} DELIVERED receipts; {elapsed:.1f} s in all"
        )
        print(f"  envelopes by signing key: {dict(by_signer)}")
        print(f"  envelopes by recipient key: {dict(by_recipient_key)}")
        print(f"  deliveries by signing key: {dict(delivered_by_signer)}")
        print(f"  receipts by signing key: {dict(receipt_signers)}")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in rotation.timings.items()))
        print("  forged envelope under the revoked key: quarantined as untrusted_sender")
        for line in verify_output.splitlines():
            if "intact" in line or "checkpoint(s)" in line:
                print(f"  audit verify: {line.strip()}")


async def _count_at_least(messages: object, count: int) -> bool:
    return len(await messages) >= count  # type: ignore[misc, arg-type]
