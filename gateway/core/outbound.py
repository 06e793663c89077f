"""The outbound core: a plain event from the national system in, sealed envelopes out.

Sans-I/O: :meth:`OutboundCore.release` takes one parsed event and the time and returns what to
publish, plus the recipients the policy denied and those the node refused to serve (fail
closed: no trust-list entry, no valid encryption key, an envelope too large for the exchange).
:meth:`OutboundCore.take` starts from the national system's raw bytes and returns
:class:`~gateway.core.effects.Effects`: envelopes, audit entries, and the bounded quarantine
record of an event that is invalid or that some recipient could not be served. The node
publishes and commits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from gateway.audit.chain import Value
from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract, ContractVersion, convert, missing_fields
from gateway.core.effects import (
    AuditEntry,
    Effects,
    Envelope,
    Limits,
    Observed,
    merge,
    quarantine,
)
from gateway.core.routing import Route, route
from gateway.core.tracing import admit
from gateway.crypto.envelope import (
    ENVELOPE_TYPE,
    DataKeyRing,
    Header,
    Sealed,
    is_valid_event_id,
    keyed_message_id,
    message_id_for,
    seal,
    seals_metadata,
)
from gateway.crypto.keys import AgencyKeys, EncryptionKey
from gateway.crypto.trust import Agency, PublicKey, TrustList
from gateway.errors import PeerError, RecordInvalid, UnknownEventType
from gateway.policy.engine import Denied, Plan, Policy, Released, apply_plan
from gateway.policy.transforms import Pseudonymiser
from gateway.types import AgencyId, EventId, EventType, KeyId

MAX_DERIVED_FROM = 64
"""How many received events one outbound event may declare it was made from."""


@dataclass(frozen=True, slots=True)
class PlainEvent:
    """An event as the national system hands it over, validated against its schema."""

    event_type: EventType
    event_id: EventId
    record: dict[str, object]
    recipients: tuple[str, ...] = ()
    derived_from: tuple[EventId, ...] = ()
    """Ids of received events this one was made from: each one's restriction applies to it."""


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
    kept: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per message id, the field paths released as they are (for the audit trail)."""


def parse_plain_event(data: bytes | Mapping[str, object], registry: SchemaRegistry) -> PlainEvent:
    """Parse the national system's JSON form:
    ``{"event_type", "record", "recipients"?, "derived_from"?}``, where ``derived_from`` lists the
    ids of received events (``provenance.restriction.derived_from`` of their deliveries) whose
    data went into this one, at most :data:`MAX_DERIVED_FROM` of them.

    :raises RecordInvalid: not JSON, not an object, or the record does not conform (the error
        names the field).
    :raises UnknownEventType: the event type is not in the federation's schemas.
    :raises UrgentWithoutJustification: an URGENT trace request that does not say why.
    """
    if isinstance(data, bytes | bytearray):
        try:
            # orjson: strict JSON (no NaN or Infinity, no lone surrogates, UTF-8 only, at most
            # 1024 levels deep), in a third of json's time
            obj = orjson.loads(data.removeprefix(b"\xef\xbb\xbf"))  # a UTF-8 byte order mark
        except orjson.JSONDecodeError as exc:
            raise RecordInvalid("the event is not valid JSON (JSONDecodeError)") from exc
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise RecordInvalid("the event is not a JSON object")
    unexpected = set(obj) - {"event_type", "record", "recipients", "derived_from"}
    if unexpected:
        raise RecordInvalid(
            "unexpected key; an event has 'event_type', 'record' and optional 'recipients'"
            " and 'derived_from'",
            field=sorted(unexpected)[0],
        )
    derived_from = obj.get("derived_from", [])
    if (
        not isinstance(derived_from, list)
        or len(derived_from) > MAX_DERIVED_FROM
        or not all(isinstance(d, str) and is_valid_event_id(d) for d in derived_from)
    ):
        raise RecordInvalid(
            f"must be a list of at most {MAX_DERIVED_FROM} event ids of received events",
            field="derived_from",
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
    # from_json checks every field (types, ranges, finite numbers) and names the first bad one
    record = registry.from_json(event_type, raw_record)
    event_id = record.get("event_id")
    if not isinstance(event_id, str) or not is_valid_event_id(event_id):
        raise RecordInvalid(
            "must be 1-128 letters, digits or . _ : - (starting with a letter or digit)",
            field="event_id",
        )
    admit(event_type, record)
    return PlainEvent(
        EventType(event_type),
        EventId(event_id),
        record,
        tuple(recipients),
        tuple(EventId(d) for d in dict.fromkeys(derived_from)),
    )


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event this node received from a peer, with the conditions it came under."""

    sender: str
    code: str
    onward_transfer: str

    def forward_refusal(self, recipient: str) -> str | None:
        """Why ``recipient`` may not be sent this event again, or None if it may."""
        if recipient == self.sender:
            return None  # back to the agency it came from is not onward dissemination
        if self.code == "H2":
            return f"received from {self.sender} under H2: no onward dissemination without consent"
        if self.onward_transfer != "ALLOWED":
            return (
                f"received from {self.sender} with onward transfer {self.onward_transfer}; "
                "forwarding needs the sender's consent"
            )
        return None


