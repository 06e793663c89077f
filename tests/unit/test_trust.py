"""The trust list: signed by the authority, fresh, not rolled back, and exact about keys."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import nacl.signing
import pytest
import yaml

from gateway.cli.main import main
from gateway.crypto.keys import SigningKey, generate_signing_key, write_key_file
from gateway.crypto.trust import (
    TrustList,
    authority_keys,
    load_trust_list,
    sign_trust_list,
    signature_key_ids,
    signing_input,
)
from gateway.dev.sandbox import Federation
from gateway.errors import ConfigError, TrustError, UntrustedSender
from gateway.node.config import load_config
from gateway.types import KeyId
from tests.unit.conftest import NOW


def _pinned(fed: Federation) -> dict[str, bytes]:
    return authority_keys(load_config(fed.config("NL-POL")).trust.pinned)


def _resigned(fed: Federation, tmp_path: Path, edit: object) -> Path:
    """A copy of the sandbox trust list, edited, and signed again by the authority."""
    assert fed.trust_file is not None and fed.authority is not None
    data = yaml.safe_load(fed.trust_file.read_text())
    edit(data)  # type: ignore[operator]
    path = tmp_path / "trust.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    Path(f"{path}.sig").write_bytes(sign_trust_list(path.read_bytes(), fed.authority))
    return path


class TestLoading:
    """Loading refuses anything but a current list signed by a pinned authority."""

    def test_signed_list_loads(self, trust: TrustList) -> None:
        """The sandbox list verifies and lists three agencies."""
        assert ["BE-FPJ", "NL-POL", "US-ATF"] == sorted(trust.agencies)
        assert ["BE-FPJ", "NL-POL"] == trust.members(group="EU")
        assert ["US-ATF"] == trust.members(country="US")

    def test_unsigned_list_is_refused(self, fed: Federation, tmp_path: Path) -> None:
        """Without a .sig file the list is refused."""
        assert fed.trust_file is not None
        copy = tmp_path / "trust.yaml"
        copy.write_bytes(fed.trust_file.read_bytes())
        with pytest.raises(TrustError, match="unsigned"):
            load_trust_list(copy, _pinned(fed), now=NOW)

    def test_altered_list_is_refused(self, fed: Federation, tmp_path: Path) -> None:
        """One changed byte after signing breaks the signature."""
        assert fed.trust_file is not None
        copy = tmp_path / "trust.yaml"
        copy.write_bytes(fed.trust_file.read_bytes().replace(b"country: US", b"country: NL"))
        Path(f"{copy}.sig").write_bytes(Path(f"{fed.trust_file}.sig").read_bytes())
        with pytest.raises(TrustError, match="does not match its signature"):
            load_trust_list(copy, _pinned(fed), now=NOW)

    def test_unknown_authority_is_refused(self, fed: Federation) -> None:
        """A signature by a key the node does not pin is refused, naming the config field."""
        assert fed.trust_file is not None
        with pytest.raises(TrustError, match=r"trust\.authority_keys"):
            load_trust_list(fed.trust_file, {}, now=NOW)

    def test_expired_list_is_refused(self, fed: Federation) -> None:
        """After expires_at the list is refused."""
        assert fed.trust_file is not None
        with pytest.raises(TrustError, match="expired"):
            load_trust_list(fed.trust_file, _pinned(fed), now=NOW + timedelta(days=31))

    def test_rollback_is_refused(self, fed: Federation) -> None:
        """A version older than one accepted before is refused."""
        assert fed.trust_file is not None
        with pytest.raises(TrustError, match="rollback"):
            load_trust_list(fed.trust_file, _pinned(fed), now=NOW, min_version=2)

    def test_malformed_entry_names_the_line(self, fed: Federation, tmp_path: Path) -> None:
        """A bad country code is reported with file, line and field."""

        def edit(data: dict[str, list[dict[str, object]]]) -> None:
            data["agencies"][1]["country"] = "Belgium"

        path = _resigned(fed, tmp_path, edit)
        with pytest.raises(TrustError) as info:
            load_trust_list(path, _pinned(fed), now=NOW)
        assert info.value.line is not None
        assert "agencies[1].country" in str(info.value)
        assert "alpha-2" in str(info.value)


class TestKeys:
    """Key look-ups honour revocation and validity windows."""

    def test_listed_key_verifies(self, trust: TrustList, fed: Federation) -> None:
        """NL-POL's signing key is found at a time inside its window."""
        from tests.unit.conftest import agency_keys

        key = agency_keys(fed, "NL-POL").signing
        assert key.public == trust.signing_key("NL-POL", key.key_id, NOW)

    def test_unknown_sender_is_untrusted(self, trust: TrustList) -> None:
        """An agency not on the list is untrusted."""
        with pytest.raises(UntrustedSender, match="not on the trust list"):
            trust.signing_key("XX-NOPE", "k", NOW)

    def test_key_outside_window_is_untrusted(self, trust: TrustList, fed: Federation) -> None:
        """A key used after its validity window is untrusted."""
        from tests.unit.conftest import agency_keys

        key = agency_keys(fed, "NL-POL").signing
        with pytest.raises(UntrustedSender, match="outside its validity"):
            trust.signing_key("NL-POL", key.key_id, NOW + timedelta(days=400))

    def test_revoked_key_is_untrusted(self, fed: Federation, tmp_path: Path) -> None:
        """A key listed under 'revoked' no longer verifies."""
        from tests.unit.conftest import agency_keys

        key = agency_keys(fed, "NL-POL").signing

        def edit(data: dict[str, list[dict[str, object]]]) -> None:
            data["agencies"][0]["revoked"] = [key.key_id]

        path = _resigned(fed, tmp_path, edit)
        trust = load_trust_list(path, _pinned(fed), now=NOW)
        with pytest.raises(UntrustedSender, match="revoked"):
            trust.signing_key("NL-POL", key.key_id, NOW)

    def test_encryption_key_is_the_newest_valid(self, trust: TrustList) -> None:
        """Each agency has one valid encryption key; an unknown agency has none."""
        key = trust.encryption_key("BE-FPJ", NOW)
        assert key is not None and "encrypt" == key.use
        assert trust.encryption_key("XX-NOPE", NOW) is None


