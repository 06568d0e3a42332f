"""The worker role: run dispatched task runs, claiming each attempt first.

Work records (`work` topic, consumer group ``{app_id}-workers``) go to a fixed
set of task threads that run `engine.worker_core.execute_work` -- the same code
the local runner uses. What is Kafka-specific lives here:

* **Claims.** `execute_work` proposes Running before the body runs. A work
  item fetched first after a partition assignment may have been started by the
  partition's previous owner (at-least-once delivery): for those the worker
  waits for the ledger's answer, found by tailing the `ledger` topic (facts
  carry the id of the command they answer in a header, so only the awaited ones
  are decoded), and a refused claim ends as ClientFailed without running the
  body -- that is what makes redelivery safe. A fresh item (written after this
  worker's first fetch of its partition) can only be a duplicate of one this
  worker holds, so its body runs at once: waiting would add a broker round trip
  to every task run, and should the claim lose after all, the ledger refuses
  the run's later proposals (the attempt belongs to the claimer). The tail is
  paused while no claim is awaited. `worker_await_claims` makes every claim wait.
* **Proposals** from the task threads are handed to the event loop and sent in
  batches; heartbeats go out every `heartbeat_interval_s` for claimed runs.
* **Offsets** are committed in order, and only up to work items whose every
  proposal the broker acknowledged. A crash re-delivers the rest; their claims
  are then refused if they already ran.
* A flow that cannot be loaded never runs anything: the run is proposed Failed
  with the reason and the work record is dead-lettered.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from engine.clock import Clock, SystemClock
from engine.flow import Flow
from engine.state import Cached, Failed, State
from engine.worker_core import execute_work
from events import (
    Cause,
    Command,
    Event,
    EventDecodeError,
    HeartbeatSent,
    TaskRunTransitioned,
    TransitionProposed,
    WorkItem,
    decode,
    encode,
)
from services.kafka.clients import dead_letter_for, make_consumer, make_producer, visible_end
from services.roles.codeload import FlowLoadError, import_handlers, load_flow
from services.roles.common import (
    HEADER_COMMAND,
    HEADER_PARTITION,
    Outgoing,
    header,
    partition_of,
    role_identity,
)
from services.roles.results import WorkerResultStore
from services.roles.work import OrderedOffsets, Outbox, Pending, TaskThreads, decode_work
from services.settings import Settings

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger(__name__)

_POLL_MS = 100
_CLAIM_POLL_S = 0.2
_SWITCH_INTERVAL_S = 0.0005
_COMMIT_INTERVAL_S = 0.05
_DRAIN_GRACE_S = 30.0
"""On stop, how long running bodies (and pending claims) get to finish."""
_REVOKE_CLAIM_WAIT_S = 10.0
"""On a revocation, how long unawaited claims of the revoked partitions get to be acked."""
_RESEND_DELAY_S = 0.5
"""Pause before a record the broker did not acknowledge is produced again."""

RunKey = tuple[str, int]
"""(task run id, attempt): what a worker runs. A retry of a lost attempt may come
back to the same worker while the old body still runs; each is its own claim."""


@dataclass
class WorkerStats:
    """Counters for logs, tests and the benchmark."""

    received: int = 0
    executed: int = 0
    claims_accepted: int = 0
    claims_refused: int = 0
    claims_unawaited: int = 0
    """Claims of fresh work items, whose body ran without waiting for the answer."""
    proposals: int = 0
    heartbeats: int = 0
    dead_letters: int = 0


@dataclass(eq=False)
class _Job:
    record: ConsumerRecord[bytes, bytes]
    partition: int
    """Commands partition of the flow run: where its proposals go."""
    offset: Pending
    fresh: bool = False
    """Written after this worker's first fetch of the partition: nobody else had it."""
    claim: Outgoing | None = None
    """An unawaited claim of this job that the broker has not acknowledged yet."""
    beating: bool = False
    """Its claim is queued: heartbeats may follow it (one sent before the claim would
    reach the ledger while the run is still Submitted, and be refused)."""
    work: WorkItem | None = None
    unacked: int = 0
    """Records of this job queued but not acknowledged by the broker yet."""
    held: list[Outgoing] | None = None
    """While a record of this job is being produced again: its later records, in
    order (sending them meanwhile could let the ledger see them first)."""
    finished: bool = False
    """The task thread is done with it (every record it makes is queued)."""
    settled: bool = False


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker, consumer: AIOKafkaConsumer) -> None:
        self.worker, self.consumer = worker, consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        await self.worker._settle_claims(revoked)
        await self.worker._offsets.commit(self.consumer)
        # Work still running for these partitions finishes, but its offsets are the
        # next owner's to commit: it re-reads them, and its claims are refused.
        self.worker._offsets.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.worker._offsets.assign(assigned)
        for tp in assigned:  # what an earlier owner may have fetched is measured anew
            self.worker._fresh_from.pop(tp, None)
        self.worker.assigned = frozenset(tp.partition for tp in assigned)
        log.info(
            "worker %s assigned work partitions %s",
            self.worker.identity.id, sorted(self.worker.assigned),
        )
        self.worker.ready.set()


