"""The fake OpenCost answers ``step`` with ``accumulate=false`` as OpenCost does: one set per
step from the window start, for RFC 3339 and unix pairs."""

from __future__ import annotations

import math

import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster, rfc3339
from aifinops.demo.finance import sim_daily_costs
from aifinops.demo.upstreams import start_upstreams

T0 = 1_750_000_000.0
DAY = 86400.0


@pytest.fixture
async def fake():
    sim = SimCluster(ClusterSpec.demo())
    ups = await start_upstreams(sim, clock=lambda: T0)
    try:
        yield ups
    finally:
        await ups.close()


@pytest.mark.parametrize("pair", ["rfc3339", "unix"])
async def test_daily_sets_match_the_ground_truth(fake, pair, aiohttp_client):
    import httpx

    start = T0 - 3 * DAY - 5000
    window = f"{rfc3339(start)},{rfc3339(T0)}" if pair == "rfc3339" else f"{int(start)},{int(T0)}"
    async with httpx.AsyncClient() as client:
        resp = await client.get(
            f"{fake.opencost_url}/allocation/compute",
            params={
                "window": window,
                "step": "1d",
                "accumulate": "false",
                "aggregate": "namespace,pod",
                "includeIdle": "true",
            },
        )
    assert resp.status_code == 200
    sets = resp.json()["data"]
    assert len(sets) == 4  # three whole days and the part of the fourth up to now
    truth = sim_daily_costs(fake.sim, start, T0)
    for data, (s, e, usd) in zip(sets, truth, strict=True):
        assert {r["window"]["start"] for r in data.values()} == {rfc3339(s)}
        assert {r["window"]["end"] for r in data.values()} == {rfc3339(e)}
        total = math.fsum(r["totalCost"] for r in data.values())
        assert total == pytest.approx(math.fsum(usd.values()), rel=1e-6)


async def test_bad_step_and_window(fake):
    import httpx

    async with httpx.AsyncClient() as client:
        url = f"{fake.opencost_url}/allocation/compute"
        bad_step = await client.get(url, params={"window": "2d", "step": "soon"})
        bad_window = await client.get(url, params={"window": "x,y", "step": "1d"})
        accumulated = await client.get(
            url, params={"window": "2d", "step": "1d", "accumulate": "true"}
        )
    assert bad_step.status_code == 400 and "step" in bad_step.text
    assert bad_window.status_code == 400 and "window" in bad_window.text
    assert len(accumulated.json()["data"]) == 1
