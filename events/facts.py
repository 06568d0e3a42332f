"""Facts: what the ledger accepted and recorded. Only the ledger writes them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from events.base import Fact
from events.models import FlowPlan, FlowRef, WorkItem


class FlowRunCreated(Fact):
    """A flow run exists, with its plan and parameters."""

    type: Literal["flow_run_created"] = "flow_run_created"
    schema_version: Literal[1] = 1
    flow_ref: FlowRef
    parameters: dict[str, Any]
    plan: FlowPlan
    idempotency_key: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class FlowRunTransitioned(Fact):
    """The flow run moved to a new state."""

    type: Literal["flow_run_transitioned"] = "flow_run_transitioned"
    schema_version: Literal[1] = 1
    state: dict[str, Any]
    """Serialized State blob."""
    previous: str | None = None
    """Class name of the previous state."""


class TaskRunTransitioned(Fact):
    """A task run moved to a new state (v2 added `attempt`)."""

    type: Literal["task_run_transitioned"] = "task_run_transitioned"
    schema_version: Literal[2] = 2
    state: dict[str, Any]
    """Serialized State blob."""
    previous: str | None = None
    """Class name of the previous state."""
    attempt: int = 1
    final: bool = True
    """False for a state the run passed through on its way (e.g. Failed before a
    Retrying); such a state does not count as the run's outcome yet."""


class TransitionRejected(Fact):
    """The ledger refused a command; the audit trail keeps what and why."""

    type: Literal["transition_rejected"] = "transition_rejected"
    schema_version: Literal[1] = 1
    command_id: str
    command_type: str
    reason: str
    proposed: dict[str, Any] | None = None
    """The proposed state blob, when the command carried one."""


class WorkDispatched(Fact):
    """A task run was submitted; the work item went to the work topic."""

    type: Literal["work_dispatched"] = "work_dispatched"
    schema_version: Literal[1] = 1
    work: WorkItem


class HeartbeatRecorded(Fact):
    """The ledger recorded a worker's heartbeat for an attempt."""

    type: Literal["heartbeat_recorded"] = "heartbeat_recorded"
    schema_version: Literal[1] = 1
    attempt: int


class DeadLettered(Fact):
    """A record that could not be processed, kept verbatim for operators.

    `payload` is the original record value: UTF-8 text as is, anything else as
    ``"base64:"`` + base64 (see `events.codec.deadletter_payload`).
    """

    type: Literal["dead_lettered"] = "dead_lettered"
    schema_version: Literal[1] = 1
    flow_run_id: str
    """Whatever the refused record was keyed by: it may be no valid flow run id."""
    reason: str
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    payload: str
