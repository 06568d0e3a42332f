"""Prefect 1's task-run inspection API (``prefect.backend.TaskRunView``) over the ledger.

    parent = await TaskRunView.from_task_slug("inc-1", flow_run_id, client=client)
    await parent.get_result()                      # [1, 2, 3]: the children's results
    async for child in parent.iter_mapped():       # map_index order
        print(child.map_index, child.state, await child.get_result())

A view is a snapshot: one read of its flow run's ledger partition, folded with
the engine's `evolve`. It never changes; `get_latest()` reads the ledger again
and returns a new view. Besides Prefect's attributes it carries what the ledger
keeps for free: `states`, every state the task run was recorded in, in order.

The snapshot is built from events (`LedgerSnapshot.of`), so the same code works
on a local run's events (`FlowRunner(flow).run().events`) without a broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.orchestration import FlowRunView, TaskRunRecord, evolve
from engine.result_store import ResultStore
from engine.state import State
from events import Event, TaskRunTransitioned

__all__ = [
    "LedgerReader",
    "LedgerSnapshot",
    "TaskRunNotFinished",
    "TaskRunView",
    "load_result",
]


class LedgerReader(Protocol):
    """What a view needs to read the ledger again (`services.client.client.Client` is one)."""

    @property
    def result_store(self) -> ResultStore: ...

    def ledger_events(self, flow_run_id: str) -> AsyncIterator[Event]:
        """The run's ledger events recorded so far, in order; ends at the partition's end."""
        ...


class TaskRunNotFinished(RuntimeError):
    """A result was asked of a task run (or a mapped child) that is not finished yet."""


# ----- snapshots --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """A flow run's view and every task run's accepted transitions, as of one read."""

    view: FlowRunView
    transitions: Mapping[str, tuple[TaskRunTransitioned, ...]]
    """The TaskRunTransitioned facts the fold applied, by task run id, in seq order."""

    @staticmethod
    def of(events: Iterable[Event], flow_run_id: str) -> LedgerSnapshot:
        """Fold `events` (one flow run's, in ledger order) and keep each task run's history."""
        view = FlowRunView(flow_run_id=flow_run_id)
        history: dict[str, list[TaskRunTransitioned]] = {}
        for event in events:
            if not isinstance(event, TaskRunTransitioned):
                view = evolve(view, event)
                continue
            run_id = event.task_run_id or ""
            before = view.task_runs.get(run_id)
            view = evolve(view, event)
            # The fold skips redelivered facts and leaves the record as it was: the
            # history must skip them too, or a retry would seem to happen twice.
            if view.task_runs.get(run_id) is not before:
                history.setdefault(run_id, []).append(event)
        return LedgerSnapshot(view, {k: tuple(v) for k, v in history.items()})

    @staticmethod
    async def read(reader: LedgerReader, flow_run_id: str) -> LedgerSnapshot:
        """The snapshot of the run's ledger as it is now; `LookupError` for an unknown run."""
        events = [event async for event in reader.ledger_events(flow_run_id)]
        snapshot = LedgerSnapshot.of(events, flow_run_id)
        if not snapshot.view.created:
            raise LookupError(
                f"flow run {flow_run_id} is not on the ledger (unknown id, refused, "
                "or not created yet)"
            )
        return snapshot


# ----- results ----------------------------------------------------------------------------


def load_result(
    view: FlowRunView, task_slug: str, map_index: int | None, store: ResultStore
) -> Any:
    """A finished task run's result value; for a Mapped parent, its children's, in order.

    Like Prefect, results require completion: `TaskRunNotFinished` while the run
    (or, for a Mapped parent, any child) is not finished, because until then its
    result may still change. Blocking: values may be read from the result store.
    """
    record = _record(view, task_slug, map_index)
    _require_finished(record)
    if record.state_type == "Mapped" and map_index is None:
        children = [_record(view, task_slug, i) for i in range(view.children.get(task_slug, 0))]
        for child in children:
            _require_finished(child, parent=record)
        return [_value(child.state, store) for child in children]
    return _value(record.state, store)


def _require_finished(record: TaskRunRecord, parent: TaskRunRecord | None = None) -> None:
    if record.rests_finished:
        return
    # A non-final state is one the run only passes through (a Failed before its Retrying).
    step = "" if record.final else " (on its way to another state)"
    what = f"{record.task_run_id} is {record.state_type}{step}"
    if parent is not None:
        what = f"{parent.task_run_id} is Mapped but its child {what}"
    raise TaskRunNotFinished(
        f"task run {what}: results require completion; wait for it, then call get_latest()"
    )


def _value(blob: Mapping[str, Any], store: ResultStore) -> Any:
    result_blob = blob.get("_result")
    if not isinstance(result_blob, dict) or result_blob.get("type") == "NoResultType":
        return None
    return store.hydrate(result_blob).value


def _record(view: FlowRunView, task_slug: str, map_index: int | None) -> TaskRunRecord:
    record = view.record(task_slug, map_index)
    if record is None:
        raise _missing(view, task_slug, map_index)
    return record


def _missing(view: FlowRunView, task_slug: str, map_index: int | None) -> LookupError:
    """Say which part of the address is wrong: the slug, the index, or neither (yet)."""
    run = f"flow run {view.flow_run_id}"
    tasks = view.index.tasks if view.index is not None else {}
    if task_slug not in tasks:
        known = ", ".join(sorted(tasks)) or "none"
        return LookupError(f"{run} has no task {task_slug!r} (its task slugs: {known})")
    if map_index is not None:
        n = view.children.get(task_slug)
        if n is None:
            return LookupError(f"{run}: task {task_slug!r} has no mapped children")
        return LookupError(
            f"{run}: task {task_slug!r} has {n} mapped children, none with map_index {map_index}"
        )
    return LookupError(f"{run}: task {task_slug!r} has no task run yet")


# ----- the view ---------------------------------------------------------------------------

_NOT_LOADED: Any = object()


@dataclass(slots=True)
class _ResultCache:
    # The one mutable part of a view: Prefect's views cache their loaded result.
    value: Any = _NOT_LOADED


@dataclass(frozen=True, slots=True, eq=False)
class TaskRunView:
    """One task run as the ledger knew it when the view was made (Prefect's TaskRunView).

    `map_index` is None for an unmapped run and for a mapped parent (Prefect's -1).
    `state` and `states` are deserialized from the ledger's blobs: their results
    are references; `get_result()` loads the value (and caches it).
    """

    task_run_id: str
    task_slug: str
    flow_run_id: str
    map_index: int | None
    name: str
    """The task's name (the ledger records no per-run name)."""
    state: State
    states: tuple[State, ...] = field(repr=False)
    """Every state the ledger recorded for this task run, in order, ending with `state`."""
    transitions: tuple[TaskRunTransitioned, ...] = field(repr=False)
    """The facts behind `states` (when, caused by which worker or command)."""
    attempt: int
    seq: int
    _snapshot: LedgerSnapshot = field(repr=False)
    _store: ResultStore = field(repr=False)
    _reader: LedgerReader | None = field(repr=False)
    _cache: _ResultCache = field(default_factory=_ResultCache, repr=False)

    # -- constructors -------------------------------------------------------------

    @classmethod
    def from_snapshot(
        cls,
        snapshot: LedgerSnapshot,
        task_slug: str,
        map_index: int | None = None,
        *,
        store: ResultStore,
        reader: LedgerReader | None = None,
    ) -> TaskRunView:
        """The view of one task run in a snapshot; `reader` is needed only for get_latest()."""
        record = _record(snapshot.view, task_slug, _index(map_index))
        transitions = snapshot.transitions.get(record.task_run_id, ())
        index = snapshot.view.index
        task = index.tasks.get(record.slug) if index is not None else None
        return cls(
            task_run_id=record.task_run_id,
            task_slug=record.slug,
            flow_run_id=snapshot.view.flow_run_id,
            map_index=record.map_index,
            name=task.name if task is not None else record.slug,
            state=State.deserialize(record.state),
            states=tuple(State.deserialize(t.state) for t in transitions),
            transitions=transitions,
            attempt=record.attempt,
            seq=record.seq,
            _snapshot=snapshot,
            _store=store,
            _reader=reader,
        )

    @classmethod
    async def from_task_slug(
        cls,
        task_slug: str,
        flow_run_id: str,
        map_index: int | None = None,
        *,
        client: LedgerReader,
    ) -> TaskRunView:
        """The task run `task_slug` (child `map_index`; None or -1 for no index) of a flow run.

        `LookupError` for an unknown flow run, slug or index.
        """
        snapshot = await LedgerSnapshot.read(client, flow_run_id)
        return cls.from_snapshot(
            snapshot, task_slug, map_index, store=client.result_store, reader=client
        )

    @classmethod
    async def from_task_run_id(cls, task_run_id: str, *, client: LedgerReader) -> TaskRunView:
        """The task run with this id (``FLOW_RUN_ID/TASK_SLUG[/MAP_INDEX]``)."""
        # Imported here: the client module builds its own entry point on this one.
        from services.client.client import flow_run_id_of_task_run

        flow_run_id = flow_run_id_of_task_run(task_run_id)
        snapshot = await LedgerSnapshot.read(client, flow_run_id)
        record = snapshot.view.task_runs.get(task_run_id)
        if record is None:
            raise LookupError(f"flow run {flow_run_id} has no task run {task_run_id}")
        return cls.from_snapshot(
            snapshot, record.slug, record.map_index, store=client.result_store, reader=client
        )

    # -- Prefect's methods --------------------------------------------------------

    async def get_latest(self) -> TaskRunView:
        """A new view of this task run from the ledger as it is now, keeping the loaded result."""
        if self._reader is None:
            raise RuntimeError(
                f"the view of {self.task_run_id} was made from a snapshot without a reader: "
                "there is no ledger to read its latest state from"
            )
        latest = await TaskRunView.from_task_run_id(self.task_run_id, client=self._reader)
        # A copy of the cache, not the cache itself: an older view must keep
        # refusing a result its own (unfinished) state does not have.
        return dataclasses.replace(latest, _cache=_ResultCache(self._cache.value))

    async def get_result(self) -> Any:
        """The task run's return value, loaded on the first call and cached.

        For a Mapped parent the list of its children's results, in map_index order.
        `TaskRunNotFinished` while it (or a child) is not finished.
        """
        if self._cache.value is _NOT_LOADED:
            view, store = self._snapshot.view, self._store
            self._cache.value = await asyncio.to_thread(
                load_result, view, self.task_slug, self.map_index, store
            )
        return self._cache.value

    async def iter_mapped(self) -> AsyncIterator[TaskRunView]:
        """The children of a Mapped parent, one at a time, in map_index order.

        They come from the same snapshot as the parent. `TypeError` if this task
        run is not a mapped parent.
        """
        if self.map_index is not None or not self.state.is_mapped():
            raise TypeError(f"task run {self.task_run_id} is not a mapped task run")
        view = self._snapshot.view
        for index in range(view.children.get(self.task_slug, 0)):
            # A child the snapshot does not hold yet (read between the parent's
            # Mapped and the children's Pending) is left out, as Prefect's query would.
            if view.record(self.task_slug, index) is not None:
                yield TaskRunView.from_snapshot(
                    self._snapshot, self.task_slug, index, store=self._store, reader=self._reader
                )


def _index(map_index: int | None) -> int | None:
    # Prefect addresses unmapped runs and mapped parents as map_index=-1.
    return None if map_index == -1 else map_index
