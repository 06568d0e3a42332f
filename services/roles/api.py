"""The api role: an HTTP JSON read model over the ledger, kept on disk.

It folds the `ledger` topic with the engine's `evolve` (the same fold the ledger
and the client use) into a SQLite read model (`services/readmodel/`): per flow
run its ledger records and summary, per partition the offset folded so far. On
start it resumes from those offsets, so a restart reads only the ledger's tail;
a missing file, or one of another schema or engine version, is rebuilt from
offset 0. Views are folded on demand from a run's own records and kept in a
bounded cache. It serves:

    GET /health                        200 once the fold caught up, 503 before
    GET /metrics                       Prometheus text: runs by state, events folded, lag
    GET /read_position                 the ledger offset folded so far, per partition
    GET /flow_runs[?state=S&limit=N]   flow runs, most recently changed first
    GET /flow_runs/{id}                one flow run, with its plan
    GET /flow_runs/{id}/task_runs      its task runs
    GET /flow_runs/{id}/history        its ledger records (facts) in ledger order, and the
                                       position of its partition they cover up to
    GET /task_runs/{id}                one task run (ids contain '/': FLOW/SLUG[/INDEX])

Served with aiohttp directly (faust's own web server is built on it): the read
model needs no faust agent or Table -- a Table changelog is not a safe copy of
state here (BROKER_NOTES.md) and the ledger topic already is one. Binds
`settings.web_host` (127.0.0.1 by default).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.orchestration import FlowRunView
from events import check_flow_run_id
from services.kafka.clients import make_consumer, partition_for, topic_partitions, visible_end
from services.kafka.topics import ensure_topics
from services.readmodel.model import ReadModel
from services.readmodel.shapes import flow_run_json, task_run_json
from services.readmodel.store import StoreIdentity, open_store, remove_store, store_path
from services.settings import Settings

__all__ = [
    "ReadModel",
    "checked_model",
    "flow_run_json",
    "make_app",
    "metrics_text",
    "open_model",
    "run_api",
    "tail_ledger",
    "task_run_json",
]

log = logging.getLogger(__name__)

MODEL_KEY: web.AppKey[ReadModel] = web.AppKey("read_model", ReadModel)


# ----- metrics ---------------------------------------------------------------------------


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


def _positions(model: ReadModel) -> dict[str, int]:
    return {str(p): o for p, o in sorted(model.store.positions().items())}


async def health(request: web.Request) -> web.Response:
    model = _model(request)
    body = {
        "status": "ok" if model.caught_up else "starting",
        "caught_up": model.caught_up,
        "flow_runs": model.store.run_count(),
        "events_folded": model.events_folded,
        "records_read": model.records_read,
        "lag": model.lag,
        "positions": _positions(model),
    }
    return web.json_response(body, status=200 if model.caught_up else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=metrics_text(_model(request)), content_type="text/plain", charset="utf-8"
    )


async def read_position(request: web.Request) -> web.Response:
    """Where the read model is: every record before these offsets is folded and stored."""
    model = _model(request)
    body = {
        "ledger_topic": model.ledger_topic,
        "partitions": _positions(model),
        "caught_up": model.caught_up,
    }
    return web.json_response(body)


async def list_flow_runs(request: web.Request) -> web.Response:
    model = _model(request)
    state = request.query.get("state")
    limit_text = request.query.get("limit", "100")
    if not limit_text.isdigit() or int(limit_text) < 1:
        return _error(400, f"limit must be a positive integer, got {limit_text!r}")
    runs = model.store.runs(state=state, limit=int(limit_text))
    return web.json_response([run.summary for run in runs])


def _flow_run_id(request: web.Request) -> str:
    flow_run_id = request.match_info["flow_run_id"]
    try:
        return check_flow_run_id(flow_run_id)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None


def _flow_view(request: web.Request) -> FlowRunView:
    flow_run_id = _flow_run_id(request)
    view = _model(request).view(flow_run_id)
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


async def flow_run_history(request: web.Request) -> web.Response:
    """The run's ledger records, in ledger order, and the position they cover up to.

    ``{"flow_run_id", "ledger_topic", "partition", "position", "facts": [...]}``:
    every record of the run before `position` of `partition` is in `facts` (each
    as the ledger holds it, the events' JSON). A reader that wants what came
    later reads the partition from `position` on. An unknown run is a 404 with
    the same fields but `facts`, so that reader knows where to start too.
    """
    model = _model(request)
    flow_run_id = _flow_run_id(request)
    if model.ledger_partitions is None:
        raise web.HTTPServiceUnavailable(reason="the api has not read the ledger's partitions yet")
    history = model.store.history(flow_run_id)
    partition = history.partition
    if partition is None:
        partition = partition_for(flow_run_id, model.ledger_partitions)
    head = {
        "flow_run_id": flow_run_id,
        "ledger_topic": model.ledger_topic,
        "partition": partition,
        "position": history.positions.get(partition, 0),
    }
    if not history.values:
        body = {**head, "error": f"no flow run {flow_run_id!r}", "status": 404}
        return web.json_response(body, status=404)
    # The records are JSON already: splice them in rather than decode and encode each.
    text = json.dumps(head)[:-1].encode() + b', "facts": [' + b",".join(history.values) + b"]}"
    return web.Response(body=text, content_type="application/json")


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
    app.router.add_get("/read_position", read_position)
    app.router.add_get("/flow_runs", list_flow_runs)
    app.router.add_get("/flow_runs/{flow_run_id}", get_flow_run)
    app.router.add_get("/flow_runs/{flow_run_id}/task_runs", list_task_runs)
    app.router.add_get("/flow_runs/{flow_run_id}/history", flow_run_history)
    app.router.add_get("/task_runs/{task_run_id:.+}", get_task_run)
    return app


# ----- the role ----------------------------------------------------------------------------


def open_model(settings: Settings) -> ReadModel:
    """The api's read model in the data dir: resumed, or rebuilt when missing or outdated."""
    identity = StoreIdentity(ledger_topic=settings.topic("ledger"))
    store = open_store(store_path(settings.data_dir, settings.topic_prefix), identity)
    model = ReadModel.open(store, settings.api_cache_task_runs)
    model.ledger_topic = identity.ledger_topic
    return model


async def checked_model(settings: Settings) -> ReadModel:
    """`open_model`, rebuilt if its positions are past the ledger's ends.

    A position past a partition's end means the topic is not the one the file
    was folded from (deleted and created again): its contents cannot be trusted.
    """
    model = open_model(settings)
    stored = model.store.positions()
    if not stored:
        return model
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, settings.topic("ledger"))
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    if all(stored.get(tp.partition, 0) <= ends[tp] for tp in tps):
        return model
    log.warning(
        "read model %s is ahead of topic %s (was it created again?): rebuilding it",
        model.store.path,
        settings.topic("ledger"),
    )
    model.store.close()
    if model.store.path is not None:
        remove_store(model.store.path)
    return open_model(settings)


