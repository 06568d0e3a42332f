"""Triggers over every kind of upstream mix, with Prefect 1's messages (spec §7)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from engine import signals, triggers
from engine.context import bound
from engine.edges import Edge
from engine.state import (
    Cached,
    Cancelled,
    Failed,
    Looped,
    Mapped,
    Paused,
    Pending,
    Retrying,
    Running,
    Skipped,
    State,
    Success,
    TimedOut,
    TriggerFailed,
    ValidationFailed,
)
from engine.task import Task

Trigger = Callable[[Mapping[Edge, State]], bool]
DOWNSTREAM = Task(name="downstream")


def ups(*states: State, mapped: bool = False) -> dict[Edge, State]:
    """One edge (from its own upstream task) per state."""
    return {
        Edge(Task(name=f"up{i}"), DOWNSTREAM, key=f"x{i}", mapped=mapped): s
        for i, s in enumerate(states)
    }


def fails_with(trigger: Trigger, upstream: Mapping[Edge, State]) -> str:
    """The message of the TRIGGERFAIL the trigger raises."""
    with pytest.raises(signals.TRIGGERFAIL) as info:
        trigger(upstream)
    state = info.value.state
    assert type(state) is TriggerFailed
    assert state.result is info.value
    assert state.message is not None
    return state.message


SUCCESSES = [Success(), Skipped(), Cached(), Mapped(map_states=[Success()])]
FAILURES = [Failed(), TimedOut(), TriggerFailed(), ValidationFailed()]
NEITHER = [Cancelled(), Looped()]
UNFINISHED = [Pending(), Running(), Retrying(), Paused()]


# ----- all_successful ----------------------------------------------------------------------------


def test_all_successful_passes_without_upstreams() -> None:
    """all(...) over nothing is true."""
    assert triggers.all_successful({}) is True


def test_all_successful_counts_skipped_cached_and_mapped_as_success() -> None:
    """Every successful kind passes (Skipped counts as success everywhere)."""
    assert triggers.all_successful(ups(*SUCCESSES)) is True


@pytest.mark.parametrize("other", [*FAILURES, *NEITHER, *UNFINISHED], ids=repr)
def test_all_successful_fails_on_anything_not_successful(other: State) -> None:
    """One upstream that is not successful fails the trigger with Prefect's message."""
    assert fails_with(triggers.all_successful, ups(Success(), other)) == (
        'Trigger was "all_successful" but some of the upstream tasks failed.'
    )


@pytest.mark.parametrize("mapped", [False, True])
def test_all_successful_sees_the_children_of_a_mapped_upstream(mapped: bool) -> None:
    """A Mapped upstream contributes its children, whatever the edge."""
    children = Mapped(map_states=[Success(), Failed()])
    with pytest.raises(signals.TRIGGERFAIL):
        triggers.all_successful(ups(children, mapped=mapped))


def test_all_successful_passes_a_mapped_upstream_without_children() -> None:
    """A Mapped upstream with zero children adds no state to check."""
    assert triggers.all_successful(ups(Mapped(map_states=[]), Success())) is True


# ----- all_failed --------------------------------------------------------------------------------


def test_all_failed_passes_when_every_upstream_failed() -> None:
    """Failed and its subclasses all count as failures."""
    assert triggers.all_failed(ups(*FAILURES)) is True
    assert triggers.all_failed({}) is True


@pytest.mark.parametrize("other", [*SUCCESSES, *NEITHER], ids=repr)
def test_all_failed_fails_when_any_upstream_did_not_fail(other: State) -> None:
    """Any non-failed upstream fails all_failed."""
    assert fails_with(triggers.all_failed, ups(Failed(), other)) == (
        'Trigger was "all_failed" but some of the upstream tasks succeeded.'
    )


def test_all_failed_sees_mapped_children() -> None:
    """A Mapped upstream whose children all failed passes all_failed."""
    assert triggers.all_failed(ups(Mapped(map_states=[Failed(), TimedOut()]))) is True


# ----- any_successful / any_failed ---------------------------------------------------------------


def test_any_successful_passes_with_one_success_among_failures() -> None:
    """One successful upstream (Skipped too) is enough."""
    assert triggers.any_successful(ups(Failed(), Failed(), Skipped())) is True
    assert triggers.any_successful({}) is True


def test_any_successful_fails_when_nothing_succeeded() -> None:
    """No successful upstream fails any_successful."""
    assert fails_with(triggers.any_successful, ups(Failed(), Cancelled())) == (
        'Trigger was "any_successful" but none of the upstream tasks succeeded.'
    )


def test_any_successful_finds_a_successful_mapped_child() -> None:
    """One successful child of a Mapped upstream is enough."""
    assert triggers.any_successful(ups(Mapped(map_states=[Failed(), Success()]))) is True


def test_any_failed_passes_with_one_failure_among_successes() -> None:
    """One failed upstream (TimedOut too) is enough."""
    assert triggers.any_failed(ups(Success(), TimedOut())) is True
    assert triggers.any_failed({}) is True


