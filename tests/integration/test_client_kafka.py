"""The Python client against the embedded broker and the real roles (in this process).

Every test gets its own topic prefix and app id (`kafka_settings`) and its own
ledger + worker (`services.roles.app.run_roles`), stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from events import (
    FlowRunCreated,
    FlowRunTransitioned,
    TaskRunTransitioned,
    TransitionRejected,
    decode,
)
from services.client.client import Change, Client, RunRejected, partition_for
from services.kafka.clients import read_partitions_to_end
from services.roles.app import run_roles
from services.settings import Settings

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 45.0


@contextlib.asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[None]:
    """The ledger and a worker in this process's event loop, until the block ends."""
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(
        run_roles(settings, {"ledger", "worker"}, stop, on_started=lambda app: started.set())
    )
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            done, _ = await asyncio.wait(
                {task, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED
            )
        if task in done:
            task.result()  # a role failed to start: raise its error
        yield
    finally:
        stop.set()
        async with asyncio.timeout(START_TIMEOUT_S):
            await task


@pytest.fixture
async def client(kafka_settings: Settings) -> AsyncIterator[Client]:
    async with running_services(kafka_settings), Client(kafka_settings) as client:
        yield client


async def _ledger_events(settings: Settings, flow_run_id: str) -> list[object]:
    topic = settings.topic("ledger")
    tp = TopicPartition(topic, partition_for(flow_run_id, settings.partitions))
    records = await read_partitions_to_end(settings, [tp])
    return [decode(r.value) for r in records if r.key == flow_run_id.encode()]


async def _changes_until(
    changes: AsyncIterator[Change], state: str, task_slug: str | None = None
) -> list[Change]:
    """Collect changes until a task run (of `task_slug`, if given) reaches `state`,
    or the flow run ends."""
    seen: list[Change] = []
    async with asyncio.timeout(RUN_TIMEOUT_S):
        async for change in changes:
            seen.append(change)
            if change.ends_flow_run or (
                change.state_type == state and task_slug in (None, change.task_slug)
            ):
                return seen
    raise AssertionError("the subscription ended")


def _sequences(events: list[object]) -> dict[str, list[str]]:
    """Per task slug/map index: the state types the run went through."""
    out: dict[str, list[str]] = {}
    for event in events:
        if isinstance(event, TaskRunTransitioned):
            key = f"{event.task_slug}[{event.map_index}]"
            out.setdefault(key, []).append(event.state["type"])
    return out


async def test_an_idempotent_submit_gives_one_run(client: Client, kafka_settings: Settings) -> None:
    """Submitting twice with one key names one flow run, created and run once."""
    key = f"nightly-{uuid.uuid4()}"
    first = await client.submit("examples.hello:flow", {"name": "Ada"}, idempotency_key=key)
    second = await client.submit("examples.hello:flow", {"name": "Ada"}, idempotency_key=key)
    assert first == second
    view = await client.wait(first, timeout=RUN_TIMEOUT_S)
    assert view.flow_state_type == "Success"
    third = await client.submit("examples.hello:flow", {"name": "Ada"}, idempotency_key=key)
    assert third == first
    await asyncio.sleep(0.5)  # give the ledger time to (not) act on the repeats
    events = await _ledger_events(kafka_settings, first)
    assert sum(isinstance(e, FlowRunCreated) for e in events) == 1
    flow_states = [e.state["type"] for e in events if isinstance(e, FlowRunTransitioned)]
    assert flow_states == ["Running", "Success"]
    assert _sequences(events)["greet-1[None]"] == ["Pending", "Submitted", "Running", "Success"]
    assert await client.result(first, "shout-1") == "HELLO, ADA!"


async def test_subscribe_sees_live_changes_and_not_older_ones(client: Client) -> None:
    """A subscription from the end sees the next run's changes as they happen, in order."""
    earlier = await client.submit("examples.hello:flow", {"name": "old"})
    await client.wait(earlier, timeout=RUN_TIMEOUT_S)
    async with client.subscribe() as changes:
        run_id = await client.submit("examples.etl:flow", {"limit": 3})
        seen = await _changes_until(changes, "never")
    assert {c.flow_run_id for c in seen} == {run_id}
    assert seen[-1].kind == "flow_run"
    assert seen[-1].state_type == "Success"
    by_run: dict[str, list[Change]] = {}
    for change in seen:
        if change.task_run_id is not None:
            by_run.setdefault(change.task_run_id, []).append(change)
    child = by_run[f"{run_id}/transform-1/1"]
    assert [c.state_type for c in child] == ["Pending", "Submitted", "Running", "Success"]
    assert [c.seq for c in child] == [1, 2, 3, 4]
    assert all(c.task_slug == "transform-1" and c.map_index == 1 for c in child)
    assert all(isinstance(c.fact, TaskRunTransitioned) for c in child)
    assert await client.result(run_id, "transform-1") == [
        {"day": "2024-04-30", "id": i, "amount": a, "amount_eur": round(a * 0.92, 2)}
        for i, a in enumerate((0, 37, 74))
    ]


async def test_a_plain_json_run_request_is_accepted_like_the_clients(
    client: Client, kafka_settings: Settings
) -> None:
    """A run_requested written as raw JSON bytes by a bare Kafka producer runs like submit()."""
    run_id = str(uuid.uuid4())
    raw = {
        "event_id": str(uuid.uuid4()),
        "type": "run_requested",
        "schema_version": 1,
        "flow_run_id": run_id,
        "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "flow_ref": {"kind": "import", "path": "examples.etl:flow"},
        "parameters": {"day": "2024-05-01", "limit": 4},
        "cause": {"worker": {"id": "cron-etl", "host": "scheduler-1", "pid": 4242}},
        "engine_version": "my-client/1.2",
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.brokers)  # no RunLedger code
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka_settings.topic("commands"), json.dumps(raw).encode(), key=run_id.encode()
        )
    finally:
        await producer.stop()
    ours = await client.submit("examples.etl:flow", {"day": "2024-05-01", "limit": 4})
    raw_view = await client.wait(run_id, timeout=RUN_TIMEOUT_S)
    our_view = await client.wait(ours, timeout=RUN_TIMEOUT_S)
    assert raw_view.flow_state_type == our_view.flow_state_type == "Success"
    assert raw_view.parameters == our_view.parameters
    assert _sequences(await _ledger_events(kafka_settings, run_id)) == _sequences(
        await _ledger_events(kafka_settings, ours)
    )
    assert await client.result(run_id, "load-1") == await client.result(ours, "load-1")


