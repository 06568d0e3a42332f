"""`runledger run|cancel|resume` as subprocesses against the embedded broker.

The ledger and a worker run in the test's event loop (`running_services`); the CLI
is a separate process configured only by its own RUNLEDGER_* environment, started
with asyncio (so the roles keep running meanwhile) and stopped by PID if it hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from services.client.client import Client
from services.settings import Settings
from tests.integration.procnet import process_alive
from tests.integration.test_client_kafka import running_services

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess]

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0


@dataclass
class Result:
    status: int
    out: str
    err: str


def _command() -> list[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sys.executable).with_name("runledger")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.client.cli"]


def _environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNLEDGER_")}
    env.update(
        RUNLEDGER_BROKERS=settings.brokers,
        RUNLEDGER_TOPIC_PREFIX=settings.topic_prefix,
        RUNLEDGER_APP_ID=settings.app_id,
        RUNLEDGER_DATA_DIR=str(settings.data_dir),
        RUNLEDGER_FETCH_MAX_WAIT_MS=str(settings.fetch_max_wait_ms),
        RUNLEDGER_WEB_PORT=str(settings.web_port),
        RUNLEDGER_API_URL=settings.api_url,
        COLUMNS="160",
    )
    return env


async def runledger(settings: Settings, *args: str) -> Result:
    """Run ``runledger ARGS`` to completion; killed by PID after CLI_TIMEOUT_S."""
    process = await asyncio.create_subprocess_exec(
        *_command(),
        *args,
        cwd=REPO_ROOT,
        env=_environment(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def services(kafka_settings: Settings) -> AsyncIterator[Settings]:
    async with running_services(kafka_settings):
        yield kafka_settings


async def test_run_watch_exits_0_for_a_successful_flow(services: Settings) -> None:
    """The live view ends with the final states; exit status 0."""
    result = await runledger(
        services, "run", "examples.demo:flow", "-p", "n=3", "--watch", "--timeout", "45"
    )
    transcript = result.out + result.err
    assert result.status == 0, transcript
    assert "finished: Success" in result.out, transcript
    assert "square-1[2]" in result.out, transcript
    assert "attempt 2" in result.out, transcript  # flaky_total was retried
    assert "Traceback" not in result.err, transcript


async def test_run_watch_exits_1_for_a_failing_flow(services: Settings) -> None:
    """A flow run that ends Failed gives a non-zero exit status and says why."""
    result = await runledger(services, "run", "examples.failing:flow", "--watch")
    assert result.status == 1
    assert "finished Failed" in result.err
    assert "TriggerFailed" in result.out
    assert "Traceback" not in result.err


async def test_run_of_a_flow_the_services_refuse_exits_1(services: Settings) -> None:
    result = await runledger(services, "run", "examples.not_a_module:flow")
    assert result.status == 1
    assert "was rejected: cannot load the flow" in result.err


async def test_run_timeout_exits_3_and_the_run_goes_on(services: Settings, tmp_path: Path) -> None:
    release = tmp_path / "release"
    result = await runledger(
        services,
        "run",
        "tests.integration.flows.simple:blocking",
        "-p",
        f"path={release}",
        "--timeout",
        "1",
    )
    assert result.status == 3
    assert "did not finish within 1.0s" in result.err
    release.touch()


async def test_idempotent_runs_and_detach_print_the_same_id(services: Settings) -> None:
    first = await runledger(
        services, "run", "examples.hello:flow", "--idempotency-key", "k1", "--detach"
    )
    second = await runledger(services, "run", "examples.hello:flow", "--idempotency-key", "k1")
    assert first.status == second.status == 0
    run_id = first.out.strip()
    assert f"flow run {run_id} finished: Success" in second.out


async def _is_paused(client: Client, flow_run_id: str, slug: str) -> bool:
    record = (await client.view(flow_run_id)).record(slug)
    return record is not None and record.state_type == "Paused"


async def test_cancel_and_resume_report_the_ledgers_answer(
    services: Settings, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    async with Client(services) as client:
        blocked = await client.submit(
            "tests.integration.flows.simple:blocking", {"path": str(release)}
        )
        paused = await client.submit("tests.integration.flows.simple:pausing", {})
        async with asyncio.timeout(CLI_TIMEOUT_S):
            while not await _is_paused(client, paused, "gate-1"):
                await asyncio.sleep(0.1)
        cancel = await runledger(services, "cancel", blocked, "--reason", "test")
        release.touch()
        resume = await runledger(services, "resume", f"{paused}/gate-1")
        assert cancel.status == 0, cancel.err
        assert "runledger cancel: accepted (flow run -> Cancelling" in cancel.out
        assert resume.status == 0, resume.err
        assert "runledger resume: accepted (gate-1 -> Resume" in resume.out
        assert (await client.wait(paused, timeout=CLI_TIMEOUT_S)).flow_state_type == "Success"
        assert (await client.wait(blocked, timeout=CLI_TIMEOUT_S)).flow_state_type == "Cancelled"
    again = await runledger(services, "resume", f"{paused}/gate-1")
    assert again.status == 1
    assert "refused by the ledger" in again.err




@pytest.mark.slow
async def test_demo_runs_and_stops_everything_it_started(kafka_settings: Settings) -> None:
    """`runledger demo`: both runs succeed, the second hits the cache, no process is left."""
    result = await runledger(kafka_settings, "demo", "-n", "3")
    assert result.status == 0, result.out + result.err
    assert "retried: flaky_total-1" in result.out
    assert "cache hits: reference_data-1" in result.out
    assert "demo finished" in result.out
    pids = [int(p) for p in re.findall(r"\bpid (\d+)", result.out)]
    assert len(pids) >= 4  # broker, ledger, worker, api
    assert not [pid for pid in pids if process_alive(pid)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
async def test_dev_prints_where_everything_is_and_stops_on_sigterm(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """`runledger dev`: broker + roles up, the api answers, SIGTERM stops all (exit 0)."""
    env = _environment(kafka_settings)
    web_port = _free_port()
    env.update(RUNLEDGER_DATA_DIR=str(tmp_path / "dev"), RUNLEDGER_SESSION_TIMEOUT_MS="3000")
    process = await asyncio.create_subprocess_exec(
        *_command(),
        "dev",
        "--port",
        "0",
        "--web-port",
        str(web_port),
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    banner: list[str] = []
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            while not banner or "Ctrl-C stops everything" not in banner[-1]:
                line = (await process.stdout.readline()).decode()
                assert line, "runledger dev exited early: " + "".join(banner)
                banner.append(line)
            text = "".join(banner)
            assert f"http://127.0.0.1:{web_port}/flow_runs" in text
            assert str(tmp_path / "dev") in text
            assert f"{kafka_settings.topic_prefix}ledger" in text
            broker_pid = int(re.findall(r"broker pid (\d+)", text)[0])
            async with aiohttp.ClientSession() as session:
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"http://127.0.0.1:{web_port}/health") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.1)
            os.kill(process.pid, signal.SIGTERM)
            assert await process.wait() == 0
            assert not process_alive(broker_pid)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            await process.wait()
