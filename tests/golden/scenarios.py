"""Every flow scenario recorded from Prefect 1.4.1 in shared/golden, rebuilt with our API.

One builder per golden file. A builder takes a fresh working directory (pytest's
`tmp_path`) and returns a `Scenario`: the flow factory, the flow runs to make
(parameters and runner keyword arguments), the golden file it must reproduce and
the scenario's extras (body counters, files written, handler logs, ...).

Counters live in closures created by each build, so nothing leaks between tests.
The same scenarios are replayed through the local runner
(`test_golden_local.py`) and, later, through the Kafka services.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from engine import Flow, Parameter, context, flatten, signals, task, triggers, unmapped
from engine.results import LocalResult
from engine.state import Failed, State, Success

JSON = Any
OnPaused = Callable[[Any], bool]
Handler = Callable[..., Any]


# ----- what a scenario is ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One `flow.run()` of a golden recording: a label and the runner's keyword arguments."""

    label: str | None = None
    parameters: Mapping[str, Any] | None = None
    checkpointing: bool = False
    task_runner_state_handlers: Sequence[Handler] = ()
    on_paused: OnPaused | None = None
    context: Mapping[str, Any] | None = None
    """The run's context (`flow.run(context=...)`)."""

    def runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `FlowRunner(flow).run(...)` / `flow.run(...)`."""
        return {
            "parameters": None if self.parameters is None else dict(self.parameters),
            "checkpointing": self.checkpointing,
            "task_runner_state_handlers": list(self.task_runner_state_handlers),
            "on_paused": self.on_paused,
            "context": None if self.context is None else dict(self.context),
        }


@dataclass
class RunObservation:
    """What one flow run produced, in the golden file's vocabulary.

    `sequences` is keyed like the golden `per_task_sequences`
    ('run<k>:<task name>' plus ' map_index=<i>'); `task_final_states` maps task
    names to {class, message, result, children?}; `flow_state` is {class, message}.
    """

    index: int
    label: str | None
    flow_state: dict[str, Any]
    task_final_states: dict[str, dict[str, Any]]
    sequences: dict[str, list[dict[str, Any]]]
    wall_s: float


Check = Callable[[Sequence[RunObservation]], None]


def _no_extras() -> dict[str, JSON]:
    return {}


def _no_hook(index: int) -> None:
    return None


def _as_recorded(golden: dict[str, JSON]) -> dict[str, JSON]:
    return golden


@dataclass(frozen=True)
class Scenario:
    """A golden flow scenario: build the flow once, make `runs`, compare with `golden`."""

    name: str
    golden: str
    flow_factory: Callable[[], Flow]
    runs: tuple[RunSpec, ...] = (RunSpec(),)
    extras: Callable[[], dict[str, JSON]] = _no_extras
    """Observed values of the golden file's extra keys, read after all runs."""
    after_run: Callable[[int], None] = _no_hook
    """Called with the run index after each run (e.g. to list the files written)."""
    checks: tuple[Check, ...] = field(default=())
    """Scenario-specific assertions on the observations (timings)."""
    deliberately: Callable[[dict[str, JSON]], dict[str, JSON]] = _as_recorded
    """The recording with our deliberate differences applied (tests/golden/README.md)."""


# ----- helpers for bodies ------------------------------------------------------------------------


def _returns(name: str, value: Any, **settings: Any) -> Any:
    """A task named `name` whose body takes no input and returns `value`."""

    def body() -> Any:
        return value

    return task(body, name=name, **settings)


def _raises(name: str, make_error: Callable[[], BaseException], **settings: Any) -> Any:
    """A task named `name` whose body raises `make_error()`."""

    def body() -> Any:
        raise make_error()

    return task(body, name=name, **settings)


def _run_count() -> int:
    count = context.get("task_run_count", 1)
    assert isinstance(count, int)
    return count


def _class(state: State) -> str:
    return type(state).__name__


