"""The command line: argument parsing, error messages and exit codes (no broker needed)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

import pytest

from services.client import cli
from services.client.cli import build_parser, main, parameter

SUBCOMMANDS = (
    "broker",
    "ledger",
    "worker",
    "api",
    "serve",
    "dev",
    "run",
    "rerun",
    "cancel",
    "resume",
    "demo",
)


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `main(argv)`, expect a usage error (exit 2) and return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: runledger {name}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=3", ("n", 3)),
        ("ratio=0.5", ("ratio", 0.5)),
        ("flag=true", ("flag", True)),
        ("xs=[1, 2]", ("xs", [1, 2])),
        ('cfg={"a": null}', ("cfg", {"a": None})),
        ("name=Ada", ("name", "Ada")),
        ('name="3"', ("name", "3")),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
    ],
)
def test_parameters_are_json_when_they_parse_else_text(
    text: str, expected: tuple[str, Any]
) -> None:
    assert parameter(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=3", " =3"])
def test_a_parameter_needs_a_key_and_an_equals_sign(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected key=value"):
        parameter(text)


def test_run_parses_every_option() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "examples.demo:flow",
            "-p",
            "n=3",
            "--param",
            "name=x",
            "--watch",
            "--idempotency-key",
            "k-1",
            "--timeout",
            "2.5",
        ]
    )
    assert args.flow == "examples.demo:flow"
    assert args.param == [("n", 3), ("name", "x")]
    assert args.watch is True
    assert args.idempotency_key == "k-1"
    assert args.timeout == 2.5
    assert args.command is cli.cmd_run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run"], "the following arguments are required: MODULE:FLOW"),
        (["run", "examples.demo"], "is not a flow reference: expected 'package.module:attribute'"),
        (["run", "examples/demo.py:flow"], "is not a flow reference"),
        (["run", "examples.demo:flow", "-p", "n"], "expected key=value, got 'n'"),
        (["run", "examples.demo:flow", "--timeout", "0"], "expected a positive number of seconds"),
        (["run", "examples.demo:flow", "--timeout", "soon"], "expected a number of seconds"),
        (["worker", "--concurrency", "0"], "expected a positive integer, got 0"),
        (["worker", "--concurrency", "many"], "expected a positive integer, got 'many'"),
        (["serve", "--concurrency", "-1"], "expected a positive integer"),
        (["dev", "--port", "70000"], "expected a TCP port (0-65535), got 70000"),
        (["cancel"], "the following arguments are required: FLOW_RUN_ID"),
        (["rerun"], "the following arguments are required: FLOW_RUN_ID"),
        (["rerun", "run-1/task-1"], "is not a flow run id"),
        (["rerun", "run-1", "--timeout", "0"], "expected a positive number of seconds"),
        (["cancel", "run-1/task-1"], "is not a flow run id"),
        (["resume", "run-1"], "is not a task run id (expected FLOW_RUN_ID/TASK_SLUG[/MAP_INDEX])"),
        (["resume", "run-1/t", "--timeout", "-3"], "expected a positive number of seconds"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["--log-level", "LOUD", "api"], "invalid choice: 'LOUD'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in _usage_error(capsys, argv)


def test_a_parameter_given_twice_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "examples.demo:flow", "-p", "n=1", "-p", "n=2"])
    assert status == 2
    assert "parameter 'n' is given twice" in capsys.readouterr().err


def test_detach_and_watch_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "examples.demo:flow", "--detach", "--watch"]) == 2
    assert "--detach and --watch exclude each other" in capsys.readouterr().err


def test_rerun_parses_every_option() -> None:
    args = build_parser().parse_args(
        ["rerun", "run-1", "--watch", "--timeout", "2.5", "--idempotency-key", "again"]
    )
    assert args.flow_run_id == "run-1"
    assert args.watch is True
    assert args.timeout == 2.5
    assert args.idempotency_key == "again"
    assert args.detach is False
    assert args.command is cli.cmd_rerun
    detached = build_parser().parse_args(["rerun", "run-1", "--detach"])
    assert (detached.detach, detached.watch, detached.timeout) == (True, False, None)


def test_rerun_detach_and_watch_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rerun", "run-1", "--detach", "--watch"]) == 2
    assert "runledger rerun: --detach and --watch exclude each other" in capsys.readouterr().err


def test_invalid_configuration_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNLEDGER_PARTITIONS", "zero")
    assert main(["run", "examples.demo:flow"]) == 2
    err = capsys.readouterr().err
    assert "invalid RUNLEDGER_* configuration" in err
    assert "partitions" in err
    assert "Traceback" not in err


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "examples.hello:flow"],
        ["rerun", "some-run"],
        ["cancel", "some-run"],
        ["resume", "some-run/greet-1"],
    ],
)
def test_an_unreachable_broker_is_reported_without_a_traceback(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNLEDGER_BROKERS", f"127.0.0.1:{_closed_port()}")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Kafka error" in err
    assert "is a broker running? check RUNLEDGER_BROKERS" in err
    assert "Traceback" not in err


def test_worker_concurrency_overrides_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_serve(command: str, settings: Any, roles: tuple[str, ...]) -> int:
        seen.update(command=command, concurrency=settings.worker_concurrency, roles=roles)
        return 0

    monkeypatch.setattr(cli, "_serve", fake_serve)
    assert main(["worker", "--concurrency", "7"]) == 0
    assert seen == {"command": "worker", "concurrency": 7, "roles": ("worker",)}
    assert main(["serve"]) == 0
    assert seen == {"command": "serve", "concurrency": 4, "roles": ("ledger", "worker", "api")}
    for role in ("ledger", "api"):
        assert main([role]) == 0
        assert seen["roles"] == (role,)


def test_broker_keeps_its_options() -> None:
    args = build_parser().parse_args(["broker", "--port", "0", "--host", "localhost"])
    assert (args.port, args.host, args.command) == (0, "localhost", cli.cmd_broker)


def test_broker_refuses_a_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "--host", "0.0.0.0"]) == 2
    assert "binds loopback addresses only" in capsys.readouterr().err


class _RefusingClient:
    """Stands in for Client in `runledger rerun`: the earlier run is not re-runnable."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __aenter__(self) -> _RefusingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def rerun(self, flow_run_id: str, *, idempotency_key: str | None = None) -> str:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        LookupError("unknown flow run run-1"),
        ValueError("flow run run-1 is Running, not finished"),
    ],
)
def test_rerun_of_an_unknown_or_unfinished_run_exits_1_with_the_reason(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "Client", lambda settings: _RefusingClient(error))
    assert main(["rerun", "run-1"]) == 1
    err = capsys.readouterr().err
    assert f"runledger rerun: {error}" in err
    assert "Traceback" not in err


def test_a_broker_port_out_of_range_is_a_usage_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["broker", "--port", "99999"])
    assert exited.value.code == 2
    assert "expected a TCP port (0-65535), got 99999" in capsys.readouterr().err


def test_output_to_a_closed_pipe_ends_quietly_with_128_plus_sigpipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`runledger ... | head`: the reader is gone; no traceback, exit status 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(["config"]) == 141


def test_verify_without_a_read_model_says_where_it_looked_and_exits_1(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.sqlite3"
    assert main(["verify", "--read-model", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"no read model of runledger.ledger (this engine and schema version) at {missing}" in err


def test_verify_refuses_a_negative_offset(capsys: pytest.CaptureFixture[str]) -> None:
    assert "expected an offset (0 or more), got -1" in _usage_error(
        capsys, ["verify", "--from-offset", "-1"]
    )
