"""Properties of the policy engine over generated events and generated policies.

- Nothing withheld leaks: every released leaf value comes from its own path (kept as is, or
  transformed there), and every withheld path is null in the release.
- A pseudonym never equals or contains the original value.
- A generalised value is never more precise than the rule allows.
- The shape of a release reveals nothing withheld: for the shipped policies and their
  recipients, changing every value a recipient cannot see leaves the rule, the handling, the
  withheld, transformed and kept lists, and which fields are null or set, as they were.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._yamlfile import YamlDocument, load_model, read_yaml
from gateway.contract.schemas import FieldInfo, SchemaRegistry
from gateway.crypto.trust import Agency
from gateway.errors import PolicyError
from gateway.policy.engine import (
    Denied,
    FieldPlan,
    Plan,
    Policy,
    apply_plan,
    load_policy,
    parse_policy,
)
from gateway.policy.tools import PolicyTestFile, case_recipients
from gateway.policy.transforms import (
    AgeBand,
    Context,
    Pseudonymise,
    Pseudonymiser,
    RoundNumber,
    TruncateTime,
    link_scope,
)
from gateway.types import AgencyId, CountryCode
from tests.strategies import records_for
from tests.unit.conftest import repo_file

PSEUDONYMISER = Pseudonymiser(b"property-test-secret")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RECIPIENT = Agency(
    AgencyId("BE-FPJ"), CountryCode("BE"), None, frozenset({"EU"}), frozenset(), frozenset(), ()
)


def _options(info: FieldInfo) -> list[object]:
    """Actions that suit a leaf field of this kind (always including keep and drop)."""
    options: list[object] = ["keep"]
    if info.nullable:
        options.append("drop")
    kind = info.kind
    if kind == "string" or (kind == "array" and info.item_kind == "string"):
        options += ["redact", "pseudonymise", {"truncate": 3}]
    if kind in ("float", "double"):
        options += [{"generalise": {"precision": 1}}, {"generalise": {"grid": 0.25}}]
    if kind in ("int", "long"):
        options.append({"generalise": {"step": 10}})
    if kind == "date":
        options += [{"generalise": "month"}, {"generalise": "year"}]
    if kind == "timestamp-millis":
        options += [{"generalise": "hour"}, {"generalise": "day"}, {"generalise": "month"}]
    return options


@st.composite
def policies(draw: st.DrawFn, registry: SchemaRegistry, event_type: str) -> Policy:
    """A valid one-rule policy naming a random subset of the event's fields."""
    schema = registry.get(event_type)
    fields: dict[str, object] = {}
    for info in schema.iter_fields():
        if info.children or info.name == "age_band":
            continue
        if not info.nullable or draw(st.booleans()):  # default deny: required ones are named
            fields[info.path] = draw(st.sampled_from(_options(info)))
    data = {
        "policy": {"id": "generated", "version": 1, "agency": "NL-POL"},
        "rules": [
            {
                "id": "r",
                "event": event_type,
                "to": {"all": True},
                "handling": {"code": "H1", "purpose": "test", "source": "A", "information": 1},
                "fields": fields,
            }
        ],
    }
    return parse_policy(YamlDocument(Path("generated.yaml"), data, {}, b""), registry)


