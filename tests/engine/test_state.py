"""engine.state against the facts recorded from Prefect 1.4.1 (golden/state_model.json)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pendulum
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import state as state_module
from engine.results import LocalResult, NoResult, PrefectResult, Result
from engine.state import (
    STATE_CLASSES,
    Cached,
    Cancelled,
    Cancelling,
    ClientFailed,
    Failed,
    Finished,
    Looped,
    Mapped,
    Paused,
    Pending,
    Queued,
    Resume,
    Retrying,
    Running,
    Scheduled,
    Skipped,
    State,
    Submitted,
    Success,
    TimedOut,
    TriggerFailed,
    UnknownStateType,
    ValidationFailed,
    _MetaState,
    state_class,
)
from engine.version import ENGINE_VERSION

GOLDEN = json.loads(
    (
        Path(__file__).resolve().parents[1] / "golden" / "recordings" / "state_model.json"
    ).read_text()
)
T = pendulum.datetime(2024, 1, 2, 3, 4, 5)
PUBLIC_NAMES = sorted(STATE_CLASSES)
PREDICATES = sorted(GOLDEN["predicate_truth_table"]["State"])


def rich_state(cls: type[State]) -> State:
    """An instance of `cls` with every field it has set to a non-default value."""
    common: dict[str, Any] = {
        "context": {"tags": ["a"], "k": 1},
        "cached_inputs": {"x": Result(value=1, location="loc")},
    }
    extra: dict[str, dict[str, Any]] = {
        "Scheduled": {"start_time": T},
        "Paused": {"start_time": T},
        "Resume": {"start_time": T},
        "Retrying": {"start_time": T, "run_count": 4},
        "Submitted": {"state": Retrying(start_time=T, run_count=2)},
        "ClientFailed": {"state": Success("done")},
        "Queued": {"state": Pending("p"), "start_time": T},
        "Looped": {"loop_count": 3},
        "Cached": {
            "cached_parameters": {"p": 1},
            "cached_result_expiration": T,
            "hashed_inputs": {"x": "abc"},
        },
        "Mapped": {"map_states": [Success(), Failed()], "n_map_states": 2},
    }
    return cls("a message", **common, **extra.get(cls.__name__, {}))


# --------------------------------------------------------------------------- tree


def _tree_lines(cls: type[State], depth: int = 0) -> list[str]:
    lines = ["  " * depth + cls.__name__]
    for sub in cls.__subclasses__():
        if sub.__module__ == state_module.__name__:
            lines.extend(_tree_lines(sub, depth + 1))
    return lines


def test_class_tree_matches_prefect() -> None:
    """The inheritance tree is Prefect's, minus the backend-only _TimestampedState."""
    expected = [line for line in GOLDEN["inheritance_tree"] if "_TimestampedState" not in line]
    assert _tree_lines(State) == expected


def test_all_classes_including_private_ones_exist() -> None:
    """Every Prefect state class, private _MetaState included, is defined."""
    ours = {name for name in dir(state_module) if name in GOLDEN["all_classes_incl_private"]}
    assert ours == set(GOLDEN["all_classes_incl_private"])


def test_state_classes_lists_every_public_class() -> None:
    """STATE_CLASSES holds exactly the public classes, keyed by name."""
    assert set(STATE_CLASSES) == set(GOLDEN["predicate_truth_table"])
    assert all(cls.__name__ == name for name, cls in STATE_CLASSES.items())
    assert "_MetaState" not in STATE_CLASSES


def test_state_class_finds_classes_by_name() -> None:
    """state_class returns the class registered under a name."""
    assert state_class("Retrying") is Retrying


@pytest.mark.parametrize("name", ["Nope", "_MetaState", None, 3])
def test_state_class_rejects_unknown_names(name: Any) -> None:
    """An unknown name raises UnknownStateType, a ValueError."""
    with pytest.raises(UnknownStateType):
        state_class(name)
    assert issubclass(UnknownStateType, ValueError)


# --------------------------------------------------------------------------- predicates


@pytest.mark.parametrize("name", PUBLIC_NAMES)
@pytest.mark.parametrize("predicate", PREDICATES)
def test_predicates_match_prefect_truth_table(name: str, predicate: str) -> None:
    """Each is_* predicate answers as Prefect 1.4.1 does for every class."""
    expected = GOLDEN["predicate_truth_table"][name][predicate]
    assert getattr(STATE_CLASSES[name](), predicate)() is expected


