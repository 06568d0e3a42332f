"""decide(view, command, now) -> events: the ledger's pure decision function.

Given the current view of a flow run, a command and the time, return the facts
to append. Nothing here raises on bad input: an illegal proposal becomes a
TransitionRejected fact with the reason. Each emitted fact is folded into a
working view at once (`evolve`), so later decisions of the same command see
the earlier ones -- and so decide can never emit what evolve would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from engine.orchestration import states as blobs
from engine.orchestration.dispatch import (
    InputCache,
    attempt_of,
    child_ready,
    is_due,
    parent_ready,
    work_item,
)
from engine.orchestration.evolve import apply_in_place, apply_state_change, copy_view
from engine.orchestration.retired import request_digest
from engine.orchestration.reuse import is_reusable
from engine.orchestration.rules import (
    FAILED,
    FINISHED,
    LEADS_ON,
    RUNNING,
    SUCCESSFUL,
    allowed,
    allowed_manually,
)
from engine.orchestration.view import FlowRunView, TaskRunRecord
from events import (
    CancelRequested,
    Cause,
    Command,
    Event,
    FlowRunCreated,
    FlowRunTransitioned,
    HeartbeatRecorded,
    HeartbeatSent,
    ResumeRequested,
    RunRequested,
    SchedulerTicked,
    SetStateRequested,
    TaskRunTransitioned,
    TransitionProposed,
    TransitionRejected,
    WorkDispatched,
)
from events.fast import construct, maker

_make_dispatch = maker(
    WorkDispatched,
    "event_id",
    "flow_run_id",
    "occurred_at",
    "cause",
    "task_run_id",
    "task_slug",
    "map_index",
    "seq",
    "work",
)
_make_cause = maker(Cause, "command_id", "worker")
_make_transition = maker(
    TaskRunTransitioned,
    "event_id",
    "flow_run_id",
    "occurred_at",
    "cause",
    "task_run_id",
    "task_slug",
    "map_index",
    "seq",
    "state",
    "previous",
    "attempt",
    "final",
)


class _Decision:
    """One command being decided: a private working view and the facts so far."""

    __slots__ = (
        "cause",
        "command",
        "events",
        "flow_verdicts",
        "id_prefix",
        "inputs",
        "now",
        "view",
    )

    def __init__(
        self,
        view: FlowRunView,
        command: Command,
        now: datetime,
        owned: bool = False,
        flow_verdicts: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        # One private working copy per command: each fact is folded into it in place.
        self.view = view if owned else copy_view(view)
        self.command = command
        self.now = now
        self.events: list[Event] = []
        command_id = command.event_id
        self.cause = _make_cause(command_id, command.cause.worker)
        self.id_prefix = f"{command_id}/"
        self.inputs: InputCache | None = None
        """Upstream inputs shared by the work items of this command (see work_item)."""
        self.flow_verdicts = flow_verdicts or {}
        """Flow seq -> the state the flow's state handlers made of that move (see move_flow)."""

    def emit(self, cls: type[Event], **fields: Any) -> None:
        self.append(
            construct(
                cls,
                event_id=self.next_event_id(),
                flow_run_id=self.view.flow_run_id,
                occurred_at=self.now,
                cause=self.cause,
                **fields,
            )
        )

    def shared_inputs(self) -> InputCache:
        """The upstream-input cache of this command, made at its first dispatch."""
        if self.inputs is None:
            self.inputs = {}
        return self.inputs

    def next_event_id(self) -> str:
        """Fact ids derive from the command's: deterministic, and traceable to it."""
        return f"{self.id_prefix}{len(self.events)}"

    def append(self, event: Event) -> None:
        """Fold a fact into the working view at once and keep it."""
        if self.events:
            # Every fact of a command has the view's flow run, `now` and `cause`:
            # the first one folded those in, so the later ones only change state.
            apply_state_change(self.view, event)
        else:
            apply_in_place(self.view, event)
        self.events.append(event)

    def reject(
        self, reason: str, task_run_id: str | None = None, proposed: dict[str, Any] | None = None
    ) -> None:
        self.emit(
            TransitionRejected,
            task_run_id=task_run_id,
            command_id=self.command.event_id,
            command_type=self.command.type,
            reason=reason,
            proposed=proposed,
        )

    def move(
        self,
        record: TaskRunRecord | None,
        slug: str,
        map_index: int | None,
        state: dict[str, Any],
        final: bool = True,
        attempt: int | None = None,
    ) -> None:
        # The hottest path of the ledger: a positional maker, then the fold step.
        self.append(
            _make_transition(
                self.next_event_id(),
                self.view.flow_run_id,
                self.now,
                self.cause,
                record.task_run_id if record else self.view.run_id(slug, map_index),
                slug,
                map_index,
                (record.seq if record else 0) + 1,
                state,
                record.state_type if record else None,
                attempt if attempt is not None else (record.attempt if record else 1),
                final,
            )
        )

    def move_flow(self, state: dict[str, Any]) -> None:
        # The flow's state handlers (user code, run by the shell: see
        # engine/flow_handlers.py) may have replaced this move; what they made of
        # it is recorded instead, and the rest of the decision follows from it.
        seq = self.view.flow_seq + 1
        state = self.flow_verdicts.get(seq, state)
        self.emit(
            FlowRunTransitioned,
            seq=seq,
            state=state,
            previous=self.view.flow_state_type,
        )


