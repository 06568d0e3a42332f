"""`runledger demo`: the whole system on one machine, in one command, cleaned up after.

1. starts a private embedded broker on a free port (data in a temporary directory);
2. starts the ledger, a worker and the api as separate processes (`runledger
   ledger|worker|api`), configured only through RUNLEDGER_* variables;
3. runs `examples.demo:flow` twice through the Python client with the live view:
   it maps over inputs, retries once, and the second run takes `reference_data`
   from the worker's cache;
4. prints the final states and results, then stops every process it started by
   PID (SIGTERM, then SIGKILL after a grace period) and the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from services.client.client import Client
from services.client.watch import RunProgress, state_style, watch_run
from services.kafka.tansu import EmbeddedBroker, die_with_parent
from services.kafka.topics import ensure_topics
from services.settings import Settings

__all__ = ["DEMO_FLOW", "ServiceProcess", "demo_environment", "run_demo"]

DEMO_FLOW = "examples.demo:flow"
_ROLES = ("ledger", "worker", "api")
_RUN_TIMEOUT_S = 120.0
_READY_TIMEOUT_S = 60.0


@dataclass
class ServiceProcess:
    """A role running as a child process (`python -m services.client.cli <role>`)."""

    role: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM by PID, wait for a clean stop, SIGKILL after `grace_s`; the exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_environment(bootstrap: str, workdir: Path, web_port: int) -> dict[str, str]:
    """The RUNLEDGER_* variables of the demo: its own broker, topics, data and ports."""
    data = workdir / "data"
    return {
        "RUNLEDGER_BROKERS": bootstrap,
        "RUNLEDGER_TOPIC_PREFIX": "demo.",
        "RUNLEDGER_APP_ID": "runledger-demo",
        "RUNLEDGER_PARTITIONS": "2",
        "RUNLEDGER_DATA_DIR": str(data),
        "RUNLEDGER_RESULT_STORE_URL": f"file://{data}/results",
        "RUNLEDGER_WEB_PORT": str(web_port),
        "RUNLEDGER_SESSION_TIMEOUT_MS": "3000",
        "RUNLEDGER_FETCH_MAX_WAIT_MS": "10",
        "RUNLEDGER_HEARTBEAT_INTERVAL_S": "1",
        "RUNLEDGER_HEARTBEAT_TIMEOUT_S": "10",
        "RUNLEDGER_WORKER_CONCURRENCY": "4",
    }


def _examples_root() -> Path:
    """The directory holding the `examples` package, for the children's PYTHONPATH."""
    try:
        import examples
    except ImportError:
        # A console script does not have the current directory on sys.path; from a
        # clone, the package sits next to `services`.
        root = Path(__file__).resolve().parents[2]
        if not (root / "examples" / "__init__.py").exists():
            raise
        sys.path.insert(0, str(root))
        import examples
    return Path(examples.__file__).resolve().parents[1]


def _child_env(runledger_env: dict[str, str]) -> dict[str, str]:
    # The demo is self-contained: the caller's RUNLEDGER_* settings do not leak in.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNLEDGER_")}
    env.update(runledger_env)
    path = [str(_examples_root()), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(role: str, env: dict[str, str], log_dir: Path) -> ServiceProcess:
    log_path = log_dir / f"{role}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.client.cli", role],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            preexec_fn=die_with_parent(),  # and they die with the demo if it is killed
        )
    return ServiceProcess(role, process, log_path)


