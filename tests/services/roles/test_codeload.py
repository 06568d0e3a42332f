"""Flow code reaches the services only by allowlisted import or as a validly signed pickle."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped, unused-ignore]
import pytest
from pydantic import SecretStr

from engine import Flow, task
from events import FlowRef
from services.roles.codeload import (
    FlowLoadError,
    clear_cache,
    import_handlers,
    load_flow,
    sign,
    sign_and_store_flow,
)
from services.settings import Settings

SIMPLE = "tests.integration.flows.simple"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **changes)


def _flow() -> Flow:
    @task
    def hello() -> str:
        return "hello"

    with Flow("pickled") as flow:
        hello()
    return flow


class _Bomb:
    """Unpickling this writes a file: proof that bytes were (or were not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled!"))


def _store_bytes(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "flow.pkl"
    path.write_bytes(data)
    return f"file://{path}"


def test_an_allowlisted_import_path_loads_the_flow_object(tmp_path: Path) -> None:
    """``module:attr`` under an allowlisted prefix gives that very Flow (and it is cached)."""
    from tests.integration.flows import simple

    ref = FlowRef(kind="import", path=f"{SIMPLE}:single")
    settings = _settings(tmp_path, flow_allowlist=["tests.integration"])
    assert load_flow(ref, settings) is simple.single
    assert load_flow(ref, settings) is simple.single


@pytest.mark.parametrize("allowlist", [["examples"], ["test"], ["tests.integration.flowsx"], []])
def test_a_module_outside_the_allowlist_is_refused_before_it_is_imported(
    tmp_path: Path, allowlist: list[str]
) -> None:
    """Prefixes match whole dotted components; the module is never imported when refused."""
    import sys

    ref = FlowRef(kind="import", path="tests.integration.flows.never_imported_here:flow")
    with pytest.raises(FlowLoadError, match="not in the flow allowlist"):
        load_flow(ref, _settings(tmp_path, flow_allowlist=allowlist))
    assert "tests.integration.flows.never_imported_here" not in sys.modules


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("tests.integration.flows.no_such_module:flow", "cannot import module"),
        (f"{SIMPLE}:no_such_flow", "has no attribute"),
        (f"{SIMPLE}:one", "is a FunctionTask, not a Flow"),
    ],
)
def test_an_import_that_does_not_give_a_flow_is_a_clear_load_error(
    tmp_path: Path, path: str, reason: str
) -> None:
    """Missing module, missing attribute and a non-Flow attribute each say what is wrong."""
    with pytest.raises(FlowLoadError, match=reason):
        load_flow(FlowRef(kind="import", path=path), _settings(tmp_path))


def test_a_flow_signed_and_stored_by_a_client_loads_with_the_same_key(tmp_path: Path) -> None:
    """sign_and_store_flow writes a content-addressed pickle; load_flow verifies and loads it."""
    settings = _settings(tmp_path, signing_key="s3cret")
    ref = sign_and_store_flow(_flow(), settings)
    assert ref.kind == "pickled"
    assert ref.location is not None
    assert ref.location.startswith(settings.result_store_url)
    loaded = load_flow(ref, settings)
    assert isinstance(loaded, Flow)
    assert loaded.name == "pickled"
    assert sign_and_store_flow(_flow(), settings).location == ref.location  # stored once


def test_without_a_signing_key_every_pickle_is_refused_unread(tmp_path: Path) -> None:
    """No RUNLEDGER_SIGNING_KEY: pickled flows are refused and their bytes never unpickled."""
    marker = tmp_path / "marker"
    data = cloudpickle.dumps(_Bomb(marker))
    ref = FlowRef(
        kind="pickled", location=_store_bytes(tmp_path, data), signature=sign(data, "any")
    )
    with pytest.raises(FlowLoadError, match="no signing key is configured"):
        load_flow(ref, _settings(tmp_path))
    assert not marker.exists()
    with pytest.raises(FlowLoadError, match="no signing key"):
        sign_and_store_flow(_flow(), _settings(tmp_path))


@pytest.mark.parametrize("signature_of", ["other key", "sha256 only"])
def test_a_wrongly_signed_pickle_is_refused_and_never_unpickled(
    tmp_path: Path, signature_of: str
) -> None:
    """A signature made with another key (or a plain digest) fails before cloudpickle.loads."""
    marker = tmp_path / "marker"
    data = cloudpickle.dumps(_Bomb(marker))
    signature = (
        sign(data, "not the key")
        if signature_of == "other key"
        else hashlib.sha256(data).hexdigest()
    )
    ref = FlowRef(kind="pickled", location=_store_bytes(tmp_path, data), signature=signature)
    with pytest.raises(FlowLoadError, match="invalid signature"):
        load_flow(ref, _settings(tmp_path, signing_key="the key"))
    assert not marker.exists()


def test_modified_bytes_no_longer_match_their_signature(tmp_path: Path) -> None:
    """Changing a stored pickle after signing invalidates it."""
    settings = _settings(tmp_path, signing_key="k")
    ref = sign_and_store_flow(_flow(), settings)
    assert ref.location is not None
    path = Path(ref.location.removeprefix("file://"))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(FlowLoadError, match="invalid signature"):
        load_flow(ref, settings)


def test_a_signed_pickle_of_something_else_is_not_a_flow(tmp_path: Path) -> None:
    """Validly signed bytes that are not a Flow are refused with the type found."""
    data = cloudpickle.dumps({"not": "a flow"})
    ref = FlowRef(kind="pickled", location=_store_bytes(tmp_path, data), signature=sign(data, "k"))
    with pytest.raises(FlowLoadError, match="is a dict, not a Flow"):
        load_flow(ref, _settings(tmp_path, signing_key="k"))


def test_a_missing_pickle_is_a_load_error(tmp_path: Path) -> None:
    """An unreadable location is reported with the location."""
    ref = FlowRef(kind="pickled", location=f"file://{tmp_path}/nope.pkl", signature="0" * 64)
    with pytest.raises(FlowLoadError, match="cannot read pickled flow"):
        load_flow(ref, _settings(tmp_path, signing_key="k"))


def test_state_handlers_are_imported_under_the_same_allowlist(tmp_path: Path) -> None:
    """Runner-level handlers named in a run's context are import paths, allowlisted too."""
    settings = _settings(tmp_path, flow_allowlist=["tests"])
    (handler,) = import_handlers([f"{SIMPLE}:after"], settings)
    assert callable(handler)
    with pytest.raises(FlowLoadError, match="allowlist"):
        import_handlers(["os:system"], settings)
    with pytest.raises(FlowLoadError, match="import path"):
        import_handlers([42], settings)


@pytest.mark.parametrize("location", ["http://attacker.example/flow.pkl", "ftp://h/f.pkl"])
def test_a_pickled_flow_from_a_scheme_off_the_allowlist_is_refused_before_any_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    """The location comes from whoever wrote the topic: it is checked before fsspec opens it."""
    fetched: list[str] = []
    monkeypatch.setattr("fsspec.core.url_to_fs", lambda url, **kw: fetched.append(url))
    ref = FlowRef(kind="pickled", location=location, signature="0" * 64)
    with pytest.raises(FlowLoadError, match="is not in pickled_flow_schemes"):
        load_flow(ref, _settings(tmp_path, signing_key=SecretStr("k")))
    assert fetched == []
