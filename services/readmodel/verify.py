"""`runledger verify`: fold the ledger again and compare it with every copy derived from it.

The ledger topic is read partition by partition (`read_to_end`, from offset 0 or
`from_offset`) into a `PartitionFold`: each run's records there, in ledger order,
and its view. Each `Check` compares one such fold with one copy and returns
`Mismatch`es, each with a unified diff (ledger first, copy second). The read
model's check is `ReadModelCheck`; the ledger's snapshots' is `SnapshotCheck`,
run over the ledger from offset 0 up to the offset each snapshot covers.

Only what a copy claims to cover is compared: a read model that is behind is
compared up to its stored positions, not reported for what it has not read yet.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from engine.orchestration import FlowRunView
from engine.orchestration.partition import PartitionState, fold_into
from events import EventDecodeError, decode
from services.kafka.clients import make_consumer, read_to_end, topic_partitions
from services.readmodel.model import fold_records
from services.readmodel.shapes import flow_run_json
from services.readmodel.store import ReadStore
from services.roles.snapshots import Loaded, read_snapshots
from services.settings import Settings

__all__ = [
    "Check",
    "Mismatch",
    "PartitionFold",
    "ReadModelCheck",
    "SnapshotCheck",
    "fold_partitions",
    "newest_snapshots",
    "verify",
]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One difference between the ledger's fold and a copy of it."""

    copy: str
    """Which copy: "read model", "snapshots", ..."""
    partition: int
    flow_run_id: str | None
    what: str
    diff: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "copy": self.copy,
            "partition": self.partition,
            "flow_run_id": self.flow_run_id,
            "what": self.what,
            "diff": list(self.diff),
        }

    def as_text(self) -> str:
        run = f" flow run {self.flow_run_id}" if self.flow_run_id else ""
        head = f"{self.copy}, partition {self.partition}{run}: {self.what}"
        return "\n".join([head, *(f"  {line}" for line in self.diff)])


@dataclass
class PartitionFold:
    """One ledger partition read from `start` to `end`: each run's records and view."""

    partition: int
    start: int
    end: int
    records: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    """(offset, value) of each decodable record, by flow run id, in ledger order."""
    ledger_end: int = 0
    """Where the partition ended when it was read (`end` may stop earlier, at `upto`)."""
    undecodable: int = 0
    _views: dict[str, FlowRunView] = field(default_factory=dict)

    def add(self, offset: int, value: bytes) -> None:
        try:
            run = decode(value).flow_run_id
        except EventDecodeError:
            self.undecodable += 1  # the read model skips it too
            return
        self.records.setdefault(run, []).append((offset, value))

    def view(self, flow_run_id: str) -> FlowRunView:
        """The run's view folded from its records here (the whole view when start is 0)."""
        if flow_run_id not in self._views:
            values = (value for _, value in self.records.get(flow_run_id, []))
            self._views[flow_run_id] = fold_records(values, flow_run_id)
        return self._views[flow_run_id]


Check = Callable[[PartitionFold], list[Mismatch]]
"""Compares one partition's fold with one copy; [] when they agree."""


async def fold_partitions(
    settings: Settings, from_offset: int = 0, upto: dict[int, int] | None = None
) -> list[PartitionFold]:
    """Read every ledger partition from `from_offset` to its end (or to `upto[p]`), folded."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, settings.topic("ledger"))
        folds = []
        for tp in tps:
            folds.append(await _fold_partition(consumer, tp, from_offset, upto))
        return folds
    finally:
        await consumer.stop()


async def _fold_partition(
    consumer: Any, tp: TopicPartition, from_offset: int, upto: dict[int, int] | None
) -> PartitionFold:
    stop = None if upto is None else upto.get(tp.partition, 0)
    fold = PartitionFold(tp.partition, from_offset, from_offset)

    def take(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if stop is None or record.offset < stop:
                fold.add(record.offset, record.value or b"")

    consumer.assign([tp])
    # Past the end a seek would be reset to offset 0 (auto_offset_reset): clamp it.
    ends = await consumer.end_offsets([tp])
    fold.start = fold.end = min(from_offset, ends[tp])
    consumer.seek(tp, fold.start)
    await read_to_end(consumer, [tp], take)
    end: int = await consumer.position(tp)
    fold.ledger_end = end
    fold.end = end if stop is None else min(end, stop)
    return fold


async def verify(
    settings: Settings,
    checks: Iterable[Check],
    from_offset: int = 0,
    upto: dict[int, int] | None = None,
) -> list[Mismatch]:
    """Every check's mismatches over every partition of the ledger."""
    checks = list(checks)
    found: list[Mismatch] = []
    for fold in await fold_partitions(settings, from_offset, upto):
        for check in checks:
            found.extend(check(fold))
    return found


