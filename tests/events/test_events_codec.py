"""Encoding and decoding records, and every way a record can be refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest

from events import (
    CancelRequested,
    DeadLettered,
    EventDecodeError,
    FlowRef,
    MalformedEvent,
    NotACommand,
    RunRequested,
    TaskRunTransitioned,
    UnknownEventType,
    UnsupportedSchemaVersion,
    check_flow_run_id,
    deadletter_bytes,
    deadletter_payload,
    decode,
    decode_command,
    encode,
    to_dict,
)

AT = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


def run_requested() -> RunRequested:
    """A typical RunRequested."""
    return RunRequested(
        event_id="e1",
        flow_run_id="f1",
        occurred_at=AT,
        flow_ref=FlowRef(kind="import", path="examples.flows:etl"),
        parameters={"n": 3, "names": ["a", "é"]},
    )


def record(**changes: Any) -> dict[str, Any]:
    """The wire dict of `run_requested()` with `changes` applied (None deletes)."""
    data = to_dict(run_requested())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_encode_writes_compact_utf8_json() -> None:
    """No whitespace between tokens, non-ASCII kept as UTF-8."""
    raw = encode(run_requested())
    assert b": " not in raw
    assert b", " not in raw
    assert "é".encode() in raw
    assert json.loads(raw) == to_dict(run_requested())


def test_encode_writes_occurred_at_as_iso_8601_utc() -> None:
    """Datetimes go out in UTC with a Z suffix, microseconds kept."""
    plus2 = timezone(timedelta(hours=2))
    event = run_requested().model_copy(update={"occurred_at": AT.astimezone(plus2)})
    event = RunRequested.model_validate(event.model_dump())
    assert to_dict(event)["occurred_at"] == "2024-05-01T12:00:00.250000Z"


@pytest.mark.parametrize("form", ["bytes", "str", "dict", "mapping", "bytearray"])
def test_decode_accepts_bytes_text_and_parsed_mappings(form: str) -> None:
    """Records may arrive as bytes, text, or an already parsed mapping."""
    raw = encode(run_requested())
    data: Any = {
        "bytes": raw,
        "str": raw.decode(),
        "dict": json.loads(raw),
        "mapping": MappingProxyType(json.loads(raw)),
        "bytearray": bytearray(raw),
    }[form]
    assert decode(data) == run_requested()


def test_decode_does_not_mutate_a_mapping_it_upcasts() -> None:
    """The caller's dict is left as it was, even when an old version is upcast."""
    data = to_dict(TaskRunTransitioned(event_id="e", flow_run_id="f", occurred_at=AT, state={}))
    data["schema_version"] = 1
    del data["attempt"]
    before = json.dumps(data, sort_keys=True)
    decode(data)
    assert json.dumps(data, sort_keys=True) == before


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"\xff\xfe\x00", b'{"a":NaN}', b"{'a': 1}"]
)
def test_malformed_json_is_a_malformed_event(raw: bytes) -> None:
    """Anything that is not JSON is refused as MalformedEvent."""
    with pytest.raises(MalformedEvent, match="not valid JSON"):
        decode(raw)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"run_requested"', b"null"])
def test_json_that_is_not_an_object_is_a_malformed_event(raw: bytes) -> None:
    """An event is a JSON object; other JSON values are refused."""
    with pytest.raises(MalformedEvent, match="expected a JSON object"):
        decode(raw)


@pytest.mark.parametrize("type_", [None, 3, ["run_requested"]])
def test_a_missing_or_non_string_type_is_a_malformed_event(type_: Any) -> None:
    """Without a string `type` the record cannot be routed."""
    data = record(type=None) if type_ is None else record(type=type_)
    with pytest.raises(MalformedEvent, match="'type'"):
        decode(data)


def test_an_unknown_type_names_the_type() -> None:
    """An unknown type string is reported by name."""
    with pytest.raises(UnknownEventType, match="'task_exploded'") as info:
        decode(record(type="task_exploded"))
    assert info.value.event_type == "task_exploded"


@pytest.mark.parametrize("version", [None, "1", 1.0, True])
def test_a_missing_or_non_integer_schema_version_is_malformed(version: Any) -> None:
    """schema_version is required on the wire and must be an integer."""
    data = record(schema_version=None) if version is None else record(schema_version=version)
    with pytest.raises(MalformedEvent, match="schema_version"):
        decode(data)


@pytest.mark.parametrize("version", [0, -1])
def test_a_schema_version_below_one_is_malformed(version: int) -> None:
    """Versions start at 1."""
    with pytest.raises(MalformedEvent, match=">= 1"):
        decode(record(schema_version=version))


def test_a_future_schema_version_is_unsupported() -> None:
    """A record newer than this consumer knows is refused, not guessed at."""
    with pytest.raises(UnsupportedSchemaVersion, match="newer"):
        decode(record(schema_version=3))


