"""The faust App tuned for the embedded Tansu broker, as the broker tests use it.

It lives in `services.roles.app` (the roles' host); this module re-exports it for the
integration tests that prove it works (see services/roles/app.py for why each piece is
there: the consumer's fetch wait, the explicit options, ``env={}``).
"""

from __future__ import annotations

from services.roles.app import (
    LowLatencyConsumer,
    LowLatencyConsumerThread,
    LowLatencyTransport,
    RunLedgerFaustApp,
    faust_options,
)

__all__ = [
    "LowLatencyConsumer",
    "LowLatencyConsumerThread",
    "LowLatencyTransport",
    "RunLedgerFaustApp",
    "faust_options",
]
