"""The federation trust list: which agencies exist, where, in which groups, with which keys.

The list is a YAML file published by the federation authority together with detached Ed25519
signatures (``<file>.sig``, one per authority key that signed). A node loads it only if at least
``trust.threshold`` of them (k of the n authority keys pinned in the node's config, 1 by default)
verify, each by a different key, the list has not expired, and its version is not older than the
last one the node accepted. Pure: the caller reads the files and passes bytes and the time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import nacl.exceptions
import nacl.signing
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from gateway._yamlfile import YamlDocument, load_model, parse_yaml, read_bytes
from gateway.crypto.keys import SigningKey
from gateway.errors import TrustError, UntrustedSender
from gateway.types import AgencyId, CountryCode, KeyId

SIGNATURE_FORMAT = "fxgw-trust-sig-1"
"""The ``.sig`` file: ``key_id`` and ``signature`` of the first authority that signed (all a
node of an earlier version reads), and, when several signed (k of n), ``signatures``: every one
of them, with ``sha256``, the digest of the file they sign."""
_SIGNING_CONTEXT = b"fxgw.trust-list.v1\x00"


def _public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError("not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"a public key is 32 bytes, this one is {len(raw)}")
    return value


def _versions(value: list[str]) -> list[str]:
    for label in value:
        if not re.fullmatch(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})", label):
            raise ValueError(f"'{label}' is not a contract version (MAJOR.MINOR, e.g. 1.0)")
    return value


def _country(value: str) -> str:
    if len(value) != 2 or not value.isalpha() or not value.isupper():
        raise ValueError("expected an ISO 3166-1 alpha-2 code in capitals, e.g. 'NL'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrustKeyModel(_Strict):
    """One public key of an agency, as written in the trust-list file."""

    id: str = Field(min_length=1)
    use: Literal["sign", "encrypt"]
    public: Annotated[str, AfterValidator(_public_key)]
    valid_from: AwareDatetime
    valid_until: AwareDatetime


class TrustAgencyModel(_Strict):
    """One agency, as written in the trust-list file."""

    id: str = Field(min_length=1, pattern=r"^[A-Z]{2}-[A-Z0-9-]+$")
    country: Annotated[str, AfterValidator(_country)]
    name: str | None = None
    groups: list[str] = []
    roles: list[str] = []
    legal_bases: list[str] = []
    contract_versions: Annotated[list[str], AfterValidator(_versions), Field(min_length=1)] = [
        "1.0"
    ]
    """The versions of the contract the agency's node reads (the federation manifest)."""
    keys: list[TrustKeyModel]
    revoked: list[str] = []


