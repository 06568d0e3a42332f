"""The ``runledger`` command line: one argparse subcommand per function ``cmd_<name>``.

To add a subcommand, write ``cmd_<name>(args, settings) -> int`` and register it
in `build_parser` with ``_add(subparsers, "<name>", cmd_<name>, summary=...)``.
Settings come from ``RUNLEDGER_*`` environment variables (`services.settings`).

Exit status: 0 success; 1 the run (or command) failed, was refused, or a service
could not be reached; 2 bad arguments or configuration (never a traceback);
3 timed out waiting (the run goes on); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.console import Console

from engine.orchestration import task_run_id_for, timeline
from events import TransitionRejected
from services.client import audit
from services.client.client import (
    Client,
    IdempotencyConflict,
    RunRejected,
    change_of,
    flow_run_id_of_task_run,
    parse_flow_ref,
)
from services.client.watch import RunProgress, render, watch_run
from services.kafka.broker import embedded_broker
from services.kafka.process import BrokerError, check_loopback
from services.readmodel.store import ReadStore, StoreIdentity, open_readonly, store_path
from services.settings import Settings

__all__ = ["build_parser", "main"]

Command = Callable[[argparse.Namespace, Settings], int]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a Unix tool exits with when its output pipe closes."""


# ----- argument types (argparse turns ArgumentTypeError into a usage error, exit 2) ------


