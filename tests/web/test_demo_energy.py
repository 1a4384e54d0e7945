"""The exporter on the owned pools' simulator against the simulator's own energy answer key
(issue 17): per tenant, GPU energy (kWh), its cost and its carbon within 0.1 % over two hours
that hold a counter reset, a time-of-use price change and a grid-intensity change, on
exclusive, MIG and time-sliced GPUs, reading DCGM through Prometheus or its pages.

The answer key (``demo/cluster/energy_truth.py``) is computed from the simulation's truth —
each epoch's true shares and energy — and shares no code with the exporter. The exporter
refreshes at every epoch boundary, as the simulation's conventions (``demo/cluster/power.py``)
require for an exact split: use and power are constant over an epoch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from aifinops.demo.cluster import IDLE_TENANT, UNALLOCATED_TENANT, ClusterSpec
from aifinops.demo.cluster.energy_truth import (
    DEMO_OWNED_GPUS,
    DEMO_PRICES,
    DailySchedule,
    EnergyPrices,
    energy_answer_key,
    energy_config,
    owned_price_usd_per_hour,
)
from aifinops.demo.cluster.spec import CounterReset, owned_energy
from aifinops.demo.run import demo_settings, start_demo_upstreams
from aifinops.settings import Settings
from aifinops.web.app import REFRESHER, create_app
from tests.web.conftest import Clock, Demo, parse_page, series, start_demo_app

EPOCH = 300
T0 = datetime(2025, 6, 16, 11, 30, tzinfo=UTC).timestamp()  # a Monday, 06:30 in Chicago
T1 = T0 + 24 * EPOCH  # 13:30 UTC, 08:30 in Chicago
RESET = T0 + 13 * EPOCH
ZONE = "America/Chicago"
PRICES = EnergyPrices(
    # 07:00 CDT = 12:00 UTC and 08:00 CDT = 13:00 UTC fall inside (T0, T1].
    usd_per_kwh=DailySchedule(ZONE, (("00:00", 0.08), ("07:00", 0.14), ("17:00", 0.22))),
    grid_gco2e_per_kwh=DailySchedule(ZONE, (("00:00", 450.0), ("08:00", 300.0))),
    pue=1.4,
)
REL = 1e-3  # 0.1 %
JOULES_PER_KWH = 3.6e6


@pytest.fixture(params=["prometheus", "scrape"])
async def demo(request: pytest.FixtureRequest, aiohttp_client: Any) -> AsyncIterator[Demo]:
    spec = ClusterSpec.owned(energy=owned_energy((CounterReset("onprem-h100", 0, RESET),)))
    config = {
        "energy": energy_config(PRICES),
        "budgets": {"time_zone": ZONE},
    }
    d = await start_demo_app(aiohttp_client, spec, config, dcgm_mode=request.param)
    try:
        yield d
    finally:
        await d.upstreams.close()


async def test_tenant_energy_cost_and_carbon_match_the_answer_key(demo: Demo) -> None:
    sim = demo.sim
    assert sim.energy is not None
    for k in range(round((T1 - T0) / EPOCH) + 1):
        demo.clock.now = T0 + k * EPOCH
        await demo.refresh()
    page = await demo.metrics()
    key = energy_answer_key(sim, PRICES, T0, T1)

    joules = series(page, "aifinops_tenant_gpu_energy_joules_total")
    usd = series(page, "aifinops_tenant_energy_cost_usd_total")
    grams = series(page, "aifinops_tenant_carbon_grams_total")
    tenants = {t for (t,) in joules}
    assert tenants == set(key.tenants)
    assert {IDLE_TENANT, UNALLOCATED_TENANT} <= tenants
    for tenant, want in key.tenants.items():
        assert joules[(tenant,)] / JOULES_PER_KWH == pytest.approx(want.kwh, rel=REL), tenant
        assert usd[(tenant,)] == pytest.approx(want.usd, rel=REL), tenant
        assert grams[(tenant,)] / 1000 == pytest.approx(want.kg_co2e, rel=REL), tenant
    # The interval has every case: a pod on a time-sliced GPU above its request, a pod no
    # rule matches, unheld GPUs and MIG instances (__idle__), and both prices of each kind.
    energy = sim.energy
    assert any(
        share > h.request
        for g in energy.gpus
        if g.sharing == "timeslice"
        for e in range(energy.epoch(T0) + 1, energy.epoch(T1) + 1)
        for h, share in zip(energy.holds(g.uuid), energy.use(g.uuid, e).shares, strict=True)
    )
    assert key.tenant(UNALLOCATED_TENANT).kwh > 0 and key.tenant(IDLE_TENANT).kwh > 0
    assert PRICES.usd_per_kwh.at(T0) != PRICES.usd_per_kwh.at(T1)
    assert PRICES.grid_gco2e_per_kwh.at(T0) != PRICES.grid_gco2e_per_kwh.at(T1)

    fleet = series(page, "aifinops_cluster_gpu_energy_joules_total")[()]
    assert fleet / JOULES_PER_KWH == pytest.approx(key.fleet_kwh, rel=1e-9)
    assert series(page, "aifinops_cluster_energy_cost_usd_total")[()] == pytest.approx(
        key.fleet_usd, rel=1e-9
    )
    assert series(page, "aifinops_cluster_carbon_grams_total")[()] / 1000 == pytest.approx(
        key.fleet_kg_co2e, rel=1e-9
    )
    # Every owned GPU by its counter; the resets the exporter saw are the sim's.
    assert series(page, "aifinops_energy_gpus", method="counter") == {(): 8.0}
    resets = sum(
        energy.last_reset(g.uuid, T0 + (k + 1) * EPOCH) != energy.last_reset(g.uuid, T0 + k * EPOCH)
        for g in energy.gpus
        for k in range(round((T1 - T0) / EPOCH))
    )
    assert resets >= 1
    assert series(page, "aifinops_energy_dcgm_resets_total") == {(): float(resets)}
    # The tenant that holds the reset GPU is not short of what its counter lost.
    holder = sim.tenant_of(energy.holds(energy.gpu("onprem-h100", 0).uuid)[0].pod)
    assert joules[(holder,)] / JOULES_PER_KWH == pytest.approx(key.tenant(holder).kwh, rel=REL)


async def test_the_demo_prices_its_owned_gpus_and_measures_their_energy(
    aiohttp_client: Any,
) -> None:
    clock = Clock(T0)
    ups = await start_demo_upstreams(clock=clock)
    try:
        settings = demo_settings(Settings(), ups, now=T0)
        app = create_app(settings, clock=clock, run_loop=False)
        client = await aiohttp_client(app)
        for t in (T0, T0 + EPOCH):
            clock.now = t
            await app[REFRESHER].refresh_once()
        page = parse_page(await (await client.get("/metrics")).text())
    finally:
        await ups.close()
    sim = ups.cluster.sim
    assert sim.energy is not None and settings.energy.enabled
    # The owned H100s are the docs' worked example: $1.175799 a GPU-hour, $858.33 a month.
    h100 = DEMO_OWNED_GPUS[0]
    components = series(page, "aifinops_owned_gpu_price_usd_per_hour", pool=h100["pool"])
    published = sum(components.values())
    bought = datetime.fromisoformat(h100["purchase_date"]).replace(tzinfo=UTC).timestamp()
    hand = owned_price_usd_per_hour(
        purchase_usd=h100["purchase_price_usd"],
        residual_usd=h100["residual_value_usd"],
        life_years=h100["depreciation_life_years"],
        support_usd_per_year=h100["support_usd_per_year"],
        hosting_usd_per_gpu_month=h100["hosting_usd_per_gpu_month"],
        purchased_at=bought,
        at=T0,
    )
    assert round(published, 6) == round(hand, 6) == 1.175799
    assert round(published * 730, 2) == 858.33
    pools = {labels["pool"] for labels, _ in page["aifinops_owned_gpu_price_info"]}
    assert pools == {g["pool"] for g in DEMO_OWNED_GPUS}
    # Energy: the owned GPUs by their counters (and the cloud 4.8 nodes'), the rest by power.
    owned = {g.uuid for g in sim.energy.gpus}
    counted = series(page, "aifinops_energy_gpus", method="counter")[()]
    assert counted >= len(owned)
    assert series(page, "aifinops_energy_pue") == {(): DEMO_PRICES.pue}
    assert series(page, "aifinops_energy_price_usd_per_kwh") == {
        (): DEMO_PRICES.usd_per_kwh.at(T0 + EPOCH)
    }
    assert series(page, "aifinops_tenant_energy_budget_usd")[("research",)] == 300
