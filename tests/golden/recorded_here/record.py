"""Record the scenarios of this folder from real Prefect 1.4.1 (not run by the test suite).

Prefect 1.4.1 is not a dependency of RunLedger; this script runs in a separate
virtualenv that has it (`python3 -m venv /tmp/p1 && /tmp/p1/bin/pip install
prefect==1.4.1`, then `/tmp/p1/bin/python tests/golden/recorded_here/record.py`).
It writes one JSON file per scenario beside itself, in the layout of
`shared/golden` that the harness reads (`flow_runs`, `per_task_sequences`,
extras), recorded the way the README of `shared/golden` describes: a recording
handler placed *last* on every task sees each announced change after the user's
handlers; a change made without a handler call (a crashing handler's Failed)
is added as `implicit: true`, found because the next call's `old`, or the final
state, is not the object the previous call reported.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

prefect: Any = importlib.import_module("prefect")
signals: Any = importlib.import_module("prefect.engine.signals")
state_mod: Any = importlib.import_module("prefect.engine.state")
results_mod: Any = importlib.import_module("prefect.engine.results")
triggers: Any = importlib.import_module("prefect.triggers")

HERE = Path(__file__).resolve().parent
JSON = Any


def encode_value(value: Any) -> JSON:
    """As the golden recorder's `encode_value` (shared/golden format_notes)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, signals.PrefectSignal):
        message = getattr(value, "message", None)
        if message is None and value.args:
            message = value.args[0]
        return {"signal": type(value).__name__, "message": message}
    if isinstance(value, BaseException):
        return {"exception": type(value).__name__, "repr": repr(value)}
    return {"repr": repr(value)}


def describe(state: Any) -> dict[str, JSON]:
    entry: dict[str, JSON] = {"state": type(state).__name__, "message": state.message}
    if isinstance(state, state_mod.Mapped):
        entry["n_map_states"] = state.n_map_states
    elif type(state._result).__name__ != "NoResultType":
        entry["result"] = encode_value(state.result)
    for name in ("run_count", "loop_count"):
        if hasattr(state, name):
            entry[name] = getattr(state, name)
    return entry


def final(state: Any) -> dict[str, JSON]:
    described: dict[str, JSON] = {
        "class": type(state).__name__,
        "message": state.message,
        "result": encode_value(state.result),
    }
    if isinstance(state, state_mod.Mapped):
        described["children"] = [final(s) for s in state.map_states]
    return described


class Recorder:
    """The last state handler of every task: per task run, what each call reported."""

    def __init__(self) -> None:
        self.run = 0
        self.sequences: dict[str, list[dict[str, JSON]]] = {}
        self.last: dict[str, Any] = {}

    def key(self, name: str, map_index: int | None) -> str:
        suffix = "" if map_index is None else f" map_index={map_index}"
        return f"run{self.run}:{name}{suffix}"

    def handler(self, task: Any, old: Any, new: Any) -> None:
        key = self.key(task.name, prefect.context.get("map_index"))
        entries = self.sequences.setdefault(key, [])
        if not entries:
            entries.append({**describe(old), "initial": True})
        elif old is not self.last[key]:
            entries.append({**describe(old), "implicit": True})
        entries.append(describe(new))
        self.last[key] = new

    def close(self, task_states: dict[Any, Any]) -> None:
        """Add each task run's final state where no handler call reported it."""
        for task, state in task_states.items():
            runs: list[tuple[int | None, Any]] = [(None, state)]
            if isinstance(state, state_mod.Mapped):
                runs += list(enumerate(state.map_states))
            for index, run_state in runs:
                key = self.key(task.name, index)
                if key in self.sequences and run_state is not self.last[key]:
                    self.sequences[key].append({**describe(run_state), "implicit": True})


