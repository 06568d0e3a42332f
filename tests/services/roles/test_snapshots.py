"""Ledger snapshots: encoded in chunks behind a manifest, used only when every check passes.

Each skipped snapshot leaves a WARNING saying why, and the newest snapshot that
passes (or none: a fold from offset 0) is what a restart uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import pytest
from aiokafka import ConsumerRecord

from engine.orchestration.partition import PartitionState, fold_into
from engine.version import ENGINE_VERSION
from services.roles import snapshots
from services.roles.snapshots import encode_snapshot, newest_readable
from tests.engine.orchestration.test_partition import WINDOW, local_ledger
from tests.engine.orchestration.test_properties import TaskSpec

PARTITION = 2
SPECS = [TaskSpec("ok", (), "all_successful"), TaskSpec("map_ok", (0,), "all_successful")]


def state_of(*flow_run_ids: str, finished: bool = True) -> PartitionState:
    """A partition holding local runs (cut short when not `finished`: live views)."""
    events = [e for f in flow_run_ids for e in local_ledger(SPECS, f)]
    return fold_into(PartitionState(window=WINDOW), events if finished else events[:-3])


Record = tuple[bytes, bytes | None]


def records(*snapshots_: Sequence[Record]) -> list[ConsumerRecord[bytes, bytes]]:
    """The snapshots' records as a consumer would read them, in this order."""
    flat = [kv for snapshot in snapshots_ for kv in snapshot]
    return [
        ConsumerRecord("snapshots", PARTITION, i, 0, 0, k, v, None, len(k), len(v or b""), ())
        for i, (k, v) in enumerate(flat)
    ]


def encoded(state: PartitionState, covers: int) -> list[tuple[bytes, bytes | None]]:
    return list(encode_snapshot(state, PARTITION, covers)[1])


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 256)  # several chunks per snapshot


def test_a_snapshot_reads_back_as_the_state_it_was_made_of() -> None:
    state = state_of("a")
    state.views.update(state_of("b", finished=False).views)
    assert state.views
    assert state.retired
    manifest, chunks = encode_snapshot(state, PARTITION, 40)
    assert manifest.chunks > 1
    assert chunks[-1][0] == f"{PARTITION}/{40:020d}/m".encode()
    loaded, kept = newest_readable(records(chunks), PARTITION, WINDOW, ledger_end=100)
    assert loaded is not None
    assert loaded.state == state
    assert loaded.manifest.covers == 40
    assert kept == [manifest]


def test_the_newest_of_several_snapshots_is_used() -> None:
    old, new = state_of("a"), state_of("a", "b")
    loaded, kept = newest_readable(
        records(encoded(old, 10), encoded(new, 20)), PARTITION, WINDOW, ledger_end=20
    )
    assert loaded is not None
    assert loaded.state == new
    assert [m.covers for m in kept] == [10, 20]


def test_a_snapshot_of_another_engine_version_is_skipped_for_an_older_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = encoded(state_of("a"), 10)
    monkeypatch.setattr(snapshots, "ENGINE_VERSION", "9.9.9")
    newer_engine = encoded(state_of("a", "b"), 20)
    monkeypatch.undo()
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 256)
    loaded, _ = newest_readable(records(old, newer_engine), PARTITION, WINDOW, ledger_end=20)
    assert loaded is not None
    assert loaded.manifest.covers == 10
    assert warnings(caplog) == [
        f"ledger partition {PARTITION}: skipping snapshot {PARTITION}/{20:020d}/m: written by "
        f"engine 9.9.9 in snapshot schema 1, this is engine {ENGINE_VERSION}, schema 1"
    ]


def test_a_snapshot_of_an_older_schema_is_skipped(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots, "SNAPSHOT_SCHEMA", 0)
    older = encoded(state_of("a"), 10)
    monkeypatch.setattr(snapshots, "SNAPSHOT_SCHEMA", 1)
    loaded, _ = newest_readable(records(older), PARTITION, WINDOW, ledger_end=20)
    assert loaded is None
    assert "in snapshot schema 0" in warnings(caplog)[0]


