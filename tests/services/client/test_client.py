"""Client pieces that need no broker: ids, flow refs, partitions, change objects,
the commands `submit`/`cancel`/`resume` write, and the live-view model."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import SecretStr
from rich.console import Console

from engine.flow_runner import FlowRunner
from engine.orchestration import FlowRunView, decide_and_evolve
from events import (
    CancelRequested,
    FlowPlan,
    FlowRef,
    FlowRunTransitioned,
    PlanTask,
    ResumeRequested,
    RunRequested,
    TaskRunTransitioned,
    TransitionRejected,
    WorkDispatched,
    decode_command,
)
from examples.demo import flow as demo_flow
from examples.etl import flow as etl_flow
from services.client.client import (
    Change,
    Client,
    IdempotencyConflict,
    change_of,
    flow_run_id_for,
    flow_run_id_of_task_run,
    parse_flow_ref,
    partition_for,
)
from services.client.watch import RunProgress, render
from services.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# ----- ids -------------------------------------------------------------------------------


def test_the_same_idempotency_key_always_gives_the_same_flow_run_id() -> None:
    assert flow_run_id_for("etl-2024-04-30") == flow_run_id_for("etl-2024-04-30")
    assert flow_run_id_for("etl-2024-04-30") != flow_run_id_for("etl-2024-05-01")
    # Pinned: other clients (and later versions) must derive the same id.
    assert flow_run_id_for("etl-2024-04-30") == str(
        uuid.uuid5(uuid.UUID("899bf199-0f8b-4b8e-bbcf-a4e70a5b1db4"), "etl-2024-04-30")
    )


def test_without_a_key_every_flow_run_id_is_a_fresh_uuid4() -> None:
    ids = {flow_run_id_for() for _ in range(100)}
    assert len(ids) == 100
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_an_empty_idempotency_key_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        flow_run_id_for("")


def test_task_run_ids_name_their_flow_run() -> None:
    assert flow_run_id_of_task_run("run-1/square-1/3") == "run-1"
    assert flow_run_id_of_task_run("run-1/greet-1") == "run-1"
    for bad in ("run-1", "/greet-1", "run-1/"):
        with pytest.raises(ValueError, match="is not a task run id"):
            flow_run_id_of_task_run(bad)


def test_flow_refs_are_import_paths() -> None:
    assert parse_flow_ref("examples.demo:flow") == FlowRef(kind="import", path="examples.demo:flow")
    for bad in ("examples.demo", "examples/demo.py:flow", ":flow", "examples.demo:"):
        with pytest.raises(ValueError, match=r"expected 'package\.module:attribute'"):
            parse_flow_ref(bad)


@pytest.mark.parametrize("partitions", [1, 2, 4, 7, 12])
def test_partition_for_matches_the_producers_default_partitioner(partitions: int) -> None:
    every = list(range(partitions))
    for i in range(200):
        key = flow_run_id_for(f"key-{i}")
        assert partition_for(key, partitions) == DefaultPartitioner()(key.encode(), every, every)


# ----- commands written by the client (a fake producer records them) ---------------------


class RecordingProducer:
    """Stands in for AIOKafkaProducer: keeps what `send_and_wait` was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))


def _client() -> tuple[Client, RecordingProducer]:
    client = Client(Settings(topic_prefix="unit."))
    producer = RecordingProducer()
    client._producer = producer  # no broker: the client only needs send_and_wait here
    client._partitions = 4
    client.view = _no_run  # type: ignore[method-assign]  # nothing on the ledger yet
    client._ledger_end = _empty_ledger  # type: ignore[method-assign]
    return client, producer


async def _empty_ledger(tp: TopicPartition) -> int:
    return 0


async def _no_run(flow_run_id: str, *, as_of: datetime | None = None) -> FlowRunView:
    return FlowRunView(flow_run_id=flow_run_id)


