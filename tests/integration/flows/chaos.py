"""The chaos run's flow: a map whose bodies record every execution with its attempt.

Each body appends ``<attempt> <pid>`` to ``<out_dir>/<flow_run_id>.<map_index>``
(an O_APPEND write of one short line is atomic), so a chaos run can tell a body
run twice for one attempt from a retry, and which process ran it.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from engine import Flow, Parameter, context, task, unmapped


@task
def inputs(n: int) -> list[int]:
    """The inputs to map over."""
    return list(range(n))


@task(max_retries=3, retry_delay=timedelta(seconds=0))
def work(x: int, out_dir: str, delay_s: float) -> int:
    """Record this execution, then work a little."""
    name = f"{context.get('flow_run_id')}.{context.get('map_index')}"
    with open(os.path.join(out_dir, name), "a", encoding="utf-8") as fh:
        fh.write(f"{context.get('task_run_count', 1)} {os.getpid()}\n")
    time.sleep(delay_s)
    return x


with Flow("chaos") as flow:
    n = Parameter("n", default=10)
    out_dir = Parameter("out_dir")
    delay_s = Parameter("delay_s", default=0.01)
    work.map(inputs(n), out_dir=unmapped(out_dir), delay_s=unmapped(delay_s))