def _authorities(n: int) -> list[SigningKey]:
    return [generate_signing_key(KeyId(f"FED/sign/{i}")) for i in range(n)]


def _pins(keys: list[SigningKey]) -> dict[str, bytes]:
    return {k.key_id: k.public for k in keys}


def _signed_by(fed: Federation, tmp_path: Path, *signers: SigningKey) -> Path:
    """A copy of the sandbox list whose .sig holds one signature by each of ``signers``."""
    assert fed.trust_file is not None
    path = tmp_path / "trust.yaml"
    path.write_bytes(fed.trust_file.read_bytes())
    sig: bytes | None = None
    for signer in signers:
        sig = sign_trust_list(path.read_bytes(), signer, sig)
    assert sig is not None
    Path(f"{path}.sig").write_bytes(sig)
    return path


class TestThreshold:
    """k of n authority keys: k valid signatures by distinct pinned keys are needed."""

    def test_two_of_three_pass_with_two_signatures(self, fed: Federation, tmp_path: Path) -> None:
        """Two pinned authorities of three signed: a threshold of 2 is met."""
        a, b, c = _authorities(3)
        path = _signed_by(fed, tmp_path, a, c)
        trust = load_trust_list(path, _pins([a, b, c]), now=NOW, threshold=2)
        assert "fxgw-sandbox" == trust.federation

    def test_two_of_three_fail_with_one_signature(self, fed: Federation, tmp_path: Path) -> None:
        """One signature is not two; the error says how many were valid and needed."""
        a, b, c = _authorities(3)
        path = _signed_by(fed, tmp_path, b)
        with pytest.raises(TrustError, match=r"^.*1 valid signature\(s\).*2 needed") as info:
            load_trust_list(path, _pins([a, b, c]), now=NOW, threshold=2)
        assert f"{path}.sig" == info.value.file

    def test_two_signatures_by_the_same_key_count_once(
        self, fed: Federation, tmp_path: Path
    ) -> None:
        """The same key twice (also under a second pinned id) is one authority, not two."""
        a, b, c = _authorities(3)
        path = _signed_by(fed, tmp_path, a)
        entry = json.loads(Path(f"{path}.sig").read_bytes())["signatures"][0]
        twice = {
            "format": "fxgw-trust-sig-1",
            "signatures": [entry, entry, {**entry, "key_id": "FED/sign/alias"}],
        }
        Path(f"{path}.sig").write_text(json.dumps(twice))
        pins = {**_pins([a, b, c]), "FED/sign/alias": a.public}
        with pytest.raises(TrustError, match=r"1 valid signature\(s\).*2 needed"):
            load_trust_list(path, pins, now=NOW, threshold=2)

    def test_a_signature_by_an_unpinned_key_does_not_count(
        self, fed: Federation, tmp_path: Path
    ) -> None:
        """A valid signature by a key the node does not pin is named and not counted."""
        a, b, c = _authorities(3)
        outsider = generate_signing_key(KeyId("ROGUE/sign/1"))
        path = _signed_by(fed, tmp_path, a, outsider)
        with pytest.raises(TrustError, match=r"1 valid signature\(s\).*2 needed") as info:
            load_trust_list(path, _pins([a, b, c]), now=NOW, threshold=2)
        assert "'ROGUE/sign/1' is not a federation authority key pinned" in str(info.value)

    def test_an_altered_list_fails_whatever_the_count(
        self, fed: Federation, tmp_path: Path
    ) -> None:
        """Signatures over other bytes do not verify: 0 valid, named as an altered list."""
        a, b, c = _authorities(3)
        path = _signed_by(fed, tmp_path, a, b)
        path.write_bytes(path.read_bytes().replace(b"country: US", b"country: NL"))
        with pytest.raises(TrustError, match=r"0 valid signature.*does not match its signature"):
            load_trust_list(path, _pins([a, b, c]), now=NOW, threshold=2)

    def test_a_single_signature_file_of_the_first_format_still_loads(
        self, fed: Federation, tmp_path: Path
    ) -> None:
        """Today's fxgw-trust-sig-1 files (one signature) meet a threshold of 1."""
        (a,) = _authorities(1)
        path = _signed_by(fed, tmp_path, a)
        entry = json.loads(Path(f"{path}.sig").read_bytes())["signatures"][0]
        Path(f"{path}.sig").write_text(json.dumps({"format": "fxgw-trust-sig-1", **entry}))
        assert 1 == load_trust_list(path, _pins([a]), now=NOW).version
        with pytest.raises(TrustError, match=r"1 valid signature\(s\).*2 needed"):
            load_trust_list(path, _pins([a, *_authorities(2)[1:]]), now=NOW, threshold=2)

    def test_a_node_of_the_earlier_version_reads_a_file_of_several_signatures(
        self, fed: Federation, tmp_path: Path
    ) -> None:
        """The top-level key_id and signature, all an earlier node reads, are the first
        signer's and verify; the list holds every signature."""
        a, b = _authorities(2)
        path = _signed_by(fed, tmp_path, a, b)
        document = json.loads(Path(f"{path}.sig").read_bytes())
        assert ("fxgw-trust-sig-1", a.key_id) == (document["format"], document["key_id"])
        nacl.signing.VerifyKey(a.public).verify(
            signing_input(path.read_bytes()), base64.b64decode(document["signature"])
        )
        assert [a.key_id, b.key_id] == [e["key_id"] for e in document["signatures"]]

    def test_trust_sign_adds_a_signature_instead_of_replacing(
        self, fed: Federation, tmp_path: Path
    ) -> None:
        """``fxgw trust sign`` by a second authority keeps the first one's signature; signing the
        next version of the file starts afresh."""
        a, b = _authorities(2)
        path = tmp_path / "trust.yaml"
        assert fed.trust_file is not None
        path.write_bytes(fed.trust_file.read_bytes())
        for key in (a, b):
            write_key_file(tmp_path / f"{key.key_id.replace('/', '_')}.key", key, owner="FED")
            assert 0 == main(
                [
                    "trust",
                    "sign",
                    "--key",
                    str(tmp_path / f"{key.key_id.replace('/', '_')}.key"),
                    str(path),
                ]
            )
        assert ("FED/sign/0", "FED/sign/1") == signature_key_ids(Path(f"{path}.sig").read_bytes())
        assert load_trust_list(path, _pins([a, b]), now=NOW, threshold=2)
        path.write_bytes(path.read_bytes().replace(b"version: 1", b"version: 2"))
        assert 0 == main(["trust", "sign", "--key", str(tmp_path / "FED_sign_1.key"), str(path)])
        assert ("FED/sign/1",) == signature_key_ids(Path(f"{path}.sig").read_bytes())

    def test_node_config_refuses_a_threshold_above_its_pinned_keys(self, fed: Federation) -> None:
        """threshold 2 with one pinned key could never be met: the config is refused."""
        config = fed.config("NL-POL")
        data = yaml.safe_load(config.read_text())
        data["trust"]["threshold"] = 2
        config.with_name("k.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match="threshold 2 is more than the 1 distinct"):
            load_config(config.with_name("k.yaml"))
