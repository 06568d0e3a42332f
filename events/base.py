"""The envelope every event shares: identity, ordering, time and cause.

`Command` and `Fact` split the event types by who may write them: commands come
from clients, workers and the scheduler; facts are written by the ledger only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.version import ENGINE_VERSION

_FROZEN = ConfigDict(
    frozen=True,
    extra="forbid",
    use_attribute_docstrings=True,
)


FLOW_RUN_ID_PATTERN = r"^[^/\s]{1,200}$"
"""A flow run id: 1-200 characters, no '/' (task run ids are ``<flow run>/<slug>``, so
a '/' would make them ambiguous) and no whitespace."""

FlowRunId = Annotated[str, Field(pattern=FLOW_RUN_ID_PATTERN)]


def check_flow_run_id(flow_run_id: str) -> str:
    """`flow_run_id` if it is a valid flow run id, else ValueError saying why."""
    if not re.fullmatch(FLOW_RUN_ID_PATTERN, flow_run_id):
        raise ValueError(
            f"{flow_run_id!r} is not a flow run id: 1-200 characters, no '/' and no "
            "whitespace (task run ids are FLOW_RUN_ID/TASK_SLUG[/MAP_INDEX])"
        )
    return flow_run_id


class WorkerIdentity(BaseModel):
    """The process that caused an event: a worker, the ledger or a client."""

    model_config = _FROZEN

    id: str
    host: str
    pid: int


class Cause(BaseModel):
    """Why an event exists: the command it answers and/or the worker that sent it."""

    model_config = _FROZEN

    command_id: str | None = None
    worker: WorkerIdentity | None = None


class Event(BaseModel):
    """Base of every event on the wire. Subclasses pin `type` and `schema_version`."""

    model_config = _FROZEN

    event_id: str
    type: str
    schema_version: int
    flow_run_id: FlowRunId
    task_run_id: str | None = None
    task_slug: str | None = None
    map_index: int | None = None
    seq: int | None = None
    occurred_at: datetime
    cause: Cause = Cause()
    engine_version: str = ENGINE_VERSION

    @field_validator("occurred_at")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        """Reject naive datetimes; normalise aware ones to a plain UTC `datetime`."""
        offset = value.utcoffset()
        if offset is None:
            raise ValueError(
                "occurred_at must be timezone-aware (ISO-8601 with 'Z' or an offset, "
                f"e.g. '2024-05-01T12:00:00Z'); got naive {value.isoformat()}"
            )
        if type(value) is datetime and value.tzinfo is UTC:
            return value
        utc = value.astimezone(UTC)
        return datetime(
            utc.year,
            utc.month,
            utc.day,
            utc.hour,
            utc.minute,
            utc.second,
            utc.microsecond,
            tzinfo=UTC,
        )


class Command(Event):
    """An event that asks the ledger for something; the ledger may refuse it."""


class Fact(Event):
    """An event the ledger accepted and recorded; only the ledger writes facts."""
