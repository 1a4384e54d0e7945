"""The whole demo (cluster fakes + vLLM + LiteLLM) through the real app: token counts and
dollars match the demo's ground truth, and the self-hosted serving cost is charged back
without creating or losing a dollar."""

from __future__ import annotations

import math

import pytest

from aifinops.demo.run import start_demo_upstreams
from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from tests.web.conftest import T0, Clock, parse_page, series

RATE = "aifinops_tenant_cost_usd_per_hour"


@pytest.fixture
async def full_demo(aiohttp_client):
    clock = Clock(T0)
    ups = await start_demo_upstreams(clock=clock)
    app = create_app(settings_from_mapping(ups.config()), clock=clock, run_loop=False)
    client = await aiohttp_client(app)

    async def refresh_at(now: float):
        clock.now = now
        await app[REFRESHER].refresh_once()
        return parse_page(await (await client.get("/metrics")).text())

    try:
        yield ups, refresh_at
    finally:
        await ups.close()


async def test_token_counts_and_api_dollars_match_ground_truth(full_demo):
    ups, refresh_at = full_demo
    await refresh_at(T0 + 60)  # first reading of a scraped counter is the baseline
    page = await refresh_at(T0 + 360)
    truth = ups.llm.truth(T0 + 360).minus(ups.llm.truth(T0 + 60))
    tokens = series(page, "aifinops_tokens_total")  # keyed (model, provider, tenant, type)
    want = {(m, p, t, k): float(v) for (t, m, p, k), v in truth.tokens.items() if v}
    assert {k: v for k, v in tokens.items() if v} == want
    cost = series(page, "aifinops_token_cost_usd_total")
    for (t, m, p, k), usd in truth.api_cost.items():
        assert cost[(m, p, t, k)] == pytest.approx(usd, rel=1e-9, abs=1e-12)
    unpriced = series(page, "aifinops_unpriced_tokens_total")
    assert {k: v for k, v in unpriced.items() if v} == {
        k: float(v) for k, v in truth.unpriced.items() if v
    }


async def test_serving_cost_moves_to_the_senders_and_totals_still_reconcile(full_demo):
    ups, refresh_at = full_demo
    await refresh_at(T0 + 60)
    page = await refresh_at(T0 + 360)
    gt = ups.cluster.sim.ground_truth(T0 + 360)
    rates = series(page, RATE)  # keyed (resource, tenant)
    cluster = series(page, "aifinops_cluster_cost_usd_per_hour")
    for (resource,), total in cluster.items():
        parts = math.fsum(v for (r, _), v in rates.items() if r == resource)
        assert round(parts, 2) == round(total, 2), resource
        if resource != "tokens":  # charge-back keeps each dollar's resource
            assert total == pytest.approx(gt.cluster[resource], rel=1e-3)
    moved_out = math.fsum(
        gt.cost[("allocation", "platform", r)] - rates.get((r, "platform"), 0.0)
        for r in ("gpu", "cpu", "ram")
    )
    moved_in = math.fsum(
        rates.get((r, t), 0.0) - gt.cost.get(("allocation", t, r), 0.0)
        for t in gt.tenants
        if t != "platform"
        for r in ("gpu", "cpu", "ram")
    )
    assert moved_out > 1.0, "the serving pods' cost should leave the platform tenant"
    assert moved_in == pytest.approx(moved_out, rel=1e-6)
    measured = series(page, "aifinops_model_cost_per_million_tokens_usd", source="measured")
    assert measured, "the self-hosted model needs a measured $/1M tokens"
