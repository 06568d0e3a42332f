"""A deterministic, in-process model of the ledger protocol, driven by one seed.

The world has a `commands` topic, the `ledger` topic (facts), a `work` topic of two
partitions with a consumer group, one ledger process and two worker processes.
The ledger and the scheduler are the real pure core (`decide_and_evolve`, `fold`,
`services.roles.scheduler.tick`/`lost_attempts`); the processes around it do what
the Kafka shells do, step by step:

* the ledger consumes commands at least once, appends each command's facts (and
  its work items) in order, commits its command offset in a later step, and after
  a crash folds the ledger topic again and re-reads from the committed offset;
* every heartbeat interval its scheduler ticks the runs with a silent attempt;
  start times that have come are ticked at once;
* a worker fetches work from the partitions the group gives it; what it fetches
  first after an assignment may have been started before, so it awaits that claim's
  answer on the ledger; fresh work runs at once. It heartbeats each claimed attempt
  (keyed by task run and attempt), produces its outcome, produces again what the
  broker did not acknowledge, and commits a work offset only once every record of
  the item was acknowledged. A crash loses its jobs; the group re-delivers them.

A seeded `random.Random` picks every step: which process acts, which in-flight
record is delivered, duplicated (an ack lost, then a retry) or refused (the
producer is told), when a process is killed or restarted, when a worker or the
clock stalls. `check()` runs after every step (see `Invariants`). The same seed
always gives the same run.
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.orchestration import FlowRunView, allowed, decide_and_evolve, evolve
from engine.orchestration import states as blobs
from engine.orchestration.rules import FINISHED
from engine.state import Running, Success
from events import (
    CancelRequested,
    Cause,
    Command,
    Event,
    FlowPlan,
    FlowRef,
    HeartbeatSent,
    PlanEdge,
    PlanTask,
    RunRequested,
    SchedulerTicked,
    TaskRunTransitioned,
    TransitionProposed,
    TransitionRejected,
    WorkDispatched,
    WorkerIdentity,
    WorkItem,
)
from services.roles.scheduler import lost_attempts, tick

FLOW_RUN = "sim"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 3.0
WORK_PARTITIONS = 2
WORKERS = ("w0", "w1")
LEDGER = WorkerIdentity(id="ledger", host="sim", pid=0)
CLIENT = WorkerIdentity(id="client", host="sim", pid=0)
RUNNING_BLOB = Running("Starting task run.").serialize()
SUCCESS_BLOB = Success("Task run succeeded.").serialize()
CHAOS_STEPS = 120
SETTLE_STEPS = 1_500


class InvariantBroken(AssertionError):
    """The protocol did something it must never do (the message says what)."""


@dataclass
class Scenario:
    """The flow of one seed, and which attempts of which task fail."""

    plan: FlowPlan
    fails_on: dict[str, frozenset[int]]
    cancel_at: int | None
    """Chaos step at which a client asks to cancel the run, if it does."""


def scenario_of(rng: random.Random) -> Scenario:
    n = rng.randint(1, 3)
    tasks = []
    fails_on: dict[str, frozenset[int]] = {}
    for i in range(n):
        slug = f"t{i}"
        edges = tuple(
            PlanEdge(upstream=f"t{j}", key=f"x{j}") for j in range(i) if rng.random() < 0.6
        )
        retries = rng.choice((0, 0, 1, 2))
        delay = rng.choice((0.0, 0.0, 2.0))
        tasks.append(
            PlanTask(slug=slug, name=slug, edges=edges, max_retries=retries, retry_delay_s=delay)
        )
        fails_on[slug] = frozenset(a for a in (1, 2, 3) if rng.random() < 0.3)
    plan = FlowPlan(name="sim", version="1", tasks=tuple(tasks))
    cancel_at = rng.randrange(CHAOS_STEPS) if rng.random() < 0.1 else None
    return Scenario(plan, fails_on, cancel_at)


# ----- the broker ------------------------------------------------------------------


@dataclass
class Send:
    """A record on its way to the commands topic, and who waits for its ack."""

    command: Command
    sender: Sender
    on_ack: Any = None
    """Called with True (acknowledged) or False (the producer was told it failed)."""


@dataclass
class Sender:
    """One producer: its records reach the broker in the order it sent them."""

    name: str
    queue: deque[Send] = field(default_factory=deque)


# ----- the ledger process ------------------------------------------------------------


@dataclass
class LedgerProcess:
    alive: bool = True
    view: FlowRunView | None = None
    position: int = 0
    last_lost_check: datetime = T0


# ----- worker processes --------------------------------------------------------------


@dataclass(eq=False)
class Job:
    work: WorkItem
    partition: int
    offset: int
    fresh: bool
    phase: str = "new"
    """new -> awaiting (claim sent, answer awaited) | body -> outcome -> done."""
    claim_id: str = ""
    body_left: int = 0
    unacked: int = 0
    offset_tracked: bool = True
    """False once the partition was revoked: its next owner commits this offset."""


@dataclass
class WorkerProcess:
    name: str
    incarnation: int = 0
    alive: bool = True
    frozen_until: int = -1
    jobs: list[Job] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    floors: dict[int, int] = field(default_factory=dict)
    done: dict[int, dict[int, bool]] = field(default_factory=dict)
    """Per owned partition: offset -> finished and acknowledged."""
    last_beat: datetime = T0
    ids: int = 0

    @property
    def identity(self) -> WorkerIdentity:
        return WorkerIdentity(
            id=f"{self.name}.{self.incarnation}", host="sim", pid=self.incarnation
        )

    def running(self) -> set[tuple[str, int]]:
        return {(j.work.task_run_id, j.work.attempt) for j in self.jobs if j.phase != "new"}


# ----- the world ---------------------------------------------------------------------


class World:
    """Everything of one seed; `run()` plays it and raises `InvariantBroken` on a breach."""

    def __init__(self, seed: int, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.trace = trace
        self.step_no = 0
        self.now = T0
        self.scenario = scenario_of(self.rng)
        self.commands: list[Command] = []
        self.committed = 0
        self.ledger_log: list[Event] = []
        self.dead_letters: list[Command] = []
        self.work: list[list[WorkItem]] = [[] for _ in range(WORK_PARTITIONS)]
        self.work_committed = [0] * WORK_PARTITIONS
        self.owner: dict[int, str] = {}
        self.ledger = LedgerProcess()
        self.workers = {name: WorkerProcess(name) for name in WORKERS}
        self.senders: dict[str, Sender] = {}
        self.client = self._sender("client")
        self.check = Invariants(self)
        self._rebalance()
        self.ledger.view = FlowRunView(flow_run_id=FLOW_RUN)
        self._client_send(
            RunRequested(
                event_id="run",
                flow_run_id=FLOW_RUN,
                occurred_at=self.now,
                cause=Cause(worker=CLIENT),
                flow_ref=FlowRef(kind="import", path="sim:flow"),
                plan=self.scenario.plan,
            )
        )

    # ----- playing ------------------------------------------------------------------

    def run(self) -> FlowRunView:
        for _ in range(CHAOS_STEPS):
            if self.step_no == self.scenario.cancel_at:
                self._client_send(
                    CancelRequested(
                        event_id="cancel",
                        flow_run_id=FLOW_RUN,
                        occurred_at=self.now,
                        cause=Cause(worker=CLIENT),
                    )
                )
            self.step(chaos=True)
        for _ in range(SETTLE_STEPS):
            if self.check.finished():
                break
            self.step(chaos=False)
        self.check.at_end()
        return self.check.reference

    def step(self, *, chaos: bool) -> None:
        self.step_no += 1
        rng = self.rng
        self.now += timedelta(milliseconds=rng.choice((0, 10, 50, 100, 200)))
        if chaos:
            self._maybe_fault()
        else:
            self._heal()
        actions = [self._ledger_step, self._deliver, self._deliver, self._worker_step]
        rng.choice(actions)()
        self.check.after_step()

    def log(self, message: str) -> None:
        if self.trace:
            print(f"[{self.step_no:4d} +{(self.now - T0).total_seconds():7.2f}s] {message}")

    def _maybe_fault(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.015:
            self._kill_ledger()
        elif roll < 0.03:
            self._kill_worker(rng.choice(WORKERS))
        elif roll < 0.05:
            self._restart_dead()
        elif roll < 0.06:
            stall = rng.choice((2.0, 4.0, 8.0))
            self.log(f"the clock stalls: +{stall} s")
            self.now += timedelta(seconds=stall)
        elif roll < 0.07:
            w = self.workers[rng.choice(WORKERS)]
            w.frozen_until = self.step_no + rng.randint(5, 40)
            self.log(f"{w.name} freezes until step {w.frozen_until}")

    def _heal(self) -> None:
        self._restart_dead()
        for w in self.workers.values():
            w.frozen_until = -1

    def _restart_dead(self) -> None:
        if not self.ledger.alive:
            self._start_ledger()
        for w in self.workers.values():
            if not w.alive:
                w.alive, w.incarnation = True, w.incarnation + 1
                self.log(f"{w.name} restarts as {w.identity.id}")
                self._rebalance()

    # ----- the network ---------------------------------------------------------------

    def _sender(self, name: str) -> Sender:
        sender = self.senders.get(name)
        if sender is None:
            sender = self.senders[name] = Sender(name)
        return sender

    def _client_send(self, command: Command) -> None:
        self.client.queue.append(Send(command, self.client))

    def _deliver(self) -> None:
        """The head record of one producer reaches the broker, twice, or fails."""
        busy = [s for s in self.senders.values() if s.queue]
        if not busy:
            return
        sender = self.rng.choice(busy)
        send = sender.queue[0]
        roll = self.rng.random()
        if roll < 0.08:
            sender.queue.popleft()
            self.log(f"produce of {send.command.event_id} fails; the producer is told")
            if send.on_ack is not None:
                send.on_ack(False)
            elif sender is self.client:
                sender.queue.append(send)  # the client retries its request
            return
        sender.queue.popleft()
        self.commands.append(send.command)
        if roll < 0.16:  # appended, but its ack was lost: the producer's retry appends again
            self.log(f"{send.command.event_id} appended twice")
            self.commands.append(send.command)
        if send.on_ack is not None:
            send.on_ack(True)

    # ----- the ledger ----------------------------------------------------------------

    def _kill_ledger(self) -> None:
        if self.ledger.alive:
            self.log("the ledger is killed")
            self.ledger.alive, self.ledger.view = False, None

    def _start_ledger(self) -> None:
        self.log(f"the ledger restarts at command offset {self.committed}")
        view = FlowRunView(flow_run_id=FLOW_RUN)
        for fact in self.ledger_log:
            view = evolve(view, fact)
        self.ledger = LedgerProcess(True, view, self.committed, self.now)

    def _ledger_step(self) -> None:
        ledger = self.ledger
        if not ledger.alive:
            return
        roll = self.rng.random()
        if roll < 0.25:
            if self.committed != ledger.position:
                self.log(f"the ledger commits command offset {ledger.position}")
            self.committed = ledger.position
        elif roll < 0.45:
            self._scheduler_tick()
        elif ledger.position < len(self.commands):
            command = self.commands[ledger.position]
            ledger.position += 1
            self._decide(command)

    def _decide(self, command: Command) -> None:
        assert self.ledger.view is not None
        view, facts = decide_and_evolve(self.ledger.view, command, self.now)
        if not view.created and not isinstance(command, RunRequested):
            self.dead_letters.append(command)  # what the ledger role does: never appended
            return
        self.ledger.view = view
        self.log(f"decide {command.type} {command.event_id}: {_facts_summary(facts)}")
        for fact in facts:  # one command's facts and work items appear together
            self.ledger_log.append(fact)
            if isinstance(fact, WorkDispatched):
                item = fact.work
                self.work[_partition_of(item.task_run_id)].append(item)
            self.check.appended(fact)

    def _scheduler_tick(self) -> None:
        ledger = self.ledger
        view = ledger.view
        assert view is not None
        timeout = None
        if (self.now - ledger.last_lost_check).total_seconds() >= HEARTBEAT_INTERVAL_S:
            ledger.last_lost_check = self.now
            timeout = HEARTBEAT_TIMEOUT_S
        due = view.flow_state_type == "Running" and any(
            datetime.fromisoformat(s) <= self.now for s in view.scheduled.values()
        )
        lost = (
            timeout is not None
            and bool(view.running)
            and bool(lost_attempts(view, self.now, timeout))
        )
        if due or lost:
            self._decide(tick(view, self.now, LEDGER, timeout))

    # ----- the workers ---------------------------------------------------------------

    def _kill_worker(self, name: str) -> None:
        w = self.workers[name]
        if not w.alive:
            return
        self.log(f"{w.identity.id} is killed with {len(w.jobs)} jobs")
        self.check.crashed.add(w.identity.id)
        w.alive, w.jobs, w.positions, w.floors, w.done = False, [], {}, {}, {}
        sender = self._sender(w.identity.id)
        for send in sender.queue:
            send.on_ack = None  # nobody hears these acks any more; they may still land
        self._rebalance()

    def _rebalance(self) -> None:
        alive = sorted(n for n, w in self.workers.items() if w.alive)
        for p in range(WORK_PARTITIONS):
            new = alive[p % len(alive)] if alive else None
            old = self.owner.get(p)
            if new == old and new is not None and p in self.workers[new].positions:
                continue
            if old is not None and self.workers[old].alive and p in self.workers[old].positions:
                self._settle_claims(self.workers[old], p)
                self._commit_work(self.workers[old])
                self._revoke(self.workers[old], p)
            if new is None:
                self.owner.pop(p, None)
                continue
            self.owner[p] = new
            w = self.workers[new]
            w.positions[p] = self.work_committed[p]
            w.floors[p] = len(self.work[p])  # what an earlier owner may have fetched
            w.done[p] = {}
            self.log(f"{w.identity.id} is assigned work partition {p} from {w.positions[p]}")

    def _settle_claims(self, w: WorkerProcess, p: int) -> None:
        """The worker's revocation: unclaimed jobs of `p` will await their claims, and
        the claims it sent unawaited reach the broker before the group moves on
        (`Worker._settle_claims`): here, its queued records are all delivered."""
        for job in w.jobs:
            if job.partition == p:
                job.fresh = False
        sender = self._sender(w.identity.id)
        while sender.queue:
            send = sender.queue.popleft()
            self.commands.append(send.command)
            if send.on_ack is not None:
                send.on_ack(True)

    @staticmethod
    def _revoke(w: WorkerProcess, p: int) -> None:
        w.positions.pop(p, None)
        w.floors.pop(p, None)
        w.done.pop(p, None)
        for job in w.jobs:
            if job.partition == p:
                job.offset_tracked = False

    def _worker_step(self) -> None:
        awake = [w for w in self.workers.values() if w.alive and w.frozen_until < self.step_no]
        if not awake:
            return
        w = self.rng.choice(awake)
        if (self.now - w.last_beat).total_seconds() >= HEARTBEAT_INTERVAL_S:
            self._heartbeat(w)
        roll = self.rng.random()
        if roll < 0.3:
            self._fetch(w)
        elif roll < 0.4:
            self._commit_work(w)
        elif w.jobs:
            self._advance(w, self.rng.choice(w.jobs))

    def _fetch(self, w: WorkerProcess) -> None:
        for p in sorted(w.positions):
            position = w.positions[p]
            if position < len(self.work[p]) and len(w.jobs) < 4:
                item = self.work[p][position]
                w.positions[p] = position + 1
                fresh = position >= w.floors[p]
                w.jobs.append(Job(item, p, position, fresh))
                w.done[p][position] = False
                self.log(
                    f"{w.identity.id} fetches {item.task_run_id} attempt {item.attempt} "
                    f"({'fresh' if fresh else 'possibly seen'})"
                )

    def _commit_work(self, w: WorkerProcess) -> None:
        for p, done in w.done.items():
            offset = self.work_committed[p]
            while done.get(offset):
                offset += 1
            self.work_committed[p] = max(self.work_committed[p], offset)

    def _advance(self, w: WorkerProcess, job: Job) -> None:
        if job.phase == "new":
            self._claim(w, job)
        elif job.phase == "awaiting":
            self._await_claim(w, job)
        elif job.phase == "body":
            job.body_left -= 1
            if job.body_left <= 0:
                self._outcome(w, job)

    def _claim(self, w: WorkerProcess, job: Job) -> None:
        key = (job.work.task_run_id, job.work.attempt)
        duplicate = key in w.running()
        claim = self._proposal(w, job, RUNNING_BLOB, job.work.expected_seq, final=False)
        job.claim_id = claim.event_id
        self._produce(w, job, claim)
        if job.fresh and not duplicate:
            self._start_body(w, job)
        else:
            job.phase = "awaiting"

    def _await_claim(self, w: WorkerProcess, job: Job) -> None:
        for fact in self.ledger_log:  # the worker's ledger tail: the facts answering it
            if fact.cause.command_id != job.claim_id:
                continue
            if isinstance(fact, TaskRunTransitioned) and fact.state["type"] == "Running":
                self._start_body(w, job)
            else:
                self.log(f"{w.identity.id}: claim {job.claim_id} refused, the body does not run")
                job.phase = "done"
                self._maybe_settle(w, job)
            return
        if any(d.event_id == job.claim_id for d in self.dead_letters):
            job.phase = "done"
            self._maybe_settle(w, job)

    def _start_body(self, w: WorkerProcess, job: Job) -> None:
        job.phase = "body"
        job.body_left = self.rng.randint(1, 4)
        self.check.body_started(job.work, w.identity.id)
        self.log(f"{w.identity.id} runs the body of {job.work.task_run_id} #{job.work.attempt}")

    def _outcome(self, w: WorkerProcess, job: Job) -> None:
        work = job.work
        seq = work.expected_seq + 1
        task = next(t for t in self.scenario.plan.tasks if t.slug == work.slug)
        if work.attempt in self.scenario.fails_on[work.slug]:
            failed = blobs.failed("boom")
            if work.attempt <= task.max_retries:
                start = self.now + timedelta(seconds=task.retry_delay_s or 0)
                retrying = blobs.retrying(work.attempt, task.max_retries, start)
                self._produce(w, job, self._proposal(w, job, failed, seq, final=False))
                self._produce(w, job, self._proposal(w, job, retrying, seq + 1, final=True))
            else:
                self._produce(w, job, self._proposal(w, job, failed, seq, final=True))
        else:
            self._produce(w, job, self._proposal(w, job, SUCCESS_BLOB, seq, final=True))
        job.phase = "done"
        self._maybe_settle(w, job)

    def _heartbeat(self, w: WorkerProcess) -> None:
        w.last_beat = self.now
        for job in w.jobs:
            if job.phase in ("body", "awaiting"):
                w.ids += 1
                beat = HeartbeatSent(
                    event_id=f"{w.identity.id}:{w.ids}",
                    flow_run_id=FLOW_RUN,
                    occurred_at=self.now,
                    cause=Cause(worker=w.identity),
                    task_run_id=job.work.task_run_id,
                    attempt=job.work.attempt,
                )
                self._sender(w.identity.id).queue.append(Send(beat, self._sender(w.identity.id)))

    def _proposal(
        self, w: WorkerProcess, job: Job, state: dict[str, Any], expected_seq: int, final: bool
    ) -> TransitionProposed:
        w.ids += 1
        return TransitionProposed(
            event_id=f"{w.identity.id}:{w.ids}",
            flow_run_id=FLOW_RUN,
            occurred_at=self.now,
            cause=Cause(worker=w.identity),
            task_run_id=job.work.task_run_id,
            task_slug=job.work.slug,
            expected_seq=expected_seq,
            attempt=job.work.attempt,
            state=state,
            final=final,
        )

    def _produce(self, w: WorkerProcess, job: Job, command: Command) -> None:
        """Queue a record of `job`; one the broker refused is produced again, in order."""
        sender = self._sender(w.identity.id)
        job.unacked += 1
        incarnation = w.identity.id

        def on_ack(ok: bool, send: Send | None = None) -> None:
            if w.identity.id != incarnation:
                return
            if ok:
                job.unacked -= 1
                self._maybe_settle(w, job)
            else:  # the worker's resend: ahead of the job's later records
                assert send is not None
                sender.queue.appendleft(send)

        send = Send(command, sender)
        send.on_ack = lambda ok: on_ack(ok, send)
        sender.queue.append(send)

    def _maybe_settle(self, w: WorkerProcess, job: Job) -> None:
        if job.phase != "done" or job.unacked or job not in w.jobs:
            return
        w.jobs.remove(job)
        if job.offset_tracked and job.partition in w.done:
            w.done[job.partition][job.offset] = True


def _is_outcome_of(command: TransitionProposed, fact: TaskRunTransitioned) -> bool:
    """True for the fact that is a proposal's own state (not a reaction to it)."""
    return command.task_run_id == fact.task_run_id and command.state == fact.state


