"""The ledger's two processing guarantees on Apache Kafka, and the fencing of a zombie ledger.

Under exactly-once each batch's facts, work items and command offsets are one
transaction of a per-partition transactional producer (`services.roles.ledger_writer`);
under at-least-once they are plain sends and a commit after the acks. Both must
finish the same runs with the same facts. A ledger that was paused until another
took its partitions must not get anything committed when it resumes.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from engine.orchestration import fold
from events import TaskRunTransitioned
from services.kafka.broker import BrokerProcess
from services.kafka.clients import make_consumer, read_partitions_to_end
from services.kafka.topics import ensure_topics
from services.roles.common import HEADER_WRITER, Outgoing, header
from services.roles.ledger_writer import TransactionalWriter, transactional_id
from services.settings import ProcessingGuarantee, Settings, TopicName
from tests.integration.roles_support import RolesThread, run_request, start_role, stop_process
from tests.integration.roles_support import wait_for_log as wait_for_log_line
from tests.integration.test_multiprocess import ledger_events, submit, wait_finished

pytestmark = pytest.mark.integration

MAPPING = "tests.integration.flows.mapping:flow"


@pytest.fixture
def transactional_broker(embedded_broker: BrokerProcess) -> BrokerProcess:
    if not embedded_broker.transactions:
        pytest.fail("these tests need the session broker to be Apache Kafka (RL_TEST_BROKER)")
    return embedded_broker


@pytest.fixture(params=["exactly_once", "at_least_once"])
def guarantee_roles(
    request: pytest.FixtureRequest,
    kafka_settings: Settings,
    transactional_broker: BrokerProcess,
) -> Iterator[RolesThread]:
    guarantee: ProcessingGuarantee = request.param
    settings = kafka_settings.model_copy(update={"processing_guarantee": guarantee})
    with RolesThread(settings, {"ledger", "worker"}) as roles:
        yield roles


async def _raw_ledger(settings: Settings, partition: int) -> tuple[list[int], int]:
    """Offsets of every data record of a ledger partition read uncommitted, and its end."""
    consumer = make_consumer(settings, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic("ledger"), partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        offsets: list[int] = []
        end = 0
        while True:
            batch = await consumer.getmany(tp, timeout_ms=500)
            offsets.extend(r.offset for r in batch.get(tp, []))
            end = consumer.highwater(tp) or 0
            if await consumer.position(tp) >= end:
                return offsets, end
    finally:
        await consumer.stop()


def test_both_guarantees_finish_a_mapped_run_with_the_same_facts_and_commit_every_command(
    guarantee_roles: RolesThread, tmp_path: Path
) -> None:
    """A 50-way map finishes Success either way; every task run's facts have consecutive
    seqs, no event id appears twice, the commands' offsets are committed to their end;
    only exactly-once writes transaction markers between the facts."""
    roles = guarantee_roles
    settings = roles.settings
    out = tmp_path / "runs"
    out.mkdir()
    request = run_request(MAPPING, {"n": 50, "out_dir": str(out)})
    roles.send(request)
    view = roles.wait_view(request.flow_run_id, timeout_s=60)
    assert view.flow_state_type == "Success"
    assert roles.fold_of(request.flow_run_id) == view

    events = roles.events_of(request.flow_run_id)
    assert len({e.event_id for e in events}) == len(events)
    seqs: dict[str, list[int]] = collections.defaultdict(list)
    for event in events:
        if isinstance(event, TaskRunTransitioned):
            assert event.task_run_id is not None
            assert event.seq is not None
            seqs[event.task_run_id].append(event.seq)
    for task_run_id, numbers in seqs.items():
        assert numbers == list(range(1, len(numbers) + 1)), task_run_id

    partition = next(r.partition for r in roles.records("ledger") if r.key)
    offsets, end = asyncio.run(_raw_ledger(settings, partition))
    has_markers = offsets != list(range(end))
    assert has_markers == settings.exactly_once

    committed = asyncio.run(_committed_commands(settings))
    commands_end = asyncio.run(_ends(settings, "commands"))
    deadline = time.monotonic() + 10
    while committed != commands_end and time.monotonic() < deadline:
        time.sleep(0.1)
        committed = asyncio.run(_committed_commands(settings))
    assert committed == commands_end


async def _committed_commands(settings: Settings) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.brokers, group_id=f"{settings.app_id}-ledger"
    )
    await consumer.start()
    try:
        found: dict[int, int] = {}
        for p in range(settings.partitions):
            offset = await consumer.committed(TopicPartition(settings.topic("commands"), p))
            found[p] = offset or 0
        return found
    finally:
        await consumer.stop()


async def _ends(settings: Settings, name: TopicName) -> dict[int, int]:
    consumer = make_consumer(settings, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(name), p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def _committed_values(settings: Settings, topic: str, expected: int) -> list[bytes]:
    """The committed values of partition 0, once `expected` of them are readable (a commit
    becomes readable when its markers land, a moment after it returns) or after 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        records = await read_partitions_to_end(settings, [TopicPartition(topic, 0)])
        values = [r.value or b"" for r in records]
        if len(values) >= expected or asyncio.get_running_loop().time() > deadline:
            return values
        await asyncio.sleep(0.05)


