"""Command line: ``aifinops-exporter [--config FILE] [--demo] [--check-config]``.

Flags follow the Prometheus exporter-toolkit (``--web.listen-address``, repeatable,
``--web.config.file``, ``--web.telemetry-path``, ``--log.level``, ``--log.format``); each
overrides its configuration field (:data:`FLAGS_HELP`).

Exit codes: 0 on a clean stop, 2 when the configuration or a flag is invalid (the message
names the field and the value; an unwritable ``state.path`` directory, a configuration or
state path that is not a regular file, an empty file and one without any source — unless
``allow_no_sources`` — included), 1 on any
other start-up failure (an address in use: one ``cannot_start`` log line).

Signals: SIGTERM and SIGINT stop gracefully (no new connections; requests in flight get
:data:`SHUTDOWN_TIMEOUT` seconds to finish; the refresh loop is cancelled; the state file,
when configured, is written; exit 0). SIGHUP reloads the configuration
(``web/lifecycle.py``: validated first, the old one kept on error).
With ``server.web_config_file`` holding ``tls_server_config``, the exporter serves HTTPS.

Processes (``server.refresh_process``): ``separate`` (the default) makes this process the
front (``web/front.py``), which starts the refresh engine as a child with the same command
line plus ``--engine-fd``/``--engine-socket`` and serves from what it publishes; SIGTERM and
SIGINT stop the front's listeners, then the engine (which writes the state file), then the
front exits 0; SIGHUP is passed to the engine. A configuration error is found here, before the
engine starts (exit 2); an engine that fails before its first publication makes the front exit
with its code. ``inline`` serves and refreshes in this one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from aifinops.logs import LEVELS, configure_logging
from aifinops.settings import (
    ConfigError,
    Settings,
    load_settings,
    settings_from_mapping,
)
from aifinops.version import __version__, revision

log = structlog.get_logger("aifinops")


FLAGS_HELP = """\
Flags follow the Prometheus exporter-toolkit. Precedence: a flag, then the configuration
file (and its AIFINOPS__ environment overrides), then the default.

  --web.listen-address   server.listen_address + server.port   (0.0.0.0:9877)
  --web.config.file      server.web_config_file                (none: HTTP, no auth)
  --web.telemetry-path   server.telemetry_path                 (/metrics)
  --log.level            logging.level                         (info)
  --log.format           logging.format                        (auto: json unless a terminal)

