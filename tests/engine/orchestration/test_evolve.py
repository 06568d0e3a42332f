"""evolve(view, event) and fold: sequence checks, duplicates, gaps and what each fact changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.orchestration import (
    FlowRunView,
    ForeignEvent,
    SequenceGap,
    decide_and_evolve,
    evolve,
    fold,
)
from engine.state import Failed, Mapped, Pending, Retrying, Running, State, Success
from events import (
    Cause,
    Event,
    FlowPlan,
    FlowRef,
    FlowRunCreated,
    FlowRunTransitioned,
    HeartbeatRecorded,
    PlanEdge,
    PlanTask,
    RunRequested,
    TaskRunTransitioned,
    TransitionRejected,
    WorkDispatched,
    WorkItem,
)

FR = "fr"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(seconds=10)
REF = FlowRef(kind="import", path="pkg.flows:flow")
PLAN = FlowPlan(
    name="p",
    version="v1",
    tasks=(
        PlanTask(slug="a", name="a"),
        PlanTask(slug="m", name="m", edges=(PlanEdge(upstream="a", key="x", mapped=True),)),
    ),
)


def created(flow_run_id: str = FR, event_id: str = "e0") -> FlowRunCreated:
    """The FlowRunCreated fact of a run of PLAN."""
    return FlowRunCreated(
        event_id=event_id,
        flow_run_id=flow_run_id,
        occurred_at=NOW,
        flow_ref=REF,
        parameters={"p": 1},
        plan=PLAN,
        context={"k": "v"},
        idempotency_key="idem",
    )


def moved(
    slug: str,
    seq: int,
    state: State | dict[str, Any],
    *,
    map_index: int | None = None,
    at: datetime = NOW,
    final: bool = True,
    attempt: int = 1,
    event_id: str | None = None,
    command_id: str | None = None,
) -> TaskRunTransitioned:
    """A TaskRunTransitioned fact for `slug` (child `map_index`) at `seq`."""
    run = f"{FR}/{slug}" if map_index is None else f"{FR}/{slug}/{map_index}"
    return TaskRunTransitioned(
        event_id=event_id or f"{run}@{seq}",
        flow_run_id=FR,
        task_run_id=run,
        task_slug=slug,
        map_index=map_index,
        seq=seq,
        occurred_at=at,
        cause=Cause(command_id=command_id),
        state=state.serialize() if isinstance(state, State) else state,
        attempt=attempt,
        final=final,
    )


def flow_moved(seq: int, state: State, at: datetime = NOW) -> FlowRunTransitioned:
    """A FlowRunTransitioned fact at `seq`."""
    return FlowRunTransitioned(
        event_id=f"flow@{seq}", flow_run_id=FR, seq=seq, occurred_at=at, state=state.serialize()
    )


def base() -> FlowRunView:
    """A view of a created flow run whose task `a` is Pending (seq 1)."""
    return fold([created(), flow_moved(2, Running("Running flow.")), moved("a", 1, Pending())])


# ----- creation ----------------------------------------------------------------------------------


def test_flow_run_created_sets_plan_parameters_and_a_scheduled_flow_state() -> None:
    """The first fact gives the view its plan, parameters, context and flow seq 1."""
    view = evolve(FlowRunView(flow_run_id=FR), created())
    assert view.created
    assert view.plan == PLAN
    assert (view.parameters, view.context, view.idempotency_key) == ({"p": 1}, {"k": "v"}, "idem")
    assert view.flow_ref == REF
    assert (view.flow_state_type, view.flow_seq) == ("Scheduled", 1)
    assert view.last_event_at == NOW


def test_a_second_flow_run_created_fact_is_ignored() -> None:
    """Creating an existing flow run again changes no state."""
    view = base()
    again = evolve(view, created(event_id="other"))
    assert again.plan == view.plan
    assert again.flow_state_type == "Running"
    assert again.task_runs == view.task_runs


def test_a_view_without_a_plan_says_so() -> None:
    """Asking an uncreated view for its plan raises LookupError."""
    with pytest.raises(LookupError):
        _ = FlowRunView(flow_run_id=FR).plan


# ----- sequence checks ---------------------------------------------------------------------------


def test_a_task_run_fact_applies_when_its_seq_is_the_next_one() -> None:
    """seq == current + 1 applies: the record takes the new state, seq, attempt and final flag."""
    view = evolve(base(), moved("a", 2, Running(), at=LATER, final=False, attempt=3))
    record = view.record("a")
    assert record is not None
    assert (record.seq, record.state_type, record.attempt, record.final) == (2, "Running", 3, False)
    assert record.state == Running().serialize()
    assert view.last_event_at == LATER


def test_an_immediately_redelivered_event_changes_nothing() -> None:
    """Applying the same event twice in a row gives the same view (at-least-once delivery)."""
    event = moved("a", 2, Running(), command_id="c1")
    once = evolve(base(), event)
    assert evolve(once, event) == once


def test_a_late_redelivery_of_an_old_event_changes_nothing() -> None:
    """A duplicate (seq <= current) arriving after newer events is skipped: nothing changes."""
    first = moved("a", 2, Running(), at=NOW, command_id="c1")
    second = moved("a", 3, Success(), at=LATER, command_id="c2")
    view = fold([first, second], start=base())
    assert evolve(view, first) == view


@pytest.mark.parametrize("seq", [3, 7])
def test_a_gap_in_a_task_runs_sequence_raises(seq: int) -> None:
    """seq > current + 1 means the ledger lost something: SequenceGap, not a silent fix."""
    with pytest.raises(SequenceGap, match=f"expected seq 2, got {seq}"):
        evolve(base(), moved("a", seq, Running()))


def test_the_first_fact_of_a_task_run_must_have_seq_one() -> None:
    """A task run the view has not seen starts at seq 1."""
    with pytest.raises(SequenceGap):
        evolve(base(), moved("m", 2, Pending()))


def test_a_task_run_fact_without_seq_raises() -> None:
    """A task-run fact must carry a seq."""
    event = moved("a", 2, Running()).model_copy(update={"seq": None})
    with pytest.raises(SequenceGap, match="no seq"):
        evolve(base(), event)


def test_the_flow_runs_own_sequence_is_checked_too() -> None:
    """Flow-run facts are sequence-checked: duplicates skipped, gaps raise."""
    view = base()
    assert evolve(view, flow_moved(2, Success())).flow_state_type == "Running"
    with pytest.raises(SequenceGap):
        evolve(view, flow_moved(4, Success()))
    done = evolve(view, flow_moved(3, Success("All reference tasks succeeded.")))
    assert (done.flow_state_type, done.flow_seq) == ("Success", 3)
    assert done.is_finished()


def test_an_event_of_another_flow_run_is_refused() -> None:
    """Folding a foreign flow run's event raises ForeignEvent."""
    with pytest.raises(ForeignEvent, match="belongs to flow run other"):
        evolve(base(), created(flow_run_id="other"))


