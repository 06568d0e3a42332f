"""A `PartitionState` as plain JSON values, and back: the body of a ledger snapshot.

Pure and explicit (no pickle): a snapshot is read from a topic that other
processes can write, so reading one must never run code, and every field it
restores is named here. Plans are stored once per distinct plan (a partition's
live runs are mostly runs of a few flows) and views of one plan share its
`PlanIndex` again after loading. Versioning, chunking and the manifest are the
shell's (`services.roles.snapshots`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import immutables

from engine.orchestration.partition import PartitionState, RecentCommands
from engine.orchestration.retired import RetiredRun
from engine.orchestration.view import FlowRunView, PlanIndex, TaskRunRecord
from events import FlowPlan, FlowRef

__all__ = ["SnapshotFormatError", "state_from_doc", "state_to_doc"]

Doc = dict[str, Any]


class SnapshotFormatError(ValueError):
    """A snapshot body that does not describe a partition state."""


def state_to_doc(state: PartitionState) -> Doc:
    """`state` as JSON values (dicts, lists, strings, numbers)."""
    plans: dict[str, Any] = {}
    views = [_view_to_doc(view, plans) for view in state.views.values()]
    retired = [
        [r.flow_run_id, r.request, r.idempotency_key, r.flow_state_type, r.flow_seq]
        for r in state.retired.values()
    ]
    pending = list(state.pending) if state.pending is not None else None
    return {
        "plans": plans,
        "views": views,
        "retired": retired,
        "recent": state.recent.keys(),
        "pending": pending,
    }


def state_from_doc(doc: Doc, window: int) -> PartitionState:
    """The state `state_to_doc` described, with a command window of `window` commands.

    Raises `SnapshotFormatError` for anything malformed (never a bare KeyError).
    """
    try:
        indexes = {
            digest: PlanIndex.of(FlowPlan.model_validate(body))
            for digest, body in doc["plans"].items()
        }
        state = PartitionState(window=window)
        for entry in doc["views"]:
            view = _view_from_doc(entry, indexes)
            state.views[view.flow_run_id] = view
        for flow_run_id, request, key, state_type, seq in doc["retired"]:
            state.retired[flow_run_id] = RetiredRun(flow_run_id, request, key, state_type, int(seq))
        state.recent = RecentCommands(window, (int(k) for k in doc["recent"]))
        if doc["pending"] is not None:
            flow_run_id, command_id = doc["pending"]
            state.pending = (str(flow_run_id), command_id)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotFormatError(f"not a partition state: {exc!r}") from exc
    return state


def _plan_digest(plan: FlowPlan, plans: dict[str, Any]) -> str:
    body = plan.model_dump(mode="json")
    digest = hashlib.blake2b(
        json.dumps(body, sort_keys=True).encode(), digest_size=16
    ).hexdigest()
    plans.setdefault(digest, body)
    return digest


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _view_to_doc(view: FlowRunView, plans: dict[str, Any]) -> Doc:
    return {
        "id": view.flow_run_id,
        "ref": view.flow_ref.model_dump(mode="json") if view.flow_ref is not None else None,
        "parameters": view.parameters,
        "context": view.context,
        "key": view.idempotency_key,
        "plan": _plan_digest(view.index.plan, plans) if view.index is not None else None,
        "flow_state": view.flow_state,
        "flow_state_type": view.flow_state_type,
        "flow_seq": view.flow_seq,
        "task_runs": [
            [
                r.task_run_id, r.slug, r.map_index, r.seq, r.state, r.state_type, r.attempt,
                r.final, _time(r.last_heartbeat), r.claimed_by,
            ]
            for r in view.task_runs.values()
        ],
        "children": dict(view.children),
        "unfinished_children": dict(view.unfinished_children),
        "unfinished_runs": view.unfinished_runs,
        "scheduled": dict(view.scheduled),
        "running": list(view.running),
        "processed": list(view.processed_commands),
        "last_event_at": _time(view.last_event_at),
    }


def _view_from_doc(doc: Doc, indexes: dict[str, PlanIndex]) -> FlowRunView:
    plan = doc["plan"]
    records = (
        TaskRunRecord(
            run_id, slug, map_index, int(seq), state, state_type, int(attempt), bool(final),
            _parse_time(beat), claimer,
        )
        for run_id, slug, map_index, seq, state, state_type, attempt, final, beat, claimer in doc[
            "task_runs"
        ]
    )
    return FlowRunView(
        flow_run_id=doc["id"],
        flow_ref=FlowRef.model_validate(doc["ref"]) if doc["ref"] is not None else None,
        parameters=doc["parameters"],
        context=doc["context"],
        idempotency_key=doc["key"],
        index=indexes[plan] if plan is not None else None,
        flow_state=doc["flow_state"],
        flow_state_type=doc["flow_state_type"],
        flow_seq=int(doc["flow_seq"]),
        task_runs=immutables.Map((r.task_run_id, r) for r in records),
        children=immutables.Map(doc["children"]),
        unfinished_children=immutables.Map(doc["unfinished_children"]),
        unfinished_runs=int(doc["unfinished_runs"]),
        scheduled=immutables.Map(doc["scheduled"]),
        running=immutables.Map((r, None) for r in doc["running"]),
        processed_commands=immutables.Map((c, None) for c in doc["processed"]),
        last_event_at=_parse_time(doc["last_event_at"]),
    )
