"""faust gets the Kafka security settings our own aiokafka clients get (no broker needed).

faust turns `broker_credentials` into aiokafka keyword arguments with its own
`credentials_to_aiokafka_auth`; these tests run that function on what the App
received and compare the result with `Settings.kafka_client_kwargs()`.
"""

from __future__ import annotations

import inspect
import logging
import ssl
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import Producer as FaustKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from services.roles.app import build_app, faust_credentials, faust_options
from services.settings import Settings

PASSWORD = "s3cret-Pa55word-never-printed"

#: A self-signed CA certificate (no key kept) to prove ssl_cafile reaches faust.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBkDCCATWgAwIBAgIUbOTqFnCQ3vmMKihd682T9F0NKigwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRUnVuTGVkZ2VyIHRlc3QgQ0EwIBcNMjYxMjAxMjEzOTQ3WhgP
MjEyNjExMDcyMTM5NDdaMBwxGjAYBgNVBAMMEVJ1bkxlZGdlciB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEgygG8ma6JorrH/Fkj+2qWmG320OP3KNE
N+/sqxcBNPyRcfGSR3FOPYVRaxN98XD0eY1+INjLhC0w+uEuaBv0+qNTMFEwHQYD
VR0OBBYEFHN2N1lfBwBaRwuJshft6CbssItnMB8GA1UdIwQYMBaAFHN2N1lfBwBa
RwuJshft6CbssItnMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIh
AMoMAYHn4JSyq1LbGtlgzk8A0ZQMGN25CLvO1ke5oJYUAiEA0lVoyIy0eqhp1sAc
4FF2FUe4djPhZSC3EGVoWWMQ1hQ=
-----END CERTIFICATE-----
"""

SECURED: dict[str, dict[str, Any]] = {
    "ssl": {"security_protocol": "SSL"},
    "sasl-plain": {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "runledger",
        "sasl_password": PASSWORD,
    },
    "scram-256": {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_username": "runledger",
        "sasl_password": PASSWORD,
    },
    "scram-512-over-ssl": {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "runledger",
        "sasl_password": PASSWORD,
    },
    "gssapi": {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"},
    "gssapi-over-ssl": {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"},
}
EVERY_PROTOCOL = {"plaintext": {"security_protocol": "PLAINTEXT"}, **SECURED}
WITH_PASSWORD = [name for name, fields in SECURED.items() if "sasl_password" in fields]

_AIOKAFKA_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(AIOKafkaProducer).parameters.items()
}


def _settings(fields: dict[str, Any]) -> Settings:
    return Settings(brokers="kafka-1:9093", **fields)


def _faust_derived(settings: Settings) -> dict[str, Any]:
    """The aiokafka auth kwargs faust derives from what a built App was configured with."""
    conf = build_app(settings, roles=()).conf
    return dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))


def _comparable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs with the ssl context replaced by whether there is one."""
    rest = {key: value for key, value in kwargs.items() if key != "ssl_context"}
    return {**rest, "ssl_context": isinstance(kwargs.get("ssl_context"), ssl.SSLContext)}


def test_plaintext_passes_no_credentials_to_faust() -> None:
    assert "broker_credentials" not in faust_options(_settings({}))
    assert faust_credentials(_settings({"security_protocol": "PLAINTEXT"})) is None


def test_ssl_gives_faust_ssl_credentials_with_a_context() -> None:
    credentials = faust_options(_settings(SECURED["ssl"]))["broker_credentials"]
    assert isinstance(credentials, SSLCredentials)
    assert isinstance(credentials.context, ssl.SSLContext)
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("case", ["sasl-plain", "scram-256", "scram-512-over-ssl"])
def test_sasl_with_a_password_gives_faust_sasl_credentials(case: str) -> None:
    fields = SECURED[case]
    credentials = faust_options(_settings(fields))["broker_credentials"]
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol.value == fields["security_protocol"]
    assert credentials.mechanism.value == fields["sasl_mechanism"]
    assert (credentials.username, credentials.password) == ("runledger", PASSWORD)
    over_ssl = fields["security_protocol"] == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext) is over_ssl


@pytest.mark.parametrize("case", ["gssapi", "gssapi-over-ssl"])
def test_gssapi_gives_faust_gssapi_credentials_for_the_kafka_service(case: str) -> None:
    fields = SECURED[case]
    credentials = faust_options(_settings(fields))["broker_credentials"]
    assert isinstance(credentials, GSSAPICredentials)
    assert credentials.protocol.value == fields["security_protocol"]
    assert credentials.kerberos_service_name == "kafka"


def test_oauthbearer_is_refused_because_no_setting_can_supply_a_token_provider() -> None:
    settings = _settings({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"})
    with pytest.raises(ValueError, match="OAUTHBEARER needs a token provider"):
        faust_options(settings)


@pytest.mark.parametrize("case", sorted(EVERY_PROTOCOL))
def test_faust_derives_the_same_aiokafka_auth_kwargs_as_our_own_clients_get(case: str) -> None:
    """Keys only faust sets (GSSAPI's kerberos names) hold aiokafka's own defaults."""
    settings = _settings(EVERY_PROTOCOL[case])
    ours = _comparable(settings.kafka_client_kwargs())
    faust_side = _comparable(_faust_derived(settings))
    assert {key: faust_side[key] for key in ours} == ours
    extra = {key: value for key, value in faust_side.items() if key not in ours}
    assert extra == {key: _AIOKAFKA_DEFAULTS[key] for key in extra}


async def test_faust_s_producer_connects_with_the_same_auth_as_our_clients() -> None:
    settings = _settings(SECURED["scram-512-over-ssl"])
    producer = cast(FaustKafkaProducer, build_app(settings, roles=()).producer)
    producer_auth = producer._settings_auth()
    assert _comparable(dict(producer_auth)) == _comparable(settings.kafka_client_kwargs())


def test_the_configured_ca_file_reaches_faust_s_ssl_context(tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    cafile.write_text(TEST_CA_PEM)
    settings = _settings({**SECURED["scram-512-over-ssl"], "ssl_cafile": cafile})
    context = _faust_derived(settings)["ssl_context"]
    [ca] = context.get_ca_certs()
    assert ca["subject"] == ((("commonName", "RunLedger test CA"),),)


@pytest.mark.parametrize("case", WITH_PASSWORD)
def test_the_password_never_appears_in_the_repr_of_the_options_or_in_logs(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(SECURED[case])
    options = faust_options(settings)
    app = build_app(settings, roles=())
    shown = [repr(options), str(options), repr(app.conf), repr(app.conf.broker_credentials)]
    assert not [text for text in shown if PASSWORD in text]
    assert PASSWORD not in caplog.text
