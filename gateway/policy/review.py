"""Warnings about release policies that load but are dangerous: ``fxgw policy check`` prints
them, and ``--strict`` (which CI runs on the shipped policies) fails on them.

What counts as personal data comes from the contract, not from a list kept here: the fields of
a record type whose doc says "personal data" (``fxgw.Person``: "every field except the role may
be withheld or pseudonymised") that the record does not require (so a person's role, which says
what part someone plays and not who it is, is not). A record held inside such a record (an
officer's agency) is judged by its own type's doc. A pseudonym, an age band or a truncated name
still relates to a person, so only ``redact`` and ``drop`` keep personal data in. Free text is a
string field whose doc says "free text" or "free-text" (remarks, circumstances, addresses): it
may hold anything, names included, so it should not leave as written.

A rule is warned about when it releases personal data to recipients it does not require a legal
basis of, under handling code H0 (no restriction), or with onward transfer ALLOWED; when it
keeps a person record whole (acknowledged with ``whole_person: true``); when free text leaves
neither redacted nor truncated; and when a transform writes into a field the rule also names
(an age band overwriting a kept value).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.contract.schemas import FieldInfo, SchemaRegistry
from gateway.policy.engine import FieldPlan, Policy, Rule, personal_types
from gateway.policy.transforms import Redact

_FREE_TEXT = "free text"


@dataclass(frozen=True, slots=True)
class PolicyWarning:
    """One danger in a valid policy: where, which rule, a stable code and what to do."""

    file: str
    line: int | None
    rule_id: str
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: warning [{self.code}]: rule '{self.rule_id}': {self.message}"


def _classify(
    infos: tuple[FieldInfo, ...], personal: frozenset[str], inside: bool
) -> Iterator[tuple[str, str]]:
    """``(path, "personal" | "free text")`` for every leaf field that is so."""
    for info in infos:
        if info.children:
            yield from _classify(info.children, personal, info.type_name in personal)
            continue
        if inside and info.nullable:
            yield info.path, "personal"
        if info.kind == "string" and _FREE_TEXT in (info.doc or "").lower().replace("-", " "):
            yield info.path, _FREE_TEXT


def _released(plans: tuple[FieldPlan, ...]) -> Iterator[FieldPlan]:
    """The leaf plans that let a value leave (kept, or transformed other than redacted)."""
    for plan in plans:
        if plan.kind == "descend":
            yield from _released(plan.children)
        elif plan.kind in ("keep", "derived") or (
            plan.kind == "transform" and not isinstance(plan.transform, Redact)
        ):
            yield plan


def _few(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def review(policy: Policy, registry: SchemaRegistry) -> list[PolicyWarning]:
    """The warnings about ``policy`` (compiled against ``registry``), rule by rule."""
    personal_records = personal_types(registry)
    return [
        PolicyWarning(policy.path, rule.line, rule.rule_id, code, message)
        for rule in policy.rules
        for code, message in _rule_warnings(rule, registry, personal_records)
    ]


def _rule_warnings(
    rule: Rule, registry: SchemaRegistry, personal_records: frozenset[str]
) -> Iterator[tuple[str, str]]:
    kinds: dict[str, set[str]] = {}
    for path, kind in _classify(registry.get(rule.plan.event_type).fields, personal_records, False):
        kinds.setdefault(path, set()).add(kind)
    released = list(_released(rule.plan.fields))
    leaving = [p.path for p in released if "personal" in kinds.get(p.path, ())]
    handling = rule.plan.handling
    if leaving and not rule.selector.legal_basis:
        yield (
            "personal_without_legal_basis",
            f"personal data ({_few(leaving)}) goes to recipients without a legal basis: name "
            "the bases in 'to' (legal_basis: [...]), or withhold the fields",
        )
    if leaving and handling.code == "H0":
        yield (
            "personal_under_h0",
            f"personal data ({_few(leaving)}) leaves under H0, without handling restrictions: "
            "use H1 or stricter, or withhold the fields",
        )
    if leaving and handling.onward_transfer == "ALLOWED":
        yield (
            "personal_onward_allowed",
            f"personal data ({_few(leaving)}) may be passed on by the recipient "
            "(onward_transfer: ALLOWED): use WITH_CONSENT or NONE, or withhold the fields",
        )
    for path in rule.whole_persons:
        yield (
            "whole_person",
            f"'{path}' leaves as a whole person record, identity numbers and addresses "
            "included: name the fields the recipient needs instead",
        )
    for plan in released:
        if plan.kind == "keep" and _FREE_TEXT in kinds.get(plan.path, ()):
            yield (
                "free_text",
                f"free text '{plan.path}' leaves as written and may name people: truncate it "
                "({truncate: 200}) or redact it",
            )
    for path in rule.overwrites:
        yield (
            "overwritten",
            f"'{path}' is named by the rule but a transform of another field writes into it "
            "(an age band), so what the rule says of it has no effect: remove the line",
        )


__all__ = ["PolicyWarning", "review"]
