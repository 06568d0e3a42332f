"""Fuzzing the wire decoder: whatever arrives, the answer is an event or an EventDecodeError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import EVENT_TYPES, Event, EventDecodeError, decode, decode_command

FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
field_names = st.sampled_from(
    [
        "event_id",
        "flow_run_id",
        "task_run_id",
        "occurred_at",
        "seq",
        "state",
        "attempt",
        "expected_seq",
        "cause",
        "plan",
        "flow_ref",
        "work",
        "payload",
        "reason",
        "final",
    ]
)


@st.composite
def near_events(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object that looks like an event: a real type, a plausible version, odd fields."""
    record: dict[str, Any] = {
        "type": draw(st.sampled_from(sorted(EVENT_TYPES)) | st.text(max_size=8)),
        "schema_version": draw(st.integers(-1, 4) | json_values),
        "event_id": draw(st.text(max_size=8)),
        "flow_run_id": draw(st.text(max_size=8)),
        "occurred_at": draw(st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01", "x"])),
    }
    record.update(draw(st.dictionaries(field_names, json_values, max_size=5)))
    return record


def decodes_cleanly(data: bytes | str | dict[str, Any]) -> None:
    for decoder in (decode, decode_command):
        try:
            event = decoder(data)
        except EventDecodeError:
            continue
        assert isinstance(event, Event)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_a_decode_error(data: bytes) -> None:
    decodes_cleanly(data)


@FUZZ
@given(json_values)
def test_arbitrary_json_decodes_or_raises_a_decode_error(value: Any) -> None:
    decodes_cleanly(json.dumps(value))


@FUZZ
@given(near_events())
def test_records_that_look_like_events_decode_or_raise_a_decode_error(
    record: dict[str, Any],
) -> None:
    decodes_cleanly(json.dumps(record))
    decodes_cleanly(record)
