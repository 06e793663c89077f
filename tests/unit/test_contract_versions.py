"""The contract's versions (manifest, frozen released versions) and the compatibility gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.contract.compat import check, roots
from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import Contract
from gateway.errors import SchemaError, UnknownEventType
from gateway.node.config import DEFAULT_SCHEMAS
from tests.contracts import (
    V1_1_EDITS,
    contract,
    copy_released,
    optional_field,
    retyped,
    without_field,
)

DATA = Path(__file__).resolve().parents[1] / "data"
PINNED = json.loads((DATA / "schema_fingerprints.json").read_text())["fingerprints"]


class TestManifest:
    """Loading the versions a manifest lists."""

    def test_the_repositorys_contract_is_versions_1_0_to_1_2_released(self) -> None:
        """schemas/avro holds versions 1.0, 1.1 and 1.2, released; 1.0 and 1.1 with the same
        domain types (the known answers); 1.1 brings envelope and receipt format 2, 1.2 the
        trace workflow and hit/no-hit queries."""
        loaded = Contract.load(DEFAULT_SCHEMAS)
        assert ["1.0", "1.1", "1.2"] == [v.label for v in loaded]
        assert all(v.released and 1 == v.major for v in loaded)
        assert PINNED
        v10, v11, _ = (v.registry for v in loaded)
        assert PINNED == {n: v10.get(n).fingerprint.hex() for n in PINNED}
        assert v10.event_types == v11.event_types
        assert all(v10.get(n).fingerprint == v11.get(n).fingerprint for n in v10.event_types)
        assert {1: "1.0", 2: "1.2"} == {
            f: v.label for f, v in loaded.formats("fxgw.Envelope").items()
        }
        assert {1: "1.0", 2: "1.2"} == {
            f: v.label for f, v in loaded.formats("fxgw.Receipt").items()
        }

    def test_an_edited_released_version_is_refused(self, tmp_path: Path) -> None:
        """Changing a file of a released version names the type, the manifest line and the
        way out (a new version)."""
        root = copy_released(tmp_path / "c")
        path = root / "1.0" / "fxgw.Firearm.avsc"
        schema = json.loads(path.read_text())
        optional_field("barrel_serial_number")(schema)
        path.write_text(json.dumps(schema))
        with pytest.raises(SchemaError) as info:
            Contract.load(root)
        error = info.value
        assert str(root / "contract.yaml") == error.file
        manifest_lines = (root / "contract.yaml").read_text().splitlines()
        assert error.line is not None and "fxgw.Firearm:" in manifest_lines[error.line - 1]
        assert "released version 1.0" in str(error) and "new version" in str(error)

    @pytest.mark.parametrize(
        "change",
        ["default", "alias", "format", "order"],
    )
    def test_what_the_fingerprint_leaves_out_is_frozen_too(
        self, tmp_path: Path, change: str
    ) -> None:
        """A default, an alias, an fxgw attribute or a sort order changed in a released
        version leaves the fingerprint as it was, but changes how records are read or framed:
        refused by the definition digest, naming the type and its manifest line."""
        root = copy_released(tmp_path / "c")
        name = {"format": "fxgw.Receipt", "default": "fxgw.FirearmType"}.get(change, "fxgw.Firearm")
        path = root / "1.0" / f"{name}.avsc"
        schema = json.loads(path.read_text())
        if change == "default":  # what a reader takes for a symbol it does not know
            assert "OTHER" == schema["default"]
            schema["default"] = "UNKNOWN"
        elif change == "alias":
            schema["fields"][1]["aliases"] = ["old_name"]
        elif change == "format":
            schema["fxgw.format"] = 2
        else:
            schema["fields"][0]["order"] = "descending"
        path.write_text(json.dumps(schema))
        with pytest.raises(SchemaError, match="definition digest") as info:
            Contract.load(root)
        error = info.value
        manifest_lines = (root / "contract.yaml").read_text().splitlines()
        assert error.line is not None and f"{name}:" in manifest_lines[error.line - 1]
        assert "definitions:" in "\n".join(manifest_lines[: error.line])
        assert "released version 1.0" in str(error)

    def test_docs_of_a_released_version_may_still_be_improved(self, tmp_path: Path) -> None:
        """Doc strings take no part in reading or exchanging: editing them is allowed."""
        root = copy_released(tmp_path / "c")
        path = root / "1.0" / "fxgw.Firearm.avsc"
        schema = json.loads(path.read_text())
        schema["doc"] = "A firearm, as seized or traced (clearer wording)."
        schema["fields"][0]["doc"] = "An id unique within the event."
        path.write_text(json.dumps(schema, indent=4))
        assert Contract.load(root).version("1.0").released

    def test_a_released_version_without_definitions_is_refused(self, tmp_path: Path) -> None:
        """Fingerprints alone do not freeze a version: the manifest must record both."""
        root = copy_released(tmp_path / "c")
        manifest = root / "contract.yaml"
        text = manifest.read_text()
        manifest.write_text(text[: text.index("    definitions:")])
        with pytest.raises(SchemaError, match="records no definitions"):
            Contract.load(root)

    def test_two_versions_and_a_draft(self, tmp_path: Path) -> None:
        """The newest version may be a draft; each keeps its own schemas."""
        root = contract(tmp_path / "c", {"1.0": {}, "1.1": V1_1_EDITS}, draft=True)
        loaded = Contract.load(root)
        assert [("1.0", True), ("1.1", False)] == [(v.label, v.released) for v in loaded]
        old, new = loaded.version("1.0").registry, loaded.version("1.1").registry
        assert "barrel_serial_number" not in {f.path for f in old.get("fxgw.Firearm").fields}
        assert "barrel_serial_number" in {f.name for f in new.get("fxgw.Firearm").fields}

    def test_fingerprints_are_found_in_any_version(self, tmp_path: Path) -> None:
        """A writer's fingerprint finds its schema in whichever version has it; an unchanged
        type is found in the oldest."""
        loaded = Contract.load(contract(tmp_path / "c", {"1.0": {}, "1.1": V1_1_EDITS}))
        seizure = loaded.version("1.1").registry.get("fxgw.SeizureEvent")
        version, found = loaded.by_fingerprint(seizure.fingerprint)
        assert ("1.1", seizure.fingerprint) == (version.label, found.fingerprint)
        receipt = loaded.version("1.1").registry.get("fxgw.Receipt")
        assert "1.0" == loaded.by_fingerprint(receipt.fingerprint)[0].label
        with pytest.raises(UnknownEventType):
            loaded.by_fingerprint(b"\x00" * 32)

    @pytest.mark.parametrize(
        ("manifest", "expected"),
        [
            ('versions:\n  - version: "1"\n', "not MAJOR.MINOR"),
            ('versions:\n  - version: "1.1"\n  - version: "1.0"\n', "oldest first"),
            ('versions:\n  - version: "1.0"\n  - version: "1.1"\n', "only the newest"),
            ("versions: []\n", "versions"),
        ],
    )
    def test_a_broken_manifest_names_file_and_line(
        self, tmp_path: Path, manifest: str, expected: str
    ) -> None:
        root = contract(tmp_path / "c", {"1.0": {}, "1.1": V1_1_EDITS})
        (root / "contract.yaml").write_text(manifest)
        with pytest.raises(SchemaError) as info:
            Contract.load(root)
        assert expected in str(info.value)
        assert str(root / "contract.yaml") == info.value.file

    def test_a_folder_without_manifest_is_one_draft_version(self) -> None:
        loaded = Contract.load(DEFAULT_SCHEMAS / "1.0")
        assert [("1.0", False)] == [(v.label, v.released) for v in loaded]
        with pytest.raises(SchemaError, match=r"no version 2\.0"):
            loaded.version("2.0")


class TestCompatibility:
    """Backward and forward, per type that travels, named by field path."""

    @pytest.fixture
    def v1(self) -> SchemaRegistry:
        return SchemaRegistry.load(DEFAULT_SCHEMAS / "1.0")

    def test_the_types_that_travel(self, v1: SchemaRegistry) -> None:
        assert (
            "fxgw.Envelope",
            "fxgw.Receipt",
            "fxgw.SeizureEvent",
            "fxgw.TraceRequest",
            "fxgw.TraceResponse",
        ) == roots(v1)

    def test_added_optional_fields_are_compatible_both_ways(
        self, tmp_path: Path, v1: SchemaRegistry
    ) -> None:
        root = contract(tmp_path / "c", {"1.0": {}, "1.1": V1_1_EDITS})
        reports = check(Contract.load(root).newest.registry, v1)
        assert reports and all(r.compatible for r in reports)

    def test_a_removed_required_field_is_named(self, tmp_path: Path, v1: SchemaRegistry) -> None:
        """1.0 cannot read 1.1's firearms without item_id (it has no default there)."""
        root = contract(
            tmp_path / "c", {"1.0": {}, "1.1": {"fxgw.Firearm": [without_field("item_id")]}}
        )
        reports = {r.name: r for r in check(Contract.load(root).newest.registry, v1)}
        seizure = reports["fxgw.SeizureEvent"]
        assert () == seizure.backward
        assert ["firearms[].item_id"] == [p.path for p in seizure.forward]
        assert "no default" in seizure.forward[0].reason
        assert ["firearm.item_id"] == [p.path for p in reports["fxgw.TraceRequest"].forward]
        assert reports["fxgw.Envelope"].compatible and reports["fxgw.Receipt"].compatible

    def test_a_changed_type_is_named_both_ways(self, tmp_path: Path, v1: SchemaRegistry) -> None:
        root = contract(
            tmp_path / "c",
            {"1.0": {}, "1.1": {"fxgw.Firearm": [retyped("calibre", ["null", "int"])]}},
        )
        seizure = {r.name: r for r in check(Contract.load(root).newest.registry, v1)}[
            "fxgw.SeizureEvent"
        ]
        assert {"firearms[].calibre"} == {p.path for p in seizure.backward}
        assert {"firearms[].calibre"} == {p.path for p in seizure.forward}
        assert "string" in seizure.backward[0].reason