def test_a_snapshot_with_a_missing_chunk_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    good, broken = encoded(state_of("a"), 10), encoded(state_of("a", "b"), 20)
    del broken[1]
    loaded, _ = newest_readable(records(good, broken), PARTITION, WINDOW, ledger_end=20)
    assert loaded is not None
    assert loaded.manifest.covers == 10
    assert warnings(caplog) == [
        f"ledger partition {PARTITION}: skipping snapshot {PARTITION}/{20:020d}/m: "
        "some of its chunks are missing"
    ]


def test_a_snapshot_whose_chunks_do_not_match_its_manifest_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = encoded(state_of("a"), 10)
    key, value = broken[0]
    assert value is not None
    broken[0] = (key, bytes([value[0] ^ 1]) + value[1:])
    loaded, _ = newest_readable(records(broken), PARTITION, WINDOW, ledger_end=20)
    assert loaded is None
    assert warnings(caplog)[0].endswith("its chunks do not match its manifest")


def test_an_unreadable_manifest_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    good = encoded(state_of("a"), 10)
    garbage = [(f"{PARTITION}/{20:020d}/m".encode(), b"{not json")]
    loaded, kept = newest_readable(records(good, garbage), PARTITION, WINDOW, ledger_end=20)
    assert loaded is not None
    assert loaded.manifest.covers == 10
    assert [m.covers for m in kept] == [10]
    assert warnings(caplog)[0].startswith(
        f"ledger partition {PARTITION}: skipping unreadable snapshot {PARTITION}/{20:020d}/m"
    )


def test_a_snapshot_beyond_the_ledgers_end_is_skipped_as_mismatching(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ledger topic recreated under the same name: the snapshot is of another log."""
    loaded, _ = newest_readable(records(encoded(state_of("a"), 50)), PARTITION, WINDOW, 20)
    assert loaded is None
    assert warnings(caplog)[0].endswith(
        "it covers ledger offset 50, beyond the partition's end 20"
    )


def test_a_snapshot_of_another_partition_or_command_window_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    other_partition = [(k, v) for k, v in encode_snapshot(state_of("a"), PARTITION + 1, 10)[1]]
    assert newest_readable(records(other_partition), PARTITION, WINDOW, 20)[0] is None
    other_window = records(encoded(state_of("a"), 10))
    assert newest_readable(other_window, PARTITION, WINDOW * 2, 20)[0] is None
    assert warnings(caplog) == [
        f"ledger partition {PARTITION}: skipping snapshot {PARTITION + 1}/{10:020d}/m: "
        f"it is a snapshot of partition {PARTITION + 1}",
        f"ledger partition {PARTITION}: skipping snapshot {PARTITION}/{10:020d}/m: "
        f"its command window is {WINDOW}, the ledger's is {WINDOW * 2}",
    ]


def test_a_tombstoned_snapshot_is_gone() -> None:
    manifest, chunks = encode_snapshot(state_of("a"), PARTITION, 10)
    tombstones: list[tuple[bytes, bytes | None]] = [(k, None) for k in manifest.record_keys()]
    assert newest_readable(records(chunks, tombstones), PARTITION, WINDOW, 20) == (None, [])


def test_a_manifest_names_the_engine_schema_window_and_hash() -> None:
    manifest, chunks = encode_snapshot(state_of("a"), PARTITION, 10)
    value = chunks[-1][1]
    assert value is not None
    fields = json.loads(value)
    assert fields["engine"] == ENGINE_VERSION
    assert fields["schema"] == snapshots.SNAPSHOT_SCHEMA
    assert fields["window"] == WINDOW
    assert fields["chunks"] == len(chunks) - 1
    assert fields["sha256"] == manifest.sha256
