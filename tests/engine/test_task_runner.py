"""TaskRunner, step by step and end to end, against Prefect 1's pipeline (spec §3-§6, §9)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine import signals, triggers
from engine.cache_validators import all_inputs, duration_only, tokenize
from engine.clock import FixedClock
from engine.context import context as task_context
from engine.edges import Edge
from engine.results import LocalResult, Result
from engine.state import (
    STATE_CLASSES,
    Cached,
    Cancelled,
    ClientFailed,
    Failed,
    Looped,
    Mapped,
    Paused,
    Pending,
    Queued,
    Resume,
    Retrying,
    Running,
    Scheduled,
    Skipped,
    State,
    Submitted,
    Success,
    TimedOut,
    TriggerFailed,
    ValidationFailed,
)
from engine.task import FunctionTask, Task, task
from engine.task_runner import TaskRunner, handler_name

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
PAST = NOW - timedelta(minutes=1)
FUTURE = NOW + timedelta(minutes=1)
Handler = Callable[..., Any]


# ----- helpers ---------------------------------------------------------------------------------


class Log:
    """Records what a runner announced (handlers) and recorded (recorder)."""

    def __init__(self) -> None:
        self.recorded: list[State] = []
        self.announced: list[tuple[State, State]] = []

    def recorder(self, state: State) -> None:
        self.recorded.append(state)

    def handler(self, runner: TaskRunner, old: State, new: State) -> None:
        self.announced.append((old, new))

    def recorded_names(self) -> list[str]:
        return [type(s).__name__ for s in self.recorded]

    def announced_names(self) -> list[tuple[str, str]]:
        return [(type(o).__name__, type(n).__name__) for o, n in self.announced]


def make_runner(
    t: Task,
    log: Log | None = None,
    handlers: Iterable[Handler] = (),
    clock: FixedClock | None = None,
) -> TaskRunner:
    """A runner on a FixedClock at NOW that reports to `log`."""
    all_handlers = [*handlers, *([log.handler] if log else [])]
    return TaskRunner(
        t,
        state_handlers=all_handlers,
        clock=clock or FixedClock(NOW),
        recorder=log.recorder if log else None,
    )


def prepared(runner: TaskRunner, state: State | None = None, **ctx: Any) -> State:
    """Run `initialize_run` as the pipeline does and keep its context on the runner."""
    init = runner.initialize_run(state, dict(ctx))
    runner.context = init.context
    return init.state


def returns(value: Any, **settings: Any) -> FunctionTask:
    """A task whose body returns `value`."""

    def body() -> Any:
        return value

    return task(body, name=settings.pop("name", "returns"), **settings)


def raises(make: Callable[[], BaseException], **settings: Any) -> FunctionTask:
    """A task whose body raises `make()`."""

    def body() -> Any:
        raise make()

    return task(body, name=settings.pop("name", "raises"), **settings)


def edge(downstream: Task, key: str | None = None, mapped: bool = False, name: str = "up") -> Edge:
    """An edge from a fresh upstream task into `downstream`."""
    return Edge(Task(name=name), downstream, key=key, mapped=mapped)


def ends_with(call: Callable[[], Any]) -> State:
    """The state of the ENDRUN that `call` raises."""
    with pytest.raises(signals.ENDRUN) as info:
        call()
    return info.value.state


def example(name: str) -> State:
    """An instance of the state class called `name` (meta states wrap a Pending)."""
    cls = STATE_CLASSES[name]
    if name in {"Submitted", "Queued", "ClientFailed"}:
        return cls(state=Pending())  # type: ignore[call-arg]
    return cls()


# ----- initialize_run --------------------------------------------------------------------------


def test_initialize_run_starts_from_pending_with_run_count_one() -> None:
    """No starting state means a fresh Pending on attempt 1."""
    init = make_runner(returns(1)).initialize_run(None, {})
    assert type(init.state) is Pending
    assert init.context["task_run_count"] == 1
    assert "resume" not in init.context


@pytest.mark.parametrize(
    "wrapper",
    [
        lambda inner: Submitted(state=inner),
        lambda inner: Queued(state=inner, start_time=NOW),
        lambda inner: ClientFailed(state=inner),
        lambda inner: Submitted(state=Queued(state=inner)),
    ],
    ids=["Submitted", "Queued", "ClientFailed", "Submitted(Queued)"],
)
def test_initialize_run_unwraps_meta_states_to_the_inner_state(
    wrapper: Callable[[State], State],
) -> None:
    """Submitted/Queued/ClientFailed (nested too) give way to the state they wrap."""
    inner = Retrying(start_time=PAST, run_count=2)
    init = make_runner(returns(1)).initialize_run(wrapper(inner), {})
    assert init.state is inner
    assert init.context["task_run_count"] == 3


def test_initialize_run_treats_an_empty_meta_state_as_pending() -> None:
    """A meta state wrapping nothing starts the run from Pending."""
    init = make_runner(returns(1)).initialize_run(Submitted(), {})
    assert type(init.state) is Pending


def test_initialize_run_counts_the_next_attempt_after_a_retrying_state() -> None:
    """Retrying(run_count=n) makes this attempt n + 1."""
    init = make_runner(returns(1)).initialize_run(Retrying(run_count=4), {})
    assert init.context["task_run_count"] == 5


def test_initialize_run_keeps_the_run_count_a_scheduled_state_recorded() -> None:
    """A Paused/Resume carrying task_run_count in its context keeps that attempt number."""
    resumed = Resume(start_time=PAST, context={"task_run_count": 2})
    init = make_runner(returns(1)).initialize_run(resumed, {})
    assert init.context["task_run_count"] == 2


def test_initialize_run_sets_resume_for_a_resume_state() -> None:
    """Starting from Resume puts resume=True in the context."""
    init = make_runner(returns(1)).initialize_run(Resume(start_time=NOW), {})
    assert init.context["resume"] is True


@pytest.mark.parametrize(
    ("start", "resumes"), [(PAST, True), (NOW, True), (FUTURE, False), (None, False)]
)
def test_initialize_run_resumes_a_paused_state_only_once_its_start_time_has_come(
    start: datetime | None, resumes: bool
) -> None:
    """Paused with a start time not in the future is resumable; Paused(None) waits forever."""
    init = make_runner(returns(1)).initialize_run(Paused(start_time=start), {})
    assert init.context.get("resume", False) is resumes


def test_initialize_run_restores_the_loop_counter_of_a_retry_inside_a_loop() -> None:
    """A Retrying made mid-loop carries _loop_count and the loop result into the context."""
    retry = Retrying(run_count=1, context={"_loop_count": 3, "task_run_count": 1}, result=7)
    init = make_runner(returns(1)).initialize_run(retry, {})
    assert init.context["task_loop_count"] == 3
    assert init.context["task_loop_result"] == 7


def test_initialize_run_names_the_task_and_the_mapped_child() -> None:
    """task_name, sorted tags and the full name `name[i]` of a child are in the context."""
    t = returns(1, name="inc", tags=["b", "a"])
    init = make_runner(t).initialize_run(None, {"map_index": 2})
    assert init.context["task_name"] == "inc"
    assert init.context["task_tags"] == ["a", "b"]
    assert init.context["task_full_name"] == "inc[2]"
    assert init.context["checkpointing"] is False


def test_initialize_run_uses_a_string_target_as_the_result_location(tmp_path: Path) -> None:
    """The task's target becomes the location template of its Result."""
    t = returns(1, target="{x}.out", result=LocalResult(dir=tmp_path))
    runner = make_runner(t)
    runner.initialize_run(None, {})
    assert runner.result.location == "{x}.out"


# ----- check_task_is_ready ------------------------------------------------------------------------

READY = {"Pending", "Scheduled", "Paused", "Resume", "Retrying", "Mapped", "Cached"}


