"""Results: where a task's return value lives, and how it is (de)serialized.

A `Result` is an immutable value. `format`, `read` and `write` return new
Result objects; nothing is mutated in place. State blobs carry only a Result's
*reference* (type, location, serializer, hash, size, storage root), never its
value: `result_to_blob` / `result_from_blob` convert between the two.

Storage is fsspec (`memory://`, `file://`, `s3://`, ...) so the services and
the local runner share one implementation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from collections.abc import Callable
from typing import Any, ClassVar, NoReturn, Protocol, runtime_checkable

import cloudpickle  # type: ignore[import-untyped, unused-ignore]

from engine.version import ENGINE_VERSION

__all__ = [
    "ConstantResult",
    "FSResult",
    "JSONSerializer",
    "LocalResult",
    "NoResult",
    "NoResultType",
    "PickleSerializer",
    "PrefectResult",
    "Result",
    "ResultNotImplementedError",
    "Serializer",
    "auto_serializer",
    "result_from_blob",
    "result_to_blob",
    "serializer_for",
]

_set = object.__setattr__


class ResultNotImplementedError(NotImplementedError):
    """This Result cannot store or load values (the engine keeps them in memory)."""


# ------------------------------------------------------------------------ serializers


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back; `name` is what blobs record."""

    @property
    def name(self) -> str: ...

    def serialize(self, value: Any) -> bytes: ...

    def deserialize(self, data: bytes) -> Any: ...


