"""One faust App that hosts RunLedger's roles: ledger (with its scheduler), worker, api.

    app = build_app(settings, roles={"ledger", "worker"})
    await run_roles(settings, {"ledger", "worker"}, stop_event)      # until stop_event
    python -m services.roles.app --roles ledger,worker [--concurrency N]   # until SIGTERM/SIGINT

faust is the host: the App's lifecycle starts and stops every role as a
`mode.Service`, and its producer and (for the api) web server live with it. The
hot loops inside the ledger and worker roles are plain aiokafka (batched
`getmany`, batched produce): a faust agent costs ~1-3k events/s on this broker
against ~60k for a batched loop (BROKER_NOTES.md), and its Tables cannot be
the copy of state that matters. So the App runs in faust's *producer-only*
mode: no faust consumer, hence no faust consumer-group join (~3 s with a 3 s
session timeout, ~30 s with faust's defaults) and nothing faust could lose on
a rebalance. docs/architecture.md explains the roles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, cast

import faust
import mode
from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from services.kafka.topics import ensure_topics
from services.roles.ledger import Ledger
from services.roles.worker import Worker
from services.settings import Settings

__all__ = [
    "ALL_ROLES",
    "DEFAULT_ROLES",
    "RoleFailed",
    "RunLedgerApp",
    "build_app",
    "faust_credentials",
    "faust_options",
    "freeze_startup_heap",
    "hosted_roles",
    "main",
    "run_roles",
]

log = logging.getLogger(__name__)

ALL_ROLES = frozenset({"ledger", "worker", "api"})
DEFAULT_ROLES = ALL_ROLES
_STOP_TIMEOUT_S = 45.0

RoleMain = Callable[[asyncio.Event], Awaitable[None]]


# ----- faust ---------------------------------------------------------------------------
# faust hard-codes its consumer's fetch wait to 1500 ms. On Tansu that was every
# hop's latency and a consumer override lowered it; Apache Kafka answers a waiting
# fetch as soon as data arrives, so faust's own consumer is used as it is
# (tests/integration/test_broker.py shows an agent receiving at once).


def faust_options(settings: Settings) -> dict[str, Any]:
    """faust App options from RunLedger settings, every one explicit.

    faust otherwise reads unprefixed environment variables (``BROKER_SESSION_TIMEOUT``,
    ``WEB_PORT`` ...), which *override* keyword options: ``env={}`` makes the
    ``RUNLEDGER_*`` settings the only configuration. Its 60 s default session would
    make a first group join take ~30 s on Tansu. The security settings become
    ``broker_credentials`` (`faust_credentials`); PLAINTEXT passes none.
    """
    session_s = settings.session_timeout_ms / 1000
    options: dict[str, Any] = {
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
    credentials = faust_credentials(settings)
    if credentials is not None:
        options["broker_credentials"] = credentials
    return options


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """faust's ``broker_credentials`` for the security settings; None for PLAINTEXT.

    Built from `Settings.kafka_client_kwargs`, so faust's producer (and any faust
    consumer) connects exactly like RunLedger's own aiokafka clients.
    """
    kwargs = settings.kafka_client_kwargs()
    protocol = kwargs["security_protocol"]
    ssl_context = kwargs.get("ssl_context")
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(ssl_context)
    mechanism = kwargs["sasl_mechanism"]
    if mechanism == "GSSAPI":
        return GSSAPICredentials(ssl_context=ssl_context)
    if mechanism == "OAUTHBEARER":
        # faust and aiokafka need a token provider object, which no RUNLEDGER_*
        # variable can describe; failing here beats failing at the first connect.
        raise ValueError(
            "RUNLEDGER_SASL_MECHANISM=OAUTHBEARER needs a token provider, which "
            "RunLedger's settings cannot supply; use PLAIN, SCRAM-SHA-256/512 or GSSAPI"
        )
    return SASLCredentials(
        username=kwargs.get("sasl_plain_username"),
        password=kwargs.get("sasl_plain_password"),
        ssl_context=ssl_context,
        mechanism=mechanism,
    )


# ----- roles as services of the App ------------------------------------------------------


class RoleFailed(RuntimeError):
    """A role's loop ended with an error; the process should exit non-zero."""


class RoleService(mode.Service):
    """Runs one role's `main(stop)` as a task for as long as the App runs."""

    def __init__(self, name: str, main: RoleMain, on_exit: Callable[[], None], **kw: Any) -> None:
        super().__init__(**kw)
        self.role = name
        self._main = main
        self._on_exit = on_exit
        self._stop_role = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    @property
    def shortlabel(self) -> str:
        return f"role:{self.role}"

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"runledger-{self.role}")

    async def _run(self) -> None:
        try:
            await self._main(self._stop_role)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported by run_roles, never swallowed
            log.exception("role %s failed", self.role)
            self.error = exc
        finally:
            self._on_exit()

    async def on_stop(self) -> None:
        self._stop_role.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("role %s did not stop in %.0f s; cancelling", self.role, _STOP_TIMEOUT_S)
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)