@pytest.mark.parametrize("name", sorted(set(STATE_CLASSES) - {"State"}))
def test_check_task_is_ready_lets_only_pending_mapped_and_cached_states_through(name: str) -> None:
    """Pending kinds, Mapped and Cached continue; everything else ends the run unchanged."""
    runner = make_runner(returns(1))
    state = example(name)
    if name in READY:
        assert runner.check_task_is_ready(state) is state
    else:
        assert ends_with(lambda: runner.check_task_is_ready(state)) is state


# ----- check_task_reached_start_time -------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        Pending(),
        Scheduled(start_time=PAST),
        Scheduled(start_time=NOW),
        Retrying(start_time=PAST),
        Resume(start_time=PAST),
        Paused(start_time=PAST),
        Scheduled(),
        Retrying(),
    ],
    ids=repr,
)
def test_check_task_reached_start_time_passes_states_that_are_due(state: State) -> None:
    """A start time that has come (or none, for Scheduled kinds other than Paused) continues."""
    assert make_runner(returns(1)).check_task_reached_start_time(state) is state


@pytest.mark.parametrize(
    "state",
    [
        Scheduled(start_time=FUTURE),
        Retrying(start_time=FUTURE),
        Paused(start_time=FUTURE),
        Paused(),
    ],
    ids=repr,
)
def test_check_task_reached_start_time_ends_runs_that_are_not_due(state: State) -> None:
    """A future start time, or a Paused without one, ends the run with the same state."""
    log = Log()
    runner = make_runner(returns(1), log)
    assert ends_with(lambda: runner.check_task_reached_start_time(state)) is state
    assert log.announced == []


# ----- check_upstream_finished / check_upstream_skipped ------------------------------------------


def test_check_upstream_finished_passes_when_every_upstream_finished() -> None:
    """Finished upstreams of any kind let the run continue."""
    t = returns(1)
    ups = {edge(t, "x"): Success(), edge(t, "y"): Failed(), edge(t): Cancelled()}
    state = Pending()
    assert make_runner(t).check_upstream_finished(state, ups) is state


@pytest.mark.parametrize(
    "unfinished", [Pending(), Running(), Retrying(), Submitted(state=Pending())]
)
def test_check_upstream_finished_keeps_the_state_silently_while_an_upstream_runs(
    unfinished: State,
) -> None:
    """An unfinished upstream ends the run with the very same state and no announcement."""
    t = returns(1)
    log = Log()
    state = Pending()
    ups = {edge(t, "x"): Success(), edge(t, "y"): unfinished}
    assert ends_with(lambda: make_runner(t, log).check_upstream_finished(state, ups)) is state
    assert log.announced == []
    assert log.recorded == []


def test_check_upstream_finished_waits_for_every_child_of_a_mapped_upstream() -> None:
    """Through a non-mapped edge a Mapped upstream counts as its children (a reduce waits)."""
    t = returns(1)
    mapped = Mapped(map_states=[Success(), Running()])
    state = Pending()
    assert (
        ends_with(lambda: make_runner(t).check_upstream_finished(state, {edge(t, "xs"): mapped}))
        is state
    )


def test_check_upstream_finished_does_not_expand_a_mapped_upstream_on_a_mapped_edge() -> None:
    """Through a mapped edge the Mapped parent itself is checked (children decide per child)."""
    t = returns(1)
    mapped = Mapped(map_states=[Success(), Running()])
    state = Pending()
    ups = {edge(t, "x", mapped=True): mapped}
    assert make_runner(t).check_upstream_finished(state, ups) is state


SKIP_MESSAGE = (
    "Upstream task was skipped; if this was not the intended behavior, "
    "consider changing `skip_on_upstream_skip=False` for this task."
)


def test_check_upstream_skipped_skips_when_an_upstream_skipped() -> None:
    """One Skipped upstream ends the run in Skipped with Prefect's message, announced."""
    t = returns(1)
    log = Log()
    ups = {edge(t, "x"): Success(), edge(t, "y"): Skipped()}
    state = Pending()
    skipped = ends_with(lambda: make_runner(t, log).check_upstream_skipped(state, ups))
    assert type(skipped) is Skipped
    assert skipped.message == SKIP_MESSAGE
    assert log.announced_names() == [("Pending", "Skipped")]


def test_check_upstream_skipped_runs_anyway_when_the_task_opts_out() -> None:
    """skip_on_upstream_skip=False ignores skipped upstreams."""
    t = returns(1, skip_on_upstream_skip=False)
    state = Pending()
    assert make_runner(t).check_upstream_skipped(state, {edge(t, "x"): Skipped()}) is state


def test_check_upstream_skipped_sees_skipped_children_through_a_non_mapped_edge() -> None:
    """A reduce over a Mapped upstream with a Skipped child is skipped."""
    t = returns(1)
    ups = {edge(t, "xs"): Mapped(map_states=[Success(), Skipped()])}
    assert type(ends_with(lambda: make_runner(t).check_upstream_skipped(Pending(), ups))) is Skipped


def test_check_upstream_skipped_ignores_children_through_a_mapped_edge() -> None:
    """Through a mapped edge each child decides for itself; the parent is not skipped."""
    t = returns(1)
    state = Pending()
    ups = {edge(t, "x", mapped=True): Mapped(map_states=[Success(), Skipped()])}
    assert make_runner(t).check_upstream_skipped(state, ups) is state


# ----- load_results / get_task_inputs ------------------------------------------------------------


def test_load_results_hands_back_the_state_and_upstream_states_unchanged() -> None:
    """Results arrive hydrated, so load_results is the identity (Prefect's core hook)."""
    t = returns(1)
    state = Pending()
    ups: dict[Edge, State] = {edge(t, "x"): Success(result=1)}
    out_state, out_ups = make_runner(t).load_results(state, ups)
    assert out_state is state
    assert out_ups is ups


def test_get_task_inputs_maps_argument_keys_to_upstream_results() -> None:
    """Data edges give `{key: upstream._result}`; state-only edges give nothing."""
    t = returns(1)
    x, y = Success(result=1), Success(result=[2, 3])
    ups = {edge(t, "x"): x, edge(t, "y"): y, edge(t, None): Success(result=99)}
    inputs = make_runner(t).get_task_inputs(Pending(), ups)
    assert set(inputs) == {"x", "y"}
    assert inputs["x"] is x._result
    assert inputs["y"].value == [2, 3]


# ----- check_task_ready_to_map -------------------------------------------------------------------


def test_check_task_ready_to_map_keeps_an_already_mapped_state_silently() -> None:
    """A re-run of a Mapped parent ends with the same object and no announcement."""
    t = returns(1)
    log = Log()
    state = Mapped(n_map_states=2)
    ups = {edge(t, "x", mapped=True): Success(result=[1, 2])}
    assert ends_with(lambda: make_runner(t, log).check_task_ready_to_map(state, ups)) is state
    assert log.announced == []


def test_check_task_ready_to_map_counts_the_shortest_mapped_input() -> None:
    """N is the minimum length over mapped edges; non-mapped edges do not count."""
    t = returns(1)
    log = Log()
    ups = {
        edge(t, "x", mapped=True): Success(result=[1, 2, 3]),
        edge(t, "y", mapped=True): Success(result=(10, 20)),
        edge(t, "z"): Success(result=[0]),
    }
    mapped = ends_with(lambda: make_runner(t, log).check_task_ready_to_map(Pending(), ups))
    assert type(mapped) is Mapped
    assert mapped.message == "Ready to proceed with mapping."
    assert mapped.n_map_states == 2
    assert log.announced_names() == [("Pending", "Mapped")]


