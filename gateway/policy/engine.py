"""The release policy: what leaves the country, to whom, in what form, under which handling.

A policy file (YAML, one per sending agency, under ``policies/``) is a versioned list of rules. A
rule names an event type, the recipients it covers (``to``), optional conditions on the event
(``when``), the handling attached to what it releases, and a field plan.

Recipients: listed ``agencies``, members of ``groups`` or ``countries`` of the trust list, or
``all``; minus ``except`` (agencies, groups, countries); and, with ``legal_basis``, only those the
trust list credits with one of the named legal bases (an MLAT in force, EU membership, ...).
Names are ASCII and exact (a look-alike letter is refused, shown by its code point); with the
trust list at hand (node start, ``fxgw policy check -c``) every name must be on it, in ``to`` and
in ``except``: a misspelt ``except`` would otherwise exclude nobody.

Field plan actions, by dotted path (``[]`` walks a list: ``persons[].family_name``):
``keep`` (on a record or list: every field the record has in the contract version the policy is
written for, ``policy.contract``, by default the oldest the node holds; inner paths may still
narrow it), ``drop``, ``redact``, ``pseudonymise`` (with its linking scope: ``link_by``, the
fields of the value's record that form the key, and ``epoch_days``), ``generalise``,
``truncate`` (see :mod:`gateway.policy.transforms`), each optionally with its own ``when``.
Keeping a person record (``fxgw.Person``) whole needs ``{keep: true, whole_person: true}``.

Default deny everywhere:

- an event type, recipient or event no rule covers is not released (a :class:`Denied` decision,
  not an error);
- a field no action names is withheld: null in the body and listed in the envelope header;
- a field the schema requires (identifiers, timestamps, a person's role) cannot be withheld, so a
  rule must name it (keep it, or transform it into a valid value), or the policy does not load;
- a field a later contract version adds to a kept record is withheld until a rule names it.

Rules must not disagree: if two rules with different plans or handling could cover the same
recipient and event, loading fails and names both (with the trust list at hand, per agency;
without, wherever their selectors name the same agency, group or country, or one says ``all``).

The shape of a release reveals nothing withheld: the withheld and transformed lists, the rule
and handling that travel with a view, which fields are null or set, and the form of each value
depend only on values the recipient sees (a pseudonym's value also depends on its linking key,
which may hold hidden fields, but only through which pseudonyms are equal: its form and whether
it is null do not). Loading enforces the one rule that guarantees it:
every condition a rule uses (its own ``when`` and those of its field actions) may test only
fields the same rule releases in clear, i.e. kept unchanged and unconditionally (named with
``keep``, inside a kept record, or required by the schema). Otherwise the policy does not load,
and the error names the rule, the condition, the hidden field and the fix (keep the field, or
drop the condition).

The file's models are strict (a YAML boolean is no number) and text must say something. Loading
reports every problem of a file at once (:class:`~gateway.errors.PolicyProblems`), each with
its line; :mod:`gateway.policy.review` warns about valid but dangerous rules.

Pure: loading reads one file; compiling, matching and applying plans is computation.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gateway._yamlfile import Loc, YamlDocument, read_yaml, validate_all
from gateway.contract.schemas import FieldInfo, Schema, SchemaRegistry
from gateway.core.routing import values_at
from gateway.crypto.envelope import Handling
from gateway.crypto.limits import MAX_NAME, MAX_TEXT
from gateway.crypto.trust import Agency, TrustList
from gateway.errors import PolicyError, raise_problems
from gateway.policy.transforms import (
    DEFAULT_EPOCH_DAYS,
    MAX_EPOCH_DAYS,
    AgeBand,
    Context,
    Pseudonymise,
    Pseudonymiser,
    Redact,
    RoundNumber,
    Transform,
    Truncate,
    TruncateTime,
    apply_transform,
)
from gateway.types import AgencyId, EventType

# --- the file ------------------------------------------------------------------------------------

Scalar = str | int | float | bool | None
PERSONAL_MARK = "personal data"
"""A record type whose doc says this (``fxgw.Person``) holds personal data: keeping it whole needs
an acknowledgement in the rule (``whole_person: true``)."""


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank; write the text out")
    return text


def _code_points(name: str) -> str:
    odd = dict.fromkeys(c for c in name if not (c.isascii() and c.isprintable()))
    return ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'UNNAMED CHARACTER')}" for c in odd)


def _ascii_name(name: str) -> str:
    if not name.strip():
        raise ValueError("must not be blank")
    if odd := _code_points(name):
        raise ValueError(
            f"'{name}' holds characters outside ASCII that may only look like letters ({odd});"
            " type the name as the trust list writes it"
        )
    return name


def _country_code(code: str) -> str:
    _ascii_name(code)
    if len(code) != 2 or not code.isalpha() or not code.isupper():
        hint = f": '{code.upper()}'" if code.upper() != code and code.isalpha() else ""
        raise ValueError(f"a country is two upper-case letters (ISO 3166-1 alpha-2){hint}")
    return code


Text = Annotated[str, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": r"\S"})]
"""Text that must say something: not empty, not only blanks."""
Name = Annotated[
    str, AfterValidator(_ascii_name), Field(json_schema_extra={"pattern": r"^[!-~]+$"})
]
"""An agency, group or legal basis as the trust list writes it (ASCII, exact case)."""
Country = Annotated[
    str, AfterValidator(_country_code), Field(json_schema_extra={"pattern": r"^[A-Z]{2}$"})
]


class _Strict(BaseModel):
    # strict: a YAML boolean is no number (truncate: true), a number no text, and so on
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PolicyHeaderModel(_Strict):
    """The ``policy:`` block: whose file it is and which version."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: int = Field(ge=1, le=999_999_999)  # "<id>@<version>" fits a header's MAX_NAME
    agency: Name
    contract: str | None = Field(default=None, pattern=r"^[0-9]+\.[0-9]+$")
    """The contract version the policy was written for: ``keep`` of a record releases the
    fields the record has in it (default: the oldest version the node holds)."""
    description: str | None = None