def decide(view: FlowRunView, command: Command, now: datetime) -> list[Event]:
    """The facts that answer `command`, given `view` at time `now`."""
    return decide_and_evolve(view, command, now)[1]


def decide_and_evolve(
    view: FlowRunView,
    command: Command,
    now: datetime,
    *,
    owned: bool = False,
    flow_verdicts: Mapping[int, dict[str, Any]] | None = None,
) -> tuple[FlowRunView, list[Event]]:
    """`decide`, plus the view with its facts already folded in (what shells keep).

    `owned=True` hands the view over: a shell that keeps only the returned view
    (and no other reference to the one it passes) lets decide fold into it in
    place instead of copying it first. Nobody else can observe the difference.

    `flow_verdicts` (flow seq -> state blob) replaces the flow-run transition of
    that seq by the given state: what the flow's state handlers made of it. Decide
    stays pure; the shell runs the handlers and decides again with their verdicts
    (`engine.flow_handlers.decide_with_flow_handlers`).
    """
    if command.event_id in view.processed_commands:
        return view, []  # a redelivered command changes nothing
    if is_unknown_run(view, command):
        # Not folded: a view that holds only this refusal would be a flow run that
        # never existed, and anyone can write commands (20,000 forged proposals
        # made 20,000 phantom runs). The shell dead-letters the refusal instead of
        # appending it, so a rebuild cannot bring the phantom back either.
        return view, [_unknown_run_refusal(view, command, now)]
    decision = _Decision(view, command, now, owned, flow_verdicts)
    handler = _HANDLERS.get(type(command))
    if handler is None:
        decision.reject(f"the ledger does not handle {command.type!r} commands")
    else:
        handler(decision)
    return decision.view, decision.events


def is_unknown_run(view: FlowRunView, command: Command) -> bool:
    """True for a command that only a created flow run could answer, sent before one exists."""
    return not view.created and not isinstance(command, RunRequested)


def _unknown_run_refusal(view: FlowRunView, command: Command, now: datetime) -> Event:
    return TransitionRejected(
        event_id=f"{command.event_id}/0",
        flow_run_id=view.flow_run_id,
        task_run_id=command.task_run_id,
        occurred_at=now,
        cause=Cause(command_id=command.event_id, worker=command.cause.worker),
        command_id=command.event_id,
        command_type=command.type,
        reason=f"unknown flow run {view.flow_run_id}: only a run_requested creates one",
    )


# ----- run requests ---------------------------------------------------------------------


