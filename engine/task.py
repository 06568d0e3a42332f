"""Tasks: units of work with Prefect 1's settings and calling conventions."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from engine import triggers as _triggers
from engine.cache_validators import duration_only, never_use
from engine.edges import flatten, unmapped

if TYPE_CHECKING:
    from engine.flow import Flow
    from engine.results import Result

StateHandler = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


class TaskSettingsError(ValueError):
    """A task was configured with settings that contradict each other."""


def _as_timeout(timeout: int | float | timedelta | None) -> int | None:
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        return int(timeout.total_seconds())
    return int(timeout)


def _as_exception_types(retry_on: Any) -> tuple[type[BaseException], ...] | None:
    if retry_on is None:
        return None
    types = (retry_on,) if isinstance(retry_on, type) else tuple(retry_on)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TaskSettingsError(f"retry_on takes exception types, got {t!r}")
    return types


class Task:
    """A unit of work. Subclass and override `run`, or use `@task`."""

    def __init__(
        self,
        name: str | None = None,
        slug: str | None = None,
        tags: Iterable[str] | None = None,
        max_retries: int | None = None,
        retry_delay: timedelta | None = None,
        retry_on: Any = None,
        timeout: int | float | timedelta | None = None,
        trigger: Callable[..., bool] | None = None,
        skip_on_upstream_skip: bool = True,
        cache_for: timedelta | None = None,
        cache_validator: Callable[..., bool] | None = None,
        cache_key: str | None = None,
        checkpoint: bool | None = None,
        state_handlers: Sequence[StateHandler] | None = None,
        result: Result | None = None,
        target: str | Callable[..., str] | None = None,
        task_run_name: str | Callable[..., str] | None = None,
        nout: int | None = None,
    ) -> None:
        self.name = name or type(self).__name__
        self.slug = slug
        self.tags = frozenset(tags or ())
        self.max_retries = max_retries or 0
        self.retry_delay = retry_delay
        self.retry_on = _as_exception_types(retry_on)
        self.timeout = _as_timeout(timeout)
        self.trigger = trigger or _triggers.all_successful
        self.skip_on_upstream_skip = skip_on_upstream_skip
        self.cache_for = cache_for
        self.cache_validator = cache_validator or (duration_only if cache_for else never_use)
        self.cache_key = cache_key
        self.checkpoint = checkpoint
        self.state_handlers = list(state_handlers or ())
        self.result = result
        self.target = target
        self.task_run_name = task_run_name
        self.nout = nout
        self._validate()

    def _validate(self) -> None:
        if self.max_retries > 0 and self.retry_delay is None:
            raise TaskSettingsError("A retry_delay must be given when max_retries > 0.")
        if self.retry_delay is not None and self.max_retries <= 0:
            raise TaskSettingsError("A retry_delay was given without max_retries > 0.")
        if self.retry_on is not None and self.max_retries <= 0:
            raise TaskSettingsError("retry_on needs max_retries > 0.")
        if self.timeout is not None and self.timeout <= 0:
            raise TaskSettingsError("timeout must be a positive number of seconds.")

    def __repr__(self) -> str:
        return f"<Task: {self.name}>"

    # identity semantics: two tasks with the same settings are still two tasks
    __hash__ = object.__hash__

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task's body; the base task does nothing. Subclasses choose their arguments."""
        return None

    def run_signature(self) -> inspect.Signature:
        """The parameters `run` accepts (used to bind call arguments)."""
        return inspect.signature(self.run)

    def copy(self, **task_args: Any) -> Task:
        """A new task with the same settings, `task_args` overriding some."""
        new = copy.copy(self)
        new.state_handlers = list(self.state_handlers)
        for key, value in task_args.items():
            if not hasattr(new, key):
                raise TaskSettingsError(f"{key!r} is not a task setting")
            setattr(new, key, value)
        new.tags = frozenset(new.tags)
        new.retry_on = _as_exception_types(new.retry_on)
        new.timeout = _as_timeout(new.timeout)
        new._validate()
        return new

    def __call__(
        self,
        *args: Any,
        mapped: bool = False,
        task_args: dict[str, Any] | None = None,
        upstream_tasks: Iterable[Any] | None = None,
        flow: Flow | None = None,
        **kwargs: Any,
    ) -> Task:
        """Copy this task into the active flow, bound to the given arguments."""
        new = self.copy(**(task_args or {}))
        return new.bind(*args, mapped=mapped, upstream_tasks=upstream_tasks, flow=flow, **kwargs)

    def map(
        self,
        *args: Any,
        upstream_tasks: Iterable[Any] | None = None,
        flow: Flow | None = None,
        task_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Task:
        """Run one child per element of the mapped arguments."""
        new = self.copy(**(task_args or {}))
        return new.bind(*args, mapped=True, upstream_tasks=upstream_tasks, flow=flow, **kwargs)

    def bind(
        self,
        *args: Any,
        mapped: bool = False,
        upstream_tasks: Iterable[Any] | None = None,
        flow: Flow | None = None,
        **kwargs: Any,
    ) -> Task:
        """Add this task to the flow with edges for its arguments."""
        from engine.flow import active_flow

        target_flow = flow or active_flow()
        try:
            bound = self.run_signature().bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        target_flow.add_task(self)
        for key, value in bound.arguments.items():
            target_flow.bind_argument(self, key, value, mapped=mapped)
        for upstream in upstream_tasks or ():
            up = upstream.value if isinstance(upstream, unmapped) else upstream
            target_flow.add_edge(target_flow.as_task(up), self, key=None, mapped=False)
        return self

    def set_upstream(
        self, task: Task, flow: Flow | None = None, key: str | None = None, mapped: bool = False
    ) -> None:
        """Make this task wait for `task`."""
        from engine.flow import active_flow

        (flow or active_flow()).add_edge(task, self, key=key, mapped=mapped)

    def set_downstream(
        self, task: Task, flow: Flow | None = None, key: str | None = None, mapped: bool = False
    ) -> None:
        """Make `task` wait for this task."""
        from engine.flow import active_flow

        (flow or active_flow()).add_edge(self, task, key=key, mapped=mapped)

    def __getitem__(self, key: Any) -> Task:
        getter = GetItem(name=f"{self.name}[{key}]")
        return getter.bind(self, key)

    def __iter__(self) -> Iterator[Task]:
        if self.nout is None:
            raise TypeError(f"Task {self.name} is not iterable: give it nout=<number of outputs>")
        return (self[i] for i in range(self.nout))


class FunctionTask(Task):
    """A task whose body is a plain function."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, **settings: Any) -> None:
        if not callable(fn):
            raise TypeError("FunctionTask needs a callable")
        self.fn = fn
        super().__init__(name=name or getattr(fn, "__name__", "task"), **settings)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def run_signature(self) -> inspect.Signature:
        return inspect.signature(self.fn)


class Parameter(Task):
    """A flow input whose value comes from the run's parameters."""

    def __init__(
        self,
        name: str,
        default: Any = None,
        required: bool = False,
        tags: Iterable[str] | None = None,
    ) -> None:
        super().__init__(name=name, slug=name, tags=tags, checkpoint=True)
        self.default = default
        self.required = required

    def run(self, *args: Any, **kwargs: Any) -> Any:
        from engine.context import context

        parameters = context.get("parameters") or {}
        if self.name in parameters:
            return parameters[self.name]
        if self.required:
            from engine import signals

            raise signals.FAIL(f'Parameter "{self.name}" was required but not provided.')
        return self.default

    def __call__(self, *args: Any, **kwargs: Any) -> Task:
        raise TypeError("Parameters are added to a flow by using them as arguments of tasks")


class Constant(Task):
    """A literal value turned into a task (for `.map()` over literals)."""

    def __init__(self, value: Any, name: str | None = None) -> None:
        super().__init__(name=name or f"Constant[{type(value).__name__}]")
        self.value = value

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.value


class GetItem(Task):
    """`task[key]`: one element of another task's result."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self._get(*args, **kwargs)

    @staticmethod
    def _get(task_result: Any, key: Any) -> Any:
        return task_result[key]

    def run_signature(self) -> inspect.Signature:
        return inspect.signature(self._get)


@overload
def task(fn: F, **settings: Any) -> FunctionTask: ...
@overload
def task(fn: None = None, **settings: Any) -> Callable[[F], FunctionTask]: ...


def task(fn: Callable[..., Any] | None = None, **settings: Any) -> Any:
    """Turn a function into a task: `@task`, `@task(max_retries=...)` or `task(fn, ...)`."""
    if fn is None:
        return lambda f: FunctionTask(f, **settings)
    return FunctionTask(fn, **settings)


def is_task(value: Any) -> bool:
    """True for tasks and for argument wrappers around tasks."""
    return isinstance(value, Task) or (
        isinstance(value, unmapped | flatten) and isinstance(value.value, Task)
    )
