"""Apache Kafka as the embedded broker: jars from Maven Central, one KRaft node, plain `java`.

`KafkaBroker` runs a single-node Apache Kafka (broker and controller in one
process, KRaft, no ZooKeeper) on a loopback address:

* **Jars.** The checked-in Maven project ``services/kafka/maven/pom.xml`` pins
  the Kafka release and its logging jars. The first start runs ``mvn
  dependency:copy-dependencies`` into a cache (``~/.cache/runledger/kafka-<version>``
  by default); the cache is complete once a stamp holding the pom's hash is
  written, and later starts use it without running Maven or touching the network.
* **Storage** lives under ``<data_dir>/kafka``: formatted once (``StorageTool
  format``, a random cluster id), kept across restarts, so the ledger survives
  the broker. The quorum is static (``controller.quorum.voters``), so the
  controller port is picked afresh at every start.
* **Process.** ``java -Xms/-Xmx<heap> … kafka.Kafka server.properties``, its log
  in ``<log_dir>/kafka.log`` (Log4j 2, rolled at 50 MB). SIGTERM is Kafka's
  controlled shutdown; `stop` waits for it, then SIGKILLs.

Only loopback addresses are bound: the embedded broker has no authentication.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.kafka.process import BrokerError, BrokerProcess, free_port

__all__ = [
    "MIN_JAVA",
    "JavaRuntime",
    "KafkaBroker",
    "KafkaJars",
    "cluster_id",
    "default_cache_dir",
    "find_java",
    "find_maven",
    "kafka_version",
]

MIN_JAVA = 17
"""Kafka 4.x brokers need Java 17 or newer."""

_POM = "pom.xml"
_STAMP = ".complete"
_MAVEN_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _pom_bytes() -> bytes:
    return importlib.resources.files("services.kafka").joinpath("maven", _POM).read_bytes()


@functools.cache
def kafka_version() -> str:
    """The Apache Kafka release pinned by the Maven project (its ``kafka.version``)."""
    root = ET.fromstring(_pom_bytes())
    version = root.findtext("m:properties/m:kafka.version", namespaces=_MAVEN_NS)
    if not version:
        raise BrokerError("services/kafka/maven/pom.xml pins no kafka.version")
    return version.strip()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/runledger`` (``~/.cache/runledger`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runledger"


# ------------------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True)
class JavaRuntime:
    """A ``java`` launcher and the major version it reported."""

    path: Path
    major: int


_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@functools.cache
def _java_major(path: Path) -> int | None:
    try:
        done = subprocess.run(
            [str(path), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _JAVA_VERSION.search(done.stderr + done.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older call themselves 1.x.
    return int(match.group(2) or 0) if major == 1 else major


def find_java(java_home: str | None = None) -> JavaRuntime | None:
    """The ``java`` of ``$JAVA_HOME`` (or *java_home*), else the one on PATH; None if absent."""
    home = java_home if java_home is not None else os.environ.get("JAVA_HOME")
    candidates: list[Path] = []
    if home:
        candidates.append(Path(home) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            major = _java_major(candidate)
            if major is not None:
                return JavaRuntime(candidate, major)
    return None


def find_maven() -> Path | None:
    """``mvn`` on PATH, if any."""
    found = shutil.which("mvn")
    return Path(found) if found else None


# ------------------------------------------------------------------------- jars


class KafkaJars:
    """The cached jars of the pinned Kafka release: fetched once, then used offline."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.root = (cache_dir or default_cache_dir()) / f"kafka-{kafka_version()}"
        self.jars = self.root / "jars"
        self._fingerprint = hashlib.sha256(_pom_bytes()).hexdigest()

    @property
    def classpath(self) -> str:
        """The ``-cp`` argument: every jar of the cache."""
        return str(self.jars / "*")

    def ready(self) -> bool:
        """True when the cache holds every jar of this pom (its stamp matches)."""
        stamp = self.jars / _STAMP
        try:
            return stamp.read_text().strip() == self._fingerprint
        except OSError:
            return False

    def ensure(self, maven: Path | None, log: Path) -> None:
        """Fetch the jars with Maven unless the cache is complete; Maven's output goes to *log*.

        Several processes may start at once (tests, `runledger dev`): a file lock
        lets one fetch while the others wait and then find the cache complete.
        """
        if self.ready():
            return
        if maven is None:
            raise BrokerError(
                f"Apache Kafka {kafka_version()} is not cached in {self.jars} and Maven "
                "(mvn) is not installed to fetch it: install Maven (apt-get install maven)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self.ready():
                self._fetch(maven, log)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _fetch(self, maven: Path, log: Path) -> None:
        staging = Path(tempfile.mkdtemp(prefix="jars-", dir=self.root))
        pom = staging / _POM
        pom.write_bytes(_pom_bytes())
        argv = [
            str(maven),
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging / 'jars'}",
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0 or not any((staging / "jars").glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(
                f"fetching Apache Kafka {kafka_version()} with Maven failed "
                f"(exit {done.returncode}); see {log}"
            )
        (staging / "jars" / _STAMP).write_text(self._fingerprint + "\n")
        if self.jars.exists():
            shutil.rmtree(self.jars)
        (staging / "jars").rename(self.jars)
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------- broker


def cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never one starting with "-": the storage tool would take it for an option, and
    Kafka's own `Uuid.randomUuid` draws again in that case too.
    """
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="file" fileName="{log}" filePattern="{log}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


class KafkaBroker(BrokerProcess):
    """A single-node Apache Kafka (KRaft broker + controller) child process on loopback."""

    kind = "kafka"
    durable = True
    transactions = True

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        data_dir: Path,
        log_dir: Path | None = None,
        heap_mb: int = 1024,
        cache_dir: Path | None = None,
        java: JavaRuntime | None = None,
        maven: Path | None = None,
        overrides: Mapping[str, str] | None = None,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            port,
            host,
            log_dir=log_dir or data_dir / "logs",
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )
        if heap_mb < 256:
            raise ValueError(f"a Kafka broker needs a heap of at least 256 MB, not {heap_mb}")
        self.storage = data_dir.resolve() / "kafka"
        self.heap_mb = heap_mb
        self.jars = KafkaJars(cache_dir)
        self._java = java
        self._maven = maven
        self._overrides = dict(overrides or {})
        self.controller_port: int | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "kafka.log"

    @property
    def description(self) -> str:
        return f"Apache Kafka {kafka_version()} (KRaft, data in {self.storage}) on {self.bootstrap}"

    @property
    def formatted(self) -> bool:
        """True once the storage directory was formatted (and so holds a cluster)."""
        return (self.storage / "data" / "meta.properties").exists()

    def _stdout_path(self, port: int) -> Path:
        # The JVM's own output (a crash before Log4j starts, -version, GC warnings).
        return self.log_dir / "kafka-stdout.log"

    # -- preparation -------------------------------------------------------------

    def _runtime(self) -> JavaRuntime:
        java = self._java or find_java()
        if java is None:
            raise BrokerError(
                f"Apache Kafka needs Java {MIN_JAVA} or newer and no java was found "
                "(set JAVA_HOME or install a JDK: apt-get install openjdk-17-jre-headless)"
            )
        if java.major < MIN_JAVA:
            raise BrokerError(
                f"Apache Kafka {kafka_version()} needs Java {MIN_JAVA} or newer; "
                f"{java.path} is Java {java.major}"
            )
        self._java = java
        return java

    def _prepare(self, port: int) -> None:
        java = self._runtime()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jars.ensure(self._maven or find_maven(), self.log_dir / "kafka-fetch.log")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.controller_port = free_port(self.host)
        while self.controller_port == port:
            self.controller_port = free_port(self.host)
        (self.storage / "server.properties").write_text(self._properties(port))
        (self.storage / "log4j2.xml").write_text(_LOG4J2.format(log=self.log_path))
        if not self.formatted:
            self._format(java)

    def _properties(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.storage / "data"),
            # Topics are created by the roles (services.kafka.topics) with their own
            # settings; a mistyped topic name must not create one.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions than a cluster's 50: each costs files and start time.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "8",
            # A lone member joins at once; tests and dev use sessions below the 6 s floor.
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # Two cores: fewer idle threads than the defaults for a server.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            **self._overrides,
        }
        lines = [f"{key}={value}" for key, value in config.items()]
        return "# Written by RunLedger at every start (services/kafka/apache.py).\n" + "\n".join(
            lines
        ) + "\n"

    def _format(self, java: JavaRuntime) -> None:
        argv = [
            str(java.path),
            "-cp",
            self.jars.classpath,
            f"-Dlog4j2.configurationFile={self.storage / 'log4j2.xml'}",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id()}",
            "--config",
            str(self.storage / "server.properties"),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage in {self.storage} failed (exit {done.returncode}):\n"
                + (done.stdout + done.stderr)[-2000:]
            )

    # -- launch ------------------------------------------------------------------

    def _argv(self, port: int) -> Sequence[str]:
        java = self._runtime()
        return [
            str(java.path),
            f"-Xms{self.heap_mb}m",
            f"-Xmx{self.heap_mb}m",
            # The JVM options of Kafka's own kafka-server-start.sh.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            # Plain IPv4 sockets on an IPv4 loopback address (not ::ffff:127.0.0.1).
            *(["-Djava.net.preferIPv4Stack=true"] if ":" not in self.host else []),
            f"-Dlog4j2.configurationFile={self.storage / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            self.jars.classpath,
            "kafka.Kafka",
            str(self.storage / "server.properties"),
        ]
