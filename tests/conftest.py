"""Fixtures shared by the whole suite.

The embedded broker is started at most once per session, and only when a test asks
for `kafka_bootstrap` (or `embedded_broker`); unit tests never pay for it.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator

import pytest

from services.kafka.tansu import EmbeddedBroker


@pytest.fixture(autouse=True)
def _isolated_runledger_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the developer's RUNLEDGER_* variables so that settings start from defaults."""
    for name in list(os.environ):
        if name.upper().startswith("RUNLEDGER_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the session on a free 127.0.0.1 port, stopped by PID at the end.

    Besides the fixture's own teardown, an ``atexit`` hook stops it if the session dies
    without running teardowns, and the broker gets SIGTERM from the kernel if this
    process is killed outright (see `services.kafka.tansu`).
    """
    broker = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker"))
    broker.start()
    atexit.register(broker.stop)
    try:
        yield broker
    finally:
        broker.stop()
        atexit.unregister(broker.stop)


@pytest.fixture(scope="session")
def kafka_bootstrap(embedded_broker: EmbeddedBroker) -> str:
    """``127.0.0.1:PORT`` of the session's embedded broker."""
    return embedded_broker.bootstrap
