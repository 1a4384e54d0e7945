"""Issue 14, item 5: request limits before work, on the server as ``__main__`` runs it
(``web/limits.py``: runner options, the connection cap, the middleware).

A 1 MB gzip body to ``/healthz`` used to inflate to 1 GiB on the event loop (``/metrics``
stalled 1.5–5.9 s); any number of connections was accepted, a request head could trickle
in for an hour. Each test reproduces the attack against the real server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from aifinops.web.limits import BODY_TIMEOUT_KEY, limit_connections, runner_options

PUSH_CAP = 64 * 1024
BOMB_INFLATED = 1024 * 1024 * 1024  # 1 GiB of zeros: about 1 MB compressed


@functools.cache
def bomb() -> bytes:
    """1 GiB of zeros, gzipped (built in 1 MiB steps: never 1 GiB in memory here)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    out = [c.compress(block) for _ in range(BOMB_INFLATED // len(block))]
    out.append(c.flush())
    return b"".join(out)


@dataclass
class Server:
    url: str
    port: int
    app: web.Application


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """The exporter's app on a runner built as ``__main__`` builds it, with small limits for
    the test (``request.param``: connection cap, keep-alive seconds, body seconds)."""
    cap, keepalive, body_timeout = getattr(request, "param", (512, 15.0, 30.0))
    settings = settings_from_mapping(
        {"tokens": {"push": {"enabled": True, "max_body_bytes": PUSH_CAP}}}
    )
    app = create_app(settings, sources=[], run_loop=False)
    app[BODY_TIMEOUT_KEY] = body_timeout
    runner = web.AppRunner(app, access_log=None, **runner_options(keepalive))
    await runner.setup()
    limit_connections(runner, cap)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await app[REFRESHER].refresh_once()
    try:
        yield Server(f"http://127.0.0.1:{port}", port, app)
    finally:
        await runner.cleanup()


async def scrape_while(url: str, work: asyncio.Task[Any]) -> list[float]:
    """``/metrics`` latencies, scraped back to back while ``work`` runs."""
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        while not work.done():
            started = time.perf_counter()
            async with session.get(f"{url}/metrics") as resp:
                await resp.read()
                assert resp.status == 200
            out.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
    await work
    return out


async def test_a_gzip_bomb_to_healthz_is_refused_without_inflating(server: Server) -> None:
    body = bomb()
    assert len(body) < 1_100_000

    async def send() -> int:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.post(
                f"{server.url}/healthz",
                data=body,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            ) as resp,
        ):
            assert resp.headers.get("Accept-Encoding") == "identity"
            return resp.status

    async def sends() -> list[int]:
        return [await send() for _ in range(3)]

    task = asyncio.create_task(sends())
    latencies = await scrape_while(server.url, task)
    # /healthz takes GET only: 405 would do too, but the encoding is refused first
    assert task.result() == [415, 415, 415]
    assert max(latencies) < 0.25, latencies  # it stalled 1.5–5.9 s


async def test_the_push_endpoint_inflates_under_its_cap(server: Server) -> None:
    records = {"records": [{"tenant": "search", "model": "gpt-4o", "input_tokens": 10}]}
    plain = json.dumps(records).encode()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        url = f"{server.url}/api/v1/usage"
        for encoding, data in (
            ("gzip", gzip.compress(plain)),
            ("deflate", zlib.compress(plain)),
        ):
            async with session.post(url, data=data, headers={"Content-Encoding": encoding}) as resp:
                assert (resp.status, await resp.json()) == (202, {"accepted": 1, "duplicates": 0})
        # the bomb: cut at the cap while inflating
        started = time.perf_counter()
        async with session.post(url, data=bomb(), headers={"Content-Encoding": "gzip"}) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "body_too_large"
        assert time.perf_counter() - started < 2.0
        async with session.post(
            url, data=gzip.compress(plain)[:20], headers={"Content-Encoding": "gzip"}
        ) as resp:
            assert resp.status == 400
        async with session.post(url, data=plain, headers={"Content-Encoding": "br"}) as resp:
            assert resp.status == 415
        # another endpoint with a body takes no compressed one
        async with session.post(
            f"{server.url}/api/v1/roi/calculate",
            data=gzip.compress(b"{}"),
            headers={"Content-Encoding": "gzip"},
        ) as resp:
            assert resp.status == 415


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout=5)


@pytest.mark.parametrize("server", [(4, 15.0, 30.0)], indirect=True)
async def test_connections_over_the_cap_get_503(server: Server) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    reply = await read_reply(reader)  # answered and closed without a request
    assert reply.startswith(b"HTTP/1.1 503"), reply
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("server", [(512, 0.5, 30.0)], indirect=True)
async def test_a_trickled_request_head_and_an_idle_connection_are_closed(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.perf_counter()
    eof = asyncio.create_task(reader.read())  # done when the server closes the connection
    for _ in range(40):  # a header line every 0.1 s, never the blank line that ends the head
        if eof.done():
            break
        writer.write(b"X-Slow: 1\r\n")
        await asyncio.sleep(0.1)
    assert eof.done(), "the server kept a trickling request head open for 4 s"
    assert time.perf_counter() - started < 2.0
    writer.close()

    # keep-alive is bounded too: an idle connection after a response is closed
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    started = time.perf_counter()
    rest = await asyncio.wait_for(reader.read(), 5)  # body, then EOF when closed
    assert b"ok" in rest
    assert time.perf_counter() - started < 2.0
    writer.close()


@pytest.mark.parametrize("server", [(512, 15.0, 0.5)], indirect=True)
async def test_a_body_that_never_arrives_gets_408(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /api/v1/usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"records": ['
    )
    started = time.perf_counter()
    reply = await read_reply(reader)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert 0.4 < time.perf_counter() - started < 3.0
    writer.close()