def test_check_task_ready_to_map_counts_a_mapped_upstream_by_its_n_map_states() -> None:
    """A Mapped upstream on a mapped edge contributes n_map_states (Prefect), not a list length."""
    t = returns(1)
    ups = {edge(t, "x", mapped=True): Mapped(n_map_states=3)}
    mapped = ends_with(lambda: make_runner(t).check_task_ready_to_map(Pending(), ups))
    assert isinstance(mapped, Mapped)
    assert mapped.n_map_states == 3


def test_check_task_ready_to_map_ignores_a_failed_upstream_when_counting_children() -> None:
    """Only successful plain upstreams count (Prefect): a Failed one beside them cannot make N 0."""
    t = returns(1)
    ups = {
        edge(t, "x", mapped=True, name="xs"): Success(result=[1, 2, 3]),
        edge(t, "y", mapped=True, name="bad"): Failed(result=ValueError("x")),
    }
    mapped = ends_with(lambda: make_runner(t).check_task_ready_to_map(Pending(), ups))
    assert isinstance(mapped, Mapped)
    assert mapped.n_map_states == 3


def test_check_task_ready_to_map_fails_when_no_mapped_upstream_succeeded() -> None:
    """Upstreams but no successful mapped one: Failed("No upstream states can be mapped over.")."""
    t = returns(1)
    ups = {edge(t, "x", mapped=True): Failed(), edge(t, "y"): Success(result=[1])}
    failed = ends_with(lambda: make_runner(t).check_task_ready_to_map(Pending(), ups))
    assert type(failed) is Failed
    assert failed.message == "No upstream states can be mapped over."


def test_check_task_ready_to_map_fails_on_an_unmappable_result() -> None:
    """A successful plain upstream without __getitem__ on a mapped edge cannot be mapped."""
    t = returns(1)
    ups = {edge(t, "x", mapped=True): Success(result=5)}
    failed = ends_with(lambda: make_runner(t).check_task_ready_to_map(Pending(), ups))
    assert type(failed) is Failed
    assert failed.message == "At least one upstream state has an unmappable result."


def test_check_task_ready_to_map_without_upstreams_maps_zero_children() -> None:
    """No upstream at all gives Mapped with n_map_states 0."""
    mapped = ends_with(lambda: make_runner(returns(1)).check_task_ready_to_map(Pending(), {}))
    assert isinstance(mapped, Mapped)
    assert mapped.n_map_states == 0


# ----- set_task_run_name -------------------------------------------------------------------------


def test_set_task_run_name_formats_the_template_with_inputs_and_context() -> None:
    """A string task_run_name is formatted with the input values and the context."""
    runner = make_runner(returns(1, name="inc", task_run_name="{task_name}-{x}"))
    prepared(runner)
    runner.set_task_run_name({"x": Result(value=3)})
    assert runner.context["task_run_name"] == "inc-3"


def test_set_task_run_name_calls_a_callable_with_inputs_and_context() -> None:
    """A callable task_run_name receives the inputs and context as keyword arguments."""

    def name(**kwargs: Any) -> str:
        return f"run-{kwargs['x'] * 2}"

    runner = make_runner(returns(1, task_run_name=name))
    prepared(runner)
    runner.set_task_run_name({"x": Result(value=4)})
    assert runner.context["task_run_name"] == "run-8"


def test_set_task_run_name_does_nothing_without_a_template() -> None:
    """Without task_run_name the context gets no task_run_name."""
    runner = make_runner(returns(1))
    prepared(runner)
    runner.set_task_run_name({"x": Result(value=4)})
    assert "task_run_name" not in runner.context


# ----- check_target ------------------------------------------------------------------------------


def target_task(tmp_path: Path, target: Any = "{x}.out") -> FunctionTask:
    """A task storing its result under `tmp_path` at `target`."""
    return returns(1, name="produce", target=target, result=LocalResult(dir=tmp_path))


def test_check_target_returns_cached_when_the_target_exists(tmp_path: Path) -> None:
    """An existing target becomes Cached with the stored value, no expiry and the inputs' tokens."""
    LocalResult(dir=tmp_path, location="7.out").write(42)
    log = Log()
    runner = make_runner(target_task(tmp_path), log)
    prepared(runner, parameters={"p": 1})
    cached = runner.check_target(Pending(), {"x": Result(value=7)})
    assert isinstance(cached, Cached)
    assert cached.message == "Result found at task target 7.out"
    assert cached.result == 42
    assert cached.cached_result_expiration is None
    assert dict(cached.hashed_inputs or {}) == {"x": tokenize(7)}
    assert dict(cached.cached_parameters or {}) == {"p": 1}
    assert log.announced_names() == [("Pending", "Cached")]


def test_check_target_keeps_the_state_when_the_target_is_missing(tmp_path: Path) -> None:
    """No file at the target: the state is unchanged."""
    runner = make_runner(target_task(tmp_path))
    prepared(runner)
    state = Pending()
    assert runner.check_target(state, {"x": Result(value=7)}) is state


def test_check_target_keeps_a_cached_starting_state_even_without_the_target(
    tmp_path: Path,
) -> None:
    """A target never expires: a Cached starting state stays even when the file is gone."""
    runner = make_runner(target_task(tmp_path))
    prepared(runner)
    state = Cached(result=1)
    assert runner.check_target(state, {"x": Result(value=7)}) is state


def test_check_target_formats_a_callable_target(tmp_path: Path) -> None:
    """A callable target receives inputs, parameters and context and names the location."""
    LocalResult(dir=tmp_path, location="p-3.out").write("hit")

    def where(**kwargs: Any) -> str:
        return f"p-{kwargs['x']}.out"

    runner = make_runner(target_task(tmp_path, target=where))
    prepared(runner)
    cached = runner.check_target(Pending(), {"x": Result(value=3)})
    assert isinstance(cached, Cached)
    assert cached.result == "hit"


# ----- check_task_is_cached ----------------------------------------------------------------------


def cached_state(expires: datetime | None = FUTURE, x: Any = 1, value: Any = "old") -> Cached:
    """A Cached state for input x, expiring at `expires`."""
    return Cached(
        "cached", result=value, cached_result_expiration=expires, hashed_inputs={"x": tokenize(x)}
    )


def test_check_task_is_cached_keeps_a_valid_cached_starting_state_silently() -> None:
    """A valid Cached starting state is kept as the same object, not announced."""
    log = Log()
    runner = make_runner(returns(1, cache_for=timedelta(hours=1)), log)
    prepared(runner)
    state = cached_state()
    assert runner.check_task_is_cached(state, {"x": Result(value=1)}) is state
    assert log.announced == []


def test_check_task_is_cached_invalidates_an_expired_cached_starting_state() -> None:
    """An expired Cached starting state becomes Pending("Cache was invalid; ready to run.")."""
    runner = make_runner(returns(1, cache_for=timedelta(hours=1)))
    prepared(runner)
    pending = runner.check_task_is_cached(cached_state(expires=PAST), {"x": Result(value=1)})
    assert type(pending) is Pending
    assert pending.message == "Cache was invalid; ready to run."


def test_check_task_is_cached_returns_the_first_valid_candidate_from_the_cache() -> None:
    """With cache_for, the first candidate the validator accepts is returned as is."""
    t = returns(1, name="c", cache_for=timedelta(hours=1), cache_validator=all_inputs)
    stale, other, good, later = (
        cached_state(expires=PAST),
        cached_state(x=2),
        cached_state(),
        cached_state(value="later"),
    )
    runner = make_runner(t)
    prepared(runner, caches={"c": [stale, other, good, later]})
    assert runner.check_task_is_cached(Pending(), {"x": Result(value=1)}) is good


def test_check_task_is_cached_uses_the_cache_key_bucket() -> None:
    """cache_key names the bucket; the task name's bucket is then ignored."""
    t = returns(1, name="c", cache_for=timedelta(hours=1), cache_key="shared")
    good = cached_state()
    runner = make_runner(t)
    prepared(runner, caches={"c": [cached_state(value="wrong")], "shared": [good]})
    assert runner.check_task_is_cached(Pending(), {}) is good


