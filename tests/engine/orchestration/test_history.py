"""Time travel (`fold_as_of`) and the audit trail (`timeline`) over real local ledgers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from itertools import cycle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Flow, context, signals, task
from engine.flow_runner import FlowRunner, RunOutcome
from engine.orchestration import (
    FlowRunView,
    TimelineRow,
    check_as_of,
    decide_and_evolve,
    fold,
    fold_as_of,
    timeline,
)
from engine.state import Running
from engine.task import FunctionTask
from events import (
    Cause,
    Event,
    Fact,
    TransitionProposed,
    TransitionRejected,
    WorkerIdentity,
    decode,
    to_dict,
)

FR = "fr-history"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
RUNS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
BEHAVIOURS = ("ok", "fail", "skip", "retry", "map", "map_retry")


class SteppingClock:
    """A clock that moves on by the next of `steps` seconds at every read (0 keeps it still).

    Real ledgers hold runs of facts with one time (a command's facts share its
    `now`) between ones with later times; this gives both, deterministically.
    """

    def __init__(self, steps: list[int]) -> None:
        self._now = NOW
        self._steps: Iterator[int] = cycle(steps or [0])

    def __call__(self) -> datetime:
        self._now += timedelta(seconds=next(self._steps))
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


def body(behaviour: str, index: int) -> FunctionTask:
    """A task that succeeds, fails, skips, or fails its first attempt and is retried."""

    def work(x: int | None = None) -> int:
        if behaviour == "fail":
            raise ValueError(f"t{index} failed")
        if behaviour == "skip":
            raise signals.SKIP("skipped")
        if "retry" in behaviour and context.get("task_run_count", 1) == 1 and x in (None, 2):
            raise ValueError(f"t{index} first attempt")
        return index if x is None else x * 10

    retries: dict[str, Any] = (
        {"max_retries": 1, "retry_delay": timedelta(seconds=5)} if "retry" in behaviour else {}
    )
    return task(work, name=f"t{index}", **retries)


def build_flow(behaviours: list[str]) -> Flow:
    """Independent tasks; mapped ones map over [1, 2, 3]."""
    with Flow("history") as flow:
        for index, behaviour in enumerate(behaviours):
            t = body(behaviour, index)
            if behaviour.startswith("map"):
                t.map([1, 2, 3])
            else:
                t()
    return flow


def run(behaviours: list[str], steps: list[int] | None = None) -> RunOutcome:
    """The flow run through the local runner on a clock that steps at each read."""
    clock = SteppingClock(steps or [0])
    return FlowRunner(build_flow(behaviours), clock=clock, sleep=clock.advance).run(flow_run_id=FR)


LEDGERS = st.builds(
    run,
    st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=4),
    st.lists(st.integers(0, 2), max_size=6),
)


def refused_claim(outcome: RunOutcome) -> list[Event]:
    """The facts the ledger records for a stale Running claim on the run's first task."""
    record = next(iter(outcome.view.task_runs.values()))
    command = TransitionProposed(
        event_id="late-claim",
        flow_run_id=FR,
        occurred_at=outcome.view.last_event_at or NOW,
        cause=Cause(worker=WorkerIdentity(id="worker-late", host="h", pid=7)),
        task_run_id=record.task_run_id,
        expected_seq=1,
        attempt=1,
        state=Running().serialize(),
        final=False,
    )
    _, facts = decide_and_evolve(outcome.view, command, outcome.view.last_event_at or NOW)
    return facts


# ----- properties ---------------------------------------------------------------------------------


@RUNS
@given(LEDGERS)
def test_the_local_runners_ledger_never_goes_back_in_time(outcome: RunOutcome) -> None:
    """The premise of the properties below: one ledger clock, so times never decrease."""
    times = [event.occurred_at for event in outcome.events]
    assert times == sorted(times)


@RUNS
@given(LEDGERS)
def test_as_of_the_last_event_is_the_whole_fold(outcome: RunOutcome) -> None:
    """Time travel to the time of the last fact rebuilds the full view."""
    last = outcome.events[-1].occurred_at
    assert fold_as_of(outcome.events, last) == fold(outcome.events) == outcome.view


