"""The ledger role on the real broker: idempotence, dead letters, code loading, operators, timers.

One ledger and one worker (in a background thread) serve the module; every test
makes its own flow runs. After each run the fold of the ledger topic must equal
the ledger's live view.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cloudpickle  # type: ignore[import-untyped, unused-ignore]
import pytest
from pydantic import SecretStr

from engine.orchestration import FlowRunView, TaskRunRecord
from events import (
    CancelRequested,
    Cause,
    DeadLettered,
    FlowRef,
    ResumeRequested,
    TaskRunTransitioned,
    TransitionProposed,
    TransitionRejected,
    decode,
    encode,
)
from services.roles.codeload import sign, sign_and_store_flow
from services.settings import Settings
from tests.integration.flows import simple
from tests.integration.roles_support import RolesThread, run_request

pytestmark = pytest.mark.integration

FLOWS = "tests.integration.flows.simple"
KEY = "ledger-test-key"


@pytest.fixture(scope="module")
def roles(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolesThread]:
    unique = uuid.uuid4().hex[:10]
    settings = Settings(
        brokers=kafka_bootstrap,
        topic_prefix=f"l{unique}.",
        app_id=f"ledger-{unique}",
        data_dir=tmp_path_factory.mktemp("ledger") / "data",
        session_timeout_ms=3000,
        fetch_max_wait_ms=5,
        signing_key=SecretStr(KEY),
    )
    with RolesThread(settings, {"ledger", "worker"}) as running:
        yield running


def _finished(roles: RolesThread, flow_run_id: str) -> FlowRunView:
    view = roles.wait_view(flow_run_id)
    assert roles.fold_of(flow_run_id) == view, "live view differs from the fold of the ledger"
    return view


def _record(view: FlowRunView, name: str) -> TaskRunRecord:
    """The (unmapped) task run of the task called `name` (slugs are ``name-1``...)."""
    record = next((r for r in view.task_runs.values() if r.slug.rpartition("-")[0] == name), None)
    assert record is not None, f"no task run of {name}"
    return record


def _state(view: FlowRunView, name: str) -> str:
    return _record(view, name).state_type


def _rejections(roles: RolesThread, flow_run_id: str) -> list[TransitionRejected]:
    return [e for e in roles.events_of(flow_run_id) if isinstance(e, TransitionRejected)]


def _dead_letters(roles: RolesThread) -> list[DeadLettered]:
    letters = [decode(r.value or b"") for r in roles.records("deadletter")]
    assert all(isinstance(d, DeadLettered) for d in letters)
    return letters  # type: ignore[return-value]


def test_a_redelivered_command_and_a_repeated_run_request_change_nothing(
    roles: RolesThread,
) -> None:
    """The same command id twice (redelivery) and a second request for the same run id
    (idempotent submit) add no event to the ledger."""
    first = run_request(f"{FLOWS}:single")
    roles.send(first)
    _finished(roles, first.flow_run_id)
    before = roles.events_of(first.flow_run_id)
    proposals = [
        r.value
        for r in roles.records("commands")
        if r.key == first.flow_run_id.encode() and b"transition_proposed" in (r.value or b"")
    ]
    assert proposals, "the worker's proposals are on the commands topic"
    roles.send(first)  # redelivered RunRequested (same event id)
    roles.send(first.model_copy(update={"event_id": str(uuid.uuid4())}))  # same run, new id
    for value in proposals:  # redelivered worker proposals
        roles.send_raw("commands", value or b"", first.flow_run_id.encode())
    marker = run_request(f"{FLOWS}:single")  # once this finishes, the above were consumed
    roles.send(marker)
    _finished(roles, marker.flow_run_id)
    assert roles.events_of(first.flow_run_id) == before
    assert _finished(roles, first.flow_run_id).flow_state_type == "Success"


def test_malformed_records_are_dead_lettered_with_a_reason_and_the_ledger_goes_on(
    roles: RolesThread,
) -> None:
    """Not JSON, a fact on the commands topic and an unknown type each become a dead letter."""
    key = str(uuid.uuid4())
    bad = {
        b"not json at all": "not valid JSON",
        encode(
            TaskRunTransitioned(
                event_id="x", flow_run_id=key, occurred_at=datetime.now(UTC), state={}
            )
        ): "is a fact",
        b'{"type": "launch_rockets", "schema_version": 1}': "unknown event type",
        b'{"type": "run_requested", "schema_version": 1, "event_id": "e", '
        b'"flow_run_id": "f", "occurred_at": "2024-01-01T00:00:00"}': "invalid event",
    }
    for value in bad:
        roles.send_raw("commands", value, key.encode())
    after = run_request(f"{FLOWS}:single")
    roles.send(after)
    assert _finished(roles, after.flow_run_id).flow_state_type == "Success"
    letters = [d for d in _dead_letters(roles) if d.key == key]
    assert len(letters) == len(bad)
    for letter, (value, reason) in zip(
        sorted(letters, key=lambda d: d.offset or 0), bad.items(), strict=True
    ):
        assert reason in letter.reason
        assert letter.payload == value.decode(errors="replace")
        assert letter.source_topic == roles.settings.topic("commands")
        assert letter.offset is not None


def test_commands_for_a_flow_run_that_was_never_created_leave_no_run_behind(
    roles: RolesThread,
) -> None:
    """Forged proposals and a cancel for unknown runs are dead-lettered with the reason;
    neither the ledger's memory nor the ledger topic gets a phantom flow run."""
    phantoms = [f"phantom-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for flow_run_id in phantoms:
        forged = TransitionProposed(
            event_id=str(uuid.uuid4()),
            flow_run_id=flow_run_id,
            occurred_at=datetime.now(UTC),
            task_run_id=f"{flow_run_id}/a",
            expected_seq=0,
            attempt=1,
            state={"type": "Failed", "message": "forged"},
        )
        roles.send(forged)
        roles.send(
            CancelRequested(
                event_id=str(uuid.uuid4()), flow_run_id=flow_run_id, occurred_at=datetime.now(UTC)
            )
        )
    marker = run_request(f"{FLOWS}:single")  # once this finishes, the above were consumed
    roles.send(marker)
    _finished(roles, marker.flow_run_id)
    views = roles.ledger_views
    assert not [f for f in phantoms if f in views or roles.ledger_view(f) is not None]
    assert not [f for f in phantoms if roles.events_of(f)]
    letters = [d for d in _dead_letters(roles) if d.key in phantoms]
    assert len(letters) == 2 * len(phantoms)
    assert all("unknown flow run" in d.reason for d in letters)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("tests.integration.flows.no_such_module:flow", "cannot import module"),
        ("os.path:join", "is not in the flow allowlist"),
        (f"{FLOWS}:one", "is a FunctionTask, not a Flow"),
    ],
)
def test_a_flow_that_cannot_be_imported_is_rejected_with_the_reason(
    roles: RolesThread, path: str, reason: str
) -> None:
    """No flow run is created; the ledger records TransitionRejected, and a dead letter."""
    request = run_request(path)
    roles.send(request)
    view = roles.wait_view(request.flow_run_id, lambda v: bool(v.processed_commands))
    assert not view.created
    (rejected,) = _rejections(roles, request.flow_run_id)
    assert rejected.command_id == request.event_id
    assert reason in rejected.reason
    assert any(reason in d.reason for d in _dead_letters(roles) if d.key == request.flow_run_id)
    assert roles.fold_of(request.flow_run_id) == view


