"""events.fast.construct: unvalidated construction for trusted values on the hot path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events import Cause, FlowRef, RunRequested, TaskRunTransitioned, encode
from events.fast import construct

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_construct_builds_the_same_event_as_validation() -> None:
    """Equal to the validated event, and encoded to the same bytes."""
    fields = {
        "event_id": "e",
        "flow_run_id": "f",
        "task_run_id": "t",
        "seq": 2,
        "occurred_at": AT,
        "cause": Cause(command_id="c"),
        "state": {"type": "Running"},
        "attempt": 2,
        "final": False,
    }
    built = construct(TaskRunTransitioned, **fields)
    validated = TaskRunTransitioned.model_validate(fields)
    assert built == validated
    assert encode(built) == encode(validated)
    assert built.model_fields_set == validated.model_fields_set


def test_construct_fills_in_defaults() -> None:
    """Omitted fields get their declared defaults."""
    built = construct(
        RunRequested,
        event_id="e",
        flow_run_id="f",
        occurred_at=AT,
        flow_ref=FlowRef(kind="import", path="m:f"),
    )
    assert built.type == "run_requested"
    assert built.parameters == {}
    assert built.cause == Cause()
    assert built.plan is None


def test_construct_gives_each_event_its_own_mutable_defaults() -> None:
    """Default dicts come from their factory per event, never one shared object."""
    ref = FlowRef(kind="import", path="m:f")
    one = construct(RunRequested, event_id="1", flow_run_id="f", occurred_at=AT, flow_ref=ref)
    two = construct(RunRequested, event_id="2", flow_run_id="f", occurred_at=AT, flow_ref=ref)
    assert one.parameters is not two.parameters
    assert one.context is not two.context


def test_construct_refuses_unknown_and_missing_fields() -> None:
    """Field names are still checked: a typo fails instead of riding along."""
    with pytest.raises(
        TypeError, match=r"TaskRunTransitioned: .*unexpected keyword argument 'atempt'"
    ):
        construct(
            TaskRunTransitioned, event_id="e", flow_run_id="f", occurred_at=AT, state={}, atempt=2
        )
    with pytest.raises(
        TypeError, match=r"TaskRunTransitioned: .*missing 1 required keyword-only argument: 'state'"
    ):
        construct(TaskRunTransitioned, event_id="e", flow_run_id="f", occurred_at=AT)