class Worker:
    """The worker role; `run(stop)` consumes work until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        name: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.identity = role_identity("worker", name)
        self.concurrency = concurrency or settings.worker_concurrency
        self.store = WorkerResultStore(settings.result_store_url)
        self.caches: dict[str, list[State]] = {}
        """cache_for results of this process (Prefect 1 keeps them per process too)."""
        self.stats = WorkerStats()
        self.assigned: frozenset[int] = frozenset()
        self.ready = asyncio.Event()
        self._topics = settings.topic_names()
        self._claims: dict[str, concurrent.futures.Future[list[Event]]] = {}
        self._running: dict[RunKey, _Job] = {}
        """Attempts this worker claimed (or is claiming), by (task run id, attempt)."""
        self._running_lock = threading.Lock()
        self._jobs: set[_Job] = set()
        """Work items started and not settled yet."""
        self._fresh_from: dict[TopicPartition, int] = {}
        """Per work partition, the first offset no earlier owner can have fetched."""
        self._tail_live = False
        self._tail_resuming: asyncio.Future[None] | None = None
        self._outbox = Outbox()
        self._offsets = OrderedOffsets()
        self._in_flight = 0
        self._slot_free = asyncio.Event()
        self._give_up_claims = threading.Event()
        self._cache_lock = threading.Lock()
        self._partitions: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._handoff_lock = threading.Lock()
        self._handoff_scheduled = False
        self._id_prefix = f"{self.identity.id}:{uuid.uuid4().hex[:12]}:"
        self._tail: AIOKafkaConsumer | None = None
        self._tail_partitions: list[TopicPartition] = []
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    # ----- the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume work until `stop`; then let running bodies finish and commit."""
        self._loop = asyncio.get_running_loop()
        # Task threads hold the GIL for up to the switch interval (5 ms by default)
        # whenever the event loop needs it: every fetch, send and claim answer would
        # wait that long. A shorter interval keeps the loop responsive.
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
        producer = make_producer(self.settings, linger_ms=0)  # batched in _send_loop
        tail = make_consumer(self.settings, group_id=None)
        consumer = make_consumer(self.settings, group_id=f"{self.settings.app_id}-workers")
        threads = TaskThreads(self.concurrency, self._run_job, "runledger-task")
        helpers: list[asyncio.Task[None]] = []
        await producer.start()
        try:
            for name in ("commands", "deadletter"):
                topic = self._topics[name]
                self._partitions[name] = len(await producer.partitions_for(topic))
            await tail.start()
            await self._assign_tail(tail, await producer.partitions_for(self._topics["ledger"]))
            helpers = [
                asyncio.create_task(self._tail_loop(tail), name="worker-ledger-tail"),
                asyncio.create_task(self._outbox.run(producer), name="worker-sender"),
                asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeats"),
            ]
            await consumer.start()
            consumer.subscribe([self._topics["work"]], listener=_Rebalance(self, consumer))
            await self._work_loop(consumer, threads, stop, helpers)
        finally:
            for job in threads.stop():  # never started: re-delivered to the next owner
                self._release(job)
            await self._drain()
            with contextlib.suppress(KafkaError):
                await self._offsets.commit(consumer)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await consumer.stop()
            await tail.stop()
            await producer.stop()

    async def _work_loop(
        self,
        consumer: AIOKafkaConsumer,
        threads: TaskThreads[_Job],
        stop: asyncio.Event,
        helpers: list[asyncio.Task[None]],
    ) -> None:
        # Up to one queued job per thread besides the running ones, so threads never
        # wait for a fetch; refilled once a thread's worth is free, so each fetch
        # hands over a batch rather than a record per finished job.
        capacity = self.concurrency * 2
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while not stop.is_set():
            for task in helpers:
                if task.done():  # a helper died: stop rather than stall silently
                    task.result()
                    raise RuntimeError(f"worker helper {task.get_name()} stopped")
            idle = False
            if self._in_flight > self.concurrency:
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_free.wait(), _POLL_MS / 1000)
            else:
                free = capacity - self._in_flight
                batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=free)
                idle = not batch
                for tp, records in batch.items():
                    if self._offsets.owns(tp):
                        floor = self._fresh_floor(consumer, tp, records)
                        for record in records:
                            self._start(tp, record, threads, fresh=record.offset >= floor)
            # A commit is a broker round trip: at most every _COMMIT_INTERVAL_S while busy.
            if idle or loop.time() - last_commit >= _COMMIT_INTERVAL_S:
                await self._offsets.commit(consumer)
                last_commit = loop.time()

    async def _drain(self) -> None:
        """Wait (bounded) for started jobs; then pending claims give up (ClientFailed)."""
        deadline = asyncio.get_running_loop().time() + _DRAIN_GRACE_S
        while self._in_flight and asyncio.get_running_loop().time() < deadline:
            self._slot_free.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_free.wait(), 0.1)
        self._give_up_claims.set()
        if self._in_flight:
            log.warning("worker stopping with %d task runs still running", self._in_flight)

    def _fresh_floor(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: list[ConsumerRecord[bytes, bytes]],
    ) -> int:
        """The first offset of `tp` that no earlier owner of the partition can have fetched.

        That is the visible end of this worker's first fetch after the assignment
        (`visible_end`: the last stable offset under read_committed, else the high
        watermark): an earlier owner stopped fetching when the partition was
        revoked, before that fetch, and could not read past that end either.
        """
        if self.settings.worker_await_claims:
            return sys.maxsize
        floor = self._fresh_from.get(tp)
        if floor is None:
            end = visible_end(consumer, tp) or 0
            floor = self._fresh_from[tp] = max(end, records[-1].offset + 1)
        return floor

    def _start(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        threads: TaskThreads[_Job],
        *,
        fresh: bool,
    ) -> None:
        assert self._loop is not None
        self.stats.received += 1
        entry = self._offsets.track(tp, record.offset)
        home = header(record.headers, HEADER_PARTITION)
        if home is not None and home.isdigit():
            partition = int(home)
        else:  # a work record from elsewhere: where the default partitioner puts the run
            key = record.key or b""
            partition = partition_of(key.split(b"/", 1)[0], self._partitions["commands"])
        job = _Job(record, partition, entry, fresh)
        self._jobs.add(job)
        self._in_flight += 1
        threads.submit(job)

    async def _settle_claims(self, revoked: Iterable[TopicPartition]) -> None:
        """Before giving partitions up: no unawaited claim of theirs may still be in flight.

        Found by the simulation: a fresh item's body runs before its claim is
        answered, which is safe only while no other worker can claim the item.
        After a revocation the next owner re-reads it and claims it; if that claim
        overtook ours, both bodies ran. So the jobs of revoked partitions that have
        not claimed yet will await their claims, and the revocation (which the
        group waits for before it assigns the partitions anew) waits until the
        claims already sent are on the broker, ahead of any claim of the next owner.
        """
        gone = set(revoked)
        with self._running_lock:
            mine = [j for j in self._jobs if _tp_of(j) in gone]
            for job in mine:
                job.fresh = False
        deadline = asyncio.get_running_loop().time() + _REVOKE_CLAIM_WAIT_S
        while any(j.claim is not None for j in mine):
            if asyncio.get_running_loop().time() > deadline:
                log.warning("revoking work partitions with unacknowledged claims in flight")
                return
            await asyncio.sleep(0.01)

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` on the event loop; callable from any thread.

        One `call_soon_threadsafe` (a self-pipe write, a syscall that waited for
        the GIL under load: py-spy) wakes the loop for everything queued until it
        runs, instead of one per proposal and one per finished job.
        """
        self._handoff.append((callback, args))
        with self._handoff_lock:
            if self._handoff_scheduled:
                return
            self._handoff_scheduled = True
        assert self._loop is not None
        if self._loop.is_closed():
            return  # a body outlived the stop grace: nothing left to hand it to
        self._loop.call_soon_threadsafe(self._run_handoff)

    def _run_handoff(self) -> None:
        with self._handoff_lock:
            self._handoff_scheduled = False  # anything queued after this wakes us again
        handoff = self._handoff
        while handoff:
            callback, args = handoff.popleft()
            callback(*args)

    # A job's offset may be committed once its thread finished and the broker
    # acknowledged every record it made; both events arrive on the loop.

    def _finished(self, job: _Job) -> None:
        job.finished = True
        if not job.unacked:
            self._settle(job)

    def _acked(self, job: _Job, record: Outgoing, error: BaseException | None) -> None:
        if error is not None:
            # Never settle (so never commit) a work item whose proposal is not on the
            # broker: produce it again (commands are deduplicated by id), holding
            # the job's later records back so they cannot overtake it.
            log.error(
                "a record of work %s was not produced, producing it again: %r",
                job.record.key, error,
            )
            if job.held is None:
                job.held = []
            assert self._loop is not None
            self._loop.call_later(_RESEND_DELAY_S, self._resend, job, record)
            return
        job.unacked -= 1
        if record is job.claim:
            job.claim = None
        if job.held is not None:
            held, job.held = job.held, None
            for later in held:
                self._outbox.put(later, partial(self._acked, job, later))
        if job.finished and not job.unacked:
            self._settle(job)

    def _resend(self, job: _Job, record: Outgoing) -> None:
        self._outbox.put(record, partial(self._acked, job, record))

    def _settle(self, job: _Job) -> None:
        if not job.settled:
            job.offset.done = True
            self._release(job)

    def _release(self, job: _Job) -> None:
        self._jobs.discard(job)
        job.settled = True
        self._in_flight -= 1
        self._slot_free.set()

    @property
    def committed(self) -> dict[int, int]:
        """Last offset committed per work partition (where the group would resume)."""
        return self._offsets.committed

    # ----- in a task thread ----------------------------------------------------------

    def _run_job(self, job: _Job) -> None:
        try:
            self._execute(job)
        except BaseException as exc:
            log.error("task run job failed: %r", exc, exc_info=exc)
        finally:
            self._hand_over(self._finished, job)

    def _execute(self, job: _Job) -> None:
        try:
            work = job.work = decode_work(job.record.value)
        except EventDecodeError as exc:
            self._dead_letter(job, f"undecodable work record: {exc}")
            return
        try:
            flow = load_flow(work.flow_ref, self.settings)
            handlers = import_handlers(
                work.context.get("task_runner_state_handlers") or (), self.settings
            )
        except FlowLoadError as exc:
            self._unloadable(job, work, exc.reason)
            return
        try:
            final = execute_work(
                work,
                flow=flow,
                submit=partial(self._submit, job),
                next_id=self._next_id,
                store=self.store,
                clock=self.clock,
                worker=self.identity,
                handlers=handlers,
                # Services checkpoint by default; a run may opt out in its context
                # (what Prefect's local `flow.run(checkpointing=False)` means).
                checkpointing=work.context.get("checkpointing", True) is not False,
                caches=self.caches,
            )
            self._remember_cache(flow, work.slug, final)
            self.stats.executed += 1
        finally:
            self._stop_heartbeats(job)

    def _submit(self, job: _Job, command: Command) -> list[Event] | None:
        """`execute_work`'s submit; a Running claim may wait for the ledger's answer."""
        if isinstance(command, TransitionProposed):
            self.stats.proposals += 1
            if command.state.get("type") == "Running":
                return self._claim(job, command)
            if command.final:
                # The attempt's last word: a heartbeat sent after it would only be
                # refused (and recorded as a refusal). Removed before the hand-over, a
                # heartbeat tick either saw the attempt and was queued first, or not.
                self._stop_heartbeats(job)
        self._post(job, self._topics["commands"], job.partition, command)
        return []

    def _stop_heartbeats(self, job: _Job) -> None:
        assert job.work is not None
        key = (job.work.task_run_id, job.work.attempt)
        with self._running_lock:
            if self._running.get(key) is job:
                del self._running[key]

    def _claim(self, job: _Job, command: TransitionProposed) -> list[Event] | None:
        assert job.work is not None
        key = (job.work.task_run_id, job.work.attempt)
        with self._running_lock:
            duplicate = key in self._running  # a copy of this attempt runs here already
            if not duplicate:
                self._running[key] = job  # heartbeats start with the claim
            unawaited = job.fresh and not duplicate
            if unawaited:  # decided under the lock that a revocation takes (_settle_claims)
                job.claim = self._outgoing(self._topics["commands"], job.partition, command)
        if unawaited:
            assert job.claim is not None
            self.stats.claims_unawaited += 1
            self._hand_over(self._enqueue_claim, job, job.claim)
            return None
        waiter: concurrent.futures.Future[list[Event]] = concurrent.futures.Future()
        self._claims[command.event_id] = waiter  # before sending: never miss the answer
        record = self._outgoing(self._topics["commands"], job.partition, command)
        self._hand_over(self._send_awaited_claim, job, record)
        facts = self._await_claim(command.event_id, waiter)
        if any(
            isinstance(f, TaskRunTransitioned) and f.state.get("type") == "Running" for f in facts
        ):
            self.stats.claims_accepted += 1
        else:
            self.stats.claims_refused += 1
        return facts

    def _await_claim(
        self, command_id: str, waiter: concurrent.futures.Future[list[Event]]
    ) -> list[Event]:
        while True:
            try:
                return waiter.result(timeout=_CLAIM_POLL_S)
            except TimeoutError:
                if self._give_up_claims.is_set():
                    self._claims.pop(command_id, None)
                    return []  # stopping: unclaimed, the body does not run here

    def _post(self, job: _Job | None, topic: str, partition: int, event: Event) -> None:
        self._hand_over(self._enqueue, job, self._outgoing(topic, partition, event))

    @staticmethod
    def _outgoing(topic: str, partition: int, event: Event) -> Outgoing:
        return Outgoing(topic, partition, event.flow_run_id.encode(), encode(event))

    def _next_id(self) -> str:
        # A random token per process (a restarted worker may reuse its name) and a
        # counter: uuid4 per command read os.urandom, a GIL-releasing syscall that
        # cost ~1 ms under contention from the task threads (measured).
        return f"{self._id_prefix}{next(self._ids)}"

    def _unloadable(self, job: _Job, work: WorkItem, reason: str) -> None:
        ref = work.flow_ref.path or work.flow_ref.location
        failed = Failed(f"Could not load flow {ref}: {reason}")
        command = TransitionProposed(
            event_id=self._next_id(),
            flow_run_id=work.flow_run_id,
            task_run_id=work.task_run_id,
            task_slug=work.slug,
            map_index=work.map_index,
            occurred_at=self.clock(),
            cause=Cause(worker=self.identity),
            expected_seq=work.expected_seq,
            attempt=work.attempt,
            state=failed.serialize(),
            final=True,
        )
        self.stats.proposals += 1
        self._post(job, self._topics["commands"], job.partition, command)
        self._dead_letter(job, f"cannot load flow {ref}: {reason}", work.flow_run_id)

    def _dead_letter(self, job: _Job, reason: str, flow_run_id: str | None = None) -> None:
        log.warning("dead letter from work@%d: %s", job.record.offset, reason)
        self.stats.dead_letters += 1
        dead = dead_letter_for(job.record, reason, flow_run_id)
        topic = self._topics["deadletter"]
        key = dead.key.encode() if dead.key else b""
        self._post(job, topic, partition_of(key, self._partitions["deadletter"]), dead)

    def _remember_cache(self, flow: Flow, slug: str, final: State) -> None:
        expires = getattr(final, "cached_result_expiration", None)
        if not isinstance(final, Cached) or expires is None:
            return
        task = flow.task_by_slug(slug)
        key = task.cache_key or task.name
        now = self.clock()
        with self._cache_lock:
            # Replaced, not appended: task threads may be reading the old list.
            kept = [c for c in self.caches.get(key, []) if _unexpired(c, now)]
            self.caches[key] = [*kept, final]

    # ----- on the event loop ---------------------------------------------------------

    def _enqueue(self, job: _Job | None, record: Outgoing) -> None:
        if job is None:
            self._outbox.put(record)
            return
        job.unacked += 1
        if job.held is not None:
            job.held.append(record)
            return
        self._outbox.put(record, partial(self._acked, job, record))

    def _enqueue_claim(self, job: _Job, record: Outgoing) -> None:
        job.beating = True  # on the event loop, as the heartbeat loop: no race
        self._enqueue(job, record)

    def _send_awaited_claim(self, job: _Job, record: Outgoing) -> None:
        if self._tail_live:
            self._enqueue_claim(job, record)
            return
        task = asyncio.get_running_loop().create_task(self._send_after_tail(job, record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_after_tail(self, job: _Job, record: Outgoing) -> None:
        if self._tail_resuming is None:
            self._tail_resuming = asyncio.ensure_future(self._resume_tail())
        await asyncio.shield(self._tail_resuming)
        self._enqueue_claim(job, record)

    async def _assign_tail(self, tail: AIOKafkaConsumer, partitions: Iterable[int]) -> None:
        # The partitions come from the producer's metadata, which waits for the topic:
        # a consumer's `topics()` does not update its own metadata.
        self._tail = tail
        topic = self._topics["ledger"]
        self._tail_partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        tail.assign(self._tail_partitions)
        tail.pause(*self._tail_partitions)  # until a claim is awaited

    async def _resume_tail(self) -> None:
        """Read the ledger from its end on: called before an awaited claim is sent."""
        tail, tps = self._tail, self._tail_partitions
        assert tail is not None
        try:
            while True:
                try:
                    await tail.seek_to_end(*tps)
                    for tp in tps:
                        # Resolve the position now: a lazy seek could skip an answer
                        # that lands before the first fetch. (On Tansu the "end" may be
                        # a little early, which only means reading a few old facts.)
                        await tail.position(tp)
                    break
                except KafkaError as exc:
                    log.warning("could not position the ledger tail, retrying: %r", exc)
                    await asyncio.sleep(_CLAIM_POLL_S)
            tail.resume(*tps)
            self._tail_live = True
        finally:
            self._tail_resuming = None

    async def _tail_loop(self, tail: AIOKafkaConsumer) -> None:
        while True:
            batch = await tail.getmany(timeout_ms=_POLL_MS, max_records=10_000)
            if not self._claims:
                if self._tail_live and self._tail_resuming is None:
                    tail.pause(*self._tail_partitions)  # nothing awaited: stop fetching
                    self._tail_live = False
                continue
            for records in batch.values():
                for record in records:
                    command_id = header(record.headers, HEADER_COMMAND)
                    waiter = self._claims.pop(command_id.decode(), None) if command_id else None
                    if waiter is None:
                        continue
                    try:
                        waiter.set_result([decode(record.value or b"")])
                    except EventDecodeError as exc:
                        log.error("undecodable answer to claim %s: %s", command_id, exc)
                        waiter.set_result([])

    async def _heartbeat_loop(self) -> None:
        commands = self._topics["commands"]
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            for (task_run_id, _attempt), job in list(self._running.items()):
                if not job.beating:
                    continue  # its claim waits for the ledger tail: it goes first
                work, partition = job.work, job.partition
                assert work is not None
                beat = HeartbeatSent(
                    event_id=self._next_id(),
                    flow_run_id=work.flow_run_id,
                    task_run_id=task_run_id,
                    task_slug=work.slug,
                    map_index=work.map_index,
                    occurred_at=self.clock(),
                    cause=Cause(worker=self.identity),
                    attempt=work.attempt,
                )
                self.stats.heartbeats += 1
                self._enqueue(
                    None, Outgoing(commands, partition, work.flow_run_id.encode(), encode(beat))
                )


def _tp_of(job: _Job) -> TopicPartition:
    return TopicPartition(job.record.topic, job.record.partition)


def _unexpired(state: State, now: Any) -> bool:
    expiration = getattr(state, "cached_result_expiration", None)
    return expiration is None or expiration > now
