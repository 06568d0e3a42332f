"""The Python client: submit flow runs, follow their changes, wait, cancel, resume, read results.

    from services.client.client import Client

    async with Client() as client:                  # settings from RUNLEDGER_* variables
        run_id = await client.submit("examples.demo:flow", {"n": 4})
        async for change in client.subscribe(run_id, from_beginning=True):
            print(change.task_slug, change.state_type)
            if change.ends_flow_run:
                break
        view = await client.wait(run_id, timeout=60)

Commands go to the `commands` topic keyed by flow run id; state is read back
from the `ledger` topic and folded with the engine's own `fold`/`evolve`. Reading
one run never scans its partition: a run this client submitted is followed from
the partition's end as it was just before the request, any other run starts from
the facts the api's read model holds and the position they cover up to
(`services/client/locate.py`), and only without an api is the partition read
from offset 0. The client decides nothing: the ledger may refuse what it sends,
and says so on the ledger (`TransitionRejected`). Non-Python producers write the
same commands as plain JSON (docs/events.md); nothing here is needed to do so.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from engine.orchestration import FlowRunView, evolve
from engine.orchestration.history import check_as_of, fold_as_of
from engine.orchestration.reuse import reusable_states
from engine.orchestration.rules import FINISHED, SUCCESSFUL
from engine.result_store import FSResultStore
from events import (
    CancelRequested,
    Cause,
    Command,
    Event,
    EventDecodeError,
    Fact,
    FlowRef,
    FlowRunTransitioned,
    ResumeRequested,
    RunRequested,
    TaskRunTransitioned,
    TransitionRejected,
    WorkerIdentity,
    check_flow_run_id,
    decode,
    encode,
)
from services.client.inspection import TaskRunView
from services.client.locate import ApiReader, RunStart, local_start
from services.kafka.clients import (
    make_consumer,
    make_producer,
    partition_for,
    read_to_end,
    visible_end,
)
from services.kafka.topics import ensure_topics
from services.settings import Settings

if TYPE_CHECKING:
    from engine.flow import Flow

__all__ = [
    "IDEMPOTENCY_NAMESPACE",
    "Change",
    "Client",
    "RunRejected",
    "Subscription",
    "change_of",
    "flow_run_id_for",
    "flow_run_id_of_task_run",
    "parse_flow_ref",
    "partition_for",
    "reusable_states",
]

log = logging.getLogger(__name__)

IDEMPOTENCY_NAMESPACE = uuid.UUID("899bf199-0f8b-4b8e-bbcf-a4e70a5b1db4")
"""uuid5 namespace of flow run ids derived from idempotency keys. Never change it:
the same key must give the same flow run id in every client, in every version."""

_POLL_MS = 100  # getmany timeout; the fetch itself returns after settings.fetch_max_wait_ms
_SUBMITTED_KEPT = 10_000  # start offsets of runs this client submitted, newest kept


# ----- identities ------------------------------------------------------------------------


def flow_run_id_for(idempotency_key: str | None = None) -> str:
    """The flow run id of a request: uuid5 of the key when given (same key, same run), else uuid4.

    A second request with the same key names the same flow run, which the ledger
    already knows, so it changes nothing: submitting is at-most-once per key.
    """
    if idempotency_key is None:
        return str(uuid.uuid4())
    if not idempotency_key:
        raise ValueError("an idempotency key must not be empty")
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key))


def _command_id_for(
    flow_run_id: str,
    idempotency_key: str | None,
    flow_ref: FlowRef | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> str:
    # With a key, the RunRequested id is derived too: a retried submit is then also
    # recognised as the same command, not only as a request for an existing run. The
    # flow and parameters are part of it, so a request that reuses the key for another
    # run is a new command, which the ledger rejects with the reason (not a redelivery
    # it would drop).
    if idempotency_key is None:
        return str(uuid.uuid4())
    what = json.dumps(
        [flow_ref.model_dump(mode="json") if flow_ref else None, parameters or {}],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(what.encode()).hexdigest()[:16]
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"run_requested:{flow_run_id}:{digest}"))


def flow_run_id_of_task_run(task_run_id: str) -> str:
    """The flow run a task run id belongs to (ids are ``<flow_run_id>/<slug>[/<index>]``)."""
    flow_run_id, sep, rest = task_run_id.partition("/")
    if not sep or not flow_run_id or not rest:
        raise ValueError(
            f"{task_run_id!r} is not a task run id (expected FLOW_RUN_ID/TASK_SLUG[/MAP_INDEX])"
        )
    return flow_run_id


def parse_flow_ref(text: str) -> FlowRef:
    """A FlowRef for ``package.module:attr``; `ValueError` with the expected shape otherwise."""
    try:
        return FlowRef(kind="import", path=text)
    except ValidationError:
        raise ValueError(
            f"{text!r} is not a flow reference: expected 'package.module:attribute', "
            "e.g. 'examples.demo:flow'"
        ) from None


# ----- changes ---------------------------------------------------------------------------

ChangeKind = Literal["task_run", "flow_run", "rejected"]


@dataclass(frozen=True, slots=True)
class Change:
    """One state change on the ledger, as a subscriber sees it.

    `kind` is "task_run" (TaskRunTransitioned), "flow_run" (FlowRunTransitioned)
    or "rejected" (TransitionRejected: `state_type` is None and `message` holds
    the reason). `fact` is the event itself, for anything not copied here.
    """

    kind: ChangeKind
    flow_run_id: str
    task_run_id: str | None
    task_slug: str | None
    map_index: int | None
    seq: int | None
    state_type: str | None
    message: str | None
    occurred_at: datetime
    fact: Fact
    attempt: int | None = None
    final: bool = True
    """False for a state a task run only passes through (a Failed before its Retrying)."""

    @property
    def is_finished(self) -> bool:
        """The run (task or flow) rests in a finished state."""
        return self.final and self.state_type in FINISHED

    @property
    def is_successful(self) -> bool:
        """The run rests in a successful state (Success, Cached, Mapped, Skipped)."""
        return self.final and self.state_type in SUCCESSFUL

    @property
    def ends_flow_run(self) -> bool:
        """This change finishes its flow run, or refuses to start it."""
        if self.kind == "flow_run":
            return self.is_finished
        return (
            self.kind == "rejected"
            and isinstance(self.fact, TransitionRejected)
            and self.fact.command_type == "run_requested"
        )


def change_of(event: Event) -> Change | None:
    """The `Change` a ledger fact represents; None for facts that change no state."""
    if isinstance(event, TaskRunTransitioned):
        return Change(
            kind="task_run",
            flow_run_id=event.flow_run_id,
            task_run_id=event.task_run_id,
            task_slug=event.task_slug,
            map_index=event.map_index,
            seq=event.seq,
            state_type=event.state.get("type"),
            message=event.state.get("message"),
            occurred_at=event.occurred_at,
            fact=event,
            attempt=event.attempt,
            final=event.final,
        )
    if isinstance(event, FlowRunTransitioned):
        return Change(
            kind="flow_run",
            flow_run_id=event.flow_run_id,
            task_run_id=None,
            task_slug=None,
            map_index=None,
            seq=event.seq,
            state_type=event.state.get("type"),
            message=event.state.get("message"),
            occurred_at=event.occurred_at,
            fact=event,
        )
    if isinstance(event, TransitionRejected):
        return Change(
            kind="rejected",
            flow_run_id=event.flow_run_id,
            task_run_id=event.task_run_id,
            task_slug=event.task_slug,
            map_index=event.map_index,
            seq=event.seq,
            state_type=None,
            message=event.reason,
            occurred_at=event.occurred_at,
            fact=event,
        )
    return None


class IdempotencyConflict(ValueError):
    """An idempotency key already names a flow run of another flow or other parameters."""

    def __init__(self, key: str, flow_run_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} already names flow run {flow_run_id}, of another flow "
            "or with other parameters; use a new key to start a different run"
        )
        self.key = key
        self.flow_run_id = flow_run_id


class RunRejected(Exception):
    """The ledger refused to start the flow run (e.g. its flow could not be loaded)."""

    def __init__(self, flow_run_id: str, reason: str) -> None:
        super().__init__(f"flow run {flow_run_id} was rejected: {reason}")
        self.flow_run_id = flow_run_id
        self.reason = reason


def _run_rejection(event: Event, view: FlowRunView) -> RunRejected | None:
    if (
        isinstance(event, TransitionRejected)
        and event.command_type == "run_requested"
        and not view.created
    ):
        return RunRejected(event.flow_run_id, event.reason)
    return None


# ----- reading the ledger ----------------------------------------------------------------

Start = Literal["beginning", "end"]


async def _drain_to_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    """Skip what the partitions hold now: read each to the end a first fetch reports.

    `seek_to_end` alone is not enough on Tansu: ListOffsets(latest) can be a whole
    batch early there (BROKER_NOTES.md); a fetch's end is exact on every broker.
    """
    await read_to_end(consumer, tps, batch_ms=_POLL_MS)


async def _listed_at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    """True when ListOffsets (the last stable offset under read_committed) says every
    position is at its partition's end already (see `read_to_end` on Tansu)."""
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


