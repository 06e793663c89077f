"""Exchange across contract versions, with values alone: a sender encodes for each recipient in
a version it reads; a receiver resolves the writer's version to its own; what one version has
and the other lacks is listed as withheld."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.contract.versions import Contract, ContractVersion
from gateway.core.effects import Limits
from gateway.core.inbound import Delivery, InboundCore
from gateway.core.outbound import NoCommonVersion, OutboundCore, Refused, parse_plain_event
from gateway.core.receipts import ReceiptsCore
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList
from gateway.dev.demo import seizure_nl
from gateway.dev.sandbox import Federation
from gateway.errors import ConfigError, SchemaError, TrustError
from gateway.node.config import load_config
from gateway.node.files import own_version
from gateway.policy.engine import PolicyError, check_versions, load_policy
from gateway.types import AgencyId
from tests.contracts import V1_1_EDITS, V1_2_EDITS, Edit, contract, optional_field, retyped
from tests.unit.conftest import NOW, repo_file

NEW_FIELDS = ("firearms[].barrel_serial_number", "linked_case_references")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Contract:
    return Contract.load(
        contract(tmp_path_factory.mktemp("c") / "c", {"1.0": {}, "1.1": V1_1_EDITS})
    )


def _reads(trust: TrustList, agency: str, *labels: str) -> TrustList:
    """``trust`` with ``agency`` reading the contract versions ``labels``."""
    agencies = dict(trust.agencies)
    agencies[AgencyId(agency)] = dataclasses.replace(
        agencies[AgencyId(agency)], contract_versions=labels
    )
    return dataclasses.replace(trust, agencies=agencies)


def _sender(
    keys: AgencyKeys, own: ContractVersion, versions: Contract, trust: TrustList, fed: Federation
) -> OutboundCore:
    return OutboundCore(
        keys=keys,
        registry=own.registry,
        policy=load_policy(repo_file("policies", "nl-pol.yaml"), own.registry),
        trust=trust,
        routes=load_config(fed.config("NL-POL")).routes_in_force,
        ttl=timedelta(days=7),
        contract=versions,
    )


def _receiver(
    keys: AgencyKeys, own: ContractVersion, versions: Contract, trust: TrustList
) -> InboundCore:
    return InboundCore(keys=keys, registry=own.registry, trust=trust, contract=versions)


def _to_be(sender: OutboundCore, event: dict[str, object]) -> tuple[bytes, tuple[str, ...]]:
    plain = parse_plain_event(json.dumps(event).encode(), sender.registry)
    outcome = sender.release(plain, NOW)
    [envelope] = [e for e in outcome.envelopes if e.header.recipient == "BE-FPJ"]
    return envelope.data, envelope.header.withheld


class TestAcrossVersions:
    def test_a_newer_sender_encodes_in_the_version_an_older_recipient_reads(
        self,
        versions: Contract,
        trust: TrustList,
        fed: Federation,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        """NL-POL on 1.1 sends to BE-FPJ, which reads 1.0: the body is 1.0's, the fields only
        1.1 has are listed as withheld, and BE-FPJ (knowing only 1.0) delivers it."""
        v10, v11 = versions.version("1.0"), versions.version("1.1")
        trust = _reads(trust, "BE-FPJ", "1.0")
        event = seizure_nl()
        event["record"]["linked_case_references"] = ["NL-2026-RTM-000001"]  # type: ignore[index]
        data, withheld = _to_be(_sender(nl_keys, v11, versions, trust, fed), event)
        assert set(NEW_FIELDS) <= set(withheld)
        only_10 = Contract([v10])
        result = _receiver(be_keys, v10, only_10, trust).receive(data, NOW, set())
        assert isinstance(result, Delivery), result
        assert v10.registry.get("fxgw.SeizureEvent").fingerprint == result.header.schema_fingerprint
        assert "linked_case_references" not in result.record

    def test_an_older_sender_is_read_by_a_newer_recipient(
        self,
        versions: Contract,
        trust: TrustList,
        fed: Federation,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        """NL-POL on 1.0 sends to BE-FPJ on 1.1 (reading both): the body is 1.0's, BE-FPJ
        resolves it to 1.1, the new fields null and listed as withheld in the provenance."""
        v10, v11 = versions.version("1.0"), versions.version("1.1")
        trust = _reads(trust, "BE-FPJ", "1.0", "1.1")
        sender = _sender(nl_keys, v10, Contract([v10]), trust, fed)
        data, withheld = _to_be(sender, seizure_nl())
        assert not set(NEW_FIELDS) & set(withheld)  # the sender knows nothing of them
        result = _receiver(be_keys, v11, versions, trust).receive(data, NOW, set())
        assert isinstance(result, Delivery), result
        assert result.record["linked_case_references"] is None
        firearms = result.record["firearms"]
        assert isinstance(firearms, list) and firearms[0]["barrel_serial_number"] is None
        assert set(NEW_FIELDS) <= set(result.provenance()["withheld"])  # type: ignore[arg-type]
        assert v11.registry.to_json_decoded("fxgw.SeizureEvent", result.record)

    def test_the_newest_common_version_is_chosen(
        self, versions: Contract, trust: TrustList, fed: Federation, nl_keys: AgencyKeys
    ) -> None:
        v11 = versions.version("1.1")
        sender = _sender(nl_keys, v11, versions, _reads(trust, "BE-FPJ", "1.0", "1.1"), fed)
        assert (
            sender.version_for(sender.trust.agencies[AgencyId("BE-FPJ")], "fxgw.SeizureEvent")
            is None
        )  # its own
        sender.trust = _reads(trust, "BE-FPJ", "1.0")
        chosen = sender.version_for(sender.trust.agencies[AgencyId("BE-FPJ")], "fxgw.SeizureEvent")
        assert chosen is not None and "1.0" == chosen.label

    def test_no_common_version_refuses_that_recipient_only(
        self, versions: Contract, trust: TrustList, fed: Federation, nl_keys: AgencyKeys
    ) -> None:
        sender = _sender(
            nl_keys, versions.version("1.1"), versions, _reads(trust, "BE-FPJ", "2.0"), fed
        )
        plain = parse_plain_event(json.dumps(seizure_nl()).encode(), sender.registry)
        outcome = sender.release(plain, NOW)
        [refused] = [r for r in outcome.refused if r.recipient == "BE-FPJ"]
        assert isinstance(refused, Refused) and "no_common_contract_version" == refused.reason
        assert "2.0" in refused.detail and "1.1" in refused.detail
        assert outcome.envelopes  # the others still get theirs


class TestOwnVersion:
    """Which version a node speaks to its national system, checked against the trust list."""

    def test_default_is_the_newest_its_agency_reads(
        self, versions: Contract, trust: TrustList, fed: Federation
    ) -> None:
        config = load_config(fed.config("NL-POL")).model_copy(update={"contract_version": None})
        me = dataclasses.replace(trust.agencies[AgencyId("NL-POL")], contract_versions=("1.0",))
        assert "1.0" == own_version(config, versions, me).label
        both = dataclasses.replace(me, contract_versions=("1.0", "1.1"))
        assert "1.1" == own_version(config, versions, both).label
        pinned = config.model_copy(update={"contract_version": "1.0"})
        assert "1.0" == own_version(pinned, versions, both).label

    def test_a_listed_version_the_node_lacks_is_refused(
        self, trust: TrustList, fed: Federation
    ) -> None:
        config = load_config(fed.config("NL-POL"))
        me = dataclasses.replace(
            trust.agencies[AgencyId("NL-POL")], contract_versions=("1.0", "1.1", "1.9")
        )
        with pytest.raises(TrustError, match=r"reads contract version\(s\) 1\.9"):
            own_version(config, Contract.load(config.schemas), me)

    def test_a_contract_version_the_trust_list_does_not_list_is_refused(
        self, versions: Contract, trust: TrustList, fed: Federation
    ) -> None:
        """node.yaml may pin one of the versions its agency is listed with, not another: peers
        go by the trust list."""
        config = load_config(fed.config("NL-POL")).model_copy(update={"contract_version": "1.1"})
        me = dataclasses.replace(trust.agencies[AgencyId("NL-POL")], contract_versions=("1.0",))
        with pytest.raises(ConfigError, match=r"contract_version: 1\.1 is not among .*\(1\.0\)"):
            own_version(config, versions, me)

    def test_an_unknown_contract_version_in_node_yaml_is_refused(
        self, versions: Contract, trust: TrustList, fed: Federation
    ) -> None:
        config = load_config(fed.config("NL-POL")).model_copy(update={"contract_version": "1.7"})
        me = dataclasses.replace(trust.agencies[AgencyId("NL-POL")], contract_versions=("1.0",))
        with pytest.raises(ConfigError, match=r"contract_version: .*no version 1\.7") as info:
            own_version(config, versions, me)
        assert str(config.path) == info.value.file


@pytest.fixture(scope="module")
def with_format_2(tmp_path_factory: pytest.TempPathFactory) -> Contract:
    """1.0, 1.1 and 1.2 (envelope and receipt format 2)."""
    root = tmp_path_factory.mktemp("f") / "c"
    return Contract.load(contract(root, {"1.0": {}, "1.1": V1_1_EDITS, "1.2": V1_2_EDITS}))


class TestWireFormats:
    """Envelope and receipt formats evolve without a flag day: a node reads every format of the
    contract versions it has, writes for each peer the format of the newest version it reads,
    and says which formats and versions it sees."""

    def test_formats_are_found_per_version(self, with_format_2: Contract) -> None:
        assert {1: "1.1", 2: "1.2"} == {
            f: v.label for f, v in with_format_2.formats("fxgw.Envelope").items()
        }
        assert {1, 2} == set(with_format_2.formats("fxgw.Receipt"))

    def test_a_changed_envelope_without_a_new_format_is_refused(self, tmp_path: Path) -> None:
        edits = {**V1_1_EDITS, "fxgw.EnvelopeHeader": [optional_field("trace_context")]}
        root = contract(tmp_path / "c", {"1.0": {}, "1.1": edits})
        with pytest.raises(SchemaError, match=r"needs a new \"fxgw.format\""):
            Contract.load(root)

    def test_both_formats_are_read_and_answered_in_the_senders_format(
        self,
        with_format_2: Contract,
        trust: TrustList,
        fed: Federation,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        """BE-FPJ on 1.2 takes NL-POL's envelope in format 2 (NL on 1.2) and one in format 1
        (NL on 1.1); each receipt is in the format NL reads, and NL's receipts core reads both."""
        v11, v12 = with_format_2.version("1.1"), with_format_2.version("1.2")
        all_three = ("1.0", "1.1", "1.2")
        be = _receiver(be_keys, v12, with_format_2, _reads(trust, "BE-FPJ", *all_three))
        seen = []
        up_to_11 = Contract([with_format_2.version("1.0"), v11])
        for nl_version, nl_knows, nl_reads in (
            (v12, with_format_2, all_three),
            (v11, up_to_11, ("1.0", "1.1")),
        ):
            trust_now = _reads(_reads(trust, "BE-FPJ", *all_three), "NL-POL", *nl_reads)
            be.trust = trust_now
            sender = _sender(nl_keys, nl_version, nl_knows, trust_now, fed)
            data, _ = _to_be(sender, seizure_nl())
            effects = be.take(data, NOW, _Nothing(), Limits())
            assert 1 == len(effects.deliveries), effects.quarantines
            [receipt] = effects.receipts
            receipts = ReceiptsCore(
                AgencyId("NL-POL"), nl_version.registry, trust_now, contract=nl_knows
            )
            [entry] = receipts.take(receipt.data, NOW).audit
            [delivered] = [a for a in effects.audit if a.kind == "delivery"]
            assert f"receipt_format_{entry.data['receipt_format']}" in entry.counts
            assert "envelope_format_" + str(delivered.data["envelope_format"]) in delivered.counts
            document = json.loads(effects.deliveries[0].document)
            seen.append(
                (
                    document["provenance"]["envelope_format"],
                    document["provenance"]["contract_version"],
                    entry.data["receipt_format"],
                    [a.kind for a in effects.audit],
                )
            )
        assert [
            # the body's schema is the same in 1.1 and 1.2: named by the oldest version
            (2, "1.1", "2", ["peer_versions", "delivery", "receipt_sent"]),
            (1, "1.1", "1", ["peer_versions", "delivery", "receipt_sent"]),
        ] == seen

    def test_a_format_the_node_lacks_is_quarantined_unanswered(
        self,
        with_format_2: Contract,
        versions: Contract,
        trust: TrustList,
        fed: Federation,
        nl_keys: AgencyKeys,
        be_keys: AgencyKeys,
    ) -> None:
        trust = _reads(trust, "BE-FPJ", "1.0", "1.1", "1.2")
        sender = _sender(nl_keys, with_format_2.version("1.2"), with_format_2, trust, fed)
        data, _ = _to_be(sender, seizure_nl())
        old = _receiver(be_keys, versions.version("1.1"), versions, trust)  # 1.0 and 1.1 only
        effects = old.take(data, NOW, _Nothing(), Limits())
        [quarantined] = effects.quarantines
        headers = {k: v for k, v in quarantined.headers}
        assert b"malformed" == headers["fxgw-reason"]
        assert b"format 2 is not one this node reads (1)" in headers["fxgw-detail"]
        assert () == effects.receipts and () == effects.deliveries


