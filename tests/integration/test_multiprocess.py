"""One ledger process and two worker processes complete a flow mapped over 1,000 inputs.

Processes are ``python -m services.roles.app --roles ...`` (the same entry point the CLI
uses), configured only through RUNLEDGER_* variables, and stopped by PID. Each
body appends its worker's pid to ``<out_dir>/<map_index>.runs``, so exactly one
line per file means exactly one execution per task run. The worker identity is
also on the ledger (`cause.worker` of every accepted proposal).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.orchestration import FlowRunView, fold
from events import Event, TaskRunTransitioned, decode, encode
from services.kafka.clients import make_producer
from services.kafka.topics import ensure_topics
from services.settings import Settings
from tests.integration.roles_support import (
    run_request,
    start_role,
    stop_process,
    topic_records,
    wait_for_log,
)

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

N = 1000
_ASSIGNED = re.compile(r"worker (\S+) assigned work partitions \[([\d, ]*)\]")


def ledger_events(settings: Settings, flow_run_id: str) -> list[Event]:
    """The run's facts, read from the ledger topic from offset 0."""
    key = flow_run_id.encode()
    records = asyncio.run(topic_records(settings, "ledger"))
    return [decode(r.value or b"") for r in records if r.key == key]


def wait_finished(
    settings: Settings, flow_run_id: str, processes: list[subprocess.Popen[bytes]], timeout_s: float
) -> tuple[FlowRunView, list[Event]]:
    """Fold the ledger until the run is finished (a role exiting early fails the wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = ledger_events(settings, flow_run_id)
        view = fold(events, flow_run_id=flow_run_id)
        if view.is_finished():
            return view, events
        dead = [p.pid for p in processes if p.poll() is not None]
        assert not dead, f"role processes {dead} exited"
        assert time.monotonic() < deadline, f"not finished in {timeout_s}s: {view.flow_state_type}"
        time.sleep(0.5)


def submit(settings: Settings, parameters: dict[str, object]) -> str:
    async def send() -> str:
        command = run_request("tests.integration.flows.mapping:flow", parameters)
        producer = make_producer(settings)
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.topic("commands"),
                encode(command),
                key=command.flow_run_id.encode(),
            )
        finally:
            await producer.stop()
        return command.flow_run_id

    return asyncio.run(send())


def wait_both_assigned(logs: dict[str, Path], processes: list[subprocess.Popen[bytes]]) -> None:
    """Until each worker's latest assignment is non-empty and together they hold all four."""
    deadline = time.monotonic() + 60
    while True:
        latest: dict[str, set[int]] = {}
        for log in logs.values():
            text = log.read_text(errors="replace") if log.exists() else ""
            for match in _ASSIGNED.finditer(text):
                latest[match.group(1)] = {int(p) for p in match.group(2).split(",") if p.strip()}
        held = set().union(*latest.values()) if latest else set()
        if len(latest) == 2 and all(latest.values()) and held == {0, 1, 2, 3}:
            return
        assert all(p.poll() is None for p in processes), "a worker exited"
        assert time.monotonic() < deadline, f"workers not both assigned: {latest}"
        time.sleep(0.1)


def test_two_worker_processes_run_every_body_of_a_1000_way_map_exactly_once(
    process_settings: Settings, tmp_path: Path
) -> None:
    """Every task run succeeds, every body ran once, and both workers did part of the work."""
    asyncio.run(ensure_topics(process_settings))
    out = tmp_path / "runs"
    out.mkdir()
    logs = {name: tmp_path / f"{name}.log" for name in ("ledger", "worker-a", "worker-b")}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start_role(process_settings, ["--roles", "ledger"], logs["ledger"]))
        for name in ("worker-a", "worker-b"):
            processes.append(
                start_role(
                    process_settings,
                    ["--roles", "worker", "--name", name, "--concurrency", "8"],
                    logs[name],
                )
            )
        wait_for_log(logs["ledger"], "ledger owns partitions", 60, processes[0])
        wait_both_assigned({k: v for k, v in logs.items() if k != "ledger"}, processes)

        flow_run_id = submit(process_settings, {"n": N, "out_dir": str(out), "delay_s": 0.002})
        view, events = wait_finished(process_settings, flow_run_id, processes, timeout_s=120)
    finally:
        statuses = [stop_process(p) for p in processes]
    assert statuses == [0, 0, 0], "every role exits cleanly on SIGTERM"

    assert view.flow_state_type == "Success"
    children = [r for r in view.task_runs.values() if r.map_index is not None]
    assert len(children) == N
    assert all(r.state_type == "Success" for r in children)

    files = sorted(out.iterdir())
    assert len(files) == N
    runs = {f.name: f.read_text().splitlines() for f in files}
    assert all(len(lines) == 1 for lines in runs.values()), "a body ran more than once"

    by_worker = Counter(
        e.cause.worker.id
        for e in events
        if isinstance(e, TaskRunTransitioned)
        and e.map_index is not None
        and e.state["type"] == "Success"
        and e.cause.worker is not None
    )
    assert set(by_worker) == {"worker-a", "worker-b"}, by_worker
    assert sum(by_worker.values()) == N
    assert len({lines[0] for lines in runs.values()}) == 2, "bodies ran in both processes"