class JSONSerializer:
    """UTF-8 JSON: the preferred format for anything that outlives a process."""

    name: ClassVar[str] = "json"

    def serialize(self, value: Any) -> bytes:
        return json.dumps(value).encode("utf-8")

    def deserialize(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PickleSerializer:
    """cloudpickle: anything Python can pickle (transient payloads only)."""

    name: ClassVar[str] = "cloudpickle"

    def serialize(self, value: Any) -> bytes:
        data: bytes = cloudpickle.dumps(value)
        return data

    def deserialize(self, data: bytes) -> Any:
        # cloudpickle output is ordinary pickle data; only trusted storage is read.
        return pickle.loads(data)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_JSON = JSONSerializer()
_PICKLE = PickleSerializer()
_SERIALIZERS: dict[str, Serializer] = {_JSON.name: _JSON, _PICKLE.name: _PICKLE}


def serializer_for(name: str) -> Serializer:
    """The serializer registered under `name` ("json" or "cloudpickle")."""
    try:
        return _SERIALIZERS[name]
    except KeyError:
        known = ", ".join(sorted(_SERIALIZERS))
        raise ValueError(f"unknown serializer {name!r}; known: {known}") from None


def _is_plain_json(value: Any) -> bool:
    # Exact types only: a tuple, a dict subclass or a non-finite float would not
    # come back unchanged from JSON.
    kind = type(value)
    if value is None or kind in (str, int, bool):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_is_plain_json(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _is_plain_json(v) for k, v in value.items())
    return False


def auto_serializer(value: Any) -> Serializer:
    """JSON when the value round trips through JSON unchanged, else cloudpickle."""
    return _JSON if _is_plain_json(value) else _PICKLE


def _sniff_serializer(data: bytes) -> Serializer:
    # Pickle protocols >= 2 start with the PROTO opcode; JSON text never does.
    return _PICKLE if data[:1] == b"\x80" else _JSON


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- results


class Result:
    """A value plus where it is stored; the base class cannot store values itself."""

    __slots__ = ("hash", "location", "serializer", "size", "value")
    _slot_names: ClassVar[tuple[str, ...]] = ()
    _blob_extras: ClassVar[tuple[str, ...]] = ()

    value: Any
    location: str | None
    serializer: Serializer | None
    hash: str | None
    size: int | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names.extend(s for s in klass.__dict__.get("__slots__", ()) if s not in names)
        cls._slot_names = tuple(names)

    def __init__(
        self,
        value: Any = None,
        location: str | None = None,
        serializer: Serializer | None = None,
        *,
        hash: str | None = None,
        size: int | None = None,
    ) -> None:
        _set(self, "value", value)
        _set(self, "location", location)
        _set(self, "serializer", serializer)
        _set(self, "hash", hash)
        _set(self, "size", size)

    # -- value semantics

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new one instead")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self._slot_names)

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return False
        return bool(self._fields() == other._fields())

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.location))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.value!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_result, (type(self), self._fields()))

    def _replace(self, **changes: Any) -> Result:
        new = object.__new__(type(self))
        for name in self._slot_names:
            _set(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    def copy_with(self, **changes: Any) -> Result:
        """A new Result of the same kind with some fields changed."""
        return self._replace(**changes)

    # -- storage interface

    def format(self, **kwargs: Any) -> Result:
        """A copy whose location template is filled in with `kwargs`."""
        if self.location is None:
            return self
        return self._replace(location=self.location.format(**kwargs))

    def exists(self, location: str, **kwargs: Any) -> bool:
        """Whether a value is stored at `location` (formatted with `kwargs`)."""
        raise ResultNotImplementedError(f"{type(self).__name__} has no storage")

    def read(self, location: str) -> Result:
        """A new Result holding the value stored at `location`."""
        raise ResultNotImplementedError(f"{type(self).__name__} has no storage")

    def write(self, value: Any, **kwargs: Any) -> Result:
        """Store `value`; returns a new Result with value, location, hash and size."""
        raise ResultNotImplementedError(f"{type(self).__name__} cannot write values")

    # -- helpers for storing subclasses

    def _encode(self, value: Any) -> tuple[Serializer, bytes]:
        serializer = self.serializer or auto_serializer(value)
        return serializer, serializer.serialize(value)

    def _decode(self, data: bytes) -> tuple[Serializer, Any]:
        serializer = self.serializer or _sniff_serializer(data)
        return serializer, serializer.deserialize(data)


def _rebuild_result(cls: type[Result], fields: tuple[Any, ...]) -> Result:
    new = object.__new__(cls)
    for name, value in zip(cls._slot_names, fields, strict=True):
        _set(new, name, value)
    return new


# Result's own slots are known only after the class body runs.
Result._slot_names = Result.__slots__


class NoResultType(Result):
    """The absence of a result (distinct from a result whose value is None)."""

    __slots__ = ()
    _instance: ClassVar[NoResultType | None] = None

    def __new__(cls) -> NoResultType:
        if cls._instance is None:
            instance = super().__new__(cls)
            Result.__init__(instance)
            cls._instance = instance
        return cls._instance

    def __init__(self) -> None:
        pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (NoResultType, ())

    def __str__(self) -> str:
        return "NoResult"

    def format(self, **kwargs: Any) -> Result:
        return self

    def read(self, location: str) -> Result:
        return self


NoResult = NoResultType()


class ConstantResult(Result):
    """A value known in advance (flow constants): always there, never stored."""

    __slots__ = ()

    def __init__(self, value: Any = None, location: str | None = None) -> None:
        super().__init__(value, location)

    def exists(self, location: str, **kwargs: Any) -> bool:
        return True

    def read(self, location: str) -> Result:
        return self

    def write(self, value: Any, **kwargs: Any) -> Result:
        raise ResultNotImplementedError("ConstantResult values cannot be written")


class PrefectResult(Result):
    """A small JSON value kept in `location` itself (the blob carries it)."""

    __slots__ = ()

    def __init__(
        self,
        value: Any = None,
        location: str | None = None,
        serializer: Serializer | None = None,
        *,
        hash: str | None = None,
        size: int | None = None,
    ) -> None:
        if serializer is not None and serializer.name != _JSON.name:
            raise ValueError("PrefectResult stores JSON only")
        super().__init__(value, location, _JSON, hash=hash, size=size)

    def exists(self, location: str, **kwargs: Any) -> bool:
        try:
            json.loads(location)
        except ValueError:
            return False
        return True

    def read(self, location: str) -> Result:
        data = location.encode("utf-8")
        return self._replace(
            value=_JSON.deserialize(data),
            location=location,
            hash=_digest(data),
            size=len(data),
        )

    def write(self, value: Any, **kwargs: Any) -> Result:
        data = _JSON.serialize(value)
        return self._replace(
            value=value,
            location=data.decode("utf-8"),
            hash=_digest(data),
            size=len(data),
        )


def _fsspec_fs(url: str) -> tuple[Any, str]:
    # Imported lazily: most runs never touch storage and fsspec is slow to import.
    from fsspec.core import url_to_fs  # type: ignore[import-untyped, unused-ignore]

    fs, path = url_to_fs(url)
    return fs, str(path)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


class FSResult(Result):
    """A value stored as bytes under `base_url` on any fsspec filesystem.

    Locations are relative to `base_url` unless they are full URLs themselves.
    """

    __slots__ = ("base_url",)
    _blob_extras = ("base_url",)

    base_url: str

    def __init__(
        self,
        base_url: str,
        location: str | None = None,
        serializer: Serializer | None = None,
        *,
        value: Any = None,
        hash: str | None = None,
        size: int | None = None,
    ) -> None:
        super().__init__(value, location, serializer, hash=hash, size=size)
        _set(self, "base_url", base_url)

    def _url(self, location: str) -> str:
        if "://" in location:
            return location
        return f"{self.base_url.rstrip('/')}/{location.lstrip('/')}"

    def exists(self, location: str, **kwargs: Any) -> bool:
        fs, path = _fsspec_fs(self._url(location.format(**kwargs)))
        return bool(fs.exists(path))

    def read(self, location: str) -> Result:
        fs, path = _fsspec_fs(self._url(location))
        data = bytes(fs.cat_file(path))
        serializer, value = self._decode(data)
        return self._replace(
            value=value,
            location=location,
            serializer=serializer,
            hash=_digest(data),
            size=len(data),
        )

    def _store(self, location: str, data: bytes) -> None:
        fs, path = _fsspec_fs(self._url(location))
        # Only local disks need directories; object stores have flat keys (and
        # makedirs there could try to create a bucket).
        if "file" in _protocols(fs):
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, data)

    def _written_location(self, location: str) -> str:
        return location

    def write(self, value: Any, **kwargs: Any) -> Result:
        serializer, data = self._encode(value)
        digest = _digest(data)
        # Without a template the location is content-addressed: deterministic and
        # free of clocks and random names.
        location = self.format(**kwargs).location or f"{digest}.{serializer.name}"
        self._store(location, data)
        return self._replace(
            value=value,
            location=self._written_location(location),
            serializer=serializer,
            hash=digest,
            size=len(data),
        )


