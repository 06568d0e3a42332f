"""`runledger dev` is durable: Ctrl-C it, start it again, and every past run is still there.

The broker is Apache Kafka with its data under RUNLEDGER_DATA_DIR, so stopping the
dev stack (broker process included) and starting it again finds the run for
`runledger states`, `history`, `states --as-of`, the api and `client.wait`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from engine.orchestration import FlowRunView
from services.client.client import Client
from services.kafka.process import free_port
from services.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUNLEDGER = Path(sys.executable).with_name("runledger")
READY = "Ctrl-C stops everything."


def _env(tmp_path: Path, broker_port: int, web_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    env.update(
        {
            "RUNLEDGER_DATA_DIR": str(tmp_path / "data"),
            "RUNLEDGER_BROKERS": f"127.0.0.1:{broker_port}",
            "RUNLEDGER_WEB_PORT": str(web_port),
            "RUNLEDGER_PARTITIONS": "2",
            "RUNLEDGER_SESSION_TIMEOUT_MS": "3000",
            "RUNLEDGER_BROKER_HEAP_MB": "512",
            "RUNLEDGER_EMBEDDED_BROKER": "kafka",
        }
    )
    return env


def _start_dev(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], int]:
    """Start `runledger dev`; return it once every role runs, with its broker's pid."""
    with open(log, "a") as stderr:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(RUNLEDGER), "dev"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    seen: list[str] = []
    for line in process.stdout:
        seen.append(line)
        if READY in line:
            break
    else:
        process.wait()
        raise AssertionError("runledger dev did not start:\n" + "".join(seen) + log.read_text())
    found = re.search(r"broker pid (\d+)", "".join(seen))
    assert found is not None, seen
    return process, int(found.group(1))


def _stop_dev(process: subprocess.Popen[str], broker_pid: int) -> None:
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=90)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    with pytest.raises(ProcessLookupError):
        os.kill(broker_pid, 0)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNLEDGER), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


async def _submit_and_wait(settings: Settings, out: Path) -> tuple[str, FlowRunView]:
    async with Client(settings) as client:
        flow_run_id = await client.submit(
            "tests.integration.flows.mapping:flow", {"n": 3, "out_dir": str(out)}
        )
        return flow_run_id, await client.wait(flow_run_id, timeout=120)


async def _wait(settings: Settings, flow_run_id: str) -> FlowRunView:
    async with Client(settings) as client:
        return await client.wait(flow_run_id, timeout=60)


def test_a_run_survives_stopping_and_starting_runledger_dev(tmp_path: Path) -> None:
    """Run a flow, Ctrl-C the dev stack (its Kafka process ends), start it again: the
    run is found whole by the CLI readers, the api and `client.wait`."""
    broker_port, web_port = free_port(), free_port()
    env = _env(tmp_path, broker_port, web_port)
    settings = Settings(
        brokers=f"127.0.0.1:{broker_port}", partitions=2, data_dir=tmp_path / "client"
    )
    out = tmp_path / "runs"
    out.mkdir()
    dev, broker_pid = _start_dev(env, tmp_path / "dev1.log")
    try:
        flow_run_id, before = asyncio.run(_submit_and_wait(settings, out))
        assert before.flow_state_type == "Success"
    finally:
        _stop_dev(dev, broker_pid)

    dev, broker_pid = _start_dev(env, tmp_path / "dev2.log")
    try:
        states = _cli(env, "states", flow_run_id, "--json")
        assert states.returncode == 0, states.stderr
        assert '"Success"' in states.stdout

        history = _cli(env, "history", flow_run_id, "--json")
        assert history.returncode == 0, history.stderr
        rows = [json.loads(line) for line in history.stdout.splitlines()]
        assert rows[0]["kind"] == "flow_run_created"
        assert len(rows) == len({(r["kind"], r["task_run_id"], r["seq"]) for r in rows})

        created = datetime.fromisoformat(rows[0]["occurred_at"])
        earlier = _cli(env, "states", flow_run_id, "--as-of", created.isoformat())
        assert earlier.returncode == 0, earlier.stderr
        assert "Success" not in earlier.stdout.splitlines()[0]

        url = f"http://127.0.0.1:{web_port}/flow_runs/{flow_run_id}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        assert body["state"] == "Success"

        after = asyncio.run(_wait(settings, flow_run_id))
        assert after == before
    finally:
        _stop_dev(dev, broker_pid)
    assert sorted(f.name for f in out.iterdir()) == ["0.runs", "1.runs", "2.runs"]
