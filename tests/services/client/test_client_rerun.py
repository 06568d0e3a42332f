"""Client.rerun: what an earlier run's view lets a re-run reuse, and the request it writes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition

from engine import Flow, Parameter, task
from engine.clock import FixedClock
from engine.flow_runner import FlowRunner, RunOutcome
from engine.orchestration import FlowRunView
from events import FlowRef, RunRequested, decode_command
from services.client.client import Client, flow_run_id_for, reusable_states
from services.settings import Settings

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@task
def prepare(n: int) -> int:
    return n * 10


@task
def inc(x: int) -> int:
    return x + 1


@task
def fail(y: int) -> int:
    raise ValueError(f"no {y}")


@task
def after(y: int) -> int:
    return y


def earlier_run() -> tuple[Flow, RunOutcome]:
    """A failed run: n (parameter), prepare Success, inc mapped Success, fail Failed, after."""
    with Flow("rerun-selection") as flow:
        n = Parameter("n", default=2)
        p = prepare(n)
        inc.map([1, 2])
        after(fail(p))
    return flow, FlowRunner(flow, clock=FixedClock(NOW)).run(flow_run_id="first")


def slugs_of(flow: Flow) -> dict[str, str]:
    return {t.name: flow.slugs[t] for t in flow.tasks}


def test_only_successful_plain_unmapped_task_runs_are_reusable() -> None:
    """prepare is; the parameter, the mapped inc, the failure and the TriggerFailed are not."""
    flow, outcome = earlier_run()
    slugs = slugs_of(flow)
    reuse = reusable_states(outcome.view)
    assert set(reuse) == {slugs["prepare"]}
    record = outcome.view.record(slugs["prepare"])
    assert record is not None
    assert reuse[slugs["prepare"]] == record.state


def test_a_cached_task_run_is_reusable_again() -> None:
    """A re-run's reused (Cached) task runs are reused by the next re-run."""
    flow, outcome = earlier_run()
    again = FlowRunner(flow, clock=FixedClock(NOW), store=outcome.store).run(
        flow_run_id="second", reuse=reusable_states(outcome.view), rerun_of="first"
    )
    slug = slugs_of(flow)["prepare"]
    assert again.view.record(slug) is not None
    assert set(reusable_states(again.view)) == {slug}
    assert reusable_states(again.view)[slug]["type"] == "Cached"


def test_an_unknown_run_has_nothing_to_reuse() -> None:
    assert reusable_states(FlowRunView(flow_run_id="nope")) == {}


class RecordingProducer:
    """Stands in for AIOKafkaProducer: keeps what `send_and_wait` was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))


def client_seeing(view: FlowRunView) -> tuple[Client, RecordingProducer]:
    """A client without a broker whose `view` of any flow run is `view`."""
    client = Client(Settings(topic_prefix="unit."))
    producer = RecordingProducer()
    client._producer = producer

    async def fake_view(flow_run_id: str, **_: Any) -> FlowRunView:
        return view

    async def empty_ledger(tp: TopicPartition) -> int:
        return 0

    client.view = fake_view  # type: ignore[method-assign]
    client._partitions = 4
    client._ledger_end = empty_ledger  # type: ignore[method-assign]
    return client, producer


def with_flow_ref(view: FlowRunView) -> FlowRunView:
    """The local runner's view names a placeholder flow ref; a real one is the same shape."""
    return replace(view, flow_ref=FlowRef(kind="import", path="pkg.flows:flow"))


async def test_rerun_writes_a_run_request_of_the_same_flow_that_reuses_its_successes() -> None:
    flow, outcome = earlier_run()
    view = with_flow_ref(outcome.view)
    client, producer = client_seeing(view)
    new_id = await client.rerun("first")
    [(topic, value, key)] = producer.sent
    command = decode_command(value)
    assert isinstance(command, RunRequested)
    assert topic == "unit.commands"
    assert key == new_id.encode()
    assert command.flow_run_id == new_id != "first"
    assert command.flow_ref == view.flow_ref
    assert command.parameters == view.parameters
    assert command.context == {**view.context, "rerun_of": "first"}
    assert command.plan is None  # the ledger plans it, as for submit
    assert command.reuse == reusable_states(view)
    assert set(command.reuse) == {slugs_of(flow)["prepare"]}


async def test_rerun_with_a_key_names_the_same_new_run_each_time() -> None:
    _, outcome = earlier_run()
    client, producer = client_seeing(with_flow_ref(outcome.view))
    first = await client.rerun("first", idempotency_key="again")
    second = await client.rerun("first", idempotency_key="again")
    assert first == second == flow_run_id_for("again")
    one, two = (decode_command(value) for _, value, _ in producer.sent)
    assert one.event_id == two.event_id


async def test_rerun_of_an_unknown_flow_run_is_a_lookup_error() -> None:
    client, producer = client_seeing(FlowRunView(flow_run_id="nope"))
    with pytest.raises(LookupError, match="unknown flow run nope"):
        await client.rerun("nope")
    assert producer.sent == []


async def test_rerun_of_an_unfinished_flow_run_is_a_value_error() -> None:
    _, outcome = earlier_run()
    running = replace(with_flow_ref(outcome.view), flow_state_type="Running")
    client, producer = client_seeing(running)
    with pytest.raises(ValueError, match="is Running, not finished"):
        await client.rerun("first")
    assert producer.sent == []