@RUNS
@given(LEDGERS)
def test_as_of_any_event_time_is_the_fold_up_to_the_last_event_of_that_time(
    outcome: RunOutcome,
) -> None:
    """At each fact's time, the view holds every fact of that time and none later."""
    events = outcome.events
    last_index = {event.occurred_at: i for i, event in enumerate(events)}
    for at, i in last_index.items():
        assert fold_as_of(events, at) == fold(events[: i + 1]), at


@RUNS
@given(LEDGERS)
def test_the_timeline_has_one_row_per_fact_in_ledger_order(outcome: RunOutcome) -> None:
    """Every fact is a row, in order, with its seq, time, kind and cause."""
    rows = timeline(outcome.events)
    facts = [e for e in outcome.events if isinstance(e, Fact)]
    assert [r.event_id for r in rows] == [f.event_id for f in facts]
    assert [(r.seq, r.occurred_at, r.kind) for r in rows] == [
        (f.seq, f.occurred_at, f.type) for f in facts
    ]
    assert [r.command_id for r in rows] == [f.cause.command_id for f in facts]


@RUNS
@given(LEDGERS)
def test_a_task_runs_timeline_is_its_part_of_the_whole(outcome: RunOutcome) -> None:
    """Filtering by task run keeps exactly that run's rows, in the same order."""
    rows = timeline(outcome.events)
    for task_run_id, record in outcome.view.task_runs.items():
        own = timeline(outcome.events, task_run_id=task_run_id)
        assert own == [r for r in rows if r.task_run_id == task_run_id]
        states = [r for r in own if r.kind == "task_run_transitioned"]
        assert (states[-1].seq, states[-1].state_type) == (record.seq, record.state_type)


# ----- fold_as_of ---------------------------------------------------------------------------------


def test_before_the_first_fact_the_run_is_an_empty_view() -> None:
    """As of a time before the run existed, its view is empty (not created)."""
    outcome = run(["ok"])
    view = fold_as_of(outcome.events, NOW - timedelta(seconds=1))
    assert view == FlowRunView(flow_run_id=FR)
    assert not view.created


def test_a_retried_task_is_retrying_between_its_attempts() -> None:
    """Halfway through a retry delay, the task rests in Retrying and the flow is Running."""
    outcome = run(["retry"])
    view = fold_as_of(outcome.events, NOW + timedelta(seconds=2))
    [record] = view.task_runs.values()
    assert (record.state_type, record.attempt) == ("Retrying", 1)
    assert view.flow_state_type == "Running"
    assert fold_as_of(outcome.events, NOW + timedelta(seconds=5)).flow_state_type == "Success"


def test_as_of_compares_instants_whatever_the_time_zone() -> None:
    """An as_of in another zone means the same instant as its UTC equivalent."""
    outcome = run(["retry"])
    plus_two = (NOW + timedelta(seconds=2)).astimezone(timezone(timedelta(hours=2)))
    assert fold_as_of(outcome.events, plus_two) == fold_as_of(
        outcome.events, NOW + timedelta(seconds=2)
    )


