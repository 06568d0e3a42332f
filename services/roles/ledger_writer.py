"""How the ledger role writes a batch: one Kafka transaction per partition, or at-least-once.

The ledger decides a batch of commands from one `commands` partition and then
has three things to write: the facts (to the same partition of `ledger`), the
work items of the task runs it submitted (to `work`) and the offsets of the
commands it consumed. `LedgerWriter` is that write, in two modes
(`processing_guarantee`):

* `TransactionalWriter` (exactly-once, Apache Kafka): one transactional producer
  per owned partition, whose transactional id is derived from the topic prefix
  and the partition number. All three go into one transaction, so a batch is
  visible whole or not at all to every read_committed reader. Creating the
  producer when a partition is assigned bumps the id's epoch: the previous
  owner's open transaction is aborted, and anything it tries to commit later is
  refused (ProducerFenced). That is the fencing of a zombie ledger (paused,
  partitioned away, or started twice), whatever consumer group it is in.
* `AtLeastOnceWriter` (any broker, e.g. Tansu): plain sends, and the commands'
  offsets committed once every record of their batch was acknowledged
  (`CommitPipeline`). A crash can leave part of a batch written; the redelivered
  commands are recognised by id and the fold is idempotent.

Neither waits for the broker before the ledger takes its next batch: the views
are already current. A transactional writer keeps at most one transaction in
flight per partition and puts everything submitted meanwhile into the next one
(group commit), so its commit rate adapts to the load.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiokafka.producer.sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from services.kafka.clients import make_producer
from services.roles.common import (
    BatchEnd,
    CommitPipeline,
    Outgoing,
    batch_end,
    send_records_tracked,
)
from services.settings import Settings

__all__ = [
    "AtLeastOnceWriter",
    "LedgerWriter",
    "TransactionalWriter",
    "WriteFailed",
    "WriteFailure",
    "transactional_id",
]

log = logging.getLogger(__name__)

_SEND_CHUNK = 8_000
"""Records queued at a time by the at-least-once writer: a map's expansion (about four
records per child) reaches the workers while the rest is still being queued."""

_TRANSACTION_RETRY_BACKOFF_MS = 5
"""The ledger's transactional producers' `retry_backoff_ms`. aiokafka also waits this
long (100 ms by default) when a transaction that already holds a partition adds
another, or ends, while the previous transaction's markers are still being written
(ConcurrentTransactions): a batch's facts and its work items are on two topics, so
that put a 100 ms tail under one run in ten (measured here)."""

_BUSY_STREAK = 3
"""Transactions of one partition that each had the next batch waiting when they
committed: from then on the partition counts as busy."""

_BUSY_LINGER_S = 0.010
"""How long a busy partition gathers before its next transaction. Each transaction
costs the broker the same whatever it holds (partition adds, offsets, commit markers
on every partition touched), so under load fewer, larger ones are cheaper; a run
on a quiet ledger never waits (its transactions do not follow each other thrice)."""

_NEXT_TRANSACTION_BACKOFF_S = 0.002
"""How long aiokafka waits to retry adding a partition while the previous
transaction's commit markers are still being written (ConcurrentTransactions).
aiokafka hard-codes 20 ms (`BACKOFF_OVERRIDE`), which put a 20 ms floor under every
transaction that follows another within ~5 ms, i.e. under every hop of a run; the
markers take ~2-4 ms on a single node (measured: back-to-back transactions 27 ms
at 20 ms, 5 ms at 1 ms)."""


def transactional_id(settings: Settings, partition: int) -> str:
    """The transactional id of the ledger writing *partition*: one per partition, not
    per process or app id, so any two ledgers on the same topics fence each other."""
    return f"{settings.topic_prefix}ledger-{partition}"


class WriteFailed(RuntimeError):
    """What `written_end` waited for was not written (the partition is re-folded)."""


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """A partition whose last writes did not happen: the ledger must re-fold it."""

    partition: int
    error: BaseException
    fenced: bool
    """True when another ledger owns the partition now (its producer fenced ours)."""


class LedgerWriter(Protocol):
    """What the ledger loop needs from a writer (see the module docstring)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partitions_for(self, topic: str) -> set[int]:
        """The partition numbers of *topic* (from the writer's metadata)."""

    async def own(self, partitions: set[int]) -> None:
        """Be ready to write *partitions* (fencing any earlier owner); before their rebuild."""

    async def release(self, partitions: set[int]) -> None:
        """Finish what was submitted for *partitions*, then stop writing them."""

    async def submit(
        self, partition: int, records: list[Outgoing], offsets: dict[TopicPartition, int]
    ) -> None:
        """Queue a batch's *records* and the *offsets* of the commands it consumed.

        Everything one command produced must be in one call: under exactly-once a
        call is never split across transactions."""

    async def drain(self) -> None:
        """Return once everything submitted so far is written (or has failed)."""

    def written_end(self, partition: int) -> asyncio.Future[int | None]:
        """A future that resolves once everything submitted so far for *partition* is
        written, to the ledger offset after its last fact (None: no fact since `own`).

        Written means committed under exactly-once, acknowledged under at-least-once;
        the future fails with `WriteFailed` if it was not. What "so far" means is fixed
        when this is called (it is not a coroutine for that reason): a snapshot of the
        views as they were at the call covers exactly the facts below that offset."""

    def take_failures(self) -> list[WriteFailure]:
        """The partitions whose writes failed since the last call."""


