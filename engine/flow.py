"""Flows: a graph of tasks built inside `with Flow(...)`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar, Token
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from engine.edges import Edge, flatten, unmapped
from engine.task import Constant, Parameter, Task
from engine.triggers import trigger_name

if TYPE_CHECKING:
    from engine.results import Result
    from engine.state import State

_active: ContextVar[Flow | None] = ContextVar("runledger_active_flow", default=None)


class FlowGraphError(ValueError):
    """The flow's graph is invalid (a cycle, a foreign task, a bad argument)."""


def active_flow() -> Flow:
    """The flow being built by the enclosing `with Flow(...)` block."""
    flow = _active.get()
    if flow is None:
        raise FlowGraphError("Tasks can only be called inside `with Flow(...):` or with flow=")
    return flow


class Flow:
    """A named graph of tasks and edges."""

    def __init__(
        self,
        name: str,
        tasks: Iterable[Task] | None = None,
        edges: Iterable[Edge] | None = None,
        reference_tasks: Iterable[Task] | None = None,
        state_handlers: Sequence[Callable[..., Any]] | None = None,
        result: Result | None = None,
    ) -> None:
        self.name = name
        self._tasks: dict[Task, None] = {}  # insertion-ordered set
        self.edges: set[Edge] = set()
        self._edges_to: dict[Task, list[Edge]] = {}
        self._edges_from: dict[Task, list[Edge]] = {}
        self.constants: dict[Task, dict[str, Any]] = {}
        self.slugs: dict[Task, str] = {}
        self._reference_tasks: set[Task] = set(reference_tasks or ())
        self.state_handlers = list(state_handlers or ())
        self.result = result
        self._token: Token[Flow | None] | None = None
        self._sorted: list[Task] | None = None
        self._lookups: dict[str, dict[Any, Any]] = {}
        for t in tasks or ():
            self.add_task(t)
        for e in edges or ():
            self.add_edge(e.upstream_task, e.downstream_task, e.key, e.mapped, e.flattened)

    def __repr__(self) -> str:
        return f"<Flow: {self.name}>"

    def __enter__(self) -> Flow:
        self._token = _active.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _active.reset(self._token)
            self._token = None

    # ----- building -------------------------------------------------------------

    @property
    def tasks(self) -> set[Task]:
        return set(self._tasks)

    def add_task(self, task: Task) -> Task:
        """Add a task (once) and give it a stable slug."""
        if not isinstance(task, Task):
            raise FlowGraphError(f"Flows hold tasks, got {task!r}")
        if task in self._tasks:
            return task
        slug = task.slug or self._next_slug(task.name)
        if slug in self.slugs.values():
            raise FlowGraphError(f"Slug {slug!r} is used twice (Parameter names must be unique)")
        self._tasks[task] = None
        self.slugs[task] = slug
        self._edges_to[task] = []
        self._edges_from[task] = []
        self._sorted = None
        self._lookups.clear()
        return task

    def lookup_cache(self, name: str) -> dict[Any, Any]:
        """A memo for lookups derived from the graph; emptied whenever the graph changes."""
        return self._lookups.setdefault(name, {})

    def _next_slug(self, name: str) -> str:
        used = set(self.slugs.values())
        n = 1
        while f"{name}-{n}" in used:
            n += 1
        return f"{name}-{n}"

    def as_task(self, value: Any) -> Task:
        """A task for `value`: itself if it is one, else a Constant task."""
        task = value if isinstance(value, Task) else Constant(value)
        return self.add_task(task)

    def bind_argument(self, task: Task, key: str, value: Any, mapped: bool) -> None:
        """Turn one call argument into an edge or a flow constant."""
        is_mapped = mapped and not isinstance(value, unmapped)
        flattened = isinstance(value, flatten)
        inner = value.value if isinstance(value, unmapped | flatten) else value
        if isinstance(inner, unmapped | flatten):
            flattened = flattened or isinstance(inner, flatten)
            inner = inner.value
        if isinstance(inner, Task) or is_mapped or flattened:
            self.add_edge(self.as_task(inner), task, key=key, mapped=is_mapped, flattened=flattened)
        else:
            self.constants.setdefault(task, {})[key] = inner

    def add_edge(
        self,
        upstream_task: Task,
        downstream_task: Task,
        key: str | None = None,
        mapped: bool = False,
        flattened: bool = False,
    ) -> Edge:
        """Add a dependency, refusing cycles and duplicate argument keys."""
        self.add_task(upstream_task)
        self.add_task(downstream_task)
        edge = Edge(upstream_task, downstream_task, key, mapped, flattened)
        if edge in self.edges:
            return edge
        if key is not None and any(e.key == key for e in self._edges_to[downstream_task]):
            raise FlowGraphError(f"Argument {key!r} of {downstream_task.name} is bound twice")
        if upstream_task is downstream_task or self._reaches(downstream_task, upstream_task):
            raise FlowGraphError(
                f"Adding {upstream_task.name} -> {downstream_task.name} would create a cycle"
            )
        self.edges.add(edge)
        self._edges_to[downstream_task].append(edge)
        self._edges_from[upstream_task].append(edge)
        self._sorted = None
        self._lookups.clear()
        return edge

    def _reaches(self, start: Task, goal: Task) -> bool:
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            if node is goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(e.downstream_task for e in self._edges_from.get(node, ()))
        return False

    def set_reference_tasks(self, tasks: Iterable[Task]) -> None:
        """Choose the tasks whose states decide the flow's state."""
        self._reference_tasks = set(tasks)

    # ----- reading --------------------------------------------------------------

    def edges_to(self, task: Task) -> list[Edge]:
        return list(self._edges_to.get(task, ()))

    def edges_from(self, task: Task) -> list[Edge]:
        return list(self._edges_from.get(task, ()))

    def upstream_tasks(self, task: Task) -> set[Task]:
        return {e.upstream_task for e in self._edges_to.get(task, ())}

    def downstream_tasks(self, task: Task) -> set[Task]:
        return {e.downstream_task for e in self._edges_from.get(task, ())}

    def terminal_tasks(self) -> set[Task]:
        return {t for t in self._tasks if not self._edges_from[t]}

    def reference_tasks(self) -> set[Task]:
        return set(self._reference_tasks) or self.terminal_tasks()

    def parameters(self) -> set[Parameter]:
        return {t for t in self._tasks if isinstance(t, Parameter)}

    def get_tasks(self, name: str | None = None, slug: str | None = None) -> list[Task]:
        return [
            t
            for t in self._tasks
            if (name is None or t.name == name) and (slug is None or self.slugs[t] == slug)
        ]

    def task_by_slug(self, slug: str) -> Task:
        by_slug = self.lookup_cache("task_by_slug")
        if not by_slug:
            by_slug.update((s, t) for t, s in self.slugs.items())
        return by_slug[slug]  # type: ignore[no-any-return]

    def sorted_tasks(self) -> list[Task]:
        """Tasks in a stable topological order (insertion order breaks ties)."""
        if self._sorted is None:
            indegree = {t: len(self._edges_to[t]) for t in self._tasks}
            ready = [t for t in self._tasks if indegree[t] == 0]
            order: list[Task] = []
            while ready:
                t = ready.pop(0)
                order.append(t)
                for e in self._edges_from[t]:
                    indegree[e.downstream_task] -= 1
                    if indegree[e.downstream_task] == 0:
                        ready.append(e.downstream_task)
            self._sorted = order
        return list(self._sorted)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.sorted_tasks())

    def fingerprint(self) -> str:
        """A stable digest of the flow's structure: its version, recorded on runs."""
        tasks = [
            _task_signature(t, self.slugs[t], self.constants.get(t, {}))
            for t in self.sorted_tasks()
        ]
        edges = sorted(
            (
                self.slugs[e.upstream_task],
                self.slugs[e.downstream_task],
                e.key or "",
                e.mapped,
                e.flattened,
            )
            for e in self.edges
        )
        payload = json.dumps({"name": self.name, "tasks": tasks, "edges": edges}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def run(self, parameters: dict[str, Any] | None = None, **kwargs: Any) -> State:
        """Run the flow in this process and return its final state."""
        from engine.flow_runner import FlowRunner

        return FlowRunner(self).run(parameters=parameters, **kwargs).state


def _stable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return f"<{type(value).__qualname__}>"
    return value


def _seconds(delta: timedelta | None) -> float | None:
    return None if delta is None else delta.total_seconds()


def _task_signature(task: Task, slug: str, constants: dict[str, Any]) -> dict[str, Any]:
    return {
        "slug": slug,
        "type": type(task).__qualname__,
        "max_retries": task.max_retries,
        "retry_delay": _seconds(task.retry_delay),
        "timeout": task.timeout,
        "trigger": trigger_name(task.trigger),
        "skip_on_upstream_skip": task.skip_on_upstream_skip,
        "cache_for": _seconds(task.cache_for),
        "checkpoint": task.checkpoint,
        "target": task.target if isinstance(task.target, str) else bool(task.target),
        "nout": task.nout,
        "constants": {k: _stable(v) for k, v in sorted(constants.items())},
    }
