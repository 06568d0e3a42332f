"""RunLedger's topics and their creation with explicit configs.

See ARCHITECTURE.md section 2. faust creates its own internal topics (table
changelogs, repartition topics); the four here are created by `ensure_topics`
before any role starts, so their retention never depends on broker defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from services.settings import Settings, TopicName

__all__ = ["RETENTION_FOREVER_MS", "SEVEN_DAYS_MS", "TOPICS", "TopicSpec", "ensure_topics"]

log = logging.getLogger(__name__)

SEVEN_DAYS_MS = 7 * 24 * 60 * 60 * 1000
RETENTION_FOREVER_MS = -1

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code TOPIC_ALREADY_EXISTS


def _frozen(config: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(config))


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: its short name, what its records are keyed by, and its configs."""

    name: TopicName
    key: str
    """What the record key is; records with the same key stay in order."""
    description: str
    config: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    """Topic configs set at creation (Kafka ``kafka-configs`` names)."""


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        name="commands",
        key="flow_run_id",
        description="Requests to the ledger: run/cancel/resume/set-state, transition "
        "proposals and heartbeats from workers, scheduler ticks.",
        config=_frozen({"cleanup.policy": "delete", "retention.ms": str(SEVEN_DAYS_MS)}),
    ),
    TopicSpec(
        name="ledger",
        key="flow_run_id",
        description="The event log: every accepted (and rejected) transition, written "
        "only by the ledger role. Kept forever; every view is a fold of it.",
        config=_frozen({"cleanup.policy": "delete", "retention.ms": str(RETENTION_FOREVER_MS)}),
    ),
    TopicSpec(
        name="work",
        key="task_run_id",
        description="Work items for workers: task runs the ledger moved to Submitted.",
        config=_frozen({"cleanup.policy": "delete", "retention.ms": str(SEVEN_DAYS_MS)}),
    ),
    TopicSpec(
        name="deadletter",
        key="original record key",
        description="Inputs that were rejected (undecodable, not allowed), with the reason.",
        config=_frozen({"cleanup.policy": "delete", "retention.ms": str(RETENTION_FOREVER_MS)}),
    ),
)


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """(topic, error code, message) of a CreateTopics response of any version."""
    errors: list[tuple[str, int, str | None]] = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        errors.append((topic, code, message))
    return errors


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> None:
    """Create RunLedger's topics with their configs; topics that already exist are kept.

    Partitions and replication come from `settings`. Existing topics are not
    altered (changing partition counts would move keys between partitions).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **settings.kafka_client_kwargs(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [spec for spec in TOPICS if settings.topic(spec.name) not in existing]
        if not wanted:
            return
        new_topics = [
            NewTopic(
                name=settings.topic(spec.name),
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=dict(spec.config),
            )
            for spec in wanted
        ]
        response = await admin.create_topics(new_topics, timeout_ms=int(timeout_s * 1000))
        for topic, code, message in _topic_errors(response):
            if code == _TOPIC_ALREADY_EXISTS:  # created concurrently by another process
                continue
            if code:
                raise for_code(code)(f"could not create topic {topic}: {message}")
            log.info("created topic %s", topic)
    finally:
        await admin.close()
