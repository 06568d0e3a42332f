"""RunLedger's engine: Prefect 1's task-run semantics as a pure, event-sourced core.

from engine import Flow, Parameter, task, unmapped, flatten, signals, triggers, context
"""

from engine import cache_validators, signals, state, triggers
from engine.context import context
from engine.edges import Edge, flatten, unmapped
from engine.flow import Flow
from engine.task import Constant, FunctionTask, GetItem, Parameter, Task, task
from engine.version import ENGINE_VERSION

__all__ = [
    "ENGINE_VERSION",
    "Constant",
    "Edge",
    "Flow",
    "FunctionTask",
    "GetItem",
    "Parameter",
    "Task",
    "cache_validators",
    "context",
    "flatten",
    "signals",
    "state",
    "task",
    "triggers",
    "unmapped",
]
