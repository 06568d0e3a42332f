"""The audit trail and time travel from the ledger topic: `Client.history`, `Client.view(as_of=)`,
`runledger history` and `runledger states --as-of`, against the ledger and a worker.

The flow fails its first attempt and is retried a second later by the ledger's
scheduler, so the ledger holds a Running → Failed → Retrying → … → Success path
with a gap in time in the middle to travel to.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from engine.orchestration import fold, fold_as_of, timeline
from events import TaskRunTransitioned
from services.client.client import Client
from services.settings import Settings
from tests.integration.test_cli_kafka import runledger
from tests.integration.test_client_kafka import running_services

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

RUN_TIMEOUT_S = 45.0
FLOW = "tests.integration.flows.simple:retry_later"
TASK = "flaky_once-1"


@pytest.fixture
async def services(kafka_settings: Settings) -> AsyncIterator[Settings]:
    async with running_services(kafka_settings):
        yield kafka_settings


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _task_states(lines: list[dict[str, Any]]) -> list[str]:
    return [line["state_type"] for line in lines if line["kind"] == "task_run_transitioned"]


async def test_history_and_time_travel_of_a_retried_run(services: Settings) -> None:
    """History lists the retry path with the worker; states --as-of shows the run mid-way."""
    async with Client(services) as client:
        run_id = await client.submit(FLOW)
        final = await client.wait(run_id, timeout=RUN_TIMEOUT_S)
        assert final.flow_state_type == "Success"
        facts = await client.history(run_id)
        assert fold(facts) == await client.view(run_id)
        moves = [f for f in facts if isinstance(f, TaskRunTransitioned)]
        first_running = next(f for f in moves if f.state["type"] == "Running")
        success = moves[-1]
        assert success.state["type"] == "Success"
        middle = first_running.occurred_at + (success.occurred_at - first_running.occurred_at) / 2
        past = await client.view(run_id, as_of=middle)
        assert past == fold_as_of(facts, middle)
        with pytest.raises(ValueError, match="timezone-aware"):
            await client.view(run_id, as_of=datetime(2024, 5, 1, 12, 0))
        assert await client.history("no-such-run") == []

    history = await runledger(services, "history", run_id, "--json")
    assert history.status == 0, history.err
    lines = _json_lines(history.out)
    assert [line["event_id"] for line in lines] == [r.event_id for r in timeline(facts)]
    states = _task_states(lines)
    path = ["Running", "Failed", "Retrying", "Running", "Success"]
    walk = iter(states)
    assert all(state in walk for state in path), states  # in this order
    worker = f"worker-{socket.gethostname()}-{os.getpid()}"  # the worker runs in this process
    by_worker = {
        (line["state_type"], line["attempt"]): line["worker_id"]
        for line in lines
        if line["kind"] == "task_run_transitioned" and line["state_type"] in path
    }
    assert by_worker == {
        ("Running", 1): worker,
        ("Failed", 1): worker,
        ("Retrying", 1): worker,
        ("Running", 2): worker,
        ("Success", 2): worker,
    }

    table = await runledger(services, "history", run_id, "--task", TASK)
    assert table.status == 0, table.err
    for text in ("Failed", "Retrying", "Running", "Success", "ValueError", "worker-"):
        assert text in table.out, text
    assert "flow run" not in table.out  # --task keeps that task run's facts only

    then = await runledger(services, "states", run_id, "--as-of", middle.isoformat(), "--json")
    assert then.status == 0, then.err
    flow_then, task_then = _json_lines(then.out)
    expected = [f for f in moves if f.occurred_at <= middle][-1]
    assert task_then["task_slug"] == TASK
    assert task_then["state_type"] == expected.state["type"] != "Success"
    assert flow_then["state_type"] == "Running"

    now = await runledger(services, "states", run_id)
    assert now.status == 0, now.err
    assert "Success" in now.out
    assert TASK in now.out
    now_json = _json_lines((await runledger(services, "states", run_id, "--json")).out)
    assert [line["state_type"] for line in now_json] == ["Success", "Success"]

    before = (first_running.occurred_at - timedelta(hours=1)).isoformat()
    too_early = await runledger(services, "states", run_id, "--as-of", before)
    assert too_early.status == 1
    assert f"no such flow run {run_id} as of" in too_early.err


async def test_an_unknown_flow_run_exits_1(services: Settings) -> None:
    for command in ("history", "states"):
        result = await runledger(services, command, "no-such-run")
        assert result.status == 1, result.out + result.err
        assert "no such flow run no-such-run" in result.err
        assert "Traceback" not in result.err
