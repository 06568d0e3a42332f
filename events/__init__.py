"""The RunLedger wire contract: frozen pydantic events, JSON on the wire.

Pure: no Kafka client library, nothing from `engine` but `engine.version`,
and never a read of the clock. See docs/events.md.
Importing the package checks that every old schema version can be upcast.
The JSON Schema export lives in `events.schema` (``python -m events.schema``).
"""

from __future__ import annotations

from events import upcasters as _upcasters  # noqa: F401  (registers the upcasters)
from events.base import Cause, Command, Event, Fact, WorkerIdentity, check_flow_run_id
from events.catalog import (
    COMMAND_TYPES,
    EVENT_TYPES,
    FACT_TYPES,
    AnyCommand,
    AnyEvent,
    AnyFact,
    current_version,
    type_string,
)
from events.codec import (
    EventDecoder,
    deadletter_bytes,
    deadletter_payload,
    decode,
    decode_command,
    encode,
    to_dict,
)
from events.commands import (
    CancelRequested,
    HeartbeatSent,
    ResumeRequested,
    RunRequested,
    SchedulerTicked,
    SetStateRequested,
    TransitionProposed,
)
from events.errors import (
    EventDecodeError,
    MalformedEvent,
    NotACommand,
    UnknownEventType,
    UnsupportedSchemaVersion,
    UpcasterGapError,
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
from events.models import FlowPlan, FlowRef, PlanEdge, PlanTask, UpstreamInput, WorkItem
from events.upcasting import (
    UPCASTERS,
    UpcasterRegistry,
    check_upcaster_chain,
    upcaster,
)

check_upcaster_chain()

__all__ = [
    "COMMAND_TYPES",
    "EVENT_TYPES",
    "FACT_TYPES",
    "UPCASTERS",
    "AnyCommand",
    "AnyEvent",
    "AnyFact",
    "CancelRequested",
    "Cause",
    "Command",
    "DeadLettered",
    "Event",
    "EventDecodeError",
    "EventDecoder",
    "Fact",
    "FlowPlan",
    "FlowRef",
    "FlowRunCreated",
    "FlowRunTransitioned",
    "HeartbeatRecorded",
    "HeartbeatSent",
    "MalformedEvent",
    "NotACommand",
    "PlanEdge",
    "PlanTask",
    "ResumeRequested",
    "RunRequested",
    "SchedulerTicked",
    "SetStateRequested",
    "TaskRunTransitioned",
    "TransitionProposed",
    "TransitionRejected",
    "UnknownEventType",
    "UnsupportedSchemaVersion",
    "UpcasterGapError",
    "UpcasterRegistry",
    "UpstreamInput",
    "WorkDispatched",
    "WorkItem",
    "WorkerIdentity",
    "check_flow_run_id",
    "check_upcaster_chain",
    "current_version",
    "deadletter_bytes",
    "deadletter_payload",
    "decode",
    "decode_command",
    "encode",
    "to_dict",
    "type_string",
    "upcaster",
]
