"""Small flows for the service tests and the benchmark."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from engine import Flow, Parameter, context, signals, task


@task
def one() -> int:
    """The smallest task there is."""
    return 1


with Flow("single") as single:
    one()


@task
def wait_for_file(path: str, timeout_s: float) -> str:
    """Run until `path` exists (or `timeout_s` passes): a body that is 'running' on demand."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released" if os.path.exists(path) else "timed out"


@task
def after(x: str) -> str:
    """Downstream of the waiting task."""
    return x + "!"


with Flow("blocking") as blocking:
    after(wait_for_file(Parameter("path"), Parameter("timeout_s", default=20.0)))


@task
def gate() -> str:
    """Pauses until a ResumeRequested approves it (context 'resume')."""
    if not context.get("resume"):
        raise signals.PAUSE("waiting for approval")
    return "approved"


with Flow("pausing") as pausing:
    after(gate())


@task(max_retries=1, retry_delay=timedelta(seconds=1))
def flaky_once() -> str:
    """Fails its first attempt; the retry starts a second later (from the scheduler)."""
    if context.get("task_run_count", 1) == 1:
        raise ValueError("first attempt fails")
    return "ok on attempt 2"


with Flow("retry_later") as retry_later:
    flaky_once()
