"""The embedded Kafka's pieces that need no broker: cluster ids and the pinned release."""

from __future__ import annotations

import base64
import uuid

import pytest

from services.kafka import apache


def test_a_cluster_id_never_starts_with_a_dash_even_when_the_bytes_would_make_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The storage tool would read "-..." as an option (seen once in CI): draw again."""
    dashed = uuid.UUID(bytes=base64.urlsafe_b64decode("-" + "A" * 21 + "=="))
    plain = uuid.UUID(int=1)
    draws = iter([dashed, plain])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    found = apache.cluster_id()
    assert not found.startswith("-")
    assert found == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")


def test_a_cluster_id_is_22_url_safe_characters() -> None:
    found = apache.cluster_id()
    assert len(found) == 22
    assert set(found) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_the_pinned_kafka_release_is_read_from_the_maven_project() -> None:
    assert apache.kafka_version() == "4.4.0"
