"""Pieces the ledger and worker roles share: identities, headers, batched produce.

Both roles produce in bursts (a mapped task dispatches thousands of task runs
in one command; a batch of proposals arrives at once), so records are grouped
per partition into aiokafka `BatchBuilder`s and handed over with `send_batch`:
BROKER_NOTES.md measured ~50k msg/s through `send()` and ~270k msg/s through
the batch API on this broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from events import WorkerIdentity

__all__ = [
    "HEADER_COMMAND",
    "HEADER_PARTITION",
    "HEADER_WRITER",
    "BatchEnd",
    "CommitPipeline",
    "Outgoing",
    "batch_end",
    "header",
    "partition_of",
    "role_identity",
    "send_records",
    "send_records_tracked",
    "spread",
]

log = logging.getLogger(__name__)

HEADER_COMMAND = "rl-command"
"""On ledger facts: the id of the command they answer. Workers waiting for a claim
check it before decoding anything, so tailing the whole ledger stays cheap."""

HEADER_WRITER = "rl-writer"
"""On ledger facts: ``<ledger identity>#<assignment>``, the ledger process that wrote
them and the partition assignment it wrote under (the audit's "which ledger decided
this"; on one partition a tag never comes back once another appeared)."""

HEADER_PARTITION = "rl-partition"
"""On work records: the commands/ledger partition of the flow run. Workers send
their proposals there, so every command of a run reaches the ledger instance that
owns the run whatever partitioner the client that started it used."""


def role_identity(role: str, name: str | None = None) -> WorkerIdentity:
    """The identity a role puts in `cause.worker`: unique per process."""
    host = socket.gethostname()
    pid = os.getpid()
    return WorkerIdentity(id=name or f"{role}-{host}-{pid}", host=host, pid=pid)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java and aiokafka) picks."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def spread(key: bytes, partitions: int) -> int:
    """A stable partition for `key` where only spreading matters (work items).

    crc32 is C; aiokafka's murmur2 is pure Python (~60 us a key, measured), and a
    mapped task dispatches thousands of work items in one command.
    """
    return zlib.crc32(key) % partitions


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of header `name` of a consumed record, if present."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


@dataclass(slots=True)
class Outgoing:
    """One record to produce, with its partition already chosen."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    """None is a tombstone (compacted topics: the key's earlier values go)."""
    headers: list[tuple[str, bytes]] = field(default_factory=list)


async def send_records(
    producer: AIOKafkaProducer, records: Iterable[Outgoing]
) -> list[asyncio.Future[Any]]:
    """Queue `records` in as few batches as possible; the futures resolve on broker acks.

    Order within a partition is kept: batches of one partition are queued in
    order, and aiokafka keeps one batch per partition in flight.
    """
    futures, _ = await send_records_tracked(producer, records)
    return futures


BatchEnd = tuple[asyncio.Future[Any], int]
"""The future of a partition's last batch (its RecordMetadata holds the batch's first
offset) and how many records that batch holds: the offset after the last record."""


async def send_records_tracked(
    producer: AIOKafkaProducer, records: Iterable[Outgoing]
) -> tuple[list[asyncio.Future[Any]], dict[tuple[str, int], BatchEnd]]:
    """`send_records`, also giving each (topic, partition)'s last batch and its size."""
    groups: dict[tuple[str, int], list[Outgoing]] = {}
    for record in records:
        groups.setdefault((record.topic, record.partition), []).append(record)
    futures: list[asyncio.Future[Any]] = []
    ends: dict[tuple[str, int], BatchEnd] = {}
    for (topic, partition), group in groups.items():
        batch = producer.create_batch()
        count = 0
        for record in group:
            appended = batch.append(
                timestamp=None, key=record.key, value=record.value, headers=record.headers
            )
            if appended is None:  # full: ship it and start the next one
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                count = 0
                if batch.append(
                    timestamp=None, key=record.key, value=record.value, headers=record.headers
                ) is None:
                    size = len(record.value or b"")
                    raise ValueError(
                        f"a record of {size} bytes for {topic} does not fit "
                        "in one producer batch (max_batch_size)"
                    )
            count += 1
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            ends[(topic, partition)] = (futures[-1], count)
    return futures, ends


def batch_end(end: BatchEnd) -> int:
    """The offset after the last record of an acknowledged batch (see `BatchEnd`)."""
    future, count = end
    return int(future.result().offset) + count


class CommitPipeline:
    """Offsets committed in order, each only after the acks of what its batch produced.

    The ledger does not wait for a batch's acks before taking the next batch: its
    views are already updated and the producer keeps per-partition order, so
    waiting would only add a broker round trip (or two, with the commit) to every
    batch. This task waits instead, and commits. A failed send is kept in
    `failure` for the loop to act on (re-fold and re-read from the last commit).
    """

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._entries: deque[tuple[asyncio.Future[Any], dict[TopicPartition, int]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failure: BaseException | None = None

    def push(self, futures: list[asyncio.Future[Any]], offsets: dict[TopicPartition, int]) -> None:
        if not futures and not offsets:
            return
        self._entries.append((asyncio.gather(*futures), offsets))
        self._idle.clear()
        self._wake.set()

    async def drain(self) -> None:
        """Return once everything pushed so far is acknowledged and committed (or failed)."""
        await self._idle.wait()

    def discard(self) -> None:
        """Forget pending entries (after a failure): their offsets must not be committed."""
        for acks, _ in self._entries:
            acks.add_done_callback(_retrieve)
        self._entries.clear()
        self._idle.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            offsets: dict[TopicPartition, int] = {}
            while self._entries:
                acks, batch_offsets = self._entries[0]
                try:
                    await acks
                except Exception as exc:
                    log.error("produce failed; its batch stays uncommitted: %r", exc)
                    self.failure = exc
                    self.discard()
                    offsets.clear()
                    break
                self._entries.popleft()
                offsets.update(batch_offsets)
                if not self._entries or not self._entries[0][0].done():
                    break  # commit what is acknowledged now; later acks join the next one
            if offsets:
                try:
                    await self._consumer.commit(offsets)
                except KafkaError as exc:
                    # The group moved on (rebalance): the next owner re-reads these
                    # commands, and decide ignores the ones already on the ledger.
                    log.warning("commit failed: %r", exc)
            if self._entries:
                self._wake.set()
            else:
                self._idle.set()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
