"""The trust list: signed by the authority, fresh, not rolled back, and exact about keys."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from gateway.crypto.trust import TrustList, authority_keys, load_trust_list, sign_trust_list
from gateway.dev.sandbox import Federation
from gateway.errors import TrustError, UntrustedSender
from gateway.node.config import load_config
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
