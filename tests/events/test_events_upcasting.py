"""Upcasting old records and checking that every old version has a path to today."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import pytest

from events import (
    EVENT_TYPES,
    UPCASTERS,
    Event,
    MalformedEvent,
    TaskRunTransitioned,
    UnsupportedSchemaVersion,
    UpcasterGapError,
    UpcasterRegistry,
    check_upcaster_chain,
    decode,
    to_dict,
    upcaster,
)
from events.codec import EventDecoder

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Renamed(Event):
    """A test-only event type at schema version 3 (v1 had `n`, v2 had `count`)."""

    type: Literal["renamed"] = "renamed"
    schema_version: Literal[3] = 3
    total: int


def v1_record() -> dict[str, Any]:
    """A `renamed` record as version 1 wrote it."""
    return {
        "event_id": "e",
        "type": "renamed",
        "schema_version": 1,
        "flow_run_id": "f",
        "occurred_at": "2024-05-01T12:00:00Z",
        "n": 4,
    }


def renamed_registry(*, with_second_step: bool = True) -> UpcasterRegistry:
    """A copy of the global registry plus the `renamed` upcasters."""
    registry = UPCASTERS.copy()

    @upcaster("renamed", from_version=1, registry=registry)
    def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
        payload["count"] = payload.pop("n")
        return payload

    if with_second_step:

        @registry.register("renamed", from_version=2)
        def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
            payload["total"] = payload.pop("count")
            return payload

    return registry


def test_a_v1_task_run_transitioned_is_upcast_with_attempt_1() -> None:
    """v1 TaskRunTransitioned records (no `attempt`) decode as attempt 1 at v2."""
    data = to_dict(TaskRunTransitioned(event_id="e", flow_run_id="f", occurred_at=AT, state={}))
    data["schema_version"] = 1
    del data["attempt"]
    event = decode(data)
    assert isinstance(event, TaskRunTransitioned)
    assert (event.schema_version, event.attempt) == (2, 1)


def test_the_global_upcaster_chain_has_no_gaps() -> None:
    """Importing events already checked it; checking again passes."""
    check_upcaster_chain()
    assert UPCASTERS.get("task_run_transitioned", 1) is not None


def test_upcasters_run_in_order_from_the_record_version_to_the_current_one() -> None:
    """A v1 record passes through v1->v2 then v2->v3 and validates at v3."""
    decoder = EventDecoder({"renamed": Renamed}, renamed_registry())
    event = decoder.decode(v1_record())
    assert isinstance(event, Renamed)
    assert (event.schema_version, event.total) == (3, 4)
    v2 = {**v1_record(), "schema_version": 2, "count": 9}
    del v2["n"]
    assert decoder.decode(v2) == event.model_copy(update={"total": 9})


def test_a_missing_upcaster_is_a_gap() -> None:
    """A type at version 3 with only a v1->v2 upcaster fails the chain check."""
    registry = renamed_registry(with_second_step=False)
    with pytest.raises(UpcasterGapError, match=r"'renamed' 2->3"):
        check_upcaster_chain({**EVENT_TYPES, "renamed": Renamed}, registry)


def test_a_type_with_no_upcasters_lists_every_gap() -> None:
    """Each missing step is named."""
    with pytest.raises(UpcasterGapError, match=r"'renamed' 1->2, 'renamed' 2->3"):
        check_upcaster_chain({"renamed": Renamed}, UpcasterRegistry())


def test_a_complete_chain_passes_the_check() -> None:
    """With both steps registered there is no gap."""
    check_upcaster_chain({**EVENT_TYPES, "renamed": Renamed}, renamed_registry())


def test_a_record_without_an_upcaster_path_is_unsupported() -> None:
    """Decoding an old record with a gap in its chain is UnsupportedSchemaVersion."""
    decoder = EventDecoder({"renamed": Renamed}, renamed_registry(with_second_step=False))
    with pytest.raises(UnsupportedSchemaVersion, match="from schema_version 2"):
        decoder.decode(v1_record())


def test_an_upcaster_that_cannot_read_a_record_makes_it_malformed() -> None:
    """A broken old record is a MalformedEvent, not a crash of the consumer."""
    decoder = EventDecoder({"renamed": Renamed}, renamed_registry())
    broken = v1_record()
    del broken["n"]
    with pytest.raises(MalformedEvent, match="could not be upcast: KeyError"):
        decoder.decode(broken)


def test_test_registries_do_not_touch_the_global_one() -> None:
    """Registering in a copy leaves UPCASTERS as it was."""
    copy = UPCASTERS.copy()
    copy.register("renamed", from_version=1)(lambda payload: payload)
    assert copy.get("renamed", 1) is not None
    assert UPCASTERS.get("renamed", 1) is None


def test_registering_the_same_step_twice_is_an_error() -> None:
    """Two upcasters for one (type, version) would be ambiguous."""
    registry = renamed_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("renamed", from_version=1)(lambda payload: payload)


def test_from_version_starts_at_one() -> None:
    """There is no version 0 to upcast from."""
    with pytest.raises(ValueError, match=">= 1"):
        UpcasterRegistry().register("renamed", from_version=0)
