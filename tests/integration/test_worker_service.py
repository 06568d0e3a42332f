"""The worker role on the real broker: unloadable flows, redelivery, heartbeats, commits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.orchestration import FlowRunView
from engine.orchestration.retired import retire
from engine.planning import plan_of
from engine.result_store import FSResultStore
from engine.results import Result
from engine.state import Running
from events import (
    DeadLettered,
    HeartbeatRecorded,
    TaskRunTransitioned,
    TransitionProposed,
    TransitionRejected,
    WorkDispatched,
    decode,
)
from services.settings import Settings
from tests.integration.flows import simple
from tests.integration.roles_support import RolesThread, run_request

pytestmark = pytest.mark.integration

HEARTBEAT_S = 0.2


@pytest.fixture(scope="module")
def roles(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolesThread]:
    unique = uuid.uuid4().hex[:10]
    settings = Settings(
        brokers=kafka_bootstrap,
        topic_prefix=f"w{unique}.",
        app_id=f"worker-{unique}",
        data_dir=tmp_path_factory.mktemp("worker") / "data",
        session_timeout_ms=3000,
        fetch_max_wait_ms=5,
        heartbeat_interval_s=HEARTBEAT_S,
        heartbeat_timeout_s=5 * HEARTBEAT_S,
    )
    with RolesThread(settings, {"ledger", "worker"}) as running:
        yield running


def _transitions(roles: RolesThread, flow_run_id: str, slug_prefix: str) -> list[str]:
    return [
        e.state["type"]
        for e in roles.events_of(flow_run_id)
        if isinstance(e, TaskRunTransitioned) and (e.task_slug or "").startswith(slug_prefix)
    ]


def test_a_flow_the_worker_cannot_load_fails_its_task_run_without_running_it(
    roles: RolesThread,
) -> None:
    """A planned run whose code is gone: Failed with the reason, a dead letter, no claim."""
    store = FSResultStore(roles.settings.result_store_url)

    def persist(value: Any, slug: str) -> dict[str, Any]:
        return store.persist(Result(value=value), slug)

    request = run_request("tests.integration.flows.vanished:flow").model_copy(
        update={"plan": plan_of(simple.single, persist)}  # the client planned it itself
    )
    roles.send(request)
    view = roles.wait_view(request.flow_run_id)
    assert view.flow_state_type == "Failed"
    assert roles.fold_of(request.flow_run_id) == view
    (record,) = view.task_runs.values()
    assert record.state_type == "Failed"
    assert record.state["message"].startswith(
        "Could not load flow tests.integration.flows.vanished:flow: cannot import module"
    )
    assert "Running" not in _transitions(roles, request.flow_run_id, "one")
    letters = [decode(r.value or b"") for r in roles.records("deadletter")]
    mine = [
        d for d in letters if isinstance(d, DeadLettered) and d.flow_run_id == request.flow_run_id
    ]
    assert len(mine) == 1
    assert mine[0].source_topic == roles.settings.topic("work")
    assert "cannot load flow" in mine[0].reason


def test_a_resent_work_record_of_a_finished_run_changes_nothing_on_the_ledger(
    roles: RolesThread, tmp_path: Path
) -> None:
    """A fresh copy of a finished run's work record: its claim and outcome are refused.

    Written after the worker's first fetch, the copy is not a redelivery, so the
    worker runs it without waiting for the claim's answer (docs/architecture.md);
    the ledger refuses both of its proposals, and no task run changes.
    """
    out = tmp_path / "runs"
    out.mkdir()
    request = run_request("tests.integration.flows.mapping:flow", {"n": 3, "out_dir": str(out)})
    roles.send(request)
    finished = roles.wait_view(request.flow_run_id)
    assert finished.flow_state_type == "Success"
    child = next(
        r
        for r in roles.records("work")
        if (r.key or b"").startswith(request.flow_run_id.encode())
        and (r.key or b"").endswith(b"/1")
        and isinstance(decode(r.value or b""), WorkDispatched)
    )
    roles.send_raw("work", child.value or b"", child.key)
    roles.send_raw("work", child.value or b"", child.key)

    def refusals() -> list[TransitionRejected]:
        return [
            e for e in roles.events_of(request.flow_run_id) if isinstance(e, TransitionRejected)
        ]

    def refused_claims() -> int:
        return sum(1 for r in refusals() if r.proposed and r.proposed["type"] == "Running")

    deadline = time.monotonic() + 15
    while refused_claims() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Each copy's claim is refused; a copy that ran at once also proposed Success
    # (refused too). The second copy may instead have waited for its claim's
    # answer: the first one still held the run in this worker.
    assert refused_claims() == 2
    assert {r.reason for r in refusals()} == {
        f"flow run {request.flow_run_id} is already Success"
    }
    folded = roles.fold_of(request.flow_run_id)
    assert folded.task_runs == finished.task_runs
    assert roles.on_loop(lambda ledger: ledger.retired_run(request.flow_run_id)) == retire(folded)
    assert [len((out / f"{i}.runs").read_text().splitlines()) for i in (0, 2)] == [1, 1]


def test_redelivered_work_is_claimed_first_and_finished_runs_do_not_run_again(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """A worker that re-reads work another worker did waits for every claim's answer.

    A second worker group reads the work topic from its start, as a group that
    lost its commits would: everything it fetches first after its assignment may
    have been started before, so no body runs until the ledger accepts its claim,
    and the ledger refuses every one of them (the runs are finished).
    """
    out = tmp_path / "runs"
    out.mkdir()
    request = run_request("tests.integration.flows.mapping:flow", {"n": 3, "out_dir": str(out)})
    with RolesThread(kafka_settings, {"ledger", "worker"}) as first:
        first.send(request)
        assert first.wait_view(request.flow_run_id).flow_state_type == "Success"
        dispatched = sum(
            (r.key or b"").startswith(request.flow_run_id.encode()) for r in first.records("work")
        )
        late_app = f"{kafka_settings.app_id}-late"
        late_settings = kafka_settings.model_copy(update={"app_id": late_app})
        with RolesThread(late_settings, {"worker"}) as late:
            assert late.app is not None
            assert late.app.worker is not None
            stats = late.app.worker.stats
            deadline = time.monotonic() + 20
            while stats.executed < dispatched and time.monotonic() < deadline:
                time.sleep(0.05)
            # Every item but the Mapped parent claims (a parent runs no body: it
            # proposes Mapped directly), and every claim was awaited and refused.
            assert (stats.claims_refused, stats.claims_accepted, stats.claims_unawaited) == (
                dispatched - 1, 0, 0,
            )
    assert sorted(p.name for p in out.iterdir()) == ["0.runs", "1.runs", "2.runs"]
    assert all(len(p.read_text().splitlines()) == 1 for p in out.iterdir())


def test_heartbeats_are_recorded_while_a_body_runs(roles: RolesThread, tmp_path: Path) -> None:
    """Every heartbeat_interval_s a running attempt's worker sends one; the ledger records it."""
    release = tmp_path / "release"
    request = run_request("tests.integration.flows.simple:blocking", {"path": str(release)})
    roles.send(request)

    def beats(view: FlowRunView) -> int:
        return sum(
            isinstance(e, HeartbeatRecorded) for e in roles.events_of(view.flow_run_id)
        )

    view = roles.wait_view(request.flow_run_id, lambda v: v.created and beats(v) >= 3, 10)
    running = [r for r in view.task_runs.values() if r.state_type == "Running"]
    assert len(running) == 1
    assert running[0].last_heartbeat is not None
    release.touch()
    assert roles.wait_view(request.flow_run_id).flow_state_type == "Success"


