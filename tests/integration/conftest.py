"""Fixtures for tests against the real embedded broker (see tests/conftest.py)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from services.kafka.broker import BrokerProcess, settings_for
from services.settings import Settings


@pytest.fixture
def kafka_settings(
    kafka_bootstrap: str, tmp_path: Path, embedded_broker: BrokerProcess
) -> Settings:
    """Settings for the session broker with a topic prefix and app id unique to the test.

    The broker is shared by the whole session, so every test works in its own topic
    namespace and consumer groups. A short session timeout makes failover fast (the
    embedded Kafka allows sessions down to 1 s). On Kafka the roles run exactly-once;
    on the Tansu fallback at-least-once with its small fetch wait (`settings_for`).
    """
    unique = uuid.uuid4().hex[:10]
    settings = Settings(
        brokers=kafka_bootstrap,
        topic_prefix=f"t{unique}.",
        app_id=f"test-{unique}",
        data_dir=tmp_path / "data",
        session_timeout_ms=3000,
    )
    return settings_for(settings, embedded_broker)


@pytest.fixture
def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def process_settings(kafka_settings: Settings) -> Settings:
    """`kafka_settings` for tests whose roles run as separate processes.

    Several Python processes and the broker share two cores there; with a 3 s
    session a process starved of CPU for a moment misses its heartbeats, and the
    rebalances that follow can keep a run from finishing in time. 6 s costs ~1.5 s
    more per group join.
    """
    return kafka_settings.model_copy(update={"session_timeout_ms": 6000})
