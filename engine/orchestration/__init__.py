"""The pure ledger: `decide(view, command, now) -> events`, `evolve(view, event) -> view`."""

from engine.orchestration.decide import decide, decide_and_evolve
from engine.orchestration.evolve import ForeignEvent, SequenceGap, evolve, fold
from engine.orchestration.history import TimelineRow, check_as_of, fold_as_of, timeline
from engine.orchestration.rules import MANUAL_TARGETS, TRANSITIONS, allowed, allowed_manually
from engine.orchestration.view import FlowRunView, TaskRunRecord, task_run_id_for

__all__ = [
    "MANUAL_TARGETS",
    "TRANSITIONS",
    "FlowRunView",
    "ForeignEvent",
    "SequenceGap",
    "TaskRunRecord",
    "TimelineRow",
    "allowed",
    "allowed_manually",
    "check_as_of",
    "decide",
    "decide_and_evolve",
    "evolve",
    "fold",
    "fold_as_of",
    "task_run_id_for",
    "timeline",
]