def test_meta_state_base_counts_as_meta_state() -> None:
    """The private _MetaState base is a meta state and nothing else."""
    meta = _MetaState()
    assert meta.is_meta_state()
    assert not (meta.is_pending())
    assert not (meta.is_running())
    assert not (meta.is_finished())


# --------------------------------------------------------------------------- children / parents


@pytest.mark.parametrize("name", sorted(GOLDEN["children"]))
def test_children_match_prefect(name: str) -> None:
    """children() lists public descendants in Prefect's depth-first order."""
    cls = STATE_CLASSES[name]
    expected = GOLDEN["children"][name]
    assert cls.children(names_only=True) == expected
    assert [c.__name__ for c in cls.children()] == expected
    assert cls.children(include_self=True, names_only=True) == [*expected, name]


@pytest.mark.parametrize("name", sorted(GOLDEN["parents"]))
def test_parents_match_prefect(name: str) -> None:
    """parents() lists public ancestors nearest first, hiding private classes."""
    cls = STATE_CLASSES[name]
    expected = GOLDEN["parents"][name]
    assert cls.parents(names_only=True) == expected
    assert cls.parents() == [STATE_CLASSES[n] for n in expected]
    assert cls.parents(True, True) == [*expected, name]


# --------------------------------------------------------------------------- serialize


def _golden_examples(result_dir: str) -> dict[str, Callable[[], State]]:
    return {
        "Pending()": lambda: Pending(),
        "Pending('msg', result=5)": lambda: Pending("msg", result=5),
        "Scheduled(start_time=T)": lambda: Scheduled(start_time=T),
        "Paused()": lambda: Paused(),
        "Paused(start_time=T)": lambda: Paused(start_time=T),
        "Resume(start_time=T)": lambda: Resume(start_time=T),
        "Retrying(start_time=T, run_count=2, message=...)": lambda: Retrying(
            "Retrying Task (after attempt 2 of 3)", start_time=T, run_count=2
        ),
        "Submitted(state=Retrying(...))": lambda: Submitted(
            "submitted", state=Retrying(start_time=T)
        ),
        "Queued(state=Pending(), start_time=T)": lambda: Queued(
            "queued", state=Pending(), start_time=T
        ),
        "ClientFailed(state=Success())": lambda: ClientFailed("client failed", state=Success()),
        "Running()": lambda: Running("Starting task run."),
        "Cancelling()": lambda: Cancelling("cancelling"),
        "Finished()": lambda: Finished(),
        "Success(result=42)": lambda: Success("Task run succeeded.", result=42),
        "Success(result=PrefectResult(value=42,location='42'))": lambda: Success(
            result=PrefectResult(value=42, location="42")
        ),
        "Success(result=LocalResult(location=...))": lambda: Success(
            result=LocalResult(result_dir, location="x.out")
        ),
        "Cached(...)": lambda: Cached(
            "cached",
            result=1,
            cached_result_expiration=T,
            cached_parameters={"p": 1},
            hashed_inputs={"x": "c4ca4238a0b923820dcc509a6f75849b"},
        ),
        "Mapped(map_states=[Success(), Failed()])": lambda: Mapped(
            "Ready to proceed with mapping.", map_states=[Success(), Failed()]
        ),
        "Mapped(n_map_states=3)": lambda: Mapped(n_map_states=3),
        "Skipped()": lambda: Skipped("skipped"),
        "Looped(loop_count=3, result=7)": lambda: Looped(
            "Task is looping (3)", result=7, loop_count=3
        ),
        "Failed(result=ValueError)": lambda: Failed(
            "Error during execution of task: ValueError('x')", result=ValueError("x")
        ),
        "TimedOut()": lambda: TimedOut("Task timed out during execution."),
        "TriggerFailed()": lambda: TriggerFailed(
            'Trigger was "all_successful" but some of the upstream tasks failed.'
        ),
        "ValidationFailed()": lambda: ValidationFailed("invalid"),
        "Cancelled()": lambda: Cancelled("cancelled"),
        "Retrying() created inside a task context (tags + task_run_count picked up)": (
            lambda: Retrying(start_time=T, context={"tags": ["b", "a"], "task_run_count": 3})
        ),
        "Looped() created inside a task context (loop_count from context)": lambda: Looped(
            loop_count=2, context={"tags": ["b", "a"]}
        ),
    }


