"""Size limits on what a peer writes in the clear: envelope headers and receipts.

A peer's header or receipt is checked against these limits right after it is decoded, before it
is re-encoded, verified or quoted in an error: a field far longer than any honest sender writes
(a million-entry list of withheld paths, a megabyte-long sender id) would otherwise cost seconds
of work, and grow the error detail that is logged and travels with the quarantined record.
The policy engine holds what a sender writes to the same limits, so an honest envelope is never
refused for its size.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import MalformedEnvelope

MAX_NAME = 256
"""Longest id, key id, type name, policy id or rule id, reason code or field path (characters)."""
MAX_TEXT = 4096
"""Longest free text: a handling's purpose and conditions (characters)."""
MAX_BYTES = 256
"""Longest digest, fingerprint, wrapped key, nonce or signature (bytes)."""
MAX_PATHS = 1024
"""Most field paths in a header's withheld or transformed list."""


def check_sizes(record: Mapping[str, object], limits: Mapping[str, int], where: str) -> None:
    """Check each field of ``record`` named in ``limits`` against its limit: the length of a
    string (characters) or of bytes, or the number of entries of a list (whose string entries
    may be :data:`MAX_NAME` characters long). Fields of other types are not checked.

    :raises MalformedEnvelope: naming the first field (``<where>.<field>``) that is too long;
        never quoting its value.
    """
    for name, limit in limits.items():
        value = record.get(name)
        if isinstance(value, list):
            if len(value) > limit:
                raise MalformedEnvelope(f"{where}.{name} has more than {limit} entries")
            if any(isinstance(item, str) and len(item) > MAX_NAME for item in value):
                raise MalformedEnvelope(
                    f"{where}.{name} has an entry longer than {MAX_NAME} characters"
                )
        elif isinstance(value, str | bytes) and len(value) > limit:
            unit = "bytes" if isinstance(value, bytes) else "characters"
            raise MalformedEnvelope(f"{where}.{name} is longer than {limit} {unit}")
