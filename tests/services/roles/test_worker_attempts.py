"""The worker keeps each attempt apart, and never settles a job whose records were lost.

These drive `Worker` methods directly, without a broker: the outbox is replaced by a
list, and hand-overs to the event loop run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaTimeoutError

from events import (
    Cause,
    FlowRef,
    HeartbeatSent,
    TransitionProposed,
    WorkItem,
    decode,
)
from services.roles.common import Outgoing
from services.roles.work import OnAck, Pending
from services.roles.worker import Worker, _Job
from services.settings import Settings

NOW = datetime(2024, 1, 2, tzinfo=UTC)
RUN = "fr/a"


class Sent:
    """Stands in for the worker's outbox: what was queued, with its ack callback."""

    def __init__(self) -> None:
        self.records: list[tuple[Outgoing, OnAck | None]] = []

    def put(self, record: Outgoing, on_ack: OnAck | None = None) -> None:
        self.records.append((record, on_ack))


def make_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Worker, Sent]:
    w = Worker(
        Settings(data_dir=tmp_path, heartbeat_interval_s=0.01, heartbeat_timeout_s=1),
        name="w1",
    )
    sent = Sent()
    monkeypatch.setattr(w, "_outbox", sent)
    monkeypatch.setattr(w, "_hand_over", lambda callback, *args: callback(*args))
    w._partitions = {"commands": 1, "deadletter": 1}
    return w, sent


def job(attempt: int, offset: int = 0) -> _Job:
    record = ConsumerRecord("work", 0, offset, 0, 0, RUN.encode(), b"", None, 1, 1, [])
    entry = _Job(record, 0, Pending(offset), fresh=True)
    entry.work = WorkItem(
        flow_run_id="fr",
        task_run_id=RUN,
        slug="a",
        map_index=None,
        flow_ref=FlowRef(kind="import", path="pkg:flow"),
        parameters={},
        state={"type": "Submitted", "state": {"type": "Pending"}},
        expected_seq=2 * attempt,
        attempt=attempt,
        upstream=(),
    )
    return entry


def claim(worker: Worker, attempt: int) -> TransitionProposed:
    return TransitionProposed(
        event_id=f"claim-{attempt}",
        flow_run_id="fr",
        occurred_at=NOW,
        task_run_id=RUN,
        cause=Cause(worker=worker.identity),
        expected_seq=2 * attempt,
        attempt=attempt,
        state={"type": "Running"},
        final=False,
    )


async def one_heartbeat_round(worker: Worker) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(worker._heartbeat_loop(), 0.05)


def test_a_retry_on_the_same_worker_is_claimed_and_heartbeated_as_its_own_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 still running here (declared lost after a stall) and attempt 2 of the
    same task run dispatched to this worker: both are claimed, both heartbeated."""
    w, sent = make_worker(tmp_path, monkeypatch)
    w._give_up_claims.set()  # an awaited claim would give up at once instead of blocking
    first, second = job(1), job(2, offset=1)
    assert w._claim(first, claim(w, 1)) is None  # fresh: sent, not awaited
    assert w._claim(second, claim(w, 2)) is None  # not mistaken for a copy of attempt 1
    sent.records.clear()
    asyncio.run(one_heartbeat_round(w))
    beats = [decode(record.value or b"") for record, _ in sent.records]
    assert all(isinstance(b, HeartbeatSent) for b in beats)
    assert {b.attempt for b in beats if isinstance(b, HeartbeatSent)} == {1, 2}


def test_a_work_item_whose_proposal_was_not_produced_is_not_settled_until_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KafkaTimeoutError on an outcome: the record is produced again, the job's later
    records wait behind it, and the offset becomes committable only after the ack."""
    w, sent = make_worker(tmp_path, monkeypatch)
    monkeypatch.setattr("services.roles.worker._RESEND_DELAY_S", 0.0, raising=False)
    outcome = Outgoing("commands", 0, b"fr", b"outcome")
    later = Outgoing("commands", 0, b"fr", b"later")

    async def scenario() -> None:
        w._loop = asyncio.get_running_loop()
        entry = job(1)
        w._in_flight = 1
        w._enqueue(entry, outcome)
        (_, on_ack), = sent.records
        assert on_ack is not None
        on_ack(KafkaTimeoutError())
        w._enqueue(entry, later)  # queued behind the record being produced again
        w._finished(entry)
        await asyncio.sleep(0.01)
        assert [record.value for record, _ in sent.records] == [b"outcome", b"outcome"]
        assert not entry.offset.done, "committed past a proposal the broker never took"
        resent_ack = sent.records[-1][1]
        assert resent_ack is not None
        resent_ack(None)
        assert [record.value for record, _ in sent.records][-1] == b"later"
        assert not entry.offset.done
        last_ack = sent.records[-1][1]
        assert last_ack is not None
        last_ack(None)
        assert entry.offset.done

    asyncio.run(scenario())
