"""The ``runledger`` command line: one argparse subcommand per function ``cmd_<name>``.

To add a subcommand, write ``cmd_<name>(args, settings) -> int`` and register it
in `build_parser` with ``_add(subparsers, "<name>", cmd_<name>, summary=...)``.
Settings come from ``RUNLEDGER_*`` environment variables (`services.settings`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from pydantic import ValidationError

from services.broker import BrokerError, EmbeddedBroker, check_loopback
from services.settings import Settings

__all__ = ["build_parser", "cmd_broker", "main"]

Command = Callable[[argparse.Namespace, Settings], int]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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
        description="RunLedger: an event-sourced task-run state machine on Kafka.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    broker = _add(
        subparsers,
        "broker",
        cmd_broker,
        summary="run the embedded Kafka-compatible broker (Tansu, memory only) in the foreground",
    )
    broker.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port (default: the port of RUNLEDGER_BROKERS, i.e. 9092; 0 picks a free one)",
    )
    broker.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind (default: 127.0.0.1; other addresses are refused)",
    )
    return parser


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded broker until SIGINT or SIGTERM, then stop it by PID."""
    try:
        host = check_loopback(args.host)
    except ValueError as exc:
        print(f"runledger broker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # By default the port of the first RUNLEDGER_BROKERS entry, so broker and clients agree.
    port = args.port if args.port is not None else settings.first_broker_port
    broker = EmbeddedBroker(port=port, host=host, log_dir=settings.data_dir / "logs")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        broker.start()
        print(
            f"runledger broker: Tansu (memory only) listening on {broker.bootstrap} "
            f"(pid {broker.pid}, ready in {broker.startup_seconds or 0:.2f}s)\n"
            f"  clients: export RUNLEDGER_BROKERS={broker.bootstrap}\n"
            f"  log:     {broker.log_path}\n"
            "  Ctrl-C stops it; its data is lost on stop.",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``runledger`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"runledger: invalid RUNLEDGER_* configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    command: Command = args.command
    return command(args, settings)


if __name__ == "__main__":
    sys.exit(main())
