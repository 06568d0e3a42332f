"""A chaos run: real processes on a real broker, killed and frozen while they work.

    .venv/bin/python scripts/chaos.py [--flows 10] [--children 500] [--worker-kill-every 4]
        [--ledger-kills 2] [--broker-freeze 20] [--deadline 900]

Starts its own Apache Kafka broker, one ledger and two worker processes
(`python -m services.roles.app`), submits `--flows` runs of the chaos flow (a map of
`--children` bodies that record each execution with its attempt and pid), and
while they run: SIGKILLs a random worker every `--worker-kill-every` seconds (and
starts a new one), SIGKILLs the ledger `--ledger-kills` times (a new one takes
over), and freezes the broker (SIGSTOP) once for `--broker-freeze` seconds. Then it
reads the whole ledger and prints:

* runs submitted and finished, and how long they took;
* attempts declared lost, and attempts dispatched again;
* bodies run more than once for one attempt by processes that were not killed
  (must be 0: a killed worker is really lost, so its attempt may run again);
* transitions lost: gaps in any task run's sequence numbers (must be 0);
* runs stuck: not finished by the deadline (must be 0).

Exits 1 when an invariant does not hold. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import TopicPartition  # noqa: E402

from engine.orchestration import FlowRunView, fold  # noqa: E402
from events import Event, TaskRunTransitioned, WorkDispatched, decode  # noqa: E402
from services.client.client import Client  # noqa: E402
from services.kafka.apache import KafkaBroker  # noqa: E402
from services.kafka.clients import read_partitions_to_end  # noqa: E402
from services.kafka.process import die_with_parent  # noqa: E402
from services.kafka.topics import ensure_topics  # noqa: E402
from services.settings import Settings  # noqa: E402

FLOW = "tests.integration.flows.chaos:flow"


@dataclass
class Cast:
    """The role processes of the run, and every pid that was killed."""

    settings: Settings
    logdir: Path
    ledger: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    started = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
        env.update(self.settings.environment(), PYTHONPATH=str(REPO))
        return env

    def spawn(self, *roles: str) -> subprocess.Popen[bytes]:
        self.started += 1
        log = self.logdir / f"{'-'.join(roles)}-{self.started}.log"
        with open(log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "services.roles.app", "--roles", ",".join(roles),
                 *(["--concurrency", "8"] if "worker" in roles else [])],
                cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),  # no orphan if this script is killed
            )

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        self.killed.add(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in [p for p in (self.ledger, *self.workers) if p is not None]:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in [p for p in (self.ledger, *self.workers) if p is not None]:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


async def submit_all(settings: Settings, flows: int, children: int, out: Path) -> list[str]:
    async with Client(settings) as client:
        return [
            await client.submit(FLOW, {"n": children, "out_dir": str(out), "delay_s": 0.01})
            for _ in range(flows)
        ]


async def ledger_events(settings: Settings) -> list[Event]:
    topic = settings.topic("ledger")
    records = await read_partitions_to_end(
        settings, [TopicPartition(topic, p) for p in range(settings.partitions)]
    )
    return [decode(r.value or b"") for r in records]


async def finished(settings: Settings, flow_run_ids: list[str]) -> dict[str, FlowRunView]:
    by_run: dict[str, list[Event]] = collections.defaultdict(list)
    for event in await ledger_events(settings):
        by_run[event.flow_run_id].append(event)
    return {f: fold(by_run[f], flow_run_id=f) for f in flow_run_ids}


def chaos(cast: Cast, broker: KafkaBroker, args: argparse.Namespace, until: float) -> list[str]:
    """Kill and freeze while the runs go on; returns what was done, in order."""
    done: list[str] = []
    rng = random.Random(args.seed)
    started = time.monotonic()
    ledger_kills = [started + 8 + i * 12 for i in range(args.ledger_kills)]
    freeze_at = started + 14 if args.broker_freeze else None
    next_worker_kill = started + args.worker_kill_every
    while time.monotonic() < until:
        now = time.monotonic()
        if ledger_kills and now >= ledger_kills[0]:
            ledger_kills.pop(0)
            assert cast.ledger is not None
            cast.kill(cast.ledger)
            cast.ledger = cast.spawn("ledger")
            done.append(f"{now - started:6.1f}s SIGKILL ledger, started a new one")
        if freeze_at is not None and now >= freeze_at:
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)
            done.append(f"{now - started:6.1f}s froze the broker (SIGSTOP) for "
                        f"{args.broker_freeze} s")
            time.sleep(args.broker_freeze)
            os.kill(broker.pid, signal.SIGCONT)
            freeze_at = None
            next_worker_kill = time.monotonic() + args.worker_kill_every
        if args.worker_kill_every and now >= next_worker_kill:
            victim = rng.randrange(len(cast.workers))
            cast.kill(cast.workers[victim])
            cast.workers[victim] = cast.spawn("worker")
            done.append(f"{now - started:6.1f}s SIGKILL worker {victim}, started a new one")
            next_worker_kill = now + args.worker_kill_every
        if not ledger_kills and freeze_at is None and not args.worker_kill_every:
            break
        time.sleep(0.2)
    return done


def bodies_twice(out: Path, killed: set[int]) -> list[str]:
    """Task runs whose body ran more than once for one attempt in processes not killed."""
    twice = []
    for path in out.iterdir():
        by_attempt: dict[str, list[int]] = collections.defaultdict(list)
        for line in path.read_text().splitlines():
            attempt, pid = line.split()
            by_attempt[attempt].append(int(pid))
        for attempt, pids in by_attempt.items():
            survivors = [pid for pid in pids if pid not in killed]
            if len(pids) > 1 and len(survivors) > 1:
                twice.append(f"{path.name} attempt {attempt}: pids {pids}")
    return twice


def gaps(events: list[Event]) -> list[str]:
    seqs: dict[str, list[int]] = collections.defaultdict(list)
    for event in events:
        if isinstance(event, TaskRunTransitioned) and event.task_run_id and event.seq:
            seqs[event.task_run_id].append(event.seq)
    return [
        f"{task_run_id}: {numbers[:20]}"
        for task_run_id, numbers in seqs.items()
        if sorted(set(numbers)) != list(range(1, max(numbers) + 1))
    ]


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="runledger-chaos-") as tmp:
        work = Path(tmp)
        out = work / "bodies"
        out.mkdir()
        with KafkaBroker(data_dir=work / "broker", log_dir=work / "logs") as broker:
            settings = Settings(
                brokers=broker.bootstrap, topic_prefix=f"chaos{uuid.uuid4().hex[:6]}.",
                app_id="chaos", data_dir=work / "data", session_timeout_ms=6000,
                heartbeat_interval_s=1.0, heartbeat_timeout_s=6.0,
            )
            asyncio.run(ensure_topics(settings))
            cast = Cast(settings, work / "logs")
            cast.ledger = cast.spawn("ledger")
            cast.workers = [cast.spawn("worker"), cast.spawn("worker")]
            try:
                time.sleep(5)  # the roles join their groups
                started = time.monotonic()
                ids = asyncio.run(submit_all(settings, args.flows, args.children, out))
                deadline = started + args.deadline
                actions = chaos(cast, broker, args, until=started + args.chaos_seconds)
                views = asyncio.run(finished(settings, ids))
                while not all(v.is_finished() for v in views.values()):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(1)
                    views = asyncio.run(finished(settings, ids))
                took = time.monotonic() - started
                events = asyncio.run(ledger_events(settings))
            finally:
                cast.stop_all()
    return report(args, ids, views, events, actions, cast.killed, out_summary(out, cast), took)


def out_summary(out: Path, cast: Cast) -> list[str]:
    return bodies_twice(out, cast.killed) if out.exists() else []


def report(
    args: argparse.Namespace,
    ids: list[str],
    views: dict[str, FlowRunView],
    events: list[Event],
    actions: list[str],
    killed: set[int],
    twice: list[str],
    took: float,
) -> int:
    mine = [e for e in events if e.flow_run_id in views]
    lost = sum(
        1 for e in mine
        if isinstance(e, TaskRunTransitioned) and "considered lost" in str(e.state.get("message"))
    )
    redispatched = sum(1 for e in mine if isinstance(e, WorkDispatched) and e.work.attempt > 1)
    stuck = [f for f, v in views.items() if not v.is_finished()]
    missing = gaps(mine)
    states = collections.Counter(v.flow_state_type for v in views.values())
    print("chaos actions:")
    for line in actions:
        print("  " + line)
    print(f"runs submitted              {len(ids)} ({len(ids) * (args.children + 3)} task runs)")
    print(f"runs finished               {sum(v.is_finished() for v in views.values())}"
          f"  {dict(states)}")
    print(f"time to finish              {took:.1f} s")
    print(f"processes killed            {len(killed)}")
    print(f"attempts declared lost      {lost}")
    print(f"attempts dispatched again   {redispatched}")
    print(f"bodies run twice per attempt by live processes  {len(twice)}  (must be 0)")
    print(f"transitions lost (seq gaps) {len(missing)}  (must be 0)")
    print(f"runs stuck                  {len(stuck)}  (must be 0)")
    for line in twice[:10] + missing[:10] + stuck[:10]:
        print("  " + line)
    return 1 if twice or missing or stuck else 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the cleanup: every process is stopped by PID


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=10)
    parser.add_argument("--children", type=int, default=500)
    parser.add_argument("--worker-kill-every", type=float, default=4.0, metavar="S")
    parser.add_argument("--ledger-kills", type=int, default=2)
    parser.add_argument("--broker-freeze", type=float, default=20.0, metavar="S")
    parser.add_argument("--chaos-seconds", type=float, default=45.0, metavar="S")
    parser.add_argument("--deadline", type=float, default=900.0, metavar="S")
    parser.add_argument("--seed", type=int, default=1)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
