"""ensure_topics' reconcile logic against a fake admin client that answers like Kafka.

Corrections go as IncrementalAlterConfigs (only the changed keys), or as
AlterConfigs (every override at once) to a broker without it; the embedded broker
(Tansu 0.6) has only the first. tests/integration/test_topics.py covers what the
real broker does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource
from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.protocol.admin import (
    AlterConfigsResponse_v1,
    CreateTopicsResponse_v3,
    DescribeConfigsResponse_v0,
    DescribeConfigsResponse_v2,
)

from services.kafka.admin import IncrementalAlterConfigsResponse_v0
from services.kafka.topics import (
    RETENTION_FOREVER_MS,
    SEVEN_DAYS_MS,
    TOPICS,
    PartitionMismatchError,
    reconcile_topics,
)
from services.settings import Settings

_DYNAMIC_TOPIC_CONFIG = 1
_DEFAULT_CONFIG = 5
_BROKER_DEFAULTS = {"cleanup.policy": "delete", "retention.ms": str(SEVEN_DAYS_MS)}
_POLICY_VIOLATION = 44
_TOPIC_AUTHORIZATION_FAILED = 29

FOREVER, WEEK = str(RETENTION_FOREVER_MS), str(SEVEN_DAYS_MS)


@dataclass
class FakeTopic:
    partitions: int
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeAdmin:
    """Kafka's answers: every config described, AlterConfigs replaces all overrides."""

    topics: dict[str, FakeTopic] = field(default_factory=dict)
    describe_version: int = 2
    can_describe: bool = True
    can_alter: bool = True
    can_alter_incrementally: bool = True
    alter_error: dict[str, int] = field(default_factory=dict)
    describe_error: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    sent_keys: dict[str, set[str]] = field(default_factory=dict)

    async def describe_topics(self, topics: list[str] | None = None) -> list[Any]:
        self.calls.append("describe_topics")
        assert topics is None  # named topics could be auto-created by the broker
        return [
            {
                "topic": name,
                "error_code": 0,
                "partitions": [{"partition": i, "leader": 1} for i in range(t.partitions)],
            }
            for name, t in self.topics.items()
        ]

    async def create_topics(self, new_topics: list[NewTopic], timeout_ms: int | None = None) -> Any:
        self.calls.append("create_topics")
        for new in new_topics:
            self.topics[new.name] = FakeTopic(new.num_partitions, dict(new.topic_configs))
        return CreateTopicsResponse_v3(
            throttle_time_ms=0, topic_errors=[(new.name, 0, None) for new in new_topics]
        )

    async def describe_configs(self, config_resources: list[ConfigResource]) -> list[Any]:
        self.calls.append("describe_configs")
        if not self.can_describe:
            raise IncompatibleBrokerVersion("DescribeConfigsRequest is not supported")
        resources = [self._described(r.name) for r in config_resources]
        if self.describe_version == 0:
            return [DescribeConfigsResponse_v0(throttle_time_ms=0, resources=resources)]
        return [DescribeConfigsResponse_v2(throttle_time_ms=0, resources=resources)]

    def _described(self, name: str) -> tuple[Any, ...]:
        if name in self.describe_error:
            return (self.describe_error[name], "refused", 2, name, [])
        overrides = self.topics[name].overrides
        entries = [
            self._entry(key, value, key in overrides)
            for key, value in {**_BROKER_DEFAULTS, **overrides}.items()
        ]
        return (0, None, 2, name, entries)

    def _entry(self, key: str, value: str, is_override: bool) -> tuple[Any, ...]:
        if self.describe_version == 0:
            return (key, value, False, not is_override, False)
        source = _DYNAMIC_TOPIC_CONFIG if is_override else _DEFAULT_CONFIG
        return (key, value, False, source, False, [])

    async def alter_configs(self, config_resources: list[ConfigResource]) -> list[Any]:
        self.calls.append("alter_configs")
        if not self.can_alter:
            raise IncompatibleBrokerVersion("AlterConfigsRequest cannot be used")
        results = []
        for resource in config_resources:
            code = self.alter_error.get(resource.name, 0)
            if not code:
                self.topics[resource.name].overrides = dict(resource.configs)
            results.append((code, "refused" if code else None, 2, resource.name))
        return [AlterConfigsResponse_v1(throttle_time_ms=0, resources=results)]

    async def incremental_alter_configs(
        self, sent: Iterable[tuple[int, str, Mapping[str, str]]]
    ) -> list[Any]:
        self.calls.append("incremental_alter_configs")
        if not self.can_alter_incrementally:
            raise IncompatibleBrokerVersion("IncrementalAlterConfigsRequest cannot be used")
        resources = list(sent)
        self.sent_keys = {name: set(configs) for _kind, name, configs in resources}
        results = []
        for _kind, name, configs in resources:
            code = self.alter_error.get(name, 0)
            if not code:
                self.topics[name].overrides.update(configs)
            results.append((code, "refused" if code else None, 2, name))
        return [IncrementalAlterConfigsResponse_v0(throttle_time_ms=0, resources=results)]