def _leaves(value: object, path: str) -> Iterator[tuple[str, object]]:
    """(schema path, value) of every non-null leaf; list items share their list's path."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _leaves(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, path + "[]" if isinstance(item, Mapping) else path)
    elif value is not None:
        yield path, value


def _plans(plans: tuple[FieldPlan, ...]) -> Iterator[FieldPlan]:
    for plan in plans:
        yield plan
        yield from _plans(plan.children)


def _originals(record: Mapping[str, object]) -> dict[str, list[object]]:
    found: dict[str, list[object]] = {}
    for path, value in _leaves(record, ""):
        found.setdefault(path, []).append(value)
    return found


EVENTS = ["fxgw.SeizureEvent", "fxgw.TraceRequest", "fxgw.TraceResponse"]


@st.composite
def cases(draw: st.DrawFn, registry: SchemaRegistry) -> tuple[Plan, dict[str, object]]:
    """A generated policy's plan and a generated event of the same type."""
    event_type = draw(st.sampled_from(EVENTS))
    policy = draw(policies(registry, event_type))
    record = draw(records_for(registry.get(event_type)))
    plan = policy.plan_for(event_type, RECIPIENT, record)
    assert isinstance(plan, Plan)
    return plan, record


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestNoLeak:
    """What a plan withholds never reaches the released record."""

    @SETTINGS
    @given(data=st.data())
    def test_released_values_come_only_from_their_own_path(
        self, registry: SchemaRegistry, data: st.DataObject
    ) -> None:
        """Every released leaf is the original at that path, or transformed there."""
        plan, record = data.draw(cases(registry))
        released = apply_plan(plan, record, recipient="BE-FPJ", pseudonymiser=PSEUDONYMISER)
        originals = _originals(record)
        for path, value in _leaves(released.record, ""):
            if path in released.transformed or path.endswith("age_band"):
                continue
            assert value in originals.get(path, []), f"{path} holds a value not its own"
        registry.encode(plan.event_type, released.record)  # still a valid record

    @SETTINGS
    @given(data=st.data())
    def test_withheld_paths_are_null(self, registry: SchemaRegistry, data: st.DataObject) -> None:
        """Every path in the withheld list is null (or absent) in the release."""
        plan, record = data.draw(cases(registry))
        released = apply_plan(plan, record, recipient="BE-FPJ", pseudonymiser=PSEUDONYMISER)
        present = {path for path, _ in _leaves(released.record, "")}
        for path in released.withheld:
            assert not any(
                p == path or p.startswith(path + ".") or p.startswith(path + "[]") for p in present
            ), f"withheld {path} is present"

    @SETTINGS
    @given(data=st.data())
    def test_withheld_list_is_the_same_for_every_record(
        self, registry: SchemaRegistry, data: st.DataObject
    ) -> None:
        """Without conditions, the withheld list depends on the plan, not on the record."""
        plan, first = data.draw(cases(registry))
        second = data.draw(records_for(registry.get(plan.event_type)))
        a = apply_plan(plan, first, recipient="BE-FPJ", pseudonymiser=PSEUDONYMISER)
        b = apply_plan(plan, second, recipient="BE-FPJ", pseudonymiser=PSEUDONYMISER)
        assert a.withheld == b.withheld


def _transform_of(plan: Plan, path: str) -> object:
    for p in _plans(plan.fields):
        if p.path == path:
            return p.transform
    return None


def _pairs(original: object, released: object) -> Iterator[tuple[object, object]]:
    if isinstance(original, list) and isinstance(released, list):
        for a, b in zip(original, released, strict=False):
            yield from _pairs(a, b)
    else:
        yield original, released


def _walk_pairs(
    plans: tuple[FieldPlan, ...], original: object, released: object
) -> Iterator[tuple[FieldPlan, object, object]]:
    if isinstance(original, list) and isinstance(released, list):
        for a, b in zip(original, released, strict=True):
            yield from _walk_pairs(plans, a, b)
        return
    if not isinstance(original, Mapping) or not isinstance(released, Mapping):
        return
    for plan in plans:
        a, b = original.get(plan.name), released.get(plan.name)
        if plan.kind == "transform":
            for x, y in _pairs(a, b):
                yield plan, x, y
        elif plan.kind == "descend":
            yield from _walk_pairs(plan.children, a, b)


