"""decide(view, command, now): run requests, proposals, mapping, cancel, resume, set-state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.orchestration import (
    FlowRunView,
    TaskRunRecord,
    allowed,
    decide,
    decide_and_evolve,
)
from engine.state import (
    Cached,
    Failed,
    Looped,
    Mapped,
    Paused,
    Pending,
    Retrying,
    Running,
    Skipped,
    State,
    Success,
)
from events import (
    CancelRequested,
    Cause,
    Command,
    Event,
    FlowPlan,
    FlowRef,
    FlowRunCreated,
    FlowRunTransitioned,
    HeartbeatRecorded,
    HeartbeatSent,
    PlanEdge,
    PlanTask,
    ResumeRequested,
    RunRequested,
    SchedulerTicked,
    SetStateRequested,
    TaskRunTransitioned,
    TransitionProposed,
    TransitionRejected,
    WorkDispatched,
    WorkerIdentity,
)

FR = "fr"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
REF = FlowRef(kind="import", path="pkg.flows:flow")
WORKER = WorkerIdentity(id="w1", host="host", pid=1)
CONSTANT_BLOB = {
    "type": "Result",
    "location": "memory-store://constant/c",
    "serializer": None,
    "hash": None,
    "size": None,
}


def edge(upstream: str, key: str | None = None, mapped: bool = False) -> PlanEdge:
    """A plan edge from `upstream`."""
    return PlanEdge(upstream=upstream, key=key, mapped=mapped)


def ptask(slug: str, *edges: PlanEdge, reference: bool = True, **fields: Any) -> PlanTask:
    """A plan task (a reference task unless told otherwise)."""
    return PlanTask(slug=slug, name=slug, edges=edges, is_reference=reference, **fields)


def constant(slug: str) -> PlanTask:
    """A constant plan task whose value is stored at CONSTANT_BLOB."""
    return PlanTask(slug=slug, name=slug, kind="constant", constant=CONSTANT_BLOB)


def plan(*tasks: PlanTask) -> FlowPlan:
    """A flow plan of the given tasks."""
    return FlowPlan(name="p", version="v1", tasks=tasks)


def summary(events: list[Event]) -> list[tuple[str, str | None, str | None]]:
    """(event type, task run id, state type) per event."""
    out = []
    for e in events:
        state = getattr(e, "state", None)
        out.append((e.type, e.task_run_id, state["type"] if isinstance(state, dict) else None))
    return out


def reasons(events: list[Event]) -> list[str]:
    """The reasons of the rejections among `events`."""
    return [e.reason for e in events if isinstance(e, TransitionRejected)]


def run_id(slug: str, map_index: int | None = None) -> str:
    """The task run id of `slug` (child `map_index`) in flow run FR."""
    return f"{FR}/{slug}" if map_index is None else f"{FR}/{slug}/{map_index}"


class Ledger:
    """A view with the facts folded into it, and builders for the commands it answers."""

    def __init__(self, flow_plan: FlowPlan | None = None, now: datetime = NOW) -> None:
        self.view = FlowRunView(flow_run_id=FR)
        self.events: list[Event] = []
        self.now = now
        self._ids = 0
        if flow_plan is not None:
            self.send(
                RunRequested(
                    event_id="run", flow_run_id=FR, occurred_at=now, flow_ref=REF, plan=flow_plan
                )
            )

    def next_id(self) -> str:
        self._ids += 1
        return f"c{self._ids}"

    def send(self, command: Command) -> list[Event]:
        self.view, new = decide_and_evolve(self.view, command, self.now)
        self.events.extend(new)
        return new

    def record(self, slug: str, map_index: int | None = None) -> TaskRunRecord:
        found = self.view.record(slug, map_index)
        assert found is not None, (slug, map_index)
        return found

    def proposal(
        self,
        slug: str,
        state: State | dict[str, Any],
        map_index: int | None = None,
        *,
        final: bool = True,
        expected_seq: int | None = None,
        attempt: int | None = None,
        worker: WorkerIdentity | None = WORKER,
    ) -> TransitionProposed:
        record = self.view.record(slug, map_index)
        return TransitionProposed(
            event_id=self.next_id(),
            flow_run_id=FR,
            occurred_at=self.now,
            task_run_id=run_id(slug, map_index),
            task_slug=slug,
            map_index=map_index,
            cause=Cause(worker=worker),
            expected_seq=expected_seq
            if expected_seq is not None
            else (record.seq if record else 0),
            attempt=attempt if attempt is not None else (record.attempt if record else 1),
            state=state.serialize() if isinstance(state, State) else state,
            final=final,
        )

    def propose(
        self, slug: str, state: State | dict[str, Any], map_index: int | None = None, **kw: Any
    ) -> list[Event]:
        return self.send(self.proposal(slug, state, map_index, **kw))

    def finish(
        self, slug: str, state: State | None = None, map_index: int | None = None
    ) -> list[Event]:
        """Claim the run, then propose its final state (Success by default)."""
        claim = self.propose(slug, Running("Starting task run."), map_index, final=False)
        assert not reasons(claim), reasons(claim)
        return self.propose(slug, state or Success("Task run succeeded.", result=1), map_index)

    def cancel(self) -> list[Event]:
        return self.send(
            CancelRequested(event_id=self.next_id(), flow_run_id=FR, occurred_at=self.now)
        )

    def resume(self, slug: str) -> list[Event]:
        return self.send(
            ResumeRequested(
                event_id=self.next_id(),
                flow_run_id=FR,
                occurred_at=self.now,
                task_run_id=run_id(slug),
            )
        )

    def set_state(self, slug: str | None, state: State | dict[str, Any]) -> list[Event]:
        return self.send(
            SetStateRequested(
                event_id=self.next_id(),
                flow_run_id=FR,
                occurred_at=self.now,
                task_run_id=None if slug is None else run_id(slug),
                state=state.serialize() if isinstance(state, State) else state,
            )
        )

    def tick(self) -> list[Event]:
        return self.send(
            SchedulerTicked(event_id=self.next_id(), flow_run_id=FR, occurred_at=self.now)
        )

    def heartbeat(self, slug: str, attempt: int) -> list[Event]:
        return self.send(
            HeartbeatSent(
                event_id=self.next_id(),
                flow_run_id=FR,
                occurred_at=self.now,
                task_run_id=run_id(slug),
                attempt=attempt,
            )
        )


def chain() -> FlowPlan:
    """c (constant) and a -> b (b also takes c)."""
    return plan(
        constant("c"),
        ptask("a", reference=False),
        ptask("b", edge("a", "x"), edge("c", "y")),
    )


# ----- run requests ------------------------------------------------------------------------------


def test_a_run_request_creates_the_flow_run_and_dispatches_its_roots() -> None:
    """FlowRunCreated, flow Running, every task Pending, constants Success, roots submitted."""
    ledger = Ledger(chain())
    assert summary(ledger.events) == [
        ("flow_run_created", None, None),
        ("flow_run_transitioned", None, "Running"),
        ("task_run_transitioned", run_id("c"), "Pending"),
        ("task_run_transitioned", run_id("a"), "Pending"),
        ("task_run_transitioned", run_id("b"), "Pending"),
        ("task_run_transitioned", run_id("c"), "Success"),
        ("task_run_transitioned", run_id("a"), "Submitted"),
        ("work_dispatched", run_id("a"), None),
    ]
    view = ledger.view
    assert view.flow_state_type == "Running"
    assert [view.record(s).state_type for s in "cab"] == ["Success", "Submitted", "Pending"]  # type: ignore[union-attr]
    assert ledger.record("c").state["_result"] == CONSTANT_BLOB
    assert ledger.record("a").state["state"]["type"] == "Pending"


def test_the_work_item_carries_what_the_worker_needs() -> None:
    """WorkDispatched names the run, its starting state, expected seq and attempt."""
    ledger = Ledger(
        plan(constant("c"), ptask("a", edge("c", "y"))),
    )
    (work,) = [e for e in ledger.events if isinstance(e, WorkDispatched)]
    item = work.work
    assert (item.task_run_id, item.slug, item.map_index) == (run_id("a"), "a", None)
    assert item.expected_seq == ledger.record("a").seq == work.seq
    assert item.attempt == 1
    assert item.state["type"] == "Submitted"
    assert item.flow_ref == REF
    (upstream,) = item.upstream
    assert upstream.edge == edge("c", "y")
    assert upstream.state["type"] == "Success"
    assert item.is_mapped_parent is False


def test_facts_are_named_after_the_command_and_stamped_with_now() -> None:
    """Every fact's id derives from the command id; cause and time come from the command/now."""
    ledger = Ledger(chain())
    assert [e.event_id for e in ledger.events] == [f"run/{i}" for i in range(len(ledger.events))]
    assert {e.cause.command_id for e in ledger.events} == {"run"}
    assert {e.occurred_at for e in ledger.events} == {NOW}


