"""The six cache validators, judged at the time the engine passes in (spec §6.3)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine import cache_validators
from engine.cache_validators import (
    all_inputs,
    all_parameters,
    call_validator,
    duration_only,
    never_use,
    partial_inputs_only,
    partial_parameters_only,
    tokenize,
)
from engine.results import Result
from engine.state import Cached, State
from engine.task import Task

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
FUTURE = NOW + timedelta(hours=1)
PAST = NOW - timedelta(seconds=1)
Validator = Callable[..., bool]


def cached(
    expires: datetime | None = FUTURE,
    inputs: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    hashed: bool = True,
) -> Cached:
    """A Cached state for the given inputs and parameters."""
    inputs = dict(inputs or {})
    return Cached(
        result="value",
        cached_result_expiration=expires,
        hashed_inputs={k: tokenize(v) for k, v in inputs.items()} if hashed else None,
        cached_inputs=None if hashed else {k: Result(value=v) for k, v in inputs.items()},
        cached_parameters=dict(parameters or {}),
    )


def results(**values: Any) -> dict[str, Result]:
    """Inputs as the runner passes them: argument name -> Result."""
    return {k: Result(value=v) for k, v in values.items()}


EXPIRING: list[tuple[str, Validator]] = [
    ("duration_only", duration_only),
    ("all_inputs", all_inputs),
    ("all_parameters", all_parameters),
    ("partial_inputs_only", partial_inputs_only(["x"])),
    ("partial_parameters_only", partial_parameters_only(["p"])),
    ("partial_inputs_only(None)", partial_inputs_only()),
    ("partial_parameters_only(None)", partial_parameters_only()),
]


def test_tokenize_is_the_md5_of_the_json_form() -> None:
    """tokenize(1) is the digest Prefect's golden Cached blob shows."""
    assert tokenize(1) == "c4ca4238a0b923820dcc509a6f75849b"
    assert tokenize({"b": 1, "a": 2}) == tokenize({"a": 2, "b": 1})
    assert tokenize([1, 2]) != tokenize([2, 1])


def test_tokenize_falls_back_to_pickles_for_non_json_values() -> None:
    """Values JSON cannot encode still get a stable token."""
    assert tokenize({1, 2}) == tokenize({1, 2})
    assert tokenize({1, 2}) != tokenize({1, 3})


@pytest.mark.parametrize("state", [cached(), cached(expires=None), cached(expires=PAST)], ids=repr)
def test_never_use_never_accepts_a_cache(state: State) -> None:
    """never_use is always False."""
    assert never_use(state, {}, {}, now=NOW) is False


@pytest.mark.parametrize(
    ("expires", "valid"), [(None, True), (FUTURE, True), (NOW, False), (PAST, False)]
)
def test_duration_only_accepts_until_the_expiry(expires: datetime | None, valid: bool) -> None:
    """No expiry or a future one is valid; an expiry at or before now is not."""
    assert duration_only(cached(expires=expires), {}, {}, now=NOW) is valid


@pytest.mark.parametrize(("name", "validator"), EXPIRING, ids=[n for n, _ in EXPIRING])
def test_every_validator_but_never_use_rejects_an_expired_cache(
    name: str, validator: Validator
) -> None:
    """The expiry test comes first, even for validators that check nothing else."""
    state = cached(expires=PAST, inputs={"x": 1}, parameters={"p": 1})
    assert validator(state, results(x=1), {"p": 1}, now=NOW) is False
    assert validator(cached(inputs={"x": 1}, parameters={"p": 1}), results(x=1), {"p": 1}, now=NOW)


def test_all_inputs_accepts_the_same_inputs_only() -> None:
    """Every current input must hash like the cached one."""
    state = cached(inputs={"x": 1, "y": [1, 2]})
    assert all_inputs(state, results(x=1, y=[1, 2]), {}, now=NOW) is True
    assert all_inputs(state, results(x=1, y=[2, 1]), {}, now=NOW) is False
    assert all_inputs(state, results(x=2, y=[1, 2]), {}, now=NOW) is False