def as_datetime(value: Any) -> datetime:
    """A datetime from an event's `occurred_at` or a blob's ISO-8601 `start_time`."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise TypeError(f"not a timestamp: {value!r}")


# ----- simple flows ------------------------------------------------------------------------------


def plain_success(workdir: Path) -> Scenario:
    """One task returning 1."""

    @task
    def one() -> int:
        return 1

    def make_flow() -> Flow:
        with Flow("plain_success") as flow:
            one()
        return flow

    return Scenario("plain_success", "plain_success", make_flow)


def task_raises(workdir: Path) -> Scenario:
    """One task raising ValueError('boom')."""

    @task
    def boom() -> None:
        raise ValueError("boom")

    def make_flow() -> Flow:
        with Flow("task_raises") as flow:
            boom()
        return flow

    return Scenario("task_raises", "task_raises", make_flow)


def value_passing(workdir: Path) -> Scenario:
    """Data edges, a flow constant, a Parameter and nout=2 unpacking through GetItem tasks."""

    @task
    def two() -> int:
        return 2

    @task
    def times(x: int, factor: int) -> int:
        return x * factor

    @task(nout=2)
    def divmod_task(a: int, b: int) -> tuple[int, int]:
        return divmod(a, b)

    @task
    def fmt(label: str, q: int, r: int) -> str:
        return f"{label}: q={q:d} r={r:d}"

    def make_flow() -> Flow:
        with Flow("value_passing") as flow:
            label = Parameter("label", default="result")
            product = times(two(), factor=21)
            q, r = divmod_task(product, 5)
            fmt(label, q, r)
        return flow

    return Scenario("value_passing", "value_passing", make_flow)


# ----- retries -----------------------------------------------------------------------------------


def retry_then_success(workdir: Path) -> Scenario:
    """max_retries=2, delay 0: the first attempt fails, the second succeeds; downstream waits."""

    @task(max_retries=2, retry_delay=timedelta(seconds=0))
    def flaky() -> str:
        n = _run_count()
        if n == 1:
            raise ValueError("first attempt fails")
        return f"ok on attempt {n}"

    @task
    def after(x: str) -> str:
        return x + "!"

    def make_flow() -> Flow:
        with Flow("retry_then_success") as flow:
            after(flaky())
        return flow

    return Scenario("retry_then_success", "retry_then_success", make_flow)


def retries_exhausted(workdir: Path) -> Scenario:
    """Three failing attempts, then the downstream task's trigger fails."""

    @task(max_retries=2, retry_delay=timedelta(seconds=0))
    def always_fails() -> str:
        raise ValueError(f"attempt {_run_count()} fails")

    @task
    def downstream(x: str) -> str:
        return x

    def make_flow() -> Flow:
        with Flow("retries_exhausted") as flow:
            downstream(always_fails())
        return flow

    return Scenario("retries_exhausted", "retries_exhausted", make_flow)


def check_retry_waits_for_retry_delay(observations: Sequence[RunObservation]) -> None:
    """Retrying.start_time is failure time + 2 s and the second attempt starts no earlier."""
    runs = observations[0].sequences["run0:slow_retry"]
    failed = next(e for e in runs if e["state"] == "Failed")
    retrying = next(e for e in runs if e["state"] == "Retrying")
    second_running = [e for e in runs if e["state"] == "Running"][1]
    failed_at = as_datetime(failed["occurred_at"])
    start_time = as_datetime(retrying["start_time"])
    delay = (start_time - failed_at).total_seconds()
    assert abs(delay - 2.0) < 0.25, (
        f"Retrying.start_time should be the failure time + 2 s, is + {delay:.3f} s"
    )
    second_at = as_datetime(second_running["occurred_at"])
    early = (start_time - second_at).total_seconds()
    assert second_at >= start_time, f"the second attempt started {early:.3f} s before start_time"


def retry_delay(workdir: Path) -> Scenario:
    """retry_delay=2 s: the retry waits until Retrying.start_time; a sibling is unaffected."""

    @task(max_retries=1, retry_delay=timedelta(seconds=2))
    def slow_retry() -> str:
        if _run_count() == 1:
            raise ValueError("first attempt")
        return "ok"

    @task
    def quick() -> str:
        return "quick"

    def make_flow() -> Flow:
        with Flow("retry_delay") as flow:
            slow_retry()
            quick()
        return flow

    return Scenario(
        "retry_delay",
        "retry_delay",
        make_flow,
        checks=(check_retry_waits_for_retry_delay,),
    )


def retry_on(workdir: Path) -> Scenario:
    """retry_on=ValueError does not retry a TypeError; retry_on=[KeyError, ValueError] retries."""

    @task(max_retries=3, retry_delay=timedelta(seconds=0), retry_on=ValueError)
    def wrong_type() -> str:
        raise TypeError("not retried")

    @task(max_retries=3, retry_delay=timedelta(seconds=0), retry_on=[KeyError, ValueError])
    def right_type() -> str:
        if _run_count() < 3:
            raise ValueError("retried")
        return "ok after 3"

    def make_flow() -> Flow:
        with Flow("retry_on") as flow:
            wrong_type()
            right_type()
        return flow

    return Scenario("retry_on", "retry_on", make_flow)


# ----- skips and upstream failures ---------------------------------------------------------------