async def _fencing(settings: Settings) -> tuple[list[bytes], bool]:
    await ensure_topics(settings)
    topic = settings.topic("ledger")
    first = TransactionalWriter(settings, "fencing-test")
    second = TransactionalWriter(settings, "fencing-test")
    await first.start()
    await second.start()
    try:
        await first.own({0})
        await first.submit(0, [Outgoing(topic, 0, b"k", b"first, before")], {})
        await first.drain()
        await second.own({0})  # takes the partition over: the first writer is a zombie now
        await first.submit(0, [Outgoing(topic, 0, b"k", b"zombie, after")], {})
        await first.drain()
        failures = first.take_failures()
        await second.submit(0, [Outgoing(topic, 0, b"k", b"second, after")], {})
        await second.drain()
        assert second.take_failures() == []
        return await _committed_values(settings, topic, 2), [f.fenced for f in failures] == [True]
    finally:
        await first.stop()
        await second.stop()


def test_a_second_ledger_writer_fences_the_first_and_nothing_the_zombie_writes_is_committed(
    kafka_settings: Settings, transactional_broker: BrokerProcess
) -> None:
    """Two writers with the partition's transactional id: once the second owns the partition
    the first's transaction is refused as fenced, and readers see only the live writer's."""
    settings = kafka_settings
    assert transactional_id(settings, 0) == f"{settings.topic_prefix}ledger-0"
    committed, fenced = asyncio.run(_fencing(settings))
    assert fenced, "the zombie's write was not refused as fenced"
    assert committed == [b"first, before", b"second, after"]


def _writers_by_partition(
    records: list[ConsumerRecord[bytes, bytes]],
) -> dict[int, list[str]]:
    writers: dict[int, list[str]] = collections.defaultdict(list)
    for record in records:
        writer = header(record.headers, HEADER_WRITER)
        if writer is not None:
            writers[record.partition].append(writer.decode())
    return writers


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_paused_ledger_resumed_after_another_took_over_gets_nothing_committed(
    process_settings: Settings, transactional_broker: BrokerProcess, tmp_path: Path
) -> None:
    """SIGSTOP the ledger in the middle of a 400-way map until a second ledger owns its
    partitions, then SIGCONT it: the run finishes Success with every body run once, no
    fact twice, consecutive seqs, and on each partition no record of the first ledger's
    after the second's first one unless it was assigned the partition again."""
    settings = process_settings
    asyncio.run(ensure_topics(settings))
    out = tmp_path / "runs"
    out.mkdir()
    logs = {name: tmp_path / f"{name}.log" for name in ("first", "second", "worker")}
    worker = start_role(settings, ["--roles", "worker", "--concurrency", "8"], logs["worker"])
    first = start_role(settings, ["--roles", "ledger"], logs["first"])
    processes: list[subprocess.Popen[bytes]] = [worker, first]
    try:
        wait_for_log_line(logs["first"], "ledger owns partitions [0, 1, 2, 3]", 60, first)
        wait_for_log_line(logs["worker"], "assigned work partitions", 60, worker)
        flow_run_id = submit(settings, {"n": 400, "out_dir": str(out), "delay_s": 0.02})
        deadline = time.monotonic() + 60
        while sum(1 for _ in out.iterdir()) < 40:
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)
        second = start_role(settings, ["--roles", "ledger"], logs["second"])
        processes.append(second)
        wait_for_log_line(logs["second"], "ledger owns partitions [0, 1, 2, 3]", 60, second)
        time.sleep(1.0)  # the second ledger decides a few batches as the only owner
        os.kill(first.pid, signal.SIGCONT)
        view, _ = wait_finished(settings, flow_run_id, processes, timeout_s=180)
    finally:
        with_stopped = [p for p in processes if p.poll() is None]
        for process in with_stopped:
            if process is first:
                os.kill(first.pid, signal.SIGCONT)
            stop_process(process)

    assert view.flow_state_type == "Success"
    bodies = [f.read_text().splitlines() for f in out.iterdir()]
    assert len(bodies) == 400
    assert all(len(lines) == 1 for lines in bodies), "a body ran more than once"
    events = ledger_events(settings, flow_run_id)
    assert len({e.event_id for e in events}) == len(events), "a fact was committed twice"
    assert fold(events, flow_run_id=flow_run_id) == view

    records = asyncio.run(
        read_partitions_to_end(
            settings, [TopicPartition(settings.topic("ledger"), p) for p in range(4)]
        )
    )
    assert "another ledger took it over" in logs["first"].read_text(), (
        "the resumed ledger never tried to write as a zombie: the test proved nothing"
    )
    for partition, tags in _writers_by_partition(records).items():
        runs = [tag for i, tag in enumerate(tags) if i == 0 or tags[i - 1] != tag]
        assert len(runs) == len(set(runs)), (
            f"partition {partition}: a ledger's records were committed after another "
            f"ledger had taken the partition over: {runs}"
        )


def test_transactional_ids_do_not_depend_on_the_app_id() -> None:
    """Two ledgers on the same topics fence each other even with different app ids."""
    one = Settings(app_id="a", topic_prefix="shared.")
    two = Settings(app_id="b", topic_prefix="shared.")
    assert transactional_id(one, 3) == transactional_id(two, 3) == "shared.ledger-3"
    assert transactional_id(Settings(topic_prefix=f"x{uuid.uuid4().hex[:4]}."), 3) != (
        "shared.ledger-3"
    )