def _run_requested(d: _Decision) -> None:
    command = d.command
    assert isinstance(command, RunRequested)
    if d.view.created:
        conflict = _request_conflict(d.view, command)
        if conflict is not None:
            d.reject(conflict)
        return  # same flow run id (e.g. the same idempotency key): nothing new
    if command.plan is None:
        d.reject("the run request carries no flow plan (the ledger shell resolves flow_ref)")
        return
    d.emit(
        FlowRunCreated,
        flow_ref=command.flow_ref,
        parameters=command.parameters,
        plan=command.plan,
        idempotency_key=command.idempotency_key,
        context=command.context,
    )
    d.move_flow(blobs.FLOW_RUNNING)
    for task in command.plan.tasks:
        d.move(None, task.slug, None, blobs.PENDING)
    for task in command.plan.tasks:
        if task.kind == "constant":
            d.move(d.view.record(task.slug), task.slug, None, blobs.constant_success(task.constant))
    if command.reuse:
        _reuse_earlier_results(d, command)
    for task in command.plan.tasks:
        _try_parent(d, task.slug)
    _finish_flow_if_done(d)


def _request_conflict(view: FlowRunView, command: RunRequested) -> str | None:
    """Why a request for an existing run id cannot be that run (a reused idempotency key)."""
    if view.retired_request is not None:  # a retired run keeps only their digest
        if request_digest(command.flow_ref, command.parameters) == view.retired_request:
            return None
    elif command.flow_ref == view.flow_ref and command.parameters == view.parameters:
        return None
    key = f" (idempotency key {view.idempotency_key!r})" if view.idempotency_key else ""
    return (
        f"flow run {view.flow_run_id}{key} exists with another flow or other parameters; "
        "a run request cannot change them"
    )


def _reuse_earlier_results(d: _Decision, command: RunRequested) -> None:
    """A re-run: the earlier run's successful task runs start Cached, with their results.

    Only a plain task (not a parameter or constant) that is not mapped qualifies:
    a mapped parent's children are not reused this way. An entry for another slug,
    or with an invalid or unsuccessful blob, is ignored (that task runs as usual);
    the Cached facts themselves record what was reused.
    """
    index = d.view.index
    assert index is not None
    rerun_of = command.context.get("rerun_of")
    for slug, earlier in command.reuse.items():
        if not is_reusable(index, slug, earlier):
            continue
        state = blobs.reused(earlier, rerun_of if isinstance(rerun_of, str) else None)
        d.move(d.view.record(slug), slug, None, state)


# ----- proposals from workers -------------------------------------------------------------


def _transition_proposed(d: _Decision) -> None:
    command = d.command
    assert isinstance(command, TransitionProposed)
    record = d.view.task_runs.get(command.task_run_id)
    state: Any = command.state  # validated below: decide never trusts a proposal
    new_type = state.get("type") if isinstance(state, dict) else None
    if record is not None and record.state_type == "Cancelling":
        d.move(record, record.slug, record.map_index, blobs.TASK_CANCELLED)
        _finish_flow_if_done(d)
        return
    if record is None and not d.view.is_finished():
        d.reject(f"unknown task run {command.task_run_id}", command.task_run_id, command.state)
        return
    problem = _proposal_problem(d.view, record, command, new_type)
    if problem is not None:
        d.reject(problem, command.task_run_id, command.state)
        return
    assert record is not None
    d.move(
        record,
        record.slug,
        record.map_index,
        command.state,
        final=command.final,
        attempt=command.attempt,
    )
    if command.final:
        _react(d, record.slug, record.map_index)


