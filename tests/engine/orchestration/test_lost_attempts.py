"""A Running attempt whose worker goes silent is failed by the scheduler (and retried)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.orchestration import FlowRunView, decide_and_evolve
from engine.state import Running
from events import (
    CancelRequested,
    FlowPlan,
    FlowRef,
    FlowRunTransitioned,
    HeartbeatSent,
    PlanTask,
    RunRequested,
    SchedulerTicked,
    TaskRunTransitioned,
    TransitionProposed,
    WorkDispatched,
)
from services.roles.scheduler import lost_attempts

T0 = datetime(2024, 1, 1, tzinfo=UTC)
RUN = "run-1"
TASK = f"{RUN}/work-1"


def _started(max_retries: int) -> FlowRunView:
    plan = FlowPlan(name="f", version="v", tasks=(PlanTask(
        slug="work-1", name="work", max_retries=max_retries,
        retry_delay_s=5.0 if max_retries else None, is_reference=True),))
    view, _ = decide_and_evolve(FlowRunView(flow_run_id=RUN), RunRequested(
        event_id="c1", flow_run_id=RUN, occurred_at=T0,
        flow_ref=FlowRef(kind="import", path="m:f"), plan=plan), T0)
    record = view.task_runs[TASK]
    view, facts = decide_and_evolve(view, TransitionProposed(
        event_id="c2", flow_run_id=RUN, task_run_id=TASK, occurred_at=T0,
        expected_seq=record.seq, attempt=1, state=Running("Starting task run.").serialize(),
        final=False), T0)
    assert view.task_runs[TASK].state_type == "Running", facts
    return view


def _tick(view: FlowRunView, at: datetime, event_id: str) -> tuple[FlowRunView, list[object]]:
    view, facts = decide_and_evolve(view, SchedulerTicked(
        event_id=event_id, flow_run_id=RUN, occurred_at=at, heartbeat_timeout_s=30.0), at)
    return view, list(facts)


def test_a_silent_attempt_within_the_timeout_is_left_running() -> None:
    """Twenty seconds without a heartbeat is within a 30 s timeout: nothing happens."""
    view, facts = _tick(_started(max_retries=0), T0 + timedelta(seconds=20), "t1")
    assert facts == []
    assert view.task_runs[TASK].state_type == "Running"


def test_a_lost_attempt_without_retries_fails_the_task_and_the_flow() -> None:
    """After the timeout the attempt fails for good and the flow run fails with it."""
    view, facts = _tick(_started(max_retries=0), T0 + timedelta(seconds=31), "t1")
    moves = [f.state["type"] for f in facts if isinstance(f, TaskRunTransitioned)]
    assert moves == ["Failed"]
    assert "No heartbeat" in view.task_runs[TASK].state["message"]
    assert [f.state["type"] for f in facts if isinstance(f, FlowRunTransitioned)] == ["Failed"]


def test_a_lost_attempt_with_retries_left_is_retried_after_the_delay() -> None:
    """The lost attempt counts: Failed (not final), then Retrying due after retry_delay."""
    view, facts = _tick(_started(max_retries=1), T0 + timedelta(seconds=31), "t1")
    moves = [(f.state["type"], f.final) for f in facts if isinstance(f, TaskRunTransitioned)]
    assert moves == [("Failed", False), ("Retrying", True)]
    assert not any(isinstance(f, WorkDispatched) for f in facts)
    view, facts = _tick(view, T0 + timedelta(seconds=37), "t2")
    dispatched = [f for f in facts if isinstance(f, WorkDispatched)]
    assert len(dispatched) == 1
    assert dispatched[0].work.attempt == 2


def test_heartbeats_keep_an_attempt_alive() -> None:
    """A heartbeat 25 s in restarts the timeout."""
    view = _started(max_retries=0)
    beat_at = T0 + timedelta(seconds=25)
    view, _ = decide_and_evolve(view, HeartbeatSent(
        event_id="h1", flow_run_id=RUN, task_run_id=TASK, occurred_at=beat_at, attempt=1),
        beat_at)
    view, facts = _tick(view, T0 + timedelta(seconds=40), "t1")
    assert facts == []
    assert view.task_runs[TASK].state_type == "Running"


def test_a_cancelling_attempt_whose_worker_went_silent_ends_cancelled_and_so_does_the_flow() -> (
    None
):
    """Found by the simulation (seed 1406): a cancel reached a Running attempt whose
    worker then died; nobody proposed again, and the flow stayed Cancelling forever."""
    view, _ = decide_and_evolve(_started(max_retries=0), CancelRequested(
        event_id="cancel", flow_run_id=RUN, occurred_at=T0), T0)
    assert view.task_runs[TASK].state_type == "Cancelling"
    assert lost_attempts(view, T0 + timedelta(seconds=31), 30.0) == [TASK]
    view, facts = _tick(view, T0 + timedelta(seconds=31), "t1")
    moves = [f.state["type"] for f in facts if isinstance(f, TaskRunTransitioned)]
    assert moves == ["Cancelled"]
    assert view.flow_state_type == "Cancelled"


def test_a_worker_lost_between_failed_and_its_retrying_gets_the_retry_it_never_proposed() -> (
    None
):
    """Found by the simulation (seed 4675): the worker proposed Failed (final=False) and
    died before its Retrying; the run was not Running, so no tick ever looked at it."""
    view = _started(max_retries=1)
    view, _ = decide_and_evolve(view, TransitionProposed(
        event_id="c3", flow_run_id=RUN, task_run_id=TASK, occurred_at=T0,
        expected_seq=view.task_runs[TASK].seq, attempt=1,
        state={"type": "Failed", "message": "boom"}, final=False), T0)
    assert view.task_runs[TASK].state_type == "Failed"
    later = T0 + timedelta(seconds=31)
    assert lost_attempts(view, later, 30.0) == [TASK]
    view, facts = _tick(view, later, "t1")
    moves = [f.state["type"] for f in facts if isinstance(f, TaskRunTransitioned)]
    assert moves == ["Retrying"]
    assert view.task_runs[TASK].final