def test_a_run_request_without_a_plan_is_rejected() -> None:
    """The ledger cannot create a run without a plan: TransitionRejected with the reason."""
    ledger = Ledger()
    events = ledger.send(RunRequested(event_id="r", flow_run_id=FR, occurred_at=NOW, flow_ref=REF))
    assert reasons(events) == [
        "the run request carries no flow plan (the ledger shell resolves flow_ref)"
    ]
    assert not ledger.view.created


def test_a_second_run_request_for_the_same_flow_run_changes_nothing() -> None:
    """Another RunRequested for an existing flow run id emits nothing."""
    ledger = Ledger(chain())
    again = RunRequested(
        event_id="again", flow_run_id=FR, occurred_at=NOW, flow_ref=REF, plan=chain()
    )
    assert ledger.send(again) == []


def test_commands_for_an_unknown_flow_run_are_rejected() -> None:
    """Anything but a run request before the flow run exists is rejected."""
    ledger = Ledger()
    assert reasons(ledger.cancel()) == [f"unknown flow run {FR}: only a run_requested creates one"]


@pytest.mark.parametrize("owned", [False, True])
def test_a_command_for_an_unknown_flow_run_leaves_no_view_behind(owned: bool) -> None:
    """A forged proposal for a run that never existed must not bring one into being.

    The refusal is returned for the shell to dead-letter, but not folded: the view
    stays the empty one it was (no processed command, no time), even when handed over.
    """
    empty = FlowRunView(flow_run_id=FR)
    forged = TransitionProposed(
        event_id="forged",
        flow_run_id=FR,
        occurred_at=NOW,
        task_run_id=run_id("a"),
        cause=Cause(worker=WORKER),
        expected_seq=0,
        attempt=1,
        state=Failed("forged").serialize(),
    )
    view, events = decide_and_evolve(empty, forged, NOW, owned=owned)
    assert reasons(events) == [f"unknown flow run {FR}: only a run_requested creates one"]
    assert view == FlowRunView(flow_run_id=FR)
    assert not view.processed_commands
    assert view.last_event_at is None


