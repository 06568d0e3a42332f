"""Fixtures shared by the whole suite.

The session's broker is Apache Kafka (`services.kafka.apache`), started at most once
per session, and only when a test asks for `kafka_bootstrap` (or `embedded_broker`);
unit tests never pay for it. ``RL_TEST_BROKER=tansu`` runs the integration
tests on the memory-only Tansu instead (at-least-once only); by default the suite
needs Java 17+ and Maven (or cached Kafka jars), and says so if they are missing.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator

import pytest

from services.kafka import broker as brokers
from services.kafka.broker import BrokerProcess
from services.settings import EmbeddedBrokerKind, Settings

_TEST_BROKER_ENV = "RL_TEST_BROKER"


def session_broker_kind() -> EmbeddedBrokerKind:
    """The broker the session runs: ``kafka`` unless RL_TEST_BROKER says otherwise."""
    kind = os.environ.get(_TEST_BROKER_ENV, "kafka")
    if kind not in ("kafka", "tansu"):
        raise pytest.UsageError(f"{_TEST_BROKER_ENV} must be kafka or tansu, not {kind!r}")
    return "kafka" if kind == "kafka" else "tansu"


@pytest.fixture(autouse=True)
def _isolated_runledger_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the developer's RUNLEDGER_* variables so that settings start from defaults."""
    for name in list(os.environ):
        if name.upper().startswith("RUNLEDGER_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def embedded_broker_kind() -> EmbeddedBrokerKind:
    """``kafka`` or ``tansu``: what the session's broker is."""
    return session_broker_kind()


@pytest.fixture(scope="session")
def embedded_broker(
    tmp_path_factory: pytest.TempPathFactory, embedded_broker_kind: EmbeddedBrokerKind
) -> Iterator[BrokerProcess]:
    """One broker for the session on a free 127.0.0.1 port, stopped by PID at the end.

    Its data lives in the session's temporary directory. Besides the fixture's own
    teardown, an ``atexit`` hook stops it if the session dies without running
    teardowns, and the broker gets SIGTERM from the kernel if this process is
    killed outright (see `services.kafka.process`).
    """
    data = tmp_path_factory.mktemp("broker")
    broker = brokers.embedded_broker(
        Settings(embedded_broker=embedded_broker_kind), port=0, data_dir=data, notice=print
    )
    broker.start()
    atexit.register(broker.stop)
    try:
        yield broker
    finally:
        broker.stop()
        atexit.unregister(broker.stop)


@pytest.fixture(scope="session")
def kafka_bootstrap(embedded_broker: BrokerProcess) -> str:
    """``127.0.0.1:PORT`` of the session's embedded broker."""
    bootstrap: str = embedded_broker.bootstrap
    return bootstrap
