"""Benchmark of the local runner (issue 2): map + reduce, and a chain.

Run:  .venv/bin/python bench/bench_local.py [--n 10000] [--chain 200] [--repeat 3]
      [--prefect-python PATH]   # also time Prefect 1.4.1 with that interpreter

Every figure is measured in this one run next to two baselines: the same task
bodies called as plain Python functions (the floor: no engine at all), and,
when an interpreter with Prefect 1.4.1 is given, Prefect's own flow.run() on
the same flows. Each local-runner figure still records every transition as a
ledger event (the events are counted).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Flow, task
from engine.flow_runner import FlowRunner


def inc(x: int) -> int:
    return x + 1


def total(xs: list[int]) -> int:
    return sum(xs)


def map_flow(n: int) -> Flow:
    with Flow("bench-map") as flow:
        total_task = task(total)
        total_task(task(inc).map(list(range(n))))
    return flow


def chain_flow(n: int) -> Flow:
    with Flow("bench-chain") as flow:
        step = task(inc)
        previous = step(0)
        for _ in range(n - 1):
            previous = step(previous)
    return flow


@dataclass
class Figure:
    name: str
    task_runs: int
    wall_s: float
    cpu_s: float
    events: int
    peak_mib: float

    @property
    def runs_per_s(self) -> float:
        return self.task_runs / self.wall_s


def _best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return best_wall, best_cpu, result


def _peak_mib(fn: Callable[[], Any]) -> float:
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def measure_engine(name: str, flow: Flow, task_runs: int, repeat: int) -> Figure:
    wall, cpu, outcome = _best_of(repeat, lambda: FlowRunner(flow).run())
    assert outcome.state.is_successful(), outcome.state
    peak = _peak_mib(lambda: FlowRunner(flow).run())
    return Figure(name, task_runs, wall, cpu, len(outcome.events), peak)


def measure_plain(name: str, n: int, chain: bool, repeat: int) -> Figure:
    def run() -> int:
        if chain:
            value = 0
            for _ in range(n):
                value = inc(value)
            return value
        return total([inc(x) for x in range(n)])

    wall, cpu, _ = _best_of(repeat, run)
    return Figure(name, n + (0 if chain else 1), wall, cpu, 0, _peak_mib(run))


PREFECT_SCRIPT = textwrap.dedent("""
    import json, sys, time, logging
    logging.disable(logging.CRITICAL)
    from prefect import Flow, task
    n, chain, repeat = int(sys.argv[1]), sys.argv[2] == "chain", int(sys.argv[3])
    @task
    def inc(x): return x + 1
    @task
    def total(xs): return sum(xs)
    with Flow("bench") as flow:
        if chain:
            prev = inc(0)
            for _ in range(n - 1): prev = inc(prev)
        else:
            total(inc.map(list(range(n))))
    best = None
    for _ in range(repeat):  # best of `repeat`, as for ours
        w0, c0 = time.perf_counter(), time.process_time()
        state = flow.run()
        run = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
               "ok": state.is_successful()}
        if best is None or run["wall"] < best["wall"]:
            best = run
    print(json.dumps(best))
""")


def measure_prefect(python: str, name: str, n: int, chain: bool, repeat: int) -> Figure | None:
    done = subprocess.run(
        [python, "-c", PREFECT_SCRIPT, str(n), "chain" if chain else "map", str(repeat)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        print(f"Prefect baseline failed: {done.stderr[-500:]}", file=sys.stderr)
        return None
    data = json.loads(done.stdout.strip().splitlines()[-1])
    if not data["ok"]:
        print(f"Prefect baseline {name}: the flow run did not succeed", file=sys.stderr)
        return None
    runs = n if chain else n + 2  # mapped parent + children + reduce, as ours
    return Figure(name, runs, data["wall"], data["cpu"], 0, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="inputs of the mapped task")
    parser.add_argument("--chain", type=int, default=200, help="length of the chain")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure, Prefect's too (best kept)"
    )
    default_prefect = Path(__file__).resolve().parents[1] / ".venv-prefect" / "bin" / "python"
    parser.add_argument(
        "--prefect-python",
        default=str(default_prefect) if default_prefect.exists() else None,
        help="interpreter with prefect==1.4.1 (default: .venv-prefect, made by make bench-prefect)",
    )
    parser.add_argument("--prefect-n", type=int, default=1_000, help="map size for Prefect")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    FlowRunner(map_flow(50)).run()  # warm-up: imports, first-call caches
    figures = [
        measure_engine(
            f"local runner: map {args.n} + reduce", map_flow(args.n), args.n + 2, args.repeat
        ),
        measure_plain(f"plain calls: {args.n} + sum", args.n, False, args.repeat),
        measure_engine(
            f"local runner: chain {args.chain}", chain_flow(args.chain), args.chain, args.repeat
        ),
        measure_plain(f"plain calls: chain {args.chain}", args.chain, True, args.repeat),
    ]
    if args.prefect_python:
        for fig in (
            measure_prefect(
                args.prefect_python,
                f"Prefect 1.4.1: map {args.prefect_n} + reduce",
                args.prefect_n,
                False,
                args.repeat,
            ),
            measure_prefect(
                args.prefect_python,
                f"Prefect 1.4.1: chain {args.chain}",
                args.chain,
                True,
                args.repeat,
            ),
        ):
            if fig is not None:
                figures.append(fig)

    print(
        f"{'benchmark':44} {'task runs':>9} {'wall s':>8} {'cpu s':>8} {'runs/s':>10}"
        f" {'us/run':>8} {'events':>7} {'peak MiB':>9}"
    )
    for f in figures:
        print(
            f"{f.name:44} {f.task_runs:9d} {f.wall_s:8.3f} {f.cpu_s:8.3f} {f.runs_per_s:10.0f}"
            f" {f.wall_s / f.task_runs * 1e6:8.1f} {f.events:7d} {f.peak_mib:9.1f}"
        )
    engine_map, plain_map, engine_chain, plain_chain = figures[:4]

    def per_run(f: Figure) -> float:
        return f.wall_s / f.task_runs

    print(
        f"\noverhead vs plain calls: map x{per_run(engine_map) / per_run(plain_map):.0f}, "
        f"chain x{per_run(engine_chain) / per_run(plain_chain):.0f} per task run"
    )
    for f in figures[4:]:
        base = engine_map if "map" in f.name else engine_chain
        print(f"speed-up vs {f.name}: x{base.runs_per_s / f.runs_per_s:.1f} task runs/s")
    if args.json:
        args.json.write_text(
            json.dumps([asdict(f) | {"runs_per_s": f.runs_per_s} for f in figures], indent=2)
        )


if __name__ == "__main__":
    main()
