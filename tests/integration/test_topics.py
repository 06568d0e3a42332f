"""ensure_topics against the real embedded broker, with topics someone else created.

Measured on Tansu 0.6: DescribeConfigs answers with the values set at creation
(but reports them as config_source 5, DEFAULT_CONFIG, lists no config that was not
set, and gives an unknown topic no error); AlterConfigs is not in its ApiVersions,
IncrementalAlterConfigs is (services/kafka/admin.py sends it); a Metadata request
naming a missing topic creates it. The fallback to AlterConfigs and the brokers
that can do neither are covered against a fake admin in
tests/services/kafka/test_topics_reconcile.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.kafka.topics import TOPICS, PartitionMismatchError, ensure_topics, until_led
from services.settings import Settings

pytestmark = pytest.mark.integration


async def _create_by_hand(
    settings: Settings, topics: Mapping[str, int], configs: Mapping[str, str] | None = None
) -> None:
    """Create topics (full name -> partitions) the way an operator might, bypassing RunLedger."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, count, 1, topic_configs=dict(configs or {}))
                for name, count in topics.items()
            ]
        )
        # Visible to the next admin call only once the broker's metadata has them.
        await until_led(admin, list(topics), timeout_s=30)
    finally:
        await admin.close()


async def _layout(settings: Settings) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Partition counts and described configs of RunLedger's topics."""
    names = [settings.topic(spec.name) for spec in TOPICS]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers)
    await admin.start()
    try:
        # All topics, not `names`: Tansu's Metadata request auto-creates named topics.
        described = await admin.describe_topics()
        partitions = {t["topic"]: len(t["partitions"]) for t in described if t["topic"] in names}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    configs = {
        resource["resource_name"]: {
            entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]
        }
        for response in responses
        for resource in response.to_object()["resources"]
    }
    return partitions, configs


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "services.kafka.topics" and r.levelno == logging.WARNING
    ]


@pytest.fixture(autouse=True)
def _capture_topic_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.kafka.topics")


async def test_topics_that_ensure_topics_created_are_left_alone_without_a_warning(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_topics(kafka_settings)
    caplog.clear()
    await ensure_topics(kafka_settings)
    assert _warnings(caplog) == []


async def test_a_hand_made_ledger_topic_with_a_short_compacted_retention_is_set_back(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = kafka_settings.topic("ledger")
    wrong = {"retention.ms": "1000", "cleanup.policy": "compact"}
    await _create_by_hand(kafka_settings, {ledger: kafka_settings.partitions}, wrong)
    await ensure_topics(kafka_settings)
    assert _warnings(caplog) == [
        f"changed the configs of topic {ledger} "
        "(cleanup.policy from compact to delete, retention.ms from 1000 to -1)"
    ]
    partitions, configs = await _layout(kafka_settings)
    assert len(partitions) == len(TOPICS)  # the missing three were created too
    # Kafka describes every config, defaults included (Tansu only the overrides).
    assert {key: configs[ledger][key] for key in wrong} == {
        "retention.ms": "-1",
        "cleanup.policy": "delete",
    }
    caplog.clear()
    await ensure_topics(kafka_settings)
    assert _warnings(caplog) == []  # corrected for good: nothing to change the next time


async def test_commands_and_ledger_with_different_partition_counts_raise_naming_both(
    kafka_settings: Settings,
) -> None:
    commands, ledger = kafka_settings.topic("commands"), kafka_settings.topic("ledger")
    await _create_by_hand(kafka_settings, {commands: 2, ledger: 3})
    with pytest.raises(PartitionMismatchError, match=f"{commands} has 2 .* {ledger} has 3"):
        await ensure_topics(kafka_settings)
    partitions, _ = await _layout(kafka_settings)
    assert partitions == {commands: 2, ledger: 3}  # nothing created, nothing changed


async def test_existing_topics_with_another_partition_count_than_the_setting_keep_theirs(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_topics(kafka_settings.model_copy(update={"partitions": 2}))
    caplog.clear()
    await ensure_topics(kafka_settings)
    partitions, _ = await _layout(kafka_settings)
    assert set(partitions.values()) == {2}
    assert len(_warnings(caplog)) == len(TOPICS)
    assert all("has 2 partitions, not the configured 4" in w for w in _warnings(caplog))


async def test_a_missing_ledger_gets_the_partition_count_of_the_existing_commands_topic(
    kafka_settings: Settings,
) -> None:
    commands, ledger = kafka_settings.topic("commands"), kafka_settings.topic("ledger")
    await _create_by_hand(kafka_settings, {commands: 3})
    await ensure_topics(kafka_settings)
    partitions, _ = await _layout(kafka_settings)
    assert partitions[ledger] == 3
    assert partitions[kafka_settings.topic("work")] == kafka_settings.partitions
