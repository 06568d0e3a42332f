"""engine.results: serializers, Result storage over fsspec, and reference blobs."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.results import (
    ConstantResult,
    FSResult,
    JSONSerializer,
    LocalResult,
    NoResult,
    NoResultType,
    PickleSerializer,
    PrefectResult,
    Result,
    ResultNotImplementedError,
    Serializer,
    auto_serializer,
    result_from_blob,
    result_to_blob,
    serializer_for,
)
from engine.version import ENGINE_VERSION

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- serializers


@pytest.mark.parametrize("serializer", [JSONSerializer(), PickleSerializer()])
@pytest.mark.parametrize("value", [None, 1, "x", [1, {"a": [True, None]}], {"k": 1.5}])
def test_serializers_round_trip_plain_values(serializer: Serializer, value: Any) -> None:
    """JSON and cloudpickle both give back what they were given."""
    data = serializer.serialize(value)
    assert isinstance(data, bytes)
    assert serializer.deserialize(data) == value


def test_cloudpickle_serializer_handles_lambdas_and_exceptions() -> None:
    """cloudpickle stores what JSON cannot (closures, exceptions)."""
    serializer = PickleSerializer()
    factor = 3
    back = serializer.deserialize(serializer.serialize(lambda x: x * factor))
    assert back(2) == 6
    error = serializer.deserialize(serializer.serialize(ValueError("x")))
    assert isinstance(error, ValueError)
    assert error.args == ("x",)


def test_serializers_satisfy_the_protocol_and_have_names() -> None:
    """The two serializers are Serializers named "json" and "cloudpickle"."""
    assert isinstance(JSONSerializer(), Serializer)
    assert (JSONSerializer().name, PickleSerializer().name) == ("json", "cloudpickle")
    assert JSONSerializer() == JSONSerializer() != PickleSerializer()


def test_serializer_for_finds_serializers_by_name() -> None:
    """serializer_for returns the serializer registered under a name."""
    assert serializer_for("json") == JSONSerializer()
    assert serializer_for("cloudpickle") == PickleSerializer()


def test_serializer_for_rejects_unknown_names() -> None:
    """An unknown serializer name is a ValueError naming the known ones."""
    with pytest.raises(ValueError, match="cloudpickle"):
        serializer_for("yaml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": [1, 2.5, None, True]}, "json"),
        ("text", "json"),
        ((1, 2), "cloudpickle"),
        ({1: "a"}, "cloudpickle"),
        (float("nan"), "cloudpickle"),
        (ValueError("x"), "cloudpickle"),
        ({"a": {1, 2}}, "cloudpickle"),
    ],
)
def test_auto_serializer_prefers_json_only_when_it_round_trips(value: Any, expected: str) -> None:
    """auto_serializer picks JSON for plain JSON data and cloudpickle otherwise."""
    assert auto_serializer(value).name == expected


@given(json_values)
def test_auto_serializer_round_trips_any_json_value(value: Any) -> None:
    """Whatever auto_serializer picks for JSON data gives the value back."""
    serializer = auto_serializer(value)
    assert serializer.name == "json"
    assert serializer.deserialize(serializer.serialize(value)) == value


# --------------------------------------------------------------------------- Result basics


def test_result_defaults_are_empty() -> None:
    """A bare Result has no value, location, serializer, hash or size."""
    result = Result()
    assert (result.value, result.location, result.serializer) == (None, None, None)
    assert (result.hash, result.size) == (None, None)


def test_results_are_immutable() -> None:
    """Assigning to a Result's attributes raises AttributeError."""
    result = Result(value=1)
    with pytest.raises(AttributeError):
        result.value = 2
    with pytest.raises(AttributeError):
        del result.location


def test_result_equality_is_by_type_and_fields() -> None:
    """Results are equal when class and all fields are equal."""
    assert Result(value=1, location="a") == Result(value=1, location="a")
    assert Result(value=1) != Result(value=2)
    assert Result(value=1) != ConstantResult(value=1)
    assert hash(Result(value=[1], location="a")) == hash(Result(value=[2], location="a"))


def test_result_repr_shows_class_and_value() -> None:
    """repr is <Class: value>."""
    assert repr(Result(value=[1])) == "<Result: [1]>"


def test_base_result_cannot_store_values() -> None:
    """The base Result raises ResultNotImplementedError for storage operations."""
    result = Result(value=1)
    with pytest.raises(ResultNotImplementedError):
        result.write(1)
    with pytest.raises(ResultNotImplementedError):
        result.read("x")
    with pytest.raises(ResultNotImplementedError):
        result.exists("x")
    assert issubclass(ResultNotImplementedError, NotImplementedError)


