"""The oblivious PRF of hit/no-hit queries: 2HashDH over the prime-order subgroup of edwards25519.
Pure.

    PRF_k(x) = finalize(x, k * H(x))

A holder keeps a per-epoch key ``k`` (:meth:`OprfKey.derive` from a long-term seed) and publishes
a filter of PRF_k(x) over its holdings. A querier with identifier ``x`` sends ``r * H(x)`` for a
fresh random ``r`` (:func:`blind`); the holder returns ``k * r * H(x)`` (:meth:`OprfKey.evaluate`);
the querier removes ``r`` (:func:`unblind`) and hashes (:func:`finalize`), then tests the filter.

What no library gives: the PyPI OPRF packages (``oprf``, ``oblivious``, ``voprf``, ``pyoprf``)
are young or little maintained and bring a second binding to libsodium; PyNaCl (already ours)
exposes the group operations, so the protocol itself (RFC 9497's 2HashDH shape, a few lines)
is written here, over edwards25519 rather than ristretto255, which PyNaCl does not expose.

Security, in short:
- The holder sees ``r * H(x)`` with ``r`` uniform and nonzero in a prime-order group: a uniformly
  random point, independent of ``x`` (information-theoretically). It learns nothing of the query.
- The querier learns PRF_k(x) for the ``x`` it asked about, one per evaluation; without ``k`` it
  cannot compute PRF_k for other identifiers (one-more-Gap-DH), so it cannot test the filter for
  a serial it has not paid an (audited, rate-limited) evaluation for.
- Every point a peer sends is checked with ``crypto_core_ed25519_is_valid_point`` (canonical
  encoding, on the curve, in the prime-order subgroup, not of small order): a hostile point
  cannot pull bits of ``k`` out through a small subgroup, nor reach the identity.
- ``H`` maps BLAKE2b output to the group with two Elligator 2 maps added (the random-oracle form
  of RFC 9380's hash_to_curve); ``crypto_core_ed25519_from_uniform`` clears the cofactor, so
  ``H(x)`` lies in the prime-order subgroup. ``finalize`` binds the output to ``x`` as RFC 9497
  does, so two identifiers never share an output through a shared point.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import nacl.bindings as sodium
import nacl.exceptions

from gateway.errors import PeerError

__all__ = ["Blinded", "OprfKey", "blind", "finalize", "hash_to_point", "unblind"]

POINT_BYTES = 32
SCALAR_BYTES = 32
_H2C_PERSON = b"fxgw-oprf-h2c-1"
_KEY_PERSON = b"fxgw-oprf-key-1"
_FINAL_PERSON = b"fxgw-oprf-fin-1"
_ZERO = bytes(SCALAR_BYTES)


# --- typed adapters over the (untyped in spirit) libsodium bindings ------------------------------


def _reduce(wide: bytes) -> bytes:
    """A 64-byte string reduced modulo the group order L."""
    return bytes(sodium.crypto_core_ed25519_scalar_reduce(wide))


def _random_scalar() -> bytes:
    """A uniform nonzero scalar (64 random bytes reduced modulo L: negligible bias)."""
    while (scalar := _reduce(secrets.token_bytes(64))) == _ZERO:
        pass  # pragma: no cover - probability 2**-252
    return scalar


def _mul(scalar: bytes, point: bytes) -> bytes:
    """``scalar * point``, both already checked: libsodium refuses only an identity result."""
    return bytes(sodium.crypto_scalarmult_ed25519_noclamp(scalar, point))


def _check_point(point: bytes, what: str) -> bytes:
    """``point`` if it is a valid point of the prime-order subgroup, else PeerError."""
    if not isinstance(point, bytes) or len(point) != POINT_BYTES:
        raise PeerError(f"{what}: not a {POINT_BYTES}-byte point", reason="oprf_bad_point")
    if not sodium.crypto_core_ed25519_is_valid_point(point):
        raise PeerError(
            f"{what}: not a canonical point of the prime-order subgroup (identity, small order,"
            " off the curve or non-canonical)",
            reason="oprf_bad_point",
        )
    return point


# --- the protocol ---------------------------------------------------------------------------------


def hash_to_point(identifier: bytes) -> bytes:
    """H(identifier): a point of the prime-order subgroup, the sum of two Elligator 2 maps of a
    64-byte BLAKE2b digest (personalised, so no other use of BLAKE2b shares its outputs)."""
    digest = hashlib.blake2b(identifier, digest_size=64, person=_H2C_PERSON).digest()
    left = sodium.crypto_core_ed25519_from_uniform(digest[:32])
    right = sodium.crypto_core_ed25519_from_uniform(digest[32:])
    return bytes(sodium.crypto_core_ed25519_add(left, right))


def finalize(identifier: bytes, point: bytes) -> bytes:
    """The 32-byte PRF output: BLAKE2b-256 over the length-prefixed identifier and point, as RFC
    9497's 2HashDH finalize does (with its own personalisation in place of the "Finalize" tag)."""
    data = len(identifier).to_bytes(2, "big") + identifier + len(point).to_bytes(2, "big") + point
    return hashlib.blake2b(data, digest_size=32, person=_FINAL_PERSON).digest()


