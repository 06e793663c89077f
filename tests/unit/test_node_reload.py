"""Hot reload: a changed policy, trust list or key file is checked in full before it replaces
the one in force."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nacl.public
import pytest
import structlog
import yaml

from gateway.audit.store import AuditLog, read_entries
from gateway.cli.main import main
from gateway.crypto.keys import (
    EncryptionKey,
    PseudonymKey,
    SigningKey,
    generate_encryption_key,
    generate_pseudonym_key,
    generate_signing_key,
    public_key_entry,
    write_key_file,
)
from gateway.crypto.trust import sign_trust_list
from gateway.dev.sandbox import POLICIES, THREE_AGENCIES, Federation, build_federation
from gateway.errors import ConfigError, Disowned, NotForUs
from gateway.node.config import load_config
from gateway.node.files import load_node_files
from gateway.node.runtime import Node
from gateway.policy.engine import PolicyError
from gateway.types import AgencyId, KeyId
from tests.contracts import V1_1_EDITS, contract
from tests.unit.conftest import NOW, repo_file


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """NL-POL's node (not started: reload needs no Kafka) over its own copy of the policies."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    fed = build_federation(tmp_path / "fed", "127.0.0.1:1", policies=policies, now=NOW)
    return Node(load_config(fed.config("NL-POL")), now=lambda: NOW)


def test_good_policy_replaces_the_one_in_force(node: Node) -> None:
    """A new version that passes every check is in force for the next event."""
    path = node.config.policy
    before = node.outbound.policy
    path.write_text(path.read_text().replace("version: 4", "version: 5", 1))
    assert node.reload({"policy"})
    assert node.outbound.policy.policy_id.endswith("@5")
    assert before.digest != node.outbound.policy.digest
    assert 1 == node.counters["reloads"]


@pytest.mark.parametrize("broken", ["overlapping_rules", "unknown_field_path", "bad_yaml_syntax"])
def test_bad_policy_keeps_the_last_good_one(node: Node, broken: str) -> None:
    """A policy that fails its checks is not swapped in; the node says so and goes on."""
    before = node.outbound.policy
    source = repo_file("tests", "data", "policies", "broken", f"{broken}.yaml")
    node.config.policy.write_bytes(source.read_bytes())
    assert not node.reload({"policy"})
    assert before is node.outbound.policy
    assert 1 == node.counters["reload_failed"]


def test_another_agencys_policy_is_refused(node: Node) -> None:
    """Dropping BE-FPJ's policy into NL-POL's place is refused (wrong agency)."""
    before = node.outbound.policy
    node.config.policy.write_bytes(node.config.policy.with_name("be-fpj.yaml").read_bytes())
    assert not node.reload({"policy"})
    assert before is node.outbound.policy


