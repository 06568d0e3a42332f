"""Re-running a failed flow run against the embedded broker and the real roles."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.orchestration import FlowRunView, fold
from events import Event
from services.client.client import Client
from services.settings import Settings
from tests.integration import test_cli_kafka
from tests.integration.test_cli_kafka import runledger
from tests.integration.test_client_kafka import RUN_TIMEOUT_S, _ledger_events, running_services

pytestmark = pytest.mark.integration

FLOW = "tests.integration.flows.rerun:flow"


@pytest.fixture
async def client(kafka_settings: Settings) -> AsyncIterator[Client]:
    async with running_services(kafka_settings), Client(kafka_settings) as client:
        yield client


def _state(view: FlowRunView, slug: str) -> str:
    record = view.record(slug)
    assert record is not None, slug
    return record.state_type


async def test_a_rerun_reuses_what_succeeded_and_runs_the_failures_again(
    client: Client, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    first = await client.submit(FLOW, {"out_dir": str(out_dir)})
    failed = await client.wait(first, RUN_TIMEOUT_S)
    assert failed.flow_state_type == "Failed"
    assert _state(failed, "prepare-1") == "Success"
    assert _state(failed, "flaky-1") == "Failed"
    assert (out_dir / "prepare.runs").read_text().splitlines() == ["ran"]

    (out_dir / "allow").touch()
    second = await client.rerun(first)
    assert second != first
    view = await client.wait(second, RUN_TIMEOUT_S)

    assert view.flow_state_type == "Success"
    assert view.context["rerun_of"] == first
    assert view.parameters == {"out_dir": str(out_dir)}
    prepare = view.record("prepare-1")
    assert prepare is not None
    assert prepare.state_type == "Cached"
    assert prepare.state["message"] == f"Reused the result of flow run {first}"
    assert (out_dir / "prepare.runs").read_text().splitlines() == ["ran"]  # not run again
    assert _state(view, "flaky-1") == "Success"
    assert _state(view, "report-1") == "Success"
    assert await client.result(second, "prepare-1") == 21
    assert await client.result(second, "flaky-1") == 42
    assert await client.result(second, "report-1") == "report 42"
    events = [e for e in await _ledger_events(client.settings, second) if isinstance(e, Event)]
    assert fold(events, flow_run_id=second) == await client.view(second)


async def test_a_rerun_of_an_unknown_flow_run_is_refused(client: Client) -> None:
    with pytest.raises(LookupError, match="unknown flow run"):
        await client.rerun("no-such-run")


async def test_runledger_rerun_waits_like_run_and_exits_0_once_it_succeeded(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module form runs this checkout's CLI (an installed console script may be another's).
    cli_module = [sys.executable, "-m", "services.client.cli"]
    monkeypatch.setattr(test_cli_kafka, "_command", lambda: cli_module)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    first = await client.submit(FLOW, {"out_dir": str(out_dir)})
    assert (await client.wait(first, RUN_TIMEOUT_S)).flow_state_type == "Failed"
    still_failing = await runledger(client.settings, "rerun", first, "--timeout", "30")
    assert still_failing.status == 1, still_failing
    assert "finished Failed" in still_failing.err
    (out_dir / "allow").touch()
    result = await runledger(client.settings, "rerun", first, "--timeout", "30")
    assert result.status == 0, result
    assert f"a re-run of {first}" in result.out
    assert "Cached" in result.out
    assert (out_dir / "prepare.runs").read_text().splitlines() == ["ran"]
    unknown = await runledger(client.settings, "rerun", "no-such-run")
    assert unknown.status == 1
    assert "runledger rerun: unknown flow run no-such-run" in unknown.err
