"""Stop the ledger in the middle of a 1,000-task-run flow, start it again: the run finishes.

The second ledger process rebuilds its state from the newest snapshot and the
ledger facts after it (or from offset 0), takes over the commands the first one
had not committed, and answers the claims the workers sent while no ledger ran.
Bodies count their executions in files (one line each), so "no body ran twice"
is "every file has one line". On exit the second ledger pickles its state per
partition (``--dump-views``); it must equal a fold of the ledger topic from
offset 0. Once finished, the run has left the live views for its retired form.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import time
from pathlib import Path

import pytest

from engine.orchestration import fold
from engine.orchestration.partition import PartitionState
from engine.orchestration.retired import retire
from services.kafka.topics import ensure_topics
from services.settings import Settings
from tests.integration.roles_support import (
    fold_partitions,
    start_role,
    stop_process,
    topic_records,
    wait_for_log,
)
from tests.integration.test_multiprocess import ledger_events, submit, wait_finished

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

N = 1000


def _count_runs(out: Path) -> int:
    return sum(1 for _ in out.iterdir())


def test_a_ledger_stopped_mid_run_and_started_again_finishes_the_run_without_repeats(
    process_settings: Settings, tmp_path: Path
) -> None:
    """The run completes, every body ran exactly once, and the views equal the ledger's fold."""
    asyncio.run(ensure_topics(process_settings))
    out = tmp_path / "runs"
    out.mkdir()
    dump = tmp_path / "views.pickle"
    first_log, second_log, worker_log = (tmp_path / n for n in ("l1.log", "l2.log", "w.log"))
    worker = start_role(process_settings, ["--roles", "worker", "--concurrency", "8"], worker_log)
    ledger = start_role(process_settings, ["--roles", "ledger"], first_log)
    processes: list[subprocess.Popen[bytes]] = [worker, ledger]
    try:
        wait_for_log(first_log, "ledger owns partitions", 60, ledger)
        wait_for_log(worker_log, "assigned work partitions [0, 1, 2, 3]", 60, worker)
        flow_run_id = submit(process_settings, {"n": N, "out_dir": str(out), "delay_s": 0.004})

        deadline = time.monotonic() + 60
        while _count_runs(out) < N // 4:
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        assert stop_process(ledger) == 0, "the ledger stops cleanly on SIGTERM"
        stopped_at = _count_runs(out)
        assert stopped_at < N, "the ledger was stopped too late to prove anything"

        ledger = start_role(
            process_settings, ["--roles", "ledger", "--dump-views", str(dump)], second_log
        )
        processes.append(ledger)
        wait_for_log(second_log, "ledger owns partitions", 60, ledger)
        view, _ = wait_finished(process_settings, flow_run_id, [worker, ledger], timeout_s=120)
        assert stop_process(ledger) == 0
    finally:
        for process in processes:
            stop_process(process)

    assert view.flow_state_type == "Success"
    children = [r for r in view.task_runs.values() if r.map_index is not None]
    assert len(children) == N
    assert all(r.state_type == "Success" for r in children)
    runs = {f.name: f.read_text().splitlines() for f in out.iterdir()}
    assert len(runs) == N
    assert all(len(lines) == 1 for lines in runs.values()), "a body ran more than once"

    dumped = pickle.loads(dump.read_bytes())
    assert_state_is_the_fold(process_settings, dumped["states"], flow_run_id)
    log = second_log.read_text()
    assert "ledger owns partitions" in log


def assert_state_is_the_fold(
    settings: Settings, states: dict[int, PartitionState], flow_run_id: str
) -> None:
    """The dumped states equal the ledger topic folded from 0; the finished run is retired."""
    folded = fold(ledger_events(settings, flow_run_id), flow_run_id=flow_run_id)
    assert not [s for s in states.values() if flow_run_id in s.views], "it left the live views"
    assert [s.retired[flow_run_id] for s in states.values() if flow_run_id in s.retired] == [
        retire(folded)
    ]
    from_zero = fold_partitions(settings, asyncio.run(topic_records(settings, "ledger")))
    for partition, state in states.items():
        assert state == from_zero[partition], f"partition {partition}"


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_ledger_killed_mid_run_restarts_from_a_snapshot_and_finishes_the_run_once(
    process_settings: Settings, tmp_path: Path, guarantee: str
) -> None:
    """SIGKILL after snapshots were written: the new ledger loads one (not offset 0), the
    run finishes, no body ran twice, and its state equals the fold of the ledger topic.
    Under exactly-once a snapshot is written in its partition's transaction; under
    at-least-once only once the facts it covers were acknowledged."""
    asyncio.run(ensure_topics(process_settings))
    out = tmp_path / "runs"
    out.mkdir()
    dump = tmp_path / "states.pickle"
    first_log, second_log, worker_log = (tmp_path / n for n in ("l1.log", "l2.log", "w.log"))
    often = {
        "RUNLEDGER_LEDGER_SNAPSHOT_EVERY_EVENTS": "300",
        "RUNLEDGER_PROCESSING_GUARANTEE": guarantee,
    }
    worker = start_role(
        process_settings,
        ["--roles", "worker", "--concurrency", "8"],
        worker_log,
        RUNLEDGER_PROCESSING_GUARANTEE=guarantee,
    )
    ledger = start_role(process_settings, ["--roles", "ledger"], first_log, **often)
    processes: list[subprocess.Popen[bytes]] = [worker, ledger]
    try:
        wait_for_log(first_log, "ledger owns partitions", 60, ledger)
        wait_for_log(worker_log, "assigned work partitions [0, 1, 2, 3]", 60, worker)
        flow_run_id = submit(process_settings, {"n": N, "out_dir": str(out), "delay_s": 0.004})
        wait_for_log(first_log, "snapshot covering offset", 60, ledger)
        deadline = time.monotonic() + 60
        while _count_runs(out) < N // 3:
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        ledger.kill()  # SIGKILL: no clean stop, an open transaction is left behind
        ledger.wait(30)
        killed_at = _count_runs(out)
        assert killed_at < N, "the ledger was killed too late to prove anything"

        ledger = start_role(
            process_settings, ["--roles", "ledger", "--dump-views", str(dump)], second_log, **often
        )
        processes.append(ledger)
        wait_for_log(second_log, "ledger owns partitions", 60, ledger)
        view, _ = wait_finished(process_settings, flow_run_id, [worker, ledger], timeout_s=120)
        assert stop_process(ledger) == 0
    finally:
        for process in processes:
            stop_process(process)

    assert view.flow_state_type == "Success"
    runs = {f.name: f.read_text().splitlines() for f in out.iterdir()}
    assert len(runs) == N
    assert all(len(lines) == 1 for lines in runs.values()), "a body ran more than once"
    dumped = pickle.loads(dump.read_bytes())
    assert dumped["stats"]["snapshots_loaded"] >= 1, "the restart read no snapshot"
    restarted = second_log.read_text()
    assert "loaded snapshot covering offset" in restarted
    assert "does not fold" not in restarted, "the snapshot and the facts after it disagree"
    assert_state_is_the_fold(process_settings, dumped["states"], flow_run_id)
