"""The live progress view of a flow run (rich), fed by `Client.subscribe`.

`RunProgress` is a plain model of what a watcher has seen (one row per task run,
with the states it went through); `render` turns it into a rich table. Large maps
collapse into one row per mapped task with counts by state, so a run over
10,000 inputs stays one screen.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine.orchestration import FlowRunView, TaskRunRecord
from engine.orchestration.rules import FAILED, FINISHED, RUNNING, SUCCESSFUL
from services.client.client import Change, Client

__all__ = ["RunProgress", "TaskRow", "render", "state_style", "watch_run"]

_HISTORY_SHOWN = 8


def state_style(state: str | None) -> str:
    """The colour of a state name: green success, red failure, yellow running/waiting."""
    if state is None:
        return "dim"
    if state in SUCCESSFUL:
        return "green"
    if state in FAILED or state in ("Cancelled", "ClientFailed"):
        return "red"
    if state in RUNNING:
        return "yellow"
    if state in ("Retrying", "Paused", "Scheduled", "Resume"):
        return "magenta"
    return "cyan"


@dataclass
class TaskRow:
    """One task run as seen so far."""

    task_run_id: str
    slug: str
    map_index: int | None
    state: str
    message: str | None = None
    attempt: int = 1
    final: bool = True
    history: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.slug if self.map_index is None else f"{self.slug}[{self.map_index}]"

    @property
    def ran(self) -> bool:
        """The body was started at least once (a Running claim was accepted)."""
        return "Running" in self.history

    @property
    def cache_hit(self) -> bool:
        """Seen to end Cached without ever running: the result came from a cache."""
        return self.state == "Cached" and bool(self.history) and not self.ran

    @property
    def note(self) -> str:
        notes = []
        if self.attempt > 1:
            notes.append(f"attempt {self.attempt}")
        if self.cache_hit:
            notes.append("cache hit")
        return ", ".join(notes)


@dataclass
class RunProgress:
    """What a watcher knows about one flow run."""

    flow_run_id: str
    flow_state: str | None = None
    flow_message: str | None = None
    rows: dict[str, TaskRow] = field(default_factory=dict)
    rejections: list[str] = field(default_factory=list)
    run_rejected: str | None = None
    """The ledger's reason when it refused to start the run."""

    def apply(self, change: Change) -> None:
        """Take one change into account (changes of other runs are ignored)."""
        if change.flow_run_id != self.flow_run_id:
            return
        if change.kind == "flow_run":
            self.flow_state, self.flow_message = change.state_type, change.message
        elif change.kind == "rejected":
            self.rejections.append(change.message or "")
            if change.ends_flow_run and self.flow_state is None:
                self.run_rejected = change.message or "rejected"
        elif change.task_run_id is not None and change.state_type is not None:
            row = self.rows.get(change.task_run_id)
            if row is None:
                row = TaskRow(
                    change.task_run_id, change.task_slug or "?", change.map_index, change.state_type
                )
                self.rows[change.task_run_id] = row
            row.state, row.message, row.final = change.state_type, change.message, change.final
            row.attempt = change.attempt or row.attempt
            row.history.append(change.state_type)

    @classmethod
    def from_view(cls, view: FlowRunView) -> RunProgress:
        """A progress model of a folded view: current states, in plan order, no history."""
        progress = cls(view.flow_run_id, view.flow_state_type)
        progress.flow_message = (view.flow_state or {}).get("message")
        order = {t.slug: i for i, t in enumerate(view.plan.tasks)} if view.created else {}

        def position(record: TaskRunRecord) -> tuple[int, str, int]:
            index = -1 if record.map_index is None else record.map_index
            return order.get(record.slug, len(order)), record.slug, index

        for record in sorted(view.task_runs.values(), key=position):
            progress.rows[record.task_run_id] = TaskRow(
                record.task_run_id,
                record.slug,
                record.map_index,
                record.state_type,
                record.state.get("message"),
                record.attempt,
                record.final,
            )
        return progress

    @property
    def finished(self) -> bool:
        return self.run_rejected is not None or self.flow_state in FINISHED

    @property
    def successful(self) -> bool:
        return self.run_rejected is None and self.flow_state in SUCCESSFUL

    def counts(self) -> Counter[str]:
        """Task runs by current state."""
        return Counter(row.state for row in self.rows.values())


def _history(row: TaskRow) -> str:
    shown = row.history[-_HISTORY_SHOWN:]
    prefix = "… → " if len(row.history) > len(shown) else ""
    return prefix + " → ".join(shown)


Item = TaskRow | tuple[str, list[TaskRow]]
"""A table row: one task run, or a big map's children under their slug."""


def _ordered_rows(progress: RunProgress, max_children: int) -> list[Item]:
    """Rows in first-seen order; the children of a big map grouped under their slug."""
    children: dict[str, list[TaskRow]] = {}
    for row in progress.rows.values():
        if row.map_index is not None:
            children.setdefault(row.slug, []).append(row)
    out: list[Item] = []
    grouped: set[str] = set()
    for row in progress.rows.values():
        kids = children.get(row.slug, [])
        if row.map_index is not None and len(kids) > max_children:
            if row.slug not in grouped:
                grouped.add(row.slug)
                out.append((row.slug, kids))
            continue
        out.append(row)
    return out


def render(progress: RunProgress, *, max_children: int = 10) -> RenderableType:
    """The progress as a rich table with a one-line flow summary above it."""
    table = Table(expand=False, show_lines=False, header_style="bold")
    table.add_column("task run")
    table.add_column("state")
    table.add_column("history", overflow="fold")
    table.add_column("note")
    for item in _ordered_rows(progress, max_children):
        if isinstance(item, tuple):
            slug, kids = item
            counts = Counter(k.state for k in kids)
            summary = Text(", ").join(
                Text(f"{n} {s}", style=state_style(s)) for s, n in sorted(counts.items())
            )
            table.add_row(f"{slug}[0..{len(kids) - 1}]", summary, "", f"{len(kids)} children")
            continue
        table.add_row(
            item.label, Text(item.state, style=state_style(item.state)), _history(item), item.note
        )
    flow_state = progress.flow_state or "waiting for the ledger"
    title = Text.assemble(
        ("flow run ", "bold"),
        progress.flow_run_id,
        "  ",
        (flow_state, f"bold {state_style(progress.flow_state)}"),
    )
    if progress.flow_message:
        title.append(f"  {progress.flow_message}", style="dim")
    parts: list[RenderableType] = [title, table] if progress.rows else [title]
    if progress.run_rejected:
        parts.append(Text(f"rejected: {progress.run_rejected}", style="bold red"))
    return Group(*parts)


async def watch_run(
    client: Client,
    flow_run_id: str,
    *,
    console: Console | None = None,
    timeout: float | None = None,
    live: bool = True,
) -> RunProgress:
    """Follow a flow run until it finishes (or is refused), drawing the live table.

    Reads the run's history from the beginning, so nothing is missed however late
    the watcher starts. `TimeoutError` after `timeout` seconds.
    """
    console = console or Console()
    progress = RunProgress(flow_run_id)
    subscription = client.subscribe(flow_run_id, from_beginning=True)
    with Live(render(progress), console=console, auto_refresh=False, transient=False) as view:
        try:
            async with asyncio.timeout(timeout), subscription:
                async for change in subscription:
                    progress.apply(change)
                    if live:
                        view.update(render(progress), refresh=True)
                    if progress.finished:
                        break
        finally:
            view.update(render(progress), refresh=True)
    if not console.is_terminal:
        console.line()  # Live leaves the cursor after the table when it cannot redraw
    return progress