def test_a_run_request_reusing_a_run_id_with_other_parameters_is_rejected_with_the_reason() -> None:
    """An idempotency key reused for another flow or parameters is refused, not dropped."""
    ledger = Ledger()
    ledger.send(
        RunRequested(
            event_id="r1", flow_run_id=FR, occurred_at=NOW, flow_ref=REF, plan=chain(),
            parameters={"n": 1}, idempotency_key="nightly",
        )
    )
    other_parameters = RunRequested(
        event_id="r2", flow_run_id=FR, occurred_at=NOW, flow_ref=REF, plan=chain(),
        parameters={"n": 2}, idempotency_key="nightly",
    )
    other_flow = RunRequested(
        event_id="r3", flow_run_id=FR, occurred_at=NOW, plan=chain(),
        flow_ref=FlowRef(kind="import", path="pkg.flows:other"), parameters={"n": 1},
    )
    expected = (
        f"flow run {FR} (idempotency key 'nightly') exists with another flow or other "
        "parameters; a run request cannot change them"
    )
    assert reasons(ledger.send(other_parameters)) == [expected]
    assert reasons(ledger.send(other_flow)) == [expected]
    assert ledger.view.parameters == {"n": 1}


def test_a_redelivered_command_emits_nothing() -> None:
    """A command id already processed gives no events and the same view."""
    ledger = Ledger(chain())
    claim = ledger.proposal("a", Running())
    first = ledger.send(claim)
    view = ledger.view
    assert summary(first) == [("task_run_transitioned", run_id("a"), "Running")]
    assert decide_and_evolve(view, claim, NOW) == (view, [])
    assert decide(view, claim, NOW) == []


def test_decide_leaves_the_given_view_untouched() -> None:
    """decide is pure: the input view is equal to what it was before."""
    ledger = Ledger(chain())
    before = ledger.view
    snapshot = FlowRunView(**{f: getattr(before, f) for f in before.__dataclass_fields__})
    events = decide(before, ledger.proposal("a", Running()), NOW)
    assert events
    assert before == snapshot
    assert before.record("a").state_type == "Submitted"  # type: ignore[union-attr]


# ----- proposals ---------------------------------------------------------------------------------


def test_an_accepted_proposal_moves_the_run_one_seq_on() -> None:
    """A valid claim is a TaskRunTransitioned with seq + 1 and the previous class."""
    ledger = Ledger(chain())
    seq = ledger.record("a").seq
    (fact,) = ledger.propose("a", Running(), final=False)
    assert isinstance(fact, TaskRunTransitioned)
    assert (fact.seq, fact.previous, fact.attempt, fact.final) == (seq + 1, "Submitted", 1, False)
    assert fact.cause.worker == WORKER
    assert ledger.record("a").seq == seq + 1


def test_a_final_success_dispatches_the_downstream_task() -> None:
    """When a resting state is accepted, tasks it unblocks are submitted."""
    ledger = Ledger(chain())
    events = ledger.finish("a")
    assert summary(events) == [
        ("task_run_transitioned", run_id("a"), "Success"),
        ("task_run_transitioned", run_id("b"), "Submitted"),
        ("work_dispatched", run_id("b"), None),
    ]
    (work,) = [e for e in events if isinstance(e, WorkDispatched)]
    assert {u.edge.upstream: u.state["type"] for u in work.work.upstream} == {
        "a": "Success",
        "c": "Success",
    }


def test_a_stale_proposal_is_rejected() -> None:
    """A proposal whose expected_seq is not the run's seq is rejected and changes nothing."""
    ledger = Ledger(chain())
    seq = ledger.record("a").seq
    events = ledger.propose("a", Running(), expected_seq=seq - 1)
    assert reasons(events) == [
        f"stale proposal: it expected seq {seq - 1} but task run {run_id('a')} is at seq "
        f"{seq} (Submitted)"
    ]
    assert ledger.record("a").seq == seq
    (rejected,) = events
    assert isinstance(rejected, TransitionRejected)
    assert rejected.task_run_id == run_id("a")
    assert rejected.proposed == Running().serialize()
    assert rejected.command_type == "transition_proposed"


def test_an_illegal_transition_is_rejected() -> None:
    """A finished run cannot be claimed again."""
    ledger = Ledger(plan(ptask("a"), ptask("b")))
    ledger.finish("a")
    assert reasons(ledger.propose("a", Running())) == ["illegal transition Success -> Running"]