def test_all_inputs_accepts_raw_values_as_prefect_passes_them() -> None:
    """Prefect hands validators raw input values; they are compared the same way."""
    assert all_inputs(cached(inputs={"x": 1}), {"x": 1}, {}, now=NOW) is True
    assert all_inputs(cached(inputs={"x": 1}), {"x": 2}, {}, now=NOW) is False


def test_all_inputs_falls_back_to_cached_inputs_without_hashes() -> None:
    """With hashed_inputs None the deprecated cached_inputs values are compared."""
    state = cached(inputs={"x": 1}, hashed=False)
    assert all_inputs(state, results(x=1), {}, now=NOW) is True
    assert all_inputs(state, results(x=3), {}, now=NOW) is False


def test_all_parameters_accepts_identical_parameters_only() -> None:
    """Every flow parameter must equal the cached ones."""
    state = cached(parameters={"p": 1, "q": "a"})
    assert all_parameters(state, {}, {"p": 1, "q": "a"}, now=NOW) is True
    assert all_parameters(state, {}, {"p": 1, "q": "b"}, now=NOW) is False
    assert all_parameters(state, {}, {"p": 1}, now=NOW) is False


def test_partial_parameters_only_compares_the_named_parameters() -> None:
    """Only the parameters in validate_on must match."""
    validator = partial_parameters_only(validate_on=["p"])
    state = cached(parameters={"p": 1, "q": "a"})
    assert validator(state, {}, {"p": 1, "q": "changed"}, now=NOW) is True
    assert validator(state, {}, {"p": 2, "q": "a"}, now=NOW) is False


def test_partial_parameters_only_without_names_accepts_any_unexpired_cache() -> None:
    """validate_on=None means nothing needs to match."""
    assert partial_parameters_only()(cached(parameters={"p": 1}), {}, {"p": 9}, now=NOW) is True


def test_partial_inputs_only_compares_the_named_inputs() -> None:
    """Only the inputs in validate_on must match."""
    validator = partial_inputs_only(validate_on=["x"])
    state = cached(inputs={"x": 1, "y": 1})
    assert validator(state, results(x=1, y=99), {}, now=NOW) is True
    assert validator(state, results(x=2, y=1), {}, now=NOW) is False


def test_partial_inputs_only_without_names_accepts_any_unexpired_cache() -> None:
    """validate_on=None means nothing needs to match."""
    assert partial_inputs_only()(cached(inputs={"x": 1}), results(x=5), {}, now=NOW) is True


def test_partial_validators_are_named_after_their_factory() -> None:
    """The validators the factories return carry the factory's name."""
    assert partial_inputs_only(["x"]).__name__ == "partial_inputs_only"
    assert partial_parameters_only(["p"]).__name__ == "partial_parameters_only"


def test_call_validator_passes_the_engine_time_to_builtin_validators() -> None:
    """Built-ins judge expiry at `now`, not at the wall clock."""
    state = cached(expires=datetime(2000, 1, 1, tzinfo=UTC))
    assert call_validator(duration_only, state, {}, {}, datetime(1999, 1, 1, tzinfo=UTC)) is True
    assert call_validator(duration_only, state, {}, {}, NOW) is False


def test_call_validator_calls_user_validators_with_prefects_three_arguments() -> None:
    """A user validator `(state, inputs, parameters)` is called without `now`."""
    calls: list[tuple[State, Mapping[str, Any], Mapping[str, Any]]] = []

    def mine(state: State, inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
        calls.append((state, inputs, parameters))
        return True

    state = cached()
    assert call_validator(mine, state, {"x": 1}, {"p": 2}, NOW) is True
    assert calls == [(state, {"x": 1}, {"p": 2})]


def test_tasks_default_to_duration_only_with_cache_for_and_never_use_without() -> None:
    """Prefect's defaults: cache_for implies duration_only, otherwise never_use."""
    assert Task(name="a", cache_for=timedelta(1)).cache_validator is cache_validators.duration_only
    assert Task(name="b").cache_validator is cache_validators.never_use
    assert Task(name="c", cache_validator=all_inputs).cache_validator is all_inputs
