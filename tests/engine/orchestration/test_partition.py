"""A ledger partition folded from a snapshot plus its tail is the partition folded from 0.

The ledgers are real: random small flows run by the local runner (each its own
flow run) and the random command machine, interleaved into one partition as a
ledger partition holds them. Retired runs are compared by what is kept of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.clock import FixedClock
from engine.flow_runner import FlowRunner
from engine.orchestration import FlowRunView, decide_and_evolve, fold
from engine.orchestration.partition import PartitionState, RecentCommands, fold_into
from engine.orchestration.retired import retire
from engine.orchestration.snapshot import SnapshotFormatError, state_from_doc, state_to_doc
from events import Event, RunRequested
from tests.engine.orchestration.test_properties import (
    DRAWS,
    FR,
    MACHINE,
    MACHINE_PLAN,
    NOW,
    REF,
    RUNS,
    Draw,
    Machine,
    build_flow,
    flow_specs,
)

WINDOW = 64


def local_ledger(specs: list[Any], flow_run_id: str) -> list[Event]:
    clock = FixedClock(NOW)
    runner = FlowRunner(build_flow(specs), clock=clock, sleep=clock.advance)
    return runner.run(flow_run_id=flow_run_id, on_paused=lambda paused: True).events


def machine_start() -> list[Event]:
    """The facts of the machine's run request (a `Machine` starts from them)."""
    request = RunRequested(
        event_id="run", flow_run_id=FR, occurred_at=NOW, flow_ref=REF, plan=MACHINE_PLAN
    )
    return decide_and_evolve(FlowRunView(flow_run_id=FR), request, NOW)[1]


@st.composite
def partitions(draw: st.DrawFn) -> list[Event]:
    """The facts of 1-4 local runs and a machine run, interleaved in one ledger order."""
    runs = [
        local_ledger(draw(flow_specs()), f"run-{i}") for i in range(draw(st.integers(1, 4)))
    ]
    machine = Machine()
    steps = machine.steps(draw(DRAWS))
    runs.append(machine_start() + [e for step in steps for e in step.events])
    order = draw(st.permutations([i for i, run in enumerate(runs) for _ in run]))
    positions = [0] * len(runs)
    events = []
    for i in order:
        events.append(runs[i][positions[i]])
        positions[i] += 1
    return events


def through_json(state: PartitionState) -> PartitionState:
    """What a snapshot gives back: the state as JSON text, parsed and rebuilt."""
    return state_from_doc(json.loads(json.dumps(state_to_doc(state))), WINDOW)


@RUNS
@given(partitions(), st.data())
def test_a_snapshot_at_any_cut_plus_the_tail_folds_to_the_fold_from_offset_0(
    events: list[Event], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(events)), label="cut")
    whole = fold_into(PartitionState(window=WINDOW), events)
    prefix = fold_into(PartitionState(window=WINDOW), events[:cut], complete=False)
    snapshot = through_json(prefix)
    assert fold_into(snapshot, events[cut:]) == whole


@RUNS
@given(partitions())
def test_the_partition_fold_keeps_live_views_whole_and_finished_runs_retired(
    events: list[Event],
) -> None:
    state = fold_into(PartitionState(window=WINDOW), events)
    for flow_run_id in {e.flow_run_id for e in events}:
        view = fold(e for e in events if e.flow_run_id == flow_run_id)
        retired = retire(view)
        if retired is None:
            assert state.views[flow_run_id] == view
            assert flow_run_id not in state.retired
        else:
            assert state.retired[flow_run_id] == retired
            assert flow_run_id not in state.views


@RUNS
@given(flow_specs())
def test_a_finished_local_run_leaves_only_its_retired_form(specs: list[Any]) -> None:
    events = local_ledger(specs, "r")
    state = fold_into(PartitionState(window=WINDOW), events)
    retired = retire(fold(events))
    if retired is not None:
        assert state.views == {}
        assert state.retired == {"r": retired}
    else:
        assert list(state.views) == ["r"]


