"""The flow-run view: the current state of one flow run, folded from its ledger.

Views are immutable values. Their collections are `immutables.Map`s (HAMTs):
`evolve` returns a new view sharing almost all structure with the old one, so
one step costs O(log n) instead of a copy of every task run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import immutables

from engine.orchestration.rules import FINISHED
from events import FlowPlan, FlowRef, PlanEdge, PlanTask


def task_run_id_for(flow_run_id: str, slug: str, map_index: int | None = None) -> str:
    """Task run ids are derived, so every redelivery addresses the same run."""
    if map_index is None:
        return f"{flow_run_id}/{slug}"
    return f"{flow_run_id}/{slug}/{map_index}"


class TaskRunRecord(NamedTuple):
    """One task run as the ledger knows it.

    A NamedTuple rather than a frozen dataclass: the fold builds one per
    transition, and a tuple is several times cheaper to construct.
    """

    task_run_id: str
    slug: str
    map_index: int | None
    seq: int
    state: dict[str, Any]
    state_type: str
    attempt: int = 1
    final: bool = True
    """False while the run only passes through this state (a Failed before its Retrying)."""
    last_heartbeat: datetime | None = None
    claimed_by: str | None = None
    """Id of the worker whose Running claim the ledger accepted last: while the
    run is Running only that worker may propose its next state."""

    @property
    def rests_finished(self) -> bool:
        """The run ended in a finished state (its outcome, not a step on the way)."""
        return self.final and self.state_type in FINISHED


@dataclass(frozen=True)
class PlanIndex:
    """Lookups over a flow plan, computed once per view lineage."""

    plan: FlowPlan
    tasks: dict[str, PlanTask]
    downstream: dict[str, tuple[tuple[str, PlanEdge], ...]]
    mapped_slugs: frozenset[str]
    child_edges: dict[str, tuple[PlanEdge, ...]]
    """The edges each child of a slug is mapped over one element at a time
    (mapped, not flattened): the only ones a child's readiness depends on."""

    @staticmethod
    def of(plan: FlowPlan) -> PlanIndex:
        tasks = {t.slug: t for t in plan.tasks}
        downstream: dict[str, list[tuple[str, PlanEdge]]] = {t.slug: [] for t in plan.tasks}
        for t in plan.tasks:
            for e in t.edges:
                downstream[e.upstream].append((t.slug, e))
        mapped = frozenset(t.slug for t in plan.tasks if any(e.mapped for e in t.edges))
        child_edges = {
            t.slug: tuple(e for e in t.edges if e.mapped and not e.flattened) for t in plan.tasks
        }
        return PlanIndex(
            plan, tasks, {k: tuple(v) for k, v in downstream.items()}, mapped, child_edges
        )


EMPTY_MAP: immutables.Map[Any, Any] = immutables.Map()


@dataclass(frozen=True, slots=True)
class FlowRunView:
    """Everything `decide` needs to know about one flow run."""

    flow_run_id: str
    flow_ref: FlowRef | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    index: PlanIndex | None = None
    flow_state: dict[str, Any] | None = None
    flow_state_type: str | None = None
    flow_seq: int = 0
    task_runs: immutables.Map[str, TaskRunRecord] = EMPTY_MAP
    children: immutables.Map[str, int] = EMPTY_MAP
    """Number of children of each Mapped parent, by slug."""
    unfinished_children: immutables.Map[str, int] = EMPTY_MAP
    """Children of each Mapped parent not finished yet, by slug."""
    unfinished_runs: int = 0
    scheduled: immutables.Map[str, str] = EMPTY_MAP
    """Task runs waiting for a start time (ISO-8601), by task run id."""
    running: immutables.Map[str, None] = EMPTY_MAP
    processed_commands: immutables.Map[str, None] = EMPTY_MAP
    last_event_at: datetime | None = None
    retired_request: str | None = None
    """Set only on the stand-in view of a retired run (`engine.orchestration.retired`):
    the digest its flow and parameters are compared by, since it keeps neither."""

    @property
    def created(self) -> bool:
        return self.index is not None

    @property
    def plan(self) -> FlowPlan:
        if self.index is None:
            raise LookupError(f"flow run {self.flow_run_id} has no plan yet")
        return self.index.plan

    def run_id(self, slug: str, map_index: int | None = None) -> str:
        return task_run_id_for(self.flow_run_id, slug, map_index)

    def record(self, slug: str, map_index: int | None = None) -> TaskRunRecord | None:
        return self.task_runs.get(task_run_id_for(self.flow_run_id, slug, map_index))

    def is_finished(self) -> bool:
        return self.flow_state_type in FINISHED