class TestTransforms:
    """Pseudonyms hide; generalisations are never finer than the rule."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_transformed_values_obey_their_rule(
        self, registry: SchemaRegistry, data: st.DataObject
    ) -> None:
        """Each transformed value relates to its original as the transform promises."""
        plan, record = data.draw(cases(registry))
        released = apply_plan(plan, record, recipient="BE-FPJ", pseudonymiser=PSEUDONYMISER)
        for field_plan, original, value in _walk_pairs(plan.fields, record, released.record):
            t = field_plan.transform
            if original is None:
                assert value is None
            elif isinstance(t, Pseudonymise):
                assert isinstance(original, str) and isinstance(value, str)
                assert original != value
                if original:
                    assert original not in value
            elif isinstance(t, RoundNumber):
                assert isinstance(value, int | float) and isinstance(original, int | float)
                assert value <= original
                if t.step is not None:
                    assert 0 == value % t.step and original - value < t.step
                elif t.grid is not None:
                    cells = value / t.grid
                    assert math.isclose(cells, round(cells), abs_tol=1e-6)
                    assert original - value < t.grid + 1e-9
                else:
                    assert t.precision is not None
                    scaled = value * 10**t.precision
                    assert math.isclose(scaled, round(scaled), abs_tol=1e-6)
                    assert original - value < 10**-t.precision + 1e-9
            elif isinstance(t, TruncateTime):
                assert isinstance(value, date) and isinstance(original, date)
                assert value <= original
                if t.unit in ("month", "year"):
                    assert 1 == value.day
                if t.unit == "year":
                    assert 1 == value.month
                if isinstance(value, datetime) and t.unit in ("hour", "day", "month", "year"):
                    assert (0, 0, 0) == (value.minute, value.second, value.microsecond)
                    if t.unit != "hour":
                        assert 0 == value.hour

    @given(
        value=st.text(min_size=1, max_size=40),
        recipient=st.sampled_from(["BE-FPJ", "US-ATF", "DE-BKA"]),
        scope=st.lists(st.text(max_size=12), max_size=4).map(tuple),
    )
    def test_pseudonym_never_contains_the_original(
        self, value: str, recipient: str, scope: tuple[str, ...]
    ) -> None:
        """For any string, recipient and scope, the pseudonym differs from and does not
        contain it, and is the same each time."""
        pseudonym = PSEUDONYMISER.pseudonym(value, recipient, scope)
        assert value != pseudonym
        assert value not in pseudonym
        assert pseudonym == PSEUDONYMISER.pseudonym(value, recipient, scope)

    @given(
        people=st.lists(
            st.tuples(
                st.sampled_from(["Jansen", "JANSEN ", "Peeters"]),
                st.sampled_from(["Pieter", "pieter", "Anouk", None]),
                st.sampled_from([date(1988, 4, 17), date(1990, 1, 1)]),
                st.sampled_from(["E1", "E2"]),
            ),
            min_size=2,
            max_size=2,
        ),
        days=st.integers(0, 200),
    )
    def test_pseudonyms_are_equal_exactly_when_the_scope_says(
        self, people: list[tuple[str, str | None, date, str]], days: int
    ) -> None:
        """Two mentions (family name, given names, birth date, event) get one pseudonym exactly
        when their whole key matches after normalisation in one epoch, or, both lacking a
        linking field, when they name the same family name in one event."""
        t = Pseudonymise(("given_names", "birth_date"), 90)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        at = [start, start + timedelta(days)]
        released = []
        for (family, given_names, born, event), when in zip(people, at, strict=True):
            record = {"given_names": given_names, "birth_date": born}
            scope = link_scope(t, family, record, Context("US-ATF", None, when, event))
            released.append(PSEUDONYMISER.pseudonym(family, "US-ATF", scope))
        names = [family.strip().casefold() for family, *_ in people]
        givens = [g and g.casefold() for _, g, *_ in people]
        if None not in givens:
            epochs = {when.timestamp() // (90 * 86_400) for when in at}
            key = {
                (n, g, born) for n, g, (_, _, born, _) in zip(names, givens, people, strict=True)
            }
            linked = 1 == len(key) == len(epochs)
        else:
            linked = (
                givens == [None, None] and names[0] == names[1] and people[0][3] == people[1][3]
            )
        assert linked == (released[0] == released[1])

    def test_age_band_is_computed_at_the_event_date(self) -> None:
        """A birth date becomes the band of the age at the event's time."""
        from gateway.policy.transforms import age_band

        assert "30-39" == age_band(date(1994, 3, 8), date(2026, 11, 20), 10)
        assert "20-29" == age_band(date(1994, 11, 21), date(2024, 11, 20), 10)
        assert age_band(date(2030, 1, 1), date(2026, 1, 1), 10) is None
        assert isinstance(AgeBand(10, "age_band").describe(), str)


