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
from events.fast import construct


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
    return all(
        _rests_finished(view.record(edge.upstream, index))
        for edge in (view.index.tasks[slug].edges if view.index else ())
        if edge.mapped and not edge.flattened and edge.upstream in view.children
    )


def _children_blobs(view: FlowRunView, slug: str) -> tuple[dict[str, Any], ...]:
    n = view.children.get(slug, 0)
    blobs = []
    for i in range(n):
        child = view.record(slug, i)
        blobs.append(child.state if child is not None else {"type": "Pending"})
    return tuple(blobs)


def _upstream_input(view: FlowRunView, edge: PlanEdge, map_index: int | None) -> UpstreamInput:
    upstream = view.record(edge.upstream)
    state = upstream.state if upstream is not None else {"type": "Pending"}
    if edge.upstream in view.children:
        if edge.mapped and not edge.flattened:
            if map_index is not None:
                child = view.record(edge.upstream, map_index)
                child_state = child.state if child is not None else {"type": "Pending"}
                return construct(
                    UpstreamInput, edge=edge, state=child_state, map_states=None, indexed=True
                )
            return construct(UpstreamInput, edge=edge, state=state, map_states=None, indexed=False)
        return construct(
            UpstreamInput,
            edge=edge,
            state=state,
            map_states=_children_blobs(view, edge.upstream),
            indexed=False,
        )
    return construct(UpstreamInput, edge=edge, state=state, map_states=None, indexed=False)


def work_item(
    view: FlowRunView,
    record: TaskRunRecord,
    submitted: dict[str, Any],
    expected_seq: int,
    attempt: int,
) -> WorkItem:
    """Everything a worker needs to run one attempt of `record`."""
    assert view.index is not None
    assert view.flow_ref is not None
    plan_task = view.index.tasks[record.slug]
    upstream = tuple(_upstream_input(view, e, record.map_index) for e in plan_task.edges)
    return construct(
        WorkItem,
        flow_run_id=view.flow_run_id,
        task_run_id=record.task_run_id,
        slug=record.slug,
        map_index=record.map_index,
        flow_ref=view.flow_ref,
        parameters=view.parameters,
        state=submitted,
        expected_seq=expected_seq,
        attempt=attempt,
        upstream=upstream,
        is_mapped_parent=record.map_index is None and record.slug in view.index.mapped_slugs,
        context=view.context,
    )
