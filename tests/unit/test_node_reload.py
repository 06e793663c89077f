"""Hot reload: a changed policy is checked in full before it replaces the one in force."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.crypto.trust import sign_trust_list
from gateway.dev.sandbox import POLICIES, THREE_AGENCIES, Federation, build_federation
from gateway.errors import ConfigError, Disowned
from gateway.node.config import load_config
from gateway.node.files import load_node_files
from gateway.node.runtime import Node
from gateway.policy.engine import PolicyError
from gateway.types import AgencyId
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
    path.write_text(path.read_text().replace("version: 2", "version: 3", 1))
    assert node.reload({"policy"})
    assert node.outbound.policy.policy_id.endswith("@3")
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
                {**a, "contract_versions": ["1.0", "1.1"]} if a["id"] == "NL-POL" else a
                for a in agencies
            ],
            r"reads contract version\(s\) 1\.1",
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
