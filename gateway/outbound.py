"""The outbound core: a plain event from the national system in, sealed envelopes out.

Sans-I/O: :meth:`OutboundCore.release` takes one parsed event and the time and returns what to
publish, plus the recipients the policy denied and those the node refused to serve (fail
closed: no trust-list entry, no valid encryption key). The node publishes and commits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.envelope import DataKeyRing, Header, Sealed, message_id_for, seal
from gateway.errors import RecordInvalid, UnknownEventType
from gateway.keys import AgencyKeys
from gateway.policy import Denied, Policy, apply_plan
from gateway.routing import Route, route
from gateway.schemas import SchemaRegistry
from gateway.trust import TrustList
from gateway.types import AgencyId, EventId, EventType


@dataclass(frozen=True, slots=True)
class PlainEvent:
    """An event as the national system hands it over, validated against its schema."""

    event_type: EventType
    event_id: EventId
    record: dict[str, object]
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """A recipient the node will not serve for this event (fail closed), with the reason code."""

    recipient: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What releasing one event produced."""

    event: PlainEvent
    envelopes: tuple[Sealed, ...]
    denied: tuple[Denied, ...]
    refused: tuple[Refused, ...]


def parse_plain_event(data: bytes | Mapping[str, object], registry: SchemaRegistry) -> PlainEvent:
    """Parse the national system's JSON form: ``{"event_type", "record", "recipients"?}``.

    :raises RecordInvalid: not JSON, not an object, or the record does not conform (the error
        names the field).
    :raises UnknownEventType: the event type is not in the federation's schemas.
    """
    if isinstance(data, bytes | bytearray):
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordInvalid("the event is not valid JSON") from exc
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise RecordInvalid("the event is not a JSON object")
    unexpected = set(obj) - {"event_type", "record", "recipients"}
    if unexpected:
        raise RecordInvalid(
            "unexpected key; an event has 'event_type', 'record' and optional 'recipients'",
            field=sorted(unexpected)[0],
        )
    event_type = obj.get("event_type")
    if not isinstance(event_type, str):
        raise RecordInvalid("missing or not a string", field="event_type")
    if event_type not in registry.event_types:
        raise UnknownEventType(f"unknown event type {event_type!r}")
    recipients = obj.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise RecordInvalid("must be a list of agency ids", field="recipients")
    raw_record = obj.get("record")
    if not isinstance(raw_record, Mapping):
        raise RecordInvalid("missing or not an object", field="record")
    record = registry.from_json(event_type, raw_record)
    registry.encode(event_type, record)  # full schema check; raises naming the field
    event_id = record.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise RecordInvalid("missing or empty", field="event_id")
    return PlainEvent(EventType(event_type), EventId(event_id), record, tuple(recipients))


@dataclass(slots=True)
class OutboundCore:
    """Routing, policy, encoding and sealing for one sending agency.

    ``policy`` and ``trust`` may be replaced between events (hot reload); the data-key ring
    keeps its keys across such swaps.
    """

    keys: AgencyKeys
    registry: SchemaRegistry
    policy: Policy
    trust: TrustList
    routes: tuple[Route, ...]
    ttl: timedelta
    keyring: DataKeyRing = field(default_factory=DataKeyRing)

    @property
    def agency(self) -> AgencyId:
        """The sending agency."""
        return self.keys.agency

    def release(self, event: PlainEvent, now: datetime) -> Outcome:
        """Route ``event``, apply the policy per recipient, and seal one envelope for each
        recipient the policy releases to. Never raises for a recipient-level problem: those come
        back as ``denied`` (policy) or ``refused`` (fail closed)."""
        now = now.replace(microsecond=now.microsecond - now.microsecond % 1000)  # Avro millis
        routing = route(
            self.routes, event.event_type, event.record, event.recipients, self.trust, self.agency
        )
        refused = [
            Refused(name, "unknown_recipient", "not on the trust list") for name in routing.unknown
        ]
        denied: list[Denied] = []
        envelopes: list[Sealed] = []
        schema = self.registry.get(event.event_type)
        for recipient in routing.recipients:
            agency = self.trust.agencies[recipient]
            decision = self.policy.plan_for(event.event_type, agency)
            if isinstance(decision, Denied):
                denied.append(decision)
                continue
            public = self.trust.encryption_key(recipient, now)
            if public is None:
                refused.append(
                    Refused(recipient, "no_recipient_key", "no valid encryption key listed")
                )
                continue
            released = apply_plan(decision, event.record)
            body = self.registry.encode(event.event_type, released.record)
            template = Header(
                message_id=message_id_for(self.agency, event.event_id, recipient),
                event_id=event.event_id,
                sender=self.agency,
                recipient=recipient,
                event_type=event.event_type,
                schema_fingerprint=schema.fingerprint,
                policy_id=self.policy.policy_id,
                policy_rule=decision.rule_id,
                policy_digest=self.policy.digest,
                handling=decision.handling,
                created_at=now,
                expires_at=now + self.ttl,
                withheld=released.withheld,
                transformed=released.transformed,
            )
            data_key = self.keyring.key_for(recipient, public, now)
            envelopes.append(
                seal(
                    template, body, signer=self.keys.signing, data_key=data_key, codec=self.registry
                )
            )
        return Outcome(event, tuple(envelopes), tuple(denied), tuple(refused))
