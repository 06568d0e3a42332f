"""Building tasks and flows with Prefect 1's calling conventions (issue 2, deliverable 5)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest

from engine import (
    Constant,
    Edge,
    Flow,
    FunctionTask,
    GetItem,
    Parameter,
    Task,
    flatten,
    task,
    triggers,
    unmapped,
)
from engine.flow import FlowGraphError
from engine.flow_runner import FlowRunner
from engine.state import State
from engine.task import TaskSettingsError


def inc(x: int) -> int:
    """x + 1."""
    return x + 1


def add(x: int, y: int) -> int:
    """x + y."""
    return x + y


def edges_into(flow: Flow, t: Task) -> set[tuple[str, str | None, bool, bool]]:
    """The edges into `t` as (upstream name, key, mapped, flattened)."""
    return {(e.upstream_task.name, e.key, e.mapped, e.flattened) for e in flow.edges_to(t)}


# ----- tasks -------------------------------------------------------------------------------------


def test_task_wraps_a_function_called_with_keyword_settings() -> None:
    """task(fn, name=..., **settings) makes a FunctionTask with those settings."""
    t = task(inc, name="plus-one", max_retries=2, retry_delay=timedelta(seconds=1), tags=["a"])
    assert isinstance(t, FunctionTask)
    assert (t.name, t.max_retries, t.retry_delay, t.tags) == (
        "plus-one",
        2,
        timedelta(seconds=1),
        frozenset({"a"}),
    )
    assert t.run(x=1) == 2


def test_task_decorates_with_and_without_arguments() -> None:
    """@task and @task(...) both work; the name defaults to the function's."""

    @task
    def plain() -> int:
        return 1

    @task(name="named", trigger=triggers.all_finished)
    def configured() -> int:
        return 2

    assert (plain.name, plain.run()) == ("plain", 1)
    assert (configured.name, configured.trigger) == ("named", triggers.all_finished)


def test_task_subclasses_take_a_name_and_override_run() -> None:
    """Task(name=...) works, and a subclass's run defines its arguments."""

    class Double(Task):
        def run(self, x: int) -> int:
            return 2 * x

    assert Task(name="base").name == "base"
    assert Task().name == "Task"
    with Flow("f") as flow:
        d = Double(name="double")(3)
    assert flow.constants[d] == {"x": 3}
    assert FlowRunner(flow).run().state.result[d].result == 6


def test_settings_have_prefects_defaults() -> None:
    """No retries, all_successful, skip on upstream skip, no timeout or cache."""
    t = Task(name="t")
    assert t.max_retries == 0
    assert t.retry_delay is None
    assert t.trigger is triggers.all_successful
    assert t.skip_on_upstream_skip is True
    assert (t.timeout, t.cache_for, t.target, t.nout, t.checkpoint) == (
        None,
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_retries": 1}, "retry_delay must be given"),
        ({"retry_delay": timedelta(1)}, "without max_retries"),
        ({"retry_on": ValueError}, "retry_on needs max_retries"),
        (
            {"max_retries": 1, "retry_delay": timedelta(0), "retry_on": ["nope"]},
            "retry_on takes exception types",
        ),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"timeout": -3}, "timeout must be a positive"),
    ],
)
def test_contradictory_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    """Prefect's settings rules raise TaskSettingsError (a ValueError) naming the problem."""
    with pytest.raises(TaskSettingsError, match=message):
        Task(name="t", **settings)


def test_a_timedelta_timeout_is_truncated_to_whole_seconds() -> None:
    """timeout=timedelta(seconds=2.9) is 2 seconds."""
    assert Task(name="t", timeout=timedelta(seconds=2.9)).timeout == 2


def test_retry_on_accepts_one_type_or_several() -> None:
    """retry_on is normalised to a tuple of exception types."""
    one = Task(name="a", max_retries=1, retry_delay=timedelta(0), retry_on=KeyError)
    two = Task(name="b", max_retries=1, retry_delay=timedelta(0), retry_on=[KeyError, OSError])
    assert one.retry_on == (KeyError,)
    assert two.retry_on == (KeyError, OSError)


def test_task_args_override_settings_on_a_copy() -> None:
    """t(..., task_args={...}) binds a copy with the new settings; the original is unchanged."""
    t = task(inc, name="inc")
    with Flow("f") as flow:
        renamed = t(1, task_args={"name": "renamed", "tags": ["x"]})
    assert renamed is not t
    assert (renamed.name, renamed.tags) == ("renamed", frozenset({"x"}))
    assert t.name == "inc"
    assert t not in flow.tasks


def test_task_args_are_validated() -> None:
    """Unknown or contradictory task_args are refused."""
    t = task(inc, name="inc")
    with Flow("f"):
        with pytest.raises(TaskSettingsError, match="not a task setting"):
            t(1, task_args={"colour": "red"})
        with pytest.raises(TaskSettingsError):
            t(1, task_args={"max_retries": 2})


