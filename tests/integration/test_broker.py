"""Kafka clients and faust against the session's embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterable, Callable
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.kafka.broker import BrokerProcess
from services.kafka.topics import RETENTION_FOREVER_MS, SEVEN_DAYS_MS, TOPICS, ensure_topics
from services.settings import Settings
from tests.integration.faust_support import faust_options
from tests.integration.procnet import listening_addresses

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def test_broker_listens_on_loopback_only(embedded_broker: BrokerProcess) -> None:
    """The session broker listens on 127.0.0.1 only: its client port (and Kafka's controller)."""
    assert embedded_broker.pid is not None
    listening = listening_addresses(embedded_broker.pid)
    assert ("127.0.0.1", embedded_broker.port) in listening
    assert {host for host, _ in listening} == {"127.0.0.1"}


async def test_produce_consume_round_trip_keeps_key_value_and_headers(
    kafka_settings: Settings,
) -> None:
    """Records produced with keys and headers come back intact to a consumer group."""
    topic = kafka_settings.topic("commands")
    await ensure_topics(kafka_settings)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.brokers, linger_ms=2)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_settings.brokers,
        group_id=f"{kafka_settings.app_id}-roundtrip",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=kafka_settings.session_timeout_ms,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=kafka_settings.fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()
    try:
        sent = {f"run-{i}".encode(): f"value-{i}".encode() for i in range(20)}
        for key, value in sent.items():
            await producer.send(topic, value=value, key=key, headers=[("type", b"Test")])
        await producer.flush()
        received: dict[bytes, bytes] = {}
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        assert record.headers == (("type", b"Test"),)
                        assert record.key is not None
                        assert record.value is not None
                        received[record.key] = record.value
        await consumer.commit()
        assert received == sent
    finally:
        await consumer.stop()
        await producer.stop()


async def _describe(settings: Settings) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Partition counts and topic configs of RunLedger's topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers)
    await admin.start()
    try:
        names = [settings.topic(spec.name) for spec in TOPICS]
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            assert resource["error_code"] == 0, resource
            configs[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"]
                for entry in resource["config_entries"]
            }
    return partitions, configs


async def test_ensure_topics_creates_every_topic_with_its_retention(
    kafka_settings: Settings,
) -> None:
    """ledger and deadletter keep everything, commands and work 7 days (all delete);
    snapshots are compacted (each key's newest value is kept)."""
    await ensure_topics(kafka_settings)
    partitions, configs = await _describe(kafka_settings)
    p = kafka_settings.topic
    assert partitions == {p(spec.name): kafka_settings.partitions for spec in TOPICS}
    forever, week = str(RETENTION_FOREVER_MS), str(SEVEN_DAYS_MS)
    assert configs[p("ledger")]["retention.ms"] == forever
    assert configs[p("deadletter")]["retention.ms"] == forever
    assert configs[p("commands")]["retention.ms"] == week
    assert configs[p("work")]["retention.ms"] == week
    policies = {topic: c["cleanup.policy"] for topic, c in configs.items()}
    assert policies.pop(p("snapshots")) == "compact"
    assert set(policies.values()) == {"delete"}


async def test_ensure_topics_is_idempotent_also_when_racing(kafka_settings: Settings) -> None:
    """Concurrent and repeated calls succeed and leave the first creation in place."""
    await asyncio.gather(*(ensure_topics(kafka_settings) for _ in range(3)))
    await ensure_topics(kafka_settings)
    partitions, _ = await _describe(kafka_settings)
    assert len(partitions) == len(TOPICS)


