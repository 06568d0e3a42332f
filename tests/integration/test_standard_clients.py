"""A client that is not Python: Debian's kcat (librdkafka) writes a run request as plain JSON
per docs/events.md and reads the run's facts back until the flow run is finished.

kcat is installed by `.ci/run` (Debian package ``kcat``), which sets
``RL_REQUIRE_KCAT=1`` so that a missing kcat fails there; elsewhere the test is
skipped with the reason when kcat is not on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.settings import Settings
from tests.integration.roles_support import RolesThread

pytestmark = pytest.mark.integration

FINISHED = {"Success", "Failed", "Cancelled", "TriggerFailed", "TimedOut", "Skipped"}


def _kcat() -> str:
    found = shutil.which("kcat")
    if found is None:
        if os.environ.get("RL_REQUIRE_KCAT") == "1":
            pytest.fail("kcat is required here (apt-get install kcat)")
        pytest.skip("kcat is not installed (apt-get install kcat)")
    return found


def _ledger_records(kcat: str, settings: Settings) -> list[dict[str, Any]]:
    """Every committed record of the ledger topic, read by kcat as its JSON envelope."""
    done = subprocess.run(
        [
            kcat,
            "-C",
            "-b",
            settings.brokers,
            "-t",
            settings.topic("ledger"),
            "-o",
            "beginning",
            "-e",  # exit at the end of every partition
            "-J",  # one JSON envelope per record: key, payload, partition, offset
            "-X",
            "isolation.level=read_committed",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_kcat_submits_a_run_request_and_follows_its_facts_to_the_end(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """The documented JSON, keyed by flow run id, produced with librdkafka's murmur2
    partitioner, runs; kcat reads its flow run's facts until the flow run is finished."""
    kcat = _kcat()
    flow_run_id = str(uuid.uuid4())
    request = {
        "event_id": str(uuid.uuid4()),
        "type": "run_requested",
        "schema_version": 2,
        "flow_run_id": flow_run_id,
        "occurred_at": "2024-05-01T12:00:00Z",
        "flow_ref": {"kind": "import", "path": "tests.integration.flows.mapping:flow"},
        "parameters": {"n": 3, "out_dir": str(tmp_path)},
        "idempotency_key": f"kcat-{flow_run_id}",
        "cause": {"worker": {"id": "kcat", "host": "test", "pid": 1}},
        "engine_version": "kcat/1.7",
    }
    with RolesThread(kafka_settings, {"ledger", "worker"}):
        subprocess.run(
            [
                kcat,
                "-P",
                "-b",
                kafka_settings.brokers,
                "-t",
                kafka_settings.topic("commands"),
                "-K",
                "|",
                "-X",
                "partitioner=murmur2_random",
            ],
            input=f"{flow_run_id}|{json.dumps(request)}\n",
            text=True,
            timeout=60,
            check=True,
        )
        deadline = time.monotonic() + 60
        while True:
            facts = [
                json.loads(record["payload"])
                for record in _ledger_records(kcat, kafka_settings)
                if record.get("key") == flow_run_id
            ]
            flow_states = [
                fact["state"]["type"] for fact in facts if fact["type"] == "flow_run_transitioned"
            ]
            if flow_states and flow_states[-1] in FINISHED:
                break
            assert time.monotonic() < deadline, f"the run did not finish: {flow_states}"
            time.sleep(0.2)

    assert flow_states[-1] == "Success"
    assert facts[0]["type"] == "flow_run_created"
    task_states = [
        (fact["task_slug"], fact["map_index"], fact["state"]["type"])
        for fact in facts
        if fact["type"] == "task_run_transitioned"
    ]
    successes = {(slug, index) for slug, index, state in task_states if state == "Success"}
    assert {index for slug, index in successes if slug.startswith("record")} == {0, 1, 2}
    assert len({fact["event_id"] for fact in facts}) == len(facts)
