"""Every golden flow scenario, run through the local runner, behaves as Prefect 1.4.1 did."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.golden.harness import (
    assert_matches_golden,
    encode_value,
    final_states_from_sequences,
    golden_flow_scenarios,
    load_golden,
    recorded_here_scenarios,
    run_scenario_locally,
)
from tests.golden.scenarios import ALL_SCENARIOS, RECORDED_HERE, SCENARIOS, RunSpec, build


@pytest.fixture(autouse=True)
def fresh_process_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with empty cache_for buckets and leaves the process's buckets as found.

    Like Prefect's `prefect.context.caches`, the local runner keeps caches for the
    life of the process (that is what `cache_for` replays); a bucket left by
    another test would turn our first run into a cache hit.
    """
    import engine.flow_runner

    monkeypatch.setattr(engine.flow_runner, "_CACHES", {})


def test_every_golden_flow_recording_has_a_scenario() -> None:
    """Each shared/golden flow file (all but state_model) is re-created in scenarios.py."""
    assert sorted(SCENARIOS) == golden_flow_scenarios()


def test_every_recording_made_here_has_a_scenario() -> None:
    """Each tests/golden/recorded_here file (recorded from Prefect 1.4.1) is re-created too."""
    assert sorted(RECORDED_HERE) == recorded_here_scenarios()


@pytest.mark.parametrize("name", sorted(ALL_SCENARIOS))
def test_scenario_reproduces_the_prefect_golden_recording(name: str, tmp_path: Path) -> None:
    """Sequences, final task and flow states and extras match the Prefect 1.4.1 recording."""
    scenario = build(name, tmp_path)
    assert_matches_golden(scenario, run_scenario_locally(scenario))


@pytest.mark.parametrize("name", sorted(ALL_SCENARIOS))
def test_the_ledger_alone_rebuilds_every_final_task_state(name: str, tmp_path: Path) -> None:
    """Final states folded from the ledger equal the runner's in-memory final states."""
    scenario = build(name, tmp_path)
    for observation in run_scenario_locally(scenario):
        rebuilt = final_states_from_sequences(observation.sequences, observation.index)
        assert rebuilt == observation.task_final_states


def test_pause_is_approved_through_on_paused_instead_of_stdin(tmp_path: Path) -> None:
    """Deliberate difference: on_paused replaces Prefect's stdin prompt, and Resume is an event."""
    scenario = build("pause_signal_and_manual_only", tmp_path)
    (observation,) = run_scenario_locally(scenario)
    prompts = scenario.extras()["input_prompts"]
    assert [p["prompt"] for p in prompts] == [
        "<Task: gate> is currently Paused; enter 'y' to resume:",
        "<Task: manual> is currently Paused; enter 'y' to resume:",
    ]
    for key in ("run0:gate", "run0:manual"):
        states = [e["state"] for e in observation.sequences[key]]
        assert "Resume" in states, f"{key}: the approval is not in the ledger: {states}"
        assert states.index("Resume") == states.index("Paused") + 1


def test_a_run_without_on_paused_returns_with_the_flow_running(tmp_path: Path) -> None:
    """Deliberate difference: without on_paused the local runner returns instead of prompting."""
    scenario = build("pause_without_resume_flowrunner", tmp_path)
    (observation,) = run_scenario_locally(scenario)
    assert observation.flow_state["class"] == "Running"
    assert observation.task_final_states["gate"]["class"] == "Paused"
    assert observation.task_final_states["manual"]["class"] == "Pending"


def test_local_runs_do_not_checkpoint_unless_told(tmp_path: Path) -> None:
    """Deliberate difference: services checkpoint by default, the local runner follows Prefect."""
    scenario = build("target_local_result_checkpointing_off", tmp_path)
    untold = RunSpec()
    kwargs = untold.runner_kwargs()
    del kwargs["checkpointing"]
    from engine.flow_runner import FlowRunner

    flow = scenario.flow_factory()
    FlowRunner(flow).run(**kwargs)
    FlowRunner(flow).run(**kwargs)
    assert list((tmp_path / "target_off").iterdir()) == []
    assert scenario.extras()["body_executions_of_produce"] == 2


def test_encode_value_writes_values_as_the_golden_recorder_did() -> None:
    """Exceptions, signals, tuples and other objects are encoded like format_notes says."""
    from engine import signals

    assert encode_value((8, 2)) == [8, 2]
    assert encode_value(ValueError("boom")) == {
        "exception": "ValueError",
        "repr": "ValueError('boom')",
    }
    assert encode_value(signals.SKIP("why")) == {"signal": "SKIP", "message": "why"}
    assert encode_value([2, KeyError("k")]) == [
        2,
        {"exception": "KeyError", "repr": "KeyError('k')"},
    ]
    assert encode_value(object)["repr"] == "<class 'object'>"


def test_a_difference_from_the_golden_recording_is_reported_per_task_run(tmp_path: Path) -> None:
    """The harness names the task run and the entry that differs (it cannot pass vacuously)."""
    scenario = build("plain_success", tmp_path)
    golden = copy.deepcopy(load_golden("plain_success"))
    golden["per_task_sequences"]["run0:one"][2]["result"] = 2
    golden["flow_runs"][0]["task_final_states"]["one"]["message"] = "changed"
    with pytest.raises(AssertionError) as failure:
        assert_matches_golden(scenario, run_scenario_locally(scenario), golden)
    report = str(failure.value)
    assert "2 difference(s)" in report
    assert "run0:one: sequence differs" in report
    assert "run0:one final state: message" in report


def test_the_vendored_recordings_equal_the_shared_golden_files() -> None:
    """tests/golden/recordings is a copy of ../shared/golden; a new recording must be copied."""
    shared = Path(__file__).resolve().parents[3] / "shared" / "golden"
    if not shared.is_dir():
        pytest.skip(f"no shared/golden beside the checkout ({shared}) to compare with")
    ours = Path(__file__).resolve().parent / "recordings"
    names = sorted(p.name for p in shared.iterdir() if p.suffix in {".json", ".md"})
    assert sorted(p.name for p in ours.iterdir()) == names
    for name in names:
        assert (ours / name).read_bytes() == (shared / name).read_bytes(), name
