"""Helpers for the service tests: roles in a background thread, commands, ledger reads.

`RolesThread` runs `services.roles.app.hosted_roles` on its own event loop in a thread,
so a module-scoped fixture can share one ledger and one worker between many
synchronous tests (a consumer-group join costs ~1.5-3 s per role on this
broker). Tests talk to it with blocking helpers: `send`, `wait_view`,
`ledger_records`, `fold_of`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import ConsumerRecord, TopicPartition

from engine.orchestration import FlowRunView, fold
from engine.orchestration.partition import PartitionState
from engine.orchestration.retired import retire
from events import Command, Event, FlowRef, RunRequested, decode, encode
from services.kafka.clients import make_producer, read_partitions_to_end
from services.roles.app import RunLedgerApp, hosted_roles
from services.roles.ledger import Ledger, fold_into_state
from services.settings import Settings, TopicName

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_request(
    path_or_ref: str | FlowRef,
    parameters: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    flow_run_id: str | None = None,
) -> RunRequested:
    """A plan-less RunRequested (the ledger loads and plans the flow)."""
    ref = (
        path_or_ref
        if isinstance(path_or_ref, FlowRef)
        else FlowRef(kind="import", path=path_or_ref)
    )
    return RunRequested(
        event_id=str(uuid.uuid4()),
        flow_run_id=flow_run_id or str(uuid.uuid4()),
        occurred_at=datetime.now(UTC),
        flow_ref=ref,
        parameters=dict(parameters or {}),
        context=dict(context or {}),
    )


class RolesThread:
    """Roles hosted on a private event loop in a daemon thread; a context manager."""

    def __init__(self, settings: Settings, roles: Collection[str], timeout_s: float = 60) -> None:
        self.settings = settings
        self.roles = set(roles)
        self.timeout_s = timeout_s
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.app: RunLedgerApp | None = None
        self._thread = threading.Thread(target=self._main, name="roles", daemon=True)

    def __enter__(self) -> RolesThread:
        self._thread.start()
        if not self._ready.wait(self.timeout_s) or self._error is not None:
            self.close()
            raise RuntimeError(f"roles did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by close()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with hosted_roles(self.settings, self.roles) as app:
            self.app = app
            self._producer = make_producer(self.settings, linger_ms=0)
            await self._producer.start()
            try:
                if app.ledger is not None:
                    await asyncio.wait_for(app.ledger.ready.wait(), self.timeout_s)
                if app.worker is not None:
                    await asyncio.wait_for(app.worker.ready.wait(), self.timeout_s)
                self._ready.set()
                await self._stop.wait()
            finally:
                await self._producer.stop()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout_s)
        if self._thread.is_alive():
            raise RuntimeError("roles did not stop in time")
        if self._error is not None and not isinstance(self._error, asyncio.CancelledError):
            raise RuntimeError(f"roles failed: {self._error!r}") from self._error

    # ----- blocking helpers for tests ----------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        """Run `coro` on the roles' loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def send(self, command: Command) -> None:
        """Produce a command (keyed by flow run) and wait for the ack."""
        self.send_raw("commands", encode(command), command.flow_run_id.encode())

    def send_raw(self, topic: TopicName, value: bytes, key: bytes | None) -> None:
        """Produce any bytes to one of the topics and wait for the ack."""
        self.call(self._producer.send_and_wait(self.settings.topic(topic), value, key=key))

    @property
    def ledger(self) -> Ledger:
        assert self.app is not None
        assert self.app.ledger is not None
        return self.app.ledger

    def on_loop(self, read: Callable[[Ledger], T]) -> T:
        """`read(ledger)` run on the roles' event loop (the ledger changes only there)."""

        async def run() -> T:
            return read(self.ledger)

        return self.call(run())

    @property
    def ledger_views(self) -> dict[str, FlowRunView]:
        """The ledger's live views (finished runs have left them: `ledger_view`)."""
        return self.on_loop(lambda ledger: ledger.views)

    def ledger_view(self, flow_run_id: str) -> FlowRunView | None:
        """The ledger's view of a run: live, or for a retired run the fold it was reduced from
        (once the ledger topic holds what retired it)."""
        view, retired = self.on_loop(
            lambda ledger: (ledger.views.get(flow_run_id), ledger.retired_run(flow_run_id))
        )
        if view is not None or retired is None:
            return view
        folded = self.fold_of(flow_run_id)
        return folded if retire(folded) == retired else None

    def ledger_states(self) -> dict[int, PartitionState]:
        """The state of every partition the ledger owns."""

        def states(ledger: Ledger) -> dict[int, PartitionState]:
            found = {p: ledger.state_of(p) for p in ledger.owned}
            return {p: s for p, s in found.items() if s is not None}

        return self.on_loop(states)

    def folded_states(self) -> dict[int, PartitionState]:
        """Every ledger partition folded from offset 0 into a partition state."""
        return fold_partitions(self.settings, self.records("ledger"))

    def wait_view(
        self,
        flow_run_id: str,
        until: Callable[[FlowRunView], bool] = FlowRunView.is_finished,
        timeout_s: float = 30,
    ) -> FlowRunView:
        """Poll the live ledger view until `until(view)`; AssertionError on timeout.

        The view is returned once the ledger topic has caught up with it (or after
        a few seconds, for the caller's comparison to report): a view is decided
        before its transaction commits, and a committed transaction becomes
        readable a moment later, when its markers are written.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.ledger_view(flow_run_id)
            if view is not None and until(view):
                self._until_committed(flow_run_id, view)
                return view
            if time.monotonic() > deadline:
                state = None if view is None else view.flow_state_type
                raise AssertionError(f"flow run {flow_run_id} not there in {timeout_s}s ({state})")
            time.sleep(0.01)

    def _until_committed(self, flow_run_id: str, view: FlowRunView, timeout_s: float = 5) -> None:
        deadline = time.monotonic() + timeout_s
        while self.fold_of(flow_run_id) != view and time.monotonic() < deadline:
            time.sleep(0.02)

    def records(self, topic: TopicName) -> list[ConsumerRecord[bytes, bytes]]:
        return self.call(topic_records(self.settings, topic))

    def events_of(self, flow_run_id: str) -> list[Event]:
        """Every ledger event of one flow run, in ledger order (read from offset 0)."""
        key = flow_run_id.encode()
        return [decode(r.value or b"") for r in self.records("ledger") if r.key == key]

    def fold_of(self, flow_run_id: str) -> FlowRunView:
        """The view folded from the ledger topic alone."""
        return fold(self.events_of(flow_run_id), flow_run_id=flow_run_id)


def fold_partitions(
    settings: Settings, records: list[ConsumerRecord[bytes, bytes]]
) -> dict[int, PartitionState]:
    """Ledger records folded per partition, from offset 0, as the ledger role folds them."""
    states: dict[int, PartitionState] = {}
    for partition in range(settings.partitions):
        state = PartitionState(window=settings.ledger_command_window)
        fold_into_state(state, (r for r in records if r.partition == partition))
        states[partition] = state
    return states


async def topic_records(settings: Settings, topic: TopicName) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic, all partitions, from offset 0 to the high watermark."""
    name = settings.topic(topic)
    partitions = range(settings.partitions)
    return await read_partitions_to_end(settings, [TopicPartition(name, p) for p in partitions])


