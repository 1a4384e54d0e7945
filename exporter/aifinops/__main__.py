"""Command line: ``aifinops-exporter [--config FILE] [--demo] [--check-config]``.

Exit codes: 0 on a clean stop, 2 when the configuration is invalid (the message names the
field and the value; an unwritable ``state.path`` directory, a configuration or state path
that is not a regular file, an empty file and one without any source — unless
``allow_no_sources`` — included), 1 on any other start-up failure.

Signals: SIGTERM and SIGINT stop gracefully (no new connections; requests in flight get
:data:`SHUTDOWN_TIMEOUT` seconds to finish; the refresh loop is cancelled; the state file,
when configured, is written; exit 0). SIGHUP reloads the configuration
(``web/lifecycle.py``: validated first, the old one kept on error).
With ``server.web_config_file`` holding ``tls_server_config``, the exporter serves HTTPS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from aifinops.logs import configure_logging
from aifinops.settings import (
    ConfigError,
    Settings,
    check_has_sources,
    load_settings,
    settings_from_mapping,
)
from aifinops.version import __version__

log = structlog.get_logger("aifinops")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aifinops-exporter",
        description="Prometheus exporter for GPU and LLM token cost per tenant.",
    )
    p.add_argument("--config", type=Path, help="YAML configuration file (see config/example.yaml)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="run against a built-in simulated cluster (fake dcgm-exporter, Prometheus and "
        "OpenCost on 127.0.0.1); no external services needed",
    )
    p.add_argument(
        "--demo-gpus",
        type=int,
        default=0,
        help="with --demo: simulate a cluster of this many GPUs instead of the standard demo",
    )
    p.add_argument("--demo-seed", type=int, default=1, help="with --demo-gpus: layout seed")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--listen-address", help="override server.listen_address")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


def _with_server_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    data: dict[str, Any] = settings.model_dump(mode="python", exclude_unset=True)
    data.setdefault("server", {})
    if args.port is not None:
        data["server"]["port"] = args.port
    if args.listen_address is not None:
        data["server"]["listen_address"] = args.listen_address
    return settings_from_mapping(data, "command line")


SHUTDOWN_TIMEOUT = 10.0
"""Seconds in-flight requests get to finish on SIGTERM before they are cancelled."""


async def _serve(
    settings: Settings,
    demo: bool,
    demo_gpus: int = 0,
    demo_seed: int = 1,
    loader: Callable[[], Settings] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads the configuration through ``loader``."""
    from aifinops.web.app import create_app
    from aifinops.web.lifecycle import RELOADER
    from aifinops.web.limits import limit_connections, runner_options
    from aifinops.web.security import WEB_SECURITY

    upstreams = None
    if demo:
        from aifinops.demo.cluster import ClusterSpec
        from aifinops.demo.run import demo_settings, start_demo

        spec = ClusterSpec.scaled(demo_gpus, seed=demo_seed) if demo_gpus > 0 else None
        upstreams, settings = await start_demo(settings, spec)
        if loader is not None:
            base_loader, fakes = loader, upstreams

            def loader() -> Settings:
                return demo_settings(base_loader(), fakes)

    app = create_app(settings)
    reloader = app[RELOADER]
    if loader is not None:
        reloader.load = loader
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT, **runner_options()
    )
    await runner.setup()
    limit_connections(runner)  # web/limits.py: connection cap, header and keep-alive timeouts
    tls = app[WEB_SECURITY].server_ssl_context()
    site = web.TCPSite(
        runner, settings.server.listen_address, settings.server.port, ssl_context=tls
    )
    await site.start()
    scheme = "https" if tls is not None else "http"
    url = f"{scheme}://{settings.server.listen_address}:{settings.server.port}"
    log.info("listening", url=url, metrics=f"{url}/metrics", demo=demo, version=__version__)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def reload() -> None:
        task = loop.create_task(reloader.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for task in reloads:
            task.cancel()
        # runner.cleanup stops accepting, lets in-flight requests finish (SHUTDOWN_TIMEOUT),
        # then runs the app's cleanup_ctx, which cancels the refresh loop and closes the HTTP
        # client.
        await runner.cleanup()
        if upstreams is not None:
            await upstreams.close()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
        settings = _with_server_overrides(settings, args)
        if args.demo and args.listen_address is None:
            # The demo's fake upstreams and exporter stay on loopback unless asked otherwise.
            settings = _with_server_overrides(
                settings, argparse.Namespace(port=None, listen_address="127.0.0.1")
            )
        configure_logging(settings.logging.level, settings.logging.format)
        if not args.demo:  # the demo adds its own fake upstreams
            check_has_sources(settings)
        from aifinops.web.app import model_context

        model_context(settings)  # compiles tenancy regexes and loads the GPU price catalog
        if settings.server.web_config_file is not None:
            from aifinops.web.security import load_web_config

            load_web_config(settings.server.web_config_file)
    except ConfigError as exc:
        print(f"aifinops-exporter: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print("configuration OK")
        return 0
    try:
        # Not with --check-config: it validates the text, wherever the file will run.
        from aifinops.sources.upstream import upstream_routes
        from aifinops.statefile import check_state_dir

        check_state_dir(settings.state)
        # Upstream CAs, client certificates, password files and variables: where it runs.
        upstream_routes(settings)
    except ConfigError as exc:
        print(f"aifinops-exporter: {exc}", file=sys.stderr)
        return 2

    def loader() -> Settings:
        """The configuration again, as at start-up (SIGHUP, POST /-/reload)."""
        reloaded = _with_server_overrides(load_settings(args.config), args)
        if args.demo and args.listen_address is None:
            reloaded = _with_server_overrides(
                reloaded, argparse.Namespace(port=None, listen_address="127.0.0.1")
            )
        return reloaded

    from aifinops.offload import apply_runtime_settings

    apply_runtime_settings()
    try:
        asyncio.run(_serve(settings, args.demo, args.demo_gpus, args.demo_seed, loader))
    except OSError as exc:
        print(f"aifinops-exporter: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
