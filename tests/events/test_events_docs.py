"""docs/events.md is executable: its JSON examples decode, and it names every type."""

from __future__ import annotations

import json
import re
from pathlib import Path

from events import EVENT_TYPES, RunRequested, decode, decode_command

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)


def examples() -> list[str]:
    """The text of every ```json block of the document."""
    return JSON_BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_every_json_example_in_the_docs_decodes() -> None:
    """Each example is a complete, valid event as an outside producer would write it."""
    assert examples()
    for block in examples():
        decode(block.encode())


def test_the_docs_show_a_run_requested_a_client_can_submit() -> None:
    """A plain-JSON RunRequested from the docs passes decode_command."""
    commands = [
        decode_command(b.encode())
        for b in examples()
        if json.loads(b).get("type") == "run_requested"
    ]
    assert any(isinstance(c, RunRequested) for c in commands)


def test_the_docs_describe_every_event_type() -> None:
    """Every type string has its own section heading."""
    text = DOC.read_text(encoding="utf-8")
    for name in EVENT_TYPES:
        assert re.search(rf"^#+ .*`{name}`", text, re.MULTILINE), name