def test_any_failed_fails_when_nothing_failed() -> None:
    """No failed upstream fails any_failed."""
    assert fails_with(triggers.any_failed, ups(Success(), Skipped(), Cancelled())) == (
        'Trigger was "any_failed" but none of the upstream tasks failed.'
    )


def test_any_failed_finds_a_failed_mapped_child() -> None:
    """One failed child of a Mapped upstream is enough."""
    assert triggers.any_failed(ups(Success(), Mapped(map_states=[Success(), Failed()]))) is True


# ----- all_finished / always_run -----------------------------------------------------------------


def test_all_finished_passes_for_any_finished_mix() -> None:
    """Successes, failures, Cancelled and Looped are all finished."""
    assert triggers.all_finished(ups(*SUCCESSES, *FAILURES, *NEITHER)) is True


@pytest.mark.parametrize("unfinished", UNFINISHED, ids=repr)
def test_all_finished_fails_for_an_unfinished_upstream(unfinished: State) -> None:
    """An unfinished upstream fails all_finished."""
    assert fails_with(triggers.all_finished, ups(Success(), unfinished)) == (
        'Trigger was "all_finished" but some of the upstream tasks were not finished.'
    )


def test_always_run_is_all_finished() -> None:
    """always_run is Prefect's alias of all_finished."""
    assert triggers.always_run is triggers.all_finished


# ----- manual_only -------------------------------------------------------------------------------


def test_manual_only_pauses_without_resume() -> None:
    """Without context resume, manual_only raises PAUSE('Trigger function is "manual_only"')."""
    with pytest.raises(signals.PAUSE) as info:
        triggers.manual_only(ups(Success()))
    assert type(info.value.state) is Paused
    assert info.value.state.message == 'Trigger function is "manual_only"'


def test_manual_only_passes_once_resumed() -> None:
    """With context resume=True, manual_only passes whatever the upstreams."""
    with bound({"resume": True}):
        assert triggers.manual_only(ups(Failed())) is True


# ----- not_all_skipped ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upstream",
    [{}, ups(Skipped()), ups(Skipped(), Mapped(map_states=[Skipped()]))],
    ids=["no-upstream", "one-skipped", "skipped-and-skipped-children"],
)
def test_not_all_skipped_skips_when_every_upstream_skipped(upstream: dict[Edge, State]) -> None:
    """All skipped (including no upstream at all) raises SKIP with result None."""
    with pytest.raises(signals.SKIP) as info:
        triggers.not_all_skipped(upstream)
    assert type(info.value.state) is Skipped
    assert info.value.state.message == "All upstreams were skipped"
    assert info.value.state.result is None


def test_not_all_skipped_passes_when_some_succeeded() -> None:
    """Skipped beside a real success passes."""
    assert triggers.not_all_skipped(ups(Skipped(), Success())) is True


def test_not_all_skipped_fails_on_a_failure() -> None:
    """A failure beside skipped upstreams fails the trigger."""
    assert fails_with(triggers.not_all_skipped, ups(Skipped(), Failed())) == (
        'Trigger was "not_all_skipped" but some of the upstream tasks failed.'
    )


# ----- some_successful / some_failed -------------------------------------------------------------


def mix(successes: int, failures: int) -> dict[Edge, State]:
    """`successes` Success and `failures` Failed upstreams."""
    return ups(*[Success() for _ in range(successes)], *[Failed() for _ in range(failures)])


@pytest.mark.parametrize(
    ("at_least", "at_most", "successes", "failures", "passes"),
    [
        (1, None, 1, 3, True),
        (1, None, 0, 3, False),
        (2, 3, 3, 1, True),
        (2, 3, 4, 0, False),
        (None, 1, 2, 2, False),
        (None, None, 0, 4, True),
        (0.5, None, 2, 2, True),
        (0.5, None, 1, 3, False),
        (None, 0.5, 3, 1, False),
        (None, 0.5, 2, 2, True),
        (0.25, 0.75, 1, 3, True),
        (0.25, 0.75, 4, 0, False),
    ],
)
def test_some_successful_applies_counts_and_fractions(
    at_least: float | None, at_most: float | None, successes: int, failures: int, passes: bool
) -> None:
    """Bounds >= 1 are counts, bounds < 1 fractions of the upstream states; missing = 0 / n."""
    trigger = triggers.some_successful(at_least=at_least, at_most=at_most)
    upstream = mix(successes, failures)
    if passes:
        assert trigger(upstream) is True
    else:
        assert fails_with(trigger, upstream) == (
            'Trigger was "some_successful" but thresholds were not met.'
        )


