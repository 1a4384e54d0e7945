"""The whole exporter (real sources, model, renderer, app) against the simulated cluster:
its dollars match the simulator's ground truth, and the buckets reconcile to the cent."""

from __future__ import annotations

import gzip
import math
import subprocess

import pytest

from aifinops.demo.cluster import ClusterSpec
from tests.tools import require_binary
from tests.web.conftest import T0, series, start_demo_app

RATE = "aifinops_tenant_cost_usd_per_hour"
USAGE_RATE = "aifinops_tenant_usage_basis_cost_usd_per_hour"
BASIS_RATE = {"allocation": RATE, "usage": USAGE_RATE}


def assert_matches_ground_truth(page, gt, bases=("allocation", "usage")):
    for basis in bases:
        got = series(page, BASIS_RATE[basis])  # keyed (resource, tenant)
        want = {(r, t): v for (b, t, r), v in gt.cost.items() if b == basis and v}
        assert {k for k, v in got.items() if v} == set(want), basis
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-3), (basis, key)
        # tenants + __idle__ + __unallocated__ == cluster total, to the cent, per resource
        cluster = series(page, "aifinops_cluster_cost_usd_per_hour")
        for (resource,), total in cluster.items():
            parts = math.fsum(v for (r, _), v in got.items() if r == resource)
            assert round(parts, 2) == round(total, 2), (basis, resource)
            assert total == pytest.approx(gt.cluster[resource], rel=1e-3)