def test_a_proposal_for_an_unknown_task_run_is_rejected() -> None:
    """A task run id the plan does not have is rejected."""
    ledger = Ledger(chain())
    assert reasons(ledger.propose("nope", Running())) == [f"unknown task run {run_id('nope')}"]


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        ({"type": "Nope"}, "unknown state type 'Nope'"),
        ({"type": "State"}, "unknown state type 'State'"),
        ({"message": "no type"}, "unknown state type None"),
        ({"type": "Running", "bogus": 1}, "state Running has unknown fields ['bogus']"),
        ({"type": "Running", "message": 5}, "state Running: message must be a string or null"),
        ({"type": "Running", "context": []}, "state Running: context must be an object"),
        ({"type": "Retrying", "run_count": "2"}, "state Retrying: run_count must be an integer"),
        ({"type": "Retrying", "run_count": True}, "state Retrying: run_count must be an integer"),
        (
            {"type": "Retrying", "start_time": "2024-01-02T03:04:05"},
            "state Retrying: start_time must be an ISO-8601 time with an offset",
        ),
        (
            {"type": "Retrying", "start_time": "tomorrow"},
            "state Retrying: start_time must be an ISO-8601 time with an offset",
        ),
        ({"type": "Submitted", "state": {"type": "Nope"}}, "unknown state type 'Nope'"),
    ],
)
def test_a_malformed_state_blob_is_rejected_with_the_reason(
    blob: dict[str, Any], reason: str
) -> None:
    """decide never trusts a proposed blob: bad ones are rejected, not raised."""
    ledger = Ledger(chain())
    assert reasons(ledger.propose("a", blob)) == [reason]


def test_a_claim_for_another_attempt_is_rejected() -> None:
    """A Running claim must be for the attempt the ledger dispatched."""
    ledger = Ledger(chain())
    assert reasons(ledger.propose("a", Running(), attempt=2)) == [
        "claim for attempt 2 but the ledger dispatched attempt 1"
    ]


def test_an_outcome_for_another_attempt_is_rejected_even_from_the_claimer() -> None:
    """A Failed with attempt=99 under the claimer's id does not end attempt 1."""
    ledger = Ledger(chain())
    ledger.propose("a", Running(), final=False)
    assert reasons(ledger.propose("a", Failed("forged"), attempt=99)) == [
        "proposal for attempt 99 but the ledger dispatched attempt 1"
    ]
    assert ledger.record("a").state_type == "Running"
    assert reasons(ledger.propose("a", Success(result=1))) == []


def test_while_a_run_is_running_only_its_claimer_may_end_it() -> None:
    """A duplicate's outcome from another worker is refused, even with the right seq.

    Workers run fresh work without awaiting their claim's answer; when a duplicate
    loses the claim race, its outcome must not end the winner's attempt.
    """
    ledger = Ledger(chain())
    ledger.propose("a", Running(), final=False)
    other = WorkerIdentity(id="w2", host="host", pid=2)
    assert ledger.record("a").claimed_by == WORKER.id
    assert reasons(ledger.propose("a", Success(result=2), worker=other)) == [
        f"task run {run_id('a')} is claimed by w1, not w2"
    ]
    assert reasons(ledger.propose("a", Success(result=2), worker=None)) == [
        f"task run {run_id('a')} is claimed by w1, not no worker"
    ]
    assert reasons(ledger.propose("a", Success(result=1))) == []
    assert ledger.record("a").state_type == "Success"


def test_proposals_to_a_finished_flow_run_are_rejected() -> None:
    """Once the flow run finished, every proposal is rejected."""
    ledger = Ledger(plan(ptask("a")))
    ledger.finish("a")
    assert ledger.view.flow_state_type == "Success"
    assert reasons(ledger.propose("a", {"type": "Cached"})) == [f"flow run {FR} is already Success"]


def test_a_non_final_state_does_not_unblock_downstream_or_finish_the_flow() -> None:
    """final=False (a Failed on its way to Retrying) reacts to nothing."""
    ledger = Ledger(plan(ptask("a", max_retries=1), ptask("b", edge("a"))))
    ledger.propose("a", Running(), final=False)
    events = ledger.propose("a", Failed("boom"), final=False)
    assert summary(events) == [("task_run_transitioned", run_id("a"), "Failed")]
    assert ledger.view.flow_state_type == "Running"
    assert ledger.record("b").state_type == "Pending"
    assert ledger.view.unfinished_runs == 2


def test_a_failed_on_its_way_to_retrying_may_end_failed_after_all() -> None:
    """A handler crashing on the Retrying transition: Failed -> Failed ends the run (issue 15)."""
    ledger = Ledger(plan(ptask("a", max_retries=1), ptask("b", edge("a"))))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", Failed("boom"), final=False)
    events = ledger.propose(
        "a", Failed("Unexpected error while calling state handlers: RuntimeError('x')")
    )
    assert reasons(events) == []
    assert ledger.record("a").rests_finished
    dispatched = [e.task_slug for e in events if isinstance(e, WorkDispatched)]
    assert dispatched == ["b"], "the downstream task runs its trigger on the outcome"


