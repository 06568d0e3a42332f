"""The embedded Apache Kafka: jars from Maven once, durable KRaft storage, `runledger broker`.

Each test here starts its own Kafka process (about three seconds) beside the
session's broker, with its own data directory; the jar cache is the user's, so
only the very first run on a machine fetches.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.kafka import apache
from services.kafka import broker as brokers
from services.kafka.apache import JavaRuntime, KafkaBroker, KafkaJars, kafka_version
from services.kafka.process import BrokerError
from services.kafka.tansu import TansuBroker
from services.settings import Settings
from tests.integration.procnet import listening_addresses, process_alive

pytestmark = pytest.mark.integration

RUNLEDGER = Path(sys.executable).with_name("runledger")




async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def _values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=5000)
        return [record.value or b"" for record in batch.get(tp, [])]
    finally:
        await consumer.stop()


def test_the_pinned_release_is_the_newest_4x_and_its_jars_are_cached() -> None:
    """The pom pins Kafka 4.4.0; the session's start left a complete jar cache behind."""
    assert kafka_version() == "4.4.0"
    jars = KafkaJars()
    assert jars.ready()
    names = {path.name for path in jars.jars.glob("*.jar")}
    assert f"kafka_2.13-{kafka_version()}.jar" in names
    assert any(name.startswith("log4j-slf4j2-impl-") for name in names)


def test_a_cached_release_needs_neither_maven_nor_the_network(tmp_path: Path) -> None:
    """With the cache complete, ensure() never runs Maven (here: there is none)."""
    jars = KafkaJars()
    jars.ensure(None, tmp_path / "fetch.log")
    assert not (tmp_path / "fetch.log").exists()


def test_an_uncached_release_without_maven_says_what_to_install(tmp_path: Path) -> None:
    """An empty cache and no mvn is a clear error, not a traceback from subprocess."""
    with pytest.raises(BrokerError, match=r"not cached .* install Maven"):
        KafkaJars(tmp_path / "empty-cache").ensure(None, tmp_path / "fetch.log")


def test_a_java_older_than_17_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Kafka 4 needs Java 17: an older runtime is named in the error before any launch."""
    old = JavaRuntime(Path("/usr/bin/java"), 11)
    broker = KafkaBroker(data_dir=tmp_path, java=old)
    with pytest.raises(BrokerError, match=r"needs Java 17 or newer; /usr/bin/java is Java 11"):
        broker.start()
    assert broker.pid is None


def test_without_java_auto_falls_back_to_tansu_and_says_its_data_is_memory_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`embedded_broker=auto` picks Tansu only when Kafka cannot run, with a one-line notice;
    `embedded_broker=kafka` refuses instead."""
    monkeypatch.setattr(brokers, "find_java", lambda: None)
    notices: list[str] = []
    chosen = brokers.embedded_broker(
        Settings(data_dir=tmp_path), port=0, notice=notices.append
    )
    assert isinstance(chosen, TansuBroker)
    assert len(notices) == 1
    assert "no Java 17+" in notices[0]
    assert "memory only" in notices[0]
    with pytest.raises(BrokerError, match="cannot run Apache Kafka: no Java"):
        brokers.embedded_broker(Settings(data_dir=tmp_path, embedded_broker="kafka"), port=0)


def test_with_java_and_the_jars_auto_chooses_kafka(tmp_path: Path) -> None:
    """On this machine (Java 17, cached jars) the embedded broker is Apache Kafka."""
    notices: list[str] = []
    chosen = brokers.embedded_broker(Settings(data_dir=tmp_path), port=0, notice=notices.append)
    assert isinstance(chosen, KafkaBroker)
    assert notices == []


def test_data_survives_a_restart_and_storage_is_formatted_once(tmp_path: Path) -> None:
    """Stop the broker, start it again on the same data dir: the record is still there, the
    cluster id is the same, and the log is in its file."""
    broker = KafkaBroker(data_dir=tmp_path, heap_mb=512)
    with broker:
        assert broker.formatted
        meta = (broker.storage / "data" / "meta.properties").read_text()
        asyncio.run(_create_and_produce(broker.bootstrap))
        first_pid = broker.pid
    assert first_pid is not None
    assert not process_alive(first_pid)
    assert broker.log_path == tmp_path / "logs" / "kafka.log"
    assert "Kafka Server started" in broker.log_path.read_text()
    with broker:
        assert (broker.storage / "data" / "meta.properties").read_text() == meta
        assert asyncio.run(_values(broker.bootstrap, "kept")) == [b"still here"]


