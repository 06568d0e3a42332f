"""Running a task body with its context bound, under an optional timeout.

A body with a timeout runs in its own daemon thread; the caller waits at most
`timeout` seconds and then records TimedOut. The caller (and any event loop or
other task run) is never blocked past the deadline. Python cannot kill a
thread, so a timed-out body keeps running in the background until it returns,
and whatever it returns is discarded -- Prefect 1's behaviour outside the main
thread of a non-daemonic process.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import Any

from engine.context import bound
from engine.signals import TaskTimeoutSignal


def run_with_timeout(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    timeout: float | None,
    context_values: Mapping[str, Any],
) -> Any:
    """Call `fn(**kwargs)` with the task context bound; raise TaskTimeoutSignal on expiry."""
    if timeout is None:
        with bound(context_values):
            return fn(**kwargs)
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def body() -> None:
        try:
            with bound(context_values):
                outcome["value"] = fn(**kwargs)
        except BaseException as exc:  # signals are BaseExceptions and must cross the thread
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(
        target=contextvars.copy_context().run,
        args=(body,),
        daemon=True,
        name=f"runledger-body-{context_values.get('task_full_name', 'task')}",
    )
    worker.start()
    if not finished.wait(timeout):
        raise TaskTimeoutSignal("Execution timed out.")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