class NoCommonVersion(Exception):
    """A recipient reads no contract version this node knows (the release is refused)."""


class NoOwnKey(Exception):
    """The node holds no encryption key of its own that the trust list lists (format 2 needs
    one for its message ids; the release is refused)."""


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
    pseudonymiser: Pseudonymiser | None = None
    received: Mapping[str, ReceivedEvent] = field(default_factory=dict)
    """Events received from peers, by event id: their handling limits forwarding."""

    limits: Limits = field(default_factory=Limits)
    contract: Contract | None = None
    """Every contract version the node knows, ``registry`` being its own one's (None: the
    node knows only that one, and encodes in it for everybody)."""
    takes: Mapping[str, Callable[[PlainEvent, datetime], Effects]] = field(default_factory=dict)
    """Event types the node answers itself instead of routing them (``fxgw.HitQuery``): the
    parsed event goes to that function, which returns the effects."""

    @property
    def agency(self) -> AgencyId:
        """The sending agency."""
        return self.keys.agency

    def version_for(self, agency: Agency, event_type: str) -> ContractVersion | None:
        """The contract version to encode ``event_type`` in for ``agency``: the newest it reads
        that this node knows too, within this node's major version, and that has the event type
        and the envelope; None to encode in the node's own version.

        :raises NoCommonVersion: there is no such version.
        """
        if self.contract is None:
            return None
        own = self.own_version
        usable = [
            v
            for v in self.contract
            if v.major == own.major and event_type in v.registry and ENVELOPE_TYPE in v.registry
        ]
        wanted = set(agency.contract_versions)
        target = next((v for v in reversed(usable) if v.label in wanted), None)
        if target is None:
            known = ", ".join(v.label for v in usable) or "none"
            raise NoCommonVersion(
                f"{agency.agency_id} reads contract version(s)"
                f" {', '.join(agency.contract_versions)}; for {event_type} this node has {known}"
            )
        return None if target is own else target

    @property
    def own_version(self) -> ContractVersion:
        """The version of ``contract`` whose schemas are ``registry``."""
        assert self.contract is not None
        return self.contract.version_of(self.registry)

    def take(self, raw: bytes, now: datetime) -> Effects:
        """Everything that must happen because the national system handed over ``raw``.

        An event too large, invalid, or whose released view cannot be built is quarantined
        locally; otherwise its envelopes are published and every decision audited (release,
        denial, refusal: a refused recipient also quarantines the event, once per recipient).
        """
        limits = self.limits
        now_ms = int(now.timestamp() * 1000)
        if len(raw) > limits.max_event_bytes:
            return quarantine(
                raw,
                reason="too_large",
                detail=f"{len(raw)} bytes; this node takes events up to {limits.max_event_bytes}",
                direction="outbound",
                now_ms=now_ms,
                limits=limits,
                log_event="event_rejected",
            )
        try:
            event = parse_plain_event(raw, self.registry)
        except PeerError as exc:
            return quarantine(
                raw,
                reason=exc.reason,
                detail=str(exc),
                direction="outbound",
                now_ms=now_ms,
                limits=limits,
                log_event="event_rejected",
            )
        own = self.takes.get(event.event_type)
        if own is not None:
            return own(event, now)
        return self.take_event(event, raw, now)

    def take_event(self, event: PlainEvent, raw: bytes, now: datetime) -> Effects:
        """Everything that must happen to release ``event`` (parsed from ``raw``, which a
        refused recipient quarantines): see :meth:`take`."""
        limits = self.limits
        now_ms = int(now.timestamp() * 1000)
        try:
            outcome = self.release(event, now)
        except PeerError as exc:  # a released view that does not encode: keep the event
            return quarantine(
                raw,
                reason="release_failed",
                detail=str(exc),
                direction="outbound",
                now_ms=now_ms,
                limits=limits,
                data={"event_id": event.event_id},
                log_event="release_failed",
            )
        if not (outcome.envelopes or outcome.denied or outcome.refused):
            # nobody to offer it to: said, never silently dropped
            routed = any(r.event_type == event.event_type for r in self.routes)
            why = "its routes named no recipient" if routed else "no route for its type"
            facts: dict[str, Value] = {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "why": why,
            }
            entry = AuditEntry("not_routed", facts, "not_routed", "not_routed", warn=True)
            return Effects(audit=(entry,))
        parts = [
            Effects(
                envelopes=tuple(self._envelope(s) for s in outcome.envelopes),
                observed=tuple(
                    Observed(True, event.event_type, s.header.recipient, event.record)
                    for s in outcome.envelopes
                ),
            )
        ]
        parts.append(Effects(audit=tuple(self._released(s, outcome) for s in outcome.envelopes)))
        for denied in outcome.denied:
            data: dict[str, Value] = {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "recipient": denied.recipient,
                "reason": denied.reason,
                "policy_id": self.policy.policy_id,
            }
            parts.append(
                Effects(audit=(AuditEntry("release_denied", data, "not_released", "denied"),))
            )
        for refused in outcome.refused:
            data = {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "recipient": refused.recipient,
                "reason": refused.reason,
                "detail": refused.detail,
            }
            audit = AuditEntry("release_refused", data, "release_refused", "refused", warn=True)
            parts.append(Effects(audit=(audit,)))
            parts.append(
                quarantine(
                    raw,
                    reason=refused.reason,
                    detail=f"recipient {refused.recipient}: {refused.detail}",
                    direction="outbound",
                    now_ms=now_ms,
                    limits=limits,
                    extra=(("fxgw-recipient", refused.recipient.encode()),),
                    data={"event_id": event.event_id, "recipient": refused.recipient},
                )
            )
        return merge(*parts)

    @staticmethod
    def _envelope(sealed: Sealed) -> Envelope:
        h = sealed.header
        expires_ms = int(h.expires_at.timestamp() * 1000)
        return Envelope(h.recipient, h.sender, h.message_id, sealed.data, expires_ms)

    @staticmethod
    def _released(sealed: Sealed, outcome: Outcome) -> AuditEntry:
        h = sealed.header
        data: dict[str, Value] = {
            "message_id": h.message_id,
            "event_id": h.event_id,
            "event_type": h.event_type,
            "recipient": h.recipient,
            "policy_id": h.policy_id,
            "policy_digest": h.policy_digest.hex(),
            "rule": h.policy_rule,
            "handling": h.handling.code,
            "purpose": h.handling.purpose,
            "retention_days": h.handling.retention_days,
            "onward_transfer": h.handling.onward_transfer,
            "kept": list(outcome.kept.get(h.message_id, ())),
            "transformed": list(h.transformed),
            "withheld": list(h.withheld),
            "envelope_sha256": hashlib.sha256(sealed.data).hexdigest(),
            "recipient_key_id": h.recipient_key_id,
        }
        if outcome.event.derived_from:
            data["derived_from"] = list(outcome.event.derived_from)
        # the log line counts the field paths the audit entry lists
        brief = {k: v for k, v in data.items() if not isinstance(v, list)}
        brief.update({k: len(v) for k, v in data.items() if isinstance(v, list)})
        return AuditEntry("release", data, "released", "released", log_data=brief, routine=True)

    def release(self, event: PlainEvent, now: datetime) -> Outcome:
        """Route ``event``, apply the policy per recipient, and seal one envelope for each
        recipient the policy releases to. Never raises for a recipient-level problem: those come
        back as ``denied`` (policy) or ``refused`` (fail closed)."""
        now = now.replace(microsecond=now.microsecond - now.microsecond % 1000)  # Avro millis
        routing = route(
            self.routes, event.event_type, event.record, event.recipients, self.trust, self.agency
        )
        if self.trust.expires_at <= now:
            expired = "the trust list in force has expired; install a newer one"
            return Outcome(
                event,
                (),
                (),
                tuple(Refused(r, "trust_list_expired", expired) for r in routing.recipients),
            )
        refused = [
            Refused(name, "unknown_recipient", "not on the trust list") for name in routing.unknown
        ]
        denied: list[Denied] = []
        envelopes: list[Sealed] = []
        kept: dict[str, tuple[str, ...]] = {}
        # the event itself, or one it declares it was made from, may have come from a peer
        origins = [
            (source, received)
            for source in (event.event_id, *event.derived_from)
            if (received := self.received.get(source)) is not None
        ]
        for recipient in routing.recipients:
            refusal = next(
                (
                    why if source == event.event_id else f"derived from {source}, {why}"
                    for source, origin in origins
                    if (why := origin.forward_refusal(recipient)) is not None
                ),
                None,
            )
            if refusal is not None:
                refused.append(Refused(recipient, "onward_transfer_refused", refusal))
                continue
            agency = self.trust.agencies[recipient]
            decision = self.policy.plan_for(event.event_type, agency, event.record)
            if isinstance(decision, Denied):
                denied.append(decision)
                continue
            public = self.trust.encryption_key(recipient, now)
            if public is None:
                refused.append(
                    Refused(recipient, "no_recipient_key", "no valid encryption key listed")
                )
                continue
            try:
                target = self.version_for(agency, event.event_type)
            except NoCommonVersion as exc:
                refused.append(Refused(recipient, "no_common_contract_version", str(exc)))
                continue
            try:
                sealed, released = self._seal_view(event, recipient, decision, public, now, target)
                if len(sealed.data) > self.limits.max_envelope_bytes:
                    refused.append(
                        Refused(
                            recipient,
                            "envelope_too_large",
                            f"the envelope would be {len(sealed.data)} bytes; the exchange "
                            f"takes up to {self.limits.max_envelope_bytes}",
                        )
                    )
                    continue
                envelopes.append(sealed)
                kept[sealed.header.message_id] = released.kept
            except NoOwnKey as exc:
                refused.append(Refused(recipient, "no_own_key", str(exc)))
            except (PeerError, ValueError, TypeError, OverflowError, KeyError) as exc:
                # the released view could not be built or encoded: refuse this recipient only,
                # naming the kind of failure but never a value
                refused.append(
                    Refused(recipient, "release_failed", f"{type(exc).__name__} in release")
                )
        return Outcome(event, tuple(envelopes), tuple(denied), tuple(refused), kept)

    def _own_encryption_key(self, now: datetime) -> EncryptionKey:
        """Our X25519 key that format-2 message ids are keyed with: the newest one the trust
        list gives for us, valid now, that this node holds.

        :raises NoOwnKey: the node holds none of its keys the trust list lists as valid.
        """
        agency = self.trust.agency(self.agency)
        listed = [
            k for k in (agency.keys if agency else ()) if k.use == "encrypt" and k.valid_at(now)
        ]
        for key in sorted(listed, key=lambda k: k.valid_from, reverse=True):
            ours = self.keys.encryption_key(key.key_id)
            if ours is not None and ours.public == key.public:
                return ours
        raise NoOwnKey(
            f"this node holds no X25519 key the trust list lists as valid for {self.agency}:"
            " message ids of envelope format 2 are keyed with it; install the key file"
        )

    def _seal_view(
        self,
        event: PlainEvent,
        recipient: AgencyId,
        plan: Plan,
        public: PublicKey,
        now: datetime,
        target: ContractVersion | None = None,
    ) -> tuple[Sealed, Released]:
        released = apply_plan(
            plan, event.record, recipient=recipient, pseudonymiser=self.pseudonymiser, now=now
        )
        name = event.event_type
        registry, record, withheld = self.registry, released.record, released.withheld
        if target is not None:  # the recipient reads another version: resolve the view to it
            own = self.own_version
            record = convert(name, record, own, target)
            registry = target.registry
            # what one version has and the other lacks is not released either way
            gap = missing_fields(name, own, target) + missing_fields(name, target, own)
            withheld = withheld + tuple(p for p in gap if p not in withheld)
        # the view is built from a conforming record by the plan's typed transforms: fastavro's
        # writer is check enough (a wrong type still fails, refusing this recipient only)
        body = registry.write(name, record)
        if seals_metadata(registry):
            ours = self._own_encryption_key(now)
            pair_key = self.keyring.pairs.derive(ours, public.public, sending=True)
            message_id = keyed_message_id(pair_key, self.agency, event.event_id, recipient)
        else:
            ours, message_id = None, message_id_for(self.agency, event.event_id, recipient)
        template = Header(
            message_id=message_id,
            event_id=event.event_id,
            sender=self.agency,
            recipient=recipient,
            event_type=event.event_type,
            schema_fingerprint=registry.get(name).fingerprint,
            policy_id=self.policy.policy_id,
            policy_rule=plan.rule_id,
            policy_digest=self.policy.digest,
            handling=plan.handling,
            created_at=now,
            expires_at=now + self.ttl,
            withheld=withheld,
            transformed=released.transformed,
            sender_encryption_key_id=ours.key_id if ours else KeyId(""),
        )
        data_key = self.keyring.key_for(recipient, public, now)
        sealed = seal(
            template,
            body,
            signer=self.keys.signing,
            data_key=data_key,
            codec=registry,
            format_version=registry.get(ENVELOPE_TYPE).format,
        )
        return sealed, released