def _partition_of(task_run_id: str) -> int:
    return zlib.crc32(task_run_id.encode()) % WORK_PARTITIONS


def _facts_summary(facts: list[Event]) -> str:
    parts = []
    for f in facts:
        if isinstance(f, TaskRunTransitioned):
            parts.append(f"{f.task_slug}:{f.state['type']}#{f.attempt}@{f.seq}")
        elif isinstance(f, TransitionRejected):
            parts.append(f"rejected({f.reason})")
        else:
            parts.append(f.type)
    return ", ".join(parts) or "nothing"


# ----- invariants ---------------------------------------------------------------------


class Invariants:
    """What must hold after every step, and at the end of a seed.

    * the fold of the ledger topic equals the ledger's live view (and so every
      reader's view: they all fold the same facts);
    * every appended task-run transition is the next seq of its run, from the
      state the run was in, along an allowed edge; every accepted worker outcome
      is for the attempt the run is at, from the worker whose claim was accepted;
    * no body runs twice for one attempt unless a worker that ran it was killed
      or the attempt was declared lost;
    * at the end, once faults stop, the flow run is finished.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.reference = FlowRunView(flow_run_id=FLOW_RUN)
        self.bodies: dict[tuple[str, int], list[str]] = {}
        self.lost: set[tuple[str, int]] = set()
        self.crashed: set[str] = set()

    def fail(self, message: str) -> None:
        world = self.world
        raise InvariantBroken(
            f"seed {world.seed}, step {world.step_no}: {message}\n"
            f"replay: python -m tests.simulation.run --seed {world.seed} --trace"
        )

    def appended(self, fact: Event) -> None:
        before = self.reference
        if isinstance(fact, TaskRunTransitioned):
            self._check_transition(before, fact)
        self.reference = evolve(before, fact)

    def _check_transition(self, view: FlowRunView, fact: TaskRunTransitioned) -> None:
        run = fact.task_run_id or ""
        old = view.task_runs.get(run)
        previous = old.state_type if old else None
        new = fact.state["type"]
        if fact.seq != (old.seq if old else 0) + 1:
            self.fail(f"{run} got seq {fact.seq} after {old.seq if old else 0}")
        if fact.previous != previous or not allowed(previous, new):
            self.fail(f"{run} moved {previous} -> {new} (fact says from {fact.previous})")
        command = self._command(fact.cause.command_id)
        if (
            isinstance(command, TransitionProposed)
            and _is_outcome_of(command, fact)
            and old is not None
            and old.state_type != "Cancelling"
        ):
            if command.attempt != old.attempt:
                self.fail(f"{run}: outcome of attempt {command.attempt} accepted at {old.attempt}")
            worker = command.cause.worker
            if old.state_type == "Running" and (worker is None or worker.id != old.claimed_by):
                self.fail(f"{run}: outcome from {worker} accepted, claimed by {old.claimed_by}")
        if isinstance(command, SchedulerTicked) and new == "Failed" and old is not None:
            self.lost.add((run, old.attempt))

    def _command(self, command_id: str | None) -> Command | None:
        for command in self.world.commands:
            if command.event_id == command_id:
                return command
        return None

    def body_started(self, work: WorkItem, worker: str) -> None:
        key = (work.task_run_id, work.attempt)
        runs = self.bodies.setdefault(key, [])
        runs.append(worker)
        if len(runs) > 1 and key not in self.lost and not (set(runs) & self.crashed):
            self.fail(f"the body of {key[0]} attempt {key[1]} ran twice: {runs}")

    def after_step(self) -> None:
        ledger = self.world.ledger
        if ledger.alive and ledger.view != self.reference:
            self.fail("the ledger's live view differs from the fold of the ledger topic")

    def finished(self) -> bool:
        return self.reference.flow_state_type in FINISHED

    def at_end(self) -> None:
        world = self.world
        if not self.finished():
            states = {r.slug: r.state_type for r in self.reference.task_runs.values()}
            self.fail(
                f"the flow run is stuck after {world.step_no} steps: flow "
                f"{self.reference.flow_state_type}, tasks {states}"
            )
        for (run, attempt), runs in self.bodies.items():
            if len(runs) > 1 and (run, attempt) not in self.lost and not set(runs) & self.crashed:
                self.fail(f"the body of {run} attempt {attempt} ran {len(runs)} times")


def play(seed: int, trace: bool = False) -> FlowRunView:
    """Play one seed; raises `InvariantBroken` naming the seed and how to replay it."""
    return World(seed, trace).run()