async def _caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        end = visible_end(consumer, tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return True


def _decode_record(value: bytes | None, where: str) -> Event | None:
    try:
        return decode(value or b"")
    except EventDecodeError as exc:
        # Only the ledger writes this topic; a bad record there is its bug, not ours to stop on.
        log.warning("skipping undecodable ledger record %s: %s", where, exc)
        return None


class Subscription:
    """Live changes from the ledger; `async for` it, optionally inside `async with`.

    ``async with client.subscribe(...) as changes:`` positions the reader before the
    block starts, so every change recorded after that point is seen (use it when
    the block itself causes the changes). Plain ``async for`` positions lazily, at
    the first iteration.
    """

    def __init__(self, client: Client, flow_run_id: str | None, from_beginning: bool) -> None:
        self._gen = client._events(flow_run_id, "beginning" if from_beginning else "end")
        self._started = False

    async def start(self) -> None:
        """Connect and position the reader (idempotent)."""
        if not self._started:
            self._started = True
            first = await self._gen.__anext__()
            assert first is None  # the generator's "positioned" marker

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading and close the Kafka consumer."""
        await self._gen.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        await self.start()
        while True:
            event = await self._gen.__anext__()
            change = None if event is None else change_of(event)
            if change is not None:
                return change


# ----- the client ------------------------------------------------------------------------


class Client:
    """Submit flow runs and follow them through Kafka. Use as ``async with Client() as c:``.

    `create_topics` (default True) creates RunLedger's topics with their configs
    when they do not exist yet, so that a client started before the services cannot
    make the broker auto-create them with default settings. Existing topics are
    only listed, which needs no create permission; correcting their configs is
    left to the services (`ensure_topics(correct_configs=False)`).
    """

    def __init__(self, settings: Settings | None = None, *, create_topics: bool = True) -> None:
        self.settings = settings if settings is not None else Settings()
        self._create_topics = create_topics
        self._producer: AIOKafkaProducer | None = None
        self._partitions: int | None = None
        self._result_store: FSResultStore | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._submitted: OrderedDict[str, int] = OrderedDict()
        self._api = ApiReader(self.settings)
        self.records_read = 0
        """Ledger records this client has fetched from Kafka (its own runs' and others')."""
        self.last_start: RunStart | None = None
        """Where the last read of one run started (which source, which offset)."""
        self.identity = WorkerIdentity(
            id=f"client-{uuid.uuid4().hex[:12]}", host=socket.gethostname(), pid=os.getpid()
        )

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Connect the producer (and create missing topics)."""
        if self._producer is not None:
            return
        if self._create_topics:
            await ensure_topics(self.settings, correct_configs=False)
        producer = make_producer(self.settings, client_id=f"{self.settings.app_id}-client")
        await producer.start()
        self._producer = producer

    async def close(self) -> None:
        """Flush and disconnect."""
        producer, self._producer = self._producer, None
        offsets, self._offsets = self._offsets, None
        if producer is not None:
            await producer.stop()
        if offsets is not None:
            await offsets.stop()
        await self._api.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the client is not started: use `async with Client() as client:`")
        return self._producer

    # -- commands -----------------------------------------------------------------

    async def submit(
        self,
        flow_ref: str | FlowRef | Flow,
        parameters: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> str:
        """Request a flow run; returns its id once the request is durably on the broker.

        `flow_ref` is ``"package.module:attr"`` (imported by the services, within
        their allowlist), a `FlowRef`, or a `Flow` object (cloudpickled, signed with
        RUNLEDGER_SIGNING_KEY and stored in the result store). With an
        `idempotency_key`, the same key always names the same flow run: a repeated
        submit returns the same id and starts nothing new.
        """
        ref = await self._flow_ref(flow_ref)
        params = dict(parameters or {})
        _check_json("parameters", params)
        extra = dict(context or {})
        _check_json("context", extra)
        return await self._request_run(ref, params, extra, idempotency_key)

    async def _request_run(
        self,
        flow_ref: FlowRef,
        parameters: dict[str, Any],
        context: dict[str, Any],
        idempotency_key: str | None,
        reuse: dict[str, dict[str, Any]] | None = None,
    ) -> str:
        """Send a RunRequested for a new flow run (its id derived from the key); the id.

        With a key that already names a run of another flow or other parameters,
        `IdempotencyConflict` (returning the other run's id would hide the mistake).
        """
        flow_run_id = flow_run_id_for(idempotency_key)
        if idempotency_key is not None:
            existing = await self.view(flow_run_id)
            if existing.created and (
                existing.flow_ref != flow_ref or existing.parameters != parameters
            ):
                raise IdempotencyConflict(idempotency_key, flow_run_id)
        else:
            # A fresh id: nothing of this run can be on the ledger before its end now.
            # (With a key, an earlier request may already have facts there: those
            # runs are read like any other.)
            await self._mark_start(flow_run_id)
        command = RunRequested(
            event_id=_command_id_for(flow_run_id, idempotency_key, flow_ref, parameters),
            flow_run_id=flow_run_id,
            occurred_at=datetime.now(UTC),
            cause=Cause(worker=self.identity),
            flow_ref=flow_ref,
            parameters=parameters,
            idempotency_key=idempotency_key,
            plan=None,  # the ledger loads the flow and plans it
            context=context,
            reuse=reuse or {},
        )
        await self.send(command)
        return flow_run_id

    async def rerun(self, flow_run_id: str, *, idempotency_key: str | None = None) -> str:
        """Re-run a finished flow run: same flow, parameters and context; returns the new id.

        The task runs that succeeded before (`reusable_states`) are reused: they
        start Cached with their earlier results, and the rest runs from there
        (the failures and what depends on them). The new run's context has
        `rerun_of` = `flow_run_id`. Raises `LookupError` for an unknown flow run
        and `ValueError` while it is not finished.
        """
        earlier = await self.view(flow_run_id)
        if not earlier.created or earlier.flow_ref is None:
            raise LookupError(f"unknown flow run {flow_run_id}")
        if not earlier.is_finished():
            raise ValueError(
                f"flow run {flow_run_id} is {earlier.flow_state_type}, not finished: "
                "only a finished flow run can be re-run"
            )
        return await self._request_run(
            earlier.flow_ref,
            dict(earlier.parameters),
            {**earlier.context, "rerun_of": flow_run_id},
            idempotency_key,
            reuse=reusable_states(earlier),
        )

    async def _flow_ref(self, flow_ref: str | FlowRef | Flow) -> FlowRef:
        if isinstance(flow_ref, FlowRef):
            return flow_ref
        if isinstance(flow_ref, str):
            return parse_flow_ref(flow_ref)
        # Imported here: code loading belongs to the services (services/roles/codeload.py).
        from services.roles.codeload import sign_and_store_flow

        return await asyncio.to_thread(sign_and_store_flow, flow_ref, self.settings)

    async def cancel(self, flow_run_id: str, reason: str | None = None) -> str:
        """Ask the ledger to cancel a running flow run; returns the command id."""
        command = CancelRequested(
            event_id=str(uuid.uuid4()),
            flow_run_id=flow_run_id,
            occurred_at=datetime.now(UTC),
            cause=Cause(worker=self.identity),
            reason=reason,
        )
        await self.send(command)
        return command.event_id

    async def resume(self, task_run_id: str) -> str:
        """Ask the ledger to resume a Paused task run; returns the command id."""
        flow_run_id = flow_run_id_of_task_run(task_run_id)
        command = ResumeRequested(
            event_id=str(uuid.uuid4()),
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            occurred_at=datetime.now(UTC),
            cause=Cause(worker=self.identity),
        )
        await self.send(command)
        return command.event_id

    async def send(self, command: Command) -> None:
        """Write any command to the commands topic, keyed by its flow run, and await the ack."""
        await self.producer.send_and_wait(
            self.settings.topic("commands"), encode(command), key=command.flow_run_id.encode()
        )

    # -- reading ------------------------------------------------------------------

    def subscribe(
        self, flow_run_id: str | None = None, from_beginning: bool = False
    ) -> Subscription:
        """Changes read live from the ledger: of one flow run, or of all.

        `from_beginning` replays the recorded history first. Without it, only what
        is recorded after the subscription is positioned (see `Subscription`).
        """
        return Subscription(self, flow_run_id, from_beginning)

    async def wait(self, flow_run_id: str, timeout: float | None = None) -> FlowRunView:
        """Fold the run's ledger until its flow state is finished; its final view.

        Raises `TimeoutError` when it is not finished within `timeout` seconds, and
        `RunRejected` when the ledger refused to start it.
        """
        view = FlowRunView(flow_run_id=flow_run_id)
        events = self._events(flow_run_id, "beginning")
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    if event is None:
                        continue
                    view = evolve(view, event)
                    rejected = _run_rejection(event, view)
                    if rejected is not None:
                        raise rejected
                    if view.is_finished():
                        return view
        except TimeoutError:
            state = view.flow_state_type or "not created yet"
            raise TimeoutError(
                f"flow run {flow_run_id} did not finish within {timeout}s (it is {state})"
            ) from None
        finally:
            await events.aclose()
        raise AssertionError("unreachable: the ledger reader ended")  # pragma: no cover

    async def history(self, flow_run_id: str) -> list[Fact]:
        """Every fact of the run, in ledger order, up to the partition's end now.

        The audit trail: refused commands are on it too (`TransitionRejected`);
        `engine.orchestration.timeline` turns it into rows. Empty for an unknown run.
        """
        return [event async for event in self.ledger_events(flow_run_id) if isinstance(event, Fact)]

    async def view(self, flow_run_id: str, *, as_of: datetime | None = None) -> FlowRunView:
        """The run's view: its ledger folded up to now (empty if unknown).

        With `as_of` (timezone-aware, else `ValueError`), the view as it was then:
        the run's facts folded in ledger order up to the first whose own
        `occurred_at` is later (`engine.orchestration.fold_as_of`; broker
        timestamps are never used).
        """
        view = FlowRunView(flow_run_id=flow_run_id)
        if as_of is not None:
            check_as_of(as_of)  # before anything is read
            return fold_as_of(await self.history(flow_run_id), as_of, start=view)
        async for event in self.ledger_events(flow_run_id):
            view = evolve(view, event)
        return view

    async def ledger_events(self, flow_run_id: str) -> AsyncGenerator[Event, None]:
        """The run's ledger events recorded up to now, in order (none if unknown).

        Ends once the partition's end is reached, so an unknown run ends at once.
        """
        async for event in self._events(flow_run_id, "beginning", stop_at_end=True):
            if event is not None:
                yield event

    async def answer(self, flow_run_id: str, command_id: str, timeout: float = 10.0) -> list[Fact]:
        """The facts the ledger recorded in answer to a command (e.g. `cancel`'s id).

        A `TransitionRejected` among them means it was refused. `TimeoutError` if
        the ledger has not answered within `timeout` seconds.
        """
        found: list[Fact] = []
        events = self._events(flow_run_id, "beginning")
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    if event is None:
                        # Caught up with the partition: the ledger writes all facts of one
                        # command before committing it, so what we have is complete.
                        if found:
                            return found
                        continue
                    if isinstance(event, Fact) and event.cause.command_id == command_id:
                        found.append(event)
        except TimeoutError:
            raise TimeoutError(
                f"the ledger has not answered command {command_id} within {timeout}s "
                "(are the services running?)"
            ) from None
        finally:
            await events.aclose()
        return found  # pragma: no cover

    async def result(self, flow_run_id: str, task_slug: str, map_index: int | None = None) -> Any:
        """The result value of a finished task run, read from the result store.

        For a Mapped parent (``map_index=None``) the list of its children's results,
        like Prefect's ``TaskRunView.get_result``. `LookupError` for an unknown
        run, slug or index; `TaskRunNotFinished` while it is not finished.
        """
        task_run = await self.task_run(flow_run_id, task_slug, map_index)
        return await task_run.get_result()

    async def task_run(
        self, flow_run_id: str, task_slug: str, map_index: int | None = None
    ) -> TaskRunView:
        """A `TaskRunView` of one task run (Prefect's inspection API), as of now.

        `map_index` None (or Prefect's -1) names an unmapped run or a mapped parent.
        `LookupError` for an unknown flow run, slug or index.
        """
        return await TaskRunView.from_task_slug(task_slug, flow_run_id, map_index, client=self)

    @property
    def result_store(self) -> FSResultStore:
        """The result store task results are read from (one per client: its reads are cached)."""
        if self._result_store is None:
            self._result_store = FSResultStore(self.settings.result_store_url)
        return self._result_store

    async def ledger_partitions(self) -> int:
        """How many partitions the ledger topic has (cached)."""
        if self._partitions is None:
            found = await self.producer.partitions_for(self.settings.topic("ledger"))
            self._partitions = len(found)
        return self._partitions

    async def _mark_start(self, flow_run_id: str) -> None:
        """Remember the run's ledger partition end as it is before its request is sent.

        Under exactly-once this is the last stable offset: every record after it
        is read once its transaction commits, and the run's facts, written after
        the request, can only come later.
        """
        topic = self.settings.topic("ledger")
        tp = TopicPartition(topic, partition_for(flow_run_id, await self.ledger_partitions()))
        self._submitted[flow_run_id] = await self._ledger_end(tp)
        while len(self._submitted) > _SUBMITTED_KEPT:
            self._submitted.popitem(last=False)

    async def _ledger_end(self, tp: TopicPartition) -> int:
        if self._offsets is None:
            consumer = make_consumer(self.settings, group_id=None)
            await consumer.start()
            self._offsets = consumer
        ends = await self._offsets.end_offsets([tp])
        end: int = ends[tp]
        return end

    async def _locate(self, flow_run_id: str) -> RunStart:
        """Where to read the run from: what is known of it, and the offset after that."""
        partition = partition_for(flow_run_id, await self.ledger_partitions())
        submitted = self._submitted.get(flow_run_id)
        if submitted is not None:
            return RunStart(partition, submitted, (), "submitted")
        found = await self._api.start(flow_run_id)
        if found is None:
            found = local_start(self.settings, flow_run_id, partition)
        if found is None:
            log.info("no api or read model for %s: reading its partition from 0", flow_run_id)
            return RunStart(partition, 0, (), "scan")
        return found

    async def _events(
        self, flow_run_id: str | None, start: Start, *, stop_at_end: bool = False
    ) -> AsyncGenerator[Event | None, None]:
        """Ledger events, of one run or all. Yields None once positioned, then None
        again each time it has caught up with the partitions' visible end.

        One run "from the beginning" starts where `_locate` says: its known facts
        first, then its partition from the offset they cover up to.
        """
        if flow_run_id is not None:
            check_flow_run_id(flow_run_id)  # a '/' would make task run lookups ambiguous
        topic = self.settings.topic("ledger")
        located: RunStart | None = None
        if flow_run_id is None:
            found = await self.producer.partitions_for(topic)
            tps = [TopicPartition(topic, p) for p in sorted(found)]
        else:
            if start == "beginning":
                located = self.last_start = await self._locate(flow_run_id)
            partition = partition_for(flow_run_id, await self.ledger_partitions())
            tps = [TopicPartition(topic, partition)]
        key = None if flow_run_id is None else flow_run_id.encode()
        if located is not None:
            # Positioned already: the known facts need no broker (a finished run's
            # wait or view may end before any consumer is made).
            yield None
            for known in located.events:
                yield known
            follow = self._follow(tps, key, stop_at_end, offset=located.offset)
        else:
            follow = self._follow(tps, key, stop_at_end, start=start)
        try:
            async for event in follow:
                yield event
        finally:
            await follow.aclose()

    async def _follow(
        self,
        tps: list[TopicPartition],
        key: bytes | None,
        stop_at_end: bool,
        *,
        offset: int | None = None,
        start: Start = "beginning",
    ) -> AsyncGenerator[Event | None, None]:
        """The partitions' events (of `key`'s run) from `offset` or `start`; None markers."""
        consumer = make_consumer(self.settings, group_id=None)
        await consumer.start()
        try:
            consumer.assign(tps)
            if offset is not None:
                consumer.seek(tps[0], offset)
            elif start == "beginning":
                await consumer.seek_to_beginning(*tps)
            else:
                await consumer.seek_to_end(*tps)
                await _drain_to_end(consumer, tps)
            if offset is None:
                yield None
            news = True  # anything read since the last "caught up" marker
            if await _listed_at_end(consumer, tps):
                # Nothing to fetch: a fetch would only wait out fetch_max_wait_ms.
                if stop_at_end:
                    return
                news = False
                yield None
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=_POLL_MS)
                for tp, records in batches.items():
                    news = news or bool(records)
                    self.records_read += len(records)
                    for record in records:
                        if key is not None and record.key != key:
                            continue
                        where = f"{tp.topic}/{tp.partition}@{record.offset}"
                        event = _decode_record(record.value, where)
                        if event is not None:
                            yield event
                if news and await _caught_up(consumer, tps):
                    if stop_at_end:
                        return
                    news = False
                    yield None
        finally:
            await consumer.stop()


def _check_json(what: str, value: Mapping[str, Any]) -> None:
    """Commands are JSON: refuse what would not survive the trip, with the reason."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} must be JSON values (str, int, float, bool, None, list, dict): {exc}"
        ) from None
