"""The State hierarchy of Prefect 1.4.1, as immutable values.

The class tree is the documented API (`Retrying().is_pending()` is true because
Retrying is a Scheduled is a Pending), so it is kept as is. Unlike Prefect, a
state never changes after construction (use `copy_with`) and never reads
ambient context or the clock: times and counters are passed in, and the
defaults that Prefect derived from "now" mean "immediately" / "indefinitely".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NoReturn, Self, overload

import pendulum
from pendulum import DateTime

from engine.results import NoResult, Result, result_from_blob, result_to_blob
from engine.version import ENGINE_VERSION

__all__ = [
    "PLAIN_STATE_CLASSES",
    "STATE_CLASSES",
    "Cached",
    "Cancelled",
    "Cancelling",
    "ClientFailed",
    "Failed",
    "Finished",
    "Looped",
    "Mapped",
    "Paused",
    "Pending",
    "Queued",
    "Resume",
    "Retrying",
    "Running",
    "Scheduled",
    "Skipped",
    "State",
    "Submitted",
    "Success",
    "TimedOut",
    "TriggerFailed",
    "UnknownStateType",
    "ValidationFailed",
    "state_class",
    "with_result",
]

_set = object.__setattr__
_UTC = pendulum.UTC
_EMPTY: Mapping[str, Any] = MappingProxyType({})

Blob = dict[str, Any]
ResultLoader = Callable[[dict[str, Any]], Result]


class UnknownStateType(ValueError):
    """A name (e.g. a blob's "type") that is not a public state class."""


# ------------------------------------------------------------------------ normalisers


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # A private copy behind a read-only view: the caller's dict may change later.
    if not mapping:
        return _EMPTY
    return MappingProxyType(dict(mapping))


def _freeze_optional(mapping: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if mapping is None else MappingProxyType(dict(mapping))


def _freeze_inputs(inputs: Mapping[str, Any] | None) -> Mapping[str, Result]:
    if not inputs:
        return _EMPTY
    return MappingProxyType(
        {k: v if isinstance(v, Result) else Result(value=v) for k, v in inputs.items()}
    )


def _as_result(value: Any) -> Result:
    if value is None:
        return NoResult
    if isinstance(value, Result):
        return value
    return Result(value=value)


def _to_utc(value: datetime | None) -> DateTime | None:
    """An aware UTC pendulum DateTime; naive datetimes are taken to be UTC."""
    if value is None:
        return None
    if isinstance(value, DateTime):
        return value if value.tzinfo is _UTC else value.in_timezone(_UTC)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    return pendulum.instance(value, tz=_UTC).in_timezone(_UTC)


def _iso(value: DateTime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> DateTime | None:
    return None if value is None else _to_utc(datetime.fromisoformat(value))


def _message_text(message: Any) -> str | None:
    # Prefect allows an exception as message; blobs carry its text.
    if message is None or isinstance(message, str):
        return message
    return str(message)


# --------------------------------------------------------------------------- State


class State:
    """Base state: a message, a Result, an execution context and cached inputs.

    Equality (as Prefect): same concrete class, equal `.result` values and equal
    public fields other than `message` and `context`. `__hash__` is the hash of
    the class name rather than Prefect's id(), so equal values hash alike.
    """

    __slots__ = ("_result", "cached_inputs", "context", "message")

    # (constructor keyword, attribute) pairs: what copy_with carries over.
    _ctor: ClassVar[tuple[tuple[str, str], ...]] = (
        ("message", "message"),
        ("result", "_result"),
        ("context", "context"),
        ("cached_inputs", "cached_inputs"),
    )
    # Attributes compared by __eq__ besides the result value.
    _eq_attrs: ClassVar[tuple[str, ...]] = ("cached_inputs",)

    message: str | None
    context: Mapping[str, Any]
    cached_inputs: Mapping[str, Result]
    _result: Result

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        context: Mapping[str, Any] | None = None,
        cached_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        _set(self, "message", message)
        _set(self, "_result", _as_result(result))
        # Most states have neither: skip the normalising calls for them.
        _set(self, "context", _freeze(context) if context else _EMPTY)
        _set(self, "cached_inputs", _freeze_inputs(cached_inputs) if cached_inputs else _EMPTY)

    # -- value semantics

    @property
    def result(self) -> Any:
        """The value of the state's Result."""
        return self._result.value

    def copy_with(self, **changes: Any) -> Self:
        """A new state of the same class with the given constructor fields changed."""
        kwargs = {name: getattr(self, attr) for name, attr in self._ctor}
        kwargs.update(changes)
        return type(self)(**kwargs)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable; use copy_with()")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State) or type(other) is not type(self):
            return False
        if not bool(self._result.value == other._result.value):
            return False
        return all(bool(getattr(self, a) == getattr(other, a)) for a in self._eq_attrs)

    def __hash__(self) -> int:
        return hash(type(self).__name__)

    def __repr__(self) -> str:
        if self.message is not None:
            return f'<{type(self).__name__}: "{self.message}">'
        return f"<{type(self).__name__}>"

    def __copy__(self) -> Self:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Read-only mapping views cannot be pickled: rebuild from plain dicts.
        kwargs = {name: _thaw(getattr(self, attr)) for name, attr in self._ctor}
        return (_rebuild_state, (type(self), kwargs))

    # -- class tree

    @overload
    @classmethod
    def children(
        cls, include_self: bool = ..., names_only: Literal[False] = ...
    ) -> list[type[State]]: ...
    @overload
    @classmethod
    def children(cls, include_self: bool, names_only: Literal[True]) -> list[str]: ...
    @overload
    @classmethod
    def children(cls, include_self: bool = ..., *, names_only: Literal[True]) -> list[str]: ...
    @classmethod
    def children(
        cls, include_self: bool = False, names_only: bool = False
    ) -> list[type[State]] | list[str]:
        """All public descendant classes, depth-first (Prefect's order)."""
        found = _descendants(cls)
        if include_self:
            found.append(cls)
        return [c.__name__ for c in found] if names_only else found

    @overload
    @classmethod
    def parents(
        cls, include_self: bool = ..., names_only: Literal[False] = ...
    ) -> list[type[State]]: ...
    @overload
    @classmethod
    def parents(cls, include_self: bool, names_only: Literal[True]) -> list[str]: ...
    @overload
    @classmethod
    def parents(cls, include_self: bool = ..., *, names_only: Literal[True]) -> list[str]: ...
    @classmethod
    def parents(
        cls, include_self: bool = False, names_only: bool = False
    ) -> list[type[State]] | list[str]:
        """All public ancestor classes, nearest first."""
        found: list[type[State]] = [
            k for k in cls.__mro__[1:] if issubclass(k, State) and not k.__name__.startswith("_")
        ]
        if include_self:
            found.append(cls)
        return [c.__name__ for c in found] if names_only else found

    # -- predicates (isinstance semantics: true for subclasses too)

    def is_pending(self) -> bool:
        """Pending, Scheduled, Paused, Resume or Retrying."""
        return isinstance(self, Pending)

    def is_scheduled(self) -> bool:
        """Scheduled (incl. Paused, Resume, Retrying) or Queued."""
        return isinstance(self, _SCHEDULED_KINDS)

    def is_retrying(self) -> bool:
        """Retrying."""
        return isinstance(self, Retrying)

    def is_queued(self) -> bool:
        """Queued."""
        return isinstance(self, Queued)

    def is_submitted(self) -> bool:
        """Submitted."""
        return isinstance(self, Submitted)

    def is_meta_state(self) -> bool:
        """A state wrapping another one: Submitted, Queued, ClientFailed."""
        return isinstance(self, _MetaState)

    def is_running(self) -> bool:
        """Running or Cancelling."""
        return isinstance(self, Running)

    def is_finished(self) -> bool:
        """Any Finished state."""
        return isinstance(self, Finished)

    def is_successful(self) -> bool:
        """Success, Cached, Mapped or Skipped."""
        return isinstance(self, Success)

    def is_cached(self) -> bool:
        """Cached."""
        return isinstance(self, Cached)

    def is_mapped(self) -> bool:
        """Mapped."""
        return isinstance(self, Mapped)

    def is_skipped(self) -> bool:
        """Skipped."""
        return isinstance(self, Skipped)

    def is_looped(self) -> bool:
        """Looped."""
        return isinstance(self, Looped)

    def is_failed(self) -> bool:
        """Failed, TimedOut, TriggerFailed or ValidationFailed."""
        return isinstance(self, Failed)

    # -- serialization

    def serialize(self) -> Blob:
        """Prefect's JSON blob layout; the result is a reference, never the value."""
        context, inputs = self.context, self.cached_inputs
        blob: Blob = {
            "type": type(self).__name__,
            "message": _message_text(self.message),
            "_result": result_to_blob(self._result),
            # Most states carry neither: an empty read-only view needs no copying.
            "context": dict(context) if context else {},
            "cached_inputs": {k: result_to_blob(v) for k, v in inputs.items()} if inputs else {},
        }
        self._dump_fields(blob)
        blob["__version__"] = ENGINE_VERSION
        return blob

    def _dump_fields(self, blob: Blob) -> None:
        """Add the subclass fields to a blob."""

    @staticmethod
    def deserialize(blob: Mapping[str, Any], hydrate: ResultLoader | None = None) -> State:
        """Rebuild a state of any class from `serialize()` output.

        Results come back as references unless `hydrate` turns a result blob into
        a Result with its value (e.g. read from a result store).
        """
        cls = state_class(blob.get("type"))
        if cls in _PLAIN_CLASSES:
            return _plain_from_blob(cls, blob, hydrate)
        return cls(**cls._load_fields(blob, hydrate))

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        """Constructor keywords from a blob."""
        result = blob.get("_result")
        inputs = blob.get("cached_inputs") or {}
        load = hydrate or result_from_blob
        return {
            "message": blob.get("message"),
            "result": NoResult if result is None else load(result),
            "context": blob.get("context"),
            "cached_inputs": {k: result_from_blob(v) for k, v in inputs.items()},
        }


def _plain_from_blob(
    cls: type[State], blob: Mapping[str, Any], hydrate: ResultLoader | None
) -> State:
    """`cls(**cls._load_fields(blob, hydrate))` for a class with only State's own fields.

    Most blobs a run reads are of such classes (Pending, Running, Success ...);
    setting the four slots directly skips building and unpacking the keywords.
    It normalises exactly as `State.__init__` does.
    """
    state = object.__new__(cls)
    result = blob.get("_result")
    inputs = blob.get("cached_inputs")
    _set(state, "message", blob.get("message"))
    _set(
        state,
        "_result",
        NoResult if result is None else _as_result((hydrate or result_from_blob)(result)),
    )
    _set(state, "context", _freeze(blob.get("context")))
    _set(
        state,
        "cached_inputs",
        _freeze_inputs({k: result_from_blob(v) for k, v in inputs.items()}) if inputs else _EMPTY,
    )
    return state


def _rebuild_state(cls: type[State], kwargs: dict[str, Any]) -> State:
    return cls(**kwargs)


def _thaw(value: Any) -> Any:
    return dict(value) if isinstance(value, MappingProxyType) else value


def _descendants(cls: type[State]) -> list[type[State]]:
    found: list[type[State]] = []
    for sub in cls.__subclasses__():
        # Private helpers (_MetaState) are hidden but their children are not.
        if not sub.__name__.startswith("_"):
            found.append(sub)
        found.extend(_descendants(sub))
    return found


# --------------------------------------------------------------------------- Pending


class Pending(State):
    """Waiting to run; the state every task run starts in."""

    __slots__ = ()


class Scheduled(Pending):
    """Pending until `start_time`; None means due immediately."""

    __slots__ = ("start_time",)
    _ctor = (*State._ctor, ("start_time", "start_time"))
    _eq_attrs = (*State._eq_attrs, "start_time")

    start_time: DateTime | None

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        start_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        cached_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, result, context=context, cached_inputs=cached_inputs)
        _set(self, "start_time", _to_utc(start_time))

    def _dump_fields(self, blob: Blob) -> None:
        blob["start_time"] = _iso(self.start_time)

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        fields = super()._load_fields(blob, hydrate)
        fields["start_time"] = _parse_time(blob.get("start_time"))
        return fields


class Paused(Scheduled):
    """Waiting for a resume; `start_time` None means indefinitely."""

    __slots__ = ()


class Resume(Scheduled):
    """Allowed to continue (usually after Paused)."""

    __slots__ = ()


class Retrying(Scheduled):
    """Scheduled to retry; `run_count` is the attempt that failed.

    `run_count` defaults to `context["task_run_count"]`, else 1.
    """

    __slots__ = ("run_count",)
    _ctor = (*Scheduled._ctor, ("run_count", "run_count"))
    _eq_attrs = (*Scheduled._eq_attrs, "run_count")

    run_count: int

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        start_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        cached_inputs: Mapping[str, Any] | None = None,
        run_count: int | None = None,
    ) -> None:
        super().__init__(
            message,
            result,
            start_time=start_time,
            context=context,
            cached_inputs=cached_inputs,
        )
        if run_count is None:
            run_count = self.context.get("task_run_count", 1)
        _set(self, "run_count", run_count)

    def _dump_fields(self, blob: Blob) -> None:
        super()._dump_fields(blob)
        blob["run_count"] = self.run_count

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        fields = super()._load_fields(blob, hydrate)
        fields["run_count"] = blob.get("run_count")
        return fields


# ------------------------------------------------------------------------ meta states


class _MetaState(State):
    """A state wrapping another one; nested meta states are unwrapped."""

    __slots__ = ("_state",)
    _ctor = (*State._ctor, ("state", "_state"))
    _eq_attrs = (*State._eq_attrs, "state")

    _state: State | None

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        state: State | None = None,
        context: Mapping[str, Any] | None = None,
        cached_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, result, context=context, cached_inputs=cached_inputs)
        while isinstance(state, _MetaState):
            state = state.state
        _set(self, "_state", state)

    @property
    def state(self) -> State | None:
        """The wrapped state (never itself a meta state)."""
        return self._state

    def _dump_fields(self, blob: Blob) -> None:
        blob["state"] = None if self._state is None else self._state.serialize()

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        fields = super()._load_fields(blob, hydrate)
        inner = blob.get("state")
        fields["state"] = None if inner is None else State.deserialize(inner, hydrate)
        return fields