class _Nothing:
    """A delivered-journal view with nothing in it."""

    def __contains__(self, message_id: object) -> bool:
        return False

    def get(self, message_id: str) -> None:
        return None


class TestPolicyAcrossVersions:
    """A policy is checked against every contract version the node may encode in."""

    def test_a_compatible_version_passes(self, versions: Contract) -> None:
        policy = load_policy(repo_file("policies", "nl-pol.yaml"), versions.version("1.0").registry)
        check_versions(policy, {"1.1": versions.version("1.1").registry})

    def test_a_field_withheld_here_but_required_there_is_refused(self, tmp_path: Path) -> None:
        """2.0 makes a person's family name required; NL-POL's rule for non-EU partners
        withholds it, so a 2.0 reader could never be served: refused, naming rule, field and
        version."""
        edits = {"fxgw.Person": [retyped("family_name", "string")]}
        root = contract(tmp_path / "c", {"1.0": {}, "2.0": edits})
        both = Contract.load(root)
        own = both.version("1.0").registry
        policy = load_policy(repo_file("policies", "nl-pol.yaml"), own)
        with pytest.raises(PolicyError) as info:
            check_versions(policy, {"2.0": both.version("2.0").registry})
        message = str(info.value)
        assert "'persons[].family_name'" in message
        assert "contract version 2.0 requires it" in message
        assert str(repo_file("policies", "nl-pol.yaml")) == info.value.file
        assert info.value.line is not None


