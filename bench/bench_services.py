"""RunLedger services end to end on the embedded broker, beside the raw aiokafka ceiling.

    .venv/bin/python bench/bench_services.py [--broker kafka|tansu] [--guarantee both]
        [--inputs 10000] [--runs 500] [--workers 1]

Starts its own broker (Apache Kafka by default, or Tansu; 127.0.0.1, free port),
then in this one run:

1. raw aiokafka on that broker: batched produce and `getmany` consume of 100k
   ~300-byte records, a raw hop (p50/p99: one record produced with linger 0 until a
   4-partition consumer with the services' fetch wait has it) and, on Kafka, a raw
   transactional hop (begin, one record, commit, until a read_committed consumer
   has it) -- the ceiling the services are measured against. A single run crosses
   the broker four times, two of them through a ledger transaction under
   exactly-once (the request's facts and work; the outcome's facts), so its floor
   is four raw hops, two of them transactional there;
2. for each processing guarantee (`--guarantee`; Tansu has at-least-once only):
   a ledger process and worker process(es) (`python -m services.roles.app --roles ...`);
3. throughput: a flow mapped over `--inputs` trivial inputs, from submit to the
   flow's Success on the ledger (task runs/s, all task runs counted);
4. latency: `--runs` single-task flow runs one after the other, from submit to
   the flow's Success seen by a ledger subscriber (p50/p99), and where that time
   goes hop by hop, read back from the events' own `occurred_at`.

Every process it starts is stopped by PID. Prints a report; writes nothing in the repo.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from events import (  # noqa: E402
    FlowRef,
    FlowRunCreated,
    FlowRunTransitioned,
    RunRequested,
    TransitionProposed,
    decode,
    encode,
)
from services.kafka.apache import KafkaBroker  # noqa: E402
from services.kafka.clients import topic_partitions  # noqa: E402
from services.kafka.process import BrokerProcess  # noqa: E402
from services.kafka.tansu import TansuBroker  # noqa: E402
from services.kafka.topics import ensure_topics  # noqa: E402
from services.settings import ProcessingGuarantee, Settings  # noqa: E402

IDLE_SECONDS = 5.0
"""How long the services are watched doing nothing, for their idle CPU."""

FETCH_WAIT_MS = 100
"""Fetch wait of every consumer here (services, subscriber, raw ceiling): on Kafka it
bounds only idle polling; on Tansu it is every hop's latency (5 there by default).
--fetch-wait overrides it."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per named process between `start` and `stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.started: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.started = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        self.used = {
            name: cpu_seconds(pid) - self.started[name] for name, pid in self.pids.items()
        }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ----- the ceiling: raw aiokafka on the same broker -----------------------------------


