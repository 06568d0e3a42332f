"""Re-runs: a run request's `reuse` starts the earlier run's successes Cached, not run again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine import Flow, Parameter, task
from engine.clock import FixedClock
from engine.flow_runner import FlowRunner
from engine.orchestration import FlowRunView, decide_and_evolve, fold
from engine.state import Cached, Failed, Mapped, Success
from events import (
    Event,
    FlowPlan,
    FlowRef,
    PlanEdge,
    PlanTask,
    RunRequested,
    TaskRunTransitioned,
    WorkDispatched,
)

FR = "second"
EARLIER = "first"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
REF = FlowRef(kind="import", path="pkg.flows:flow")
RESULT = {
    "type": "Result",
    "location": "memory-store://first/prepare",
    "serializer": None,
    "hash": None,
    "size": None,
}


def success(result: dict[str, Any] | None = RESULT) -> dict[str, Any]:
    """The blob of an earlier run's Success, with its result reference."""
    blob = Success("Task run succeeded.").serialize()
    if result is not None:
        blob["_result"] = result
    return blob


def plan() -> FlowPlan:
    """x (parameter) -> prepare -> flaky -> report; xs (parameter) -> inc.map."""
    return FlowPlan(
        name="p",
        version="v1",
        tasks=(
            PlanTask(slug="x", name="x", kind="parameter"),
            PlanTask(slug="prepare", name="prepare", edges=(PlanEdge(upstream="x", key="x"),)),
            PlanTask(slug="flaky", name="flaky", edges=(PlanEdge(upstream="prepare", key="y"),)),
            PlanTask(
                slug="report",
                name="report",
                edges=(PlanEdge(upstream="flaky", key="y"),),
                is_reference=True,
            ),
            PlanTask(slug="xs", name="xs", kind="parameter"),
            PlanTask(
                slug="inc", name="inc", edges=(PlanEdge(upstream="xs", key="v", mapped=True),)
            ),
        ),
    )


def rerun(reuse: dict[str, dict[str, Any]], context: dict[str, Any] | None = None) -> list[Event]:
    """The facts answering a re-run request of `plan()` that reuses `reuse`."""
    command = RunRequested(
        event_id="rerun",
        flow_run_id=FR,
        occurred_at=NOW,
        flow_ref=REF,
        plan=plan(),
        context={"rerun_of": EARLIER} if context is None else context,
        reuse=reuse,
    )
    return decide_and_evolve(FlowRunView(flow_run_id=FR), command, NOW)[1]


def states_of(events: list[Event], slug: str) -> list[str]:
    """The state types task run `slug` moved through."""
    return [
        e.state["type"]
        for e in events
        if isinstance(e, TaskRunTransitioned) and e.task_slug == slug
    ]


def dispatched(events: list[Event]) -> list[str]:
    """The slugs of the work dispatched."""
    return [e.work.slug for e in events if isinstance(e, WorkDispatched)]


def test_a_reused_task_becomes_cached_with_the_earlier_result_and_is_never_dispatched() -> None:
    """Pending -> Cached, naming the earlier run, keeping its result reference."""
    events = rerun({"prepare": success()})
    assert states_of(events, "prepare") == ["Pending", "Cached"]
    (cached,) = [
        e
        for e in events
        if isinstance(e, TaskRunTransitioned) and e.task_slug == "prepare" and e.seq == 2
    ]
    assert cached.state["message"] == f"Reused the result of flow run {EARLIER}"
    assert cached.state["_result"] == RESULT
    assert cached.final
    assert "prepare" not in dispatched(events)


def test_the_downstream_of_a_reused_task_is_dispatched_with_the_cached_upstream() -> None:
    """flaky waits for prepare, which rests Cached at once: flaky is dispatched."""
    events = rerun({"prepare": success()})
    assert sorted(dispatched(events)) == ["flaky", "x", "xs"]
    (item,) = [e.work for e in events if isinstance(e, WorkDispatched) and e.work.slug == "flaky"]
    (upstream,) = item.upstream
    assert upstream.edge.upstream == "prepare"
    assert upstream.state["type"] == "Cached"
    assert upstream.state["_result"] == RESULT


def test_a_cached_blob_is_reused_too() -> None:
    """An earlier run's Cached (itself reused, or a cache hit) is as good as a Success."""
    blob = Cached("cache hit").serialize()
    blob["_result"] = RESULT
    events = rerun({"prepare": blob})
    assert states_of(events, "prepare") == ["Pending", "Cached"]


def test_a_whole_chain_reused_leaves_only_the_rest_to_run() -> None:
    """prepare, flaky and report all reused: only the parameters are dispatched."""
    events = rerun({"prepare": success(), "flaky": success(), "report": success()})
    assert states_of(events, "report") == ["Pending", "Cached"]
    assert sorted(dispatched(events)) == ["x", "xs"]


