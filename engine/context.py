"""The task context: a read-only mapping visible inside a running task body.

Prefect 1 exposes `prefect.context`; here `from engine import context` gives
`context.get("task_run_count")` and friends. The TaskRunner binds the values
for the duration of one body call (per thread/coroutine, via a ContextVar), so
concurrent task runs never see each other's values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_current: ContextVar[Mapping[str, Any]] = ContextVar("runledger_task_context", default=_EMPTY)


class TaskContext(Mapping[str, Any]):
    """Read-only view of the values bound for the task run in progress."""

    def __getitem__(self, key: str) -> Any:
        return _current.get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(_current.get())

    def __len__(self) -> int:
        return len(_current.get())

    def __getattr__(self, key: str) -> Any:
        # Prefect code reads `prefect.context.resume`; missing keys read as None there too.
        if key.startswith("_"):
            raise AttributeError(key)
        return _current.get().get(key)

    def __repr__(self) -> str:
        return f"<TaskContext {dict(_current.get())!r}>"


context = TaskContext()


def bind_live(values: dict[str, Any]) -> Token[Mapping[str, Any]]:
    """Bind a read-only *live* view of `values` (later changes to the dict show).

    Returns the token for `unbind`; a plain pair of calls rather than a context
    manager because the TaskRunner does this once per run on its hot path.
    """
    return _current.set(MappingProxyType(values))


def unbind(token: Token[Mapping[str, Any]]) -> None:
    """Restore the binding `bind_live` replaced."""
    _current.reset(token)


@contextmanager
def bound(values: Mapping[str, Any]) -> Iterator[None]:
    """Bind `values` as the task context for the enclosed block."""
    token = _current.set(MappingProxyType(dict(values)))
    try:
        yield
    finally:
        _current.reset(token)
