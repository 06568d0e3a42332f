"""The worker's result store: small JSON results travel inside their reference.

With checkpointing on, every task run's result used to be written to its own
file (fsspec open, makedirs, write, close): for trivial bodies that was ~70 %
of a worker's CPU (py-spy, bench_services.py). A plain result (no Result type
chosen by the task or flow) whose value is small and round trips through JSON
unchanged is recorded as a `PrefectResult` instead: the JSON value is the
location, so the reference in the ledger event is self-contained, outlives the
worker like a file would, and hydrates without any I/O. Everything else
(larger values, pickled values, configured Result types) is written as before.
"""

from __future__ import annotations

from typing import Any

from engine.result_store import FSResultStore
from engine.results import PrefectResult, Result, _is_plain_json, result_to_blob

__all__ = ["INLINE_LIMIT", "WorkerResultStore"]

INLINE_LIMIT = 512
"""Largest JSON encoding (bytes) of a result value kept in its reference."""


class WorkerResultStore(FSResultStore):
    """An `FSResultStore` that keeps small plain JSON values self-contained."""

    def persist(self, result: Result, key: str) -> dict[str, Any]:
        if type(result) is Result and result.location is None and _is_plain_json(result.value):
            inline = PrefectResult().write(result.value)
            if (inline.size or 0) <= INLINE_LIMIT:
                return result_to_blob(inline)
        return super().persist(result, key)