def _proposal_problem(
    view: FlowRunView,
    record: TaskRunRecord | None,
    command: TransitionProposed,
    new_type: str | None,
) -> str | None:
    # A finished flow run refuses every proposal for the same reason, whether or
    # not it knows the task run: a retired run's stand-in knows none of them.
    if view.is_finished():
        return f"flow run {view.flow_run_id} is already {view.flow_state_type}"
    assert record is not None  # unknown task runs of unfinished flows are refused before
    if command.expected_seq != record.seq:
        return (
            f"stale proposal: it expected seq {command.expected_seq} but task run "
            f"{record.task_run_id} is at seq {record.seq} ({record.state_type})"
        )
    problem = blobs.state_problem(command.state)
    if problem is not None:
        return problem
    claimer = record.claimed_by
    worker = command.cause.worker
    if record.state_type == "Running" and claimer is not None and (
        worker is None or worker.id != claimer
    ):
        # A worker that ran a duplicate of the work item without waiting for its
        # claim's answer: only the claimer's outcome may end the attempt.
        proposer = worker.id if worker is not None else "no worker"
        return f"task run {record.task_run_id} is claimed by {claimer}, not {proposer}"
    if command.attempt != record.attempt:
        # Every proposal, not only the claim: the outcome belongs to one attempt, and
        # a forged or late one for another attempt must not end the current one.
        what = "claim" if new_type == "Running" else "proposal"
        return (
            f"{what} for attempt {command.attempt} but the ledger dispatched attempt "
            f"{record.attempt}"
        )
    assert new_type is not None
    if not allowed(record.state_type, new_type, mid_run=not record.final):
        return f"illegal transition {record.state_type} -> {new_type}"
    if not command.final and new_type not in LEADS_ON:
        return f"{new_type} leads nowhere, so it can only be the final state of a run"
    return None


# ----- reactions ----------------------------------------------------------------------


def _react(d: _Decision, slug: str, map_index: int | None) -> None:
    """A task run came to rest: dispatch what it unblocks, finish the flow if done."""
    record = d.view.record(slug, map_index)
    assert record is not None
    if record.rests_finished:
        if map_index is None:
            if record.state_type == "Mapped":
                _expand_children(d, slug, d.view.children.get(slug, 0))
            _after_parent_finished(d, slug)
        else:
            _after_child_finished(d, slug, map_index)
    elif record.state_type != "Pending" and _dispatchable(d, record):
        _dispatch(d, record)
    _finish_flow_if_done(d)


def _expand_children(d: _Decision, slug: str, n: int) -> None:
    for i in range(n):
        d.move(None, slug, i, blobs.PENDING)
    for i in range(n):
        _try_child(d, slug, i)


def _after_parent_finished(d: _Decision, slug: str) -> None:
    assert d.view.index is not None
    for downstream, _edge in d.view.index.downstream[slug]:
        _try_parent(d, downstream)


def _after_child_finished(d: _Decision, slug: str, index: int) -> None:
    assert d.view.index is not None
    for downstream, edge in d.view.index.downstream[slug]:
        if edge.mapped and not edge.flattened and downstream in d.view.children:
            _try_child(d, downstream, index)
    if d.view.unfinished_children.get(slug, 0) == 0:
        _after_parent_finished(d, slug)


def _try_parent(d: _Decision, slug: str) -> None:
    record = d.view.record(slug)
    if record is not None and _dispatchable(d, record) and parent_ready(d.view, slug):
        _dispatch(d, record)


def _try_child(d: _Decision, slug: str, index: int) -> None:
    record = d.view.record(slug, index)
    if record is not None and _dispatchable(d, record) and child_ready(d.view, slug, index):
        _dispatch(d, record)


def _dispatchable(d: _Decision, record: TaskRunRecord) -> bool:
    return d.view.flow_state_type == "Running" and is_due(record, d.now)


def _dispatch(d: _Decision, record: TaskRunRecord) -> None:
    attempt = attempt_of(record.state)
    submitted = blobs.submitted(record.state)
    d.move(record, record.slug, record.map_index, submitted, attempt=attempt)
    current = d.view.task_runs[record.task_run_id]
    d.append(
        _make_dispatch(
            d.next_event_id(),
            d.view.flow_run_id,
            d.now,
            d.cause,
            record.task_run_id,
            record.slug,
            record.map_index,
            current.seq,
            work_item(d.view, current, submitted, current.seq, attempt, d.shared_inputs()),
        )
    )


