"""Tests of gateway.contract.schemas: the federation's Avro contract."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import math
import struct
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract import _avro
from gateway.contract.compat import check
from gateway.contract.schemas import (
    FieldNotFound,
    SchemaRegistry,
    parsing_canonical_form,
)
from gateway.errors import RecordInvalid, SchemaError, UnknownEventType
from tests.strategies import records_for

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas" / "avro" / "1.0"
DATA = ROOT / "tests" / "data"
REGISTRY = SchemaRegistry.load(SCHEMA_DIR)

EVENT_TYPES = ("fxgw.SeizureEvent", "fxgw.TraceRequest", "fxgw.TraceResponse")
# The domain part of the contract (the envelope's files belong to the envelope's tests).
DOMAIN_TYPES = (
    "fxgw.AgencyRef",
    "fxgw.Location",
    "fxgw.Person",
    "fxgw.PersonRole",
    "fxgw.Firearm",
    "fxgw.FirearmType",
    "fxgw.SeizureEvent",
    "fxgw.TracePriority",
    "fxgw.TraceRequest",
    "fxgw.TraceOutcome",
    "fxgw.Transfer",
    "fxgw.TraceResponse",
    "fxgw.ReceiptOutcome",
    "fxgw.Receipt",
)
DOMAIN_RECORDS = tuple(name for name in DOMAIN_TYPES if REGISTRY.get(name).kind == "record")


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


CANONICAL_VECTORS = _load_json(DATA / "avro_canonical_form.json")["vectors"]
SHA256_VECTORS = _load_json(DATA / "avro_sha256_fingerprints.json")["vectors"]
PINNED = _load_json(DATA / "schema_fingerprints.json")["fingerprints"]
SAMPLES = sorted((DATA / "events").glob("*.json"))

UTC = dt.UTC
REPORTED = dt.datetime(2026, 11, 20, 8, 42, 17, 250000, tzinfo=UTC)


def _rabin(data: bytes) -> int:
    """CRC-64-AVRO, the spec's reference algorithm, as a signed 64-bit integer like Java's."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp - 2**64 if fp >= 2**63 else fp


def _seizure(**changes: object) -> dict[str, Any]:
    """A small valid seizure in the Python form."""
    record: dict[str, Any] = {
        "event_id": "5f0c6a1e-8d4b-4a57-9a51-2d0f3c9b7e10",
        "reported_at": REPORTED,
        "reporting_agency": {"agency_id": "NL-POL", "country": "NL", "name": None},
        "firearms": [
            {"item_id": "1", "calibre": "9x19mm"},
            {"item_id": "2", "calibre": ".38 Special"},
            {"item_id": "3", "calibre": "12 GA", "firearm_type": "SHOTGUN"},
        ],
        "persons": [{"role": "POSSESSOR", "birth_date": dt.date(1994, 3, 8)}],
    }
    record.update(changes)
    return record


def _write(folder: Path, name: str, definition: object) -> Path:
    path = folder / name
    path.write_text(json.dumps(definition, indent=2), encoding="utf-8")
    return path


def _record(name: str, fields: list[dict[str, Any]], **extra: object) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": fields, **extra}


def _registry(*definitions: dict[str, Any]) -> SchemaRegistry:
    return SchemaRegistry.from_definitions({str(d["name"]): d for d in definitions})


class TestLoad:
    """Loading the real contract folder."""

    def test_lists_the_event_types(self) -> None:
        """The three records with "fxgw.event": true are the event types, sorted."""
        assert EVENT_TYPES == REGISTRY.event_types

    def test_loads_every_file_including_other_teams(self) -> None:
        """Every .avsc of the folder gives a schema, whatever the file order."""
        expected = {path.name.removesuffix(".avsc") for path in SCHEMA_DIR.glob("*.avsc")}
        assert expected <= set(REGISTRY.names)

    def test_receipt_is_not_an_event(self) -> None:
        """The receipt is part of the contract but not a domain event."""
        assert (True, False) == ("fxgw.Receipt" in REGISTRY, REGISTRY.get("fxgw.Receipt").is_event)

    @pytest.mark.parametrize("name", DOMAIN_TYPES)
    def test_every_domain_type_and_field_has_a_doc(self, name: str) -> None:
        """Every record, enum and field of the domain types carries a doc."""
        schema = REGISTRY.get(name)
        undocumented = [info.path for info in schema.iter_fields() if not info.doc]
        assert (True, []) == (bool(schema.doc), undocumented)

    @pytest.mark.parametrize("name", DOMAIN_RECORDS)
    def test_nullable_fields_are_null_first_with_null_default(self, name: str) -> None:
        """Every field a policy may withhold is ["null", T] with default null, as the rule says."""
        definition = _load_json(SCHEMA_DIR / f"{name}.avsc")
        wrong = [
            field["name"]
            for field in definition["fields"]
            if isinstance(field["type"], list)
            and not (field["type"][0] == "null" and "default" in field and field["default"] is None)
        ]
        assert [] == wrong

    def test_unknown_name_raises_unknown_event_type(self) -> None:
        """get() of a name the contract lacks is a peer error with its reason code."""
        with pytest.raises(UnknownEventType) as caught:
            REGISTRY.get("fxgw.GunRunning")
        assert "unknown_event_type" == caught.value.reason

    def test_encode_of_a_non_record_type_is_refused(self) -> None:
        """Only record types are encoded; naming an enum is an unknown event type."""
        with pytest.raises(UnknownEventType, match="not a record"):
            REGISTRY.encode("fxgw.PersonRole", {})

    def test_references_resolve_in_any_file_order(self, tmp_path: Path) -> None:
        """A file may refer to a type defined in a file that sorts after it, and vice versa."""
        _write(tmp_path, "t.A.avsc", _record("A", [{"name": "b", "type": "t.B"}]))
        _write(tmp_path, "t.B.avsc", _record("B", [{"name": "c", "type": "C"}]))
        _write(
            tmp_path, "t.C.avsc", {"type": "enum", "name": "C", "namespace": "t", "symbols": ["X"]}
        )
        registry = SchemaRegistry.load(tmp_path)
        assert ("t.A", "t.B", "t.C") == registry.names

    def test_inline_named_types_get_schemas(self, tmp_path: Path) -> None:
        """A named type defined inside another file's record is a schema of its own."""
        inner = {"type": "enum", "name": "Colour", "symbols": ["RED"]}
        _write(tmp_path, "t.A.avsc", _record("A", [{"name": "c", "type": inner}]))
        assert ("t.A", "t.Colour") == SchemaRegistry.load(tmp_path).names


