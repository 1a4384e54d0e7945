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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from aifinops import assemble
from aifinops.assemble import Clock, SourceSpec
from aifinops.exposition.families import BuildInfo
from aifinops.exposition.process import process_exposition
from aifinops.exposition.render import CONTENT_TYPE
from aifinops.model.energy import EnergyReport
from aifinops.model.finance import FinanceReport
from aifinops.model.report import Report
from aifinops.refresh import Refresher
from aifinops.settings import Settings
from aifinops.version import RULES_VERSION, __version__, revision
from aifinops.web.api import (
    API_READ_CACHE,
    PreparedAnswers,
    ReadCache,
    ReadView,
    answer_preparer,
    prepare_answers,
    register_api,
)
from aifinops.web.index import index_page

# The keys live in web/keys.py (the reload path reads them); re-exported for the app's users.
from aifinops.web.keys import HTTP_CLIENT as HTTP_CLIENT
from aifinops.web.keys import REFRESH_TASK as REFRESH_TASK
from aifinops.web.keys import REFRESHER as REFRESHER
from aifinops.web.keys import SETTINGS as SETTINGS
from aifinops.web.keys import UPSTREAM_TRANSPORT as UPSTREAM_TRANSPORT
from aifinops.web.lifecycle import install_lifecycle
from aifinops.web.limits import accepts_compressed_body, request_limits
from aifinops.web.publish import FRONT_CLIENT_HEADER
from aifinops.web.ratelimit import RateLimiter
from aifinops.web.security import install_web_security, may_see_detail
from aifinops.web.usage import USAGE_LIMITER, USAGE_SETTINGS, USAGE_STORE, handle_usage

if TYPE_CHECKING:
    from aifinops.web.publish import EngineLink

log = structlog.get_logger("aifinops.web")


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
    sources = snap.status.sources if snap.status else ()
    return index_page(((s.name, s.up, s.age_seconds, s.last_error) for s in sources), telemetry)


def _energy(app: web.Application) -> EnergyReport | None:
    """The current snapshot's measured electricity (None before the first report)."""
    if REFRESHER not in app:
        return None
    report = app[REFRESHER].snapshot.report
    return report.energy if report is not None else None


@web.middleware
async def front_client(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The engine's requests come from the front: their client is the one it names."""
    remote = request.headers.get(FRONT_CLIENT_HEADER)
    if remote is not None:
        request = request.clone(remote=remote)
    return await handler(request)


def _preparer(
    settings: Settings, cache: ReadCache, link: EngineLink | None
) -> Callable[[Report | None, FinanceReport | None], PreparedAnswers | None]:
    """The refresh's ``prepare`` hook; behind a front, the requests it answered from the
    last publication count as asked too (they never reach this process's cache)."""
    if link is None:
        return answer_preparer(settings, cache)

    def prepare(report: Report | None, finance: FinanceReport | None) -> PreparedAnswers | None:
        wanted = cache.wanted() | link.wanted()
        if not wanted:
            return None
        energy = report.energy if report is not None else None
        return prepare_answers(ReadView(finance, report, energy, settings), wanted)

    return prepare


def create_app(
    settings: Settings,
    *,
    sources: list[SourceSpec] | None = None,
    clock: Clock = time.time,
    run_loop: bool = True,
    link: EngineLink | None = None,
) -> web.Application:
    """Build the application. ``sources`` replaces the configured ones (tests, demo);
    ``run_loop=False`` leaves refreshing to the caller (``await refresher.refresh_once()``).
    ``link``: this app is the refresh engine behind a front (``web/front.py``): each
    snapshot is published on it, and TLS, basic auth and the toolkit's rate limit are the
    front's (this app serves a private unix socket that only the front reaches)."""
    # request_limits (web/limits.py): compressed bodies refused or capped, body deadline.
    middlewares = [request_limits] if link is None else [front_client, request_limits]
    app = web.Application(
        client_max_size=settings.server.max_request_body_bytes, middlewares=middlewares
    )
    app[SETTINGS] = settings
    context = assemble.model_context(settings)
    build = BuildInfo(
        version=__version__,
        rules_version=RULES_VERSION,
        gpu_price_catalog_version=context.pricer.catalog.version,
        revision=revision(),
    )
    store = assemble.usage_store(settings)
    if sources is None:
        chosen = assemble.build_sources(settings, store, clock)
    else:
        # Given sources replace the configured upstreams; the price list and the push store
        # are local and always added when token analytics is on.
        chosen = [*sources, *assemble.token_sources(settings, store, configured=False)]

    # Each upstream's TLS and credentials (raises ConfigError naming the field).
    routes = assemble.routes(settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        client, transport = assemble.build_client(routes)
        app[HTTP_CLIENT] = client
        app[UPSTREAM_TRANSPORT] = transport
        # With a state file, pushes are journalled before their 202 (usage.py).
        state = assemble.state_store(settings, store)
        app[REFRESHER] = Refresher(
            chosen,
            context,
            build,
            client,
            clock=clock,
            state_store=state,
            interval=settings.refresh.interval_seconds,
            after_refresh=assemble.AFTER_REFRESH,
            # The API's default answers that clients ask for, built with each snapshot
            # (web/api.py PreparedAnswers).
            prepare=_preparer(settings, app[API_READ_CACHE], link),
            on_publish=link.publish if link is not None else None,
        )
        if link is not None:
            refresher = app[REFRESHER]
            link.status = lambda: (refresher.stalled(), refresher.stall_seconds())
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
        finance=lambda: app[REFRESHER].snapshot.finance if REFRESHER in app else None,
        context=lambda: app[REFRESHER].context.finance if REFRESHER in app else None,
        report=lambda: app[REFRESHER].snapshot.report if REFRESHER in app else None,
        energy=lambda: _energy(app),
        prepared=lambda: app[REFRESHER].snapshot.prepared if REFRESHER in app else None,
    )
    if store is not None:
        app[USAGE_STORE] = store
        app[USAGE_SETTINGS] = settings.tokens.push
        app[USAGE_LIMITER] = RateLimiter(
            settings.tokens.push.rate_limit_per_second, settings.tokens.push.rate_limit_burst
        )
        app.router.add_post("/api/v1/usage", accepts_compressed_body(handle_usage))
    # TLS/basic auth (web/security.py; the front's, behind one) and config reload
    # (web/lifecycle.py)
    if link is None:
        install_web_security(app, settings.server.web_config_file)
    install_lifecycle(app, settings, clock=clock, explicit_sources=sources is not None)
    return app
