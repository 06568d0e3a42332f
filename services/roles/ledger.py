"""The ledger role: the single writer of the ledger, and its scheduler.

One loop, plain aiokafka (faust hosts it; see docs/architecture.md for why the
hot loop is not a faust agent):

1. On every partition assignment, load the newest readable snapshot of each
   assigned partition (`services.roles.snapshots`) and fold the `ledger` facts
   after it to the partition's visible end, before deciding anything (no usable
   snapshot: fold from offset 0). The ledger topic is the only copy of state that
   counts; snapshots are derived from it, and nothing is kept in a faust Table
   (BROKER_NOTES.md: a changelog lost an update). A finished flow run leaves its
   partition's live views for a small retired record (`engine.orchestration.retired`).
2. Per batch of commands (`getmany`): decode (bad records go to the dead-letter
   topic with the reason), give a plan-less RunRequested its plan (the flow is
   loaded through `services.roles.codeload`), `decide_and_evolve` (a flow-run
   transition passes through the flow's state handlers first:
   `services.roles.flow_handlers`), and hand the
   facts (to `ledger`, on the partition the command came from), every
   WorkDispatched also to `work`, and the commands' offsets to the writer
   (`services.roles.ledger_writer`): one Kafka transaction per partition under
   exactly-once, plain sends and a commit after the acks under at-least-once.
   Each view is replaced once per command (the core folds a command's facts
   into one copy).
3. Between batches the scheduler issues `SchedulerTicked` for runs whose
   Scheduled/Retrying/Paused start time has come. Its timers are the views'
   `scheduled` maps, so they come back with the fold after a restart.

4. Every `ledger_snapshot_every_events` facts (or `ledger_snapshot_every_s`) a
   partition's state is captured, and once the writer reports the facts before
   it written (committed, under exactly-once) its snapshot goes to the
   `snapshots` topic, tagged with the ledger offset those facts end at.

A redelivered command changes nothing (`decide` knows it by id). Under
exactly-once a crash leaves nothing of its open transaction visible; under
at-least-once it only replays work already on the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from engine.clock import Clock, SystemClock
from engine.orchestration import FlowRunView, evolve
from engine.orchestration.decide import is_unknown_run
from engine.orchestration.partition import PartitionState
from engine.orchestration.retired import RetiredRun
from engine.planning import plan_of
from engine.result_store import FSResultStore
from engine.results import Result
from events import (
    Cause,
    Command,
    Event,
    EventDecodeError,
    FlowPlan,
    FlowRef,
    RunRequested,
    TransitionRejected,
    WorkDispatched,
    decode,
    decode_command,
    encode,
)
from services.kafka.clients import (
    dead_letter_for,
    make_consumer,
    partition_for,
    read_to_end,
)
from services.roles.codeload import FlowLoadError, load_flow
from services.roles.common import (
    HEADER_COMMAND,
    HEADER_PARTITION,
    HEADER_WRITER,
    Outgoing,
    partition_of,
    role_identity,
    spread,
)
from services.roles.flow_handlers import FlowHandlers
from services.roles.ledger_writer import (
    AtLeastOnceWriter,
    LedgerWriter,
    TransactionalWriter,
    WriteFailed,
    WriteFailure,
)
from services.roles.scheduler import Timers, lost_attempts, tick
from services.roles.snapshots import Manifest, encode_snapshot, read_snapshots, tombstones
from services.settings import Settings

__all__ = ["Ledger", "LedgerStats", "fold_into_state", "fold_records"]

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 100
"""Longest wait for commands before the loop looks at the stop flag and the timers."""

_SNAPSHOTS_KEPT = 2
"""Snapshots kept per partition: the newest, and one to fall back on if it is unreadable."""



@dataclass
class LedgerStats:
    """Counters for logs, tests and the benchmark."""

    batches: int = 0
    commands: int = 0
    facts: int = 0
    dead_letters: int = 0
    ticks: int = 0
    rebuilds: int = 0
    rebuilt_events: int = 0
    rebuild_s: float = 0.0
    busy_s: float = 0.0
    snapshots_written: int = 0
    snapshots_loaded: int = 0
    retired: int = 0


def fold_records(
    records: Iterable[ConsumerRecord[bytes, bytes]],
    views: dict[str, FlowRunView] | None = None,
) -> dict[str, FlowRunView]:
    """Fold ledger records into per-flow-run views (the same `evolve` as everywhere).

    A record that does not decode or does not fold (a sequence gap) is logged and
    skipped: the ledger is written only by this role, so that means a bug, and
    the rest of the log must still be readable.
    """
    views = {} if views is None else views
    for record in records:
        try:
            event = decode(record.value or b"")
            views[event.flow_run_id] = evolve(
                views.get(event.flow_run_id) or FlowRunView(flow_run_id=event.flow_run_id), event
            )
        except (EventDecodeError, ValueError) as exc:
            log.error(
                "ledger record %s[%d]@%d does not fold: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
    return views


def fold_into_state(
    state: PartitionState, records: Iterable[ConsumerRecord[bytes, bytes]]
) -> PartitionState:
    """Fold ledger records of one partition into `state` (as `fold_records` does views).

    The records run to a partition's end, where no command's facts break off."""
    for record in records:
        try:
            state.fold(decode(record.value or b""))
        except (EventDecodeError, ValueError) as exc:
            log.error(
                "ledger record %s[%d]@%d does not fold: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
    state.settle()
    return state


@dataclass
class _Part:
    """One owned ledger partition: its state and its snapshot bookkeeping."""

    state: PartitionState
    epoch: int
    """The assignment (or re-fold) this state belongs to: a snapshot captured under
    an older one is dropped."""
    covered: int
    """Ledger offset the state covered when it was rebuilt (if nothing is written since)."""
    facts_since: int = 0
    """Facts written since the last snapshot was captured."""
    last_capture: float = 0.0
    kept: list[Manifest] = field(default_factory=list)
    """Snapshots of this partition on the topic, oldest first."""
    capturing: bool = False


def _reasons(facts: list[Event]) -> str:
    return "; ".join(f.reason for f in facts if isinstance(f, TransitionRejected))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.ledger._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.ledger._assigned({tp.partition for tp in assigned})


@dataclass
class _Batch:
    """What one batch of commands from one partition produces: written in one go."""

    facts: list[tuple[Event, int, bytes, bytes]] = field(default_factory=list)
    """(fact, ledger partition, key, id of the command it answers): encoded at send."""
    records: list[Outgoing] = field(default_factory=list)
    """Records produced as they are (commands moved to their partition)."""
    dead: list[Event] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)


class Ledger:
    """The ledger role. `views` holds every flow run of the owned partitions."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.identity = role_identity("ledger")
        self._writer_tag = f"{self.identity.id}#0".encode()
        """The `HEADER_WRITER` of this process's facts: its identity and its ownership
        (the number of the assignment it writes under)."""
        self._assignments = 0
        self._parts: dict[int, _Part] = {}
        self.home: dict[str, int] = {}
        """Partition of each live flow run (its commands and its facts share the number)."""
        self._epochs = 0
        self._snapshot_tasks: set[asyncio.Task[None]] = set()
        self.owned: frozenset[int] = frozenset()
        self.ready = asyncio.Event()
        """Set once the first assignment has been folded (tests wait for it)."""
        self.stats = LedgerStats()
        self._timers = Timers()
        self._last_lost_check = self.clock()
        self._plans: dict[FlowRef, FlowPlan] = {}
        self._flow_handlers = FlowHandlers(settings)
        """Runs flows' state handlers on the flow-run transitions decided here."""
        self._lock = asyncio.Lock()
        self._writer: LedgerWriter
        self._consumer: AIOKafkaConsumer
        self._work_partitions = 1
        self._command_partitions = 1
        self._deadletter_partitions = 1
        self._topics = settings.topic_names()

    @property
    def views(self) -> dict[str, FlowRunView]:
        """The live views of every owned partition (a new dict: for tests and dumps)."""
        return {k: v for part in self._parts.values() for k, v in part.state.views.items()}

    def state_of(self, partition: int) -> PartitionState | None:
        """The state of an owned partition: what a fold of its ledger facts gives."""
        part = self._parts.get(partition)
        return part.state if part is not None else None

    def retired_run(self, flow_run_id: str) -> RetiredRun | None:
        """What is kept of a finished flow run of an owned partition (None: live or unknown)."""
        for part in self._parts.values():
            retired = part.state.retired.get(flow_run_id)
            if retired is not None:
                return retired
        return None

    def _live(self, flow_run_id: str) -> FlowRunView | None:
        partition = self.home.get(flow_run_id)
        if partition is None:
            return None
        return self._parts[partition].state.views.get(flow_run_id)

    def _retired_home(self, flow_run_id: str) -> int | None:
        for partition, part in self._parts.items():
            if flow_run_id in part.state.retired:
                return partition
        return None

    # ----- the loop ------------------------------------------------------------------

    @property
    def group_id(self) -> str:
        """The ledger's consumer group on `commands`."""
        return f"{self.settings.app_id}-ledger"

    async def run(self, stop: asyncio.Event) -> None:
        """Consume commands until `stop` is set; what was taken is written and committed."""
        consumer = self._consumer = make_consumer(
            self.settings, group_id=self.group_id, max_partition_fetch_bytes=16 << 20
        )
        writer = self._writer = (
            TransactionalWriter(self.settings, self.group_id)
            if self.settings.exactly_once
            else AtLeastOnceWriter(self.settings, consumer)
        )
        await writer.start()
        try:
            self._work_partitions = len(await writer.partitions_for(self._topics["work"]))
            self._command_partitions = len(await writer.partitions_for(self._topics["commands"]))
            self._deadletter_partitions = len(
                await writer.partitions_for(self._topics["deadletter"])
            )
            await consumer.start()
            consumer.subscribe([self._topics["commands"]], listener=_Rebalance(self))
            while not stop.is_set():
                failures = writer.take_failures()
                if failures:
                    async with self._lock:
                        await self._recover(failures)
                batch = await consumer.getmany(
                    timeout_ms=self._poll_ms(), max_records=self.settings.ledger_batch_max
                )
                async with self._lock:
                    started = time.perf_counter()
                    try:
                        if batch:
                            await self._handle_batch(batch)
                        await self._tick()
                        self._maybe_snapshot()
                    except Exception:  # a bug: never let it stop the ledger
                        log.exception("ledger batch failed; re-folding its partitions")
                        failed = RuntimeError("a ledger batch failed")
                        await self._recover([WriteFailure(p, failed, False) for p in self.owned])
                    self.stats.busy_s += time.perf_counter() - started
            await writer.drain()
        finally:
            for task in list(self._snapshot_tasks):
                task.cancel()
            await asyncio.gather(*self._snapshot_tasks, return_exceptions=True)
            await consumer.stop()
            await writer.stop()

    async def _recover(self, failures: list[WriteFailure]) -> None:
        """After failed writes the views are ahead of the log: re-fold, re-read (locked).

        A fenced partition belongs to another ledger now: it is dropped and paused
        until the group assigns it here again. Any other failure re-opens the
        partition's writer, re-folds its views and seeks back to the last
        committed command offset.
        """
        await self._writer.drain()
        fenced = {f.partition for f in failures if f.fenced} & self.owned
        retry = {f.partition for f in failures if not f.fenced} & self.owned
        topic = self._topics["commands"]
        if fenced:
            await self._writer.release(fenced)
            self._forget(fenced)
            self.owned = self.owned - fenced
            self._consumer.pause(*(TopicPartition(topic, p) for p in fenced))
        if not retry:
            return
        log.warning("re-folding ledger partitions %s after %r", sorted(retry), failures[0].error)
        await self._writer.own(retry)
        await self._rebuild(retry)
        for partition in retry:
            tp = TopicPartition(topic, partition)
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def _poll_ms(self) -> int:
        return self._timers.wait_ms(self.clock(), _IDLE_POLL_MS)

    # ----- partitions ----------------------------------------------------------------

    async def _revoked(self, partitions: set[int]) -> None:
        async with self._lock:  # let the current batch finish and be written
            await self._writer.release(partitions)
            self._forget(partitions)
            self.owned = self.owned - partitions

    async def _assigned(self, partitions: set[int]) -> None:
        async with self._lock:
            topic = self._topics["commands"]
            self._consumer.resume(*(TopicPartition(topic, p) for p in partitions))
            # Fence an earlier owner before reading: its open transaction is aborted,
            # so the rebuild sees every committed fact and waits for none.
            await self._writer.own(partitions)
            self._assignments += 1
            self._writer_tag = f"{self.identity.id}#{self._assignments}".encode()
            await self._rebuild(partitions)
            self.owned = frozenset(partitions)
            self.ready.set()
            log.info(
                "ledger owns partitions %s (%d flow runs)", sorted(partitions), len(self.views)
            )

    def _forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            part = self._parts.pop(partition, None)
            if part is None:
                continue
            for flow_run_id in part.state.views:
                self.home.pop(flow_run_id, None)
                self._timers.forget(flow_run_id)

    async def _rebuild(self, partitions: set[int]) -> None:
        """The state of `partitions` from the log: the newest readable snapshot + the facts
        after it, or the facts from offset 0."""
        started = self.clock()
        self._forget(partitions)
        consumer = make_consumer(self.settings, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            for partition in sorted(partitions):
                await self._rebuild_one(consumer, partition)
        finally:
            await consumer.stop()
        self.stats.rebuilds += 1
        self.stats.rebuild_s += (self.clock() - started).total_seconds()

    async def _rebuild_one(self, consumer: AIOKafkaConsumer, partition: int) -> None:
        ledger = TopicPartition(self._topics["ledger"], partition)
        snapshots = TopicPartition(self._topics["snapshots"], partition)
        window = self.settings.ledger_command_window
        consumer.assign([ledger, snapshots])
        ledger_end = (await consumer.end_offsets([ledger]))[ledger]
        loaded, kept = await read_snapshots(consumer, snapshots, partition, window, ledger_end)
        if loaded is None:
            state, covers = PartitionState(window=window), 0
            log.info("ledger partition %d: no readable snapshot; folding from offset 0", partition)
        else:
            state, covers = loaded.state, loaded.manifest.covers
            self.stats.snapshots_loaded += 1
            log.info(
                "ledger partition %d: loaded snapshot covering offset %d (%d live, %d retired)",
                partition,
                covers,
                len(state.views),
                len(state.retired),
            )
        consumer.assign([ledger])
        consumer.seek(ledger, covers)
        records: list[ConsumerRecord[bytes, bytes]] = []
        await read_to_end(consumer, [ledger], records.extend)
        fold_into_state(state, records)
        self.stats.rebuilt_events += len(records)
        log.info(
            "ledger partition %d: folded %d facts after offset %d", partition, len(records), covers
        )
        self._epochs += 1
        self._parts[partition] = _Part(
            state, self._epochs, max(covers, records[-1].offset + 1 if records else covers),
            last_capture=time.monotonic(), kept=kept,
        )
        for flow_run_id, view in state.views.items():
            self.home[flow_run_id] = partition
            self._timers.refresh(view, flow_run_id)

    # ----- one batch -----------------------------------------------------------------

    async def _handle_batch(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        for tp, records in batch.items():
            if tp.partition not in self.owned:
                continue  # fetched before a revocation: its new owner reads it again
            out = _Batch()
            for record in records:
                await self._handle_record(record, out)
            await self._send(tp.partition, out, {tp: records[-1].offset + 1})
        self.stats.batches += 1

    async def _handle_record(self, record: ConsumerRecord[bytes, bytes], out: _Batch) -> None:
        self.stats.commands += 1
        try:
            command = decode_command(record.value or b"")
        except EventDecodeError as exc:
            self._dead_letter(out, record, str(exc))
            return
        flow_run_id = command.flow_run_id
        home = self.home.get(flow_run_id)
        if home is None:
            home = self._retired_home(flow_run_id)
        # murmur2 is pure Python (~60 us): only a run without a home needs it.
        expected = partition_for(flow_run_id, self._command_partitions) if home is None else home
        if record.partition != expected and home is None:
            # Written with another partitioner (librdkafka defaults to CRC32): move the
            # record, unchanged, to the partition murmur2 gives, where every other
            # command of the run (workers, the Python client) will go.
            out.records.append(
                Outgoing(
                    record.topic, expected, record.key, record.value or b"", list(record.headers)
                )
            )
            return
        if home is not None and home != record.partition:
            self._dead_letter(
                out,
                record,
                f"command for flow run {flow_run_id} arrived on partition {record.partition}, "
                f"but the run lives on partition {home}: key commands by flow_run_id",
                flow_run_id,
            )
            return
        part = self._parts[record.partition]
        view = part.state.view_for(flow_run_id, command.event_id) or FlowRunView(
            flow_run_id=flow_run_id
        )
        if isinstance(command, RunRequested) and command.plan is None and not view.created:
            try:
                command = command.model_copy(update={"plan": await self._plan(command.flow_ref)})
            except FlowLoadError as exc:
                self._reject_unloadable(out, record, view, command, exc.reason)
                return
        try:
            view, facts = await self._flow_handlers.decide_and_evolve(view, command, self.clock())
        except Exception as exc:  # a bug in the core must not stop the ledger
            log.exception("decide failed on command %s", command.event_id)
            self._dead_letter(out, record, f"the ledger could not decide: {exc!r}", flow_run_id)
            return
        if is_unknown_run(view, command):
            # Dead-lettered, never appended: a refusal on the ledger topic would make
            # the fold (and the api) hold a flow run nobody created.
            self._dead_letter(out, record, _reasons(facts), flow_run_id)
            return
        if facts:
            self._record(view, facts, command.event_id, record.partition, out)

    def _record(
        self,
        view: FlowRunView,
        facts: list[Event],
        command_id: str,
        partition: int,
        out: _Batch,
    ) -> None:
        """Keep the new view and queue its facts (and work items) for the batch's send.

        A run that this finished retires: its view leaves the live ones (and memory)."""
        flow_run_id = view.flow_run_id
        part = self._parts[partition]
        retired = len(part.state.retired)
        part.state.keep(view, facts)
        part.facts_since += len(facts)
        if flow_run_id in part.state.views:
            self.home[flow_run_id] = partition
        else:
            self.home.pop(flow_run_id, None)
            self.stats.retired += len(part.state.retired) - retired
        out.touched.add(flow_run_id)
        key = flow_run_id.encode()
        command = command_id.encode()
        out.facts.extend((fact, partition, key, command) for fact in facts)
        self.stats.facts += len(facts)

    def _encoded(self, facts: list[tuple[Event, int, bytes, bytes]]) -> list[Outgoing]:
        """The records of `facts`: each on `ledger`, and a WorkDispatched also on `work`."""
        ledger, work = self._topics["ledger"], self._topics["work"]
        records: list[Outgoing] = []
        for fact, partition, key, command_id in facts:
            value = encode(fact)
            headers = [(HEADER_COMMAND, command_id), (HEADER_WRITER, self._writer_tag)]
            records.append(Outgoing(ledger, partition, key, value, headers))
            if isinstance(fact, WorkDispatched):
                work_key = fact.work.task_run_id.encode()
                records.append(
                    Outgoing(
                        work,
                        spread(work_key, self._work_partitions),
                        work_key,
                        value,
                        [(HEADER_PARTITION, str(partition).encode())],
                    )
                )
        return records

    async def _send(
        self, partition: int, out: _Batch, offsets: dict[TopicPartition, int] | None = None
    ) -> None:
        """Hand the batch's records and the commands' `offsets` to the writer as one write."""
        records = out.records + self._encoded(out.facts)
        deadletter = self._topics["deadletter"]
        for dead in out.dead:
            key = dead.flow_run_id.encode()
            records.append(
                Outgoing(
                    deadletter,
                    partition_of(key, self._deadletter_partitions),
                    key,
                    encode(dead),
                )
            )
        if records or offsets:
            await self._writer.submit(partition, records, offsets or {})
        for flow_run_id in out.touched:
            self._timers.refresh(self._live(flow_run_id), flow_run_id)

    def _dead_letter(
        self,
        out: _Batch,
        record: ConsumerRecord[bytes, bytes],
        reason: str,
        flow_run_id: str | None = None,
    ) -> None:
        log.warning(
            "dead letter from %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )
        out.dead.append(dead_letter_for(record, reason, flow_run_id))
        self.stats.dead_letters += 1

    # ----- flows without a plan ------------------------------------------------------

    async def _plan(self, flow_ref: FlowRef) -> FlowPlan:
        plan = self._plans.get(flow_ref)
        if plan is None:
            # Off the loop: importing or unpickling user code may take a while.
            plan = await asyncio.to_thread(self._plan_of, flow_ref)
            self._plans[flow_ref] = plan
        return plan

    def _plan_of(self, flow_ref: FlowRef) -> FlowPlan:
        flow = load_flow(flow_ref, self.settings)
        store = FSResultStore(self.settings.result_store_url)

        def persist(value: Any, slug: str) -> dict[str, Any]:
            return store.persist(Result(value=value), f"constant/{slug}")

        try:
            return plan_of(flow, persist)
        except Exception as exc:  # user code: a flow that cannot be planned
            raise FlowLoadError(f"cannot plan flow {flow.name!r}: {exc!r}") from exc

    def _reject_unloadable(
        self,
        out: _Batch,
        record: ConsumerRecord[bytes, bytes],
        view: FlowRunView,
        command: Command,
        reason: str,
    ) -> None:
        rejected = TransitionRejected(
            event_id=f"{command.event_id}/0",
            flow_run_id=command.flow_run_id,
            occurred_at=self.clock(),
            cause=Cause(command_id=command.event_id, worker=self.identity),
            command_id=command.event_id,
            command_type=command.type,
            reason=f"cannot load the flow: {reason}",
        )
        self._record(evolve(view, rejected), [rejected], command.event_id, record.partition, out)
        self._dead_letter(out, record, f"cannot load the flow: {reason}", command.flow_run_id)

    # ----- the scheduler -------------------------------------------------------------

    async def _tick(self) -> None:
        """SchedulerTicked for every flow run with a start time that has come, and,
        every heartbeat interval, for runs with an attempt whose worker went silent
        (the core fails such an attempt, and retries it if it may)."""
        now = self.clock()
        due = set(self._timers.due(now))
        timeout = None
        if (now - self._last_lost_check).total_seconds() >= self.settings.heartbeat_interval_s:
            self._last_lost_check = now
            timeout = self.settings.heartbeat_timeout_s
            due.update(
                flow_run_id
                for part in self._parts.values()
                for flow_run_id, view in part.state.views.items()
                if view.running and lost_attempts(view, now, timeout)
            )
        if not due:
            return
        outs: dict[int, _Batch] = {}
        for flow_run_id in due:
            current = self._live(flow_run_id)
            if current is None:  # retired meanwhile: nothing of it waits any more
                self._timers.forget(flow_run_id)
                continue
            command = tick(current, now, self.identity, timeout)
            view, facts = await self._flow_handlers.decide_and_evolve(current, command, now)
            self.stats.ticks += 1
            partition = self.home[flow_run_id]
            if facts:
                out = outs.setdefault(partition, _Batch())
                self._record(view, facts, command.event_id, partition, out)
            else:
                # Nothing could start (e.g. the flow is being cancelled): stop asking
                # until a command changes this run again.
                self._timers.forget(flow_run_id)
        for partition, out in outs.items():
            await self._send(partition, out)

    # ----- snapshots -----------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        """Capture the state of every partition whose snapshot is due (see the settings)."""
        every = self.settings.ledger_snapshot_every_events
        if every == 0:
            return
        now = time.monotonic()
        for partition, part in self._parts.items():
            if part.capturing or part.facts_since == 0 or partition not in self.owned:
                continue
            late = now - part.last_capture >= self.settings.ledger_snapshot_every_s
            if part.facts_since >= every or late:
                self._capture(partition, part, now)

    def _capture(self, partition: int, part: _Part, now: float) -> None:
        state = part.state
        # Views and retired runs are immutable values: copying the dicts is the copy.
        captured = PartitionState(window=state.window)
        captured.views = dict(state.views)
        captured.retired = dict(state.retired)
        captured.recent = type(state.recent)(state.recent.capacity, state.recent.keys())
        part.capturing, part.facts_since, part.last_capture = True, 0, now
        # Asked now, before anything else is submitted (a synchronous call, not a
        # coroutine scheduled for later): the end it gives is that of exactly the
        # facts the captured state holds.
        written = self._writer.written_end(partition)
        task = asyncio.create_task(
            self._write_snapshot(partition, part, captured, written),
            name=f"ledger-snapshot-{partition}",
        )
        self._snapshot_tasks.add(task)
        task.add_done_callback(self._snapshot_tasks.discard)

    async def _write_snapshot(
        self,
        partition: int,
        part: _Part,
        captured: PartitionState,
        written: asyncio.Future[int | None],
    ) -> None:
        try:
            try:
                end = await written
            except WriteFailed as exc:
                log.info("ledger partition %d: snapshot dropped: %s", partition, exc)
                return
            covers = part.covered if end is None else end
            manifest, chunks = await asyncio.to_thread(
                encode_snapshot, captured, partition, covers
            )
            if self._parts.get(partition) is not part or partition not in self.owned:
                return  # re-folded or given away meanwhile: this state is not current
            topic = self._topics["snapshots"]
            records = [Outgoing(topic, partition, key, value) for key, value in chunks]
            kept = [*part.kept, manifest]
            for old in kept[:-_SNAPSHOTS_KEPT]:
                records.extend(Outgoing(topic, partition, key, None) for key in tombstones(old))
            await self._writer.submit(partition, records, {})
            part.kept = kept[-_SNAPSHOTS_KEPT:]
            self.stats.snapshots_written += 1
            log.info(
                "ledger partition %d: snapshot covering offset %d (%d live, %d retired, "
                "%d bytes in %d chunks)",
                partition,
                covers,
                len(captured.views),
                len(captured.retired),
                manifest.size,
                manifest.chunks,
            )
        except Exception:  # a snapshot is an optimisation: never let it stop the ledger
            log.exception("ledger partition %d: writing a snapshot failed", partition)
        finally:
            part.capturing = False
