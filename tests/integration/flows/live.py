"""Flows registered at run time by in-process tests, imported by the services by path.

The golden scenarios build their flows in closures (counters, logs, prompts) that
the test must observe, so the flow objects cannot be pickled: a test sets them
here (`register`) and submits ``tests.integration.flows.live:<name>``, which the
in-process ledger and worker import (the module is under the default allowlist).
"""

from __future__ import annotations

import uuid
from typing import Any


def register(obj: Any, stem: str = "obj") -> str:
    """Make `obj` importable as ``tests.integration.flows.live:<name>``; returns that path."""
    name = f"{stem}_{uuid.uuid4().hex[:12]}"
    globals()[name] = obj
    return f"{__name__}:{name}"
