"""Which work records a worker may run without awaiting its claim (`Worker._fresh_floor`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from services.roles.worker import Worker, _Rebalance
from services.settings import Settings

TP = TopicPartition("work", 0)


class FakeConsumer:
    """The high watermark and last stable offset of the last fetch, as aiokafka keeps them."""

    def __init__(
        self, highwater: int, *, lso: int = -1, isolation: str = "read_uncommitted"
    ) -> None:
        self.highwater_of = highwater
        self.lso = lso
        self._isolation_level = isolation

    def highwater(self, tp: TopicPartition) -> int:
        return self.highwater_of

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.lso


def records(*offsets: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord("work", 0, o, 0, 0, b"k", b"v", None, 1, 1, []) for o in offsets
    ]


def worker(tmp_path: Path, **settings: Any) -> Worker:
    return Worker(Settings(data_dir=tmp_path, **settings))


def test_the_first_fetch_after_an_assignment_is_all_possible_redeliveries(tmp_path: Path) -> None:
    """Records fetched first may have been fetched by an earlier owner; later ones not."""
    w = worker(tmp_path)
    consumer = FakeConsumer(highwater=12)
    floor = w._fresh_floor(consumer, TP, records(7, 8, 9))
    assert floor == 12
    assert [o >= floor for o in (7, 8, 9)] == [False, False, False]
    consumer.highwater_of = 20  # later fetches do not move the floor
    assert w._fresh_floor(consumer, TP, records(12, 13)) == 12


def test_the_floor_is_past_the_first_batch_even_if_the_watermark_is_unknown(
    tmp_path: Path,
) -> None:
    w = worker(tmp_path)
    assert w._fresh_floor(FakeConsumer(highwater=0), TP, records(3, 4)) == 5


def test_a_new_assignment_measures_the_floor_anew(tmp_path: Path) -> None:
    w = worker(tmp_path)
    w._fresh_floor(FakeConsumer(highwater=12), TP, records(7))
    listener = _Rebalance(w, None)
    asyncio.run(listener.on_partitions_assigned([TP]))
    assert w._fresh_floor(FakeConsumer(highwater=30), TP, records(25)) == 30


def test_under_read_committed_the_floor_is_the_last_stable_offset(tmp_path: Path) -> None:
    """Work items of a ledger transaction still open (between the LSO and the high
    watermark) cannot have been fetched by anyone yet: they count as fresh."""
    w = worker(tmp_path)
    consumer = FakeConsumer(highwater=20, lso=12, isolation="read_committed")
    assert w._fresh_floor(consumer, TP, records(7, 8)) == 12


def test_with_worker_await_claims_no_record_is_fresh(tmp_path: Path) -> None:
    w = worker(tmp_path, worker_await_claims=True)
    floor = w._fresh_floor(FakeConsumer(highwater=1), TP, records(0))
    assert floor > 10**12