def test_a_resting_failed_still_refuses_another_failed() -> None:
    """Only a step on the way (final=False) may be replaced; a run's outcome may not."""
    ledger = Ledger(plan(ptask("a"), ptask("b", edge("a"))))
    ledger.finish("a", Failed("boom"))
    assert reasons(ledger.propose("a", Failed("again"))) == ["illegal transition Failed -> Failed"]


def test_a_due_retry_is_dispatched_as_the_next_attempt() -> None:
    """A final Retrying that is due at once is submitted again with attempt run_count + 1."""
    ledger = Ledger(plan(ptask("a", max_retries=1), ptask("b", edge("a"))))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", Failed("boom"), final=False)
    events = ledger.propose("a", Retrying(start_time=NOW, run_count=1))
    assert summary(events) == [
        ("task_run_transitioned", run_id("a"), "Retrying"),
        ("task_run_transitioned", run_id("a"), "Submitted"),
        ("work_dispatched", run_id("a"), None),
    ]
    (work,) = [e for e in events if isinstance(e, WorkDispatched)]
    assert work.work.attempt == 2
    assert ledger.record("a").attempt == 2
    assert reasons(ledger.propose("a", Running(), attempt=1)) == [
        "claim for attempt 1 but the ledger dispatched attempt 2"
    ]
    assert not reasons(ledger.propose("a", Running(), attempt=2))


# ----- mapping -----------------------------------------------------------------------------------


def mapped_plan() -> FlowPlan:
    """xs -> m (mapped over xs) -> r (reduce over m)."""
    return plan(
        ptask("xs", reference=False),
        ptask("m", edge("xs", "x", mapped=True), reference=False),
        ptask("r", edge("m", "ys")),
    )


def test_a_mapped_parent_is_dispatched_as_a_mapped_parent() -> None:
    """The parent of a mapped task gets a work item flagged is_mapped_parent."""
    ledger = Ledger(mapped_plan())
    events = ledger.finish("xs", Success(result=[1, 2, 3]))
    (work,) = [e for e in events if isinstance(e, WorkDispatched)]
    assert work.work.slug == "m"
    assert work.work.is_mapped_parent is True


def test_a_mapped_parent_creates_and_dispatches_its_children() -> None:
    """Mapped(n) adds n Pending children, each submitted with its own work item."""
    ledger = Ledger(mapped_plan())
    ledger.finish("xs", Success(result=[1, 2, 3]))
    events = ledger.propose("m", Mapped("Ready to proceed with mapping.", n_map_states=3))
    assert summary(events) == [
        ("task_run_transitioned", run_id("m"), "Mapped"),
        *[("task_run_transitioned", run_id("m", i), "Pending") for i in range(3)],
        *[
            item
            for i in range(3)
            for item in [
                ("task_run_transitioned", run_id("m", i), "Submitted"),
                ("work_dispatched", run_id("m", i), None),
            ]
        ],
    ]
    assert ledger.view.children["m"] == 3
    works = [e.work for e in events if isinstance(e, WorkDispatched)]
    assert [(w.map_index, w.is_mapped_parent) for w in works] == [
        (0, False),
        (1, False),
        (2, False),
    ]
    assert ledger.record("r").state_type == "Pending"


def test_map_children_in_the_context_overrides_n_map_states() -> None:
    """The worker's context["map_children"] (after flattening) is the number of children."""
    ledger = Ledger(mapped_plan())
    ledger.finish("xs", Success(result=[1, 2, 3]))
    blob = Mapped(n_map_states=3).serialize()
    blob["context"] = {"map_children": 2}
    ledger.propose("m", blob)
    assert ledger.view.children["m"] == 2
    assert ledger.view.record("m", 2) is None


def test_a_reduce_waits_for_every_child() -> None:
    """The downstream of a Mapped parent is dispatched only after its last child finishes."""
    ledger = Ledger(mapped_plan())
    ledger.finish("xs", Success(result=[1, 2, 3]))
    ledger.propose("m", Mapped(n_map_states=3))
    for i in (2, 0):
        ledger.finish("m", map_index=i)
        assert ledger.record("r").state_type == "Pending"
    events = ledger.finish("m", map_index=1)
    assert ("work_dispatched", run_id("r"), None) in summary(events)
    (work,) = [e.work for e in events if isinstance(e, WorkDispatched)]
    (upstream,) = work.upstream
    assert upstream.map_states is not None
    assert [s["type"] for s in upstream.map_states] == ["Success"] * 3


def test_a_mapped_parent_with_no_children_unblocks_its_reduce_at_once() -> None:
    """Mapped with zero children finishes the mapping immediately."""
    ledger = Ledger(mapped_plan())
    ledger.finish("xs", Success(result=[]))
    events = ledger.propose("m", Mapped(n_map_states=0))
    assert ("work_dispatched", run_id("r"), None) in summary(events)


