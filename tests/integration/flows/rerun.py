"""A flow that fails once, for re-runs: prepare succeeds, flaky fails until allowed."""

from __future__ import annotations

from pathlib import Path

from engine import Flow, Parameter, task


@task
def prepare(out_dir: str) -> int:
    """Counts its runs in out_dir/prepare.runs (one line per run of its body)."""
    with (Path(out_dir) / "prepare.runs").open("a", encoding="utf-8") as runs:
        runs.write("ran\n")
    return 21


@task
def flaky(x: int, out_dir: str) -> int:
    """Fails until out_dir/allow exists."""
    if not (Path(out_dir) / "allow").exists():
        raise RuntimeError("not allowed yet")
    return x * 2


@task
def report(y: int) -> str:
    return f"report {y}"


with Flow("rerun") as flow:
    out_dir = Parameter("out_dir")
    report(flaky(prepare(out_dir), out_dir))