@dataclass(frozen=True, slots=True)
class OprfKey:
    """A holder's OPRF key for one epoch: a nonzero scalar modulo L (32 bytes, little-endian,
    reduced); checked when built."""

    scalar: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.scalar) != SCALAR_BYTES:
            raise ValueError(f"an OPRF key is {SCALAR_BYTES} bytes, not {len(self.scalar)}")
        if self.scalar == _ZERO or _reduce(self.scalar + _ZERO) != self.scalar:
            raise ValueError("an OPRF key is a nonzero scalar reduced modulo the group order")

    @classmethod
    def derive(cls, seed: bytes, epoch: int) -> OprfKey:
        """The key of ``epoch`` (0 <= epoch < 2**64) from the holder's 32-byte long-term seed:
        BLAKE2b-512 keyed with the seed over the epoch, reduced modulo L; never zero. Keys of
        different epochs are unrelated to whoever lacks the seed."""
        if len(seed) != SCALAR_BYTES:
            raise ValueError(f"an OPRF seed is {SCALAR_BYTES} bytes, not {len(seed)}")
        counter = 0
        while True:
            message = epoch.to_bytes(8, "big") + counter.to_bytes(1, "big")
            wide = hashlib.blake2b(message, key=seed, digest_size=64, person=_KEY_PERSON).digest()
            if (scalar := _reduce(wide)) != _ZERO:
                return cls(scalar)
            counter += 1  # pragma: no cover - probability 2**-252

    def evaluate(self, blinded: bytes) -> bytes:
        """``k * blinded``, the holder's answer to a query.

        :raises PeerError: reason ``oprf_bad_point``, ``blinded`` is not a valid point.
        """
        return _mul(self.scalar, _check_point(blinded, "blinded point"))

    def prf(self, identifier: bytes) -> bytes:
        """PRF_k(identifier), evaluated directly by the holder to build its filter."""
        return finalize(identifier, _mul(self.scalar, hash_to_point(identifier)))


@dataclass(frozen=True, slots=True)
class Blinded:
    """A querier's blinded identifier: the secret scalar ``r`` (kept) and ``point`` = r * H(x)
    (sent)."""

    r: bytes = field(repr=False)
    point: bytes


def blind(identifier: bytes, *, r: bytes | None = None) -> Blinded:
    """Blind ``identifier`` with a fresh random scalar (``r`` is for known-answer tests only: a
    reused ``r`` links the queries that share it)."""
    scalar = _random_scalar() if r is None else OprfKey(r).scalar
    return Blinded(scalar, _mul(scalar, hash_to_point(identifier)))


def unblind(blinded: Blinded, evaluated: bytes) -> bytes:
    """``r^-1 * evaluated`` = k * H(x), to be passed to :func:`finalize`.

    :raises PeerError: reason ``oprf_bad_point``, ``evaluated`` is not a valid point.
    """
    point = _check_point(evaluated, "evaluated point")
    try:
        inverse = bytes(sodium.crypto_core_ed25519_scalar_invert(blinded.r))
    except nacl.exceptions.RuntimeError as exc:  # pragma: no cover - r is nonzero when built
        raise ValueError("blinding scalar has no inverse") from exc
    return _mul(inverse, point)
