"""The aiohttp application: app factory, background refresh, and the read-only endpoints.

``/metrics`` writes the bytes prepared by the last refresh (gzip when the scraper accepts
it); it never waits on an upstream or formats a sample. ``/healthz`` answers while the
process serves; ``/readyz`` turns 200 after the first refresh that had data from a source,
and 503 while the refresh loop is stalled (``Refresher.stalled``).
``POST /api/v1/usage`` (``web/usage.py``) takes pushed token usage when
``tokens.push.enabled``; the rest of ``/api/v1`` (budgets, ROI, routing, recommendations,
chargeback, OpenAPI) and its bearer-token auth are in ``web/api.py``.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import structlog
from aiohttp import web

from aifinops.exposition.families import BuildInfo
from aifinops.exposition.process import process_exposition
from aifinops.exposition.render import CONTENT_TYPE
from aifinops.model.gpu_prices import GpuPricer
from aifinops.model.report import ModelContext
from aifinops.refresh import Refresher
from aifinops.settings import Settings
from aifinops.sources.base import Source
from aifinops.sources.gpu_catalog import load_gpu_catalog
from aifinops.sources.push import UsageStore
from aifinops.sources.upstream import UpstreamTransport, build_client, upstream_routes
from aifinops.statefile import StateStore
from aifinops.version import RULES_VERSION, __version__, revision
from aifinops.web.api import register_api
from aifinops.web.lifecycle import install_lifecycle
from aifinops.web.limits import accepts_compressed_body, request_limits
from aifinops.web.ratelimit import RateLimiter
from aifinops.web.security import install_web_security, may_see_detail
from aifinops.web.usage import USAGE_LIMITER, USAGE_SETTINGS, USAGE_STORE, handle_usage

log = structlog.get_logger("aifinops.web")

SETTINGS = web.AppKey("settings", Settings)
REFRESHER = web.AppKey("refresher", Refresher)
HTTP_CLIENT = web.AppKey("http_client", httpx.AsyncClient)
UPSTREAM_TRANSPORT = web.AppKey("upstream_transport", UpstreamTransport)
REFRESH_TASK = web.AppKey("refresh_task", asyncio.Task[None])

Clock = Callable[[], float]


def model_context(settings: Settings) -> ModelContext:
    """Compile configuration into what the pure model needs (raises ConfigError)."""
    catalog = load_gpu_catalog(settings.gpu_pricing.catalog_file)
    return ModelContext(
        resolver=settings.tenancy.to_model(),
        pricer=GpuPricer(
            catalog=catalog,
            purchase_option=settings.gpu_pricing.purchase_option,
            overrides=dict(settings.gpu_pricing.overrides),
        ),
        idle_threshold=settings.idle_gpu.utilization_threshold,
        idle_window_seconds=settings.idle_gpu.window_seconds,
        max_tenants=settings.limits.max_tenants,
        tokens=settings.tokens.to_model() if settings.tokens.active else None,
        finance=settings.finance_to_model(),
        max_series_per_family=settings.limits.max_series_per_family,
    )


# The price list is never dropped for age: the last good copy beats no prices at all.
PRICES_NEVER_STALE = 10.0 * 365 * 24 * 3600


def token_sources(
    settings: Settings, store: UsageStore | None, *, configured: bool = True
) -> list[tuple[Source[Any], float, float]]:
    """Token analytics sources: the price list, the configured token sources (unless
    ``configured`` is false) and the push store; none when token analytics is off."""
    from aifinops.sources.llm_prices import LlmPriceSource
    from aifinops.sources.push import PushSource
    from aifinops.sources.tokens import TokenSource

    t = settings.tokens
    if not t.active:
        return []
    out: list[tuple[Source[Any], float, float]] = [
        (LlmPriceSource(t.prices), t.prices.timeout_seconds, PRICES_NEVER_STALE)
    ]
    if configured:
        for s in t.sources:
            if s.enabled:
                out.append((TokenSource(s), s.timeout_seconds, s.stale_after_seconds))
    if store is not None:
        out.append((PushSource(store), 1.0, PRICES_NEVER_STALE))
    return out


def usage_store(settings: Settings) -> UsageStore | None:
    """The push store when ``tokens.push.enabled``."""
    push = settings.tokens.push
    if not push.enabled:
        return None
    return UsageStore(
        max_series=push.max_series,
        max_tokens_per_record=push.max_tokens_per_record,
        idempotency_cache_size=push.idempotency_cache_size,
    )


def build_sources(
    settings: Settings, store: UsageStore | None = None, clock: Clock = time.time
) -> list[tuple[Source[Any], float, float]]:
    """The enabled sources with their (timeout, stale_after) settings. An enabled OpenCost
    also gets the month-to-date query (``opencost_month``, every
    ``budgets.refresh_interval_seconds``, dates by ``clock``); latency sources come last."""
    from aifinops.sources.dcgm import DcgmSource
    from aifinops.sources.opencost import OpenCostMonthSource, OpenCostSource, month_timeout

    out: list[tuple[Source[Any], float, float]] = []
    dcgm = settings.sources.dcgm
    if dcgm.enabled:
        out.append((DcgmSource(dcgm), dcgm.timeout_seconds, dcgm.stale_after_seconds))
    oc = settings.sources.opencost
    if oc.enabled:
        out.append((OpenCostSource(oc), oc.timeout_seconds, oc.stale_after_seconds))
        interval = settings.budgets.refresh_interval_seconds
        out.append(
            (
                OpenCostMonthSource(oc, settings.budgets, clock, settings.tenancy),
                month_timeout(oc),
                max(oc.stale_after_seconds, 3 * interval),
            )
        )
    out.extend(token_sources(settings, store))
    out.extend(latency_sources(settings, clock))
    return out


def latency_sources(
    settings: Settings, clock: Clock = time.time
) -> list[tuple[Source[Any], float, float]]:
    """The enabled ``latency.sources`` (measured p95 latency for routing); ``clock`` dates
    the readings of the scrape mode's window."""
    from aifinops.sources.latency import LatencySource

    return [
        (LatencySource(s, clock), s.timeout_seconds, s.stale_after_seconds)
        for s in settings.latency.sources
        if s.enabled
    ]