async def _create_and_produce(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("kept", 1, 1)])
    finally:
        await admin.close()
    for _ in range(50):  # the partition gets its leader a moment after CreateTopics
        try:
            await _produce(bootstrap, "kept", b"still here")
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("could not produce to the new topic")


def test_the_broker_binds_loopback_only_and_sigterm_is_a_clean_shutdown(tmp_path: Path) -> None:
    """Client and controller listeners are on 127.0.0.1; SIGTERM ends Kafka by itself
    (its controlled shutdown), well before `stop` would SIGKILL it."""
    broker = KafkaBroker(data_dir=tmp_path, heap_mb=512)
    broker.start()
    try:
        assert broker.pid is not None
        listening = listening_addresses(broker.pid)
        assert listening == {
            ("127.0.0.1", broker.port),
            ("127.0.0.1", broker.controller_port),
        }
        process = broker._process
        assert process is not None
        os.kill(process.pid, signal.SIGTERM)
        returncode = process.wait(timeout=broker.stop_timeout_s)
    finally:
        broker.stop()
    assert returncode != -signal.SIGKILL
    # Which shutdown lines reach the file before the JVM exits varies (Log4j is
    # stopped by its own shutdown hook); some always do.
    after_start = broker.log_path.read_text().split("Kafka Server started")[-1]
    assert re.search(r"shut(ting)? down", after_start)


def _start_cli(
    argv: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[str], int, int, str]:
    """Run `runledger broker ...`; return the process, the broker's port, pid and first line."""
    process = subprocess.Popen(
        [str(RUNLEDGER), "broker", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    found = re.search(r" on 127\.0\.0\.1:(\d+) \(pid (\d+)", first)
    if found is None:
        process.kill()
        rest = process.communicate()[0]
        raise AssertionError(f"unexpected output: {first}{rest}")
    return process, int(found.group(1)), int(found.group(2)), first


@pytest.mark.multiprocess
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_broker_runs_kafka_in_the_foreground_and_stops_cleanly(
    stop_signal: signal.Signals, free_port: int, tmp_path: Path
) -> None:
    """`runledger broker --port P` runs Apache Kafka on 127.0.0.1:P with its data under
    RUNLEDGER_DATA_DIR, and stops it on SIGINT/SIGTERM."""
    env = {**os.environ, "RUNLEDGER_DATA_DIR": str(tmp_path), "RUNLEDGER_BROKER_HEAP_MB": "512"}
    process, port, kafka_pid, first_line = _start_cli(["--port", str(free_port)], env)
    try:
        assert port == free_port
        assert ("127.0.0.1", free_port) in listening_addresses(kafka_pid)
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
        assert (tmp_path / "logs" / "kafka.log").exists()
        os.kill(process.pid, stop_signal)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert f"Apache Kafka {kafka_version()}" in first_line
    assert "stopping" in output
    assert not process_alive(kafka_pid)


@pytest.mark.multiprocess
def test_cli_broker_defaults_to_the_port_of_runledger_brokers(
    free_port: int, tmp_path: Path
) -> None:
    """Without --port the broker listens where RUNLEDGER_BROKERS points clients."""
    env = {
        **os.environ,
        "RUNLEDGER_DATA_DIR": str(tmp_path),
        "RUNLEDGER_BROKERS": f"127.0.0.1:{free_port}",
        "RUNLEDGER_BROKER_HEAP_MB": "512",
    }
    process, port, _, _ = _start_cli([], env)
    try:
        assert port == free_port
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0


def test_a_missing_java_home_is_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A JAVA_HOME without a java falls through to the java on PATH."""
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    found = apache.find_java()
    assert found is not None
    assert found.major >= apache.MIN_JAVA
