"""The api's read model against the broker: one run's reads do not scan, restarts read the tail.

All runs share one ledger partition here (`partitions=1`), so a read that scanned
its partition would fetch every other run's records: each test counts what the
client fetched from Kafka (`Client.records_read`) and where it started
(`Client.last_start`). The ledger and a worker run in this event loop; the api
runs beside them and is stopped and started on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiokafka import TopicPartition

from engine.orchestration import fold, fold_as_of
from services.client.client import Client
from services.kafka.clients import make_producer, read_partitions_to_end
from services.readmodel.store import store_path
from services.readmodel.verify import newest_snapshots
from services.roles.app import run_roles
from services.roles.snapshots import encode_snapshot
from services.settings import Settings
from tests.integration.test_cli_kafka import runledger
from tests.integration.test_client_kafka import running_services

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 45.0
FLOW = "examples.etl:flow"


@pytest.fixture
def settings(kafka_settings: Settings, free_port: int) -> Settings:
    return kafka_settings.model_copy(update={"partitions": 1, "web_port": free_port})


@contextlib.asynccontextmanager
async def api_role(settings: Settings) -> AsyncIterator[str]:
    """The api role until the block ends; yields its URL once it caught up with the ledger."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_roles(settings, {"api"}, stop))
    url = f"http://127.0.0.1:{settings.web_port}"
    try:
        await _healthy(url, task)
        yield url
    finally:
        stop.set()
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await task


async def _healthy(url: str, task: asyncio.Task[Any]) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(RUN_TIMEOUT_S):
        while not task.done():
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    task.result()


