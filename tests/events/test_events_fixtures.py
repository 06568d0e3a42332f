"""The checked-in ledger fixture: records written in the past keep decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from events import (
    EVENT_TYPES,
    CancelRequested,
    DeadLettered,
    Event,
    FlowRunCreated,
    FlowRunTransitioned,
    HeartbeatRecorded,
    HeartbeatSent,
    ResumeRequested,
    RunRequested,
    SchedulerTicked,
    SetStateRequested,
    TaskRunTransitioned,
    TransitionProposed,
    TransitionRejected,
    WorkDispatched,
    current_version,
    decode,
    to_dict,
)

FIXTURE = Path(__file__).parent / "fixtures" / "events_v1.jsonl"

# The stable type strings, written out by hand: renaming one breaks old ledgers.
EXPECTED: dict[str, type[Event]] = {
    "run_requested": RunRequested,
    "transition_proposed": TransitionProposed,
    "heartbeat_sent": HeartbeatSent,
    "cancel_requested": CancelRequested,
    "resume_requested": ResumeRequested,
    "set_state_requested": SetStateRequested,
    "scheduler_ticked": SchedulerTicked,
    "flow_run_created": FlowRunCreated,
    "flow_run_transitioned": FlowRunTransitioned,
    "task_run_transitioned": TaskRunTransitioned,
    "transition_rejected": TransitionRejected,
    "work_dispatched": WorkDispatched,
    "heartbeat_recorded": HeartbeatRecorded,
    "dead_lettered": DeadLettered,
}


def records() -> list[dict[str, Any]]:
    """Every line of the fixture, parsed."""
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_type_strings_have_not_changed() -> None:
    """EVENT_TYPES maps exactly the stable strings to the expected classes."""
    assert EVENT_TYPES == EXPECTED


@pytest.mark.parametrize("record", records(), ids=lambda r: f"{r['type']}-v{r['schema_version']}")
def test_every_fixture_record_decodes_to_its_class(record: dict[str, Any]) -> None:
    """Each stored record still decodes, to the class its type string names."""
    event = decode(json.dumps(record).encode())
    assert type(event) is EXPECTED[record["type"]]
    assert event.schema_version == current_version(type(event))
    if record["schema_version"] == event.schema_version:
        written = to_dict(event)
        assert {k: written[k] for k in record} == record


def test_the_fixture_covers_every_event_type() -> None:
    """Adding an event type without a fixture record fails the suite."""
    assert {r["type"] for r in records()} == set(EVENT_TYPES)


def test_the_fixture_holds_a_record_at_every_old_schema_version() -> None:
    """Each upcaster step is exercised by a stored record."""
    stored = {(r["type"], r["schema_version"]) for r in records()}
    for name, cls in EVENT_TYPES.items():
        for version in range(1, current_version(cls) + 1):
            assert (name, version) in stored, f"no {name} v{version} record"


def test_the_v1_task_run_transitioned_record_decodes_as_attempt_1() -> None:
    """The stored v1 record comes back at v2 with attempt 1."""
    (v1,) = [
        r for r in records() if r["type"] == "task_run_transitioned" and r["schema_version"] == 1
    ]
    assert "attempt" not in v1
    event = decode(v1)
    assert isinstance(event, TaskRunTransitioned)
    assert event.attempt == 1
    assert event.state == v1["state"]
