"""The fold that keeps the read model: ledger records in, views, summaries and counters out.

Every record is folded with the engine's `evolve` (the same fold as the ledger
and the client) into its run's view, which lives in a bounded `ViewCache`; the
record itself, the run's new summary and the partition's new position go to the
`ReadStore` in one SQLite transaction per batch (`commit`). A view that is not
cached is folded again from the run's stored records, so memory follows the
runs in use while the store holds every run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.orchestration import FlowRunView, TaskRunRecord, evolve
from events import Event, EventDecodeError, TaskRunTransitioned, decode
from services.readmodel.cache import ViewCache
from services.readmodel.shapes import flow_run_json
from services.readmodel.store import ReadStore, StoredFact, StoredRun

__all__ = ["ReadModel", "Where", "fold_records"]

log = logging.getLogger(__name__)

Where = tuple[int, int]
"""(partition, offset) of a ledger record."""


def fold_records(values: Iterable[bytes], flow_run_id: str) -> FlowRunView:
    """One run's view from its stored records, skipping what the live fold skipped.

    A record that cannot be decoded or folded was counted as an error when it
    was read from the ledger (`ReadModel.apply_record`); folding again must
    give the view the live fold had, not stop there.
    """
    view = FlowRunView(flow_run_id=flow_run_id)
    for value in values:
        try:
            view = evolve(view, decode(value))
        except ValueError:  # EventDecodeError, SequenceGap, ForeignEvent
            continue
    return view


@dataclass
class ReadModel:
    """Every flow run's records and summary on disk, the runs in use in memory.

    State counts are maintained per event (old state -1, new state +1) so that a
    scrape of /metrics costs nothing however many task runs there are; they are
    committed with each batch, so a restart resumes them with the positions.
    """

    store: ReadStore
    cache: ViewCache
    flow_states: Counter[str] = field(default_factory=Counter)
    task_states: Counter[str] = field(default_factory=Counter)
    events_folded: int = 0
    fold_errors: int = 0
    undecodable: int = 0
    caught_up: bool = False
    lag: int = 0
    """Ledger records not folded yet: visible end minus position, summed."""
    ledger_topic: str = ""
    """The topic folded (readers check it is theirs)."""
    ledger_partitions: int | None = None
    """How many partitions it has, once the tail has assigned them."""
    records_read: int = 0
    """Ledger records this process has read (not restored: a restart reads only the tail)."""
    _facts: list[StoredFact] = field(default_factory=list)
    _dirty: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, store: ReadStore, cache_task_runs: int) -> ReadModel:
        """The model over `store`, with the counters it committed last."""
        model = cls(store=store, cache=ViewCache(cache_task_runs))
        saved = store.counters()
        model.flow_states.update(saved.get("flow_states", {}))
        model.task_states.update(saved.get("task_states", {}))
        model.events_folded = int(saved.get("events_folded", 0))
        model.fold_errors = int(saved.get("fold_errors", 0))
        model.undecodable = int(saved.get("undecodable", 0))
        return model

    # -- folding ------------------------------------------------------------------------

    def apply_record(self, value: bytes | None, where: Where | None = None) -> None:
        """Decode and fold one ledger record value, found at `where` on the ledger."""
        self.records_read += 1
        try:
            event = decode(value or b"")
        except EventDecodeError as exc:
            self.undecodable += 1
            log.error("undecodable ledger record at %s: %s", where, exc)
            return
        self.apply(event, where, value)

    def apply(self, event: Event, where: Where | None = None, value: bytes | None = None) -> None:
        """Fold one ledger event (duplicates are skipped by `evolve`'s seq check).

        With `where`, the record is kept as part of the run's history, whether or
        not it could be folded: the history is what the ledger holds.
        """
        if where is not None:
            raw = value if value is not None else b""
            self._facts.append(StoredFact(event.flow_run_id, where[0], where[1], raw))
            self._dirty[event.flow_run_id] = where[0]
        old = self.view(event.flow_run_id) or FlowRunView(flow_run_id=event.flow_run_id)
        try:
            new = evolve(old, event)
        except ValueError as exc:  # SequenceGap / ForeignEvent: report, keep going
            self.fold_errors += 1
            log.error("cannot fold ledger event %s: %s", event.event_id, exc)
            self.cache.put(old)
            return
        self.cache.put(new)
        self.events_folded += 1
        _count_moves(self, old, new, event)

    def commit(self, positions: Mapping[int, int]) -> None:
        """Write what was folded since the last commit, and where each partition got to."""
        runs = [self._summary(run_id, partition) for run_id, partition in self._dirty.items()]
        self.store.commit(self._facts, runs, positions, self.counters())
        self._facts, self._dirty = [], {}
        self.cache.trim()

    def counters(self) -> dict[str, Any]:
        return {
            "flow_states": dict(self.flow_states),
            "task_states": dict(self.task_states),
            "events_folded": self.events_folded,
            "fold_errors": self.fold_errors,
            "undecodable": self.undecodable,
        }

    # -- reading ------------------------------------------------------------------------

    def view(self, flow_run_id: str) -> FlowRunView | None:
        """The run's current view: cached, or folded from its stored records; None if unknown."""
        view = self.cache.get(flow_run_id)
        if view is not None:
            return view
        values = self.store.run_values(flow_run_id)
        if not values:
            return None
        view = fold_records(values, flow_run_id)
        self.cache.put(view)
        if not self._dirty:
            # Never mid-batch: a view evicted before its records are committed would
            # be folded again from a store that lacks them.
            self.cache.trim()
        return view

    def task_run(self, task_run_id: str) -> tuple[FlowRunView, TaskRunRecord] | None:
        view = self.view(task_run_id.partition("/")[0])
        record = view.task_runs.get(task_run_id) if view is not None else None
        if view is None or record is None:
            return None
        return view, record

    def _summary(self, flow_run_id: str, partition: int) -> StoredRun:
        view = self.view(flow_run_id) or FlowRunView(flow_run_id=flow_run_id)
        moment = view.last_event_at.timestamp() if view.last_event_at is not None else None
        return StoredRun(flow_run_id, partition, view.flow_state_type, moment, flow_run_json(view))


def _count_moves(model: ReadModel, old: FlowRunView, new: FlowRunView, event: Event) -> None:
    _move(model.flow_states, old.flow_state_type, new.flow_state_type)
    if isinstance(event, TaskRunTransitioned) and event.task_run_id is not None:
        before = old.task_runs.get(event.task_run_id)
        after = new.task_runs.get(event.task_run_id)
        _move(
            model.task_states,
            before.state_type if before else None,
            after.state_type if after else None,
        )


def _move(counts: Counter[str], old: str | None, new: str | None) -> None:
    if old == new:
        return
    if old is not None:
        counts[old] -= 1
        if counts[old] <= 0:
            del counts[old]
    if new is not None:
        counts[new] += 1
