"""Configuration reload: SIGHUP (``__main__``) or ``POST /-/reload`` (with
``server.enable_lifecycle``, as Prometheus' ``--web.enable-lifecycle``).

A reload reads the configuration again and checks all of it first — the settings schema (an
empty file, or one without a source unless ``allow_no_sources``, is refused: it would blank
every series), the compiled model context (tenancy regexes, GPU price catalog, finance), the
sources and their TLS and credentials, the web configuration file — and only then applies
it; any error keeps the configuration in force, is logged (``config_reload_failed``) and shows
in ``aifinops_config_last_reload_successful`` 0.
``aifinops_config_last_reload_success_timestamp_seconds`` is the time of the last good load
(start-up included).

What a reload changes, from the next refresh on: tenancy, GPU pricing, idle-GPU threshold and
window, limits, token analytics (sources, price list, self-hosted models, weights), the DCGM
and OpenCost sources (a source that keeps its name keeps its last good data and counters),
budgets, initiatives, routing, recommendations, and the log level. What needs a restart
(a reload that changes it applies the rest and logs ``config_reload_needs_restart`` naming
the sections): ``server`` (address, port, lifecycle, body limit; the web configuration
*file's content* is re-read by itself, see ``web/security.py``), ``refresh.interval_seconds``,
``tokens.push``, ``api`` and ``state`` (the state file is read once, at start-up).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from aifinops import assemble
from aifinops.assemble import Route, SourceSpec
from aifinops.exposition.families import reload_families
from aifinops.logs import configure_logging
from aifinops.model.report import ModelContext
from aifinops.settings import ConfigError, Settings, load_settings
from aifinops.web.keys import REFRESHER, UPSTREAM_TRANSPORT
from aifinops.web.security import load_web_config
from aifinops.web.usage import USAGE_STORE

log = structlog.get_logger("aifinops.web.lifecycle")

Loader = Callable[[], Settings]
RESTART_ONLY = ("server", "refresh", "api", "state")


class Reloader:
    """Reloads the configuration of one app; see the module docstring."""

    def __init__(
        self,
        app: web.Application,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        explicit_sources: bool = False,
    ) -> None:
        self._app = app
        self.settings = settings
        # Set by __main__ to read the file it was started with (and apply its overrides).
        self.load: Loader = lambda: load_settings(None)
        self._clock = clock
        self._explicit_sources = explicit_sources
        self._lock = asyncio.Lock()
        self.successful = True
        self.success_timestamp = time.time()

    async def reload(self) -> tuple[bool, str]:
        """Reload; ``(True, "")`` or ``(False, the error)``. Never raises (but cancellation)."""
        async with self._lock:
            try:
                new, context, sources, routes = await self._prepare()
            except ConfigError as exc:
                return self._failed(str(exc))
            except Exception as exc:  # a bug must not take the running configuration down
                log.exception("config_reload_crashed")
                return self._failed(f"{type(exc).__name__}: {exc}")
            refresher = self._app[REFRESHER]
            refresher.replace_context(context)
            if sources is not None:
                await refresher.replace_sources(sources)
            if UPSTREAM_TRANSPORT in self._app:
                # No fetch is in flight here: replace_sources waited for the refresh.
                await self._app[UPSTREAM_TRANSPORT].replace(routes)
            if new.logging != self.settings.logging:
                configure_logging(new.logging.level, new.logging.format)
            restart = [
                s
                for s in (*RESTART_ONLY, "tokens.push")
                if _section(new, s) != _section(self.settings, s)
            ]
            if restart:
                log.warning("config_reload_needs_restart", sections=restart)
            changed = [
                name
                for name in type(new).model_fields
                if getattr(new, name) != getattr(self.settings, name)
            ]
            self.settings = new
            self.successful = True
            self.success_timestamp = time.time()
            refresher.rerender()
            log.info("config_reloaded", changed=changed)
            return True, ""

    async def _prepare(
        self,
    ) -> tuple[Settings, ModelContext, list[SourceSpec] | None, list[Route]]:
        """Everything the new configuration needs, checked; raises ConfigError."""
        new = await asyncio.to_thread(self.load)
        if not self._explicit_sources:  # given sources (tests, embedding) are not the file's
            assemble.check_has_sources(new)
        context = assemble.model_context(new)
        if new.server.web_config_file is not None:
            load_web_config(new.server.web_config_file)
        sources = None
        if not self._explicit_sources:
            try:
                sources = assemble.build_sources(new, self._app.get(USAGE_STORE), self._clock)
            except ValueError as exc:
                raise ConfigError(f"invalid source configuration: {exc}") from None
        routes = assemble.routes(new)  # CA, certificates, credentials: loadable
        return new, context, sources, routes

    def _failed(self, message: str) -> tuple[bool, str]:
        self.successful = False
        log.error("config_reload_failed", error=message)
        if REFRESHER in self._app:
            self._app[REFRESHER].rerender()
        return False, message


def _section(settings: Settings, dotted: str) -> Any:
    node: Any = settings
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


RELOADER = web.AppKey("reloader", Reloader)


async def handle_reload(request: web.Request) -> web.Response:
    ok, message = await request.app[RELOADER].reload()
    if ok:
        return web.Response(text="configuration reloaded\n")
    return web.Response(status=500, text=f"failed to reload config: {message}\n")


def install_lifecycle(
    app: web.Application,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    explicit_sources: bool = False,
) -> Reloader:
    """Attach a :class:`Reloader` (and ``POST /-/reload`` when enabled); its status
    (``exposition.families.reload_families``) joins the page once the refresher exists."""
    reloader = Reloader(app, settings, clock=clock, explicit_sources=explicit_sources)
    app[RELOADER] = reloader
    if settings.server.enable_lifecycle:
        app.router.add_post("/-/reload", handle_reload)

    async def attach(app: web.Application) -> None:
        # on_startup runs after cleanup_ctx's start, which created the refresher
        app[REFRESHER].extra_families.append(lambda: reload_families(reloader))
        app[REFRESHER].rerender()

    app.on_startup.append(attach)
    return reloader
