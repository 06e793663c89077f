"""An agency's private keys: generation, the 0600 key files, and the public trust-list entry.

Each agency holds two private keys: an Ed25519 signing key (envelopes, receipts, audit
checkpoints) and an X25519 encryption key (data keys are wrapped to it); a pseudonym secret when
its policy pseudonymises, and an OPRF seed when it answers hit/no-hit queries. The federation
authority holds another kind, an Ed25519 key that signs the trust list. A key file is a small
JSON document, written with mode 0600; loading refuses a file that others can read.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import nacl.public
import nacl.signing

from gateway.errors import KeyFileError
from gateway.types import AgencyId, KeyId

KeyUse = Literal["sign", "encrypt", "pseudonym", "oprf"]

_FORMAT = "fxgw-key-1"
_KEY_LEN = 32


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private signing key with its trust-list id."""

    key_id: KeyId
    key: nacl.signing.SigningKey

    @property
    def public(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return bytes(self.key.verify_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``message``."""
        return self.key.sign(message).signature


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """An X25519 private key with its trust-list id; data keys are wrapped to its public half."""

    key_id: KeyId
    key: nacl.public.PrivateKey

    @property
    def public(self) -> bytes:
        """The 32-byte X25519 public key."""
        return bytes(self.key.public_key)


@dataclass(frozen=True, slots=True)
class PseudonymKey:
    """The agency's secret for keyed pseudonyms (HMAC-SHA256); never leaves the node."""

    key_id: KeyId
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class OprfSeed:
    """The agency's long-term seed of its per-epoch hit/no-hit OPRF keys
    (:meth:`gateway.crypto.oprf.OprfKey.derive`); never leaves the node."""

    key_id: KeyId
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgencyKeys:
    """The private keys one node works with: its signing key, its encryption keys and its
    pseudonym secret (None when its policy pseudonymises nothing).

    Several encryption keys may be held at once during a rotation: envelopes wrapped to the old
    key still open while senders move to the new one.
    """

    agency: AgencyId
    signing: SigningKey
    encryption: tuple[EncryptionKey, ...]
    pseudonym: PseudonymKey | None = None

    @property
    def key_ids(self) -> dict[str, object]:
        """The ids of the keys, for the audit trail and logs (never a secret)."""
        return {
            "signing_key_id": self.signing.key_id,
            "encryption_key_ids": [k.key_id for k in self.encryption],
            **({"pseudonym_key_id": self.pseudonym.key_id} if self.pseudonym else {}),
        }

    def encryption_key(self, key_id: str) -> EncryptionKey | None:
        """Our encryption key with this id, or None."""
        for key in self.encryption:
            if key.key_id == key_id:
                return key
        return None


def new_key_id(agency: AgencyId, use: KeyUse, now: datetime | None = None) -> KeyId:
    """A readable, sortable key id such as ``NL-POL/sign/20261128T151200Z``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return KeyId(f"{agency}/{use}/{stamp}")


def generate_signing_key(key_id: KeyId) -> SigningKey:
    """A fresh Ed25519 signing key."""
    return SigningKey(key_id, nacl.signing.SigningKey.generate())


def generate_encryption_key(key_id: KeyId) -> EncryptionKey:
    """A fresh X25519 encryption key."""
    return EncryptionKey(key_id, nacl.public.PrivateKey.generate())


def generate_pseudonym_key(key_id: KeyId) -> PseudonymKey:
    """A fresh 32-byte pseudonym secret."""
    return PseudonymKey(key_id, secrets.token_bytes(_KEY_LEN))


def generate_oprf_seed(key_id: KeyId) -> OprfSeed:
    """A fresh 32-byte OPRF seed."""
    return OprfSeed(key_id, secrets.token_bytes(_KEY_LEN))


def write_key_file(
    path: Path, key: SigningKey | EncryptionKey | PseudonymKey | OprfSeed, *, owner: str
) -> None:
    """Write ``key`` to ``path`` with mode 0600, atomically; never overwrite an existing file.

    :raises KeyFileError: the file exists already, or cannot be written.
    """
    if isinstance(key, SigningKey):
        kind, secret = "ed25519", bytes(key.key)
    elif isinstance(key, EncryptionKey):
        kind, secret = "x25519", bytes(key.key)
    elif isinstance(key, PseudonymKey):
        kind, secret = "hmac-sha256", key.secret
    else:
        kind, secret = "oprf-seed", key.secret
    document = {
        "format": _FORMAT,
        "owner": owner,
        "key_id": key.key_id,
        "algorithm": kind,
        "private": base64.b64encode(secret).decode("ascii"),
    }
    data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # fails if path exists: a key file is never silently replaced
    except FileExistsError as exc:
        raise KeyFileError(
            "key file exists already; move it away first if you mean to replace it",
            file=str(path),
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot write key file: {exc.strerror}", file=str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _read_key_document(path: Path) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(
            "key file not found; create it with 'fxgw keygen'", file=str(path)
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key file is accessible to others (mode {stat.S_IMODE(mode):04o}); "
            f"run 'chmod 600 {path}'",
            file=str(path),
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"not a readable key file: {exc.strerror}", file=str(path)) from exc
    except json.JSONDecodeError as exc:
        # where it broke, never what the file holds
        raise KeyFileError(
            f"not a JSON key file (line {exc.lineno}, column {exc.colno}; cut short, or being"
            " written?)",
            file=str(path),
        ) from exc
    except ValueError as exc:  # not UTF-8; the decoder's message would quote a byte
        raise KeyFileError("not a JSON key file (not UTF-8 text)", file=str(path)) from exc
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise KeyFileError(f"not an {_FORMAT} key file", file=str(path))
    for name in ("key_id", "algorithm", "private", "owner"):
        if not isinstance(document.get(name), str):
            raise KeyFileError(f"field '{name}' is missing or not a string", file=str(path))
    return {k: str(v) for k, v in document.items()}


def _decode_secret(document: dict[str, str], path: Path) -> bytes:
    try:
        secret = base64.b64decode(document["private"], validate=True)
    except binascii.Error as exc:
        raise KeyFileError("field 'private' is not valid base64", file=str(path)) from exc
    if len(secret) != _KEY_LEN:
        raise KeyFileError(
            f"field 'private' holds {len(secret)} bytes, expected {_KEY_LEN}", file=str(path)
        )
    return secret


def load_signing_key(path: Path) -> SigningKey:
    """Load an Ed25519 key file written by :func:`write_key_file`.

    :raises KeyFileError: missing, readable by others, malformed, or not an Ed25519 key.
    """
    document = _read_key_document(path)
    if document["algorithm"] != "ed25519":
        raise KeyFileError("expected an ed25519 signing key", file=str(path))
    return SigningKey(
        KeyId(document["key_id"]), nacl.signing.SigningKey(_decode_secret(document, path))
    )


def load_encryption_key(path: Path) -> EncryptionKey:
    """Load an X25519 key file written by :func:`write_key_file`.

    :raises KeyFileError: missing, readable by others, malformed, or not an X25519 key.
    """
    document = _read_key_document(path)
    if document["algorithm"] != "x25519":
        raise KeyFileError("expected an x25519 encryption key", file=str(path))
    return EncryptionKey(
        KeyId(document["key_id"]), nacl.public.PrivateKey(_decode_secret(document, path))
    )


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def public_key_entry(
    key: SigningKey | EncryptionKey, *, valid_from: datetime, valid_until: datetime
) -> dict[str, object]:
    """One key's entry for the agency's ``keys`` list on the trust list (public half only)."""
    return {
        "id": key.key_id,
        "use": "sign" if isinstance(key, SigningKey) else "encrypt",
        "public": base64.b64encode(key.public).decode("ascii"),
        "valid_from": _stamp(valid_from),
        "valid_until": _stamp(valid_until),
    }


def public_entry(
    agency: AgencyId,
    country: str,
    signing: SigningKey,
    encryption: EncryptionKey,
    *,
    groups: tuple[str, ...] = (),
    valid_from: datetime,
    valid_until: datetime,
) -> dict[str, object]:
    """The agency's entry for the federation trust list (public halves only)."""
    window = {"valid_from": valid_from, "valid_until": valid_until}
    return {
        "id": agency,
        "country": country,
        "groups": list(groups),
        "keys": [public_key_entry(signing, **window), public_key_entry(encryption, **window)],
    }


def _load_secret(path: Path, algorithm: str, what: str) -> tuple[KeyId, bytes]:
    document = _read_key_document(path)
    if document["algorithm"] != algorithm:
        raise KeyFileError(f"expected {what}", file=str(path))
    return KeyId(document["key_id"]), _decode_secret(document, path)


def load_pseudonym_key(path: Path) -> PseudonymKey:
    """Load a pseudonym secret written by :func:`write_key_file`.

    :raises KeyFileError: missing, readable by others, malformed, or not a pseudonym secret.
    """
    return PseudonymKey(*_load_secret(path, "hmac-sha256", "an hmac-sha256 pseudonym secret"))


def load_oprf_seed(path: Path) -> OprfSeed:
    """Load an OPRF seed written by :func:`write_key_file`.

    :raises KeyFileError: missing, readable by others, malformed, or not an OPRF seed.
    """
    return OprfSeed(*_load_secret(path, "oprf-seed", "an oprf-seed (hit/no-hit OPRF seed)"))
