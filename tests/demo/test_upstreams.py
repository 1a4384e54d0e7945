"""The fake upstream servers: real formats over HTTP, and every fault mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.upstreams import FAULT_MODES, FaultSwitch, Upstreams, start_upstreams
from aifinops.settings import settings_from_mapping

NOW = 1_750_000_000.0
ALLOCATION = "/allocation/compute?window=1h&aggregate=namespace,pod&includeIdle=true"
QUERY = "/api/v1/query?query=DCGM_FI_DEV_GPU_UTIL"


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    return SimCluster(ClusterSpec.demo())


@pytest.fixture
async def up(sim: SimCluster) -> AsyncIterator[Upstreams]:
    upstreams = await start_upstreams(sim, clock=lambda: NOW)
    try:
        yield upstreams
    finally:
        await upstreams.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c


def url(up: Upstreams, upstream: str, path: str | None = None) -> str:
    base = {"dcgm": up.dcgm_url, "prometheus": up.prometheus_url, "opencost": up.opencost_url}
    default = {"dcgm": "/metrics", "prometheus": QUERY, "opencost": ALLOCATION}
    return base[upstream] + (path if path is not None else default[upstream])


# --- ok: the real formats ---------------------------------------------------------------------


async def test_dcgm_pages(up: Upstreams, client: httpx.AsyncClient, sim: SimCluster) -> None:
    r = await client.get(url(up, "dcgm"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert r.text == sim.dcgm_exposition(NOW)
    assert {f.name for f in text_string_to_metric_families(r.text)} >= {"DCGM_FI_DEV_GPU_UTIL"}
    pages = sim.dcgm_pages(NOW)
    for node, page_url in up.node_urls.items():
        page = await client.get(page_url)
        assert page.status_code == 200 and page.text == pages[node]
    missing = await client.get(url(up, "dcgm", "/node/nope/metrics"))
    assert missing.status_code == 404


async def test_prometheus_get_and_post(
    up: Upstreams, client: httpx.AsyncClient, sim: SimCluster
) -> None:
    r = await client.get(url(up, "prometheus"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == sim.prometheus_vector(NOW, "DCGM_FI_DEV_GPU_UTIL")
    posted = await client.post(
        up.prometheus_url + "/api/v1/query",
        data={"query": 'DCGM_FI_PROF_GR_ENGINE_ACTIVE{cluster="demo"}', "time": str(NOW + 60)},
    )
    assert posted.status_code == 200
    result = posted.json()["data"]["result"]
    assert result and all(s["value"][0] == NOW + 60 for s in result)
    at = await client.get(
        up.prometheus_url + "/api/v1/query",
        params={"query": "DCGM_FI_DEV_GPU_UTIL", "time": "2025-06-15T15:06:40Z"},
    )
    assert at.json()["data"]["result"][0]["value"][0] == NOW
    ready = await client.get(up.prometheus_url + "/-/ready")
    assert ready.status_code == 200 and "Ready" in ready.text


@pytest.mark.parametrize(
    "params",
    [{}, {"query": "rate(DCGM_FI_DEV_GPU_UTIL[5m])"}, {"query": "up", "time": "yesterday"}],
)
async def test_prometheus_errors(
    up: Upstreams, client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    r = await client.get(up.prometheus_url + "/api/v1/query", params=params)
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error" and body["errorType"] == "bad_data"
    assert body["error"].startswith("invalid parameter")


@pytest.mark.parametrize(("window", "hours"), [("1h", 1.0), ("30m", 0.5), ("2d", 48.0)])
async def test_opencost_windows(
    up: Upstreams, client: httpx.AsyncClient, sim: SimCluster, window: str, hours: float
) -> None:
    r = await client.get(
        up.opencost_url + "/allocation/compute",
        params={"window": window, "aggregate": "namespace,pod", "includeIdle": "true"},
    )
    assert r.status_code == 200
    assert r.json() == json.loads(json.dumps(sim.opencost_allocation(NOW, hours)))


async def test_opencost_defaults_and_errors(up: Upstreams, client: httpx.AsyncClient) -> None:
    plain = await client.get(up.opencost_url + "/allocation/compute", params={"window": "1h"})
    rows = plain.json()["data"][0]
    assert "__idle__" not in rows  # OpenCost's includeIdle defaults to false
    assert all(k.count("/") == 4 for k in rows)  # and it does not aggregate by default
    for params in ({"window": "soon"}, {}):
        bad = await client.get(up.opencost_url + "/allocation/compute", params=params)
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("text/plain")
        assert bad.text.startswith("Invalid 'window' parameter: illegal window")
    agg = await client.get(
        up.opencost_url + "/allocation/compute", params={"window": "1h", "aggregate": "tenant"}
    )
    assert agg.status_code == 400 and agg.text.startswith("Invalid 'aggregate' parameter")


async def test_clock_is_injectable(sim: SimCluster, client: httpx.AsyncClient) -> None:
    now = [NOW]
    async with await start_upstreams(sim, clock=lambda: now[0]) as up:
        first = (await client.get(url(up, "dcgm"))).text
        now[0] = NOW + 7 * 3600
        second = (await client.get(url(up, "dcgm"))).text
        assert first == sim.dcgm_exposition(NOW)
        assert second == sim.dcgm_exposition(NOW + 7 * 3600) != first


def test_exporter_config_is_valid(sim: SimCluster) -> None:
    up = Upstreams(sim, FaultSwitch(), "http://d", "http://p", "http://o")
    prom = settings_from_mapping(up.exporter_config())
    assert prom.sources.dcgm.mode == "prometheus"
    assert prom.sources.dcgm.prometheus_url == "http://p"
    assert prom.sources.opencost.url == "http://o"
    assert prom.tenancy.namespaces == sim.tenancy_config()["namespaces"]
    scrape = settings_from_mapping(up.exporter_config(dcgm_mode="scrape", window="30m"))
    assert len(scrape.sources.dcgm.scrape_urls) == len([n for n in sim.nodes if n.gpus])
    assert scrape.sources.opencost.window_hours == 0.5
    single = settings_from_mapping(up.exporter_config(dcgm_mode="scrape", per_node=False))
    assert single.sources.dcgm.scrape_urls == ("http://d/metrics",)


# --- faults -----------------------------------------------------------------------------------

UPSTREAM_NAMES = ["dcgm", "prometheus", "opencost"]


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_down_closes_the_connection(
    up: Upstreams, client: httpx.AsyncClient, upstream: str
) -> None:
    up.faults.set(upstream, "down")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(url(up, upstream))
    others = [u for u in UPSTREAM_NAMES if u != upstream]
    for other in others:  # one upstream down never takes the others with it
        assert (await client.get(url(up, other))).status_code == 200


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
@pytest.mark.parametrize(("mode", "status"), [("unavailable", 503), ("error500", 500)])
async def test_http_errors(
    up: Upstreams, client: httpx.AsyncClient, upstream: str, mode: str, status: int
) -> None:
    up.faults.set(upstream, mode)
    r = await client.get(url(up, upstream))
    assert r.status_code == status


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_garbage(up: Upstreams, client: httpx.AsyncClient, upstream: str) -> None:
    up.faults.set(upstream, "garbage")
    r = await client.get(url(up, upstream))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    with pytest.raises(UnicodeDecodeError):
        r.content.decode("utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content.decode("latin-1"))


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_truncated(up: Upstreams, client: httpx.AsyncClient, upstream: str) -> None:
    full = (await client.get(url(up, upstream))).content
    up.faults.set(upstream, "truncated")
    r = await client.get(url(up, upstream))
    assert r.status_code == 200
    assert r.content == full[: len(full) // 2]
    if upstream == "dcgm":
        assert not r.text.endswith("\n")
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content)


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_slow(up: Upstreams, client: httpx.AsyncClient, upstream: str) -> None:
    up.faults.set(upstream, "slow:0.3")
    started = time.monotonic()
    r = await client.get(url(up, upstream))
    assert r.status_code == 200 and time.monotonic() - started >= 0.3
    up.faults.set(upstream, "slow", seconds=5.0)
    with pytest.raises(httpx.ReadTimeout):
        await client.get(url(up, upstream), timeout=0.2)


async def test_close_wakes_slow_handlers(sim: SimCluster) -> None:
    up = await start_upstreams(sim, clock=lambda: NOW)
    up.faults.set("opencost", "slow", seconds=60.0)
    async with httpx.AsyncClient(timeout=30.0) as c:
        pending = asyncio.create_task(c.get(url(up, "opencost")))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await up.close()
        assert time.monotonic() - started < 5.0
        with contextlib.suppress(httpx.HTTPError):  # the server may drop it while closing
            await pending


async def test_empty(up: Upstreams, client: httpx.AsyncClient) -> None:
    for upstream in UPSTREAM_NAMES:
        up.faults.set(upstream, "empty")
    dcgm = await client.get(url(up, "dcgm"))
    assert dcgm.status_code == 200 and dcgm.text == ""
    prom = await client.get(url(up, "prometheus"))
    assert prom.json() == {"status": "success", "data": {"resultType": "vector", "result": []}}
    oc = await client.get(url(up, "opencost"))
    assert oc.json() == {"code": 200, "status": "success", "data": [{}]}


@pytest.mark.parametrize("upstream", UPSTREAM_NAMES)
async def test_huge(up: Upstreams, client: httpx.AsyncClient, upstream: str) -> None:
    size = 3_000_000
    up.faults.set(upstream, "huge", size=size)
    async with client.stream("GET", url(up, upstream)) as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers  # chunked: a reader must enforce its own cap
        body = b"".join([chunk async for chunk in r.aiter_bytes()])
    assert len(body) >= size
    if upstream == "dcgm":
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "DCGM_FI_DEV_GPU_UTIL" in names  # padded with valid comment lines
    else:
        json.loads(body)  # padded with valid whitespace


async def test_absurd(up: Upstreams, client: httpx.AsyncClient) -> None:
    for upstream in UPSTREAM_NAMES:
        up.faults.set(upstream, "absurd")
    text = (await client.get(url(up, "dcgm"))).text
    util = [
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "DCGM_FI_DEV_GPU_UTIL"
        for s in f.samples
    ]
    assert 250 in util and -5 in util and any(v != v for v in util)  # NaN
    values = [
        s["value"][1] for s in (await client.get(url(up, "prometheus"))).json()["data"]["result"]
    ]
    assert values[:4] == ["250", "-5", "NaN", "+Inf"]
    rows = (await client.get(url(up, "opencost"))).json()["data"][0]
    costs = [r["cpuCost"] for r in rows.values()]
    assert any(c is not None and c < 0 for c in costs)
    assert any(r["gpuCost"] is None for r in rows.values())
    assert any(r["totalCost"] == 1e300 for r in rows.values())


async def test_request_counts_and_reset(up: Upstreams, client: httpx.AsyncClient) -> None:
    assert [up.faults.requests(u) for u in UPSTREAM_NAMES] == [0, 0, 0]
    up.faults.set("prometheus", "error500")
    await client.get(url(up, "dcgm"))
    await client.get(url(up, "prometheus"))
    await client.get(url(up, "prometheus"))
    assert [up.faults.requests(u) for u in UPSTREAM_NAMES] == [1, 2, 0]
    up.faults.reset()
    assert (await client.get(url(up, "prometheus"))).status_code == 200
    assert up.faults.get("prometheus").mode == "ok"


def test_fault_switch_validates() -> None:
    faults = FaultSwitch()
    assert set(FAULT_MODES) >= {"ok", "down", "garbage", "truncated", "slow", "huge", "absurd"}
    with pytest.raises(ValueError):
        faults.set("opencost", "sideways")
    with pytest.raises(ValueError):
        faults.set("kubecost", "down")
    faults.set("dcgm", "huge:1234")
    assert faults.get("dcgm").size == 1234
    faults.set("dcgm", "slow", seconds=2.5)
    assert faults.get("dcgm").seconds == 2.5