class TestLoadErrors:
    """A broken contract folder is refused with the file, the line and what is wrong."""

    def test_invalid_json_names_file_and_line(self, tmp_path: Path) -> None:
        """A JSON syntax error gives the file and the line of the error."""
        path = tmp_path / "t.A.avsc"
        path.write_text('{\n  "type": "record",\n  "name": "A"\n  "fields": []\n}\n')
        with pytest.raises(SchemaError) as caught:
            SchemaRegistry.load(tmp_path)
        assert (str(path), 4) == (caught.value.file, caught.value.line)
        assert "invalid JSON" in str(caught.value)

    def test_unknown_reference_names_file_line_and_suggestion(self, tmp_path: Path) -> None:
        """A reference to an undefined type names it, where it is, and the closest name."""
        _write(tmp_path, "t.Gun.avsc", _record("Gun", [{"name": "id", "type": "string"}]))
        path = _write(
            tmp_path,
            "t.Seizure.avsc",
            _record("Seizure", [{"name": "id", "type": "string"}, {"name": "g", "type": "t.Gnu"}]),
        )
        with pytest.raises(SchemaError) as caught:
            SchemaRegistry.load(tmp_path)
        error = caught.value
        assert (str(path), 12) == (error.file, error.line)
        assert "t.Seizure, field g: unknown type 't.Gnu'" in error.message
        assert "did you mean 't.Gun'?" in error.message

    def test_broken_file_among_good_ones_is_named(self, tmp_path: Path) -> None:
        """In a copy of the real folder, one broken file is the one the error names."""
        for source in SCHEMA_DIR.glob("*.avsc"):
            (tmp_path / source.name).write_text(source.read_text(encoding="utf-8"))
        broken = tmp_path / "fxgw.Firearm.avsc"
        broken.write_text(broken.read_text().replace('"fxgw.FirearmType"', '"fxgw.FirearmKind"'))
        with pytest.raises(SchemaError) as caught:
            SchemaRegistry.load(tmp_path)
        assert str(broken) == caught.value.file
        assert "unknown type 'fxgw.FirearmKind'" in caught.value.message

    def test_file_name_must_be_the_full_name(self, tmp_path: Path) -> None:
        """A file called after another name is refused, with the name it should have."""
        path = _write(tmp_path, "Gun.avsc", _record("Gun", []))
        with pytest.raises(SchemaError, match=r"name the file t\.Gun\.avsc") as caught:
            SchemaRegistry.load(tmp_path)
        assert str(path) == caught.value.file

    def test_a_type_defined_twice_is_refused(self, tmp_path: Path) -> None:
        """Two definitions of one full name are an error naming both files."""
        inner = {"type": "enum", "name": "B", "symbols": ["X"]}
        _write(tmp_path, "t.A.avsc", _record("A", [{"name": "b", "type": inner}]))
        _write(
            tmp_path, "t.B.avsc", {"type": "enum", "name": "B", "namespace": "t", "symbols": ["Y"]}
        )
        with pytest.raises(SchemaError, match=r"t\.B is defined twice"):
            SchemaRegistry.load(tmp_path)

    def test_default_must_match_the_first_union_branch(self, tmp_path: Path) -> None:
        """["string", "null"] with default null is the classic mistake; it is named."""
        field = {"name": "serial", "type": ["string", "null"], "default": None}
        path = _write(tmp_path, "t.A.avsc", _record("A", [field]))
        with pytest.raises(SchemaError, match="field serial: invalid default") as caught:
            SchemaRegistry.load(tmp_path)
        assert (str(path), 7) == (caught.value.file, caught.value.line)

    @pytest.mark.parametrize(
        ("definition", "message"),
        [
            (_record("A", [{"name": "x"}]), "has no 'type'"),
            (_record("A", [{"name": "x", "type": "int"}] * 2), "x already in use"),
            (_record("A", [{"name": "x-y", "type": "int"}]), "must match"),
            (_record("A", [{"name": "x", "type": ["int", "int"]}]), "int type already in Union"),
            ({"type": "enum", "name": "A", "namespace": "t", "symbols": ["a b"]}, "symbol"),
            ({"type": "fixed", "name": "A", "namespace": "t", "size": -1}, "size"),
            (
                _record("A", [{"name": "x", "type": {"type": "bytes", "logicalType": "decimal"}}]),
                "'decimal' is not supported",
            ),
            ({"type": "array", "items": "int"}, "one named type"),
            (_record("A", [], **{"fxgw.event": "yes"}), "must be true or false"),
        ],
    )
    def test_invalid_definitions_are_explained(
        self, tmp_path: Path, definition: dict[str, object], message: str
    ) -> None:
        """Each kind of invalid definition gives a SchemaError that says what is wrong."""
        _write(tmp_path, "t.A.avsc", definition)
        with pytest.raises(SchemaError, match=message):
            SchemaRegistry.load(tmp_path)

    def test_missing_folder(self, tmp_path: Path) -> None:
        """A folder that does not exist is a SchemaError naming it."""
        with pytest.raises(SchemaError) as caught:
            SchemaRegistry.load(tmp_path / "nowhere")
        assert str(tmp_path / "nowhere") == caught.value.file

    def test_empty_folder(self, tmp_path: Path) -> None:
        """A folder without .avsc files is refused."""
        with pytest.raises(SchemaError, match=r"no \.avsc files"):
            SchemaRegistry.load(tmp_path)