def test_a_recipient_whose_version_lacks_the_event_type_is_refused_alone(
    tmp_path: Path, trust: TrustList, fed: Federation, nl_keys: AgencyKeys
) -> None:
    """1.1 adds an event type; a recipient reading only 1.0 is refused for it, by reason,
    instead of the event failing for everybody."""
    root = contract(tmp_path / "c", {"1.0": {}, "1.1": V1_1_EDITS}, draft=True)
    extra = {"type": "record", "name": "Note", "namespace": "fxgw", "fxgw.event": True}
    extra["fields"] = [{"name": "event_id", "type": "string"}]
    (root / "1.1" / "fxgw.Note.avsc").write_text(json.dumps(extra))
    both = Contract.load(root)
    sender = _sender(nl_keys, both.version("1.1"), both, _reads(trust, "BE-FPJ", "1.0"), fed)
    be = sender.trust.agencies[AgencyId("BE-FPJ")]
    with pytest.raises(NoCommonVersion, match=r"for fxgw\.Note this node has 1\.1"):
        sender.version_for(be, "fxgw.Note")
    assert sender.version_for(be, "fxgw.SeizureEvent") is both.version("1.0")


def test_defaults_filled_in_by_resolution_are_in_the_python_form(
    tmp_path: Path, trust: TrustList, fed: Federation, nl_keys: AgencyKeys, be_keys: AgencyKeys
) -> None:
    """A newer reader's field with a non-null default (a date, a boolean in each firearm) is
    filled in as a value of its type, so the delivery document can be written."""

    def required(name: str, kind: object, default: object) -> Edit:
        def edit(schema: dict[str, object]) -> None:
            fields = schema["fields"]
            assert isinstance(fields, list)
            fields.append({"name": name, "type": kind, "default": default})

        return edit

    edits = {
        "fxgw.SeizureEvent": [required("logged_on", {"type": "int", "logicalType": "date"}, 0)],
        "fxgw.Firearm": [required("inspected", "boolean", False)],
    }
    both = Contract.load(contract(tmp_path / "c", {"1.0": {}, "1.1": edits}))
    trust = _reads(trust, "BE-FPJ", "1.0", "1.1")
    sender = _sender(nl_keys, both.version("1.0"), Contract([both.version("1.0")]), trust, fed)
    data, _ = _to_be(sender, seizure_nl())
    effects = _receiver(be_keys, both.version("1.1"), both, trust).take(
        data, NOW, _Nothing(), Limits()
    )
    assert 1 == len(effects.deliveries), effects.quarantines
    record = json.loads(effects.deliveries[0].document)["record"]
    assert "1970-01-01" == record["logged_on"]
    assert [False, False] == [f["inspected"] for f in record["firearms"]]