def skip_propagation(workdir: Path) -> Scenario:
    """SKIP propagates to default downstreams; skip_on_upstream_skip=False runs with the signal."""

    @task
    def skipper() -> str:
        raise signals.SKIP("skipping on purpose")

    @task
    def child_default(x: Any) -> str:
        return "child_default ran"

    @task
    def grandchild_default(x: Any) -> str:
        return "grandchild ran"

    @task(skip_on_upstream_skip=False)
    def child_no_skip(x: Any) -> str:
        return "child_no_skip got " + repr(x)

    def make_flow() -> Flow:
        with Flow("skip_propagation") as flow:
            skipped = skipper()
            grandchild_default(child_default(skipped))
            child_no_skip(skipped)
        return flow

    return Scenario("skip_propagation", "skip_propagation", make_flow)


def skipped_upstream_all_finished(workdir: Path) -> Scenario:
    """all_finished does not help against a Skipped upstream unless skip_on_upstream_skip=False."""

    @task
    def skipper() -> str:
        raise signals.SKIP("nothing to do")

    @task(trigger=triggers.all_finished)
    def af_default(x: Any) -> str:
        return "af_default ran"

    @task(trigger=triggers.all_finished, skip_on_upstream_skip=False)
    def af_noskip(x: Any) -> str:
        return "af_noskip ran with " + repr(x)

    def make_flow() -> Flow:
        with Flow("skipped_upstream_all_finished") as flow:
            skipped = skipper()
            af_default(skipped)
            af_noskip(skipped)
        return flow

    return Scenario("skipped_upstream_all_finished", "skipped_upstream_all_finished", make_flow)


def failed_upstream_default_trigger(workdir: Path) -> Scenario:
    """a fails, so b and c are TriggerFailed in cascade; an unrelated task succeeds."""

    @task
    def a() -> int:
        raise RuntimeError("a failed")

    @task
    def b(x: int) -> int:
        return x

    @task
    def c(y: int) -> int:
        return y

    @task
    def independent() -> int:
        return 42

    def make_flow() -> Flow:
        with Flow("failed_upstream_default_trigger") as flow:
            c(y=b(x=a()))
            independent()
        return flow

    return Scenario("failed_upstream_default_trigger", "failed_upstream_default_trigger", make_flow)


# ----- triggers ----------------------------------------------------------------------------------

TRIGGER_SCENARIOS: dict[str, Callable[[], Callable[..., bool]]] = {
    "trigger_all_successful": lambda: triggers.all_successful,
    "trigger_all_failed": lambda: triggers.all_failed,
    "trigger_any_successful": lambda: triggers.any_successful,
    "trigger_any_failed": lambda: triggers.any_failed,
    "trigger_all_finished": lambda: triggers.all_finished,
    "trigger_not_all_skipped": lambda: triggers.not_all_skipped,
    "trigger_some_successful_at_least_1": lambda: triggers.some_successful(at_least=1),
    "trigger_some_failed_at_least_1": lambda: triggers.some_failed(at_least=1),
}
"""Golden file -> the trigger its six downstream tasks use."""


def trigger_scenario(name: str, workdir: Path) -> Scenario:
    """One trigger over the upstream mixes {S,S} {S,F} {F,F} {S,Skip} {Skip} {} (state edges)."""
    make_trigger = TRIGGER_SCENARIOS[name]

    def make_flow() -> Flow:
        trigger = make_trigger()
        with Flow(name) as flow:
            s1 = _returns("s1", "ok")()
            s2 = _returns("s2", "ok")()
            f1 = _raises("f1", lambda: ValueError("upstream failed"))()
            f2 = _raises("f2", lambda: ValueError("upstream failed"))()
            k1 = _raises("k1", lambda: signals.SKIP("upstream skipped"))()
            mixes = {
                "d_ss": [s1, s2],
                "d_sf": [s1, f1],
                "d_ff": [f1, f2],
                "d_sk": [s1, k1],
                "d_kk": [k1],
                "d_none": [],
            }
            for downstream, upstreams in mixes.items():
                runs = _returns(
                    downstream,
                    f"{downstream} ran",
                    trigger=trigger,
                    skip_on_upstream_skip=False,
                )
                runs(upstream_tasks=upstreams)
        return flow

    return Scenario(name, name, make_flow)


# ----- caching, targets, checkpointing -----------------------------------------------------------


def cache_for(workdir: Path) -> Scenario:
    """cache_for=1h: the second run in the same process is a cache hit; the body runs once."""
    executions = 0

    def expensive() -> str:
        nonlocal executions
        executions += 1
        return f"computed (call #{executions})"

    @task
    def use(v: str) -> str:
        return "used " + v

    expensive_task = task(expensive, cache_for=timedelta(hours=1))

    def make_flow() -> Flow:
        with Flow("cache_for") as flow:
            use(expensive_task())
        return flow

    return Scenario(
        "cache_for",
        "cache_for",
        make_flow,
        runs=(RunSpec("first run"), RunSpec("second run, same process")),
        extras=lambda: {"body_executions_of_expensive": executions},
    )