def _as_ours(golden: Any, result_dir: str) -> Any:
    """A golden blob with our version string and our result directory."""
    if isinstance(golden, dict):
        return {k: _as_ours(v, result_dir) for k, v in golden.items()}
    if golden == "1.4.1":
        return ENGINE_VERSION
    if golden == "RESULT_DIR":
        return result_dir
    return golden


def _assert_blob_matches(ours: dict[str, Any], golden: dict[str, Any]) -> None:
    """Same keys and values; result sub-blobs may carry extra reference fields."""
    assert set(ours) == set(golden)
    for key, expected in golden.items():
        if key == "_result":
            assert {k: ours[key][k] for k in expected} == expected
        elif key == "state" and expected is not None:
            _assert_blob_matches(ours[key], expected)
        else:
            assert ours[key] == expected, key


def test_every_golden_example_has_a_factory() -> None:
    """The test covers every serialize example recorded from Prefect."""
    assert set(_golden_examples("d")) == set(GOLDEN["serialize_examples"])


@pytest.mark.parametrize("key", sorted(GOLDEN["serialize_examples"]))
def test_serialize_produces_prefect_blob_layout(key: str, tmp_path: Path) -> None:
    """serialize() gives Prefect's blob for each recorded example."""
    example = GOLDEN["serialize_examples"][key]
    state = _golden_examples(str(tmp_path))[key]()
    blob = state.serialize()
    _assert_blob_matches(blob, _as_ours(example["serialized"], str(tmp_path)))
    assert json.loads(json.dumps(blob)) == blob


@pytest.mark.parametrize("key", sorted(GOLDEN["serialize_examples"]))
def test_deserialize_round_trips_like_prefect(key: str, tmp_path: Path) -> None:
    """A round trip keeps the class, drops the value and compares equal as in Prefect."""
    example = GOLDEN["serialize_examples"][key]
    state = _golden_examples(str(tmp_path))[key]()
    back = State.deserialize(state.serialize())
    assert type(back).__name__ == example["roundtrip_class"]
    assert repr(back.result) == example["roundtrip_result_value"]
    assert (back == state) is example["roundtrip_equal"]


@pytest.mark.parametrize(
    "cls", [STATE_CLASSES[n] for n in sorted(c.__name__ for c in state_module._PLAIN_CLASSES)]
)
@pytest.mark.parametrize("hydrate", [None, lambda blob: Result(value=7, location="x")])
def test_plain_fast_path_builds_what_the_constructor_builds(
    cls: type[State], hydrate: Callable[[dict[str, Any]], Result] | None
) -> None:
    """Deserializing a class with only State's fields skips the keywords, not the rules."""
    full = cls(
        "msg",
        result=PrefectResult(value=3, location="3"),
        context={"task_run_count": 2},
        cached_inputs={"x": Result(value=1, location="loc")},
    )
    for blob in (full.serialize(), cls().serialize(), {"type": cls.__name__}):
        fast = State.deserialize(blob, hydrate)
        slow = cls(**cls._load_fields(blob, hydrate))
        assert type(fast) is cls
        assert fast == slow
        assert fast.message == slow.message
        assert fast._result == slow._result
        assert dict(fast.context) == dict(slow.context)
        assert dict(fast.cached_inputs) == dict(slow.cached_inputs)
        assert fast.serialize() == slow.serialize()


def test_plain_fast_path_covers_only_classes_without_own_fields() -> None:
    """Subclasses with fields of their own still go through their constructor."""
    plain = {c.__name__ for c in state_module._PLAIN_CLASSES}
    assert {"Pending", "Running", "Success", "Failed"} <= plain
    assert not plain & {"Scheduled", "Retrying", "Paused", "Mapped", "Cached", "Looped"}
    assert not plain & {"Submitted", "Queued", "ClientFailed"}


def test_mapped_blob_omits_result_and_map_states() -> None:
    """Mapped blobs store only the number of children."""
    blob = Mapped(map_states=[Success(), None, Failed()]).serialize()
    assert "_result" not in blob
    assert "map_states" not in blob
    assert blob["n_map_states"] == 3


def test_deserialized_mapped_has_placeholder_children() -> None:
    """Deserializing Mapped rebuilds map_states as n placeholders."""
    back = State.deserialize(Mapped(n_map_states=3).serialize())
    assert isinstance(back, Mapped)
    assert back.map_states == (None, None, None)
    assert back.n_map_states == 3


