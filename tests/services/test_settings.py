"""Settings: RUNLEDGER_* parsing, validation and the helpers other modules rely on."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from services.settings import Settings


def test_defaults_are_local_and_loopback() -> None:
    """Out of the box everything points at the embedded broker and binds 127.0.0.1."""
    settings = Settings()
    assert settings.brokers == "127.0.0.1:9092"
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.web_host == "127.0.0.1"
    assert settings.web_port == 6066
    assert settings.topic_prefix == "runledger."
    assert settings.partitions == 4
    assert settings.replication_factor == 1
    assert settings.flow_allowlist == ["examples", "tests"]
    assert settings.signing_key is None
    assert settings.fetch_max_wait_ms == 100
    assert settings.processing_guarantee == "exactly_once"
    assert settings.embedded_broker == "auto"
    assert settings.app_id == "runledger"


def test_every_field_is_documented() -> None:
    """Each field carries a description (from its attribute docstring)."""
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_environment_variables_use_the_runledger_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNLEDGER_<FIELD> sets a field, in any case; unprefixed names are ignored."""
    monkeypatch.setenv("RUNLEDGER_BROKERS", "kafka-1:9092,kafka-2:9093")
    monkeypatch.setenv("runledger_partitions", "12")
    monkeypatch.setenv("RUNLEDGER_HEARTBEAT_INTERVAL_S", "0.5")
    monkeypatch.setenv("PARTITIONS", "99")
    settings = Settings()
    assert settings.bootstrap_servers == ["kafka-1:9092", "kafka-2:9093"]
    assert settings.first_broker_port == 9092
    assert settings.partitions == 12
    assert settings.heartbeat_interval_s == 0.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("examples", ["examples"]),
        ("examples,myteam.flows", ["examples", "myteam.flows"]),
        (" examples , myteam.flows ,", ["examples", "myteam.flows"]),
        ('["a.b", "c"]', ["a.b", "c"]),
        ("", []),
    ],
)
def test_flow_allowlist_accepts_comma_separated_or_json(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    """A list setting is written ``a,b`` in the environment (JSON also works)."""
    monkeypatch.setenv("RUNLEDGER_FLOW_ALLOWLIST", raw)
    assert Settings().flow_allowlist == expected


def test_flow_allowlist_rejects_non_module_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries must be dotted module names, e.g. not paths."""
    monkeypatch.setenv("RUNLEDGER_FLOW_ALLOWLIST", "examples,../evil")
    with pytest.raises(ValidationError, match="module prefix"):
        Settings()


def test_secrets_are_not_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing key and SASL password never appear when settings are printed."""
    monkeypatch.setenv("RUNLEDGER_SIGNING_KEY", "top-secret-key")
    monkeypatch.setenv("RUNLEDGER_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("RUNLEDGER_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("RUNLEDGER_SASL_USERNAME", "svc")
    monkeypatch.setenv("RUNLEDGER_SASL_PASSWORD", "hunter2")
    settings = Settings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "top-secret-key" not in text
        assert "hunter2" not in text
    assert settings.signing_key is not None
    assert settings.signing_key.get_secret_value() == "top-secret-key"


def test_an_empty_secret_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RUNLEDGER_SIGNING_KEY=`` (e.g. from compose) disables signing instead of an empty key."""
    monkeypatch.setenv("RUNLEDGER_SIGNING_KEY", "")
    assert Settings().signing_key is None


def test_topic_names_carry_the_prefix() -> None:
    """Each topic is the prefix plus its short name."""
    settings = Settings(topic_prefix="acme.rl.")
    assert settings.topic("commands") == "acme.rl.commands"
    assert settings.topic_names() == {
        "commands": "acme.rl.commands",
        "ledger": "acme.rl.ledger",
        "work": "acme.rl.work",
        "deadletter": "acme.rl.deadletter",
        "snapshots": "acme.rl.snapshots",
    }


def test_unknown_topic_is_an_error() -> None:
    """A typo in a topic name fails loudly instead of creating a new topic."""
    with pytest.raises(ValueError, match="unknown topic"):
        Settings().topic("legder")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["run ledger.", "runledger/", "rünledger."])
def test_topic_prefix_must_be_a_legal_topic_name(prefix: str) -> None:
    """Kafka topic names allow ASCII letters, digits, '.', '_' and '-' only."""
    with pytest.raises(ValidationError, match="topic_prefix"):
        Settings(topic_prefix=prefix)


def test_result_store_url_defaults_under_the_data_dir(tmp_path: Path) -> None:
    """The default result store is ``file://<absolute data dir>/results``."""
    settings = Settings(data_dir=tmp_path / "state")
    assert settings.result_store_url == f"file://{tmp_path}/state/results"


def test_relative_data_dir_gives_an_absolute_result_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative data dir is resolved against the working directory."""
    monkeypatch.chdir(tmp_path)
    assert Settings().result_store_url == f"file://{tmp_path}/.runledger/results"


def test_explicit_result_store_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any fsspec URL may be configured."""
    monkeypatch.setenv("RUNLEDGER_RESULT_STORE_URL", "s3://bucket/runledger")
    assert Settings().result_store_url == "s3://bucket/runledger"


def test_result_store_url_must_be_a_url() -> None:
    """A bare path is refused (it would be ambiguous across machines)."""
    with pytest.raises(ValidationError, match="not a URL"):
        Settings(result_store_url="/tmp/results")


@pytest.mark.parametrize(
    "brokers", ["", "kafka", "kafka:", ":9092", "kafka:port", "kafka:70000", "a:1,,b"]
)
def test_malformed_brokers_are_refused(brokers: str) -> None:
    """Every broker entry must be host:port."""
    with pytest.raises(ValidationError, match="brokers"):
        Settings(brokers=brokers)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partitions", 0),
        ("replication_factor", 0),
        ("worker_concurrency", 0),
        ("web_port", 70000),
        ("fetch_max_wait_ms", -1),
        ("heartbeat_interval_s", 0),
    ],
)
def test_out_of_range_numbers_are_refused(field: str, value: int) -> None:
    """Counts, ports and durations are range-checked."""
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({field: value})


