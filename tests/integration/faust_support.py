"""A faust App that works well against the embedded Tansu broker (and real Kafka).

faust-streaming 0.15.3 builds its worker consumer in
``faust/transport/drivers/aiokafka.py`` (``AIOKafkaConsumerThread._create_worker_consumer``)
with ``fetch_max_wait_ms=1500`` hard-coded. A faust worker always fetches several
partitions, and Tansu answers a multi-partition fetch only when the wait expires, so
every event waited ~750 ms on average. The consumer is built in three nested
factories, each a class attribute or method faust looks up on the instance:

    App._new_transport() -> Transport.Consumer -> Consumer._new_consumer_thread()
        -> AIOKafkaConsumerThread._create_consumer(loop) -> aiokafka.AIOKafkaConsumer

`LowLatencyConsumerThread` overrides ``_create_consumer`` (which covers both the
worker and the client-only consumer), lets faust build the aiokafka consumer as
usual and then replaces the fetch wait before the consumer is started (aiokafka
hands ``_fetch_max_wait_ms`` to its Fetcher in ``start()``). The setting comes from
``RunLedgerFaustApp.fetch_max_wait_ms`` (``Settings.fetch_max_wait_ms``).

This module lives with the integration tests that prove it; the service roles are
expected to take it over (e.g. as ``services/faust_app.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from services.settings import Settings

__all__ = [
    "LowLatencyConsumer",
    "LowLatencyConsumerThread",
    "LowLatencyTransport",
    "RunLedgerFaustApp",
    "faust_options",
]


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread with a configurable ``fetch_max_wait_ms``."""

    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_consumer(loop)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            if not hasattr(consumer, "_fetch_max_wait_ms"):  # guards an aiokafka upgrade
                raise RuntimeError("aiokafka.AIOKafkaConsumer has no _fetch_max_wait_ms")
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, running a `LowLatencyConsumerThread`."""

    def _new_consumer_thread(self) -> LowLatencyConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)


class LowLatencyTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with `LowLatencyConsumer`."""

    Consumer = LowLatencyConsumer


class RunLedgerFaustApp(faust.App):
    """A faust App whose consumer uses ``fetch_max_wait_ms`` instead of faust's 1500 ms."""

    def __init__(self, id: str, *, fetch_max_wait_ms: int = 10, **options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(id, **options)

    def _new_transport(self) -> TransportT:
        return LowLatencyTransport(self.conf.broker_consumer, self)


def faust_options(settings: Settings) -> dict[str, Any]:
    """faust App keyword options derived from RunLedger settings.

    ``env={}``: faust reads unprefixed environment variables (``BROKER_SESSION_TIMEOUT``,
    ``WEB_PORT``, ...) and they *override* the keyword arguments given to the App;
    an empty mapping makes ``RUNLEDGER_*`` the only configuration. Session values are
    explicit because faust's 60 s default session makes the first group join take
    ~30 s on Tansu (it holds a first JoinGroup for about half the session timeout).
    """
    session_s = settings.session_timeout_ms / 1000
    return {
        "env": {},
        "broker": [f"kafka://{server}" for server in settings.bootstrap_servers],
        "store": "memory://",
        "processing_guarantee": "at_least_once",  # exactly_once dies on Tansu
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": session_s,
        "broker_heartbeat_interval": min(1.0, session_s / 3),
        "broker_rebalance_timeout": session_s,
        "broker_request_timeout": max(30.0, session_s * 2),
        "broker_commit_interval": 0.5,
        "producer_linger": settings.producer_linger_ms / 1000,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "web_enabled": False,
        "web_host": settings.web_host,
        "web_bind": settings.web_host,
        "web_port": settings.web_port,
    }