def parameter(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses (``3``, ``true``, ``[1,2]``), else text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def flow_ref(text: str) -> str:
    """``package.module:attr``, checked like the ledger will."""
    try:
        parse_flow_ref(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an offset (0 or more), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an offset (0 or more), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port (0-65535), got {value}")
    return value


def flow_run_id(text: str) -> str:
    if not text.strip() or "/" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a flow run id (a task run id has '/' in it: use resume)"
        )
    return text


def task_run_id(text: str) -> str:
    try:
        flow_run_id_of_task_run(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# ----- the parser ------------------------------------------------------------------------


def _add(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    command: Command,
    *,
    summary: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=summary, description=summary)
    parser.set_defaults(command=command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="runledger",
        description="RunLedger: an event-sourced task-run state machine on Kafka. "
        "Configuration: RUNLEDGER_* environment variables (see the README).",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=None,
        help="log level (default: INFO for services, WARNING for client commands)",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_service_commands(subparsers)
    _add_client_commands(subparsers)
    return parser


def _add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = _add(
        sub,
        "broker",
        cmd_broker,
        summary="run the embedded broker (Apache Kafka, data under RUNLEDGER_DATA_DIR) in the "
        "foreground",
    )
    broker.add_argument(
        "--port",
        type=port,
        default=None,
        help="TCP port (default: the port of RUNLEDGER_BROKERS, i.e. 9092; 0 picks a free one)",
    )
    broker.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind (default: 127.0.0.1; other addresses are refused)",
    )
    _add(sub, "ledger", cmd_ledger, summary="run the ledger role (and its scheduler)")
    worker = _add(sub, "worker", cmd_worker, summary="run a worker: executes task runs")
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        metavar="N",
        help="task bodies run at the same time (default: RUNLEDGER_WORKER_CONCURRENCY)",
    )
    _add(sub, "api", cmd_api, summary="run the HTTP JSON api over the ledger")
    serve = _add(sub, "serve", cmd_serve, summary="run ledger, worker and api in one process")
    serve.add_argument("--concurrency", type=positive_int, default=None, metavar="N")
    dev = _add(
        sub,
        "dev",
        cmd_dev,
        summary="start the embedded broker, ledger, worker and api; print where they are",
    )
    dev.add_argument(
        "--port",
        type=port,
        default=None,
        help="broker port (default: the port of RUNLEDGER_BROKERS; 0 picks a free one)",
    )
    dev.add_argument("--web-port", type=port, default=None, help="api port (RUNLEDGER_WEB_PORT)")
    dev.add_argument("--concurrency", type=positive_int, default=None, metavar="N")
    demo = _add(
        sub,
        "demo",
        cmd_demo,
        summary="start a private broker and the services, run the example flow twice, stop all",
    )
    demo.add_argument(
        "-n", type=positive_int, default=5, help="how many inputs the flow maps over (default 5)"
    )


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = _add(
        sub,
        "run",
        cmd_run,
        summary="submit a flow run and wait for it; exit 0 only if it succeeded",
    )
    run.add_argument("flow", type=flow_ref, metavar="MODULE:FLOW", help="e.g. examples.demo:flow")
    run.add_argument(
        "-p",
        "--param",
        type=parameter,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a flow parameter (repeatable); the value is JSON if it parses, else text",
    )
    _add_follow_options(run)
    _add_rerun_command(sub)
    cancel = _add(sub, "cancel", cmd_cancel, summary="cancel a running flow run")
    cancel.add_argument("flow_run_id", type=flow_run_id, metavar="FLOW_RUN_ID")
    cancel.add_argument("--reason", default=None, help="recorded with the cancellation")
    _add_answer_options(cancel)
    resume = _add(sub, "resume", cmd_resume, summary="resume a paused task run")
    resume.add_argument("task_run_id", type=task_run_id, metavar="TASK_RUN_ID")
    _add_answer_options(resume)
    _add_audit_commands(sub)
    _add_verify_command(sub)
    config = _add(
        sub,
        "config",
        cmd_config,
        summary="print the effective RUNLEDGER_* settings (secrets hidden)",
    )
    config.add_argument(
        "--markdown",
        action="store_true",
        help="print the documentation table of every setting instead (as in the README)",
    )


def _add_rerun_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rerun = _add(
        sub,
        "rerun",
        cmd_rerun,
        summary="re-run a finished flow run, reusing the results of the task runs that "
        "succeeded; wait for it; exit 0 only if it succeeded",
    )
    rerun.add_argument("flow_run_id", type=flow_run_id, metavar="FLOW_RUN_ID")
    _add_follow_options(rerun, new="new ")


def _add_follow_options(parser: argparse.ArgumentParser, new: str = "") -> None:
    """What `run` and `rerun` share: how the started flow run is followed."""
    parser.add_argument("--watch", action="store_true", help="show a live table of task states")
    parser.add_argument(
        "--idempotency-key",
        default=None,
        metavar="KEY",
        help=f"the same key always names the same {new}flow run: a repeated "
        f"{parser.prog.split()[-1]} starts nothing new",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="S",
        help="stop waiting after S seconds (exit 3; the run goes on)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help=f"print the {new}flow run id and exit without waiting",
    )


def _add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = _add(
        sub, "history", cmd_history, summary="print a flow run's audit trail: every ledger fact"
    )
    history.add_argument("flow_run_id", type=flow_run_id, metavar="FLOW_RUN_ID")
    history.add_argument(
        "--task",
        type=audit.task_ref,
        default=None,
        metavar="SLUG[/INDEX]",
        help="only the facts of this task run (INDEX: a mapped child)",
    )
    states = _add(
        sub,
        "states",
        cmd_states,
        summary="print the state of a flow run and of each of its task runs, now or in the past",
    )
    states.add_argument("flow_run_id", type=flow_run_id, metavar="FLOW_RUN_ID")
    states.add_argument(
        "--as-of",
        type=audit.as_of_time,
        default=None,
        metavar="ISO-8601",
        help="the states as they were then, e.g. 2024-05-01T12:00:00Z (default: now)",
    )
    for parser in (history, states):
        parser.add_argument(
            "--json", action="store_true", help="one JSON object per line instead of a table"
        )


def _add_verify_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = _add(
        sub,
        "verify",
        cmd_verify,
        summary="fold the ledger again and compare it with the api's read model; "
        "exit 1 and print the differences on any mismatch",
    )
    verify.add_argument(
        "--from-offset",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="fold each partition from offset N (default 0: everything); runs that began "
        "before N have their records compared, not their views",
    )
    verify.add_argument(
        "--read-model",
        type=Path,
        default=None,
        metavar="PATH",
        help="the api's read-model file (default: the one in RUNLEDGER_DATA_DIR)",
    )
    verify.add_argument(
        "--json", action="store_true", help="one JSON object per mismatch, then a summary"
    )


def _add_answer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="how long to wait for the ledger's answer (default 10)",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="send the command without waiting for the answer"
    )


# ----- helpers ---------------------------------------------------------------------------


def _fail(command: str, message: str, status: int = EXIT_FAILURE) -> int:
    print(f"runledger {command}: {message}", file=sys.stderr)
    return status


