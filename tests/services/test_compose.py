"""docker-compose.yml (the production topology) agrees with the settings model.

No Docker engine runs here, so the file is parsed and checked: Kafka in KRaft mode,
every app service configured only through valid RUNLEDGER_* variables, consistent
topic prefix and brokers, two workers, an API and a UI, host ports on loopback only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.client.cli import build_parser
from services.kafka.apache import kafka_version
from services.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_PREFIX = "RUNLEDGER_"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


def interpolate(value: str, environment: Mapping[str, str]) -> str:
    """Resolve compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        current = environment.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if unset_or_empty else current or ""
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"compose would refuse to start: {name}: {arg}")
            return current or ""
        return current or ""

    return _VARIABLE.sub(replace, value)


def _load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


COMPOSE = _load()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = sorted(
    name for name, spec in SERVICES.items() if spec.get("command", [None])[0] == "runledger"
)


def _env(service: str, environment: Mapping[str, str] | None = None) -> dict[str, str]:
    raw = SERVICES[service].get("environment", {})
    assert isinstance(raw, dict), f"{service}: use the mapping form for environment"
    return {key: interpolate(str(value), environment or {}) for key, value in raw.items()}


def _kafka_listener(kafka_env: Mapping[str, str], name: str) -> str:
    for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        listener_name, _, address = listener.partition("://")
        if listener_name == name:
            return address
    raise AssertionError(f"no advertised listener {name}")


def test_the_expected_services_exist() -> None:
    """Kafka, a ledger, two workers, an API and a Kafka UI."""
    commands = {name: SERVICES[name]["command"][1] for name in APP_SERVICES}
    assert sorted(commands.values()) == ["api", "ledger", "worker", "worker"]
    assert "kafka" in SERVICES
    ui = [name for name, spec in SERVICES.items() if "kafka-ui" in spec.get("image", "")]
    assert len(ui) == 1


def test_kafka_runs_in_kraft_mode_without_zookeeper() -> None:
    """The official Apache Kafka image acts as its own controller; nothing uses ZooKeeper."""
    kafka = SERVICES["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version()}"  # the release dev runs
    env = _env("kafka")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["CLUSTER_ID"]
    for name, spec in SERVICES.items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(spec.get("image", "")).lower()
        assert not any("ZOOKEEPER" in key for key in spec.get("environment", {}))


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_are_configured_only_by_settings_fields(service: str) -> None:
    """Every variable of an app service is RUNLEDGER_<field> of services.settings.Settings."""
    fields = set(Settings.model_fields)
    for key in _env(service):
        assert key.startswith(ENV_PREFIX), f"{service}: {key} is not a RUNLEDGER_ variable"
        assert key[len(ENV_PREFIX) :].lower() in fields, f"{service}: {key} is not a setting"


@pytest.mark.parametrize("signing_key", [None, "0123456789abcdef0123456789abcdef"])
@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_service_environment_validates_through_settings(
    service: str, signing_key: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's variables, set as compose would set them, make valid Settings."""
    host_env = {} if signing_key is None else {"RUNLEDGER_SIGNING_KEY": signing_key}
    for key, value in _env(service, host_env).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    if signing_key is None:
        assert settings.signing_key is None
    else:
        assert settings.signing_key is not None
        assert settings.signing_key.get_secret_value() == signing_key


def test_app_services_agree_on_brokers_topics_and_app_id() -> None:
    """All roles talk to the same Kafka, with the same topic prefix, as one app."""
    for key in ("BROKERS", "TOPIC_PREFIX", "APP_ID", "PARTITIONS", "RESULT_STORE_URL"):
        values = {_env(service).get(ENV_PREFIX + key) for service in APP_SERVICES}
        assert len(values) == 1, f"RUNLEDGER_{key} differs between services: {values}"
    settings = {name: Settings.model_validate(_settings_input(name)) for name in APP_SERVICES}
    kafka_env = _env("kafka")
    internal = _kafka_listener(kafka_env, kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"])
    for service, s in settings.items():
        assert s.bootstrap_servers == [internal], service
        assert s.topic("ledger") == "runledger.ledger"


def _settings_input(service: str) -> dict[str, str]:
    return {key[len(ENV_PREFIX) :].lower(): value for key, value in _env(service).items()}


def test_the_ui_watches_the_same_kafka() -> None:
    """The Kafka UI's bootstrap servers are the app's brokers."""
    (ui,) = (name for name, spec in SERVICES.items() if "kafka-ui" in spec.get("image", ""))
    ui_env = _env(ui)
    assert ui_env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == _env("ledger")["RUNLEDGER_BROKERS"]


def test_two_workers_with_matching_concurrency() -> None:
    """Two worker services; the --concurrency flag equals RUNLEDGER_WORKER_CONCURRENCY."""
    workers = [name for name in APP_SERVICES if SERVICES[name]["command"][1] == "worker"]
    assert len(workers) == 2
    for worker in workers:
        command = SERVICES[worker]["command"]
        concurrency = command[command.index("--concurrency") + 1]
        assert _env(worker)["RUNLEDGER_WORKER_CONCURRENCY"] == concurrency


def test_the_api_listens_in_its_container_and_is_published_on_host_loopback() -> None:
    """RUNLEDGER_WEB_HOST=0.0.0.0 inside the container; the host port binds 127.0.0.1."""
    (api,) = (name for name in APP_SERVICES if SERVICES[name]["command"][1] == "api")
    env = _env(api)
    assert env["RUNLEDGER_WEB_HOST"] == "0.0.0.0"
    port = env["RUNLEDGER_WEB_PORT"]
    assert f"127.0.0.1:{port}:{port}" in SERVICES[api]["ports"]
    for name in APP_SERVICES:
        if name != api:
            assert "RUNLEDGER_WEB_HOST" not in _env(name), f"{name} must keep the loopback default"


def test_published_ports_bind_host_loopback_only() -> None:
    """No service is reachable from other machines through a published port."""
    for name, spec in SERVICES.items():
        for mapping in spec.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping}"


def test_app_services_share_one_image_built_from_the_dockerfile() -> None:
    """ledger, workers and api run the same image, built from python:3.11-slim."""
    images = {SERVICES[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        dockerfile = REPO_ROOT / SERVICES[name]["build"]["dockerfile"]
        assert dockerfile.is_file()
    dockerfile_text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile_text, re.MULTILINE)
    assert "pip install" in dockerfile_text


def test_app_services_share_the_result_store_volume() -> None:
    """A file:// result store must be on a volume every role mounts."""
    for name in APP_SERVICES:
        url = _env(name)["RUNLEDGER_RESULT_STORE_URL"]
        data_dir = _env(name)["RUNLEDGER_DATA_DIR"]
        assert url.startswith(f"file://{data_dir}/")
        assert any(volume.endswith(f":{data_dir}") for volume in SERVICES[name]["volumes"])


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_commands_are_runledger_subcommands(service: str) -> None:
    """Each app service's command parses with the real `runledger` argument parser."""
    build_parser().parse_args(SERVICES[service]["command"][1:])


@pytest.mark.parametrize(
    ("text", "environment", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("$${A}", {"A": "1"}, "${A}"),
        ("${A:?set A}", {"A": "2"}, "2"),
    ],
)
def test_interpolation_helper(text: str, environment: dict[str, str], expected: str) -> None:
    """The test's compose interpolation follows compose's rules."""
    assert interpolate(text, environment) == expected


def test_interpolation_helper_reports_required_variables() -> None:
    """``${VAR:?msg}`` with VAR unset is an error, as in compose."""
    with pytest.raises(ValueError, match="set A"):
        interpolate("${A:?set A}", {})
