"""Release policy: which fields of which event may leave, to whom, under which handling.

A policy file (YAML, one per sending agency, under ``policies/``) is a list of rules. A rule names
an event type, the recipients it covers and a field plan; the first rule (in file order) that
covers an (event type, recipient) pair decides. Everything is denied by default:

- an event type or recipient no rule covers is not released at all (a :class:`Denied` value, not
  an error);
- a field the plan does not name is withheld: released as null and listed in the envelope
  header, so the recipient can tell "withheld" from "unknown".

Fields the schema makes required (identifiers, timestamps, the role of a person) are the
skeleton of every released view and always leave; a plan cannot drop them.

Field actions in this version: ``keep`` (release as is; on a record or list, the whole subtree)
and ``drop`` (withhold, stated explicitly for the reader). The file format leaves room for more
actions (``redact``, ``pseudonymise``, ``generalise``, ``truncate``) and for conditions.

Pure: load-time validation reads the file once; compiling and applying plans is computation.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway._yamlfile import YamlDocument, load_model, read_yaml
from gateway.envelope import Handling
from gateway.errors import PolicyError
from gateway.schemas import FieldInfo, Schema, SchemaRegistry
from gateway.trust import Agency
from gateway.types import AgencyId, EventType

Action = Literal["keep", "drop"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyHeaderModel(_Strict):
    """The ``policy:`` block: who owns the file and which version it is."""

    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: int = Field(ge=1)
    agency: str = Field(min_length=1)
    description: str | None = None


class SelectorModel(_Strict):
    """Recipients a rule covers: listed agencies, members of groups or countries, or all."""

    agencies: list[str] = []
    groups: list[str] = []
    countries: list[str] = []
    all: bool = False
    except_: list[str] = Field(default=[], alias="except")


class HandlingModel(_Strict):
    """Handling conditions attached to every view a rule releases."""

    code: Literal["H0", "H1", "H2", "H3"]
    purpose: str = Field(min_length=1)
    source: Literal["A", "B", "C", "X"]
    information: int = Field(ge=1, le=4)
    onward_transfer: Literal["NONE", "WITH_CONSENT", "ALLOWED"] = "NONE"
    retention_days: int | None = Field(default=None, ge=1)
    conditions: str | None = None


class RuleModel(_Strict):
    """One rule of a policy file."""

    id: str = Field(min_length=1)
    event: str
    to: SelectorModel
    handling: HandlingModel
    fields: dict[str, Action] = {}
    description: str | None = None


class PolicyModel(_Strict):
    """A policy file."""

    policy: PolicyHeaderModel
    rules: list[RuleModel]


@dataclass(frozen=True, slots=True)
class Selector:
    """Compiled recipient selector."""

    agencies: frozenset[str]
    groups: frozenset[str]
    countries: frozenset[str]
    everyone: bool
    excluded: frozenset[str]

    def covers(self, agency: Agency) -> bool:
        """True when this selector names ``agency`` (and does not exclude it)."""
        if agency.agency_id in self.excluded:
            return False
        return (
            self.everyone
            or agency.agency_id in self.agencies
            or agency.country in self.countries
            or bool(self.groups & agency.groups)
        )


FieldPlanKind = Literal["keep", "withhold", "descend"]


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """What happens to one field: copy it, withhold it, or apply child plans inside it."""

    name: str
    path: str
    kind: FieldPlanKind
    children: tuple[FieldPlan, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """The compiled plan of one rule for one event type."""

    rule_id: str
    event_type: EventType
    handling: Handling
    fields: tuple[FieldPlan, ...]
    withheld: tuple[str, ...]
    kept: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: its selector and its plan."""

    rule_id: str
    selector: Selector
    plan: Plan
    line: int | None


@dataclass(frozen=True, slots=True)
class Released:
    """A released view: the record to encrypt and the fields withheld from it."""

    record: dict[str, object]
    withheld: tuple[str, ...]
    transformed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Denied:
    """No rule releases this event type to this recipient (a decision, not an error)."""

    recipient: AgencyId
    event_type: EventType
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded, validated policy."""

    policy_id: str
    agency: AgencyId
    digest: bytes
    path: str
    rules: tuple[Rule, ...]

    def plan_for(self, event_type: str, recipient: Agency) -> Plan | Denied:
        """The plan of the first rule covering ``event_type`` for ``recipient``, else Denied."""
        for rule in self.rules:
            if rule.plan.event_type == event_type and rule.selector.covers(recipient):
                return rule.plan
        return Denied(recipient.agency_id, EventType(event_type), "no_rule")


def _compile_fields(
    fields: tuple[FieldInfo, ...], actions: Mapping[str, Action]
) -> tuple[tuple[FieldPlan, ...], list[str], list[str]]:
    plans: list[FieldPlan] = []
    withheld: list[str] = []
    kept: list[str] = []
    for info in fields:
        action = actions.get(info.path)
        keeps_below = any(
            act == "keep"
            and (path.startswith(info.path + ".") or path.startswith(info.path + "[]"))
            for path, act in actions.items()
        )
        if action == "keep":
            plans.append(FieldPlan(info.name, info.path, "keep"))
            kept.append(info.path)
        elif info.children and (keeps_below or not info.nullable):
            child_plans, child_withheld, child_kept = _compile_fields(info.children, actions)
            plans.append(FieldPlan(info.name, info.path, "descend", child_plans))
            withheld.extend(child_withheld)
            kept.extend(child_kept)
        elif not info.nullable:
            # the skeleton: identifiers and timestamps every released view carries
            plans.append(FieldPlan(info.name, info.path, "keep"))
            kept.append(info.path)
        else:
            plans.append(FieldPlan(info.name, info.path, "withhold"))
            withheld.append(info.path)
    return tuple(plans), withheld, kept


def compile_plan(
    schema: Schema, rule_id: str, handling: Handling, actions: Mapping[str, Action]
) -> Plan:
    """Compile a rule's field actions against ``schema`` (paths already validated)."""
    fields, withheld, kept = _compile_fields(schema.fields, actions)
    return Plan(rule_id, schema.full_name, handling, fields, tuple(withheld), tuple(kept))