def test_check_task_is_cached_ignores_caches_without_cache_for() -> None:
    """A task without cache_for never looks at the caches."""
    t = returns(1, name="c")
    runner = make_runner(t)
    prepared(runner, caches={"c": [cached_state()]})
    state = Pending()
    assert runner.check_task_is_cached(state, {"x": Result(value=1)}) is state


def test_check_task_is_cached_looks_in_the_cache_after_invalidating_the_starting_state() -> None:
    """An invalid Cached starting state falls through to the cache lookup (Prefect's code)."""
    t = returns(1, name="c", cache_for=timedelta(hours=1))
    good = cached_state(value="fresh")
    runner = make_runner(t)
    prepared(runner, caches={"c": [good]})
    assert runner.check_task_is_cached(cached_state(expires=PAST), {"x": Result(value=1)}) is good


# ----- check_task_trigger ------------------------------------------------------------------------


def test_check_task_trigger_passes_the_state_through_when_the_trigger_passes() -> None:
    """A passing trigger leaves the state unchanged."""
    t = returns(1)
    state = Pending()
    assert make_runner(t).check_task_trigger(state, {edge(t, "x"): Success()}) is state


def test_check_task_trigger_fails_a_trigger_that_returns_false() -> None:
    """A trigger returning False ends the run in TriggerFailed("Trigger failed")."""
    t = returns(1, trigger=lambda ups: False)
    log = Log()
    failed = ends_with(lambda: make_runner(t, log).check_task_trigger(Pending(), {}))
    assert type(failed) is TriggerFailed
    assert failed.message == "Trigger failed"
    assert isinstance(failed.result, signals.TRIGGERFAIL)
    assert log.announced_names() == [("Pending", "TriggerFailed")]


def test_check_task_trigger_uses_the_message_of_the_builtin_trigger() -> None:
    """all_successful with a failed upstream gives Prefect's trigger message."""
    t = returns(1)
    failed = ends_with(
        lambda: make_runner(t).check_task_trigger(Pending(), {edge(t, "x"): Failed()})
    )
    assert type(failed) is TriggerFailed
    assert failed.message == 'Trigger was "all_successful" but some of the upstream tasks failed.'


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        (triggers.manual_only, Paused),
        (triggers.not_all_skipped, Skipped),
    ],
    ids=["manual_only", "not_all_skipped"],
)
def test_check_task_trigger_ends_in_the_state_of_a_signal_the_trigger_raises(
    trigger: Callable[..., bool], expected: type[State]
) -> None:
    """PAUSE from manual_only gives Paused, SKIP from not_all_skipped gives Skipped."""
    t = returns(1, trigger=trigger)
    assert type(ends_with(lambda: make_runner(t).check_task_trigger(Pending(), {}))) is expected


def test_check_task_trigger_turns_an_error_in_the_trigger_into_trigger_failed() -> None:
    """Any other exception is TriggerFailed("Unexpected error while checking task trigger: ...")."""
    boom = ValueError("boom")

    def broken(ups: Mapping[Edge, State]) -> bool:
        raise boom

    failed = ends_with(
        lambda: make_runner(returns(1, trigger=broken)).check_task_trigger(Pending(), {})
    )
    assert type(failed) is TriggerFailed
    assert failed.message == "Unexpected error while checking task trigger: ValueError('boom')"
    assert failed.result is boom


# ----- set_task_to_running -----------------------------------------------------------------------


def test_set_task_to_running_claims_a_pending_run() -> None:
    """A Pending run becomes Running("Starting task run."), announced."""
    log = Log()
    running = make_runner(returns(1), log).set_task_to_running(Pending(), {})
    assert type(running) is Running
    assert running.message == "Starting task run."
    assert log.announced_names() == [("Pending", "Running")]


@pytest.mark.parametrize("state", [Cached(result=1), Success(), Mapped()], ids=repr)
def test_set_task_to_running_ends_a_run_that_is_not_pending(state: State) -> None:
    """Anything not pending (a valid Cached in particular) ends the run unchanged."""
    assert ends_with(lambda: make_runner(returns(1)).set_task_to_running(state, {})) is state


# ----- get_task_run_state ------------------------------------------------------------------------


def test_get_task_run_state_refuses_a_state_that_is_not_running() -> None:
    """Only a Running state runs the body; anything else ends the run unchanged."""
    calls: list[int] = []
    t = task(lambda: calls.append(1), name="t")
    state = Pending()
    assert ends_with(lambda: make_runner(t).get_task_run_state(state, {})) is state
    assert calls == []


def test_get_task_run_state_calls_the_body_with_input_values() -> None:
    """The body gets `{key: value}` of the inputs; its return value becomes Success."""

    def add(x: int, y: int) -> int:
        return x + y

    runner = make_runner(task(add, name="add"))
    prepared(runner)
    success = runner.get_task_run_state(Running(), {"x": Result(value=1), "y": Result(value=2)})
    assert type(success) is Success
    assert success.message == "Task run succeeded."
    assert success.result == 3


def test_get_task_run_state_turns_an_exception_into_failed() -> None:
    """An exception from the body is Failed("Error during execution of task: <repr>")."""
    boom = KeyError("k")
    runner = make_runner(raises(lambda: boom))
    prepared(runner)
    failed = runner.get_task_run_state(Running(), {})
    assert type(failed) is Failed
    assert failed.message == "Error during execution of task: KeyError('k')"
    assert failed.result is boom


def test_get_task_run_state_checkpoints_when_checkpointing_is_on(tmp_path: Path) -> None:
    """With checkpointing on, a non-None value is written through the task's Result."""
    t = returns({"a": 1}, result=LocalResult(dir=tmp_path, location="out.json"))
    runner = make_runner(t)
    prepared(runner, checkpointing=True)
    success = runner.get_task_run_state(Running(), {})
    assert success._result.location == str(tmp_path / "out.json")
    assert (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("checkpoint", "checkpointing", "value"),
    [(None, False, 1), (False, True, 1), (None, True, None)],
    ids=["global-off", "task-opts-out", "none-value"],
)
def test_get_task_run_state_does_not_checkpoint_otherwise(
    tmp_path: Path, checkpoint: bool | None, checkpointing: bool, value: Any
) -> None:
    """Checkpointing off, checkpoint=False or a None value keep the value in memory only."""
    t = returns(value, checkpoint=checkpoint, result=LocalResult(dir=tmp_path, location="o.json"))
    runner = make_runner(t)
    prepared(runner, checkpointing=checkpointing)
    success = runner.get_task_run_state(Running(), {})
    assert success.result == value
    assert list(tmp_path.iterdir()) == []


def test_get_task_run_state_keeps_the_value_when_the_result_cannot_write() -> None:
    """A base Result cannot write; the value is kept in memory without an error."""
    runner = make_runner(returns(5))
    prepared(runner, checkpointing=True)
    success = runner.get_task_run_state(Running(), {})
    assert type(success) is Success
    assert success.result == 5


# ----- cache_result ------------------------------------------------------------------------------


def test_cache_result_turns_a_fresh_success_into_cached() -> None:
    """With cache_for, Success becomes Cached: same Result, tokens, expiry, parameters, message."""
    log = Log()
    runner = make_runner(returns(1, cache_for=timedelta(minutes=5)), log)
    prepared(runner, parameters={"p": 2})
    success = Success("Task run succeeded.", result=Result(value=3))
    cached = runner.cache_result(success, {"x": Result(value=1)})
    assert isinstance(cached, Cached)
    assert cached._result is success._result
    assert cached.message == "Task run succeeded."
    assert cached.cached_result_expiration == NOW + timedelta(minutes=5)
    assert dict(cached.hashed_inputs or {}) == {"x": tokenize(1)}
    assert dict(cached.cached_parameters or {}) == {"p": 2}
    assert log.announced_names() == [("Success", "Cached")]