async def raw_ceiling(bootstrap: str, transactions: bool, n: int = 100_000) -> dict[str, float]:
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 4, 1)])
    await admin.close()
    value = b"x" * 300
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    futures = []
    for p in range(4):
        batch = producer.create_batch()
        for _ in range(n // 4):
            if batch.append(key=None, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=p))
                batch = producer.create_batch()
                batch.append(key=None, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=p))
    await asyncio.gather(*futures)
    produce_batch = n / (time.perf_counter() - started)
    started = time.perf_counter()
    sends = [await producer.send(topic, value, key=str(i).encode()) for i in range(n // 4)]
    await asyncio.gather(*sends)
    produce_send = (n // 4) / (time.perf_counter() - started)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_WAIT_MS, max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    total, started = 0, time.perf_counter()
    while total < n + n // 4:
        for records in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
            total += len(records)
    consume = total / (time.perf_counter() - started)
    await producer.stop()
    # The latency probe sends one record at a time, as the services' producers do
    # (linger 0): a linger would only add itself to every hop.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    latencies: list[float] = []
    for i in range(300):
        sent = time.perf_counter()
        await producer.send_and_wait(topic, b"ping", partition=i % 4)
        got = False
        while not got:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got = got or any(r.value == b"ping" for r in records)
        latencies.append((time.perf_counter() - sent) * 1000)
    await consumer.stop()
    await producer.stop()
    figures = {
        "produce_batch_msgs_s": produce_batch,
        "produce_send_msgs_s": produce_send,
        "consume_msgs_s": consume,
        "round_trip_p50_ms": pct(latencies, 0.5),
        "round_trip_p99_ms": pct(latencies, 0.99),
    }
    floor = hop_sums(latencies, [], 0)
    figures["four_hops_p50_ms"] = pct(floor, 0.5)
    figures["four_hops_p99_ms"] = pct(floor, 0.99)
    if transactions:
        txn_hops = await transactional_hops(bootstrap, topic)
        figures["txn_round_trip_p50_ms"] = pct(txn_hops, 0.5)
        figures["txn_round_trip_p99_ms"] = pct(txn_hops, 0.99)
        floor = hop_sums(latencies, txn_hops, 2)
        figures["four_hops_two_txn_p50_ms"] = pct(floor, 0.5)
        figures["four_hops_two_txn_p99_ms"] = pct(floor, 0.99)
    return figures


async def transactional_hops(bootstrap: str, topic: str, n: int = 300) -> list[float]:
    """One record in its own transaction, from begin until a read_committed consumer has
    it, n times in a row: what a ledger transaction on the critical path costs at least.
    aiokafka's 20 ms back-off after ConcurrentTransactions is lowered as the ledger does."""
    import aiokafka.producer.sender

    from services.roles import ledger_writer

    aiokafka.producer.sender.BACKOFF_OVERRIDE = ledger_writer._NEXT_TRANSACTION_BACKOFF_S
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=0, transactional_id=f"bench-{uuid.uuid4().hex}"
    )
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=FETCH_WAIT_MS,
        isolation_level="read_committed",
    )
    await producer.start()
    await consumer.start()
    await consumer.seek_to_end()
    latencies: list[float] = []
    for i in range(n):
        sent = time.perf_counter()
        async with producer.transaction():
            await producer.send(topic, b"tping", partition=i % 4)
        got = False
        while not got:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got = got or any(r.value == b"tping" for r in records)
        latencies.append((time.perf_counter() - sent) * 1000)
    await consumer.stop()
    await producer.stop()
    return latencies


def hop_sums(
    plain: list[float], transactional: list[float], txns: int, samples: int = 20_000
) -> list[float]:
    """Sums of four raw hops drawn from the measured ones, `txns` of them transactional:
    the floor of a single run, which crosses the broker four times (client -> ledger ->
    worker -> ledger -> subscriber)."""
    draw = random.Random(7).choices
    return [
        sum(draw(plain, k=4 - txns)) + (sum(draw(transactional, k=txns)) if txns else 0.0)
        for _ in range(samples)
    ]


# ----- the services ----------------------------------------------------------------------


@contextmanager
def services(
    settings: Settings, workers: int, concurrency: int, logdir: Path
) -> Iterator[dict[str, int]]:
    """Start a ledger and `workers` worker processes; yields their pids by name."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RUNLEDGER_BROKERS": settings.brokers,
        "RUNLEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "RUNLEDGER_APP_ID": settings.app_id,
        "RUNLEDGER_DATA_DIR": str(settings.data_dir),
        "RUNLEDGER_FETCH_MAX_WAIT_MS": str(settings.fetch_max_wait_ms),
        "RUNLEDGER_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "RUNLEDGER_PROCESSING_GUARANTEE": settings.processing_guarantee,
    }
    argvs = [["--roles", "ledger"]] + [
        ["--roles", "worker", "--concurrency", str(concurrency)] for _ in range(workers)
    ]
    processes = []
    try:
        for i, extra in enumerate(argvs):
            log = open(logdir / f"role-{i}.log", "wb")  # noqa: SIM115 (closed with the process)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.roles.app", "--log-level", "WARNING", *extra],
                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )
        yield {
            ("ledger" if i == 0 else f"worker-{i}"): process.pid
            for i, process in enumerate(processes)
        }
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


class Subscriber:
    """Tails every ledger partition and notes when each flow run reached Success."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.finished: dict[str, tuple[float, str]] = {}
        self.seen_at: dict[str, float] = {}
        """Wall-clock time (time.time) each finished run was seen, for the breakdown."""
        self.waiters: dict[str, asyncio.Event] = {}
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.brokers, fetch_max_wait_ms=FETCH_WAIT_MS,
            max_partition_fetch_bytes=16 << 20, isolation_level=settings.isolation_level,
        )

    async def start(self) -> None:
        await self.consumer.start()
        tps = await topic_partitions(self.consumer, self.settings.topic("ledger"))
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            for records in (await self.consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    if b'"flow_run_transitioned"' not in (record.value or b""):
                        continue  # cheap filter: only flow transitions are decoded
                    event = decode(record.value or b"")
                    if isinstance(event, FlowRunTransitioned) and event.state["type"] in (
                        "Success", "Failed", "Cancelled",
                    ):
                        seen = (time.perf_counter(), event.state["type"])
                        self.seen_at[event.flow_run_id] = time.time()
                        self.finished[event.flow_run_id] = seen
                        waiter = self.waiters.get(event.flow_run_id)
                        if waiter is not None:
                            waiter.set()

    async def wait(self, flow_run_id: str, timeout: float) -> tuple[float, str]:
        waiter = self.waiters.setdefault(flow_run_id, asyncio.Event())
        if flow_run_id not in self.finished:
            await asyncio.wait_for(waiter.wait(), timeout)
        return self.finished[flow_run_id]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


HOPS = (
    ("client -> ledger decides the request", "requested", "accepted"),
    ("ledger -> worker claims Running", "accepted", "claimed"),
    ("worker runs the body, proposes Success", "claimed", "proposed"),
    ("worker -> ledger decides the flow's end", "proposed", "finished"),
    ("ledger -> subscriber sees it", "finished", "seen"),
)
"""Where a single run's time goes: consecutive moments read from the events' own
`occurred_at` (the client's, the worker's and the ledger's clocks: one machine)."""


async def time_breakdown(
    settings: Settings, requests: list[RunRequested], seen_at: Mapping[str, float]
) -> dict[str, list[float]]:
    """Milliseconds per hop of each single run, from the commands and ledger topics."""
    moments: dict[str, dict[str, float]] = {
        r.flow_run_id: {"requested": r.occurred_at.timestamp(), "seen": seen_at[r.flow_run_id]}
        for r in requests
    }
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.brokers, fetch_max_wait_ms=FETCH_WAIT_MS,
        max_partition_fetch_bytes=16 << 20, isolation_level=settings.isolation_level,
    )
    await consumer.start()
    tps = [
        tp
        for topic in (settings.topic("commands"), settings.topic("ledger"))
        for tp in await topic_partitions(consumer, topic)
    ]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(len(m) == 6 for m in moments.values()):
        for records in (await consumer.getmany(timeout_ms=200, max_records=50_000)).values():
            for record in records:
                # both topics are keyed by flow run id: only the single runs are decoded
                if (record.key or b"").decode() in moments:
                    note_moment(moments, record.value or b"")
    await consumer.stop()
    complete = [m for m in moments.values() if len(m) == 6]
    return {
        name: [(m[end] - m[start]) * 1000 for m in complete] for name, start, end in HOPS
    }


