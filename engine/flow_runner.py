"""The local runner: `flow.run()` as an in-process loop over the pure ledger.

It drives exactly the code the Kafka services drive -- `decide`/`evolve` for
orchestration and `TaskRunner` for execution -- with an in-memory queue in
place of the topics. Every transition is an event on its ledger, which the
outcome hands back.
"""

from __future__ import annotations

import gc
import itertools
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.clock import Clock, SystemClock, real_sleep
from engine.flow import Flow
from engine.flow_handlers import (
    FLOW_HANDLER_TIMEOUT_S,
    Verdict,
    decide_with_flow_handlers,
    verdict_for,
)
from engine.orchestration import FlowRunView, decide_and_evolve
from engine.planning import plan_of
from engine.result_store import InMemoryResultStore, ResultStore, state_of
from engine.state import Cached, Mapped, State
from engine.task import Task
from engine.worker_core import execute_work
from events import (
    Cause,
    Command,
    Event,
    FlowRef,
    ResumeRequested,
    RunRequested,
    SchedulerTicked,
    WorkDispatched,
    WorkerIdentity,
)

# Prefect keeps `prefect.context.caches` for the life of the process; so do we,
# so that cache_for works across flow.run() calls in one process.
_CACHES: dict[str, list[State]] = {}


def clear_caches() -> None:
    """Forget every cached result of this process (Prefect's context caches)."""
    _CACHES.clear()


@contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    # A run allocates many long-lived objects (events, views); with the default
    # thresholds the cyclic collector rescans them over and over (measured: a
    # third of a 10,000-task run). Collect less often while running; restore after.
    previous = gc.get_threshold()
    gc.set_threshold(max(previous[0], 50_000), previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


@dataclass(frozen=True)
class PausedTaskRun:
    """What `on_paused` is told about a task run waiting for approval."""

    task: Task
    task_run_id: str
    map_index: int | None
    state: State


OnPaused = Callable[[PausedTaskRun], bool]
Sleep = Callable[[float], None]


@dataclass
class RunOutcome:
    """A finished (or stalled) local run: its state, ledger and view."""

    state: State
    events: list[Event]
    view: FlowRunView
    flow_run_id: str
    store: ResultStore = field(repr=False)
    task_states: dict[Task, State] = field(default_factory=dict, repr=False)
    """Every task's final state (mapped parents hold their children); the same as
    `state.result` unless a flow state handler failed the run (its result is then
    the exception, as in Prefect)."""

    def value(self, blob: dict[str, Any]) -> Any:
        """The result value behind a serialized state blob."""
        result_blob = blob.get("_result")
        return None if result_blob is None else self.store.hydrate(result_blob).value


class LocalLedger:
    """The single writer of one in-process ledger.

    With a `verdict` (the flow's state handlers), every flow-run transition is
    what the handlers make of it before it is recorded (engine/flow_handlers.py).
    """

    def __init__(
        self,
        flow_run_id: str,
        clock: Clock,
        verdict: Verdict | None = None,
        store: ResultStore | None = None,
    ) -> None:
        self.view = FlowRunView(flow_run_id=flow_run_id)
        self.verdict = verdict
        self.store: ResultStore = store or InMemoryResultStore()
        self.events: list[Event] = []
        self.clock = clock
        self.work: deque[WorkDispatched] = deque()
        self._ids = itertools.count()
        self._id_prefix = f"{flow_run_id}:c"

    def next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def submit(self, command: Command) -> list[Event]:
        if self.verdict is not None:
            self.view, new = decide_with_flow_handlers(
                self.view, command, self.clock(), self.verdict, self.store
            )
        else:
            # The ledger keeps no other reference to its view: decide may fold in place.
            self.view, new = decide_and_evolve(self.view, command, self.clock(), owned=True)
        self.events.extend(new)
        for event in new:
            if type(event) is WorkDispatched:
                self.work.append(event)
        return new


def _check_parameters(flow: Flow, parameters: Mapping[str, Any]) -> None:
    names = {p.name for p in flow.parameters()}
    unknown = sorted(set(parameters) - names)
    if unknown:
        raise ValueError(f"Flow.run received unexpected parameters: {', '.join(unknown)}")
    missing = sorted(p.name for p in flow.parameters() if p.required and p.name not in parameters)
    if missing:
        raise ValueError(f"Flow.run did not receive required parameters: {', '.join(missing)}")


class FlowRunner:
    """Runs a flow in this process through the ledger."""

    def __init__(
        self,
        flow: Flow,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        store: ResultStore | None = None,
        flow_handler_timeout_s: float | None = FLOW_HANDLER_TIMEOUT_S,
    ) -> None:
        self.flow = flow
        self.flow_handler_timeout_s = flow_handler_timeout_s
        self.clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self.store: ResultStore = store or InMemoryResultStore()
        self.worker = WorkerIdentity(id="local", host=socket.gethostname(), pid=os.getpid())

    def run(
        self,
        parameters: Mapping[str, Any] | None = None,
        *,
        checkpointing: bool = False,
        task_runner_state_handlers: Iterable[Callable[..., Any]] | None = None,
        on_paused: OnPaused | None = None,
        flow_run_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        reuse: Mapping[str, dict[str, Any]] | None = None,
        rerun_of: str | None = None,
    ) -> RunOutcome:
        """Run until the flow finishes, or stalls on a pause nobody approves.

        A re-run passes `reuse` (task slug -> the finished state blob of that task
        run in flow run `rerun_of`, e.g. from `outcome.view`): each successful,
        unmapped task among them starts Cached with the earlier result instead of
        running. The earlier result must be in this runner's store (the same
        FlowRunner, or a shared store).

        `context["checkpointing"]`, when given, decides checkpointing as Prefect's
        run context does (it wins over the `checkpointing` argument, which stands
        for Prefect's configuration `flows.checkpointing`).
        """
        parameters = dict(parameters or {})
        _check_parameters(self.flow, parameters)
        verdict = (
            verdict_for(self.flow, self.flow_handler_timeout_s)
            if self.flow.state_handlers
            else None
        )
        ledger = LocalLedger(flow_run_id or str(uuid.uuid4()), self.clock, verdict, self.store)
        plan = plan_of(self.flow, lambda value, slug: self._persist_constant(value, slug))
        run_context = dict(context or {})
        if "checkpointing" in run_context:
            checkpointing = bool(run_context["checkpointing"])
        if rerun_of is not None:
            run_context["rerun_of"] = rerun_of
        ledger.submit(
            RunRequested(
                event_id=ledger.next_id(),
                flow_run_id=ledger.view.flow_run_id,
                occurred_at=self.clock(),
                flow_ref=FlowRef(kind="import", path="__local__:flow"),
                parameters=parameters,
                plan=plan,
                context=run_context,
                reuse=dict(reuse or {}),
            )
        )
        handlers = list(task_runner_state_handlers or ())
        with _fewer_gc_passes():
            return self._drive(ledger, handlers, checkpointing, on_paused)

    def _drive(
        self,
        ledger: LocalLedger,
        handlers: list[Callable[..., Any]],
        checkpointing: bool,
        on_paused: OnPaused | None,
    ) -> RunOutcome:
        def current_view() -> FlowRunView:
            return ledger.view

        while True:
            while ledger.work:
                execute_work(
                    ledger.work.popleft().work,
                    flow=self.flow,
                    submit=ledger.submit,
                    next_id=ledger.next_id,
                    view=current_view,
                    store=self.store,
                    clock=self.clock,
                    worker=self.worker,
                    handlers=handlers,
                    checkpointing=checkpointing,
                    caches=_CACHES,
                )
            if ledger.view.is_finished() or not self._wake(ledger, on_paused):
                break
        outcome = self._outcome(ledger)
        self._remember_caches(outcome.state)
        return outcome

    def _persist_constant(self, value: Any, slug: str) -> dict[str, Any]:
        from engine.results import Result

        return self.store.persist(Result(value=value), f"constant/{slug}")

    def _wake(self, ledger: LocalLedger, on_paused: OnPaused | None) -> bool:
        """Make progress while idle: approve pauses, or wait for the next start time."""
        view = ledger.view
        if on_paused is not None:
            resumed = False
            for record in list(view.task_runs.values()):
                if record.state_type == "Paused":
                    task = self.flow.task_by_slug(record.slug)
                    paused = PausedTaskRun(
                        task,
                        record.task_run_id,
                        record.map_index,
                        state_of(record.state, self.store),
                    )
                    if on_paused(paused):
                        ledger.submit(
                            ResumeRequested(
                                event_id=ledger.next_id(),
                                flow_run_id=view.flow_run_id,
                                task_run_id=record.task_run_id,
                                occurred_at=self.clock(),
                                cause=Cause(worker=self.worker),
                            )
                        )
                        resumed = True
            if resumed:
                return True
        if not view.scheduled:
            return False
        earliest = min(datetime.fromisoformat(s) for s in view.scheduled.values())
        delay = (earliest - self.clock()).total_seconds()
        if delay > 0:
            (self._sleep or real_sleep)(delay)
        ledger.submit(
            SchedulerTicked(
                event_id=ledger.next_id(), flow_run_id=view.flow_run_id, occurred_at=self.clock()
            )
        )
        return True

    def _outcome(self, ledger: LocalLedger) -> RunOutcome:
        view = ledger.view
        results: dict[Task, State] = {}
        for task in self.flow.sorted_tasks():
            record = view.record(self.flow.slugs[task])
            if record is None:
                continue
            state = state_of(record.state, self.store)
            if isinstance(state, Mapped):
                children = [
                    state_of(view.record(record.slug, i).state, self.store)  # type: ignore[union-attr]
                    for i in range(view.children.get(record.slug, 0))
                ]
                state = state.copy_with(map_states=children, result=[c.result for c in children])
            results[task] = state
        flow_blob = view.flow_state or {"type": "Scheduled"}
        flow_state = state_of(flow_blob, self.store)
        if flow_state.result is None:
            flow_state = flow_state.copy_with(result=results)
        # else a flow state handler failed the run: as in Prefect, its result is
        # the exception (the task states stay in the view and the events).
        return RunOutcome(flow_state, ledger.events, view, view.flow_run_id, self.store, results)

    def _remember_caches(self, flow_state: State) -> None:
        now = self.clock()
        results = flow_state.result
        if not isinstance(results, dict):
            return  # a flow handler failed the run: Prefect updates no caches then
        for task, state in results.items():
            fresh = (
                [state]
                if isinstance(state, Cached)
                else [s for s in getattr(state, "map_states", None) or [] if isinstance(s, Cached)]
            )
            if not fresh:
                continue
            key = task.cache_key or task.name
            bucket = [*_CACHES.get(key, []), *fresh]
            _CACHES[key] = [c for c in bucket if _unexpired(c, now)]


def _unexpired(state: State, now: datetime) -> bool:
    expiration = getattr(state, "cached_result_expiration", None)
    return expiration is None or expiration > now