# ----- the read model ----------------------------------------------------------------------


class ReadModelCheck:
    """Compares a partition's fold with the api's read model (its SQLite file).

    Per run: the records stored for it in the compared range must be the
    ledger's (same offsets, same bytes), and its stored summary must be the one
    the ledger's fold gives, for runs the range covers whole and that did not
    move on after the positions were read.
    """

    copy = "read model"

    def __init__(self, store: ReadStore, positions: dict[int, int]) -> None:
        self.store = store
        self.positions = positions

    def __call__(self, fold: PartitionFold) -> list[Mismatch]:
        position = self.positions.get(fold.partition, 0)
        if position > fold.ledger_end:
            ahead = f"its position {position} is past the ledger's end {fold.ledger_end}"
            return [Mismatch(self.copy, fold.partition, None, ahead)]
        stored = self._stored(fold.partition, fold.start, position)
        found: list[Mismatch] = []
        for run in sorted(set(fold.records) | set(stored)):
            found.extend(self._compare_run(fold, run, stored.get(run, [])))
        return found

    def _stored(self, partition: int, start: int, stop: int) -> dict[str, list[tuple[int, bytes]]]:
        rows = self.store.facts_between(partition, start, stop)
        out: dict[str, list[tuple[int, bytes]]] = {}
        for fact in rows:
            out.setdefault(fact.flow_run_id, []).append((fact.offset, fact.value))
        return out

    def _compare_run(
        self, fold: PartitionFold, run: str, stored: list[tuple[int, bytes]]
    ) -> list[Mismatch]:
        ledger = fold.records.get(run, [])
        if ledger != stored:
            diff = _diff(_record_lines(ledger), _record_lines(stored))
            what = f"its records differ ({len(ledger)} on the ledger, {len(stored)} stored)"
            return [Mismatch(self.copy, fold.partition, run, what, diff)]
        row = self.store.run(run)
        if row is None:
            return [Mismatch(self.copy, fold.partition, run, "it has records but no summary")]
        if not self._covered(fold, run):
            return []
        expected = flow_run_json(fold.view(run))
        if row.summary != expected:
            diff = _diff(_json_lines(expected), _json_lines(row.summary))
            return [Mismatch(self.copy, fold.partition, run, "its summary differs", diff)]
        return []

    def _covered(self, fold: PartitionFold, run: str) -> bool:
        """The fold saw the run whole, and the store holds nothing of it after the range."""
        facts = self.store.run_facts(run)
        position = self.positions.get(fold.partition, 0)
        starts_inside = bool(facts) and facts[0].offset >= fold.start
        return starts_inside and all(f.offset < position for f in facts)


# ----- the ledger's snapshots ------------------------------------------------------------