def test_node_refuses_to_start_on_an_invalid_policy(tmp_path: Path) -> None:
    """An invalid policy stops the node before it touches Kafka, naming file and line."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    broken = repo_file("tests", "data", "policies", "broken", "unknown_field_path.yaml")
    (policies / "nl-pol.yaml").write_bytes(broken.read_bytes())
    fed = build_federation(tmp_path / "fed", "127.0.0.1:1", policies=policies, now=NOW)
    with pytest.raises(PolicyError) as info:
        Node(load_config(fed.config("NL-POL")), now=lambda: NOW)
    assert str(policies / "nl-pol.yaml") == info.value.file
    assert info.value.line is not None


def test_a_reloaded_trust_list_is_in_force_for_every_core(node: Node) -> None:
    """Release, intake and receipt checking all use the trust list just reloaded."""
    before = node.receipts.trust
    assert node.reload({"trust"})
    trust = node.outbound.trust
    assert trust is not before
    assert node.inbound.trust is trust and node.receipts.trust is trust


Agencies = list[dict[str, Any]]


def _reissue(fed: Federation, change: Callable[[Agencies], Agencies]) -> None:
    """The federation's trust list with its agencies changed, as the next version, signed."""
    assert fed.trust_file is not None and fed.authority is not None
    data = yaml.safe_load(fed.trust_file.read_text(encoding="utf-8"))
    data["version"] += 1
    data["agencies"] = change(data["agencies"])
    fed.trust_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    signature = sign_trust_list(fed.trust_file.read_bytes(), fed.authority)
    Path(f"{fed.trust_file}.sig").write_bytes(signature)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda agencies: [a for a in agencies if a["id"] != "NL-POL"],
            "NL-POL is not on the trust list",
        ),
        (
            lambda agencies: [
                {**a, "keys": [k for k in a["keys"] if k["use"] != "sign"]}
                if a["id"] == "NL-POL"
                else a
                for a in agencies
            ],
            "our signing key",
        ),
        (
            lambda agencies: [
                {**a, "contract_versions": ["1.0", "1.1", "1.9"]} if a["id"] == "NL-POL" else a
                for a in agencies
            ],
            r"reads contract version\(s\) 1\.9",
        ),
    ],
    ids=["agency-dropped", "signing-key-dropped", "version-the-node-lacks"],
)
def test_a_trust_list_that_disowns_the_node_stops_it(
    tmp_path: Path,
    change: Callable[[Agencies], Agencies],
    reason: str,
) -> None:
    """A newer, validly signed trust list is held to what the node checks at start: its
    agency listed, its signing key valid, every version it says the agency reads in the
    node's contract. One that fails stops the node (a fatal error) rather than leave the list
    it replaces in force, whose keys the federation may have revoked; the node then refuses
    it at start with the same reason."""
    fed = build_federation(tmp_path / "fed", "127.0.0.1:1", now=NOW)
    node = Node(load_config(fed.config("NL-POL")), now=lambda: NOW)
    before = node.outbound.trust
    _reissue(fed, change)
    with pytest.raises(Disowned, match=reason) as info:
        node.reload({"trust"})
    assert info.value.fatal and not info.value.retriable
    assert before is node.outbound.trust and before is node.inbound.trust  # nothing swapped
    with pytest.raises(ConfigError, match=reason):
        load_node_files(node.config, NOW)


def test_a_list_without_a_recipient_the_policy_names_is_taken_with_a_warning(
    tmp_path: Path,
) -> None:
    """A newer trust list without US-ATF and the legal basis MLAT-EU-US (that NL-POL's policy
    names) is put in force, with a warning naming the rule: a name on nobody
    covers nobody, and refusing the list would keep the old one's keys. The policy itself is
    refused with it at the next start, or when it is reloaded."""
    fed = build_federation(tmp_path / "fed", "127.0.0.1:1", now=NOW)
    node = Node(load_config(fed.config("NL-POL")), now=lambda: NOW)
    _reissue(
        fed,
        lambda agencies: [
            {**a, "legal_bases": [b for b in a.get("legal_bases", []) if b != "MLAT-EU-US"]}
            for a in agencies
            if a["id"] != "US-ATF"
        ],
    )
    with structlog.testing.capture_logs() as logs:
        assert node.reload({"trust"})
    assert "US-ATF" not in node.outbound.trust.agencies
    warnings = [e for e in logs if e["event"] == "policy_names_unknown_recipient"]
    assert warnings and all("legal basis 'MLAT-EU-US'" in e["error"] for e in warnings)
    assert not node.reload({"policy"})
    with pytest.raises(PolicyError, match="legal basis 'MLAT-EU-US', which the trust list"):
        load_node_files(node.config, NOW)