async def handle_metrics(request: web.Request) -> web.Response:
    exposition = request.app[REFRESHER].snapshot.exposition
    # process_* is read now, the rest was rendered by the last refresh; with gzip, its few
    # hundred bytes are compressed onto the prepared deflate blocks (one gzip member).
    process = process_exposition()
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = exposition.gzipped_with(process)
        resp = web.Response(body=body, headers={"Content-Encoding": "gzip"})
    else:
        resp = web.Response(body=exposition.plain + process)
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    """200/503 for probes, open to all; 503 too while the refresh loop is stalled (refresh.py's
    watchdog: the figures served are getting older and nothing else would say so). The
    per-source detail (error messages name upstream hosts) only for a client that passes the
    same basic auth as ``/metrics``."""
    refresher = request.app[REFRESHER]
    snap = refresher.snapshot
    stalled = refresher.stalled()
    ready = snap.ready and not stalled
    status = 200 if ready else 503
    if not await may_see_detail(request):
        return web.json_response({"ready": ready, "stalled": stalled}, status=status)
    sources = [
        {"source": s.name, "up": s.up, "stale": s.stale, "error": s.last_error}
        for s in (snap.status.sources if snap.status else ())
    ]
    body = {"ready": ready, "stalled": stalled, "sources": sources}
    return web.json_response(body, status=status)


async def handle_index(request: web.Request) -> web.Response:
    snap = request.app[REFRESHER].snapshot
    telemetry = request.app[SETTINGS].server.telemetry_path
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{'up' if s.up else 'down'}</td>"
        f"<td>{'' if s.age_seconds is None else f'{s.age_seconds:.0f}s'}</td>"
        f"<td>{html.escape(s.last_error or '')}</td></tr>"
        for s in (snap.status.sources if snap.status else ())
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>AI FinOps exporter</title></head><body>
<h1>AI FinOps exporter {html.escape(__version__)}</h1>
<p><a href="{html.escape(telemetry)}">{html.escape(telemetry)}</a> &middot;
<a href="/healthz">/healthz</a> &middot;
<a href="/readyz">/readyz</a></p>
<table border="1" cellpadding="4"><tr><th>source</th><th>state</th><th>data age</th>
<th>last error</th></tr>{rows}</table></body></html>"""
    return web.Response(text=page, content_type="text/html")


def create_app(
    settings: Settings,
    *,
    sources: list[tuple[Source[Any], float, float]] | None = None,
    clock: Clock = time.time,
    run_loop: bool = True,
) -> web.Application:
    """Build the application. ``sources`` replaces the configured ones (tests, demo);
    ``run_loop=False`` leaves refreshing to the caller (``await refresher.refresh_once()``)."""
    # request_limits (web/limits.py): compressed bodies refused or capped, body deadline.
    app = web.Application(
        client_max_size=settings.server.max_request_body_bytes, middlewares=[request_limits]
    )
    app[SETTINGS] = settings
    context = model_context(settings)
    build = BuildInfo(
        version=__version__,
        rules_version=RULES_VERSION,
        gpu_price_catalog_version=context.pricer.catalog.version,
        revision=revision(),
    )
    store = usage_store(settings)
    if sources is None:
        chosen = build_sources(settings, store, clock)
    else:
        # Given sources replace the configured upstreams; the price list and the push store
        # are local and always added when token analytics is on.
        chosen = [*sources, *token_sources(settings, store, configured=False)]

    # Each upstream's TLS and credentials (raises ConfigError naming the field).
    routes = upstream_routes(settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        client, transport = build_client(routes)
        app[HTTP_CLIENT] = client
        app[UPSTREAM_TRANSPORT] = transport
        # With a state file, pushes are journalled before their 202 (sources/push.py).
        state = StateStore.from_settings(settings, usage=store)
        app[REFRESHER] = Refresher(
            chosen,
            context,
            build,
            client,
            clock=clock,
            state_store=state,
            interval=settings.refresh.interval_seconds,
        )
        if run_loop:
            app[REFRESH_TASK] = asyncio.create_task(
                app[REFRESHER].run(settings.refresh.interval_seconds)
            )
        try:
            yield
        finally:
            if run_loop:
                task = app[REFRESH_TASK]
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # the loop never raises; if it did, still save and close
                    log.exception("refresh_loop_failed")
            # The state file's last write (SIGTERM): the last completed refresh.
            await app[REFRESHER].save_state()
            if state is not None and state.journal is not None:
                state.journal.close()
            await client.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get(settings.server.telemetry_path, handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/", handle_index)
    register_api(
        app,
        settings,
        report=lambda: app[REFRESHER].snapshot.report if REFRESHER in app else None,
        context=lambda: app[REFRESHER].context.finance if REFRESHER in app else None,
    )
    if store is not None:
        app[USAGE_STORE] = store
        app[USAGE_SETTINGS] = settings.tokens.push
        app[USAGE_LIMITER] = RateLimiter(
            settings.tokens.push.rate_limit_per_second, settings.tokens.push.rate_limit_burst
        )
        app.router.add_post("/api/v1/usage", accepts_compressed_body(handle_usage))
    # TLS/basic auth (web/security.py) and config reload (web/lifecycle.py)
    install_web_security(app, settings.server.web_config_file)
    install_lifecycle(app, settings, clock=clock, explicit_sources=sources is not None)
    return app
