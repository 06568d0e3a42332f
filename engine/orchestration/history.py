"""Time travel and the audit trail: views and timelines rebuilt from a ledger.

Both read only what the ledger recorded. Time travel compares each fact's own
`occurred_at` (the ledger's clock when it decided), never a broker timestamp:
the embedded broker's `offsets_for_times` is wrong (BROKER_NOTES.md), and the
fact's time is the one the audit trail shows anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, takewhile
from typing import Any

from engine.orchestration.evolve import fold
from engine.orchestration.view import FlowRunView
from events import (
    DeadLettered,
    Event,
    Fact,
    FlowRunCreated,
    FlowRunTransitioned,
    HeartbeatRecorded,
    TaskRunTransitioned,
    TransitionRejected,
    WorkDispatched,
)

__all__ = ["TimelineRow", "check_as_of", "fold_as_of", "timeline"]

TaskKey = tuple[str | None, int | None]
"""(task_slug, map_index) of a fact's task run, (None, None) when unknown."""
_NO_TASK: TaskKey = (None, None)


def check_as_of(as_of: datetime) -> datetime:
    """`as_of` itself; `ValueError` when it is naive (it would name no instant)."""
    if as_of.utcoffset() is None:
        raise ValueError(
            "as_of must be timezone-aware (e.g. datetime(..., tzinfo=UTC) or "
            f"'2024-05-01T12:00:00Z'); got naive {as_of.isoformat()}"
        )
    return as_of


def fold_as_of(
    events: Iterable[Event], as_of: datetime, start: FlowRunView | None = None
) -> FlowRunView:
    """The view as it was at `as_of`: `fold` of the facts that had occurred by then.

    Facts are taken in ledger order up to the first one that occurred after
    `as_of`. The ledger's order is the truth: a fact recorded after a later one
    cannot have been known earlier, even if a clock stepped back between them,
    and skipping it would leave a sequence gap. With one ledger clock (times
    never decrease along a run's ledger) these are exactly the facts with
    ``occurred_at <= as_of``. Before the run's first fact this is the run's
    empty view; `ValueError` for a naive `as_of`, or for no events and no `start`.
    """
    check_as_of(as_of)
    remaining = iter(events)
    first = next(remaining, None)
    if first is None:
        return fold((), start=start)
    known = takewhile(lambda event: event.occurred_at <= as_of, chain((first,), remaining))
    return fold(known, start=start, flow_run_id=first.flow_run_id)


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One fact of the audit trail, flattened for tables and JSON lines.

    `kind` is the fact's type string (docs/events.md). For a `transition_rejected`
    row, `state_type` is the refused proposal's state (if it carried one) and
    `message` the ledger's reason.
    """

    seq: int | None
    occurred_at: datetime
    kind: str
    flow_run_id: str
    task_run_id: str | None
    task_slug: str | None
    map_index: int | None
    state_type: str | None
    message: str | None
    attempt: int | None
    final: bool | None
    command_id: str | None
    """The command this fact answers (or refuses)."""
    worker_id: str | None
    """The process that caused it: the proposing worker, the client, the ledger."""
    event_id: str


def timeline(events: Iterable[Event], task_run_id: str | None = None) -> list[TimelineRow]:
    """One row per fact, in ledger order: of the whole run, or of one task run.

    Commands are not facts and are left out. A fact delivered twice (same
    `event_id`) is one fact, as in the fold. Rejections carry no task slug, so
    theirs is taken from the run's earlier facts.
    """
    rows: list[TimelineRow] = []
    for fact, task in _distinct_facts(events):
        if task_run_id is None or fact.task_run_id == task_run_id:
            rows.append(_row(fact, task))
    return rows


def _distinct_facts(events: Iterable[Event]) -> Iterator[tuple[Fact, TaskKey]]:
    """Each fact once, with the (slug, map_index) of its task run when known."""
    seen: set[str] = set()
    tasks: dict[str, TaskKey] = {}
    for event in events:
        if not isinstance(event, Fact) or event.event_id in seen:
            continue
        seen.add(event.event_id)
        run = event.task_run_id
        if run is None:
            yield event, _NO_TASK
            continue
        if event.task_slug is not None:
            tasks.setdefault(run, (event.task_slug, event.map_index))
        yield event, tasks.get(run, _NO_TASK)


Details = tuple[str | None, str | None, int | None, bool | None]
"""(state_type, message, attempt, final) of one fact."""


def _row(fact: Fact, task: TaskKey) -> TimelineRow:
    state_type, message, attempt, final = _DETAILS.get(type(fact), _no_details)(fact)
    worker = fact.cause.worker
    return TimelineRow(
        seq=fact.seq,
        occurred_at=fact.occurred_at,
        kind=fact.type,
        flow_run_id=fact.flow_run_id,
        task_run_id=fact.task_run_id,
        task_slug=task[0],
        map_index=task[1],
        state_type=state_type,
        message=message,
        attempt=attempt,
        final=final,
        command_id=fact.cause.command_id,
        worker_id=worker.id if worker is not None else None,
        event_id=fact.event_id,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _state(blob: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    blob = blob or {}
    return _text(blob.get("type")), _text(blob.get("message"))


def _task_run_transitioned(fact: Fact) -> Details:
    assert isinstance(fact, TaskRunTransitioned)
    return *_state(fact.state), fact.attempt, fact.final


def _flow_run_transitioned(fact: Fact) -> Details:
    assert isinstance(fact, FlowRunTransitioned)
    return *_state(fact.state), None, None


def _transition_rejected(fact: Fact) -> Details:
    assert isinstance(fact, TransitionRejected)
    return _state(fact.proposed)[0], fact.reason, None, None


def _flow_run_created(fact: Fact) -> Details:
    assert isinstance(fact, FlowRunCreated)
    ref = fact.flow_ref
    return None, ref.path if ref.kind == "import" else ref.location, None, None


def _work_dispatched(fact: Fact) -> Details:
    assert isinstance(fact, WorkDispatched)
    return None, None, fact.work.attempt, None


def _heartbeat_recorded(fact: Fact) -> Details:
    assert isinstance(fact, HeartbeatRecorded)
    return None, None, fact.attempt, None


def _dead_lettered(fact: Fact) -> Details:
    assert isinstance(fact, DeadLettered)
    return None, fact.reason, None, None


def _no_details(fact: Fact) -> Details:
    return None, None, None, None


_DETAILS: dict[type[Fact], Callable[[Fact], Details]] = {
    TaskRunTransitioned: _task_run_transitioned,
    FlowRunTransitioned: _flow_run_transitioned,
    TransitionRejected: _transition_rejected,
    FlowRunCreated: _flow_run_created,
    WorkDispatched: _work_dispatched,
    HeartbeatRecorded: _heartbeat_recorded,
    DeadLettered: _dead_lettered,
}
