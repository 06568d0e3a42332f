"""`written_end` of a transactional partition: the end of the facts submitted before the call.

Facts submitted after the call may join the same transaction; the offset given is
still that of the last fact submitted before it (what a snapshot taken at the
call holds), not the transaction's end. The producer here is a stand-in that
numbers records as one broker partition would.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from services.roles.common import Outgoing
from services.roles.ledger_writer import _Transactions

LEDGER = "t.ledger"


class _Batch:
    def __init__(self) -> None:
        self.count = 0

    def append(self, **_: Any) -> object:
        self.count += 1
        return object()

    def record_count(self) -> int:
        return self.count


class _Producer:
    """Numbers each partition's records from 0, plus one commit marker per transaction."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}
        self.touched: set[tuple[str, int]] = set()
        self.commit = asyncio.Event()
        self.commit.set()

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        base = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = base + batch.count
        self.touched.add((topic, partition))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=base))
        return future

    async def begin_transaction(self) -> None:
        self.touched.clear()

    async def commit_transaction(self) -> None:
        await self.commit.wait()
        for tp in self.touched:
            self.next[tp] += 1  # the commit marker takes an offset


def facts(n: int) -> list[Outgoing]:
    return [Outgoing(LEDGER, 0, b"k", b"v") for _ in range(n)]


def test_the_end_is_that_of_the_facts_submitted_before_the_call() -> None:
    async def scenario() -> list[int | None]:
        producer = _Producer()
        txns = _Transactions(0, producer, "g", ledger_topic=LEDGER)
        txns.idle.set()
        task = asyncio.create_task(txns.run())
        ends: list[int | None] = [await txns.written_end()]  # nothing written yet
        txns.submit(facts(3), {})  # offsets 0-2, marker 3
        await asyncio.sleep(0.01)
        ends.append(await txns.written_end())
        producer.commit.clear()  # hold the next commit
        txns.submit(facts(2), {})  # offsets 4-5 ...
        await asyncio.sleep(0.01)
        in_flight = txns.written_end()
        txns.submit(facts(4), {})  # queued behind it: 7-10 in the next transaction
        queued = txns.written_end()
        txns.submit(facts(5), {})  # 11-15, joins the same next transaction
        producer.commit.set()
        ends += [await in_flight, await queued]
        task.cancel()
        return ends

    assert asyncio.run(scenario()) == [None, 3, 6, 11]

