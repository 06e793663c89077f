"""Config files are read strictly: a key twice, an alias or a bomb is an error at its line."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from gateway._yamlfile import model_keys, read_yaml, validate_all
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


class _Inner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    country: str


class _Outer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    purpose: str
    inner: _Inner


@pytest.mark.parametrize("hints", [False, True])
def test_hints_only_when_asked(tmp_path: Path, hints: bool) -> None:
    """With hints (policy files) a misspelt key gets a "did you mean" from every model inside
    and an unquoted NO a reminder to quote it; without (config, trust list) the messages stay
    as they were. Every problem is given, each at its line."""
    path = tmp_path / "f.yaml"
    path.write_text("purpse: x\ninner:\n  country: NO\n")
    document = read_yaml(path, "file")
    model, problems = validate_all(document, _Outer, "file", ConfigError, hints=hints)
    assert model is None
    lines: dict[int | None, str] = {}
    for problem in problems:
        lines[problem.line] = lines.get(problem.line, "") + problem.message
    assert {1, 3} <= set(lines)
    assert hints == ("did you mean 'purpose'?" in lines[1])
    assert hints == ("put the value in quotes" in lines[3])
    assert {"country", "inner", "purpose"} == model_keys(_Outer)
