"""Running one dispatched work item: the part of a worker that is not Kafka.

Shared by the local runner and the Kafka worker: rebuild the upstream states
from the work item, run the TaskRunner, and turn each state change into a
TransitionProposed. A Running claim is proposed at once; when the shell
answers it, the body runs only if the ledger accepted it (a shell may instead
answer None -- "sent, not awaited" -- and let the ledger refuse the run's later
proposals if the claim lost). The other changes are proposed one step late, so the
last one of a run can be marked `final` -- the state the run rests in, which
is what the ledger reacts to (an intermediate Failed before a Retrying must
not trigger downstream tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine import signals
from engine.clock import Clock
from engine.edges import Edge
from engine.flow import Flow
from engine.mapping import child_count, flattened, upstream_for_child, upstream_for_parent
from engine.result_store import ResultStore, blob_of, state_of
from engine.results import NoResult
from engine.state import ClientFailed, Mapped, Running, State
from engine.task import Task
from engine.task_runner import STARTING_MESSAGE, TaskRunner
from events import (
    Cause,
    Command,
    Event,
    TaskRunTransitioned,
    TransitionProposed,
    WorkerIdentity,
    WorkItem,
)
from events.fast import construct, maker

_make_proposal = maker(
    TransitionProposed,
    "event_id",
    "flow_run_id",
    "task_run_id",
    "task_slug",
    "map_index",
    "occurred_at",
    "cause",
    "expected_seq",
    "attempt",
    "state",
    "final",
)

_STARTING_BLOB = Running(message=STARTING_MESSAGE).serialize()
"""The blob of (nearly) every claim: one shared dict (blobs are never changed once
made), which also lets the ledger's validation memo hit (states.state_problem)."""


def _is_starting(state: State) -> bool:
    """True for a state whose blob is `_STARTING_BLOB` (what set_task_to_running makes)."""
    return (
        type(state) is Running
        and state.message == STARTING_MESSAGE
        and state._result is NoResult
        and not state.context
        and not state.cached_inputs
    )


_causes: dict[int, tuple[WorkerIdentity, Cause]] = {}
"""The proposals' Cause, per worker identity (both immutable): made once, not per run."""


def _cause_of(worker: WorkerIdentity) -> Cause:
    hit = _causes.get(id(worker))
    if hit is not None and hit[0] is worker:
        return hit[1]
    if len(_causes) >= 64:
        _causes.clear()
    cause = construct(Cause, command_id=None, worker=worker)
    _causes[id(worker)] = (worker, cause)
    return cause


Submit = Callable[[Command], list[Event] | None]
"""Sends a command; returns the ledger's facts answering it, or None when the
shell does not wait for them (only ever for a Running claim)."""