def _settings(partitions: int = 4) -> Settings:
    return Settings(topic_prefix="rl.", partitions=partitions)


def _complete(partitions: int = 4) -> dict[str, FakeTopic]:
    """All four topics as ensure_topics creates them."""
    return {f"rl.{spec.name}": FakeTopic(partitions, dict(spec.config)) for spec in TOPICS}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _capture_topic_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.kafka.topics")


async def test_missing_topics_are_created_with_their_configs_and_not_described() -> None:
    admin = FakeAdmin()
    await reconcile_topics(admin, _settings())
    assert admin.topics == _complete()
    # The second metadata call waits for the new partitions' leaders; configs are not read.
    assert admin.calls == ["describe_topics", "create_topics", "describe_topics"]


@dataclass
class LeaderlessAtFirst(FakeAdmin):
    """Kafka right after CreateTopics: the new partitions have no leader for a moment."""

    leaderless_answers: int = 2

    async def describe_topics(self, topics: list[str] | None = None) -> list[Any]:
        entries = await super().describe_topics(topics)
        if "create_topics" in self.calls and self.leaderless_answers:
            self.leaderless_answers -= 1
            for entry in entries:
                entry["partitions"] = [{**part, "leader": -1} for part in entry["partitions"]]
        return entries


async def test_created_topics_are_waited_for_until_every_partition_has_a_leader() -> None:
    admin = LeaderlessAtFirst()
    await reconcile_topics(admin, _settings())
    assert admin.leaderless_answers == 0
    assert admin.calls.count("describe_topics") == 4  # before, twice leaderless, then led


async def test_matching_topics_cost_one_metadata_and_one_describe_call_and_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = FakeAdmin(topics=_complete())
    await reconcile_topics(admin, _settings())
    assert admin.calls == ["describe_topics", "describe_configs"]
    assert _warnings(caplog) == []


async def test_a_ledger_topic_with_a_finite_retention_and_compaction_is_set_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = _complete()
    topics["rl.ledger"].overrides = {"retention.ms": "1000", "cleanup.policy": "compact"}
    admin = FakeAdmin(topics=topics)
    await reconcile_topics(admin, _settings())
    assert admin.topics["rl.ledger"].overrides == {
        "retention.ms": FOREVER,
        "cleanup.policy": "delete",
    }
    assert admin.calls == ["describe_topics", "describe_configs", "incremental_alter_configs"]
    assert _warnings(caplog) == [
        "changed the configs of topic rl.ledger "
        "(cleanup.policy from compact to delete, retention.ms from 1000 to -1)"
    ]


async def test_a_config_left_at_the_broker_default_is_set_explicitly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = _complete()
    topics["rl.deadletter"].overrides = {}  # e.g. created by hand without configs
    admin = FakeAdmin(topics=topics)
    await reconcile_topics(admin, _settings())
    assert admin.topics["rl.deadletter"].overrides == {
        "cleanup.policy": "delete",
        "retention.ms": FOREVER,
    }
    assert _warnings(caplog) == [
        "changed the configs of topic rl.deadletter (retention.ms from 604800000 to -1)"
    ]


async def test_other_overrides_of_a_corrected_topic_are_kept() -> None:
    topics = _complete()
    topics["rl.work"].overrides = {"retention.ms": "1000", "min.insync.replicas": "2"}
    admin = FakeAdmin(topics=topics)
    await reconcile_topics(admin, _settings())
    assert admin.topics["rl.work"].overrides == {
        "retention.ms": WEEK,
        "cleanup.policy": "delete",
        "min.insync.replicas": "2",
    }


async def test_only_runledgers_keys_are_sent_and_other_overrides_are_not_resent() -> None:
    topics = _complete()
    topics["rl.work"].overrides = {"retention.ms": "1000", "min.insync.replicas": "2"}
    admin = FakeAdmin(topics=topics)
    await reconcile_topics(admin, _settings())
    assert admin.sent_keys == {"rl.work": {"retention.ms", "cleanup.policy"}}


async def test_a_broker_without_incremental_alter_gets_alter_configs_with_every_override() -> None:
    topics = _complete()
    topics["rl.work"].overrides = {"retention.ms": "1000", "min.insync.replicas": "2"}
    admin = FakeAdmin(topics=topics, can_alter_incrementally=False)
    await reconcile_topics(admin, _settings())
    assert admin.calls[-2:] == ["incremental_alter_configs", "alter_configs"]
    assert admin.topics["rl.work"].overrides == {
        "retention.ms": WEEK,
        "cleanup.policy": "delete",
        "min.insync.replicas": "2",
    }


async def test_a_version_0_describe_answer_is_understood_too() -> None:
    topics = _complete()
    topics["rl.commands"].overrides = {"retention.ms": "1000", "segment.ms": "60000"}
    admin = FakeAdmin(topics=topics, describe_version=0)
    await reconcile_topics(admin, _settings())
    assert admin.topics["rl.commands"].overrides == {
        "retention.ms": WEEK,
        "cleanup.policy": "delete",
        "segment.ms": "60000",
    }


