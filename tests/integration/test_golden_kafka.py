"""Every golden scenario also runs through the Kafka services, with Prefect 1.4.1's sequences.

One ledger and one worker (`services.roles.app.hosted_roles`, in a background thread of
this process) serve every scenario of `tests/golden/scenarios.py`. Each scenario's
flow is registered in `tests.integration.flows.live` and submitted by import path
(a plan-less RunRequested: the ledger imports and plans it, the worker imports it),
so the scenario's counters and logs -- closures -- are observed as in the local
runs. The ledger topic is then read from offset 0 and turned into the golden
vocabulary with the same harness as the local runner (`sequences_from_events`,
`final_states_from_sequences`, `flow_state_from_events`), and
`assert_matches_golden` compares. The fold of those events must equal the
ledger's live view of the run.

Equivalents where a scenario cannot run over Kafka as written:

* `on_paused` (the local runner's stand-in for Prefect's stdin prompt): when the
  run is idle with Paused task runs, the test calls the scenario's `on_paused`
  exactly as the local runner does, and an approval becomes a ResumeRequested
  command on the commands topic; without `on_paused` the run is observed idle
  with the flow Running.
* Runner keyword arguments travel in the run's context: `checkpointing` (the
  services checkpoint unless a run says otherwise) and
  `task_runner_state_handlers` (import paths, allowlisted like flows).
* `cache_for` across two runs "in one process": the worker keeps cache_for
  results per process, as Prefect 1 did; both runs go to the one worker here.
* A run's `context` (`flow.run(context=...)`) is the RunRequested's context, over
  the `checkpointing` key above.
* Flow state handlers run in the ledger (services/roles/flow_handlers.py), which
  imports the registered flow by its path: the handlers' logs are observed here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.flow import Flow
from engine.flow_runner import PausedTaskRun
from engine.orchestration import FlowRunView, fold
from engine.result_store import FSResultStore, state_of
from events import Cause, ResumeRequested
from services.settings import Settings
from tests.golden.harness import (
    assert_matches_golden,
    final_states_from_sequences,
    flow_state_from_events,
    sequences_from_events,
)
from tests.golden.scenarios import ALL_SCENARIOS, RunObservation, Scenario, build
from tests.integration.flows import live
from tests.integration.roles_support import RolesThread, idle, run_request

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def roles(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolesThread]:
    """One ledger and one worker for every scenario, in their own topic namespace."""
    unique = uuid.uuid4().hex[:10]
    settings = Settings(
        brokers=kafka_bootstrap,
        topic_prefix=f"g{unique}.",
        app_id=f"golden-{unique}",
        data_dir=tmp_path_factory.mktemp("golden") / "data",
        session_timeout_ms=3000,
        fetch_max_wait_ms=5,
        worker_concurrency=4,
    )
    with RolesThread(settings, {"ledger", "worker"}) as running:
        yield running


def _moved_on(task_run_id: str, seq: int) -> Callable[[FlowRunView], bool]:
    return lambda view: view.task_runs[task_run_id].seq > seq


def _approve_pauses(
    roles: RolesThread, view: FlowRunView, flow: Flow, on_paused: Any, store: FSResultStore
) -> bool:
    """The local runner's `_wake` over Kafka: ask `on_paused`, send ResumeRequested."""
    resumed = False
    for record in list(view.task_runs.values()):
        if record.state_type != "Paused":
            continue
        paused = PausedTaskRun(
            flow.task_by_slug(record.slug),
            record.task_run_id,
            record.map_index,
            state_of(record.state, store),
        )
        if on_paused(paused):
            roles.send(
                ResumeRequested(
                    event_id=str(uuid.uuid4()),
                    flow_run_id=view.flow_run_id,
                    task_run_id=record.task_run_id,
                    occurred_at=datetime.now(UTC),
                    cause=Cause(),
                )
            )
            roles.wait_view(view.flow_run_id, _moved_on(record.task_run_id, record.seq))
            resumed = True
    return resumed


def _drive(
    roles: RolesThread, flow_run_id: str, flow: Flow, on_paused: Any, store: FSResultStore
) -> FlowRunView:
    """Wait until the run finishes, or rests idle with nobody to approve its pauses."""
    while True:
        view = roles.wait_view(
            flow_run_id, lambda v: v.is_finished() or (v.created and idle(v)), RUN_TIMEOUT_S
        )
        if view.is_finished() or on_paused is None:
            return view
        if not _approve_pauses(roles, view, flow, on_paused, store):
            return view


def run_scenario_on_kafka(scenario: Scenario, roles: RolesThread) -> list[RunObservation]:
    """Make every run of the scenario through the services; observe it from the ledger."""
    flow = scenario.flow_factory()
    path = live.register(flow, scenario.name)
    store = FSResultStore(roles.settings.result_store_url)

    def value_of(blob: Any) -> Any:
        return store.hydrate(blob["_result"]).value

    observations = []
    for index, spec in enumerate(scenario.runs):
        context: dict[str, Any] = {"checkpointing": spec.checkpointing, **(spec.context or {})}
        if spec.task_runner_state_handlers:
            context["task_runner_state_handlers"] = [
                live.register(handler, "handler") for handler in spec.task_runner_state_handlers
            ]
        command = run_request(path, spec.parameters, context)
        started = time.monotonic()
        roles.send(command)
        live_view = _drive(roles, command.flow_run_id, flow, spec.on_paused, store)
        wall_s = time.monotonic() - started
        scenario.after_run(index)
        events = roles.events_of(command.flow_run_id)
        assert fold(events, flow_run_id=command.flow_run_id) == live_view, (
            "the fold of the ledger topic differs from the ledger's live view"
        )
        sequences = sequences_from_events(events, flow, value_of, run_index=index)
        observations.append(
            RunObservation(
                index=index,
                label=spec.label,
                flow_state=flow_state_from_events(events) or {"class": None, "message": None},
                task_final_states=final_states_from_sequences(sequences, index),
                sequences=sequences,
                wall_s=wall_s,
            )
        )
    return observations


@pytest.mark.parametrize("name", sorted(ALL_SCENARIOS))
def test_scenario_through_the_services_reproduces_the_golden_recording(
    name: str, tmp_path: Path, roles: RolesThread
) -> None:
    """Per-task sequences, final states, flow state and extras match Prefect 1.4.1."""
    scenario = build(name, tmp_path)
    assert_matches_golden(scenario, run_scenario_on_kafka(scenario, roles))


def test_no_claim_was_refused_and_nothing_was_dead_lettered(roles: RolesThread) -> None:
    """Over all scenarios: every dispatched attempt was claimed once, every record was good."""
    assert roles.app is not None
    assert roles.app.worker is not None
    assert roles.app.worker.stats.claims_refused == 0
    assert roles.records("deadletter") == []


def test_folding_the_whole_ledger_from_offset_0_gives_every_live_view(roles: RolesThread) -> None:
    """The ledger topic alone rebuilds the ledger's state: live views, retired runs, window."""
    folded = roles.folded_states()
    live = roles.ledger_states()
    assert live.keys() == folded.keys()
    for partition, state in live.items():
        assert folded[partition].views == state.views
        assert folded[partition].retired == state.retired
        assert folded[partition].recent == state.recent
    assert sum(len(s.retired) for s in live.values()) > 0, "finished runs left the live views"