Exit codes: 0 clean stop, 2 invalid configuration or flags, 1 any other start-up failure
(an address already in use included).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aifinops-exporter",
        description="Prometheus exporter for GPU and LLM token cost per tenant.",
        epilog=FLAGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML configuration file (see config/example.yaml)")
    p.add_argument(
        "--web.listen-address",
        dest="web_listen_addresses",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on; repeat it to listen on several ([::1]:9877 for IPv6, "
        ":9877 for every interface). Default: server.listen_address:server.port",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        metavar="FILE",
        help="TLS and basic-auth configuration in the exporter-toolkit format. "
        "Default: server.web_config_file",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        help="path of the Prometheus page. Default: server.telemetry_path (/metrics)",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        choices=tuple(LEVELS),
        help="only log events at this level or above. Default: logging.level (info)",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        choices=("logfmt", "json"),
        help="one line per event in this format. Default: logging.format (auto: json, or "
        "readable text on a terminal)",
    )
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
    p.add_argument(
        "--port", type=int, help="override server.port (older form of --web.listen-address)"
    )
    p.add_argument(
        "--listen-address",
        help="override server.listen_address (older form of --web.listen-address)",
    )
    # The refresh engine's side (server.refresh_process: separate): the front starts it
    # with these (web/front.py); not for users.
    p.add_argument("--engine-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--engine-socket", type=Path, help=argparse.SUPPRESS)
    p.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} (revision {revision()})"
    )
    return p.parse_args(argv)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every interface) as ``(host, port)``;
    raises :class:`ConfigError` naming the flag."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"--web.listen-address {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9877")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"--web.listen-address {text!r}: write an IPv6 host in brackets")
    return host, int(port_text)


def listen_addresses(settings: Settings, args: argparse.Namespace) -> list[tuple[str, int]]:
    """Where to listen: every ``--web.listen-address``, else the configured one."""
    if args.web_listen_addresses:
        out = [parse_listen_address(a) for a in args.web_listen_addresses]
        return list(dict.fromkeys(out))  # the same address twice would fail to bind
    return [(settings.server.listen_address, settings.server.port)]


def _with_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with the flags applied (flags win over the file and the environment)."""
    data: dict[str, Any] = settings.model_dump(mode="python", exclude_unset=True)
    server = data.setdefault("server", {})
    if args.port is not None:
        server["port"] = args.port
    if args.listen_address is not None:
        server["listen_address"] = args.listen_address
    if args.demo and args.listen_address is None:
        # The demo's fake upstreams and exporter stay on loopback unless asked otherwise.
        server["listen_address"] = "127.0.0.1"
    if args.web_config_file is not None:
        server["web_config_file"] = args.web_config_file
    if args.telemetry_path is not None:
        server["telemetry_path"] = args.telemetry_path
    logging_ = data.setdefault("logging", {})
    if args.log_level is not None:
        logging_["level"] = args.log_level
    if args.log_format is not None:
        logging_["format"] = args.log_format
    return settings_from_mapping(data, "configuration with command-line flags")


def _bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)``, not yet listening: asyncio calls listen() when
    the site starts, so until the app is set up a client is refused (as before), not queued.
    ``""`` is every interface (IPv4 and IPv6 where the system has both)."""
    sockaddr: tuple[Any, ...]
    if host == "" and socket.has_dualstack_ipv6():
        family, sockaddr = socket.AF_INET6, ("", port)
    else:
        family, *_, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sockaddr = addr[:2]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "" listens on IPv4 too; an explicit IPv6 address only on IPv6 (as Go does).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "" else 1)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind(addresses: list[tuple[str, int]]) -> list[socket.socket]:
    """Sockets bound to ``addresses`` before anything starts, so an address in use fails
    start-up at once; raises :class:`OSError` naming the address."""
    socks: list[socket.socket] = []
    try:
        for host, port in addresses:
            try:
                socks.append(_bound_socket(host, port))
            except OSError as exc:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(exc.errno, f"cannot listen on {where}: {reason}") from exc
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _url(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


SHUTDOWN_TIMEOUT = 10.0
"""Seconds in-flight requests get to finish on SIGTERM before they are cancelled."""


def _die_with_parent() -> None:
    """The engine is killed with its front (kill -9 of the front included: no orphan keeps
    refreshing, and, as in one process, no last state-file write)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _serve(
    settings: Settings,
    socks: list[socket.socket],
    demo: bool,
    demo_gpus: int = 0,
    demo_seed: int = 1,
    loader: Callable[[], Settings] | None = None,
    engine: tuple[int, Path] | None = None,
) -> None:
    """Serve on ``socks`` until SIGINT/SIGTERM; SIGHUP reloads the configuration through
    ``loader``. ``engine``: serve as the refresh engine behind a front instead (the channel's
    file descriptor and the unix socket to serve on; ``web/front.py``), until told to stop or
    the channel closes."""
    from aifinops.web.app import create_app
    from aifinops.web.lifecycle import RELOADER
    from aifinops.web.limits import limit_connections, runner_options
    from aifinops.web.publish import EngineLink
    from aifinops.web.security import WEB_SECURITY

    link = None
    if engine is not None:
        link = await EngineLink.from_fd(engine[0])

    upstreams = None
    if demo:
        # The fakes run in a child process (aifinops/demo/child.py): their CPU is not taken
        # from this process's scrapes and refreshes, at any demo size.
        from aifinops.demo.child import DemoProcess

        upstreams = await DemoProcess.start(demo_gpus, demo_seed)
        try:
            settings = upstreams.settings(settings)
        except BaseException:
            await upstreams.close()
            raise
        if loader is not None:
            base_loader, fakes = loader, upstreams

            def loader() -> Settings:
                return fakes.settings(base_loader())

    app = create_app(settings, link=link)
    reloader = app[RELOADER]
    if loader is not None:
        reloader.load = loader
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT, **runner_options()
    )
    await runner.setup()
    limit_connections(runner)  # web/limits.py: connection cap, header and keep-alive timeouts
    try:
        if engine is not None:
            tls = None
            await web.UnixSite(runner, str(engine[1])).start()
            assert link is not None
            link.start()
        else:
            tls = app[WEB_SECURITY].server_ssl_context()
        for sock in socks:
            await web.SockSite(runner, sock, ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        if upstreams is not None:
            await upstreams.close()
        raise
    scheme = "https" if tls is not None else "http"
    telemetry = settings.server.telemetry_path
    if engine is not None:
        log.info("refresh_engine_serving", socket=str(engine[1]), demo=demo)
    for sock in socks:
        url = _url(sock, scheme)
        log.info(
            "listening",
            url=url,
            metrics=f"{url}{telemetry}",
            demo=demo,
            version=__version__,
            revision=revision(),
        )

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
    if link is not None:
        # The front is gone (its end of the channel closed): stop as on SIGTERM.
        closed = loop.create_task(link.closed.wait())
        closed.add_done_callback(lambda _: stop.set())
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
        if link is not None:
            await link.close()
        if upstreams is not None:
            await upstreams.close()
        log.info("stopped")


async def _serve_front(settings: Settings, socks: list[socket.socket], argv: list[str]) -> int:
    """The front (``server.refresh_process: separate``, ``web/front.py``): start the engine
    with the same command line, serve on ``socks`` once it has published, until SIGINT or
    SIGTERM; SIGHUP is passed on. Returns the exit code (the engine's, when it failed to
    start)."""
    from aifinops.web.front import Engine, create_front
    from aifinops.web.limits import limit_connections, runner_options
    from aifinops.web.security import WEB_SECURITY

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    engine = Engine(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: engine.signal(signal.SIGHUP))
    starting = loop.create_task(engine.start())
    stopping = loop.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not starting.done():
        log.info("stopping")
        await engine.stop()
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("stopped")
        return 0
    failed = starting.result()
    if failed is not None:
        await engine.stop()
        log.error("refresh_engine_failed_to_start", code=failed)
        return failed
    app = create_front(settings, engine)
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT, **runner_options()
    )
    try:
        await runner.setup()
        limit_connections(runner)
        tls = app[WEB_SECURITY].server_ssl_context()
        for sock in socks:
            await web.SockSite(runner, sock, ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        await engine.stop()
        raise
    scheme = "https" if tls is not None else "http"
    telemetry = settings.server.telemetry_path
    for sock in socks:
        url = _url(sock, scheme)
        log.info(
            "listening",
            url=url,
            metrics=f"{url}{telemetry}",
            engine_pid=engine.pid,
            version=__version__,
            revision=revision(),
        )
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        # No new connections, requests in flight finish (those passed to the engine too),
        # then the engine stops (its last state-file write) and is waited for.
        await runner.cleanup()
        await engine.stop()
        log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.engine_fd is not None:
        _die_with_parent()
        # Its lines share the front's stream: say which process wrote them.
        structlog.contextvars.bind_contextvars(process="engine")
        from aifinops.web.publish import ENGINE_NICE

        with contextlib.suppress(OSError):
            os.nice(ENGINE_NICE)
    # Flags first, so a configuration error is logged in the format they ask for.
    configure_logging(args.log_level or "info", args.log_format or "auto")
    try:
        settings = _with_overrides(load_settings(args.config), args)
        addresses = listen_addresses(settings, args)
        configure_logging(settings.logging.level, settings.logging.format)
        from aifinops import assemble

        if not args.demo:  # the demo adds its own fake upstreams
            assemble.check_has_sources(settings)
        assemble.model_context(settings)  # compiles tenancy regexes and loads the GPU price catalog
        if settings.server.web_config_file is not None:
            from aifinops.web.security import load_web_config

            load_web_config(settings.server.web_config_file)
    except ConfigError as exc:
        # One event; the message names every bad field (newlines escaped in json/logfmt).
        log.error("invalid_configuration", error=str(exc))
        return 2
    if args.check_config:
        print("configuration OK")
        return 0
    try:
        # Not with --check-config: it validates the text, wherever the file will run.
        from aifinops.statefile import check_state_dir

        check_state_dir(settings.state)
        # Upstream CAs, client certificates, password files and variables: where it runs.
        assemble.routes(settings)
    except ConfigError as exc:
        log.error("invalid_configuration", error=str(exc))
        return 2

    def loader() -> Settings:
        """The configuration again, as at start-up (SIGHUP, POST /-/reload)."""
        return _with_overrides(load_settings(args.config), args)

    engine = None
    if args.engine_fd is not None and args.engine_socket is not None:
        engine = (args.engine_fd, args.engine_socket)
        addresses = []  # the front listens
    try:
        socks = bind(addresses)
    except OSError as exc:
        log.error("cannot_start", error=exc.strerror or str(exc))
        return 1

    from aifinops.offload import apply_runtime_settings

    apply_runtime_settings()
    try:
        if engine is None and settings.server.refresh_process == "separate":
            return asyncio.run(_serve_front(settings, socks, raw_argv))
        asyncio.run(
            _serve(settings, socks, args.demo, args.demo_gpus, args.demo_seed, loader, engine)
        )
    except OSError as exc:
        log.error("cannot_start", error=str(exc))
        return 1
    finally:
        for sock in socks:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