def test_format_fills_the_location_template_in_a_new_result() -> None:
    """format(**kwargs) returns a new Result with the formatted location."""
    template = Result(location="{task_name}/{map_index}.out")
    formatted = template.format(task_name="t", map_index=2, unused=1)
    assert formatted.location == "t/2.out"
    assert template.location == "{task_name}/{map_index}.out"
    assert Result().format(x=1).location is None


def test_format_with_a_missing_key_raises_key_error() -> None:
    """A template key without a value is an error, not a silent literal."""
    with pytest.raises(KeyError):
        Result(location="{x}.out").format(y=1)


def test_results_survive_pickling() -> None:
    """Pickled Results compare equal to the originals."""
    for result in (Result(value=1, location="a"), LocalResult("/tmp", location="x")):
        assert pickle.loads(pickle.dumps(result)) == result


# --------------------------------------------------------------------------- NoResult


def test_no_result_is_a_singleton_with_prefect_repr() -> None:
    """NoResult is the only NoResultType and reprs as Prefect's."""
    assert NoResultType() is NoResult
    assert repr(NoResult) == "<NoResultType: None>"
    assert NoResult.value is None
    assert isinstance(NoResult, Result)
    assert pickle.loads(pickle.dumps(NoResult)) is NoResult


def test_no_result_cannot_be_written() -> None:
    """Writing to NoResult raises ResultNotImplementedError."""
    with pytest.raises(ResultNotImplementedError):
        NoResult.write(1)


# --------------------------------------------------------------------------- Constant / Prefect


def test_constant_result_always_exists_and_reads_itself() -> None:
    """ConstantResult holds its value and needs no storage."""
    constant = ConstantResult(5)
    assert constant.exists("anything")
    assert constant.read("anything") is constant
    with pytest.raises(ResultNotImplementedError):
        constant.write(6)


def test_prefect_result_keeps_json_value_in_location() -> None:
    """PrefectResult.write stores the JSON text as location, with hash and size."""
    written = PrefectResult().write({"a": [1, 2]})
    assert written.location == '{"a": [1, 2]}'
    assert written.value == {"a": [1, 2]}
    assert written.hash == _sha(b'{"a": [1, 2]}')
    assert written.size == len(b'{"a": [1, 2]}')
    assert written.serializer == JSONSerializer()


def test_prefect_result_reads_value_from_location() -> None:
    """PrefectResult.read parses the location as JSON."""
    assert PrefectResult().read("[1, 2]").value == [1, 2]
    assert PrefectResult().exists("42")
    assert not PrefectResult().exists("not json")


def test_prefect_result_refuses_other_serializers() -> None:
    """PrefectResult cannot use cloudpickle."""
    with pytest.raises(ValueError, match="JSON only"):
        PrefectResult(serializer=PickleSerializer())


# --------------------------------------------------------------------------- FSResult


@pytest.fixture
def memory_url(tmp_path: Path) -> str:
    """A memory:// root unique to the test."""
    return f"memory://runledger-tests/{tmp_path.name}"


def test_fs_result_writes_a_new_result_with_hash_and_size(memory_url: str) -> None:
    """write returns a new Result holding value, location, serializer, hash and size."""
    template = FSResult(memory_url, location="{task}.json")
    written = template.write({"v": 1}, task="t")
    data = json.dumps({"v": 1}).encode()
    assert written is not template
    assert template.value is None
    assert written.location == "t.json"
    assert (written.value, written.serializer) == ({"v": 1}, JSONSerializer())
    assert (written.hash, written.size) == (_sha(data), len(data))


def test_fs_result_reads_back_what_it_wrote(memory_url: str) -> None:
    """read returns a new Result with the stored value."""
    written = FSResult(memory_url, location="a/b.bin").write(ValueError("x"))
    back = FSResult(memory_url).read("a/b.bin")
    assert isinstance(back.value, ValueError)
    assert back.serializer == PickleSerializer()
    assert (back.hash, back.size, back.location) == (
        written.hash,
        written.size,
        "a/b.bin",
    )


def test_fs_result_exists_formats_the_location(memory_url: str) -> None:
    """exists checks the formatted location."""
    result = FSResult(memory_url)
    assert not result.exists("{k}.json", k="x")
    FSResult(memory_url, location="x.json").write(1)
    assert result.exists("{k}.json", k="x")


def test_fs_result_without_location_is_content_addressed(memory_url: str) -> None:
    """Without a location template the sha256 of the bytes names the file."""
    written = FSResult(memory_url).write([1, 2])
    assert written.location == f"{_sha(b'[1, 2]')}.json"
    assert FSResult(memory_url).write([1, 2]).location == written.location


