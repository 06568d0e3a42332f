"""The api role: an HTTP JSON read model over the ledger.

It folds the whole `ledger` topic with the engine's `evolve` (the same fold the
ledger and the client use) into one view per flow run, keeps tailing it, and
serves the views:

    GET /health                        200 once the initial fold caught up, 503 before
    GET /metrics                       Prometheus text: runs by state, events folded, lag
    GET /flow_runs[?state=S&limit=N]   flow runs, most recently changed first
    GET /flow_runs/{id}                one flow run, with its plan
    GET /flow_runs/{id}/task_runs      its task runs
    GET /task_runs/{id}                one task run (ids contain '/': FLOW/SLUG[/INDEX])

Served with aiohttp directly (faust's own web server is built on it): the read
model needs no faust agent or Table -- a Table changelog is not a safe copy of
state here (BROKER_NOTES.md) and the ledger topic already is one. Binds
`settings.web_host` (127.0.0.1 by default).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.orchestration import FlowRunView, TaskRunRecord, evolve
from events import Event, EventDecodeError, TaskRunTransitioned, decode
from services.kafka.clients import make_consumer, topic_partitions, visible_end
from services.kafka.topics import ensure_topics
from services.settings import Settings

__all__ = [
    "ReadModel",
    "flow_run_json",
    "make_app",
    "metrics_text",
    "run_api",
    "tail_ledger",
    "task_run_json",
]

log = logging.getLogger(__name__)


# ----- the read model --------------------------------------------------------------------


@dataclass
class ReadModel:
    """Every flow run's view, folded from the ledger; counters kept as it folds.

    State counts are maintained per event (old state -1, new state +1) so that a
    scrape of /metrics costs nothing however many task runs there are.
    """

    views: dict[str, FlowRunView] = field(default_factory=dict)
    flow_states: Counter[str] = field(default_factory=Counter)
    task_states: Counter[str] = field(default_factory=Counter)
    events_folded: int = 0
    fold_errors: int = 0
    undecodable: int = 0
    caught_up: bool = False
    lag: int = 0
    """Ledger records not folded yet: high watermark minus position, summed."""

    def apply(self, event: Event) -> None:
        """Fold one ledger event (duplicates are skipped by `evolve`'s seq check)."""
        old = self.views.get(event.flow_run_id) or FlowRunView(flow_run_id=event.flow_run_id)
        try:
            new = evolve(old, event)
        except ValueError as exc:  # SequenceGap / ForeignEvent: report, keep going
            self.fold_errors += 1
            log.error("cannot fold ledger event %s: %s", event.event_id, exc)
            return
        self.views[event.flow_run_id] = new
        self.events_folded += 1
        _move(self.flow_states, old.flow_state_type, new.flow_state_type)
        if isinstance(event, TaskRunTransitioned) and event.task_run_id is not None:
            before = old.task_runs.get(event.task_run_id)
            after = new.task_runs.get(event.task_run_id)
            _move(
                self.task_states,
                before.state_type if before else None,
                after.state_type if after else None,
            )

    def apply_record(self, value: bytes | None) -> None:
        """Decode and fold one ledger record value."""
        try:
            event = decode(value or b"")
        except EventDecodeError as exc:
            self.undecodable += 1
            log.error("undecodable ledger record: %s", exc)
            return
        self.apply(event)

    def task_run(self, task_run_id: str) -> tuple[FlowRunView, TaskRunRecord] | None:
        flow_run_id = task_run_id.partition("/")[0]
        view = self.views.get(flow_run_id)
        record = view.task_runs.get(task_run_id) if view is not None else None
        if view is None or record is None:
            return None
        return view, record


MODEL_KEY: web.AppKey[ReadModel] = web.AppKey("read_model", ReadModel)


def _move(counts: Counter[str], old: str | None, new: str | None) -> None:
    if old == new:
        return
    if old is not None:
        counts[old] -= 1
        if counts[old] <= 0:
            del counts[old]
    if new is not None:
        counts[new] += 1


# ----- JSON shapes -----------------------------------------------------------------------


def task_run_json(record: TaskRunRecord, flow_run_id: str) -> dict[str, Any]:
    """A task run as the API shows it (the state blob included)."""
    return {
        "id": record.task_run_id,
        "flow_run_id": flow_run_id,
        "task_slug": record.slug,
        "map_index": record.map_index,
        "seq": record.seq,
        "state": record.state_type,
        "message": record.state.get("message"),
        "attempt": record.attempt,
        "final": record.final,
        "finished": record.rests_finished,
        "last_heartbeat": record.last_heartbeat.isoformat() if record.last_heartbeat else None,
        "state_blob": record.state,
        "links": {"self": f"/task_runs/{record.task_run_id}"},
    }


def flow_run_json(view: FlowRunView, *, detail: bool = False) -> dict[str, Any]:
    """A flow run summary; with `detail`, also its state blob and plan."""
    index = view.index
    states = Counter(r.state_type for r in view.task_runs.values())
    body: dict[str, Any] = {
        "id": view.flow_run_id,
        "flow_name": index.plan.name if index else None,
        "flow_version": index.plan.version if index else None,
        "flow_ref": view.flow_ref.model_dump(mode="json", exclude_none=True)
        if view.flow_ref
        else None,
        "parameters": view.parameters,
        "idempotency_key": view.idempotency_key,
        "state": view.flow_state_type,
        "message": (view.flow_state or {}).get("message"),
        "finished": view.is_finished(),
        "task_runs": len(view.task_runs),
        "task_run_states": dict(sorted(states.items())),
        "unfinished_task_runs": view.unfinished_runs,
        "scheduled": dict(view.scheduled),
        "last_event_at": view.last_event_at.isoformat() if view.last_event_at else None,
        "links": {
            "self": f"/flow_runs/{view.flow_run_id}",
            "task_runs": f"/flow_runs/{view.flow_run_id}/task_runs",
        },
    }
    if detail:
        body["context"] = view.context
        body["state_blob"] = view.flow_state
        body["plan"] = (
            [
                {
                    "slug": t.slug,
                    "name": t.name,
                    "kind": t.kind,
                    "upstream": [e.upstream for e in t.edges],
                    "max_retries": t.max_retries,
                    "retry_delay_s": t.retry_delay_s,
                    "timeout_s": t.timeout_s,
                }
                for t in index.plan.tasks
            ]
            if index
            else None
        )
    return body


def _metric(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _sorted(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items())


def metrics_text(model: ReadModel) -> str:
    """The read model's figures in the Prometheus text exposition format (0.0.4)."""
    lines: list[str] = []
    _metric(lines, "runledger_flow_runs", "gauge", "Flow runs by current state.")
    lines += [f'runledger_flow_runs{{state="{s}"}} {n}' for s, n in _sorted(model.flow_states)]
    _metric(lines, "runledger_task_runs", "gauge", "Task runs by current state.")
    lines += [f'runledger_task_runs{{state="{s}"}} {n}' for s, n in _sorted(model.task_states)]
    _metric(lines, "runledger_events_folded_total", "counter", "Ledger events folded.")
    lines.append(f"runledger_events_folded_total {model.events_folded}")
    _metric(
        lines,
        "runledger_fold_errors_total",
        "counter",
        "Ledger events that could not be folded (sequence gaps) or decoded.",
    )
    lines.append(f"runledger_fold_errors_total {model.fold_errors + model.undecodable}")
    _metric(lines, "runledger_ledger_lag", "gauge", "Ledger records not folded yet.")
    lines.append(f"runledger_ledger_lag {model.lag}")
    _metric(
        lines, "runledger_read_model_caught_up", "gauge", "1 once the initial fold reached the end."
    )
    lines.append(f"runledger_read_model_caught_up {int(model.caught_up)}")
    _gc_metrics(lines)
    return "\n".join(lines) + "\n"


def _gc_metrics(lines: list[str]) -> None:
    """This process's cycle collector: full collections are its latency outliers."""
    stats = gc.get_stats()
    for name, field_name, help_text in (
        ("python_gc_collections_total", "collections", "Collections per generation."),
        ("python_gc_objects_collected_total", "collected", "Objects collected per generation."),
    ):
        _metric(lines, name, "counter", help_text)
        lines += [f'{name}{{generation="{g}"}} {s[field_name]}' for g, s in enumerate(stats)]
    _metric(
        lines,
        "runledger_gc_frozen_objects",
        "gauge",
        "Objects frozen out of full collections at start-up "
        "(services.roles.app.freeze_startup_heap).",
    )
    lines.append(f"runledger_gc_frozen_objects {gc.get_freeze_count()}")


# ----- HTTP ------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error is JSON, including aiohttp's own 404/405 for unknown routes."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


def _model(request: web.Request) -> ReadModel:
    return request.app[MODEL_KEY]


async def health(request: web.Request) -> web.Response:
    model = _model(request)
    body = {
        "status": "ok" if model.caught_up else "starting",
        "caught_up": model.caught_up,
        "flow_runs": len(model.views),
        "events_folded": model.events_folded,
        "lag": model.lag,
    }
    return web.json_response(body, status=200 if model.caught_up else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=metrics_text(_model(request)), content_type="text/plain", charset="utf-8"
    )


async def list_flow_runs(request: web.Request) -> web.Response:
    model = _model(request)
    state = request.query.get("state")
    limit_text = request.query.get("limit", "100")
    if not limit_text.isdigit() or int(limit_text) < 1:
        return _error(400, f"limit must be a positive integer, got {limit_text!r}")
    views = [v for v in model.views.values() if state is None or v.flow_state_type == state]
    views.sort(key=lambda v: (v.last_event_at is not None, v.last_event_at), reverse=True)
    return web.json_response([flow_run_json(v) for v in views[: int(limit_text)]])


def _flow_view(request: web.Request) -> FlowRunView:
    flow_run_id = request.match_info["flow_run_id"]
    view = _model(request).views.get(flow_run_id)
    if view is None:
        raise web.HTTPNotFound(reason=f"no flow run {flow_run_id!r}")
    return view


async def get_flow_run(request: web.Request) -> web.Response:
    return web.json_response(flow_run_json(_flow_view(request), detail=True))


async def list_task_runs(request: web.Request) -> web.Response:
    view = _flow_view(request)
    records = sorted(
        view.task_runs.values(),
        key=lambda r: (r.slug, -1 if r.map_index is None else r.map_index),
    )
    return web.json_response([task_run_json(r, view.flow_run_id) for r in records])


async def get_task_run(request: web.Request) -> web.Response:
    task_run_id = request.match_info["task_run_id"]
    found = _model(request).task_run(task_run_id)
    if found is None:
        raise web.HTTPNotFound(reason=f"no task run {task_run_id!r}")
    view, record = found
    return web.json_response(task_run_json(record, view.flow_run_id))


def make_app(model: ReadModel) -> web.Application:
    """The aiohttp application serving `model`."""
    app = web.Application(middlewares=[_json_errors])
    app[MODEL_KEY] = model
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/flow_runs", list_flow_runs)
    app.router.add_get("/flow_runs/{flow_run_id}", get_flow_run)
    app.router.add_get("/flow_runs/{flow_run_id}/task_runs", list_task_runs)
    app.router.add_get("/task_runs/{task_run_id:.+}", get_task_run)
    return app


# ----- the role ----------------------------------------------------------------------------


async def tail_ledger(settings: Settings, model: ReadModel, stop: asyncio.Event) -> None:
    """Fold every partition of the ledger from offset 0, then keep folding until `stop`."""
    topic = settings.topic("ledger")
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            batches = await consumer.getmany(*tps, timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    model.apply_record(record.value)
            lag = 0
            for tp in tps:
                end = visible_end(consumer, tp)
                position = await consumer.position(tp)
                lag += max(0, (end if end is not None else position) - position)
            model.lag = lag
            # The fetch's end, not end_offsets(): the latter is wrong on Tansu.
            if not model.caught_up and all(visible_end(consumer, tp) is not None for tp in tps):
                model.caught_up = lag == 0
    finally:
        await consumer.stop()


async def run_api(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the api role until `stop` is set: the ledger tail and the HTTP server.

    `on_ready` gets the server's URL once it listens.
    """
    await ensure_topics(settings)
    model = ReadModel()
    runner = web.AppRunner(make_app(model), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host=settings.web_host, port=settings.web_port)
    await site.start()
    url = f"http://{settings.web_host}:{settings.web_port}"
    log.info("api listening on %s", url)
    if on_ready is not None:
        on_ready(url)
    tail = asyncio.create_task(tail_ledger(settings, model, stop), name="api-ledger-tail")
    try:
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({tail, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if tail in done:
            tail.result()  # the tail died: raise its error
    finally:
        tail.cancel()
        await asyncio.gather(tail, return_exceptions=True)
        await runner.cleanup()
