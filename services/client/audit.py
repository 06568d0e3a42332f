"""The audit trail and time travel on the command line: argument types, tables, JSON lines.

`runledger history` and `runledger states` (services/client/cli.py) read a run's facts
through the client; everything they show is what the engine folds from them
(`timeline`, `fold_as_of`). This module only shapes it for people (rich tables)
and for tools (one JSON object per line).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from engine.orchestration import FlowRunView, TimelineRow
from events import Fact, FlowRunCreated, TransitionRejected
from services.client.watch import RunProgress, state_style

__all__ = [
    "absence",
    "as_of_time",
    "iso",
    "row_record",
    "state_records",
    "states_table",
    "task_label",
    "task_ref",
    "timeline_table",
]


# ----- argument types (argparse turns ArgumentTypeError into a usage error, exit 2) ------


def as_of_time(text: str) -> datetime:
    """An ISO-8601 time with a zone (``2024-05-01T12:00:00Z``, ``...+02:00``).

    A time without a zone is refused rather than guessed: an audit must name one instant.
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 time with a zone, e.g. 2024-05-01T12:00:00Z, got {text!r}"
        ) from None
    if value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add one, e.g. {text}Z for UTC or {text}+02:00"
        )
    return value


def task_ref(text: str) -> tuple[str, int | None]:
    """``SLUG`` or ``SLUG/INDEX`` (a mapped child) as (slug, map_index)."""
    slug, sep, index = text.rpartition("/")
    if not sep:
        slug, index = text, ""
    elif not index.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected TASK_SLUG or TASK_SLUG/MAP_INDEX (a number), got {text!r}"
        )
    if not slug.strip():
        raise argparse.ArgumentTypeError(f"expected TASK_SLUG[/MAP_INDEX], got {text!r}")
    return slug, int(index) if index else None


# ----- shaping -----------------------------------------------------------------------------


def iso(moment: datetime, timespec: str = "auto") -> str:
    """The UTC ISO-8601 form events use on the wire (``...Z``)."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def task_label(slug: str | None, map_index: int | None) -> str:
    """``slug`` or ``slug[index]``, as the live table shows task runs."""
    label = slug or "?"
    return label if map_index is None else f"{label}[{map_index}]"


def row_record(row: TimelineRow) -> dict[str, Any]:
    """One timeline row as a JSON object (every field; times as ISO-8601 UTC)."""
    return dataclasses.asdict(row) | {"occurred_at": iso(row.occurred_at)}


def _subject(row: TimelineRow) -> str:
    if row.task_run_id is None:
        return "flow run"
    if row.task_slug is None:  # a refusal naming a task run the ledger never knew
        return row.task_run_id.removeprefix(f"{row.flow_run_id}/")
    return task_label(row.task_slug, row.map_index)


def _state_cell(row: TimelineRow) -> Text:
    """The new state of a transition; what happened, dimmed, for the other facts."""
    if row.kind == "transition_rejected":
        refused = f" {row.state_type}" if row.state_type else ""
        return Text(f"refused{refused}", style="bold red")
    if row.state_type is None:
        return Text(_FACT_LABELS.get(row.kind, row.kind), style="dim")
    return Text(row.state_type, style=state_style(row.state_type))


_FACT_LABELS = {
    "flow_run_created": "created",
    "flow_run_transitioned": "transition",
    "task_run_transitioned": "transition",
    "transition_rejected": "rejected",
    "work_dispatched": "dispatched",
    "heartbeat_recorded": "heartbeat",
    "dead_lettered": "dead letter",
}


def timeline_table(rows: Sequence[TimelineRow], *, one_task_run: bool = False) -> Table:
    """The audit trail as a table: one line per fact, in ledger order.

    Times show as UTC times of day under a title naming the day(s), and
    `one_task_run` (the ``--task`` view) moves the task run into the title: both
    leave the width to the messages. Command and event ids are left to
    ``--json``: at full length they would squeeze the messages out.
    """
    days = sorted({row.occurred_at.astimezone(UTC).date().isoformat() for row in rows})
    span = days[0] if len(days) == 1 else " to ".join(days[:: len(days) - 1]) if days else ""
    title = f"times UTC, {span}" if span else "times UTC"
    if one_task_run and rows:
        title = f"{_subject(rows[0])} — {title}"
    table = Table(header_style="bold", title=title, title_justify="left")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    if not one_task_run:
        table.add_column("task run", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("message", overflow="fold", ratio=1, min_width=12)
    table.add_column("worker", overflow="fold", max_width=20)
    for row in rows:
        cells = [
            "" if row.seq is None else str(row.seq),
            row.occurred_at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3],
            *(() if one_task_run else (_subject(row),)),
            _state_cell(row),
            "" if row.attempt is None else str(row.attempt),
            row.message or "",
            row.worker_id or "",
        ]
        table.add_row(*cells)
    return table


def state_records(view: FlowRunView) -> list[dict[str, Any]]:
    """The flow run's state, then each task run's in plan order, as JSON objects."""
    progress = RunProgress.from_view(view)
    flow = {
        "kind": "flow_run",
        "flow_run_id": view.flow_run_id,
        "task_run_id": None,
        "task_slug": None,
        "map_index": None,
        "state_type": progress.flow_state,
        "message": progress.flow_message,
        "attempt": None,
        "final": None,
    }
    tasks = [
        {
            "kind": "task_run",
            "flow_run_id": view.flow_run_id,
            "task_run_id": row.task_run_id,
            "task_slug": row.slug,
            "map_index": row.map_index,
            "state_type": row.state,
            "message": row.message,
            "attempt": row.attempt,
            "final": row.final,
        }
        for row in progress.rows.values()
    ]
    return [flow, *tasks]


def states_table(view: FlowRunView, as_of: datetime | None) -> RenderableType:
    """A flow-run line (its state, as of when) above a table of its task runs' states."""
    progress = RunProgress.from_view(view)
    title = Text.assemble(
        ("flow run ", "bold"),
        view.flow_run_id,
        "  ",
        (progress.flow_state or "", f"bold {state_style(progress.flow_state)}"),
    )
    if progress.flow_message:
        title.append(f"  {progress.flow_message}", style="dim")
    title.append(f"  as of {iso(as_of) if as_of is not None else 'now'}")
    table = Table(header_style="bold")
    table.add_column("task run")
    table.add_column("map index", justify="right")
    table.add_column("state")
    table.add_column("attempt", justify="right")
    table.add_column("message", overflow="fold")
    for row in progress.rows.values():
        table.add_row(
            row.slug,
            "" if row.map_index is None else str(row.map_index),
            Text(row.state, style=state_style(row.state)),
            str(row.attempt),
            row.message or "",
        )
    return Group(title, table) if progress.rows else title


def absence(flow_run_id: str, facts: Sequence[Fact], as_of: datetime | None) -> str:
    """Why a flow run has no view (as of `as_of`): unknown, refused, or created later."""
    created = next((f for f in facts if isinstance(f, FlowRunCreated)), None)
    if created is not None and as_of is not None:
        return (
            f"no such flow run {flow_run_id} as of {iso(as_of)} "
            f"(it was created at {iso(created.occurred_at)})"
        )
    refusal = next(
        (
            f
            for f in facts
            if isinstance(f, TransitionRejected) and f.command_type == "run_requested"
        ),
        None,
    )
    if refusal is not None:
        return f"flow run {flow_run_id} was rejected: {refusal.reason}"
    return f"no such flow run {flow_run_id}"