class TestCanonicalForm:
    """Parsing Canonical Form, against the Avro project's vectors."""

    @pytest.mark.parametrize("vector", CANONICAL_VECTORS, ids=lambda v: v["id"])
    def test_known_answers(self, vector: dict[str, object]) -> None:
        """Our transformation gives the canonical form the Avro project publishes."""
        assert vector["canonical"] == parsing_canonical_form(json.loads(str(vector["input"])))

    @pytest.mark.parametrize(
        "vector", [v for v in CANONICAL_VECTORS if v["rabin"] is not None], ids=lambda v: v["id"]
    )
    def test_known_rabin_fingerprints(self, vector: dict[str, object]) -> None:
        """The canonical bytes give the published CRC-64-AVRO fingerprint."""
        canonical = parsing_canonical_form(json.loads(str(vector["input"])))
        assert vector["rabin"] == _rabin(canonical.encode("utf-8"))

    @pytest.mark.parametrize("name", REGISTRY.names)
    def test_agrees_with_fastavro(self, name: str) -> None:
        """fastavro's own canonical form of each resolved schema equals ours."""
        schema = REGISTRY.get(name)
        assert schema.canonical_form == _avro.canonical_form(json.loads(schema.canonical_form))

    def test_named_types_are_written_once(self) -> None:
        """A type used twice (AgencyRef in Person and in the event) is defined once, then named."""
        canonical = REGISTRY.get("fxgw.SeizureEvent").canonical_form
        counts = (
            canonical.count('{"name":"fxgw.AgencyRef","type":"record"'),
            canonical.count('"type":"fxgw.AgencyRef"'),
            canonical.count('"fxgw.Person"'),
        )
        assert (1, 0, 2) == counts

    def test_logical_types_and_docs_are_dropped(self) -> None:
        """Only parsing attributes remain: a date field is plain int."""
        definition = _record(
            "A", [{"name": "d", "type": {"type": "int", "logicalType": "date"}, "doc": "when"}]
        )
        expected = '{"name":"t.A","type":"record","fields":[{"name":"d","type":"int"}]}'
        assert expected == parsing_canonical_form(definition)

    def test_invalid_definition_raises_schema_error(self) -> None:
        """A definition with an unknown type name cannot be canonicalised."""
        with pytest.raises(SchemaError, match="strin"):
            parsing_canonical_form(_record("A", [{"name": "x", "type": "strin"}]))


class TestFingerprint:
    """SHA-256 of the canonical form: known answers and stability."""

    @pytest.mark.parametrize("vector", SHA256_VECTORS, ids=lambda v: v["id"])
    def test_known_answers(self, vector: dict[str, object]) -> None:
        """SHA-256 of our canonical form matches other Avro implementations."""
        canonical = parsing_canonical_form(json.loads(str(vector["schema"])))
        assert vector["sha256"] == hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @pytest.mark.parametrize("name", sorted(PINNED))
    def test_contract_fingerprints_are_pinned(self, name: str) -> None:
        """A change to the contract is deliberate: update tests/data/schema_fingerprints.json."""
        assert PINNED[name] == REGISTRY.get(name).fingerprint_hex

    @pytest.mark.parametrize("name", REGISTRY.names)
    def test_fingerprint_is_sha256_of_the_canonical_form(self, name: str) -> None:
        """fingerprint, fingerprint_hex and canonical_form agree."""
        schema = REGISTRY.get(name)
        digest = hashlib.sha256(schema.canonical_form.encode("utf-8")).digest()
        assert (digest, digest.hex()) == (schema.fingerprint, schema.fingerprint_hex)

    def test_reloading_gives_the_same_fingerprints(self) -> None:
        """Loading twice gives equal schemas and fingerprints."""
        again = SchemaRegistry.load(SCHEMA_DIR)
        assert [s.fingerprint for s in REGISTRY] == [s.fingerprint for s in again]

    def test_docs_whitespace_and_key_order_do_not_count(self, tmp_path: Path) -> None:
        """Reformatting a file and editing its docs keeps every fingerprint."""
        for source in SCHEMA_DIR.glob("*.avsc"):
            definition = json.loads(source.read_text(encoding="utf-8"))
            definition["doc"] = "reworded"
            reordered = dict(reversed(list(definition.items())))
            (tmp_path / source.name).write_text(json.dumps(reordered))
        again = SchemaRegistry.load(tmp_path)
        assert [s.fingerprint for s in REGISTRY] == [s.fingerprint for s in again]

    def test_a_change_to_a_shared_type_changes_the_events(self, tmp_path: Path) -> None:
        """Editing Firearm changes the fingerprint of every event that carries firearms."""
        for source in SCHEMA_DIR.glob("*.avsc"):
            (tmp_path / source.name).write_text(source.read_text(encoding="utf-8"))
        firearm = tmp_path / "fxgw.Firearm.avsc"
        firearm.write_text(firearm.read_text().replace('"calibre"', '"caliber"'))
        again = SchemaRegistry.load(tmp_path)
        changed = [
            n for n in EVENT_TYPES if again.get(n).fingerprint != REGISTRY.get(n).fingerprint
        ]
        assert list(EVENT_TYPES) == changed

    def test_by_fingerprint_finds_the_schema(self) -> None:
        """Every schema is found again by its fingerprint."""
        found = [REGISTRY.by_fingerprint(s.fingerprint).full_name for s in REGISTRY]
        assert list(REGISTRY.names) == found

    def test_unknown_fingerprint(self) -> None:
        """An unknown fingerprint is an unknown event type, with the fingerprint in hex."""
        with pytest.raises(UnknownEventType, match="ab" * 32):
            REGISTRY.by_fingerprint(b"\xab" * 32)