class ClientFailed(_MetaState):
    """The client could not record the wrapped state; the run stops."""

    __slots__ = ()


class Submitted(_MetaState):
    """The wrapped (usually Scheduled) state has been picked up."""

    __slots__ = ()


class Queued(_MetaState):
    """Could not start (e.g. a concurrency limit); waits until `start_time`."""

    __slots__ = ("start_time",)
    _ctor = (*_MetaState._ctor, ("start_time", "start_time"))
    _eq_attrs = (*_MetaState._eq_attrs, "start_time")

    start_time: DateTime | None

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        state: State | None = None,
        start_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        cached_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, result, state=state, context=context, cached_inputs=cached_inputs)
        _set(self, "start_time", _to_utc(start_time))

    def _dump_fields(self, blob: Blob) -> None:
        blob["start_time"] = _iso(self.start_time)
        super()._dump_fields(blob)

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        fields = super()._load_fields(blob, hydrate)
        fields["start_time"] = _parse_time(blob.get("start_time"))
        return fields


# --------------------------------------------------------------------------- Running


class Running(State):
    """Executing."""

    __slots__ = ()


class Cancelling(Running):
    """Cancellation requested; some work may still be running."""

    __slots__ = ()


# --------------------------------------------------------------------------- Finished


class Finished(State):
    """Reached some form of completion."""

    __slots__ = ()