async def test_a_key_reused_for_other_parameters_is_a_clear_error_not_the_other_run() -> None:
    client, producer = _client()
    plan = FlowPlan(name="p", version="1", tasks=(PlanTask(slug="a", name="a"),))
    existing, _ = decide_and_evolve(
        FlowRunView(flow_run_id=flow_run_id_for("nightly")),
        RunRequested(
            event_id="r", flow_run_id=flow_run_id_for("nightly"), occurred_at=datetime.now(UTC),
            flow_ref=FlowRef(kind="import", path="examples.demo:flow"), parameters={"n": 3},
            plan=plan, idempotency_key="nightly",
        ),
        datetime.now(UTC),
    )

    async def view(flow_run_id: str, *, as_of: datetime | None = None) -> FlowRunView:
        return existing

    client.view = view  # type: ignore[method-assign]
    same = await client.submit("examples.demo:flow", {"n": 3}, idempotency_key="nightly")
    assert same == flow_run_id_for("nightly")
    with pytest.raises(IdempotencyConflict, match="idempotency key 'nightly' already names"):
        await client.submit("examples.demo:flow", {"n": 4}, idempotency_key="nightly")
    with pytest.raises(IdempotencyConflict):
        await client.submit("examples.demo:other", {"n": 3}, idempotency_key="nightly")
    assert len(producer.sent) == 1


async def test_submit_writes_a_run_request_keyed_by_its_flow_run() -> None:
    client, producer = _client()
    run_id = await client.submit("examples.demo:flow", {"n": 3})
    [(topic, value, key)] = producer.sent
    assert topic == "unit.commands"
    assert key == run_id.encode()
    command = decode_command(value)
    assert isinstance(command, RunRequested)
    assert command.flow_run_id == run_id
    assert command.flow_ref == FlowRef(kind="import", path="examples.demo:flow")
    assert command.parameters == {"n": 3}
    assert command.plan is None  # the ledger resolves it
    assert command.cause.worker == client.identity


async def test_submit_with_a_key_repeats_the_same_command() -> None:
    client, producer = _client()
    first = await client.submit("examples.demo:flow", {"n": 3}, idempotency_key="nightly")
    second = await client.submit("examples.demo:flow", {"n": 3}, idempotency_key="nightly")
    assert first == second == flow_run_id_for("nightly")
    commands = [decode_command(value) for _, value, _ in producer.sent]
    assert commands[0].event_id == commands[1].event_id  # a redelivery, as far as the ledger knows


async def test_submit_refuses_values_that_are_not_json() -> None:
    client, producer = _client()
    with pytest.raises(ValueError, match="parameters must be JSON values"):
        await client.submit("examples.demo:flow", {"when": datetime.now(UTC)})
    with pytest.raises(ValueError, match="parameters must be JSON values"):
        await client.submit("examples.demo:flow", {"x": float("nan")})
    with pytest.raises(ValueError, match="is not a flow reference"):
        await client.submit("examples.demo", {})
    assert producer.sent == []


async def test_submit_of_a_flow_object_sends_a_signed_pickle(tmp_path: Path) -> None:
    client, producer = _client()
    client.settings = Settings(
        topic_prefix="unit.",
        signing_key=SecretStr("k" * 32),
        result_store_url=f"file://{tmp_path}",
    )
    await client.submit(demo_flow, {"n": 2})
    command = decode_command(producer.sent[0][1])
    assert isinstance(command, RunRequested)
    assert command.flow_ref.kind == "pickled"
    assert command.flow_ref.location is not None
    assert command.flow_ref.location.startswith(f"file://{tmp_path}")


async def test_cancel_and_resume_write_their_commands() -> None:
    client, producer = _client()
    cancel_id = await client.cancel("run-1", reason="wrong day")
    resume_id = await client.resume("run-1/approve-1")
    cancel, resume = (decode_command(value) for _, value, _ in producer.sent)
    assert isinstance(cancel, CancelRequested)
    assert (cancel.event_id, cancel.flow_run_id, cancel.reason) == (cancel_id, "run-1", "wrong day")
    assert isinstance(resume, ResumeRequested)
    assert (resume.event_id, resume.flow_run_id, resume.task_run_id) == (
        resume_id,
        "run-1",
        "run-1/approve-1",
    )
    assert [key for _, _, key in producer.sent] == [b"run-1", b"run-1"]


def test_the_documented_plain_json_run_request_is_what_the_client_writes() -> None:
    """docs/events.md's example decodes to the same kind of command Client.submit sends."""
    text = (REPO_ROOT / "docs" / "events.md").read_text()
    start = text.index("```json", text.index("## Writing a command from any language")) + 7
    document = json.loads(text[start : text.index("```", start)])
    command = decode_command(json.dumps(document).encode())
    assert isinstance(command, RunRequested)
    assert command.plan is None
    assert command.flow_ref.kind == "import"
    assert set(document) <= set(RunRequested.model_fields)


