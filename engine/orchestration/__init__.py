"""The pure ledger: `decide(view, command, now) -> events`, `evolve(view, event) -> view`."""

from engine.orchestration.decide import decide, decide_and_evolve
from engine.orchestration.evolve import ForeignEvent, SequenceGap, evolve, fold
from engine.orchestration.rules import MANUAL_TARGETS, TRANSITIONS, allowed, allowed_manually
from engine.orchestration.view import FlowRunView, TaskRunRecord, task_run_id_for

__all__ = [
    "MANUAL_TARGETS",
    "TRANSITIONS",
    "FlowRunView",
    "ForeignEvent",
    "SequenceGap",
    "TaskRunRecord",
    "allowed",
    "allowed_manually",
    "decide",
    "decide_and_evolve",
    "evolve",
    "fold",
    "task_run_id_for",
]
