"""The events package stays pure: no Kafka clients, no engine internals, no clock."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "events"
SOURCES = sorted(PACKAGE.rglob("*.py"))
WALL_CLOCK = re.compile(
    r"\b(datetime\.(now|utcnow|today)|date\.today|time\.(time|time_ns|monotonic|"
    r"perf_counter|localtime|gmtime)|pendulum\.(now|today|yesterday|tomorrow))\b"
)


def test_the_package_has_sources() -> None:
    """The scan below really looks at the package."""
    assert PACKAGE / "__init__.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_events_imports_neither_faust_nor_aiokafka(path: Path) -> None:
    """No Kafka client library may be imported by the contract."""
    text = path.read_text(encoding="utf-8")
    assert "import faust" not in text
    assert "from faust" not in text
    assert "aiokafka" not in text


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_events_imports_nothing_from_engine_but_the_version(path: Path) -> None:
    """engine.version is the only engine module the contract may use."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            if name == "engine" or name.startswith("engine."):
                assert name == "engine.version", f"{path.name} imports {name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_events_never_reads_the_wall_clock(path: Path) -> None:
    """Time is always passed in; nothing here asks the clock."""
    found = [m.group(0) for m in WALL_CLOCK.finditer(path.read_text(encoding="utf-8"))]
    assert not found, f"{path.name} reads the clock: {found}"
