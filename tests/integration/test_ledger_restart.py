"""SIGTERM the ledger in the middle of a 1,000-task-run flow, start it again: the run finishes.

The second ledger process rebuilds its views by folding the ledger topic, takes
over the commands the first one had not committed, and answers the claims the
workers sent while no ledger ran. Bodies count their executions in files (one
line each), so "no body ran twice" is "every file has one line". On exit the
second ledger pickles its live views (``--dump-views``); they must equal a fold
of the ledger topic from offset 0.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import time
from pathlib import Path

import pytest

from engine.orchestration import FlowRunView, fold
from services.kafka.topics import ensure_topics
from services.settings import Settings
from tests.integration.roles_support import start_role, stop_process, wait_for_log
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

    live: dict[str, FlowRunView] = pickle.loads(dump.read_bytes())
    folded = fold(ledger_events(process_settings, flow_run_id), flow_run_id=flow_run_id)
    assert live[flow_run_id] == folded
    log = second_log.read_text()
    assert "ledger owns partitions" in log