def test_a_map_over_a_map_dispatches_child_i_when_upstream_child_i_finishes() -> None:
    """Depth-first mapping: downstream child i waits only for upstream child i."""
    ledger = Ledger(
        plan(
            ptask("xs", reference=False),
            ptask("m1", edge("xs", "x", mapped=True), reference=False),
            ptask("m2", edge("m1", "x", mapped=True)),
        )
    )
    ledger.finish("xs", Success(result=[1, 2]))
    events = ledger.propose("m1", Mapped(n_map_states=2))
    assert ("work_dispatched", run_id("m2"), None) in summary(events)
    events = ledger.propose("m2", Mapped(n_map_states=2))
    assert [e for e in events if isinstance(e, WorkDispatched)] == []
    events = ledger.finish("m1", map_index=1)
    assert [e.task_run_id for e in events if isinstance(e, WorkDispatched)] == [run_id("m2", 1)]
    (work,) = [e.work for e in events if isinstance(e, WorkDispatched)]
    (upstream,) = work.upstream
    assert upstream.indexed is True


def test_a_failed_child_fails_the_flow_through_its_mapped_reference_parent() -> None:
    """A Mapped reference task is judged by its children."""
    ledger = Ledger(plan(ptask("xs", reference=False), ptask("m", edge("xs", "x", mapped=True))))
    ledger.finish("xs", Success(result=[1, 2]))
    ledger.propose("m", Mapped(n_map_states=2))
    ledger.finish("m", map_index=0)
    events = ledger.finish("m", Failed("boom"), map_index=1)
    (flow_fact,) = [e for e in events if isinstance(e, FlowRunTransitioned)]
    assert flow_fact.state["type"] == "Failed"
    assert flow_fact.state["message"] == "Some reference tasks failed."


# ----- the flow's final state --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([Success(), Skipped()], ("Success", "All reference tasks succeeded.")),
        ([Success(), Failed()], ("Failed", "Some reference tasks failed.")),
        ([Success(), {"type": "Cancelled"}], ("Success", "No reference tasks failed.")),
    ],
    ids=["all-succeeded", "one-failed", "one-cancelled"],
)
def test_the_flow_finishes_from_its_reference_tasks(
    outcomes: list[State | dict[str, Any]], expected: tuple[str, str]
) -> None:
    """Any failed reference -> Failed; all successful -> Success; otherwise 'No reference ...'."""
    ledger = Ledger(plan(ptask("a"), ptask("b"), ptask("n", reference=False)))
    ledger.finish("n", Failed("not a reference"))
    ledger.finish("a", outcomes[0] if isinstance(outcomes[0], State) else None)
    ledger.propose("b", Running(), final=False)
    ledger.propose("b", outcomes[1])
    assert ledger.view.flow_state is not None
    assert (ledger.view.flow_state_type, ledger.view.flow_state["message"]) == expected


# ----- cancel ------------------------------------------------------------------------------------


def test_cancel_stops_idle_runs_and_lets_running_ones_finish_as_cancelled() -> None:
    """Running -> Cancelling, idle -> Cancelled; the flow is Cancelling until the worker answers."""
    ledger = Ledger(plan(ptask("a"), ptask("b", edge("a")), ptask("done")))
    ledger.finish("done")
    ledger.propose("a", Running(), final=False)
    events = ledger.cancel()
    assert summary(events)[0] == ("flow_run_transitioned", None, "Cancelling")
    assert sorted(summary(events)[1:], key=str) == [
        ("task_run_transitioned", run_id("a"), "Cancelling"),
        ("task_run_transitioned", run_id("b"), "Cancelled"),
    ]
    assert ledger.view.flow_state_type == "Cancelling"
    assert ledger.record("done").state_type == "Success"
    events = ledger.propose("a", Success(result=1), expected_seq=0)
    assert summary(events) == [
        ("task_run_transitioned", run_id("a"), "Cancelled"),
        ("flow_run_transitioned", None, "Cancelled"),
    ]
    assert reasons(ledger.propose("a", Running())) == [f"flow run {FR} is already Cancelled"]


def test_cancel_without_running_work_cancels_the_flow_at_once() -> None:
    """With nothing running, cancel ends the flow run Cancelled in the same command."""
    ledger = Ledger(chain())
    events = summary(ledger.cancel())
    assert events[0] == ("flow_run_transitioned", None, "Cancelling")
    assert sorted(events[1:-1], key=str) == [
        ("task_run_transitioned", run_id("a"), "Cancelled"),
        ("task_run_transitioned", run_id("b"), "Cancelled"),
    ]
    assert events[-1] == ("flow_run_transitioned", None, "Cancelled")


def test_cancel_of_a_flow_that_is_not_running_is_rejected() -> None:
    """Only a Running flow run can be cancelled."""
    ledger = Ledger(chain())
    ledger.cancel()
    assert reasons(ledger.cancel()) == [f"flow run {FR} is Cancelled, not Running"]


@pytest.mark.parametrize(
    "passing",
    [
        Failed("boom"),
        Looped(loop_count=1),
        Success(result=1),
        Cached(result=1),
        Skipped(),
        Mapped(n_map_states=0),
    ],
    ids=[
        "Failed-before-Retrying",
        "Looped-before-Pending",
        "Success-before-Cached",
        "Cached-not-final",
        "Skipped-not-final",
        "Mapped-not-final",
    ],
)
def test_cancel_moves_a_run_between_steps_only_along_the_transition_table(passing: State) -> None:
    """A run resting on a non-final step is cancelled by a move the rules allow."""
    ledger = Ledger(plan(ptask("a"), ptask("b")))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", passing, final=False)
    moves = [
        (e.previous, e.state["type"]) for e in ledger.cancel() if isinstance(e, TaskRunTransitioned)
    ]
    assert moves
    assert [m for m in moves if not allowed(*m)] == []


