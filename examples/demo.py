"""The flow `runledger demo` runs: it maps over inputs, retries once and hits a cache.

- `square` is mapped over the numbers 1..n: one task run per element.
- `flaky_total` fails on its first attempt and succeeds on the retry
  (max_retries=1, retry_delay=1s: the ledger's scheduler makes the retry due).
- `reference_data` caches its result for an hour (cache_for): the first run computes
  it, a second run of the flow in the same worker reuses it (a Cached state without
  a Running one: the body did not run again).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from engine import Flow, Parameter, context, task


@task
def numbers(n: int) -> list[int]:
    return list(range(1, int(n) + 1))


@task
def square(x: int) -> int:
    time.sleep(0.1)  # slow enough to watch
    return x * x


@task(max_retries=1, retry_delay=timedelta(seconds=1))
def flaky_total(squares: list[int]) -> int:
    if context.get("task_run_count", 1) < 2:
        raise RuntimeError("simulated transient failure on the first attempt")
    return sum(squares)


@task(cache_for=timedelta(hours=1))
def reference_data() -> dict[str, Any]:
    time.sleep(0.3)  # an expensive lookup, worth caching
    return {"unit": "m²", "computed_at": datetime.now(UTC).strftime("%H:%M:%S.%f")}


@task
def report(total: int, reference: dict[str, Any]) -> str:
    unit, computed_at = reference["unit"], reference["computed_at"]
    return f"sum of squares = {total} {unit} (reference data computed at {computed_at})"


with Flow("demo") as flow:
    n = Parameter("n", default=5)
    squares = square.map(numbers(n))
    report(flaky_total(squares), reference_data())
