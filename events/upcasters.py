"""Every schema change of the event contract, as an upcaster (oldest first).

Add a function here whenever a type's `schema_version` goes up, and a line to
the change log in docs/events.md.
"""

from __future__ import annotations

from typing import Any

from events.upcasting import upcaster


@upcaster("task_run_transitioned", from_version=1)
def task_run_transitioned_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 added `attempt`; v1 records predate attempt tracking: attempt 1."""
    payload.setdefault("attempt", 1)
    return payload


@upcaster("run_requested", from_version=1)
def run_requested_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 added `reuse` (re-runs); a v1 request reuses nothing."""
    payload.setdefault("reuse", {})
    return payload