@pytest.mark.parametrize(
    ("state", "cache_for"),
    [
        (Skipped(), timedelta(minutes=5)),
        (Failed(), timedelta(minutes=5)),
        (Looped(result=1), timedelta(minutes=5)),
        (Success(result=1), None),
    ],
    ids=["skipped", "failed", "looped", "no-cache_for"],
)
def test_cache_result_leaves_other_states_alone(state: State, cache_for: timedelta | None) -> None:
    """Skipped, unsuccessful states and tasks without cache_for are not cached."""
    runner = make_runner(returns(1, cache_for=cache_for))
    prepared(runner)
    assert runner.cache_result(state, {}) is state


# ----- check_for_retry ---------------------------------------------------------------------------


def retrier(**settings: Any) -> FunctionTask:
    """A failing task with retries every 10 seconds."""
    settings.setdefault("max_retries", 2)
    settings.setdefault("retry_delay", timedelta(seconds=10))
    return raises(lambda: ValueError("x"), **settings)


@pytest.mark.parametrize(
    "failed", [Failed(), TimedOut(), TriggerFailed(), ValidationFailed()], ids=repr
)
def test_check_for_retry_retries_every_failed_kind_within_budget(failed: State) -> None:
    """A failure on attempt n <= max_retries becomes Retrying(run_count=n) after retry_delay."""
    log = Log()
    runner = make_runner(retrier(), log)
    prepared(runner, Retrying(run_count=1))
    retry = runner.check_for_retry(failed, {})
    assert isinstance(retry, Retrying)
    assert retry.message == "Retrying Task (after attempt 2 of 3)"
    assert retry.run_count == 2
    assert retry.start_time == NOW + timedelta(seconds=10)
    assert retry.context["task_run_count"] == 2
    assert log.announced_names() == [(type(failed).__name__, "Retrying")]


def test_check_for_retry_stops_when_the_budget_is_spent() -> None:
    """On attempt max_retries + 1 the failure stands."""
    runner = make_runner(retrier())
    prepared(runner, Retrying(run_count=2))
    failed = Failed()
    assert runner.check_for_retry(failed, {}) is failed


@pytest.mark.parametrize("state", [Success(), Skipped(), Cancelled(), Paused()], ids=repr)
def test_check_for_retry_ignores_states_that_are_not_failed(state: State) -> None:
    """Only failed states are retried."""
    runner = make_runner(retrier())
    prepared(runner)
    assert runner.check_for_retry(state, {}) is state


def test_check_for_retry_honours_retry_on() -> None:
    """With retry_on, only failures whose result is one of those exception types are retried."""
    runner = make_runner(retrier(retry_on=[KeyError]))
    prepared(runner)
    other = Failed(result=ValueError("v"))
    assert runner.check_for_retry(other, {}) is other
    assert type(runner.check_for_retry(Failed(result=KeyError("k")), {})) is Retrying
    assert type(runner.check_for_retry(Failed(), {})) is Retrying


def test_check_for_retry_inside_a_loop_carries_the_loop_counter_and_result() -> None:
    """A retry mid-loop records _loop_count and the loop result so the iteration resumes."""
    runner = make_runner(retrier())
    prepared(runner, task_loop_count=3, task_loop_result="acc")
    retry = runner.check_for_retry(Failed(), {})
    assert isinstance(retry, Retrying)
    assert retry.context["_loop_count"] == 3
    assert retry.result == "acc"


# ----- check_task_is_looping ---------------------------------------------------------------------


def test_check_task_is_looping_restarts_from_a_fresh_pending_silently() -> None:
    """A Looped(k) gives Pending("Looping task (on loop index k)") and k+1 in the context."""
    log = Log()
    runner = make_runner(returns(1), log)
    prepared(runner)
    ctx: dict[str, Any] = {"resume": True}
    pending = runner.check_task_is_looping(Looped(loop_count=2, result="r"), {}, {}, ctx)
    assert type(pending) is Pending
    assert pending.message == "Looping task (on loop index 2)"
    assert ctx["task_loop_count"] == 3
    assert ctx["task_loop_result"] == "r"
    assert log.announced == []
    assert log.recorded == [pending]


# ----- call_runner_target_handlers / handle_state_change -----------------------------------------


def test_call_runner_target_handlers_chains_the_task_handlers_in_order() -> None:
    """Task handlers get (task, old, new); each gets the previous one's new state; None keeps it."""
    seen: list[tuple[str, Task, State, State]] = []
    rewritten = Success("rewritten")

    def first(t: Task, old: State, new: State) -> State:
        seen.append(("first", t, old, new))
        return rewritten

    def second(t: Task, old: State, new: State) -> None:
        seen.append(("second", t, old, new))

    t = returns(1, state_handlers=[first, second])
    old, new = Running(), Success()
    assert make_runner(t).call_runner_target_handlers(old, new) is rewritten
    assert seen == [("first", t, old, new), ("second", t, old, rewritten)]


def test_handle_state_change_calls_task_handlers_before_runner_handlers() -> None:
    """Task handlers run first, then the runner's `h(runner, old, new)`; the outcome is recorded."""
    order: list[str] = []

    def task_handler(t: Task, old: State, new: State) -> State:
        order.append("task")
        return new.copy_with(message="from task")

    def runner_handler(r: TaskRunner, old: State, new: State) -> None:
        assert isinstance(r, TaskRunner)
        order.append(f"runner:{new.message}")

    log = Log()
    runner = make_runner(returns(1, state_handlers=[task_handler]), log, handlers=[runner_handler])
    out = runner.handle_state_change(Pending(), Running())
    assert order == ["task", "runner:from task"]
    assert out.message == "from task"
    assert log.recorded == [out]


def test_handle_state_change_lets_endrun_from_a_handler_propagate() -> None:
    """ENDRUN raised by a handler leaves handle_state_change unchanged; nothing is recorded."""
    final = Success("forced")

    def stop(r: TaskRunner, old: State, new: State) -> None:
        raise signals.ENDRUN(final)

    log = Log()
    runner = make_runner(returns(1), log, handlers=[stop])
    assert ends_with(lambda: runner.handle_state_change(Pending(), Running())) is final
    assert log.recorded == []


def test_handle_state_change_lets_pause_from_a_handler_propagate() -> None:
    """PAUSE raised by a handler propagates out of the handler chain."""

    def pause(r: TaskRunner, old: State, new: State) -> None:
        raise signals.PAUSE("hold")

    runner = make_runner(returns(1), handlers=[pause])
    with pytest.raises(signals.PAUSE):
        runner.handle_state_change(Pending(), Running())


def test_handle_state_change_turns_another_signal_into_its_state_and_stops_the_chain() -> None:
    """SKIP from a handler becomes the new state; later handlers are not called."""
    later: list[State] = []

    def skip(r: TaskRunner, old: State, new: State) -> None:
        raise signals.SKIP("not today")

    log = Log()
    runner = make_runner(returns(1), log, handlers=[skip, lambda r, o, n: later.append(n)])
    out = runner.handle_state_change(Pending(), Running())
    assert type(out) is Skipped
    assert out.message == "not today"
    assert later == []
    assert log.recorded == [out]


