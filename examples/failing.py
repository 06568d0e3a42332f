"""A flow that fails: a task raises, its downstream task is TriggerFailed.

`runledger run examples.failing:flow` exits non-zero; the ledger records why.
`cleanup` runs anyway (trigger `always_run`), like a finally block.
"""

from __future__ import annotations

from engine import Flow, task, triggers


@task
def fetch() -> int:
    return 41


@task
def divide(value: int) -> float:
    raise ZeroDivisionError(f"cannot divide {value} by zero")


@task
def publish(value: float) -> str:
    return f"published {value}"


@task(trigger=triggers.always_run)
def cleanup() -> str:
    return "cleaned up"


with Flow("failing") as flow:
    quotient = divide(fetch())
    published = publish(quotient)
    cleanup(upstream_tasks=[published])
    flow.set_reference_tasks([published])