def test_calling_a_task_outside_a_flow_is_an_error() -> None:
    """Tasks are bound inside `with Flow(...)` (or with flow=)."""
    with pytest.raises(FlowGraphError):
        task(inc)(1)
    flow = Flow("explicit")
    bound = task(inc)(1, flow=flow)
    assert bound in flow.tasks


def test_wrong_arguments_name_the_task() -> None:
    """Binding arguments the function does not take raises TypeError naming the task."""
    with Flow("f"), pytest.raises(TypeError, match="inc"):
        task(inc, name="inc")(1, 2)


def test_parameters_cannot_be_called() -> None:
    """Parameters are used as arguments of tasks, never called."""
    with pytest.raises(TypeError):
        Parameter("x")(1)


# ----- building graphs ---------------------------------------------------------------------------


def test_calling_tasks_builds_keyed_edges_and_constants() -> None:
    """Task arguments become keyed edges; literal arguments become flow constants."""
    with Flow("f") as flow:
        x = Parameter("x", default=1)
        a = task(inc, name="a")(x)
        b = task(add, name="b")(a, y=10)
    assert edges_into(flow, a) == {("x", "x", False, False)}
    assert edges_into(flow, b) == {("a", "x", False, False)}
    assert flow.constants[b] == {"y": 10}
    assert len(flow.tasks) == 3


def test_upstream_tasks_add_state_only_edges() -> None:
    """upstream_tasks=[...] adds edges without a key."""
    with Flow("f") as flow:
        first = task(inc, name="first")(1)
        second = task(inc, name="second")(2, upstream_tasks=[first])
    assert edges_into(flow, second) == {("first", None, False, False)}


def test_edge_keys_are_the_keys_of_upstream_states() -> None:
    """The trigger receives `{Edge: State}` keyed by exactly the flow's edges into the task."""
    seen: list[Mapping[Edge, State]] = []

    def spy(upstream_states: Mapping[Edge, State]) -> bool:
        seen.append(upstream_states)
        return True

    with Flow("f") as flow:
        a = task(inc, name="a")(1)
        gate = task(inc, name="gate")(2)
        b = task(add, name="b", trigger=spy)(a, y=5, upstream_tasks=[gate])
    FlowRunner(flow).run()
    (received,) = seen
    assert set(received) == set(flow.edges_to(b))
    by_key = {e.key: s for e, s in received.items()}
    assert by_key["x"].result == 2
    assert by_key[None].result == 3
    assert Edge(a, b, key="x") in received


def test_map_marks_mapped_unmapped_and_flattened_arguments() -> None:
    """t.map(xs, y=unmapped(c)) maps xs, passes c whole; flatten(...) sets flattened."""
    with Flow("f") as flow:
        xs = task(lambda: [1, 2], name="xs")()
        c = task(lambda: 10, name="c")()
        nested = task(lambda: [[1], [2]], name="nested")()
        m = task(add, name="m").map(xs, y=unmapped(c))
        f = task(inc, name="f").map(flatten(nested))
    assert edges_into(flow, m) == {("xs", "x", True, False), ("c", "y", False, False)}
    assert edges_into(flow, f) == {("nested", "x", True, True)}


def test_map_over_a_literal_creates_a_constant_task() -> None:
    """A literal mapped over becomes a Constant[<type>] task on a mapped edge."""
    with Flow("f") as flow:
        m = task(add, name="m").map([1, 2, 3], y=unmapped(5))
    (constant,) = [t for t in flow.tasks if isinstance(t, Constant)]
    assert constant.name == "Constant[list]"
    assert constant.value == [1, 2, 3]
    assert edges_into(flow, m) == {("Constant[list]", "x", True, False)}
    assert flow.constants[m] == {"y": 5}


def test_set_upstream_and_set_downstream_add_edges() -> None:
    """set_upstream/set_downstream add (optionally keyed) edges."""
    a, b, c = Task(name="a"), Task(name="b"), Task(name="c")
    with Flow("f") as flow:
        b.set_upstream(a)
        b.set_downstream(c, key="x")
    assert {(e.upstream_task.name, e.downstream_task.name, e.key) for e in flow.edges} == {
        ("a", "b", None),
        ("b", "c", "x"),
    }


def test_flow_accepts_tasks_and_edges_in_its_constructor() -> None:
    """Flow(name, tasks=..., edges=...) builds the same graph."""
    a, b = Task(name="a"), Task(name="b")
    flow = Flow("f", tasks=[a], edges=[Edge(a, b, key="x")])
    assert flow.tasks == {a, b}
    assert flow.edges == {Edge(a, b, key="x")}


def test_a_cycle_is_refused() -> None:
    """An edge that would close a cycle raises FlowGraphError; a self-edge too."""
    a, b, c = Task(name="a"), Task(name="b"), Task(name="c")
    flow = Flow("f")
    flow.add_edge(a, b)
    flow.add_edge(b, c)
    with pytest.raises(FlowGraphError, match="cycle"):
        flow.add_edge(c, a)
    with pytest.raises(FlowGraphError, match="cycle"):
        flow.add_edge(a, a)
    assert len(flow.edges) == 2


