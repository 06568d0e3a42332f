"""Flow state handlers: Prefect 1's chain on every flow-run transition, made safe.

Prefect 1.4.1's FlowRunner calls `h(flow, old, new)` for each of
`flow.state_handlers` on every flow-run transition (`call_runner_target_handlers`
inside `Runner.handle_state_change`); each handler gets the same `old` and the
previous handler's `new`, a falsy return keeps `new`, and the final value *is*
the flow run's new state. A state signal raised by a handler gives its state;
any other exception ends the flow run `Failed("Unexpected error while calling
state handlers: <repr>", result=exc)`, unannounced.

Here the transition is decided by the pure ledger (`decide`), so the handlers
run between deciding and recording: `decide_with_flow_handlers` decides, asks
`verdict(old, candidate)` for each flow-run transition among the facts, and,
where a verdict differs, decides again with the verdicts (decide's
`flow_verdicts`), so that what follows the transition (dispatching, or not, when
a handler failed the run on its way to Running) follows from the verdict.
Shells choose where the handlers run: the local runner in its own process, the
Kafka ledger off its event loop (services/roles/flow_handlers.py).

The one rule Prefect does not have: a handler can never leave a run
unfinished. Whatever it raises or returns, or if it does not return within its
time bound, the verdict is a finished state whose message names the handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from engine import signals
from engine.flow import Flow
from engine.orchestration import FlowRunView, decide_and_evolve
from engine.result_store import ResultStore, blob_of, state_of
from engine.signals import TaskTimeoutSignal
from engine.state import Failed, Scheduled, State
from engine.task_runner import handler_name
from engine.timeouts import run_with_timeout
from events import Command, Event, FlowRunTransitioned

Verdict = Callable[[State, State], State]
"""(old flow state, candidate new state) -> the state to record instead."""

FLOW_HANDLER_TIMEOUT_S = 30.0
"""Default bound on one flow-run transition's handler chain (local runner and ledger)."""

HANDLER_ERROR = "Unexpected error while calling state handlers"
"""Prefect 1's message prefix for a handler that raised."""


class _Chain:
    """One call of the flow's handler chain; remembers which handler is running."""

    def __init__(self, flow: Flow, handlers: Iterable[Callable[..., Any]]) -> None:
        self.flow = flow
        self.handlers = list(handlers)
        self.current: Callable[..., Any] | None = None

    def __call__(self, old: State, new: State) -> State:
        for handler in self.handlers:
            self.current = handler
            returned = handler(self.flow, old, new)
            if not returned:
                continue  # Prefect: `handler(...) or new_state`
            if not isinstance(returned, State):
                raise TypeError(f"it returned {returned!r}, which is not a State")
            new = returned
        return new

    def name(self) -> str:
        return handler_name(self.current)


def call_flow_handlers(
    flow: Flow, old: State, candidate: State, timeout_s: float | None = None
) -> State:
    """The state the flow's handlers make of `old -> candidate`; never raises.

    With `timeout_s`, the chain runs in a daemon thread and a chain that has not
    returned by then fails the run (the thread cannot be stopped; whatever it
    returns later is ignored, as for a timed-out task body).
    """
    chain = _Chain(flow, flow.state_handlers)
    try:
        new = run_with_timeout(chain, {"old": old, "new": candidate}, timeout_s)
    except TaskTimeoutSignal:
        return Failed(
            f"Flow state handler {chain.name()} did not return within {timeout_s:g} s "
            f"(on the flow run's move {type(old).__name__} -> {type(candidate).__name__})"
        )
    except signals.ENDRUN as exc:
        new = exc.state
    except signals.PrefectStateSignal as exc:
        new = exc.state
    except Exception as exc:
        return Failed(f"{HANDLER_ERROR}: {exc!r} (flow state handler {chain.name()})", result=exc)
    return _checked(chain, candidate, new)


def _checked(chain: _Chain, candidate: State, new: State) -> State:
    """A handler may finish the run or keep its kind of state, never take it back."""
    if new.is_finished() or type(new) is type(candidate):
        return new
    return Failed(
        f"Flow state handler {chain.name()} turned the flow run's move to "
        f"{type(candidate).__name__} into {type(new).__name__}; it may only return a "
        f"finished state or a {type(candidate).__name__}"
    )


def decide_with_flow_handlers(
    view: FlowRunView,
    command: Command,
    now: datetime,
    verdict: Verdict,
    store: ResultStore,
) -> tuple[FlowRunView, list[Event]]:
    """`decide_and_evolve`, each flow-run transition replaced by its `verdict`.

    `view` is never changed (decide may run more than once). A verdict is asked
    once per flow seq; only a verdict that differs from decide's candidate costs
    another decision.
    """
    verdicts: dict[int, dict[str, Any]] = {}
    while True:
        decided, facts = decide_and_evolve(view, command, now, flow_verdicts=verdicts)
        if not _judge_next(view, facts, verdict, store, verdicts):
            return decided, facts


def _judge_next(
    view: FlowRunView,
    facts: list[Event],
    verdict: Verdict,
    store: ResultStore,
    verdicts: dict[int, dict[str, Any]],
) -> bool:
    """Judge the flow transitions in `facts` up to the first changed one; True if one was."""
    old_blob = view.flow_state
    for fact in facts:
        if type(fact) is not FlowRunTransitioned or fact.seq is None:
            continue
        seq = fact.seq
        if seq not in verdicts:
            old = Scheduled() if old_blob is None else state_of(old_blob, store)
            candidate = state_of(fact.state, store)
            judged = verdict(old, candidate)
            if judged is candidate:
                verdicts[seq] = fact.state
            else:
                key = f"{view.flow_run_id}/flow@{seq}"
                verdicts[seq] = blob_of(judged, store, key)
                return True
        old_blob = fact.state
    return False


def verdict_for(flow: Flow, timeout_s: float | None) -> Verdict:
    """The `Verdict` of `flow`'s handlers, each chain bounded by `timeout_s`."""

    def judge(old: State, candidate: State) -> State:
        return call_flow_handlers(flow, old, candidate, timeout_s)

    return judge
