"""Limits on what a client can make the server do before any handler's work starts.

aiohttp's defaults suit a trusted network: it inflates a compressed request body for any
path, on the event loop (a 1 MB gzip body to ``/healthz`` became 1 GiB and stalled
``/metrics`` for seconds), accepts any number of connections, and keeps an idle connection
for an hour. Here:

* **compressed bodies**: the server never inflates (``auto_decompress=False``); a request
  with a ``Content-Encoding`` other than ``identity`` is refused with 415 before its handler
  runs, unless the handler is marked :func:`accepts_compressed_body` (the push endpoint),
  which reads its body with :func:`read_body`: inflated in pieces, with a hard cap on the
  inflated size;
* **connections**: at most :data:`MAX_CONNECTIONS` at once (:func:`limit_connections`); one
  more is answered 503 and closed before anything is read;
* **header read timeout and keep-alive**: aiohttp's keep-alive timer runs from the moment a
  connection opens or a response is sent until a complete request head has arrived (bytes
  that trickle in do not reset it), so :data:`KEEPALIVE_TIMEOUT` bounds both a slow request
  head and an idle keep-alive connection;
* **body read timeout**: a request with a body must be read and answered within
  :data:`BODY_TIMEOUT` (408 otherwise).

``__main__`` builds its runner with :func:`runner_options` and calls
:func:`limit_connections`; ``create_app`` installs :func:`request_limits`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("aifinops.web.limits")

MAX_CONNECTIONS = 512
KEEPALIVE_TIMEOUT = 15.0
BODY_TIMEOUT = 30.0
BODY_TIMEOUT_KEY = web.AppKey("request_body_timeout", float)
"""Overrides :data:`BODY_TIMEOUT` for one app (tests)."""

_INFLATE_CHUNK = 64 * 1024
_INFLATES = "_aifinops_accepts_compressed_body"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def runner_options(keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> dict[str, Any]:
    """Keyword arguments for :class:`aiohttp.web.AppRunner` (passed on to each connection's
    handler): no automatic inflation of request bodies, a bounded keep-alive / header wait,
    a bounded drain of an unread body after a response."""
    return {
        "auto_decompress": False,
        "keepalive_timeout": keepalive_timeout,
        "lingering_time": 2.0,
    }


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 25\r\n\r\ntoo many open connections"
)


def limit_connections(runner: web.BaseRunner, limit: int = MAX_CONNECTIONS) -> None:
    """Answer a connection beyond ``limit`` open ones with 503 and close it, before its
    request is read. Call after ``runner.setup()`` and before the site starts.

    aiohttp has no such setting; its server object is told of each new connection by
    ``connection_made``, which is wrapped here (the one hook it offers before a request)."""
    server = runner.server
    if server is None:
        raise RuntimeError("limit_connections: call after runner.setup()")
    made = server.connection_made

    def connection_made(handler: Any, transport: Any) -> None:
        made(handler, transport)
        if len(server.connections) > limit:
            log.warning("connection_refused", reason="limit", limit=limit)
            transport.write(_BUSY)
            handler.force_close()
            transport.close()

    setattr(server, "connection_made", connection_made)  # noqa: B010  (a method, see above)


def accepts_compressed_body(handler: Handler) -> Handler:
    """Mark ``handler`` as reading a ``gzip`` or ``deflate`` body itself, with
    :func:`read_body` (every other handler gets 415 for a compressed body)."""
    setattr(handler, _INFLATES, True)
    return handler


class BodyRefused(Exception):
    """A body :func:`read_body` will not read: ``status`` is the answer (415, 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, inflated when it is ``gzip`` or ``deflate`` encoded; ``None`` when
    it (declared, received or inflated) is over ``limit`` bytes. Raises :class:`BodyRefused`
    for another encoding (415) or a corrupt compressed body (400).

    Inflation runs :data:`_INFLATE_CHUNK` bytes of output at a time, so the work and memory
    stay within the cap however small the compressed body is."""
    encoding = _encoding(request)
    if encoding not in ("identity", "gzip", "deflate"):
        raise BodyRefused(415, f"Content-Encoding {encoding!r} is not accepted")
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    inflate = None
    if getattr(request.content, "total_compressed_bytes", None) is not None:
        pass  # a runner without runner_options() inflated it already (aiohttp's test server)
    elif encoding == "gzip":
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflate = zlib.decompressobj(zlib.MAX_WBITS)
    chunks: list[bytes] = []
    size = 0
    received = 0
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            received += len(chunk)
            if received > limit:
                return None
            if inflate is None:
                size += len(chunk)
                chunks.append(chunk)
                continue
            data = chunk
            while data:
                out = inflate.decompress(data, _INFLATE_CHUNK)
                data = inflate.unconsumed_tail
                size += len(out)
                if size > limit:
                    return None
                chunks.append(out)
                if inflate.eof:
                    break
        if inflate is not None and not inflate.eof:
            raise BodyRefused(400, f"the {encoding} body is cut off")
        return b"".join(chunks)
    except zlib.error as exc:
        raise BodyRefused(400, f"corrupt {encoding} body: {exc}") from None
    finally:
        chunks.clear()  # on a refusal, nothing read stays referenced


def _encoding(request: web.Request) -> str:
    value = request.headers.get("Content-Encoding", "").strip().lower()
    return value or "identity"


@web.middleware
async def request_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a compressed body the handler does not read itself; a deadline for requests
    that carry a body (408)."""
    encoding = _encoding(request)
    inflates = getattr(getattr(request.match_info, "handler", None), _INFLATES, False)
    refused = encoding != "identity" and not (inflates and encoding in ("gzip", "deflate"))
    if refused and request.body_exists:
        resp = web.json_response(
            {"error": "unsupported_encoding", "message": "compressed request bodies are refused"},
            status=415,
            headers={"Accept-Encoding": "identity"},
        )
        resp.force_close()  # the unread body is not drained
        return resp
    if not request.body_exists:
        return await handler(request)
    timeout = request.app.get(BODY_TIMEOUT_KEY, BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            return await handler(request)
    except TimeoutError:
        resp = web.json_response(
            {"error": "request_timeout", "message": f"body not received within {timeout:g}s"},
            status=408,
        )
        resp.force_close()
        return resp


__all__ = [
    "BODY_TIMEOUT",
    "BODY_TIMEOUT_KEY",
    "KEEPALIVE_TIMEOUT",
    "MAX_CONNECTIONS",
    "BodyRefused",
    "accepts_compressed_body",
    "limit_connections",
    "read_body",
    "request_limits",
    "runner_options",
]
