"""The one transport of the PromQL-or-scrape sources (``sources/transport.py``): the same
failure reasons for dcgm, tokens and latency, whichever way they read."""

from __future__ import annotations

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.offload import run_cpu
from aifinops.settings import DcgmSettings, LatencySourceSettings, TokenSourceSettings
from aifinops.sources.base import SourceError
from aifinops.sources.dcgm import DcgmSource
from aifinops.sources.latency import LatencySource
from aifinops.sources.tokens import TokenSource
from aifinops.sources.transport import Transport

BAD_URL = "http://[::1/metrics"  # an unclosed IPv6 literal: httpx refuses to build it


def _page(text: str) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=text.encode("latin-1"))

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


async def test_a_url_httpx_refuses_is_reason_invalid_for_every_source() -> None:
    # It used to escape dcgm and tokens as a crash (counted "parse", with a traceback);
    # latency already reported it as "invalid".
    sources = [
        DcgmSource(DcgmSettings(mode="scrape", scrape_urls=(BAD_URL,)), run=run_cpu),
        TokenSource(
            TokenSourceSettings(
                name="t", preset="litellm", mode="scrape", scrape_targets=[{"url": BAD_URL}]
            ),
            run=run_cpu,
        ),
        LatencySource(
            LatencySourceSettings(name="l", mode="scrape", scrape_targets=[{"url": BAD_URL}]),
            clock=lambda: 0.0,
            run=run_cpu,
        ),
    ]
    async with httpx.AsyncClient() as client:
        for source in sources:
            with pytest.raises(SourceError) as info:
                await source.fetch(client)
            assert info.value.reason == "invalid", source.name


async def test_read_page_names_the_page_that_does_not_parse() -> None:
    def parse(body: bytes, encoding: str) -> str:
        return body.decode(encoding)

    settings = DcgmSettings(mode="scrape", scrape_urls=("http://x/metrics",))
    transport = Transport("dcgm", settings, run_cpu)
    async with TestServer(_page("caf\xe9 1\n")) as server, httpx.AsyncClient() as client:
        url = str(server.make_url("/metrics"))
        assert await transport.read_page(client, url, {}, parse, "latin-1", where=url) == "café 1\n"
        with pytest.raises(SourceError) as info:
            await transport.read_page(client, url, {}, parse, "utf-8", where="page-a")
    assert info.value.reason == "parse"
    assert str(info.value).startswith("page-a: ")


async def test_query_without_a_prometheus_url_is_invalid() -> None:
    # The settings refuse it; a source built around them must still not send a request.
    settings = DcgmSettings.model_construct(mode="prometheus", prometheus_url=None)
    async with httpx.AsyncClient() as client:
        with pytest.raises(SourceError) as info:
            await Transport("dcgm", settings, run_cpu).query(client, "up", {})
    assert info.value.reason == "invalid"
    assert "prometheus_url" in str(info.value)
