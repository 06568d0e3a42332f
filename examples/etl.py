"""A small extract-transform-load flow: the one docs/events.md submits as plain JSON.

`extract` makes `limit` records for `day`, `transform` is mapped over them (one
task run per record), and `load` reduces the mapped results into a summary.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from engine import Flow, Parameter, task


@task
def extract(day: str, limit: int) -> list[dict[str, Any]]:
    return [{"day": day, "id": i, "amount": (i * 37) % 101} for i in range(int(limit))]


@task(max_retries=2, retry_delay=timedelta(seconds=1))
def transform(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "amount_eur": round(record["amount"] * 0.92, 2)}


@task
def load(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": len(rows), "total_eur": round(sum(r["amount_eur"] for r in rows), 2)}


with Flow("etl") as flow:
    day = Parameter("day", default="2024-04-30")
    limit = Parameter("limit", default=10)
    load(transform.map(extract(day, limit)))