def test_a_naive_as_of_is_refused_with_the_reason() -> None:
    """A naive datetime names no instant: ValueError saying to give a zone."""
    outcome = run(["ok"])
    with pytest.raises(ValueError, match="as_of must be timezone-aware"):
        fold_as_of(outcome.events, datetime(2024, 1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="got naive 2024-01-02T03:04:05"):
        check_as_of(datetime(2024, 1, 2, 3, 4, 5))


def test_a_fact_after_a_later_one_is_not_known_earlier_even_if_a_clock_stepped_back() -> None:
    """Ledger order wins: time travel stops at the first fact later than as_of, leaving no gap."""
    events = run(["ok"]).events
    late = decode({**to_dict(events[3]), "occurred_at": (NOW + timedelta(seconds=9)).isoformat()})
    stepped_back = [*events[:3], late, *events[4:]]
    assert fold_as_of(stepped_back, NOW) == fold(events[:3])


def test_time_travel_continues_from_a_start_view() -> None:
    """With `start`, only the facts after it are filtered and folded on top of it."""
    events = run(["retry"]).events
    split = 4
    start = fold(events[:split])
    at = NOW + timedelta(seconds=2)
    assert fold_as_of(events[split:], at, start=start) == fold_as_of(events, at)


def test_no_events_and_no_start_is_refused_like_fold() -> None:
    """Without a fact or a start view there is no flow run to name."""
    with pytest.raises(ValueError, match="needs a flow_run_id"):
        fold_as_of([], NOW)
    assert fold_as_of([], NOW, start=FlowRunView(flow_run_id=FR)) == FlowRunView(flow_run_id=FR)


# ----- timeline -----------------------------------------------------------------------------------


def test_a_retry_reads_as_failed_retrying_running_success_with_its_attempts() -> None:
    """The audit trail of a retried task: each state, attempt, finality and worker."""
    outcome = run(["retry"])
    rows = timeline(outcome.events, task_run_id=f"{FR}/t0-1")
    moves = [(r.state_type, r.attempt, r.final) for r in rows if r.kind == "task_run_transitioned"]
    assert moves == [
        ("Pending", 1, True),
        ("Submitted", 1, True),
        ("Running", 1, False),
        ("Failed", 1, False),
        ("Retrying", 1, True),
        ("Submitted", 2, True),
        ("Running", 2, False),
        ("Success", 2, True),
    ]
    failed = next(r for r in rows if r.state_type == "Failed")
    assert failed.message is not None
    assert "t0 first attempt" in failed.message
    assert {r.worker_id for r in rows if r.state_type == "Running"} == {"local"}
    assert all(r.task_slug == "t0-1" and r.map_index is None for r in rows)


def test_a_refused_command_is_a_row_with_its_reason_and_proposer() -> None:
    """A TransitionRejected row names the refused state, the reason, the command and worker."""
    outcome = run(["ok"])
    refusal = refused_claim(outcome)
    assert [type(f) for f in refusal] == [TransitionRejected]
    rows = timeline([*outcome.events, *refusal])
    row = rows[-1]
    assert row == TimelineRow(
        seq=None,
        occurred_at=refusal[0].occurred_at,
        kind="transition_rejected",
        flow_run_id=FR,
        task_run_id=f"{FR}/t0-1",
        task_slug="t0-1",  # from the run's earlier facts: a rejection carries no slug
        map_index=None,
        state_type="Running",
        message=refusal[0].reason,  # type: ignore[attr-defined]
        attempt=None,
        final=None,
        command_id="late-claim",
        worker_id="worker-late",
        event_id=refusal[0].event_id,
    )
    assert rows[-1] in timeline([*outcome.events, *refusal], task_run_id=f"{FR}/t0-1")


def test_mapped_children_have_their_index_and_the_flow_its_own_rows() -> None:
    """Children rows carry map_index; flow-run rows carry no task run."""
    rows = timeline(run(["map"]).events)
    children = {r.map_index for r in rows if r.task_slug == "t0-1" and r.map_index is not None}
    assert children == {0, 1, 2}
    flow = [r.state_type for r in rows if r.kind == "flow_run_transitioned"]
    assert flow == ["Running", "Success"]
    created = rows[0]
    assert (created.kind, created.message, created.task_run_id) == (
        "flow_run_created",
        "__local__:flow",
        None,
    )


def test_a_fact_delivered_twice_is_one_row_as_in_the_fold() -> None:
    """At-least-once delivery may repeat a record; the audit trail lists the fact once."""
    events = run(["ok"]).events
    assert timeline([*events[:5], events[4], *events[5:]]) == timeline(events)


def test_commands_are_not_facts_and_make_no_rows() -> None:
    """Only what the ledger recorded is on the audit trail."""
    outcome = run(["ok"])
    command = TransitionProposed(
        event_id="cmd",
        flow_run_id=FR,
        occurred_at=NOW,
        task_run_id=f"{FR}/t0-1",
        expected_seq=1,
        attempt=1,
        state=Running().serialize(),
    )
    assert timeline([command, *outcome.events]) == timeline(outcome.events)
