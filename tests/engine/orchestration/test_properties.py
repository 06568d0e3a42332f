"""Hypothesis properties of the pure ledger (issue 2, "Tests that must exist and pass").

Two generators feed them:

* a command machine: random proposals (and operator/scheduler commands) sent to
  a real view through `decide_and_evolve`, checked after every command;
* random small flows (tasks that succeed, fail, skip, retry, loop, pause or map)
  run through the local `FlowRunner`, whose ledgers are folded back.

Examples are derandomized so a run of the suite is reproducible.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Flow, context, signals, task, triggers, unmapped
from engine.clock import FixedClock
from engine.flow_runner import FlowRunner, RunOutcome
from engine.orchestration import (
    TRANSITIONS,
    FlowRunView,
    allowed,
    allowed_manually,
    decide_and_evolve,
    fold,
)
from engine.orchestration.rules import FINISHED
from engine.state import STATE_CLASSES, Mapped, Pending, State
from engine.task import Task
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
    TaskRunTransitioned,
    TransitionProposed,
    WorkerIdentity,
)

FR = "prop"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
REF = FlowRef(kind="import", path="pkg.flows:flow")
WORKER = WorkerIdentity(id="w", host="h", pid=1)
TYPES = sorted(name for name in STATE_CLASSES if name != "State")
META = {"Submitted", "Queued", "ClientFailed"}
TIMED = {"Scheduled", "Paused", "Resume", "Retrying"}
MACHINE = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
RUNS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# ----- the command machine -----------------------------------------------------------------------

MACHINE_PLAN = FlowPlan(
    name="machine",
    version="v1",
    tasks=(
        PlanTask(slug="a", name="a", max_retries=2, retry_delay_s=0.0, is_reference=True),
        PlanTask(slug="b", name="b", is_reference=True),
        PlanTask(slug="c", name="c", edges=(PlanEdge(upstream="a", key="x"),), is_reference=True),
    ),
)


@dataclass
class Step:
    """One command the machine sent, with the views around it and the facts it got."""

    command: Command
    before: FlowRunView
    after: FlowRunView
    events: list[Event]


Draw = tuple[int, int, int, int, int, int, bool]
DRAWS = st.lists(
    st.tuples(
        st.integers(0, 9),  # command kind: 0-5 propose, 6 cancel, 7 resume, 8 set-state, 9 tick
        st.integers(0, 15),  # target task run
        st.integers(0, 63),  # state: likely successor (even) or any class (odd)
        st.integers(0, 6),  # expected_seq offset (mostly right)
        st.integers(0, 3),  # attempt offset (mostly right)
        st.integers(0, 5),  # start time / n_map_states / heartbeat attempt / tick advance
        st.booleans(),  # final
    ),
    min_size=1,
    max_size=30,
)
SEQ_OFFSETS = (0, 0, 0, 0, 0, -1, 1)
ATTEMPT_OFFSETS = (0, 0, 0, 1)


class Machine:
    """Drives a real flow-run view with commands decoded from drawn integers.

    Drawing plain integers once per example (and decoding them against the
    current view) keeps generation cheap and lets Hypothesis shrink sequences.
    """

    def __init__(self) -> None:
        self.now = NOW
        self.count = 0
        self.view, _ = decide_and_evolve(
            FlowRunView(flow_run_id=FR),
            RunRequested(
                event_id="run", flow_run_id=FR, occurred_at=NOW, flow_ref=REF, plan=MACHINE_PLAN
            ),
            NOW,
        )

    def _id(self) -> str:
        self.count += 1
        return f"m{self.count}"

    def _run_id(self, pick: int) -> str:
        runs = [*sorted(self.view.task_runs), f"{FR}/unknown"]
        return runs[pick % len(runs)]

    def _state(self, current: str | None, pick: int, extra: int) -> dict[str, Any]:
        likely = sorted(TRANSITIONS.get(current or "", frozenset())) or TYPES
        names = likely if pick % 2 == 0 else TYPES
        name = names[(pick // 2) % len(names)]
        cls = STATE_CLASSES[name]
        state: State
        if name in META:
            state = cls(state=Pending())  # type: ignore[call-arg]
        elif name == "Mapped":
            state = Mapped(n_map_states=extra % 3)
        elif name in TIMED:
            start = (None, self.now, self.now + timedelta(seconds=10))[extra % 3]
            state = cls(start_time=start)  # type: ignore[call-arg]
        else:
            state = cls()
        return state.serialize()

    def command(self, draw: Draw, proposals_only: bool) -> Command:
        kind, target, pick, seq_offset, attempt_offset, extra, final = draw
        common: dict[str, Any] = {
            "event_id": self._id(),
            "flow_run_id": FR,
            "occurred_at": self.now,
        }
        run = self._run_id(target)
        record = self.view.task_runs.get(run)
        current = record.state_type if record else None
        if proposals_only or kind <= 5:
            return TransitionProposed(
                task_run_id=run,
                cause=Cause(worker=WORKER),
                expected_seq=(record.seq if record else 0) + SEQ_OFFSETS[seq_offset],
                attempt=(record.attempt if record else 1) + ATTEMPT_OFFSETS[attempt_offset],
                state=self._state(current, pick, extra),
                final=final,
                **common,
            )
        if kind == 6:
            return CancelRequested(**common)
        if kind == 7:
            return ResumeRequested(task_run_id=run, **common)
        if kind == 8:
            flow_level = target % 4 == 3
            return SetStateRequested(
                task_run_id=None if flow_level else run,
                state=self._state(None if flow_level else current, pick, extra),
                **common,
            )
        if final:
            return HeartbeatSent(task_run_id=run, attempt=1 + extra % 3, **common)
        self.now += timedelta(seconds=10 * (extra % 2))
        return SchedulerTicked(event_id=common["event_id"], flow_run_id=FR, occurred_at=self.now)

    def steps(self, draws: list[Draw], proposals_only: bool = False) -> list[Step]:
        out = []
        for draw in draws:
            command = self.command(draw, proposals_only)
            before = self.view
            self.view, events = decide_and_evolve(before, command, self.now)
            out.append(Step(command, before, self.view, events))
        return out


def transitions(events: list[Event]) -> list[TaskRunTransitioned]:
    """The task-run transitions among `events`."""
    return [e for e in events if isinstance(e, TaskRunTransitioned)]


@MACHINE
@given(DRAWS)
def test_terminal_states_absorb_unless_a_rule_allows_leaving_them(draws: list[Draw]) -> None:
    """Under random proposals, a finished task run only ever leaves along a listed edge.

    A finished state the run only passed through (final=False, e.g. the Failed
    before its Retrying) may also be followed by anything a running run may become
    (a state handler replaced the next step); a resting one only along its edges.
    """
    for step in Machine().steps(draws, proposals_only=True):
        for run_id, record in step.before.task_runs.items():
            if record.state_type not in FINISHED:
                continue
            moves = [e for e in transitions(step.events) if e.task_run_id == run_id]
            if not TRANSITIONS.get(record.state_type):
                assert moves == [], (record.state_type, moves)
                assert step.after.task_runs[run_id] == record
            for move in moves[:1]:
                mid_run = not record.final
                assert allowed(record.state_type, move.state["type"], mid_run=mid_run), (
                    record,
                    move,
                )
                if record.final:
                    assert move.state["type"] in TRANSITIONS[record.state_type], (record, move)


@MACHINE
@given(DRAWS)
def test_seq_grows_by_exactly_one_per_accepted_transition(draws: list[Draw]) -> None:
    """Each TaskRunTransitioned is seq + 1 of its run; a run's seq counts its transitions."""
    for step in Machine().steps(draws):
        seqs = {run_id: record.seq for run_id, record in step.before.task_runs.items()}
        for event in transitions(step.events):
            assert event.task_run_id is not None
            assert event.seq == seqs.get(event.task_run_id, 0) + 1, event
            seqs[event.task_run_id] = event.seq
        assert {run_id: r.seq for run_id, r in step.after.task_runs.items()} == seqs


