"""Small aliases for the words of the domain, so signatures say what a string means."""

from typing import NewType

AgencyId = NewType("AgencyId", str)
"""An agency's identifier in the federation trust list, e.g. ``NL-POL``."""

CountryCode = NewType("CountryCode", str)
"""ISO 3166-1 alpha-2 country code, upper case, e.g. ``NL``."""

KeyId = NewType("KeyId", str)
"""Identifier of one public key in the trust list, e.g. ``NL-POL/sig/2026-11``."""

EventType = NewType("EventType", str)
"""Avro full name of a domain event schema, e.g. ``fxgw.SeizureEvent``."""

MessageId = NewType("MessageId", str)
"""Identifier of one envelope (unique per event and recipient)."""

EventId = NewType("EventId", str)
"""Identifier of one source event, shared by every envelope made from it."""
