"""Ledger snapshots on the compacted `snapshots` topic: records, manifests, choosing one.

A snapshot is one ledger partition's `PartitionState` (live views, retired
runs, the recent-command window) as of a ledger offset, `covers`: every fact
below it is in the state, none at or above it. Its JSON body
(`engine.orchestration.snapshot`) is zlib-compressed and cut into chunks of at
most `CHUNK_BYTES` (a partition's live views can exceed a record's size limit);
a manifest written after the chunks names their number, size and sha256. On
partition `p` of the snapshots topic (same number as the ledger partition),
keys are ``<p>/<id>/<i>`` for chunks and ``<p>/<id>/m`` for the manifest, where
the id is `covers`, zero-padded: each snapshot has its own keys, and the ledger
writes tombstones for the ones it no longer keeps, which compaction then removes.

Snapshots are derived data, never the truth: a snapshot is used only if its
manifest parses, names this schema (`SNAPSHOT_SCHEMA`), this engine
(`ENGINE_VERSION`), this partition and this command window, covers no more than
the ledger partition holds, and all its chunks are present with the named
hash. Anything else is skipped, with a log line, for an older snapshot, or for
a fold from offset 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from engine.orchestration.partition import PartitionState
from engine.orchestration.snapshot import SnapshotFormatError, state_from_doc, state_to_doc
from engine.version import ENGINE_VERSION
from services.kafka.clients import read_to_end

__all__ = [
    "CHUNK_BYTES",
    "SNAPSHOT_SCHEMA",
    "Loaded",
    "Manifest",
    "encode_snapshot",
    "newest_readable",
    "read_snapshots",
    "tombstones",
]

log = logging.getLogger(__name__)

SNAPSHOT_SCHEMA = 1
"""Version of the snapshot format (manifest, chunking, body); a change bumps it."""

CHUNK_BYTES = 512 * 1024
"""Largest chunk of a snapshot body: half of Kafka's default 1 MiB record limit."""

_FIRST_LOOKBACK = 64
"""Records read back from the end of a snapshots partition at first: a snapshot is
its chunks and a manifest, the newest ones are at the end."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a snapshot claims to be; written after its chunks."""

    schema: int
    engine: str
    partition: int
    covers: int
    window: int
    chunks: int
    size: int
    sha256: str

    @property
    def id(self) -> str:
        return f"{self.covers:020d}"

    def record_keys(self) -> list[bytes]:
        """Every key of this snapshot: its chunks, then its manifest."""
        return [chunk_key(self.partition, self.id, i) for i in range(self.chunks)] + [
            manifest_key(self.partition, self.id)
        ]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A snapshot that passed every check, and what it restores."""

    manifest: Manifest
    state: PartitionState


def chunk_key(partition: int, snapshot_id: str, index: int) -> bytes:
    return f"{partition}/{snapshot_id}/{index}".encode()


def manifest_key(partition: int, snapshot_id: str) -> bytes:
    return f"{partition}/{snapshot_id}/m".encode()


def encode_snapshot(
    state: PartitionState, partition: int, covers: int
) -> tuple[Manifest, list[tuple[bytes, bytes]]]:
    """The (key, value) records of a snapshot of `state` at `covers`: chunks, then manifest."""
    body = zlib.compress(json.dumps(state_to_doc(state), separators=(",", ":")).encode(), 1)
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)] or [b""]
    manifest = Manifest(
        schema=SNAPSHOT_SCHEMA,
        engine=ENGINE_VERSION,
        partition=partition,
        covers=covers,
        window=state.recent.capacity,
        chunks=len(chunks),
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )
    records = [(chunk_key(partition, manifest.id, i), c) for i, c in enumerate(chunks)]
    records.append((manifest_key(partition, manifest.id), _manifest_bytes(manifest)))
    return manifest, records


def tombstones(manifest: Manifest) -> list[bytes]:
    """The keys to write tombstones for when `manifest`'s snapshot is no longer kept."""
    return manifest.record_keys()


def _manifest_bytes(manifest: Manifest) -> bytes:
    fields = {name: getattr(manifest, name) for name in Manifest.__slots__}
    return json.dumps(fields, sort_keys=True).encode()


def _parse_manifest(value: bytes) -> Manifest:
    fields: dict[str, Any] = json.loads(value)
    manifest = Manifest(**{name: fields[name] for name in Manifest.__slots__})
    for name in ("schema", "partition", "covers", "window", "chunks", "size"):
        if not isinstance(getattr(manifest, name), int):
            raise TypeError(f"manifest field {name} is not an integer")
    return manifest


