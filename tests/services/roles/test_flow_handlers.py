"""The ledger's hook: flow state handlers run where flow-run transitions are decided."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine import Flow, task
from engine.orchestration import FlowRunView, decide_and_evolve
from engine.planning import plan_of
from engine.state import State, Success
from events import FlowRef, FlowRunTransitioned, RunRequested, WorkDispatched
from services.roles.codeload import clear_cache
from services.roles.flow_handlers import FlowHandlers
from services.settings import Settings
from tests.integration.flows import live

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **changes)


def _submitted(*handlers: Any) -> tuple[FlowRunView, RunRequested]:
    """A flow with `handlers`, registered for import, and its plan-less run request."""
    with Flow("handled", state_handlers=list(handlers)) as flow:
        task(lambda: 1, name="t")()
    path = live.register(flow, "handled")
    command = RunRequested(
        event_id="c0",
        flow_run_id=str(uuid.uuid4()),
        occurred_at=NOW,
        flow_ref=FlowRef(kind="import", path=path),
    )
    planned = command.model_copy(update={"plan": plan_of(flow, lambda value, slug: {})})
    return FlowRunView(flow_run_id=command.flow_run_id), planned


def _flow_states(facts: list[Any]) -> list[str]:
    return [f.state["type"] for f in facts if isinstance(f, FlowRunTransitioned)]


def test_the_flow_imported_by_its_path_brings_its_handlers_to_the_ledger(tmp_path: Path) -> None:
    """The handler sees Scheduled -> Running; what it returns is what the ledger records."""
    seen: list[str] = []

    def veto(flow: Flow, old: State, new: State) -> State:
        seen.append(f"{type(old).__name__}->{type(new).__name__}")
        return Success("vetoed at the start")

    view, command = _submitted(veto)
    hook = FlowHandlers(_settings(tmp_path))
    _, facts = asyncio.run(hook.decide_and_evolve(view, command, NOW))
    assert seen == ["Scheduled->Running"]
    assert _flow_states(facts) == ["Success"]
    assert not any(isinstance(f, WorkDispatched) for f in facts)


def test_a_hanging_flow_handler_fails_the_run_after_the_bound(tmp_path: Path) -> None:
    """The ledger waits flow_handler_timeout_s at most, then records Failed naming it."""
    release = threading.Event()

    def hangs(flow: Flow, old: State, new: State) -> None:
        release.wait(10)

    view, command = _submitted(hangs)
    hook = FlowHandlers(_settings(tmp_path, flow_handler_timeout_s=0.1))
    try:
        _, facts = asyncio.run(hook.decide_and_evolve(view, command, NOW))
    finally:
        release.set()
    [failed] = [f.state for f in facts if isinstance(f, FlowRunTransitioned)]
    assert failed["type"] == "Failed"
    assert f"Flow state handler {__name__}:{hangs.__qualname__} did not return" in failed["message"]


def test_a_flow_without_handlers_is_decided_exactly_as_without_the_hook(tmp_path: Path) -> None:
    """No handlers, no difference: the same facts as decide_and_evolve."""
    view, command = _submitted()
    _, facts = asyncio.run(FlowHandlers(_settings(tmp_path)).decide_and_evolve(view, command, NOW))
    assert facts == decide_and_evolve(view, command, NOW)[1]


def test_a_flow_the_ledger_may_not_import_is_recorded_without_handlers(tmp_path: Path) -> None:
    """Outside the allowlist nothing is imported; the decision is recorded as decided."""

    def veto(flow: Flow, old: State, new: State) -> State:
        return Success("never")

    view, command = _submitted(veto)
    hook = FlowHandlers(_settings(tmp_path, flow_allowlist=["examples"]))
    _, facts = asyncio.run(hook.decide_and_evolve(view, command, NOW))
    assert _flow_states(facts) == ["Running"]
