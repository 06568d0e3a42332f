"""Verify's comparison of a ledger fold with the read model, on local-runner ledgers (no broker)."""

from __future__ import annotations

import functools

from engine.flow_runner import FlowRunner, RunOutcome
from events import encode
from examples.etl import flow as etl_flow
from examples.failing import flow as failing_flow
from services.readmodel.model import ReadModel
from services.readmodel.store import StoreIdentity, open_store
from services.readmodel.verify import Mismatch, PartitionFold, ReadModelCheck


@functools.cache
def _runs() -> tuple[RunOutcome, ...]:
    return (FlowRunner(etl_flow).run(parameters={"limit": 2}), FlowRunner(failing_flow).run())


def _values() -> list[bytes]:
    return [encode(event) for outcome in _runs() for event in outcome.events]


def _model() -> ReadModel:
    model = ReadModel.open(open_store(None, StoreIdentity(ledger_topic="unit.ledger")), 1000)
    for offset, value in enumerate(_values()):
        model.apply_record(value, (0, offset))
    model.commit({0: len(_values())})
    return model


def _fold(start: int = 0) -> PartitionFold:
    fold = PartitionFold(0, start, len(_values()), ledger_end=len(_values()))
    for offset, value in enumerate(_values()):
        if offset >= start:
            fold.add(offset, value)
    return fold


def _check(model: ReadModel, start: int = 0) -> list[Mismatch]:
    return ReadModelCheck(model.store, model.store.positions())(_fold(start))


def test_a_sound_read_model_has_no_mismatch() -> None:
    assert _check(_model()) == []


def test_a_changed_summary_is_a_mismatch_with_a_diff_of_the_field() -> None:
    model = _model()
    etl = _runs()[0].flow_run_id
    model.store.execute(
        "UPDATE runs SET summary = json_set(summary, '$.state', 'Cancelled') WHERE flow_run_id = ?",
        [etl],
    )
    [mismatch] = _check(model)
    assert (mismatch.flow_run_id, mismatch.what) == (etl, "its summary differs")
    assert '- "state": "Success",' in mismatch.diff
    assert '+ "state": "Cancelled",' in mismatch.diff


def test_a_changed_or_missing_record_is_a_mismatch_naming_its_offset() -> None:
    model = _model()
    failing = _runs()[1].flow_run_id
    model.store.execute("UPDATE facts SET value = ? WHERE offset = 0", [b'{"type": "forged"}'])
    model.store.execute(
        "DELETE FROM facts WHERE offset = (SELECT max(offset) FROM facts WHERE flow_run_id = ?)",
        [failing],
    )
    found = {m.flow_run_id: m for m in _check(model)}
    assert set(found) == {r.flow_run_id for r in _runs()}
    assert any(
        line.startswith("+@0 (not JSON)") or "+@0 " in line
        for line in found[_runs()[0].flow_run_id].diff
    )
    assert found[failing].what.startswith(
        f"its records differ ({len(_runs()[1].events)} on the ledger"
    )


def test_a_read_model_ahead_of_the_ledger_is_reported() -> None:
    model = _model()
    ahead = ReadModelCheck(model.store, {0: len(_values()) + 5})(_fold())
    assert [m.what for m in ahead] == [
        f"its position {len(_values()) + 5} is past the ledger's end {len(_values())}"
    ]


def test_from_an_offset_records_are_compared_but_not_views_of_runs_begun_before() -> None:
    model = _model()
    first = _runs()[0].flow_run_id
    model.store.execute(
        "UPDATE runs SET summary = json_set(summary, '$.state', 'Failed') WHERE flow_run_id = ?",
        [first],
    )
    later = len(_runs()[0].events)  # where the second run begins
    assert _check(model, start=later) == []  # the first run is not whole from there
    assert [m.flow_run_id for m in _check(model, start=0)] == [first]
