"""Configuration of every RunLedger process, read from ``RUNLEDGER_*`` environment variables.

One model for all roles (ledger, worker, api, CLI, client): the same variables
configure the embedded dev setup and a production cluster (docker-compose.yml).
Example::

    RUNLEDGER_BROKERS=kafka-1:9092,kafka-2:9092
    RUNLEDGER_SECURITY_PROTOCOL=SASL_SSL
    RUNLEDGER_SASL_MECHANISM=SCRAM-SHA-512
    RUNLEDGER_FLOW_ALLOWLIST=examples,myteam.flows
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.flow_handlers import FLOW_HANDLER_TIMEOUT_S

__all__ = ["EmbeddedBrokerKind", "ProcessingGuarantee", "SecurityProtocol", "Settings", "TopicName"]

TopicName = Literal["commands", "ledger", "work", "deadletter", "snapshots"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]
ProcessingGuarantee = Literal["exactly_once", "at_least_once"]
EmbeddedBrokerKind = Literal["auto", "kafka", "tansu"]

Port = Annotated[int, Field(ge=1, le=65535)]

#: Placeholder in `Settings.result_store_url` replaced by the absolute data dir.
DATA_DIR_PLACEHOLDER = "{data_dir}"


def _split_list(value: Any) -> Any:
    """Accept ``a,b,c`` or a JSON list for list-valued settings (env vars are strings)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All settings; every field ``name`` is read from ``RUNLEDGER_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="RUNLEDGER_",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        validate_default=True,
    )

    # -- Kafka connection -----------------------------------------------------------

    brokers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated ``host:port`` list."""

    security_protocol: SecurityProtocol = "PLAINTEXT"
    """Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""

    sasl_mechanism: SaslMechanism | None = None
    """SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...); required with SASL_*."""

    sasl_username: str | None = None
    """SASL user name (PLAIN and SCRAM mechanisms)."""

    sasl_password: SecretStr | None = None
    """SASL password (PLAIN and SCRAM mechanisms); never printed."""

    ssl_cafile: Path | None = None
    """CA bundle to verify the brokers' certificates with (SSL, SASL_SSL); system CAs if unset."""

    processing_guarantee: ProcessingGuarantee = "exactly_once"
    """``exactly_once``: the ledger writes each batch's facts, work items and command
    offsets in one Kafka transaction, and every reader reads committed records only
    (needs a broker with transactions: Apache Kafka). ``at_least_once``: plain writes,
    commits after acks, idempotent folds (any Kafka-compatible broker, e.g. Tansu)."""

    # -- the embedded broker (runledger broker / dev / demo, the test suite) --------

    embedded_broker: EmbeddedBrokerKind = "auto"
    """Which broker `runledger broker` and `runledger dev` start: ``kafka`` (Apache Kafka
    from Maven jars, needs Java 17+), ``tansu`` (memory only, no Java), or ``auto``:
    Kafka, unless Java 17+ or Maven (with no cached jars) is missing."""

    broker_heap_mb: int = Field(default=1024, ge=256, le=65_536)
    """Heap of the embedded Kafka broker's JVM (-Xms/-Xmx); the log itself lives in the
    page cache, so 1 GiB suits a 2-core / 24 GiB machine."""

    kafka_cache_dir: Path | None = None
    """Where the embedded Kafka's jars are cached (default ``~/.cache/runledger``)."""

    # -- topics ---------------------------------------------------------------------

    topic_prefix: str = "runledger."
    """Prefix of every topic name, e.g. ``runledger.`` gives ``runledger.ledger``."""

    partitions: int = Field(default=4, ge=1)
    """Partitions of each topic created at start (an upper bound on parallel consumers)."""

    replication_factor: int = Field(default=1, ge=1)
    """Replication factor of each topic created at start (3 on a production cluster)."""

    # -- storage and code -----------------------------------------------------------

    data_dir: Path = Path(".runledger")
    """Directory for local state: logs, the default result store."""

    result_store_url: str = "file://{data_dir}/results"
    """fsspec URL where task results are written (``file://``, ``memory://``, ``s3://`` ...).

    ``{data_dir}`` is replaced by the absolute path of `data_dir`."""

    signing_key: SecretStr | None = None
    """HMAC key that signs cloudpickled flows; pickled flows are refused when unset."""

    flow_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["examples", "tests"]
    )
    """Module prefixes flows may be imported from (comma-separated in the environment)."""

    pickled_flow_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["file", "memory"]
    )
    """fsspec URL schemes a pickled flow may be read from (comma-separated); checked
    before anything is fetched, since the location comes from whoever wrote the topic."""

    # -- workers --------------------------------------------------------------------

    worker_concurrency: int = Field(default=4, ge=1)
    """Task bodies a worker process runs at the same time."""

    worker_await_claims: bool = False
    """Wait for the ledger's answer to every Running claim before running the body.

    By default a worker waits only for work items that another worker may have
    started already (those fetched first after a partition assignment) and runs
    fresh ones at once: the ledger then refuses the outcome of a lost claim. True
    also keeps a body from starting when a cancel reached the ledger just before
    its claim, at the cost of one more broker round trip per task run."""

    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    """Seconds between a worker's heartbeats for a running task run."""

    heartbeat_timeout_s: float = Field(default=30.0, gt=0, le=86_400, allow_inf_nan=False)
    """Seconds without a heartbeat after which a running task run is considered lost."""

    flow_handler_timeout_s: float = Field(default=FLOW_HANDLER_TIMEOUT_S, gt=0)
    """Longest the ledger waits for a flow's state handlers on one flow-run transition;
    a chain that takes longer fails the flow run (its message names the handler)."""

    # -- web ------------------------------------------------------------------------

    web_host: str = "127.0.0.1"
    """Address the HTTP API binds (keep loopback unless behind a proxy or in a container)."""

    web_port: Port = 6066
    """Port of the HTTP API."""

    api_url: str = "auto"
    """Where clients read one run's history and view (the api role's HTTP API):
    ``auto`` is ``http://<web_host>:<web_port>`` (127.0.0.1 for a wildcard host),
    ``off`` never asks an api, anything else is the URL. A client that cannot reach
    it, or finds it serving other topics, reads the ledger itself instead."""

    api_cache_task_runs: int = Field(default=10_000, ge=1)
    """How many task runs' worth of flow-run views the api keeps in memory (least
    recently used first out); every view is on disk in its read model anyway. One
    task run is ~1-2 KB of memory; the view in use always stays, however big."""

    # -- Kafka client tuning --------------------------------------------------------

    fetch_max_wait_ms: int = Field(default=100, ge=0, le=5000)
    """Longest time a fetch waits for data. Apache Kafka answers a waiting fetch as soon
    as data arrives, so this bounds only idle polling; Tansu answers when the wait
    expires, so on Tansu it bounds every hop's latency (`runledger dev` sets 10 there)."""

    session_timeout_ms: int = Field(default=10_000, ge=1, le=3_600_000)
    """Consumer-group session timeout; small values make joins and failover fast."""

    producer_linger_ms: int = Field(default=2, ge=0, le=5000)
    """How long a producer waits to batch records before sending."""

    ledger_batch_max: int = Field(default=500, ge=1)
    """Most commands the ledger takes in one batch."""

    ledger_transaction_timeout_ms: int = Field(default=60_000, ge=1_000, le=900_000)
    """Exactly-once only: a ledger transaction open longer than this is aborted by the
    broker (a ledger that died while no other took its partitions); the longest one
    batch may take to write."""

    ledger_snapshot_every_events: int = Field(default=20_000, ge=0)
    """The ledger writes a snapshot of a partition's state (to the `snapshots` topic)
    once this many facts were written to it since the last one; 0: never. A restart
    folds at most about this many facts per partition after loading the snapshot."""

    ledger_snapshot_every_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    """...or once this many seconds passed since the last snapshot of a partition that
    has new facts (a quiet partition is not snapshotted again)."""

    ledger_command_window: int = Field(default=20_000, ge=1)
    """Distinct commands per ledger partition, most recent first, by which a repeated
    command for a finished (retired) flow run is recognised and ignored; an older
    repeat is refused instead ("flow run ... is already ..."). About 80 bytes each.
    Changing it makes existing snapshots unusable once (they record the window)."""

    app_id: str = Field(default="runledger", min_length=1)
    """Application id: faust app id, consumer-group and client-id prefix."""

    # -- validators -----------------------------------------------------------------

    @field_validator("brokers")
    @classmethod
    def _check_brokers(cls, value: str) -> str:
        servers = [part.strip() for part in value.split(",") if part.strip()]
        if not servers:
            raise ValueError("at least one broker is required")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"broker {server!r} is not host:port")
        return ",".join(servers)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_variables(cls, data: Any) -> Any:
        unknown_variables(os.environ)  # a typo must not silently leave a default in place
        return data

    @field_validator("flow_allowlist", "pickled_flow_schemes", mode="before")
    @classmethod
    def _parse_allowlist(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("pickled_flow_schemes")
    @classmethod
    def _check_schemes(cls, value: list[str]) -> list[str]:
        for scheme in value:
            if not scheme.replace("-", "").replace("+", "").isalnum():
                raise ValueError(f"pickled_flow_schemes entry {scheme!r} is not a URL scheme")
        return [scheme.lower() for scheme in value]

    @field_validator("flow_allowlist")
    @classmethod
    def _check_allowlist(cls, value: list[str]) -> list[str]:
        for prefix in value:
            parts = prefix.split(".")
            if not all(part.isidentifier() for part in parts):
                raise ValueError(f"flow_allowlist entry {prefix!r} is not a module prefix")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("topic_prefix may contain only ASCII letters, digits, '.', '_', '-'")
        return value

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value not in ("auto", "off") and not value.startswith(("http://", "https://")):
            raise ValueError(f"api_url {value!r} is not auto, off or an http(s):// URL")
        return value

    @field_validator("sasl_password", "signing_key", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("result_store_url")
    @classmethod
    def _resolve_result_store(cls, value: str, info: ValidationInfo) -> str:
        if DATA_DIR_PLACEHOLDER in value:
            data_dir = info.data.get("data_dir")
            if not isinstance(data_dir, Path):
                raise ValueError("result_store_url uses {data_dir} but data_dir is invalid")
            value = value.replace(DATA_DIR_PLACEHOLDER, data_dir.absolute().as_posix())
        if "://" not in value:
            raise ValueError(f"result_store_url {value!r} is not a URL (e.g. file:///path)")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"{self.security_protocol} requires sasl_mechanism")
            needs_password = self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
            if needs_password and (self.sasl_username is None or self.sasl_password is None):
                raise ValueError(f"{self.sasl_mechanism} requires sasl_username and sasl_password")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must be longer than heartbeat_interval_s")
        return self

    # -- helpers --------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> list[str]:
        """`brokers` as a list of ``host:port`` strings."""
        return self.brokers.split(",")

    @property
    def first_broker_port(self) -> int:
        """The port of the first entry of `brokers`."""
        return int(self.bootstrap_servers[0].rpartition(":")[2])

    def topic(self, name: TopicName) -> str:
        """The full name of one of RunLedger's topics, e.g. ``runledger.ledger``."""
        if name not in get_args(TopicName):
            raise ValueError(f"unknown topic {name!r}; expected one of {get_args(TopicName)}")
        return f"{self.topic_prefix}{name}"

    def topic_names(self) -> dict[TopicName, str]:
        """Every RunLedger topic: short name -> full name."""
        names: tuple[TopicName, ...] = get_args(TopicName)
        return {name: self.topic(name) for name in names}

    @property
    def api_base_url(self) -> str | None:
        """The api's URL clients use (`api_url` resolved), or None for ``off``."""
        if self.api_url == "off":
            return None
        if self.api_url != "auto":
            return self.api_url
        host = "127.0.0.1" if self.web_host in ("0.0.0.0", "", "::") else self.web_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.web_port}"

    @property
    def exactly_once(self) -> bool:
        """True when the ledger writes transactionally and readers read committed records."""
        return self.processing_guarantee == "exactly_once"

    @property
    def isolation_level(self) -> Literal["read_committed", "read_uncommitted"]:
        """What every consumer of `ledger` and `work` reads: committed records only, when
        the ledger writes transactions (an aborted write must never be seen)."""
        return "read_committed" if self.exactly_once else "read_uncommitted"

    def environment(self) -> dict[str, str]:
        """Every setting as the ``RUNLEDGER_*`` variables that give it back to a child
        process (lists comma-separated, secrets in clear: the child needs them).
        Unset optional settings are left out, so the child keeps their defaults."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"RUNLEDGER_{name.upper()}"] = str(value)
        return env

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients (producer, consumer, admin).

        Use as ``AIOKafkaProducer(bootstrap_servers=s.brokers, **s.kafka_client_kwargs())``.
        """
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            cafile = None if self.ssl_cafile is None else str(self.ssl_cafile)
            kwargs["ssl_context"] = create_ssl_context(cafile=cafile)
        if self.security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_username is not None:
                kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs


_PREFIX = "RUNLEDGER_"


def unknown_variables(environ: Mapping[str, str]) -> None:
    """Raise ValueError naming every ``RUNLEDGER_*`` variable no setting reads.

    Each is listed with the nearest known name, so ``RUNLEDGER_HEARTBEAT_TIMEOUT``
    is reported as a typo of ``RUNLEDGER_HEARTBEAT_TIMEOUT_S`` rather than ignored.
    """
    known = {f"{_PREFIX}{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(
        key.upper()
        for key in environ
        if key.upper().startswith(_PREFIX) and key.upper() not in known | _NOT_SETTINGS
    )
    if not unknown:
        return
    parts = []
    for name in unknown:
        near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.0)
        parts.append(f"{name} (did you mean {near[0]}?)" if near else name)
    raise ValueError("unknown RUNLEDGER_* environment variables: " + ", ".join(parts))


_NOT_SETTINGS = frozenset({"RUNLEDGER_SIM_SEEDS", "RUNLEDGER_GOLDEN_DIR"})
"""RUNLEDGER_* variables read by something other than `Settings` (the test suite)."""