def _finish_flow_if_done(d: _Decision) -> None:
    view = d.view
    if view.unfinished_runs:
        return
    if view.flow_state_type == "Cancelling":
        d.move_flow(blobs.FLOW_CANCELLED)
        return
    if view.flow_state_type != "Running" or view.index is None:
        return
    types: list[str] = []
    for task in view.index.plan.tasks:
        if not task.is_reference:
            continue
        record = view.record(task.slug)
        if record is not None and record.state_type == "Mapped":
            types.extend(
                view.record(task.slug, i).state_type  # type: ignore[union-attr]
                for i in range(view.children.get(task.slug, 0))
            )
        elif record is not None:
            types.append(record.state_type)
    if any(t in FAILED for t in types):
        d.move_flow(blobs.flow_failed())
    elif all(t in SUCCESSFUL for t in types):
        d.move_flow(blobs.flow_success("All reference tasks succeeded."))
    else:
        d.move_flow(blobs.flow_success("No reference tasks failed."))


# ----- operator and scheduler commands ---------------------------------------------------


def _cancel_requested(d: _Decision) -> None:
    if d.view.flow_state_type != "Running":
        d.reject(f"flow run {d.view.flow_run_id} is {d.view.flow_state_type}, not Running")
        return
    d.move_flow(blobs.FLOW_CANCELLING)
    for record in list(d.view.task_runs.values()):
        if record.state_type == "Cancelling":
            continue
        if record.state_type in RUNNING or not record.final:
            # A worker is still on it: its next proposal ends it Cancelled.
            d.move(record, record.slug, record.map_index, blobs.TASK_CANCELLING)
        elif not record.rests_finished:
            d.move(record, record.slug, record.map_index, blobs.TASK_CANCELLED)
    _finish_flow_if_done(d)


def _resume_requested(d: _Decision) -> None:
    command = d.command
    assert isinstance(command, ResumeRequested)
    if d.view.flow_state_type != "Running":
        d.reject(
            f"flow run {d.view.flow_run_id} is {d.view.flow_state_type}, not Running",
            command.task_run_id,
        )
        return
    record = d.view.task_runs.get(command.task_run_id)
    if record is None or record.state_type != "Paused":
        found = "unknown" if record is None else record.state_type
        d.reject(
            f"only a Paused task run can be resumed; {command.task_run_id} is {found}",
            command.task_run_id,
        )
        return
    d.move(record, record.slug, record.map_index, blobs.resume(record.state, d.now))
    _react(d, record.slug, record.map_index)


def _set_state_requested(d: _Decision) -> None:
    command = d.command
    assert isinstance(command, SetStateRequested)
    problem = blobs.state_problem(command.state)
    if problem is not None:
        d.reject(problem, command.task_run_id, command.state)
        return
    new_type = command.state["type"]
    if command.task_run_id is None:
        if new_type not in FINISHED or d.view.is_finished():
            d.reject(
                f"a flow run can only be set to a finished state while unfinished; "
                f"it is {d.view.flow_state_type}, asked for {new_type}",
                None,
                command.state,
            )
        else:
            d.move_flow(command.state)
        return
    if d.view.is_finished():
        # A finished flow run is closed: nothing would dispatch a task run set by
        # hand, and a retired run no longer holds its task runs to set.
        d.reject(
            f"flow run {d.view.flow_run_id} is already {d.view.flow_state_type}; "
            "its task runs can no longer be set (re-run it instead)",
            command.task_run_id,
            command.state,
        )
        return
    record = d.view.task_runs.get(command.task_run_id)
    if record is None or not allowed_manually(record.state_type, new_type):
        found = "unknown" if record is None else record.state_type
        d.reject(
            f"cannot set task run {command.task_run_id} ({found}) to {new_type}",
            command.task_run_id,
            command.state,
        )
        return
    d.move(record, record.slug, record.map_index, command.state)
    _react(d, record.slug, record.map_index)
    updated = d.view.task_runs[record.task_run_id]
    if updated.state_type == "Pending":
        (
            _try_parent(d, record.slug)
            if record.map_index is None
            else _try_child(d, record.slug, record.map_index)
        )


