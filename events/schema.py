"""JSON Schema of the event contract.

``python -m events.schema [--out PATH]`` writes one JSON Schema document that
validates any event (a ``oneOf`` discriminated by ``type``, one ``$defs`` entry
per model); without ``--out`` it prints to stdout. docs/events.schema.json is
generated this way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from events.catalog import EVENT_TYPES, AnyEvent

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schemas() -> dict[str, dict[str, Any]]:
    """One standalone JSON Schema (validation mode) per event type string."""
    return {name: cls.model_json_schema() for name, cls in EVENT_TYPES.items()}


def document() -> dict[str, Any]:
    """A single schema document accepting any event, discriminated by `type`."""
    schema = TypeAdapter(AnyEvent).json_schema(ref_template="#/$defs/{model}")
    return {
        "$schema": _DIALECT,
        "title": "RunLedger event",
        "description": "Any event of the RunLedger wire contract; see docs/events.md.",
        **schema,
    }


def render() -> str:
    """`document()` as the exact text written to the schema file."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: write the schema document to --out or stdout."""
    parser = argparse.ArgumentParser(prog="python -m events.schema", description=__doc__)
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = render()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
