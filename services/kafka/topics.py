"""RunLedger's topics and their creation with explicit configs.

See ARCHITECTURE.md section 2. faust creates its own internal topics (table
changelogs, repartition topics); the four here are created by `ensure_topics`
before any role starts, so their retention never depends on broker defaults, and
set back on existing topics where someone changed them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, for_code

from services.kafka.admin import RunLedgerAdmin
from services.settings import Settings, TopicName

__all__ = [
    "RETENTION_FOREVER_MS",
    "SEVEN_DAYS_MS",
    "TOPICS",
    "PartitionMismatchError",
    "TopicAdmin",
    "TopicSpec",
    "ensure_topics",
    "reconcile_topics",
    "until_led",
]

log = logging.getLogger(__name__)

SEVEN_DAYS_MS = 7 * 24 * 60 * 60 * 1000
RETENTION_FOREVER_MS = -1

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code TOPIC_ALREADY_EXISTS
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source of a topic's own override

#: A run's commands and its ledger facts share a partition number (same key, same
#: partition), so these two topics must have the same partition count.
_CO_PARTITIONED: tuple[TopicName, TopicName] = ("commands", "ledger")


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
    """Topic configs set at creation and restored on existing topics (``kafka-configs`` names)."""


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
        name="snapshots",
        key="<ledger partition>/<snapshot id>/<chunk or m>",
        description="Snapshots of the ledger's state per ledger partition (derived data, "
        "never the truth): chunks and a manifest; old ones are tombstoned and compacted away.",
        config=_frozen({"cleanup.policy": "compact", "retention.ms": str(RETENTION_FOREVER_MS)}),
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


class PartitionMismatchError(RuntimeError):
    """The existing commands and ledger topics have different partition counts."""


class TopicAdmin(Protocol):
    """What `reconcile_topics` needs of a started admin client (`RunLedgerAdmin`)."""

    async def describe_topics(self, topics: list[str] | None = None) -> list[Any]: ...

    async def create_topics(
        self, new_topics: list[NewTopic], timeout_ms: int | None = None
    ) -> Any: ...

    async def describe_configs(self, config_resources: list[ConfigResource]) -> list[Any]: ...

    async def alter_configs(self, config_resources: list[ConfigResource]) -> list[Any]: ...

    async def incremental_alter_configs(
        self, resources: Iterable[tuple[int, str, Mapping[str, str]]]
    ) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class _Change:
    key: str
    current: str | None
    """None when the broker did not report the config at all."""
    wanted: str

    def __str__(self) -> str:
        current = "unset" if self.current is None else self.current
        return f"{self.key} from {current} to {self.wanted}"


@dataclass(frozen=True, slots=True)
class _Correction:
    topic: str
    changes: tuple[_Change, ...]
    wanted: Mapping[str, str]
    """RunLedger's configs of the topic, all set explicitly (also those that equal a
    broker default now: a changed default must not change the topic)."""
    configs: Mapping[str, str]
    """Every override the topic gets through AlterConfigs, which replaces the whole
    set; IncrementalAlterConfigs sends only `wanted`."""

    def __str__(self) -> str:
        return f"{self.topic} ({', '.join(map(str, self.changes))})"


@dataclass(frozen=True, slots=True)
class _Described:
    values: Mapping[str, str | None]
    """Every config the broker reported, whatever its source."""
    overrides: Mapping[str, str]
    """The configs set on the topic itself."""


async def ensure_topics(
    settings: Settings, *, timeout_s: float = 30.0, correct_configs: bool = True
) -> None:
    """Create RunLedger's topics with their configs and correct the configs of existing ones.

    Partitions and replication come from `settings`. See `reconcile_topics`;
    `correct_configs=False` leaves existing topics' configs unread (for clients,
    which need no config permissions).
    """
    admin = RunLedgerAdmin(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **settings.kafka_client_kwargs(),
    )
    await admin.start()
    try:
        await reconcile_topics(
            admin, settings, timeout_s=timeout_s, correct_configs=correct_configs
        )
    finally:
        await admin.close()


async def reconcile_topics(
    admin: TopicAdmin, settings: Settings, *, timeout_s: float = 30.0, correct_configs: bool = True
) -> None:
    """`ensure_topics` with a started admin client.

    Missing topics are created. Existing topics keep their partition counts
    (changing one would move keys between partitions): a count other than
    `settings.partitions` is logged, but commands and ledger with different
    counts raise `PartitionMismatchError`. Their retention.ms and cleanup.policy
    are set back to RunLedger's where they differ (logged at WARNING); a broker
    that cannot describe or alter configs gets one WARNING and no correction.
    """
    counts = await _partition_counts(admin)
    _check_partitions(settings, counts)
    missing = [spec for spec in TOPICS if settings.topic(spec.name) not in counts]
    existing = [spec for spec in TOPICS if settings.topic(spec.name) in counts]
    if missing:
        await _create_topics(admin, settings, missing, counts, timeout_s)
        await until_led(admin, [settings.topic(spec.name) for spec in missing], timeout_s)
    if existing and correct_configs:
        await _correct_configs(admin, settings, existing)


async def _partition_counts(admin: TopicAdmin) -> dict[str, int]:
    """Partition count of every topic on the cluster (one Metadata request)."""
    # All topics, not ours by name: a Metadata request naming a missing topic creates
    # it (Tansu always, Kafka with auto.create.topics.enable), with the wrong configs.
    return {entry["topic"]: len(entry["partitions"]) for entry in await admin.describe_topics()}


def _check_partitions(settings: Settings, counts: Mapping[str, int]) -> None:
    for spec in TOPICS:
        topic = settings.topic(spec.name)
        if topic in counts and counts[topic] != settings.partitions:
            log.warning(
                "topic %s has %d partitions, not the configured %d; it keeps them",
                topic,
                counts[topic],
                settings.partitions,
            )
    commands, ledger = (settings.topic(name) for name in _CO_PARTITIONED)
    if commands in counts and ledger in counts and counts[commands] != counts[ledger]:
        raise PartitionMismatchError(
            f"topic {commands} has {counts[commands]} partitions but {ledger} has "
            f"{counts[ledger]}: a run's commands and ledger facts share a partition "
            "number, so both need the same count (RunLedger never changes partition "
            "counts; recreate one of the topics)"
        )


def _partitions_for(settings: Settings, spec: TopicSpec, counts: Mapping[str, int]) -> int:
    """settings.partitions, or the existing partner's count for commands and ledger."""
    if spec.name in _CO_PARTITIONED:
        partner = settings.topic(next(n for n in _CO_PARTITIONED if n != spec.name))
        if partner in counts and counts[partner] != settings.partitions:
            log.warning(
                "creating topic %s with the %d partitions of %s, not the configured %d",
                settings.topic(spec.name),
                counts[partner],
                partner,
                settings.partitions,
            )
            return counts[partner]
    return settings.partitions