class ExceptModel(_Strict):
    """Recipients a selector leaves out."""

    agencies: list[Name] = []
    groups: list[Name] = []
    countries: list[Country] = []


class SelectorModel(_Strict):
    """Recipients a rule covers."""

    agencies: list[Name] = []
    groups: list[Name] = []
    countries: list[Country] = []
    all: bool = False
    except_: ExceptModel = Field(default=ExceptModel(), alias="except")
    legal_basis: list[Name] = []


class HandlingModel(_Strict):
    """Handling conditions attached to every view a rule releases."""

    code: Literal["H0", "H1", "H2", "H3"]
    purpose: Text = Field(max_length=MAX_TEXT)
    source: Literal["A", "B", "C", "X"]
    information: int = Field(ge=1, le=4)
    onward_transfer: Literal["NONE", "WITH_CONSENT", "ALLOWED"] = "NONE"
    retention_days: int | None = Field(default=None, ge=1, le=36_525)
    conditions: Text | None = Field(default=None, max_length=MAX_TEXT)


Condition = dict[str, Scalar | list[Scalar]]


class GeneraliseModel(_Strict):
    """How far to generalise: one of the options, fitting the field's type."""

    precision: int | None = Field(default=None, ge=0, le=10)
    grid: float | None = Field(default=None, gt=0)
    step: int | None = Field(default=None, ge=1)
    to: Literal["hour", "day", "month", "year", "age_band"] | None = None
    width: int = Field(default=10, ge=1, le=50)
    into: str = "age_band"

    @model_validator(mode="after")
    def _one_option(self) -> GeneraliseModel:
        chosen = [n for n in ("precision", "grid", "step", "to") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of precision, grid, step or to")
        return self


class PseudonymiseModel(_Strict):
    """How far a pseudonym links: the fields of its record that form the linking key (the
    field itself among them), and how many days of event time the key holds."""

    # bounds are checked when compiling (see _pseudonymise), where the error can name the field
    link_by: list[str] | None = None
    epoch_days: int = DEFAULT_EPOCH_DAYS


class FieldActionModel(_Strict):
    """One field's action in the long form (a mapping), with an optional condition."""

    keep: bool | None = None
    drop: bool | None = None
    redact: bool | None = None
    pseudonymise: bool | PseudonymiseModel | None = None
    generalise: GeneraliseModel | Literal["hour", "day", "month", "year"] | None = None
    truncate: int | None = Field(default=None, ge=1)
    when: Condition | None = None
    whole_person: bool = False
    """With ``keep`` on a person record: yes, every field of it leaves (identity numbers and
    addresses too, and what later contract versions add)."""

    @model_validator(mode="after")
    def _one_action(self) -> FieldActionModel:
        if self.whole_person and not self.keep:
            raise ValueError("whole_person acknowledges keeping a whole person record: add keep")
        chosen = [
            n
            for n in ("keep", "drop", "redact", "pseudonymise", "generalise", "truncate")
            if getattr(self, n) not in (None, False)
        ]
        if len(chosen) != 1:
            raise ValueError(
                "give exactly one action: keep, drop, redact, pseudonymise, generalise or truncate"
            )
        return self


ShortAction = Literal["keep", "drop", "redact", "pseudonymise"]


class RuleModel(_Strict):
    """One rule of a policy file."""

    id: Text = Field(max_length=MAX_NAME)
    event: Text
    to: SelectorModel
    when: Condition | None = None
    handling: HandlingModel
    fields: dict[str, ShortAction | FieldActionModel] = {}
    description: str | None = None


class PolicyModel(_Strict):
    """A policy file."""

    policy: PolicyHeaderModel
    rules: list[RuleModel]


def policy_schema_json() -> str:
    """The JSON Schema of the policy file (generated from the models above), as shipped in
    ``policies/policy.schema.json`` for editors; ``fxgw policy schema`` prints it. It checks the
    structure only: field paths, actions against types and the trust list need ``fxgw policy
    check``."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://fxgw.example/schemas/policy.schema.json",
        **PolicyModel.model_json_schema(by_alias=True),
        "title": "fxgw release policy",
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# --- compiled values -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """Compiled recipient selector."""

    agencies: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()
    everyone: bool = False
    except_agencies: frozenset[str] = frozenset()
    except_groups: frozenset[str] = frozenset()
    except_countries: frozenset[str] = frozenset()
    legal_basis: frozenset[str] = frozenset()

    def covers(self, agency: Agency) -> bool:
        """True when this selector takes in ``agency``."""
        if (
            agency.agency_id in self.except_agencies
            or agency.country in self.except_countries
            or self.except_groups & agency.groups
        ):
            return False
        if self.legal_basis and not self.legal_basis & agency.legal_bases:
            return False
        return (
            self.everyone
            or agency.agency_id in self.agencies
            or agency.country in self.countries
            or bool(self.groups & agency.groups)
        )

    def named(self) -> tuple[tuple[str, str, frozenset[str]], ...]:
        """Each name list of the selector: its key in the file, the kind of name, the names."""
        return (
            ("to.agencies", "agency", self.agencies),
            ("to.groups", "group", self.groups),
            ("to.countries", "country", self.countries),
            ("to.legal_basis", "legal basis", self.legal_basis),
            ("to.except.agencies", "agency", self.except_agencies),
            ("to.except.groups", "group", self.except_groups),
            ("to.except.countries", "country", self.except_countries),
        )

    def _excludes(self, kind: str, value: str) -> bool:
        return (
            value
            in {
                "agency": self.except_agencies,
                "group": self.except_groups,
                "country": self.except_countries,
            }[kind]
        )

    def _literals(self) -> list[tuple[str, str]]:
        return (
            [("agency", a) for a in sorted(self.agencies)]
            + [("group", g) for g in sorted(self.groups)]
            + [("country", c) for c in sorted(self.countries)]
        )

    def may_overlap(self, other: Selector) -> str | None:
        """What both selectors may cover (judged without a trust list), or None if nothing."""
        if self.everyone and other.everyone:
            return "all recipients"
        if self.everyone or other.everyone:
            wide, narrow = (self, other) if self.everyone else (other, self)
            for kind, value in narrow._literals():
                if not wide._excludes(kind, value):
                    return f"{kind} {value}"
            return None
        for kind, mine, theirs in (
            ("agency", self.agencies, other.agencies),
            ("group", self.groups, other.groups),
            ("country", self.countries, other.countries),
        ):
            if mine & theirs:
                return f"{kind} {sorted(mine & theirs)[0]}"
        return None


@dataclass(frozen=True, slots=True)
class When:
    """A condition on the event: every path's value is one of the allowed values."""

    tests: tuple[tuple[str, frozenset[Scalar]], ...]

    def holds(self, record: Mapping[str, object]) -> bool:
        """True when ``record`` satisfies every test (a missing or null value is None)."""
        for path, allowed in self.tests:
            found = values_at(record, path)
            value = found[0] if found else None
            if not isinstance(value, str | int | float | bool) and value is not None:
                return False
            if value not in allowed:
                return False
        return True

    def disjoint(self, other: When | None) -> bool:
        """True when no event can satisfy both conditions."""
        if other is None:
            return False
        mine = dict(self.tests)
        return any(path in mine and not mine[path] & allowed for path, allowed in other.tests)

    def describe(self) -> str:
        return " and ".join(
            f"{path} in {sorted(map(str, allowed))}" for path, allowed in self.tests
        )


FieldPlanKind = Literal["keep", "withhold", "descend", "transform", "derived"]


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """What happens to one field.

    ``keep`` copies it, ``withhold`` nulls it, ``descend`` applies ``children`` inside the record
    (or inside each item of a list of records), ``transform`` applies ``transform``, ``derived``
    takes the value another field's transform wrote (an age band). ``when`` makes the action
    conditional: if it does not hold, the field is withheld. ``reason`` says why (for explain).
    """

    name: str
    path: str
    kind: FieldPlanKind
    reason: str
    children: tuple[FieldPlan, ...] = ()
    transform: Transform | None = None
    when: When | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The compiled plan of one rule for one event type."""

    rule_id: str
    event_type: EventType
    handling: Handling
    fields: tuple[FieldPlan, ...]
    reference_field: str | None
    """Top-level timestamp the event happened at (age bands are computed at that time)."""

    def same_release(self, other: Plan) -> bool:
        """True when both plans release the same view under the same handling."""
        return self.fields == other.fields and self.handling == other.handling


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule."""

    rule_id: str
    selector: Selector
    when: When | None
    plan: Plan
    line: int | None
    to_line: int | None = None
    whole_persons: tuple[str, ...] = ()
    """Person records the rule keeps whole (acknowledged with ``whole_person: true``)."""
    overwrites: tuple[str, ...] = ()
    """Fields the rule names that a transform of another field overwrites (an age band)."""


@dataclass(frozen=True, slots=True)
class Released:
    """A released view: the record to encrypt, the fields withheld, the fields transformed, and
    the fields kept as they are."""

    record: dict[str, object]
    withheld: tuple[str, ...]
    transformed: tuple[str, ...]
    kept: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Denied:
    """No rule releases this event to this recipient (a decision, not an error)."""

    recipient: AgencyId
    event_type: EventType
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded, validated policy."""

    policy_id: str
    agency: AgencyId
    digest: bytes
    path: str
    rules: tuple[Rule, ...]
    agency_line: int | None = None

    @property
    def uses_pseudonyms(self) -> bool:
        """True when some rule pseudonymises a field (the node then needs a secret)."""

        def walk(plans: Iterable[FieldPlan]) -> bool:
            return any(isinstance(p.transform, Pseudonymise) or walk(p.children) for p in plans)

        return any(walk(rule.plan.fields) for rule in self.rules)

    def plan_for(
        self, event_type: str, recipient: Agency, record: Mapping[str, object]
    ) -> Plan | Denied:
        """The plan of the rule covering this event for ``recipient``, or :class:`Denied`.

        Two rules with different plans matching at once (which loading rules out wherever it
        can) deny the release: the node fails closed.
        """
        matched = [
            rule
            for rule in self.rules
            if rule.plan.event_type == event_type
            and rule.selector.covers(recipient)
            and (rule.when is None or rule.when.holds(record))
        ]
        if not matched:
            return Denied(recipient.agency_id, EventType(event_type), "no_rule")
        first = matched[0].plan
        if any(not first.same_release(rule.plan) for rule in matched[1:]):
            names = ", ".join(rule.rule_id for rule in matched)
            return Denied(
                recipient.agency_id, EventType(event_type), "ambiguous_rules", f"rules {names}"
            )
        return first

    def check_against(
        self, trust: TrustList, agency: str | None = None, *, names: bool = True
    ) -> None:
        """Check the policy against the trust list (see :meth:`trust_problems`).

        :raises PolicyError: for every problem found at once.
        """
        raise_problems(self.trust_problems(trust, agency, names=names))

    def trust_problems(
        self, trust: TrustList, agency: str | None = None, *, names: bool = True
    ) -> list[PolicyError]:
        """What is wrong with this policy on ``trust``: it is not ``agency``'s (the node's),
        two disagreeing rules cover the same agency, or (with ``names``) it names recipients
        the trust list does not know (see :meth:`unknown_names`)."""
        problems = self.unknown_names(trust) if names else []
        if agency is not None and agency != self.agency:
            problems.append(
                PolicyError(
                    f"policy belongs to {self.agency}, but this node is {agency}; give the node "
                    "its own agency's policy",
                    file=self.path,
                    line=self.agency_line,
                )
            )
        pairs: dict[str, PolicyError] = {}  # one per pair of rules, naming the first agency
        for member in trust.agencies.values():
            covering = [r for r in self.rules if r.selector.covers(member)]
            for found in _pair_problems(self.path, covering, f"agency {member.agency_id}"):
                pairs.setdefault(found.message.partition(" both cover")[0], found)
        return problems + list(pairs.values())

    def unknown_names(self, trust: TrustList) -> list[PolicyError]:
        """An agency, group, country or legal basis a rule names, in ``to`` or in ``except``,
        that the trust list does not know (exact case): a selector that names nobody covers
        nobody, and an ``except`` that names nobody excludes nobody."""
        problems = []
        known = {
            "agency": frozenset(trust.agencies),
            "group": frozenset(g for a in trust.agencies.values() for g in a.groups),
            "country": frozenset(a.country for a in trust.agencies.values()),
            "legal basis": frozenset(b for a in trust.agencies.values() for b in a.legal_bases),
        }
        for rule in self.rules:
            for key, kind, names in rule.selector.named():
                for name in sorted(names - known[kind]):
                    effect = "excludes" if "except" in key else "covers"
                    problems.append(
                        PolicyError(
                            f"rule '{rule.rule_id}': {key} names {kind} '{name}', which the "
                            f"trust list does not know, so it {effect} nobody"
                            f"{_suggest(name, known[kind])}",
                            file=self.path,
                            line=rule.to_line,
                        )
                    )
        return problems


def _suggest(name: str, known: Iterable[str]) -> str:
    same = [k for k in sorted(known) if k.casefold() == name.casefold()]
    if same:
        return f"; names are case-sensitive: did you mean '{same[0]}'?"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else "; check the trust list"


# --- compiling -----------------------------------------------------------------------------------

_STRING_KINDS = frozenset({"string"})
_FLOAT_KINDS = frozenset({"float", "double"})
_INT_KINDS = frozenset({"int", "long"})
_TIMESTAMP_KINDS = frozenset({"timestamp-millis", "timestamp-micros"})


def _is_list_of(info: FieldInfo, kinds: frozenset[str]) -> bool:
    return info.kind == "array" and info.item_kind in kinds


def _transform_for(
    spec: FieldActionModel, info: FieldInfo, siblings: Mapping[str, FieldInfo]
) -> Transform:
    """The transform a long-form action asks for, checked against the field's type.

    :raises ValueError: with the message to show; the caller adds file and line.
    """
    kind = info.kind
    if spec.redact:
        if kind in ("string", "bytes") or _is_list_of(info, _STRING_KINDS):
            return Redact()
        raise ValueError(
            f"redact applies to strings, lists of strings and bytes; '{info.path}' is {kind}: "
            "use drop, or generalise for numbers and dates"
        )
    if spec.pseudonymise:
        if kind == "string" or _is_list_of(info, _STRING_KINDS):
            return _pseudonymise(spec.pseudonymise, info, siblings)
        raise ValueError(
            f"pseudonymise applies to strings (names, identifiers); '{info.path}' is {kind}: "
            "use drop, or generalise for numbers and dates"
        )
    if spec.truncate is not None:
        if kind in ("string", "array"):
            return Truncate(spec.truncate)
        raise ValueError(
            f"truncate applies to strings and lists; '{info.path}' is {kind}: use generalise"
        )
    g = spec.generalise
    assert g is not None
    if isinstance(g, str):
        g = GeneraliseModel(to=g)
    if kind in _STRING_KINDS or _is_list_of(info, _STRING_KINDS):
        raise ValueError(
            f"generalise applies to numbers, dates and timestamps; '{info.path}' is a string: "
            "use truncate, redact or pseudonymise"
        )
    if kind in _FLOAT_KINDS and (g.precision is not None or g.grid is not None):
        return RoundNumber(precision=g.precision, grid=g.grid)
    if kind in _INT_KINDS and g.step is not None:
        return RoundNumber(step=g.step)
    if kind == "date" and g.to in ("month", "year"):
        return TruncateTime(g.to)
    if kind in _TIMESTAMP_KINDS and g.to in ("hour", "day", "month", "year"):
        return TruncateTime(g.to)
    if kind == "date" and g.to == "age_band":
        target = siblings.get(g.into)
        if target is None or target.kind != "string" or not target.nullable:
            raise ValueError(
                f"an age band is written into a nullable string field '{g.into}' beside "
                f"'{info.path}', and the record has none; name one with 'into:'"
            )
        return AgeBand(g.width, g.into)
    options = {
        "float": "precision or grid",
        "double": "precision or grid",
        "int": "step",
        "long": "step",
        "date": "to: month | year | age_band",
        "timestamp-millis": "to: hour | day | month | year",
    }.get(kind)
    if options is None:
        raise ValueError(f"'{info.path}' is {kind}, which cannot be generalised; use drop")
    raise ValueError(f"'{info.path}' is {kind}: generalise it with {options}")


def _pseudonymise(
    spec: PseudonymiseModel | Literal[True], info: FieldInfo, siblings: Mapping[str, FieldInfo]
) -> Pseudonymise:
    """The pseudonym transform, its linking key checked against the field's record.

    :raises ValueError: with the message to show; the caller adds file and line.
    """
    if spec is True:
        return Pseudonymise()
    if not 1 <= spec.epoch_days <= MAX_EPOCH_DAYS:
        raise ValueError(
            f"pseudonymise of '{info.path}': epoch_days must be 1 to {MAX_EPOCH_DAYS}, not "
            f"{spec.epoch_days}: pseudonyms rotate at least once a year (default "
            f"{DEFAULT_EPOCH_DAYS})"
        )
    if spec.link_by is None:
        return Pseudonymise(epoch_days=spec.epoch_days)
    for name in spec.link_by:
        other = siblings.get(name)
        if other is None:
            close = difflib.get_close_matches(name, sorted(siblings), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(
                f"pseudonymise of '{info.path}': link_by names '{name}', which is not a field "
                f"of the same record; {hint}(link_by lists fields beside '{info.name}')"
            )
        if other.children or other.kind in ("array", "map"):
            raise ValueError(
                f"pseudonymise of '{info.path}': link_by field '{name}' is a {other.kind}; "
                "name single values (strings, dates, numbers, enums)"
            )
    if info.name not in spec.link_by:
        raise ValueError(
            f"pseudonymise of '{info.path}': link_by lists the whole linking key, so it must "
            f"name '{info.name}' itself, e.g. link_by: [{info.name}, ...]; leave link_by out "
            "to link within one event only"
        )
    others = tuple(dict.fromkeys(n for n in spec.link_by if n != info.name))
    return Pseudonymise(others, spec.epoch_days)


def _is_below(path: str, parent: str) -> bool:
    return path.startswith(parent + ".") or path.startswith(parent + "[]")


class _Compiler:
    """Turns one rule's field actions into a plan, checking each against the schema; every
    problem found is added to ``problems`` (and compiling goes on, to find the others)."""

    def __init__(
        self,
        schema: Schema,
        rule: RuleModel,
        document: YamlDocument,
        index: int,
        personal: frozenset[str],
        problems: list[PolicyError],
        baseline: tuple[str, frozenset[str]] | None = None,
    ) -> None:
        self.schema = schema
        self.baseline = baseline
        self.rule = rule
        self.document = document
        self.index = index
        self.personal = personal
        self.problems = problems
        self.actions: dict[str, FieldActionModel] = {
            path: FieldActionModel.model_validate({action: True})
            if isinstance(action, str)
            else action
            for path, action in rule.fields.items()
        }
        self.derived: set[str] = set()
        self.overwrites: list[str] = []
        self.whole_persons: list[str] = []

    def report(self, message: str, path: str | None = None, loc: Loc | None = None) -> None:
        if loc is None:
            loc = ("rules", self.index, "fields") + ((path,) if path is not None else ())
        self.problems.append(
            PolicyError(
                f"rule '{self.rule.id}': {message}",
                file=str(self.document.path),
                line=self.document.line_of(loc),
            )
        )

    def when(self, condition: Condition | None, loc: Loc) -> When | None:
        if condition is None:
            return None
        known = {info.path: info for info in self.schema.iter_fields()}
        tests: list[tuple[str, frozenset[Scalar]]] = []
        for path, expected in condition.items():
            info = known.get(path)
            if info is None or "[]" in path:
                close = difflib.get_close_matches(path, [p for p in known if "[]" not in p], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.report(
                    f"condition on '{path}', which is not a single field of "
                    f"{self.schema.full_name}{hint}",
                    loc=(*loc, path),
                )
                continue
            values = expected if isinstance(expected, list) else [expected]
            problems = [p for p in (_condition_value_problem(info, v) for v in values) if p]
            if problems:
                self.report(f"condition on '{path}': {problems[0]}", loc=(*loc, path))
                continue
            tests.append((path, frozenset(values)))
        return When(tuple(tests))

    def check_paths(self) -> None:
        known = {info.path: info for info in self.schema.iter_fields()}
        for path, action in self.actions.items():
            info = known.get(path)
            if info is None:
                close = difflib.get_close_matches(path, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.report(
                    f"{self.schema.full_name} has no field '{path}'{hint} "
                    "(fxgw schema check --fields lists them)",
                    path,
                )
            elif (action.drop or action.when is not None) and not info.nullable:
                what = "dropped" if action.drop else "made conditional"
                self.report(
                    f"field '{path}' is required by {self.schema.full_name} and cannot be "
                    f"{what}: every view carries it; keep it, or transform it (pseudonymise, "
                    "redact, generalise)",
                    path,
                )
            elif info.children and not (action.keep or action.drop):
                self.report(
                    f"'{path}' is a record or a list of records: keep or drop it, or name "
                    "the fields inside it",
                    path,
                )
            elif info.children and action.keep and info.type_name in self.personal:
                if not action.whole_person:
                    inner = next(c.path for c in info.children if c.nullable)
                    self.report(
                        f"'{path}' is a person record ({info.type_name}): keep releases every "
                        "field of it, identity numbers and addresses included; name the fields "
                        f"to release ('{inner}: keep', ...), or say that the whole record may "
                        f"leave: '{path}: {{keep: true, whole_person: true}}'",
                        path,
                    )
                self.whole_persons.append(path)

    def _required(self, info: FieldInfo) -> None:
        self.report(
            f"field '{info.path}' is required by {self.schema.full_name}, so every view carries "
            "it, but no action names it (default deny); keep it ("
            f"'{info.path}: keep') or transform it (pseudonymise, redact, generalise)",
            loc=("rules", self.index, "fields"),
        )

    def compile(
        self, infos: tuple[FieldInfo, ...], inherited: Literal["keep", "withhold"]
    ) -> tuple[FieldPlan, ...]:
        siblings = {info.name: info for info in infos}
        plans: list[FieldPlan] = []
        for info in infos:
            spec = self.actions.get(info.path)
            below = any(_is_below(p, info.path) for p in self.actions)
            when = (
                self.when(spec.when, ("rules", self.index, "fields", info.path, "when"))
                if spec is not None
                else None
            )
            if spec is not None and spec.drop:
                plans.append(FieldPlan(info.name, info.path, "withhold", "dropped by the rule"))
            elif spec is not None and spec.keep:
                # a kept record is expanded into the fields the schema has now: one a later
                # contract version adds is not in the plan, so it is withheld until named
                if info.children:
                    children = self.compile(info.children, "keep")
                    plans.append(
                        FieldPlan(info.name, info.path, "descend", "kept", children, when=when)
                    )
                else:
                    plans.append(
                        FieldPlan(info.name, info.path, "keep", "kept by the rule", when=when)
                    )
            elif spec is not None:
                try:
                    transform = _transform_for(spec, info, siblings)
                except ValueError as exc:
                    self.report(str(exc), info.path)
                    continue
                if isinstance(transform, AgeBand):
                    target = (
                        info.path.rsplit(".", 1)[0] + "." + transform.into
                        if "." in info.path
                        else transform.into
                    )
                    self.derived.add(target)
                    if target in self.actions:
                        self.overwrites.append(target)
                plans.append(
                    FieldPlan(
                        info.name,
                        info.path,
                        "transform",
                        transform.describe(),
                        transform=transform,
                        when=when,
                    )
                )
            elif inherited == "keep" and self.baseline and info.path not in self.baseline[1]:
                plans.append(
                    FieldPlan(
                        info.name,
                        info.path,
                        "withhold",
                        f"added after contract version {self.baseline[0]}, which the policy "
                        "was written for: withheld until a rule names it",
                    )
                )
            elif info.children and (below or inherited == "keep"):
                children = self.compile(info.children, inherited)
                reason = (
                    "fields inside are named" if inherited == "withhold" else "inside a kept record"
                )
                plans.append(FieldPlan(info.name, info.path, "descend", reason, children))
            elif inherited == "keep":
                plans.append(FieldPlan(info.name, info.path, "keep", "inside a kept record"))
            elif not info.nullable:
                self._required(info)
            else:
                plans.append(
                    FieldPlan(info.name, info.path, "withhold", "no action names it (default deny)")
                )
        return tuple(plans)


def _mark_derived(plans: tuple[FieldPlan, ...], derived: set[str]) -> tuple[FieldPlan, ...]:
    out: list[FieldPlan] = []
    for p in plans:
        if p.path in derived:
            out.append(FieldPlan(p.name, p.path, "derived", "filled by a generalised birth date"))
        elif p.children:
            out.append(
                FieldPlan(
                    p.name,
                    p.path,
                    p.kind,
                    p.reason,
                    _mark_derived(p.children, derived),
                    p.transform,
                    p.when,
                )
            )
        else:
            out.append(p)
    return tuple(out)


def _condition_value_problem(info: FieldInfo, value: Scalar) -> str | None:
    if value is None:
        return None if info.nullable else "the field is required, it is never null"
    kind = info.kind
    if kind == "boolean":
        return None if isinstance(value, bool) else "expected true or false"
    if kind == "enum":
        if value in info.symbols:
            return None
        return f"not a symbol of the enum; expected one of {', '.join(info.symbols)}"
    if kind == "string":
        if isinstance(value, bool):
            return (
                "expected a string; YAML reads an unquoted yes, no, on or off as a boolean:"
                " quote it"
            )
        return None if isinstance(value, str) else "expected a string"
    if kind in _INT_KINDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "expected a whole number"
    return f"conditions apply to booleans, enums, strings and whole numbers, not {kind}"


def _reference_field(schema: Schema) -> str | None:
    for info in schema.fields:
        if info.kind in _TIMESTAMP_KINDS and not info.nullable:
            return info.path
    return None


def _pair_problems(path: str, rules: list[Rule], scope: str | None) -> list[PolicyError]:
    problems = []
    for i, later in enumerate(rules):
        for earlier in rules[:i]:
            if earlier.plan.event_type != later.plan.event_type:
                continue
            if earlier.plan.same_release(later.plan):
                continue
            if earlier.when is not None and earlier.when.disjoint(later.when):
                continue
            if later.when is not None and later.when.disjoint(earlier.when):
                continue
            shared = scope or earlier.selector.may_overlap(later.selector)
            if shared is None:
                continue
            problems.append(
                PolicyError(
                    f"rules '{earlier.rule_id}' (line {earlier.line}) and '{later.rule_id}' both "
                    f"cover {shared} for {later.plan.event_type} but release different views; a "
                    "recipient must fall under one rule only: narrow 'to' (e.g. except: {groups: "
                    "[EU]}) or give the rules exclusive 'when' conditions",
                    file=path,
                    line=later.line,
                )
            )
    return problems


def _clear_paths(plans: tuple[FieldPlan, ...]) -> Iterator[str]:
    """The paths a plan releases unchanged and unconditionally (a kept record: its subtree)."""
    for plan in plans:
        if plan.when is not None:
            continue
        if plan.kind == "keep":
            yield plan.path
        elif plan.kind == "descend":
            yield from _clear_paths(plan.children)


def _check_shape(
    rule_id: str,
    when: When | None,
    fields: tuple[FieldPlan, ...],
    index: int,
    problem: Callable[[str, Loc], None],
) -> None:
    """Check the shape rule: every condition of a rule (its own ``when`` and those of its field
    actions) tests only fields the rule releases in clear, so which rule applies, and which
    fields are withheld, transformed, null or set, never depends on a value the recipient may
    not see.

    Each breach goes to ``problem``, naming the rule, the condition, the hidden field and the fix.
    """
    clear = tuple(_clear_paths(fields))
    sites: list[tuple[When, tuple[str | int, ...], str, str]] = []
    if when is not None:
        sites.append((when, ("rules", index, "when"), "the rule's 'when'", "whether it applies"))
    sites += [
        (
            plan.when,
            ("rules", index, "fields", plan.path, "when"),
            f"the 'when' of '{plan.path}'",
            f"whether '{plan.path}' is withheld",
        )
        for plan in _walk_plans(fields)
        if plan.when is not None
    ]
    for condition, loc, where, shows in sites:
        for path, _ in condition.tests:
            if any(path == c or _is_below(path, c) for c in clear):
                continue
            problem(
                f"rule '{rule_id}': {where} tests '{path}', which the rule does not release "
                f"in clear, so {shows} would tell the recipient that hidden value; keep "
                f"'{path}' in this rule (fields: {{{path}: keep}}) or remove the condition",
                (*loc, path),
            )


def _walk_plans(plans: tuple[FieldPlan, ...]) -> Iterator[FieldPlan]:
    for plan in plans:
        yield plan
        yield from _walk_plans(plan.children)


def personal_types(registry: SchemaRegistry) -> frozenset[str]:
    """The record types whose doc marks them as personal data (``fxgw.Person``)."""
    return frozenset(
        schema.full_name
        for schema in registry
        if schema.doc is not None and PERSONAL_MARK in schema.doc.lower()
    )


def _sound_rules(data: object) -> list[tuple[int, RuleModel]]:
    """The rules of a policy document that has a structural error, which are valid alone."""
    items = data.get("rules") if isinstance(data, Mapping) else None
    sound = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        with contextlib.suppress(ValidationError):
            sound.append((index, RuleModel.model_validate(item)))
    return sound


@functools.cache
def _shipped_event_types() -> frozenset[str]:
    from gateway.contract.versions import Contract
    from gateway.resources import SCHEMAS

    return frozenset(t for v in Contract.load(SCHEMAS) for t in v.registry.event_types)


def _later_event_types(versions: Mapping[str, SchemaRegistry] | None) -> frozenset[str]:
    """The event types of every contract version the node holds, and of the contract shipped
    with the package: a rule for one of them that the node's own version lacks is skipped (it
    can never apply there), where an unknown type is an error."""
    held = (t for registry in (versions or {}).values() for t in registry.event_types)
    return _shipped_event_types() | frozenset(held)


def _written_for(
    header: PolicyHeaderModel,
    versions: Mapping[str, SchemaRegistry] | None,
    problem: Callable[[str, Loc], None],
) -> tuple[str, SchemaRegistry] | None:
    """The contract version the policy was written for, by label, if the node's are known."""
    if not versions:
        return None
    label = header.contract or next(iter(versions))
    if label not in versions:
        problem(
            f"policy.contract names version {label}, which the node's contract does not hold;"
            f" name one of {', '.join(versions)}",
            ("policy", "contract"),
        )
        return None
    return label, versions[label]