def _target_scenario(name: str, workdir: Path, checkpointing: bool) -> Scenario:
    result_dir = workdir / ("target_on" if checkpointing else "target_off")
    result_dir.mkdir(parents=True, exist_ok=True)
    executions = 0
    files_after: dict[int, list[str]] = {}

    def produce(x: int) -> dict[str, int]:
        nonlocal executions
        executions += 1
        return {"value": x * 2, "call": executions}

    @task
    def consume(d: dict[str, int]) -> int:
        return d["value"] + 1

    produce_task = task(
        produce,
        target="{task_name}-{x}.out",
        result=LocalResult(dir=str(result_dir)),
        checkpoint=True,
    )

    def make_flow() -> Flow:
        with Flow(name) as flow:
            consume(produce_task(x=5))
        return flow

    def after_run(index: int) -> None:
        files_after[index] = sorted(p.name for p in result_dir.iterdir())

    def extras() -> dict[str, JSON]:
        return {
            "files_after_run0": files_after.get(0),
            "files_after_run1": files_after.get(1),
            "body_executions_of_produce": executions,
            "global_checkpointing": checkpointing,
        }

    return Scenario(
        name,
        name,
        make_flow,
        runs=(
            RunSpec("first run (target dir empty)", checkpointing=checkpointing),
            RunSpec("second run", checkpointing=checkpointing),
        ),
        extras=extras,
        after_run=after_run,
    )


def target_local_result_checkpointing_on(workdir: Path) -> Scenario:
    """With checkpointing the target file is written and the second run is Cached from it."""
    return _target_scenario("target_local_result_checkpointing_on", workdir, checkpointing=True)


def target_local_result_checkpointing_off(workdir: Path) -> Scenario:
    """Without checkpointing (Prefect's local default) nothing is written; the body runs twice."""
    return _target_scenario("target_local_result_checkpointing_off", workdir, checkpointing=False)


# ----- mapping -----------------------------------------------------------------------------------


def map_basic(workdir: Path) -> Scenario:
    """Map over the literal [1, 2, 3], then reduce."""

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(xs: list[int]) -> int:
        return sum(xs)

    def make_flow() -> Flow:
        with Flow("map_basic") as flow:
            total(inc.map([1, 2, 3]))
        return flow

    return Scenario("map_basic", "map_basic", make_flow)


def map_child_fails(workdir: Path) -> Scenario:
    """One child fails: its map-of-map child is TriggerFailed, reduces see the children."""

    @task
    def inc(x: int) -> int:
        if x == 2:
            raise ValueError("cannot handle 2")
        return x + 1

    @task
    def double(y: int) -> int:
        return y * 2

    @task
    def total(xs: list[int]) -> int:
        return sum(xs)

    @task(trigger=triggers.all_finished)
    def summary(xs: list[Any]) -> str:
        return repr(xs)

    def make_flow() -> Flow:
        with Flow("map_child_fails") as flow:
            incremented = inc.map([1, 2, 3])
            total(double.map(incremented))
            summary(incremented)
        return flow

    return Scenario("map_child_fails", "map_child_fails", make_flow)


def map_empty(workdir: Path) -> Scenario:
    """Mapping over [] gives Mapped with no children, twice; the reduce receives []."""

    @task
    def empty() -> list[int]:
        return []

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def double(y: int) -> int:
        return y * 2

    @task
    def total(xs: list[int]) -> str:
        return f"sum={sum(xs):d} len={len(xs):d}"

    def make_flow() -> Flow:
        with Flow("map_empty") as flow:
            total(double.map(inc.map(empty())))
        return flow

    return Scenario("map_empty", "map_empty", make_flow)


def map_flatten_unmapped(workdir: Path) -> Scenario:
    """flatten() of a nested list and of mapped children, unmapped() constants, renamed copies."""

    @task
    def nested() -> list[list[int]]:
        return [[1, 2], [3]]

    @task
    def add(x: int, y: int) -> int:
        return x + y

    @task
    def split(v: int) -> list[int]:
        return [v, v * 10]

    @task
    def collect_mapped(xs: list[int]) -> list[int]:
        return xs

    @task
    def collect_flat(xs: list[int]) -> list[int]:
        return xs

    def make_flow() -> Flow:
        with Flow("map_flatten_unmapped") as flow:
            add_100 = add.map(flatten(nested()), y=unmapped(100), task_args={"name": "add_100"})
            pieces = split.map(add_100)
            add_1000 = add.map(flatten(pieces), y=unmapped(1000), task_args={"name": "add_1000"})
            collect_mapped(add_1000)
            collect_flat(flatten(pieces))
        return flow

    return Scenario("map_flatten_unmapped", "map_flatten_unmapped", make_flow)


