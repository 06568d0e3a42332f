"""JSON Schema export: every type is described, and the checked-in file is current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from events import EVENT_TYPES
from events.schema import document, json_schemas, main, render

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "events.schema.json"
FIXTURE = Path(__file__).parent / "fixtures" / "events_v1.jsonl"


def test_json_schemas_cover_every_event_type() -> None:
    """One schema per type string, pinning that type string."""
    schemas = json_schemas()
    assert set(schemas) == set(EVENT_TYPES)
    for name, schema in schemas.items():
        assert schema["properties"]["type"]["const"] == name
        assert {"event_id", "flow_run_id", "occurred_at"} <= set(schema["required"])
        assert schema["additionalProperties"] is False


def test_the_document_accepts_any_event_by_its_type() -> None:
    """The combined document is a oneOf discriminated by `type` over all types."""
    doc = document()
    assert doc["$schema"].startswith("https://json-schema.org/")
    assert set(doc["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert len(doc["oneOf"]) == len(EVENT_TYPES)


def test_current_fixture_records_fit_their_schemas() -> None:
    """Every key of a current record is a declared property; required ones are present."""
    schemas = json_schemas()
    for line in FIXTURE.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        schema = schemas[record["type"]]
        if record["schema_version"] != schema["properties"]["schema_version"]["const"]:
            continue
        assert set(record) <= set(schema["properties"])
        assert set(schema["required"]) <= set(record)


def test_the_checked_in_schema_file_is_up_to_date() -> None:
    """docs/events.schema.json equals `python -m events.schema` output."""
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), (
        "regenerate: .venv/bin/python -m events.schema --out docs/events.schema.json"
    )


def test_the_command_line_writes_the_schema_file(tmp_path: Path) -> None:
    """--out PATH writes the same document."""
    out = tmp_path / "schema.json"
    assert main(["--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == document()


def test_python_dash_m_events_schema_prints_the_document() -> None:
    """The module runs as a script and prints valid JSON to stdout."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "events.schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == document()