@pytest.mark.parametrize(
    ("at_least", "at_most", "successes", "failures", "passes"),
    [
        (1, None, 3, 1, True),
        (1, None, 4, 0, False),
        (None, 1, 2, 2, False),
        (0.5, None, 2, 2, True),
        (0.5, None, 3, 1, False),
        (None, 0.25, 3, 1, True),
        (None, 0.25, 2, 2, False),
    ],
)
def test_some_failed_applies_counts_and_fractions(
    at_least: float | None, at_most: float | None, successes: int, failures: int, passes: bool
) -> None:
    """The same bounds rules, counting failures."""
    trigger = triggers.some_failed(at_least=at_least, at_most=at_most)
    upstream = mix(successes, failures)
    if passes:
        assert trigger(upstream) is True
    else:
        assert fails_with(trigger, upstream) == (
            'Trigger was "some_failed" but thresholds were not met.'
        )


@pytest.mark.parametrize("make", [triggers.some_successful, triggers.some_failed])
def test_threshold_triggers_pass_without_upstreams(make: Callable[..., Trigger]) -> None:
    """No upstream states at all passes even an unmeetable threshold."""
    assert make(at_least=5)({}) is True


def test_threshold_triggers_count_mapped_children() -> None:
    """A Mapped upstream's children are the states counted."""
    upstream = ups(Mapped(map_states=[Success(), Success(), Failed()]), mapped=True)
    assert triggers.some_successful(at_least=2)(upstream) is True
    with pytest.raises(signals.TRIGGERFAIL):
        triggers.some_failed(at_least=2)(upstream)


def test_threshold_triggers_are_named_for_the_fingerprint() -> None:
    """The returned trigger functions carry their factory's name."""
    assert triggers.trigger_name(triggers.some_successful(1)) == "some_successful"
    assert triggers.trigger_name(triggers.some_failed(1)) == "some_failed"
    assert triggers.trigger_name(triggers.all_successful) == "all_successful"


# ----- identity dedup ----------------------------------------------------------------------------


def test_the_same_state_object_reached_through_two_edges_counts_once() -> None:
    """States are an identity set: one Success object via two edges is one success."""
    shared = Success()
    a, b = Task(name="a"), Task(name="b")
    upstream = {
        Edge(a, DOWNSTREAM, key="x"): shared,
        Edge(b, DOWNSTREAM, key="y"): shared,
    }
    with pytest.raises(signals.TRIGGERFAIL):
        triggers.some_successful(at_least=2)(upstream)


def test_equal_but_distinct_state_objects_count_separately() -> None:
    """Two equal Success values that are different objects are two successes."""
    assert triggers.some_successful(at_least=2)(ups(Success(), Success())) is True


def test_dedup_changes_the_denominator_of_a_fraction() -> None:
    """A failure shared by two edges counts once in both the failures and the total."""
    shared = Failed()
    a, b, c = Task(name="a"), Task(name="b"), Task(name="c")
    upstream = {
        Edge(a, DOWNSTREAM, key="x"): shared,
        Edge(b, DOWNSTREAM, key="y"): shared,
        Edge(c, DOWNSTREAM, key="z"): Success(),
    }
    # unique states: 1 failure out of 2 -> at_most 0.5 * 2 = 1 holds (3 states would give 2 > 1.5)
    assert triggers.some_failed(at_most=0.5)(upstream) is True


def test_a_child_shared_by_two_mapped_upstreams_counts_once() -> None:
    """Children reached through two Mapped upstreams are deduplicated too."""
    child = Failed()
    upstream = ups(Mapped(map_states=[child]), Mapped(map_states=[child]), Success())
    assert triggers.some_failed(at_most=0.5)(upstream) is True


# ----- a reduce over a map with zero children (Prefect tests the edge, not the states) ----------

NO_CHILDREN = Mapped(map_states=[])


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        (triggers.any_successful, "none of the upstream tasks succeeded."),
        (triggers.any_failed, "none of the upstream tasks failed."),
        (triggers.some_successful(at_least=1), "thresholds were not met."),
        (triggers.some_failed(at_least=1), "thresholds were not met."),
    ],
)
def test_an_edge_to_a_map_without_children_fails_the_any_and_some_triggers(
    trigger: Trigger, message: str
) -> None:
    """Prefect 1.4.1 checks `upstream_states` (edges) for emptiness, then counts no states."""
    with pytest.raises(signals.TRIGGERFAIL, match=message):
        trigger(ups(NO_CHILDREN))


def test_an_edge_to_a_map_without_children_passes_all_failed() -> None:
    """all(...) over no states is True."""
    assert triggers.all_failed(ups(NO_CHILDREN)) is True


def test_an_edge_to_a_map_without_children_skips_not_all_skipped() -> None:
    """All of no states are skipped: Skipped("All upstreams were skipped")."""
    with pytest.raises(signals.SKIP, match="All upstreams were skipped"):
        triggers.not_all_skipped(ups(NO_CHILDREN))


@pytest.mark.parametrize(
    "trigger",
    [triggers.any_successful, triggers.any_failed, triggers.some_successful(at_least=1)],
)
def test_a_task_without_upstream_edges_passes_the_any_and_some_triggers(trigger: Trigger) -> None:
    """No edge at all is the case those triggers let through."""
    assert trigger({}) is True
