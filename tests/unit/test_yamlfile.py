"""Config files are read strictly: a key twice, an alias or a bomb is an error at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway._yamlfile import read_yaml
from gateway.crypto.trust import authority_keys, load_trust_list
from gateway.dev.sandbox import Federation
from gateway.errors import ConfigError, TrustError
from gateway.node.config import load_config
from tests.unit.conftest import NOW

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(20)
)


def test_duplicate_key_names_its_line(tmp_path: Path) -> None:
    """YAML would keep the last of two equal keys silently; a policy author must be told."""
    path = tmp_path / "p.yaml"
    path.write_text("rules:\n  id: a\n  to: x\n  id: b\n")
    with pytest.raises(ConfigError, match="key 'id' appears twice") as info:
        read_yaml(path, "policy file")
    assert 4 == info.value.line
    assert str(path) == info.value.file


def test_alias_is_refused(tmp_path: Path) -> None:
    """Anchors and aliases are refused before any expansion, naming the anchored value."""
    path = tmp_path / "p.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError, match="aliases") as info:
        read_yaml(path, "policy file")
    assert 1 == info.value.line


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A document nested beyond the interpreter's stack is a ConfigError."""
    path = tmp_path / "p.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError):
        read_yaml(path, "policy file")


def test_trust_list_signature_is_checked_before_parsing(fed: Federation, tmp_path: Path) -> None:
    """A forged trust list is refused on its signature: its YAML is never parsed."""
    assert fed.trust_file is not None
    forged = tmp_path / "trust.yaml"
    forged.write_text(BOMB)
    Path(f"{forged}.sig").write_bytes(Path(f"{fed.trust_file}.sig").read_bytes())
    pinned = authority_keys(load_config(fed.config("NL-POL")).trust.pinned)
    with pytest.raises(TrustError, match="does not match its signature"):
        load_trust_list(forged, pinned, now=NOW)
