"""Every pair of state classes against the transition rules, with the table written out here.

The expected tables below are deliberately spelled out by hand: a change to
engine/orchestration/rules.py must be matched here, so it is never accidental.
"""

from __future__ import annotations

import itertools

import pytest

from engine.orchestration import MANUAL_TARGETS, TRANSITIONS, allowed, allowed_manually
from engine.state import STATE_CLASSES

NAMES = sorted(STATE_CLASSES)
PENDING = {"Pending", "Scheduled", "Paused", "Resume", "Retrying"}
FINISHED = {
    "Finished",
    "Looped",
    "Success",
    "Cached",
    "Mapped",
    "Skipped",
    "Cancelled",
    "Failed",
    "TimedOut",
    "TriggerFailed",
    "ValidationFailed",
}
RUN_OUTCOMES = FINISHED - {"Looped"}
FAILED = {"Failed", "TimedOut", "TriggerFailed", "ValidationFailed"}

# Every state a worker may still be working from can be stopped by a cancel (-> Cancelling).
CANCELLABLE = PENDING | FAILED | {"Submitted", "Queued", "Running", "Looped", "Success", "Cached"}

EXPECTED: dict[str, set[str]] = {
    # not yet run: dispatch, claim, or end without running
    **{
        name: PENDING | {"Submitted", "Queued", "Running", "Cancelling"} | RUN_OUTCOMES
        for name in PENDING
    },
    "Submitted": PENDING | {"Queued", "Running", "Cancelling"} | RUN_OUTCOMES,
    "Queued": PENDING | {"Submitted", "Running", "Cancelling"} | RUN_OUTCOMES,
    "ClientFailed": set(),
    # a running body ends in any outcome, a loop iteration, a retry or a pause
    "Running": FINISHED | {"Retrying", "Paused", "Cancelling"},
    "Cancelling": {"Cancelled"},
    # terminal states absorb, except for these edges
    "Looped": {"Pending", "Cancelling"},
    **{name: {"Retrying", "Cancelling"} for name in FAILED},
    "Success": {"Cached", "Cancelling"},
    "Cached": {"Pending", "TriggerFailed", "Skipped", "Paused", "Cancelling"},
    "Mapped": set(),
    "Skipped": set(),
    "Cancelled": set(),
    "Finished": set(),
    "State": set(),
}
MANUAL = (PENDING | FINISHED) - {"Looped", "Mapped"}
NOT_MANUALLY_SETTABLE = {"Running", "Cancelling", "Submitted", "Queued", "ClientFailed"}


def test_the_expected_table_covers_every_state_class() -> None:
    """The hand-written table has a row for every class in STATE_CLASSES, and nothing else."""
    assert set(EXPECTED) == set(STATE_CLASSES)
    assert set().union(*EXPECTED.values()) <= set(STATE_CLASSES)


def test_the_rules_table_only_names_real_state_classes() -> None:
    """Every name in TRANSITIONS (rows and cells) is a state class."""
    assert set(TRANSITIONS) <= set(STATE_CLASSES)
    for targets in TRANSITIONS.values():
        assert set(targets) <= set(STATE_CLASSES)


@pytest.mark.parametrize("previous", NAMES)
def test_allowed_matches_the_table_for_every_pair(previous: str) -> None:
    """For each state, rules.allowed(previous, new) is True exactly for the listed targets."""
    assert {new for new in NAMES if allowed(previous, new)} == EXPECTED[previous]


def test_a_task_run_is_born_pending() -> None:
    """From no state at all, only Pending is allowed."""
    assert {new for new in NAMES if allowed(None, new)} == {"Pending"}


@pytest.mark.parametrize("previous", sorted(FINISHED))
def test_terminal_states_absorb_except_the_listed_edges(previous: str) -> None:
    """A finished state can only be left along the edges the table lists."""
    leaving = {new for new in NAMES if allowed(previous, new)}
    exceptions = {
        "Looped": {"Pending", "Cancelling"},
        "Success": {"Cached", "Cancelling"},
        "Cached": {"Pending", "TriggerFailed", "Skipped", "Paused", "Cancelling"},
        **{name: {"Retrying", "Cancelling"} for name in FAILED},
    }
    assert leaving == exceptions.get(previous, set())


def test_exactly_the_cancellable_states_may_go_to_cancelling() -> None:
    """Cancelling follows every state a worker may still be working from, and nothing else."""
    assert {name for name in NAMES if allowed(name, "Cancelling")} == CANCELLABLE


def test_meta_states_and_running_never_follow_a_finished_state() -> None:
    """No finished state may go back to Running or to a meta state."""
    for previous, new in itertools.product(FINISHED, ["Running", "Submitted", "Queued"]):
        assert not allowed(previous, new), (previous, new)


def test_manual_targets_are_pending_and_finished_states_but_looped_and_mapped() -> None:
    """MANUAL_TARGETS is exactly the states an operator may set."""
    assert set(MANUAL_TARGETS) == MANUAL
    assert not MANUAL_TARGETS & NOT_MANUALLY_SETTABLE


@pytest.mark.parametrize("previous", NAMES)
def test_allowed_manually_matches_the_manual_rules_for_every_pair(previous: str) -> None:
    """An operator may set any manual target on any run that is not Running or Cancelling."""
    expected = set() if previous in {"Running", "Cancelling"} else MANUAL
    assert {new for new in NAMES if allowed_manually(previous, new)} == expected


def test_nothing_is_set_manually_on_a_task_run_that_does_not_exist() -> None:
    """allowed_manually(None, ...) is always False."""
    assert [new for new in NAMES if allowed_manually(None, new)] == []
