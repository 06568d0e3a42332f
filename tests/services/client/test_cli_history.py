"""`runledger history` and `runledger states`: arguments, output and exit codes (no broker).

The output tests replace the client by one that serves a ledger the local runner
made, so what is printed is checked against real facts without Kafka.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta, timezone
from types import TracebackType
from typing import Any, ClassVar, Self

import pytest

from engine import Flow, context, task
from engine.clock import FixedClock
from engine.flow_runner import FlowRunner
from engine.orchestration import FlowRunView, fold, fold_as_of
from events import Cause, Event, Fact, TransitionRejected
from services.client import cli
from services.client.cli import build_parser, main

FR = "fr-cli"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `main(argv)`, expect a usage error (exit 2) and return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ----- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["history", "states"])
def test_both_commands_are_listed_and_have_help(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: runledger {name}" in out
    assert "--json" in out


def test_history_takes_a_task_slug_with_an_optional_map_index() -> None:
    """--task SLUG is an unmapped run (or a mapped parent), SLUG/INDEX a mapped child."""
    args = build_parser().parse_args(["history", "run-1", "--task", "square-1/2", "--json"])
    assert (args.flow_run_id, args.task, args.json) == ("run-1", ("square-1", 2), True)
    assert args.command is cli.cmd_history
    args = build_parser().parse_args(["history", "run-1", "--task", "square-1"])
    assert (args.task, args.json) == (("square-1", None), False)
    assert build_parser().parse_args(["history", "run-1"]).task is None


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2024-05-01T12:00:00Z", NOW),
        ("2024-05-01T14:00:00+02:00", NOW),
        ("2024-05-01T12:00:00.250+00:00", NOW + timedelta(milliseconds=250)),
    ],
)
def test_states_takes_an_iso_time_with_a_zone(text: str, instant: datetime) -> None:
    args = build_parser().parse_args(["states", "run-1", "--as-of", text])
    assert args.as_of == instant
    assert args.as_of.utcoffset() is not None
    assert args.command is cli.cmd_states


def test_states_defaults_to_now() -> None:
    args = build_parser().parse_args(["states", "run-1"])
    assert (args.as_of, args.json) == (None, False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["history"], "the following arguments are required: FLOW_RUN_ID"),
        (["states"], "the following arguments are required: FLOW_RUN_ID"),
        (["history", "run-1/square-1"], "is not a flow run id"),
        (["history", "run-1", "--task", "square-1/x"], "expected TASK_SLUG or TASK_SLUG/MAP_INDEX"),
        (["history", "run-1", "--task", "/3"], "expected TASK_SLUG[/MAP_INDEX], got '/3'"),
        (["states", "run-1", "--as-of", "yesterday"], "expected an ISO-8601 time with a zone"),
        (["states", "run-1", "--as-of", "2024-05-01T12:00:00"], "has no time zone: add one"),
        (["states", "run-1", "--as-of", "2024-13-01T00:00:00Z"], "expected an ISO-8601 time"),
        (["history", "run-1", "--as-of", "2024-05-01T12:00:00Z"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in _usage_error(capsys, argv)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("argv", [["history", "some-run"], ["states", "some-run"]])
def test_an_unreachable_broker_is_reported_without_a_traceback(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNLEDGER_BROKERS", f"127.0.0.1:{_closed_port()}")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Kafka error" in err
    assert "Traceback" not in err


# ----- output, from a ledger the local runner made -----------------------------------------------


@task(max_retries=1, retry_delay=timedelta(seconds=10))
def flaky() -> str:
    if context.get("task_run_count", 1) == 1:
        raise ValueError("first attempt fails")
    return "ok"


with Flow("retry") as RETRY_FLOW:
    flaky()


def ledger() -> list[Event]:
    """A run whose only task fails at NOW and succeeds on its retry at NOW + 10 s."""
    clock = FixedClock(NOW)
    return FlowRunner(RETRY_FLOW, clock=clock, sleep=clock.advance).run(flow_run_id=FR).events


class FakeClient:
    """The two reads the commands make, answered from `facts` (as Client does from Kafka)."""

    facts: ClassVar[list[Fact]] = []

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def history(self, flow_run_id: str) -> list[Fact]:
        return [f for f in self.facts if f.flow_run_id == flow_run_id]

    async def view(self, flow_run_id: str, *, as_of: datetime | None = None) -> FlowRunView:
        empty = FlowRunView(flow_run_id=flow_run_id)
        facts = await self.history(flow_run_id)
        return fold(facts, start=empty) if as_of is None else fold_as_of(facts, as_of, start=empty)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Fact]:
    """The CLI reads the local runner's ledger through FakeClient."""
    facts = [e for e in ledger() if isinstance(e, Fact)]
    monkeypatch.setattr(FakeClient, "facts", facts)
    monkeypatch.setattr(cli, "Client", FakeClient)
    monkeypatch.setenv("COLUMNS", "200")
    return facts


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_history_json_is_one_object_per_fact_in_ledger_order(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", FR, "--json"]) == 0
    lines = _json_lines(capsys.readouterr().out)
    assert [line["event_id"] for line in lines] == [f.event_id for f in served]
    moves = [
        (line["state_type"], line["attempt"], line["worker_id"])
        for line in lines
        if line["kind"] == "task_run_transitioned"
    ]
    assert moves[2:] == [
        ("Running", 1, "local"),
        ("Failed", 1, "local"),
        ("Retrying", 1, "local"),
        ("Submitted", 2, None),
        ("Running", 2, "local"),
        ("Success", 2, "local"),
    ]
    assert lines[0]["occurred_at"] == "2024-05-01T12:00:00Z"


def test_history_of_one_task_run_keeps_only_its_facts(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", FR, "--task", "flaky-1", "--json"]) == 0
    lines = _json_lines(capsys.readouterr().out)
    assert {line["task_run_id"] for line in lines} == {f"{FR}/flaky-1"}


def test_history_prints_a_table_with_states_workers_and_messages(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", FR]) == 0
    out = capsys.readouterr().out
    for text in ("Failed", "Retrying", "Running", "Success", "local", "first attempt fails"):
        assert text in out, text
    assert "created" in out
    assert "dispatched" in out
    assert "times UTC, 2024-05-01" in out  # the day in the title, times of day in the rows
    assert "12:00:10.000" in out


def test_a_refused_command_is_in_the_history_with_its_reason(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = TransitionRejected(
        event_id="refusal",
        flow_run_id=FR,
        task_run_id=f"{FR}/flaky-1",
        occurred_at=NOW + timedelta(seconds=20),
        cause=Cause(command_id="late"),
        command_id="late",
        command_type="transition_proposed",
        reason="stale expected_seq 1 (the run is at 8)",
        proposed={"type": "Running"},
    )
    served.append(refusal)
    assert main(["history", FR, "--task", "flaky-1"]) == 0
    out = capsys.readouterr().out
    assert "refused Running" in out
    assert "stale expected_seq 1" in out


def test_an_unknown_flow_run_exits_1(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("history", "states"):
        assert main([command, "nobody"]) == 1
        assert "no such flow run nobody" in capsys.readouterr().err


def test_an_unknown_task_run_exits_1(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", FR, "--task", "flaky-1/3"]) == 1
    assert f"flow run {FR} has no task run flaky-1[3]" in capsys.readouterr().err


def test_states_now_shows_the_final_states(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["states", FR, "--json"]) == 0
    flow, task_run = _json_lines(capsys.readouterr().out)
    assert (flow["kind"], flow["state_type"]) == ("flow_run", "Success")
    assert (task_run["task_slug"], task_run["map_index"]) == ("flaky-1", None)
    assert (task_run["state_type"], task_run["attempt"]) == ("Success", 2)


def test_states_as_of_a_past_time_shows_the_run_as_it_was(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    """Between the attempts the task was Retrying and the flow Running."""
    as_of = (NOW + timedelta(seconds=5)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert main(["states", FR, "--as-of", as_of, "--json"]) == 0
    flow, task_run = _json_lines(capsys.readouterr().out)
    assert flow["state_type"] == "Running"
    assert (task_run["state_type"], task_run["attempt"]) == ("Retrying", 1)
    assert main(["states", FR, "--as-of", as_of]) == 0
    out = capsys.readouterr().out
    assert "Retrying" in out
    assert "as of 2024-05-01T12:00:05Z" in out


def test_states_before_the_run_existed_exits_1_saying_when_it_was_created(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["states", FR, "--as-of", "2024-05-01T11:00:00Z"]) == 1
    err = capsys.readouterr().err
    assert f"no such flow run {FR} as of 2024-05-01T11:00:00Z" in err
    assert "created at 2024-05-01T12:00:00Z" in err


def test_states_of_a_refused_run_gives_the_ledgers_reason(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    served.append(
        TransitionRejected(
            event_id="no-flow",
            flow_run_id="refused",
            occurred_at=NOW,
            command_id="req",
            command_type="run_requested",
            reason="cannot load the flow",
        )
    )
    assert main(["states", "refused"]) == 1
    assert "flow run refused was rejected: cannot load the flow" in capsys.readouterr().err


def test_history_of_one_task_run_names_it_in_the_title_not_on_every_row(
    served: list[Fact], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", FR, "--task", "flaky-1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flaky-1 — times UTC, 2024-05-01")
    assert "┃ task run" not in out  # no such column