def finished_machine_view(draws: list[Draw]) -> tuple[Machine, FlowRunView] | None:
    """A machine run driven to a finished, quiescent flow run (a cancel ends most)."""
    machine = Machine()
    machine.steps(draws)
    machine.steps([(6, 0, 0, 0, 0, 0, True)])  # cancel
    for _ in range(3):  # claims left Cancelling end Cancelled on their next proposal
        for run_id, record in sorted(machine.view.task_runs.items()):
            if record.state_type == "Cancelling":
                machine.view, _ = decide_and_evolve(
                    machine.view,
                    machine.command((0, sorted(machine.view.task_runs).index(run_id), 0, 0, 0,
                                     0, True), True),
                    machine.now,
                )
    return (machine, machine.view) if retire(machine.view) is not None else None


@MACHINE
@given(DRAWS, DRAWS)
def test_decide_answers_a_retired_run_exactly_as_its_full_view(
    draws: list[Draw], late: list[Draw]
) -> None:
    """Every later command gets the same facts from the stand-in as from the whole view."""
    found = finished_machine_view(draws)
    if found is None:
        return
    machine, full = found
    retired = retire(full)
    assert retired is not None
    for draw in late:
        command = machine.command(draw, proposals_only=False)
        expected = decide_and_evolve(full, command, machine.now)[1]
        answered = decide_and_evolve(retired.as_view(), command, machine.now)[1]
        assert answered == expected
    repeated = next(iter(full.processed_commands))
    machine_command = machine.command(late[0], proposals_only=False).model_copy(
        update={"event_id": repeated}
    )
    assert decide_and_evolve(full, machine_command, machine.now)[1] == []
    assert decide_and_evolve(retired.as_view((repeated,)), machine_command, machine.now)[1] == []


def test_the_command_window_forgets_the_oldest_commands_beyond_its_capacity() -> None:
    window = RecentCommands(2)
    for command in ("a", "a", "b", "c"):
        window.note("run", command)
    assert ("run", "a") not in window
    assert ("run", "b") in window
    assert ("run", "c") in window
    assert ("other", "c") not in window
    assert len(window) == 2


def test_a_snapshot_body_that_is_not_a_partition_state_is_refused() -> None:
    with pytest.raises(SnapshotFormatError, match="not a partition state"):
        state_from_doc({"plans": {}, "views": [{"id": "x"}], "retired": [], "recent": []}, 8)


@MACHINE
@given(DRAWS)
def test_keeping_each_decision_live_equals_folding_the_facts_it_wrote(draws: list[Draw]) -> None:
    """What the ledger keeps as it decides (`keep`) is what a rebuild folds from its facts."""
    live = PartitionState(window=WINDOW)
    machine = Machine()
    live.keep(machine.view, machine_start())
    facts = machine_start()
    for draw in [*draws, (6, 0, 0, 0, 0, 0, True)]:  # a cancel at the end retires most
        command = machine.command(draw, proposals_only=False)
        view = live.view_for(FR, command.event_id)
        assert view is not None
        decided, events = decide_and_evolve(view, command, machine.now)
        live.keep(decided, events)
        facts.extend(events)
        machine.view = live.views.get(FR, machine.view)
    assert live == fold_into(PartitionState(window=WINDOW), facts)


def test_a_run_whose_first_facts_finish_it_retires_only_once_its_command_is_complete() -> None:
    """A flow state handler that fails the run as it starts: its task runs come after."""
    request = RunRequested(
        event_id="run", flow_run_id=FR, occurred_at=NOW, flow_ref=REF, plan=MACHINE_PLAN
    )
    failed = {"type": "Failed", "message": "a handler raised"}
    view, facts = decide_and_evolve(
        FlowRunView(flow_run_id=FR), request, NOW, flow_verdicts={2: failed}
    )
    assert view.flow_state_type == "Failed"
    assert view.unfinished_runs
    live = PartitionState(window=WINDOW)
    live.keep(view, facts)
    folded = fold_into(PartitionState(window=WINDOW), facts)
    assert folded == live
    assert list(folded.views) == [FR]
