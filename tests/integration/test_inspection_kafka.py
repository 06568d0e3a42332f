"""TaskRunView against the embedded broker, for runs made by the real ledger and worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.state import Mapped, Running, Success
from services.client.client import Client
from services.client.inspection import TaskRunNotFinished, TaskRunView
from services.settings import Settings
from tests.integration.test_client_kafka import running_services

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 45.0
LOOKUP_TIMEOUT_S = 10.0


@pytest.fixture
async def client(kafka_settings: Settings) -> AsyncIterator[Client]:
    async with running_services(kafka_settings), Client(kafka_settings) as client:
        yield client


def types(view: TaskRunView) -> list[str]:
    return [type(s).__name__ for s in view.states]


async def test_a_mapped_run_is_inspected_parent_children_and_history(client: Client) -> None:
    run_id = await client.submit("tests.integration.flows.mapping:trivial_map", {"n": 4})
    await client.wait(run_id, timeout=RUN_TIMEOUT_S)

    parent = await TaskRunView.from_task_slug("inc-1", run_id, map_index=-1, client=client)
    assert isinstance(parent.state, Mapped)
    assert (parent.task_run_id, parent.map_index, parent.name) == (f"{run_id}/inc-1", None, "inc")
    results = await parent.get_result()
    assert results == [1, 2, 3, 4]

    child = await TaskRunView.from_task_slug("inc-1", run_id, map_index=2, client=client)
    assert await child.get_result() == 3
    assert isinstance(child.state, Success)
    assert types(child) == ["Pending", "Submitted", "Running", "Success"]
    assert child.attempt == 1

    children = [c async for c in parent.iter_mapped()]
    assert [c.map_index for c in children] == [0, 1, 2, 3]
    assert [await c.get_result() for c in children] == [1, 2, 3, 4]

    latest = await parent.get_latest()
    assert latest is not parent
    assert await latest.get_result() is results  # the loaded result came along

    by_client = await client.task_run(run_id, "inc-1", 2)
    assert (by_client.task_run_id, by_client.seq) == (child.task_run_id, child.seq)


async def test_a_retried_task_runs_history_holds_its_retry(client: Client) -> None:
    run_id = await client.submit("tests.integration.flows.simple:retry_later", {})
    await client.wait(run_id, timeout=RUN_TIMEOUT_S)
    view = await TaskRunView.from_task_slug("flaky_once-1", run_id, client=client)
    assert types(view) == [
        "Pending", "Submitted", "Running", "Failed", "Retrying", "Submitted", "Running", "Success",
    ]  # fmt: skip
    assert view.attempt == 2
    assert await view.get_result() == "ok on attempt 2"


async def test_get_latest_after_a_change_gives_a_new_view(client: Client, tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with client.subscribe() as changes:
        run_id = await client.submit(
            "tests.integration.flows.simple:blocking", {"path": str(release), "timeout_s": 20.0}
        )
        async with asyncio.timeout(RUN_TIMEOUT_S):
            async for change in changes:
                if change.task_slug == "wait_for_file-1" and change.state_type == "Running":
                    break
    running = await client.task_run(run_id, "wait_for_file-1")
    assert isinstance(running.state, Running)
    with pytest.raises(TaskRunNotFinished, match="results require completion"):
        await running.get_result()

    release.touch()
    await client.wait(run_id, timeout=RUN_TIMEOUT_S)
    latest = await running.get_latest()
    assert isinstance(latest.state, Success)
    assert isinstance(running.state, Running)  # a view is a snapshot
    assert latest.states[: len(running.states)] == running.states
    assert await latest.get_result() == "released"
    assert await client.result(run_id, "after-1") == "released!"


async def test_unknown_slugs_indexes_and_flow_runs_are_lookup_errors(client: Client) -> None:
    run_id = await client.submit("tests.integration.flows.mapping:trivial_map", {"n": 2})
    await client.wait(run_id, timeout=RUN_TIMEOUT_S)
    async with asyncio.timeout(LOOKUP_TIMEOUT_S):  # none of them may wait for more records
        with pytest.raises(LookupError, match="has no task 'nope-1'"):
            await client.task_run(run_id, "nope-1")
        with pytest.raises(LookupError, match="has 2 mapped children, none with map_index 5"):
            await client.task_run(run_id, "inc-1", 5)
        with pytest.raises(LookupError, match="is not on the ledger"):
            await client.task_run(str(uuid.uuid4()), "inc-1")