def _scheduler_ticked(d: _Decision) -> None:
    command = d.command
    assert isinstance(command, SchedulerTicked)
    if command.heartbeat_timeout_s is not None:
        _fail_lost_attempts(d, command.heartbeat_timeout_s)
    for run_id in list(d.view.scheduled.keys()):
        record = d.view.task_runs.get(run_id)
        if record is not None and _dispatchable(d, record):
            _dispatch(d, record)
    _finish_flow_if_done(d)


def _fail_lost_attempts(d: _Decision, timeout_s: float) -> None:
    """Running attempts whose worker went silent fail (and retry if they may)."""
    assert d.view.index is not None
    for run_id in list(d.view.running.keys()):
        record = d.view.task_runs[run_id]
        beat = record.last_heartbeat
        if not is_losable(record) or beat is None:
            continue
        if (d.now - beat).total_seconds() <= timeout_s:
            continue
        if record.state_type == "Cancelling":
            # Its worker would have ended it Cancelled with its next proposal; a
            # worker that is gone never will, and the flow would stay Cancelling.
            d.move(record, record.slug, record.map_index, blobs.TASK_CANCELLED)
        else:
            _fail_lost_attempt(d, record, timeout_s)
        _react(d, record.slug, record.map_index)


def _fail_lost_attempt(d: _Decision, record: TaskRunRecord, timeout_s: float) -> None:
    """Fail a lost attempt, and retry it if its budget allows.

    A run left in a failure it was only passing through (its worker died between
    proposing Failed and the Retrying after it: found by the simulation) has
    failed already; it only needs the retry its worker never proposed.
    """
    assert d.view.index is not None
    plan_task = d.view.index.tasks[record.slug]
    retry = record.attempt <= plan_task.max_retries
    if record.state_type not in FAILED:
        if not allowed(record.state_type, "Failed"):
            return
        message = (
            f"No heartbeat from the worker running attempt {record.attempt} for "
            f"{timeout_s:g} s; the attempt is considered lost."
        )
        d.move(record, record.slug, record.map_index, blobs.failed(message), final=not retry)
    elif not retry:
        return  # a passing failure with no retry left: only a forged proposal makes one
    if retry:
        delay = timedelta(seconds=plan_task.retry_delay_s or 0)
        retrying = blobs.retrying(record.attempt, plan_task.max_retries, d.now + delay)
        d.move(d.view.task_runs[record.task_run_id], record.slug, record.map_index, retrying)


LOSABLE = frozenset({"Running", "Cancelling"})
"""States in which a silent worker's attempt is declared lost by a scheduler tick
(besides any state a run only passes through, see `is_losable`)."""


def is_losable(record: TaskRunRecord) -> bool:
    """True while a worker is on the run: it heartbeats, and its silence means it is lost."""
    return record.state_type in LOSABLE or not record.final


def _heartbeat_sent(d: _Decision) -> None:
    command = d.command
    assert isinstance(command, HeartbeatSent)
    record = d.view.task_runs.get(command.task_run_id)
    if record is None or not is_losable(record) or record.attempt != command.attempt:
        d.reject(
            f"heartbeat for attempt {command.attempt} of {command.task_run_id}, "
            "which is not running that attempt",
            command.task_run_id,
        )
        return
    d.emit(
        HeartbeatRecorded,
        task_run_id=record.task_run_id,
        task_slug=record.slug,
        map_index=record.map_index,
        attempt=command.attempt,
    )


_HANDLERS: dict[type[Command], Callable[[_Decision], None]] = {
    RunRequested: _run_requested,
    TransitionProposed: _transition_proposed,
    CancelRequested: _cancel_requested,
    ResumeRequested: _resume_requested,
    SetStateRequested: _set_state_requested,
    SchedulerTicked: _scheduler_ticked,
    HeartbeatSent: _heartbeat_sent,
}
