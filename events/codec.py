"""JSON on the wire: `encode`, `to_dict`, `decode`, `decode_command`.

Decoding parses once, looks at `type` and `schema_version`, upcasts old records
and validates with the pydantic model of that type. Every failure is an
`EventDecodeError` naming what is wrong and where, so a shell can dead-letter
the record and carry on.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, cast

import pydantic_core
from pydantic import ValidationError

from events.base import Command, Event
from events.catalog import EVENT_TYPES, current_version
from events.errors import MalformedEvent, NotACommand, UnknownEventType
from events.upcasting import UPCASTERS, UpcasterRegistry

_BASE64_PREFIX = "base64:"

RecordData = bytes | bytearray | memoryview | str | Mapping[str, Any]
"""What `decode` accepts: a record value (JSON bytes or text) or a parsed mapping."""


def encode(event: Event) -> bytes:
    """Compact UTF-8 JSON of `event` (datetimes as ISO-8601 UTC, ``...Z``)."""
    return event.__pydantic_serializer__.to_json(event)


def to_dict(event: Event) -> dict[str, Any]:
    """`event` as a JSON-compatible dict (what `encode` writes, not yet serialized)."""
    return event.model_dump(mode="json")


class EventDecoder:
    """Decodes records against a catalog of event types and an upcaster registry.

    The module-level `decode`/`decode_command` use the global catalog and
    `UPCASTERS`; tests build their own decoder to try other catalogs.
    """

    def __init__(
        self,
        event_types: Mapping[str, type[Event]] = EVENT_TYPES,
        upcasters: UpcasterRegistry = UPCASTERS,
    ) -> None:
        self.event_types = dict(event_types)
        self.upcasters = upcasters
        self._versions = {n: current_version(c) for n, c in self.event_types.items()}

    def decode(self, data: RecordData) -> Event:
        """Decode one record (JSON bytes/str or a parsed mapping) into an event."""
        return self._decode(data, commands_only=False)

    def decode_command(self, data: RecordData) -> Command:
        """Like `decode`, but refuse facts: clients may submit commands only."""
        return cast(Command, self._decode(data, commands_only=True))

    def _decode(self, data: RecordData, *, commands_only: bool) -> Event:
        payload = _load(data)
        event_type = payload.get("type")
        if not isinstance(event_type, str):
            raise MalformedEvent(_where(payload) + "missing or non-string 'type'")
        cls = self.event_types.get(event_type)
        if cls is None:
            raise UnknownEventType(event_type)
        if commands_only and not issubclass(cls, Command):
            raise NotACommand(event_type)
        version = payload.get("schema_version")
        if type(version) is not int:
            raise MalformedEvent(
                _where(payload) + f"'schema_version' must be an integer, got {version!r}"
            )
        current = self._versions[event_type]
        if version != current:
            if version < 1:
                raise MalformedEvent(
                    _where(payload) + f"'schema_version' must be >= 1, got {version}"
                )
            payload = self.upcasters.upcast(payload, event_type, current)
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise MalformedEvent(_where(payload) + _summary(exc)) from None


def _load(data: RecordData) -> Mapping[str, Any]:
    raw: bytes | str
    if isinstance(data, (bytes, str)):  # the hot path: record values from Kafka
        raw = data
    elif isinstance(data, Mapping):
        return data
    else:
        raw = bytes(data)
    try:
        parsed = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise MalformedEvent(f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise MalformedEvent(f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


def _where(payload: Mapping[str, Any]) -> str:
    """Prefix naming the record: its type and event_id, as far as known."""
    parts = [
        f"{key}={payload[key]!r}"
        for key in ("type", "event_id")
        if isinstance(payload.get(key), str)
    ]
    return f"invalid event ({', '.join(parts)}): " if parts else "invalid event: "


def _summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_context=False)
    details = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in errors
    )
    noun = "error" if len(errors) == 1 else "errors"
    return f"{len(errors)} validation {noun}: {details}"


_DEFAULT = EventDecoder()


def decode(data: RecordData) -> Event:
    """Decode one record into the event of its `type`, upcasting old versions.

    Raises `MalformedEvent`, `UnknownEventType` or `UnsupportedSchemaVersion`
    (all `EventDecodeError`, a `ValueError`).
    """
    return _DEFAULT.decode(data)


def decode_command(data: RecordData) -> Command:
    """Decode a record submitted to the commands topic; facts raise `NotACommand`."""
    return _DEFAULT.decode_command(data)


def deadletter_payload(raw: bytes | None) -> str:
    """The original record value as text for `DeadLettered.payload`.

    UTF-8 text is kept as is, unless it could be mistaken for the prefix;
    anything else becomes ``"base64:"`` + base64. A missing value is "".
    """
    if raw is None:
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if not text.startswith(_BASE64_PREFIX):
            return text
    return _BASE64_PREFIX + base64.b64encode(raw).decode("ascii")


def deadletter_bytes(payload: str) -> bytes:
    """Inverse of `deadletter_payload`: the original record value's bytes."""
    if payload.startswith(_BASE64_PREFIX):
        try:
            return base64.b64decode(payload[len(_BASE64_PREFIX) :], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 dead-letter payload: {exc}") from None
    return payload.encode("utf-8")
