"""Role processes freeze their start-up heap, so full collections stay short."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import services.roles.app
from services.client.dev import serve_roles
from services.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def test_freezing_moves_the_start_up_heap_out_of_the_collectors_way() -> None:
    """In a fresh interpreter (freezing pytest's own heap would change other tests)."""
    script = (
        "import gc; import services.roles.app as app; "
        "before = gc.get_freeze_count(); app.freeze_startup_heap(); "
        "print(before, gc.get_freeze_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    before, after = map(int, out.stdout.split())
    assert before == 0
    assert after > 10_000  # modules, classes and functions of the roles and their libraries


@pytest.fixture
def roles_that_start_at_once(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """run_roles replaced by one that reports started and returns; freezes are noted."""
    calls: list[str] = []

    async def run_roles(
        settings: Settings, roles: Any, stop_event: Any = None, **options: Any
    ) -> None:
        calls.append("started")
        options["on_started"](SimpleNamespace(ledger=None))

    monkeypatch.setattr(services.roles.app, "run_roles", run_roles)
    monkeypatch.setattr(services.roles.app, "freeze_startup_heap", lambda: calls.append("frozen"))
    return calls


def test_serve_roles_freezes_once_the_roles_run(
    roles_that_start_at_once: list[str], tmp_path: Path
) -> None:
    told: list[str] = []
    serve_roles(Settings(data_dir=tmp_path), ["api"], on_started=lambda: told.append("told"))
    assert roles_that_start_at_once == ["started", "frozen"]
    assert told == ["told"]


def test_python_m_services_app_freezes_once_the_roles_run(
    roles_that_start_at_once: list[str], tmp_path: Path
) -> None:
    args = argparse.Namespace(roles="api", name=None, dump_views=None)
    asyncio.run(services.roles.app._serve(args, Settings(data_dir=tmp_path)))
    assert roles_that_start_at_once == ["started", "frozen"]
