"""aiokafka plumbing shared by every role: clients, records, dead letters, reading to the end.

The hot loops of the ledger and the workers are plain aiokafka (batched
`getmany`, batched sends): a faust agent writing a Table per event managed
~1-3k events/s against ~60k for a batched aiokafka loop (BROKER_NOTES.md).
faust hosts the roles (lifecycle, web server, timers).

Under ``processing_guarantee=exactly_once`` every producer is idempotent and
every consumer reads committed records only, so nothing of a ledger
transaction that was aborted (a ledger that crashed or was fenced mid-batch)
is ever seen.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from events import DeadLettered, deadletter_payload
from services.settings import Settings

log = logging.getLogger(__name__)


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer for events: acks from all replicas, small linger for batching.

    Idempotent under exactly-once (a retried send is not written twice); plain
    under at-least-once, where a broker may lack the idempotent producer (Tansu)
    and every fold is idempotent by event id and sequence number instead.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "acks": "all",
        "linger_ms": settings.producer_linger_ms,
        "max_batch_size": 1 << 20,
        "enable_idempotence": settings.exactly_once,
        **settings.kafka_client_kwargs(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer with manual commits, the configured fetch wait and isolation level.

    Apache Kafka answers a waiting fetch as soon as data arrives; Tansu only when
    the wait expires, which is why `fetch_max_wait_ms` is small there.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(100, settings.session_timeout_ms // 3),
        "max_poll_interval_ms": 300_000,
        "isolation_level": settings.isolation_level,
        **settings.kafka_client_kwargs(),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def partition_for(flow_run_id: str, partitions: int) -> int:
    """The partition the producers' default partitioner puts a flow run's records on.

    Same murmur2 hash as the Java client and aiokafka, so the `ledger` partition
    holding a run is known without scanning the others.
    """
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    h: int = murmur2(flow_run_id.encode()) & 0x7FFFFFFF
    return h % partitions


def dead_letter_for(
    record: ConsumerRecord[bytes, bytes], reason: str, flow_run_id: str | None = None
) -> DeadLettered:
    """The dead-letter fact for a rejected record: nothing is lost, the reason is kept."""
    return DeadLettered(
        event_id=str(uuid.uuid4()),
        flow_run_id=flow_run_id or (record.key.decode(errors="replace") if record.key else "-"),
        occurred_at=datetime.now(UTC),
        reason=reason,
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode(errors="replace") if record.key else None,
        payload=deadletter_payload(record.value),
    )


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of *topic*, from a fresh metadata request.

    `AIOKafkaConsumer.topics()` does not update the consumer's own metadata, and
    Apache Kafka answers a consumer's metadata request with the topics it uses
    only, so `partitions_for_topic` alone knows nothing of a topic not yet assigned.
    """
    cluster = await consumer._client.fetch_all_metadata()
    partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        raise KafkaError(f"topic {topic} does not exist (are the roles' topics created?)")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def visible_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The offset a consumer of its isolation level can read up to, once a fetch answered.

    Under read_committed that is the last stable offset: records of a transaction
    still open are not visible yet, so the high watermark may never be reached
    while a ledger keeps writing. Under read_uncommitted it is the fetch's high
    watermark (exact on every broker, unlike ListOffsets on Tansu).
    """
    if consumer._isolation_level == "read_committed":  # aiokafka keeps it only here
        lso: int | None = consumer.last_stable_offset(tp)
        if lso is not None and lso >= 0:
            return lso
    high: int | None = consumer.highwater(tp)
    return high


async def read_to_end(
    consumer: AIOKafkaConsumer,
    tps: Iterable[TopicPartition],
    on_records: Callable[[list[ConsumerRecord[bytes, bytes]]], None] | None = None,
    *,
    batch_ms: int = 200,
    max_records: int = 10_000,
) -> None:
    """Read the assigned *tps* from their positions to their ends, handing batches on.

    Each partition's end is the first `visible_end` a fetch reports, not a moving
    target: a partition that is written to all the time still ends, and the read
    costs what the partition held when it began. A partition already at its end
    by ListOffsets (the last stable offset under read_committed) is not fetched
    at all: a fetch with nothing to return waits `fetch_max_wait_ms`, which made
    every read of an up-to-date partition cost that wait. (On Tansu, whose
    ListOffsets can be early, that shortcut is only taken when the position has
    reached what it reports, which a position after whole batches never
    overshoots while records remain.)
    """
    pending = set(tps)
    targets: dict[TopicPartition, int] = {}
    if pending:
        listed = await consumer.end_offsets(list(pending))
        for tp in list(pending):
            if await consumer.position(tp) >= listed[tp]:
                pending.discard(tp)
    while pending:
        batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = (
            await consumer.getmany(*pending, timeout_ms=batch_ms, max_records=max_records)
        )
        if on_records is not None:
            for records in batch.values():
                on_records(records)
        for tp in list(pending):
            if tp not in targets:
                end = visible_end(consumer, tp)
                if end is None:
                    continue
                targets[tp] = end
            if await consumer.position(tp) >= targets[tp]:
                pending.discard(tp)


async def read_partitions_to_end(
    settings: Settings,
    partitions: Iterable[TopicPartition],
    batch_ms: int = 200,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every visible record of the given partitions, from offset 0 to their ends (`read_to_end`)."""
    tps = list(partitions)
    if not tps:
        return []
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await read_to_end(consumer, tps, records.extend, batch_ms=batch_ms)
    finally:
        await consumer.stop()
    return records
