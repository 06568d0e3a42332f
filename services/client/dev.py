"""Running roles in the foreground, and `runledger dev`: broker + every role in one command.

`serve_roles` runs roles (through `services.roles.app.run_roles`) until SIGINT or
SIGTERM, then lets them stop cleanly. `run_dev` first starts the embedded broker
(Apache Kafka with its data under RUNLEDGER_DATA_DIR, or the memory-only Tansu
where Java or Maven is missing: `services.kafka.broker`; a child process, stopped
by PID afterwards), points the settings at it, creates the topics and prints
where everything is. Stopped with Ctrl-C and started again, it finds every past
run on Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from services.kafka.broker import BrokerProcess, embedded_broker, settings_for
from services.kafka.topics import TOPICS, ensure_topics
from services.settings import Settings

__all__ = ["ROLES", "describe_dev", "importable_cwd", "run_dev", "serve_roles", "with_overrides"]

ROLES = ("ledger", "worker", "api")
"""Every role, in start order; `runledger serve` and `runledger dev` run them all."""


def with_overrides(settings: Settings, **changes: object) -> Settings:
    """A copy of `settings` with some fields changed (validated like the environment)."""
    data = settings.model_dump()
    data.update(changes)
    return Settings.model_validate(data)


def importable_cwd() -> None:
    """Put the current directory on sys.path, as ``python -m`` does.

    Roles import flows by module path (within RUNLEDGER_FLOW_ALLOWLIST); a console
    script's sys.path starts at its own bin directory, so without this a project's
    flows next to the terminal (e.g. ``examples/``) would not be found.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


async def _until_signalled(
    settings: Settings, roles: Sequence[str], on_started: Callable[[], None] | None
) -> None:
    # Imported here: the roles belong to services/roles/app.py (ledger and worker engineer).
    from services.roles.app import freeze_startup_heap, run_roles

    def started() -> None:
        freeze_startup_heap()  # serve_roles is a process's entry point: its heap is ours
        if on_started is not None:
            on_started()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_roles(
            settings,
            set(roles),
            stop,
            on_started=lambda app: started(),
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def serve_roles(
    settings: Settings, roles: Sequence[str], on_started: Callable[[], None] | None = None
) -> None:
    """Run `roles` in this process until SIGINT/SIGTERM; returns after a clean stop."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    importable_cwd()
    asyncio.run(_until_signalled(settings, roles, on_started))


def describe_dev(settings: Settings, broker: BrokerProcess) -> str:
    """Where everything of a dev setup is, as printed by `runledger dev`."""
    topics = "\n".join(f"    {settings.topic(spec.name):<28} key {spec.key}" for spec in TOPICS)
    web = f"http://{settings.web_host}:{settings.web_port}"
    return (
        f"runledger dev: broker, ledger, worker ({settings.worker_concurrency} slots) and api "
        f"running (pid {os.getpid()}, broker pid {broker.pid})\n"
        f"  broker:     {broker.description}\n"
        f"  guarantee:  {settings.processing_guarantee}\n"
        f"  web api:    {web}/flow_runs   {web}/health   {web}/metrics\n"
        f"  data dir:   {settings.data_dir.absolute()}\n"
        f"  results:    {settings.result_store_url}\n"
        f"  broker log: {broker.log_path}\n"
        f"  topics ({settings.partitions} partitions each):\n{topics}\n"
        f"  try, in another terminal:\n"
        f"    export RUNLEDGER_BROKERS={broker.bootstrap}\n"
        f"    runledger run examples.demo:flow -p n=5 --watch\n"
        f"  Ctrl-C stops everything."
    )


def run_dev(
    settings: Settings,
    *,
    broker_port: int | None = None,
    out: TextIO | None = None,
) -> None:
    """Start the embedded broker and every role; block until SIGINT/SIGTERM; stop all.

    The broker is started from this (main) thread so that it dies with the process
    even if the process is killed outright (see `services.kafka.tansu`).
    """
    stream = out if out is not None else sys.stdout
    port = settings.first_broker_port if broker_port is None else broker_port
    broker = embedded_broker(settings, port=port, notice=lambda line: print(line, file=stream))
    broker.start()
    try:
        dev = with_overrides(settings_for(settings, broker), brokers=broker.bootstrap)
        asyncio.run(ensure_topics(dev))

        def started() -> None:
            print(describe_dev(dev, broker), file=stream, flush=True)

        serve_roles(dev, ROLES, on_started=started)
        print("runledger dev: stopped the roles; stopping the broker", file=stream, flush=True)
    finally:
        with contextlib.suppress(Exception):
            broker.stop()
