"""The price list source: bundled file, re-read on change, URL on an interval, last good kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.model.llm_prices import content_version
from aifinops.settings import LlmPricesSettings, settings_from_mapping
from aifinops.sources.base import SourceError
from aifinops.sources.llm_prices import BUNDLED_VERSION, LlmPriceSource, load_catalog
from aifinops.web.app import REFRESHER, create_app
from tests.upstream_data import PRICE_SUBSET
from tests.web.conftest import parse_page, series


def write(path: Path, content: bytes, mtime_ns: int) -> None:
    path.write_bytes(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))


async def test_bundled_file_is_the_real_subset():
    src = LlmPriceSource(LlmPricesSettings())
    async with httpx.AsyncClient() as client:
        catalog = await src.fetch(client)
        assert await src.fetch(client) is catalog
    assert catalog.version == BUNDLED_VERSION
    assert len(catalog.entries) == 35
    bundled = Path(__file__).resolve().parents[2] / "exporter/aifinops/data/llm_prices.json"
    assert json.loads(bundled.read_text()) == json.loads(PRICE_SUBSET.read_text())


async def test_file_is_reread_on_change_and_a_bad_file_keeps_nothing_new(tmp_path):
    path = tmp_path / "prices.json"
    good = PRICE_SUBSET.read_bytes()
    write(path, good, 1_000_000_000)
    src = LlmPriceSource(LlmPricesSettings(file=path))
    async with httpx.AsyncClient() as client:
        first = await src.fetch(client)
        assert first.version == content_version(good)
        assert await src.fetch(client) is first  # unchanged: not re-read
        write(path, b'{"gpt-4o": {"input_cost_per_token": 1e-6}', 2_000_000_000)  # truncated
        with pytest.raises(SourceError) as err:
            await src.fetch(client)
        assert err.value.reason == "parse"
        with pytest.raises(SourceError):  # same bad file: same error, not parsed again
            await src.fetch(client)
        changed = json.dumps({"gpt-4o": {"input_cost_per_token": 1e-6}}).encode()
        write(path, changed, 3_000_000_000)
        second = await src.fetch(client)
    assert second.version == content_version(changed)
    assert second.lookup("gpt-4o").input == 1e-6
    path.unlink()
    async with httpx.AsyncClient() as client:
        with pytest.raises(SourceError):
            await src.fetch(client)


def test_load_catalog_errors_name_the_origin():
    with pytest.raises(SourceError, match=r"x\.json is not JSON"):
        load_catalog(b"\xff", "x.json")
    with pytest.raises(SourceError, match=r"x\.json") as err:
        load_catalog(b'{"a": 1}', "x.json")
    assert err.value.reason == "invalid"
    assert load_catalog(PRICE_SUBSET.read_bytes(), "f", version="2025-10").version == "2025-10"


async def test_url_is_fetched_on_its_interval_and_retried_after_failures():
    state = {"status": 200, "hits": 0}

    async def prices(request: web.Request) -> web.Response:
        state["hits"] += 1
        if state["status"] != 200:
            return web.Response(status=state["status"])
        return web.Response(body=PRICE_SUBSET.read_bytes(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/prices.json", prices)
    server = TestServer(app)
    await server.start_server()
    now = [0.0]
    try:
        src = LlmPriceSource(
            LlmPricesSettings(
                url=str(server.make_url("/prices.json")),
                refresh_interval_seconds=3600,
                version="litellm-main",
            ),
            clock=lambda: now[0],
        )
        async with httpx.AsyncClient() as client:
            c1 = await src.fetch(client)
            now[0] = 1800
            assert await src.fetch(client) is c1 and state["hits"] == 1
            now[0] = 3600
            state["status"] = 503
            with pytest.raises(SourceError):
                await src.fetch(client)
            now[0] = 3700  # within the retry delay: the failure stands, no request
            with pytest.raises(SourceError):
                await src.fetch(client)
            assert state["hits"] == 2
            state["status"] = 200
            now[0] = 3900  # retried after min(interval, 300 s)
            c2 = await src.fetch(client)
    finally:
        await server.close()
    assert state["hits"] == 3
    assert c2.version == "litellm-main"


async def test_refresh_loop_keeps_the_last_good_price_list(aiohttp_client, tmp_path):
    path = tmp_path / "prices.json"
    write(path, PRICE_SUBSET.read_bytes(), 1_000_000_000)
    settings = settings_from_mapping(
        {"tokens": {"push": {"enabled": True}, "prices": {"file": str(path), "version": "v1"}}}
    )
    client = await aiohttp_client(create_app(settings, run_loop=False))
    refresher = client.app[REFRESHER]

    async def page():
        await refresher.refresh_once()
        return parse_page(await (await client.get("/metrics")).text())

    p = await page()
    assert series(p, "aifinops_llm_price_catalog_info") == {("v1",): 1.0}
    write(path, b"not json", 2_000_000_000)
    p = await page()
    assert series(p, "aifinops_llm_price_catalog_info") == {("v1",): 1.0}
    assert series(p, "aifinops_source_up", source="llm_prices") == {(): 0.0}
    assert series(p, "aifinops_source_errors_total", source="llm_prices", reason="parse") == {
        (): 1.0
    }
    write(path, json.dumps({"m": {"input_cost_per_token": 1e-6}}).encode(), 3_000_000_000)
    p = await page()
    assert series(p, "aifinops_llm_price_catalog_info") == {("v1",): 1.0}  # declared version
    assert series(p, "aifinops_source_up", source="llm_prices") == {(): 1.0}