def test_a_list_that_changes_the_nodes_version_after_restart_is_taken_with_a_warning(
    tmp_path: Path, stream: io.StringIO
) -> None:
    """NL-POL runs 1.1 (the newest the list gives it); a new list gives it 1.0 only: the list
    is in force at once (its keys matter now), and the node says that a restart would switch
    it to 1.0."""
    root = contract(tmp_path / "contract", {"1.0": {}, "1.1": V1_1_EDITS})
    nl = dataclasses.replace(THREE_AGENCIES[0], schemas=root, contract_versions=("1.0", "1.1"))
    agencies = (nl, *THREE_AGENCIES[1:])
    fed = build_federation(tmp_path / "fed", "127.0.0.1:1", agencies=agencies, now=NOW)
    node = Node(load_config(fed.config("NL-POL")), now=lambda: NOW)
    assert "1.1" == node.outbound.own_version.label
    _reissue(
        fed,
        lambda agencies: [
            {**a, "contract_versions": ["1.0"]} if a["id"] == "NL-POL" else a for a in agencies
        ],
    )
    assert node.reload({"trust"})
    assert ("1.0",) == node.outbound.trust.agencies[AgencyId("NL-POL")].contract_versions
    assert "1.1" == node.outbound.own_version.label  # until a restart
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    warned = [line for line in lines if line["event"] == "contract_version_changes_on_restart"]
    assert [("1.1", "1.0")] == [(w["running"], w["after_restart"]) for w in warned]


def _publish(fed: Federation, agency: str, *entries: dict[str, object]) -> None:
    """The next trust-list version with ``entries`` added to ``agency``'s keys, signed."""
    _reissue(
        fed,
        lambda agencies: [
            {**a, "keys": [*a["keys"], *entries]} if a["id"] == agency else a for a in agencies
        ],
    )


def _put_in_place(path: Path, key: SigningKey | EncryptionKey | PseudonymKey) -> None:
    """Replace the key file at ``path`` with ``key`` as an operator does: write, then rename."""
    new = path.with_name(path.name + ".new")
    write_key_file(new, key, owner="NL-POL")
    os.replace(new, path)


def _window(days: int = 30) -> dict[str, datetime]:
    return {"valid_from": NOW - timedelta(minutes=5), "valid_until": NOW + timedelta(days=days)}


