"""The ledger's scheduler: which flow runs have a start time that has come, and their tick.

The timers are the views' `scheduled` maps (task run id -> ISO start time of a
Scheduled, Retrying or timed Paused run), so a restarted ledger gets them back
with its fold: nothing is held only in memory. `Timers` keeps the earliest start
per flow run; the ledger decides a `tick` for each one that is due.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from engine.orchestration import FlowRunView
from engine.orchestration.decide import is_losable
from events import Cause, SchedulerTicked, WorkerIdentity

__all__ = ["Timers", "lost_attempts", "tick"]


class Timers:
    """The earliest start time of every flow run that waits for one."""

    def __init__(self) -> None:
        self._due: dict[str, datetime] = {}

    def refresh(self, view: FlowRunView | None, flow_run_id: str) -> None:
        """Recompute one run's timer from its view (none unless the flow is Running)."""
        if view is None or not view.scheduled or view.flow_state_type != "Running":
            self._due.pop(flow_run_id, None)
        else:
            self._due[flow_run_id] = min(datetime.fromisoformat(s) for s in view.scheduled.values())

    def forget(self, flow_run_id: str) -> None:
        """No timer for this run until its view changes again (see `refresh`)."""
        self._due.pop(flow_run_id, None)

    def due(self, now: datetime) -> list[str]:
        """Flow runs with a start time at or before `now`."""
        return [flow_run_id for flow_run_id, at in self._due.items() if at <= now]

    def wait_ms(self, now: datetime, longest_ms: int) -> int:
        """How long the ledger may wait for commands before the next timer is due."""
        if not self._due:
            return longest_ms
        wait = (min(self._due.values()) - now).total_seconds()
        return max(0, min(longest_ms, int(wait * 1000) + 1))


def lost_attempts(view: FlowRunView, now: datetime, timeout_s: float) -> list[str]:
    """Running (or Cancelling) task runs whose last heartbeat (or claim) is older than
    `timeout_s`."""
    return [
        run_id
        for run_id in view.running
        if (record := view.task_runs.get(run_id)) is not None
        and is_losable(record)
        and record.last_heartbeat is not None
        and (now - record.last_heartbeat).total_seconds() > timeout_s
    ]


def tick(
    view: FlowRunView,
    now: datetime,
    ledger: WorkerIdentity,
    heartbeat_timeout_s: float | None = None,
) -> SchedulerTicked:
    """The SchedulerTicked that makes `view`'s due runs start (and, with a heartbeat
    timeout, fails its lost attempts).

    Its id is derived from what it acts on (run ids and their seq), not from a
    counter: the same tick after a restart has the same id (and is ignored if it
    was applied), and a later tick for new start times gets a new one.
    """
    acted_on = [
        run_id
        for run_id, start in view.scheduled.items()
        if datetime.fromisoformat(start) <= now
    ]
    if heartbeat_timeout_s is not None:
        acted_on += lost_attempts(view, now, heartbeat_timeout_s)
    keys = sorted(f"{r}@{view.task_runs[r].seq}" for r in acted_on if r in view.task_runs)
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
    return SchedulerTicked(
        event_id=f"{view.flow_run_id}/tick/{digest}",
        flow_run_id=view.flow_run_id,
        occurred_at=now,
        cause=Cause(worker=ledger),
        heartbeat_timeout_s=heartbeat_timeout_s,
    )
