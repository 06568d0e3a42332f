"""The state blobs the ledger itself writes, and the check of proposed blobs.

Blobs are `State.serialize()` dicts. The fixed ones are built once: a blob is
never mutated after it is made, so sharing one dict between events is safe.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.state import (
    STATE_CLASSES,
    Cached,
    Cancelled,
    Cancelling,
    Failed,
    Pending,
    Resume,
    Retrying,
    Running,
    Submitted,
    Success,
)

PENDING: dict[str, Any] = Pending().serialize()
FLOW_RUNNING: dict[str, Any] = Running("Running flow.").serialize()
FLOW_CANCELLING: dict[str, Any] = Cancelling("Flow run is being cancelled.").serialize()
FLOW_CANCELLED: dict[str, Any] = Cancelled("Flow run was cancelled.").serialize()
TASK_CANCELLING: dict[str, Any] = Cancelling("Flow run is being cancelled.").serialize()
TASK_CANCELLED: dict[str, Any] = Cancelled("Flow run was cancelled.").serialize()
_SUBMITTED: dict[str, Any] = Submitted(state=Pending()).serialize()
_FLOW_FAILED: dict[str, Any] = Failed("Some reference tasks failed.").serialize()


_SUBMITTED_PENDING: dict[str, Any] = {**_SUBMITTED, "state": PENDING}


def submitted(inner: dict[str, Any]) -> dict[str, Any]:
    """Submitted(state=<inner>): dispatched to a worker, the inner state kept."""
    if inner is PENDING:
        # Nearly every first dispatch: one shared blob (blobs are never mutated),
        # which also lets the worker's state_of memo hit instead of deserializing.
        return _SUBMITTED_PENDING
    return {**_SUBMITTED, "state": inner}


def constant_success(result_blob: dict[str, Any] | None) -> dict[str, Any]:
    """The Success a constant task gets without running (Prefect sets it directly)."""
    blob = Success().serialize()  # Prefect sets it without a message
    if result_blob is not None:
        blob["_result"] = result_blob
    return blob


REUSABLE = frozenset({"Success", "Cached"})
"""State types of an earlier run's task run that a re-run may reuse."""


def reused(earlier: dict[str, Any], rerun_of: str | None) -> dict[str, Any]:
    """The Cached a re-run starts a task run in: the earlier run's result reference kept."""
    where = f"flow run {rerun_of}" if rerun_of else "an earlier flow run"
    blob = Cached(f"Reused the result of {where}").serialize()
    result = earlier.get("_result")
    if result is not None:
        blob["_result"] = result
    return blob


def failed(message: str) -> dict[str, Any]:
    return Failed(message).serialize()


def retrying(attempt: int, max_retries: int, start: datetime) -> dict[str, Any]:
    """The Retrying Prefect's check_for_retry would make after attempt `attempt`."""
    return Retrying(
        f"Retrying Task (after attempt {attempt} of {max_retries + 1})",
        start_time=start,
        run_count=attempt,
        context={"task_run_count": attempt},
    ).serialize()


def flow_success(message: str) -> dict[str, Any]:
    return Success(message).serialize()


def flow_failed() -> dict[str, Any]:
    return _FLOW_FAILED


def resume(paused: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Resume from a Paused blob, keeping its run count (Prefect's approval message)."""
    context = {k: v for k, v in (paused.get("context") or {}).items() if k == "task_run_count"}
    return Resume("Approval given to resume.", start_time=now, context=context).serialize()


_KNOWN_FIELDS = {
    "type",
    "message",
    "_result",
    "context",
    "cached_inputs",
    "__version__",
    "start_time",
    "run_count",
    "loop_count",
    "n_map_states",
    "map_states",
    "cached_result_expiration",
    "cached_parameters",
    "hashed_inputs",
    "state",
}
_DICT_FIELDS = ("_result", "context", "cached_inputs")
_INT_FIELDS = ("run_count", "loop_count", "n_map_states")


_VALID_LIMIT = 4096
_valid: dict[int, Any] = {}


def state_problem(blob: Any) -> str | None:
    """Why `blob` is not a valid state blob, or None when it is.

    A structural check (types of the fields the ledger reads), cheap enough for
    every proposal; workers deserialize the full state when they run it. Blobs
    are never changed once made, so the very same blob object found valid once
    is valid again (in-process shells share blobs, e.g. every claim's Running):
    valid blobs are remembered by identity. An entry holds its blob, so its id
    cannot be reused while remembered.
    """
    if _valid.get(id(blob)) is blob:
        return None
    problem = _state_problem(blob)
    if problem is None:
        if len(_valid) >= _VALID_LIMIT:
            _valid.clear()
        _valid[id(blob)] = blob
    return problem


def _state_problem(blob: Any) -> str | None:
    if not isinstance(blob, dict):
        return f"a state must be a JSON object, got {type(blob).__name__}"
    kind = blob.get("type")
    if kind not in STATE_CLASSES or kind == "State":
        return f"unknown state type {kind!r}"
    if not blob.keys() <= _KNOWN_FIELDS:
        return f"state {kind} has unknown fields {sorted(blob.keys() - _KNOWN_FIELDS)}"
    message = blob.get("message")
    if message is not None and not isinstance(message, str):
        return f"state {kind}: message must be a string or null"
    for name in _DICT_FIELDS:
        if blob.get(name) is not None and not isinstance(blob[name], dict):
            return f"state {kind}: {name} must be an object"
    for name in _INT_FIELDS:
        value = blob.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"state {kind}: {name} must be an integer"
    start = blob.get("start_time")
    if start is not None:
        try:
            parsed = datetime.fromisoformat(start) if isinstance(start, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            return f"state {kind}: start_time must be an ISO-8601 time with an offset"
    inner = blob.get("state")
    if inner is not None:
        return _state_problem(inner)
    return None
