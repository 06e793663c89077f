"""Routing: who is offered an event, before the policy decides what each one may see.

The node config lists routes per event type. A route names recipients directly (agencies,
groups, countries of the trust list) or derives them from the event: ``agencies_from`` reads an
agency id from a field (a trace response goes back to ``requesting_agency.agency_id``), and
``countries_from`` reads country codes (a trace request goes to the agencies of the firearm's
country of manufacture and of import), optionally only those with a ``role`` such as ``trace``.
The national system may add recipients explicitly on each event. The sending agency itself is
never a recipient. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.crypto.trust import TrustList
from gateway.types import AgencyId


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled route of the node config."""

    event_type: str
    agencies: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    agencies_from: tuple[str, ...] = ()
    countries_from: tuple[str, ...] = ()
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    """The outcome of routing one event."""

    recipients: tuple[AgencyId, ...]
    unknown: tuple[str, ...]
    """Recipients named (on the event or by a route) that the trust list does not know."""


def values_at(record: Mapping[str, object], path: str) -> list[object]:
    """The values at a dotted ``path`` of ``record``; ``[]`` after a name walks every item.

    Missing or null steps yield nothing rather than an error: an absent country simply routes
    to no one.
    """
    current: list[object] = [record]
    for step in path.split("."):
        name, each = (step[:-2], True) if step.endswith("[]") else (step, False)
        found: list[object] = []
        for node in current:
            if isinstance(node, Mapping):
                value = node.get(name)
                if each and isinstance(value, list):
                    found.extend(v for v in value if v is not None)
                elif value is not None:
                    found.append(value)
        current = found
    return current


def _strings(values: Iterable[object]) -> list[str]:
    return [v for v in values if isinstance(v, str) and v]


def route(
    routes: Sequence[Route],
    event_type: str,
    record: Mapping[str, object],
    explicit: Sequence[str],
    trust: TrustList,
    sender: AgencyId,
) -> Routing:
    """The recipients of one event: every matching route plus the explicit list, deduplicated,
    in a stable order, without the sender. Unknown agency ids are reported, not routed: by
    name when the national system or the config named them, by field path when an event field
    did (an event's values never reach a log line or a quarantine header)."""
    named: list[str] = list(explicit)
    from_fields: dict[str, str] = {}
    for r in routes:
        if r.event_type != event_type:
            continue
        named.extend(r.agencies)
        for group in r.groups:
            named.extend(trust.members(group=group))
        for country in r.countries:
            named.extend(trust.members(country=country))
        for path in r.agencies_from:
            for name in _strings(values_at(record, path)):
                named.append(name)
                from_fields.setdefault(name, f"an agency id in event field '{path}'")
        for path in r.countries_from:
            for country in _strings(values_at(record, path)):
                members = trust.members(country=country.upper())
                if r.role is not None:
                    members = [m for m in members if r.role in trust.agencies[m].roles]
                named.extend(members)
    recipients: list[AgencyId] = []
    unknown: list[str] = []
    for name in dict.fromkeys(named):
        if name == sender:
            continue
        agency = trust.agency(name)
        if agency is None:
            unknown.append(name if name in explicit else from_fields.get(name, name))
        else:
            recipients.append(agency.agency_id)
    return Routing(tuple(recipients), tuple(unknown))
