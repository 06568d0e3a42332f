"""The read model's SQLite file: every run's ledger records and summary, and how far it got.

Tables (WAL mode, so readers such as `runledger verify` or a client on the same
machine read a consistent snapshot while the api writes):

    meta       key -> value: schema version, engine version, ledger topic, counters
    positions  ledger partition -> the offset folded up to (exclusive)
    facts      (flow run id, partition, offset) -> the record's value, as on the ledger
    runs       flow run id -> partition, state, last event time, summary (JSON)

`facts` is indexed by (flow run id, partition, offset), so reading one run's
history is one range scan of that index and a lookup per row: its cost follows
the run's own history, not the partition's. (A WITHOUT ROWID table clustered by
run reads a little faster but wrote half as fast and 50 % bigger with ~1 KB
records, measured here: the fold's write rate matters more.) Values are the
ledger's bytes (events' JSON codec), so nothing here needs an encoding of its
own. A file written by another schema or engine version, or for another ledger
topic, is not read: it is deleted and rebuilt from the ledger (`open_store`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.version import ENGINE_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "ReadStore",
    "RunHistory",
    "StoreIdentity",
    "StoredFact",
    "StoredRun",
    "open_readonly",
    "open_store",
    "remove_store",
    "store_path",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Bump on any change of the tables or of what a row means: old files are rebuilt."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (partition INTEGER PRIMARY KEY, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS facts (
    flow_run_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS facts_by_run ON facts (flow_run_id, partition, offset);
CREATE TABLE IF NOT EXISTS runs (
    flow_run_id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    state TEXT,
    last_event_at REAL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (last_event_at);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, last_event_at);
"""


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """What a file must have been written for to be read; anything else is rebuilt."""

    ledger_topic: str
    schema_version: int = SCHEMA_VERSION
    engine_version: str = ENGINE_VERSION

    def as_meta(self) -> dict[str, str]:
        return {
            "schema_version": str(self.schema_version),
            "engine_version": self.engine_version,
            "ledger_topic": self.ledger_topic,
        }


@dataclass(frozen=True, slots=True)
class StoredFact:
    """One ledger record of a run, where it is on the ledger."""

    flow_run_id: str
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run's row: its partition and the summary the api lists."""

    flow_run_id: str
    partition: int
    state: str | None
    last_event_at: float | None
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunHistory:
    """A run's records up to `position` of its partition: everything before it is here."""

    flow_run_id: str
    partition: int | None
    """None when the store has no record of the run."""
    values: list[bytes]
    positions: dict[int, int]


def store_path(data_dir: Path, topic_prefix: str) -> Path:
    """Where the api keeps its read model: one file per topic prefix under the data dir."""
    return data_dir / "api" / f"{topic_prefix}readmodel.sqlite3"


