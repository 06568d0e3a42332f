"""Commands: requests on the commands topic from clients, workers and the scheduler.

The ledger answers each command with facts (or a `TransitionRejected`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from events.base import Command
from events.models import FlowPlan, FlowRef


class RunRequested(Command):
    """Start a flow run (the flow run id is chosen by the client)."""

    type: Literal["run_requested"] = "run_requested"
    schema_version: Literal[2] = 2
    flow_ref: FlowRef
    parameters: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    plan: FlowPlan | None = None
    """Filled in by the ledger shell when the client sends none."""
    context: dict[str, Any] = Field(default_factory=dict)
    reuse: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """A re-run (v2): task slug -> the finished state blob of that task run in an
    earlier run of the flow (`context["rerun_of"]`); a successful one is reused
    (the run starts Cached with its result reference) instead of running again."""


class TransitionProposed(Command):
    """A worker proposes a new state for a task run, for one attempt."""

    type: Literal["transition_proposed"] = "transition_proposed"
    schema_version: Literal[1] = 1
    task_run_id: str
    expected_seq: int
    attempt: int
    state: dict[str, Any]
    """Serialized State blob."""
    final: bool = True
    """True when the run rests in this state (the worker's run ended here); the
    ledger reacts (dispatches downstream work, finishes the flow) only then."""


class HeartbeatSent(Command):
    """A worker is still running the given attempt of a task run."""

    type: Literal["heartbeat_sent"] = "heartbeat_sent"
    schema_version: Literal[1] = 1
    task_run_id: str
    attempt: int


class CancelRequested(Command):
    """Cancel a flow run."""

    type: Literal["cancel_requested"] = "cancel_requested"
    schema_version: Literal[1] = 1
    reason: str | None = None


class ResumeRequested(Command):
    """Resume a paused task run."""

    type: Literal["resume_requested"] = "resume_requested"
    schema_version: Literal[1] = 1
    task_run_id: str


class SetStateRequested(Command):
    """Force a state onto a task run, or onto the flow run when task_run_id is None."""

    type: Literal["set_state_requested"] = "set_state_requested"
    schema_version: Literal[1] = 1
    state: dict[str, Any]
    """Serialized State blob."""


class SchedulerTicked(Command):
    """The scheduler's clock advanced: due Scheduled/Retrying/Paused runs may start."""

    type: Literal["scheduler_ticked"] = "scheduler_ticked"
    schema_version: Literal[1] = 1
    heartbeat_timeout_s: float | None = None
    """When set, a Running attempt whose last heartbeat (or claim) is older than
    this is declared lost: it fails, and is retried if its budget allows."""
