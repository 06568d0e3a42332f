"""Mapping: the pure helpers that shape what parents and children see, and mapped flows (§8)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from engine import Flow, flatten, signals, task, unmapped
from engine.clock import FixedClock
from engine.edges import Edge
from engine.flow_runner import FlowRunner
from engine.mapping import (
    child_count,
    flatten_mapped_children,
    flatten_value,
    flattened,
    flattened_upstream,
    upstream_for_child,
    upstream_for_parent,
)
from engine.state import Failed, Mapped, Skipped, State, Success, TriggerFailed
from engine.task import Task

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
CHILD = Task(name="child")


def edge(name: str, mapped: bool = False, flat: bool = False, key: str | None = "x") -> Edge:
    """An edge from a fresh task called `name` into CHILD."""
    return Edge(Task(name=name), CHILD, key=key, mapped=mapped, flattened=flat)


def run(flow: Flow) -> dict[str, State]:
    """Run `flow` locally and return final states by task name."""
    outcome = FlowRunner(flow, clock=FixedClock(NOW)).run(flow_run_id="map-test")
    return {t.name: s for t, s in outcome.state.result.items()}


def children(state: State) -> list[State | None]:
    """The children of a Mapped state."""
    assert isinstance(state, Mapped), state
    return list(state.map_states)


# ----- flatten helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([[1, 2], [3], []], [1, 2, 3]),
        (((1,), (2, 3)), [1, 2, 3]),
        ([1, [2]], [1, [2]]),
        (["ab", "c"], ["ab", "c"]),
        (5, 5),
        ([], []),
    ],
)
def test_flatten_value_concatenates_one_level_of_nesting(value: Any, expected: Any) -> None:
    """Nested sequences are concatenated once; anything not nested is left alone."""
    assert flatten_value(value) == expected


def test_flatten_mapped_children_expands_successful_sequence_results() -> None:
    """Each successful child with a sequence gives one pseudo-child per element."""
    children: list[State | None] = [Success(result=[1, 2]), Success(result=[3])]
    flat = flatten_mapped_children(children)
    assert [s.result for s in flat] == [1, 2, 3]
    assert all(type(s) is Success for s in flat)


def test_flatten_mapped_children_passes_failed_and_skipped_children_through_once() -> None:
    """Children that are not successful, or Skipped, are kept whole; None entries are dropped."""
    failed, skipped = Failed(result=[9, 9]), Skipped(result=[7, 7])
    flat = flatten_mapped_children([failed, None, skipped, Success(result=5)])
    assert flat[:2] == [failed, skipped]
    assert flat[0] is failed
    assert flat[2].result == 5


def test_flattened_upstream_leaves_unflattened_edges_alone() -> None:
    """Without flatten the state is handed over as is."""
    state = Success(result=[[1], [2]])
    assert flattened_upstream(edge("a"), state) is state


def test_flattened_upstream_flattens_a_plain_result() -> None:
    """A plain upstream on a flattened edge has its result concatenated."""
    out = flattened_upstream(edge("a", flat=True), Success("m", result=[[1], [2, 3]]))
    assert type(out) is Success
    assert out.message == "m"
    assert out.result == [1, 2, 3]


def test_flattened_upstream_expands_the_children_of_a_mapped_upstream() -> None:
    """A Mapped upstream on a flattened edge becomes a Mapped of pseudo-children."""
    mapped = Mapped(map_states=[Success(result=[1, 2]), Failed()])
    out = flattened_upstream(edge("a", flat=True), mapped)
    assert isinstance(out, Mapped)
    assert [type(s).__name__ for s in out.map_states if s is not None] == [
        "Success",
        "Success",
        "Failed",
    ]
    assert out.result[:2] == [1, 2]


def test_upstream_for_parent_flattens_plain_upstreams_and_keeps_mapped_ones() -> None:
    """The parent sees flattened plain results, but a Mapped upstream as is (children counted)."""
    plain, mapped = edge("plain", mapped=True, flat=True), edge("m", mapped=True, flat=True)
    mapped_state = Mapped(map_states=[Success(result=[1, 2])])
    out = upstream_for_parent({plain: Success(result=[[1], [2]]), mapped: mapped_state})
    assert out[plain].result == [1, 2]
    assert out[mapped] is mapped_state


def test_flattened_flattens_every_flattened_edge() -> None:
    """flattened() applies flattened_upstream edge by edge."""
    flat, whole = edge("f", flat=True), edge("w")
    out = flattened({flat: Success(result=[[1], [2]]), whole: Success(result=[[3]])})
    assert out[flat].result == [1, 2]
    assert out[whole].result == [[3]]


# ----- child_count / upstream_for_child ----------------------------------------------------------


def test_child_count_is_the_shortest_mapped_source() -> None:
    """Mapped edges count their length (a Mapped upstream its children); others do not count."""
    states: dict[Edge, State] = {
        edge("a", mapped=True): Success(result=[1, 2, 3]),
        edge("b", mapped=True): Mapped(map_states=[Success(), Success()]),
        edge("c"): Success(result=[1]),
    }
    assert child_count(states) == 2


def test_child_count_without_mapped_edges_is_zero() -> None:
    """No mapped edge means no children."""
    assert child_count({edge("a"): Success(result=[1, 2])}) == 0
    assert child_count({}) == 0


def test_upstream_for_child_indexes_mapped_sources_only() -> None:
    """Child i gets result[i] of plain mapped sources, child i of Mapped ones, others whole."""
    plain, over_map, whole = edge("p", mapped=True), edge("m", mapped=True), edge("w", key="y")
    second = Success(result="b")
    whole_state = Success(result=[0])
    states: dict[Edge, State] = {
        plain: Success("plain", result=[10, 20]),
        over_map: Mapped(map_states=[Success(result="a"), second]),
        whole: whole_state,
    }
    child = upstream_for_child(states, 1)
    assert child[plain].result == 20
    assert child[plain].message == "plain"
    assert child[over_map] is second
    assert child[whole] is whole_state


# ----- mapped flows ------------------------------------------------------------------------------


def double(x: int) -> int:
    """2x."""
    return 2 * x


def total(xs: list[int]) -> int:
    """sum(xs)."""
    return sum(xs)


def test_a_map_runs_one_child_per_element_and_a_reduce_sees_the_list() -> None:
    """map([1, 2, 3]) gives three children; the reduce receives their results in order."""
    with Flow("m") as flow:
        doubled = task(double, name="double").map([1, 2, 3])
        task(total, name="total")(doubled)
    states = run(flow)
    parent = states["double"]
    assert isinstance(parent, Mapped)
    assert parent.result == [2, 4, 6]
    assert [type(c).__name__ for c in parent.map_states] == ["Success"] * 3
    assert states["total"].result == 12


def test_a_map_over_a_map_pairs_children_index_by_index() -> None:
    """Mapping over a Mapped upstream gives child i the upstream's child i."""
    with Flow("m") as flow:
        first = task(double, name="first").map([1, 2])
        task(double, name="second").map(first)
    assert run(flow)["second"].result == [4, 8]