def test_deserialized_result_is_a_reference_without_value(tmp_path: Path) -> None:
    """A round trip keeps the result's type and location but not its value."""
    written = LocalResult(tmp_path, location="v.json").write({"a": 1})
    back = State.deserialize(Success(result=written).serialize())
    ref = back._result
    assert isinstance(ref, LocalResult)
    assert (ref.value, ref.location, ref.hash) == (None, written.location, written.hash)
    assert ref.read(ref.location or "").value == {"a": 1}


def test_deserialize_rejects_unknown_types() -> None:
    """A blob of an unknown type raises UnknownStateType."""
    with pytest.raises(UnknownStateType):
        State.deserialize({"type": "Exploded", "message": None})


def test_serialized_message_of_an_exception_is_its_text() -> None:
    """An exception given as message is serialized as text."""
    blob = Failed(ValueError("boom")).serialize()  # type: ignore[arg-type]
    assert blob["message"] == "boom"


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_class_round_trips_with_all_its_fields(name: str) -> None:
    """deserialize(serialize(s)) keeps class, message, context and subclass fields."""
    state = rich_state(STATE_CLASSES[name])
    back = State.deserialize(json.loads(json.dumps(state.serialize())))
    assert type(back) is type(state)
    assert back.message == state.message
    assert back.context == state.context
    assert back.cached_inputs["x"].location == "loc"
    assert back.serialize() == state.serialize()


# --------------------------------------------------------------------------- construction


def test_result_none_and_omitted_store_no_result() -> None:
    """No result, or result=None, stores the NoResult singleton."""
    assert Success()._result is NoResult
    assert Success(result=None)._result is NoResult
    assert Success().result is None


def test_plain_result_values_are_wrapped_in_a_result() -> None:
    """A plain value becomes Result(value=...), a Result is stored as is."""
    wrapped = Success(result=5)._result
    assert type(wrapped) is Result
    assert wrapped.value == 5
    given_result = PrefectResult(value=1, location="1")
    assert Success(result=given_result)._result is given_result
    assert Success(result=given_result).result == 1


def test_no_constructor_sets_a_default_message() -> None:
    """As in Prefect 1.4.1, every class's message defaults to None."""
    assert all(cls().message is None for cls in STATE_CLASSES.values())


def test_message_is_the_first_positional_argument() -> None:
    """State("text", value) sets message and result positionally."""
    state = Failed("text", 3)
    assert (state.message, state.result) == ("text", 3)


@pytest.mark.parametrize("cls", [Scheduled, Paused, Resume, Retrying, Queued])
def test_start_time_defaults_to_none_without_reading_the_clock(
    cls: type[State],
) -> None:
    """Scheduled-like states default start_time to None (due now / indefinitely)."""
    assert cls().start_time is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "given_time",
    [
        dt.datetime(2024, 1, 2, 3, 4, 5),
        dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        pendulum.datetime(2024, 1, 2, 4, 4, 5, tz="Europe/Paris"),
        pendulum.parse("2024-01-02T03:04:05+00:00"),
        T,
    ],
)
def test_datetimes_are_normalised_to_utc_pendulum(given_time: dt.datetime) -> None:
    """Naive (taken as UTC) and aware datetimes become aware UTC pendulum DateTimes."""
    start = Scheduled(start_time=given_time).start_time
    assert isinstance(start, pendulum.DateTime)
    assert start.tzinfo is pendulum.UTC
    assert start == T


def test_start_time_rejects_non_datetimes() -> None:
    """A string start_time is a type error, not silently parsed."""
    with pytest.raises(TypeError):
        Scheduled(start_time="2024-01-02")  # type: ignore[arg-type]


def test_cached_expiration_is_normalised_to_utc() -> None:
    """cached_result_expiration is an aware UTC pendulum DateTime."""
    cached = Cached(cached_result_expiration=dt.datetime(2024, 1, 2, 3, 4, 5))
    assert cached.cached_result_expiration == T
    assert cached.cached_result_expiration.tzinfo is pendulum.UTC


def test_retrying_run_count_defaults_from_the_given_context() -> None:
    """Retrying.run_count comes from context["task_run_count"], else 1."""
    assert Retrying().run_count == 1
    assert Retrying(context={"task_run_count": 3}).run_count == 3
    assert Retrying(context={"task_run_count": 3}, run_count=2).run_count == 2


def test_looped_loop_count_defaults_from_the_given_context() -> None:
    """Looped.loop_count comes from context["task_loop_count"], else 1."""
    assert Looped().loop_count == 1
    assert Looped(context={"task_loop_count": 4}).loop_count == 4
    assert Looped(context={"task_loop_count": 4}, loop_count=2).loop_count == 2


