"""Tools for the people who write policies: explain a decision, and run a policy's test cases.

- :func:`explain` says, for one event and one recipient, which rule decides, and field by field
  what would leave, in what form, and why. It runs the same plan and transforms as the node, so
  what it predicts is what the recipient gets.
- :func:`run_policy_tests` runs the cases of a ``<policy>.test.yaml`` file (in the spirit of
  ``opa test``): an event in, and per recipient the expected rule, field values, withheld fields,
  or a denial.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from gateway._yamlfile import load_model, read_yaml
from gateway.contract.schemas import SchemaRegistry
from gateway.core.outbound import parse_plain_event
from gateway.crypto.trust import Agency
from gateway.errors import PeerError, PolicyError
from gateway.policy.engine import Denied, FieldPlan, Plan, Policy, apply_plan, load_policy
from gateway.policy.transforms import Pseudonymiser
from gateway.types import AgencyId, CountryCode

Outcome = Literal["released", "transformed", "withheld"]


@dataclass(frozen=True, slots=True)
class FieldLine:
    """One field's fate in an explanation."""

    path: str
    outcome: Outcome
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """What one event would release to one recipient, and why."""

    event_type: str
    recipient: str
    decision: Plan | Denied
    fields: tuple[FieldLine, ...]
    released: dict[str, object] | None
    withheld: tuple[str, ...]
    transformed: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready form (the released record in the national systems' JSON form)."""
        decision = self.decision
        return {
            "event_type": self.event_type,
            "recipient": self.recipient,
            "decision": "denied" if isinstance(decision, Denied) else "released",
            "rule": None if isinstance(decision, Denied) else decision.rule_id,
            "reason": decision.reason if isinstance(decision, Denied) else None,
            "handling": None if isinstance(decision, Denied) else decision.handling.to_avro(),
            "fields": [
                {"path": f.path, "outcome": f.outcome, "reason": f.reason} for f in self.fields
            ],
            "released": self.released,
            "withheld": list(self.withheld),
            "transformed": list(self.transformed),
        }

    def to_text(self) -> str:
        """A table for people."""
        decision = self.decision
        if isinstance(decision, Denied):
            detail = f" ({decision.detail})" if decision.detail else ""
            return (
                f"{self.event_type} to {self.recipient}: NOT RELEASED, "
                f"{decision.reason}{detail}: no rule of the policy covers it (default deny)\n"
            )
        h = decision.handling
        retention = f"{h.retention_days} days" if h.retention_days else "recipient's law"
        lines = [
            f"{self.event_type} to {self.recipient}: released under rule '{decision.rule_id}'",
            f"  handling {h.code}, purpose: {h.purpose}; evaluation {h.source_evaluation}"
            f"{h.information_evaluation}; retention {retention}; onward transfer "
            f"{h.onward_transfer}",
        ]
        width = max(len(f.path) for f in self.fields)
        for f in self.fields:
            lines.append(f"  {f.outcome:<11}  {f.path:<{width}}  {f.reason}")
        return "\n".join(lines) + "\n"


def _walk(
    plans: tuple[FieldPlan, ...], record: Mapping[str, object], inherited: str | None
) -> Iterator[FieldLine]:
    for plan in plans:
        failed = plan.when is not None and not plan.when.holds(record)
        if failed and plan.when is not None:
            yield FieldLine(plan.path, "withheld", f"condition not met: {plan.when.describe()}")
            continue
        condition = f" (condition met: {plan.when.describe()})" if plan.when is not None else ""
        if plan.kind == "descend":
            yield from _walk(plan.children, record, inherited)
        elif plan.kind == "withhold":
            yield FieldLine(plan.path, "withheld", plan.reason)
        elif plan.kind == "transform":
            yield FieldLine(plan.path, "transformed", plan.reason + condition)
        elif plan.kind == "derived":
            yield FieldLine(plan.path, "transformed", plan.reason)
        else:
            yield FieldLine(plan.path, "released", plan.reason + condition)


def explain(
    policy: Policy,
    registry: SchemaRegistry,
    event_type: str,
    record: Mapping[str, object],
    recipient: Agency,
    *,
    pseudonymiser: Pseudonymiser | None,
    now: datetime,
) -> Explanation:
    """Explain what ``policy`` releases of ``record`` to ``recipient``."""
    decision = policy.plan_for(event_type, recipient, record)
    if isinstance(decision, Denied):
        return Explanation(event_type, recipient.agency_id, decision, (), None, (), ())
    released = apply_plan(
        decision, record, recipient=recipient.agency_id, pseudonymiser=pseudonymiser, now=now
    )
    return Explanation(
        event_type,
        recipient.agency_id,
        decision,
        tuple(_walk(decision.fields, record, None)),
        registry.to_json(event_type, released.record),
        released.withheld,
        released.transformed,
    )


# --- policy test files ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecipientModel(_Strict):
    """A recipient as the trust list would describe it."""

    country: str = Field(min_length=2, max_length=2)
    groups: list[str] = []
    roles: list[str] = []
    legal_bases: list[str] = []


class ExpectModel(_Strict):
    """What one recipient should get."""

    rule: str | None = None
    denied: bool = False
    fields: dict[str, JsonValue] = {}
    withheld: list[str] = []
    transformed: list[str] = []


class CaseModel(_Strict):
    """One test case: an event and the expectations per recipient."""

    name: str
    event: dict[str, JsonValue] | None = None
    event_file: str | None = None
    expect: dict[str, ExpectModel]


class PolicyTestFile(_Strict):
    """A ``<policy>.test.yaml`` file."""

    policy: str
    pseudonym_secret: str = "policy-test-secret"  # noqa: S105 - a test fixture, not a key
    now: AwareDatetime | None = None
    recipients: dict[str, RecipientModel]
    cases: list[CaseModel] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one case for one recipient."""

    file: str
    case: str
    recipient: str
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def value_at(record: object, path: str) -> object:
    """The value at a concrete path such as ``persons[0].family_name`` (KeyError if absent)."""
    current = record
    for step in path.replace("]", "").split("."):
        name, _, index = step.partition("[")
        if not isinstance(current, Mapping) or name not in current:
            raise KeyError(path)
        current = current[name]
        if index:
            if not isinstance(current, list) or int(index) >= len(current):
                raise KeyError(path)
            current = current[int(index)]
    return current


def _check(explanation: Explanation, expect: ExpectModel) -> list[str]:
    decision = explanation.decision
    if expect.denied:
        if isinstance(decision, Denied):
            return []
        return [f"expected no release, but rule '{decision.rule_id}' released it"]
    if isinstance(decision, Denied):
        return [f"expected a release, but it was denied ({decision.reason})"]
    failures = []
    if expect.rule is not None and expect.rule != decision.rule_id:
        failures.append(f"expected rule '{expect.rule}', got '{decision.rule_id}'")
    for path, wanted in expect.fields.items():
        try:
            got = value_at(explanation.released, path)
        except KeyError:
            failures.append(f"{path}: not in the released record")
            continue
        if got != wanted:
            failures.append(f"{path}: expected {wanted!r}, got {got!r}")
    for path in expect.withheld:
        if path not in explanation.withheld:
            failures.append(f"{path}: expected withheld, it was not")
    for path in expect.transformed:
        if path not in explanation.transformed:
            failures.append(f"{path}: expected transformed, it was not")
    return failures


def case_recipients(model: PolicyTestFile) -> dict[str, Agency]:
    """The recipients of a test file, as the trust list would describe them."""
    return {
        name: Agency(
            AgencyId(name),
            CountryCode(r.country),
            None,
            frozenset(r.groups),
            frozenset(r.roles),
            frozenset(r.legal_bases),
            (),
        )
        for name, r in model.recipients.items()
    }


def run_policy_tests(path: Path, registry: SchemaRegistry) -> list[CaseResult]:
    """Run every case of one test file.

    :raises PolicyError: the test file, its policy or an event file is invalid.
    """
    document = read_yaml(path, "policy test file", PolicyError)
    model = load_model(document, PolicyTestFile, "policy test file", PolicyError)
    policy = load_policy(path.parent / model.policy, registry)
    pseudonymiser = Pseudonymiser(model.pseudonym_secret.encode())
    now = model.now or datetime.now(UTC)
    agencies = case_recipients(model)
    results: list[CaseResult] = []
    for index, case in enumerate(model.cases):
        line = document.line_of(("cases", index))
        event_obj: object = case.event
        if case.event_file is not None:
            event_doc = read_yaml(path.parent / case.event_file, "event file", PolicyError)
            event_obj = event_doc.data
        if not isinstance(event_obj, Mapping):
            raise PolicyError(
                f"case '{case.name}': give 'event' or 'event_file'", file=str(path), line=line
            )
        try:
            event = parse_plain_event(event_obj, registry)
        except PeerError as exc:
            raise PolicyError(
                f"case '{case.name}': the event is invalid: {exc}", file=str(path), line=line
            ) from exc
        for recipient, expect in case.expect.items():
            agency = agencies.get(recipient)
            if agency is None:
                raise PolicyError(
                    f"case '{case.name}': recipient {recipient} is not under 'recipients'",
                    file=str(path),
                    line=line,
                )
            explanation = explain(
                policy,
                registry,
                event.event_type,
                event.record,
                agency,
                pseudonymiser=pseudonymiser,
                now=now,
            )
            failures = _check(explanation, expect)
            results.append(CaseResult(str(path), case.name, recipient, tuple(failures)))
    return results
