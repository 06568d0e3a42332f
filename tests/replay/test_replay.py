"""Golden replays: recorded ledgers must still fold to the states recorded beside them.

A failure here means the engine reads history differently than when the
ledger was written. Fix the engine (or add an upcaster); do not re-record.
See record.py for how the ledgers were made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.orchestration import fold
from events import Event, TaskRunTransitioned, decode
from tests.replay.record import HERE, SCENARIOS, ledger_bytes, summary

LEDGERS = sorted(HERE.glob("*.jsonl"))


def read_ledger(path: Path) -> list[Event]:
    """Decode every line of a JSONL ledger (old schema versions are upcast)."""
    return [decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def expected_for(path: Path) -> dict[str, Any]:
    """The recorded final states beside a ledger."""
    data = json.loads(path.with_name(path.name.replace(".jsonl", ".expected.json")).read_text())
    assert isinstance(data, dict)
    return data


def test_every_scenario_has_a_checked_in_ledger_and_expectation() -> None:
    """Each recorder scenario has both files, and there are no orphan ledgers."""
    assert sorted(p.stem for p in LEDGERS) == sorted(SCENARIOS)
    for path in LEDGERS:
        assert path.with_name(f"{path.stem}.expected.json").exists()


@pytest.mark.parametrize("path", LEDGERS, ids=lambda p: p.stem)
def test_a_recorded_ledger_folds_to_its_recorded_final_states(path: Path) -> None:
    """Decoding and folding the checked-in ledger reproduces the expected states exactly."""
    events = read_ledger(path)
    assert len({e.flow_run_id for e in events}) == 1
    assert summary(fold(events)) == expected_for(path)


@pytest.mark.parametrize("path", LEDGERS, ids=lambda p: p.stem)
def test_a_recorded_ledger_folds_the_same_in_any_two_parts(path: Path) -> None:
    """Folding the ledger in two halves gives the same view as folding it whole."""
    events = read_ledger(path)
    half = len(events) // 2
    assert fold(events[half:], start=fold(events[:half])) == fold(events)


@pytest.mark.parametrize("path", LEDGERS, ids=lambda p: p.stem)
def test_a_redelivered_ledger_changes_nothing(path: Path) -> None:
    """Folding the whole ledger again onto its own view (at-least-once delivery) is a no-op."""
    events = read_ledger(path)
    view = fold(events)
    assert fold(events, start=view) == view


def downgrade(line: bytes) -> bytes:
    """A task_run_transitioned record written as schema version 1 (before `attempt`)."""
    payload = json.loads(line)
    if payload["type"] == "task_run_transitioned":
        payload["schema_version"] = 1
        del payload["attempt"]
    return json.dumps(payload).encode()


def test_a_ledger_written_at_an_older_schema_version_is_upcast_and_folds() -> None:
    """v1 task_run_transitioned records (no attempt) decode and fold to the same states."""
    path = HERE / "retry.jsonl"
    old = [decode(downgrade(line)) for line in path.read_bytes().splitlines() if line.strip()]
    assert all(e.attempt == 1 for e in old if isinstance(e, TaskRunTransitioned))
    expected = expected_for(path)
    folded = summary(fold(old))
    assert folded["flow"] == expected["flow"]
    strip = [{k: v for k, v in r.items() if k != "attempt"} for r in expected["task_runs"].values()]
    assert [
        {k: v for k, v in r.items() if k != "attempt"} for r in folded["task_runs"].values()
    ] == strip


def test_the_ledgers_cover_retry_map_pause_and_cancel() -> None:
    """The recordings exercise the paths named in their scenario names."""
    types = {
        path.stem: {
            e.state["type"] for e in read_ledger(path) if isinstance(e, TaskRunTransitioned)
        }
        for path in LEDGERS
    }
    assert {"Failed", "Retrying"} <= types["retry"]
    assert {"Mapped", "Failed", "TriggerFailed"} <= types["map_child_fails"]
    assert {"Paused", "Resume"} <= types["pause_resume"]
    assert {"Cancelling", "Cancelled"} <= types["cancel"]


def test_the_recorder_is_deterministic() -> None:
    """Recording a scenario twice gives the same bytes (fixed clock, ids and worker)."""
    for name, record in SCENARIOS.items():
        assert ledger_bytes(record()) == ledger_bytes(record()), name