def test_a_signed_pickle_runs_and_a_wrongly_signed_or_unsigned_one_is_refused(
    roles: RolesThread, tmp_path: Path
) -> None:
    """Only bytes with a valid HMAC of the configured key are ever unpickled."""
    good = run_request(sign_and_store_flow(simple.single, roles.settings))
    roles.send(good)
    assert _finished(roles, good.flow_run_id).flow_state_type == "Success"

    marker = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.write_text, (marker, "unpickled!"))

    data = cloudpickle.dumps(Bomb())
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    forged = FlowRef(kind="pickled", location=f"file://{path}", signature=sign(data, "wrong"))
    bad = run_request(forged)
    roles.send(bad)
    roles.wait_view(bad.flow_run_id, lambda v: bool(v.processed_commands))
    (rejected,) = _rejections(roles, bad.flow_run_id)
    assert "invalid signature" in rejected.reason
    assert not marker.exists()

    blob = json.loads(encode(run_request(forged)))
    del blob["flow_ref"]["signature"]
    unsigned = json.dumps(blob).encode()
    unsigned_key = str(uuid.uuid4()).encode()
    roles.send_raw("commands", unsigned, unsigned_key)
    last = run_request(f"{FLOWS}:single")
    roles.send(last)
    _finished(roles, last.flow_run_id)
    letters = [d for d in _dead_letters(roles) if d.key == unsigned_key.decode()]
    assert letters
    assert "signature" in letters[0].reason


def test_a_running_flow_run_is_cancelled(roles: RolesThread, tmp_path: Path) -> None:
    """Cancel while a body runs: Cancelling, then Cancelled when the body ends; nothing after."""
    release = tmp_path / "release"
    request = run_request(f"{FLOWS}:blocking", {"path": str(release)})
    roles.send(request)
    roles.wait_view(
        request.flow_run_id, lambda v: v.created and _state(v, "wait_for_file") == "Running"
    )
    roles.send(
        CancelRequested(
            event_id=str(uuid.uuid4()),
            flow_run_id=request.flow_run_id,
            occurred_at=datetime.now(UTC),
            reason="test",
        )
    )
    view = roles.wait_view(request.flow_run_id, lambda v: v.flow_state_type == "Cancelling")
    assert _state(view, "wait_for_file") == "Cancelling"
    assert _state(view, "after") == "Cancelled"
    release.touch()
    view = _finished(roles, request.flow_run_id)
    assert view.flow_state_type == "Cancelled"
    assert _state(view, "wait_for_file") == "Cancelled"
    assert _state(view, "after") == "Cancelled"


