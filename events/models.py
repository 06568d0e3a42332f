"""Data carried inside events: flow references, flow plans and work items.

State objects never appear here as Python objects: a state travels as its
serialized blob (`engine.state.State.serialize()`), a plain JSON object.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator

_FROZEN = ConfigDict(
    frozen=True,
    extra="forbid",
    use_attribute_docstrings=True,
)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class FlowRef(BaseModel):
    """Where a worker gets the flow's code: an import path or a signed pickle."""

    model_config = _FROZEN

    kind: Literal["import", "pickled"]
    path: str | None = None
    """``package.module:attr`` when kind is "import"."""
    location: str | None = None
    """Result-store URL of the cloudpickled flow when kind is "pickled"."""
    signature: str | None = None
    """HMAC-SHA256 (hex) of the pickled bytes when kind is "pickled"."""

    @model_validator(mode="after")
    def _fields_match_kind(self) -> Self:
        if self.kind == "import":
            if self.path is None or not _IMPORT_PATH.fullmatch(self.path):
                raise ValueError(
                    f"an import FlowRef needs path 'package.module:attr', got {self.path!r}"
                )
            if self.location is not None or self.signature is not None:
                raise ValueError("an import FlowRef takes no location or signature")
        else:
            if not self.location or self.signature is None:
                raise ValueError("a pickled FlowRef needs location and signature")
            if not _HEX_SHA256.fullmatch(self.signature):
                raise ValueError("signature must be an HMAC-SHA256 digest as 64 hex characters")
            if self.path is not None:
                raise ValueError("a pickled FlowRef takes no path")
        return self


class PlanEdge(BaseModel):
    """An edge into a task: which upstream slug feeds it, under which argument."""

    model_config = _FROZEN

    upstream: str
    key: str | None = None
    mapped: bool = False
    flattened: bool = False


class PlanTask(BaseModel):
    """One task of a flow plan with the settings the ledger needs to orchestrate it."""

    model_config = _FROZEN

    slug: str
    name: str
    kind: Literal["task", "constant", "parameter"] = "task"
    edges: tuple[PlanEdge, ...] = ()
    max_retries: int = 0
    retry_delay_s: float | None = None
    timeout_s: float | None = None
    is_reference: bool = False
    constant: dict[str, Any] | None = None
    """The result blob of a constant task."""


class FlowPlan(BaseModel):
    """The static shape of a flow: its tasks and edges, identified by a fingerprint."""

    model_config = _FROZEN

    name: str
    version: str
    """Structural fingerprint of the flow."""
    tasks: tuple[PlanTask, ...]

    @model_validator(mode="after")
    def _edges_resolve(self) -> Self:
        slugs: set[str] = set()
        for task in self.tasks:
            if task.slug in slugs:
                raise ValueError(f"duplicate task slug {task.slug!r}")
            slugs.add(task.slug)
        for task in self.tasks:
            for edge in task.edges:
                if edge.upstream not in slugs:
                    raise ValueError(
                        f"task {task.slug!r} has an edge from unknown slug {edge.upstream!r}"
                    )
        _reject_cycles(self.tasks)
        return self

    def task(self, slug: str) -> PlanTask:
        """The task with this slug; `KeyError` if the plan has none."""
        for task in self.tasks:
            if task.slug == slug:
                return task
        raise KeyError(slug)


def _reject_cycles(tasks: tuple[PlanTask, ...]) -> None:
    """Raise `ValueError` naming a task on a cycle, if the edges form one."""
    pending = {t.slug: {e.upstream for e in t.edges} for t in tasks}
    ready = [slug for slug, ups in pending.items() if not ups]
    downstream: dict[str, list[str]] = {slug: [] for slug in pending}
    for slug, ups in pending.items():
        for up in ups:
            downstream[up].append(slug)
    done = 0
    while ready:
        slug = ready.pop()
        done += 1
        for child in downstream[slug]:
            pending[child].discard(slug)
            if not pending[child]:
                ready.append(child)
    if done != len(pending):
        stuck = sorted(slug for slug, ups in pending.items() if ups)
        raise ValueError(f"the plan's edges form a cycle through {stuck[0]!r}")


class UpstreamInput(BaseModel):
    """The final state of one upstream task, as handed to a downstream task run."""

    model_config = _FROZEN

    edge: PlanEdge
    state: dict[str, Any]
    """Serialized State blob."""
    map_states: tuple[dict[str, Any], ...] | None = None
    """Children of a Mapped upstream, in map_index order."""
    indexed: bool = False
    """True when the ledger already picked this child's element of a mapped upstream."""


class WorkItem(BaseModel):
    """Everything a worker needs to run one attempt of one task run."""

    model_config = _FROZEN

    flow_run_id: str
    task_run_id: str
    slug: str
    map_index: int | None
    flow_ref: FlowRef
    parameters: dict[str, Any]
    state: dict[str, Any]
    """The starting state blob."""
    expected_seq: int
    attempt: int
    upstream: tuple[UpstreamInput, ...]
    is_mapped_parent: bool = False
    context: dict[str, Any] = {}