def test_client_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEDGER_TOPIC_PREFIX", "envtest.")
    assert Client().settings.topic("commands") == "envtest.commands"


async def test_using_a_client_that_is_not_started_says_how() -> None:
    with pytest.raises(RuntimeError, match="async with Client"):
        await Client().cancel("run-1")


# ----- change objects --------------------------------------------------------------------


@functools.cache
def _outcome_events() -> tuple[Any, ...]:
    """One local run of the demo flow (its ledger), shared by the tests that only read it."""
    return tuple(FlowRunner(demo_flow).run(parameters={"n": 2}).events)


def test_every_state_change_on_the_ledger_becomes_a_change() -> None:
    events = _outcome_events()
    changes = [c for c in map(change_of, events) if c is not None]
    transitions = [e for e in events if isinstance(e, TaskRunTransitioned | FlowRunTransitioned)]
    assert len(changes) == len(transitions)
    assert not any(change_of(e) for e in events if isinstance(e, WorkDispatched))
    task = next(c for c in changes if c.kind == "task_run" and c.map_index == 1)
    assert task.task_slug == "square-1"
    assert task.task_run_id is not None
    assert task.task_run_id.endswith("/square-1/1")
    assert isinstance(task.fact, TaskRunTransitioned)
    assert task.state_type == task.fact.state["type"]
    assert task.seq == task.fact.seq
    last = changes[-1]
    assert last.kind == "flow_run"
    assert (last.state_type, last.is_finished, last.is_successful, last.ends_flow_run) == (
        "Success",
        True,
        True,
        True,
    )


def test_a_failed_step_before_a_retry_is_not_finished() -> None:
    changes = [c for c in map(change_of, _outcome_events()) if c is not None]
    failed = next(c for c in changes if c.state_type == "Failed")
    assert failed.task_slug == "flaky_total-1"
    assert not failed.final
    assert not failed.is_finished


def test_a_refused_run_request_ends_the_run_for_a_watcher() -> None:
    rejected = TransitionRejected(
        event_id="e-1",
        flow_run_id="run-1",
        occurred_at=NOW,
        command_id="c-1",
        command_type="run_requested",
        reason="module 'evil' is not in the flow allowlist",
    )
    change = change_of(rejected)
    assert isinstance(change, Change)
    assert (change.kind, change.state_type, change.ends_flow_run) == ("rejected", None, True)
    assert change.message == "module 'evil' is not in the flow allowlist"
    progress = RunProgress("run-1")
    progress.apply(change)
    assert progress.finished
    assert not progress.successful
    assert progress.run_rejected == "module 'evil' is not in the flow allowlist"


# ----- the live view model ---------------------------------------------------------------


def test_progress_follows_a_run_with_its_retry_and_cache() -> None:
    runner = FlowRunner(demo_flow)
    runner.run(parameters={"n": 3})
    second = runner.run(parameters={"n": 3})  # same process: reference_data comes from cache
    progress = RunProgress(second.flow_run_id)
    for change in map(change_of, second.events):
        if change is not None:
            progress.apply(change)
    assert progress.finished
    assert progress.successful
    rows = {row.label: row for row in progress.rows.values()}
    assert rows["flaky_total-1"].attempt == 2
    assert rows["flaky_total-1"].note == "attempt 2"
    assert rows["reference_data-1"].cache_hit
    assert rows["square-1[2]"].state == "Success"
    console = Console(record=True, width=200)
    console.print(render(progress))
    text = console.export_text()
    assert "cache hit" in text
    assert "Retrying" in text
    assert "square-1[2]" in text


def test_a_big_map_collapses_into_one_row() -> None:
    outcome = FlowRunner(etl_flow).run(parameters={"limit": 30})
    progress = RunProgress.from_view(outcome.view)
    console = Console(record=True, width=200)
    console.print(render(progress, max_children=10))
    text = console.export_text()
    assert "transform-1[0..29]" in text
    assert "30 Success" in text
    assert "transform-1[7]" not in text