class Looped(Finished):
    """One loop iteration finished.

    `loop_count` defaults to `context["task_loop_count"]`, else 1.
    """

    __slots__ = ("loop_count",)
    _ctor = (*State._ctor, ("loop_count", "loop_count"))
    _eq_attrs = (*State._eq_attrs, "loop_count")

    loop_count: int

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        loop_count: int | None = None,
        context: Mapping[str, Any] | None = None,
        cached_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, result, context=context, cached_inputs=cached_inputs)
        if loop_count is None:
            loop_count = self.context.get("task_loop_count", 1)
        _set(self, "loop_count", loop_count)

    def _dump_fields(self, blob: Blob) -> None:
        blob["loop_count"] = self.loop_count

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        fields = super()._load_fields(blob, hydrate)
        fields["loop_count"] = blob.get("loop_count")
        return fields


class Success(Finished):
    """Finished successfully."""

    __slots__ = ()


class Cached(Success):
    """A reusable earlier result; `cached_result_expiration` None = no expiry."""

    __slots__ = ("cached_parameters", "cached_result_expiration", "hashed_inputs")
    _ctor = (
        *State._ctor,
        ("cached_parameters", "cached_parameters"),
        ("cached_result_expiration", "cached_result_expiration"),
        ("hashed_inputs", "hashed_inputs"),
    )
    _eq_attrs = (
        *State._eq_attrs,
        "cached_parameters",
        "cached_result_expiration",
        "hashed_inputs",
    )

    cached_parameters: Mapping[str, Any] | None
    cached_result_expiration: DateTime | None
    hashed_inputs: Mapping[str, str] | None

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        cached_inputs: Mapping[str, Any] | None = None,
        cached_parameters: Mapping[str, Any] | None = None,
        cached_result_expiration: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        hashed_inputs: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, result, context=context, cached_inputs=cached_inputs)
        _set(self, "cached_parameters", _freeze_optional(cached_parameters))
        _set(self, "cached_result_expiration", _to_utc(cached_result_expiration))
        _set(self, "hashed_inputs", _freeze_optional(hashed_inputs))

    def _dump_fields(self, blob: Blob) -> None:
        blob["cached_result_expiration"] = _iso(self.cached_result_expiration)
        blob["cached_parameters"] = _thaw(self.cached_parameters)
        blob["hashed_inputs"] = _thaw(self.hashed_inputs)

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        fields = super()._load_fields(blob, hydrate)
        fields["cached_parameters"] = blob.get("cached_parameters")
        fields["cached_result_expiration"] = _parse_time(blob.get("cached_result_expiration"))
        fields["hashed_inputs"] = blob.get("hashed_inputs")
        return fields


