"""When a task run may be dispatched, and the work item that carries it.

Readiness follows Prefect 1's FlowRunner: a task waits for every upstream to
rest in a finished state; a reduce over a Mapped upstream waits for all of its
children; a mapped child `i` waits for child `i` of each mapped-over Mapped
upstream ("depth-first" mapping).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.orchestration.rules import SCHEDULED
from engine.orchestration.view import FlowRunView, TaskRunRecord
from events import PlanEdge, UpstreamInput, WorkItem
from events.fast import maker

_make_input = maker(UpstreamInput, "edge", "state", "map_states", "indexed")
_make_work_item = maker(
    WorkItem,
    "flow_run_id",
    "task_run_id",
    "slug",
    "map_index",
    "flow_ref",
    "parameters",
    "state",
    "expected_seq",
    "attempt",
    "upstream",
    "is_mapped_parent",
    "context",
)


def is_due(record: TaskRunRecord, now: datetime) -> bool:
    """A Pending run is due now; a Scheduled kind once its start time has come."""
    if record.state_type == "Pending":
        return True
    if record.state_type not in SCHEDULED:
        return False
    start = record.state.get("start_time")
    if start is None:
        return record.state_type != "Paused"  # a Paused run without start time waits forever
    return datetime.fromisoformat(start) <= now


def attempt_of(state: dict[str, Any]) -> int:
    """The attempt a dispatch from `state` starts (Prefect's task_run_count)."""
    if state.get("type") == "Retrying":
        return int(state.get("run_count") or 1) + 1
    return int((state.get("context") or {}).get("task_run_count", 1))


def _rests_finished(record: TaskRunRecord | None) -> bool:
    return record is not None and record.rests_finished


def _children_done(view: FlowRunView, slug: str) -> bool:
    return view.unfinished_children.get(slug, 0) == 0


def parent_ready(view: FlowRunView, slug: str) -> bool:
    """True when the (non-child) run of `slug` has every upstream it needs."""
    for edge in view.index.tasks[slug].edges if view.index else ():
        upstream = view.record(edge.upstream)
        if not _rests_finished(upstream):
            return False
        mapped_upstream = edge.upstream in view.children
        if (
            mapped_upstream
            and (not edge.mapped or edge.flattened)
            and not _children_done(view, edge.upstream)
        ):
            return False
    return True


def child_ready(view: FlowRunView, slug: str, index: int) -> bool:
    """True when child `index` of `slug` has its mapped-over upstream child."""
    if view.index is None:
        return True
    # A plain loop over the precomputed edges: this runs once per child.
    for edge in view.index.child_edges[slug]:
        if edge.upstream in view.children and not _rests_finished(
            view.record(edge.upstream, index)
        ):
            return False
    return True


def _children_blobs(view: FlowRunView, slug: str) -> tuple[dict[str, Any], ...]:
    n = view.children.get(slug, 0)
    blobs = []
    for i in range(n):
        child = view.record(slug, i)
        blobs.append(child.state if child is not None else {"type": "Pending"})
    return tuple(blobs)


InputCache = dict[int, UpstreamInput]
"""Upstream inputs made so far while deciding one command, by id of their edge."""


def _upstream_input(
    view: FlowRunView, edge: PlanEdge, map_index: int | None, cache: InputCache
) -> UpstreamInput:
    upstream = view.record(edge.upstream)
    state = upstream.state if upstream is not None else {"type": "Pending"}
    if edge.upstream in view.children:
        if edge.mapped and not edge.flattened:
            if map_index is not None:
                child = view.record(edge.upstream, map_index)
                child_state = child.state if child is not None else {"type": "Pending"}
                return _make_input(edge, child_state, None, True)
            return _whole_input(edge, state, cache)
        return _make_input(edge, state, _children_blobs(view, edge.upstream), False)
    return _whole_input(edge, state, cache)


def _whole_input(edge: PlanEdge, state: dict[str, Any], cache: InputCache) -> UpstreamInput:
    """The upstream's state passed whole: one input serves every dispatch of a command.

    A mapping command dispatches thousands of children that all receive the same
    upstream; inputs are immutable, so they share one. The cached input holds
    its edge and state, so neither id can be reused while it is cached, and a
    state replaced within the command is seen by identity.
    """
    hit = cache.get(id(edge))
    if hit is not None and hit.state is state:
        return hit
    made = cache[id(edge)] = _make_input(edge, state, None, False)
    return made


def work_item(
    view: FlowRunView,
    record: TaskRunRecord,
    submitted: dict[str, Any],
    expected_seq: int,
    attempt: int,
    inputs: InputCache | None = None,
) -> WorkItem:
    """Everything a worker needs to run one attempt of `record`.

    `inputs` lets the dispatches of one command share upstream inputs.
    """
    assert view.index is not None
    assert view.flow_ref is not None
    cache: InputCache = {} if inputs is None else inputs
    plan_task = view.index.tasks[record.slug]
    upstream = tuple([_upstream_input(view, e, record.map_index, cache) for e in plan_task.edges])
    return _make_work_item(
        view.flow_run_id,
        record.task_run_id,
        record.slug,
        record.map_index,
        view.flow_ref,
        view.parameters,
        submitted,
        expected_seq,
        attempt,
        upstream,
        record.map_index is None and record.slug in view.index.mapped_slugs,
        view.context,
    )