class _Proposer:
    """Turns the TaskRunner's recorded changes into proposals to the ledger."""

    def __init__(
        self,
        work: WorkItem,
        submit: Submit,
        next_id: Callable[[], str],
        store: ResultStore,
        clock: Clock,
        worker: WorkerIdentity,
    ) -> None:
        self.work, self.submit, self.next_id = work, submit, next_id
        self.store, self.clock, self.worker = store, clock, worker
        self.cause = _cause_of(worker)
        self.seq = work.expected_seq
        self.pending: State | None = None
        self.map_children: int | None = None
        """Children a Mapped parent really gets (flattening included); Prefect's
        n_map_states counts a flattened Mapped upstream's children, not their elements."""

    def record(self, state: State) -> None:
        if self.pending is not None:
            self._flush(final=False)
        if isinstance(state, Running):
            command, facts = self._send(state, final=False)
            if facts is not None and not _claim_accepted(command, facts):
                raise signals.ENDRUN(ClientFailed(state=state))
        else:
            self.pending = state

    def finish(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        if self.pending is not None:
            state, self.pending = self.pending, None
            self._send(state, final=final)

    def _send(self, state: State, final: bool) -> tuple[TransitionProposed, list[Event] | None]:
        work = self.work
        command = _make_proposal(
            self.next_id(),
            work.flow_run_id,
            work.task_run_id,
            work.slug,
            work.map_index,
            self.clock(),
            self.cause,
            self.seq,
            work.attempt,
            _STARTING_BLOB
            if _is_starting(state)
            else blob_of(state, self.store, f"{work.task_run_id}@{self.seq + 1}"),
            final,
        )
        if isinstance(state, Mapped) and self.map_children is not None:
            command.state["context"]["map_children"] = self.map_children
        self.seq += 1
        return command, self.submit(command)


def _claim_accepted(command: TransitionProposed, facts: list[Event]) -> bool:
    # Once per task run: a plain loop (no generator), the command id read once.
    command_id = command.event_id
    for f in facts:
        if (
            isinstance(f, TaskRunTransitioned)
            and f.cause.command_id == command_id
            and f.state.get("type") == "Running"
        ):
            return True
    return False


def _edge_lookup(flow: Flow, task: Task) -> dict[tuple[str, str | None, bool, bool], Edge]:
    cache = flow.lookup_cache("edges_by_plan_key")
    found = cache.get(task)
    if found is None:
        found = cache[task] = _edges_by_plan_key(flow, task)
    return found


def _edges_by_plan_key(flow: Flow, task: Task) -> dict[tuple[str, str | None, bool, bool], Edge]:
    return {
        (flow.slugs[e.upstream_task], e.key, e.mapped, e.flattened): e for e in flow.edges_to(task)
    }


def upstream_states(
    flow: Flow, task: Task, work: WorkItem, store: ResultStore
) -> dict[Edge, State]:
    """The `{Edge: State}` the TaskRunner gets, built as Prefect's FlowRunner does."""
    states, indexed = _received_states(flow, task, work, store)
    if work.is_mapped_parent:
        return upstream_for_parent(states)
    prepared = flattened(states)
    if work.map_index is None:
        return prepared
    return upstream_for_child(prepared, work.map_index, indexed)


def _received_states(
    flow: Flow, task: Task, work: WorkItem, store: ResultStore
) -> tuple[dict[Edge, State], set[Edge]]:
    lookup = _edge_lookup(flow, task)
    states: dict[Edge, State] = {}
    indexed: set[Edge] = set()
    for item in work.upstream:
        key = (item.edge.upstream, item.edge.key, item.edge.mapped, item.edge.flattened)
        edge = lookup.get(key)
        if edge is None:
            raise LookupError(
                f"the flow's code has no edge {key} into {work.slug}: "
                "the worker's flow differs from the one the run was planned with"
            )
        state = state_of(item.state, store)
        if item.map_states is not None:
            children = [state_of(b, store) for b in item.map_states]
            state = state.copy_with(map_states=children, result=[c.result for c in children])
        states[edge] = state
        if item.indexed:
            indexed.add(edge)
    return states, indexed


def execute_work(
    work: WorkItem,
    *,
    flow: Flow,
    submit: Submit,
    next_id: Callable[[], str],
    store: ResultStore,
    clock: Clock,
    worker: WorkerIdentity,
    handlers: Iterable[Callable[..., Any]] = (),
    checkpointing: bool = False,
    caches: Mapping[str, list[State]] | None = None,
    view: Callable[[], Any] | None = None,
) -> State:
    """Run one work item to its resting state, proposing every change."""
    task = flow.task_by_slug(work.slug)
    proposer = _Proposer(work, submit, next_id, store, clock, worker)
    runner = TaskRunner(
        task,
        state_handlers=handlers,
        flow_result=flow.result,
        clock=clock,
        recorder=proposer.record,
    )
    context = {
        **work.context,
        "parameters": dict(work.parameters),
        "flow_run_id": work.flow_run_id,
        "flow_name": flow.name,
        "task_run_id": work.task_run_id,
        "task_slug": work.slug,
        "map_index": work.map_index,
        "checkpointing": checkpointing,
        "caches": caches or {},
        "constants": flow.constants.get(task, {}),
    }
    try:
        upstream = upstream_states(flow, task, work, store)
        start = state_of(work.state, store)
        if work.is_mapped_parent:
            received, _ = _received_states(flow, task, work, store)
            proposer.map_children = child_count(flattened(received))
    except Exception as exc:  # a bad work item must not kill the worker: fail the run
        from engine.state import Failed

        proposer.record(Failed(f"Could not prepare task run: {exc!r}", result=exc))
        proposer.finish()
        return Failed(f"Could not prepare task run: {exc!r}")
    final = runner.run(start, upstream, context, is_mapped_parent=work.is_mapped_parent)
    proposer.finish()
    return final
