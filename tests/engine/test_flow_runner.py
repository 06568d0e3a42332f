"""The local runner: parameters, outcome, ledger, pauses, retries and mapped results (spec §13)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine import Flow, Parameter, context, signals, task, triggers
from engine.clock import FixedClock
from engine.flow_runner import FlowRunner, PausedTaskRun, RunOutcome
from engine.orchestration import fold
from engine.results import LocalResult
from engine.state import (
    Cached,
    Cancelled,
    Failed,
    Mapped,
    Paused,
    Pending,
    Running,
    State,
    Success,
)
from engine.task import Task
from events import Event, FlowRunCreated, TaskRunTransitioned, WorkDispatched

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def runner(flow: Flow, clock: FixedClock | None = None) -> FlowRunner:
    """A FlowRunner on a FixedClock whose sleep advances that clock."""
    clock = clock or FixedClock(NOW)
    return FlowRunner(flow, clock=clock, sleep=clock.advance)


def by_name(outcome: RunOutcome) -> dict[str, State]:
    """Final task states by task name."""
    return {t.name: s for t, s in outcome.state.result.items()}


def transitions(events: list[Event], slug: str) -> list[str]:
    """State classes a task run went through, in ledger order."""
    return [
        e.state["type"]
        for e in events
        if isinstance(e, TaskRunTransitioned) and e.task_slug == slug and e.map_index is None
    ]


def simple_flow() -> Flow:
    """x (Parameter, default 1) -> inc -> double."""

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def double(x: int) -> int:
        return 2 * x

    with Flow("simple") as flow:
        x = Parameter("x", default=1)
        double(inc(x))
    return flow


# ----- parameters --------------------------------------------------------------------------------


def test_unknown_parameters_are_refused_before_anything_runs() -> None:
    """A parameter the flow does not declare raises ValueError naming it."""
    with pytest.raises(ValueError, match="unexpected parameters: y, z"):
        runner(simple_flow()).run(parameters={"x": 1, "y": 2, "z": 3})


def test_missing_required_parameters_are_refused() -> None:
    """A required Parameter without a value raises ValueError naming it."""
    with Flow("req") as flow:
        task(lambda a, b: a, name="t")(Parameter("a", required=True), Parameter("b", required=True))
    with pytest.raises(ValueError, match="did not receive required parameters: a, b"):
        runner(flow).run()


def test_parameters_default_and_can_be_overridden() -> None:
    """A Parameter's default is used unless the run passes a value."""
    flow = simple_flow()
    assert by_name(runner(flow).run())["double"].result == 4
    assert by_name(runner(flow).run(parameters={"x": 10}))["double"].result == 22
    assert by_name(runner(flow).run(parameters={"x": 10}))["x"].result == 10


# ----- the outcome -------------------------------------------------------------------------------


def test_the_outcome_carries_state_ledger_view_and_id() -> None:
    """run() returns the flow state, its ledger, the folded view and the flow run id."""
    outcome = runner(simple_flow()).run(flow_run_id="fr-1")
    assert type(outcome.state) is Success
    assert outcome.state.message == "All reference tasks succeeded."
    assert outcome.flow_run_id == "fr-1"
    assert isinstance(outcome.events[0], FlowRunCreated)
    assert all(e.flow_run_id == "fr-1" for e in outcome.events)
    assert outcome.view.flow_state_type == "Success"
    assert fold(outcome.events) == outcome.view


def test_every_task_state_change_is_a_ledger_event() -> None:
    """A task run's ledger sequence is Pending → Submitted → Running → Success."""
    outcome = runner(simple_flow()).run(flow_run_id="fr")
    assert transitions(outcome.events, "inc-1") == ["Pending", "Submitted", "Running", "Success"]
    assert sum(isinstance(e, WorkDispatched) for e in outcome.events) == 3


def test_outcome_value_hydrates_a_blob_from_the_ledger() -> None:
    """outcome.value(blob) is the result value behind a state blob."""
    outcome = runner(simple_flow()).run(parameters={"x": 2})
    record = outcome.view.record("double-1")
    assert record is not None
    assert outcome.value(record.state) == 6
    assert outcome.value({"type": "Pending"}) is None


