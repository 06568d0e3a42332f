"""The transition rules, kept as data: which state classes may follow which.

Two tables: `TRANSITIONS` for changes proposed by task runs (what Prefect 1's
TaskRunner pipeline can produce), and `MANUAL_TARGETS` for operator-requested
set-state. Finished states absorb everything except the edges listed here
(a failure may be retried, a success cached, a loop iteration restarted).
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.state import STATE_CLASSES, Finished, Pending, Running, State


def _names(base: type[State]) -> frozenset[str]:
    return frozenset(n for n, c in STATE_CLASSES.items() if issubclass(c, base) and c is not State)


PENDING = _names(Pending)
RUNNING = _names(Running)
FINISHED = _names(Finished)
META = frozenset({"Submitted", "Queued", "ClientFailed"})
SCHEDULED = frozenset({"Scheduled", "Paused", "Resume", "Retrying"})
FAILED = frozenset({"Failed", "TimedOut", "TriggerFailed", "ValidationFailed"})
SUCCESSFUL = frozenset({"Success", "Cached", "Mapped", "Skipped"})

_RUN_OUTCOMES = FINISHED - {"Looped"}

_STEPS: Mapping[str, frozenset[str]] = {
    # Before running: dispatch, claim, or end without running (trigger, skip,
    # cache hit, mapping, manual_only pause, cache invalidation).
    **{name: PENDING | {"Submitted", "Queued", "Running"} | _RUN_OUTCOMES for name in PENDING},
    "Submitted": PENDING | {"Queued", "Running"} | _RUN_OUTCOMES,
    "Queued": PENDING | {"Submitted", "Running"} | _RUN_OUTCOMES,
    # A running body ends in any outcome, a loop iteration, a retry or a pause.
    "Running": FINISHED | {"Retrying", "Paused"},
    "Cancelling": frozenset({"Cancelled"}),
    # The next loop iteration starts from a fresh Pending.
    "Looped": frozenset({"Pending"}),
    # Failures may be retried.
    **{name: frozenset({"Retrying"}) for name in FAILED},
    # A fresh success may be cached.
    "Success": frozenset({"Cached"}),
    # A cached state found before the trigger can still be overridden by it, or
    # invalidated on a re-run.
    "Cached": frozenset({"Pending", "TriggerFailed", "Skipped", "Paused"}),
    "Mapped": frozenset(),
    "Skipped": frozenset(),
    "Cancelled": frozenset(),
    "ClientFailed": frozenset(),
}

LEADS_ON: frozenset[str] = frozenset(name for name, targets in _STEPS.items() if targets)
"""States a run can leave again: only these may be a step on the way (final=False)."""

CANCELLABLE: frozenset[str] = LEADS_ON - {"Cancelling"}
"""States a worker may still be working from: a cancel moves a run that has not
come to rest to Cancelling, and its worker's next proposal ends it Cancelled."""

TRANSITIONS: Mapping[str, frozenset[str]] = {
    name: targets | {"Cancelling"} if name in CANCELLABLE else targets
    for name, targets in _STEPS.items()
}

MANUAL_TARGETS: frozenset[str] = (PENDING | FINISHED) - {"Looped", "Mapped"}
"""States an operator may set by hand (not meta states, not Running: a claim
belongs to a worker; not Mapped: its children come from a mapped run)."""

INITIAL = "Pending"


def allowed(previous: str | None, new: str, *, mid_run: bool = False) -> bool:
    """True when a task run may move from `previous` to `new`.

    `mid_run`: `previous` is a step on the way of a run still in progress (proposed
    with final=False, e.g. the Failed before a Retrying). The run's next step may
    then also be anything a running run may become: a state handler can replace
    that step -- a handler raising on the Retrying transition ends the run
    `Failed -> Failed("Unexpected error while calling state handlers: ...")`.
    """
    if previous is None:
        return new == INITIAL
    if new in TRANSITIONS.get(previous, frozenset()):
        return True
    return mid_run and new in TRANSITIONS["Running"]


def allowed_manually(previous: str | None, new: str) -> bool:
    """True when an operator may set `new` (any non-Running state may be overridden)."""
    return previous is not None and previous not in RUNNING and new in MANUAL_TARGETS