class TestFieldInfo:
    """Field descriptions as a policy engine walks them."""

    @pytest.mark.parametrize(
        ("path", "kind", "nullable"),
        [
            ("event_id", "string", False),
            ("reported_at", "timestamp-millis", False),
            ("recovery_date", "date", True),
            ("recovery_location", "record", True),
            ("recovery_location.latitude", "double", True),
            ("firearms", "array", False),
            ("firearms[].item_id", "string", False),
            ("firearms[].serial_number", "string", True),
            ("firearms[].firearm_type", "enum", True),
            ("firearms[].proof_marks", "array", True),
            ("persons[].role", "enum", False),
            ("persons[].birth_date", "date", True),
            ("persons[].agency.agency_id", "string", False),
            ("seizing_officer.agency.country", "string", False),
        ],
    )
    def test_paths_kinds_and_nullability(self, path: str, kind: str, nullable: bool) -> None:
        """Each path has the kind (logical type winning) and nullability of the schema."""
        info = REGISTRY.get("fxgw.SeizureEvent").field(path)
        assert (path, kind, nullable) == (info.path, info.kind, info.nullable)

    def test_array_of_records(self) -> None:
        """An array of records gives its item kind, type name and the item's fields."""
        info = REGISTRY.get("fxgw.SeizureEvent").field("firearms")
        assert ("record", "fxgw.Firearm", "firearms[].item_id") == (
            info.item_kind,
            info.type_name,
            info.children[0].path,
        )

    def test_enum_symbols(self) -> None:
        """An enum field lists its symbols."""
        info = REGISTRY.get("fxgw.TraceRequest").field("priority")
        assert ("ROUTINE", "URGENT") == info.symbols

    def test_iter_fields_is_depth_first(self) -> None:
        """Each field comes before its children, and children before the next sibling."""
        paths = [info.path for info in REGISTRY.get("fxgw.TraceResponse").iter_fields()]
        start = paths.index("responding_agency")
        expected = [
            "responding_agency",
            "responding_agency.agency_id",
            "responding_agency.country",
            "responding_agency.name",
            "request_event_id",
        ]
        assert expected == paths[start : start + 5]

    def test_unknown_path_is_a_key_error_with_a_suggestion(self) -> None:
        """field() of a missing path raises a KeyError that proposes the closest path."""
        with pytest.raises(KeyError) as caught:
            REGISTRY.get("fxgw.SeizureEvent").field("firearms[].serial")
        assert isinstance(caught.value, FieldNotFound)
        expected = (
            "fxgw.SeizureEvent has no field 'firearms[].serial'; "
            "did you mean 'firearms[].serial_number'?"
        )
        assert expected == str(caught.value)

    def test_enum_schema_has_no_fields(self) -> None:
        """A non-record schema has no fields."""
        assert ("enum", ()) == (
            REGISTRY.get("fxgw.TraceOutcome").kind,
            REGISTRY.get("fxgw.TraceOutcome").fields,
        )


@pytest.mark.parametrize("name", [*EVENT_TYPES, "fxgw.Receipt"])
class TestRoundTrip:
    """Every record type survives encode/decode and to_json/from_json."""

    @settings(max_examples=40, deadline=None)
    @given(data=st.data())
    def test_decode_of_encode(self, name: str, data: st.DataObject) -> None:
        """decode(encode(r)) == r for any valid record."""
        record = data.draw(records_for(REGISTRY.get(name)))
        assert record == REGISTRY.decode(name, REGISTRY.encode(name, record))

    @settings(max_examples=40, deadline=None)
    @given(data=st.data())
    def test_from_json_of_to_json(self, name: str, data: st.DataObject) -> None:
        """from_json(to_json(r)) == r, and to_json gives strict JSON."""
        record = data.draw(records_for(REGISTRY.get(name)))
        document = json.loads(json.dumps(REGISTRY.to_json(name, record), allow_nan=False))
        assert record == REGISTRY.from_json(name, document)

    @settings(max_examples=20, deadline=None)
    @given(data=st.data())
    def test_fastavro_agrees_the_records_are_valid(self, name: str, data: st.DataObject) -> None:
        """What the strategies generate, fastavro's own validation accepts too."""
        schema = REGISTRY.get(name)
        record = data.draw(records_for(schema))
        assert () == _avro.problems(schema.parsed, REGISTRY.validate(name, record))