def note_moment(moments: dict[str, dict[str, float]], value: bytes) -> None:
    """Note the moment one record of a single run stands for, if it stands for one."""
    event = decode(value)
    seen = moments[event.flow_run_id]
    at = event.occurred_at.timestamp()
    if isinstance(event, FlowRunCreated):
        seen.setdefault("accepted", at)
    elif isinstance(event, TransitionProposed) and event.state["type"] == "Running":
        seen.setdefault("claimed", at)
    elif isinstance(event, TransitionProposed) and event.final:
        seen["proposed"] = at
    elif isinstance(event, FlowRunTransitioned) and event.state["type"] == "Success":
        seen["finished"] = at


def run_request(path: str, parameters: Mapping[str, object]) -> RunRequested:
    return RunRequested(
        event_id=str(uuid.uuid4()), flow_run_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC), flow_ref=FlowRef(kind="import", path=path),
        parameters=dict(parameters),
    )


async def measure_services(
    settings: Settings, inputs: int, runs: int, meter: CpuMeter
) -> dict[str, object]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.brokers, linger_ms=0)
    await producer.start()
    subscriber = Subscriber(settings)
    await subscriber.start()
    commands = settings.topic("commands")

    async def submit(command: RunRequested) -> float:
        sent = time.perf_counter()
        await producer.send_and_wait(commands, encode(command), key=command.flow_run_id.encode())
        return sent

    # Warm up: the roles join their groups, import the flows and plan them once.
    for path, params in (("tests.integration.flows.simple:single", {}),
                         ("tests.integration.flows.mapping:trivial_map", {"n": 10})):
        warm = run_request(path, params)
        await submit(warm)
        await subscriber.wait(warm.flow_run_id, timeout=120)

    # What the small fetch wait costs while nothing happens: every consumer's fetch
    # returns empty each wait, and the broker answers them.
    meter.start()
    await asyncio.sleep(IDLE_SECONDS)
    meter.stop()
    idle = {name: used / IDLE_SECONDS for name, used in meter.used.items()}

    big = run_request("tests.integration.flows.mapping:trivial_map", {"n": inputs})
    meter.start()
    sent = await submit(big)
    done, state = await subscriber.wait(big.flow_run_id, timeout=600)
    meter.stop()
    elapsed = done - sent
    task_runs = inputs + 3  # the children, the Mapped parent, make_inputs and the parameter

    latencies, singles = [], []
    for _ in range(runs):
        one = run_request("tests.integration.flows.simple:single", {})
        sent = await submit(one)
        done, _ = await subscriber.wait(one.flow_run_id, timeout=60)
        latencies.append((done - sent) * 1000)
        singles.append(one)
    await subscriber.stop()
    await producer.stop()
    hops = await time_breakdown(settings, singles, subscriber.seen_at)
    return {
        "map_inputs": inputs,
        "map_state": state,
        "map_seconds": elapsed,
        "map_task_runs_s": task_runs / elapsed,
        "single_runs": runs,
        "single_p50_ms": statistics.median(latencies),
        "single_p99_ms": pct(latencies, 0.99),
        "single_max_ms": max(latencies),
        "idle_cpu": idle,
        "hops": hops,
    }


