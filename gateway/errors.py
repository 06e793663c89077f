"""One hierarchy of errors, split by whose fault it is.

- :class:`ConfigError`: our own configuration, policy, trust list or key files are wrong. The node
  refuses to start (or keeps the last good version on a reload); the message names the file, the
  line or field, and what to do.
- :class:`PeerError`: a peer (another agency, or the national system) sent something bad. The record
  is quarantined with the machine-readable :attr:`PeerError.reason`; the stream goes on.
- :class:`InfrastructureError`: Kafka, the disk or another dependency failed. ``retriable`` says
  whether backing off and trying again can help.
"""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Base of every error this package raises on purpose."""


# --- our side: configuration, policy, trust list, keys -------------------------------------------


class ConfigError(GatewayError):
    """A file we were given is wrong; names the file, the line (when known) and the fix."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{message}")
        self.message = message


class SchemaError(ConfigError):
    """An Avro schema file cannot be loaded or resolved."""


class PolicyError(ConfigError):
    """A release policy file is invalid."""


class PolicyProblems(PolicyError):
    """Every problem found in one policy file, reported at once: ``problems`` holds each (with
    its own line); the message lists them all, one per line, the first giving file and line."""

    def __init__(self, problems: Sequence[PolicyError]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0]
        rest = "".join(f"\n{problem}" for problem in self.problems[1:])
        super().__init__(first.message + rest, file=first.file, line=first.line)


def raise_problems(problems: Sequence[PolicyError]) -> None:
    """Raise nothing for no problem, the problem itself for one, :class:`PolicyProblems` for
    more."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise PolicyProblems(problems)


class TrustError(ConfigError):
    """The trust list is unreadable, unsigned, expired, or older than the one in force."""


class KeyFileError(ConfigError):
    """A key file is missing, malformed, or readable by others."""


# --- the peer's side: what came in is bad --------------------------------------------------------


class PeerError(GatewayError):
    """Something a peer sent is bad; ``reason`` is the quarantine reason code."""

    reason: str = "invalid"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class RecordInvalid(PeerError):
    """A record does not conform to its Avro schema; ``field`` is the dotted path at fault."""

    reason = "schema_invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class UnknownEventType(PeerError):
    """An event names an Avro type the federation's contract does not define."""

    reason = "unknown_event_type"


class MalformedEnvelope(PeerError):
    """The bytes do not parse as an envelope of a format version we speak."""

    reason = "malformed"


class UntrustedSender(PeerError):
    """The sender, or its signing key, is not on the trust list (or revoked, or out of window)."""

    reason = "untrusted_sender"


class BadSignature(PeerError):
    """The Ed25519 signature over header and ciphertext does not verify."""

    reason = "bad_signature"


class NotForUs(PeerError):
    """The envelope is addressed to another agency or to an encryption key we do not hold."""

    reason = "not_for_us"


class DecryptionFailed(PeerError):
    """The data key cannot be unwrapped, or the body fails authentication."""

    reason = "decryption_failed"


class Stale(PeerError):
    """The envelope has expired, or was created too far in the future."""

    reason = "stale"


class MessageIdMismatch(PeerError):
    """The message id is not the one sender and recipient derive for the sealed event id."""

    reason = "message_id_mismatch"


class Duplicate(PeerError):
    """The message id was already delivered."""

    reason = "duplicate"


# --- infrastructure ------------------------------------------------------------------------------


class InfrastructureError(GatewayError):
    """A dependency failed; ``retriable`` says whether trying again can help, ``fatal`` that our
    own side is broken beyond retrying (the node stops with a clear message and exit code)."""

    retriable: bool = True
    fatal: bool = False


class TransportError(InfrastructureError):
    """Kafka could not be reached or refused a request."""


class RecordRefused(TransportError):
    """The cluster refuses this one record (too large for the topic, invalid): tied to the
    record, so trying again cannot help; it is quarantined and the stream goes on."""

    retriable = False


class TopicRefused(TransportError):
    """A topic is missing, or we may not write to it: tied to that topic (for a recipient's
    inbox, to that recipient)."""


class GroupRefused(TransportError):
    """We may not use a consumer group (its ACL is missing): tied to the loop that reads with
    it. That loop retries with back-off, since an operator can grant the ACL while the node
    runs; the node's other loops go on."""


class CommitRefused(TransportError):
    """The group no longer lets this member commit those offsets (a rebalance moved the
    partitions): the records will be read again by their new owner, and answered from the
    journals as duplicates; nothing to retry here."""

    retriable = False


class AccessRefused(TransportError):
    """The cluster refused our credentials or our rights as a whole: our side is broken."""

    retriable = False
    fatal = True


class Disowned(InfrastructureError):
    """A newer trust list, validly signed, no longer fits this node (its agency or signing key
    gone, or a contract version the node lacks listed for it): keeping the old list in force
    would keep keys the federation may have revoked, and the new one cannot be served. The
    node stops; on restart it refuses the list with the same message until the node is fixed."""

    retriable = False
    fatal = True


class StorageError(InfrastructureError):
    """A local file (spool, dedup journal, audit) could not be written durably."""
