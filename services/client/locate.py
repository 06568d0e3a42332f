"""Where one flow run's ledger history is, so that reading it does not scan its partition.

A client reads a run as: the facts already known (from the api's read model, or
its file on this machine) plus the ledger partition from the offset those facts
cover up to. Where that start comes from, best first:

* the run was submitted by this client: the partition's end read just before
  the request was produced (nothing of the run can be earlier);
* the api (`settings.api_base_url`): ``GET /flow_runs/{id}/history`` gives the
  run's facts and the position they cover up to;
* the api's read-model file in this machine's data dir (`runledger verify`'s and
  a client's fallback when the api is down): the same, read from SQLite;
* otherwise offset 0: the whole partition, filtered by key (what every read cost
  before issue 11).

Each source is checked to be about the same ledger topic, so an api or file of
another deployment is never taken for this one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from events import Event, EventDecodeError, decode
from services.readmodel.store import StoreIdentity, open_readonly, store_path
from services.settings import Settings

__all__ = ["ApiReader", "RunStart", "local_start"]

log = logging.getLogger(__name__)

Source = Literal["submitted", "api", "local", "scan"]

API_TIMEOUT_S = 10.0
"""Longest a client waits for the api before reading the ledger itself (a big run's
history is a few MB; an api that does not answer at all is refused at connect)."""


@dataclass(frozen=True, slots=True)
class RunStart:
    """Read a run as `events`, then its ledger partition from `offset` on."""

    partition: int
    offset: int
    events: tuple[Event, ...] = ()
    source: Source = "scan"


class ApiReader:
    """Asks the api role for runs' histories; None whenever it cannot be used."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.api_base_url
        self.ledger_topic = settings.topic("ledger")
        self._session: aiohttp.ClientSession | None = None

    async def start(self, flow_run_id: str) -> RunStart | None:
        """The run's facts and where its partition goes on from, per the api."""
        if self.url is None:
            return None
        try:
            body = await self._get_json(f"{self.url}/flow_runs/{flow_run_id}/history")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.debug("api %s not usable (%s): reading the ledger", self.url, exc)
            return None
        if body is None:
            return None
        if body.get("ledger_topic") != self.ledger_topic:
            log.warning(
                "the api at %s serves %s, not %s: reading the ledger instead (set "
                "RUNLEDGER_API_URL)",
                self.url,
                body.get("ledger_topic"),
                self.ledger_topic,
            )
            return None
        events = _decoded(body.get("facts", []), self.url)
        return RunStart(int(body["partition"]), int(body["position"]), events, "api")

    async def _get_json(self, url: str) -> dict[str, Any] | None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=API_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        async with self._session.get(url) as response:
            # 404 carries the partition and position too (an unknown run: start there).
            if response.status not in (200, 404) or response.content_type != "application/json":
                log.debug("api answered %s %s: reading the ledger", response.status, url)
                return None
            body: dict[str, Any] = await response.json()
            return body if "position" in body else None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def local_start(settings: Settings, flow_run_id: str, partition: int) -> RunStart | None:
    """The run's facts from the api's read-model file on this machine, if there is one."""
    path = store_path(settings.data_dir, settings.topic_prefix)
    store = open_readonly(path, StoreIdentity(ledger_topic=settings.topic("ledger")))
    if store is None:
        return None
    try:
        history = store.history(flow_run_id)
    finally:
        store.close()
    # An unknown run's partition comes from the hash; the file knows only runs it saw.
    where = partition if history.partition is None else history.partition
    events = _decoded(history.values, str(path))
    return RunStart(where, history.positions.get(where, 0), events, "local")


def _decoded(values: list[Any], where: str) -> tuple[Event, ...]:
    events: list[Event] = []
    for value in values:
        try:
            events.append(decode(value))
        except EventDecodeError as exc:
            # The fold skips such a record too (and counted it); so does this reader.
            log.warning("skipping an undecodable record from %s: %s", where, exc)
    return tuple(events)
