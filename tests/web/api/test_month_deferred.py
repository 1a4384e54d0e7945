"""The loop's first refresh does not wait for the month-to-date query: cost series are
published at once, budgets and chargeback from OpenCost's month when it lands, with
``aifinops_month_to_date_ready`` saying which. No budget is evaluated on a missing month
(nothing for an alert to fire on), and the API says why meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.finance import finance_config
from aifinops.demo.upstreams import start_upstreams
from aifinops.settings import settings_from_mapping
from aifinops.sources.opencost import OpenCostMonthSource
from aifinops.web.app import REFRESHER, create_app
from tests.web.api.conftest import T0
from tests.web.conftest import Clock, parse_page


class GatedMonth:
    """The real month source, whose fetch waits for ``gate`` (a slow month query)."""

    def __init__(self, inner: OpenCostMonthSource) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.name, self.slot = inner.name, inner.slot
        self.local, self.targets = inner.local, inner.targets
        self.min_interval_seconds = inner.min_interval_seconds
        self.first_read_baseline = inner.first_read_baseline

    async def fetch(self, client: Any) -> Any:
        await self.gate.wait()
        return await self.inner.fetch(client)


async def _start(aiohttp_client: Any, *, run_loop: bool) -> tuple[Any, Any, GatedMonth, Clock]:
    from aifinops.assemble import build_sources

    clock = Clock(T0)
    sim = SimCluster(ClusterSpec.demo())
    upstreams = await start_upstreams(sim, clock=clock)
    data = {**upstreams.exporter_config(), **finance_config(sim, T0)}
    settings = settings_from_mapping(data)
    sources = build_sources(settings, clock=clock)
    gated: GatedMonth | None = None
    chosen = []
    for source, timeout, stale in sources:
        if isinstance(source, OpenCostMonthSource):
            gated = GatedMonth(source)
            chosen.append((gated, timeout, stale))
        else:
            chosen.append((source, timeout, stale))
    assert gated is not None
    app = create_app(settings, sources=chosen, clock=clock, run_loop=run_loop)
    client = await aiohttp_client(app)
    return client, upstreams, gated, clock


def _one(page: dict[str, Any], name: str) -> float:
    ((_, value),) = page[name]
    return float(value)


async def test_cost_series_first_budgets_when_the_month_lands(aiohttp_client: Any) -> None:
    client, upstreams, gated, _ = await _start(aiohttp_client, run_loop=False)
    refresher = client.app[REFRESHER]
    try:
        await refresher.refresh_once(defer=True)
        page = parse_page(await (await client.get("/metrics")).text())
        # The cost series are out; no month to date, no infrastructure budget yet.
        assert page["aifinops_tenant_cost_usd_per_hour"]
        assert _one(page, "aifinops_month_to_date_ready") == 0.0
        assert "aifinops_tenant_month_to_date_cost_usd" not in page
        assert "aifinops_tenant_budget_usd" not in page
        assert refresher.month_pending
        body = await (await client.get("/api/v1/budgets")).json()
        assert all(b["scope"] == "tokens" for b in body["budgets"])
        assert any("not fetched yet" in n for n in body["notes"])
        for path in ("/api/v1/summary", "/api/v1/chargeback?format=json"):
            resp = await client.get(path)
            assert resp.status == 200, (path, await resp.text())
        # A refresh while the month is still on its way neither waits nor asks again.
        await refresher.refresh_once(defer=True)
        assert refresher.month_pending

        gated.gate.set()
        await refresher.settle_deferred()
        assert not refresher.month_pending
        await refresher.refresh_once(defer=True)
        page = parse_page(await (await client.get("/metrics")).text())
        assert _one(page, "aifinops_month_to_date_ready") == 1.0
        assert page["aifinops_tenant_month_to_date_cost_usd"]
        assert page["aifinops_tenant_budget_usd"]
        body = await (await client.get("/api/v1/budgets")).json()
        assert any(b["scope"] == "all" for b in body["budgets"])
    finally:
        await refresher.cancel_deferred()
        await upstreams.close()


async def test_the_loop_refreshes_as_soon_as_the_month_lands(aiohttp_client: Any) -> None:
    """With a refresh interval far longer than the test, the budgets still appear: the
    loop's next refresh starts when the deferred month fetch lands."""
    client, upstreams, gated, _ = await _start(aiohttp_client, run_loop=True)
    refresher = client.app[REFRESHER]
    try:
        for _ in range(200):
            if refresher.snapshot.report is not None:
                break
            await asyncio.sleep(0.02)
        assert refresher.snapshot.report is not None
        assert refresher.interval >= 10  # the demo's next refresh would be seconds away
        first = refresher.snapshot.finance
        assert first is not None and not first.infra_available
        gated.gate.set()
        for _ in range(250):
            finance = refresher.snapshot.finance
            if finance is not None and finance.infra_available:
                break
            await asyncio.sleep(0.02)
        finance = refresher.snapshot.finance
        assert finance is not None and finance.infra_available
    finally:
        await upstreams.close()