class TestRecordErrors:
    """A non-conforming record names the first bad field and what was expected."""

    def test_wrong_type_nested_in_an_array(self) -> None:
        """An int calibre in the third firearm is reported at firearms[2].calibre."""
        record = _seizure()
        record["firearms"][2]["calibre"] = 12
        with pytest.raises(RecordInvalid) as caught:
            REGISTRY.encode("fxgw.SeizureEvent", record)
        assert ("firearms[2].calibre", "firearms[2].calibre: expected string or null, got int") == (
            caught.value.field,
            str(caught.value),
        )

    def test_missing_required_field(self) -> None:
        """A missing required field is named, nested too."""
        record = _seizure(reporting_agency={"country": "NL"})
        with pytest.raises(RecordInvalid, match="missing required field") as caught:
            REGISTRY.encode("fxgw.SeizureEvent", record)
        assert "reporting_agency.agency_id" == caught.value.field

    def test_missing_required_top_level_array(self) -> None:
        """The firearms list must be present even when empty."""
        record = _seizure()
        del record["firearms"]
        with pytest.raises(RecordInvalid) as caught:
            REGISTRY.encode("fxgw.SeizureEvent", record)
        assert "firearms: missing required field (expected array)" == str(caught.value)

    def test_unknown_field(self) -> None:
        """A key the schema does not define is an error naming it."""
        record = _seizure()
        record["persons"][0]["shoe_size"] = 44
        with pytest.raises(RecordInvalid, match="unknown field") as caught:
            REGISTRY.encode("fxgw.SeizureEvent", record)
        assert "persons[0].shoe_size" == caught.value.field

    def test_bad_enum_symbol(self) -> None:
        """A symbol the enum lacks lists the symbols, without echoing the value."""
        record = _seizure()
        record["firearms"][0]["firearm_type"] = "BAZOOKA"
        with pytest.raises(RecordInvalid, match="expected one of PISTOL, REVOLVER") as caught:
            REGISTRY.encode("fxgw.SeizureEvent", record)
        assert ("firearms[0].firearm_type", False) == (
            caught.value.field,
            "BAZOOKA" in str(caught.value),
        )

    @pytest.mark.parametrize(
        ("changes", "field", "message"),
        [
            ({"reported_at": dt.datetime(2026, 11, 20)}, "reported_at", "naive datetime"),
            ({"reported_at": REPORTED.replace(microsecond=1)}, "reported_at", "sub-millisecond"),
            ({"reported_at": 1795600800000}, "reported_at", "expected timestamp-millis, got int"),
            ({"event_id": None}, "event_id", "expected string, got null"),
            ({"exchange_flagged": 1}, "exchange_flagged", "expected boolean or null, got int"),
            ({"firearms": ({"item_id": "1"},)}, "firearms", "expected array, got tuple"),
            ({"recovery_date": "2026-11-19"}, "recovery_date", "expected date or null, got string"),
            (
                {"recovery_date": dt.datetime(2026, 11, 19, tzinfo=UTC)},
                "recovery_date",
                "expected date or null, got datetime",
            ),
            ({"recovery_location": "Rotterdam"}, "recovery_location", "record fxgw.Location"),
            (
                {"firearms": [{"item_id": "1", "barrel_length_mm": 2**31}]},
                "firearms[0].barrel_length_mm",
                "32-bit",
            ),
            (
                {"firearms": [{"item_id": "1", "barrel_length_mm": True}]},
                "firearms[0].barrel_length_mm",
                "got boolean",
            ),
            ({"case_reference": "\ud800"}, "case_reference", "lone surrogate"),
        ],
    )
    def test_type_errors_name_the_field(
        self, changes: dict[str, object], field: str, message: str
    ) -> None:
        """Each kind of wrong value is named by path, with the expectation."""
        with pytest.raises(RecordInvalid, match=message) as caught:
            REGISTRY.encode("fxgw.SeizureEvent", _seizure(**changes))
        assert field == caught.value.field

    def test_record_errors_are_schema_invalid_peer_errors(self) -> None:
        """The quarantine reason of an invalid record is schema_invalid."""
        with pytest.raises(RecordInvalid) as caught:
            REGISTRY.encode("fxgw.SeizureEvent", {})
        assert "schema_invalid" == caught.value.reason

    def test_defaults_are_filled_in(self) -> None:
        """Omitted nullable fields come back from decode as None."""
        encoded = REGISTRY.encode("fxgw.SeizureEvent", _seizure())
        decoded: dict[str, Any] = REGISTRY.decode("fxgw.SeizureEvent", encoded)
        assert (None, None) == (decoded["case_reference"], decoded["firearms"][0]["serial_number"])

    def test_validate_does_not_change_its_input(self) -> None:
        """validate() returns a completed copy and leaves the caller's record alone."""
        record = _seizure()
        before = copy.deepcopy(record)
        REGISTRY.validate("fxgw.SeizureEvent", record)
        assert before == record


