"""TaskRunView without a broker: snapshots folded from the events of a local run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from engine import Flow, Parameter, context, task
from engine.flow_runner import FlowRunner, RunOutcome
from engine.result_store import ResultStore
from engine.results import Result
from engine.state import Mapped, Running, Success
from events import Event, TaskRunTransitioned
from services.client.inspection import LedgerSnapshot, TaskRunNotFinished, TaskRunView, load_result


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def inc(x: int) -> int:
    return x + 1


@task(max_retries=1, retry_delay=timedelta(seconds=0))
def flaky() -> str:
    if context.get("task_run_count", 1) == 1:
        raise ValueError("first attempt fails")
    return "ok on attempt 2"


with Flow("inspected") as flow:
    inc.map(numbers(Parameter("n", default=3)))
    flaky()


class CountingStore:
    """A result store that counts the values it is asked to load."""

    def __init__(self, inner: ResultStore) -> None:
        self.inner = inner
        self.reads = 0

    def persist(self, result: Result, key: str) -> dict[str, Any]:
        return self.inner.persist(result, key)

    def hydrate(self, blob: dict[str, Any]) -> Result:
        self.reads += 1
        return self.inner.hydrate(blob)


class GrowingLedger:
    """A `LedgerReader` over a list of events that the test extends to make changes."""

    def __init__(self, events: list[Event], result_store: ResultStore) -> None:
        self.events = events
        self.result_store = result_store

    async def ledger_events(self, flow_run_id: str) -> AsyncIterator[Event]:
        for event in list(self.events):
            if event.flow_run_id == flow_run_id:
                yield event


@pytest.fixture(scope="module")
def outcome() -> RunOutcome:
    run = FlowRunner(flow).run({"n": 3})
    assert run.state.is_successful()
    return run


def view_of(
    outcome: RunOutcome,
    slug: str,
    map_index: int | None = None,
    events: list[Event] | None = None,
    store: ResultStore | None = None,
) -> TaskRunView:
    snapshot = LedgerSnapshot.of(outcome.events if events is None else events, outcome.flow_run_id)
    return TaskRunView.from_snapshot(snapshot, slug, map_index, store=store or outcome.store)


def types(states: tuple[Any, ...]) -> list[str]:
    return [type(s).__name__ for s in states]


def until(outcome: RunOutcome, task_run_id: str, state_type: str) -> list[Event]:
    """The run's events up to and including the task run's first `state_type`."""
    for i, event in enumerate(outcome.events):
        if (
            isinstance(event, TaskRunTransitioned)
            and event.task_run_id == task_run_id
            and event.state["type"] == state_type
        ):
            return outcome.events[: i + 1]
    raise AssertionError(f"{task_run_id} never was {state_type}")


# ----- results ----------------------------------------------------------------------------


async def test_a_mapped_parents_result_is_the_list_of_its_childrens_results(
    outcome: RunOutcome,
) -> None:
    parent = view_of(outcome, "inc-1")
    assert isinstance(parent.state, Mapped)
    assert parent.map_index is None
    assert await parent.get_result() == [1, 2, 3]


async def test_a_childs_result_is_its_own(outcome: RunOutcome) -> None:
    child = view_of(outcome, "inc-1", 2)
    assert isinstance(child.state, Success)
    assert child.map_index == 2
    assert await child.get_result() == 3


async def test_map_index_minus_one_names_the_parent_as_in_prefect(outcome: RunOutcome) -> None:
    parent = view_of(outcome, "inc-1", -1)
    assert parent.task_run_id == f"{outcome.flow_run_id}/inc-1"
    assert parent.map_index is None


async def test_the_result_is_loaded_once_and_then_cached(outcome: RunOutcome) -> None:
    store = CountingStore(outcome.store)
    parent = view_of(outcome, "inc-1", store=store)
    first = await parent.get_result()
    assert store.reads == 3
    assert await parent.get_result() is first
    assert store.reads == 3


async def test_a_result_is_refused_until_the_task_run_is_finished(outcome: RunOutcome) -> None:
    running = until(outcome, f"{outcome.flow_run_id}/flaky-1", "Running")
    view = view_of(outcome, "flaky-1", events=running)
    assert isinstance(view.state, Running)
    with pytest.raises(TaskRunNotFinished, match=r"flaky-1 is Running .*require completion"):
        await view.get_result()


async def test_a_failure_before_a_retry_is_not_a_finished_result(outcome: RunOutcome) -> None:
    failed = until(outcome, f"{outcome.flow_run_id}/flaky-1", "Failed")
    view = view_of(outcome, "flaky-1", events=failed)
    with pytest.raises(TaskRunNotFinished, match="on its way to another state"):
        await view.get_result()


async def test_a_mapped_parents_result_waits_for_every_child(outcome: RunOutcome) -> None:
    first_child_done = until(outcome, f"{outcome.flow_run_id}/inc-1/0", "Success")
    parent = view_of(outcome, "inc-1", events=first_child_done)
    assert isinstance(parent.state, Mapped)
    with pytest.raises(TaskRunNotFinished, match=r"inc-1 is Mapped but its child .*inc-1/1 is"):
        await parent.get_result()


def test_load_result_is_the_one_implementation_under_get_result(outcome: RunOutcome) -> None:
    assert load_result(outcome.view, "inc-1", None, outcome.store) == [1, 2, 3]
    assert load_result(outcome.view, "flaky-1", None, outcome.store) == "ok on attempt 2"


# ----- mapped children --------------------------------------------------------------------


async def test_iter_mapped_yields_every_child_in_map_index_order(outcome: RunOutcome) -> None:
    parent = view_of(outcome, "inc-1")
    children = [child async for child in parent.iter_mapped()]
    assert [c.map_index for c in children] == [0, 1, 2]
    assert [await c.get_result() for c in children] == [1, 2, 3]
    assert all(c.task_slug == "inc-1" for c in children)


async def test_iter_mapped_refuses_a_task_run_that_is_not_mapped(outcome: RunOutcome) -> None:
    with pytest.raises(TypeError, match="flaky-1 is not a mapped task run"):
        _ = [child async for child in view_of(outcome, "flaky-1").iter_mapped()]


# ----- history ----------------------------------------------------------------------------


def test_states_hold_the_whole_history_with_the_retry_in_between(outcome: RunOutcome) -> None:
    view = view_of(outcome, "flaky-1")
    assert types(view.states) == [
        "Pending", "Submitted", "Running", "Failed", "Retrying", "Submitted", "Running", "Success",
    ]  # fmt: skip
    assert view.states[-1] == view.state
    assert view.attempt == 2
    assert [t.seq for t in view.transitions] == list(range(1, 9))
    assert view.seq == 8


def test_a_redelivered_transition_appears_once_in_the_history(outcome: RunOutcome) -> None:
    running = until(outcome, f"{outcome.flow_run_id}/inc-1/1", "Running")
    redelivered = [*running, running[-1], *outcome.events[len(running) :]]
    view = view_of(outcome, "inc-1", 1, events=redelivered)
    assert types(view.states) == ["Pending", "Submitted", "Running", "Success"]


def test_a_view_carries_prefects_attributes(outcome: RunOutcome) -> None:
    view = view_of(outcome, "inc-1", 1)
    assert view.task_run_id == f"{outcome.flow_run_id}/inc-1/1"
    assert view.flow_run_id == outcome.flow_run_id
    assert view.task_slug == "inc-1"
    assert view.name == "inc"
    assert view.attempt == 1


# ----- lookups ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "map_index", "message"),
    [
        ("nope-1", None, r"has no task 'nope-1' \(its task slugs: flaky-1, inc-1, n, numbers-1\)"),
        ("inc-1", 7, "task 'inc-1' has 3 mapped children, none with map_index 7"),
        ("flaky-1", 0, "task 'flaky-1' has no mapped children"),
    ],
)
def test_an_unknown_slug_or_index_is_a_lookup_error(
    outcome: RunOutcome, slug: str, map_index: int | None, message: str
) -> None:
    with pytest.raises(LookupError, match=message):
        view_of(outcome, slug, map_index)


async def test_an_unknown_flow_run_is_a_lookup_error(outcome: RunOutcome) -> None:
    ledger = GrowingLedger(outcome.events, outcome.store)
    with pytest.raises(LookupError, match="flow run elsewhere is not on the ledger"):
        await TaskRunView.from_task_slug("inc-1", "elsewhere", client=ledger)


async def test_from_task_run_id_finds_the_same_task_run(outcome: RunOutcome) -> None:
    ledger = GrowingLedger(outcome.events, outcome.store)
    by_slug = await TaskRunView.from_task_slug("inc-1", outcome.flow_run_id, 2, client=ledger)
    by_id = await TaskRunView.from_task_run_id(by_slug.task_run_id, client=ledger)
    assert (by_id.task_slug, by_id.map_index, by_id.seq) == ("inc-1", 2, by_slug.seq)
    with pytest.raises(LookupError, match="has no task run"):
        await TaskRunView.from_task_run_id(f"{outcome.flow_run_id}/inc-1/9", client=ledger)


# ----- get_latest -------------------------------------------------------------------------


async def test_get_latest_returns_a_new_view_after_a_change(outcome: RunOutcome) -> None:
    flaky_id = f"{outcome.flow_run_id}/flaky-1"
    ledger = GrowingLedger(until(outcome, flaky_id, "Retrying"), outcome.store)
    before = await TaskRunView.from_task_run_id(flaky_id, client=ledger)
    ledger.events = outcome.events
    latest = await before.get_latest()
    assert latest is not before
    assert type(before.state).__name__ == "Retrying"  # the old view is a snapshot
    assert isinstance(latest.state, Success)
    assert latest.states[: len(before.states)] == before.states
    assert await latest.get_result() == "ok on attempt 2"
    with pytest.raises(TaskRunNotFinished):
        await before.get_result()


async def test_get_latest_keeps_the_loaded_result(outcome: RunOutcome) -> None:
    store = CountingStore(outcome.store)
    last_child = until(outcome, f"{outcome.flow_run_id}/inc-1/2", "Success")
    ledger = GrowingLedger(last_child, store)
    parent = await TaskRunView.from_task_slug("inc-1", outcome.flow_run_id, client=ledger)
    loaded = await parent.get_result()
    ledger.events = outcome.events
    latest = await parent.get_latest()
    assert latest is not parent
    assert await latest.get_result() is loaded
    assert store.reads == 3


async def test_get_latest_needs_a_reader(outcome: RunOutcome) -> None:
    with pytest.raises(RuntimeError, match="without a reader"):
        await view_of(outcome, "inc-1").get_latest()
