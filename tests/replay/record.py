"""Record the golden replay ledgers in this folder (JSONL) and the states they fold to.

Each scenario runs a representative flow locally on a FixedClock with a fixed
flow run id and worker identity, so a recording is byte-for-byte reproducible.
It writes `<name>.jsonl` (one `events.encode`d event per line) and
`<name>.expected.json` (what folding that ledger must give: flow state, every
task run's state, seq, attempt and final flag, children counts).

When to run it: only to ADD a scenario (new files are written, existing ones
are kept). The checked-in ledgers are history: if `test_replay.py` fails, the
engine now reads old ledgers differently -- fix the engine or add an upcaster,
never re-record to make it pass. `--force` rewrites every file; use it only
for a deliberate, reviewed change of the recordings themselves.

    PYTHONPATH=. .venv/bin/python -m tests.replay.record [--force]
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine import Flow, context, signals, task, triggers
from engine.clock import FixedClock
from engine.flow_runner import FlowRunner
from engine.orchestration import FlowRunView, decide_and_evolve
from engine.planning import plan_of
from engine.result_store import InMemoryResultStore
from engine.results import Result
from engine.worker_core import execute_work
from events import (
    CancelRequested,
    Cause,
    Command,
    Event,
    FlowRef,
    RunRequested,
    WorkDispatched,
    WorkerIdentity,
    encode,
)

HERE = Path(__file__).resolve().parent
START = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
WORKER = WorkerIdentity(id="recorder", host="replay", pid=0)
Recorder = Callable[[], list[Event]]


# ----- flows run through the local FlowRunner ----------------------------------------------------


def _local(flow: Flow, flow_run_id: str, **run_kwargs: Any) -> list[Event]:
    clock = FixedClock(START)
    runner = FlowRunner(flow, clock=clock, sleep=clock.advance)
    runner.worker = WORKER
    return runner.run(flow_run_id=flow_run_id, **run_kwargs).events


def retry() -> list[Event]:
    """A task fails its first attempt, is retried 10 s later and succeeds; its downstream runs."""

    def flaky() -> str:
        if context["task_run_count"] == 1:
            raise ValueError("first attempt fails")
        return "ok"

    def report(value: str) -> str:
        return value.upper()

    with Flow("retry") as flow:
        value = task(flaky, name="flaky", max_retries=2, retry_delay=timedelta(seconds=10))()
        task(report, name="report")(value)
    return _local(flow, "replay-retry")


def map_child_fails() -> list[Event]:
    """A map over [1, 2, 3] whose child 1 fails; a map over it and an all_finished reduce."""

    def fragile(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x * 10

    def double(x: int) -> int:
        return 2 * x

    def count(xs: list[Any]) -> int:
        return len(xs)

    with Flow("map_child_fails") as flow:
        first = task(fragile, name="fragile").map([1, 2, 3])
        task(double, name="double").map(first)
        task(count, name="count", trigger=triggers.all_finished)(first)
    return _local(flow, "replay-map")


def pause_resume() -> list[Event]:
    """A PAUSE from the body and a manual_only gate, both approved through on_paused."""

    def wait() -> str:
        if not context.resume:
            raise signals.PAUSE("waiting for approval")
        return "approved"

    def gate(value: str) -> str:
        return f"{value} and opened"

    with Flow("pause_resume") as flow:
        waited = task(wait, name="wait")()
        task(gate, name="gate", trigger=triggers.manual_only)(waited)
    return _local(flow, "replay-pause", on_paused=lambda paused: True)


# ----- cancel: a local loop over decide/evolve and execute_work ----------------------------------


class _Ledger:
    """A minimal in-process ledger (what the local runner does, plus a cancel mid-run)."""

    def __init__(self, flow_run_id: str, clock: FixedClock) -> None:
        self.view = FlowRunView(flow_run_id=flow_run_id)
        self.events: list[Event] = []
        self.work: deque[WorkDispatched] = deque()
        self.clock = clock
        self.count = 0

    def next_id(self) -> str:
        self.count += 1
        return f"{self.view.flow_run_id}:c{self.count}"

    def submit(self, command: Command) -> list[Event]:
        self.view, new = decide_and_evolve(self.view, command, self.clock())
        self.events.extend(new)
        self.work.extend(e for e in new if isinstance(e, WorkDispatched))
        return new


def cancel() -> list[Event]:
    """A flow run cancelled while its second task runs: Cancelling, then Cancelled."""
    clock = FixedClock(START)
    ledger = _Ledger("replay-cancel", clock)
    store = InMemoryResultStore()

    def first() -> int:
        return 1

    def slow(x: int) -> int:
        clock.advance(5)
        ledger.submit(
            CancelRequested(
                event_id=ledger.next_id(),
                flow_run_id=ledger.view.flow_run_id,
                occurred_at=clock(),
                cause=Cause(worker=WORKER),
                reason="operator asked",
            )
        )
        return x + 1

    def after(x: int) -> int:
        return x * 2

    with Flow("cancel") as flow:
        after_task = task(after, name="after")
        after_task(task(slow, name="slow")(task(first, name="first")()))

    plan = plan_of(flow, lambda value, slug: store.persist(Result(value=value), f"constant/{slug}"))
    ledger.submit(
        RunRequested(
            event_id=ledger.next_id(),
            flow_run_id=ledger.view.flow_run_id,
            occurred_at=clock(),
            flow_ref=FlowRef(kind="import", path="tests.replay.record:cancel"),
            plan=plan,
            cause=Cause(worker=WORKER),
        )
    )
    while ledger.work:
        execute_work(
            ledger.work.popleft().work,
            flow=flow,
            submit=ledger.submit,
            next_id=ledger.next_id,
            store=store,
            clock=clock,
            worker=WORKER,
        )
    return ledger.events


SCENARIOS: dict[str, Recorder] = {
    "retry": retry,
    "map_child_fails": map_child_fails,
    "pause_resume": pause_resume,
    "cancel": cancel,
}


# ----- files -------------------------------------------------------------------------------------


def summary(view: FlowRunView) -> dict[str, Any]:
    """What a folded ledger must reproduce, as plain JSON."""
    return {
        "flow": {
            "type": view.flow_state_type,
            "message": (view.flow_state or {}).get("message"),
            "seq": view.flow_seq,
        },
        "task_runs": {
            run_id: {
                "type": record.state_type,
                "message": record.state.get("message"),
                "seq": record.seq,
                "attempt": record.attempt,
                "final": record.final,
            }
            for run_id, record in sorted(view.task_runs.items())
        },
        "children": dict(sorted(view.children.items())),
        "unfinished_runs": view.unfinished_runs,
        "scheduled": dict(sorted(view.scheduled.items())),
    }


def ledger_bytes(events: list[Event]) -> bytes:
    """The JSONL form of a ledger."""
    return b"".join(encode(event) + b"\n" for event in events)


def write(name: str, force: bool = False) -> bool:
    """Record scenario `name` unless its files exist (or `force`); True when written."""
    ledger, expected = HERE / f"{name}.jsonl", HERE / f"{name}.expected.json"
    if not force and ledger.exists() and expected.exists():
        return False
    from engine.orchestration import fold

    events = SCENARIOS[name]()
    ledger.write_bytes(ledger_bytes(events))
    expected.write_text(json.dumps(summary(fold(events)), indent=2) + "\n", encoding="utf-8")
    return True


def main(argv: list[str]) -> int:
    force = "--force" in argv
    for name in SCENARIOS:
        print(f"{name}: {'written' if write(name, force) else 'kept (exists)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