def test_an_unmapped_argument_goes_whole_to_every_child() -> None:
    """unmapped(c) gives every child the same value."""

    def add(x: int, y: int) -> int:
        return x + y

    with Flow("m") as flow:
        c = task(lambda: 100, name="c")()
        task(add, name="add").map([1, 2], y=unmapped(c))
    assert run(flow)["add"].result == [101, 102]


def test_the_shortest_mapped_input_decides_the_number_of_children() -> None:
    """Two mapped inputs of lengths 3 and 2 give 2 children."""

    def add(x: int, y: int) -> int:
        return x + y

    with Flow("m") as flow:
        task(add, name="add").map([1, 2, 3], [10, 20])
    assert run(flow)["add"].result == [11, 22]


def test_an_empty_map_gives_zero_children_and_an_empty_reduce() -> None:
    """Mapping over [] gives Mapped with no children; a map over it too; a reduce gets []."""
    with Flow("m") as flow:
        empty = task(double, name="first").map([])
        again = task(double, name="second").map(empty)
        task(total, name="total")(again)
    states = run(flow)
    assert isinstance(states["first"], Mapped)
    assert isinstance(states["second"], Mapped)
    assert states["second"].map_states == ()
    assert states["total"].result == 0


def test_flatten_maps_over_the_elements_of_mapped_children() -> None:
    """flatten(mapped) gives one child per element of every child's list."""

    def repeat(x: int) -> list[int]:
        return [x] * x

    with Flow("m") as flow:
        lists = task(repeat, name="repeat").map([1, 2])
        task(double, name="double").map(flatten(lists))
    assert run(flow)["double"].result == [2, 4, 4]


def test_a_failing_child_fails_only_itself_and_its_mapped_downstream_child() -> None:
    """Child 1 fails; the mapped-over-mapped child 1 is TriggerFailed; the others run."""

    def fragile(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    with Flow("m") as flow:
        first = task(fragile, name="fragile").map([1, 2, 3])
        task(double, name="double").map(first)
    states = run(flow)
    first_children = children(states["fragile"])
    second_children = children(states["double"])
    assert [type(c) for c in first_children] == [Success, Failed, Success]
    assert [type(c) for c in second_children] == [Success, TriggerFailed, Success]


def test_a_skipped_upstream_skips_the_mapped_parent() -> None:
    """A Skipped upstream makes the parent Skipped; it never maps."""

    def skip() -> list[int]:
        raise signals.SKIP("no data")

    with Flow("m") as flow:
        xs = task(skip, name="xs")()
        task(double, name="double").map(xs)
    assert type(run(flow)["double"]) is Skipped


def test_a_failed_upstream_next_to_a_good_one_fails_every_child() -> None:
    """A Failed source beside a good one still maps N children, each TriggerFailed (Prefect)."""

    def bad() -> list[int]:
        raise ValueError("no")

    def add(x: int, y: int) -> int:
        return x + y

    with Flow("m") as flow:
        good = task(lambda: [1, 2, 3], name="good")()
        failing = task(bad, name="bad")()
        task(add, name="add").map(good, failing)
    outcome = FlowRunner(flow, clock=FixedClock(NOW)).run(flow_run_id="map-fail")
    states = {t.name: s for t, s in outcome.state.result.items()}
    assert [type(c) for c in children(states["add"])] == [TriggerFailed] * 3
    assert type(outcome.state).__name__ == "Failed"