class RunLedgerApp(faust.App):
    """The tuned faust App in producer-only mode, with RunLedger's role objects."""

    producer_only = True
    ledger: Ledger | None = None
    worker: Worker | None = None

    def __init__(self, id: str, **options: Any) -> None:
        super().__init__(id, **options)
        self.role_services: list[RoleService] = []
        self.exited = asyncio.Event()
        """Set when any role's loop has ended (normally only after a stop)."""

    async def on_start(self) -> None:
        # faust's App.on_start touches `self.consumer`, which builds a consumer thread
        # (with an event loop that is never closed) even in producer-only mode.
        self.finalize()

    def add_role(self, name: str, main: RoleMain) -> None:
        service = RoleService(name, main, self.exited.set, loop=self.loop, beacon=self.beacon)
        self.role_services.append(service)
        # App.service is typed for classes; faust also takes a ready instance
        # (App._prepare_subservice), which is what a role with its settings needs.
        self.service(cast(Any, service))

    def failures(self) -> list[tuple[str, BaseException]]:
        return [(s.role, s.error) for s in self.role_services if s.error is not None]


def build_app(
    settings: Settings,
    roles: Collection[str] = DEFAULT_ROLES,
    *,
    worker_name: str | None = None,
) -> RunLedgerApp:
    """A faust App hosting `roles` (any of "ledger", "worker", "api"); not started yet.

    `worker_name` is the worker's identity in `cause.worker.id` (default
    ``worker-<host>-<pid>``).
    """
    unknown = set(roles) - ALL_ROLES
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {sorted(ALL_ROLES)}")
    options = faust_options(settings)
    # The api serves its own aiohttp app (services/roles/api.py) on web_host:web_port;
    # faust's web server stays off so nothing else listens.
    options["web_enabled"] = False
    app = RunLedgerApp(settings.app_id, **options)
    if "ledger" in roles:
        ledger = app.ledger = Ledger(settings)
        app.add_role("ledger", ledger.run)
    if "worker" in roles:
        worker = app.worker = Worker(settings, name=worker_name)
        app.add_role("worker", worker.run)
    if "api" in roles:
        from services.roles.api import run_api

        app.add_role("api", lambda stop: run_api(settings, stop))
    return app


@contextlib.asynccontextmanager
async def hosted_roles(
    settings: Settings,
    roles: Collection[str] = DEFAULT_ROLES,
    *,
    worker_name: str | None = None,
) -> AsyncIterator[RunLedgerApp]:
    """Create the topics, start an App with `roles`, and stop it on exit."""
    await ensure_topics(settings)
    app = build_app(settings, roles, worker_name=worker_name)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
        failures = app.failures()
        if failures:
            role, error = failures[0]
            raise RoleFailed(f"role {role} failed: {error!r}") from error


async def run_roles(
    settings: Settings,
    roles: Collection[str] = DEFAULT_ROLES,
    stop_event: asyncio.Event | None = None,
    *,
    on_started: Callable[[RunLedgerApp], None] | None = None,
    worker_name: str | None = None,
) -> None:
    """Run `roles` in this process until `stop_event` is set (or a role fails: RoleFailed).

    `on_started(app)` is called once every role runs (`app.ledger`, `app.worker`).
    """
    stop_event = stop_event or asyncio.Event()
    async with hosted_roles(settings, roles, worker_name=worker_name) as app:
        if on_started is not None:
            on_started(app)
        stopped = asyncio.create_task(stop_event.wait())
        exited = asyncio.create_task(app.exited.wait())
        try:
            await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            exited.cancel()


def freeze_startup_heap() -> None:
    """Keep what start-up made out of every later full collection (call once roles run).

    Modules, classes, functions and the views the ledger rebuilt are most of a
    role's heap and live as long as the process, yet every full (generation 2)
    collection walked them all: measured here, 134 ms of CPU in a worker with
    ~100k tracked objects, and the one single-task run that took 157 ms instead of
    ~15 waited for exactly that. `gc.freeze` moves them to the permanent
    generation; what is allocated afterwards is collected as before. Only for
    processes that exist to run roles: a library caller's heap is not ours.
    """
    gc.collect()
    gc.freeze()


# ----- python -m services.roles.app ----------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.roles.app",
        description="Run RunLedger roles in one process until SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--roles", default="ledger,worker,api", help="comma-separated: ledger,worker,api"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="worker task threads")
    parser.add_argument("--name", default=None, help="worker identity (default worker-HOST-PID)")
    parser.add_argument(
        "--dump-views",
        type=Path,
        default=None,
        help="on exit, pickle the ledger's state per owned partition (live views, retired "
        "runs, recent commands) to this file (tests compare it with a fold of the ledger topic)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    roles = {r.strip() for r in args.roles.split(",") if r.strip()}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    holder: list[RunLedgerApp] = []

    def started(app: RunLedgerApp) -> None:
        holder.append(app)
        freeze_startup_heap()
        log.info("roles %s running (pid %d)", sorted(roles), os.getpid())

    try:
        await run_roles(settings, roles, stop, on_started=started, worker_name=args.name)
    finally:
        if args.dump_views is not None and holder and holder[0].ledger is not None:
            ledger = holder[0].ledger
            states = {p: ledger.state_of(p) for p in sorted(ledger.owned)}
            stats = {"snapshots_loaded": ledger.stats.snapshots_loaded}
            args.dump_views.write_bytes(pickle.dumps({"states": states, "stats": stats}))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.roles.app``; returns the exit status."""
    args = _parse(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    overrides: dict[str, Any] = {}
    if args.concurrency is not None:
        overrides["worker_concurrency"] = args.concurrency
    settings = Settings(**overrides)
    try:
        asyncio.run(_serve(args, settings))
    except RoleFailed as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
