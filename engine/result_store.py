"""Where results live while their references travel in events.

A state crosses the ledger as a blob whose `_result` is a reference. The shell
that records a state first makes sure its value is addressable (`persist`);
the shell that runs a downstream task turns references back into values
(`hydrate`). The local runner keeps values in memory; the services write them
through fsspec (checkpointing) so they outlive the worker that made them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol

from engine.results import (
    ConstantResult,
    FSResult,
    NoResult,
    PrefectResult,
    Result,
    result_from_blob,
    result_to_blob,
)
from engine.state import PLAIN_STATE_CLASSES, State, with_result

_SELF_CONTAINED = (PrefectResult,)


class ResultStore(Protocol):
    """Makes result values addressable by reference, and back."""

    def persist(self, result: Result, key: str) -> dict[str, Any]:
        """A reference blob for `result`, storing its value if it is not stored yet."""
        ...

    def hydrate(self, blob: dict[str, Any]) -> Result:
        """The Result (with its value) a reference blob points to."""
        ...


def _already_stored(result: Result) -> bool:
    # A storage Result that has a location but no hash was never written (its
    # location is a template, or checkpointing was off): its value must be stored.
    return result is NoResult or (
        result.location is not None
        and (isinstance(result, _SELF_CONTAINED) or result.hash is not None)
    )


class InMemoryResultStore:
    """Values kept in this process, addressed as `memory-store://<key>`."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def persist(self, result: Result, key: str) -> dict[str, Any]:
        if _already_stored(result):
            blob = result_to_blob(result)
            if result is not NoResult and blob["location"] is not None:
                self._values[blob["location"]] = result.value
            return blob
        location = f"memory-store://{key}"
        self._values[location] = result.value
        return {
            "type": "Result",
            "location": location,
            "serializer": None,
            "hash": None,
            "size": None,
        }

    def hydrate(self, blob: dict[str, Any]) -> Result:
        if blob.get("type") == "NoResultType":
            return NoResult
        location = blob.get("location")
        if location in self._values:
            return Result(value=self._values[location], location=location)
        reference = result_from_blob(blob)
        if location is None or isinstance(reference, ConstantResult):
            return reference
        return reference.read(location)


class FSResultStore:
    """Values written through fsspec under `base_url` (file://, memory://, s3:// ...).

    Reads are cached (bounded LRU) because a reduce or a map reads the same
    upstream result many times.
    """

    def __init__(self, base_url: str, cache_size: int = 4096) -> None:
        self.base = FSResult(base_url=base_url)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def persist(self, result: Result, key: str) -> dict[str, Any]:
        if _already_stored(result):
            return result_to_blob(result)
        # Content-addressed (the serializer's digest names the file): no clock, no
        # randomness, and equal values are stored once.
        written = self.base.write(result.value)
        self._remember(written.location or "", result.value)
        return result_to_blob(written)

    def hydrate(self, blob: dict[str, Any]) -> Result:
        if blob.get("type") == "NoResultType":
            return NoResult
        reference = result_from_blob(blob)
        location = reference.location
        if location is None or isinstance(reference, ConstantResult):
            return reference
        with self._lock:
            if location in self._cache:
                self._cache.move_to_end(location)
                return reference._replace(value=self._cache[location])
        loaded = reference.read(location)
        self._remember(location, loaded.value)
        return loaded

    def _remember(self, location: str, value: Any) -> None:
        with self._lock:
            self._cache[location] = value
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def blob_of(state: State, store: ResultStore, key: str) -> dict[str, Any]:
    """`state.serialize()` with its result made addressable through `store`."""
    blob = state.serialize()
    if "_result" in blob and state._result is not NoResult:
        reference = blob["_result"] = store.persist(state._result, key)
        if type(store) is InMemoryResultStore:
            _remember_hydrated(blob, store, state, reference)
    return blob


def _remember_hydrated(
    blob: dict[str, Any], store: InMemoryResultStore, state: State, reference: dict[str, Any]
) -> None:
    """Memoise what `state_of(blob, store)` will return, when that is cheap to know.

    In one process the blob just made is read back soon (by the downstream run,
    a reduce, the run's outcome). For a state of a plain class with a text
    message and neither context nor cached inputs, deserializing gives the same
    state with the Result `store.hydrate` makes for its reference: built here
    directly, exactly as `_plain_from_blob` and `hydrate` would build it.
    """
    message = state.message
    location = reference.get("location")
    if (
        type(state) in PLAIN_STATE_CLASSES
        and (message is None or type(message) is str)
        and not state.context
        and not state.cached_inputs
        and reference.get("type") != "NoResultType"
        and location in store._values
    ):
        hydrated = Result(value=store._values[location], location=location)
        _remember(blob, store, with_result(state, hydrated))


_MEMO_LIMIT = 1 << 15
_memo: dict[tuple[int, int], tuple[dict[str, Any], ResultStore, State]] = {}


def state_of(blob: dict[str, Any], store: ResultStore) -> State:
    """The State a blob describes, its result value (and a wrapped state's) hydrated.

    Blobs are never changed once made, and one blob object is often read many
    times (the upstream every mapped child receives, the Pending every child
    starts from), so states are memoised by blob identity. An entry holds its
    blob, so an id cannot be reused while it is remembered. The memo holds a
    whole 10,000-child map: a reduce's children are read again for the outcome.
    """
    key = (id(blob), id(store))
    hit = _memo.get(key)
    if hit is not None and hit[0] is blob:
        return hit[2]
    state = State.deserialize(blob, store.hydrate)
    _remember(blob, store, state)
    return state


def _remember(blob: dict[str, Any], store: ResultStore, state: State) -> None:
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[(id(blob), id(store))] = (blob, store, state)