def record(
    name: str,
    description: str,
    build: Callable[[Recorder], Any],
    runs: list[dict[str, Any]],
    extras: Callable[[], dict[str, JSON]] = dict,
) -> None:
    recorder = Recorder()
    flow = build(recorder)
    prefect.context.setdefault("caches", {})
    flow_runs = []
    for index, kwargs in enumerate(runs):
        recorder.run = index
        state = flow.run(**kwargs)
        task_states = state.result if isinstance(state.result, dict) else {}
        recorder.close(task_states)
        flow_runs.append(
            {
                "flow_run": index,
                "flow_final_state": {"class": type(state).__name__, "message": state.message},
                "flow_result": encode_value(state.result) if not task_states else "task states",
                "task_final_states": {t.name: final(s) for t, s in task_states.items()},
            }
        )
    data = {
        "scenario": name,
        "description": description,
        "engine": f"prefect {prefect.__version__}, LocalExecutor, recorded by record.py",
        "format_notes": "The layout of shared/golden, reduced to what the harness compares.",
        "tasks": [],
        "flow_runs": flow_runs,
        "per_task_sequences": recorder.sequences,
        "flow_transitions": [],
        "transitions": [],
        **extras(),
    }
    (HERE / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print("recorded", name)


# ----- the scenarios (rebuilt with RunLedger's API in tests/golden/scenarios.py) -------------


def task_handler_raises_after_body() -> None:
    log: dict[str, list[str]] = {}

    def crash_when(kind: str) -> Callable[..., Any]:
        def crasher(task: Any, old: Any, new: Any) -> None:
            if type(new).__name__ == kind:
                raise RuntimeError(f"handler broke on {kind}")

        return crasher

    def fail_on_first_failed(task: Any, old: Any, new: Any) -> None:
        if type(new).__name__ == "Failed" and prefect.context.get("task_run_count") == 1:
            raise signals.FAIL("handler raised FAIL")

    def later(task: Any, old: Any, new: Any) -> None:
        log.setdefault(task.name, []).append(f"{type(old).__name__}->{type(new).__name__}")

    def build(rec: Recorder) -> Any:
        def fails_first() -> str:
            if prefect.context.get("task_run_count") == 1:
                raise ValueError("body failed")
            return "ok on retry"

        def succeeds() -> str:
            return "body ok"

        retry = {"max_retries": 1, "retry_delay": timedelta(seconds=0)}
        specs = [
            ("crash_on_success", succeeds, crash_when("Success"), retry),
            ("crash_on_failed", fails_first, crash_when("Failed"), retry),
            ("crash_on_retrying", fails_first, crash_when("Retrying"), retry),
            ("fail_signal_on_failed", fails_first, fail_on_first_failed, retry),
        ]
        with prefect.Flow("task_handler_raises_after_body") as flow:
            for name, body, handler, settings in specs:
                t = prefect.task(body, name=name, state_handlers=[handler, later, rec.handler],
                                 **settings)
                t()
        return flow

    record(
        "task_handler_raises_after_body",
        "Task handlers raising after the body ran: on Success, Failed, Retrying (not "
        "retried, later handler not called), and FAIL on Failed (retried).",
        build,
        [{}],
        lambda: {"later_handler_calls": dict(sorted(log.items()))},
    )


def _flow_handler_scenario(
    name: str, description: str, body_fails: bool, flow_handler: Callable[..., Any]
) -> None:
    calls: list[str] = []
    executions = 0

    def logged(flow: Any, old: Any, new: Any) -> Any:
        calls.append(f"{flow.name}: {type(old).__name__}->{type(new).__name__} {new.message!r}")
        return flow_handler(flow, old, new)

    def build(rec: Recorder) -> Any:
        def work() -> str:
            nonlocal executions
            executions += 1
            if body_fails:
                raise ValueError("work failed")
            return "worked"

        with prefect.Flow(name, state_handlers=[logged]) as flow:
            prefect.task(work, name="work", state_handlers=[rec.handler])()
        return flow

    record(
        name,
        description,
        build,
        [{}],
        lambda: {"flow_handler_calls": list(calls), "body_executions_of_work": executions},
    )


def flow_handlers() -> None:
    # A handler keeps `new.result` (the task states): Prefect 1.4.1's flow.run() reads
    # it after the run and raises TypeError for a returned state without it.
    def failed_to_success(flow: Any, old: Any, new: Any) -> Any:
        if new.is_failed():
            return state_mod.Success("rescued by the flow handler", result=new.result)
        return None

    def success_to_failed(flow: Any, old: Any, new: Any) -> Any:
        if new.is_successful():
            return state_mod.Failed("vetoed by the flow handler", result=new.result)
        return None

    def raises_on_finish(flow: Any, old: Any, new: Any) -> Any:
        if new.is_finished():
            raise RuntimeError("flow handler broke")
        return None

    def raises_on_running(flow: Any, old: Any, new: Any) -> Any:
        if new.is_running():
            raise RuntimeError("flow handler broke on Running")
        return None

    _flow_handler_scenario(
        "flow_handler_failed_to_success",
        "A flow handler turns the flow run's Failed into Success.",
        True,
        failed_to_success,
    )
    _flow_handler_scenario(
        "flow_handler_success_to_failed",
        "A flow handler turns the flow run's Success into Failed.",
        False,
        success_to_failed,
    )
    _flow_handler_scenario(
        "flow_handler_raises_on_finish",
        "A flow handler raises on the flow run's final transition.",
        False,
        raises_on_finish,
    )
    _flow_handler_scenario(
        "flow_handler_raises_on_running",
        "A flow handler raises on the transition to Running: no task runs.",
        False,
        raises_on_running,
    )


def map_empty_reduce_triggers() -> None:
    def build(rec: Recorder) -> Any:
        def empty() -> list[int]:
            return []

        def inc(x: int) -> int:
            return x + 1

        chosen = {
            "r_all_successful": triggers.all_successful,
            "r_all_failed": triggers.all_failed,
            "r_any_successful": triggers.any_successful,
            "r_any_failed": triggers.any_failed,
            "r_some_successful_1": triggers.some_successful(at_least=1),
            "r_not_all_skipped": triggers.not_all_skipped,
        }
        with prefect.Flow("map_empty_reduce_triggers") as flow:
            mapped = prefect.task(inc, name="inc", state_handlers=[rec.handler]).map(
                prefect.task(empty, name="empty", state_handlers=[rec.handler])()
            )
            for name, trigger in chosen.items():

                def reduce(xs: list[int], _name: str = name) -> str:
                    return f"{_name} ran with {xs!r}"

                prefect.task(reduce, name=name, trigger=trigger, state_handlers=[rec.handler])(
                    mapped
                )
        return flow

    record(
        "map_empty_reduce_triggers",
        "Reduces with six triggers downstream of a map that produced no children.",
        build,
        [{}],
    )


def checkpointing_from_context() -> None:
    result_dir = Path(tempfile.mkdtemp())
    executions = 0
    files: dict[str, JSON] = {}

    def build(rec: Recorder) -> Any:
        def produce(x: int) -> dict[str, int]:
            nonlocal executions
            executions += 1
            return {"value": x * 2, "call": executions}

        def consume(d: dict[str, int]) -> int:
            return d["value"] + 1

        with prefect.Flow("checkpointing_from_context") as flow:
            produced = prefect.task(
                produce,
                name="produce",
                target="{task_name}-{x}.out",
                result=results_mod.LocalResult(dir=str(result_dir)),
                checkpoint=True,
                state_handlers=[rec.handler],
            )(x=5)
            prefect.task(consume, name="consume", state_handlers=[rec.handler])(produced)
        return flow

    def extras() -> dict[str, JSON]:
        return {
            **files,
            "body_executions_of_produce": executions,
            "config_checkpointing": bool(prefect.config.flows.checkpointing),
        }

    recorder_runs = [{"context": {"checkpointing": True}}, {"context": {"checkpointing": True}}]
    original = prefect.Flow.run

    def run_and_list(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = original(self, *args, **kwargs)
        files[f"files_after_run{len(files)}"] = sorted(p.name for p in result_dir.iterdir())
        return state

    prefect.Flow.run = run_and_list
    try:
        record(
            "checkpointing_from_context",
            "Checkpointing switched on by flow.run(context={'checkpointing': True}) with "
            "the configuration's default (false): the target is written, the second run "
            "is Cached from it.",
            build,
            recorder_runs,
            extras,
        )
    finally:
        prefect.Flow.run = original
        shutil.rmtree(result_dir)


if __name__ == "__main__":
    assert prefect.__version__ == "1.4.1", prefect.__version__
    for scenario in sys.argv[1:] or [
        "task_handler_raises_after_body",
        "flow_handlers",
        "map_empty_reduce_triggers",
        "checkpointing_from_context",
    ]:
        globals()[scenario]()
