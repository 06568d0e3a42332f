"""Which earlier task runs a re-run may reuse: one rule for the client that picks
them and the ledger that checks them (it never trusts what a request carries)."""

from __future__ import annotations

from typing import Any

from engine.orchestration import states as blobs
from engine.orchestration.view import FlowRunView, PlanIndex

__all__ = ["is_reusable", "reusable_states"]


def is_reusable(index: PlanIndex, slug: str, blob: Any) -> bool:
    """A valid Success/Cached blob of a plain, unmapped task of the plan.

    Parameters and constants are set anew from the request and the plan; a
    mapped task runs again as a whole (its children are not reused this way).
    """
    task = index.tasks.get(slug)
    if task is None or task.kind != "task" or slug in index.mapped_slugs:
        return False
    return blobs.state_problem(blob) is None and blob["type"] in blobs.REUSABLE


def reusable_states(view: FlowRunView) -> dict[str, dict[str, Any]]:
    """What a re-run of `view`'s flow run may reuse: slug -> its resting state blob."""
    index = view.index
    if index is None:
        return {}
    return {
        record.slug: record.state
        for record in view.task_runs.values()
        if record.map_index is None
        and record.rests_finished
        and is_reusable(index, record.slug, record.state)
    }
