"""Built-in metrics plugin: rolling request metrics, ``GET /metrics`` (JSON), ``GET /metrics/prometheus``
and the JSONL request log.

Registered like any third-party plugin (entry point ``metrics`` in group ``higgs``) and blockable with
``--no-plugin metrics``. Each application gets its own ``MetricsSink`` (store + optional log writer),
created in ``higgs_configure_app`` and fed by a ``higgs_request_finished`` listener registered into that
application's plugin manager while it serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from higgs.config import HiggsSettings
from higgs.hookspecs import hookimpl
from higgs.metrics import prometheus
from higgs.metrics.jsonl import RotatingJsonlWriter
from higgs.metrics.store import MetricsStore
from higgs.records import RequestRecord
from higgs.runtime import RuntimePaths, record_listening

__all__ = ["METRICS", "MetricsSink", "MetricsStore", "engine_state"]

log = logging.getLogger(__name__)


class MetricsSink:
    """One application's metrics: the rolling store and, when enabled, the JSONL request log."""

    #: A report that took at least this long is worth reusing for a moment; cheaper ones are always fresh.
    EXPENSIVE_S = 0.1

    def __init__(self, settings: HiggsSettings) -> None:
        self.store = MetricsStore(settings.retention.minutes, enabled=settings.retention.enabled)
        #: (finished at, took seconds, bucket_s, body) of the last computed report.
        self._cached: tuple[float, float, float | None, dict[str, Any]] | None = None
        self._computing: asyncio.Lock | None = None
        self.writer: RotatingJsonlWriter | None = None
        cfg = settings.logging.metrics
        if cfg.enabled:
            path = cfg.path or str(RuntimePaths.for_profile(settings.profile).metrics)
            self.writer = RotatingJsonlWriter(path, int(cfg.max_size_mb * 1024 * 1024), cfg.max_files)

    def add(self, record: RequestRecord) -> None:
        """Feed one finished request to the store and the log."""
        self.store.add(record)
        if self.writer is not None:
            self.writer.write(record.model_dump(mode="json"))

    async def report(self, bucket_s: float | None = None) -> dict[str, Any]:
        """The store's report, computed off the event loop (an hour of busy traffic takes a while).

        A report that was expensive to compute is reused for twice as long as it took, so dashboards and
        scrapers polling together share one computation; cheap ones are always fresh.
        """
        if self._computing is None:
            self._computing = asyncio.Lock()
        async with self._computing:
            if self._cached is not None:
                finished, took, bucket, body = self._cached
                if bucket == bucket_s and took >= self.EXPENSIVE_S and time.monotonic() - finished < 2 * took:
                    return body
            started = time.monotonic()
            body = await asyncio.to_thread(self.store.report, bucket_s=bucket_s)
            finished = time.monotonic()
            self._cached = (finished, finished - started, bucket_s, body)
            return body

    def close(self) -> None:
        """Flush and stop the log writer."""
        if self.writer is not None:
            self.writer.close()


METRICS: web.AppKey[MetricsSink] = web.AppKey("higgs.metrics")


class _SinkHooks:
    """Per-app hook object registered into that app's plugin manager while it serves.

    Registering per app (instead of one module-level listener) keeps two apps in one process (tests, an
    embedded gateway) from counting each other's requests.
    """

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink

    @hookimpl
    def higgs_request_finished(self, record: RequestRecord) -> None:
        try:
            self.sink.add(record)
        except Exception:  # fire-and-forget: a metrics bug must not break requests
            log.exception("metrics: could not record request %s", record.request_id)


def engine_state(app: web.Application) -> dict[str, dict[str, Any]]:
    """Each provider's ``state()`` (batch size, queue depth, cache bytes, ...); a failing provider says why."""
    from higgs.server.keys import PROVIDERS

    out: dict[str, dict[str, Any]] = {}
    for name, provider in (app.get(PROVIDERS) or {}).items():
        try:
            state = provider.state()
        except Exception as err:  # a metrics page must not fail because one provider does
            state = {"error": f"{type(err).__name__}: {err}"}
        out[name] = {"local": bool(getattr(provider, "local", False)), **(state or {})}
    return out


async def metrics_json(request: web.Request) -> web.Response:
    """``GET /metrics``: totals, rolling windows by model/provider/route, time series, errors, engine state."""
    sink = request.app[METRICS]
    bucket = request.query.get("bucket_s")
    try:
        bucket_s = float(bucket) if bucket else None
        if bucket_s is not None and not 1 <= bucket_s <= 3600:
            raise ValueError
    except ValueError:
        return web.json_response({"error": {"message": "bucket_s must be a number of seconds between 1 and 3600",
                                            "type": "invalid_request_error"}}, status=400)
    body = {**await sink.report(bucket_s), "engine": engine_state(request.app)}
    return web.json_response(body)


async def metrics_prometheus(request: web.Request) -> web.Response:
    """``GET /metrics/prometheus``: the same numbers in Prometheus text format."""
    sink = request.app[METRICS]
    text = prometheus.render(sink.store, engine_state(request.app), await sink.report())
    return web.Response(body=text.encode(), headers={"Content-Type": prometheus.CONTENT_TYPE})


@hookimpl
def higgs_configure_app(app: web.Application, settings: HiggsSettings) -> None:
    """Create this app's sink and add the two metrics routes."""
    sink = MetricsSink(settings)
    app[METRICS] = sink
    app.router.add_get("/metrics", metrics_json)
    app.router.add_get("/metrics/prometheus", metrics_prometheus)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        from higgs.server.keys import REGISTRY

        pm = app[REGISTRY].pm if REGISTRY in app else None
        hooks = _SinkHooks(sink)
        if pm is not None:
            pm.register(hooks, name=f"metrics-sink-{id(hooks)}")
        if sink.writer is not None:
            sink.writer.start()
        try:
            yield
        finally:
            if pm is not None:
                pm.unregister(hooks)
            sink.close()

    app.cleanup_ctx.append(lifecycle)


@hookimpl
def higgs_server_started(app: web.Application, settings: HiggsSettings) -> None:
    """Under ``higgs start``, tell the launcher where this server listens (``higgs.runtime``)."""
    try:
        record_listening(settings.server.host, settings.server.port, config=settings.source)
    except OSError as err:
        log.warning("could not write the runtime state file: %s", err)