def test_a_task_run_fact_without_a_task_run_id_is_refused() -> None:
    """A TaskRunTransitioned must name its task run and slug."""
    event = moved("a", 2, Running()).model_copy(update={"task_run_id": None})
    with pytest.raises(ValueError, match="lacks task_run_id"):
        evolve(base(), event)


# ----- what each fact changes --------------------------------------------------------------------


def test_a_rejection_only_records_its_command() -> None:
    """TransitionRejected changes no state, but the command counts as processed."""
    view = base()
    rejected = TransitionRejected(
        event_id="c9/0",
        flow_run_id=FR,
        occurred_at=LATER,
        cause=Cause(command_id="c9"),
        command_id="c9",
        command_type="transition_proposed",
        reason="stale",
    )
    after = evolve(view, rejected)
    assert after.task_runs == view.task_runs
    assert after.flow_state == view.flow_state
    assert "c9" in after.processed_commands
    assert after.last_event_at == LATER


def test_work_dispatched_records_the_dispatched_attempt() -> None:
    """The record's attempt becomes the work item's attempt."""
    view = evolve(base(), moved("a", 2, Retrying(run_count=1)))
    record = view.record("a")
    assert record is not None
    work = WorkItem(
        flow_run_id=FR,
        task_run_id=f"{FR}/a",
        slug="a",
        map_index=None,
        flow_ref=REF,
        parameters={},
        state=record.state,
        expected_seq=2,
        attempt=2,
        upstream=(),
    )
    dispatched = WorkDispatched(
        event_id="w", flow_run_id=FR, occurred_at=NOW, task_run_id=f"{FR}/a", seq=2, work=work
    )
    after = evolve(view, dispatched)
    assert after.record("a").attempt == 2  # type: ignore[union-attr]
    assert after.record("a").seq == 2  # type: ignore[union-attr]


