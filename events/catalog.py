"""The catalog of event types: stable type string -> class, and current versions."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from events.base import Command, Event, Fact
from events.commands import (
    CancelRequested,
    HeartbeatSent,
    ResumeRequested,
    RunRequested,
    SchedulerTicked,
    SetStateRequested,
    TransitionProposed,
)
from events.facts import (
    DeadLettered,
    FlowRunCreated,
    FlowRunTransitioned,
    HeartbeatRecorded,
    TaskRunTransitioned,
    TransitionRejected,
    WorkDispatched,
)

AnyCommand = (
    RunRequested
    | TransitionProposed
    | HeartbeatSent
    | CancelRequested
    | ResumeRequested
    | SetStateRequested
    | SchedulerTicked
)
AnyFact = (
    FlowRunCreated
    | FlowRunTransitioned
    | TaskRunTransitioned
    | TransitionRejected
    | WorkDispatched
    | HeartbeatRecorded
    | DeadLettered
)
AnyEvent = Annotated[AnyCommand | AnyFact, Field(discriminator="type")]
"""Every event type, discriminated by `type` (for TypeAdapter / JSON Schema)."""


def type_string(cls: type[Event]) -> str:
    """The stable type string a concrete event class pins as its `type` default."""
    value = cls.model_fields["type"].default
    if not isinstance(value, str):
        raise TypeError(f"{cls.__name__} does not pin a type string")
    return value


def current_version(cls: type[Event]) -> int:
    """The schema version a concrete event class writes today."""
    value = cls.model_fields["schema_version"].default
    if not isinstance(value, int):
        raise TypeError(f"{cls.__name__} does not pin a schema_version")
    return value


_COMMANDS: tuple[type[Command], ...] = (
    RunRequested,
    TransitionProposed,
    HeartbeatSent,
    CancelRequested,
    ResumeRequested,
    SetStateRequested,
    SchedulerTicked,
)
_FACTS: tuple[type[Fact], ...] = (
    FlowRunCreated,
    FlowRunTransitioned,
    TaskRunTransitioned,
    TransitionRejected,
    WorkDispatched,
    HeartbeatRecorded,
    DeadLettered,
)

COMMAND_TYPES: dict[str, type[Command]] = {type_string(c): c for c in _COMMANDS}
FACT_TYPES: dict[str, type[Fact]] = {type_string(c): c for c in _FACTS}
EVENT_TYPES: dict[str, type[Event]] = {**COMMAND_TYPES, **FACT_TYPES}