class TestDecodeErrors:
    """Bytes that are not a record of the schema raise RecordInvalid, never anything else."""

    @pytest.mark.parametrize(
        ("union", "body", "error"),
        [
            (["string", "double"], b"\x02" + struct.pack("<d", math.nan), ValueError),
            (["null", "long", "double"], b"\x04" + struct.pack("<d", math.inf), ValueError),
            (["null", "int", "string"], b"\x02\x80\x80\x80\x80\x80\x01", RecordInvalid),
        ],
        ids=["nan-in-string-or-double", "inf-in-three-types", "int-beyond-32-bits"],
    )
    def test_a_decoded_value_no_union_branch_takes_is_refused_for_json(
        self, union: list[str], body: bytes, error: type[Exception]
    ) -> None:
        """A peer's bytes decode to a number no branch of a many-typed union accepts (not
        finite, or beyond an int's range): its JSON form is refused with an error the inbound
        core answers (ValueError: non_finite_number, RecordInvalid: schema_invalid), not an
        assertion that would stop the consumer."""
        registry = _registry(_record("U", [{"name": "u", "type": union}]))
        record = registry.decode("t.U", body)
        with pytest.raises(error):
            registry.to_json_decoded("t.U", record)

    ENCODED = REGISTRY.encode("fxgw.SeizureEvent", _seizure())

    @pytest.mark.parametrize("cut", [0, 1, 5, 20, len(ENCODED) - 1])
    def test_truncated(self, cut: int) -> None:
        """A truncated encoding is refused."""
        with pytest.raises(RecordInvalid) as caught:
            REGISTRY.decode("fxgw.SeizureEvent", self.ENCODED[:cut])
        assert "schema_invalid" == caught.value.reason

    def test_trailing_bytes(self) -> None:
        """Bytes after the record are refused."""
        with pytest.raises(RecordInvalid, match="1 trailing bytes"):
            REGISTRY.decode("fxgw.SeizureEvent", self.ENCODED + b"\x00")

    def test_negative_length(self) -> None:
        """A negative string length (zig-zag 0x01 = -1) is refused, not read as 'the rest'."""
        with pytest.raises(RecordInvalid):
            REGISTRY.decode("fxgw.SeizureEvent", b"\x01" + self.ENCODED[1:])

    @settings(max_examples=200, deadline=None)
    @given(garbage=st.binary(max_size=200))
    def test_garbage(self, garbage: bytes) -> None:
        """Random bytes decode to a valid record or raise RecordInvalid."""
        try:
            record = REGISTRY.decode("fxgw.SeizureEvent", garbage)
        except RecordInvalid:
            return
        assert record == REGISTRY.validate("fxgw.SeizureEvent", record)

    @settings(max_examples=100, deadline=None)
    @given(data=st.data())
    def test_flipped_byte(self, data: st.DataObject) -> None:
        """A record with one byte changed decodes to a valid record or raises RecordInvalid."""
        encoded = bytearray(self.ENCODED)
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] ^= data.draw(st.integers(1, 255))
        try:
            record = REGISTRY.decode("fxgw.SeizureEvent", bytes(encoded))
        except RecordInvalid:
            return
        assert record == REGISTRY.validate("fxgw.SeizureEvent", record)


class TestJsonForm:
    """The national system's JSON form."""

    def _minimal(self, **changes: object) -> dict[str, object]:
        document: dict[str, object] = {
            "event_id": "e1",
            "reported_at": "2026-11-20T09:42:17.250+01:00",
            "reporting_agency": {"agency_id": "NL-POL", "country": "NL"},
            "firearms": [],
        }
        document.update(changes)
        return document

    @pytest.mark.parametrize(
        "reported_at",
        [
            "2026-11-20T09:42:17.250+01:00",
            "2026-11-20T08:42:17.250Z",
            "2026-11-20T08:42:17.250999Z",
            "2026-11-20 03:42:17.25-05:00",
            1795164137250,
        ],
    )
    def test_timestamps(self, reported_at: object) -> None:
        """ISO-8601 with any offset, or integer millis, give the same UTC instant (truncated)."""
        record = REGISTRY.from_json("fxgw.SeizureEvent", self._minimal(reported_at=reported_at))
        reported_at = cast(dt.datetime, record["reported_at"])
        assert (REPORTED, UTC) == (reported_at, reported_at.tzinfo)

    def test_to_json_writes_utc_with_z(self) -> None:
        """Timestamps leave as UTC with milliseconds and Z, dates as YYYY-MM-DD."""
        record = REGISTRY.from_json("fxgw.SeizureEvent", self._minimal(recovery_date="2026-11-19"))
        document = REGISTRY.to_json("fxgw.SeizureEvent", record)
        assert ("2026-11-20T08:42:17.250Z", "2026-11-19") == (
            document["reported_at"],
            document["recovery_date"],
        )

    @pytest.mark.parametrize(
        "value", ["2026-11-20T09:42:17", "20261120T094217Z", "yesterday", 1.5, True]
    )
    def test_timestamp_needs_an_offset(self, value: object) -> None:
        """A timestamp without offset, in basic format, or of another type is refused."""
        with pytest.raises(RecordInvalid, match="ISO-8601") as caught:
            REGISTRY.from_json("fxgw.SeizureEvent", self._minimal(reported_at=value))
        assert "reported_at" == caught.value.field

    @pytest.mark.parametrize(
        "value", ["2026-13-01", "19-11-2026", "20261119", "2026-11-19T00:00:00Z"]
    )
    def test_bad_date_string(self, value: str) -> None:
        """A date that is not a valid YYYY-MM-DD is refused, naming the nested field."""
        document = self._minimal(persons=[{"role": "SUSPECT", "birth_date": value}])
        with pytest.raises(RecordInvalid, match="YYYY-MM-DD") as caught:
            REGISTRY.from_json("fxgw.SeizureEvent", document)
        assert "persons[0].birth_date" == caught.value.field

    def test_unions_are_plain_values(self) -> None:
        """A nullable field takes its plain value; Avro-JSON's tagged form is refused."""
        tagged = self._minimal(case_reference={"string": "RTM-1"})
        with pytest.raises(RecordInvalid, match="expected string or null, got mapping"):
            REGISTRY.from_json("fxgw.SeizureEvent", tagged)

    def _receipt(self, **changes: object) -> dict[str, object]:
        document: dict[str, object] = {
            "format_version": 1,
            "message_id": "m1",
            "event_id": "e1",
            "sender": "NL-POL",
            "recipient": "BE-FPJ",
            "envelope_digest": base64.b64encode(b"\x00" * 32).decode("ascii"),
            "outcome": "DELIVERED",
            "received_at": "2026-11-20T08:42:17.250Z",
            "signing_key_id": "BE-FPJ/sig/2026-11",
            "signature": base64.b64encode(b"\xff" * 64).decode("ascii"),
        }
        document.update(changes)
        return document

    def test_bytes_are_base64(self) -> None:
        """Bytes travel as base64 both ways."""
        receipt = self._receipt()
        record = REGISTRY.from_json("fxgw.Receipt", receipt)
        assert (b"\x00" * 32, receipt) == (
            record["envelope_digest"],
            {k: v for k, v in REGISTRY.to_json("fxgw.Receipt", record).items() if k != "reason"},
        )

    def test_bad_base64(self) -> None:
        """A bytes field that is not base64 is refused."""
        with pytest.raises(RecordInvalid, match="not base64") as caught:
            REGISTRY.from_json("fxgw.Receipt", self._receipt(envelope_digest="***"))
        assert "envelope_digest" == caught.value.field

    def test_unknown_and_missing_fields(self) -> None:
        """from_json checks fields as encode does."""
        document = self._minimal(firearms=[{"serial_number": "X1"}])
        with pytest.raises(RecordInvalid, match="missing required field") as caught:
            REGISTRY.from_json("fxgw.SeizureEvent", document)
        assert "firearms[0].item_id" == caught.value.field

    def test_double_accepts_json_integers(self) -> None:
        """A JSON integer is a valid double (latitude 52)."""
        document = self._minimal(recovery_location={"latitude": 52, "longitude": 4})
        record = REGISTRY.from_json("fxgw.SeizureEvent", document)
        location = cast(dict[str, object], record["recovery_location"])
        assert {"latitude": 52.0, "longitude": 4.0} == {
            k: v for k, v in location.items() if v is not None
        }