# ------------------------------------------------------------------------ at-least-once


class AtLeastOnceWriter:
    """One plain producer; the consumer commits a batch's offsets after its acks."""

    def __init__(self, settings: Settings, consumer: AIOKafkaConsumer) -> None:
        # linger 0: records are batched already (send_records); a linger would only
        # add its time to every hop of every run.
        self._producer = make_producer(settings, linger_ms=0, max_request_size=16 << 20)
        self._pipeline = CommitPipeline(consumer)
        self._committer: asyncio.Task[None] | None = None
        self._owned: set[int] = set()
        self._ledger = settings.topic("ledger")
        self._last_fact: dict[int, BatchEnd] = {}
        """The last batch of facts queued for each ledger partition."""
        self._failures = 0
        """Failures reported so far: a `written_end` that saw one happen fails."""

    async def start(self) -> None:
        await self._producer.start()
        self._committer = asyncio.create_task(self._pipeline.run(), name="ledger-committer")

    async def stop(self) -> None:
        if self._committer is not None:
            await self._pipeline.drain()
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        await self._producer.stop()

    async def own(self, partitions: set[int]) -> None:
        self._owned |= partitions

    async def release(self, partitions: set[int]) -> None:
        await self._pipeline.drain()
        self._owned -= partitions
        for partition in partitions:
            self._last_fact.pop(partition, None)

    async def submit(
        self, partition: int, records: list[Outgoing], offsets: dict[TopicPartition, int]
    ) -> None:
        futures: list[asyncio.Future[Any]] = []
        for start in range(0, len(records), _SEND_CHUNK):
            if start:
                await asyncio.sleep(0)  # the producer ships the last chunk meanwhile
            sent, ends = await send_records_tracked(
                self._producer, records[start : start + _SEND_CHUNK]
            )
            futures.extend(sent)
            end = ends.get((self._ledger, partition))
            if end is not None:
                self._last_fact[partition] = end
        self._pipeline.push(futures, offsets)

    async def drain(self) -> None:
        await self._pipeline.drain()

    def written_end(self, partition: int) -> asyncio.Future[int | None]:
        last, failures = self._last_fact.get(partition), self._failures
        return asyncio.ensure_future(self._written(partition, last, failures))

    async def _written(self, partition: int, last: BatchEnd | None, failures: int) -> int | None:
        # Everything pushed so far acknowledged (or failed): the facts before `last`
        # included, whatever batch they were in.
        await self._pipeline.drain()
        if self._pipeline.failure is not None or self._failures != failures:
            raise WriteFailed(f"a write of ledger partition {partition} failed")
        if last is None:
            return None
        if not last[0].done() or last[0].exception() is not None:
            raise WriteFailed(f"a write of ledger partition {partition} failed")
        return batch_end(last)

    def take_failures(self) -> list[WriteFailure]:
        if self._committer is not None and self._committer.done():
            self._committer.result()  # it died: raise rather than never commit again
        error, self._pipeline.failure = self._pipeline.failure, None
        if error is None:
            return []
        self._failures += 1
        # One producer for every partition: any of them may have lost records.
        return [WriteFailure(p, error, fenced=False) for p in sorted(self._owned)]

    async def partitions_for(self, topic: str) -> set[int]:
        found: set[int] = await self._producer.partitions_for(topic)
        return found


# ------------------------------------------------------------------------ exactly-once


