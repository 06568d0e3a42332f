"""Property: every event survives encode/decode unchanged (hypothesis)."""

from __future__ import annotations

import json
import typing
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    EVENT_TYPES,
    Cause,
    Event,
    FlowPlan,
    FlowRef,
    PlanEdge,
    PlanTask,
    UpstreamInput,
    WorkerIdentity,
    WorkItem,
    decode,
    encode,
    to_dict,
)

ids = st.text(min_size=1, max_size=12)
flow_run_ids = st.from_regex(r"[^/\s]{1,12}", fullmatch=True)
texts = st.text(max_size=12)
small_ints = st.integers(min_value=0, max_value=2**31)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
json_objects = st.dictionaries(texts, json_values, max_size=3)
offsets = st.sampled_from(
    [timezone(timedelta(minutes=m)) for m in range(-12 * 60, 14 * 60 + 1, 45)]
)
aware_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)
workers = st.builds(WorkerIdentity, id=ids, host=texts, pid=small_ints)
causes = st.builds(Cause, command_id=st.none() | ids, worker=st.none() | workers)
import_refs = st.builds(
    FlowRef,
    kind=st.just("import"),
    path=st.from_regex(
        r"[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8}){0,2}:[a-z_][a-z0-9_]{0,8}", fullmatch=True
    ),
)
pickled_refs = st.builds(
    FlowRef,
    kind=st.just("pickled"),
    location=st.text(min_size=1, max_size=40),
    signature=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)
flow_refs = import_refs | pickled_refs
floats_or_none = st.none() | st.floats(min_value=0, max_value=1e6)


@st.composite
def plans(draw: st.DrawFn) -> FlowPlan:
    """A random DAG: each task's edges point at earlier tasks."""
    slugs = draw(st.lists(ids, max_size=4, unique=True))
    tasks = []
    for i, slug in enumerate(slugs):
        ups = draw(st.lists(st.sampled_from(slugs[:i]), max_size=2)) if i else []
        edges = tuple(
            PlanEdge(
                upstream=u,
                key=draw(st.none() | texts),
                mapped=draw(st.booleans()),
                flattened=draw(st.booleans()),
            )
            for u in ups
        )
        tasks.append(
            PlanTask(
                slug=slug,
                name=draw(texts),
                kind=draw(st.sampled_from(["task", "constant", "parameter"])),
                edges=edges,
                max_retries=draw(small_ints),
                retry_delay_s=draw(floats_or_none),
                timeout_s=draw(floats_or_none),
                is_reference=draw(st.booleans()),
                constant=draw(st.none() | json_objects),
            )
        )
    return FlowPlan(name=draw(texts), version=draw(texts), tasks=tuple(tasks))


upstream_inputs = st.builds(
    UpstreamInput,
    edge=st.builds(PlanEdge, upstream=ids, key=st.none() | texts),
    state=json_objects,
    map_states=st.none() | st.lists(json_objects, max_size=3).map(tuple),
    indexed=st.booleans(),
)
work_items = st.builds(
    WorkItem,
    flow_run_id=ids,
    task_run_id=ids,
    slug=ids,
    map_index=st.none() | small_ints,
    flow_ref=flow_refs,
    parameters=json_objects,
    state=json_objects,
    expected_seq=small_ints,
    attempt=small_ints,
    upstream=st.lists(upstream_inputs, max_size=3).map(tuple),
    is_mapped_parent=st.booleans(),
    context=json_objects,
)

FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": ids,
    "flow_run_id": flow_run_ids,
    "task_run_id": ids,
    "task_slug": ids,
    "map_index": small_ints,
    "seq": small_ints,
    "occurred_at": aware_datetimes,
    "cause": causes,
    "engine_version": texts,
    "flow_ref": flow_refs,
    "parameters": json_objects,
    "idempotency_key": texts,
    "plan": plans(),
    "context": json_objects,
    "reuse": st.dictionaries(ids, json_objects, max_size=3),
    "expected_seq": small_ints,
    "attempt": small_ints,
    "state": json_objects,
    "reason": texts,
    "previous": texts,
    "command_id": ids,
    "command_type": ids,
    "proposed": json_objects,
    "work": work_items,
    "source_topic": ids,
    "partition": small_ints,
    "offset": small_ints,
    "key": texts,
    "payload": texts,
    "final": st.booleans(),
    "heartbeat_timeout_s": st.floats(min_value=0.001, max_value=3600.0),
}


def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Events of `cls` with every field drawn, None included where allowed."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in cls.model_fields.items():
        if name in ("type", "schema_version"):
            continue
        strategy = FIELD_STRATEGIES[name]
        if type(None) in typing.get_args(info.annotation):
            strategy = st.none() | strategy
        fields[name] = strategy
    return st.builds(cls, **fields)


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
@settings(max_examples=40)  # x 14 types; hypothesis draws cost ~1-5 ms per field here
@given(data=st.data())
def test_every_event_type_round_trips_through_encode_and_decode(
    cls: type[Event], data: st.DataObject
) -> None:
    """decode(encode(e)) == e, and the dict form agrees with the bytes."""
    event = data.draw(events_of(cls))
    raw = encode(event)
    decoded = decode(raw)
    assert type(decoded) is cls
    assert decoded == event
    assert decode(to_dict(event)) == event
    assert json.loads(raw) == to_dict(event)
    assert encode(decoded) == raw


def test_the_strategies_cover_every_field() -> None:
    """A new field without a strategy fails here rather than in hypothesis."""
    for cls in EVENT_TYPES.values():
        missing = set(cls.model_fields) - {"type", "schema_version"} - set(FIELD_STRATEGIES)
        assert not missing, f"{cls.__name__}: {missing}"
