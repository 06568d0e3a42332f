"""What a worker needs besides its loop: work decoding, a result store, an outbox.

* `decode_work`: the WorkItem of a `work` record (a `work_dispatched` fact as the
  ledger writes it, or a bare WorkItem object as docs/events.md allows).
* `Outbox`: records handed over by task threads (through the event loop) and sent
  in batches; a record may carry a callback that gets None or the send error
  once the broker answered.
* `TaskThreads`: a fixed set of threads taking jobs from one queue.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from events import MalformedEvent, WorkDispatched, WorkItem, decode
from services.roles.common import Outgoing, send_records

__all__ = ["OnAck", "OrderedOffsets", "Outbox", "Pending", "TaskThreads", "decode_work"]

log = logging.getLogger(__name__)

OnAck = Callable[[BaseException | None], None]
"""Told None once the broker acknowledged a record, or the error that lost it."""

J = TypeVar("J")


def decode_work(value: bytes | None) -> WorkItem:
    """The WorkItem of a work record: a `work_dispatched` fact, or a bare WorkItem object."""
    try:
        event = decode(value or b"")
    except MalformedEvent as exc:
        try:  # docs/events.md also allows a bare WorkItem
            return WorkItem.model_validate_json(value or b"")
        except ValidationError:
            raise exc from None
    if not isinstance(event, WorkDispatched):
        raise MalformedEvent(f"a work record must be a work_dispatched fact, got {event.type!r}")
    return event.work


class Outbox:
    """Records to produce, collected on the event loop and sent in batches."""

    def __init__(self) -> None:
        self._items: list[tuple[Outgoing, OnAck | None]] = []
        self._ready = asyncio.Event()

    def put(self, record: Outgoing, on_ack: OnAck | None = None) -> None:
        """Queue `record` (call on the loop); `on_ack` hears how its send ended."""
        self._items.append((record, on_ack))
        self._ready.set()

    async def run(self, producer: AIOKafkaProducer) -> None:
        """Send whatever is queued, as often as something is: runs until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            items, self._items = self._items, []
            callbacks = [on_ack for _, on_ack in items if on_ack is not None]
            try:
                futures = await send_records(producer, [record for record, _ in items])
            except Exception as exc:
                log.exception("could not queue %d records", len(items))
                _settle(callbacks, exc)
                continue
            # One gather per batch (not a future per record): it also retrieves
            # the errors of records nobody tracks (heartbeats).
            done = asyncio.gather(*futures)
            done.add_done_callback(partial(_settle_from, callbacks))


class TaskThreads(Generic[J]):
    """`threads` daemon threads running `run(job)` for each submitted job, in order.

    Lighter than a ThreadPoolExecutor for many tiny jobs: no Future (and its
    Condition) per job, no done-callbacks; `run` reports its own outcome. On
    `stop`, jobs not started yet are handed back, and every thread ends after
    the job it is running.
    """

    def __init__(self, threads: int, run: Callable[[J], None], name: str) -> None:
        self._run = run
        self._queue: queue.SimpleQueue[J | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: J) -> None:
        self._queue.put(job)

    def stop(self) -> list[J]:
        """End the threads; the jobs that never started."""
        unstarted: list[J] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                unstarted.append(job)
        for _ in self._threads:
            self._queue.put(None)
        return unstarted

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._run(job)
            except BaseException:  # run reports its own failures; never lose a thread
                log.exception("a task thread's job raised")


@dataclass(eq=False)
class Pending:
    """A consumed record whose work is not finished (`done`) yet."""

    offset: int
    done: bool = False


class OrderedOffsets:
    """Offsets in flight per partition; only a finished prefix is ever committed.

    Work items finish out of order (a pool of threads); committing offset n+1
    tells the group that everything up to n is done, so the commit stops at the
    first unfinished item of each partition.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[Pending]] = {}
        self.committed: dict[int, int] = {}

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._pending.setdefault(tp, deque())

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._pending.pop(tp, None)

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._pending

    def track(self, tp: TopicPartition, offset: int) -> Pending:
        entry = Pending(offset)
        self._pending[tp].append(entry)
        return entry

    async def commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, entries in self._pending.items():
            last = None
            while entries and entries[0].done:
                last = entries.popleft().offset
            if last is not None:
                offsets[tp] = last + 1
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # rebalanced meanwhile: the next owner re-delivers
            log.warning("work commit failed: %r", exc)
        else:
            self.committed.update({tp.partition: offset for tp, offset in offsets.items()})


def _settle(callbacks: list[OnAck], error: BaseException | None) -> None:
    for on_ack in callbacks:
        on_ack(error)


def _settle_from(callbacks: list[OnAck], done: asyncio.Future[Any]) -> None:
    error: BaseException | None = (
        asyncio.CancelledError() if done.cancelled() else done.exception()
    )
    _settle(callbacks, error)