def test_handle_state_change_ends_the_run_in_failed_when_a_handler_crashes() -> None:
    """Another exception: ENDRUN(Failed("Unexpected error while calling state handlers: ..."))
    with Prefect's message, then the name of the handler that raised."""
    boom = RuntimeError("handler bug")

    def crash(r: TaskRunner, old: State, new: State) -> None:
        raise boom

    runner = make_runner(returns(1), handlers=[crash])
    failed = ends_with(lambda: runner.handle_state_change(Pending(), Running()))
    assert type(failed) is Failed
    assert failed.message == (
        "Unexpected error while calling state handlers: RuntimeError('handler bug') "
        f"(state handler {handler_name(crash)})"
    )
    assert failed.result is boom
    assert failed.context["state_handler"] == handler_name(crash)


# ----- run: whole pipeline -----------------------------------------------------------------------


def test_run_announces_pending_running_success() -> None:
    """A plain success is announced Pending → Running → Success and recorded twice."""
    log = Log()
    final = make_runner(returns(3), log).run()
    assert type(final) is Success
    assert final.result == 3
    assert log.announced_names() == [("Pending", "Running"), ("Running", "Success")]
    assert log.recorded_names() == ["Running", "Success"]
    assert log.recorded[-1] is final


def test_run_passes_upstream_results_to_the_body() -> None:
    """Upstream states keyed by Edge feed the body's arguments."""

    def add(x: int, y: int) -> int:
        return x + y

    t = task(add, name="add")
    final = make_runner(t).run(
        upstream_states={edge(t, "x"): Success(result=2), edge(t, "y"): Success(result=5)}
    )
    assert final.result == 7


def test_run_starting_from_a_finished_state_returns_it_without_recording() -> None:
    """A finished starting state is the final state; nothing changes and nothing is recorded."""
    log = Log()
    state = Success(result=1)
    assert make_runner(returns(2), log).run(state) is state
    assert log.recorded == []


def test_run_starting_from_running_returns_it_unchanged() -> None:
    """A Running starting state ends the run at once (another runner owns it)."""
    state = Running()
    assert make_runner(returns(2)).run(state) is state


def test_run_with_unfinished_upstream_stays_pending_silently() -> None:
    """A task whose upstream still runs stays Pending and announces nothing."""
    t = returns(1)
    log = Log()
    start = Pending()
    final = make_runner(t, log).run(start, {edge(t, "x"): Running()})
    assert final is start
    assert log.announced == []
    assert log.recorded == []


def test_run_unwraps_a_submitted_state_and_runs_from_the_inner_state() -> None:
    """Submitted(Retrying) runs as attempt run_count + 1."""
    counts: list[int] = []
    t = task(lambda: counts.append(task_context["task_run_count"]), name="t")
    final = make_runner(t).run(Submitted(state=Retrying(start_time=PAST, run_count=2)))
    assert type(final) is Success
    assert counts == [3]


def test_run_retries_with_growing_run_counts_until_the_budget_is_spent() -> None:
    """Attempts 1 and 2 end Retrying(1), Retrying(2); attempt 3 ends Failed."""
    t = retrier()
    clock = FixedClock(NOW)
    first = make_runner(t, clock=clock).run()
    assert isinstance(first, Retrying)
    assert (first.run_count, first.message) == (1, "Retrying Task (after attempt 1 of 3)")
    clock.advance(10)
    second = make_runner(t, clock=clock).run(first)
    assert isinstance(second, Retrying)
    assert second.run_count == 2
    assert second.start_time == NOW + timedelta(seconds=20)
    clock.advance(10)
    log = Log()
    third = make_runner(t, log, clock=clock).run(second)
    assert type(third) is Failed
    assert log.announced_names() == [("Retrying", "Running"), ("Running", "Failed")]


def test_run_does_not_start_a_retry_before_its_start_time() -> None:
    """A Retrying whose start time is in the future is returned unchanged."""
    retry = Retrying(start_time=FUTURE, run_count=1)
    assert make_runner(retrier()).run(retry) is retry


def test_run_from_resume_passes_a_manual_only_trigger_and_exposes_resume() -> None:
    """Resume sets context resume=True: manual_only passes and the body can read it."""
    seen: list[Any] = []

    def body() -> str:
        seen.append(task_context.resume)
        return "ok"

    t = task(body, name="gate", trigger=triggers.manual_only)
    log = Log()
    final = make_runner(t, log).run(Resume("Approval given to resume.", start_time=NOW))
    assert type(final) is Success
    assert seen == [True]
    assert log.announced_names() == [("Resume", "Running"), ("Running", "Success")]


def test_run_resumes_a_paused_state_whose_start_time_has_passed() -> None:
    """Paused(start_time in the past) runs, with resume=True."""
    t = task(lambda: 1, name="gate", trigger=triggers.manual_only)
    assert type(make_runner(t).run(Paused(start_time=PAST))) is Success


def test_run_leaves_an_indefinitely_paused_task_paused() -> None:
    """Paused without a start time never runs by itself."""
    paused = Paused()
    assert make_runner(returns(1)).run(paused) is paused


def test_run_of_a_manual_only_task_pauses_before_running() -> None:
    """manual_only without resume: Pending → Paused('Trigger function is "manual_only"')."""
    log = Log()
    final = make_runner(returns(1, trigger=triggers.manual_only), log).run()
    assert type(final) is Paused
    assert final.message == 'Trigger function is "manual_only"'
    assert log.announced_names() == [("Pending", "Paused")]


def test_run_lets_handlers_rewrite_a_state_and_continues_from_the_rewrite() -> None:
    """A handler turning Failed into Success ends the run in that Success, with no retry."""

    def forgive(r: TaskRunner, old: State, new: State) -> State | None:
        return Success("forgiven", result=0) if new.is_failed() else None

    log = Log()
    final = make_runner(retrier(), log, handlers=[forgive]).run()
    assert type(final) is Success
    assert final.message == "forgiven"
    assert log.announced_names() == [("Pending", "Running"), ("Running", "Success")]


def test_run_ends_in_the_state_of_an_endrun_raised_by_a_handler() -> None:
    """ENDRUN from a handler ends the run in its state; later steps do not run."""
    calls: list[int] = []

    def stop(r: TaskRunner, old: State, new: State) -> None:
        if isinstance(new, Running):
            raise signals.ENDRUN(Cancelled("stopped"))

    t = task(lambda: calls.append(1), name="t")
    final = make_runner(t, handlers=[stop]).run()
    assert type(final) is Cancelled
    assert calls == []


def test_run_ends_paused_when_a_handler_raises_pause() -> None:
    """PAUSE from a handler ends the run Paused without further handler calls."""
    log = Log()

    def pause(r: TaskRunner, old: State, new: State) -> None:
        if isinstance(new, Running):
            raise signals.PAUSE("hold on")

    final = make_runner(returns(1), handlers=[pause, log.handler]).run()
    assert type(final) is Paused
    assert final.message == "hold on"
    assert log.announced == []


def test_run_ends_skipped_when_a_handler_raises_skip() -> None:
    """SKIP from a handler on the claim turns the step's state into Skipped; the body never runs."""
    calls: list[int] = []

    def skip(r: TaskRunner, old: State, new: State) -> None:
        if isinstance(new, Running):
            raise signals.SKIP("skip it")

    t = task(lambda: calls.append(1), name="t")
    final = make_runner(t, handlers=[skip]).run()
    assert type(final) is Skipped
    assert calls == []


def test_run_fails_unannounced_when_a_handler_crashes_but_still_records_it() -> None:
    """A crashing handler ends the run in Failed that handlers never see; the recorder does."""
    announced: list[tuple[str, str]] = []

    def crash(r: TaskRunner, old: State, new: State) -> None:
        announced.append((type(old).__name__, type(new).__name__))
        if isinstance(new, Success):
            raise RuntimeError("bad handler")

    log = Log()
    final = make_runner(returns(1), log, handlers=[crash]).run()
    assert type(final) is Failed
    assert final.message == (
        "Unexpected error while calling state handlers: RuntimeError('bad handler') "
        f"(state handler {handler_name(crash)})"
    )
    assert announced == [("Pending", "Running"), ("Running", "Success")]
    assert log.recorded_names() == ["Running", "Failed"]