def make_broker(kind: str, workdir: Path) -> BrokerProcess:
    if kind == "kafka":
        return KafkaBroker(data_dir=workdir / "broker", log_dir=workdir / "broker-logs")
    return TansuBroker(log_dir=workdir / "broker-logs")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="runledger-bench-") as tmp:
        workdir = Path(tmp)
        with make_broker(args.broker, workdir) as broker:
            print(f"broker: {broker.description}; cores: {os.cpu_count()}")
            ceiling = await raw_ceiling(broker.bootstrap, broker.transactions)
            print(f"raw aiokafka on this broker (the ceiling; fetch wait {FETCH_WAIT_MS} ms):")
            for key, value in ceiling.items():
                print(f"  {key:<28} {value:>12,.1f}")
            guarantees: list[ProcessingGuarantee] = (
                ["exactly_once", "at_least_once"] if args.guarantee == "both" else [args.guarantee]
            )
            if not broker.transactions:
                guarantees = ["at_least_once"]
            for guarantee in guarantees:
                await measure_guarantee(args, broker, workdir, guarantee, ceiling)


async def measure_guarantee(
    args: argparse.Namespace,
    broker: BrokerProcess,
    workdir: Path,
    guarantee: ProcessingGuarantee,
    ceiling: Mapping[str, float],
) -> None:
    unique = uuid.uuid4().hex[:8]
    settings = Settings(
        brokers=broker.bootstrap, topic_prefix=f"bench{unique}.", app_id=f"bench{unique}",
        data_dir=workdir / f"data-{unique}", fetch_max_wait_ms=FETCH_WAIT_MS,
        session_timeout_ms=3000, processing_guarantee=guarantee,
    )
    await ensure_topics(settings)
    logdir = workdir / f"logs-{unique}"
    logdir.mkdir()
    with services(settings, args.workers, args.concurrency, logdir) as pids:
        assert broker.pid is not None
        meter = CpuMeter({**pids, "broker": broker.pid, "bench (client)": os.getpid()})
        figures = await measure_services(settings, args.inputs, args.runs, meter)
    print(
        f"services, {guarantee} ({args.workers} worker process(es) x {args.concurrency} "
        f"threads, 1 ledger process, fetch wait {FETCH_WAIT_MS} ms):"
    )
    idle = figures.pop("idle_cpu")
    hops = figures.pop("hops")
    assert isinstance(idle, dict)
    assert isinstance(hops, dict)
    for name, figure in figures.items():
        shown = f"{figure:>12,.1f}" if isinstance(figure, float) else f"{figure!s:>12}"
        print(f"  {name:<24} {shown}")
    floor = "four_hops_two_txn" if guarantee == "exactly_once" else "four_hops"
    p50, p99 = ceiling[f"{floor}_p50_ms"], ceiling[f"{floor}_p99_ms"]
    single_p50 = figures["single_p50_ms"]
    assert isinstance(single_p50, float)
    print(
        f"  {'raw floor p50 / p99':<24} {p50:>12.1f} / {p99:.1f} ms "
        f"({'4 hops, 2 of them transactions' if guarantee == 'exactly_once' else '4 hops'}); "
        f"single p50 = x{single_p50 / p50:.2f} the floor"
    )
    print_breakdown(hops, p50, p99)
    task_runs = args.inputs + 3
    print(f"CPU during the map (ms per task run; {os.cpu_count()} cores):")
    for name, used in meter.used.items():
        print(f"  {name:<24} {used * 1000 / task_runs:>12.3f}")
    total = sum(meter.used.values()) * 1000 / task_runs
    print(f"  {'all':<24} {total:>12.3f}")
    print(f"CPU while idle, after the warm-up ({IDLE_SECONDS:.0f} s; % of one core):")
    for name, share in idle.items():
        print(f"  {name:<24} {share * 100:>11.1f}%")
    print(f"  {'all':<24} {sum(idle.values()) * 100:>11.1f}%")