async def test_all_corrections_go_in_one_alter_call() -> None:
    topics = _complete()
    for topic in topics.values():
        topic.overrides = {"cleanup.policy": "compact"}
    admin = FakeAdmin(topics=topics)
    await reconcile_topics(admin, _settings())
    assert admin.calls.count("incremental_alter_configs") == 1
    assert admin.topics == _complete()


async def test_a_broker_without_alter_configs_gets_one_warning_and_no_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = _complete()
    topics["rl.ledger"].overrides = {"retention.ms": "1000", "cleanup.policy": "delete"}
    topics["rl.work"].overrides = {"retention.ms": WEEK, "cleanup.policy": "compact"}
    admin = FakeAdmin(topics=topics, can_alter=False, can_alter_incrementally=False)
    await reconcile_topics(admin, _settings())
    [warning] = _warnings(caplog)
    assert warning.startswith("the broker cannot alter topic configs")
    assert "rl.ledger (retention.ms from 1000 to -1)" in warning
    assert "rl.work (cleanup.policy from compact to delete)" in warning
    assert admin.topics["rl.ledger"].overrides["retention.ms"] == "1000"


async def test_a_broker_without_describe_configs_gets_one_warning_and_no_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = FakeAdmin(topics=_complete(), can_describe=False)
    await reconcile_topics(admin, _settings())
    [warning] = _warnings(caplog)
    assert warning.startswith("the broker cannot describe topic configs")
    assert "alter_configs" not in admin.calls


async def test_a_topic_the_broker_refuses_to_alter_is_reported_and_the_others_are_changed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = _complete()
    topics["rl.ledger"].overrides = {"retention.ms": "1000", "cleanup.policy": "delete"}
    topics["rl.work"].overrides = {"retention.ms": "1000", "cleanup.policy": "delete"}
    admin = FakeAdmin(topics=topics, alter_error={"rl.ledger": _POLICY_VIOLATION})
    await reconcile_topics(admin, _settings())
    assert admin.topics["rl.work"].overrides["retention.ms"] == WEEK
    assert sorted(_warnings(caplog)) == [
        "changed the configs of topic rl.work (retention.ms from 1000 to 604800000)",
        "could not change the configs of topic rl.ledger (retention.ms from 1000 to -1): "
        "error 44: refused",
    ]


async def test_a_topic_whose_configs_cannot_be_described_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = _complete()
    topics["rl.ledger"].overrides = {"retention.ms": "1000"}
    admin = FakeAdmin(topics=topics, describe_error={"rl.ledger": _TOPIC_AUTHORIZATION_FAILED})
    await reconcile_topics(admin, _settings())
    assert admin.topics["rl.ledger"].overrides == {"retention.ms": "1000"}
    assert _warnings(caplog) == [
        "cannot describe the configs of topic rl.ledger (error 29: refused); not checked"
    ]


async def test_commands_and_ledger_with_different_partition_counts_raise_naming_both() -> None:
    topics = _complete()
    topics["rl.commands"].partitions = 8
    admin = FakeAdmin(topics=topics)
    with pytest.raises(PartitionMismatchError) as raised:
        await reconcile_topics(admin, _settings())
    message = str(raised.value)
    assert "topic rl.commands has 8 partitions but rl.ledger has 4" in message
    assert admin.calls == ["describe_topics"]
    assert admin.topics["rl.commands"].partitions == 8


async def test_a_partition_count_other_than_the_setting_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = FakeAdmin(topics=_complete(partitions=2))
    await reconcile_topics(admin, _settings(partitions=4))
    assert {t.partitions for t in admin.topics.values()} == {2}
    assert len(_warnings(caplog)) == len(TOPICS)
    assert "topic rl.ledger has 2 partitions, not the configured 4; it keeps them" in (
        _warnings(caplog)
    )


async def test_a_missing_ledger_is_created_with_the_partition_count_of_the_existing_commands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = _complete()
    del topics["rl.ledger"]
    topics["rl.commands"].partitions = 6
    admin = FakeAdmin(topics=topics)
    await reconcile_topics(admin, _settings(partitions=4))
    assert admin.topics["rl.ledger"].partitions == 6
    assert (
        "creating topic rl.ledger with the 6 partitions of rl.commands, not the configured 4"
        in _warnings(caplog)
    )


async def test_without_correct_configs_existing_topics_are_only_listed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = _complete()
    topics["rl.ledger"].overrides = {"retention.ms": "1000"}
    admin = FakeAdmin(topics=topics)
    await reconcile_topics(admin, _settings(), correct_configs=False)
    assert admin.calls == ["describe_topics"]
    assert admin.topics["rl.ledger"].overrides == {"retention.ms": "1000"}
    assert _warnings(caplog) == []
