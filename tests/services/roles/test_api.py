"""The api's read model and HTTP handlers over ledgers made by the local runner (no broker)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.flow_runner import FlowRunner, RunOutcome
from events import encode
from examples.etl import flow as etl_flow
from examples.failing import flow as failing_flow
from services.readmodel.cache import ViewCache
from services.readmodel.store import StoreIdentity, open_store
from services.roles.api import ReadModel, make_app, metrics_text

PARTITIONS = 2


@functools.cache
def _runs() -> tuple[RunOutcome, RunOutcome]:
    return (
        FlowRunner(etl_flow).run(parameters={"limit": 3}),
        FlowRunner(failing_flow).run(),
    )


def _empty_model(cache_task_runs: int = 10_000) -> ReadModel:
    store = open_store(None, StoreIdentity(ledger_topic="unit.ledger"))
    model = ReadModel(store=store, cache=ViewCache(cache_task_runs), ledger_topic="unit.ledger")
    model.ledger_partitions = PARTITIONS
    return model


def _model(cache_task_runs: int = 10_000) -> ReadModel:
    """The two runs' ledgers as records of partitions 0 and 1, one batch per run."""
    model = _empty_model(cache_task_runs)
    positions = {0: 0, 1: 0}
    for partition, outcome in enumerate(_runs()):
        for offset, event in enumerate(outcome.events):
            model.apply_record(encode(event), (partition, offset))  # as read from the topic
        positions[partition] = len(outcome.events)
        model.commit(positions)
    model.caught_up = True
    return model


@pytest.fixture
async def http() -> AsyncIterator[TestClient[Any, Any]]:
    client = TestClient(TestServer(make_app(_model())))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def test_the_read_model_equals_the_runners_own_views() -> None:
    model = _model()
    for outcome in _runs():
        assert model.view(outcome.flow_run_id) == outcome.view
    assert model.events_folded == sum(len(o.events) for o in _runs())


def test_folding_a_ledger_twice_changes_nothing() -> None:
    model = _model()
    ids = [outcome.flow_run_id for outcome in _runs()]
    before = ([model.view(i) for i in ids], dict(model.task_states), dict(model.flow_states))
    for outcome in _runs():
        for event in outcome.events:
            model.apply(event)  # at-least-once delivery: every event again
    after = ([model.view(i) for i in ids], dict(model.task_states), dict(model.flow_states))
    assert after == before


def test_state_counts_are_kept_while_folding() -> None:
    model = _model()
    assert dict(model.flow_states) == {"Success": 1, "Failed": 1}
    expected: dict[str, int] = {}
    for outcome in _runs():
        for record in outcome.view.task_runs.values():
            expected[record.state_type] = expected.get(record.state_type, 0) + 1
    assert dict(model.task_states) == expected


def test_undecodable_records_are_counted_not_fatal() -> None:
    model = _empty_model()
    model.apply_record(b"not json", (0, 0))
    assert (model.undecodable, model.events_folded) == (1, 0)
    assert "runledger_fold_errors_total 1" in metrics_text(model)


async def test_health_is_503_until_the_fold_caught_up() -> None:
    model = _empty_model()
    client = TestClient(TestServer(make_app(model)))
    await client.start_server()
    try:
        response = await client.get("/health")
        assert response.status == 503
        assert (await response.json())["status"] == "starting"
        model.caught_up = True
        response = await client.get("/health")
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    finally:
        await client.close()


async def test_flow_runs_lists_every_run(http: TestClient[Any, Any]) -> None:
    response = await http.get("/flow_runs")
    assert response.status == 200
    runs = {run["id"]: run for run in await response.json()}
    etl, failing = _runs()
    assert set(runs) == {etl.flow_run_id, failing.flow_run_id}
    assert runs[etl.flow_run_id]["state"] == "Success"
    assert runs[etl.flow_run_id]["flow_name"] == "etl"
    assert runs[etl.flow_run_id]["task_run_states"]["Success"] >= 4
    assert runs[failing.flow_run_id]["state"] == "Failed"
    failed = await (await http.get("/flow_runs?state=Failed")).json()
    assert [run["id"] for run in failed] == [failing.flow_run_id]
    assert len(await (await http.get("/flow_runs?limit=1")).json()) == 1


async def test_bad_query_values_are_400_json(http: TestClient[Any, Any]) -> None:
    response = await http.get("/flow_runs?limit=lots")
    assert response.status == 400
    assert "limit must be a positive integer" in (await response.json())["error"]


