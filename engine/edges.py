"""Edges of a flow graph and the argument wrappers that shape them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.task import Task


@dataclass(frozen=True, eq=True)
class Edge:
    """A dependency: `downstream_task` waits for `upstream_task`.

    `key` names the argument that receives the upstream's result (None: a
    state-only dependency). These are the keys of `upstream_states`.
    """

    upstream_task: Task
    downstream_task: Task
    key: str | None = None
    mapped: bool = False
    flattened: bool = False

    def __repr__(self) -> str:
        return (
            f"<Edge {self.upstream_task.name} -> {self.downstream_task.name}"
            f" key={self.key!r} mapped={self.mapped} flattened={self.flattened}>"
        )


@dataclass(frozen=True)
class unmapped:
    """Marks an argument of `.map()` as passed whole to every child."""

    value: Any


@dataclass(frozen=True)
class flatten:
    """Marks an argument whose (nested) result is flattened one level."""

    value: Any