def test_heartbeat_recorded_sets_the_last_heartbeat() -> None:
    """A recorded heartbeat stamps the record with its time."""
    view = evolve(base(), moved("a", 2, Running()))
    beat = HeartbeatRecorded(
        event_id="h", flow_run_id=FR, occurred_at=LATER, task_run_id=f"{FR}/a", attempt=1
    )
    assert evolve(view, beat).record("a").last_heartbeat == LATER  # type: ignore[union-attr]


def test_scheduled_and_running_indexes_follow_the_state() -> None:
    """A timed Scheduled kind is in `scheduled`, a Running kind in `running`, until they change."""
    retry = Retrying(start_time=LATER, run_count=1)
    view = evolve(base(), moved("a", 2, Running()))
    assert f"{FR}/a" in view.running
    view = evolve(view, moved("a", 3, retry))
    assert f"{FR}/a" not in view.running
    assert view.scheduled[f"{FR}/a"] == retry.serialize()["start_time"]
    view = evolve(view, moved("a", 4, Running()))
    assert f"{FR}/a" not in view.scheduled


def test_unfinished_runs_count_only_resting_finished_states() -> None:
    """A finished state with final=False (a step on the way) still counts as unfinished."""
    view = base()
    assert view.unfinished_runs == 1
    view = evolve(view, moved("a", 2, Failed(), final=False))
    assert view.unfinished_runs == 1
    view = evolve(view, moved("a", 3, Retrying(run_count=1)))
    assert view.unfinished_runs == 1
    view = evolve(view, moved("a", 4, Success()))
    assert view.unfinished_runs == 0
    view = evolve(view, moved("a", 5, Pending("rerun")))
    assert view.unfinished_runs == 1


def test_a_mapped_parent_records_its_number_of_children() -> None:
    """Mapped sets children[slug] (map_children in its context wins over n_map_states)."""
    view = evolve(base(), moved("m", 1, Pending()))
    blob = Mapped(n_map_states=3).serialize()
    mapped = evolve(view, moved("m", 2, blob))
    assert (mapped.children["m"], mapped.unfinished_children["m"]) == (3, 3)
    blob["context"] = {"map_children": 5}
    assert evolve(view, moved("m", 2, blob)).children["m"] == 5


def test_finishing_children_counts_down_the_unfinished_children() -> None:
    """Each child that comes to rest finished lowers unfinished_children of its parent."""
    view = evolve(base(), moved("m", 1, Pending()))
    view = evolve(view, moved("m", 2, Mapped(n_map_states=2)))
    view = fold([moved("m", 1, Pending(), map_index=i) for i in (0, 1)], start=view)
    view = evolve(view, moved("m", 2, Success(), map_index=1))
    assert view.unfinished_children["m"] == 1
    view = evolve(view, moved("m", 2, Failed(), map_index=0))
    assert view.unfinished_children["m"] == 0


def test_evolve_returns_a_new_view_and_leaves_the_old_one_alone() -> None:
    """Views are values: evolve never changes its argument."""
    view = base()
    before = view.record("a")
    after = evolve(view, moved("a", 2, Running()))
    assert after is not view
    assert view.record("a") is before
    assert view.record("a").state_type == "Pending"  # type: ignore[union-attr]


# ----- fold --------------------------------------------------------------------------------------


def test_fold_of_nothing_needs_a_flow_run_id() -> None:
    """An empty fold gives an empty view of the named flow run, or raises without a name."""
    assert fold([], flow_run_id=FR) == FlowRunView(flow_run_id=FR)
    with pytest.raises(ValueError, match="flow_run_id"):
        fold([])


def test_fold_takes_the_flow_run_id_from_the_first_event() -> None:
    """Without a start view, the first event names the flow run."""
    assert fold([created()]).flow_run_id == FR


def test_fold_replays_what_decide_produced() -> None:
    """Folding decide's facts from scratch gives the view decide_and_evolve returned."""
    command = RunRequested(event_id="run", flow_run_id=FR, occurred_at=NOW, flow_ref=REF, plan=PLAN)
    view, events = decide_and_evolve(FlowRunView(flow_run_id=FR), command, NOW)
    replayed = fold(events)
    assert replayed == view
    assert "run" in replayed.processed_commands


def test_fold_continues_from_a_start_view() -> None:
    """fold(b, start=fold(a)) == fold(a + b)."""
    events: list[Event] = [
        created(),
        flow_moved(2, Running()),
        moved("a", 1, Pending()),
        moved("a", 2, Running(), at=LATER),
    ]
    assert fold(events[2:], start=fold(events[:2])) == fold(events)