def _apply_fields(plans: tuple[FieldPlan, ...], record: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for plan in plans:
        value = record.get(plan.name)
        if plan.kind == "keep":
            out[plan.name] = value
        elif plan.kind == "withhold" or value is None:
            out[plan.name] = None
        elif isinstance(value, list):
            out[plan.name] = [
                _apply_fields(plan.children, item) if isinstance(item, Mapping) else item
                for item in value
            ]
        elif isinstance(value, Mapping):
            out[plan.name] = _apply_fields(plan.children, value)
        else:  # a scalar where the schema has a record: the encoder will name the field
            out[plan.name] = value
    return out


def apply_plan(plan: Plan, record: Mapping[str, object]) -> Released:
    """The view of ``record`` that ``plan`` releases.

    Every field the plan does not keep is null in the result. The withheld list is the plan's
    (the same for every record), so it does not reveal whether the sender held a value.
    """
    return Released(_apply_fields(plan.fields, record), plan.withheld, ())


def _validate_paths(schema: Schema, rule: RuleModel, document: YamlDocument, index: int) -> None:
    known = {info.path: info for info in schema.iter_fields()}
    for path, action in rule.fields.items():
        line = document.line_of(("rules", index, "fields", path))
        info = known.get(path)
        if info is None:
            close = difflib.get_close_matches(path, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PolicyError(
                f"rule '{rule.id}': {schema.full_name} has no field '{path}'{hint} "
                f"(run 'fxgw schema check' to list the paths)",
                file=str(document.path),
                line=line,
            )
        if action == "drop" and not info.nullable:
            raise PolicyError(
                f"rule '{rule.id}': field '{path}' is required by {schema.full_name} and cannot "
                "be dropped; remove the line (required fields always leave)",
                file=str(document.path),
                line=line,
            )


def parse_policy(document: YamlDocument, registry: SchemaRegistry) -> Policy:
    """Validate a policy document against the schemas and compile it.

    :raises PolicyError: naming file, line and fix: bad structure, unknown event type or field
        path, dropping a required field, or a duplicate rule id.
    """
    model = load_model(document, PolicyModel, "policy", PolicyError)
    events = set(registry.event_types)
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, rule in enumerate(model.rules):
        line = document.line_of(("rules", index))
        if rule.id in seen:
            raise PolicyError(
                f"rule id '{rule.id}' is used twice; give each rule its own id",
                file=str(document.path),
                line=line,
            )
        seen.add(rule.id)
        if rule.event not in events:
            close = difflib.get_close_matches(rule.event, sorted(events), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PolicyError(
                f"rule '{rule.id}': unknown event type '{rule.event}'{hint}",
                file=str(document.path),
                line=document.line_of(("rules", index, "event")),
            )
        to = rule.to
        if not (to.all or to.agencies or to.groups or to.countries):
            raise PolicyError(
                f"rule '{rule.id}': 'to' names no recipient; list agencies, groups, countries "
                "or set all: true",
                file=str(document.path),
                line=document.line_of(("rules", index, "to")),
            )
        schema = registry.get(rule.event)
        _validate_paths(schema, rule, document, index)
        handling = Handling(
            code=rule.handling.code,
            purpose=rule.handling.purpose,
            source_evaluation=rule.handling.source,
            information_evaluation=rule.handling.information,
            onward_transfer=rule.handling.onward_transfer,
            retention_days=rule.handling.retention_days,
            conditions=rule.handling.conditions,
        )
        if handling.code == "H3" and not handling.conditions:
            raise PolicyError(
                f"rule '{rule.id}': handling code H3 needs 'conditions' stating the restrictions",
                file=str(document.path),
                line=document.line_of(("rules", index, "handling")),
            )
        selector = Selector(
            frozenset(to.agencies),
            frozenset(to.groups),
            frozenset(to.countries),
            to.all,
            frozenset(to.except_),
        )
        plan = compile_plan(schema, rule.id, handling, rule.fields)
        rules.append(Rule(rule.id, selector, plan, line))
    header = model.policy
    return Policy(
        policy_id=f"{header.id}@{header.version}",
        agency=AgencyId(header.agency),
        digest=hashlib.sha256(document.raw).digest(),
        path=str(document.path),
        rules=tuple(rules),
    )


def load_policy(path: Path, registry: SchemaRegistry) -> Policy:
    """Read and validate a policy file (see :func:`parse_policy`).

    :raises PolicyError: the file is missing, not YAML, or invalid.
    """
    return parse_policy(read_yaml(path, "policy file", PolicyError), registry)
