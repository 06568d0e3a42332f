"""Fuzzing `decide` with arbitrary commands: it never raises, and what it returns folds.

Unlike the command machine in test_properties.py (plausible proposals), these
commands carry anything their types allow: unknown task runs, negative seqs,
attempts far off, blobs that are not states, heartbeats for nobody.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.orchestration import FlowRunView, decide_and_evolve, fold
from engine.orchestration.decide import is_unknown_run
from events import (
    CancelRequested,
    Cause,
    Command,
    Event,
    FlowPlan,
    FlowRef,
    HeartbeatSent,
    PlanEdge,
    PlanTask,
    ResumeRequested,
    RunRequested,
    SchedulerTicked,
    SetStateRequested,
    TransitionProposed,
    WorkerIdentity,
)

FR = "fuzz"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
PLAN = FlowPlan(
    name="f",
    version="1",
    tasks=(
        PlanTask(slug="a", name="a", max_retries=1),
        PlanTask(slug="b", name="b", edges=(PlanEdge(upstream="a", mapped=True),)),
    ),
)
FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

small = st.integers(-2, 6)
task_runs = st.sampled_from([f"{FR}/a", f"{FR}/b", f"{FR}/b/0", f"{FR}/nope", "other/a"])
workers = st.none() | st.sampled_from([WorkerIdentity(id=w, host="h", pid=1) for w in "xy"])
blob_values = (
    st.none() | st.integers() | st.text(max_size=6) | st.sampled_from(["2024-01-01T00:00:00Z"])
)
blobs = st.dictionaries(
    st.sampled_from(["type", "message", "start_time", "run_count", "context", "n_map_states", "x"]),
    blob_values | st.sampled_from(["Running", "Success", "Failed", "Retrying", "Mapped", "Nope"]),
    max_size=4,
)


@st.composite
def commands(draw: st.DrawFn, n: int) -> Command:
    common: dict[str, Any] = {
        "event_id": f"c{n}-{draw(st.integers(0, 3))}",
        "flow_run_id": FR,
        "occurred_at": T0,
        "cause": Cause(worker=draw(workers)),
    }
    kind = draw(st.sampled_from(["propose", "beat", "set", "resume", "cancel", "tick", "run"]))
    if kind == "propose":
        return TransitionProposed(
            **common,
            task_run_id=draw(task_runs),
            expected_seq=draw(small),
            attempt=draw(small),
            state=draw(blobs),
            final=draw(st.booleans()),
        )
    if kind == "beat":
        return HeartbeatSent(**common, task_run_id=draw(task_runs), attempt=draw(small))
    if kind == "set":
        return SetStateRequested(
            **common, task_run_id=draw(st.none() | task_runs), state=draw(blobs)
        )
    if kind == "resume":
        return ResumeRequested(**common, task_run_id=draw(task_runs))
    if kind == "cancel":
        return CancelRequested(**common)
    if kind == "tick":
        return SchedulerTicked(
            **common, heartbeat_timeout_s=draw(st.none() | st.floats(0, 100, allow_nan=False))
        )
    return RunRequested(
        **common,
        flow_ref=FlowRef(kind="import", path="m:f"),
        plan=draw(st.none() | st.just(PLAN)),
        parameters=draw(st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)),
    )


@FUZZ
@given(st.booleans(), st.data())
def test_decide_never_raises_and_its_facts_fold_to_its_view(
    created: bool, data: st.DataObject
) -> None:
    view = FlowRunView(flow_run_id=FR)
    facts: list[Event] = []
    if created:
        run = RunRequested(
            event_id="run",
            flow_run_id=FR,
            occurred_at=T0,
            flow_ref=FlowRef(kind="import", path="m:f"),
            plan=PLAN,
        )
        view, facts = decide_and_evolve(view, run, T0)
    now = T0
    for n in range(data.draw(st.integers(1, 12))):
        now += timedelta(seconds=data.draw(st.sampled_from([0, 1, 40])))
        command = data.draw(commands(n))
        unknown = is_unknown_run(view, command)  # its refusal is dead-lettered, not folded
        view, new = decide_and_evolve(view, command, now)
        if not unknown:
            facts.extend(new)
    assert fold(facts, flow_run_id=FR) == view