async def test_a_run_request_on_another_partition_is_moved_and_then_runs(
    client: Client, kafka_settings: Settings
) -> None:
    """A producer with another partitioner (librdkafka's CRC32) still gets its run, cancellable."""
    run_id = str(uuid.uuid4())
    murmur = partition_for(run_id, kafka_settings.partitions)
    elsewhere = (murmur + 1) % kafka_settings.partitions
    raw = {
        "event_id": str(uuid.uuid4()),
        "type": "run_requested",
        "schema_version": 1,
        "flow_run_id": run_id,
        "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "flow_ref": {"kind": "import", "path": "examples.etl:flow"},
        "parameters": {"day": "2024-05-01", "limit": 2},
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.brokers)
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka_settings.topic("commands"),
            json.dumps(raw).encode(),
            key=run_id.encode(),
            partition=elsewhere,
        )
    finally:
        await producer.stop()
    view = await client.wait(run_id, timeout=RUN_TIMEOUT_S)
    assert view.flow_state_type == "Success"
    events = await _ledger_events(kafka_settings, run_id)
    assert events, "the run's facts are on the partition murmur2 gives"


async def test_a_refused_run_request_is_reported_with_the_reason(client: Client) -> None:
    """Flows outside the allowlist, or missing, are refused; wait() says why at once."""
    outside = await client.submit("json.decoder:JSONDecoder", {})
    with pytest.raises(RunRejected, match="not in the flow allowlist"):
        await client.wait(outside, timeout=RUN_TIMEOUT_S)
    missing = await client.submit("examples.nothing_here:flow", {})
    with pytest.raises(RunRejected, match=r"cannot import module 'examples\.nothing_here'"):
        await client.wait(missing, timeout=RUN_TIMEOUT_S)


