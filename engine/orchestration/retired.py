"""Retired flow runs: what the ledger keeps of a run that has come to rest.

A flow run whose flow state is finished and whose task runs all rest finished
can never change again: `decide` answers every later command for it with a
refusal (or nothing), and what it needs for that is a handful of fields, not
the run's task runs. The ledger drops the full view of such a run and keeps a
`RetiredRun` instead, so its memory follows the live runs.

`RetiredRun.as_view` is the stand-in `decide` is given for a retired run. It
has no task runs and an empty plan; `decide` answers every command for a
finished, quiescent run without looking at either (a property test feeds the
full view and the stand-in the same commands and compares the answers). What
it cannot carry is every command id the run processed: those come from the
partition's bounded window of recent commands (`engine.orchestration.partition`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import immutables

from engine.orchestration.rules import FINISHED
from engine.orchestration.view import FlowRunView, PlanIndex
from events import FlowPlan, FlowRef

__all__ = ["RetiredRun", "is_retirable", "request_digest", "retire"]

_NO_PLAN = PlanIndex.of(FlowPlan(name="retired", version="-", tasks=()))
"""The stand-in's plan: a retired run is created, but `decide` reads no task of it."""


@dataclass(frozen=True, slots=True)
class RetiredRun:
    """A finished flow run with nothing left to do, reduced to what `decide` still reads."""

    flow_run_id: str
    request: str
    """`request_digest` of the run's flow and parameters: a repeated run request (the
    same idempotency key) is answered by comparing it, never by the values."""
    idempotency_key: str | None
    flow_state_type: str
    flow_seq: int

    def as_view(self, processed: tuple[str, ...] = ()) -> FlowRunView:
        """The view `decide` answers commands for this run with.

        `processed`: the command ids known to have been processed for it (from the
        partition's window); a command among them is ignored, as the full view
        would ignore it.
        """
        return FlowRunView(
            flow_run_id=self.flow_run_id,
            idempotency_key=self.idempotency_key,
            index=_NO_PLAN,
            flow_state={"type": self.flow_state_type},
            flow_state_type=self.flow_state_type,
            flow_seq=self.flow_seq,
            processed_commands=immutables.Map((c, None) for c in processed),
            retired_request=self.request,
        )


def retire(view: FlowRunView) -> RetiredRun | None:
    """The retired form of `view`, or None while anything about it can still change.

    Retired: the flow run is finished, and every task run rests finished (so no
    worker is on any of them, no timer waits and no claim is pending). A run set
    to a finished state by hand while task runs were still going is not: its
    workers may still heartbeat and its lost attempts may still be failed.
    """
    if not is_retirable(view):
        return None
    if view.retired_request is not None:
        request = view.retired_request
    else:
        request = request_digest(view.flow_ref, view.parameters)
    assert view.flow_state_type is not None  # is_finished()
    return RetiredRun(
        flow_run_id=view.flow_run_id,
        request=request,
        idempotency_key=view.idempotency_key,
        flow_state_type=view.flow_state_type,
        flow_seq=view.flow_seq,
    )


def is_retirable(view: FlowRunView) -> bool:
    """True when `retire(view)` would retire it (cheap: no digest)."""
    return (
        view.flow_state_type in FINISHED
        and not view.unfinished_runs
        and not view.running
        and not view.scheduled
    )


def request_digest(flow_ref: FlowRef | None, parameters: dict[str, Any]) -> str:
    """A digest equal for two (flow, parameters) exactly when Python finds them equal.

    `decide` compares a repeated request with `==`, under which 1, 1.0 and True
    are one value and key order does not matter: numbers are brought to one form
    and keys sorted before hashing, so the digest agrees with `==`.
    """
    ref = flow_ref.model_dump(mode="json") if flow_ref is not None else None
    text = json.dumps([ref, _canonical(parameters)], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, bool | int):
        return ["n", int(value)]
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return ["n", int(value)]
        return ["f", repr(value)]
    if isinstance(value, dict):
        return {"d": {str(k): _canonical(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return ["l", [_canonical(v) for v in value]]
    if value is None or isinstance(value, str):
        return value
    return ["r", repr(value)]
