"""Where a client starts reading one run: the api's history, its file, or nowhere (no broker)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from engine.flow_runner import FlowRunner, RunOutcome
from events import encode
from examples.etl import flow as etl_flow
from services.client.locate import ApiReader, local_start
from services.readmodel.model import ReadModel
from services.readmodel.store import StoreIdentity, open_store, store_path
from services.roles.api import make_app
from services.settings import Settings

PREFIX = "unit."


def _outcome() -> RunOutcome:
    return FlowRunner(etl_flow).run(parameters={"limit": 2})


def _model(path: Path | None, outcome: RunOutcome, ledger_topic: str) -> ReadModel:
    model = ReadModel.open(open_store(path, StoreIdentity(ledger_topic=ledger_topic)), 1000)
    model.ledger_topic, model.ledger_partitions = ledger_topic, 4
    for offset, event in enumerate(outcome.events, start=100):  # others' records before
        model.apply_record(encode(event), (3, offset))
    model.commit({3: 100 + len(outcome.events), 0: 7})
    return model


@pytest.fixture
async def api(request: pytest.FixtureRequest) -> AsyncIterator[tuple[TestServer, RunOutcome]]:
    outcome = _outcome()
    topic: str = getattr(request, "param", f"{PREFIX}ledger")
    server = TestServer(make_app(_model(None, outcome, topic)))
    await server.start_server()
    try:
        yield server, outcome
    finally:
        await server.close()


def _settings(server: TestServer, **more: Any) -> Settings:
    return Settings(topic_prefix=PREFIX, api_url=str(server.make_url("")), **more)


async def test_the_api_gives_a_runs_facts_and_the_offset_to_follow_from(
    api: tuple[TestServer, RunOutcome],
) -> None:
    server, outcome = api
    reader = ApiReader(_settings(server))
    try:
        start = await reader.start(outcome.flow_run_id)
    finally:
        await reader.close()
    assert start is not None
    assert (start.source, start.partition, start.offset) == ("api", 3, 100 + len(outcome.events))
    assert list(start.events) == list(outcome.events)


async def test_an_unknown_run_starts_at_the_apis_position_of_its_partition(
    api: tuple[TestServer, RunOutcome],
) -> None:
    server, _ = api
    reader = ApiReader(_settings(server))
    try:
        start = await reader.start("nobody-yet")
    finally:
        await reader.close()
    assert start is not None
    assert start.events == ()
    assert start.offset == {3: 100 + len(_outcome().events), 0: 7}.get(start.partition, 0)


@pytest.mark.parametrize("api", ["someone-else.ledger"], indirect=True)
async def test_an_api_serving_other_topics_is_not_used(api: tuple[TestServer, RunOutcome]) -> None:
    server, outcome = api
    reader = ApiReader(_settings(server))
    try:
        assert await reader.start(outcome.flow_run_id) is None
    finally:
        await reader.close()


async def test_an_api_that_is_not_there_or_off_is_not_used() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        silent = sock.getsockname()[1]
        await _not_used(f"http://127.0.0.1:{silent}")
    await _not_used("off")


async def _not_used(url: str) -> None:
    reader = ApiReader(Settings(topic_prefix=PREFIX, api_url=url))
    try:
        assert await reader.start("any-run") is None
    finally:
        await reader.close()


def test_without_an_api_the_read_models_file_on_this_machine_gives_the_start(
    tmp_path: Path,
) -> None:
    outcome = _outcome()
    settings = Settings(topic_prefix=PREFIX, data_dir=tmp_path)
    assert local_start(settings, outcome.flow_run_id, 3) is None  # no file yet
    _model(store_path(tmp_path, PREFIX), outcome, f"{PREFIX}ledger").store.close()
    start = local_start(settings, outcome.flow_run_id, 3)
    assert start is not None
    assert (start.source, start.offset, list(start.events)) == (
        "local",
        100 + len(outcome.events),
        list(outcome.events),
    )