def test_work_offsets_are_committed_once_every_outcome_is_on_the_broker(
    roles: RolesThread,
) -> None:
    """After runs finish, the workers' group has committed every work record."""
    request = run_request("tests.integration.flows.simple:single")
    roles.send(request)
    roles.wait_view(request.flow_run_id)
    assert roles.app is not None
    assert roles.app.worker is not None
    worker = roles.app.worker

    def uncommitted() -> int:
        ends: dict[int, int] = {}
        for record in roles.records("work"):
            ends[record.partition] = record.offset + 1
        return sum(end - worker.committed.get(p, 0) for p, end in ends.items())

    deadline = time.monotonic() + 10
    while (remaining := uncommitted()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remaining == 0


def test_an_attempt_whose_worker_goes_silent_is_failed_as_lost(
    kafka_settings: Settings,
) -> None:
    """A claim with no heartbeat after heartbeat_timeout_s: the ledger's scheduler fails it.

    Only a ledger runs; the test plays a worker that claims the dispatched attempt
    and then dies without a heartbeat.
    """
    settings = kafka_settings.model_copy(
        update={"heartbeat_interval_s": HEARTBEAT_S, "heartbeat_timeout_s": 5 * HEARTBEAT_S}
    )
    with RolesThread(settings, {"ledger"}) as ledger_only:
        request = run_request("tests.integration.flows.simple:single")
        ledger_only.send(request)
        view = ledger_only.wait_view(
            request.flow_run_id,
            lambda v: v.created and any(r.state_type == "Submitted" for r in v.task_runs.values()),
        )
        (record,) = (r for r in view.task_runs.values() if r.state_type == "Submitted")
        ledger_only.send(
            TransitionProposed(
                event_id=str(uuid.uuid4()),
                flow_run_id=request.flow_run_id,
                task_run_id=record.task_run_id,
                task_slug=record.slug,
                occurred_at=datetime.now(UTC),
                expected_seq=record.seq,
                attempt=record.attempt,
                state=Running("Starting task run.").serialize(),
                final=False,
            )
        )
        final = ledger_only.wait_view(request.flow_run_id, timeout_s=15)
        assert final.flow_state_type == "Failed"
        failed = final.task_runs[record.task_run_id]
        assert failed.state_type == "Failed"
        assert "considered lost" in failed.state["message"]
        assert ledger_only.fold_of(request.flow_run_id) == final