class TestSchemaCheckCommand:
    """``fxgw schema check --against``: the gate CI runs."""

    def test_the_repositorys_contract_passes(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert 0 == main(["schema", "check", "--against", "all"])
        out = capsys.readouterr().out
        assert "working contract: 1.2" in out
        assert "against 1.0" in out and "compatible" in out

    def test_a_compatible_minor_version_passes(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = contract(tmp_path / "c", {"1.0": {}, "1.1": V1_1_EDITS}, draft=True)
        assert 0 == main(["schema", "check", str(root), "--against", "all"])
        out = capsys.readouterr().out
        assert "against 1.0" in out and "compatible" in out
        # the draft's fingerprints and definitions, ready to paste into the manifest: pasted,
        # the draft is a released version that loads
        block = out.split("to record in the manifest when it is released:\n", 1)[1]
        recorded = [line for line in block.splitlines() if line.startswith("    ")]
        assert "    fingerprints:" in recorded and "    definitions:" in recorded
        manifest = root / "contract.yaml"
        manifest.write_text(manifest.read_text() + "\n".join(recorded) + "\n")
        assert Contract.load(root).version("1.1").released

    @pytest.mark.parametrize(
        ("edit", "field"),
        [
            (without_field("item_id"), "firearms[].item_id"),
            (retyped("calibre", "int"), "firearms[].calibre"),
        ],
    )
    def test_a_breaking_change_fails_naming_the_field(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, field: str
    ) -> None:
        root = contract(tmp_path / "c", {"1.0": {}, "1.1": {"fxgw.Firearm": [edit]}}, draft=True)  # type: ignore[list-item]
        assert 1 == main(["schema", "check", str(root), "--against", "1.0"])
        out = capsys.readouterr().out
        assert f"forward: {field}:" in out
        assert "INCOMPATIBLE" in out and "new major version" in out

    def test_a_new_major_version_may_break(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = contract(
            tmp_path / "c", {"1.0": {}, "2.0": {"fxgw.Firearm": [without_field("item_id")]}}
        )
        assert 0 == main(["schema", "check", str(root), "--against", "all"])
        out = capsys.readouterr().out
        assert "forward: firearms[].item_id" in out
        assert "starts a new major version" in out

    def test_against_a_folder(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--against DIR compares with a folder of .avsc files (say, another checkout)."""
        root = contract(
            tmp_path / "c", {"1.0": {}, "1.1": {"fxgw.Firearm": [without_field("item_id")]}}
        )
        assert 1 == main(["schema", "check", str(root), "--against", str(DEFAULT_SCHEMAS / "1.0")])
        assert "firearms[].item_id" in capsys.readouterr().out


def test_a_flat_folder_from_before_versions_is_version_1_0(tmp_path: Path) -> None:
    """A configuration that still points at a flat folder of .avsc files (the layout before
    versions) loads it as version 1.0, which the trust list's default names."""
    flat = tmp_path / "avro"
    flat.mkdir()
    for source in (DEFAULT_SCHEMAS / "1.0").glob("*.avsc"):
        (flat / source.name).write_bytes(source.read_bytes())
    loaded = Contract.load(flat)
    assert [("1.0", False)] == [(v.label, v.released) for v in loaded]
    assert 1 == loaded.newest.major


def test_the_gate_walks_a_recursive_type(tmp_path: Path) -> None:
    """A record that holds itself (a list of linked items) is checked without recursing for
    ever, and a change inside it is still named."""

    def node(extra: list[dict[str, object]]) -> dict[str, object]:
        fields: list[dict[str, object]] = [
            {"name": "id", "type": "string"},
            {"name": "next", "type": ["null", "t.Node"], "default": None},
            *extra,
        ]
        return {"type": "record", "name": "Node", "namespace": "t", "fields": fields}

    old = SchemaRegistry.from_definitions({"t.Node": node([])})
    new = SchemaRegistry.from_definitions({"t.Node": node([{"name": "n", "type": "int"}])})
    [report] = check(new, old)
    assert ["n"] == [p.path for p in report.backward] and () == report.forward
    [same] = check(old, old)
    assert same.compatible