@dataclass
class _Transactions:
    """The transactions of one partition: one in flight, the next one filling up."""

    partition: int
    producer: AIOKafkaProducer
    group_id: str
    records: list[Outgoing] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    failure: WriteFailure | None = None
    """Set when a transaction failed; the partition then takes nothing until re-opened."""
    streak: int = 0
    """Transactions in a row that found the next batch waiting when they committed."""
    reported: bool = False
    task: asyncio.Task[None] | None = None
    ledger_topic: str = ""
    ledger_end: int | None = None
    """The ledger offset after the last fact committed by this producer."""
    facts_queued: int = 0
    """Facts (records on this partition of `ledger`) among `records`."""
    facts_in_flight: int = 0
    """Facts in the transaction being committed."""
    waiting: list[tuple[asyncio.Future[int | None], int]] = field(default_factory=list)
    """`written_end` callers waiting for the transaction that takes the queued records,
    each with how many of its facts were queued when it asked: later submissions
    join the same transaction, so its end is not theirs."""
    in_flight: list[tuple[asyncio.Future[int | None], int]] = field(default_factory=list)
    """The same for the transaction being committed."""
    committing: bool = False

    def written_end(self) -> asyncio.Future[int | None]:
        """Resolves once what was submitted so far is committed (see `LedgerWriter`)."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(WriteFailed(f"ledger partition {self.partition} failed"))
        elif self.records or self.offsets:
            self.waiting.append((future, self.facts_queued))
        elif self.committing:
            self.in_flight.append((future, self.facts_in_flight))
        else:
            future.set_result(self.ledger_end)
        return future

    def settle(self, error: BaseException | None, previous_end: int | None = None) -> None:
        """Answer the `written_end` callers of the transaction that just ended.

        One producer writes the partition and a transaction's facts are contiguous,
        so the k-th fact of a transaction of n ends at `ledger_end - n + k`."""
        waiters, self.in_flight = self.in_flight, []
        if error is not None:
            waiters += self.waiting
            self.waiting = []
        for future, facts in waiters:
            if future.done():
                continue
            if error is not None:
                future.set_exception(WriteFailed(f"ledger partition {self.partition}: {error!r}"))
            elif facts == 0 or self.ledger_end is None:
                future.set_result(previous_end)
            else:
                future.set_result(self.ledger_end - self.facts_in_flight + facts)

    def submit(self, records: list[Outgoing], offsets: dict[TopicPartition, int]) -> None:
        if self.failure is not None:
            return  # the ledger re-folds this partition and re-reads its commands
        self.records.extend(records)
        self.facts_queued += sum(
            1 for r in records if r.partition == self.partition and r.topic == self.ledger_topic
        )
        self.offsets.update(offsets)
        self.idle.clear()
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.records and not self.offsets:
                self.idle.set()
                continue
            if self.streak >= _BUSY_STREAK:
                await asyncio.sleep(_BUSY_LINGER_S)  # busy: let the next batches join
            records, self.records = self.records, []
            offsets, self.offsets = self.offsets, {}
            self.in_flight, self.waiting = self.waiting, []
            self.facts_in_flight, self.facts_queued = self.facts_queued, 0
            self.committing = True
            previous_end = self.ledger_end
            try:
                await self._commit(records, offsets)
            except (KafkaError, ValueError) as exc:
                self.committing = False
                await self._failed(exc)
                self.settle(exc)
                return
            self.committing = False
            self.settle(None, previous_end)
            if self.records or self.offsets:
                self.streak += 1
                self.wake.set()
            else:
                self.streak = 0
                self.idle.set()

    async def _commit(self, records: list[Outgoing], offsets: dict[TopicPartition, int]) -> None:
        await self.producer.begin_transaction()
        futures, ends = await send_records_tracked(self.producer, records)
        if offsets:
            await self.producer.send_offsets_to_transaction(offsets, self.group_id)
        # Every ack is awaited (return_exceptions: none is left unretrieved); the
        # first failure aborts the transaction.
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        await self.producer.commit_transaction()
        end = ends.get((self.ledger_topic, self.partition))
        if end is not None:
            self.ledger_end = batch_end(end)

    async def _failed(self, exc: BaseException) -> None:
        fenced = isinstance(exc, ProducerFenced)
        if fenced:
            log.warning(
                "ledger partition %d: another ledger took it over (transactional id fenced); "
                "this process stops writing it",
                self.partition,
            )
        else:
            log.error("ledger partition %d: transaction failed: %r", self.partition, exc)
            try:
                await self.producer.abort_transaction()
            except Exception as abort_error:  # the producer may be unusable now
                log.warning("could not abort the transaction: %r", abort_error)
        self.failure = WriteFailure(self.partition, exc, fenced=fenced)
        self.records.clear()
        self.facts_queued = 0
        self.offsets.clear()
        self.idle.set()


def _retrieve_fencing(producer: AIOKafkaProducer) -> None:
    """Mark the ProducerFenced of a closed producer's internal futures as seen.

    aiokafka fails its sender task and transaction waiters with it but never
    retrieves them, so asyncio would log "Future exception was never retrieved"
    for a fencing the writer already handled. (A queued batch's drain waiter,
    deeper inside aiokafka's accumulator, is left as it is: asyncio may still log
    that one once.)
    """
    sender = getattr(producer, "_sender", None)
    txn_manager = getattr(producer, "_txn_manager", None)
    internal = [
        getattr(sender, "sender_task", None),
        getattr(txn_manager, "_transaction_waiter", None),
        getattr(txn_manager, "_task_waiter", None),
    ]
    for future in internal:
        if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
            future.exception()


class TransactionalWriter:
    """One transactional producer per owned partition (see the module docstring)."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        self._settings = settings
        self._group_id = group_id
        self._partitions: dict[int, _Transactions] = {}
        self._metadata = make_producer(settings)  # topic metadata only; never sends
        aiokafka.producer.sender.BACKOFF_OVERRIDE = _NEXT_TRANSACTION_BACKOFF_S

    async def start(self) -> None:
        await self._metadata.start()

    async def stop(self) -> None:
        await self.release(set(self._partitions))
        await self._metadata.stop()

    async def partitions_for(self, topic: str) -> set[int]:
        found: set[int] = await self._metadata.partitions_for(topic)
        return found

    async def own(self, partitions: set[int]) -> None:
        # A fresh producer per assignment even for a partition this process held
        # before: only initialising the id again fences an owner that came in between.
        await self.release(partitions & set(self._partitions))
        await asyncio.gather(*(self._open(p) for p in sorted(partitions)))

    async def _open(self, partition: int) -> None:
        producer = make_producer(
            self._settings,
            linger_ms=0,
            max_request_size=16 << 20,
            enable_idempotence=True,
            retry_backoff_ms=_TRANSACTION_RETRY_BACKOFF_MS,
            transactional_id=transactional_id(self._settings, partition),
            transaction_timeout_ms=self._settings.ledger_transaction_timeout_ms,
        )
        await producer.start()
        # An empty transaction completes locally once the producer has its id and
        # epoch: when it returns, the previous owner is fenced and its open
        # transaction aborted, so the rebuild that follows is not held at the LSO.
        await producer.begin_transaction()
        await producer.commit_transaction()
        txns = _Transactions(
            partition, producer, self._group_id, ledger_topic=self._settings.topic("ledger")
        )
        txns.idle.set()
        txns.task = asyncio.create_task(txns.run(), name=f"ledger-txn-{partition}")
        self._partitions[partition] = txns

    async def release(self, partitions: set[int]) -> None:
        closing = [self._partitions.pop(p) for p in sorted(partitions) if p in self._partitions]
        await asyncio.gather(*(self._close(txns) for txns in closing))

    async def _close(self, txns: _Transactions) -> None:
        await txns.idle.wait()
        if txns.task is not None:
            txns.task.cancel()
            await asyncio.gather(txns.task, return_exceptions=True)
        txns.settle(RuntimeError("the partition was released"))
        try:
            await txns.producer.stop()
        except KafkaError as exc:  # a fenced producer may fail to close cleanly
            log.debug("closing the producer of partition %d: %r", txns.partition, exc)
        _retrieve_fencing(txns.producer)

    async def submit(
        self, partition: int, records: list[Outgoing], offsets: dict[TopicPartition, int]
    ) -> None:
        txns = self._partitions.get(partition)
        if txns is None:
            raise RuntimeError(f"ledger partition {partition} is not owned by this writer")
        txns.submit(records, offsets)

    async def drain(self) -> None:
        await asyncio.gather(*(txns.idle.wait() for txns in self._partitions.values()))

    def written_end(self, partition: int) -> asyncio.Future[int | None]:
        txns = self._partitions.get(partition)
        if txns is None:
            failed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            failed.set_exception(WriteFailed(f"ledger partition {partition} is not owned here"))
            return failed
        return txns.written_end()

    def take_failures(self) -> list[WriteFailure]:
        failures: list[WriteFailure] = []
        for txns in self._partitions.values():
            if txns.failure is not None and not txns.reported:
                txns.reported = True
                failures.append(txns.failure)
        return failures
