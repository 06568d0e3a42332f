"""An admin client that can also send IncrementalAlterConfigs (KIP-339), which aiokafka lacks.

`AlterConfigs`, the only config change aiokafka 0.14 sends, replaces *all* of a
topic's overrides, and the embedded broker (Tansu) does not implement it at all.
`IncrementalAlterConfigs` (Kafka >= 2.3) sets just the named keys and Tansu
implements it, so topic reconciliation uses it first (services/kafka/topics.py) and
falls back to `AlterConfigs` for a broker without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

__all__ = ["OP_SET", "IncrementalAlterConfigsRequest", "RunLedgerAdmin"]

OP_SET = 0
"""IncrementalAlterConfigs operation: set the key to the value (1 deletes, 2/3 append/subtract)."""

_API_KEY = 44


class IncrementalAlterConfigsResponse_v0(Response):  # type: ignore[misc]  # untyped base
    API_KEY = _API_KEY
    API_VERSION = 0
    # Kafka names the array "responses"; "resources" matches aiokafka's AlterConfigs
    # answers, so one parser reads both (services/kafka/topics.py).
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "resources",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
            ),
        ),
    )


class IncrementalAlterConfigsRequest_v0(RequestStruct):  # type: ignore[misc]  # untyped base
    API_KEY = _API_KEY
    API_VERSION = 0
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                (
                    "configs",
                    Array(
                        ("name", String("utf-8")),
                        ("config_operation", Int8),
                        ("value", String("utf-8")),
                    ),
                ),
            ),
        ),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigsRequest(Request[IncrementalAlterConfigsRequest_v0]):  # type: ignore[misc]
    """Set the given keys of each (resource type, name); other keys are left alone."""

    API_KEY = _API_KEY

    def __init__(self, resources: Iterable[tuple[int, str, Mapping[str, str]]]) -> None:
        self._resources = [
            (kind, name, [(key, OP_SET, value) for key, value in configs.items()])
            for kind, name, configs in resources
        ]

    def build(
        self, request_struct_class: type[IncrementalAlterConfigsRequest_v0]
    ) -> IncrementalAlterConfigsRequest_v0:
        return request_struct_class(self._resources, False)


class RunLedgerAdmin(AIOKafkaAdminClient):  # type: ignore[misc]  # aiokafka is untyped
    """`AIOKafkaAdminClient` plus `incremental_alter_configs`."""

    async def incremental_alter_configs(
        self, resources: Iterable[tuple[int, str, Mapping[str, str]]]
    ) -> list[Any]:
        """Set keys of topic (or broker-wide) configs; the answers, as `alter_configs` gives.

        `IncompatibleBrokerVersion` when the broker does not offer the API.
        """
        # A topic's configs may be changed through any broker (as aiokafka's
        # alter_configs does for topic resources).
        response = await self._send_request(IncrementalAlterConfigsRequest(resources))
        return [response]
