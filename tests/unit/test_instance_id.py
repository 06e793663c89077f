"""node.yaml's instance_id: the static group member id each replica of a node joins with."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.node.config import default_instance_id, load_config
from tests.unit.test_config import BASE


def _write(tmp_path: Path, text: str, name: str = "node") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    path = folder / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class TestInstanceId:
    """Explicit, default, and refused values of instance_id."""

    def test_explicit_value_is_kept(self, tmp_path: Path) -> None:
        """An instance_id in node.yaml is used as it is."""
        config = load_config(_write(tmp_path, BASE + "instance_id: nl-pol-gw-0\n"))
        assert "nl-pol-gw-0" == config.member_id

    def test_default_is_stable_across_loads(self, tmp_path: Path) -> None:
        """Loading the same file twice (a restart) gives the same id, starting with the agency."""
        path = _write(tmp_path, BASE)
        first, second = load_config(path).member_id, load_config(path).member_id
        assert first == second
        assert first.startswith("NL-POL.")

    def test_default_differs_per_state_folder(self, tmp_path: Path) -> None:
        """Two replicas on one host, each with its own state folder, get different ids."""
        one = load_config(_write(tmp_path, BASE, "replica-1")).member_id
        two = load_config(_write(tmp_path, BASE, "replica-2")).member_id
        assert one != two

    def test_default_differs_per_host(self, tmp_path: Path) -> None:
        """The same state path on two hosts gives two ids."""
        assert default_instance_id("NL-POL", tmp_path, "gw-a") != default_instance_id(
            "NL-POL", tmp_path, "gw-b"
        )

    def test_default_uses_only_characters_kafka_allows(self, tmp_path: Path) -> None:
        """A host name with other characters is made fit for a group.instance.id."""
        found = default_instance_id("NL-POL", tmp_path, "gw 1/ü")
        assert found.startswith("NL-POL.gw-1--.")
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in found)

    @pytest.mark.parametrize("value", ["..", ".", "a/b", "a b", "x" * 201, '""'])
    def test_refused_values(self, tmp_path: Path, value: str) -> None:
        """Values Kafka would refuse as a group.instance.id are refused at load, with the line."""
        path = _write(tmp_path, BASE + f"instance_id: '{value}'\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "instance_id" in str(info.value)
        assert f"{path}:" in str(info.value)