# ----- looping, pausing, timeouts ----------------------------------------------------------------


def loop_3_iterations(workdir: Path) -> Scenario:
    """LOOP twice then return; the body records what the context held on each iteration."""
    observations: list[dict[str, Any]] = []

    def looper(start: int) -> int:
        observations.append(
            {
                "raw_task_loop_count_in_context": context.get("task_loop_count"),
                "task_run_count": context.get("task_run_count"),
                "task_loop_result_in_context": context.get("task_loop_result"),
            }
        )
        n = context.get("task_loop_count", 1)
        acc = context.get("task_loop_result", start)
        if n < 3:
            raise signals.LOOP(message=f"iteration {n}", result=acc + 10)
        result = acc + 10
        assert isinstance(result, int)
        return result

    @task
    def after(v: int) -> int:
        return v * 2

    looper_task = task(looper)

    def make_flow() -> Flow:
        with Flow("loop_3_iterations") as flow:
            after(looper_task(start=1))
        return flow

    return Scenario(
        "loop_3_iterations",
        "loop_3_iterations",
        make_flow,
        extras=lambda: {"looper_body_observations": list(observations)},
    )


def _pause_flow(name: str, gate_calls: list[dict[str, Any]]) -> Callable[[], Flow]:
    def gate() -> str:
        gate_calls.append(
            {
                "resume": context.get("resume"),
                "run_count": context.get("task_run_count"),
            }
        )
        if not context.get("resume"):
            raise signals.PAUSE("waiting for approval")
        return "approved"

    @task(trigger=triggers.manual_only)
    def manual(x: str) -> str:
        return "manual ran with " + x

    gate_task = task(gate)

    def make_flow() -> Flow:
        with Flow(name) as flow:
            manual(gate_task())
        return flow

    return make_flow


APPROVAL_BUDGET = 5
"""How many pauses the approver approves before it answers 'n' (the recording needs 2)."""


def pause_signal_and_manual_only(workdir: Path) -> Scenario:
    """PAUSE in a body and a manual_only trigger, each approved through on_paused."""
    gate_calls: list[dict[str, Any]] = []
    prompts: list[dict[str, Any]] = []

    def approver(flow_run: int) -> OnPaused:
        def on_paused(paused: Any) -> bool:
            # Our counterpart of Prefect's stdin prompt, worded as Prefect words it.
            # It answers 'y' like the recording, but only APPROVAL_BUDGET times: a run
            # that keeps pausing after approval then stalls (and fails the comparison)
            # instead of asking forever.
            approve = len(prompts) < APPROVAL_BUDGET
            prompt = f"{paused.task!r} is currently Paused; enter 'y' to resume:"
            prompts.append(
                {"flow_run": flow_run, "prompt": prompt, "answer": "y" if approve else "n"}
            )
            return approve

        return on_paused

    return Scenario(
        "pause_signal_and_manual_only",
        "pause_signal_and_manual_only",
        _pause_flow("pause_signal_and_manual_only", gate_calls),
        runs=(RunSpec(on_paused=approver(0)),),
        extras=lambda: {
            "input_prompts": list(prompts),
            "gate_body_calls": list(gate_calls),
        },
    )


def pause_without_resume_flowrunner(workdir: Path) -> Scenario:
    """Nobody approves (on_paused=None): gate stays Paused, manual Pending, the flow Running."""
    gate_calls: list[dict[str, Any]] = []
    return Scenario(
        "pause_without_resume_flowrunner",
        "pause_without_resume_flowrunner",
        _pause_flow("pause_without_resume_flowrunner", gate_calls),
        runs=(RunSpec("single FlowRunner pass", on_paused=None),),
        extras=lambda: {"gate_body_calls": list(gate_calls)},
    )


def check_timeout_does_not_wait_for_the_body(
    observations: Sequence[RunObservation],
) -> None:
    """TimedOut is recorded about 1 s after Running, long before the 3 s sleep ends."""
    runs = observations[0].sequences["run0:sleepy"]
    running = next(e for e in runs if e["state"] == "Running")
    timed_out = next(e for e in runs if e["state"] == "TimedOut")
    elapsed = as_datetime(timed_out["occurred_at"]) - as_datetime(running["occurred_at"])
    seconds = elapsed.total_seconds()
    assert 0.9 <= seconds < 2.5, f"TimedOut was recorded {seconds:.3f} s after Running"
    wall = observations[0].wall_s
    assert wall < 2.5, f"the run took {wall:.3f} s: it waited for the 3 s body"


