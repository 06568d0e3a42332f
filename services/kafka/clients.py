"""aiokafka plumbing shared by every role: clients, records, dead letters.

The hot loops of the ledger and the workers are plain aiokafka (batched
`getmany`, batched sends): on the embedded broker a faust agent writing a
Table per event managed ~1-3k events/s against ~60k for a batched aiokafka
loop (BROKER_NOTES.md). faust hosts the roles (lifecycle, web server, timers).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.partitioner import murmur2

from events import DeadLettered, deadletter_payload
from services.settings import Settings

log = logging.getLogger(__name__)


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer for events: acks from all replicas, small linger for batching.

    No idempotence or transactions: the embedded broker supports neither, and
    every fold is idempotent by event id and sequence number instead.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "acks": "all",
        "linger_ms": settings.producer_linger_ms,
        "max_batch_size": 1 << 20,
        "enable_idempotence": False,
        **settings.kafka_client_kwargs(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer with manual commits and the configured (small) fetch wait.

    On several partitions the embedded broker answers a fetch only when the wait
    expires, so `fetch_max_wait_ms` bounds the latency of every role.
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
        "isolation_level": "read_uncommitted",
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


async def read_partitions_to_end(
    settings: Settings,
    partitions: Iterable[TopicPartition],
    batch_ms: int = 200,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the given partitions, from offset 0 to the current end.

    The end is the fetch high-watermark, not `end_offsets()` (which this broker
    reports wrongly after batched produce, BROKER_NOTES.md).
    """
    tps = list(partitions)
    if not tps:
        return []
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        pending = set(tps)
        while pending:
            batch: Mapping[
                TopicPartition, list[ConsumerRecord[bytes, bytes]]
            ] = await consumer.getmany(*pending, timeout_ms=batch_ms, max_records=10_000)
            for recs in batch.values():
                records.extend(recs)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return records