class LocalResult(FSResult):
    """A value stored in a file under directory `dir` (Prefect's LocalResult).

    As in Prefect, `write` records the full file path as the new location.
    """

    __slots__ = ("dir",)
    _blob_extras = ("dir",)

    dir: str

    def __init__(
        self,
        dir: str | os.PathLike[str],
        location: str | None = None,
        serializer: Serializer | None = None,
        *,
        value: Any = None,
        hash: str | None = None,
        size: int | None = None,
    ) -> None:
        # Absolute, so the location still resolves from another working directory.
        path = os.path.abspath(os.fspath(dir))
        super().__init__(f"file://{path}", location, serializer, value=value, hash=hash, size=size)
        _set(self, "dir", path)

    def _url(self, location: str) -> str:
        if "://" in location:
            return location
        return f"file://{os.path.join(self.dir, location)}"

    def _written_location(self, location: str) -> str:
        return location if "://" in location else os.path.join(self.dir, location)


# --------------------------------------------------------------------------- blobs


def result_to_blob(result: Result) -> dict[str, Any]:
    """The JSON reference to a Result (its value is never included)."""
    if result is NoResult:
        return {"type": "NoResultType", "__version__": ENGINE_VERSION}
    blob: dict[str, Any] = {
        "type": type(result).__name__,
        "location": result.location,
        "serializer": result.serializer.name if result.serializer is not None else None,
        "hash": result.hash,
        "size": result.size,
    }
    for extra in result._blob_extras:
        blob[extra] = getattr(result, extra)
    blob["__version__"] = ENGINE_VERSION
    return blob


def _reference(cls: type[Result]) -> Callable[[dict[str, Any], dict[str, Any]], Result]:
    def build(blob: dict[str, Any], common: dict[str, Any]) -> Result:
        return cls(**common)

    return build


def _constant(blob: dict[str, Any], common: dict[str, Any]) -> Result:
    return ConstantResult(location=common["location"])


def _fs(blob: dict[str, Any], common: dict[str, Any]) -> Result:
    return FSResult(blob["base_url"], **common)


def _local(blob: dict[str, Any], common: dict[str, Any]) -> Result:
    return LocalResult(blob["dir"], **common)


_FROM_BLOB: dict[str, Callable[[dict[str, Any], dict[str, Any]], Result]] = {
    "Result": _reference(Result),
    "NoResultType": lambda blob, common: NoResult,
    "ConstantResult": _constant,
    "PrefectResult": _reference(PrefectResult),
    "FSResult": _fs,
    "LocalResult": _local,
}


def result_from_blob(blob: dict[str, Any]) -> Result:
    """Rebuild the Result a blob refers to; its value is None until someone reads it."""
    kind = blob.get("type")
    builder = _FROM_BLOB.get(kind) if isinstance(kind, str) else None
    if builder is None:
        known = ", ".join(sorted(_FROM_BLOB))
        raise ValueError(f"unknown result type {kind!r} in blob; known types: {known}")
    name = blob.get("serializer")
    common = {
        "location": blob.get("location"),
        "serializer": serializer_for(name) if name is not None else None,
        "hash": blob.get("hash"),
        "size": blob.get("size"),
    }
    return builder(blob, common)