def _test_file(path: Path) -> PolicyTestFile:
    document = read_yaml(path, "policy test file", PolicyError)
    return load_model(document, PolicyTestFile, "policy test file", PolicyError)


SHIPPED = {path: _test_file(path) for path in sorted(repo_file("policies").glob("*.test.yaml"))}
"""The shipped policies' test files: each names its policy and recipients."""
PAIRS = [(path, name) for path, model in SHIPPED.items() for name in model.recipients]


@pytest.fixture(scope="module")
def shipped(registry: SchemaRegistry) -> dict[Path, Policy]:
    """The shipped policies, by test file."""
    return {path: load_policy(path.parent / m.policy, registry) for path, m in SHIPPED.items()}


def _hide(
    plans: tuple[FieldPlan, ...],
    seen: Mapping[str, object],
    other: Mapping[str, object],
    root: Mapping[str, object],
) -> dict[str, object]:
    """``seen`` with every value ``plans`` does not show its recipient taken from ``other``
    (null where ``other`` has no record there): withheld fields, fields whose condition fails,
    and fields a transform overwrites (an age band)."""
    out = dict(seen)
    for plan in plans:
        mine, theirs = seen.get(plan.name), other.get(plan.name)
        if plan.kind in ("withhold", "derived") or (
            plan.when is not None and not plan.when.holds(root)
        ):
            out[plan.name] = theirs
        elif plan.kind == "descend" and isinstance(mine, Mapping):
            out[plan.name] = _hide(plan.children, mine, _record_or_empty(theirs), root)
        elif plan.kind == "descend" and isinstance(mine, list):
            donors = theirs if isinstance(theirs, list) and theirs else [{}]
            out[plan.name] = [
                _hide(plan.children, item, _record_or_empty(donors[i % len(donors)]), root)
                if isinstance(item, Mapping)
                else item
                for i, item in enumerate(mine)
            ]
    return out


def _record_or_empty(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _shape(value: object) -> object:
    """Which fields are null or set, and the type of each value set."""
    if isinstance(value, Mapping):
        return {key: _shape(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def _outcome(
    policy: Policy, agency: Agency, event_type: str, record: Mapping[str, object]
) -> object:
    """Everything the recipient sees of a release except the values themselves."""
    decision = policy.plan_for(event_type, agency, record)
    if isinstance(decision, Denied):
        return decision
    released = apply_plan(
        decision, record, recipient=agency.agency_id, pseudonymiser=PSEUDONYMISER, now=NOW
    )
    return (
        decision.rule_id,
        decision.handling,
        released.withheld,
        released.transformed,
        released.kept,
        _shape(released.record),
    )


class TestShapeRevealsNothingWithheld:
    """What a recipient cannot see never changes what the release looks like."""

    @pytest.mark.parametrize("event_type", EVENTS)
    @pytest.mark.parametrize(
        ("test_file", "recipient"), PAIRS, ids=[f"{p.stem}-{r}" for p, r in PAIRS]
    )
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def test_hidden_values_do_not_change_the_shape(
        self,
        registry: SchemaRegistry,
        shipped: dict[Path, Policy],
        test_file: Path,
        recipient: str,
        event_type: str,
        data: st.DataObject,
    ) -> None:
        """For every shipped policy, recipient and event type, an event and the same event with
        every hidden value changed (or nulled) give the same rule, handling, lists and shape;
        an event the policy does not release to the recipient is left out."""
        policy, agency = shipped[test_file], case_recipients(SHIPPED[test_file])[recipient]
        schema = registry.get(event_type)
        record = data.draw(records_for(schema), label="event")
        decision = policy.plan_for(event_type, agency, record)
        if isinstance(decision, Denied):
            return
        other = data.draw(records_for(schema), label="hidden values")
        changed = _hide(decision.fields, record, other, record)
        assert _outcome(policy, agency, event_type, record) == _outcome(
            policy, agency, event_type, changed
        )