@MACHINE
@given(DRAWS)
def test_decide_never_emits_an_illegal_transition_in_answer_to_a_proposal(
    draws: list[Draw],
) -> None:
    """Every transition decide emits for a TransitionProposed is allowed by the rules."""
    for step in Machine().steps(draws):
        if not isinstance(step.command, TransitionProposed):
            continue
        for event in transitions(step.events):
            assert allowed(event.previous, event.state["type"]), (event.previous, event.state)


@MACHINE
@given(DRAWS)
def test_moves_the_ledger_makes_itself_stay_inside_the_transition_table(
    draws: list[Draw],
) -> None:
    """Cancel, resume, ticks and dispatches move runs only along the table (set-state: manually)."""
    for step in Machine().steps(draws):
        if isinstance(step.command, TransitionProposed):
            continue
        manual = isinstance(step.command, SetStateRequested)
        for index, event in enumerate(transitions(step.events)):
            pair = (event.previous, event.state["type"])
            if manual and index == 0 and event.task_run_id == step.command.task_run_id:
                assert allowed_manually(*pair), pair
            else:
                assert allowed(*pair), (type(step.command).__name__, pair)


# ----- random flows through the local runner -----------------------------------------------------

BEHAVIOURS = ["ok", "fail", "skip", "retry", "loop", "pause", "map_ok", "map_fail", "map_retry"]
TRIGGERS: dict[str, Callable[..., bool]] = {
    "all_successful": triggers.all_successful,
    "all_finished": triggers.all_finished,
    "any_failed": triggers.any_failed,
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a random flow."""

    behaviour: str
    upstream: tuple[int, ...]
    trigger: str


@st.composite
def flow_specs(draw: st.DrawFn) -> list[TaskSpec]:
    """A random DAG of 1-5 tasks, each with a behaviour, upstreams and a trigger."""
    specs = []
    for i in range(draw(st.integers(1, 5))):
        upstream = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2)) if i else []
        specs.append(
            TaskSpec(
                behaviour=draw(st.sampled_from(BEHAVIOURS)),
                upstream=tuple(upstream),
                trigger=draw(st.sampled_from(sorted(TRIGGERS))),
            )
        )
    return specs


def body_for(behaviour: str, index: int, arguments: list[str]) -> Callable[..., Any]:
    """A deterministic body taking exactly `arguments` by keyword."""

    def body(**kwargs: Any) -> Any:
        run_count = context.get("task_run_count", 1)
        x = kwargs.get("x")
        if behaviour == "fail" or (behaviour == "map_fail" and x == 2):
            raise ValueError(f"t{index} failed")
        if behaviour == "skip":
            raise signals.SKIP("skipped")
        if behaviour in {"retry", "map_retry"} and run_count == 1 and x in (None, 2):
            raise ValueError(f"t{index} first attempt")
        if behaviour == "loop" and (context.get("task_loop_count") or 1) < 3:
            raise signals.LOOP(result=context.get("task_loop_count") or 1)
        if behaviour == "pause" and not context.get("resume"):
            raise signals.PAUSE("waiting")
        return index if x is None else x * 10

    parameters = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in arguments
    ]
    setattr(body, "__signature__", inspect.Signature(parameters))  # noqa: B010
    return body


def build_flow(specs: list[TaskSpec]) -> Flow:
    """The flow the specs describe: mapped tasks map over [1, 2, 3], upstreams are arguments."""
    tasks: list[Task] = []
    with Flow("random") as flow:
        for i, spec in enumerate(specs):
            mapped = spec.behaviour.startswith("map")
            names = (["x"] if mapped else []) + [f"u{j}" for j in spec.upstream]
            settings_: dict[str, Any] = {"trigger": TRIGGERS[spec.trigger]}
            if "retry" in spec.behaviour:
                settings_.update(max_retries=1, retry_delay=timedelta(seconds=5))
            t = task(body_for(spec.behaviour, i, names), name=f"t{i}", **settings_)
            upstream: dict[str, Any] = {f"u{j}": tasks[j] for j in spec.upstream}
            if mapped:
                whole: dict[str, Any] = {k: unmapped(v) for k, v in upstream.items()}
                tasks.append(t.map([1, 2, 3], **whole))
            else:
                tasks.append(t(**upstream))
    return flow


def run_locally(specs: list[TaskSpec], flow: Flow | None = None) -> RunOutcome:
    """Run the flow on a FixedClock whose sleep advances it, approving every pause."""
    clock = FixedClock(NOW)
    return FlowRunner(flow or build_flow(specs), clock=clock, sleep=clock.advance).run(
        flow_run_id=FR, on_paused=lambda paused: True
    )


def without_results(blob: dict[str, Any]) -> dict[str, Any]:
    """A state blob without its result references (values are compared separately)."""
    out = {k: v for k, v in blob.items() if k != "_result"}
    if isinstance(out.get("state"), dict):
        out["state"] = without_results(out["state"])
    return out


def assert_same_state(outcome: RunOutcome, blob: dict[str, Any], state: State) -> None:
    """The folded blob describes `state`: same fields, and the same result value."""
    assert without_results(blob) == without_results(state.serialize())
    if not isinstance(state, Mapped):
        assert outcome.value(blob) is state.result or outcome.value(blob) == state.result


@RUNS
@given(flow_specs(), st.data())
def test_folding_a_split_ledger_equals_folding_it_whole(
    specs: list[TaskSpec], data: st.DataObject
) -> None:
    """fold(a + b) == fold(b, start=fold(a)) for any split of a real ledger."""
    events = run_locally(specs).events
    split = data.draw(st.integers(0, len(events)), label="split")
    whole = fold(events, flow_run_id=FR)
    assert fold(events[split:], start=fold(events[:split], flow_run_id=FR)) == whole


@RUNS
@given(flow_specs())
def test_folding_the_local_runners_ledger_reproduces_its_final_states(
    specs: list[TaskSpec],
) -> None:
    """The ledger alone rebuilds the runner's view and every final task (and child) state."""
    flow = build_flow(specs)
    outcome = run_locally(specs, flow)
    view = fold(outcome.events)
    assert view == outcome.view
    assert type(outcome.state).__name__ == view.flow_state_type
    final_states: dict[Task, State] = outcome.state.result
    assert set(final_states) == flow.tasks
    for t, state in final_states.items():
        record = view.record(flow.slugs[t])
        assert record is not None
        assert_same_state(outcome, record.state, state)
        if isinstance(state, Mapped):
            assert len(state.map_states) == view.children.get(record.slug, 0)
            for i, child in enumerate(state.map_states):
                child_record = view.record(record.slug, i)
                assert child is not None
                assert child_record is not None
                assert_same_state(outcome, child_record.state, child)


@RUNS
@given(flow_specs())
def test_every_transition_a_local_run_records_is_allowed(specs: list[TaskSpec]) -> None:
    """Dispatches, claims, outcomes, retries, loops and resumes of real runs follow the table."""
    outcome = run_locally(specs)
    moves = [(e.previous, e.state["type"]) for e in transitions(outcome.events)]
    assert moves
    assert [m for m in moves if not allowed(*m)] == []
    assert outcome.view.is_finished()