async def _wait_ready(url: str, services: list[ServiceProcess]) -> None:
    """Until the api answers /health with 200 (it has folded the ledger); fail fast on a crash."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while True:
            for service in services:
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"the {service.role} process exited with status "
                        f"{service.process.returncode}:\n{service.log_tail()}"
                    )
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the api at {url} was not ready after {_READY_TIMEOUT_S}s")
            await asyncio.sleep(0.2)


async def _results_table(client: Client, progress: RunProgress) -> Table:
    table = Table(title="final states and results", header_style="bold")
    for column in ("task run", "state", "result", "note"):
        table.add_column(column, overflow="fold")
    for row in progress.rows.values():
        if row.map_index is not None:
            continue  # a mapped parent's result lists its children's
        try:
            value: Any = await client.result(progress.flow_run_id, row.slug)
        except Exception as exc:  # a missing result must not end the demo
            value = f"<{exc}>"
        table.add_row(row.label, f"[{state_style(row.state)}]{row.state}[/]", repr(value), row.note)
    return table


async def _tour(settings: Settings, n: int, console: Console, api_url: str) -> bool:
    ok = True
    async with Client(settings) as client:
        for number, title in ((1, "first run"), (2, "second run: same flow, same worker")):
            console.rule(f"[bold]{title}")
            run_id = await client.submit(DEMO_FLOW, {"n": n})
            progress = await watch_run(client, run_id, console=console, timeout=_RUN_TIMEOUT_S)
            console.print(await _results_table(client, progress))
            retried = [r.label for r in progress.rows.values() if r.attempt > 1]
            hits = [r.label for r in progress.rows.values() if r.cache_hit]
            mapped = sum(1 for r in progress.rows.values() if r.map_index is not None)
            console.print(
                f"flow run {run_id}: [{state_style(progress.flow_state)}]{progress.flow_state}[/]"
                f" — {mapped} mapped task runs, retried: {', '.join(retried) or 'none'}, "
                f"cache hits: {', '.join(hits) or 'none'}",
                highlight=False,
            )
            if number == 2 and not hits:
                console.print("[yellow]note: no cache hit on the second run[/]")
            console.print(f"  see it in the api: {api_url}/flow_runs/{run_id}/task_runs")
            ok = ok and progress.successful
    return ok


def run_demo(settings: Settings, *, n: int = 5, console: Console | None = None) -> int:
    """The demo; returns the exit status (0 when both runs succeeded).

    `settings` from the caller's environment are not used for the services: the
    demo runs on its own broker, topics and temporary data directory.
    """
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="runledger-demo-"))
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True)
    broker = EmbeddedBroker(port=0, log_dir=log_dir)
    services: list[ServiceProcess] = []
    ok = False
    try:
        console.rule("[bold]RunLedger demo")
        broker.start()
        console.print(f"embedded broker (Tansu) on {broker.bootstrap}, pid {broker.pid}")
        env = demo_environment(broker.bootstrap, workdir, _free_port())
        demo_settings = Settings.model_validate(
            {k.removeprefix("RUNLEDGER_").lower(): v for k, v in env.items()}
        )
        asyncio.run(ensure_topics(demo_settings))
        child_env = _child_env(env)
        services = [_start(role, child_env, log_dir) for role in _ROLES]
        api_url = f"http://{demo_settings.web_host}:{demo_settings.web_port}"
        for service in services:
            console.print(f"{service.role:<7} pid {service.pid}  (log {service.log_path})")
        console.print(f"api     {api_url}   data {workdir / 'data'}")
        console.print("waiting for the services to join their consumer groups…")
        asyncio.run(_wait_ready(api_url, services))
        ok = asyncio.run(_tour(demo_settings, n, console, api_url))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
    except Exception as exc:  # report, then clean up below; the exit status says it failed
        console.print(f"[red]demo failed: {exc}[/]")
        for service in services:
            console.print(f"--- {service.role} log (last lines):\n{service.log_tail()}")
    finally:
        console.rule("[bold]stopping")
        for service in reversed(services):
            status = service.stop()
            console.print(f"stopped {service.role} (pid {service.pid}, exit status {status})")
        broker_pid = broker.pid
        broker.stop()
        console.print(f"stopped the broker (pid {broker_pid or '-'})")
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"logs kept in {log_dir}")
    console.print("[green]demo finished[/]" if ok else "[red]demo failed[/]")
    return 0 if ok else 1
