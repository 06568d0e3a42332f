"""Time as an injected dependency.

The engine never reads the wall clock itself: every function that needs "now"
takes it as an argument, and the shells pass a `Clock`. `SystemClock` is the
single sanctioned place that reads real time; tests use `FixedClock`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that says what time it is (aware, UTC)."""

    def __call__(self) -> datetime: ...


class SystemClock:
    """The real clock, for shells (local runner, services)."""

    def __call__(self) -> datetime:
        # stdlib datetime: pendulum.from_timestamp costs ~10x more, and the
        # engine only needs an aware UTC datetime (states normalise their own).
        return datetime.now(UTC)


def real_sleep(seconds: float) -> None:
    """Block the calling thread (the local runner waiting for a retry's start time)."""
    time.sleep(seconds)


class FixedClock:
    """A clock that moves only when told to: deterministic tests and replays."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward; usable as the runner's `sleep`."""
        self._now = self._now + timedelta(seconds=seconds)