def _run_async(command: str, coro: Coroutine[Any, Any, int]) -> int:
    """Run a client coroutine, turning environment errors into messages and exit codes."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return _fail(command, "interrupted", EXIT_INTERRUPTED)
    except KafkaError as exc:
        return _fail(command, f"Kafka error: {exc} (is a broker running? check RUNLEDGER_BROKERS)")


def _serve(command: str, settings: Settings, roles: Sequence[str]) -> int:
    from services.client.dev import serve_roles
    from services.roles.app import RoleFailed

    def started() -> None:
        print(
            f"runledger {command}: {', '.join(roles)} running against {settings.brokers} "
            f"(topics {settings.topic_prefix}*); Ctrl-C stops",
            flush=True,
        )

    try:
        serve_roles(settings, roles, on_started=started)
    except RoleFailed as exc:
        return _fail(command, str(exc))
    except KafkaError as exc:
        return _fail(command, f"Kafka error: {exc} (is a broker running at {settings.brokers}?)")
    except OSError as exc:  # e.g. the web port is taken
        return _fail(command, str(exc))
    print(f"runledger {command}: stopped", flush=True)
    return EXIT_OK


def _concurrency(settings: Settings, value: int | None) -> Settings:
    from services.client.dev import with_overrides

    return settings if value is None else with_overrides(settings, worker_concurrency=value)


# ----- service commands ------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded broker until SIGINT or SIGTERM, then stop it by PID."""
    try:
        host = check_loopback(args.host)
    except ValueError as exc:
        print(f"runledger broker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # By default the port of the first RUNLEDGER_BROKERS entry, so broker and clients agree.
    port = args.port if args.port is not None else settings.first_broker_port
    notice = partial(print, file=sys.stderr)
    try:
        broker = embedded_broker(settings, port=port, host=host, notice=notice)
    except BrokerError as exc:
        print(f"runledger broker: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker.start()
        kept = (
            "its data stays in " + str(settings.data_dir.absolute())
            if broker.durable
            else "its data is lost on stop"
        )
        print(
            f"runledger broker: {broker.description} "
            f"(pid {broker.pid}, ready in {broker.startup_seconds or 0:.2f}s)\n"
            f"  clients: export RUNLEDGER_BROKERS={broker.bootstrap}\n"
            f"  log:     {broker.log_path}\n"
            f"  Ctrl-C stops it; {kept}.",
            flush=True,
        )
        while not stop.wait(0.2):
            if not broker.is_running():
                print(
                    f"runledger broker: the broker exited with status {broker.returncode()}; "
                    f"see {broker.log_path}",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
        print("runledger broker: stopping", flush=True)
        return EXIT_OK
    except BrokerError as exc:
        print(f"runledger broker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_ledger(args: argparse.Namespace, settings: Settings) -> int:
    """The ledger role: the single writer of the ledger, and the scheduler."""
    return _serve("ledger", settings, ("ledger",))


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """A worker: runs task bodies, `--concurrency` at a time."""
    return _serve("worker", _concurrency(settings, args.concurrency), ("worker",))


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """The HTTP api over the ledger."""
    return _serve("api", settings, ("api",))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Every role in this one process."""
    from services.client.dev import ROLES

    return _serve("serve", _concurrency(settings, args.concurrency), ROLES)


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Embedded broker + every role, until Ctrl-C."""
    from services.client.dev import run_dev, with_overrides

    if args.web_port is not None:
        settings = with_overrides(settings, web_port=args.web_port)
    settings = _concurrency(settings, args.concurrency)
    try:
        run_dev(settings, broker_port=args.port)
    except BrokerError as exc:
        hint = " (another `runledger dev` or broker? use --port)" if "in use" in str(exc) else ""
        return _fail("dev", f"{exc}{hint}")
    except KafkaError as exc:
        return _fail("dev", f"Kafka error: {exc}")
    except OSError as exc:
        return _fail("dev", str(exc))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The two-minute tour: private broker, services, the example flow twice."""
    from services.client.demo import run_demo

    return run_demo(settings, n=args.n)


# ----- client commands -------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Submit a flow run; wait for it (live with --watch); exit 0 only on success."""
    parameters: dict[str, Any] = {}
    for key, value in args.param:
        if key in parameters:
            return _fail("run", f"parameter {key!r} is given twice", EXIT_USAGE)
        parameters[key] = value
    if args.detach and args.watch:
        return _fail("run", "--detach and --watch exclude each other", EXIT_USAGE)
    return _run_async("run", _run(args, settings, parameters))


async def _run(args: argparse.Namespace, settings: Settings, parameters: dict[str, Any]) -> int:
    console = Console()
    async with Client(settings) as client:
        try:
            run_id = await client.submit(
                args.flow, parameters, idempotency_key=args.idempotency_key
            )
        except IdempotencyConflict as exc:
            return _fail("run", str(exc))
        if args.detach:
            print(run_id)
            return EXIT_OK
        console.print(f"submitted flow run [bold]{run_id}[/] ({args.flow})", highlight=False)
        return await _follow("run", client, run_id, args, console)


async def _follow(
    name: str, client: Client, run_id: str, args: argparse.Namespace, console: Console
) -> int:
    """Wait for a submitted run (live with --watch); exit 0 only if it succeeded."""
    try:
        if args.watch:
            progress = await watch_run(client, run_id, console=console, timeout=args.timeout)
        else:
            progress = RunProgress.from_view(await client.wait(run_id, args.timeout))
            console.print(render(progress))
    except RunRejected as exc:
        return _fail(name, str(exc))
    except TimeoutError as exc:
        return _fail(name, f"{exc}; it goes on (runledger cancel {run_id})", EXIT_TIMEOUT)
    if progress.run_rejected is not None:
        return _fail(name, f"flow run {run_id} was rejected: {progress.run_rejected}")
    if progress.successful:
        console.print(f"flow run {run_id} finished: [green]{progress.flow_state}[/]")
        return EXIT_OK
    return _fail(name, f"flow run {run_id} finished {progress.flow_state}: {progress.flow_message}")


def cmd_rerun(args: argparse.Namespace, settings: Settings) -> int:
    """Re-run a finished flow run, reusing what succeeded; then as `run` (wait, --watch)."""
    if args.detach and args.watch:
        return _fail("rerun", "--detach and --watch exclude each other", EXIT_USAGE)
    return _run_async("rerun", _rerun(args, settings))


async def _rerun(args: argparse.Namespace, settings: Settings) -> int:
    console = Console()
    async with Client(settings) as client:
        try:
            run_id = await client.rerun(args.flow_run_id, idempotency_key=args.idempotency_key)
        except (LookupError, ValueError) as exc:
            return _fail("rerun", str(exc))
        if args.detach:
            print(run_id)
            return EXIT_OK
        console.print(
            f"submitted flow run [bold]{run_id}[/] (a re-run of {args.flow_run_id})",
            highlight=False,
        )
        return await _follow("rerun", client, run_id, args, console)


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the ledger to cancel a flow run, and report its answer."""

    def send(client: Client) -> Awaitable[str]:
        return client.cancel(args.flow_run_id, reason=args.reason)

    return _run_async("cancel", _command("cancel", args, settings, args.flow_run_id, send))


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the ledger to resume a paused task run, and report its answer."""

    def send(client: Client) -> Awaitable[str]:
        return client.resume(args.task_run_id)

    flow_run = flow_run_id_of_task_run(args.task_run_id)
    return _run_async("resume", _command("resume", args, settings, flow_run, send))


async def _command(
    name: str,
    args: argparse.Namespace,
    settings: Settings,
    flow_run: str,
    send: Callable[[Client], Awaitable[str]],
) -> int:
    async with Client(settings) as client:
        command_id = await send(client)
        if args.no_wait:
            print(f"runledger {name}: sent (command {command_id})")
            return EXIT_OK
        try:
            facts = await client.answer(flow_run, command_id, timeout=args.timeout)
        except TimeoutError as exc:
            return _fail(name, str(exc), EXIT_TIMEOUT)
    rejected = [f for f in facts if isinstance(f, TransitionRejected)]
    if rejected:
        return _fail(name, f"refused by the ledger: {rejected[0].reason}")
    changes = [c for c in map(change_of, facts) if c is not None]
    moved = ", ".join(f"{c.task_slug or 'flow run'} -> {c.state_type}" for c in changes)
    print(f"runledger {name}: accepted ({moved or 'no state change'})")
    return EXIT_OK


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """The run's audit trail (or one task run's): every fact, in ledger order."""
    return _run_async("history", _history(args, settings))


async def _history(args: argparse.Namespace, settings: Settings) -> int:
    async with Client(settings) as client:
        facts = await client.history(args.flow_run_id)
    if not facts:
        return _fail("history", f"no such flow run {args.flow_run_id}")
    task_run = None if args.task is None else task_run_id_for(args.flow_run_id, *args.task)
    rows = timeline(facts, task_run_id=task_run)
    if task_run is not None and not rows:
        label = audit.task_label(*args.task)
        return _fail("history", f"flow run {args.flow_run_id} has no task run {label}")
    if args.json:
        _print_json_lines(audit.row_record(row) for row in rows)
    else:
        Console().print(audit.timeline_table(rows, one_task_run=task_run is not None))
    return EXIT_OK


def cmd_states(args: argparse.Namespace, settings: Settings) -> int:
    """The flow run's and its task runs' states, folded up to now or to --as-of."""
    return _run_async("states", _states(args, settings))


async def _states(args: argparse.Namespace, settings: Settings) -> int:
    async with Client(settings) as client:
        view = await client.view(args.flow_run_id, as_of=args.as_of)
        # Only to say why there is nothing: unknown, refused, or created later.
        facts = [] if view.created else await client.history(args.flow_run_id)
    if not view.created:
        return _fail("states", audit.absence(args.flow_run_id, facts, args.as_of))
    if args.json:
        _print_json_lines(audit.state_records(view))
    else:
        Console().print(audit.states_table(view, args.as_of))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Fold the ledger and compare it with the read model and the ledger's snapshots.

    0 when every copy equals the fold, 1 on any mismatch or when there is no copy to check.
    """
    path = args.read_model or store_path(settings.data_dir, settings.topic_prefix)
    store = open_readonly(path, StoreIdentity(ledger_topic=settings.topic("ledger")))
    try:
        return _run_async("verify", _verify(args, settings, store, path))
    finally:
        if store is not None:
            store.close()


async def _verify(
    args: argparse.Namespace, settings: Settings, store: ReadStore | None, path: Path
) -> int:
    from services.readmodel.verify import ReadModelCheck, SnapshotCheck, newest_snapshots, verify

    mismatches = []
    checked: list[str] = []
    positions = store.positions() if store is not None else {}
    if store is None:
        print(
            f"runledger verify: no read model of {settings.topic('ledger')} (this engine and "
            f"schema version) at {path}; comparing the ledger's snapshots only",
            file=sys.stderr,
        )
    if store is not None:
        mismatches += await verify(
            settings, [ReadModelCheck(store, positions)], args.from_offset, upto=positions
        )
        covered = ", ".join(f"{p}: {o}" for p, o in sorted(positions.items())) or "nothing yet"
        checked.append(f"the read model (from offset {args.from_offset}, up to {covered})")
    snapshots = await newest_snapshots(settings)
    if snapshots:
        check = SnapshotCheck(snapshots, settings.ledger_command_window)
        mismatches += await verify(settings, [check], 0, upto=check.covers())
        covers = ", ".join(f"{p}: {o}" for p, o in sorted(check.covers().items()))
        checked.append(f"the ledger's snapshots (from offset 0, up to {covers})")
    if not checked:
        return _fail(
            "verify",
            f"nothing to compare: no read model of {settings.topic('ledger')} (this engine and "
            f"schema version) at {path} and no snapshots; run the api with this "
            "RUNLEDGER_DATA_DIR, or name a read model with --read-model",
        )
    runs = len({(m.partition, m.flow_run_id) for m in mismatches})
    if args.json:
        _print_json_lines(m.as_json() for m in mismatches)
        summary = {"kind": "summary", "mismatches": len(mismatches), "runs": runs}
        summary |= {"from_offset": args.from_offset, "positions": positions, "checked": checked}
        _print_json_lines([summary])
    else:
        for mismatch in mismatches:
            print(mismatch.as_text())
        verdict = f"{len(mismatches)} mismatches in {runs} runs" if mismatches else "equal"
        print(f"runledger verify: {' and '.join(checked)} vs the ledger: {verdict}")
    return EXIT_FAILURE if mismatches else EXIT_OK


def _print_json_lines(records: Iterable[dict[str, Any]]) -> None:
    for record in records:
        print(json.dumps(record, default=str))


def _default_text(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def settings_table() -> str:
    """Markdown table of every setting: variable, default, description (for the README)."""
    lines = ["| variable | default | description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        default = _default_text(field).replace("|", "\\|")
        lines.append(f"| `RUNLEDGER_{name.upper()}` | `{default}` | {description} |")
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """The settings this environment gives, as RUNLEDGER_* lines (or the docs table)."""
    if args.markdown:
        print(settings_table())
        return EXIT_OK
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, list):
            value = ",".join(value)
        print(f"RUNLEDGER_{name.upper()}={'' if value is None else value}")
    return EXIT_OK


# ----- entry point -----------------------------------------------------------------------

_SERVICE_COMMANDS = {cmd_broker, cmd_ledger, cmd_worker, cmd_api, cmd_serve, cmd_dev}


def _configure_logging(level: str | None, command: Command) -> None:
    default = "INFO" if command in _SERVICE_COMMANDS else "WARNING"
    logging.basicConfig(
        level=level or default,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``runledger`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"runledger: invalid RUNLEDGER_* configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    command: Command = args.command
    _configure_logging(args.log_level, command)
    try:
        status = command(args, settings)
        sys.stdout.flush()  # a closed pipe shows here, not at exit, where it would be a traceback
    except BrokenPipeError:
        # `runledger states ... | head`: the reader went away. End quietly, as Unix tools
        # do, with 128 + SIGPIPE; stdout goes to devnull so exit's flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
