"""The read model's fold: views equal the engine's, whatever is cached, across restarts."""

from __future__ import annotations

import functools
from pathlib import Path

from engine.flow_runner import FlowRunner, RunOutcome
from events import encode
from examples.etl import flow as etl_flow
from examples.failing import flow as failing_flow
from services.readmodel.model import ReadModel
from services.readmodel.shapes import flow_run_json
from services.readmodel.store import StoreIdentity, open_store, store_path

IDENTITY = StoreIdentity(ledger_topic="unit.ledger")


@functools.cache
def _runs() -> tuple[RunOutcome, ...]:
    return (
        FlowRunner(etl_flow).run(parameters={"limit": 3}),
        FlowRunner(failing_flow).run(),
        FlowRunner(etl_flow).run(parameters={"limit": 5}),
    )


def _interleaved() -> list[bytes]:
    """The runs' records as one partition would hold them: interleaved, one each in turn."""
    queues = [list(outcome.events) for outcome in _runs()]
    values: list[bytes] = []
    while any(queues):
        for queue in queues:
            if queue:
                values.append(encode(queue.pop(0)))
    return values


def _fold(model: ReadModel, values: list[bytes], start: int, batch: int = 7) -> None:
    for first in range(start, len(values), batch):
        chunk = values[first : first + batch]
        for offset, value in enumerate(chunk, start=first):
            model.apply_record(value, (0, offset))
        model.commit({0: first + len(chunk)})


def test_views_summaries_and_counts_are_right_even_when_the_cache_holds_one_task_run() -> None:
    model = ReadModel.open(open_store(None, IDENTITY), cache_task_runs=1)
    _fold(model, _interleaved(), 0)
    roomy = ReadModel.open(open_store(None, IDENTITY), cache_task_runs=10_000)
    _fold(roomy, _interleaved(), 0)
    for outcome in _runs():
        assert model.view(outcome.flow_run_id) == outcome.view
        stored = model.store.run(outcome.flow_run_id)
        assert stored is not None
        assert stored.summary == flow_run_json(outcome.view)
    assert len(model.cache) == 1
    assert model.fold_errors == 0
    assert model.counters() == roomy.counters()


def test_a_reopened_model_resumes_at_its_position_with_its_counters(tmp_path: Path) -> None:
    path = store_path(tmp_path, "unit.")
    values = _interleaved()
    half = len(values) // 2
    first = ReadModel.open(open_store(path, IDENTITY), cache_task_runs=10_000)
    _fold(first, values[:half], 0)
    first.store.close()
    resumed = ReadModel.open(open_store(path, IDENTITY), cache_task_runs=10_000)
    assert resumed.store.positions() == {0: half}
    assert resumed.events_folded == half
    _fold(resumed, values, half)
    assert resumed.records_read == len(values) - half  # only the tail was read again
    for outcome in _runs():
        assert resumed.view(outcome.flow_run_id) == outcome.view
    whole = ReadModel.open(open_store(None, IDENTITY), cache_task_runs=10_000)
    _fold(whole, values, 0)
    assert resumed.counters() == whole.counters()


def test_a_runs_stored_history_is_exactly_its_own_records_in_ledger_order() -> None:
    model = ReadModel.open(open_store(None, IDENTITY), cache_task_runs=10_000)
    _fold(model, _interleaved(), 0)
    for outcome in _runs():
        stored = model.store.run_values(outcome.flow_run_id)
        assert stored == [encode(event) for event in outcome.events]
