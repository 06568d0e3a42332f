"""A broker child process on a loopback address: launch, readiness, stop by PID.

Both embedded brokers (Apache Kafka from Maven jars, `services.kafka.apache`, and
the memory-only Tansu fallback, `services.kafka.tansu`) are child processes with
the same life: pick or check the port, launch with the parent-death signal set,
wait until a Kafka Metadata request is answered, and stop with SIGTERM, then
SIGKILL after a grace period. Neither has authentication, so both bind loopback
addresses only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from aiokafka.admin import AIOKafkaAdminClient

__all__ = [
    "BrokerError",
    "BrokerProcess",
    "check_loopback",
    "die_with_parent",
    "free_port",
]

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


def check_loopback(host: str) -> str:
    """Return *host* as a literal loopback address, or raise `ValueError`.

    ``localhost`` is mapped to ``127.0.0.1``. Anything that is not a loopback
    address is refused: the embedded brokers have no authentication.
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
            f"only, not {host!r}; run a secured Kafka cluster (docker-compose.yml) to "
            "serve a network"
        )
    return str(address)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on *host* a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on *host*:*port* (TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Both brokers bind with SO_REUSEADDR, so a socket in TIME_WAIT is no obstacle.
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
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        if not cluster.get("brokers"):
            raise BrokerError("no broker registered yet")
    finally:
        await admin.close()


def run_probe(bootstrap: str, timeout_s: float) -> None:
    """Run the metadata probe on a private event loop, also from inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_probe_metadata(bootstrap, timeout_s))
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _probe_metadata(bootstrap, timeout_s)).result()


class BrokerProcess:
    """A broker child process bound to a loopback address.

    Subclasses say how to launch it (`_argv`, `_prepare`) and what it offers
    (`kind`, `durable`, `transactions`). ``port=0`` picks a free port at `start`.
    Use as a context manager or call `start` and `stop`; `stop` terminates the
    process by its PID (SIGTERM, then SIGKILL after ``stop_timeout_s``).
    """

    kind: ClassVar[str]
    """``kafka`` or ``tansu``."""
    durable: ClassVar[bool]
    """True when the broker's data survives a restart."""
    transactions: ClassVar[bool]
    """True when transactions and the idempotent producer work."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        log_dir: Path,
        startup_timeout_s: float,
        stop_timeout_s: float,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port} (expected 0..65535, 0 picks a free one)")
        self.host = check_loopback(host)
        self._requested_port = port
        self._port: int | None = None
        self.log_dir = log_dir
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
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
    def log_path(self) -> Path:
        """The file the broker logs to."""
        raise NotImplementedError

    @property
    def description(self) -> str:
        """One line for people: what runs, where its data is."""
        raise NotImplementedError

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def returncode(self) -> int | None:
        """The exit status of the broker process once it has exited, else None."""
        return None if self._process is None else self._process.poll()

    # -- what subclasses provide -------------------------------------------------

    def _prepare(self, port: int) -> None:
        """Everything before the launch for *port* (files, storage); may raise BrokerError."""

    def _argv(self, port: int) -> Sequence[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _stdout_path(self, port: int) -> Path:
        """Where the child's stdout and stderr go."""
        return self.log_path

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Launch the broker and block until it answers a Kafka metadata request.

        Raises `BrokerError` when the process exits early or is not ready within
        ``startup_timeout_s`` (the process is stopped in that case).
        """
        if self._process is not None:
            raise BrokerError(f"the broker is already running (pid {self._process.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self._requested_port and not port_free(self.host, self._requested_port):
            # Checked up front: otherwise a broker already on that port could answer
            # our readiness probe while ours fails to bind.
            raise BrokerError(f"{self.host}:{self._requested_port} is already in use")
        # A free port picked here may be taken by someone else before the broker binds
        # it: retry a few times with a fresh port when the requested port was 0.
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port(self.host)
            self._prepare(port)
            started = time.monotonic()
            self._launch(port)
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

    def _launch(self, port: int) -> None:
        self._port = port
        with open(self._stdout_path(port), "ab") as log:
            self._process = subprocess.Popen(
                list(self._argv(port)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                # Own session: a Ctrl-C in the terminal reaches only our CLI, which
                # then stops the broker in order.
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )

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
                run_probe(self.bootstrap, min(2.0, remaining))
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
        for path in dict.fromkeys((self._stdout_path(self._port or 0), self.log_path)):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-20:]
                tail += "\n".join(lines) + "\n"
        return (
            f"embedded broker ({self.kind}) on {self.host}:{self._port} {what} "
            f"(log {self.log_path}):\n{tail}"
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
        name = type(self).__name__
        return f"{name}({self.host}:{self._port or self._requested_port}, {state})"
