"""Contracts of several versions, built in a temporary folder from the repository's version 1.0.

Version 1.1 is the evolution the federation's tests use: one optional field added to
``fxgw.Firearm`` (``barrel_serial_number``) and one to ``fxgw.SeizureEvent``
(``linked_case_references``), both with a null default, so 1.0 and 1.1 read each other.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from gateway.contract.schemas import SchemaRegistry
from gateway.node.config import DEFAULT_SCHEMAS

Edit = Callable[[dict[str, object]], None]
"""Changes one schema file's JSON in place."""

V1_0 = DEFAULT_SCHEMAS / "1.0"


def optional_field(name: str, kind: object = "string") -> Edit:
    """Add a nullable field with a null default."""

    def edit(schema: dict[str, object]) -> None:
        fields = schema["fields"]
        assert isinstance(fields, list)
        fields.append({"name": name, "type": ["null", kind], "default": None})

    return edit


def without_field(name: str) -> Edit:
    def edit(schema: dict[str, object]) -> None:
        fields = schema["fields"]
        assert isinstance(fields, list)
        schema["fields"] = [f for f in fields if f["name"] != name]

    return edit


def retyped(name: str, kind: object) -> Edit:
    """Give field ``name`` another type (and no default)."""

    def edit(schema: dict[str, object]) -> None:
        fields = schema["fields"]
        assert isinstance(fields, list)
        for field in fields:
            if field["name"] == name:
                field["type"] = kind
                field.pop("default", None)

    return edit


V1_1_EDITS: dict[str, list[Edit]] = {
    "fxgw.Firearm": [optional_field("barrel_serial_number")],
    "fxgw.SeizureEvent": [
        optional_field("linked_case_references", {"type": "array", "items": "string"})
    ],
}


def version_folder(folder: Path, edits: dict[str, list[Edit]]) -> Path:
    """Version 1.0's files in ``folder``, with ``edits`` applied per type name."""
    folder.mkdir(parents=True)
    for source in V1_0.glob("*.avsc"):
        schema = json.loads(source.read_text(encoding="utf-8"))
        for edit in edits.get(source.stem, []):
            edit(schema)
        (folder / source.name).write_text(json.dumps(schema, indent=2), encoding="utf-8")
    return folder


def fingerprints(folder: Path) -> dict[str, str]:
    return {s.full_name: s.fingerprint.hex() for s in SchemaRegistry.load(folder)}


def definitions(folder: Path) -> dict[str, str]:
    return {s.full_name: s.definition_digest for s in SchemaRegistry.load(folder)}


def contract(
    root: Path, versions: dict[str, dict[str, list[Edit]]], *, draft: bool = False
) -> Path:
    """A contract in ``root`` with a folder per version (1.0's files with that version's
    edits) and its manifest; with ``draft``, the newest version records no fingerprints."""
    lines = ["versions:"]
    labels = list(versions)
    for label, edits in versions.items():
        folder = version_folder(root / label, edits)
        lines.append(f'  - version: "{label}"')
        if draft and label == labels[-1]:
            continue
        lines.append("    fingerprints:")
        lines.extend(f"      {n}: {f}" for n, f in sorted(fingerprints(folder).items()))
        lines.append("    definitions:")
        lines.extend(f"      {n}: {d}" for n, d in sorted(definitions(folder).items()))
    (root / "contract.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def copy_released(root: Path) -> Path:
    """The repository's contract, copied to ``root``."""
    shutil.copytree(DEFAULT_SCHEMAS, root)
    return root


def wire_format(number: int) -> Edit:
    """Declare the envelope's or the receipt's format version (``"fxgw.format"``)."""

    def edit(schema: dict[str, object]) -> None:
        schema["fxgw.format"] = number

    return edit


V1_2_EDITS: dict[str, list[Edit]] = {
    **V1_1_EDITS,
    "fxgw.EnvelopeHeader": [optional_field("trace_context")],
    "fxgw.Envelope": [wire_format(2)],
    "fxgw.Receipt": [optional_field("note"), wire_format(2)],
}
"""1.1 plus new envelope and receipt formats (2): an optional field more in each."""