class Mapped(Success):
    """The task was mapped: its children (`map_states`) were created.

    `n_map_states` is the explicit count if truthy, else `len(map_states)`.
    Blobs keep only the count; deserializing gives `map_states = (None,) * n`.
    """

    __slots__ = ("_n_map_states", "map_states")
    _ctor = (
        *State._ctor,
        ("map_states", "map_states"),
        ("n_map_states", "_n_map_states"),
    )
    _eq_attrs = (*State._eq_attrs, "map_states", "n_map_states")

    map_states: tuple[State | None, ...]
    _n_map_states: int | None

    def __init__(
        self,
        message: str | None = None,
        result: Any = NoResult,
        *,
        map_states: Iterable[State | None] | None = None,
        context: Mapping[str, Any] | None = None,
        cached_inputs: Mapping[str, Any] | None = None,
        n_map_states: int | None = None,
    ) -> None:
        super().__init__(message, result, context=context, cached_inputs=cached_inputs)
        _set(self, "map_states", () if map_states is None else tuple(map_states))
        _set(self, "_n_map_states", n_map_states)

    @property
    def n_map_states(self) -> int:
        """How many children were mapped."""
        return self._n_map_states or len(self.map_states)

    def serialize(self) -> Blob:
        blob = super().serialize()
        del blob["_result"]
        return blob

    def _dump_fields(self, blob: Blob) -> None:
        blob["n_map_states"] = self.n_map_states

    @classmethod
    def _load_fields(
        cls, blob: Mapping[str, Any], hydrate: ResultLoader | None = None
    ) -> dict[str, Any]:
        fields = super()._load_fields(blob, hydrate)
        n = blob.get("n_map_states") or 0
        fields["map_states"] = (None,) * n
        fields["n_map_states"] = n
        return fields


