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

from engine.signals import TaskTimeoutSignal


def run_with_timeout(
    fn: Callable[..., Any], kwargs: Mapping[str, Any], timeout: float | None
) -> Any:
    """Call `fn(**kwargs)`; raise TaskTimeoutSignal once `timeout` seconds have passed.

    The caller's context variables (the task context among them) are copied into
    the body's thread, so the body sees what it would see inline.
    """
    if timeout is None:
        return fn(**kwargs)
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def body() -> None:
        try:
            outcome["value"] = fn(**kwargs)
        except BaseException as exc:  # signals are BaseExceptions and must cross the thread
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(
        target=contextvars.copy_context().run,
        args=(body,),
        daemon=True,
        name=f"runledger-body-{getattr(fn, '__qualname__', 'task')}",
    )
    worker.start()
    if not finished.wait(timeout):
        raise TaskTimeoutSignal("Execution timed out.")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
