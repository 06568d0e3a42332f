"""Which embedded broker to run: Apache Kafka, or Tansu when Java or Maven is missing.

`embedded_broker(settings, ...)` is what `runledger broker`, `runledger dev`,
`runledger demo` and the test session start. Apache Kafka
(`services.kafka.apache.KafkaBroker`) is the broker; Tansu
(`services.kafka.tansu.TansuBroker`) is a no-Java fallback chosen only when
``embedded_broker=auto`` and Kafka cannot run here (no Java 17+, or neither
cached jars nor Maven to fetch them), with a one-line notice that its data is
memory only. `settings_for` adapts the roles' settings to the chosen broker
(Tansu has no transactions and answers a fetch only when its wait expires).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from services.kafka.apache import MIN_JAVA, KafkaBroker, KafkaJars, find_java, find_maven
from services.kafka.process import BrokerError, BrokerProcess
from services.kafka.tansu import TansuBroker
from services.settings import Settings

__all__ = ["BrokerError", "BrokerProcess", "embedded_broker", "kafka_unavailable", "settings_for"]


def kafka_unavailable(settings: Settings) -> str | None:
    """Why Apache Kafka cannot run on this machine, or None when it can."""
    java = find_java()
    if java is None:
        return f"no Java {MIN_JAVA}+ found (set JAVA_HOME or install a JDK)"
    if java.major < MIN_JAVA:
        return f"{java.path} is Java {java.major}; Apache Kafka needs {MIN_JAVA}+"
    if not KafkaJars(settings.kafka_cache_dir).ready() and find_maven() is None:
        return "the Kafka jars are not cached and Maven (mvn) is not installed to fetch them"
    return None


def embedded_broker(
    settings: Settings,
    *,
    port: int,
    host: str = "127.0.0.1",
    data_dir: Path | None = None,
    log_dir: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    notice: Callable[[str], None] = print,
) -> BrokerProcess:
    """The embedded broker `settings.embedded_broker` asks for (not started yet).

    Kafka keeps its data under ``<data_dir>/kafka`` (default `settings.data_dir`).
    ``kafka`` fails with `BrokerError` when Kafka cannot run; ``auto`` falls back
    to Tansu then and says so through *notice*.
    """
    data_dir = data_dir or settings.data_dir
    log_dir = log_dir or data_dir / "logs"
    kind = settings.embedded_broker
    if kind in ("auto", "kafka"):
        reason = kafka_unavailable(settings)
        if reason is None:
            return KafkaBroker(
                port,
                host,
                data_dir=data_dir,
                log_dir=log_dir,
                heap_mb=settings.broker_heap_mb,
                cache_dir=settings.kafka_cache_dir,
                overrides=overrides,
            )
        if kind == "kafka":
            raise BrokerError(f"cannot run Apache Kafka: {reason}")
        notice(f"runledger: {reason}; running Tansu instead, whose data is memory only")
    return TansuBroker(port, host, log_dir=log_dir)


def settings_for(settings: Settings, broker: BrokerProcess) -> Settings:
    """`settings` for roles on *broker*.

    On Tansu: at-least-once (it has no transactions) and a 10 ms fetch wait (it
    answers a fetch only when the wait expires, so the wait is every hop's latency).
    """
    if broker.transactions:
        return settings
    return settings.model_copy(
        update={
            "processing_guarantee": "at_least_once",
            "fetch_max_wait_ms": min(settings.fetch_max_wait_ms, 10),
        }
    )