class TestSamples:
    """The sample events in tests/data/events are valid JSON-form events."""

    @pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
    def test_sample_converts_encodes_and_round_trips(self, path: Path) -> None:
        """from_json, encode, decode and to_json agree on each sample."""
        sample = _load_json(path)
        name = str(sample["event_type"])
        record = REGISTRY.from_json(name, sample["record"])
        decoded = REGISTRY.decode(name, REGISTRY.encode(name, record))
        assert (True, record, record) == (
            name in REGISTRY.event_types,
            decoded,
            REGISTRY.from_json(name, REGISTRY.to_json(name, decoded)),
        )

    def test_there_are_the_samples_the_demo_needs(self) -> None:
        """Two seizures, a trace request and a trace response at least."""
        kinds = [str(_load_json(path)["event_type"]) for path in SAMPLES]
        assert (True, True, True) == (
            kinds.count("fxgw.SeizureEvent") >= 2,
            kinds.count("fxgw.TraceRequest") >= 1,
            kinds.count("fxgw.TraceResponse") >= 1,
        )


class TestCompatibility:
    """Avro schema resolution between two versions of a record."""

    V1 = _record(
        "Gun",
        [
            {"name": "id", "type": "string"},
            {"name": "length", "type": "int"},
            {
                "name": "kind",
                "type": {"type": "enum", "name": "Kind", "symbols": ["PISTOL", "RIFLE"]},
            },
            {
                "name": "parts",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "Part",
                        "fields": [{"name": "serial", "type": "string"}],
                    },
                },
            },
        ],
    )

    def _changed(self, field: str, **changes: object) -> dict[str, Any]:
        definition = copy.deepcopy(self.V1)
        for item in definition["fields"]:
            if item["name"] == field:
                item.update(changes)
        return definition

    def _check(self, reader: dict[str, Any], writer: dict[str, Any]) -> tuple[str, ...]:
        """Why ``reader`` cannot read ``writer``'s data (the gate's backward direction, the
        Apache avro package's verdict)."""
        [report] = check(_registry(reader), _registry(writer))
        return tuple(str(p) for p in report.backward)

    def test_identical(self) -> None:
        """A schema reads its own data."""
        assert () == self._check(self.V1, self.V1)

    def test_adding_a_nullable_field_with_default(self) -> None:
        """A new nullable field with default null is compatible both ways."""
        v2 = copy.deepcopy(self.V1)
        v2["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
        assert ((), ()) == (self._check(v2, self.V1), self._check(self.V1, v2))

    def test_adding_a_field_without_default(self) -> None:
        """A new required field cannot be read from old data."""
        v2 = copy.deepcopy(self.V1)
        v2["fields"].append({"name": "note", "type": "string"})
        expected = (
            "note: the writer's version lacks this field and the reader's has no default for it"
        )
        assert (expected,) == self._check(v2, self.V1)

    def test_removing_a_field_without_default(self) -> None:
        """Old readers cannot read new data that lacks a field they require."""
        v2 = copy.deepcopy(self.V1)
        v2["fields"] = [f for f in v2["fields"] if f["name"] != "length"]
        problems = self._check(self.V1, v2)
        assert (1, True) == (len(problems), problems[0].startswith("length: the writer's version"))

    def test_changing_a_type(self) -> None:
        """int to string is not a promotion."""
        problems = self._check(self._changed("length", type="string"), self.V1)
        assert ("length: reader type: string not compatible with writer type: int",) == problems

    def test_nested_change_names_the_path(self) -> None:
        """A change inside an array of records names the path with []."""
        parts = {
            "type": "array",
            "items": {
                "type": "record",
                "name": "Part",
                "fields": [{"name": "serial", "type": "long"}],
            },
        }
        problems = self._check(self._changed("parts", type=parts), self.V1)
        assert ("parts[].serial: reader type: long not compatible with writer type: string",) == (
            problems
        )

    @pytest.mark.parametrize(
        ("reader", "writer", "compatible"),
        [
            ("long", "int", True),
            ("double", "int", True),
            ("int", "long", False),
            ("bytes", "string", True),
            (["null", "int"], "int", True),
            ("int", ["null", "int"], False),
            (["null", "long"], ["null", "int"], True),
            (
                {"type": "long", "logicalType": "timestamp-millis"},
                {"type": "int", "logicalType": "date"},
                False,
            ),
        ],
    )
    def test_promotions_and_unions(self, reader: object, writer: object, compatible: bool) -> None:
        """Avro's promotions hold; a writer's null branch needs a reader's null branch."""
        problems = self._check(
            self._changed("length", type=reader), self._changed("length", type=writer)
        )
        assert compatible == (problems == ())

    def test_enum_symbols(self) -> None:
        """A new symbol breaks old readers unless their enum has a default."""
        wider = {"type": "enum", "name": "Kind", "symbols": ["PISTOL", "RIFLE", "SHOTGUN"]}
        with_default = {
            "type": "enum",
            "name": "Kind",
            "symbols": ["PISTOL", "RIFLE"],
            "default": "RIFLE",
        }
        assert (1, ()) == (
            len(self._check(self.V1, self._changed("kind", type=wider))),
            self._check(
                self._changed("kind", type=with_default), self._changed("kind", type=wider)
            ),
        )

    def test_renamed_record_is_incompatible(self) -> None:
        """Named types match by name."""
        renamed = {**self.V1, "name": "Rifle"}
        [report] = check(_registry(renamed), _registry(self.V1))
        assert "t.Gun" == report.name and not report.compatible

    @pytest.mark.parametrize("name", EVENT_TYPES)
    def test_the_contract_reads_itself(self, name: str) -> None:
        """Each event schema is compatible with itself."""
        assert all(r.compatible for r in check(REGISTRY, REGISTRY))


class TestMisc:
    """Smaller promises."""

    def test_uuid_and_time_logical_types(self) -> None:
        """Logical types beyond the contract's also round-trip in both forms."""
        definition = _record(
            "A",
            [
                {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "t", "type": {"type": "int", "logicalType": "time-millis"}},
                {"name": "l", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
                {"name": "m", "type": {"type": "map", "values": "float"}},
                {"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}},
            ],
        )
        registry = _registry(definition)
        record = {
            "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "t": dt.time(10, 15, 30, 123000),
            "l": dt.datetime(2026, 11, 20, 10, 15, 30, 123000),
            "m": {"a": 0.5},
            "f": b"abcd",
        }
        document = registry.to_json("t.A", record)
        assert (record, record) == (
            registry.decode("t.A", registry.encode("t.A", record)),
            registry.from_json("t.A", document),
        )

    def test_recursive_type(self) -> None:
        """A self-referring record loads, is described without repeating itself, round-trips."""
        node = _record(
            "Node",
            [
                {"name": "label", "type": "string"},
                {"name": "next", "type": ["null", "Node"], "default": None},
            ],
        )
        registry = _registry(node)
        schema = registry.get("t.Node")
        record = {"label": "a", "next": {"label": "b", "next": None}}
        assert (["label", "next"], record) == (
            [info.path for info in schema.iter_fields()],
            registry.decode("t.Node", registry.encode("t.Node", record)),
        )

    def test_union_of_several_types(self) -> None:
        """A value takes the first branch it fits; a misfit names all branches."""
        definition = _record("A", [{"name": "x", "type": ["null", "int", "string"]}])
        registry = _registry(definition)
        with pytest.raises(RecordInvalid) as caught:
            registry.encode("t.A", {"x": 1.5})
        assert (
            {"x": "7"},
            {"x": 7},
            "x: expected int or string or null, got float",
            "union",
        ) == (
            registry.decode("t.A", registry.encode("t.A", {"x": "7"})),
            registry.from_json("t.A", registry.to_json("t.A", {"x": 7})),
            str(caught.value),
            registry.get("t.A").field("x").kind,
        )

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ({1: 0.5}, "map keys must be strings"),
            ({"a": "b"}, r"m\['a'\]: expected float, got string"),
            ([("a", 0.5)], "expected map, got list"),
        ],
    )
    def test_map_errors(self, value: object, message: str) -> None:
        """Map values are checked under their key; keys must be strings."""
        registry = _registry(
            _record("A", [{"name": "m", "type": {"type": "map", "values": "float"}}])
        )
        with pytest.raises(RecordInvalid, match=message):
            registry.encode("t.A", {"m": value})

    def test_fixed_size_is_checked(self) -> None:
        """A fixed value of the wrong size is refused, in both forms."""
        fixed = {"type": "fixed", "name": "Digest", "size": 32}
        registry = _registry(_record("A", [{"name": "d", "type": fixed}]))
        with pytest.raises(RecordInvalid, match=r"fixed t\.Digest \(32 bytes\)"):
            registry.encode("t.A", {"d": b"short"})
        with pytest.raises(RecordInvalid, match="got 5 bytes"):
            registry.from_json("t.A", {"d": base64.b64encode(b"short").decode("ascii")})

    def test_from_definitions_names_the_label(self) -> None:
        """Errors of in-memory definitions name the label they were given under."""
        with pytest.raises(SchemaError) as caught:
            SchemaRegistry.from_definitions(
                {"v2/gun": _record("Gun", [{"name": "x", "type": "Nope"}])}
            )
        assert "v2/gun" == caught.value.file

    def test_defaults_of_other_types_are_filled_in(self) -> None:
        """Non-null defaults use Avro's JSON encoding (bytes as code points, dates as days)."""
        definition = _record(
            "A",
            [
                {"name": "n", "type": "int", "default": 7},
                {"name": "b", "type": "bytes", "default": "\u00ff"},
                {"name": "d", "type": {"type": "int", "logicalType": "date"}, "default": 1},
                {
                    "name": "e",
                    "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]},
                    "default": "Y",
                },
                {"name": "l", "type": {"type": "array", "items": "string"}, "default": ["a"]},
            ],
        )
        registry = _registry(definition)
        expected = {"n": 7, "b": b"\xff", "d": dt.date(1970, 1, 2), "e": "Y", "l": ["a"]}
        assert (expected, expected) == (
            registry.validate("t.A", {}),
            registry.decode("t.A", registry.encode("t.A", {})),
        )