class Skipped(Success):
    """Finished without running; counts as successful (also for triggers)."""

    __slots__ = ()


class Cancelled(Finished):
    """Cancelled by a user mid-run; neither successful nor failed."""

    __slots__ = ()


class Failed(Finished):
    """Finished with a failure."""

    __slots__ = ()


class TimedOut(Failed):
    """Failed by exceeding the task's timeout."""

    __slots__ = ()


class TriggerFailed(Failed):
    """Failed because the trigger did not pass."""

    __slots__ = ()


class ValidationFailed(Failed):
    """Failed result validation."""

    __slots__ = ()


# --------------------------------------------------------------------------- lookup

_PUBLIC: list[type[State]] = [State, *State.children()]
STATE_CLASSES: dict[str, type[State]] = {cls.__name__: cls for cls in _PUBLIC}
_SCHEDULED_KINDS = (Scheduled, Queued)


def _has_only_base_fields(cls: type[State]) -> bool:
    """True when `cls` builds, dumps and loads exactly State's own fields."""
    below_state = cls.__mro__[: cls.__mro__.index(State)]
    return (
        cls.__init__ is State.__init__
        and cls._ctor is State._ctor
        and cls.serialize is State.serialize
        and all(
            "_load_fields" not in k.__dict__ and "_dump_fields" not in k.__dict__
            for k in below_state
        )
    )


_PLAIN_CLASSES: frozenset[type[State]] = frozenset(
    cls for cls in _PUBLIC if _has_only_base_fields(cls)
)
"""Classes whose blobs hold only State's own fields (deserialized by `_plain_from_blob`)."""
PLAIN_STATE_CLASSES = _PLAIN_CLASSES


def state_class(name: object) -> type[State]:
    """The public state class called `name`."""
    try:
        return STATE_CLASSES[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise UnknownStateType(f"unknown state type {name!r}") from None


def with_result(state: State, result: Any) -> State:
    """`state.copy_with(result=result)`, without the keyword round trip for plain classes.

    A mapped child receives its upstream's state with one element as result, so
    this runs once per child and edge. For a class with only State's own fields
    the copy shares the (already frozen, private) context and cached inputs and
    sets the slots directly -- exactly what `copy_with` would produce.
    """
    cls = type(state)
    if cls not in _PLAIN_CLASSES:
        return state.copy_with(result=result)
    new = object.__new__(cls)
    _set(new, "message", state.message)
    _set(new, "_result", _as_result(result))
    _set(new, "context", state.context)
    _set(new, "cached_inputs", state.cached_inputs)
    return new