def timeout(workdir: Path) -> Scenario:
    """timeout=1 with a 3 s body: TimedOut after about 1 s, downstream TriggerFailed."""

    @task(timeout=1)
    def sleepy() -> str:
        time.sleep(3)
        return "woke up"

    @task
    def after(x: str) -> str:
        return x

    def make_flow() -> Flow:
        with Flow("timeout") as flow:
            after(sleepy())
        return flow

    return Scenario(
        "timeout",
        "timeout",
        make_flow,
        checks=(check_timeout_does_not_wait_for_the_body,),
    )


# ----- state handlers ----------------------------------------------------------------------------


def state_handler_chain(workdir: Path) -> Scenario:
    """Handler order and rewriting, runner-level handlers, a crashing and a SKIP-raising handler."""
    log: list[str] = []

    def change(owner: str, old: State, new: State) -> str:
        return f"{owner} {_class(old)}->{_class(new)}"

    def logger(label: str) -> Handler:
        def handler(task_: Any, old: State, new: State) -> State | None:
            log.append(f"{label}: {change(task_.name, old, new)}")
            return None

        return handler

    def fail_to_success(task_: Any, old: State, new: State) -> State | None:
        log.append(f"fail_to_success: {change(task_.name, old, new)}")
        if new.is_failed():
            return Success("overridden by handler", result="rescued")
        return None

    def crash_on_running(task_: Any, old: State, new: State) -> State | None:
        if new.is_running():
            raise RuntimeError("handler exploded")
        return None

    def skip_on_running(task_: Any, old: State, new: State) -> State | None:
        if new.is_running():
            raise signals.SKIP("handler raised SKIP")
        return None

    def runner_level(runner: Any, old: State, new: State) -> State | None:
        log.append(f"runner-level: {change(runner.task.name, old, new)}")
        return None

    @task(state_handlers=[logger("first"), fail_to_success, logger("third")])
    def rescued() -> str:
        raise ValueError("rescue me")

    @task
    def downstream_of_rescued(x: str) -> str:
        return f"got {x!r}"

    @task(state_handlers=[skip_on_running])
    def handler_signals() -> str:
        return "handler_signals ran"

    @task(state_handlers=[crash_on_running])
    def handler_crashes() -> str:
        return "handler_crashes ran"

    def make_flow() -> Flow:
        with Flow("state_handler_chain") as flow:
            downstream_of_rescued(rescued())
            handler_signals()
            handler_crashes()
        return flow

    return Scenario(
        "state_handler_chain",
        "state_handler_chain",
        make_flow,
        runs=(RunSpec(task_runner_state_handlers=(runner_level,)),),
        extras=lambda: {"handler_call_log": list(log)},
        deliberately=_named_task_handler_failure(crash_on_running),
    )


# ----- recorded here (tests/golden/recorded_here, issue 15) --------------------------------------
# Recorded from Prefect 1.4.1 installed from PyPI in a side virtualenv by
# recorded_here/record.py, which builds the same flows with Prefect's API.


def task_handler_raises_after_body(workdir: Path) -> Scenario:
    """Task handlers raising after the body ran (Prefect's `Runner.handle_state_change`).

    An ordinary exception on the Success, Failed or Retrying transition ends the run
    Failed("Unexpected error while calling state handlers: ...") unannounced, with no
    retry and no later handler called; a FAIL signal on Failed gives a Failed that the
    later handler does not see, and that one is retried.
    """
    later_calls: dict[str, list[str]] = {}

    def crash_when(kind: str) -> Handler:
        def crasher(task_: Any, old: State, new: State) -> None:
            if _class(new) == kind:
                raise RuntimeError(f"handler broke on {kind}")

        return crasher

    def fail_on_first_failed(task_: Any, old: State, new: State) -> None:
        if new.is_failed() and _run_count() == 1:
            raise signals.FAIL("handler raised FAIL")

    def later(task_: Any, old: State, new: State) -> None:
        later_calls.setdefault(task_.name, []).append(f"{_class(old)}->{_class(new)}")

    def fails_first() -> str:
        if _run_count() == 1:
            raise ValueError("body failed")
        return "ok on retry"

    def succeeds() -> str:
        return "body ok"

    specs: list[tuple[str, Callable[[], str], Handler]] = [
        ("crash_on_success", succeeds, crash_when("Success")),
        ("crash_on_failed", fails_first, crash_when("Failed")),
        ("crash_on_retrying", fails_first, crash_when("Retrying")),
        ("fail_signal_on_failed", fails_first, fail_on_first_failed),
    ]

    def make_flow() -> Flow:
        with Flow("task_handler_raises_after_body") as flow:
            for name, body, handler in specs:
                task(
                    body,
                    name=name,
                    state_handlers=[handler, later],
                    max_retries=1,
                    retry_delay=timedelta(seconds=0),
                )()
        return flow

    return Scenario(
        "task_handler_raises_after_body",
        "task_handler_raises_after_body",
        make_flow,
        extras=lambda: {"later_handler_calls": dict(sorted(later_calls.items()))},
        # The three crash_when handlers are one function (one name) made three times.
        deliberately=_named_task_handler_failure(specs[0][2]),
    )