def test_a_rerun_reusing_every_task_finishes_at_once() -> None:
    """Nothing left to run: the flow run finishes in the answer to its request."""
    command = RunRequested(
        event_id="rerun",
        flow_run_id=FR,
        occurred_at=NOW,
        flow_ref=REF,
        plan=FlowPlan(name="p", version="v1", tasks=(PlanTask(slug="a", name="a"),)),
        context={"rerun_of": EARLIER},
        reuse={"a": success()},
    )
    view, events = decide_and_evolve(FlowRunView(flow_run_id=FR), command, NOW)
    assert view.flow_state_type == "Success"
    assert dispatched(events) == []


def test_a_mapped_task_a_parameter_an_unknown_slug_and_a_failure_are_not_reused() -> None:
    """Entries that do not qualify are ignored: those tasks run (or wait) as usual."""
    mapped = Mapped("mapped", n_map_states=2).serialize()
    events = rerun(
        {
            "inc": success(),
            "x": success(),
            "nowhere": success(),
            "prepare": Failed("boom").serialize(),
            "flaky": mapped,
        }
    )
    assert states_of(events, "inc") == ["Pending"]  # waits for xs, not Cached
    assert states_of(events, "x") == ["Pending", "Submitted"]
    assert states_of(events, "prepare") == ["Pending"]
    assert states_of(events, "flaky") == ["Pending"]
    assert all(e.task_slug != "nowhere" for e in events)


def test_an_invalid_blob_is_not_reused() -> None:
    """A blob that is no valid state (checked like a proposal) is ignored."""
    events = rerun({"prepare": {"type": "Success", "message": 3}})
    assert states_of(events, "prepare") == ["Pending"]


def test_without_rerun_of_the_message_names_an_earlier_flow_run() -> None:
    """The earlier run's id comes from the request's context; absent, it is not guessed."""
    events = rerun({"prepare": success()}, context={})
    cached = [e for e in events if isinstance(e, TaskRunTransitioned) and e.task_slug == "prepare"]
    assert cached[-1].state["message"] == "Reused the result of an earlier flow run"


# ----- the local runner ---------------------------------------------------------------


def flow_with_flaky_step(calls: list[str], allow: list[bool]) -> Flow:
    """prepare(n) -> flaky(y) -> report(z); flaky raises until allow[0] is True."""

    @task
    def prepare(n: int) -> int:
        calls.append("prepare")
        return n * 10

    @task
    def flaky(y: int) -> int:
        calls.append("flaky")
        if not allow[0]:
            raise ValueError("not yet")
        return y + 1

    @task
    def report(z: int) -> str:
        calls.append("report")
        return f"report {z}"

    with Flow("rerun") as flow:
        n = Parameter("n", default=4)
        report(flaky(prepare(n)))
    return flow


def test_a_local_rerun_gives_the_reused_result_to_its_downstream() -> None:
    """Same FlowRunner (same store): prepare does not run again, flaky gets its value."""
    calls: list[str] = []
    allow = [False]
    flow = flow_with_flaky_step(calls, allow)
    runner = FlowRunner(flow, clock=FixedClock(NOW))
    first = runner.run(flow_run_id=EARLIER)
    assert first.view.flow_state_type == "Failed"
    slugs = {t.name: flow.slugs[t] for t in flow.tasks}
    earlier = first.view.record(slugs["prepare"])
    assert earlier is not None
    assert earlier.state_type == "Success"
    allow[0] = True
    calls.clear()
    second = runner.run(
        flow_run_id=FR, reuse={slugs["prepare"]: earlier.state}, rerun_of=EARLIER
    )
    assert second.view.flow_state_type == "Success"
    assert calls == ["flaky", "report"]
    prepare = second.view.record(slugs["prepare"])
    assert prepare is not None
    assert prepare.state_type == "Cached"
    assert prepare.state["message"] == f"Reused the result of flow run {EARLIER}"
    assert second.view.context["rerun_of"] == EARLIER
    report = second.view.record(slugs["report"])
    assert report is not None
    assert second.value(report.state) == "report 41"


def test_folding_a_reruns_ledger_equals_its_view() -> None:
    """The Cached facts are ordinary facts: replay rebuilds the re-run's view."""
    calls: list[str] = []
    allow = [False]
    flow = flow_with_flaky_step(calls, allow)
    runner = FlowRunner(flow, clock=FixedClock(NOW))
    first = runner.run(flow_run_id=EARLIER)
    allow[0] = True
    reuse = {
        r.slug: r.state for r in first.view.task_runs.values() if r.state_type == "Success"
    }
    second = runner.run(flow_run_id=FR, reuse=reuse, rerun_of=EARLIER)
    assert fold(second.events) == second.view
    assert fold(second.events, flow_run_id=FR) == second.view