async def tail_ledger(settings: Settings, model: ReadModel, stop: asyncio.Event) -> None:
    """Fold the ledger from the model's stored positions (0 where none), until `stop`."""
    topic = settings.topic("ledger")
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        stored = model.store.positions()
        for tp in tps:
            consumer.seek(tp, stored.get(tp.partition, 0))
        model.ledger_partitions = len(tps)
        log.info("api folding %s from offsets %s", topic, stored or "0")
        while not stop.is_set():
            await _fold_batch(consumer, model, tps)
    finally:
        await consumer.stop()


async def _fold_batch(
    consumer: AIOKafkaConsumer, model: ReadModel, tps: list[TopicPartition]
) -> None:
    batches = await consumer.getmany(*tps, timeout_ms=200, max_records=5000)
    # Positions first (awaiting), then fold and commit with no await in between: an
    # HTTP read never sees records folded but not yet stored with their positions.
    positions = {tp.partition: await consumer.position(tp) for tp in tps}
    for tp, records in batches.items():
        for record in records:
            model.apply_record(record.value, (tp.partition, record.offset))
    if batches or not model.caught_up:
        model.commit(positions)
    lag = 0
    for tp in tps:
        end, position = visible_end(consumer, tp), positions[tp.partition]
        lag += max(0, (end if end is not None else position) - position)
    model.lag = lag
    # The fetch's end, not end_offsets(): the latter is wrong on Tansu.
    if not model.caught_up and all(visible_end(consumer, tp) is not None for tp in tps):
        model.caught_up = lag == 0


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
    model = await checked_model(settings)
    app = make_app(model)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host=settings.web_host, port=settings.web_port)
    await site.start()
    url = f"http://{settings.web_host}:{settings.web_port}"
    log.info("api listening on %s", url)
    if on_ready is not None:
        on_ready(url)

    task = asyncio.create_task(tail_ledger(settings, model, stop), name="api-ledger-tail")
    try:
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task in done:
            task.result()  # the tail died: raise its error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        model.store.close()