def test_cancel_does_not_move_a_run_that_is_already_cancelling() -> None:
    """A run a worker already put in Cancelling is not moved Cancelling -> Cancelling."""
    ledger = Ledger(plan(ptask("a"), ptask("b")))
    ledger.propose("a", Running(), final=False)
    assert not reasons(ledger.propose("a", {"type": "Cancelling"}, final=False))
    moves = [
        (e.previous, e.state["type"]) for e in ledger.cancel() if isinstance(e, TaskRunTransitioned)
    ]
    assert [m for m in moves if not allowed(*m)] == []


# ----- resume ------------------------------------------------------------------------------------


def test_resume_turns_paused_into_resume_and_dispatches_it() -> None:
    """Paused -> Resume("Approval given to resume.", start now, run count kept) -> Submitted."""
    ledger = Ledger(plan(ptask("a")))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", Paused("wait", context={"task_run_count": 2}))
    events = ledger.resume("a")
    assert summary(events) == [
        ("task_run_transitioned", run_id("a"), "Resume"),
        ("task_run_transitioned", run_id("a"), "Submitted"),
        ("work_dispatched", run_id("a"), None),
    ]
    resume = events[0]
    assert isinstance(resume, TaskRunTransitioned)
    assert resume.state["message"] == "Approval given to resume."
    assert datetime.fromisoformat(resume.state["start_time"]) == NOW
    assert resume.state["context"] == {"task_run_count": 2}
    (work,) = [e for e in events if isinstance(e, WorkDispatched)]
    assert work.work.attempt == 2


@pytest.mark.parametrize("slug", ["a", "nope"])
def test_resume_of_a_run_that_is_not_paused_is_rejected(slug: str) -> None:
    """Only a Paused task run can be resumed."""
    ledger = Ledger(plan(ptask("a")))
    found = "Submitted" if slug == "a" else "unknown"
    assert reasons(ledger.resume(slug)) == [
        f"only a Paused task run can be resumed; {run_id(slug)} is {found}"
    ]


def test_a_finished_flow_run_dispatches_no_more_work() -> None:
    """After the flow run was set Failed, resuming a paused task emits no WorkDispatched."""
    ledger = Ledger(plan(ptask("a")))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", Paused("wait"))
    ledger.set_state(None, Failed("stopped by operator"))
    assert ledger.view.flow_state_type == "Failed"
    events = ledger.resume("a")
    assert [e for e in events if isinstance(e, WorkDispatched)] == []


# ----- set-state ---------------------------------------------------------------------------------


def test_set_state_can_rerun_a_finished_task() -> None:
    """An operator may set a finished run back to Pending; it is dispatched again."""
    ledger = Ledger(plan(ptask("a"), ptask("b")))
    ledger.finish("a")
    events = ledger.set_state("a", Pending("rerun"))
    assert summary(events) == [
        ("task_run_transitioned", run_id("a"), "Pending"),
        ("task_run_transitioned", run_id("a"), "Submitted"),
        ("work_dispatched", run_id("a"), None),
    ]


def test_set_state_to_a_finished_state_unblocks_downstream() -> None:
    """Setting an upstream to Success by hand dispatches its downstream."""
    ledger = Ledger(plan(ptask("a"), ptask("b", edge("a"))))
    events = ledger.set_state("a", Success("by hand"))
    assert ("work_dispatched", run_id("b"), None) in summary(events)


@pytest.mark.parametrize(
    ("prepare", "target", "found"),
    [
        ("running", Success(), "Running"),
        ("submitted", Running(), "Submitted"),
        ("submitted", Mapped(), "Submitted"),
        ("submitted", {"type": "Looped"}, "Submitted"),
        ("unknown", Success(), "unknown"),
    ],
)
def test_set_state_refuses_what_the_manual_rules_forbid(
    prepare: str, target: State | dict[str, Any], found: str
) -> None:
    """No manual change of a Running run, and no manual Running, Mapped or Looped."""
    ledger = Ledger(plan(ptask("a"), ptask("b")))
    if prepare == "running":
        ledger.propose("a", Running(), final=False)
    slug = "nope" if prepare == "unknown" else "a"
    kind = target.serialize()["type"] if isinstance(target, State) else target["type"]
    assert reasons(ledger.set_state(slug, target)) == [
        f"cannot set task run {run_id(slug)} ({found}) to {kind}"
    ]


def test_set_state_rejects_a_malformed_state() -> None:
    """The blob is checked before anything else."""
    ledger = Ledger(chain())
    assert reasons(ledger.set_state("a", {"type": "Nope"})) == ["unknown state type 'Nope'"]


def test_set_state_of_the_flow_run_accepts_finished_states_only() -> None:
    """A flow run can be set to a finished state while unfinished, and not after."""
    ledger = Ledger(chain())
    assert reasons(ledger.set_state(None, Running())) == [
        "a flow run can only be set to a finished state while unfinished; "
        "it is Running, asked for Running"
    ]
    events = ledger.set_state(None, Failed("operator"))
    assert summary(events) == [("flow_run_transitioned", None, "Failed")]
    assert len(reasons(ledger.set_state(None, Success()))) == 1


