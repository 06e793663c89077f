"""The release policy: loading and its errors, who a rule covers, and what a plan releases."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract
from gateway.core.outbound import parse_plain_event
from gateway.core.routing import values_at
from gateway.crypto.trust import Agency, TrustList
from gateway.errors import PolicyError, PolicyProblems
from gateway.policy.engine import (
    Denied,
    FieldPlan,
    Plan,
    Policy,
    Selector,
    apply_plan,
    load_policy,
    policy_schema_json,
)
from gateway.policy.review import review
from gateway.policy.tools import explain
from gateway.policy.transforms import Pseudonymiser
from gateway.types import AgencyId, CountryCode, EventType
from tests.contracts import V1_1_EDITS, contract
from tests.strategies import records_for
from tests.unit.conftest import NOW, repo_file

EXAMPLES = ("nl-pol", "be-fpj", "us-atf")
BROKEN = sorted(repo_file("tests", "data", "policies", "broken").glob("*.yaml"))
BROKEN_ON_TRUST = sorted(repo_file("tests", "data", "policies", "broken-on-trust").glob("*.yaml"))
SEIZURE = EventType("fxgw.SeizureEvent")
TRACE = EventType("fxgw.TraceRequest")
PSEUDONYMS = Pseudonymiser(b"\x07" * 32)
HANDLING = "{code: H2, purpose: testing, source: B, information: 2}"
PERSON_NAMES = "{'persons[].role': keep, 'persons[].family_name': keep}"
REQUIRED = (
    "event_id: keep, reported_at: keep, reporting_agency.agency_id: keep,"
    " reporting_agency.country: keep, 'firearms[].item_id': keep"
)
"""The fields a seizure requires, which every seizure rule must name."""


def _agency(
    agency_id: str,
    country: str,
    groups: tuple[str, ...] = (),
    legal_bases: tuple[str, ...] = (),
) -> Agency:
    return Agency(
        AgencyId(agency_id),
        CountryCode(country),
        None,
        frozenset(groups),
        frozenset(),
        frozenset(legal_bases),
        (),
    )


BE = _agency("BE-FPJ", "BE", ("EU", "INTERPOL"), ("EU-LED",))
DE = _agency("DE-BKA", "DE", ("EU", "INTERPOL"), ("EU-LED",))
AT = _agency("AT-BK", "AT", ("EU",))
US = _agency("US-ATF", "US", ("INTERPOL",), ("MLAT-EU-US",))
US_CBP = _agency("US-CBP", "US", (), ("MLAT-EU-US",))
CH = _agency("CH-FEDPOL", "CH", ("INTERPOL",))


@pytest.fixture(scope="module")
def examples(registry: SchemaRegistry) -> dict[str, Policy]:
    """The example policies of policies/, by name."""
    return {name: load_policy(repo_file("policies", f"{name}.yaml"), registry) for name in EXAMPLES}


@pytest.fixture(scope="module")
def seizure(registry: SchemaRegistry) -> dict[str, object]:
    """A Dutch seizure with two firearms and two persons, in the Python form."""
    path = repo_file("tests", "data", "events", "seizure_nl_rotterdam_two_firearms.json")
    return parse_plain_event(json.loads(path.read_text(encoding="utf-8")), registry).record


def _policy(tmp_path: Path, registry: SchemaRegistry, rules: str) -> Policy:
    """A policy of NL-POL with the given rules (YAML, indented as a list under ``rules:``)."""
    path = tmp_path / "policy.yaml"
    header = "policy: {id: test-release, version: 1, agency: NL-POL}\nrules:\n"
    path.write_text(header + textwrap.indent(textwrap.dedent(rules), "  "), encoding="utf-8")
    return load_policy(path, registry)


def _seizure_plan(tmp_path: Path, registry: SchemaRegistry, fields: str) -> Plan:
    """The plan of a one-rule seizure policy for EU members with ``fields`` (YAML mapping)."""
    policy = _policy(
        tmp_path,
        registry,
        f"""\
        - id: seizure-eu
          event: fxgw.SeizureEvent
          to: {{groups: [EU]}}
          handling: {HANDLING}
          fields: {{{REQUIRED}, {fields.strip()[1:]}
        """.replace(", }", "}"),
    )
    plan = policy.plan_for(SEIZURE, BE, {})
    assert isinstance(plan, Plan)
    return plan


def _release(
    plan: Plan, record: dict[str, object], recipient: str = "BE-FPJ"
) -> tuple[dict[str, object], tuple[str, ...]]:
    released = apply_plan(plan, record, recipient=recipient, pseudonymiser=PSEUDONYMS, now=NOW)
    return released.record, released.withheld


def _nulls(registry: SchemaRegistry, path: str) -> dict[str, object]:
    """A record of the type at ``path`` of a seizure with every field null."""
    return {info.name: None for info in registry.get(SEIZURE).field(path).children}


def _expectations(
    path: Path, tag: str = "expect", mark: str = "error"
) -> tuple[list[str], list[int]]:
    """The message fragments (``# expect:`` lines) and the marked lines (``# <-- error``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fragments = [line.removeprefix(f"# {tag}: ") for line in lines if line.startswith(f"# {tag}: ")]
    marked = [number for number, line in enumerate(lines, 1) if f"# <-- {mark}" in line]
    assert fragments and marked, f"{path.name}: needs '# {tag}:' and a marked line"
    return fragments, marked


def _problems(error: PolicyError) -> tuple[PolicyError, ...]:
    return error.problems if isinstance(error, PolicyProblems) else (error,)


class TestExamplePolicies:
    """The example policies of policies/ load and agree with the sandbox trust list."""

    @pytest.mark.parametrize("name", EXAMPLES)
    def test_example_loads(self, examples: dict[str, Policy], name: str) -> None:
        """Each example loads, belongs to its agency, and is identified by its file's digest."""
        policy = examples[name]
        path = repo_file("policies", f"{name}.yaml")
        assert name.upper() == policy.agency
        assert policy.policy_id.startswith(f"{name}-release@")
        assert hashlib.sha256(path.read_bytes()).digest() == policy.digest
        assert str(path) == policy.path
        assert len({rule.rule_id for rule in policy.rules}) == len(policy.rules)

    @pytest.mark.parametrize("name", EXAMPLES)
    def test_example_covers_every_event_type(
        self, examples: dict[str, Policy], registry: SchemaRegistry, name: str
    ) -> None:
        """Every example has a rule for each event type of the contract."""
        covered = {rule.plan.event_type for rule in examples[name].rules}
        assert set(registry.event_types) == covered

    @pytest.mark.parametrize("name", EXAMPLES)
    def test_example_has_no_conflicts_on_the_sandbox(
        self, examples: dict[str, Policy], trust: TrustList, name: str
    ) -> None:
        """No two disagreeing rules cover the same sandbox agency."""
        examples[name].check_against(trust)

    def test_only_nl_pol_pseudonymises(self, examples: dict[str, Policy]) -> None:
        """NL-POL's policy pseudonymises (so its node needs a secret); the others do not."""
        assert {"nl-pol": True, "be-fpj": False, "us-atf": False} == {
            name: policy.uses_pseudonyms for name, policy in examples.items()
        }


class TestBrokenPolicies:
    """Each broken file of tests/data/policies/broken is refused at its line, with the fix."""

    @pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
    def test_broken_policy_is_refused(self, registry: SchemaRegistry, path: Path) -> None:
        """PolicyError names the file, every marked line (and no other) and every expected
        fragment, all at once."""
        fragments, lines = _expectations(path)
        with pytest.raises(PolicyError) as info:
            load_policy(path, registry)
        error = info.value
        assert lines == sorted({p.line for p in _problems(error) if p.line is not None})
        assert {str(path)} == {p.file for p in _problems(error)}
        assert str(error).startswith(f"{path}:{lines[0]}: ")
        for fragment in fragments:
            assert fragment in error.message

    @pytest.mark.parametrize("path", BROKEN_ON_TRUST, ids=[p.stem for p in BROKEN_ON_TRUST])
    def test_refused_on_the_trust_list(
        self, registry: SchemaRegistry, trust: TrustList, path: Path
    ) -> None:
        """A file that loads alone is refused with the sandbox trust list at hand on node
        NL-POL, at every marked line, with every expected fragment."""
        fragments, lines = _expectations(path)
        load_policy(path, registry)
        with pytest.raises(PolicyError) as info:
            load_policy(path, registry, trust, AgencyId("NL-POL"))
        assert lines == sorted({p.line for p in _problems(info.value) if p.line is not None})
        for fragment in fragments:
            assert fragment in info.value.message

    def test_the_table_covers_the_required_cases(self) -> None:
        """The table holds at least the cases every policy author runs into."""
        required = {
            "unknown_event_type",
            "unknown_field_path",
            "drop_required_field",
            "unknown_action",
            "duplicate_rule_id",
            "h3_without_conditions",
            "to_names_nobody",
            "bad_yaml_syntax",
            "missing_policy_block",
        }
        assert required <= {path.stem for path in BROKEN}

    def test_missing_file(self, registry: SchemaRegistry, tmp_path: Path) -> None:
        """A missing policy file is named."""
        path = tmp_path / "absent.yaml"
        with pytest.raises(PolicyError, match="policy file not found") as info:
            load_policy(path, registry)
        assert str(path) == info.value.file

    def test_unknown_event_type_without_a_close_match(
        self, registry: SchemaRegistry, tmp_path: Path
    ) -> None:
        """Without a near name there is no 'did you mean'."""
        rules = f"- {{id: r, event: fxgw.Parking, to: {{all: true}}, handling: {HANDLING}}}\n"
        with pytest.raises(PolicyError) as info:
            _policy(tmp_path, registry, rules)
        assert "unknown event type 'fxgw.Parking'" in info.value.message
        assert "did you mean" not in info.value.message

    def test_a_rule_for_a_newer_versions_event_type_is_skipped_with_since(
        self, registry: SchemaRegistry, tmp_path: Path
    ) -> None:
        """On version 1.0, a rule for fxgw.HitEvaluation (added in 1.2) that says since: "1.2" is
        skipped, so the shipped policies load on nodes of every version; without since, the
        unknown type is refused."""

        def rule(since: str) -> str:
            return (
                f"- {{id: hits, event: fxgw.HitEvaluation,{since} to: {{all: true}},"
                f" handling: {HANDLING}, fields: {{event_id: keep}}}}\n"
            )

        assert "fxgw.HitEvaluation" not in registry.event_types
        policy = _policy(tmp_path, registry, rule(' since: "1.2",'))
        assert [] == [r.rule_id for r in policy.rules]
        with pytest.raises(PolicyError, match=r"unknown event type 'fxgw\.HitEvaluation'"):
            _policy(tmp_path, registry, rule(""))


def _conditional_rule(when: str, fields: str) -> str:
    """One seizure rule for everyone with a rule condition and a field plan (YAML mappings)."""
    return f"""\
        - id: r
          event: fxgw.SeizureEvent
          to: {{all: true}}
          when: {when}
          handling: {HANDLING}
          fields: {{{REQUIRED}, {fields.strip()[1:]}
        """.replace(", }", "}")


class TestShapeRule:
    """A condition may test only fields its rule releases in clear (unchanged, always)."""

    @pytest.mark.parametrize(
        ("fields", "when"),
        [
            ("{exchange_flagged: keep}", "{exchange_flagged: true}"),
            ("{recovery_location: keep}", "{recovery_location.country: NL}"),
            ("{recovery_location.country: keep}", "{recovery_location.country: [NL, BE]}"),
            ("{}", "{reporting_agency.country: NL}"),  # required: every view carries it
        ],
    )
    def test_condition_on_a_field_in_clear_loads(
        self, registry: SchemaRegistry, tmp_path: Path, fields: str, when: str
    ) -> None:
        """A field kept as is, inside a kept record, or required may be tested."""
        policy = _policy(tmp_path, registry, _conditional_rule(when, fields))
        assert ("r",) == tuple(rule.rule_id for rule in policy.rules)

    @pytest.mark.parametrize(
        ("fields", "when", "hidden"),
        [
            ("{}", "{exchange_flagged: true}", "exchange_flagged"),
            (
                "{exchange_flagged: {keep: true, when: {crime_code: X}}, crime_code: keep}",
                "{exchange_flagged: true}",
                "exchange_flagged",
            ),
            (
                "{recovery_location.country: redact}",
                "{recovery_location.country: NL}",
                "recovery_location.country",
            ),
            (
                "{recovery_location: {keep: true, when: {crime_code: X}}, crime_code: keep}",
                "{recovery_location.country: NL}",
                "recovery_location.country",
            ),
        ],
    )
    def test_condition_on_a_hidden_field_is_refused(
        self, registry: SchemaRegistry, tmp_path: Path, fields: str, when: str, hidden: str
    ) -> None:
        """Withheld, transformed or itself conditional: the field's value would show through."""
        with pytest.raises(PolicyError) as info:
            _policy(tmp_path, registry, _conditional_rule(when, fields))
        assert f"rule 'r': the rule's 'when' tests '{hidden}'" in info.value.message
        assert f"keep '{hidden}' in this rule" in info.value.message

    def test_every_shipped_condition_tests_a_field_in_clear(
        self, examples: dict[str, Policy]
    ) -> None:
        """The example policies keep every field their conditions test (they load at all)."""
        flagged = [
            rule.rule_id
            for policy in examples.values()
            for rule in policy.rules
            if any(p.when is not None for p in _walk(rule.plan.fields))
        ]
        assert ["seizure-eu", "seizure-partners"] == flagged


class TestSelector:
    """A selector covers agencies, groups, countries or all, minus except, with a legal basis."""

    @pytest.mark.parametrize(
        ("selector", "covered"),
        [
            (Selector(agencies=frozenset({"BE-FPJ"})), {"BE-FPJ"}),
            (Selector(groups=frozenset({"EU"})), {"BE-FPJ", "DE-BKA", "AT-BK"}),
            (Selector(countries=frozenset({"US"})), {"US-ATF", "US-CBP"}),
            (
                Selector(everyone=True),
                {"BE-FPJ", "DE-BKA", "AT-BK", "US-ATF", "US-CBP", "CH-FEDPOL"},
            ),
            (
                Selector(groups=frozenset({"INTERPOL"}), agencies=frozenset({"AT-BK"})),
                {"BE-FPJ", "DE-BKA", "US-ATF", "CH-FEDPOL", "AT-BK"},
            ),
            (
                Selector(everyone=True, except_groups=frozenset({"EU"})),
                {"US-ATF", "US-CBP", "CH-FEDPOL"},
            ),
            (
                Selector(groups=frozenset({"EU"}), except_agencies=frozenset({"DE-BKA"})),
                {"BE-FPJ", "AT-BK"},
            ),
            (
                Selector(everyone=True, except_countries=frozenset({"US", "CH"})),
                {"BE-FPJ", "DE-BKA", "AT-BK"},
            ),
            (
                Selector(agencies=frozenset({"BE-FPJ"}), except_groups=frozenset({"EU"})),
                set(),
            ),
            (
                Selector(groups=frozenset({"EU"}), legal_basis=frozenset({"EU-LED"})),
                {"BE-FPJ", "DE-BKA"},
            ),
            (
                Selector(everyone=True, legal_basis=frozenset({"EU-LED", "MLAT-EU-US"})),
                {"BE-FPJ", "DE-BKA", "US-ATF", "US-CBP"},
            ),
        ],
        ids=[
            "agencies",
            "groups",
            "countries",
            "all",
            "groups-and-agencies",
            "all-except-group",
            "except-agency",
            "except-countries",
            "except-beats-listing",
            "legal-basis",
            "any-legal-basis",
        ],
    )
    def test_covers(self, selector: Selector, covered: set[str]) -> None:
        """The selector covers exactly the expected agencies."""
        agencies = (BE, DE, AT, US, US_CBP, CH)
        assert covered == {a.agency_id for a in agencies if selector.covers(a)}

    def test_file_form_compiles(self, registry: SchemaRegistry, tmp_path: Path) -> None:
        """``to`` with all, except and legal_basis compiles to the matching Selector."""
        policy = _policy(
            tmp_path,
            registry,
            f"""\
            - id: partners
              event: fxgw.SeizureEvent
              to:
                all: true
                except: {{groups: [EU], agencies: [US-CBP], countries: [CH]}}
                legal_basis: [MLAT-EU-US]
              handling: {HANDLING}
              fields: {{{REQUIRED}}}
            """,
        )
        expected = Selector(
            everyone=True,
            except_agencies=frozenset({"US-CBP"}),
            except_groups=frozenset({"EU"}),
            except_countries=frozenset({"CH"}),
            legal_basis=frozenset({"MLAT-EU-US"}),
        )
        assert expected == policy.rules[0].selector
        assert ["US-ATF"] == [
            a.agency_id for a in (BE, US, US_CBP, CH) if policy.rules[0].selector.covers(a)
        ]


class TestPlanFor:
    """plan_for picks the rule covering an event and a recipient; no rule is a decision."""

    def test_no_rule_for_the_recipient(self, examples: dict[str, Policy]) -> None:
        """BE-FPJ shares seizures with the EU only: US-ATF is denied with no_rule."""
        assert Denied(AgencyId("US-ATF"), SEIZURE, "no_rule") == examples["be-fpj"].plan_for(
            SEIZURE, US, {}
        )

    def test_no_rule_for_the_event_type(self, registry: SchemaRegistry, tmp_path: Path) -> None:
        """An event type no rule names is denied even to a covered recipient."""
        policy = _policy(
            tmp_path,
            registry,
            f"- {{id: s, event: fxgw.SeizureEvent, to: {{all: true}}, handling: {HANDLING},"
            f" fields: {{{REQUIRED}}}}}\n",
        )
        assert isinstance(policy.plan_for(SEIZURE, BE, {}), Plan)
        assert Denied(AgencyId("BE-FPJ"), TRACE, "no_rule") == policy.plan_for(TRACE, BE, {})

    def test_nl_pol_rules_by_recipient(self, examples: dict[str, Policy]) -> None:
        """NL-POL: EU partners with EU-LED get seizure-eu, MLAT partners seizure-partners."""
        policy = examples["nl-pol"]
        decisions = {a.agency_id: policy.plan_for(SEIZURE, a, {}) for a in (BE, DE, US, AT, CH)}
        assert {
            "BE-FPJ": "seizure-eu",
            "DE-BKA": "seizure-eu",
            "US-ATF": "seizure-partners",
            "AT-BK": "no_rule",
            "CH-FEDPOL": "no_rule",
        } == {
            agency: d.reason if isinstance(d, Denied) else d.rule_id
            for agency, d in decisions.items()
        }

    def test_rule_conditions_select_the_rule(self, examples: dict[str, Policy]) -> None:
        """A rule's ``when`` decides between rules by the event's content."""
        policy = examples["nl-pol"]
        urgent = policy.plan_for(TRACE, BE, {"priority": "URGENT"})
        routine = policy.plan_for(TRACE, BE, {"priority": "ROUTINE"})
        assert isinstance(urgent, Plan) and isinstance(routine, Plan)
        assert ("trace-request-urgent", "trace-request-routine") == (
            urgent.rule_id,
            routine.rule_id,
        )

    def test_failed_rule_condition_denies(self, registry: SchemaRegistry, tmp_path: Path) -> None:
        """An event outside every rule's condition is denied with no_rule."""
        policy = _policy(
            tmp_path,
            registry,
            f"""\
            - id: flagged
              event: fxgw.SeizureEvent
              to: {{all: true}}
              when: {{exchange_flagged: true}}
              handling: {HANDLING}
              fields: {{{REQUIRED}, exchange_flagged: keep}}
            """,
        )
        assert isinstance(policy.plan_for(SEIZURE, BE, {"exchange_flagged": True}), Plan)
        for record in ({"exchange_flagged": False}, {"exchange_flagged": None}, {}):
            decision = policy.plan_for(SEIZURE, BE, record)
            assert Denied(AgencyId("BE-FPJ"), SEIZURE, "no_rule") == decision

    def test_first_of_equal_rules_names_the_decision(
        self, registry: SchemaRegistry, tmp_path: Path
    ) -> None:
        """Of several rules releasing the same view, the first in file order decides."""
        body = (
            f"  event: fxgw.SeizureEvent\n  handling: {HANDLING}\n"
            f"  fields: {{{REQUIRED}, crime_code: keep}}\n"
        )
        eu = "- id: eu\n  to: {groups: [EU]}\n" + body
        be = "- id: be\n  to: {agencies: [BE-FPJ]}\n" + body
        eu_first, be_first = eu + be, be + eu
        first = _policy(tmp_path, registry, eu_first).plan_for(SEIZURE, BE, {})
        second = _policy(tmp_path, registry, be_first).plan_for(SEIZURE, BE, {})
        assert isinstance(first, Plan) and isinstance(second, Plan)
        assert ("eu", "be") == (first.rule_id, second.rule_id)

    def test_conflict_hidden_from_the_loader(
        self, registry: SchemaRegistry, tmp_path: Path, trust: TrustList
    ) -> None:
        """Rules for group EU and country BE that disagree: refused against the trust list,
        and denied (fail closed) at run time."""
        policy = _policy(
            tmp_path,
            registry,
            f"""\
            - id: eu
              event: fxgw.SeizureEvent
              to: {{groups: [EU]}}
              handling: {HANDLING}
              fields: {{{REQUIRED}, crime_code: keep}}
            - id: belgium
              event: fxgw.SeizureEvent
              to: {{countries: [BE]}}
              handling: {HANDLING}
              fields: {{{REQUIRED}, case_reference: keep}}
            """,
        )
        with pytest.raises(PolicyError) as info:
            policy.check_against(trust)
        assert "'eu'" in info.value.message and "'belgium'" in info.value.message
        assert "agency BE-FPJ" in info.value.message
        decision = policy.plan_for(SEIZURE, BE, {})
        assert isinstance(decision, Denied)
        assert ("ambiguous_rules", "rules eu, belgium") == (decision.reason, decision.detail)
        assert isinstance(policy.plan_for(SEIZURE, DE, {}), Plan)


PERSON_KEY = (
    "{'persons[].role': keep,"
    " 'persons[].family_name': {pseudonymise: {link_by: [family_name, given_names, birth_date]}}}"
)
EPOCH = timedelta(days=90)
BOUNDARY = datetime.fromtimestamp(
    NOW.timestamp() // EPOCH.total_seconds() * EPOCH.total_seconds(), UTC
)
"""The start of the 90-day epoch NOW falls in (epochs are counted from 1970-01-01 UTC)."""


def _person(
    family: str, given: str | None = "Pieter", born: date | None = date(1988, 4, 17)
) -> dict[str, object]:
    return {"role": "POSSESSOR", "family_name": family, "given_names": given, "birth_date": born}


def _pseudonyms(
    plan: Plan,
    *persons: dict[str, object],
    event_id: str = "NL-POL-SZ-1",
    at: datetime = NOW,
    recipient: str = "US-ATF",
) -> list[object]:
    """The pseudonyms of the persons' family names in one seizure released to ``recipient``."""
    record = {"event_id": event_id, "reported_at": at, "persons": list(persons)}
    released = apply_plan(plan, record, recipient=recipient, pseudonymiser=PSEUDONYMS, now=NOW)
    return values_at(released.record, "persons[].family_name")


class TestPseudonymScope:
    """Pseudonyms link what their policy says, for as long as it says, for one recipient."""

    @pytest.fixture
    def plan(self, registry: SchemaRegistry, tmp_path: Path) -> Plan:
        """Family names pseudonymised, linked by family name, given names and birth date."""
        return _seizure_plan(tmp_path, registry, PERSON_KEY)

    def test_same_person_same_epoch_same_pseudonym(self, plan: Plan) -> None:
        """One person, written differently, in two events of one epoch: one pseudonym."""
        first = _pseudonyms(plan, _person("Jansen"), event_id="E1", at=BOUNDARY)
        later = _pseudonyms(
            plan,
            _person(" JANSEN", "pieter"),
            event_id="E2",
            at=BOUNDARY + EPOCH - timedelta(seconds=1),
        )
        assert first == later
        assert re.fullmatch("[A-Z2-7]{26}", str(first[0]))

    def test_surname_twins_differ(self, plan: Plan) -> None:
        """Two people who share only a surname get different pseudonyms."""
        a, b, c = _pseudonyms(
            plan,
            _person("Jansen"),
            _person("Jansen", "Anouk"),
            _person("Jansen", born=date(1990, 1, 1)),
        )
        assert 3 == len({a, b, c})

    def test_epoch_boundary_changes_it(self, plan: Plan) -> None:
        """The same person on either side of an epoch boundary gets two pseudonyms."""
        before = _pseudonyms(plan, _person("Jansen"), at=BOUNDARY - timedelta(seconds=1))
        after = _pseudonyms(plan, _person("Jansen"), at=BOUNDARY)
        assert before != after

    def test_epoch_length_is_the_policys(self, registry: SchemaRegistry, tmp_path: Path) -> None:
        """With epoch_days: 1 the same person links within a day of event time only."""
        fields = PERSON_KEY.replace("birth_date]", "birth_date], epoch_days: 1")
        plan = _seizure_plan(tmp_path, registry, fields)
        day = datetime(2026, 11, 28, tzinfo=UTC)
        morning, evening = (
            _pseudonyms(plan, _person("Jansen"), at=day + timedelta(hours=h)) for h in (1, 23)
        )
        assert (
            morning == evening != _pseudonyms(plan, _person("Jansen"), at=day + timedelta(days=1))
        )

    def test_other_recipient_differs(self, plan: Plan) -> None:
        """Two recipients get different pseudonyms of one person and cannot join on them."""
        assert _pseudonyms(plan, _person("Jansen")) != _pseudonyms(
            plan, _person("Jansen"), recipient="BE-FPJ"
        )

    @pytest.mark.parametrize("family", ["Jansen", "J", "a", "2"])
    def test_never_contains_the_original(self, plan: Plan, family: str) -> None:
        """The pseudonym holds neither the name nor its normalised form."""
        (pseudonym,) = _pseudonyms(plan, _person(family))
        assert isinstance(pseudonym, str)
        assert family not in pseudonym and family.casefold() not in pseudonym.casefold()

    @pytest.mark.parametrize(
        ("family", "given", "born"),
        [
            ("Jansen", None, date(1988, 4, 17)),
            ("Jansen", "Pieter", None),
            ("Jansen", "  ", date(1988, 4, 17)),
            (" ", "Pieter", date(1988, 4, 17)),
        ],
    )
    def test_missing_linking_field_links_within_the_event_only(
        self, plan: Plan, family: str, given: str | None, born: date | None
    ) -> None:
        """A person without a family name, given names or birth date still gets a pseudonym (so
        the view does not show which fields were known), but it links within that event only:
        the same person twice in one event shares it, another event of the epoch does not."""
        incomplete = _person(family, given, born)
        one, twin = _pseudonyms(plan, incomplete, incomplete, event_id="E1")
        (other,) = _pseudonyms(plan, incomplete, event_id="E2")
        assert one == twin != other
        assert [one] != _pseudonyms(plan, _person("Jansen"), event_id="E1")

    def test_default_links_within_the_event_only(
        self, registry: SchemaRegistry, tmp_path: Path
    ) -> None:
        """``pseudonymise`` without link_by never links across events, not even by surname."""
        fields = "{'persons[].role': keep, 'persons[].family_name': pseudonymise}"
        plan = _seizure_plan(tmp_path, registry, fields)
        assert _pseudonyms(plan, _person("Jansen"), event_id="E1") != _pseudonyms(
            plan, _person("Jansen"), event_id="E2"
        )
        assert "links within one event only" in _walk_reason(plan, "persons[].family_name")

    @pytest.mark.parametrize(
        ("option", "fragment"),
        [
            (
                "{link_by: [family_name, givn_names]}",
                "link_by names 'givn_names', which is not a field of the same record; "
                "did you mean 'given_names'?",
            ),
            ("{link_by: [given_names, birth_date]}", "it must name 'family_name' itself"),
            ("{link_by: [family_name, agency]}", "link_by field 'agency' is a record"),
            ("{link_by: []}", "it must name 'family_name' itself"),
            ("{epoch_days: 0}", "epoch_days must be 1 to 365, not 0"),
            ("{link_by: [family_name], epoch_days: 366}", "epoch_days must be 1 to 365, not 366"),
        ],
    )
    def test_bad_scope_is_refused(
        self, registry: SchemaRegistry, tmp_path: Path, option: str, fragment: str
    ) -> None:
        """A linking key naming fields the record lacks, a record, or not the field itself, and
        an epoch outside 1 to 365 days, are refused naming the field."""
        with pytest.raises(PolicyError) as info:
            _seizure_plan(
                tmp_path,
                registry,
                f"{{'persons[].role': keep, 'persons[].family_name': {{pseudonymise: {option}}}}}",
            )
        message = info.value.message
        assert message.startswith("rule 'seizure-eu': pseudonymise of 'persons[].family_name': ")
        assert fragment in message
        assert info.value.line is not None


def _walk_reason(plan: Plan, path: str) -> str:
    return next(p.reason for p in _walk(plan.fields) if p.path == path)


class TestApplyPlan:
    """apply_plan releases what the plan keeps, nulls and lists the rest."""

    def test_required_fields_must_be_named(self, registry: SchemaRegistry, tmp_path: Path) -> None:
        """Default deny holds for required fields too: a rule naming none is refused, each
        required field named at the rule's line."""
        with pytest.raises(PolicyError) as info:
            _policy(
                tmp_path,
                registry,
                f"- {{id: s, event: fxgw.SeizureEvent, to: {{all: true}}, handling: {HANDLING}}}\n",
            )
        messages = [p.message for p in getattr(info.value, "problems", (info.value,))]
        assert 4 == len(messages)
        for name in ("event_id", "reported_at", "reporting_agency", "firearms"):
            assert any(f"field '{name}' is required" in m for m in messages)
        assert {3} == {p.line for p in getattr(info.value, "problems", ())}

    def test_named_required_fields_leave(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """A rule naming only the required fields releases identifiers, timestamps and the
        required records."""
        plan = _seizure_plan(tmp_path, registry, "{}")
        released, withheld = _release(plan, seizure)
        assert seizure["event_id"] == released["event_id"]
        assert seizure["reported_at"] == released["reported_at"]
        assert {"agency_id": "NL-POL", "country": "NL", "name": None} == released[
            "reporting_agency"
        ]
        firearms = [
            {**_nulls(registry, "firearms"), "item_id": f"RTM-2026-004711-0{n}"} for n in (1, 2)
        ]
        assert firearms == released["firearms"]
        assert "reporting_agency.name" in withheld
        assert "event_id" not in withheld

    def test_unnamed_nullable_fields_are_null_and_listed(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """Every nullable field no action names is null and listed; a record as one path."""
        plan = _seizure_plan(tmp_path, registry, "{crime_code: keep}")
        released, withheld = _release(plan, seizure)
        assert "WWM-26" == released["crime_code"]
        for name in ("case_reference", "recovery_location", "persons", "seizing_officer"):
            assert released[name] is None
            assert name in withheld
        assert "crime_code" not in withheld
        assert "recovery_location.country" not in withheld
        assert "firearms[].serial_number" in withheld

    def test_keeping_a_leaf_in_a_nullable_record(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """Keeping recovery_location.country keeps the record with its other fields null."""
        plan = _seizure_plan(tmp_path, registry, "{recovery_location.country: keep}")
        released, withheld = _release(plan, seizure)
        assert {**_nulls(registry, "recovery_location"), "country": "NL"} == released[
            "recovery_location"
        ]
        assert "recovery_location" not in withheld
        assert "recovery_location.country" not in withheld
        assert {"recovery_location.locality", "recovery_location.latitude"} <= set(withheld)

    def test_keeping_a_leaf_in_a_list_of_records(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """Keeping persons[].family_name keeps every person with role and name, rest null."""
        plan = _seizure_plan(tmp_path, registry, PERSON_NAMES)
        released, withheld = _release(plan, seizure)
        blank = _nulls(registry, "persons")
        assert [
            {**blank, "role": "POSSESSOR", "family_name": "Vermeulen"},
            {**blank, "role": "SUSPECT", "family_name": "Horvat"},
        ] == released["persons"]
        assert "persons" not in withheld and "persons[].family_name" not in withheld
        assert {"persons[].given_names", "persons[].birth_date", "persons[].agency"} <= set(
            withheld
        )

    def test_null_list_stays_null(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """A plan descending into persons releases null when the event has no persons."""
        plan = _seizure_plan(tmp_path, registry, PERSON_NAMES)
        released, _ = _release(plan, {**seizure, "persons": None})
        assert released["persons"] is None

    def test_keep_on_a_record_keeps_the_subtree(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """keep on a record or a list of records releases everything inside it."""
        plan = _seizure_plan(
            tmp_path,
            registry,
            "{recovery_location: keep, firearms: keep, persons: {keep: true, whole_person: true},"
            " seizing_officer: {keep: true, whole_person: true}}",
        )
        released, withheld = _release(plan, seizure)
        for name in ("recovery_location", "firearms", "persons", "seizing_officer"):
            assert seizure[name] == released[name]
            assert not [p for p in withheld if p == name or p.startswith((f"{name}.", f"{name}["))]

    def test_explain_lists_the_fields_of_a_kept_record(
        self, examples: dict[str, Policy], registry: SchemaRegistry, seizure: dict[str, object]
    ) -> None:
        """keep of a record is expanded at load: explain lists each field of it, and the one
        an inner action narrows."""
        explanation = explain(
            examples["nl-pol"], registry, SEIZURE, seizure, BE, pseudonymiser=PSEUDONYMS, now=NOW
        )
        lines = {f.path: (f.outcome, f.reason) for f in explanation.fields}
        inside = {info.path for info in registry.get(SEIZURE).field("firearms").children}
        assert inside <= set(lines)
        assert ("released", "inside a kept record") == lines["firearms[].proof_marks"]
        assert "transformed" == lines["firearms[].condition"][0]

    def test_inner_drop_narrows_a_kept_list(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """firearms kept with firearms[].serial_number dropped: only the serials are null."""
        plan = _seizure_plan(
            tmp_path, registry, "{firearms: keep, 'firearms[].serial_number': drop}"
        )
        released, withheld = _release(plan, seizure)
        original = seizure["firearms"]
        assert isinstance(original, list)
        assert [{**f, "serial_number": None} for f in original] == released["firearms"]
        assert "firearms[].serial_number" in withheld

    def test_drop_withholds_a_nullable_field(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """drop says explicitly what default deny does: null and listed."""
        plan = _seizure_plan(tmp_path, registry, "{crime_code: keep, case_reference: drop}")
        released, withheld = _release(plan, seizure)
        assert released["case_reference"] is None
        assert "case_reference" in withheld

    def test_withheld_list_does_not_reveal_absent_values(
        self, registry: SchemaRegistry, tmp_path: Path, seizure: dict[str, object]
    ) -> None:
        """The withheld list is the same whether or not the event held the withheld values."""
        plan = _seizure_plan(tmp_path, registry, PERSON_NAMES)
        sparse = {
            **seizure,
            "case_reference": None,
            "recovery_location": None,
            "persons": None,
            "seizing_officer": None,
            "firearms": [],
        }
        assert _release(plan, seizure)[1] == _release(plan, sparse)[1]

    def test_field_condition(self, examples: dict[str, Policy], seizure: dict[str, object]) -> None:
        """NL-POL gives EU partners names only when the seizure is flagged for exchange."""
        plan = examples["nl-pol"].plan_for(SEIZURE, BE, seizure)
        assert isinstance(plan, Plan)
        flagged, flagged_withheld = _release(plan, seizure)
        plain, plain_withheld = _release(plan, {**seizure, "exchange_flagged": False})
        assert ["Vermeulen", "Horvat"] == values_at(flagged, "persons[].family_name")
        assert [] == values_at(plain, "persons[].family_name")
        assert "persons[].family_name" not in flagged_withheld
        assert "persons[].family_name" in plain_withheld

    def test_failed_condition_is_listed_without_items(
        self, examples: dict[str, Policy], seizure: dict[str, object]
    ) -> None:
        """A field whose condition fails is listed as withheld whether or not the event has
        persons, as apply_plan promises (the list must not depend on the values held)."""
        plan = examples["nl-pol"].plan_for(SEIZURE, BE, seizure)
        assert isinstance(plan, Plan)
        unflagged = {**seizure, "exchange_flagged": False}
        with_persons = _release(plan, unflagged)[1]
        without_persons = _release(plan, {**unflagged, "persons": []})[1]
        assert "persons[].family_name" in with_persons
        assert with_persons == without_persons

    @pytest.mark.timeout(3)
    @pytest.mark.parametrize("name", ["-", "N"])
    def test_short_name_is_pseudonymised(
        self, examples: dict[str, Policy], seizure: dict[str, object], name: str
    ) -> None:
        """A one-character family name (a placeholder or an initial) gets a pseudonym for a
        partner, promptly, and the pseudonym is not the name."""
        plan = examples["nl-pol"].plan_for(SEIZURE, US, seizure)
        assert isinstance(plan, Plan) and "seizure-partners" == plan.rule_id
        persons = copy.deepcopy(seizure["persons"])
        assert isinstance(persons, list)
        persons[0]["family_name"] = name
        released, _ = _release(plan, {**seizure, "persons": persons}, "US-ATF")
        pseudonym = values_at(released, "persons[].family_name")[0]
        assert isinstance(pseudonym, str) and re.fullmatch("[A-Z2-7]{26}", pseudonym)
        assert name != pseudonym

    def test_transformed_fields_are_listed(
        self, examples: dict[str, Policy], seizure: dict[str, object]
    ) -> None:
        """NL-POL's EU view rounds the coordinates, truncates and redacts, and says so."""
        plan = examples["nl-pol"].plan_for(SEIZURE, BE, seizure)
        assert isinstance(plan, Plan)
        released = apply_plan(plan, seizure, recipient="BE-FPJ", pseudonymiser=PSEUDONYMS, now=NOW)
        location = released.record["recovery_location"]
        assert isinstance(location, dict)
        assert (51.91, 4.44) == (location["latitude"], location["longitude"])
        assert ["[REDACTED]"] == values_at(released.record, "persons[].identity_document_number")
        assert {
            "recovery_location.latitude",
            "recovery_location.longitude",
            "circumstances",
            "persons[].identity_document_number",
        } <= set(released.transformed)
        assert not set(released.transformed) & set(released.withheld)

    def test_apply_does_not_change_the_event(
        self, examples: dict[str, Policy], seizure: dict[str, object]
    ) -> None:
        """Releasing leaves the source record as it was."""
        before = copy.deepcopy(seizure)
        for agency in (BE, US):
            plan = examples["nl-pol"].plan_for(SEIZURE, agency, seizure)
            assert isinstance(plan, Plan)
            _release(plan, seizure, agency.agency_id)
        assert before == seizure


# --- properties over generated records ------------------------------------------------------------


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith((parent + ".", parent + "["))


def _flat(values: list[object]) -> list[object]:
    out: list[object] = []
    for value in values:
        if isinstance(value, list):
            out.extend(item for item in value if item is not None)
        else:
            out.append(value)
    return out


def _walk(plans: tuple[FieldPlan, ...]) -> Iterator[FieldPlan]:
    for plan in plans:
        yield plan
        yield from _walk(plan.children)


_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestApplyPlanProperties:
    """For every rule of the example policies and any valid record."""

    @pytest.mark.timeout(60)  # a hang in a transform must fail, not stall the suite
    @_SETTINGS
    @given(data=st.data())
    @pytest.mark.parametrize("name", EXAMPLES)
    def test_released_view(
        self,
        examples: dict[str, Policy],
        registry: SchemaRegistry,
        name: str,
        data: st.DataObject,
    ) -> None:
        """The view encodes; withheld paths are null in every item; every other leaf holds only
        values the event held at that same path (unchanged unless transformed)."""
        rule = data.draw(st.sampled_from(examples[name].rules), label="rule")
        plan = rule.plan
        schema = registry.get(plan.event_type)
        record = data.draw(records_for(schema), label="record")
        recipient = data.draw(st.sampled_from(("BE-FPJ", "US-ATF")), label="recipient")
        released = apply_plan(plan, record, recipient=recipient, pseudonymiser=PSEUDONYMS, now=NOW)
        body = registry.encode(plan.event_type, released.record)
        assert released.record == registry.decode(plan.event_type, body)
        for path in released.withheld:
            assert [] == values_at(released.record, path), path
        changed = (
            *released.transformed,
            *(p.path for p in _walk(plan.fields) if p.kind == "derived"),
        )
        for info in schema.iter_fields():
            if info.children or any(_under(info.path, c) for c in changed):
                continue
            out = _flat(values_at(released.record, info.path))
            if any(_under(info.path, w) for w in released.withheld):
                assert [] == out, info.path
            else:
                assert _flat(values_at(record, info.path)) == out, info.path

    @pytest.mark.timeout(60)  # a hang in a transform must fail, not stall the suite
    @_SETTINGS
    @given(data=st.data())
    @pytest.mark.parametrize("name", EXAMPLES)
    def test_withheld_list_is_the_plans(
        self,
        examples: dict[str, Policy],
        registry: SchemaRegistry,
        name: str,
        data: st.DataObject,
    ) -> None:
        """Apart from fields whose own condition failed, the withheld and transformed lists are
        the same for every record of one plan; a conditional path is withheld only when its
        condition fails."""
        rule = data.draw(st.sampled_from(examples[name].rules), label="rule")
        plan = rule.plan
        records = records_for(registry.get(plan.event_type))
        first = data.draw(records, label="first")
        second = data.draw(records, label="second")
        conditional = {p.path: p.when for p in _walk(plan.fields) if p.when is not None}
        one = apply_plan(plan, first, recipient="BE-FPJ", pseudonymiser=PSEUDONYMS, now=NOW)
        two = apply_plan(plan, second, recipient="BE-FPJ", pseudonymiser=PSEUDONYMS, now=NOW)
        for listing in ("withheld", "transformed"):
            fixed = [[p for p in getattr(r, listing) if p not in conditional] for r in (one, two)]
            assert fixed[0] == fixed[1], listing
        for record, released in ((first, one), (second, two)):
            for path in released.withheld:
                when = conditional.get(path)
                assert when is None or not when.holds(record), path


DANGEROUS = sorted(repo_file("tests", "data", "policies", "dangerous").glob("*.yaml"))


class TestDangerousPolicies:
    """Each file of tests/data/policies/dangerous loads, and is warned about at its rules."""

    @pytest.mark.parametrize("path", DANGEROUS, ids=[p.stem for p in DANGEROUS])
    def test_dangerous_policy_is_warned_about(
        self, registry: SchemaRegistry, trust: TrustList, path: Path
    ) -> None:
        """review() warns at every marked line (and no other) with every ``# warn:`` fragment."""
        fragments, lines = _expectations(path, "warn", "warning")
        warnings = review(load_policy(path, registry, trust, AgencyId("NL-POL")), registry)
        assert lines == sorted({w.line for w in warnings if w.line is not None})
        text = "\n".join(map(str, warnings))
        for fragment in fragments:
            assert fragment in text

    @pytest.mark.parametrize("name", EXAMPLES)
    def test_examples_give_no_warning(
        self, examples: dict[str, Policy], registry: SchemaRegistry, name: str
    ) -> None:
        """The shipped policies pass ``fxgw policy check --strict``: nothing to warn about."""
        assert [] == review(examples[name], registry)

    def test_redacted_and_dropped_persons_are_not_personal_data(
        self, registry: SchemaRegistry, tmp_path: Path
    ) -> None:
        """A rule to all that redacts a name and keeps only roles releases no personal data."""
        plan = _policy(
            tmp_path,
            registry,
            f"""\
            - id: s
              event: fxgw.SeizureEvent
              to: {{all: true}}
              handling: {HANDLING}
              fields: {{{REQUIRED}, 'persons[].role': keep, 'persons[].family_name': redact}}
            """,
        )
        assert [] == review(plan, registry)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """A validator for the shipped policy schema (itself checked against the metaschema)."""
    schema = json.loads(repo_file("policies", "policy.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


class TestJsonSchema:
    """policies/policy.schema.json, for editors, is the models' schema and fits the policies."""

    def test_shipped_schema_is_up_to_date(self) -> None:
        """The shipped file is what `fxgw policy schema` prints now (regenerate it if not)."""
        assert policy_schema_json() == repo_file("policies", "policy.schema.json").read_text(
            "utf-8"
        )

    @pytest.mark.parametrize("name", EXAMPLES)
    def test_shipped_policies_validate(
        self, validator: jsonschema.Draft202012Validator, name: str
    ) -> None:
        """Each shipped policy is valid against the schema."""
        data = yaml.safe_load(repo_file("policies", f"{name}.yaml").read_text("utf-8"))
        assert [] == [e.message for e in validator.iter_errors(data)]

    @pytest.mark.parametrize("name", ["misspelt_key", "booleans_as_numbers", "norway_unquoted"])
    def test_structural_mistakes_are_flagged(
        self, validator: jsonschema.Draft202012Validator, name: str
    ) -> None:
        """An editor using the schema flags a misspelt key, a boolean as a number and an
        unquoted NO."""
        path = repo_file("tests", "data", "policies", "broken", f"{name}.yaml")
        assert list(validator.iter_errors(yaml.safe_load(path.read_text("utf-8"))))


V1_1 = {"1.0": {}, "1.1": V1_1_EDITS}


class TestContractVersions:
    """keep of a record releases the fields of the contract version the policy was written for."""

    @pytest.mark.parametrize(
        ("header", "extra", "released"),
        [
            ("", "", False),  # written for the oldest version the node holds: 1.0
            ("", ", 'firearms[].barrel_serial_number': keep", True),  # named: it leaves
            (", contract: '1.1'", "", True),  # written for 1.1, whose firearms have it
        ],
    )
    def test_a_field_a_later_version_adds_is_withheld_until_named(
        self, tmp_path: Path, header: str, extra: str, released: bool
    ) -> None:
        """A node on 1.1 keeping firearms whole under a policy written for 1.0 withholds the
        firearm field 1.1 added, until a rule names it or the policy says it is for 1.1."""
        versions = {v.label: v.registry for v in Contract.load(contract(tmp_path, V1_1))}
        path = tmp_path / "policy.yaml"
        path.write_text(
            f"policy: {{id: p, version: 1, agency: NL-POL{header}}}\nrules:\n"
            f"  - {{id: s, event: fxgw.SeizureEvent, to: {{groups: [EU]}}, handling: {HANDLING},"
            f" fields: {{{REQUIRED}, firearms: keep{extra}}}}}\n",
            encoding="utf-8",
        )
        policy = load_policy(path, versions["1.1"], versions=versions)
        plan = policy.plan_for(SEIZURE, BE, {})
        assert isinstance(plan, Plan)
        record = {"firearms": [{"item_id": "1", "barrel_serial_number": "BRL-1"}]}
        view = apply_plan(plan, record, recipient="BE-FPJ", now=NOW)
        new = "firearms[].barrel_serial_number"
        assert (released, not released) == (new in view.kept, new in view.withheld)
        firearms = view.record["firearms"]
        assert isinstance(firearms, list)
        assert ("BRL-1" if released else None) == firearms[0]["barrel_serial_number"]

    def test_an_unknown_contract_version_is_refused(self, tmp_path: Path) -> None:
        """policy.contract must name a version the node holds."""
        versions = {v.label: v.registry for v in Contract.load(contract(tmp_path, V1_1))}
        path = tmp_path / "policy.yaml"
        path.write_text("policy: {id: p, version: 1, agency: NL-POL, contract: '2.0'}\nrules: []\n")
        with pytest.raises(PolicyError, match=r"names version 2\.0, which the node's contract"):
            load_policy(path, versions["1.1"], versions=versions)


class TestSince:
    """A rule's ``since`` lets a node on an older contract version load names of a later one."""

    RULE = (
        "  - {{id: u, event: fxgw.TraceUpdate, to: {{all: true}}, handling: {handling},"
        " {since}fields: {{event_id: keep, sent_at: keep, sending_agency: keep, to_agency: keep,"
        " request_event_id: keep, request_reference: keep, status: keep}}}}\n"
        "  - {{id: r, event: fxgw.TraceResponse, to: {{all: true}}, handling: {handling},"
        " {since}fields: {{event_id: keep, responded_at: keep, responding_agency: keep,"
        " request_event_id: keep, request_reference: keep, requesting_agency: keep,"
        " outcome: keep, transfer_history: keep, 'transfer_history[].stage': keep}}}}\n"
    )

    def _write(self, tmp_path: Path, since: str) -> Path:
        path = tmp_path / "policy.yaml"
        rules = self.RULE.format(handling=HANDLING, since=since)
        path.write_text(f"policy: {{id: p, version: 1, agency: NL-POL}}\nrules:\n{rules}")
        return path

    def test_left_out_on_an_older_node(self, tmp_path: Path, registry: SchemaRegistry) -> None:
        """On 1.0 the TraceUpdate rule is left out, and the stage path of the other one."""
        policy = load_policy(self._write(tmp_path, "since: '1.2', "), registry)
        assert ["r"] == [rule.rule_id for rule in policy.rules]
        record = {"transfer_history": [{"date": None, "country": "BE"}]}
        plan = policy.plan_for("fxgw.TraceResponse", BE, record)
        assert isinstance(plan, Plan)
        view = apply_plan(plan, record, recipient="BE-FPJ", now=NOW)
        assert "transfer_history[].country" in view.kept
        assert "BE" == view.record["transfer_history"][0]["country"]  # type: ignore[index]

    def test_in_force_on_a_node_that_has_them(
        self, tmp_path: Path, registry2: SchemaRegistry
    ) -> None:
        """On the newest version both rules are in force, the stage released."""
        policy = load_policy(self._write(tmp_path, "since: '1.2', "), registry2)
        assert ["u", "r"] == [rule.rule_id for rule in policy.rules]
        record = {"transfer_history": [{"stage": "DEALER", "country": "BE"}]}
        plan = policy.plan_for("fxgw.TraceResponse", BE, record)
        assert isinstance(plan, Plan)
        view = apply_plan(plan, record, recipient="BE-FPJ", now=NOW)
        released = view.record["transfer_history"]
        assert isinstance(released, list)
        assert "DEALER" == released[0]["stage"]

    def test_without_since_an_unknown_name_is_refused(
        self, tmp_path: Path, registry: SchemaRegistry
    ) -> None:
        """Without since, a name the node's schemas lack is still an error."""
        with pytest.raises(PolicyError, match=r"unknown event type 'fxgw\.TraceUpdate'"):
            load_policy(self._write(tmp_path, ""), registry)