def idle(view: FlowRunView) -> bool:
    """Nothing is dispatched or running and no start time is pending: only a person can act."""
    busy = {"Submitted", "Queued", "Running", "Cancelling"}
    return not view.scheduled and not any(
        r.state_type in busy or not r.final for r in view.task_runs.values()
    )


# ----- subprocesses ----------------------------------------------------------------------


def role_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a role subprocess: RUNLEDGER_* from `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNLEDGER_")}
    env.update(settings.environment(), PYTHONPATH=str(REPO_ROOT))
    env.update(extra)
    return env


def start_role(
    settings: Settings, args: Iterable[str], log_path: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`python -m services.roles.app ARGS` with output to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.roles.app", *args],
            cwd=REPO_ROOT,
            env=role_env(settings, **env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """SIGTERM by PID, wait; SIGKILL if it does not stop. Returns the exit status."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        raise


def wait_for_log(
    log_path: Path, text: str, timeout_s: float, process: subprocess.Popen[bytes]
) -> str:
    """Wait until `text` appears in a role's log (or fail with the log's tail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        content = log_path.read_text(errors="replace") if log_path.exists() else ""
        if text in content:
            return content
        if process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(content.splitlines()[-30:])
            status = process.poll()
            raise AssertionError(f"{text!r} not in {log_path.name} (exit {status}):\n{tail}")
        time.sleep(0.05)