class _Skip(Exception):
    """Why one snapshot cannot be used (logged, then an older one is tried)."""


def newest_readable(
    records: Iterable[ConsumerRecord[bytes, bytes]],
    partition: int,
    window: int,
    ledger_end: int,
    *,
    whole: bool = True,
) -> tuple[Loaded | None, list[Manifest]]:
    """The newest snapshot among `records` that passes every check, and the manifests kept.

    `whole`: `records` start at the partition's beginning. When they do not, a
    snapshot whose first chunks lie before them is passed over silently (the
    caller reads further back), not reported as incomplete.

    `records`: what was read of the snapshots partition, in offset order. Every
    snapshot that is skipped gets a WARNING saying why. The manifests returned
    are those of snapshots still present (not tombstoned), oldest first: the
    ledger tombstones them once newer ones replace them.
    """
    values: dict[bytes, bytes | None] = {}
    for record in records:
        if record.key is not None:
            values[record.key] = record.value
    manifests: list[tuple[bytes, bytes]] = [
        (key, value)
        for key, value in values.items()
        if value is not None and key.endswith(b"/m")
    ]
    present: list[Manifest] = []
    loaded: Loaded | None = None
    for key, value in sorted(manifests, key=lambda kv: kv[0], reverse=True):
        name = key.decode(errors="replace")
        try:
            manifest = _parse_manifest(value)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning(
                "ledger partition %d: skipping unreadable snapshot %s: %r", partition, name, exc
            )
            continue
        present.append(manifest)
        if loaded is not None:
            continue
        if not whole and chunk_key(partition, manifest.id, 0) not in values:
            continue
        try:
            loaded = Loaded(manifest, _load(manifest, values, partition, window, ledger_end))
        except _Skip as skip:
            log.warning("ledger partition %d: skipping snapshot %s: %s", partition, name, skip)
    present.reverse()
    return loaded, present


def _load(
    manifest: Manifest,
    values: dict[bytes, bytes | None],
    partition: int,
    window: int,
    ledger_end: int,
) -> PartitionState:
    if manifest.schema != SNAPSHOT_SCHEMA or manifest.engine != ENGINE_VERSION:
        raise _Skip(
            f"written by engine {manifest.engine} in snapshot schema {manifest.schema}, "
            f"this is engine {ENGINE_VERSION}, schema {SNAPSHOT_SCHEMA}"
        )
    if manifest.partition != partition:
        raise _Skip(f"it is a snapshot of partition {manifest.partition}")
    if manifest.covers > ledger_end:
        raise _Skip(
            f"it covers ledger offset {manifest.covers}, beyond the partition's end {ledger_end}"
        )
    if manifest.window != window:
        raise _Skip(f"its command window is {manifest.window}, the ledger's is {window}")
    chunks = [values.get(chunk_key(partition, manifest.id, i)) for i in range(manifest.chunks)]
    if any(chunk is None for chunk in chunks):
        raise _Skip("some of its chunks are missing")
    body = b"".join(c for c in chunks if c is not None)
    if len(body) != manifest.size or hashlib.sha256(body).hexdigest() != manifest.sha256:
        raise _Skip("its chunks do not match its manifest")
    try:
        return state_from_doc(json.loads(zlib.decompress(body)), window)
    except (zlib.error, ValueError, SnapshotFormatError) as exc:
        raise _Skip(f"its body does not decode: {exc!r}") from exc


async def read_snapshots(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    partition: int,
    window: int,
    ledger_end: int,
) -> tuple[Loaded | None, list[Manifest]]:
    """The newest readable snapshot of `tp` (assigned to `consumer`), read from the end back.

    Reads the last records first and goes back further (x4 each time) only while
    no snapshot passes, so a restart reads about one snapshot, not the topic.
    """
    ends = await consumer.end_offsets([tp])
    beginnings = await consumer.beginning_offsets([tp])
    end, first = ends[tp], beginnings[tp]
    lookback = _FIRST_LOOKBACK
    while True:
        start = max(first, end - lookback)
        records: list[ConsumerRecord[bytes, bytes]] = []
        if end > start:
            consumer.seek(tp, start)
            await read_to_end(consumer, [tp], records.extend)
        loaded, present = newest_readable(
            records, partition, window, ledger_end, whole=start <= first
        )
        if loaded is not None or start <= first:
            return loaded, present
        lookback *= 4