def parse_policy(
    document: YamlDocument,
    registry: SchemaRegistry,
    trust: TrustList | None = None,
    agency: str | None = None,
    *,
    versions: Mapping[str, SchemaRegistry] | None = None,
) -> Policy:
    """Validate a policy document against the schemas (and ``trust``, the trust list, when
    given; ``agency``, the node's, must then own the policy) and compile it.

    ``versions`` are the contract versions the node holds, oldest first, by label: ``keep`` of
    a record releases only the fields the record has in the version the policy names
    (``policy.contract``; by default the oldest), so a field a later version adds is withheld
    until a rule names it.

    :raises PolicyError: naming file, line and fix, for every problem found at once
        (:class:`~gateway.errors.PolicyProblems` when there are several): bad structure or types,
        unknown event type or field path, a required field no action names or one dropped, a
        person record kept whole without saying so, an action that does not fit the field's
        type, a bad condition, a duplicate rule id, two rules that could cover the same
        recipient with different plans, or recipients the trust list does not know.
    """
    file = str(document.path)
    model, errors = validate_all(document, PolicyModel, "policy", PolicyError, hints=True)
    problems = [PolicyError(e.message, file=e.file, line=e.line) for e in errors]
    # with a structural error somewhere, the rules that are sound on their own are still
    # compiled, so that their problems are reported too
    header = model.policy if model is not None else None
    indexed = list(enumerate(model.rules)) if model is not None else _sound_rules(document.data)

    def problem(message: str, loc: Loc) -> None:
        problems.append(PolicyError(message, file=file, line=document.line_of(loc)))

    events = set(registry.event_types)
    personal = personal_types(registry)
    written_for = _written_for(header, versions, problem) if header is not None else None
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, rule in indexed:
        if rule.id in seen:
            message = f"rule id '{rule.id}' is used twice; give each rule its own id"
            problem(message, ("rules", index))
        seen.add(rule.id)
        if rule.event not in events and rule.event in _later_event_types(versions):
            continue  # a newer contract version's type: one policy serves nodes on every version
        if rule.event not in events:
            close = difflib.get_close_matches(rule.event, sorted(events), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problem(
                f"rule '{rule.id}': unknown event type '{rule.event}'{hint}",
                ("rules", index, "event"),
            )
            continue
        to = rule.to
        if not (to.all or to.agencies or to.groups or to.countries):
            problem(
                f"rule '{rule.id}': 'to' names no recipient; list agencies, groups, countries "
                "or set all: true",
                ("rules", index, "to"),
            )
        if rule.handling.code == "H3" and not rule.handling.conditions:
            problem(
                f"rule '{rule.id}': handling code H3 needs 'conditions' stating the restrictions",
                ("rules", index, "handling"),
            )
        schema = registry.get(rule.event)
        baseline = None
        if written_for is not None and rule.event in written_for[1]:
            known = written_for[1].get(rule.event).iter_fields()
            baseline = (written_for[0], frozenset(info.path for info in known))
        compiler = _Compiler(schema, rule, document, index, personal, problems, baseline)
        compiler.check_paths()
        fields = _mark_derived(compiler.compile(schema.fields, "withhold"), compiler.derived)
        handling = Handling(
            code=rule.handling.code,
            purpose=rule.handling.purpose,
            source_evaluation=rule.handling.source,
            information_evaluation=rule.handling.information,
            onward_transfer=rule.handling.onward_transfer,
            retention_days=rule.handling.retention_days,
            conditions=rule.handling.conditions,
        )
        selector = Selector(
            frozenset(to.agencies),
            frozenset(to.groups),
            frozenset(to.countries),
            to.all,
            frozenset(to.except_.agencies),
            frozenset(to.except_.groups),
            frozenset(to.except_.countries),
            frozenset(to.legal_basis),
        )
        plan = Plan(rule.id, schema.full_name, handling, fields, _reference_field(schema))
        when = compiler.when(rule.when, ("rules", index, "when"))
        _check_shape(rule.id, when, fields, index, problem)
        rules.append(
            Rule(
                rule.id,
                selector,
                when,
                plan,
                document.line_of(("rules", index)),
                to_line=document.line_of(("rules", index, "to")),
                whole_persons=tuple(compiler.whole_persons),
                overwrites=tuple(compiler.overwrites),
            )
        )
    problems += _pair_problems(file, rules, None)
    policy = Policy(
        policy_id=f"{header.id}@{header.version}" if header is not None else "",
        agency=AgencyId(header.agency if header is not None else ""),
        digest=hashlib.sha256(document.raw).digest(),
        path=file,
        rules=tuple(rules),
        agency_line=document.line_of(("policy", "agency")),
    )
    if trust is not None:
        problems += policy.trust_problems(trust, agency if header is not None else None)
    raise_problems(sorted(problems, key=lambda p: p.line or 0))
    return policy


def check_versions(policy: Policy, versions: Mapping[str, SchemaRegistry]) -> None:
    """Check ``policy`` (compiled against the node's own contract version) against each other
    version the node may encode in, by label: every field a plan can leave null must be
    nullable there too, or a recipient reading that version could never be served. Fields a
    version lacks are withheld from its readers anyway; an event type it lacks is not sent in it.

    :raises PolicyError: naming the rule, the field and the version.
    """
    for rule in policy.rules:
        for label, registry in versions.items():
            if rule.plan.event_type not in registry:
                continue
            known = {info.path: info for info in registry.get(rule.plan.event_type).iter_fields()}
            for path in _nullable_paths(rule.plan.fields):
                info = known.get(path)
                if info is not None and not info.nullable:
                    raise PolicyError(
                        f"rule '{rule.rule_id}': '{path}' may be null in the view it releases,"
                        f" but contract version {label} requires it; a recipient reading"
                        f" {label} could not be served: keep the field in this rule, or leave"
                        f" {label} out of the node's contract",
                        file=policy.path,
                        line=rule.line,
                    )


def _nullable_paths(plans: tuple[FieldPlan, ...]) -> Iterator[str]:
    """The paths a plan may leave null: withheld, conditional, or derived or emptied by a
    transform (an age band nulls its source)."""
    for plan in plans:
        if (
            plan.kind in ("withhold", "derived")
            or plan.when is not None
            or isinstance(plan.transform, AgeBand)
        ):
            yield plan.path
        elif plan.kind == "descend":
            yield from _nullable_paths(plan.children)


def load_policy(
    path: Path,
    registry: SchemaRegistry,
    trust: TrustList | None = None,
    agency: str | None = None,
    *,
    versions: Mapping[str, SchemaRegistry] | None = None,
) -> Policy:
    """Read and validate a policy file (see :func:`parse_policy`).

    :raises PolicyError: the file is missing, not YAML, or invalid.
    """
    document = read_yaml(path, "policy file", PolicyError)
    return parse_policy(document, registry, trust, agency, versions=versions)


# --- applying ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Trail:
    withheld: list[str] = field(default_factory=list)
    transformed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def add(self, bucket: list[str], path: str) -> None:
        if path not in bucket:
            bucket.append(path)


def _apply(
    plans: tuple[FieldPlan, ...],
    record: Mapping[str, object],
    root: Mapping[str, object],
    ctx: Context,
) -> dict[str, object]:
    out: dict[str, object] = {}
    derived: dict[str, object] = {}
    for plan in plans:
        value = record.get(plan.name)
        if plan.kind == "derived":
            continue
        if plan.when is not None and not plan.when.holds(root):
            out[plan.name] = None
        elif plan.kind == "keep":
            out[plan.name] = value
        elif plan.kind == "withhold":
            out[plan.name] = None
        elif plan.kind == "transform":
            assert plan.transform is not None
            result = apply_transform(plan.transform, value, ctx, record)
            if isinstance(plan.transform, AgeBand):
                out[plan.name] = None
                derived[plan.transform.into] = result
            else:
                out[plan.name] = result
        elif value is None:
            out[plan.name] = None
        elif isinstance(value, list):
            out[plan.name] = [
                _apply(plan.children, item, root, ctx) if isinstance(item, Mapping) else None
                for item in value
            ]
        elif isinstance(value, Mapping):
            out[plan.name] = _apply(plan.children, value, root, ctx)
        else:  # a scalar where the schema has a record: never release it
            out[plan.name] = None
    for plan in plans:
        if plan.kind == "derived":
            out[plan.name] = derived.get(plan.name)
    return out


def _list_paths(plans: tuple[FieldPlan, ...], root: Mapping[str, object], trail: _Trail) -> None:
    """Fill ``trail`` from the plan alone: conditions read only top-level event fields, so the
    lists never depend on whether a nested record or list item happens to hold a value."""
    for plan in plans:
        if plan.kind == "withhold" or (plan.when is not None and not plan.when.holds(root)):
            trail.add(trail.withheld, plan.path)
        elif plan.kind == "transform":
            trail.add(trail.transformed, plan.path)
        elif plan.kind == "keep":
            trail.add(trail.kept, plan.path)
        elif plan.kind == "descend":
            _list_paths(plan.children, root, trail)


def reference_time(plan: Plan, record: Mapping[str, object], now: datetime) -> datetime:
    """The instant the event happened (its top-level timestamp), else ``now``."""
    if plan.reference_field is not None:
        value = record.get(plan.reference_field)
        if isinstance(value, datetime):
            return value
    return now


def apply_plan(
    plan: Plan,
    record: Mapping[str, object],
    *,
    recipient: str,
    pseudonymiser: Pseudonymiser | None = None,
    now: datetime | None = None,
) -> Released:
    """The view of ``record`` that ``plan`` releases to ``recipient``.

    Every field the plan does not keep or transform is null. ``withheld`` lists every path the
    plan withholds (whether or not this record had a value there, so the list does not reveal
    it) plus those whose condition failed; ``transformed`` the paths released transformed.
    """
    trail = _Trail()
    _list_paths(plan.fields, record, trail)
    reference = reference_time(plan, record, now or datetime.now(UTC))
    ctx = Context(recipient, pseudonymiser, reference, str(record.get("event_id", "")))
    released = _apply(plan.fields, record, record, ctx)
    return Released(released, tuple(trail.withheld), tuple(trail.transformed), tuple(trail.kept))


__all__ = [
    "Denied",
    "FieldPlan",
    "Plan",
    "Policy",
    "PolicyError",
    "Released",
    "Rule",
    "Selector",
    "When",
    "apply_plan",
    "check_versions",
    "load_policy",
    "parse_policy",
    "policy_schema_json",
    "reference_time",
]