async def test_one_flow_run_has_its_plan_and_task_runs(http: TestClient[Any, Any]) -> None:
    etl = _runs()[0]
    body = await (await http.get(f"/flow_runs/{etl.flow_run_id}")).json()
    assert body["parameters"] == {"limit": 3}
    assert body["state_blob"]["type"] == "Success"
    assert [t["slug"] for t in body["plan"]] == [t.slug for t in etl.view.plan.tasks]
    task_runs = await (await http.get(body["links"]["task_runs"])).json()
    assert len(task_runs) == len(etl.view.task_runs)
    by_id = {t["id"]: t for t in task_runs}
    child = by_id[f"{etl.flow_run_id}/transform-1/2"]
    assert (child["task_slug"], child["map_index"], child["state"]) == ("transform-1", 2, "Success")


async def test_a_task_run_is_found_by_its_id_with_slashes(http: TestClient[Any, Any]) -> None:
    failing = _runs()[1]
    task_run_id = f"{failing.flow_run_id}/divide-1"
    response = await http.get(f"/task_runs/{task_run_id}")
    assert response.status == 200
    body = await response.json()
    assert body["state"] == "Failed"
    assert "ZeroDivisionError" in body["message"]
    assert body["links"]["self"] == f"/task_runs/{task_run_id}"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/flow_runs/no-such-run", "no flow run 'no-such-run'"),
        ("/flow_runs/no-such-run/task_runs", "no flow run 'no-such-run'"),
        ("/task_runs/no-such-run/greet-1", "no task run 'no-such-run/greet-1'"),
        ("/task_runs/plain", "no task run 'plain'"),
        ("/nothing/here", "Not Found"),
    ],
)
async def test_unknown_ids_are_404_json(
    http: TestClient[Any, Any], path: str, message: str
) -> None:
    response = await http.get(path)
    assert response.status == 404
    assert response.content_type == "application/json"
    assert await response.json() == {"error": message, "status": 404}


async def test_metrics_are_prometheus_text(http: TestClient[Any, Any]) -> None:
    response = await http.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert samples['runledger_flow_runs{state="Success"}'] == "1"
    assert samples['runledger_flow_runs{state="Failed"}'] == "1"
    assert samples['runledger_task_runs{state="TriggerFailed"}'] == "1"
    assert int(samples["runledger_events_folded_total"]) == sum(len(o.events) for o in _runs())
    assert samples["runledger_ledger_lag"] == "0"
    assert samples["runledger_read_model_caught_up"] == "1"
    assert "# TYPE runledger_events_folded_total counter" in text
    assert int(samples['python_gc_collections_total{generation="2"}']) >= 0
    assert int(samples["runledger_gc_frozen_objects"]) >= 0


async def test_a_runs_history_is_its_ledger_records_in_order_with_the_position_they_cover(
    http: TestClient[Any, Any],
) -> None:
    etl = _runs()[0]
    response = await http.get(f"/flow_runs/{etl.flow_run_id}/history")
    assert response.status == 200
    body = await response.json()
    assert (body["partition"], body["position"]) == (0, len(etl.events))
    assert body["ledger_topic"] == "unit.ledger"
    assert [fact["event_id"] for fact in body["facts"]] == [e.event_id for e in etl.events]


async def test_an_unknown_runs_history_is_404_and_still_says_where_to_read_from(
    http: TestClient[Any, Any],
) -> None:
    response = await http.get("/flow_runs/no-such-run/history")
    assert response.status == 404
    body = await response.json()
    assert body["error"] == "no flow run 'no-such-run'"
    assert body["partition"] in range(PARTITIONS)
    assert body["position"] == [len(o.events) for o in _runs()][body["partition"]]
    assert "facts" not in body


async def test_a_malformed_flow_run_id_is_a_400_saying_why(http: TestClient[Any, Any]) -> None:
    response = await http.get("/flow_runs/has%20space/history")
    assert response.status == 400
    assert "is not a flow run id" in (await response.json())["error"]


async def test_the_read_position_is_what_was_committed(http: TestClient[Any, Any]) -> None:
    body = await (await http.get("/read_position")).json()
    assert body["partitions"] == {str(p): len(o.events) for p, o in enumerate(_runs())}
    assert body["caught_up"] is True


async def test_views_evicted_from_a_small_cache_are_served_folded_from_the_store() -> None:
    model = _model(cache_task_runs=1)  # room for one view: the other is always on disk only
    client = TestClient(TestServer(make_app(model)))
    await client.start_server()
    try:
        for outcome in _runs():
            body = await (await client.get(f"/flow_runs/{outcome.flow_run_id}")).json()
            assert body["state"] == outcome.view.flow_state_type
            assert body["task_runs"] == len(outcome.view.task_runs)
            assert len(model.cache) == 1
    finally:
        await client.close()
