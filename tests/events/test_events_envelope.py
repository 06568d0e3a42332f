"""The envelope every event shares: immutability, strictness and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pendulum
import pytest
from pydantic import ValidationError

from engine.version import ENGINE_VERSION
from events import (
    COMMAND_TYPES,
    EVENT_TYPES,
    FACT_TYPES,
    Cause,
    Command,
    Fact,
    HeartbeatSent,
    ResumeRequested,
    SchedulerTicked,
    TaskRunTransitioned,
    TransitionProposed,
    WorkerIdentity,
    current_version,
    type_string,
)

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ticked(**changes: Any) -> SchedulerTicked:
    """A minimal valid event with `changes` applied."""
    fields: dict[str, Any] = {"event_id": "e1", "flow_run_id": "f1", "occurred_at": AT}
    return SchedulerTicked(**{**fields, **changes})


def test_an_event_is_frozen() -> None:
    """Assigning to a field of an event raises."""
    event = ticked()
    with pytest.raises(ValidationError, match="frozen"):
        event.seq = 3


def test_nested_envelope_values_are_frozen() -> None:
    """Cause and WorkerIdentity are frozen too."""
    cause = Cause(worker=WorkerIdentity(id="w", host="h", pid=1))
    with pytest.raises(ValidationError):
        cause.command_id = "c"
    assert cause.worker is not None
    with pytest.raises(ValidationError):
        cause.worker.pid = 2


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
def test_every_event_type_rejects_unknown_fields(cls: type[Any]) -> None:
    """extra="forbid" holds for every event type."""
    assert cls.model_config["extra"] == "forbid"
    assert cls.model_config["frozen"] is True


def test_an_unknown_field_is_rejected() -> None:
    """A field the contract does not define is a validation error naming it."""
    with pytest.raises(ValidationError, match="surprise"):
        ticked(surprise=1)


def test_a_naive_occurred_at_is_rejected_with_a_clear_error() -> None:
    """occurred_at without a timezone fails and says it must be timezone-aware."""
    with pytest.raises(ValidationError, match="timezone-aware"):
        ticked(occurred_at=datetime(2024, 5, 1, 12, 0))


def test_a_naive_iso_string_is_rejected_too() -> None:
    """An ISO-8601 string without an offset is naive and fails."""
    with pytest.raises(ValidationError, match="timezone-aware"):
        ticked(occurred_at="2024-05-01T12:00:00")


def test_occurred_at_is_normalised_to_utc() -> None:
    """An aware datetime in another zone becomes the same instant in UTC."""
    plus2 = timezone(timedelta(hours=2))
    event = ticked(occurred_at=datetime(2024, 5, 1, 14, 0, tzinfo=plus2))
    assert event.occurred_at == AT
    assert event.occurred_at.tzinfo is UTC


def test_a_pendulum_datetime_becomes_a_plain_utc_datetime() -> None:
    """pendulum values (the engine's clock type) are accepted and normalised."""
    event = ticked(occurred_at=pendulum.datetime(2024, 5, 1, 8, tz="America/New_York"))
    assert type(event.occurred_at) is datetime
    assert event.occurred_at == AT


def test_envelope_defaults_are_filled_in() -> None:
    """type, schema_version, cause and engine_version have defaults."""
    event = ticked()
    assert event.type == "scheduler_ticked"
    assert event.schema_version == 1
    assert event.cause == Cause()
    assert event.engine_version == ENGINE_VERSION
    assert event.task_run_id is None
    assert event.seq is None


def test_the_type_string_is_pinned() -> None:
    """An event class refuses any type string but its own."""
    with pytest.raises(ValidationError):
        ticked(type="run_requested")


def test_the_schema_version_is_pinned_to_the_current_one() -> None:
    """An event object always has its type's current shape; old ones are upcast."""
    with pytest.raises(ValidationError):
        ticked(schema_version=2)
    assert current_version(TaskRunTransitioned) == 2


@pytest.mark.parametrize("cls", [TransitionProposed, HeartbeatSent, ResumeRequested])
def test_task_run_commands_require_a_task_run_id(cls: type[Any]) -> None:
    """Commands about one task run cannot omit task_run_id."""
    assert cls.model_fields["task_run_id"].is_required()


def test_type_strings_are_the_catalog_keys() -> None:
    """Each class's pinned type string is its key in EVENT_TYPES."""
    for name, cls in EVENT_TYPES.items():
        assert type_string(cls) == name


def test_commands_and_facts_partition_the_catalog() -> None:
    """Every event is a command or a fact, never both, never neither."""
    assert set(COMMAND_TYPES).isdisjoint(FACT_TYPES)
    assert set(COMMAND_TYPES) | set(FACT_TYPES) == set(EVENT_TYPES)
    assert all(issubclass(c, Command) for c in COMMAND_TYPES.values())
    assert all(issubclass(c, Fact) for c in FACT_TYPES.values())


def test_every_defined_event_class_is_in_the_catalog() -> None:
    """A new Command or Fact subclass must be registered in the catalog."""
    defined = {
        cls
        for cls in (*Command.__subclasses__(), *Fact.__subclasses__())
        if cls.__module__.startswith("events.")
    }
    assert defined == set(EVENT_TYPES.values())


def test_fact_type_strings_are_past_tense() -> None:
    """Facts are named for what happened."""
    assert all(name.endswith("ed") for name in FACT_TYPES)