class SnapshotCheck:
    """Compares each partition's newest readable snapshot with the ledger folded from 0.

    The fold must run from offset 0 up to the offset the snapshot covers (`verify`
    with ``upto=check.covers()``): the partition state there — live views, retired
    runs, the recent-command window — must be the snapshot's, run by run.
    """

    copy = "snapshots"

    def __init__(self, snapshots: Mapping[int, Loaded], window: int) -> None:
        self.snapshots = dict(snapshots)
        self.window = window

    def covers(self) -> dict[int, int]:
        """Where each partition's fold must stop: the offset its snapshot covers."""
        return {p: loaded.manifest.covers for p, loaded in self.snapshots.items()}

    def __call__(self, fold: PartitionFold) -> list[Mismatch]:
        loaded = self.snapshots.get(fold.partition)
        if loaded is None:
            return []
        covers = loaded.manifest.covers
        if fold.start != 0 or fold.end != covers:
            what = (
                f"not compared: the ledger was read from {fold.start} to {fold.end}, "
                f"not from 0 to {covers}"
            )
            return [Mismatch(self.copy, fold.partition, None, what)]
        ordered = sorted(
            (offset, value) for records in fold.records.values() for offset, value in records
        )
        expected = fold_into(
            PartitionState(window=self.window), (decode(value) for _, value in ordered)
        )
        return self._compare(fold.partition, covers, expected, loaded.state)

    def _compare(
        self, partition: int, covers: int, expected: PartitionState, snapshot: PartitionState
    ) -> list[Mismatch]:
        found: list[Mismatch] = []
        where = f"snapshot covering offset {covers}"
        for run in sorted(set(expected.views) | set(snapshot.views)):
            ledger, copy = expected.views.get(run), snapshot.views.get(run)
            if ledger != copy:
                diff = _diff(_view_lines(ledger), _view_lines(copy))
                what = f"{where}: its view differs"
                found.append(Mismatch(self.copy, partition, run, what, diff))
        for run in sorted(set(expected.retired) | set(snapshot.retired)):
            ledger_r, copy_r = expected.retired.get(run), snapshot.retired.get(run)
            if ledger_r != copy_r:
                diff = _diff([repr(ledger_r)], [repr(copy_r)])
                what = f"{where}: its retired record differs"
                found.append(Mismatch(self.copy, partition, run, what, diff))
        if expected.recent != snapshot.recent:
            what = (
                f"{where}: its recent-command window differs ({len(expected.recent)} commands "
                f"on the ledger, {len(snapshot.recent)} in the snapshot)"
            )
            found.append(Mismatch(self.copy, partition, None, what))
        return found


def _view_lines(view: FlowRunView | None) -> list[str]:
    if view is None:
        return ["(none)"]
    return _json_lines(flow_run_json(view)) + [
        f"{record.task_run_id} seq {record.seq} {record.state_type} attempt {record.attempt}"
        for record in sorted(view.task_runs.values(), key=lambda r: r.task_run_id)
    ]


async def newest_snapshots(settings: Settings) -> dict[int, Loaded]:
    """The newest readable snapshot of each ledger partition (none: no snapshots topic)."""
    consumer = make_consumer(settings, group_id=None)
    found: dict[int, Loaded] = {}
    try:
        await consumer.start()  # inside: a consumer that could not start is stopped too
        try:
            ledger = await topic_partitions(consumer, settings.topic("ledger"))
            snapshots = {tp.partition: tp for tp in await topic_partitions(
                consumer, settings.topic("snapshots")
            )}
        except KafkaError:
            return found
        ends = await consumer.end_offsets(ledger)
        for tp in ledger:
            snapshot_tp = snapshots.get(tp.partition)
            if snapshot_tp is None:
                continue
            consumer.assign([snapshot_tp])
            loaded, _ = await read_snapshots(
                consumer, snapshot_tp, tp.partition, settings.ledger_command_window, ends[tp]
            )
            if loaded is not None:
                found[tp.partition] = loaded
        return found
    finally:
        await consumer.stop()


def _record_lines(records: list[tuple[int, bytes]]) -> list[str]:
    """One line per record: offset, type, task run, seq, event id (and its bytes' digest)."""
    return [_record_line(offset, value) for offset, value in records]


def _record_line(offset: int, value: bytes) -> str:
    digest = hashlib.sha256(value).hexdigest()[:12]
    try:
        fields = json.loads(value)
    except ValueError:
        return f"@{offset} (not JSON) sha256 {digest}"
    what = " ".join(
        str(fields.get(key))
        for key in ("type", "task_run_id", "seq")
        if fields.get(key) is not None
    )
    return f"@{offset} {what} event {fields.get('event_id')} sha256 {digest}"


def _json_lines(value: dict[str, Any]) -> list[str]:
    return json.dumps(value, indent=1, sort_keys=True, default=str).splitlines()


def _diff(ledger: list[str], copy: list[str]) -> tuple[str, ...]:
    lines = difflib.unified_diff(ledger, copy, "ledger", "copy", lineterm="", n=1)
    return tuple(lines)