class TrustListModel(_Strict):
    """The trust-list file."""

    federation: str = Field(min_length=1)
    version: int = Field(ge=1)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    agencies: list[TrustAgencyModel]


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key on the trust list, with its validity window."""

    key_id: KeyId
    use: Literal["sign", "encrypt"]
    public: bytes
    valid_from: datetime
    valid_until: datetime
    revoked: bool

    def valid_at(self, moment: datetime) -> bool:
        """True when the key is unrevoked and ``moment`` lies in its window."""
        return not self.revoked and self.valid_from <= moment < self.valid_until


@dataclass(frozen=True, slots=True)
class Agency:
    """One member of the federation."""

    agency_id: AgencyId
    country: CountryCode
    name: str | None
    groups: frozenset[str]
    roles: frozenset[str]
    legal_bases: frozenset[str]
    keys: tuple[PublicKey, ...]
    contract_versions: tuple[str, ...] = ("1.0",)
    """The versions of the contract the agency's node reads: a sender encodes for it in the
    newest of these it knows too."""


@dataclass(frozen=True, slots=True)
class TrustList:
    """A verified trust list, with the look-ups the pipeline needs."""

    federation: str
    version: int
    issued_at: datetime
    expires_at: datetime
    digest: bytes
    agencies: Mapping[AgencyId, Agency]

    def agency(self, agency_id: str) -> Agency | None:
        """The agency with this id, or None."""
        return self.agencies.get(AgencyId(agency_id))

    def members(self, *, group: str | None = None, country: str | None = None) -> list[AgencyId]:
        """Agencies in ``group`` and/or ``country``, sorted by id."""
        return sorted(
            a.agency_id
            for a in self.agencies.values()
            if (group is None or group in a.groups) and (country is None or a.country == country)
        )

    def signing_key(self, agency_id: str, key_id: str, at: datetime) -> bytes:
        """The Ed25519 public key ``key_id`` of ``agency_id``, valid at ``at``.

        :raises UntrustedSender: the agency or key is not listed, is revoked, or out of its window.
        """
        agency = self.agency(agency_id)
        if agency is None:
            # the id comes from a header nobody has vouched for yet: it is not quoted
            raise UntrustedSender(
                f"the sender named in the header ({len(agency_id)} characters) is not on the "
                "trust list"
            )
        for key in agency.keys:
            if key.key_id == key_id and key.use == "sign":
                if key.valid_at(at):
                    return key.public
                raise UntrustedSender(
                    f"signing key {key_id!r} of {agency_id} is revoked or outside its validity"
                )
        raise UntrustedSender(
            f"the signing key id in the header ({len(key_id)} characters) is not listed for "
            f"{agency_id}"
        )

    def encryption_key(self, agency_id: str, at: datetime) -> PublicKey | None:
        """The newest X25519 key of ``agency_id`` valid at ``at``, or None if there is none."""
        agency = self.agency(agency_id)
        if agency is None:
            return None
        valid = [k for k in agency.keys if k.use == "encrypt" and k.valid_at(at)]
        return max(valid, key=lambda k: k.valid_from) if valid else None


def signing_input(trust_list_bytes: bytes) -> bytes:
    """The bytes the authority signs: a context label and the exact file contents."""
    return _SIGNING_CONTEXT + trust_list_bytes


def _signature_entries(signature_file: bytes, sig_path: str) -> tuple[dict[str, str], ...]:
    """The distinct signatures of a ``.sig`` file as ``{"key_id", "signature"}`` (base64):
    the one at the top, and those of its ``signatures`` list.

    :raises TrustError: not a signature file.
    """
    try:
        document = json.loads(signature_file)
        if document.get("format") != SIGNATURE_FORMAT:
            raise ValueError("unknown format")
        listed = list(document.get("signatures", []))
        if "key_id" in document or not listed:
            listed.insert(0, {"key_id": document["key_id"], "signature": document["signature"]})
        entries: dict[tuple[str, str], dict[str, str]] = {}
        for entry in listed:
            key_id, signature = entry.get("key_id"), entry.get("signature")
            if not isinstance(key_id, str) or not isinstance(signature, str):
                raise ValueError("a signature needs key_id and signature")
            entries[(key_id, signature)] = {"key_id": key_id, "signature": signature}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrustError(f"not a {SIGNATURE_FORMAT} signature file", file=sig_path) from exc
    return tuple(entries.values())


def sign_trust_list(
    trust_list_bytes: bytes, authority: SigningKey, existing: bytes | None = None
) -> bytes:
    """The detached signature file (JSON) for a trust-list file, with the signature of
    ``authority`` added to those of ``existing`` (the current ``.sig``, if any).

    A signature by the same key is replaced. The signatures of ``existing`` are dropped when
    it names other contents (its ``sha256`` differs: they were for another version of the
    list); a file without ``sha256`` (one signature, as written before k of n) is kept, and
    its signature counts only if it verifies.

    :raises TrustError: ``existing`` is not a signature file.
    """
    digest = hashlib.sha256(trust_list_bytes).hexdigest()
    kept: list[dict[str, str]] = []
    if existing is not None:
        entries = _signature_entries(existing, "the existing signature file")
        if json.loads(existing).get("sha256", digest) == digest:  # it parsed just above
            kept = [e for e in entries if e["key_id"] != authority.key_id]
    signature = authority.sign(signing_input(trust_list_bytes))
    kept.append(
        {"key_id": authority.key_id, "signature": base64.b64encode(signature).decode("ascii")}
    )
    document = {
        "format": SIGNATURE_FORMAT,
        **kept[0],  # what a node of an earlier version checks
        "sha256": digest,
        "signatures": kept,
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def signature_key_ids(signature_file: bytes) -> tuple[str, ...]:
    """The key ids that signed, as the ``.sig`` file says (not verified).

    :raises TrustError: not a signature file.
    """
    return tuple(e["key_id"] for e in _signature_entries(signature_file, "signature file"))


def _verify_signature(
    path: Path,
    raw: bytes,
    signature_file: bytes,
    authorities: Mapping[str, bytes],
    threshold: int = 1,
) -> None:
    """At least ``threshold`` signatures over ``raw`` verify, each by a different pinned
    authority key (two ids with the same public key count once).

    :raises TrustError: fewer do; the message says how many did, how many are needed, and
        what is wrong with each of the others.
    """
    if threshold < 1:
        raise ValueError("the signature threshold is at least 1")
    sig_path = f"{path}.sig"
    valid: set[bytes] = set()
    problems: list[str] = []
    altered = False
    for entry in _signature_entries(signature_file, sig_path):
        key_id = entry["key_id"]
        public = authorities.get(key_id)
        if public is None:
            problems.append(
                f"{key_id!r} is not a federation authority key pinned in the node config "
                "(trust.authority_keys)"
            )
            continue
        try:
            signature = base64.b64decode(entry["signature"], validate=True)
            nacl.signing.VerifyKey(public).verify(signing_input(raw), signature)
        except (nacl.exceptions.BadSignatureError, ValueError, binascii.Error):
            altered = True
            problems.append(f"the signature by {key_id!r} does not verify")
            continue
        if public in valid:
            problems.append(f"{key_id!r} signed again with a key counted already")
        valid.add(public)
    if len(valid) >= threshold:
        return
    if altered:
        problems.append(
            "the trust list does not match its signature: it was altered after signing, "
            "or the signature belongs to another file; ask the federation authority for a "
            "signed copy"
        )
    raise TrustError(
        f"{len(valid)} valid signature(s) by distinct pinned authority keys, {threshold} "
        f"needed (trust.threshold): " + "; ".join(problems or ["no signature"]),
        file=str(path) if altered else sig_path,
    )


def _accepted(document: YamlDocument, *, now: datetime, min_version: int) -> TrustList:
    """A trust list whose signatures verified: parsed, and refused when malformed (with the
    line), expired, not yet issued, or older than ``min_version``.

    :raises TrustError: as said.
    """
    path = document.path
    model = load_model(document, TrustListModel, "trust list", TrustError)
    if model.expires_at <= now:
        raise TrustError(
            f"the trust list expired at {model.expires_at.isoformat()}; install a newer one",
            file=str(path),
        )
    if model.issued_at > now:
        raise TrustError(
            f"the trust list is issued in the future ({model.issued_at.isoformat()}); "
            "check this machine's clock",
            file=str(path),
        )
    if model.version < min_version:
        raise TrustError(
            f"trust list version {model.version} is older than version {min_version} "
            "accepted before; refusing a rollback",
            file=str(path),
        )
    return _build(model, document)


def _build(model: TrustListModel, document: YamlDocument) -> TrustList:
    agencies: dict[AgencyId, Agency] = {}
    seen_keys: set[str] = set()
    for index, entry in enumerate(model.agencies):
        line = document.line_of(("agencies", index))
        if entry.id in agencies:
            raise TrustError(
                f"agency {entry.id} is listed twice", file=str(document.path), line=line
            )
        keys = []
        for key in entry.keys:
            if key.id in seen_keys:
                raise TrustError(
                    f"key id {key.id!r} is used twice", file=str(document.path), line=line
                )
            seen_keys.add(key.id)
            keys.append(
                PublicKey(
                    KeyId(key.id),
                    key.use,
                    base64.b64decode(key.public),
                    key.valid_from,
                    key.valid_until,
                    key.id in entry.revoked,
                )
            )
        agencies[AgencyId(entry.id)] = Agency(
            AgencyId(entry.id),
            CountryCode(entry.country),
            entry.name,
            frozenset(entry.groups),
            frozenset(entry.roles),
            frozenset(entry.legal_bases),
            tuple(keys),
            tuple(entry.contract_versions),
        )
    return TrustList(
        model.federation,
        model.version,
        model.issued_at,
        model.expires_at,
        hashlib.sha256(document.raw).digest(),
        agencies,
    )


def load_trust_list(
    path: Path,
    authorities: Mapping[str, bytes],
    *,
    now: datetime,
    min_version: int = 0,
    threshold: int = 1,
) -> TrustList:
    """Read ``path`` and ``path.sig``, verify the signatures (``threshold`` valid ones by
    distinct pinned authority keys), then parse the list.

    :raises TrustError: the files cannot be read; the list is unsigned, or has too few valid
        signatures by pinned authorities; or it is malformed (with the line), expired, not yet
        issued, or older than ``min_version``.
    """
    raw = read_bytes(path, "trust list", TrustError)
    sig_path = Path(f"{path}.sig")
    if not sig_path.exists():
        raise TrustError(
            f"the trust list is unsigned ({sig_path} is missing); a node accepts only a list "
            "signed by the federation authority",
            file=str(path),
        )
    # the authorities' signatures are checked on the raw bytes, once, before any YAML is parsed
    _verify_signature(path, raw, sig_path.read_bytes(), authorities, threshold)
    document = parse_yaml(path, raw, "trust list", TrustError)
    return _accepted(document, now=now, min_version=min_version)


def authority_keys(entries: Iterable[tuple[str, str]]) -> dict[str, bytes]:
    """Pinned authority keys from (key id, base64 public key) pairs."""
    return {key_id: base64.b64decode(public) for key_id, public in entries}
