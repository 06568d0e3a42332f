"""From a Flow object to the FlowPlan the ledger works with.

The ledger never imports user code to decide: it reads the plan, a plain
description of slugs, edges and the few settings orchestration needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from engine.flow import Flow
from engine.task import Constant, Parameter, Task
from events import FlowPlan, PlanEdge, PlanTask

PersistConstant = Callable[[Any, str], dict[str, Any]]


def _kind(task: Task) -> Literal["task", "constant", "parameter"]:
    if isinstance(task, Constant):
        return "constant"
    if isinstance(task, Parameter):
        return "parameter"
    return "task"


def plan_of(flow: Flow, persist_constant: PersistConstant) -> FlowPlan:
    """The flow's plan; constant values are stored through `persist_constant(value, slug)`."""
    references = flow.reference_tasks()
    tasks = []
    for task in flow.sorted_tasks():
        slug = flow.slugs[task]
        edges = sorted(
            (
                PlanEdge(
                    upstream=flow.slugs[e.upstream_task],
                    key=e.key,
                    mapped=e.mapped,
                    flattened=e.flattened,
                )
                for e in flow.edges_to(task)
            ),
            key=lambda e: (e.key or "", e.upstream),
        )
        tasks.append(
            PlanTask(
                slug=slug,
                name=task.name,
                kind=_kind(task),
                edges=tuple(edges),
                max_retries=task.max_retries,
                retry_delay_s=task.retry_delay.total_seconds() if task.retry_delay else None,
                timeout_s=float(task.timeout) if task.timeout is not None else None,
                is_reference=task in references,
                constant=persist_constant(task.value, slug) if isinstance(task, Constant) else None,
            )
        )
    return FlowPlan(name=flow.name, version=flow.fingerprint(), tasks=tuple(tasks))