def print_breakdown(hops: Mapping[str, list[float]], floor_p50: float, floor_p99: float) -> None:
    counted = min(len(values) for values in hops.values())
    print(f"where a single run's time goes ({counted} runs; ms, p50 / p99 of each hop):")
    for name, values in hops.items():
        print(f"  {name:<42} {pct(values, 0.5):>6.2f} / {pct(values, 0.99):>6.2f}")
    totals = [sum(parts) for parts in zip(*hops.values(), strict=True)]
    print(f"  {'total':<42} {pct(totals, 0.5):>6.2f} / {pct(totals, 0.99):>6.2f}")
    print(f"  {'raw floor (same hops and commits)':<42} {floor_p50:>6.2f} / {floor_p99:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument(
        "--guarantee", choices=["both", "exactly_once", "at_least_once"], default="both",
        help="processing guarantee(s) of the services (Tansu: at_least_once only)",
    )
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--fetch-wait", type=int, default=None, metavar="MS",
        help="fetch_max_wait_ms of every consumer (services, subscriber, raw ceiling); "
        "default 100 on Kafka, 5 on Tansu",
    )
    args = parser.parse_args()
    default_wait = 100 if args.broker == "kafka" else 5
    wait = args.fetch_wait if args.fetch_wait is not None else default_wait
    if wait < 1:
        parser.error("--fetch-wait must be at least 1 ms")
    set_fetch_wait(wait)
    asyncio.run(main_async(args))


def set_fetch_wait(ms: int) -> None:
    global FETCH_WAIT_MS
    FETCH_WAIT_MS = ms


if __name__ == "__main__":
    main()
