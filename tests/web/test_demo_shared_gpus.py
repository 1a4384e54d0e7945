"""The whole exporter against a simulated cluster with HAMi-shared and per-process GPUs
(``ClusterSpec(shared_gpus=True)``): per-tenant GPU dollars and GPU counts on those GPUs match
the shared-GPU answer key (demo/shared_key.py, written without the model's code) within
0.1 % on both bases, and every other figure still matches the cluster's ground truth."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytest

from aifinops.demo.cluster import IDLE_TENANT, ClusterSpec, GroundTruth, SimCluster
from aifinops.demo.shared_key import SHARED_BASES, SharedKey
from aifinops.demo.upstreams import start_upstreams
from aifinops.settings import settings_from_mapping
from aifinops.web.app import create_app
from tests.web.conftest import T0, Clock, Demo, series
from tests.web.test_demo_exporter import assert_matches_ground_truth

SPEC = ClusterSpec.demo(shared_gpus=True)
RATE = {
    "allocation": "aifinops_tenant_cost_usd_per_hour",
    "usage": "aifinops_tenant_usage_basis_cost_usd_per_hour",
}
Page = dict[str, list[tuple[dict[str, str], float]]]
BY_METHOD = {
    "allocation": "aifinops_tenant_gpu_cost_by_method_usd_per_hour",
    "usage": "aifinops_tenant_usage_basis_gpu_cost_by_method_usd_per_hour",
}


async def start_shared(
    aiohttp_client: Any,
    *,
    dcgm_mode: str = "prometheus",
    hami: dict[str, Any] | None = None,
    generation: str = "2.10",
) -> Demo:
    """The demo app on the shared cluster; ``hami`` overrides fields of its HAMi source and
    ``generation`` picks the HAMi pages' metric names."""
    clock = Clock()
    sim = SimCluster(SPEC)
    upstreams = await start_upstreams(sim, clock=clock)
    data = upstreams.exporter_config(dcgm_mode=dcgm_mode)  # type: ignore[arg-type]
    source = data["sources"]["hami"]
    if generation == "2.8":
        source["scrape_urls"] = [u + "?generation=2.8" for u in source["scrape_urls"]]
    source.update(hami or {})
    app = create_app(settings_from_mapping(data), clock=clock, run_loop=False)
    return Demo(sim, upstreams, clock, await aiohttp_client(app))


def assert_tenants_match(page: Page, key: SharedKey, tenants: set[str]) -> None:
    """``tenants``' GPU dollars (both bases), GPU counts and dollars by split method as the
    shared-GPU key has them, within 0.1 %."""
    for basis in SHARED_BASES:
        got = series(page, RATE[basis], resource="gpu")  # keyed (tenant,)
        for tenant in sorted(tenants):
            want = key.rate(basis, tenant)
            assert got[(tenant,)] == pytest.approx(want, rel=1e-3), (basis, tenant)
        by_method = series(page, BY_METHOD[basis])  # keyed (method, tenant)
        got_methods: dict[str, float] = defaultdict(float)
        for (method, tenant), value in by_method.items():
            if tenant in tenants and value:
                got_methods[method] += value
        want_methods: dict[str, float] = defaultdict(float)
        for tenant in tenants:
            for method, value in key.tenant_methods(basis, tenant).items():
                want_methods[method] += value
        assert dict(got_methods) == pytest.approx(
            {m: v for m, v in want_methods.items() if v}, rel=1e-3
        ), basis
    counts = series(page, "aifinops_tenant_gpus")  # keyed (gpu_model, tenant)
    for (tenant, model), value in key.gpus_by_model.items():
        if tenant in tenants:
            assert counts[(model, tenant)] == pytest.approx(value, rel=1e-3), tenant


def assert_idle_match(page: Page, key: SharedKey, tenants: set[str]) -> None:
    """Idle GPUs and their cost for ``tenants`` as the key has them (none for a held HAMi
    container: no CUDA call yet is not idleness by error)."""
    idle = series(page, "aifinops_idle_gpus")  # keyed (gpu_model, tenant)
    cost = series(page, "aifinops_idle_gpu_cost_usd_per_hour")
    got = {(t, m): v for (m, t), v in idle.items() if t in tenants and v}
    want = {k: v for k, v in key.idle_gpus.items() if k[0] in tenants}
    assert got == pytest.approx(want, rel=1e-3)
    for (tenant, model), value in key.idle_gpu_cost.items():
        if tenant in tenants:
            assert cost[(model, tenant)] == pytest.approx(value, rel=1e-3)
    assert want, "the pools must have an idle hold"