def test_a_paused_task_run_resumes_on_request(roles: RolesThread) -> None:
    """PAUSE rests the run Paused; ResumeRequested runs it again, to Success downstream."""
    request = run_request(f"{FLOWS}:pausing")
    roles.send(request)
    paused = roles.wait_view(
        request.flow_run_id, lambda v: v.created and _state(v, "gate") == "Paused"
    )
    assert paused.flow_state_type == "Running"
    gate = _record(paused, "gate")
    roles.send(
        ResumeRequested(
            event_id=str(uuid.uuid4()),
            flow_run_id=request.flow_run_id,
            task_run_id=gate.task_run_id,
            occurred_at=datetime.now(UTC),
            cause=Cause(),
        )
    )
    view = _finished(roles, request.flow_run_id)
    assert view.flow_state_type == "Success"
    states = [
        e.state["type"]
        for e in roles.events_of(request.flow_run_id)
        if isinstance(e, TaskRunTransitioned) and e.task_run_id == gate.task_run_id
    ]
    after_pause = states[states.index("Paused") :]
    assert after_pause == ["Paused", "Resume", "Submitted", "Running", "Success"]


def test_a_retry_with_a_delay_is_dispatched_by_the_scheduler_when_due(roles: RolesThread) -> None:
    """Retrying(start_time = failure + 1 s) is submitted by a scheduler tick at that time."""
    request = run_request(f"{FLOWS}:retry_later")
    roles.send(request)
    view = _finished(roles, request.flow_run_id)
    assert view.flow_state_type == "Success"
    events = [
        e
        for e in roles.events_of(request.flow_run_id)
        if isinstance(e, TaskRunTransitioned) and e.task_slug == "flaky_once-1"
    ]
    retrying = next(e for e in events if e.state["type"] == "Retrying")
    start = datetime.fromisoformat(retrying.state["start_time"])
    assert 0.9 <= (start - retrying.occurred_at).total_seconds() <= 1.2
    after_retrying = events[events.index(retrying) + 1 :]
    resubmitted = next(e for e in after_retrying if e.state["type"] == "Submitted")
    assert resubmitted.cause.command_id is not None
    assert "/tick/" in resubmitted.cause.command_id, "dispatched by the scheduler"
    assert resubmitted.occurred_at >= start
    assert (resubmitted.occurred_at - start).total_seconds() < 0.5
    second_running = [e for e in events if e.state["type"] == "Running"][1]
    assert second_running.occurred_at >= start


def test_a_finished_run_leaves_the_live_views_and_late_commands_are_still_answered(
    roles: RolesThread,
) -> None:
    """Once finished a run is retired (its view leaves memory); a late proposal and a run
    request with other parameters are refused, a repeated command is ignored, as they
    were for its whole view."""
    first = run_request(f"{FLOWS}:single")
    roles.send(first)
    finished = _finished(roles, first.flow_run_id)
    assert first.flow_run_id not in roles.ledger_views
    assert roles.on_loop(lambda ledger: ledger.retired_run(first.flow_run_id)) is not None
    record = next(iter(finished.task_runs.values()))
    late = TransitionProposed(
        event_id=str(uuid.uuid4()),
        flow_run_id=first.flow_run_id,
        occurred_at=datetime.now(UTC),
        task_run_id=record.task_run_id,
        cause=Cause(worker=roles.ledger.identity),
        expected_seq=record.seq,
        attempt=record.attempt,
        state={"type": "Running"},
        final=False,
    )
    roles.send(late)
    roles.send(late)  # the same command again: recognised by the window
    roles.send(first.model_copy(update={"event_id": str(uuid.uuid4()), "parameters": {"x": 1}}))
    roles.send(first.model_copy(update={"event_id": str(uuid.uuid4())}))  # the same request
    marker = run_request(f"{FLOWS}:single")  # once this finishes, the above were consumed
    roles.send(marker)
    _finished(roles, marker.flow_run_id)
    reasons = [r.reason for r in _rejections(roles, first.flow_run_id)]
    assert reasons == [
        f"flow run {first.flow_run_id} is already Success",
        f"flow run {first.flow_run_id} exists with another flow or other parameters; "
        "a run request cannot change them",
    ]
    assert first.flow_run_id not in roles.ledger_views