async def test_wait_times_out_on_an_unfinished_run(client: Client, tmp_path: Path) -> None:
    """TimeoutError names the state the run is in; the run goes on."""
    release = tmp_path / "release"
    run_id = await client.submit(
        "tests.integration.flows.simple:blocking", {"path": str(release), "timeout_s": 20.0}
    )
    with pytest.raises(
        TimeoutError, match=re.escape(f"flow run {run_id} did not finish within 1.0s")
    ):
        await client.wait(run_id, timeout=1.0)
    release.touch()
    assert (await client.wait(run_id, timeout=RUN_TIMEOUT_S)).flow_state_type == "Success"


async def test_cancel_goes_through_to_a_running_flow_run(client: Client, tmp_path: Path) -> None:
    """cancel() on a run whose body is running: Cancelling, then Cancelled when it returns."""
    release = tmp_path / "release"
    async with client.subscribe(from_beginning=False) as changes:
        run_id = await client.submit(
            "tests.integration.flows.simple:blocking", {"path": str(release), "timeout_s": 20.0}
        )
        await _changes_until(changes, "Running", "wait_for_file-1")
    command_id = await client.cancel(run_id, reason="test")
    facts = await client.answer(run_id, command_id, timeout=RUN_TIMEOUT_S)
    flow_moves = [f.state["type"] for f in facts if isinstance(f, FlowRunTransitioned)]
    assert flow_moves[0] == "Cancelling"
    task_moves = {f.task_slug: f.state["type"] for f in facts if isinstance(f, TaskRunTransitioned)}
    assert task_moves["wait_for_file-1"] == "Cancelling"  # its body is still running
    assert task_moves["after-1"] == "Cancelled"  # never started
    release.touch()  # let the body return: its outcome ends the Cancelling run as Cancelled
    view = await client.wait(run_id, timeout=RUN_TIMEOUT_S)
    assert view.flow_state_type == "Cancelled"
    body = view.record("wait_for_file-1")
    assert body is not None
    assert body.state_type == "Cancelled"


async def test_resume_goes_through_to_a_paused_task_run(client: Client) -> None:
    """resume() on a Paused task run: Resume is recorded and the run finishes."""
    async with client.subscribe() as changes:
        run_id = await client.submit("tests.integration.flows.simple:pausing", {})
        seen = await _changes_until(changes, "Paused", "gate-1")
    paused = seen[-1]
    assert paused.task_slug == "gate-1"
    assert paused.task_run_id is not None
    command_id = await client.resume(paused.task_run_id)
    facts = await client.answer(run_id, command_id, timeout=RUN_TIMEOUT_S)
    moved = [f for f in facts if isinstance(f, TaskRunTransitioned)]
    assert [f.state["type"] for f in moved][:1] == ["Resume"]
    assert all(f.cause.command_id == command_id for f in facts)
    view = await client.wait(run_id, timeout=RUN_TIMEOUT_S)
    assert view.flow_state_type == "Success"
    assert await client.result(run_id, "after-1") == "approved!"
    resume_again = await client.resume(paused.task_run_id)
    [refused] = await client.answer(run_id, resume_again, timeout=RUN_TIMEOUT_S)
    assert isinstance(refused, TransitionRejected)  # the run is over: nothing to resume
    assert refused.command_type == "resume_requested"