# ----- scheduler ticks ---------------------------------------------------------------------------


def retrying_ledger(start: datetime) -> Ledger:
    """A run of `a` that failed and is Retrying from `start`."""
    ledger = Ledger(plan(ptask("a", max_retries=1), ptask("b")))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", Failed(), final=False)
    events = ledger.propose("a", Retrying(start_time=start, run_count=1))
    assert [e for e in events if isinstance(e, WorkDispatched)] == []
    return ledger


def test_a_tick_dispatches_a_retry_once_it_is_due() -> None:
    """A future Retrying waits; a tick at or after its start time dispatches attempt 2."""
    start = NOW + timedelta(seconds=30)
    ledger = retrying_ledger(start)
    assert ledger.view.scheduled[run_id("a")] == start.isoformat()
    assert ledger.tick() == []
    ledger.now = start
    events = ledger.tick()
    assert summary(events) == [
        ("task_run_transitioned", run_id("a"), "Submitted"),
        ("work_dispatched", run_id("a"), None),
    ]
    (work,) = [e.work for e in events if isinstance(e, WorkDispatched)]
    assert work.attempt == 2
    assert run_id("a") not in ledger.view.scheduled


def test_a_tick_leaves_an_indefinite_pause_alone() -> None:
    """Paused without a start time is never due."""
    ledger = Ledger(plan(ptask("a")))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", Paused())
    ledger.now = NOW + timedelta(days=365)
    assert ledger.tick() == []


def test_a_tick_dispatches_a_timed_pause_when_it_is_due() -> None:
    """Paused(start_time) is scheduled and dispatched when the time comes."""
    ledger = Ledger(plan(ptask("a")))
    ledger.propose("a", Running(), final=False)
    ledger.propose("a", Paused(start_time=NOW + timedelta(minutes=5)))
    ledger.now = NOW + timedelta(minutes=5)
    assert ("work_dispatched", run_id("a"), None) in summary(ledger.tick())


# ----- heartbeats --------------------------------------------------------------------------------


def test_a_heartbeat_for_the_running_attempt_is_recorded() -> None:
    """HeartbeatSent for the running attempt gives HeartbeatRecorded and sets last_heartbeat."""
    ledger = Ledger(chain())
    ledger.propose("a", Running(), final=False)
    ledger.now = NOW + timedelta(seconds=5)
    (fact,) = ledger.heartbeat("a", 1)
    assert isinstance(fact, HeartbeatRecorded)
    assert (fact.task_run_id, fact.attempt) == (run_id("a"), 1)
    assert ledger.record("a").last_heartbeat == NOW + timedelta(seconds=5)


@pytest.mark.parametrize(("claim", "attempt"), [(True, 2), (False, 1)], ids=["wrong", "idle"])
def test_a_heartbeat_for_an_attempt_that_is_not_running_is_rejected(
    claim: bool, attempt: int
) -> None:
    """A heartbeat for another attempt, or for a run that is not Running, is rejected."""
    ledger = Ledger(chain())
    if claim:
        ledger.propose("a", Running(), final=False)
    before = ledger.record("a")
    ledger.now = NOW + timedelta(seconds=5)
    assert reasons(ledger.heartbeat("a", attempt)) == [
        f"heartbeat for attempt {attempt} of {run_id('a')}, which is not running that attempt"
    ]
    assert ledger.record("a") == before


def test_every_fact_decide_emits_is_of_a_documented_kind() -> None:
    """decide only ever returns the six fact types of the contract."""
    ledger = Ledger(mapped_plan())
    ledger.finish("xs", Success(result=[1]))
    ledger.propose("m", Mapped(n_map_states=1))
    ledger.propose("m", Running(), 0, final=False)
    ledger.heartbeat("r", 1)
    ledger.cancel()
    kinds = {type(e) for e in ledger.events}
    assert kinds <= {
        FlowRunCreated,
        FlowRunTransitioned,
        TaskRunTransitioned,
        TransitionRejected,
        WorkDispatched,
        HeartbeatRecorded,
    }
    assert TransitionRejected in kinds


# ----- finished flow runs are closed -------------------------------------------------------------


def test_a_proposal_for_any_task_run_of_a_finished_flow_run_is_refused_for_that_reason() -> None:
    """Known or not, the task run gets "already finished": a retired run knows none of them."""
    ledger = Ledger(plan(ptask("a")))
    ledger.finish("a")
    assert ledger.view.flow_state_type == "Success"
    assert reasons(ledger.propose("a", Running())) == [f"flow run {FR} is already Success"]
    assert reasons(ledger.propose("nope", Running())) == [f"flow run {FR} is already Success"]


def test_set_state_of_a_task_run_of_a_finished_flow_run_is_refused() -> None:
    """A finished flow run is closed: its task runs cannot be set by hand any more."""
    ledger = Ledger(plan(ptask("a")))
    ledger.finish("a")
    assert reasons(ledger.set_state("a", Pending("again"))) == [
        f"flow run {FR} is already Success; its task runs can no longer be set (re-run it instead)"
    ]
    assert ledger.record("a").state_type == "Success"