async def _create_topics(
    admin: TopicAdmin,
    settings: Settings,
    specs: Iterable[TopicSpec],
    counts: Mapping[str, int],
    timeout_s: float,
) -> None:
    new_topics = [
        NewTopic(
            name=settings.topic(spec.name),
            num_partitions=_partitions_for(settings, spec, counts),
            replication_factor=settings.replication_factor,
            topic_configs=dict(spec.config),
        )
        for spec in specs
    ]
    response = await admin.create_topics(new_topics, timeout_ms=int(timeout_s * 1000))
    for topic, code, message in _topic_errors(response):
        if code == _TOPIC_ALREADY_EXISTS:  # created concurrently by another process
            continue
        if code:
            raise for_code(code)(f"could not create topic {topic}: {message}")
        log.info("created topic %s", topic)


async def until_led(admin: TopicAdmin, topics: list[str], timeout_s: float) -> None:
    """Return once every partition of *topics* has a leader in the broker's metadata.

    Apache Kafka answers CreateTopics once the controller has the topics; the
    broker's metadata and the partition leaders follow a moment later, and a role
    started in between would find no partitions (or get NotEnoughReplicas).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting = set(topics)
    while True:
        # All topics, as in `_partition_counts`: never a Metadata request naming topics.
        for entry in await admin.describe_topics():
            if entry["topic"] not in waiting:
                continue
            partitions = entry.get("partitions") or []
            if not entry.get("error_code") and partitions and all(
                part.get("leader", -1) >= 0 for part in partitions
            ):
                waiting.discard(entry["topic"])
        if not waiting:
            return
        if loop.time() > deadline:
            raise KafkaError(
                f"topics {sorted(waiting)} have no partition leaders after {timeout_s}s"
            )
        await asyncio.sleep(0.05)


async def _correct_configs(
    admin: TopicAdmin, settings: Settings, specs: Iterable[TopicSpec]
) -> None:
    wanted = {settings.topic(spec.name): spec.config for spec in specs}
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in wanted]
    try:
        responses = await admin.describe_configs(resources)
    except KafkaError as exc:
        log.warning(
            "the broker cannot describe topic configs (%r): the configs of the existing "
            "topics %s are not checked",
            exc,
            ", ".join(wanted),
        )
        return
    described = _described_configs(responses)
    corrections = [
        correction
        for topic, config in wanted.items()
        if topic in described
        and (correction := _correction(topic, described[topic], config)) is not None
    ]
    if corrections:
        await _alter_configs(admin, corrections)


def _described_configs(responses: Iterable[Any]) -> dict[str, _Described]:
    """Topic -> its configs, from DescribeConfigs responses of any version.

    A topic the broker reports an error for is left out (and logged).
    """
    described: dict[str, _Described] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            topic = resource["resource_name"]
            if resource["error_code"]:
                log.warning(
                    "cannot describe the configs of topic %s (error %d: %s); not checked",
                    topic,
                    resource["error_code"],
                    resource["error_message"],
                )
                continue
            entries = resource["config_entries"]
            described[topic] = _Described(
                values={e["config_names"]: e["config_value"] for e in entries},
                overrides={
                    e["config_names"]: e["config_value"]
                    for e in entries
                    if _is_override(e) and e["config_value"] is not None
                },
            )
    return described


def _is_override(entry: Mapping[str, Any]) -> bool:
    if "config_source" in entry:  # DescribeConfigs v1+
        return bool(entry["config_source"] == _DYNAMIC_TOPIC_CONFIG)
    return not entry["is_default"]


def _correction(topic: str, described: _Described, wanted: Mapping[str, str]) -> _Correction | None:
    changes = tuple(
        _Change(key, described.values.get(key), value)
        for key, value in wanted.items()
        if described.values.get(key) != value
    )
    if not changes:
        return None
    # The operator's other overrides (min.insync.replicas, ...) are carried over.
    return _Correction(topic, changes, wanted, _frozen({**described.overrides, **wanted}))


async def _alter_configs(admin: TopicAdmin, corrections: list[_Correction]) -> None:
    try:
        responses = await _send_alterations(admin, corrections)
    except KafkaError as exc:
        log.warning(
            "the broker cannot alter topic configs (%r): these topics keep configs "
            "RunLedger does not want: %s",
            exc,
            "; ".join(map(str, corrections)),
        )
        return
    errors = _resource_errors(responses)
    for correction in corrections:
        error = errors.get(correction.topic)
        if error is None:
            log.warning("changed the configs of topic %s", correction)
        else:
            log.warning("could not change the configs of topic %s: %s", correction, error)


async def _send_alterations(admin: TopicAdmin, corrections: list[_Correction]) -> list[Any]:
    """IncrementalAlterConfigs of RunLedger's keys; AlterConfigs where it is missing."""
    try:
        return await admin.incremental_alter_configs(
            [(ConfigResourceType.TOPIC, c.topic, dict(c.wanted)) for c in corrections]
        )
    except IncompatibleBrokerVersion:
        pass  # a broker before Kafka 2.3: the old request, which replaces every override
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, c.topic, configs=dict(c.configs))
        for c in corrections
    ]
    return list(await admin.alter_configs(resources))


def _resource_errors(responses: Iterable[Any]) -> dict[str, str]:
    """Resource name -> "error N: message" of an AlterConfigs response, for failed ones."""
    errors: dict[str, str] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                code, message = resource["error_code"], resource["error_message"]
                errors[resource["resource_name"]] = f"error {code}: {message}"
    return errors