async def test_faust_agent_receives_events_at_once_despite_fausts_fixed_fetch_wait(
    kafka_settings: Settings,
) -> None:
    """An in-process faust app joins and its agent sees every event at once, although faust
    hard-codes a 1500 ms fetch wait: Kafka answers a waiting fetch when data arrives.

    (On Tansu the wait was the latency, ~750 ms at the median, and needed a consumer
    override; the bound below is far under that, not a performance target.)
    """
    name = f"{kafka_settings.topic_prefix}smoke"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 4, 1)])
    finally:
        await admin.close()
    app = faust.App(kafka_settings.app_id, **faust_options(kafka_settings))
    topic = app.topic(name, value_type=bytes, value_serializer="raw", partitions=4)
    received: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    @app.agent(topic)
    async def collect(stream: AsyncIterable[bytes]) -> None:
        async for value in stream:
            received.put_nowait((time.monotonic(), value))

    await app.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.brokers)
    await producer.start()
    try:
        await _eventually(lambda: bool(app.consumer.assignment()), 30, "partition assignment")
        consumer = app.consumer._thread._consumer  # type: ignore[attr-defined]
        assert consumer is not None
        assert consumer._fetcher._fetch_max_wait_ms == 1500  # faust's own, not overridden
        latencies: list[float] = []
        for i in range(20):
            sent_at = time.monotonic()
            await producer.send_and_wait(name, f"e{i}".encode(), partition=i % 4)
            async with asyncio.timeout(30):
                seen_at, value = await received.get()
            assert value == f"e{i}".encode()
            latencies.append(seen_at - sent_at)
        assert statistics.median(latencies) < 0.3
    finally:
        await producer.stop()
        await app.stop()


def test_faust_ignores_its_unprefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch, kafka_settings: Settings
) -> None:
    """faust's own env vars (which override App keywords) cannot change a RunLedger app."""
    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "99")
    monkeypatch.setenv("WEB_BIND", "0.0.0.0")
    app = faust.App(kafka_settings.app_id, **faust_options(kafka_settings))
    assert app.conf.broker_session_timeout == kafka_settings.session_timeout_ms / 1000
    assert app.conf.web_bind == "127.0.0.1"


async def _echo_round_trip(
    settings: Settings, payload: bytes, worker: subprocess.Popen[bytes]
) -> bytes:
    """Send *payload* to the echo worker's input and return its first reply."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(f"{settings.topic_prefix}echo-in", 4, 1),
                NewTopic(f"{settings.topic_prefix}echo-out", 1, 1),
            ]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.brokers)
    consumer = AIOKafkaConsumer(
        f"{settings.topic_prefix}echo-out",
        bootstrap_servers=settings.brokers,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(f"{settings.topic_prefix}echo-in", payload)
        async with asyncio.timeout(90):
            while True:
                assert worker.poll() is None, f"the worker exited with status {worker.returncode}"
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        assert record.value is not None
                        value: bytes = record.value
                        return value
    finally:
        await consumer.stop()
        await producer.stop()


def _stop_by_pid(process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        raise


@pytest.mark.multiprocess
@pytest.mark.slow
async def test_faust_worker_subprocess_replies_and_serves_web_on_loopback(
    kafka_settings: Settings, free_port: int, tmp_path: Path
) -> None:
    """`python -m <module> worker` (faust's CLI) answers, binds 127.0.0.1, exits 0 on SIGTERM."""
    env = {
        **os.environ,
        "RUNLEDGER_BROKERS": kafka_settings.brokers,
        "RUNLEDGER_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "RUNLEDGER_APP_ID": kafka_settings.app_id,
        "RUNLEDGER_SESSION_TIMEOUT_MS": str(kafka_settings.session_timeout_ms),
        "RUNLEDGER_WEB_HOST": "127.0.0.1",
        "RUNLEDGER_WEB_PORT": str(free_port),
    }
    log_path = tmp_path / "faust-worker.log"
    argv = [sys.executable, "-W", "error", "-m", "tests.integration.faust_echo", "worker"]
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [*argv, "--loglevel", "warn"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        reply = await _echo_round_trip(kafka_settings, b"hello", worker)
        assert reply == f"HELLO {worker.pid}".encode()
        await _eventually(
            lambda: ("127.0.0.1", free_port) in listening_addresses(worker.pid),
            30,
            "the faust web server",
        )
        assert listening_addresses(worker.pid) == {("127.0.0.1", free_port)}
    except BaseException:
        with contextlib.suppress(Exception):
            print(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        status = _stop_by_pid(worker)
    assert status == 0, log_path.read_text(errors="replace")[-5000:]