def test_flow_run_returns_the_final_state() -> None:
    """flow.run() is FlowRunner(flow).run().state."""
    state = simple_flow().run(parameters={"x": 3})
    assert type(state) is Success
    assert {t.name: s.result for t, s in state.result.items()}["double"] == 8


def test_a_failed_reference_task_fails_the_flow() -> None:
    """Any failed reference task: Failed("Some reference tasks failed.")."""

    @task
    def boom() -> None:
        raise ValueError("boom")

    with Flow("f") as flow:
        boom()
        task(lambda: 1, name="fine")()
    outcome = runner(flow).run()
    assert type(outcome.state) is Failed
    assert outcome.state.message == "Some reference tasks failed."


def test_a_reference_task_neither_failed_nor_successful_gives_no_reference_tasks_failed() -> None:
    """A Cancelled reference task (set by a handler) gives Success("No reference tasks failed.")."""

    def cancel(t: Task, old: State, new: State) -> State | None:
        return Cancelled("by handler") if isinstance(new, Success) else None

    with Flow("f") as flow:
        task(lambda: 1, name="t", state_handlers=[cancel])()
    outcome = runner(flow).run()
    assert type(outcome.state) is Success
    assert outcome.state.message == "No reference tasks failed."


def test_reference_tasks_decide_the_flow_state() -> None:
    """With explicit reference tasks, a failing non-reference task does not fail the flow."""

    @task
    def boom() -> None:
        raise ValueError("boom")

    with Flow("f") as flow:
        ok = task(lambda: 1, name="ok")()
        boom()
    flow.set_reference_tasks([ok])
    assert type(runner(flow).run().state) is Success


def test_the_body_sees_the_run_context() -> None:
    """Inside a body: parameters, flow_run_id, task_run_id, task_slug, map_index, run count."""
    seen: list[dict[str, Any]] = []

    def body(x: int) -> None:
        keys = ("parameters", "flow_run_id", "task_run_id", "task_slug", "map_index")
        seen.append({k: context.get(k) for k in (*keys, "task_run_count")})

    with Flow("ctx") as flow:
        task(body, name="body").map([7, 8], upstream_tasks=[Parameter("p", default=0)])
    runner(flow).run(parameters={"p": 5}, flow_run_id="fr")
    assert seen == [
        {
            "parameters": {"p": 5},
            "flow_run_id": "fr",
            "task_run_id": f"fr/body-1/{i}",
            "task_slug": "body-1",
            "map_index": i,
            "task_run_count": 1,
        }
        for i in (0, 1)
    ]


