"""The front process (``server.refresh_process: separate``, the default).

Why a process: a refresh holds the interpreter lock for most of a second at fleet scale, and
with the refresh on a thread of the serving process every syscall of a request queues behind
it (``offload.py``): a scrape's p50 alone was 12 ms during a refresh at 10k GPUs. Here the
refresh runs in a child, the **engine** (``python -m aifinops ... --engine-fd N``: today's app
on a private unix socket, ``web/app.py`` with an :class:`~aifinops.web.publish.EngineLink`),
which publishes each snapshot over a socketpair (``web/publish.py``).

The front binds the listen sockets and owns TLS, basic auth, the toolkit's rate limit and
headers, the API's bearer tokens, the request limits and the connection cap, as the inline
app does. It answers ``/metrics`` (its own ``process_*`` and the engine's state appended),
``/healthz``, ``/readyz``, ``/`` and the prepared API answers from the last publication, with
no call to the engine; every other request is passed to the engine's socket (503
``engine_unavailable`` while it is down), with the client's address in
:data:`~aifinops.web.publish.FRONT_CLIENT_HEADER`.

Supervision: an engine that exits is started again after 1 s, doubling to 30 s (back to 1 s
once one has run for a minute); meanwhile the last page and answers are served, and
``/readyz`` says 503 once the engine has published nothing for its stall window. A new
engine's first page (before its first refresh: no figures) does not replace a page that had
them; its readiness does. SIGTERM/SIGINT: the front stops accepting, lets requests finish,
then sends SIGTERM to the engine (which writes the state file) and waits for it. SIGHUP is
passed to the engine, which reloads (what the front enforces is re-read by itself: the web
configuration file and token files when they change; ``server`` and ``api`` need a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from multidict import CIMultiDict

from aifinops.exposition.catalog import (
    REFRESH_ENGINE_RESIDENT_MEMORY,
    REFRESH_ENGINE_RESTARTS,
    REFRESH_ENGINE_UP,
)
from aifinops.exposition.process import process_exposition
from aifinops.exposition.render import CONTENT_TYPE, Family, render
from aifinops.settings import Settings
from aifinops.web.auth import TokenStore
from aifinops.web.gate import (
    API_TOKENS,
    PUSH_TOKEN_CONFIGURED,
    USAGE_PATH,
    api_middleware,
)
from aifinops.web.index import index_page
from aifinops.web.limits import accepts_compressed_body, request_limits
from aifinops.web.publish import (
    EMPTY_PAGE,
    FRONT_CLIENT_HEADER,
    WRITE_CHUNK,
    Bytes,
    ProtocolError,
    Publication,
    decode_publication,
    read_message,
    wanted_frame,
)
from aifinops.web.security import install_web_security, may_see_detail

log = structlog.get_logger("aifinops.web.front")

START_TIMEOUT_S = 600.0
"""How long the front waits for the first engine's first publication (a 10k-GPU demo starts
its fakes first)."""
STOP_TIMEOUT_S = 30.0
"""How long the engine gets to stop (its last state-file write) before it is killed."""
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STEADY_S = 60.0
"""An engine that ran this long before it exited is restarted after :data:`BACKOFF_FIRST_S`
again."""
PROXY_TIMEOUT_S = 60.0
WANTED_RESEND_S = 60.0
"""How often the front tells the engine again that a prepared answer is still asked for
(the engine keeps preparing it for ``PREPARE_WINDOW_S`` = 600 s after)."""

# Hop-by-hop headers (RFC 9110 7.6.1) and what the front sets itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        FRONT_CLIENT_HEADER.lower(),
    }
)
_HOP_OUT = _HOP | {"date", "server"}


def _rss_of(pid: int) -> float | None:
    """Resident bytes of ``pid`` (Linux ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None


class Engine:
    """The engine child: started, watched, restarted, stopped; holds what it published."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        python: str = sys.executable,
        socket_path: Path | None = None,
    ) -> None:
        """``argv``: the front's command line, given to the engine it starts.
        ``socket_path``: an engine this front does not start (:meth:`attach`) serves there."""
        self._argv = list(argv)
        self._python = python
        self._dir: Path | None = None
        if socket_path is None:
            self._dir = Path(tempfile.mkdtemp(prefix="aifinops-engine-"))  # mode 0700
            socket_path = self._dir / "engine.sock"
        self.socket_path = socket_path
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._first = asyncio.Event()
        # Buffers reused by gzip scrapes (_GzipPage).
        self.gzip_buffers: list[bytearray] = []
        self._started_at = 0.0
        self._sent: dict[str, float] = {}
        # The page and answers served (the last publication with figures, or the latest
        # while none had any), and the latest publication (readiness, watchdog, sources).
        self.page: Publication | None = None
        self.latest: Publication | None = None
        self.up = False
        self.restarts = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> int | None:
        """Start the engine and wait for its first publication: None, or the engine's exit
        code when it exited first (a start-up failure the front exits with)."""
        await self._spawn()
        assert self._proc is not None
        exited = asyncio.create_task(self._proc.wait())
        first = asyncio.create_task(self._first.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, first, stopping},
                timeout=START_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (exited, first, stopping):
                task.cancel()
        if self._stopping.is_set():
            return None  # stopped while starting (SIGTERM): stop() waits for the engine
        if first in done or (self._first.is_set() and exited not in done):
            self._supervisor = asyncio.create_task(self._supervise())
            return None
        if exited in done:
            return self._proc.returncode if self._proc.returncode is not None else 1
        log.error("refresh_engine_start_timeout", after_seconds=START_TIMEOUT_S)
        return 1

    async def attach(self, channel: socket.socket) -> None:
        """Take publications from an engine this front did not start (the benchmark runs
        one in its own process) on ``channel``; returns after the first one. No supervision:
        when it goes, the front serves its last page and says it is down."""
        reader, writer = await asyncio.open_connection(sock=channel, limit=1 << 20)
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read(reader, None))
        self.up = True
        await self._first.wait()

    async def _spawn(self) -> None:
        front_end, engine_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self._proc = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "aifinops",
                *self._argv,
                "--engine-fd",
                str(engine_end.fileno()),
                "--engine-socket",
                str(self.socket_path),
                pass_fds=(engine_end.fileno(),),
                # Its own session: a terminal's Ctrl-C reaches the front, which forwards it.
                start_new_session=True,
            )
        except BaseException:
            front_end.close()
            raise
        finally:
            engine_end.close()
        self._started_at = time.monotonic()
        reader, writer = await asyncio.open_connection(sock=front_end, limit=1 << 20)
        self._writer = writer
        self._sent = {}
        self._reader_task = asyncio.create_task(self._read(reader, self._proc))
        self.up = True
        log.info("refresh_engine_started", pid=self._proc.pid)

    async def _read(
        self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process | None
    ) -> None:
        """Take the engine's publications until its end of the channel closes."""
        try:
            while True:
                header, blobs = await read_message(reader)
                if header["kind"] != "publish":
                    continue
                self._accept(decode_publication(header, blobs))
                del header, blobs
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the engine exited; _supervise restarts it
        except ProtocolError as exc:
            log.error("refresh_engine_channel_broken", error=str(exc))
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if proc is None:
            self.up = False

    def _accept(self, pub: Publication) -> None:
        # One assignment each: a request reads a whole publication or the previous one.
        # Only a page from before the engine's first refresh (no sources yet) is held back;
        # after one, its page is the truth, upstreams down included (never ready then).
        if pub.ready or pub.sources is not None or self.page is None or not self.page.ready:
            self.page = pub
        else:  # its state only: at most the current and the incoming page are held
            pub = replace(pub, gzipped=EMPTY_PAGE, answers={})
        self.latest = pub
        self._first.set()

    async def _supervise(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            await self._drop_channel()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - self._started_at
            if ran >= STEADY_S:
                delay = BACKOFF_FIRST_S
            self.restarts += 1
            log.error(
                "refresh_engine_exited", code=code, ran_seconds=round(ran, 1), restart_in=delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = min(delay * 2, BACKOFF_MAX_S)
            try:
                await self._spawn()
            except OSError as exc:
                log.error("refresh_engine_spawn_failed", error=str(exc))
                self._proc = proc  # exited: wait() returns at once, and the backoff grows

    async def _drop_channel(self) -> None:
        self.up = False
        if self._reader_task is not None:
            # The engine is gone: its end closed, so the reader ends by itself.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader_task), 5.0)
            self._reader_task.cancel()
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the engine and wait for it (killed after ``timeout``); its exit code."""
        self._stopping.set()
        proc = self._proc
        code = None
        if proc is not None:
            if proc.returncode is None:
                self.signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    log.error("refresh_engine_stop_timeout", after_seconds=timeout)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    code = await proc.wait()
            else:
                code = proc.returncode
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._drop_channel()
        if self._session is not None:
            await self._session.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        return code

    # --- talking to the engine ------------------------------------------------------------
    def asked(self, path: str) -> None:
        """The front answered the preparable ``path``: tell the engine (once a minute)."""
        now = time.monotonic()
        if now - self._sent.get(path, -WANTED_RESEND_S) < WANTED_RESEND_S:
            return
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        self._sent[path] = now
        for piece in wanted_frame([path]):
            writer.write(piece)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S),
            )
        return self._session

    def families(self) -> list[Family]:
        pid = self.pid
        rss = _rss_of(pid) if pid is not None and self.up else None
        families = [
            Family(REFRESH_ENGINE_UP, [((), 1.0 if self.up else 0.0)]),
            Family(REFRESH_ENGINE_RESTARTS, [((), float(self.restarts))]),
        ]
        if rss is not None:
            families.append(Family(REFRESH_ENGINE_RESIDENT_MEMORY, [((), rss)]))
        return families

    def stalled(self) -> bool:
        """The engine's own watchdog flag, or nothing heard from it for its stall window."""
        pub = self.latest
        if pub is None:
            return True
        quiet = time.monotonic() - pub.received_at
        return pub.stalled or (pub.stall_seconds > 0 and quiet > pub.stall_seconds)


ENGINE = web.AppKey("refresh_engine", Engine)
GZIP_BUFFERS = 4
"""Buffers the front keeps for gzip scrapes (one per scrape in flight beyond them is made
and dropped): a page's gzip member each, ~1 MB at 10k GPUs."""
FRONT_SETTINGS = web.AppKey("front_settings", Settings)


class _Pieces(Payload):
    """A body written a :data:`~aifinops.web.publish.WRITE_CHUNK` at a time from the pieces
    given (views into a publication's buffer): joined, each scrape held a copy of the page;
    pieces below the pinned mmap threshold keep the copies aiohttp and the transport make
    (headers joined to the first, what the socket did not take at once) on the heap."""

    def __init__(self, pieces: Sequence[Bytes], content_type: str) -> None:
        super().__init__(tuple(pieces), content_type=content_type)
        self._size = sum(len(p) for p in pieces)
        self._autoclose = True

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for piece in self._value:
            view = memoryview(piece)
            for at in range(0, len(view), WRITE_CHUNK):
                await writer.write(view[at : at + WRITE_CHUNK])


class _GzipPage(_Pieces):
    """A gzip scrape: the publication's deflate blocks, the tail's and the trailer copied
    into a buffer the front reuses, then written in two steps (a small first piece, which
    aiohttp joins to the headers, then the rest). Why: sent straight from the publication's
    pieces, scrapes while a refresh ran missed their p99 target (bench/README.md); joined
    into a fresh bytes object per scrape, each scrape page-faulted a new mapping."""

    def __init__(self, pieces: Sequence[Bytes], pool: list[bytearray]) -> None:
        super().__init__(pieces, CONTENT_TYPE)
        self._pool = pool
        self._total = sum(len(p) for p in pieces)

    async def write(self, writer: AbstractStreamWriter) -> None:
        size = self._total
        pool = self._pool
        buf = pool.pop() if pool else bytearray()
        if len(buf) < size:
            buf = bytearray(size + (size >> 4))  # room for the next pages to grow
        view = memoryview(buf)
        at = 0
        for piece in self._value:
            view[at : at + len(piece)] = piece
            at += len(piece)
        try:
            await writer.write(view[: min(size, WRITE_CHUNK)])
            if size > WRITE_CHUNK:
                await writer.write(view[WRITE_CHUNK:size])
        finally:
            view.release()
            # Reused only where the transport copies what it did not send (plain TCP);
            # a TLS transport may keep a view of it until it is encrypted.
            transport = getattr(writer, "transport", None)
            plain = transport is not None and transport.get_extra_info("sslcontext") is None
            if plain and len(pool) < GZIP_BUFFERS:
                pool.append(buf)


class _PlainPage(Payload):
    """A plain scrape: the publication's page inflated a piece at a time, then the tail
    (the front keeps only the gzip member; Prometheus asks for gzip, people for plain)."""

    def __init__(self, page: Publication, tail: bytes) -> None:
        super().__init__(page, content_type=CONTENT_TYPE)
        self._tail = tail
        self._size = page.plain_size + len(tail)
        self._autoclose = True

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        page: Publication = self._value
        return b"".join((*page.iter_plain(), self._tail)).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        page: Publication = self._value
        for piece in page.iter_plain(WRITE_CHUNK):
            await writer.write(piece)
            # Inflating takes CPU: other requests run between pieces.
            await asyncio.sleep(0)
        await writer.write(self._tail)


async def handle_metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    page = engine.page
    assert page is not None  # the front listens after the first publication
    tail = process_exposition() + render(engine.families())
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = _GzipPage(page.gzip_pieces(tail), engine.gzip_buffers)
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})
    return web.Response(body=_PlainPage(page, tail))


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    """As the inline app's (``web/app.py``), from the latest publication; stalled also when
    the engine has published nothing for its stall window (down, wedged or stopped)."""
    engine = request.app[ENGINE]
    pub = engine.latest
    stalled = engine.stalled()
    ready = pub is not None and pub.ready and not stalled
    status = 200 if ready else 503
    if not await may_see_detail(request):
        return web.json_response({"ready": ready, "stalled": stalled}, status=status)
    sources = [
        {"source": s.source, "up": s.up, "stale": s.stale, "error": s.error}
        for s in ((pub.sources or ()) if pub is not None else ())
    ]
    body = {"ready": ready, "stalled": stalled, "sources": sources}
    return web.json_response(body, status=status)


async def handle_index(request: web.Request) -> web.Response:
    pub = request.app[ENGINE].latest
    telemetry = request.app[FRONT_SETTINGS].server.telemetry_path
    sources = (pub.sources or ()) if pub is not None else ()
    return index_page(((s.source, s.up, s.age_seconds, s.error) for s in sources), telemetry)


def _unavailable(why: str) -> web.Response:
    return web.json_response(
        {
            "error": {
                "code": "unavailable",
                "message": f"the refresh engine is not answering ({why}); retry shortly",
                "field": None,
            }
        },
        status=503,
        headers={"Retry-After": "1"},
    )


async def handle_any(request: web.Request) -> web.StreamResponse:
    """A prepared API answer from the last publication, else the engine's answer."""
    engine = request.app[ENGINE]
    if request.method in ("GET", "HEAD"):
        page = engine.page
        answer = page.answers.get(request.path_qs) if page is not None else None
        if answer is not None:
            engine.asked(request.path_qs)
            # Written in pieces like the page: as one body, aiohttp joined the headers to
            # all of it, a copy of megabytes (the chargeback files) per request.
            ctype = answer.content_type
            if answer.charset:
                ctype += f"; charset={answer.charset}"
            response = web.Response(body=_Pieces((answer.body,), ctype))
            response.headers.update(answer.headers)
            return response
    return await _forward(request, engine)


async def handle_usage(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/usage``, passed on with its body as a stream (it may be compressed and
    over ``client_max_size``: the engine reads it under ``tokens.push.max_body_bytes``)."""
    return await _forward(request, request.app[ENGINE], stream=True)


async def _forward(request: web.Request, engine: Engine, stream: bool = False) -> web.Response:
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
    headers[FRONT_CLIENT_HEADER] = request.remote or ""
    data: object = None
    if request.body_exists:
        if stream:
            data = request.content
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
        else:
            data = await request.read()  # client_max_size: 413 as inline
    if not engine.up:
        return _unavailable("restarting")
    try:
        async with engine.session().request(
            request.method,
            f"http://engine{request.path_qs}",
            headers=headers,
            data=data,
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            out = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_OUT)
            return web.Response(status=resp.status, body=body, headers=out)
    except TimeoutError:
        return _unavailable("timed out")
    except aiohttp.ClientError as exc:
        log.warning("refresh_engine_request_failed", error=type(exc).__name__)
        return _unavailable("down")


def create_front(settings: Settings, engine: Engine) -> web.Application:
    """The front's application: the same middlewares as the inline app (request limits, the
    API's bearer tokens, the toolkit's rate limit and headers, basic auth)."""
    app = web.Application(
        client_max_size=settings.server.max_request_body_bytes, middlewares=[request_limits]
    )
    app[ENGINE] = engine
    app[FRONT_SETTINGS] = settings
    app[API_TOKENS] = TokenStore.from_settings(settings.api)
    app[PUSH_TOKEN_CONFIGURED] = settings.tokens.push.bearer_token_file is not None
    app.middlewares.append(api_middleware)
    app.router.add_get(settings.server.telemetry_path, handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/", handle_index)
    if settings.tokens.push.enabled:
        app.router.add_post(USAGE_PATH, accepts_compressed_body(handle_usage))
    app.router.add_route("*", "/{tail:.*}", handle_any)
    install_web_security(app, settings.server.web_config_file)
    return app


__all__ = ["ENGINE", "Engine", "create_front"]
