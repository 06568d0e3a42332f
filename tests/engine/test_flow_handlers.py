"""Flow state handlers: Prefect 1's chain on each flow-run transition, never leaving a run open."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from engine import Flow, signals, task
from engine.flow_handlers import call_flow_handlers, decide_with_flow_handlers, verdict_for
from engine.orchestration import FlowRunView
from engine.planning import plan_of
from engine.result_store import InMemoryResultStore
from engine.state import Failed, Running, State, Success
from events import FlowRef, FlowRunTransitioned, RunRequested, WorkDispatched

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def flow_with(*handlers: Any) -> Flow:
    with Flow("f", state_handlers=list(handlers)) as flow:
        task(lambda: 1, name="t")()
    return flow


def test_each_handler_gets_the_same_old_state_and_the_previous_handlers_new_one() -> None:
    """As Prefect's call_runner_target_handlers: a falsy return keeps `new`."""
    seen: list[tuple[str, str | None]] = []

    def first(flow: Flow, old: State, new: State) -> State:
        seen.append((type(old).__name__, new.message))
        return Success("from first")

    def second(flow: Flow, old: State, new: State) -> None:
        seen.append((type(old).__name__, new.message))

    judged = call_flow_handlers(flow_with(first, second), Running(), Success("candidate"))
    assert judged.message == "from first"
    assert seen == [("Running", "candidate"), ("Running", "from first")]


def test_a_raising_handler_fails_the_run_with_the_exception_naming_the_handler() -> None:
    """Prefect's message and result (the exception), plus the handler's name."""
    error = RuntimeError("broke")

    def broken(flow: Flow, old: State, new: State) -> None:
        raise error

    judged = call_flow_handlers(flow_with(broken), Running(), Success())
    assert type(judged) is Failed
    assert judged.result is error
    assert judged.message == (
        "Unexpected error while calling state handlers: RuntimeError('broke') "
        f"(flow state handler {__name__}:{broken.__qualname__})"
    )


def test_a_state_signal_from_a_handler_gives_its_state() -> None:
    """FAIL raised by a flow handler: its Failed is the flow run's state."""

    def fail(flow: Flow, old: State, new: State) -> None:
        raise signals.FAIL("no")

    judged = call_flow_handlers(flow_with(fail), Running(), Success())
    assert type(judged) is Failed
    assert judged.message == "no"


def test_a_handler_that_does_not_return_in_time_fails_the_run_naming_it() -> None:
    """The chain is bounded: the ledger never waits for ever."""
    release = threading.Event()

    def hangs(flow: Flow, old: State, new: State) -> None:
        release.wait(10)

    try:
        judged = call_flow_handlers(flow_with(hangs), Running(), Success(), timeout_s=0.05)
    finally:
        release.set()
    assert type(judged) is Failed
    assert f"Flow state handler {__name__}:{hangs.__qualname__} did not return within 0.05 s" in (
        str(judged.message)
    )


def test_a_handler_returning_an_unfinished_state_for_a_finished_move_fails_the_run() -> None:
    """A flow run that should finish can never be kept open by a handler."""

    def keep_running(flow: Flow, old: State, new: State) -> State:
        return Running("not yet")

    judged = call_flow_handlers(flow_with(keep_running), Running(), Success())
    assert type(judged) is Failed
    assert "turned the flow run's move to Success into Running" in str(judged.message)


def test_a_handler_returning_something_not_a_state_fails_the_run() -> None:
    """Prefect would replace the state by whatever came back; here that is an error."""

    def text(flow: Flow, old: State, new: State) -> str:
        return "ok"

    judged = call_flow_handlers(flow_with(text), Running(), Success())
    assert type(judged) is Failed
    assert "it returned 'ok', which is not a State" in str(judged.message)


def _run_request(flow: Flow) -> RunRequested:
    """A run request carrying the flow's plan (the flow has no constants to persist)."""
    return RunRequested(
        event_id="c0",
        flow_run_id=str(uuid.uuid4()),
        occurred_at=NOW,
        flow_ref=FlowRef(kind="import", path="tests.x:flow"),
        plan=plan_of(flow, lambda value, slug: {}),
    )


def test_a_handler_failing_the_move_to_running_leaves_every_task_undispatched() -> None:
    """Decided again with the verdict: the flow run starts Failed and nothing is dispatched."""

    def broken(flow: Flow, old: State, new: State) -> None:
        if new.is_running():
            raise RuntimeError("no start")

    flow = flow_with(broken)
    command = _run_request(flow)
    view = FlowRunView(flow_run_id=command.flow_run_id)
    store = InMemoryResultStore()
    decided, facts = decide_with_flow_handlers(view, command, NOW, verdict_for(flow, None), store)
    moves = [f for f in facts if isinstance(f, FlowRunTransitioned)]
    assert [m.state["type"] for m in moves] == ["Failed"]
    assert not any(isinstance(f, WorkDispatched) for f in facts)
    assert decided.is_finished()
    assert view.flow_seq == 0, "the view handed in is left as it was"


def test_handlers_that_change_nothing_leave_the_decision_as_it_was() -> None:
    """One verdict per flow-run transition, and the facts decide made."""
    calls: list[tuple[str, str]] = []

    def watch(flow: Flow, old: State, new: State) -> None:
        calls.append((type(old).__name__, type(new).__name__))

    flow = flow_with(watch)
    command = _run_request(flow)
    view = FlowRunView(flow_run_id=command.flow_run_id)
    _, facts = decide_with_flow_handlers(
        view, command, NOW, verdict_for(flow, None), InMemoryResultStore()
    )
    assert calls == [("Scheduled", "Running")]
    assert any(isinstance(f, WorkDispatched) for f in facts)
