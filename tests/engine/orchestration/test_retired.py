"""Retired runs: only finished, quiescent flow runs retire, and their digest agrees with ==."""

from __future__ import annotations

from engine.orchestration import decide_and_evolve
from engine.orchestration.retired import request_digest, retire
from engine.state import Running, Success
from events import FlowRef, RunRequested
from tests.engine.orchestration.test_decide import FR, NOW, REF, Ledger, plan, ptask, reasons

OTHER = FlowRef(kind="import", path="pkg.flows:other")


def test_a_running_flow_run_does_not_retire() -> None:
    ledger = Ledger(plan(ptask("a")))
    assert retire(ledger.view) is None


def test_a_flow_run_set_finished_while_a_task_still_runs_does_not_retire() -> None:
    ledger = Ledger(plan(ptask("a")))
    ledger.propose("a", Running(), final=False)
    ledger.set_state(None, Success("by hand"))
    assert ledger.view.is_finished()
    assert retire(ledger.view) is None


def test_a_finished_flow_run_retires_with_its_final_state_and_request() -> None:
    ledger = Ledger(plan(ptask("a")))
    ledger.finish("a")
    retired = retire(ledger.view)
    assert retired is not None
    assert (retired.flow_run_id, retired.flow_state_type) == (FR, "Success")
    assert retired.request == request_digest(REF, {})


def test_the_request_digest_is_equal_exactly_when_python_finds_the_requests_equal() -> None:
    assert request_digest(REF, {"a": 1, "b": [1.0, True]}) == request_digest(
        REF, {"b": [1, 1], "a": 1.0}
    )
    assert request_digest(REF, {"a": 1}) != request_digest(REF, {"a": 1.5})
    assert request_digest(REF, {"a": "1"}) != request_digest(REF, {"a": 1})
    assert request_digest(REF, {"a": [1]}) != request_digest(REF, {"a": {"0": 1}})
    assert request_digest(REF, {}) != request_digest(OTHER, {})


def test_a_retired_run_refuses_a_request_with_other_parameters_and_ignores_the_same() -> None:
    ledger = Ledger(plan(ptask("a")))
    ledger.finish("a")
    retired = retire(ledger.view)
    assert retired is not None

    def request(parameters: dict[str, object]) -> RunRequested:
        return RunRequested(
            event_id=f"again-{len(parameters)}",
            flow_run_id=FR,
            occurred_at=NOW,
            flow_ref=REF,
            parameters=parameters,
        )

    assert decide_and_evolve(retired.as_view(), request({}), NOW)[1] == []
    refused = decide_and_evolve(retired.as_view(), request({"x": 1}), NOW)[1]
    assert reasons(refused) == reasons(decide_and_evolve(ledger.view, request({"x": 1}), NOW)[1])
    assert len(refused) == 1
