"""Play simulation seeds from the command line (`make simulate SEEDS=...`).

python -m tests.simulation.run --seeds 100000          # seeds 0..99999, all cores
python -m tests.simulation.run --seed 1234 --trace     # replay one seed, step by step
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable

from tests.simulation.world import InvariantBroken, play


def play_range(seeds: Iterable[int]) -> tuple[Counter[str], list[str]]:
    """Final flow states of the seeds that held, and the failures of those that did not."""
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for seed in seeds:
        try:
            view = play(seed)
        except InvariantBroken as exc:
            failures.append(str(exc))
        else:
            outcomes[view.flow_state_type or "?"] += 1
    return outcomes, failures


def play_many(start: int, count: int, processes: int) -> tuple[Counter[str], list[str]]:
    """`play_range` over `processes` processes (interleaved seeds, so the work is even)."""
    if processes <= 1:
        return play_range(range(start, start + count))
    chunks = [range(start + i, start + count, processes) for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(play_range, chunks)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for counts, failed in results:
        outcomes.update(counts)
        failures.extend(failed)
    return outcomes, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10_000, help="how many seeds to play")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--trace", action="store_true", help="print every step (with --seed)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.seed is not None:
        try:
            view = play(args.seed, trace=args.trace)
        except InvariantBroken as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"seed {args.seed}: flow run ended {view.flow_state_type}")
        return 0
    started = time.perf_counter()
    outcomes, failures = play_many(args.start, args.seeds, args.processes)
    elapsed = time.perf_counter() - started
    for failure in failures[:20]:
        print(failure, file=sys.stderr)
    print(
        f"{args.seeds} seeds from {args.start} in {elapsed:.1f} s on {args.processes} "
        f"processes: {len(failures)} failed; flow runs ended {dict(outcomes)}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
