"""A bounded, least-recently-used set of flow-run views, weighed by their task runs.

A view's memory grows with its task runs (a 10,000-way map is 10,000 records),
so the bound is on task runs, not on views: the api's memory then follows the
runs being worked on, not every run there ever was. A view that falls out is
folded again from the store when next needed (its own history, nothing more).
"""

from __future__ import annotations

from collections import OrderedDict

from engine.orchestration import FlowRunView

__all__ = ["ViewCache", "weight"]


def weight(view: FlowRunView) -> int:
    """What a view costs in the cache: one for the run, one per task run."""
    return 1 + len(view.task_runs)


class ViewCache:
    """Views by flow run id; `trim` evicts the least recently used down to `capacity`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a view cache holds at least one task run")
        self.capacity = capacity
        self._views: OrderedDict[str, FlowRunView] = OrderedDict()
        self._weights: dict[str, int] = {}
        self.total = 0
        """Sum of the weights held."""

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, flow_run_id: str) -> bool:
        return flow_run_id in self._views

    def get(self, flow_run_id: str) -> FlowRunView | None:
        view = self._views.get(flow_run_id)
        if view is not None:
            self._views.move_to_end(flow_run_id)
        return view

    def put(self, view: FlowRunView) -> None:
        """Hold `view` as the most recently used; nothing is evicted until `trim`.

        Eviction waits for `trim` so that a view is never dropped between its
        fold and the commit of the records it was folded from.
        """
        key = view.flow_run_id
        self.total += weight(view) - self._weights.get(key, 0)
        self._weights[key] = weight(view)
        self._views[key] = view
        self._views.move_to_end(key)

    def trim(self) -> None:
        """Evict least recently used views until within capacity (the newest always stays)."""
        while self.total > self.capacity and len(self._views) > 1:
            key, _ = self._views.popitem(last=False)
            self.total -= self._weights.pop(key)