async def _get(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body: dict[str, Any] = await response.json()
        return body


async def _ledger_records(settings: Settings) -> list[Any]:
    return await read_partitions_to_end(settings, [TopicPartition(settings.topic("ledger"), 0)])


async def _caught_up_with_ledger(settings: Settings, url: str) -> int:
    """Wait until the api's position is the ledger's end; that end."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while True:
            end = (await _ledger_records(settings))[-1].offset + 1
            position = (await _get(f"{url}/read_position"))["partitions"].get("0", 0)
            if position >= end:
                return int(position)
            await asyncio.sleep(0.1)


async def _finished_runs(client: Client, n: int, limit: int = 3) -> list[str]:
    ids = [await client.submit(FLOW, {"limit": limit}) for _ in range(n)]
    for run_id in ids:
        assert (await client.wait(run_id, timeout=RUN_TIMEOUT_S)).flow_state_type == "Success"
    return ids


async def test_a_submitted_run_is_followed_from_the_end_its_partition_had_before(
    settings: Settings,
) -> None:
    """wait() on a run this client submitted fetches nothing written before its request."""
    async with (
        running_services(settings),
        Client(settings.model_copy(update={"api_url": "off"})) as client,
    ):
        await _finished_runs(client, 3)
        last_before = (await _ledger_records(settings))[-1].offset
        reads_before = client.records_read
        run_id = await client.submit(FLOW, {"limit": 2})
        view = await client.wait(run_id, timeout=RUN_TIMEOUT_S)
        assert view.flow_state_type == "Success"
        assert client.last_start is not None
        assert client.last_start.source == "submitted"
        start = client.last_start.offset
        assert start > last_before  # after everything of the earlier runs
        later = [r for r in await _ledger_records(settings) if r.offset >= start]
        fetched = client.records_read - reads_before
        assert 0 < fetched <= len(later)  # nothing of the 3 earlier runs was fetched


async def test_an_old_runs_reads_come_from_the_api_and_fetch_no_other_runs_records(
    settings: Settings,
) -> None:
    """history, view, view(as_of), task_run, result and wait of the oldest run, via the api."""
    async with running_services(settings), api_role(settings) as url:
        async with Client(settings) as submitter:
            oldest, *_ = await _finished_runs(submitter, 4)
        await _caught_up_with_ledger(settings, url)
        records = await _ledger_records(settings)
        own = [r for r in records if r.key == oldest.encode()]
        async with Client(settings) as reader:
            facts = await reader.history(oldest)
            assert [f.event_id for f in facts] == [_event_id(r.value) for r in own]
            assert reader.last_start is not None
            assert reader.last_start.source == "api"
            view = await reader.view(oldest)
            assert view == fold(facts)
            early = await reader.view(oldest, as_of=facts[0].occurred_at)
            assert early == fold_as_of(facts, facts[0].occurred_at)
            assert early != view
            assert (await reader.task_run(oldest, "load-1")).state.is_successful()
            expected = await _result_read_from_kafka(settings, oldest, "transform-1")
            assert await reader.result(oldest, "transform-1") == expected
            assert (await reader.wait(oldest, timeout=RUN_TIMEOUT_S)) == view
            assert reader.records_read == 0  # every record came from the api, none from Kafka
        assert len(records) > 2 * len(own)  # the partition held far more than this run
        shown = await runledger(settings, "--log-level", "INFO", "history", oldest, "--json")
        assert shown.status == 0, shown.err
        assert [json.loads(line)["event_id"] for line in shown.out.splitlines()] == [
            f.event_id for f in facts
        ]
        assert "reading its partition from 0" not in shown.err
        then = facts[0].occurred_at.isoformat()
        states = await runledger(settings, "states", oldest, "--as-of", then, "--json")
        assert states.status == 0, states.err
        assert json.loads(states.out.splitlines()[0])["state_type"] == early.flow_state_type


def _event_id(value: bytes | None) -> str:
    event_id: str = json.loads(value or b"{}")["event_id"]
    return event_id


async def _result_read_from_kafka(settings: Settings, run_id: str, task_slug: str) -> Any:
    """The result as a client without an api or read model reads it (its partition from 0)."""
    blind = settings.model_copy(update={"api_url": "off", "data_dir": settings.data_dir / "none"})
    async with Client(blind) as client:
        value = await client.result(run_id, task_slug)
        assert client.last_start is not None
        assert client.last_start.source == "scan"
        return value


async def test_without_the_api_an_old_run_is_read_from_its_read_model_file(
    settings: Settings,
) -> None:
    async with running_services(settings):
        async with api_role(settings) as url, Client(settings) as client:
            oldest, *_ = await _finished_runs(client, 3)
            await _caught_up_with_ledger(settings, url)
        async with Client(settings) as reader:  # the api is stopped: its port is closed
            facts = await reader.history(oldest)
            assert reader.last_start is not None
            assert reader.last_start.source == "local"
            assert fold(facts).flow_state_type == "Success"
            assert reader.records_read == 0


async def test_an_api_restart_reads_only_the_ledgers_tail(settings: Settings) -> None:
    async with running_services(settings), Client(settings) as client:
        async with api_role(settings) as url:
            await _finished_runs(client, 3)
            folded = await _caught_up_with_ledger(settings, url)
        late = await _finished_runs(client, 1)
        async with api_role(settings) as url:
            end = await _caught_up_with_ledger(settings, url)
            health = await _get(f"{url}/health")
            assert 0 < health["records_read"] <= end - folded
            assert health["events_folded"] == len(await _ledger_records(settings))  # resumed
            body = await _get(f"{url}/flow_runs/{late[0]}")
            assert body["state"] == "Success"


async def test_verify_reports_a_corrupted_read_model_and_passes_a_sound_one(
    settings: Settings,
) -> None:
    async with running_services(settings):
        async with api_role(settings) as url, Client(settings) as client:
            first, second = await _finished_runs(client, 2)
            await _caught_up_with_ledger(settings, url)
        sound = await runledger(settings, "verify")
        assert sound.status == 0, sound.err + sound.out
        assert "equal" in sound.out
        path = store_path(settings.data_dir, settings.topic_prefix)
        with sqlite3.connect(path) as db:
            db.execute(
                "UPDATE runs SET summary = json_set(summary, '$.state', 'Failed') "
                "WHERE flow_run_id = ?",
                (first,),
            )
            db.execute(
                "DELETE FROM facts WHERE flow_run_id = ? AND offset = "
                "(SELECT max(offset) FROM facts WHERE flow_run_id = ?)",
                (second, second),
            )
        broken = await runledger(settings, "verify")
        assert broken.status == 1
        assert f"flow run {first}: its summary differs" in broken.out
        assert '- "state": "Success",' in broken.out
        assert '+ "state": "Failed",' in broken.out
        assert f"flow run {second}: its records differ (" in broken.out
        assert "-@" in broken.out  # the deleted record, as the ledger has it
        assert "2 mismatches in 2 runs" in broken.out
        as_json = await runledger(settings, "verify", "--json", "--from-offset", "0")
        assert as_json.status == 1
        *mismatches, summary = [json.loads(line) for line in as_json.out.splitlines()]
        assert {m["flow_run_id"] for m in mismatches} == {first, second}
        assert (summary["kind"], summary["mismatches"], summary["runs"]) == ("summary", 2, 2)


async def _inject_wrong_snapshot(settings: Settings, drop: str) -> int:
    """Write, as the newest snapshot of partition 0, the current one without `drop`'s
    retired record; returns the offset it covers."""
    snapshots = await newest_snapshots(settings)
    assert 0 in snapshots, "the ledger wrote no snapshot"
    loaded = snapshots[0]
    assert drop in loaded.state.retired
    del loaded.state.retired[drop]
    _, records = encode_snapshot(loaded.state, 0, loaded.manifest.covers)
    producer = make_producer(settings)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.topic("snapshots"), value, key=key, partition=0)
    finally:
        await producer.stop()
    return loaded.manifest.covers


async def test_verify_compares_the_ledgers_snapshots_and_reports_a_wrong_one(
    settings: Settings,
) -> None:
    """With snapshots every few facts, verify checks the newest one against the ledger
    folded from 0 to the offset it covers: equal as the ledger wrote it; a snapshot that
    lost a finished run's retired record is reported, with its run, and exits 1."""
    settings = settings.model_copy(update={"ledger_snapshot_every_events": 5})
    async with running_services(settings), Client(settings) as client:
        first, _ = await _finished_runs(client, 2)
        await _finished_runs(client, 1)  # a snapshot written after both retired
    sound = await runledger(settings, "verify")
    assert sound.status == 0, sound.err + sound.out
    assert "the ledger's snapshots (from offset 0, up to 0: " in sound.out
    assert sound.out.rstrip().endswith("equal")
    covers = await _inject_wrong_snapshot(settings, first)
    wrong = await runledger(settings, "verify")
    assert wrong.status == 1, wrong.out
    assert (
        f"snapshots, partition 0 flow run {first}: snapshot covering offset {covers}: "
        "its retired record differs"
    ) in wrong.out
    assert "1 mismatches in 1 runs" in wrong.out
