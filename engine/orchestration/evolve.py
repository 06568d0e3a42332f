"""evolve(view, event) -> view: the one fold that rebuilds every view.

The same function runs in the ledger service, replay tools, the local runner
and the tests. Every task-run step is sequence-checked: `seq == current + 1`
applies, `seq <= current` is a duplicate (at-least-once delivery) and is
skipped, and a gap raises `SequenceGap` -- it is reported, never papered over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import datetime
from typing import Any

from engine.orchestration.rules import FINISHED, RUNNING, SCHEDULED
from engine.orchestration.view import FlowRunView, PlanIndex, TaskRunRecord
from events import (
    Event,
    FlowRunCreated,
    FlowRunTransitioned,
    HeartbeatRecorded,
    TaskRunTransitioned,
    WorkDispatched,
)

_FIELDS = tuple(f.name for f in fields(FlowRunView))
_set = object.__setattr__
_new = object.__new__
_new_tuple = tuple.__new__


class SequenceGap(ValueError):
    """An event skipped sequence numbers: the ledger is missing something."""


class ForeignEvent(ValueError):
    """An event of another flow run was folded into this view."""


def evolve(view: FlowRunView, event: Event) -> FlowRunView:
    """Apply one ledger event to a flow-run view."""
    work = copy_view(view)
    apply_in_place(work, event)
    return work


def copy_view(view: FlowRunView) -> FlowRunView:
    """A private copy that `apply_in_place` may change (its maps are persistent)."""
    new = _new(FlowRunView)
    for name in _FIELDS:
        _set(new, name, getattr(view, name))
    return new


def apply_in_place(view: FlowRunView, event: Event) -> None:
    """Apply `event` to a view copy that nobody else holds (see `copy_view`).

    `decide` folds every fact it emits into one working copy this way, so a
    command costs one copy of the view rather than one per fact.
    """
    # Events are pydantic models, whose __getattr__ hook makes every attribute read
    # slow; the fold reads their field dict instead (see _task_run_transitioned).
    fields = event.__dict__
    if fields["flow_run_id"] != view.flow_run_id:
        raise ForeignEvent(
            f"event {event.event_id} belongs to flow run {event.flow_run_id}, "
            f"not {view.flow_run_id}"
        )
    # Only ever forward: a late redelivery of an old event must change nothing.
    occurred, last = fields["occurred_at"], view.last_event_at
    if last is None or occurred > last:
        _set(view, "last_event_at", occurred)
    command_id = fields["cause"].__dict__["command_id"]
    if command_id is not None:
        processed = view.processed_commands
        if command_id not in processed:
            _set(view, "processed_commands", processed.set(command_id, None))
    apply = _APPLY.get(type(event))
    if apply is not None:  # rejections and dead letters change no state, only the command log
        apply(view, event)


def apply_state_change(view: FlowRunView, event: Event) -> None:
    """The part of `apply_in_place` that changes state, alone.

    For `decide`'s later facts of one command: they carry the view's flow run id,
    the command's time and its cause, all of which the command's first fact has
    folded in already (so `apply_in_place` would find nothing else to change).
    """
    apply = _APPLY.get(type(event))
    if apply is not None:
        apply(view, event)


def fold(
    events: Iterable[Event], start: FlowRunView | None = None, flow_run_id: str | None = None
) -> FlowRunView:
    """Replay: fold `evolve` over events, from `start` or an empty view."""
    view = start
    for event in events:
        if view is None:
            view = FlowRunView(flow_run_id=flow_run_id or event.flow_run_id)
        view = evolve(view, event)
    if view is None:
        if flow_run_id is None:
            raise ValueError("fold of no events needs a flow_run_id")
        view = FlowRunView(flow_run_id=flow_run_id)
    return view


def _check_seq(current: int, seq: int | None, kind: str, ident: str) -> bool:
    """True to apply, False for a duplicate; raises on a gap.

    The subject ("task run <id>") is passed in parts and joined only for an
    error: this runs for every fact, and formatting it eagerly was measurable.
    """
    if seq is not None and seq == current + 1:
        return True  # the usual case first
    if seq is None:
        raise SequenceGap(f"{kind} {ident}: event has no seq")
    if seq <= current:
        return False
    raise SequenceGap(f"{kind} {ident}: expected seq {current + 1}, got {seq}")


def _flow_run_created(view: FlowRunView, event: Event) -> None:
    assert isinstance(event, FlowRunCreated)
    if view.created:
        return
    _set_many(
        view,
        flow_ref=event.flow_ref,
        parameters=dict(event.parameters),
        context=dict(event.context),
        idempotency_key=event.idempotency_key,
        index=PlanIndex.of(event.plan),
        flow_state={"type": "Scheduled"},
        flow_state_type="Scheduled",
        flow_seq=1,
    )


def _flow_run_transitioned(view: FlowRunView, event: Event) -> None:
    assert isinstance(event, FlowRunTransitioned)
    if _check_seq(view.flow_seq, event.seq, "flow run", view.flow_run_id):
        _set_many(
            view,
            flow_state=event.state,
            flow_state_type=event.state["type"],
            flow_seq=view.flow_seq + 1,
        )


def _set_many(view: FlowRunView, **values: Any) -> None:
    for name, value in values.items():
        _set(view, name, value)


def _task_run_transitioned(view: FlowRunView, event: Event) -> None:
    # The fold's hottest function: it writes the private view copy directly, reads
    # each view field once, and reads the event's fields from its __dict__ (a
    # pydantic model's attribute reads go through its __getattr__ hook: slow).
    assert isinstance(event, TaskRunTransitioned)
    fields = event.__dict__
    run_id, slug = fields["task_run_id"], fields["task_slug"]
    if run_id is None or slug is None:
        raise ValueError(f"task_run_transitioned {event.event_id} lacks task_run_id/task_slug")
    task_runs = view.task_runs
    old = task_runs.get(run_id)
    seq = fields["seq"]
    current = old.seq if old else 0
    if (seq is None or seq != current + 1) and not _check_seq(current, seq, "task run", run_id):
        return  # a duplicate (the usual next seq skips the call; a gap raises in it)
    state = fields["state"]
    new_type: str = state["type"]
    final = fields["final"]
    map_index = fields["map_index"]
    # A claim counts as the first heartbeat of its attempt, and names the claimer.
    beat: datetime | None
    if new_type == "Running":
        beat = fields["occurred_at"]
        worker = fields["cause"].worker
        claimer = worker.id if worker is not None else None
    else:
        beat = old.last_heartbeat if old else None
        claimer = old.claimed_by if old else None
    # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python-level
    # call, measurable at one record per fact. Every field is passed, in order.
    record: TaskRunRecord = _new_tuple(
        TaskRunRecord,
        (
            run_id, slug, map_index, seq or 0, state, new_type, fields["attempt"], final, beat,
            claimer,
        ),
    )
    was_finished = old is not None and old.rests_finished
    now_finished = final and new_type in FINISHED
    _set(view, "task_runs", task_runs.set(run_id, record))
    if old is None:
        if not now_finished:
            _set(view, "unfinished_runs", view.unfinished_runs + 1)
    elif was_finished != now_finished:
        _set(view, "unfinished_runs", view.unfinished_runs + (1 if was_finished else -1))
    if map_index is None:
        if new_type == "Mapped":
            # The worker records how many children flattening really produced.
            context = state.get("context") or {}
            n = int(context.get("map_children", state.get("n_map_states") or 0))
            _set(view, "children", view.children.set(slug, n))
            _set(view, "unfinished_children", view.unfinished_children.set(slug, n))
    elif old is not None and was_finished != now_finished:
        left = view.unfinished_children.get(slug, 0) + (1 if was_finished else -1)
        _set(view, "unfinished_children", view.unfinished_children.set(slug, left))
    _track_waiting(view, run_id, state, new_type, final)


def _track_waiting(
    view: FlowRunView, run_id: str, state: dict[str, Any], new_type: str, final: bool
) -> None:
    """Keep the `scheduled` and `running` indexes in step with a run's new state.

    `running` holds the runs a worker is on: Running kinds, and any state the run
    only passes through (final=False, e.g. the Failed before a Retrying), whose
    worker still has to propose what follows.
    """
    start = state.get("start_time") if new_type in SCHEDULED else None
    scheduled = view.scheduled
    if start is not None:
        _set(view, "scheduled", scheduled.set(run_id, start))
    elif scheduled and run_id in scheduled:
        _set(view, "scheduled", scheduled.delete(run_id))
    running = view.running
    if new_type in RUNNING or not final:
        _set(view, "running", running.set(run_id, None))
    elif running and run_id in running:
        _set(view, "running", running.delete(run_id))


def _work_dispatched(view: FlowRunView, event: Event) -> None:
    assert isinstance(event, WorkDispatched)
    record = view.task_runs.get(event.work.task_run_id)
    if record is not None and record.attempt != event.work.attempt:
        updated = record._replace(attempt=event.work.attempt)
        _set(view, "task_runs", view.task_runs.set(record.task_run_id, updated))


def _heartbeat_recorded(view: FlowRunView, event: Event) -> None:
    record = view.task_runs.get(event.task_run_id or "")
    beat = record.last_heartbeat if record is not None else None
    if record is not None and (beat is None or event.occurred_at > beat):
        updated = record._replace(last_heartbeat=event.occurred_at)
        _set(view, "task_runs", view.task_runs.set(record.task_run_id, updated))


_APPLY: dict[type[Event], Callable[[FlowRunView, Event], None]] = {
    TaskRunTransitioned: _task_run_transitioned,
    FlowRunTransitioned: _flow_run_transitioned,
    WorkDispatched: _work_dispatched,
    HeartbeatRecorded: _heartbeat_recorded,
    FlowRunCreated: _flow_run_created,
}
