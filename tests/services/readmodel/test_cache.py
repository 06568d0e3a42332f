"""The view cache is bounded by task runs and evicts the least recently used view."""

from __future__ import annotations

import immutables
import pytest

from engine.orchestration import FlowRunView, TaskRunRecord
from services.readmodel.cache import ViewCache, weight


def _view(run: str, task_runs: int) -> FlowRunView:
    records = {
        f"{run}/t/{i}": TaskRunRecord(f"{run}/t/{i}", "t", i, 1, {}, "Pending")
        for i in range(task_runs)
    }
    return FlowRunView(flow_run_id=run, task_runs=immutables.Map(records))


def test_a_views_weight_is_its_task_runs_plus_one() -> None:
    assert weight(_view("a", 0)) == 1
    assert weight(_view("a", 7)) == 8


def test_trim_evicts_the_least_recently_used_views_down_to_capacity() -> None:
    cache = ViewCache(capacity=10)
    for run in ("a", "b", "c"):
        cache.put(_view(run, 3))  # 4 each
    assert cache.total == 12  # nothing is evicted before trim
    cache.get("a")  # now b is the least recently used
    cache.trim()
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert cache.total == 8


def test_the_newest_view_stays_even_when_it_alone_exceeds_the_capacity() -> None:
    cache = ViewCache(capacity=5)
    cache.put(_view("small", 1))
    cache.put(_view("map", 100))
    cache.trim()
    assert len(cache) == 1
    assert cache.get("map") is not None


def test_replacing_a_view_counts_only_its_new_weight() -> None:
    cache = ViewCache(capacity=100)
    cache.put(_view("a", 10))
    cache.put(_view("a", 2))
    assert cache.total == 3


def test_a_cache_must_hold_something() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ViewCache(0)