def test_an_argument_bound_twice_is_refused() -> None:
    """Two edges with the same key into one task raise FlowGraphError."""
    a, b, t = Task(name="a"), Task(name="b"), Task(name="t")
    flow = Flow("f")
    flow.add_edge(a, t, key="x")
    flow.add_edge(a, t, key="x")  # the same edge again is a no-op
    with pytest.raises(FlowGraphError, match="bound twice"):
        flow.add_edge(b, t, key="x")


def test_the_same_function_called_twice_gets_numbered_slugs() -> None:
    """Copies of one task get stable slugs name-1, name-2 in call order."""
    t = task(inc, name="inc")
    with Flow("f") as flow:
        first = t(1)
        second = t(first)
        third = t(second)
    assert [flow.slugs[x] for x in (first, second, third)] == ["inc-1", "inc-2", "inc-3"]
    assert flow.task_by_slug("inc-2") is second


def test_parameters_use_their_name_as_slug_and_must_be_unique() -> None:
    """Parameter slugs are their names; two Parameters of one name clash."""
    with Flow("f") as flow:
        x = Parameter("x")
        task(inc, name="t")(x)
    assert flow.slugs[x] == "x"
    with pytest.raises(FlowGraphError, match="used twice"):
        flow.add_task(Parameter("x"))


def test_an_explicit_slug_is_kept() -> None:
    """A task given slug=... keeps it."""
    flow = Flow("f")
    t = flow.add_task(Task(name="t", slug="custom"))
    assert flow.slugs[t] == "custom"


def test_nout_unpacks_into_get_item_tasks() -> None:
    """With nout=2, tuple-unpacking gives GetItem tasks name[0], name[1] that index the result."""

    @task(nout=2)
    def pair() -> tuple[int, int]:
        return (8, 2)

    with Flow("f") as flow:
        first, second = pair()
        total = task(add, name="total")(first, second)
    assert isinstance(first, GetItem)
    assert (first.name, second.name) == ("pair[0]", "pair[1]")
    state = FlowRunner(flow).run().state
    assert state.result[total].result == 10
    assert state.result[first].result == 8


def test_a_task_without_nout_cannot_be_unpacked() -> None:
    """Iterating a task without nout is a TypeError."""
    with Flow("f"), pytest.raises(TypeError, match="nout"):
        _first, _second = task(lambda: (1, 2), name="t")()


def test_sorted_tasks_is_a_stable_topological_order() -> None:
    """Upstreams come first; ties keep insertion order."""
    with Flow("f") as flow:
        a = task(inc, name="a")(1)
        b = task(inc, name="b")(2)
        c = task(add, name="c")(b, a)
        d = task(inc, name="d")(c)
    assert flow.sorted_tasks() == [a, b, c, d]
    assert list(flow) == [a, b, c, d]


def test_terminal_tasks_are_the_default_reference_tasks() -> None:
    """Reference tasks default to the terminal tasks, or are set explicitly."""
    with Flow("f") as flow:
        a = task(inc, name="a")(1)
        b = task(inc, name="b")(a)
        c = task(inc, name="c")(2)
    assert flow.terminal_tasks() == {b, c}
    assert flow.reference_tasks() == {b, c}
    flow.set_reference_tasks([a])
    assert flow.reference_tasks() == {a}


# ----- fingerprint -------------------------------------------------------------------------------


def build(
    extra_edge: bool = False,
    retries: int = 0,
    constant: int = 10,
    trigger: Callable[..., bool] = triggers.all_successful,
) -> Flow:
    """A small flow, built from scratch on every call."""
    with Flow("fp") as flow:
        x = Parameter("x", default=1)
        a = task(inc, name="a")(x)
        settings: dict[str, Any] = {"trigger": trigger}
        if retries:
            settings.update(max_retries=retries, retry_delay=timedelta(seconds=1))
        b = task(add, name="b", **settings)(a, y=constant)
        m = task(inc, name="m").map([1, 2])
        if extra_edge:
            b.set_upstream(m)
    return flow


def test_the_fingerprint_is_stable_across_builds() -> None:
    """Two builds of the same flow (new task objects) have the same fingerprint."""
    first, second = build(), build()
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 16
    int(first.fingerprint(), 16)


@pytest.mark.parametrize(
    "changed",
    [
        {"extra_edge": True},
        {"retries": 2},
        {"constant": 11},
        {"trigger": triggers.all_finished},
    ],
    ids=["edge", "retries", "constant", "trigger"],
)
def test_the_fingerprint_changes_with_the_structure(changed: dict[str, Any]) -> None:
    """An edge, a setting, a constant or a trigger more or less gives another fingerprint."""
    assert build(**changed).fingerprint() != build().fingerprint()


def test_the_fingerprint_depends_on_the_flow_name() -> None:
    """Two flows with the same graph but different names differ."""
    a, b = Flow("one"), Flow("two")
    a.add_task(Task(name="t"))
    b.add_task(Task(name="t"))
    assert a.fingerprint() != b.fingerprint()