def test_a_v1_run_request_is_upcast_to_reuse_nothing() -> None:
    """run_requested v1 predates re-runs: it comes back at v2 with an empty `reuse`."""
    data = record(schema_version=1, reuse=None)
    event = decode(data)
    assert isinstance(event, RunRequested)
    assert event.schema_version == 2
    assert event.reuse == {}


def test_missing_fields_are_listed_with_the_record_identity() -> None:
    """The error names the type, the event_id and every missing field."""
    with pytest.raises(MalformedEvent) as info:
        decode(record(flow_run_id=None, occurred_at=None))
    message = str(info.value)
    assert "type='run_requested'" in message
    assert "event_id='e1'" in message
    assert "2 validation errors" in message
    assert "flow_run_id: Field required" in message
    assert "occurred_at: Field required" in message


def test_a_nested_validation_error_gives_its_path() -> None:
    """Errors inside nested models point at the dotted location."""
    with pytest.raises(MalformedEvent, match=r"flow_ref: .*package\.module:attr"):
        decode(record(flow_ref={"kind": "import", "path": "nope"}))
    with pytest.raises(MalformedEvent, match=r"cause\.worker\.pid"):
        decode(record(cause={"worker": {"id": "w", "host": "h", "pid": "x"}}))


def test_a_naive_occurred_at_on_the_wire_is_malformed() -> None:
    """A timestamp without an offset is refused with the reason."""
    with pytest.raises(MalformedEvent, match=r"occurred_at: .*timezone-aware"):
        decode(record(occurred_at="2024-05-01T12:00:00"))


def test_an_unknown_field_on_the_wire_is_malformed() -> None:
    """extra="forbid" applies to decoded records."""
    with pytest.raises(MalformedEvent, match="priority: Extra inputs"):
        decode(record(priority=5))


def test_every_decode_error_is_a_value_error() -> None:
    """Shells can catch EventDecodeError (or ValueError) for any bad record."""
    for cls in (MalformedEvent, UnknownEventType, UnsupportedSchemaVersion, NotACommand):
        assert issubclass(cls, EventDecodeError)
        assert issubclass(cls, ValueError)


def test_decode_command_accepts_commands() -> None:
    """Commands pass decode_command unchanged."""
    cancel = CancelRequested(event_id="e", flow_run_id="f", occurred_at=AT, reason="r")
    assert decode_command(encode(cancel)) == cancel


def test_decode_command_rejects_facts() -> None:
    """A client may not write facts: decode_command refuses them by name."""
    fact = TaskRunTransitioned(event_id="e", flow_run_id="f", occurred_at=AT, state={})
    with pytest.raises(NotACommand, match="'task_run_transitioned' is a fact"):
        decode_command(encode(fact))


def test_decode_command_still_reports_unknown_types() -> None:
    """Unknown types are UnknownEventType there as well."""
    with pytest.raises(UnknownEventType):
        decode_command(record(type="nope"))


@pytest.mark.parametrize(
    "raw", [b'{"type":"run_requested"}', "héllo".encode(), b"\xff\x00\x81", None, b""]
)
def test_deadletter_payload_round_trips_any_record_value(raw: bytes | None) -> None:
    """Dead-letter payloads keep text as text and anything else as base64."""
    text = deadletter_payload(raw)
    assert deadletter_bytes(text) == (raw or b"")
    if raw is not None and raw.startswith(b"\xff"):
        assert text.startswith("base64:")


def test_deadletter_payload_never_confuses_text_with_the_base64_prefix() -> None:
    """Text that itself starts with "base64:" is base64-encoded to stay unambiguous."""
    raw = b"base64:not really"
    assert deadletter_bytes(deadletter_payload(raw)) == raw


def test_a_dead_lettered_event_carries_the_original_payload() -> None:
    """DeadLettered records the source position and the verbatim value."""
    event = DeadLettered(
        event_id="e",
        flow_run_id="",
        occurred_at=AT,
        reason="not valid JSON",
        source_topic="runledger.commands",
        partition=0,
        offset=7,
        payload=deadletter_payload(b"\x80\x05"),
    )
    assert deadletter_bytes(decode(encode(event)).payload) == b"\x80\x05"  # type: ignore[attr-defined]


@pytest.mark.parametrize("flow_run_id", ["a/b", "", "has space", "x" * 201])
def test_a_command_with_an_invalid_flow_run_id_is_a_malformed_event(flow_run_id: str) -> None:
    """A '/' in a flow run id made task run ids ambiguous; the decoder refuses it."""
    record = json.dumps(
        {
            "type": "cancel_requested", "schema_version": 1, "event_id": "e",
            "flow_run_id": flow_run_id, "occurred_at": "2024-01-01T00:00:00Z",
        }
    )
    with pytest.raises(MalformedEvent, match="flow_run_id: String should match pattern"):
        decode_command(record)


def test_check_flow_run_id_says_what_a_flow_run_id_may_be() -> None:
    assert check_flow_run_id("0b9e-run") == "0b9e-run"
    with pytest.raises(ValueError, match="no '/'"):
        check_flow_run_id("run/a")