def test_mapped_parents_hold_their_children_and_results() -> None:
    """A Mapped parent's map_states are its children's states and its result their results."""

    def fragile(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x * 10

    with Flow("map") as flow:
        task(fragile, name="fragile").map([1, 2, 3])
    outcome = runner(flow).run()
    parent = by_name(outcome)["fragile"]
    assert isinstance(parent, Mapped)
    assert [type(c) for c in parent.map_states] == [Success, Failed, Success]
    assert parent.result[0] == 10
    assert isinstance(parent.result[1], ValueError)
    assert parent.result[2] == 30
    assert type(outcome.state) is Failed


# ----- handlers ----------------------------------------------------------------------------------


def test_runner_and_flow_handlers_see_the_changes() -> None:
    """task_runner_state_handlers get (runner, old, new); flow handlers (flow, old, new)."""
    task_log: list[tuple[str, str]] = []
    flow_log: list[tuple[str, str]] = []

    def on_task(r: Any, old: State, new: State) -> None:
        task_log.append((type(old).__name__, type(new).__name__))

    def on_flow(f: Flow, old: State, new: State) -> None:
        assert isinstance(f, Flow)
        flow_log.append((type(old).__name__, type(new).__name__))

    with Flow("h", state_handlers=[on_flow]) as flow:
        task(lambda: 1, name="t")()
    runner(flow).run(task_runner_state_handlers=[on_task])
    assert task_log == [("Pending", "Running"), ("Running", "Success")]
    assert flow_log == [("Scheduled", "Running"), ("Running", "Success")]


def test_what_a_flow_handler_returns_becomes_the_flow_runs_state() -> None:
    """Prefect: a flow handler's return value is the flow run's new state (Failed -> Success)."""

    def rescue(f: Flow, old: State, new: State) -> State | None:
        return Success("rescued") if new.is_failed() else None

    with Flow("h", state_handlers=[rescue]) as flow:
        task(lambda: 1 / 0, name="t")()
    outcome = runner(flow).run()
    assert type(outcome.state) is Success
    assert outcome.state.message == "rescued"
    assert outcome.view.flow_state_type == "Success", "the ledger records the handler's state"


def test_a_flow_handler_that_raises_fails_the_run_instead_of_escaping() -> None:
    """flow.run() returns Failed with the exception as its result; nothing is raised."""

    def broken(f: Flow, old: State, new: State) -> None:
        if new.is_finished():
            raise RuntimeError("handler broke")

    with Flow("h", state_handlers=[broken]) as flow:
        task(lambda: 1, name="t")()
    outcome = runner(flow).run()
    assert type(outcome.state) is Failed
    assert isinstance(outcome.state.result, RuntimeError)
    assert str(outcome.state.message).startswith(
        "Unexpected error while calling state handlers: RuntimeError('handler broke')"
    )
    assert broken.__qualname__ in str(outcome.state.message)
    assert type(next(iter(outcome.task_states.values()))) is Success


def test_a_flow_handler_raising_on_the_way_to_running_runs_no_task() -> None:
    """Prefect ends the flow run Failed before any task runs."""
    calls: list[int] = []

    def broken(f: Flow, old: State, new: State) -> None:
        if new.is_running():
            raise RuntimeError("no start")

    with Flow("h", state_handlers=[broken]) as flow:
        task(lambda: calls.append(1), name="t")()
    outcome = runner(flow).run()
    assert type(outcome.state) is Failed
    assert calls == []
    assert outcome.view.is_finished()


# ----- retries and time --------------------------------------------------------------------------


def test_a_retry_waits_for_its_start_time_through_the_sleep_function() -> None:
    """Retrying(start = failure + retry_delay) is slept on, then ticked and run again."""
    slept: list[float] = []
    clock = FixedClock(NOW)

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    def flaky() -> str:
        if context["task_run_count"] == 1:
            raise ValueError("first")
        return "second"

    with Flow("retry") as flow:
        task(flaky, name="flaky", max_retries=1, retry_delay=timedelta(seconds=30))()
    outcome = FlowRunner(flow, clock=clock, sleep=sleep).run(flow_run_id="fr")
    assert slept == [30.0]
    assert by_name(outcome)["flaky"].result == "second"
    assert transitions(outcome.events, "flaky-1") == [
        "Pending",
        "Submitted",
        "Running",
        "Failed",
        "Retrying",
        "Submitted",
        "Running",
        "Success",
    ]


def test_a_downstream_task_waits_for_the_retry_to_finish() -> None:
    """While an upstream is Retrying, its downstream is not dispatched."""

    def flaky() -> int:
        if context["task_run_count"] < 3:
            raise ValueError("again")
        return 1

    with Flow("retry") as flow:
        up = task(flaky, name="up", max_retries=2, retry_delay=timedelta(seconds=1))()
        task(lambda x: x + 1, name="down")(up)
    outcome = runner(flow).run()
    assert by_name(outcome)["down"].result == 2
    assert transitions(outcome.events, "down-1") == ["Pending", "Submitted", "Running", "Success"]


def test_cache_for_reuses_the_result_across_runs_in_one_process() -> None:
    """A second run within cache_for is Cached without running the body."""
    calls: list[int] = []
    name = f"cached-{uuid.uuid4()}"

    def body() -> int:
        calls.append(1)
        return 42

    with Flow("cache") as flow:
        task(body, name=name, cache_for=timedelta(hours=1))()
    clock = FixedClock(NOW)
    first = by_name(runner(flow, clock).run())[name]
    second = by_name(runner(flow, clock).run())[name]
    assert type(first) is Cached
    assert type(second) is Cached
    assert second.result == 42
    assert calls == [1]


def test_checkpointing_writes_results_through_the_task_result(tmp_path: Path) -> None:
    """checkpointing=True writes each result where its Result points."""
    with Flow("cp") as flow:
        task(lambda: {"v": 1}, name="t", result=LocalResult(dir=tmp_path, location="t.json"))()
    runner(flow).run(checkpointing=True)
    assert LocalResult(dir=tmp_path).read("t.json").value == {"v": 1}


def test_checkpointing_is_switched_on_by_the_runs_context(tmp_path: Path) -> None:
    """flow.run(context={"checkpointing": True}) checkpoints, as Prefect's run context does."""
    with Flow("cp") as flow:
        task(lambda: {"v": 2}, name="t", result=LocalResult(dir=tmp_path, location="t.json"))()
    runner(flow).run(context={"checkpointing": True})
    assert LocalResult(dir=tmp_path).read("t.json").value == {"v": 2}


def test_the_runs_context_can_also_switch_checkpointing_off(tmp_path: Path) -> None:
    """The context key wins over the checkpointing argument (Prefect's configuration)."""
    with Flow("cp") as flow:
        task(lambda: {"v": 3}, name="t", result=LocalResult(dir=tmp_path, location="t.json"))()
    runner(flow).run(checkpointing=True, context={"checkpointing": False})
    assert list(tmp_path.iterdir()) == []


# ----- pause and resume --------------------------------------------------------------------------


def gated_flow(seen: list[Any]) -> Flow:
    """A manual_only gate followed by a task."""

    def gate() -> str:
        seen.append(context.resume)
        return "opened"

    with Flow("pause") as flow:
        g = task(gate, name="gate", trigger=triggers.manual_only)()
        task(lambda x: x.upper(), name="after")(g)
    return flow


def test_on_paused_is_asked_and_a_yes_resumes_the_task() -> None:
    """on_paused gets the paused task run; True sends a resume and the run completes."""
    asked: list[PausedTaskRun] = []
    seen: list[Any] = []

    def approve(paused: PausedTaskRun) -> bool:
        asked.append(paused)
        return True

    flow = gated_flow(seen)
    outcome = runner(flow).run(on_paused=approve, flow_run_id="fr")
    (paused,) = asked
    assert paused.task.name == "gate"
    assert paused.task_run_id == "fr/gate-1"
    assert paused.map_index is None
    assert type(paused.state) is Paused
    assert seen == [True]
    assert by_name(outcome)["after"].result == "OPENED"
    assert transitions(outcome.events, "gate-1") == [
        "Pending",
        "Submitted",
        "Paused",
        "Resume",
        "Submitted",
        "Running",
        "Success",
    ]


def test_a_refused_pause_returns_with_the_flow_running() -> None:
    """on_paused answering False (or no on_paused) leaves the flow Running, the gate Paused."""
    seen: list[Any] = []
    for on_paused in (lambda p: False, None):
        outcome = runner(gated_flow(seen)).run(on_paused=on_paused)
        states = by_name(outcome)
        assert type(outcome.state) is Running
        assert type(states["gate"]) is Paused
        assert type(states["after"]) is Pending
    assert seen == []


def test_a_pause_from_the_body_is_resumed_and_run_again() -> None:
    """PAUSE from the body ⇢ approval ⇢ the body runs again with resume set."""
    seen: list[Any] = []

    def body() -> str:
        seen.append(context.resume)
        if not context.resume:
            raise signals.PAUSE("wait for me")
        return "done"

    with Flow("pause") as flow:
        task(body, name="body")()
    outcome = runner(flow).run(on_paused=lambda p: True)
    assert seen == [None, True]
    assert by_name(outcome)["body"].result == "done"