def assert_buckets_reconcile(page: Page, gt: GroundTruth, skip: set[str]) -> None:
    """Every tenant outside ``skip`` as the cluster's ground truth has it; on both bases the
    tenants and sentinels sum to the cluster's GPU total, which is OpenCost's."""
    cluster = series(page, "aifinops_cluster_cost_usd_per_hour")
    assert cluster[("gpu",)] == pytest.approx(gt.cluster["gpu"], rel=1e-3)
    for basis in SHARED_BASES:
        got = series(page, RATE[basis])  # keyed (resource, tenant)
        for (b, tenant, resource), value in gt.cost.items():
            if b == basis and tenant not in skip and tenant != IDLE_TENANT:
                assert got.get((resource, tenant), 0.0) == pytest.approx(value, rel=1e-3), (
                    basis,
                    tenant,
                    resource,
                )
        parts = math.fsum(v for (r, _), v in got.items() if r == "gpu")
        assert round(parts, 2) == round(cluster[("gpu",)], 2), basis


def hami_tenants(sim: SimCluster) -> set[str]:
    assert sim.shared is not None
    return {c.tenant for c in sim.shared.hami.containers}


def per_process_tenants(sim: SimCluster) -> set[str]:
    assert sim.shared is not None
    return {h.tenant for h in sim.shared.per_process.holders}


@pytest.mark.parametrize(
    ("dcgm_mode", "billing", "generation"),
    [
        ("prometheus", {"billing_share": "cores"}, "2.10"),
        ("scrape", {"billing_share": "memory"}, "2.8"),
        ("scrape", {"billing_share": "mix", "core_weight": 0.3}, "2.10"),
    ],
    ids=["prometheus-cores-2.10", "scrape-memory-2.8", "scrape-mix-2.10"],
)
async def test_hami_tenants_match_the_shared_answer_key(
    aiohttp_client: Any, dcgm_mode: str, billing: dict[str, Any], generation: str
) -> None:
    d = await start_shared(aiohttp_client, dcgm_mode=dcgm_mode, hami=billing, generation=generation)
    try:
        sim = d.sim
        assert sim.shared is not None
        assert hami_tenants(sim).isdisjoint(per_process_tenants(sim))
        for now in (T0, T0 + 3917.0 * 5):
            d.clock.now = now
            await d.refresh()
            page = await d.metrics()
            key = sim.shared.key(now, **billing)
            assert_tenants_match(page, key, hami_tenants(sim))
            held = series(page, "aifinops_hami_held_pods")
            assert key.held and math.fsum(held.values()) == len(key.held)
            if now - T0 > 900:  # past the idle window: idle holds are idle GPUs, held ones not
                assert_idle_match(page, key, hami_tenants(sim))
            gt = sim.ground_truth(now, **billing)
            assert_buckets_reconcile(page, gt, skip=per_process_tenants(sim))
    finally:
        await d.upstreams.close()


@pytest.mark.parametrize("dcgm_mode", ["prometheus", "scrape"])
async def test_per_process_tenants_match_the_shared_answer_key(
    aiohttp_client: Any, dcgm_mode: str
) -> None:
    d = await start_shared(aiohttp_client, dcgm_mode=dcgm_mode)
    try:
        sim = d.sim
        assert sim.shared is not None
        for now in (T0, T0 + 3917.0 * 5):
            d.clock.now = now
            await d.refresh()
            page = await d.metrics()
            assert_tenants_match(page, sim.shared.key(now), per_process_tenants(sim))
            if now - T0 > 900:
                assert_idle_match(page, sim.shared.key(now), per_process_tenants(sim))
            assert_matches_ground_truth(page, sim.ground_truth(now))
    finally:
        await d.upstreams.close()


async def test_without_the_hami_source_hami_pods_keep_opencosts_whole_gpu(
    aiohttp_client: Any,
) -> None:
    """The control case (OpenCost #3828): with the HAMi source off, every HAMi container is
    billed a whole GPU, so its tenants pay more than the key says they should."""
    d = await start_shared(aiohttp_client, hami={"enabled": False})
    try:
        await d.refresh()
        page = await d.metrics()
        assert d.sim.shared is not None
        key = d.sim.shared.key(T0)
        got = series(page, RATE["allocation"], resource="gpu")
        hami_tenants = {c.tenant for c in d.sim.shared.hami.containers}
        for tenant in hami_tenants:
            assert got[(tenant,)] > key.rate("allocation", tenant) * 1.5
    finally:
        await d.upstreams.close()
