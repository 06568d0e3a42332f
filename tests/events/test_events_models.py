"""Data models carried inside events: FlowRef, FlowPlan, WorkItem."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from events import FlowPlan, FlowRef, PlanEdge, PlanTask, UpstreamInput, WorkItem

SIG = "ab" * 32


@pytest.mark.parametrize("path", ["pkg:flow", "pkg.mod:flow", "a.b.c:obj.attr", "_p:_f"])
def test_an_import_flow_ref_accepts_module_colon_attribute(path: str) -> None:
    """Import paths look like package.module:attr."""
    assert FlowRef(kind="import", path=path).path == path


@pytest.mark.parametrize(
    "path", [None, "", "pkg.mod", "pkg.mod:", ":flow", "pkg mod:flow", "1pkg:flow"]
)
def test_an_import_flow_ref_rejects_a_bad_path(path: str | None) -> None:
    """A missing or malformed import path is a validation error."""
    with pytest.raises(ValidationError, match=r"package\.module:attr"):
        FlowRef(kind="import", path=path)


def test_an_import_flow_ref_takes_no_pickle_fields() -> None:
    """location/signature belong to pickled refs only."""
    with pytest.raises(ValidationError, match="no location"):
        FlowRef(kind="import", path="a:b", location="s3://x", signature=SIG)


def test_a_pickled_flow_ref_needs_location_and_signature() -> None:
    """An unsigned pickle is refused at the contract boundary."""
    assert FlowRef(kind="pickled", location="s3://b/f.pkl", signature=SIG).signature
    with pytest.raises(ValidationError, match="location and signature"):
        FlowRef(kind="pickled", location="s3://b/f.pkl")
    with pytest.raises(ValidationError, match="location and signature"):
        FlowRef(kind="pickled", signature=SIG)


def test_a_pickled_flow_ref_signature_is_a_sha256_hex_digest() -> None:
    """The signature must be 64 hex characters."""
    with pytest.raises(ValidationError, match="64 hex"):
        FlowRef(kind="pickled", location="s3://b/f.pkl", signature="abc")


def test_an_unknown_flow_ref_kind_is_rejected() -> None:
    """Only "import" and "pickled" exist."""
    with pytest.raises(ValidationError):
        FlowRef(kind="git", path="a:b")  # type: ignore[arg-type]


def plan(*tasks: PlanTask) -> FlowPlan:
    """A plan named "p" with the given tasks."""
    return FlowPlan(name="p", version="v", tasks=tasks)


def test_a_plan_with_resolvable_edges_is_valid() -> None:
    """Edges that name slugs of the plan are accepted, and tasks can be looked up."""
    p = plan(
        PlanTask(slug="a", name="a", kind="parameter"),
        PlanTask(slug="b", name="b", edges=(PlanEdge(upstream="a", key="x"),)),
    )
    assert p.task("b").edges[0].upstream == "a"
    with pytest.raises(KeyError):
        p.task("zzz")


def test_a_plan_rejects_duplicate_slugs() -> None:
    """Slugs identify tasks, so they must be unique."""
    with pytest.raises(ValidationError, match="duplicate task slug 'a'"):
        plan(PlanTask(slug="a", name="a"), PlanTask(slug="a", name="other"))


def test_a_plan_rejects_an_edge_from_an_unknown_slug() -> None:
    """Every edge's upstream must be a task of the plan."""
    with pytest.raises(ValidationError, match="unknown slug 'ghost'"):
        plan(PlanTask(slug="a", name="a", edges=(PlanEdge(upstream="ghost"),)))


def test_a_plan_rejects_a_cycle() -> None:
    """A cyclic plan could never finish, so it is refused up front."""
    with pytest.raises(ValidationError, match="cycle"):
        plan(
            PlanTask(slug="a", name="a", edges=(PlanEdge(upstream="b"),)),
            PlanTask(slug="b", name="b", edges=(PlanEdge(upstream="a"),)),
        )


def test_plan_tasks_have_prefect_like_defaults() -> None:
    """A bare PlanTask is an ordinary task with no retries, timeout or edges."""
    t = PlanTask(slug="a", name="a")
    assert (t.kind, t.edges, t.max_retries, t.retry_delay_s, t.timeout_s) == (
        "task",
        (),
        0,
        None,
        None,
    )


def work_item(**changes: Any) -> WorkItem:
    """A valid WorkItem with `changes` applied."""
    fields: dict[str, Any] = {
        "flow_run_id": "f",
        "task_run_id": "t",
        "slug": "a",
        "map_index": None,
        "flow_ref": FlowRef(kind="import", path="m:f"),
        "parameters": {},
        "state": {"type": "Submitted"},
        "expected_seq": 1,
        "attempt": 1,
        "upstream": (UpstreamInput(edge=PlanEdge(upstream="u", mapped=True), state={}),),
    }
    return WorkItem(**{**fields, **changes})


def test_a_work_item_requires_map_index_even_when_none() -> None:
    """map_index is explicit: None for an unmapped run, never silently absent."""
    data = work_item().model_dump()
    del data["map_index"]
    with pytest.raises(ValidationError, match="map_index"):
        WorkItem.model_validate(data)


def test_data_models_are_frozen_and_strict() -> None:
    """Data models are immutable and reject unknown fields."""
    item = work_item()
    with pytest.raises(ValidationError):
        item.attempt = 2
    with pytest.raises(ValidationError, match="bogus"):
        work_item(bogus=True)
    with pytest.raises(ValidationError, match="bogus"):
        PlanEdge(upstream="a", bogus=1)  # type: ignore[call-arg]