def test_run_reraises_with_raise_on_exception() -> None:
    """context raise_on_exception=True lets a body error escape."""
    with pytest.raises(ValueError, match="x"):
        make_runner(raises(lambda: ValueError("x"))).run(context={"raise_on_exception": True})


def test_run_fails_with_the_full_task_name_on_an_engine_error() -> None:
    """An error outside the wrapped steps gives Failed("Task '<name[i]>': Unexpected error ...")."""
    t = returns(1, name="inc", task_run_name="{missing}")
    log = Log()
    final = make_runner(t, log).run(context={"map_index": 1})
    assert type(final) is Failed
    assert (
        final.message == "Task 'inc[1]': Unexpected error while running task: KeyError('missing')"
    )
    assert log.announced == []
    assert log.recorded == [final]


def test_run_retries_on_listed_exceptions_only() -> None:
    """retry_on=[KeyError]: a ValueError fails at once, a KeyError is retried."""
    assert type(make_runner(retrier(retry_on=KeyError)).run()) is Failed
    key_error = raises(
        lambda: KeyError("k"), max_retries=1, retry_delay=timedelta(0), retry_on=KeyError
    )
    assert type(make_runner(key_error).run()) is Retrying


def test_run_retries_on_retry_signal_even_without_retries() -> None:
    """RETRY with max_retries=0 gives Retrying(run_count=1, start_time=now)."""
    log = Log()
    final = make_runner(raises(lambda: signals.RETRY("again")), log).run()
    assert isinstance(final, Retrying)
    assert final.message == "again"
    assert final.run_count == 1
    assert final.start_time == NOW
    assert log.announced_names() == [("Pending", "Running"), ("Running", "Retrying")]


def test_run_counts_a_retry_signal_against_the_retry_budget() -> None:
    """After a RETRY-ed attempt 1, a failure on attempt 2 with max_retries=1 is final."""
    t = raises(lambda: ValueError("x"), max_retries=1, retry_delay=timedelta(0))
    assert type(make_runner(t).run(Retrying(start_time=PAST, run_count=1))) is Failed


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        (lambda: signals.FAIL("f"), Failed),
        (lambda: signals.SKIP("s"), Skipped),
        (lambda: signals.PAUSE("p"), Paused),
        (lambda: signals.VALIDATIONFAIL("v"), ValidationFailed),
        (lambda: signals.TRIGGERFAIL("t"), TriggerFailed),
    ],
    ids=["FAIL", "SKIP", "PAUSE", "VALIDATIONFAIL", "TRIGGERFAIL"],
)
def test_run_turns_a_signal_from_the_body_into_its_state(
    signal: Callable[[], signals.PrefectStateSignal], expected: type[State]
) -> None:
    """A state signal raised by the body ends the run in its state, result = the signal."""
    final = make_runner(raises(signal)).run()
    assert type(final) is expected
    assert isinstance(final.result, signals.PrefectStateSignal)


def test_run_retries_a_trigger_failure_raised_from_the_body() -> None:
    """TRIGGERFAIL from the body is a failure like any other: it is retried."""
    t = raises(lambda: signals.TRIGGERFAIL("t"), max_retries=1, retry_delay=timedelta(0))
    assert type(make_runner(t).run()) is Retrying


def test_run_pauses_indefinitely_on_pause_from_the_body() -> None:
    """PAUSE from the body gives Paused with no start time."""
    final = make_runner(raises(lambda: signals.PAUSE("wait"))).run()
    assert isinstance(final, Paused)
    assert final.start_time is None


def test_run_ends_successfully_with_the_result_of_a_success_signal() -> None:
    """SUCCESS(result=v) ends in Success with the signal's message and v as result."""
    final = make_runner(raises(lambda: signals.SUCCESS("early", result=9))).run()
    assert type(final) is Success
    assert final.message == "early"
    assert final.result == 9


def test_run_ends_in_the_state_of_endrun_from_user_code_without_retrying() -> None:
    """ENDRUN(s) from the body ends the run in s; no retry or cache step follows."""
    t = raises(
        lambda: signals.ENDRUN(Failed("given up")),
        max_retries=3,
        retry_delay=timedelta(0),
    )
    log = Log()
    final = make_runner(t, log).run()
    assert type(final) is Failed
    assert final.message == "given up"
    assert log.announced_names() == [("Pending", "Running"), ("Running", "Failed")]


def looper(stop_at: int, observed: list[tuple[Any, Any]], with_result: bool = True) -> FunctionTask:
    """A task that loops until its loop count reaches `stop_at`, noting what it saw."""

    def body() -> Any:
        count = task_context.get("task_loop_count")
        previous = task_context.get("task_loop_result")
        observed.append((count, previous))
        current = count or 1
        if current < stop_at:
            if with_result:
                raise signals.LOOP(result=(previous or 0) + current)
            raise signals.LOOP()
        return previous

    return task(body, name="looper")


def test_run_loops_silently_until_the_body_returns() -> None:
    """LOOP ×2 then return: Looped(1) ⇢ Pending → Running → Looped(2) ⇢ … → Success."""
    observed: list[tuple[Any, Any]] = []
    log = Log()
    final = make_runner(looper(3, observed), log).run()
    assert type(final) is Success
    assert final.result == 3
    assert observed == [(None, None), (2, 1), (3, 3)]
    assert log.recorded_names() == [
        "Running",
        "Looped",
        "Pending",
        "Running",
        "Looped",
        "Pending",
        "Running",
        "Success",
    ]
    assert log.announced_names() == [
        ("Pending", "Running"),
        ("Running", "Looped"),
        ("Pending", "Running"),
        ("Running", "Looped"),
        ("Pending", "Running"),
        ("Running", "Success"),
    ]
    looped = [s for s in log.recorded if isinstance(s, Looped)]
    assert [(s.loop_count, s.message, s.result) for s in looped] == [
        (1, "Task is looping (1)", 1),
        (2, "Task is looping (2)", 3),
    ]
    restarts = [s.message for s in log.recorded if type(s) is Pending]
    assert restarts == ["Looping task (on loop index 1)", "Looping task (on loop index 2)"]


def test_run_loop_without_result_carries_the_signal_repr() -> None:
    """LOOP() without result= makes the loop result the signal's repr (a string)."""
    observed: list[tuple[Any, Any]] = []
    log = Log()
    make_runner(looper(2, observed, with_result=False), log).run()
    looped = next(s for s in log.recorded if isinstance(s, Looped))
    assert isinstance(looped.result, str)
    assert looped.result.startswith("LOOP(")
    assert observed[1] == (2, looped.result)


def test_run_resets_the_attempt_counter_for_each_new_loop_iteration() -> None:
    """task_run_count restarts at 1 in every loop iteration (the retry budget is per iteration)."""
    counts: list[int] = []

    def body() -> Any:
        counts.append(task_context["task_run_count"])
        if (task_context.get("task_loop_count") or 1) < 3:
            raise signals.LOOP(result=0)
        return "done"

    assert (
        make_runner(task(body, name="t")).run(Retrying(start_time=PAST, run_count=1)).result
        == "done"
    )
    assert counts == [2, 1, 1]


def test_run_times_out_without_waiting_for_the_body() -> None:
    """timeout=1 with a 5 s body gives TimedOut long before the body ends (bounded, not exact)."""
    release = threading.Event()
    t = task(lambda: release.wait(5), name="slow", timeout=1)
    log = Log()
    started = time.monotonic()
    try:
        final = make_runner(t, log).run()
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert type(final) is TimedOut
    assert final.message == "Task timed out during execution."
    assert isinstance(final.result, signals.TaskTimeoutSignal)
    assert elapsed < 2.5
    assert log.announced_names() == [("Pending", "Running"), ("Running", "TimedOut")]


