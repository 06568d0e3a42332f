"""How the services' costs grow with the ledger: every figure at each size beside the empty one.

    .venv/bin/python bench/bench_growth.py [--steps 0,4,10,20] [--map 10000] [--singles 20]

Starts its own Apache Kafka broker (127.0.0.1, free port, data in a temporary
directory), then a ledger, a worker (16 threads) and an api as separate
processes (`python -m services.roles.app --roles ...`). It first submits one small
run (the *oldest*), then grows the ledger with maps of `--map` trivial inputs
(about five ledger events per input) and, at each step of `--steps` (cumulative
maps, spread round-robin over the ledger partitions), measures:

* single-run submit → Success seen by `Client.wait`, p50 / p99 over `--singles` runs;
* `Client.view` and `Client.history` of the oldest run (median of 5 fresh clients);
* `runledger states <oldest>` as a command (wall time, a fresh process);
* a ledger restart: SIGTERM, start a new process, until a probe run's first fact
  is on the ledger (its first decided command);
* the api's catch-up after the growth (until `/health` reports no lag); the
  reads above are measured once it has caught up;
* an api restart: SIGTERM, start, until `/health` answers 200;
* the RSS of every role.

Prints one table row per step and each figure as a ratio of the empty ledger's.
Every process it starts is stopped by PID; writes nothing in the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.client.client import Client, flow_run_id_for  # noqa: E402
from services.kafka.apache import KafkaBroker  # noqa: E402
from services.kafka.clients import partition_for  # noqa: E402
from services.kafka.process import die_with_parent, free_port  # noqa: E402
from services.kafka.topics import ensure_topics  # noqa: E402
from services.settings import Settings  # noqa: E402

SINGLE = "tests.integration.flows.simple:single"
TRIVIAL_MAP = "tests.integration.flows.mapping:trivial_map"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Roles:
    """The role processes, restartable one by one."""

    settings: Settings
    logdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
        env.update(self.settings.environment(), PYTHONPATH=str(REPO))
        return env

    def start(self, role: str, *extra: str) -> float:
        """Start a role; returns the monotonic time it was launched."""
        with open(self.logdir / f"{role}.log", "ab") as log:
            launched = time.monotonic()
            self.processes[role] = subprocess.Popen(
                [sys.executable, "-m", "services.roles.app", "--roles", role, *extra],
                cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),  # no orphan if this script is killed
            )
        return launched

    def stop(self, role: str) -> None:
        process = self.processes.pop(role)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def rss(self) -> dict[str, float]:
        return {role: rss_mb(p.pid) for role, p in self.processes.items()}

    def stop_all(self) -> None:
        for role in list(self.processes):
            self.stop(role)


@contextmanager
def running_roles(settings: Settings, logdir: Path) -> Iterator[Roles]:
    roles = Roles(settings, logdir)
    try:
        roles.start("ledger")
        roles.start("worker", "--concurrency", "16")
        roles.start("api")
        yield roles
    finally:
        roles.stop_all()


async def submit_and_wait(settings: Settings, path: str, params: Mapping[str, object]) -> float:
    async with Client(settings) as client:
        started = time.perf_counter()
        flow_run_id = await client.submit(path, params)
        view = await client.wait(flow_run_id, timeout=600)
        if view.flow_state_type != "Success":
            raise RuntimeError(f"{path} ended {view.flow_state_type}")
        return (time.perf_counter() - started) * 1000


async def singles(settings: Settings, n: int) -> list[float]:
    """Submit → Success seen by `Client.wait` of `n` runs in a row, through one client."""
    latencies = []
    async with Client(settings) as client:
        for _ in range(n):
            started = time.perf_counter()
            view = await client.wait(await client.submit(SINGLE, {}), timeout=600)
            latencies.append((time.perf_counter() - started) * 1000)
            if view.flow_state_type != "Success":
                raise RuntimeError(f"a single run ended {view.flow_state_type}")
    return latencies


async def read_oldest(settings: Settings, flow_run_id: str) -> tuple[float, float]:
    """Median ms of Client.view and Client.history of one run, each from a fresh client."""
    views, histories = [], []
    for _ in range(5):
        async with Client(settings) as client:
            started = time.perf_counter()
            await client.view(flow_run_id)
            views.append((time.perf_counter() - started) * 1000)
        async with Client(settings) as client:
            started = time.perf_counter()
            await client.history(flow_run_id)
            histories.append((time.perf_counter() - started) * 1000)
    return statistics.median(views), statistics.median(histories)


def states_command(roles: Roles, flow_run_id: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "services.client.cli", "states", flow_run_id],
        cwd=REPO, env=roles.env(), capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"runledger states failed: {done.stderr}")
    return (time.perf_counter() - started) * 1000


async def ledger_restart(roles: Roles) -> float:
    """Seconds from starting a new ledger process to its first decided command."""
    settings = roles.settings
    roles.stop("ledger")
    key = f"restart-probe-{uuid.uuid4()}"
    probe_id = flow_run_id_for(key)
    tp = TopicPartition(settings.topic("ledger"), partition_for(probe_id, settings.partitions))
    tail = AIOKafkaConsumer(bootstrap_servers=settings.brokers, isolation_level="read_committed")
    await tail.start()
    try:
        tail.assign([tp])
        await tail.seek_to_end(tp)
        await tail.position(tp)
        launched = roles.start("ledger")
        async with Client(settings) as client:
            await client.submit(SINGLE, {}, idempotency_key=key)
        while True:
            batch = await tail.getmany(tp, timeout_ms=200)
            if any(r.key == probe_id.encode() for r in batch.get(tp, [])):
                return time.monotonic() - launched
    finally:
        await tail.stop()


def api_restart(roles: Roles) -> float:
    """Seconds from starting a new api process until /health answers 200."""
    roles.stop("api")
    launched = roles.start("api")
    url = f"http://127.0.0.1:{roles.settings.web_port}/health"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - launched
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)


def api_catch_up(roles: Roles, timeout_s: float = 1800) -> float:
    """Seconds until the api's read model has folded the whole ledger (`/health` lag 0)."""
    import json

    url = f"http://127.0.0.1:{roles.settings.web_port}/health"
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.load(response)
                if response.status == 200 and body.get("lag") == 0:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the api did not catch up with the ledger in {timeout_s} s")


