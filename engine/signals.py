"""Signals: exceptions that task code (or the engine) raises to choose a state.

All derive from BaseException, not Exception, so that a bare `except Exception`
in user code or in the engine's error trap does not swallow them (as Prefect 1).
"""

from __future__ import annotations

from typing import Any, ClassVar

from engine import state as _state

__all__ = [
    "ENDRUN",
    "FAIL",
    "LOOP",
    "PAUSE",
    "RETRY",
    "SKIP",
    "SUCCESS",
    "TRIGGERFAIL",
    "VALIDATIONFAIL",
    "PrefectSignal",
    "PrefectStateSignal",
    "TaskTimeoutSignal",
    "signal_from_state",
]

_MISSING: Any = object()


class PrefectSignal(BaseException):
    """Base of every signal."""

    def __init__(self, message: str | None = None, *args: Any) -> None:
        super().__init__(message, *args)


class PrefectStateSignal(PrefectSignal):
    """A signal that carries the state it stands for in `self.state`.

    Extra keyword arguments (`start_time`, `run_count`, `loop_count`, ...) go to
    the state's constructor. Unless `result=` is given, the state's result is
    the signal itself.
    """

    _state_cls: ClassVar[type[_state.State]] = _state.State
    state: _state.State

    def __init__(
        self,
        message: str | None = None,
        *args: Any,
        result: Any = _MISSING,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, *args)
        if result is _MISSING:
            result = self._default_result()
        self.state = self._state_cls(message=message, result=result, **kwargs)

    def _default_result(self) -> Any:
        return self


class FAIL(PrefectStateSignal):
    """The task failed."""

    _state_cls = _state.Failed


class TRIGGERFAIL(FAIL):
    """The task's trigger did not pass."""

    _state_cls = _state.TriggerFailed


class VALIDATIONFAIL(FAIL):
    """The task's result failed validation."""

    _state_cls = _state.ValidationFailed


class SUCCESS(PrefectStateSignal):
    """The task succeeded; `result=` becomes its return value."""

    _state_cls = _state.Success


class RETRY(PrefectStateSignal):
    """Retry the task (even when it has no retries left)."""

    _state_cls = _state.Retrying


class SKIP(PrefectStateSignal):
    """Skip the task (counts as success)."""

    _state_cls = _state.Skipped


class PAUSE(PrefectStateSignal):
    """Pause the task until resumed (or until `start_time=`)."""

    _state_cls = _state.Paused


class LOOP(PrefectStateSignal):
    """Finish this iteration and run the task again; `result=` feeds the next one."""

    _state_cls = _state.Looped

    def _default_result(self) -> Any:
        # Prefect stores the repr, not the signal: loop results must be plain data.
        return repr(self)


class ENDRUN(PrefectSignal):
    """Stop the task run here with `state` as its final state."""

    def __init__(self, state: _state.State) -> None:
        super().__init__(state.message)
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.state,))


class TaskTimeoutSignal(Exception):
    """The task body ran past its timeout."""


_BY_STATE: dict[str, type[PrefectStateSignal]] = {
    sig._state_cls.__name__: sig
    for sig in (FAIL, TRIGGERFAIL, VALIDATIONFAIL, SUCCESS, RETRY, SKIP, PAUSE, LOOP)
}


def signal_from_state(state: _state.State) -> type[PrefectStateSignal]:
    """The signal class that produces states of `state`'s class."""
    try:
        return _BY_STATE[type(state).__name__]
    except KeyError:
        raise ValueError(f"no signal produces {type(state).__name__} states") from None