def test_run_returns_the_value_of_a_body_that_beats_its_timeout() -> None:
    """A body finishing inside its timeout succeeds with its value and its context bound."""
    t = task(lambda: task_context["task_name"], name="quick", timeout=5)
    assert make_runner(t).run().result == "quick"


def test_run_is_cached_from_an_existing_target(tmp_path: Path) -> None:
    """An existing target ends the run Pending → Cached without running the body."""
    calls: list[int] = []
    LocalResult(dir=tmp_path, location="out").write(10)
    t = task(lambda: calls.append(1), name="t", target="out", result=LocalResult(dir=tmp_path))
    log = Log()
    final = make_runner(t, log).run()
    assert type(final) is Cached
    assert final.result == 10
    assert calls == []
    assert log.announced_names() == [("Pending", "Cached")]


def test_run_writes_its_target_when_missing_and_checkpointing(tmp_path: Path) -> None:
    """A missing target runs the body and, with checkpointing, writes the result there."""
    t = returns(5, target="{task_name}.out", result=LocalResult(dir=tmp_path))
    final = make_runner(t).run(context={"checkpointing": True})
    assert type(final) is Success
    assert LocalResult(dir=tmp_path).read("returns.out").value == 5


def test_run_first_success_with_cache_for_ends_cached() -> None:
    """cache_for: Pending → Running → Success → Cached."""
    log = Log()
    final = make_runner(returns(1, cache_for=timedelta(hours=1)), log).run()
    assert type(final) is Cached
    assert log.announced_names()[-1] == ("Success", "Cached")


def test_run_reuses_a_valid_cached_starting_state_silently() -> None:
    """A valid Cached starting state ends the run as the same object, announcing nothing."""
    t = returns(2, cache_for=timedelta(hours=1), cache_validator=all_inputs)
    log = Log()
    start = cached_state(x=1)
    final = make_runner(t, log).run(start, {edge(t, "x"): Success(result=1)})
    assert final is start
    assert log.announced == []
    assert log.recorded == []


def test_run_reruns_when_the_cached_starting_state_is_invalid() -> None:
    """An all_inputs cache for other inputs: Cached → Pending → Running → Success → Cached."""

    def body(x: int) -> int:
        return x * 10

    t = task(body, name="t", cache_for=timedelta(hours=1), cache_validator=all_inputs)
    log = Log()
    final = make_runner(t, log).run(cached_state(x=1), {edge(t, "x"): Success(result=2)})
    assert type(final) is Cached
    assert final.result == 20
    assert log.announced_names() == [
        ("Cached", "Pending"),
        ("Pending", "Running"),
        ("Running", "Success"),
        ("Success", "Cached"),
    ]


def test_run_lets_a_failing_trigger_override_a_valid_cache() -> None:
    """The trigger runs after the cache check: a valid Cached becomes TriggerFailed."""
    t = returns(1, cache_for=timedelta(hours=1), cache_validator=duration_only)
    final = make_runner(t).run(cached_state(), {edge(t, "x"): Failed()})
    assert type(final) is TriggerFailed


def test_run_as_mapped_parent_ends_mapped_without_running_the_body() -> None:
    """is_mapped_parent: Pending → Mapped(n) and the body is never called."""
    calls: list[int] = []
    t = task(lambda x: calls.append(x), name="t")
    log = Log()
    final = make_runner(t, log).run(
        upstream_states={edge(t, "x", mapped=True): Success(result=[1, 2, 3])},
        is_mapped_parent=True,
    )
    assert isinstance(final, Mapped)
    assert final.n_map_states == 3
    assert calls == []
    assert log.announced_names() == [("Pending", "Mapped")]


def test_run_exposes_the_documented_context_inside_the_body() -> None:
    """The body reads task_run_count, map_index, task_full_name and given keys from the context."""
    seen: dict[str, Any] = {}

    def body() -> None:
        seen.update(
            {
                k: task_context.get(k)
                for k in ("task_run_count", "map_index", "task_full_name", "flow_run_id")
            }
        )

    make_runner(task(body, name="t")).run(context={"map_index": 4, "flow_run_id": "fr"})
    assert seen == {
        "task_run_count": 1,
        "map_index": 4,
        "task_full_name": "t[4]",
        "flow_run_id": "fr",
    }


def test_run_hands_every_change_to_the_recorder_including_silent_ones() -> None:
    """The recorder sees announced and silent changes, each once, in order, ending in the final."""
    observed: list[tuple[Any, Any]] = []
    log = Log()
    final = make_runner(looper(2, observed), log, handlers=[lambda r, o, n: None]).run()
    assert log.recorded_names() == ["Running", "Looped", "Pending", "Running", "Success"]
    assert len({id(s) for s in log.recorded}) == len(log.recorded)
    assert log.recorded[-1] is final
    announced_new = [n for _, n in log.announced]
    silent = [s for s in log.recorded if all(s is not n for n in announced_new)]
    assert [type(s).__name__ for s in silent] == ["Pending"]


# ----- handlers that raise or return something unusable after the body (issue 15) -------------


def test_a_handler_crashing_on_retrying_ends_the_run_failed_without_a_retry() -> None:
    """Prefect: Failed("Unexpected error while calling state handlers: ..."), no Retrying."""

    def crash_on_retrying(t: Task, old: State, new: State) -> None:
        if isinstance(new, Retrying):
            raise RuntimeError("handler broke")

    log = Log()
    t = raises(
        lambda: ValueError("body"),
        max_retries=1,
        retry_delay=timedelta(0),
        state_handlers=[crash_on_retrying],
    )
    final = make_runner(t, log).run()
    assert type(final) is Failed
    assert final.message == (
        "Unexpected error while calling state handlers: RuntimeError('handler broke') "
        f"(state handler {handler_name(crash_on_retrying)})"
    )
    assert log.recorded_names() == ["Running", "Failed", "Failed"]


def test_a_crashing_handler_is_named_in_the_failed_states_context() -> None:
    """Prefect's message stays word for word; the context says which handler it was."""

    def crash(t: Task, old: State, new: State) -> None:
        if isinstance(new, Success):
            raise RuntimeError("handler broke")

    final = make_runner(returns(1, state_handlers=[crash])).run()
    assert final.context["state_handler"] == f"{__name__}:{crash.__qualname__}"


def test_a_handler_returning_something_not_a_state_fails_the_run_naming_it() -> None:
    """Prefect would break later on; here the run ends Failed with the handler's name."""

    def returns_text(t: Task, old: State, new: State) -> Any:
        return "done" if isinstance(new, Success) else None

    final = make_runner(returns(1, state_handlers=[returns_text])).run()
    assert type(final) is Failed
    assert f"state handler {__name__}:{returns_text.__qualname__} returned 'done'" in str(
        final.message
    )


def test_a_handler_sending_a_run_back_to_pending_fails_it_naming_the_handler() -> None:
    """A run turned back to Pending after its body would never finish in the ledger."""

    def back_to_pending(t: Task, old: State, new: State) -> State | None:
        return Pending("again") if isinstance(new, Success) else None

    final = make_runner(returns(1, state_handlers=[back_to_pending])).run()
    assert type(final) is Failed
    assert "turned Running -> Success into Pending" in str(final.message)
    assert back_to_pending.__qualname__ in str(final.message)


def test_a_handler_may_still_finish_a_run_differently_or_schedule_it() -> None:
    """Rewrites to another finished state or to a Retrying are as in Prefect."""

    def to_retrying(t: Task, old: State, new: State) -> State | None:
        return Retrying(start_time=FUTURE, run_count=1) if isinstance(new, Success) else None

    final = make_runner(returns(1, state_handlers=[to_retrying])).run()
    assert type(final) is Retrying
