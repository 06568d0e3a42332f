"""The read model's SQLite file: versioned, rebuilt when it is not ours, resumed when it is."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from services.readmodel.store import (
    StoredFact,
    StoredRun,
    StoreIdentity,
    open_readonly,
    open_store,
    store_path,
)

IDENTITY = StoreIdentity(ledger_topic="unit.ledger")


def _fact(run: str, offset: int, partition: int = 0) -> StoredFact:
    return StoredFact(run, partition, offset, f'{{"run": "{run}", "at": {offset}}}'.encode())


def _filled(path: Path | None) -> None:
    store = open_store(path, IDENTITY)
    facts = [_fact("a", 0), _fact("b", 1), _fact("a", 2), _fact("b", 3)]
    runs = [StoredRun(r, 0, "Running", 1.0, {"id": r}) for r in ("a", "b")]
    store.commit(facts, runs, {0: 4}, {"events_folded": 4})
    store.close()


def test_a_store_reopened_with_the_same_identity_resumes_where_it_was(tmp_path: Path) -> None:
    path = store_path(tmp_path, "unit.")
    _filled(path)
    store = open_store(path, IDENTITY)
    assert store.positions() == {0: 4}
    assert store.counters() == {"events_folded": 4}
    assert store.run_values("a") == [_fact("a", 0).value, _fact("a", 2).value]


@pytest.mark.parametrize(
    "other",
    [
        StoreIdentity(ledger_topic="unit.ledger", schema_version=0),
        StoreIdentity(ledger_topic="unit.ledger", engine_version="0.0.0-other"),
        StoreIdentity(ledger_topic="other.ledger"),
    ],
)
def test_a_store_of_another_version_or_topic_is_rebuilt_with_a_log_line(
    tmp_path: Path, other: StoreIdentity, caplog: pytest.LogCaptureFixture
) -> None:
    path = store_path(tmp_path, "unit.")
    store = open_store(path, other)
    store.commit([_fact("a", 0)], [], {0: 1}, {})
    store.close()
    with caplog.at_level(logging.WARNING, logger="services.readmodel.store"):
        reopened = open_store(path, IDENTITY)
    assert reopened.positions() == {}
    assert reopened.run_values("a") == []
    assert "rebuilding it from the ledger" in caplog.text


def test_a_file_that_is_not_a_database_is_rebuilt(tmp_path: Path) -> None:
    path = store_path(tmp_path, "unit.")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not sqlite at all" * 100)
    store = open_store(path, IDENTITY)
    assert store.positions() == {}


def test_one_runs_history_is_read_through_its_primary_key_only(tmp_path: Path) -> None:
    """Reading a run is a range scan of its own rows, never a scan of the facts table."""
    path = store_path(tmp_path, "unit.")
    _filled(path)
    db = sqlite3.connect(path)
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT value FROM facts WHERE flow_run_id = ? "
        "ORDER BY partition, offset",
        ("a",),
    ).fetchall()
    details = " ".join(str(row[-1]) for row in plan)
    assert "SEARCH facts USING INDEX facts_by_run (flow_run_id=?)" in details
    assert "SCAN" not in details


def test_a_history_comes_with_the_positions_it_was_committed_with(tmp_path: Path) -> None:
    path = store_path(tmp_path, "unit.")
    _filled(path)
    history = open_store(path, IDENTITY).history("b")
    assert (history.partition, history.positions) == (0, {0: 4})
    assert history.values == [_fact("b", 1).value, _fact("b", 3).value]
    assert open_store(path, IDENTITY).history("nobody").partition is None


def test_runs_are_listed_most_recently_changed_first_and_by_state() -> None:
    store = open_store(None, IDENTITY)
    runs = [
        StoredRun("old", 0, "Success", 1.0, {"id": "old"}),
        StoredRun("new", 1, "Failed", 3.0, {"id": "new"}),
        StoredRun("none", 1, None, None, {"id": "none"}),
    ]
    store.commit([], runs, {}, {})
    assert [r.flow_run_id for r in store.runs()] == ["new", "old", "none"]
    assert [r.flow_run_id for r in store.runs(state="Success")] == ["old"]
    assert [r.flow_run_id for r in store.runs(limit=1)] == ["new"]


def test_a_reader_opens_only_a_store_of_its_own_identity(tmp_path: Path) -> None:
    path = store_path(tmp_path, "unit.")
    assert open_readonly(path, IDENTITY) is None
    _filled(path)
    assert open_readonly(path, StoreIdentity(ledger_topic="other.ledger")) is None
    reader = open_readonly(path, IDENTITY)
    assert reader is not None
    assert reader.positions() == {0: 4}
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM facts")
