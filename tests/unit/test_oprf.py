"""The 2HashDH OPRF of hit/no-hit queries: correctness, known answers, hostile points, seeds."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from gateway.core.identifiers import identifier
from gateway.crypto.keys import (
    generate_oprf_seed,
    generate_pseudonym_key,
    load_oprf_seed,
    write_key_file,
)
from gateway.crypto.oprf import OprfKey, blind, finalize, hash_to_point, unblind
from gateway.errors import KeyFileError, PeerError
from gateway.types import KeyId

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "oprf_vectors.json").read_text("utf-8")
)["vectors"]
SEED = bytes(range(32))
KEY = OprfKey.derive(SEED, 1)
IDENTIFIERS = [f"fxgw-test-{i}".encode() for i in range(200)]
P = 2**255 - 19
SMALL_ORDER = [
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    )
]
"""The eight points of small order on edwards25519 (libsodium's block list)."""
NON_CANONICAL = [
    (P + 1).to_bytes(32, "little"),  # y = 1 + p: the identity, encoded past p
    P.to_bytes(32, "little"),  # y = p
    (2**255 - 1).to_bytes(32, "little"),  # y = 2**255 - 1
    bytes.fromhex("01" + "00" * 30 + "80"),  # the identity with a "negative" zero x
]
"""Encodings whose y is not reduced modulo p, or whose sign bit is set for x = 0."""


def _bits_set(points: list[bytes]) -> float:
    data = b"".join(point[:31] for point in points)
    return sum(bin(byte).count("1") for byte in data) / (8 * len(data))


class TestRoundTrip:
    """blind, evaluate, unblind and finalize agree with the holder's direct PRF."""

    def test_equals_prf(self) -> None:
        """The blind round trip gives the holder's PRF output for every identifier."""
        for ident in IDENTIFIERS:
            blinded = blind(ident)
            assert KEY.prf(ident) == finalize(ident, unblind(blinded, KEY.evaluate(blinded.point)))

    def test_output_is_32_bytes_and_distinct(self) -> None:
        """Outputs are 32 bytes, one per identifier."""
        outputs = {KEY.prf(ident) for ident in IDENTIFIERS}
        assert {32} == {len(out) for out in outputs}
        assert len(IDENTIFIERS) == len(outputs)

    def test_epochs_and_seeds_differ(self) -> None:
        """Another epoch or another seed gives other outputs (and other keys)."""
        ident = IDENTIFIERS[0]
        outputs = {
            OprfKey.derive(seed, epoch).prf(ident)
            for seed in (SEED, bytes(32), os.urandom(32))
            for epoch in (0, 1, 2**63)
        }
        assert 9 == len(outputs)

    def test_derive_is_deterministic(self) -> None:
        """One seed and epoch always derive the same key."""
        assert OprfKey.derive(SEED, 7) == OprfKey.derive(SEED, 7)

    def test_finalize_binds_identifier(self) -> None:
        """Two identifiers never share an output through one point."""
        point = hash_to_point(b"x")
        assert finalize(b"a", point) != finalize(b"b", point)


class TestBlinding:
    """What the holder sees is independent of the identifier."""

    def test_two_blindings_differ(self) -> None:
        """Blinding one identifier twice gives unrelated points."""
        ident = IDENTIFIERS[0]
        assert blind(ident).point != blind(ident).point

    def test_blinded_points_are_valid_and_uniform(self) -> None:
        """Blinded points, of one identifier or of many, are valid points whose bits are as
        often set as clear."""
        same = [blind(IDENTIFIERS[0]).point for _ in range(200)]
        many = [blind(ident).point for ident in IDENTIFIERS]
        for points in (same, many):
            assert all(nacl.bindings.crypto_core_ed25519_is_valid_point(p) for p in points)
            assert len(points) == len(set(points))
            assert 0.48 < _bits_set(points) < 0.52

    def test_hash_to_point_in_subgroup(self) -> None:
        """H(x) is a valid point of the prime-order subgroup, and differs per identifier."""
        points = [hash_to_point(ident) for ident in IDENTIFIERS]
        assert all(nacl.bindings.crypto_core_ed25519_is_valid_point(p) for p in points)
        assert len(IDENTIFIERS) == len(set(points))

    def test_transcript_holds_no_identifier_nor_unblinded_value(self) -> None:
        """What the holder receives names no serial, no identifier, no H(x), no k*H(x), no
        output; what it sends back is none of the unblinded values either."""
        ident = identifier("Glock", "BXY-00123", "9mm")
        assert isinstance(ident, bytes)
        blinded = blind(ident)
        evaluated = KEY.evaluate(blinded.point)
        unblinded = unblind(blinded, evaluated)
        secrets = [b"BXY123", ident, hash_to_point(ident), unblinded, KEY.prf(ident)]
        transcript = blinded.point + evaluated
        assert [] == [s for s in secrets if s in transcript]
        assert "r=" not in repr(blinded) and "scalar" not in repr(KEY)


class TestKnownAnswers:
    """Pinned vectors in tests/data/oprf_vectors.json."""

    @pytest.mark.parametrize("vector", VECTORS, ids=[str(v["epoch"]) for v in VECTORS])
    def test_vector(self, vector: dict[str, Any]) -> None:
        """Blinded, evaluated and output match for a fixed seed, epoch, identifier and r."""
        key = OprfKey.derive(bytes.fromhex(vector["seed"]), vector["epoch"])
        ident = bytes.fromhex(vector["identifier"])
        blinded = blind(ident, r=bytes.fromhex(vector["r"]))
        evaluated = key.evaluate(blinded.point)
        assert vector["blinded"] == blinded.point.hex()
        assert vector["evaluated"] == evaluated.hex()
        assert vector["output"] == finalize(ident, unblind(blinded, evaluated)).hex()
        assert vector["output"] == key.prf(ident).hex()


HOSTILE = (
    [pytest.param(p, id=f"small-order-{i}") for i, p in enumerate(SMALL_ORDER)]
    + [pytest.param(p, id=f"non-canonical-{i}") for i, p in enumerate(NON_CANONICAL)]
    + [
        pytest.param(b"", id="empty"),
        pytest.param(bytes(31), id="31-bytes"),
        pytest.param(hash_to_point(b"x") + b"\x00", id="33-bytes"),
        pytest.param(bytes.fromhex("02" + "00" * 31), id="off-curve"),
    ]
)


class TestHostilePoints:
    """Points a peer sends are refused unless they are valid points of the subgroup."""

    @pytest.mark.parametrize("point", HOSTILE)
    def test_evaluate_refuses(self, point: bytes) -> None:
        """evaluate refuses with reason oprf_bad_point."""
        with pytest.raises(PeerError) as caught:
            KEY.evaluate(point)
        assert "oprf_bad_point" == caught.value.reason

    @pytest.mark.parametrize("point", HOSTILE)
    def test_unblind_refuses(self, point: bytes) -> None:
        """unblind refuses with reason oprf_bad_point."""
        with pytest.raises(PeerError) as caught:
            unblind(blind(b"x"), point)
        assert "oprf_bad_point" == caught.value.reason

    def test_random_bytes(self) -> None:
        """Random 32-byte strings are evaluated only when they are valid points (about one in
        sixteen is)."""
        for _ in range(500):
            point = os.urandom(32)
            if nacl.bindings.crypto_core_ed25519_is_valid_point(point):
                assert 32 == len(KEY.evaluate(point))
            else:
                with pytest.raises(PeerError):
                    KEY.evaluate(point)

    def test_small_order_added_to_valid_point(self) -> None:
        """A valid point plus a small-order component is outside the subgroup: refused."""
        torsion = SMALL_ORDER[4]
        point = nacl.bindings.crypto_core_ed25519_add(hash_to_point(b"x"), torsion)
        with pytest.raises(PeerError):
            KEY.evaluate(point)


class TestKeys:
    """OPRF keys are checked when built; seeds live in 0600 key files."""

    @pytest.mark.parametrize(
        "scalar", [b"", bytes(31), bytes(32), b"\xff" * 32], ids=["empty", "short", "zero", "big"]
    )
    def test_bad_scalar(self, scalar: bytes) -> None:
        """A key of the wrong length, zero, or not reduced is refused."""
        with pytest.raises(ValueError, match="OPRF key"):
            OprfKey(scalar)

    def test_bad_seed(self) -> None:
        """A seed that is not 32 bytes is refused."""
        with pytest.raises(ValueError, match="32 bytes"):
            OprfKey.derive(bytes(16), 0)

    def test_seed_file(self, tmp_path: Path) -> None:
        """A seed file is written 0600, loads back, derives the same keys, is never
        overwritten."""
        path = tmp_path / "oprf.key"
        seed = generate_oprf_seed(KeyId("NL-POL/oprf/20261203T000000Z"))
        write_key_file(path, seed, owner="NL-POL")
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        loaded = load_oprf_seed(path)
        assert seed == loaded
        assert OprfKey.derive(seed.secret, 3) == OprfKey.derive(loaded.secret, 3)
        with pytest.raises(KeyFileError, match="exists already"):
            write_key_file(path, seed, owner="NL-POL")

    def test_seed_file_of_other_kind(self, tmp_path: Path) -> None:
        """Another kind of key file is not taken for a seed."""
        path = tmp_path / "pseudonym.key"
        write_key_file(path, generate_pseudonym_key(KeyId("k")), owner="NL-POL")
        with pytest.raises(KeyFileError, match="oprf-seed"):
            load_oprf_seed(path)