def test_mapped_n_map_states_uses_explicit_value_else_length() -> None:
    """n_map_states is the explicit value if truthy, otherwise len(map_states)."""
    assert Mapped(map_states=[Success(), Success()]).n_map_states == 2
    assert Mapped(map_states=[Success()], n_map_states=5).n_map_states == 5
    assert Mapped(map_states=[Success()], n_map_states=0).n_map_states == 1
    assert Mapped().n_map_states == 0


def test_meta_states_unwrap_nested_meta_states() -> None:
    """Submitted(state=Queued(state=X)).state is X."""
    inner = Pending()
    assert Submitted(state=Queued(state=inner)).state is inner
    assert Queued(state=ClientFailed(state=Submitted(state=inner))).state is inner
    assert Submitted().state is None


# --------------------------------------------------------------------------- immutability


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_states_reject_attribute_assignment(name: str) -> None:
    """Setting or deleting any attribute after construction raises AttributeError."""
    state = rich_state(STATE_CLASSES[name])
    for attr in ("message", "result", "_result", "context", "new_attr"):
        with pytest.raises(AttributeError):
            setattr(state, attr, 1)
    with pytest.raises(AttributeError):
        del state.message


def test_context_and_cached_inputs_are_read_only_copies() -> None:
    """The state keeps a private read-only copy of the mappings it is given."""
    context: dict[str, Any] = {"a": 1}
    inputs: dict[str, Any] = {"x": 1}
    state = Pending(context=context, cached_inputs=inputs)
    context["a"] = 2
    inputs["y"] = 2
    assert state.context == {"a": 1}
    assert set(state.cached_inputs) == {"x"}
    with pytest.raises(TypeError):
        state.context["a"] = 3  # type: ignore[index]
    with pytest.raises(TypeError):
        state.cached_inputs["x"] = Result()  # type: ignore[index]


def test_cached_inputs_values_are_results() -> None:
    """Plain cached input values are wrapped in Results."""
    assert Pending(cached_inputs={"x": 1}).cached_inputs["x"] == Result(value=1)


def test_mapped_map_states_is_a_tuple() -> None:
    """map_states cannot be changed in place."""
    assert Mapped(map_states=[Success()]).map_states == (Success(),)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_states_survive_pickle_and_copy(name: str) -> None:
    """Pickling and (deep)copying give equal states with equal fields."""
    state = rich_state(STATE_CLASSES[name])
    for other in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state)):
        assert other == state
        assert other.serialize() == state.serialize()
    assert copy.copy(state) is state


# --------------------------------------------------------------------------- copy_with


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_copy_with_no_changes_gives_an_equal_new_state(name: str) -> None:
    """copy_with() returns a different but equal object of the same class."""
    state = rich_state(STATE_CLASSES[name])
    copied = state.copy_with()
    assert copied is not state
    assert type(copied) is type(state)
    assert copied.serialize() == state.serialize()
    assert copied._result is state._result


def test_copy_with_changes_only_the_given_fields() -> None:
    """copy_with replaces the named constructor fields and keeps the rest."""
    state = Retrying("m", result=1, start_time=T, run_count=2, context={"a": 1})
    later = state.copy_with(message="n", run_count=3)
    assert (later.message, later.run_count, later.result) == ("n", 3, 1)
    assert later.start_time == T
    assert later.context == {"a": 1}
    assert (state.message, state.run_count) == ("m", 2)


def test_copy_with_keeps_a_resolved_run_count_when_context_changes() -> None:
    """A run_count derived from the context stays fixed in copies."""
    state = Retrying(context={"task_run_count": 3})
    assert state.copy_with(context={}).run_count == 3


def test_copy_with_wraps_new_results() -> None:
    """A new plain result value is wrapped like in the constructor."""
    assert Success(result=1).copy_with(result=2)._result == Result(value=2)


def test_copy_with_keeps_the_explicit_child_count_of_mapped() -> None:
    """Mapped copies keep n_map_states and map_states."""
    state = Mapped(n_map_states=3)
    assert state.copy_with(message="x").n_map_states == 3
    children = Mapped(map_states=[Success()]).copy_with(message="y")
    assert children.map_states == (Success(),)


def test_copy_with_rejects_unknown_fields() -> None:
    """An unknown field name is a TypeError."""
    with pytest.raises(TypeError):
        Success().copy_with(run_count=1)


# --------------------------------------------------------------------------- equality