def _named_task_handler_failure(
    handler: Handler,
) -> Callable[[dict[str, JSON]], dict[str, JSON]]:
    """Deliberate difference: a crashing task handler's Failed message names the handler,
    wherever the recording shows that message (final states, sequences, transitions)."""
    from engine.task_runner import handler_name

    suffix = f" (state handler {handler_name(handler)})"

    def named(node: JSON) -> JSON:
        if isinstance(node, dict):
            return {
                key: (
                    value + suffix
                    if key == "message"
                    and isinstance(value, str)
                    and value.startswith("Unexpected error while calling state handlers")
                    else named(value)
                )
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [named(item) for item in node]
        return node

    def adjust(golden: dict[str, JSON]) -> dict[str, JSON]:
        adjusted = named(golden)
        assert isinstance(adjusted, dict)
        return adjusted

    return adjust


def _named_handler_failure(handler: Handler) -> Callable[[dict[str, JSON]], dict[str, JSON]]:
    """Deliberate difference: a crashing flow handler's Failed message names the handler."""
    from engine.task_runner import handler_name

    def adjust(golden: dict[str, JSON]) -> dict[str, JSON]:
        adjusted = copy.deepcopy(golden)
        for run in adjusted["flow_runs"]:
            final = run["flow_final_state"]
            if str(final["message"]).startswith("Unexpected error while calling state handlers"):
                final["message"] += f" (flow state handler {handler_name(handler)})"
        return adjusted

    return adjust


def _flow_handler_scenario(
    name: str, body_fails: bool, rewrite: Callable[[State, State], State | None]
) -> Scenario:
    calls: list[str] = []
    executions = 0

    def logged(flow: Any, old: State, new: State) -> State | None:
        calls.append(f"{flow.name}: {_class(old)}->{_class(new)} {new.message!r}")
        return rewrite(old, new)

    def work() -> str:
        nonlocal executions
        executions += 1
        if body_fails:
            raise ValueError("work failed")
        return "worked"

    def make_flow() -> Flow:
        with Flow(name, state_handlers=[logged]) as flow:
            task(work, name="work")()
        return flow

    return Scenario(
        name,
        name,
        make_flow,
        extras=lambda: {"flow_handler_calls": list(calls), "body_executions_of_work": executions},
        deliberately=_named_handler_failure(logged),
    )


def flow_handler_failed_to_success(workdir: Path) -> Scenario:
    """A flow handler's return value becomes the flow run's state: Failed -> Success sticks."""

    def rewrite(old: State, new: State) -> State | None:
        return (
            Success("rescued by the flow handler", result=new.result) if new.is_failed() else None
        )

    return _flow_handler_scenario("flow_handler_failed_to_success", True, rewrite)


def flow_handler_success_to_failed(workdir: Path) -> Scenario:
    """A flow handler's return value becomes the flow run's state: Success -> Failed sticks."""

    def rewrite(old: State, new: State) -> State | None:
        return (
            Failed("vetoed by the flow handler", result=new.result) if new.is_successful() else None
        )

    return _flow_handler_scenario("flow_handler_success_to_failed", False, rewrite)


def flow_handler_raises_on_finish(workdir: Path) -> Scenario:
    """A flow handler raising on the final transition ends the flow run Failed."""

    def rewrite(old: State, new: State) -> State | None:
        if new.is_finished():
            raise RuntimeError("flow handler broke")
        return None

    return _flow_handler_scenario("flow_handler_raises_on_finish", False, rewrite)


def flow_handler_raises_on_running(workdir: Path) -> Scenario:
    """A flow handler raising on the transition to Running: the run is Failed, no task runs."""

    def rewrite(old: State, new: State) -> State | None:
        if new.is_running():
            raise RuntimeError("flow handler broke on Running")
        return None

    return _flow_handler_scenario("flow_handler_raises_on_running", False, rewrite)


def map_empty_reduce_triggers(workdir: Path) -> Scenario:
    """Reduces over a map with zero children (Prefect's `triggers` test the edge, not states)."""
    chosen: dict[str, Callable[[], Callable[..., bool]]] = {
        "r_all_successful": lambda: triggers.all_successful,
        "r_all_failed": lambda: triggers.all_failed,
        "r_any_successful": lambda: triggers.any_successful,
        "r_any_failed": lambda: triggers.any_failed,
        "r_some_successful_1": lambda: triggers.some_successful(at_least=1),
        "r_not_all_skipped": lambda: triggers.not_all_skipped,
    }

    @task
    def empty() -> list[int]:
        return []

    @task
    def inc(x: int) -> int:
        return x + 1

    def reducer(name: str) -> Callable[[list[int]], str]:
        def reduce(xs: list[int]) -> str:
            return f"{name} ran with {xs!r}"

        return reduce

    def make_flow() -> Flow:
        with Flow("map_empty_reduce_triggers") as flow:
            mapped = inc.map(empty())
            for name, trigger in chosen.items():
                task(reducer(name), name=name, trigger=trigger())(mapped)
        return flow

    return Scenario("map_empty_reduce_triggers", "map_empty_reduce_triggers", make_flow)


def checkpointing_from_context(workdir: Path) -> Scenario:
    """flow.run(context={"checkpointing": True}) checkpoints although the setting is off."""
    result_dir = workdir / "from_context"
    result_dir.mkdir(parents=True, exist_ok=True)
    executions = 0
    files_after: dict[int, list[str]] = {}

    def produce(x: int) -> dict[str, int]:
        nonlocal executions
        executions += 1
        return {"value": x * 2, "call": executions}

    @task
    def consume(d: dict[str, int]) -> int:
        return d["value"] + 1

    produce_task = task(
        produce,
        target="{task_name}-{x}.out",
        result=LocalResult(dir=str(result_dir)),
        checkpoint=True,
    )

    def make_flow() -> Flow:
        with Flow("checkpointing_from_context") as flow:
            consume(produce_task(x=5))
        return flow

    # checkpointing=False stands for Prefect's configuration default; the context wins.
    run = RunSpec(checkpointing=False, context={"checkpointing": True})
    return Scenario(
        "checkpointing_from_context",
        "checkpointing_from_context",
        make_flow,
        runs=(run, run),
        extras=lambda: {
            "files_after_run0": files_after.get(0),
            "files_after_run1": files_after.get(1),
            "body_executions_of_produce": executions,
            "config_checkpointing": run.checkpointing,
        },
        after_run=lambda index: files_after.__setitem__(
            index, sorted(p.name for p in result_dir.iterdir())
        ),
    )


# ----- the registry ------------------------------------------------------------------------------

Builder = Callable[[Path], Scenario]

SCENARIOS: dict[str, Builder] = {
    "plain_success": plain_success,
    "task_raises": task_raises,
    "value_passing": value_passing,
    "retry_then_success": retry_then_success,
    "retries_exhausted": retries_exhausted,
    "retry_delay": retry_delay,
    "retry_on": retry_on,
    "skip_propagation": skip_propagation,
    "skipped_upstream_all_finished": skipped_upstream_all_finished,
    "failed_upstream_default_trigger": failed_upstream_default_trigger,
    **{name: functools.partial(trigger_scenario, name) for name in TRIGGER_SCENARIOS},
    "cache_for": cache_for,
    "target_local_result_checkpointing_on": target_local_result_checkpointing_on,
    "target_local_result_checkpointing_off": target_local_result_checkpointing_off,
    "map_basic": map_basic,
    "map_child_fails": map_child_fails,
    "map_empty": map_empty,
    "map_flatten_unmapped": map_flatten_unmapped,
    "loop_3_iterations": loop_3_iterations,
    "pause_signal_and_manual_only": pause_signal_and_manual_only,
    "pause_without_resume_flowrunner": pause_without_resume_flowrunner,
    "timeout": timeout,
    "state_handler_chain": state_handler_chain,
}
"""Scenario name (= shared golden file stem) -> builder taking a fresh working directory."""

RECORDED_HERE: dict[str, Builder] = {
    "task_handler_raises_after_body": task_handler_raises_after_body,
    "flow_handler_failed_to_success": flow_handler_failed_to_success,
    "flow_handler_success_to_failed": flow_handler_success_to_failed,
    "flow_handler_raises_on_finish": flow_handler_raises_on_finish,
    "flow_handler_raises_on_running": flow_handler_raises_on_running,
    "map_empty_reduce_triggers": map_empty_reduce_triggers,
    "checkpointing_from_context": checkpointing_from_context,
}
"""Scenario name (= tests/golden/recorded_here file stem) -> builder."""

ALL_SCENARIOS: dict[str, Builder] = {**SCENARIOS, **RECORDED_HERE}
"""Every scenario, whichever folder its recording is in."""


def build(name: str, workdir: Path) -> Scenario:
    """Build the scenario `name` with its files under `workdir`."""
    return ALL_SCENARIOS[name](workdir)