def test_heartbeat_timeout_must_exceed_the_interval() -> None:
    """A timeout shorter than the interval would declare every running task lost."""
    with pytest.raises(ValidationError, match="heartbeat_timeout_s"):
        Settings(heartbeat_interval_s=10, heartbeat_timeout_s=5)


def test_unknown_fields_are_refused() -> None:
    """A misspelt keyword is an error, not silently ignored."""
    with pytest.raises(ValidationError, match="partitons"):
        Settings.model_validate({"partitons": 3})


def test_settings_are_immutable() -> None:
    """One configuration per process: fields cannot be reassigned."""
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.partitions = 8  # type: ignore[misc]


def test_plaintext_kafka_kwargs() -> None:
    """PLAINTEXT needs nothing but the protocol."""
    assert Settings().kafka_client_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_kafka_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    """SASL_SSL yields aiokafka's mechanism, credentials and an SSL context."""
    monkeypatch.setenv("RUNLEDGER_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RUNLEDGER_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RUNLEDGER_SASL_USERNAME", "svc")
    monkeypatch.setenv("RUNLEDGER_SASL_PASSWORD", "hunter2")
    kwargs = Settings().kafka_client_kwargs()
    assert isinstance(kwargs.pop("ssl_context"), ssl.SSLContext)
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "hunter2",
    }


def test_ssl_kafka_kwargs_use_the_configured_ca(tmp_path: Path) -> None:
    """SSL builds a context from ssl_cafile; a missing file is reported."""
    settings = Settings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(FileNotFoundError):
        settings.kafka_client_kwargs()
    default_ca = Settings(security_protocol="SSL").kafka_client_kwargs()
    assert isinstance(default_ca["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("mechanism", [None, "PLAIN"])
def test_sasl_requires_mechanism_and_credentials(mechanism: str | None) -> None:
    """SASL without a mechanism, or PLAIN without a password, is refused."""
    with pytest.raises(ValidationError, match="requires"):
        Settings.model_validate(
            {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism, "sasl_username": "u"}
        )


def test_security_protocol_is_restricted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only Kafka's four protocols are accepted."""
    monkeypatch.setenv("RUNLEDGER_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ValidationError, match="security_protocol"):
        Settings()


def test_unknown_runledger_variables_fail_with_their_names_and_the_nearest_known_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A typo must not silently leave the default in place."""
    monkeypatch.setenv("RUNLEDGER_HEARTBEAT_TIMEOUT", "60")
    monkeypatch.setenv("RUNLEDGER_BROKER", "kafka:9092")
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = str(raised.value)
    assert "RUNLEDGER_BROKER (did you mean RUNLEDGER_BROKERS?)" in message
    assert "RUNLEDGER_HEARTBEAT_TIMEOUT (did you mean RUNLEDGER_HEARTBEAT_TIMEOUT_S?)" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RUNLEDGER_FETCH_MAX_WAIT_MS", "10000000"),
        ("RUNLEDGER_FETCH_MAX_WAIT_MS", "-1"),
        ("RUNLEDGER_HEARTBEAT_TIMEOUT_S", "inf"),
        ("RUNLEDGER_HEARTBEAT_TIMEOUT_S", "nan"),
        ("RUNLEDGER_HEARTBEAT_INTERVAL_S", "inf"),
        ("RUNLEDGER_SESSION_TIMEOUT_MS", "99999999999"),
    ],
)
def test_waits_and_timeouts_are_bounded_and_finite(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A huge fetch wait hung the ledger until SIGKILL; an infinite timeout disables
    lost-attempt detection. Both are refused at start."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


def test_pickled_flow_schemes_default_to_file_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().pickled_flow_schemes == ["file", "memory"]
    monkeypatch.setenv("RUNLEDGER_PICKLED_FLOW_SCHEMES", "file,S3")
    assert Settings().pickled_flow_schemes == ["file", "s3"]


def test_environment_gives_every_setting_back_to_a_child_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Settings built from `environment()` equal the originals, lists and secrets included."""
    original = Settings(
        brokers="kafka-1:9092,kafka-2:9093",
        data_dir=tmp_path,
        flow_allowlist=["examples", "myteam.flows"],
        signing_key=SecretStr("s3cret"),
        worker_await_claims=True,
        heartbeat_interval_s=0.5,
        processing_guarantee="at_least_once",
    )
    env = original.environment()
    assert env["RUNLEDGER_FLOW_ALLOWLIST"] == "examples,myteam.flows"
    assert env["RUNLEDGER_SIGNING_KEY"] == "s3cret"
    assert "RUNLEDGER_SASL_PASSWORD" not in env  # unset: the child keeps the default
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == original