def test_equality_ignores_message_and_context() -> None:
    """States differing only in message or context are equal."""
    assert Success("a", result=1, context={"x": 1}) == Success("b", result=1)


def test_equality_checks_type_and_result_value() -> None:
    """Different classes or result values make states unequal."""
    assert Success() != Failed()
    assert Success() != Skipped()
    assert Success(result=1) != Success(result=2)
    assert Success(result=1) == Success(result=Result(value=1, location="l"))
    assert Success() != "Success"


def test_equality_checks_subclass_fields() -> None:
    """run_count, start_time, loop_count, map_states and cached fields take part."""
    assert Retrying(run_count=1) != Retrying(run_count=2)
    assert Scheduled(start_time=T) != Scheduled(start_time=T.add(seconds=1))
    assert Looped(loop_count=1) != Looped(loop_count=2)
    assert Mapped(map_states=[Success()]) != Mapped(map_states=[Failed()])
    assert Cached(hashed_inputs={"x": "a"}) != Cached(hashed_inputs={"x": "b"})
    assert Submitted(state=Pending()) != Submitted(state=Running())
    assert Pending(cached_inputs={"x": 1}) != Pending(cached_inputs={"x": 2})


def test_hash_is_the_hash_of_the_class_name() -> None:
    """Equal states hash equal: the hash is that of the class name."""
    assert hash(Success("a", result=1)) == hash("Success")
    assert len({Success(result=1), Success(result=1), Failed()}) == 2


def test_repr_shows_class_and_message() -> None:
    """repr is Prefect's <Class: "message"> or <Class>."""
    assert repr(Success("done")) == '<Success: "done">'
    assert repr(Pending()) == "<Pending>"


# --------------------------------------------------------------------------- properties

_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_contexts = st.dictionaries(st.text(max_size=8), _json_scalars, max_size=4)
_times = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.just(dt.UTC),
)
_optional_times = st.none() | _times
_counts = st.integers(min_value=1, max_value=10_000)


def _fields_for(cls: type[State]) -> st.SearchStrategy[dict[str, Any]]:
    """Constructor keywords specific to `cls`."""
    if issubclass(cls, Retrying):
        return st.fixed_dictionaries({"start_time": _optional_times, "run_count": _counts})
    if issubclass(cls, Scheduled):
        return st.fixed_dictionaries({"start_time": _optional_times})
    if issubclass(cls, Looped):
        return st.fixed_dictionaries({"loop_count": _counts})
    if issubclass(cls, Cached):
        return st.fixed_dictionaries(
            {
                "cached_result_expiration": _optional_times,
                "cached_parameters": st.none() | _contexts,
                "hashed_inputs": st.none()
                | st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=3),
            }
        )
    if issubclass(cls, Mapped):
        return st.fixed_dictionaries({"n_map_states": st.integers(0, 50)})
    if issubclass(cls, _MetaState):
        inner = st.sampled_from([Pending(), Retrying(start_time=T, run_count=2)])
        if cls is Queued:
            return st.fixed_dictionaries({"state": inner, "start_time": _optional_times})
        return st.fixed_dictionaries({"state": inner})
    return st.just({})


@st.composite
def any_state(draw: st.DrawFn) -> State:
    """A state of any public class with generated fields."""
    cls = draw(st.sampled_from([STATE_CLASSES[n] for n in PUBLIC_NAMES]))
    return cls(
        draw(st.none() | st.text(max_size=20)),
        context=draw(_contexts),
        **draw(_fields_for(cls)),
    )


_SUBCLASS_FIELDS = (
    "start_time",
    "run_count",
    "loop_count",
    "n_map_states",
    "cached_parameters",
    "cached_result_expiration",
    "hashed_inputs",
    "state",
)


@given(any_state())
def test_serialize_round_trip_preserves_class_message_context_and_fields(
    state: State,
) -> None:
    """Any generated state survives a JSON round trip of its blob."""
    back = State.deserialize(json.loads(json.dumps(state.serialize())))
    assert type(back) is type(state)
    assert back.message == state.message
    assert back.context == state.context
    for field in _SUBCLASS_FIELDS:
        assert getattr(back, field, None) == getattr(state, field, None), field
    assert back.serialize() == state.serialize()


@given(any_state())
def test_copy_with_without_changes_is_equal_for_any_state(state: State) -> None:
    """copy_with() of any state compares equal and serializes identically."""
    assert state.copy_with() == state
    assert state.copy_with().serialize() == state.serialize()