async def ledger_events(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.brokers)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic("ledger"), p) for p in range(settings.partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def measure(roles: Roles, oldest: str, n_singles: int) -> dict[str, float]:
    settings = roles.settings
    # The api folds the ledger behind the ledger: after a burst of maps it has a
    # backlog. Its catch-up is a figure of its own; the reads below are measured
    # on an api that has caught up, as in a steady state.
    catch_up = api_catch_up(roles)
    lat = await singles(settings, n_singles)
    view_ms, history_ms = await read_oldest(settings, oldest)
    figures = {
        "ledger events": float(await ledger_events(settings)),
        "api catch-up s": catch_up,
        "single p50 ms": statistics.median(lat),
        "single p99 ms": pct(lat, 0.99),
        "view(oldest) ms": view_ms,
        "history(oldest) ms": history_ms,
        "states cmd ms": states_command(roles, oldest),
    }
    figures.update({f"{role} RSS MB": mb for role, mb in roles.rss().items()})
    figures["ledger restart s"] = await ledger_restart(roles)
    api_catch_up(roles)
    figures["api restart s"] = api_restart(roles)
    await singles(settings, 2)  # the restarted roles are serving again
    return figures


def report(rows: list[tuple[int, dict[str, float]]]) -> None:
    names = list(rows[0][1])
    print("\n| maps | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for maps, figures in rows:
        cells = " | ".join(f"{figures.get(n, float('nan')):,.1f}" for n in names)
        print(f"| {maps} | {cells} |")
    base = rows[0][1]
    print("\nratio to the empty ledger (same run):")
    print("| maps | " + " | ".join(names[1:]) + " |")
    print("|---:|" + "---:|" * (len(names) - 1))
    for maps, figures in rows:
        ratios = [f"×{figures[n] / base[n]:.2f}" if base.get(n) else "-" for n in names[1:]]
        print(f"| {maps} | " + " | ".join(ratios) + " |")


def key_on_partition(partition: int, partitions: int) -> str:
    """An idempotency key whose flow run lives on `partition` of the ledger."""
    while True:
        key = f"growth-{uuid.uuid4()}"
        if partition_for(flow_run_id_for(key), partitions) == partition:
            return key


async def grow(settings: Settings, first: int, maps: int, inputs: int) -> None:
    """Run maps `first`..`first + maps - 1`, the i-th on ledger partition i mod partitions,
    so that every partition (the oldest run's too) grows alike."""
    async with Client(settings) as client:
        for i in range(first, first + maps):
            key = key_on_partition(i % settings.partitions, settings.partitions)
            view = await client.wait(
                await client.submit(TRIVIAL_MAP, {"n": inputs}, idempotency_key=key), timeout=600
            )
            if view.flow_state_type != "Success":
                raise RuntimeError(f"a growing map ended {view.flow_state_type}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the cleanup: every process is stopped by PID


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0,4,10,20", help="cumulative maps at each step")
    parser.add_argument("--map", type=int, default=10_000, help="inputs of each growing map")
    parser.add_argument("--singles", type=int, default=20)
    args = parser.parse_args()
    steps = sorted({int(s) for s in args.steps.split(",")})
    with tempfile.TemporaryDirectory(prefix="runledger-growth-") as tmp:
        work = Path(tmp)
        with KafkaBroker(data_dir=work / "broker", log_dir=work / "logs") as broker:
            print(f"broker: {broker.description}; cores: {os.cpu_count()}")
            settings = Settings(
                brokers=broker.bootstrap, topic_prefix="growth.", app_id="growth",
                data_dir=work / "data", web_port=free_port(), session_timeout_ms=6000,
            )
            asyncio.run(ensure_topics(settings))
            rows: list[tuple[int, dict[str, float]]] = []
            with running_roles(settings, work) as roles:
                api_restart(roles)  # wait for the api to serve before the first figures
                asyncio.run(submit_and_wait(settings, SINGLE, {}))  # warm-up
                oldest = asyncio.run(_submit_oldest(settings))
                done = 0
                for step in steps:
                    asyncio.run(grow(settings, done, step - done, args.map))
                    done = step
                    figures = asyncio.run(measure(roles, oldest, args.singles))
                    rows.append((step, figures))
                    print(f"step {step} maps: " + ", ".join(
                        f"{k} {v:,.1f}" for k, v in figures.items()), flush=True)
            report(rows)


async def _submit_oldest(settings: Settings) -> str:
    async with Client(settings) as client:
        flow_run_id = await client.submit(SINGLE, {})
        await client.wait(flow_run_id, timeout=120)
        return flow_run_id


if __name__ == "__main__":
    main()
