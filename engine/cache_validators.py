"""Cache validators: is an earlier Cached state still good for this run?

Signature (Prefect 1): `validator(state, inputs, parameters) -> bool`, where
`inputs` maps argument names to Results. Ours also accept `now=` so expiry is
judged against the time the engine passes in, never the wall clock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import cloudpickle  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from engine.state import State

Validator = Callable[..., bool]


def tokenize(value: Any) -> str:
    """A stable digest of a value (md5 of its JSON form, else of its pickle)."""
    try:
        data = json.dumps(value, sort_keys=True).encode()
    except (TypeError, ValueError):
        data = cloudpickle.dumps(value)
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _accepts_now(fn: Validator) -> Validator:
    fn._accepts_now = True  # type: ignore[attr-defined]
    return fn


def call_validator(
    validator: Validator,
    state: State,
    inputs: Mapping[str, Any],
    parameters: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Call a built-in or user validator with the arguments it takes."""
    if getattr(validator, "_accepts_now", False):
        return bool(validator(state, inputs, parameters, now=now))
    return bool(validator(state, inputs, parameters))


def _not_expired(state: State, now: datetime | None) -> bool:
    expiration = getattr(state, "cached_result_expiration", None)
    return expiration is None or now is None or expiration > now


def _values(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in inputs.items()}


def _inputs_match(state: State, inputs: Mapping[str, Any], names: Iterable[str] | None) -> bool:
    hashed = getattr(state, "hashed_inputs", None)
    current = _values(inputs)
    keys = set(current) if names is None else set(names)
    if hashed is not None:
        return all(hashed.get(k) == tokenize(current.get(k)) for k in keys)
    cached = _values(state.cached_inputs or {})
    return all(cached.get(k) == current.get(k) for k in keys)


@_accepts_now
def never_use(
    state: State,
    inputs: Mapping[str, Any],
    parameters: Mapping[str, Any],
    now: datetime | None = None,
) -> bool:
    """Never reuse a cache."""
    return False


@_accepts_now
def duration_only(
    state: State,
    inputs: Mapping[str, Any],
    parameters: Mapping[str, Any],
    now: datetime | None = None,
) -> bool:
    """Valid until the cache expires."""
    return _not_expired(state, now)


@_accepts_now
def all_inputs(
    state: State,
    inputs: Mapping[str, Any],
    parameters: Mapping[str, Any],
    now: datetime | None = None,
) -> bool:
    """Valid until expiry, and only for the same inputs."""
    return _not_expired(state, now) and _inputs_match(state, inputs, None)


@_accepts_now
def all_parameters(
    state: State,
    inputs: Mapping[str, Any],
    parameters: Mapping[str, Any],
    now: datetime | None = None,
) -> bool:
    """Valid until expiry, and only for the same flow parameters."""
    cached = getattr(state, "cached_parameters", None) or {}
    return _not_expired(state, now) and dict(cached) == dict(parameters or {})


def partial_parameters_only(validate_on: Iterable[str] | None = None) -> Validator:
    """Valid until expiry, and only when the named parameters match."""
    names = None if validate_on is None else list(validate_on)

    @_accepts_now
    def validator(
        state: State,
        inputs: Mapping[str, Any],
        parameters: Mapping[str, Any],
        now: datetime | None = None,
    ) -> bool:
        if not _not_expired(state, now):
            return False
        if names is None:
            return True
        cached = getattr(state, "cached_parameters", None) or {}
        current = parameters or {}
        return all(cached.get(k) == current.get(k) for k in names)

    validator.__name__ = "partial_parameters_only"
    return validator


def partial_inputs_only(validate_on: Iterable[str] | None = None) -> Validator:
    """Valid until expiry, and only when the named inputs match."""
    names = None if validate_on is None else list(validate_on)

    @_accepts_now
    def validator(
        state: State,
        inputs: Mapping[str, Any],
        parameters: Mapping[str, Any],
        now: datetime | None = None,
    ) -> bool:
        if not _not_expired(state, now):
            return False
        return names is None or _inputs_match(state, inputs, names)

    validator.__name__ = "partial_inputs_only"
    return validator
