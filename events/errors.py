"""Errors raised by the events package.

Decoding errors share the base `EventDecodeError` (a `ValueError`) so a shell can
dead-letter any bad record with one ``except`` clause; `UpcasterGapError` is a
programming error found at import time and is deliberately not a decode error.
"""

from __future__ import annotations


class EventDecodeError(ValueError):
    """A record could not be turned into an event."""


class MalformedEvent(EventDecodeError):
    """Not JSON, not an object, no usable `type`/`schema_version`, or bad fields."""


class UnknownEventType(EventDecodeError):
    """The record's `type` names no event this version of the contract knows."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class UnsupportedSchemaVersion(EventDecodeError):
    """The record's `schema_version` is newer than ours, or no upcasters reach ours."""


class NotACommand(EventDecodeError):
    """A fact (ledger-only event) was submitted where only commands are accepted."""

    def __init__(self, event_type: str) -> None:
        super().__init__(
            f"{event_type!r} is a fact, written only by the ledger; "
            "clients may submit commands only"
        )
        self.event_type = event_type


class UpcasterGapError(RuntimeError):
    """An event type's current schema version cannot be reached from every older one."""
