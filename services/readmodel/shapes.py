"""The JSON shapes of flow runs and task runs, as the api serves and the read model stores them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from engine.orchestration import FlowRunView, TaskRunRecord

__all__ = ["flow_run_json", "task_run_json"]


def task_run_json(record: TaskRunRecord, flow_run_id: str) -> dict[str, Any]:
    """A task run as the API shows it (the state blob included)."""
    return {
        "id": record.task_run_id,
        "flow_run_id": flow_run_id,
        "task_slug": record.slug,
        "map_index": record.map_index,
        "seq": record.seq,
        "state": record.state_type,
        "message": record.state.get("message"),
        "attempt": record.attempt,
        "final": record.final,
        "finished": record.rests_finished,
        "last_heartbeat": record.last_heartbeat.isoformat() if record.last_heartbeat else None,
        "state_blob": record.state,
        "links": {"self": f"/task_runs/{record.task_run_id}"},
    }


def flow_run_json(view: FlowRunView, *, detail: bool = False) -> dict[str, Any]:
    """A flow run summary; with `detail`, also its state blob and plan."""
    index = view.index
    states = Counter(r.state_type for r in view.task_runs.values())
    body: dict[str, Any] = {
        "id": view.flow_run_id,
        "flow_name": index.plan.name if index else None,
        "flow_version": index.plan.version if index else None,
        "flow_ref": view.flow_ref.model_dump(mode="json", exclude_none=True)
        if view.flow_ref
        else None,
        "parameters": view.parameters,
        "idempotency_key": view.idempotency_key,
        "state": view.flow_state_type,
        "message": (view.flow_state or {}).get("message"),
        "finished": view.is_finished(),
        "task_runs": len(view.task_runs),
        "task_run_states": dict(sorted(states.items())),
        "unfinished_task_runs": view.unfinished_runs,
        "scheduled": dict(view.scheduled),
        "last_event_at": view.last_event_at.isoformat() if view.last_event_at else None,
        "links": {
            "self": f"/flow_runs/{view.flow_run_id}",
            "task_runs": f"/flow_runs/{view.flow_run_id}/task_runs",
            "history": f"/flow_runs/{view.flow_run_id}/history",
        },
    }
    if detail:
        body["context"] = view.context
        body["state_blob"] = view.flow_state
        body["plan"] = (
            [
                {
                    "slug": t.slug,
                    "name": t.name,
                    "kind": t.kind,
                    "upstream": [e.upstream for e in t.edges],
                    "max_retries": t.max_retries,
                    "retry_delay_s": t.retry_delay_s,
                    "timeout_s": t.timeout_s,
                }
                for t in index.plan.tasks
            ]
            if index
            else None
        )
    return body
