"""What a worker needs besides its loop: work decoding, a result store, an outbox.

* `decode_work`: the WorkItem of a `work` record (a `work_dispatched` fact as the
  ledger writes it, or a bare WorkItem object as docs/events.md allows).
* `Outbox`: records handed over by task threads (through the event loop) and sent
  in batches; each tracked record gets an ack future that resolves to None or to
  the send error once the broker answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from events import MalformedEvent, WorkDispatched, WorkItem, decode
from services.roles import Outgoing, send_records

__all__ = ["Ack", "OrderedOffsets", "Outbox", "Pending", "decode_work"]

log = logging.getLogger(__name__)

Ack = asyncio.Future[BaseException | None]


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
        self._items: list[tuple[Outgoing, Ack | None]] = []
        self._ready = asyncio.Event()

    def put(self, record: Outgoing, *, tracked: bool = True) -> Ack | None:
        """Queue `record` (call on the loop); its ack future when `tracked`."""
        ack: Ack | None = asyncio.get_running_loop().create_future() if tracked else None
        self._items.append((record, ack))
        self._ready.set()
        return ack

    async def run(self, producer: AIOKafkaProducer) -> None:
        """Send whatever is queued, as often as something is: runs until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            items, self._items = self._items, []
            acks = [ack for _, ack in items if ack is not None]
            try:
                futures = await send_records(producer, [record for record, _ in items])
            except Exception as exc:
                log.exception("could not queue %d records", len(items))
                _settle(acks, exc)
                continue
            done = asyncio.gather(*futures)
            done.add_done_callback(partial(_settle_from, acks))


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


def _settle(acks: list[Ack], error: BaseException | None) -> None:
    # Errors are results, not exceptions: a heartbeat's ack has no reader, and an
    # unread future exception would only be logged as "never retrieved".
    for ack in acks:
        if not ack.done():
            ack.set_result(error)


def _settle_from(
    acks: list[Ack], done: asyncio.Future[Any]
) -> None:
    error = None if done.cancelled() else done.exception()
    _settle(acks, error)
