"""Upcasting: turning a record written at an older schema version into today's shape.

An upcaster is a plain function ``fn(payload) -> payload`` that takes a record of
one type at ``from_version`` and returns it at ``from_version + 1``. Chains run
one step at a time up to the class's current version. Upcasters receive a
private shallow copy of the record: they may add, remove and replace top-level
keys in place, but must copy a nested object before changing it. The chain sets
``schema_version`` after each step, so an upcaster need not.

Registries are values: the global `UPCASTERS` is used by the codec, and tests
build their own (`UpcasterRegistry()` or `UPCASTERS.copy()`) so they never
pollute it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from events.base import Event
from events.catalog import EVENT_TYPES, current_version
from events.errors import MalformedEvent, UnsupportedSchemaVersion, UpcasterGapError

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


class UpcasterRegistry:
    """Upcasters keyed by (type string, from_version)."""

    def __init__(self, upcasters: Mapping[tuple[str, int], Upcaster] | None = None) -> None:
        self._upcasters: dict[tuple[str, int], Upcaster] = dict(upcasters or {})

    def register(self, event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register ``fn`` as `event_type`'s upcaster from `from_version`."""
        if from_version < 1:
            raise ValueError(f"from_version must be >= 1, got {from_version}")

        def decorate(fn: Upcaster) -> Upcaster:
            key = (event_type, from_version)
            if key in self._upcasters:
                raise ValueError(
                    f"an upcaster for {event_type!r} from version {from_version} "
                    "is already registered"
                )
            self._upcasters[key] = fn
            return fn

        return decorate

    def get(self, event_type: str, from_version: int) -> Upcaster | None:
        """The upcaster of `event_type` from `from_version`, if any."""
        return self._upcasters.get((event_type, from_version))

    def copy(self) -> UpcasterRegistry:
        """An independent registry holding the same upcasters."""
        return UpcasterRegistry(self._upcasters)

    def upcast(self, payload: Mapping[str, Any], event_type: str, to_version: int) -> Payload:
        """Return `payload` (a record at its own `schema_version`) at `to_version`.

        Raises `UnsupportedSchemaVersion` when the record is newer than
        `to_version` or a step of the chain is missing.
        """
        version = payload["schema_version"]
        if version > to_version:
            raise UnsupportedSchemaVersion(
                f"{event_type!r} schema_version {version} is newer than the "
                f"supported {to_version}; upgrade this consumer"
            )
        result = dict(payload)
        while version < to_version:
            fn = self._upcasters.get((event_type, version))
            if fn is None:
                raise UnsupportedSchemaVersion(
                    f"no upcaster for {event_type!r} from schema_version {version} "
                    f"(current is {to_version})"
                )
            try:
                result = fn(result)
            except (KeyError, TypeError, ValueError) as exc:
                raise MalformedEvent(
                    f"{event_type!r} record at schema_version {version} could not be "
                    f"upcast: {type(exc).__name__}: {exc}"
                ) from None
            version += 1
            result["schema_version"] = version
        return result

    def check(self, event_types: Mapping[str, type[Event]]) -> None:
        """Raise `UpcasterGapError` if an old version of a type has no path to today."""
        gaps = [
            f"{name!r} {version}->{version + 1}"
            for name, cls in sorted(event_types.items())
            for version in range(1, current_version(cls))
            if (name, version) not in self._upcasters
        ]
        if gaps:
            raise UpcasterGapError("missing upcasters: " + ", ".join(gaps))


UPCASTERS = UpcasterRegistry()
"""The registry the codec uses."""


def upcaster(
    event_type: str, *, from_version: int, registry: UpcasterRegistry | None = None
) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function as an upcaster (in `UPCASTERS` by default)."""
    return (UPCASTERS if registry is None else registry).register(
        event_type, from_version=from_version
    )


def check_upcaster_chain(
    event_types: Mapping[str, type[Event]] | None = None,
    registry: UpcasterRegistry | None = None,
) -> None:
    """Raise `UpcasterGapError` when a type's version 1..current-1 lacks an upcaster."""
    (UPCASTERS if registry is None else registry).check(
        EVENT_TYPES if event_types is None else event_types
    )