def test_a_body_of_another_major_version_is_not_resolved(
    tmp_path: Path, trust: TrustList, fed: Federation, nl_keys: AgencyKeys, be_keys: AgencyKeys
) -> None:
    """2.0 changes a firearm field's type. A 2.0 sender does not encode for a 1.0-only reader,
    and a 1.0 node that has 2.0's schemas still refuses to resolve a 2.0 body."""
    edits = {"fxgw.Firearm": [retyped("manufacture_year", ["null", "string"])]}
    both = Contract.load(contract(tmp_path / "c", {"1.0": {}, "2.0": edits}))
    v10, v20 = both.version("1.0"), both.version("2.0")
    old_reader = _reads(trust, "BE-FPJ", "1.0")
    sender = _sender(nl_keys, v20, both, old_reader, fed)
    with pytest.raises(NoCommonVersion):
        sender.version_for(old_reader.agencies[AgencyId("BE-FPJ")], "fxgw.SeizureEvent")
    reads_both = _reads(trust, "BE-FPJ", "1.0", "2.0")
    sender.trust = reads_both
    event = seizure_nl()
    for firearm in event["record"]["firearms"]:  # type: ignore[index]
        firearm["manufacture_year"] = None
    data, _ = _to_be(sender, event)
    effects = _receiver(be_keys, v10, both, reads_both).take(data, NOW, _Nothing(), Limits())
    [quarantined] = effects.quarantines
    headers = {k: v for k, v in quarantined.headers}
    assert b"unknown_event_type" == headers["fxgw-reason"]
    assert () == effects.deliveries
