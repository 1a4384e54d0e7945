"""A hostile proxy in front of the demo OpenCost: the attacks the fakes' fault switch does not
offer (issue 14), on top of the ones it does (which it passes through).

=====================  ==========================================================================
mode                   answer
=====================  ==========================================================================
``pass``               the fake's answer (its own fault mode applies: down, slow, garbage, huge)
``bomb``               HTTP 200, ``Content-Encoding: gzip``, :data:`BOMB_INFLATED` bytes of zeros
                       in a few hundred kB (what a compromised upstream or a proxy gone wrong
                       can send; httpx would inflate each received chunk whole)
``junk:<size>``        HTTP 200, ``<size>`` bytes that are not JSON (a big unparsable answer)
``surrogate``          the fake's answer with a lone UTF-16 surrogate (``"\\ud800"``, as JSON
                       allows) in every row's tenant label: ``tenant-\\ud800-<n>``
=====================  ==========================================================================

The surrogate is written the way the JSON grammar allows it (an escape); OpenCost's own
encoder (Go's ``encoding/json``) would write U+FFFD instead, but anything between it and the
exporter (a proxy, a cache, a compromised node) can send this.
"""

from __future__ import annotations

import functools
import gzip
import json
from typing import Any

import aiohttp
from aiohttp import web

from aifinops.demo.cluster import TENANT_LABEL
from aifinops.demo.upstreams import sanitize_label_key

BOMB_INFLATED = 256 * 1024 * 1024
TENANT_KEY = sanitize_label_key(TENANT_LABEL)
SURROGATE_TENANT = "tenant-\ud800"


@functools.cache
def bomb() -> bytes:
    """:data:`BOMB_INFLATED` zero bytes, gzipped (about 250 kB; built once)."""
    return gzip.compress(bytes(BOMB_INFLATED), compresslevel=9, mtime=0)


@functools.cache
def junk(size: int) -> bytes:
    """``size`` bytes that are not JSON, built once per size: the proxy shares this process,
    and what it allocates per answer is not the exporter's memory under test."""
    return b"{" + b"\x01" * (size - 1)


def with_surrogates(body: bytes) -> bytes:
    """An ``/allocation/compute`` answer whose pods all carry a tenant label with a lone
    surrogate, written as a JSON escape (``json.dumps`` escapes it: ensure_ascii)."""
    doc = json.loads(body)
    for allocation_set in doc.get("data") or []:
        for n, row in enumerate((allocation_set or {}).values()):
            props = row.get("properties") or {}
            if props.get("pod"):
                labels = props.setdefault("labels", {})
                labels[TENANT_KEY] = f"{SURROGATE_TENANT}-{n % 3}"
    text = json.dumps(doc, separators=(",", ":"))
    assert "\\ud800" in text
    return text.encode()


class HostileProxy:
    """Forwards every request to ``target`` and answers as :attr:`mode` says. Start it on a
    loop of its own (the fakes are other processes to the exporter)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.mode = "pass"
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, shutdown_timeout=1.0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        mode, _, arg = self.mode.partition(":")
        if mode == "bomb":
            return web.Response(
                body=bomb(),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        if mode == "junk":
            return web.Response(body=junk(int(arg)), content_type="application/json")
        assert self._session is not None
        try:
            async with self._session.get(self.target + request.path_qs) as upstream:
                body = await upstream.read()
                status = upstream.status
                content_type = upstream.headers.get("Content-Type", "application/json")
        except (aiohttp.ClientError, TimeoutError):
            # The fake is down (its fault switch): so is this proxy, the same way.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        if mode == "surrogate" and status == 200:
            body = with_surrogates(body)
        response: Any = web.Response(status=status, body=body)
        response.headers["Content-Type"] = content_type
        return response
