"""How flow code reaches the ledger and the workers, safely.

Two ways, named by a `FlowRef`:

* ``kind="import"``: ``package.module:attr`` is imported, but only when the module
  lies under one of `Settings.flow_allowlist`'s prefixes (checked *before* the
  import, since importing runs code). The attribute must be an engine `Flow`.
* ``kind="pickled"``: a cloudpickled flow stored through fsspec (normally under the
  result store) with an HMAC-SHA256 signature of its bytes made with
  `Settings.signing_key`. The bytes are unpickled only after the signature checks
  out (`hmac.compare_digest`); without a configured key every pickle is refused.
  Anyone who can write a topic can name a location, so an unsigned pickle would
  let them run code on every worker.

Every failure is a `FlowLoadError` whose message says what was refused and why;
the ledger records it as a TransitionRejected, a worker as a Failed task run.
Loaded flows are cached per (ref, allowlist, key) for the life of the process.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle  # type: ignore[import-untyped, unused-ignore]
import fsspec  # type: ignore[import-untyped, unused-ignore]

from engine.flow import Flow
from events import FlowRef
from services.settings import Settings

__all__ = [
    "FlowLoadError",
    "clear_cache",
    "import_handlers",
    "import_object",
    "load_flow",
    "sign",
    "sign_and_store_flow",
]

_MAX_PICKLE_BYTES = 64 << 20
"""A flow pickle larger than this is refused before it is read in full."""


class FlowLoadError(Exception):
    """A flow (or handler) could not be loaded; `reason` says why, for the ledger."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_cache: dict[tuple[FlowRef, tuple[str, ...], str], Flow] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every loaded flow (tests; a long-lived process never needs it)."""
    with _lock:
        _cache.clear()


def _key_digest(settings: Settings) -> str:
    # The cache key names the signing key by digest, never by value.
    key = settings.signing_key
    return "" if key is None else hashlib.sha256(key.get_secret_value().encode()).hexdigest()


def load_flow(flow_ref: FlowRef, settings: Settings) -> Flow:
    """The Flow `flow_ref` names, loaded as the settings allow; `FlowLoadError` otherwise."""
    cache_key = (flow_ref, tuple(settings.flow_allowlist), _key_digest(settings))
    cached = _cache.get(cache_key)  # a dict read is atomic: no lock on the hot path
    if cached is not None:
        return cached
    if flow_ref.kind == "import":
        loaded = _load_imported(flow_ref, settings)
    else:
        loaded = _load_pickled(flow_ref, settings)
    with _lock:
        _cache[cache_key] = loaded
    return loaded


# ----- import paths --------------------------------------------------------------------


def _allowed(module: str, allowlist: Iterable[str]) -> bool:
    """Prefix match on whole dotted components: "tests" allows "tests.x", not "testsuite"."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowlist)


def import_object(path: str, allowlist: Iterable[str]) -> Any:
    """The object at ``package.module:attr[.attr...]``, if the module is allowlisted."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise FlowLoadError(f"{path!r} is not an import path 'package.module:attribute'")
    allowed = list(allowlist)
    if not _allowed(module_name, allowed):
        raise FlowLoadError(
            f"module {module_name!r} is not in the flow allowlist {allowed} "
            "(RUNLEDGER_FLOW_ALLOWLIST)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # user code: any import-time error is a load failure
        raise FlowLoadError(f"cannot import module {module_name!r}: {exc!r}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FlowLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


def _load_imported(flow_ref: FlowRef, settings: Settings) -> Flow:
    assert flow_ref.path is not None  # FlowRef validates the kind's fields
    target = import_object(flow_ref.path, settings.flow_allowlist)
    if not isinstance(target, Flow):
        raise FlowLoadError(f"{flow_ref.path!r} is a {type(target).__name__}, not a Flow")
    return target


def import_handlers(paths: Iterable[Any], settings: Settings) -> list[Callable[..., Any]]:
    """Task-runner state handlers named by import paths (allowlisted like flows)."""
    handlers: list[Callable[..., Any]] = []
    for path in paths:
        if not isinstance(path, str):
            raise FlowLoadError(f"a state handler must be named by an import path, got {path!r}")
        handler = import_object(path, settings.flow_allowlist)
        if not callable(handler):
            raise FlowLoadError(f"state handler {path!r} is not callable")
        handlers.append(handler)
    return handlers


# ----- signed pickles ------------------------------------------------------------------


def sign(data: bytes, key: str) -> str:
    """HMAC-SHA256 of `data` with `key`, as 64 hex characters."""
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()


def _signing_key(settings: Settings, purpose: str) -> str:
    if settings.signing_key is None:
        raise FlowLoadError(
            f"{purpose}: no signing key is configured (RUNLEDGER_SIGNING_KEY), "
            "so pickled flows are refused"
        )
    return settings.signing_key.get_secret_value()


def _read_bytes(location: str) -> bytes:
    try:
        fs, path = fsspec.core.url_to_fs(location)
        size = fs.size(path)
        if size is not None and size > _MAX_PICKLE_BYTES:
            raise FlowLoadError(f"pickled flow at {location} is {size} bytes, over the limit")
        data = fs.cat_file(path)
    except FlowLoadError:
        raise
    except Exception as exc:  # missing file, bad URL, unreachable store
        raise FlowLoadError(f"cannot read pickled flow at {location}: {exc!r}") from exc
    return bytes(data)


def _check_scheme(location: str, settings: Settings) -> None:
    scheme = location.split("://", 1)[0].lower() if "://" in location else "file"
    if scheme not in settings.pickled_flow_schemes:
        raise FlowLoadError(
            f"pickled flow at {location}: scheme {scheme!r} is not in pickled_flow_schemes "
            f"{settings.pickled_flow_schemes}"
        )


def _load_pickled(flow_ref: FlowRef, settings: Settings) -> Flow:
    assert flow_ref.location is not None
    _check_scheme(flow_ref.location, settings)  # before any fetch: the URL is untrusted
    assert flow_ref.signature is not None
    key = _signing_key(settings, f"pickled flow at {flow_ref.location}")
    data = _read_bytes(flow_ref.location)
    expected = sign(data, key)
    if not hmac.compare_digest(expected, flow_ref.signature.lower()):
        raise FlowLoadError(
            f"pickled flow at {flow_ref.location} has an invalid signature "
            "(not signed with this RUNLEDGER_SIGNING_KEY, or modified)"
        )
    try:
        target = cloudpickle.loads(data)
    except Exception as exc:  # signed but broken (e.g. made by another Python)
        raise FlowLoadError(f"cannot unpickle the flow at {flow_ref.location}: {exc!r}") from exc
    if not isinstance(target, Flow):
        raise FlowLoadError(
            f"pickled object at {flow_ref.location} is a {type(target).__name__}, not a Flow"
        )
    return target


def sign_and_store_flow(flow: Flow, settings: Settings) -> FlowRef:
    """Cloudpickle `flow`, store it under the result store and return its signed FlowRef.

    The location is content-addressed (``flows/<sha256>.pkl``), so submitting the
    same flow twice stores it once.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"only a Flow can be submitted, got {type(flow).__name__}")
    key = _signing_key(settings, "cannot sign the flow")
    data = cloudpickle.dumps(flow)
    location = (
        f"{settings.result_store_url.rstrip('/')}/flows/{hashlib.sha256(data).hexdigest()}.pkl"
    )
    fs, path = fsspec.core.url_to_fs(location)
    if "file" in _protocols(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
    return FlowRef(kind="pickled", location=location, signature=sign(data, key))


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
