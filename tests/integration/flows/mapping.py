"""A flow mapped over N inputs whose body counts its executions in files.

Used by the multi-process and ledger-restart tests: each task run appends one
line (the worker's pid) to ``<out_dir>/<map_index>.runs`` per body execution,
so "every body ran exactly once" is "every file has exactly one line".
"""

from __future__ import annotations

import os
import time

from engine import Flow, Parameter, context, task, unmapped


@task
def make_inputs(n: int) -> list[int]:
    """The inputs to map over."""
    return list(range(n))


@task
def record(x: int, out_dir: str, delay_s: float) -> int:
    """Count this execution (one line per run of the body), then work a little."""
    index = context.get("map_index")
    # O_APPEND writes of one short line are atomic: concurrent bodies never interleave.
    with open(os.path.join(out_dir, f"{index}.runs"), "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}\n")
    if delay_s:
        time.sleep(delay_s)
    return x * 2


with Flow("mapping") as flow:
    n = Parameter("n", default=10)
    out_dir = Parameter("out_dir")
    delay_s = Parameter("delay_s", default=0.0)
    record.map(make_inputs(n), out_dir=unmapped(out_dir), delay_s=unmapped(delay_s))


@task
def inc(x: int) -> int:
    """A trivial body for throughput measurements."""
    return x + 1


with Flow("trivial_map") as trivial_map:
    inc.map(make_inputs(Parameter("n", default=10)))