class ReadStore:
    """One connection to a read-model file (the api's, or a reader's read-only one)."""

    def __init__(self, connection: sqlite3.Connection, path: Path | None) -> None:
        self._db = connection
        self.path = path

    # -- reads ------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def counters(self) -> dict[str, Any]:
        """The fold's counters as of the last commit (JSON in meta)."""
        text = self.meta().get("counters")
        value: dict[str, Any] = json.loads(text) if text else {}
        return value

    def positions(self) -> dict[int, int]:
        rows = self._db.execute("SELECT partition, offset FROM positions").fetchall()
        return {int(p): int(o) for p, o in rows}

    def run_values(self, flow_run_id: str) -> list[bytes]:
        """The run's records in ledger order (one range scan of its own rows)."""
        rows = self._db.execute(
            "SELECT value FROM facts WHERE flow_run_id = ? ORDER BY partition, offset",
            (flow_run_id,),
        ).fetchall()
        return [bytes(value) for (value,) in rows]

    def run_facts(self, flow_run_id: str) -> list[StoredFact]:
        rows = self._db.execute(
            "SELECT partition, offset, value FROM facts WHERE flow_run_id = ? "
            "ORDER BY partition, offset",
            (flow_run_id,),
        ).fetchall()
        return [StoredFact(flow_run_id, int(p), int(o), bytes(v)) for p, o, v in rows]

    def facts_between(self, partition: int, start: int, stop: int) -> list[StoredFact]:
        """Every stored record of a partition with start <= offset < stop (a scan: verify only)."""
        rows = self._db.execute(
            "SELECT flow_run_id, offset, value FROM facts "
            "WHERE partition = ? AND offset >= ? AND offset < ? ORDER BY offset",
            (partition, start, stop),
        ).fetchall()
        return [StoredFact(r, partition, int(o), bytes(v)) for r, o, v in rows]

    def history(self, flow_run_id: str) -> RunHistory:
        """The run's records and the positions they cover, from one read transaction."""
        # BEGIN makes the three reads one snapshot (WAL): the positions returned
        # are exactly those the records were committed with.
        self._db.execute("BEGIN")
        try:
            partition = self._db.execute(
                "SELECT partition FROM runs WHERE flow_run_id = ?", (flow_run_id,)
            ).fetchone()
            return RunHistory(
                flow_run_id,
                None if partition is None else int(partition[0]),
                self.run_values(flow_run_id),
                self.positions(),
            )
        finally:
            self._db.execute("COMMIT")

    def run(self, flow_run_id: str) -> StoredRun | None:
        row = self._db.execute(
            "SELECT flow_run_id, partition, state, last_event_at, summary FROM runs "
            "WHERE flow_run_id = ?",
            (flow_run_id,),
        ).fetchone()
        return None if row is None else _stored_run(row)

    def runs(self, state: str | None = None, limit: int | None = None) -> list[StoredRun]:
        """Runs, most recently changed first (runs without events last)."""
        args: list[Any] = [] if state is None else [state]
        where = "" if state is None else "WHERE state = ?"
        sql = (
            "SELECT flow_run_id, partition, state, last_event_at, summary FROM runs "
            f"{where} ORDER BY last_event_at IS NULL, last_event_at DESC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_stored_run(row) for row in self._db.execute(sql, args).fetchall()]

    def run_count(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM runs").fetchone()
        return int(count)

    def fact_count(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM facts").fetchone()
        return int(count)

    # -- writes (the api only) --------------------------------------------------------

    def commit(
        self,
        facts: Iterable[StoredFact],
        runs: Iterable[StoredRun],
        positions: Mapping[int, int],
        counters: Mapping[str, Any],
    ) -> None:
        """Write one batch of the fold atomically: a reader sees all of it or none."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?)",
                ((f.flow_run_id, f.partition, f.offset, f.value) for f in facts),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                (
                    (r.flow_run_id, r.partition, r.state, r.last_event_at, json.dumps(r.summary))
                    for r in runs
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO positions VALUES (?, ?)", positions.items()
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('counters', ?)", (json.dumps(counters),)
            )

    def execute(self, sql: str, args: Iterable[Any] = ()) -> None:
        """Raw SQL in its own transaction (tests and repairs; the fold never needs it)."""
        with self._db:
            self._db.execute(sql, tuple(args))

    def close(self) -> None:
        self._db.close()


def _stored_run(row: tuple[Any, ...]) -> StoredRun:
    flow_run_id, partition, state, last_event_at, summary = row
    return StoredRun(flow_run_id, int(partition), state, last_event_at, json.loads(summary))


def open_store(path: Path | None, identity: StoreIdentity) -> ReadStore:
    """The api's store at `path` (None: in memory), rebuilt empty when it is not `identity`'s.

    A missing file, another schema or engine version, or another ledger topic all
    mean the same: start from an empty file and fold the ledger from offset 0.
    """
    if path is None:
        return _create(sqlite3.connect(":memory:", isolation_level=None), None, identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        found = _identity_of(path)
        if found == identity.as_meta():
            log.info("read model %s: resuming (%s)", path, _describe(found))
            return _create(_connect(path), path, identity)
        log.warning(
            "read model %s was written for %s, not %s: rebuilding it from the ledger",
            path,
            _describe(found),
            _describe(identity.as_meta()),
        )
        remove_store(path)
    else:
        log.info("read model %s does not exist: building it from the ledger", path)
    return _create(_connect(path), path, identity)


def open_readonly(path: Path, identity: StoreIdentity) -> ReadStore | None:
    """A read-only connection to an api's store, or None if absent or of another identity."""
    if not path.exists() or _identity_of(path) != identity.as_meta():
        return None
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    return ReadStore(connection, path)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (`with connection:` and BEGIN).
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode loses at most the last commits on a power cut, never
    # consistency; they are re-read from the ledger (positions move with them).
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _create(
    connection: sqlite3.Connection, path: Path | None, identity: StoreIdentity
) -> ReadStore:
    connection.executescript(_SCHEMA)
    with connection:
        connection.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", identity.as_meta().items()
        )
    return ReadStore(connection, path)


def _identity_of(path: Path) -> dict[str, str]:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT key, value FROM meta").fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:  # not a database, or no meta table
        return {"error": str(exc)}
    keys = ("schema_version", "engine_version", "ledger_topic")
    found = dict(rows)
    return {key: found[key] for key in keys if key in found}


def _describe(meta: Mapping[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(meta.items())) or "nothing"


def remove_store(path: Path) -> None:
    """Delete a store file with its WAL files (it is rebuilt from the ledger)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