def test_fs_result_accepts_full_urls_as_locations(memory_url: str) -> None:
    """A location that is itself a URL ignores base_url."""
    url = f"{memory_url}/elsewhere/v.json"
    FSResult("memory://other", location=url).write(3)
    assert FSResult("memory://unrelated").read(url).value == 3


def test_fs_result_works_on_file_urls(tmp_path: Path) -> None:
    """file:// URLs write real files (creating directories) and read them back."""
    written = FSResult(f"file://{tmp_path}", location="deep/dir/v.json").write("hi")
    assert (tmp_path / "deep" / "dir" / "v.json").read_bytes() == b'"hi"'
    assert FSResult(f"file://{tmp_path}").read(written.location or "").value == "hi"


def test_fs_result_with_explicit_serializer_uses_it(memory_url: str) -> None:
    """An explicit serializer overrides the automatic choice."""
    written = FSResult(memory_url, location="p", serializer=PickleSerializer()).write(1)
    assert written.serializer == PickleSerializer()
    assert FSResult(memory_url, serializer=PickleSerializer()).read("p").value == 1


def test_local_result_writes_under_its_directory(tmp_path: Path) -> None:
    """LocalResult writes into dir and records the full path as location."""
    written = LocalResult(tmp_path, location="{name}.out").write({"a": 1}, name="x")
    assert written.location == os.path.join(str(tmp_path), "x.out")
    assert (tmp_path / "x.out").exists()
    assert LocalResult(tmp_path).read("x.out").value == {"a": 1}
    assert LocalResult(tmp_path).read(written.location or "").value == {"a": 1}
    assert LocalResult(tmp_path).exists("{name}.out", name="x")
    assert not LocalResult(tmp_path).exists("missing.out")


def test_local_result_makes_its_directory_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative dir is resolved once, so locations work from anywhere."""
    monkeypatch.chdir(tmp_path)
    assert LocalResult("results").dir == str(tmp_path / "results")


# --------------------------------------------------------------------------- blobs


def test_no_result_blob_has_only_type_and_version() -> None:
    """NoResult serializes as Prefect's minimal blob and comes back as the singleton."""
    blob = result_to_blob(NoResult)
    assert blob == {"type": "NoResultType", "__version__": ENGINE_VERSION}
    assert result_from_blob(blob) is NoResult


def test_result_blob_never_contains_the_value() -> None:
    """Blobs are references: type, location, serializer, hash, size and version."""
    blob = result_to_blob(Result(value="secret", location="l", hash="h", size=3))
    assert blob == {
        "type": "Result",
        "location": "l",
        "serializer": None,
        "hash": "h",
        "size": 3,
        "__version__": ENGINE_VERSION,
    }


@pytest.mark.parametrize(
    "result",
    [
        Result(location="l", serializer=JSONSerializer(), hash="h", size=1),
        ConstantResult(location="c"),
        PrefectResult(location="42", hash="h", size=2),
        FSResult("memory://b", location="k", serializer=PickleSerializer()),
        LocalResult("/data/results", location="x.out", hash="h", size=9),
    ],
    ids=lambda r: type(r).__name__,
)
def test_blobs_round_trip_every_result_type(result: Result) -> None:
    """result_from_blob(result_to_blob(r)) equals r when r has no value."""
    blob = json.loads(json.dumps(result_to_blob(result)))
    assert result_from_blob(blob) == result


def test_fs_blobs_carry_their_storage_root() -> None:
    """FSResult blobs carry base_url, LocalResult blobs carry dir."""
    assert result_to_blob(FSResult("memory://b"))["base_url"] == "memory://b"
    local = result_to_blob(LocalResult("/data", location="x.out"))
    assert (local["dir"], local["location"]) == ("/data", "x.out")
    assert "base_url" not in local


def test_blob_round_trip_drops_the_value(tmp_path: Path) -> None:
    """A written result comes back as a reference that can be read again."""
    written = LocalResult(tmp_path, location="v.json").write([1])
    ref = result_from_blob(result_to_blob(written))
    assert ref.value is None
    assert ref.hash == written.hash
    assert ref.read(ref.location or "").value == [1]


@pytest.mark.parametrize("blob", [{"type": "S3Result"}, {"location": "x"}, {"type": 3}])
def test_unknown_result_blobs_raise_a_clear_value_error(blob: dict[str, Any]) -> None:
    """A blob of an unknown (or missing) type raises ValueError listing known types."""
    with pytest.raises(ValueError, match=r"unknown result type .*LocalResult"):
        result_from_blob(blob)
