"""Trigger functions: decide from the upstream states whether a task may run.

Each trigger takes `{Edge: State}` and returns True, returns False (the runner
turns that into TriggerFailed("Trigger failed")) or raises a signal. As in
Prefect 1, a Mapped upstream contributes its children instead of itself, and
the same state object reached through two edges counts once.

"No upstreams" means no upstream *edge*, as in Prefect 1.4.1 (`if upstream_states
and ...`, `if not upstream_states: return True`): a reduce over a Mapped
upstream with zero children has an edge but no states, so any_successful,
any_failed and some_* fail it, while the all_* triggers pass over nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from engine import signals
from engine.context import context

if TYPE_CHECKING:
    from engine.edges import Edge
    from engine.state import State

Trigger = Callable[[Mapping["Edge", "State"]], bool]


def _expanded_states(upstream_states: Mapping[Edge, State]) -> Iterator[State]:
    """Each upstream state, a Mapped one replaced by its children (in place, no copies)."""
    for state in upstream_states.values():
        if state.is_mapped():
            yield from (s for s in state.map_states if s is not None)  # type: ignore[attr-defined]
        else:
            yield state


def _unique_states(upstream_states: Mapping[Edge, State]) -> list[State]:
    seen: set[int] = set()
    states: list[State] = []
    for s in _expanded_states(upstream_states):
        if id(s) not in seen:
            seen.add(id(s))
            states.append(s)
    return states


def _fail(name: str, why: str) -> signals.TRIGGERFAIL:
    return signals.TRIGGERFAIL(f'Trigger was "{name}" but {why}')


def all_finished(upstream_states: Mapping[Edge, State]) -> bool:
    """Runs when every upstream finished, whatever its outcome."""
    if not all(s.is_finished() for s in _unique_states(upstream_states)):
        raise _fail("all_finished", "some of the upstream tasks were not finished.")
    return True


always_run = all_finished


def manual_only(upstream_states: Mapping[Edge, State]) -> bool:
    """Never runs on its own: pauses until a resume sets context `resume`."""
    if context.get("resume"):
        return True
    raise signals.PAUSE('Trigger function is "manual_only"')


def all_successful(upstream_states: Mapping[Edge, State]) -> bool:
    """Runs when every upstream succeeded (Skipped, Cached and Mapped count)."""
    # The default trigger, so once per task run: "all" needs no de-duplication,
    # so the states are checked where they are instead of collected first.
    if not all(s.is_successful() for s in _expanded_states(upstream_states)):
        raise _fail("all_successful", "some of the upstream tasks failed.")
    return True


def all_failed(upstream_states: Mapping[Edge, State]) -> bool:
    """Runs when every upstream failed."""
    if not all(s.is_failed() for s in _unique_states(upstream_states)):
        raise _fail("all_failed", "some of the upstream tasks succeeded.")
    return True


def any_successful(upstream_states: Mapping[Edge, State]) -> bool:
    """Runs when there is no upstream edge or at least one upstream succeeded."""
    if upstream_states and not any(s.is_successful() for s in _unique_states(upstream_states)):
        raise _fail("any_successful", "none of the upstream tasks succeeded.")
    return True


def any_failed(upstream_states: Mapping[Edge, State]) -> bool:
    """Runs when there is no upstream edge or at least one upstream failed."""
    if upstream_states and not any(s.is_failed() for s in _unique_states(upstream_states)):
        raise _fail("any_failed", "none of the upstream tasks failed.")
    return True


def not_all_skipped(upstream_states: Mapping[Edge, State]) -> bool:
    """Runs when all upstreams succeeded and not all were skipped.

    All skipped (including having no upstream at all) skips this task too.
    """
    states = _unique_states(upstream_states)
    if all(s.is_skipped() for s in states):
        raise signals.SKIP("All upstreams were skipped", result=None)
    if not all(s.is_successful() for s in states):
        raise _fail("not_all_skipped", "some of the upstream tasks failed.")
    return True


def _bounds(n: int, at_least: float | None, at_most: float | None) -> tuple[float, float]:
    low = 0.0 if at_least is None else (n * at_least if at_least < 1 else at_least)
    high = float(n) if at_most is None else (n * at_most if at_most < 1 else at_most)
    return low, high


def _threshold_trigger(
    name: str, predicate: Callable[[State], bool], at_least: float | None, at_most: float | None
) -> Trigger:
    def check(upstream_states: Mapping[Edge, State]) -> bool:
        if not upstream_states:
            return True
        # An edge to a Mapped upstream without children leaves no states: n = 0.
        states = _unique_states(upstream_states)
        low, high = _bounds(len(states), at_least, at_most)
        if not low <= sum(1 for s in states if predicate(s)) <= high:
            raise _fail(name, "thresholds were not met.")
        return True

    check.__name__ = name
    check.__qualname__ = name
    return check


def some_successful(at_least: float | None = None, at_most: float | None = None) -> Trigger:
    """Runs when the number (or fraction, if < 1) of successes is within bounds."""
    return _threshold_trigger("some_successful", lambda s: s.is_successful(), at_least, at_most)


def some_failed(at_least: float | None = None, at_most: float | None = None) -> Trigger:
    """Runs when the number (or fraction, if < 1) of failures is within bounds."""
    return _threshold_trigger("some_failed", lambda s: s.is_failed(), at_least, at_most)


def trigger_name(trigger: Callable[..., Any]) -> str:
    """A stable name for a trigger, used in the flow fingerprint."""
    return getattr(trigger, "__name__", repr(trigger))
