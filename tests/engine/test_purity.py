"""engine/ and events/ stay pure: no Kafka client library, and no wall-clock reads.

The only sanctioned clock reader is engine/clock.py (SystemClock), used by the
shells as a default; everything else gets time passed in.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "events")
SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in SOURCES
)
FORBIDDEN_LIBRARIES = ("faust", "aiokafka")
CLOCK_READERS = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "time.perf_counter_ns",
        "time.localtime",
        "time.gmtime",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
        "pendulum.now",
        "pendulum.today",
        "pendulum.tomorrow",
        "pendulum.yesterday",
        "pendulum.DateTime.now",
        "pendulum.DateTime.today",
        "pendulum.DateTime.utcnow",
        "pendulum.Date.today",
        "uuid.uuid1",
    }
)
SANCTIONED = {ROOT / "engine" / "clock.py"}


def _qualified(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The dotted name an attribute chain or name refers to, through import aliases."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def clock_reads(source: str) -> list[tuple[int, str]]:
    """(line, name) of every reference to a wall-clock reader in `source`.

    Imports are followed (`from time import monotonic as m`, `import datetime as
    dt`, `from datetime import datetime`), and references count whether or not
    they are called (`default_factory=datetime.now` reads the clock too).
    """
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = name
                if name in CLOCK_READERS:
                    found.append((node.lineno, name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Name) and isinstance(node.ctx, ast.Load):
            qualified = _qualified(node, aliases)
            if qualified in CLOCK_READERS:
                found.append((node.lineno, qualified))
    return sorted(set(found))


def test_the_scan_covers_both_packages() -> None:
    """The lists below really hold the packages' modules."""
    assert "engine.task_runner" in MODULES
    assert "engine.orchestration.decide" in MODULES
    assert "events.codec" in MODULES
    assert "engine" in MODULES
    assert len(SOURCES) == len(MODULES) > 30


@pytest.mark.parametrize(
    "snippet",
    [
        "import time\ntime.time()",
        "import time as t\nt.monotonic()",
        "from time import perf_counter\nperf_counter()",
        "from time import monotonic as m\nm()",
        "import datetime\ndatetime.datetime.now()",
        "import datetime as dt\ndt.datetime.utcnow()",
        "from datetime import datetime\ndatetime.now(UTC)",
        "from datetime import date\ndate.today()",
        "from datetime import datetime\nf = field(default_factory=datetime.now)",
        "import pendulum\npendulum.now('UTC')",
        "import pendulum\npendulum.DateTime.now()",
        "from pendulum import today\ntoday()",
        "import uuid\nuuid.uuid1()",
        "from uuid import uuid1\nuuid1()",
    ],
)
def test_the_clock_scan_finds_every_way_of_reading_the_clock(snippet: str) -> None:
    """The AST scan catches direct, aliased, from-imported and uncalled clock reads."""
    assert clock_reads(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "import time\ntime.sleep(1)",
        "from datetime import datetime, UTC\ndatetime(2024, 1, 1, tzinfo=UTC)",
        "import pendulum\npendulum.datetime(2024, 1, 1)",
        "import uuid\nuuid.uuid4()",
        "now = clock()\nnow.today = 3",
    ],
)
def test_the_clock_scan_ignores_what_does_not_read_the_clock(snippet: str) -> None:
    """Sleeping, building fixed datetimes and random ids are not clock reads."""
    assert clock_reads(snippet) == []


def test_only_engine_clock_reads_the_wall_clock() -> None:
    """Across engine/ and events/, the single module with clock reads is engine/clock.py."""
    readers = {
        path: reads for path in SOURCES if (reads := clock_reads(path.read_text(encoding="utf-8")))
    }
    assert set(readers) == SANCTIONED, {str(p.relative_to(ROOT)): r for p, r in readers.items()}


def test_engine_clock_reads_the_clock_only_inside_system_clock() -> None:
    """In engine/clock.py every clock read sits in the SystemClock class."""
    source = (ROOT / "engine" / "clock.py").read_text(encoding="utf-8")
    (system_clock,) = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "SystemClock"
    ]
    assert system_clock.end_lineno is not None
    body = range(system_clock.body[0].lineno, system_clock.end_lineno + 1)
    reads = clock_reads(source)
    assert reads
    assert [(line, name) for line, name in reads if line not in body] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_source_never_mentions_a_kafka_client_library(path: Path) -> None:
    """No import of faust or aiokafka, in any form, in engine/ or events/."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [m for m in imported if m.split(".")[0] in FORBIDDEN_LIBRARIES] == []
    text = path.read_text(encoding="utf-8")
    assert "aiokafka" not in text
    assert "import faust" not in text
    assert "from faust" not in text
    assert 'import_module("faust' not in text


IMPORT_PROBE = """
import importlib, json, sys
forbidden = {forbidden!r}
loaded = {{}}
for name in {modules!r}:
    before = {{m for m in sys.modules if m.split(".")[0] in forbidden}}
    importlib.import_module(name)
    after = {{m for m in sys.modules if m.split(".")[0] in forbidden}}
    loaded[name] = sorted(after - before)
print(json.dumps(loaded))
"""


def test_importing_every_module_loads_no_kafka_client_library() -> None:
    """In a fresh interpreter, importing each engine/events module loads no faust or aiokafka."""
    probe = IMPORT_PROBE.format(forbidden=FORBIDDEN_LIBRARIES, modules=MODULES)
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, list[str]] = json.loads(done.stdout)
    assert sorted(loaded) == MODULES
    assert {name: mods for name, mods in loaded.items() if mods} == {}


def test_the_import_probe_would_notice_a_kafka_import() -> None:
    """The probe reports a module that pulls in a forbidden library (xml as a stand-in)."""
    probe = IMPORT_PROBE.format(forbidden=("xml",), modules=["xml.dom.minidom"])
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "xml.dom.minidom" in json.loads(done.stdout)["xml.dom.minidom"]