class TestKeyReload:
    """Key files reload like policies: checked in full against the trust list in force, then
    swapped in; a bad file keeps the keys in force."""

    def _node(self, tmp_path: Path, encryption_files: int = 1) -> tuple[Federation, Node]:
        policies = tmp_path / "policies"  # a copy: a test may write the node's policy file
        shutil.copytree(POLICIES, policies)
        fed = build_federation(tmp_path / "fed", "127.0.0.1:1", policies=policies, now=NOW)
        if encryption_files > 1:  # a second slot, for the key kept while envelopes drain
            path = fed.config("NL-POL")
            data = yaml.safe_load(path.read_text())
            shutil.copy2(path.parent / "keys" / "NL-POL.enc.key", path.parent / "keys" / "prev.key")
            data["keys"]["encryption"] = ["keys/NL-POL.enc.key", "keys/prev.key"]
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return fed, Node(load_config(fed.config("NL-POL")), now=lambda: NOW)

    def test_a_published_signing_key_is_swapped_in(self, tmp_path: Path) -> None:
        """A new signing key listed and valid for the agency signs from the next batch on; the
        receiving and sending cores hold the same keys."""
        fed, node = self._node(tmp_path)
        new = generate_signing_key(KeyId("NL-POL/sign/rotated"))
        _publish(fed, "NL-POL", public_key_entry(new, **_window()))
        assert node.reload({"trust"})
        _put_in_place(node.config.keys.signing, new)
        assert node.reload({"keys"})
        assert new.public == node.outbound.keys.signing.public
        assert node.inbound.keys is node.outbound.keys

    def test_an_unpublished_signing_key_is_refused_and_no_secret_is_logged(
        self, tmp_path: Path, stream: io.StringIO
    ) -> None:
        """A signing key the trust list does not list keeps the old key in force; the
        reload_failed line names the key id and the fix, never the key."""
        _, node = self._node(tmp_path)
        before = node.outbound.keys
        new = generate_signing_key(KeyId("NL-POL/sign/unlisted"))
        _put_in_place(node.config.keys.signing, new)
        assert not node.reload({"keys"})
        assert before is node.outbound.keys
        assert 1 == node.counters["reload_failed"]
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        failed = [line for line in lines if line["event"] == "reload_failed"]
        assert 1 == len(failed)
        assert "NL-POL/sign/unlisted" in failed[0]["error"]
        secret = base64.b64encode(bytes(new.key)).decode()
        assert secret not in stream.getvalue()
        assert secret[:16] not in stream.getvalue()

    @pytest.mark.parametrize("damage", ["cut", "not-utf8"])
    def test_an_unreadable_key_file_keeps_the_keys_in_force(
        self, tmp_path: Path, stream: io.StringIO, damage: str
    ) -> None:
        """A key file cut short (a copy in progress) or garbled is refused; the old keys stay,
        and the log line quotes nothing of the file."""
        _, node = self._node(tmp_path)
        before = node.outbound.keys
        path = node.config.keys.encryption[0]
        data = path.read_bytes()
        private = json.loads(data)["private"]
        if damage == "cut":
            data = data[: data.index(private.encode()) + 20]
        else:
            data = data.replace(private.encode(), b"\xff" + private.encode())
        path.write_bytes(data)
        assert not node.reload({"keys"})
        assert before is node.outbound.keys
        assert "reload_failed" in stream.getvalue()
        assert private[:12] not in stream.getvalue()
        assert "xff" not in stream.getvalue()

    def test_an_encryption_key_that_differs_from_its_listed_public_key_is_refused(
        self, tmp_path: Path
    ) -> None:
        """A private key filed under a listed id whose public half is another is refused."""
        _, node = self._node(tmp_path)
        before = node.outbound.keys
        listed_id = before.encryption[0].key_id
        _put_in_place(node.config.keys.encryption[0], generate_encryption_key(listed_id))
        assert not node.reload({"keys"})
        assert before is node.outbound.keys

    def test_the_key_senders_use_cannot_be_dropped(self, tmp_path: Path) -> None:
        """Replacing the only encryption key before the list gives senders the new one would
        leave envelopes unopenable: refused."""
        _, node = self._node(tmp_path)
        before = node.outbound.keys
        _put_in_place(
            node.config.keys.encryption[0], generate_encryption_key(KeyId("NL-POL/encrypt/x"))
        )
        assert not node.reload({"keys"})
        assert before is node.outbound.keys

    def test_encryption_rotation_keeps_the_old_key_then_forgets_what_it_unwrapped(
        self, tmp_path: Path
    ) -> None:
        """New key in the first slot, old key in the second: both open envelopes. When the old
        key's file is replaced too, data keys unwrapped with it leave the cache."""
        fed, node = self._node(tmp_path, encryption_files=2)
        old = node.outbound.keys.encryption[0]
        assert 1 == len(node.outbound.keys.encryption)  # the same key in both slots, held once
        new = generate_encryption_key(KeyId("NL-POL/encrypt/rotated"))
        _put_in_place(node.config.keys.encryption[0], new)  # not listed yet: kept, not refused
        assert node.reload({"keys"})
        assert {old.key_id, new.key_id} == {k.key_id for k in node.inbound.keys.encryption}
        wrapped = bytes(nacl.public.SealedBox(old.key.public_key).encrypt(b"k" * 32))
        assert b"k" * 32 == node.inbound.cache.unwrap(node.inbound.keys, old.key_id, wrapped)
        _publish(fed, "NL-POL", public_key_entry(new, **_window()))
        assert node.reload({"trust"})
        assert new.key_id == node.outbound.trust.encryption_key("NL-POL", NOW).key_id  # type: ignore[union-attr]
        _put_in_place(node.config.keys.encryption[1], new)  # the old key has drained
        assert node.reload({"keys"})
        assert [new.key_id] == [k.key_id for k in node.inbound.keys.encryption]
        with pytest.raises(NotForUs):
            node.inbound.cache.unwrap(node.inbound.keys, old.key_id, wrapped)

    def test_a_new_pseudonym_secret_changes_the_pseudonyms(self, tmp_path: Path) -> None:
        """After a pseudonym rotation the same value gets another pseudonym (the break in
        linkage recipients are told about)."""
        _, node = self._node(tmp_path)
        assert node.outbound.pseudonymiser is not None
        before = node.outbound.pseudonymiser.pseudonym("Jansen", "US-ATF", ("event", "E"))
        assert node.config.keys.pseudonym is not None
        _put_in_place(
            node.config.keys.pseudonym, generate_pseudonym_key(KeyId("NL-POL/pseudonym/r"))
        )
        assert node.reload({"keys"})
        assert node.outbound.pseudonymiser is not None
        assert before != node.outbound.pseudonymiser.pseudonym("Jansen", "US-ATF", ("event", "E"))
        assert "NL-POL/pseudonym/r" == node.outbound.keys.pseudonym.key_id  # type: ignore[union-attr]

    def test_a_bad_key_file_does_not_hold_back_a_trust_list_changed_with_it(
        self, tmp_path: Path
    ) -> None:
        """A new trust list and a broken key file in the same tick: the list is in force, the
        keys are not swapped."""
        fed, node = self._node(tmp_path)
        before = node.outbound.keys
        _reissue(fed, lambda agencies: agencies)
        node.config.keys.signing.write_bytes(b"{")
        assert node.reload({"trust", "keys"})
        assert 2 == node.outbound.trust.version
        assert before is node.outbound.keys

    def test_rotation_is_audited_and_the_trail_verifies_across_it(self, tmp_path: Path) -> None:
        """keys_loaded names key ids only; checkpoints before the switch are by the old key,
        after it by the new one; fxgw audit verify -c accepts the whole chain, also once the old
        key is revoked."""
        fed, node = self._node(tmp_path)
        node._audit_log = AuditLog.open(
            node.config.audit_dir, node.outbound.keys.signing, now=lambda: NOW
        )
        old = node.outbound.keys.signing
        node.audit.append("note", {"n": 1})
        new = generate_signing_key(KeyId("NL-POL/sign/rotated"))
        _publish(fed, "NL-POL", public_key_entry(new, **_window()))
        assert node.reload({"trust"})
        _put_in_place(node.config.keys.signing, new)
        assert node.reload({"keys"})
        node.audit.append("note", {"n": 2})
        _reissue(
            fed,
            lambda agencies: [
                {**a, "revoked": [old.key_id]} if a["id"] == "NL-POL" else a for a in agencies
            ],
        )
        assert node.reload({"trust"})
        node.audit.close()
        entries = read_entries(node.config.audit_dir)
        loaded = [e.data for e in entries if e.kind == "keys_loaded"]
        assert [new.key_id] == [d["signing_key_id"] for d in loaded]
        assert {"signing_key_id", "encryption_key_ids", "pseudonym_key_id"} == set(loaded[0])
        signers = [e.data["key_id"] for e in entries if e.kind == "checkpoint"]
        assert old.key_id == signers[0] and new.key_id == signers[-1]
        assert 0 == main(["audit", "verify", "-c", str(node.config.path)])

    def test_a_bad_policy_with_good_key_files_swaps_nothing_and_fails_once(
        self, tmp_path: Path
    ) -> None:
        """Key files that are fine do not go in alone when the policy changed with them is
        bad: the tick fails as a whole, reported once."""
        _, node = self._node(tmp_path)
        before = node.outbound.keys
        assert node.config.keys.pseudonym is not None
        _put_in_place(node.config.keys.pseudonym, generate_pseudonym_key(KeyId("NL-POL/p/2")))
        node.config.policy.write_text("not: [a policy")
        assert not node.reload({"keys", "policy"})
        assert before is node.outbound.keys
        assert 1 == node.counters["reload_failed"]