@pytest.mark.parametrize(
    "cfg",
    [
        {"dcgm_mode": "prometheus"},
        {"dcgm_mode": "scrape"},
        {
            "dcgm_mode": "scrape",
            "per_node": False,
            "utilization_metric": "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        },
    ],
    ids=["prometheus-api", "scrape-per-node", "scrape-engine-active"],
)
async def test_per_tenant_dollars_match_ground_truth(aiohttp_client, cfg):
    d = await start_demo_app(aiohttp_client, **cfg)
    try:
        await d.refresh()
        page = await d.metrics()
        gt = d.sim.ground_truth(T0, metric=cfg.get("utilization_metric", "auto"))
        assert_matches_ground_truth(page, gt)
        # GPU counts are the requested share; OpenCost prints it to 5 decimals (1/7 → 0.14286)
        held = series(page, "aifinops_tenant_gpus")  # keyed (gpu_model, tenant)
        for (tenant, model), value in gt.gpus_allocated.items():
            assert held[(model, tenant)] == pytest.approx(value, rel=1e-3)
        unused = series(page, "aifinops_tenant_gpu_unused_cost_usd_per_hour")
        for (tenant, model), value in gt.gpu_unused_cost.items():
            assert unused[(model, tenant)] == pytest.approx(value, rel=1e-3, abs=1e-9)
    finally:
        await d.upstreams.close()


@pytest.mark.parametrize(
    "spec",
    [
        ClusterSpec.demo(timeslice_util="device"),
        # the case: 4 replicas, 2 requested on every time-sliced GPU
        ClusterSpec.demo(timeslice_replicas=4, timeslice_partly_requested=1.0),
        ClusterSpec.demo(prometheus_duplicate_jobs=True),
        ClusterSpec.demo(dcgm_generations=("4.9",), prometheus_honor_labels=False),
    ],
    ids=[
        "device-figure-on-every-pod",
        "4-replicas-2-requested",
        "two-prometheus-jobs",
        "all-4.9-renamed-pod-labels",
    ],
)
async def test_usage_basis_with_only_urls_and_tenancy_matches_the_answer_key(aiohttp_client, spec):
    """Defaults only (URLs and tenancy): per-tenant usage GPU dollars, GPU counts and unused
    cost within 0.1 % of the answer key, whichever way DCGM reports time-sliced GPUs, with
    every series read twice, and under dcgm-exporter 4.9 names."""
    d = await start_demo_app(aiohttp_client, spec=spec)
    try:
        await d.refresh()
        page = await d.metrics()
        gt = d.sim.ground_truth(T0)
        assert_matches_ground_truth(page, gt, bases=("usage",))
        held = series(page, "aifinops_tenant_gpus")
        assert {k: v for k, v in held.items() if v} == pytest.approx(
            {(m, t): v for (t, m), v in gt.gpus_allocated.items() if v}, rel=1e-3
        )
        used = series(page, "aifinops_tenant_gpus_used")
        for (tenant, model), value in gt.gpus_used.items():
            assert used[(model, tenant)] == pytest.approx(value, rel=1e-3, abs=1e-9)
    finally:
        await d.upstreams.close()


async def test_dcgm_metric_per_gpu_is_published(demo):
    await demo.refresh()
    page = await demo.metrics()
    got = series(page, "aifinops_dcgm_utilization_gpus")  # keyed (metric,)
    # The sim's units: whole GPUs and MIG instances, each read by the metric it has, under
    # its node's dcgm-exporter generation's name.
    want: dict[tuple[str], float] = {}
    for node in demo.sim.nodes:
        new = demo.sim.dcgm_generation(node.name) != "4.8"
        for g in node.gpus:
            if g.model.profiling:
                name = (
                    "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO" if new else "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
                )
            else:
                name = "DCGM_FI_DEV_GPU_UTIL_RATIO" if new else "DCGM_FI_DEV_GPU_UTIL"
            want[(name,)] = want.get((name,), 0.0) + float(len(g.mig) or 1)
    assert got == want
    assert any("GPU_UTIL" in k[0] for k in got) and any("GR_ENGINE" in k[0] for k in got)


async def test_idle_gpus_after_the_window(demo):
    # the idle window is 900 s by default: observe at T0 and again past the window
    await demo.refresh()
    page = await demo.metrics()
    assert sum(v for _, v in page.get("aifinops_idle_gpus", [])) == 0
    demo.clock.now = T0 + 960
    await demo.refresh()
    page = await demo.metrics()
    gt = demo.sim.ground_truth(T0 + 960)
    idle = series(page, "aifinops_idle_gpus")
    want = {(m, t): v for (t, m), v in gt.idle_gpus.items() if v}
    assert {k: v for k, v in idle.items() if v} == pytest.approx(want, rel=1e-3)
    cost = series(page, "aifinops_idle_gpu_cost_usd_per_hour")
    for (tenant, model), value in gt.idle_gpu_cost.items():
        assert cost.get((model, tenant), 0.0) == pytest.approx(value, rel=1e-3, abs=1e-9)
    assert want, "the demo cluster should have idle GPUs"


async def test_counters_accrue_between_refreshes(demo):
    await demo.refresh()
    demo.clock.now = T0 + 1800
    await demo.refresh()
    page = await demo.metrics()
    totals = series(page, "aifinops_tenant_cost_usd_total")
    rates = series(page, RATE)
    for key, rate in rates.items():
        # half an hour at the new rate (the first refresh starts the counter at 0)
        assert totals[key] == pytest.approx(rate * 0.5, rel=1e-9)


async def test_readiness_and_landing_page(demo):
    resp = await demo.client.get("/readyz")
    assert resp.status == 503
    await demo.refresh()
    resp = await demo.client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert {s["source"] for s in body["sources"]} == {"dcgm", "opencost", "opencost_month"}
    assert (await demo.client.get("/healthz")).status == 200
    index = await (await demo.client.get("/")).text()
    assert "/metrics" in index and "opencost" in index


def _without_process(page: bytes) -> bytes:
    """``page`` without the process_* families (their HELP, TYPE and sample lines)."""

    def name(line: bytes) -> bytes:
        if line.startswith(b"#"):
            parts = line.split(b" ", 3)
            return parts[2] if len(parts) > 2 else b""
        return line.split(b"{", 1)[0].split(b" ", 1)[0]

    lines = page.splitlines(keepends=True)
    kept = [line for line in lines if not name(line).startswith(b"process_")]
    assert len(kept) < len(lines), "the page carries the process_* block"
    return b"".join(kept)


async def test_gzip_is_the_same_page(demo):
    await demo.refresh()
    plain = await (
        await demo.client.get("/metrics", headers={"Accept-Encoding": "identity"})
    ).read()
    resp = await demo.client.get(
        "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert resp.headers["Content-Encoding"] == "gzip"
    # The process_* block is read at each scrape (CPU seconds move between the two requests);
    # everything the refresh rendered must be byte for byte the same.
    assert _without_process(gzip.decompress(await resp.read())) == _without_process(plain)
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")


async def test_demo_page_passes_promtool(demo):
    promtool = require_binary("promtool")
    await demo.refresh()
    text = await (await demo.client.get("/metrics")).read()
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b""


@pytest.mark.parametrize("mode", ["error500", "garbage", "down", "truncated"])
async def test_opencost_failing_keeps_last_good_data_and_dcgm(demo, mode):
    await demo.refresh()
    before = series(await demo.metrics(), RATE)
    demo.upstreams.faults.set("opencost", mode)
    demo.clock.now = T0 + 60
    await demo.refresh()
    page = await demo.metrics()
    # the month-to-date query is not due again before budgets.refresh_interval_seconds
    assert series(page, "aifinops_source_up") == {
        ("dcgm",): 1.0,
        ("opencost",): 0.0,
        ("opencost_month",): 1.0,
    }
    assert series(page, "aifinops_source_age_seconds")[("opencost",)] == 60.0
    errors = series(page, "aifinops_source_errors_total", source="opencost")
    assert sum(errors.values()) == 1
    # last good allocations are still in use; usage basis still follows fresh DCGM data
    after = series(page, RATE)
    assert after == before
    assert after


async def test_stale_data_is_dropped_visibly(aiohttp_client):
    d = await start_demo_app(aiohttp_client, config={})
    try:
        await d.refresh()
        d.upstreams.faults.set("opencost", "error500")
        d.clock.now = T0 + 601  # stale_after_seconds defaults to 600
        await d.refresh()
        page = await d.metrics()
        assert series(page, "aifinops_source_stale") == {
            ("dcgm",): 0.0,
            ("opencost",): 1.0,
            ("opencost_month",): 0.0,  # stale after 3 x its 600 s interval
        }
        assert ("opencost",) not in series(page, "aifinops_source_age_seconds")
        assert series(page, RATE) == {}
        # GPUs are still known from DCGM
        assert series(page, "aifinops_tenant_gpus")
    finally:
        await d.upstreams.close()


async def test_dcgm_down_drops_only_the_usage_basis(demo):
    demo.upstreams.faults.set("prometheus", "error500")
    await demo.refresh()
    page = await demo.metrics()
    assert series(page, "aifinops_source_up") == {
        ("dcgm",): 0.0,
        ("opencost",): 1.0,
        ("opencost_month",): 1.0,
    }
    assert series(page, RATE)
    assert not series(page, USAGE_RATE)
    gt = demo.sim.ground_truth(T0)
    assert_matches_ground_truth(page, gt, bases=("allocation",))
