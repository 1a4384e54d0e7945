"""The shared-GPU pools inside the simulated cluster (``ClusterSpec(shared_gpus=True)``): the
rest of the cluster renders as before, the pools' pods are billed and named like any other,
their DCGM series appear in every rendering, and the cluster's answer key takes their part
from the shared-GPU key."""

from __future__ import annotations

import math

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.cluster import BASES, IDLE_TENANT, RESOURCES, ClusterSpec, SimCluster
from aifinops.demo.upstreams import start_upstreams
from aifinops.settings import settings_from_mapping

NOW = 1_750_000_000.0


@pytest.fixture(scope="module")
def plain() -> SimCluster:
    return SimCluster(ClusterSpec.demo())


@pytest.fixture(scope="module")
def shared() -> SimCluster:
    return SimCluster(ClusterSpec.demo(shared_gpus=True))


def test_the_rest_of_the_cluster_renders_as_before(plain: SimCluster, shared: SimCluster) -> None:
    assert shared.shared is not None and plain.shared is None
    extra = shared.shared.node_names
    assert [n for n in shared.nodes if n.name not in extra] == list(plain.nodes)
    assert [p for p in shared.pods if p.node not in extra] == list(plain.pods)
    plain_pages, shared_pages = plain.dcgm_pages(NOW), shared.dcgm_pages(NOW)
    assert {k: v for k, v in shared_pages.items() if k not in extra} == plain_pages
    before = plain.opencost_allocation(NOW)["data"][0]
    after = shared.opencost_allocation(NOW)["data"][0]
    for key, row in before.items():
        if key != "__idle__":
            assert after[key] == row


def test_the_pools_pods_are_billed_and_named_like_any_other(shared: SimCluster) -> None:
    assert shared.shared is not None
    rows = shared.opencost_allocation(NOW)["data"][0]
    for pod in shared.shared.pods:
        row = rows[f"{pod.namespace}/{pod.name}"]
        assert shared.tenant_of(pod) == pod.namespace.removeprefix("team-")
        assert shared.rule_used(pod) == "namespace_pattern"
        # OpenCost bills the request: a whole GPU per HAMi container (OpenCost #3828).
        assert row["gpuCount"] == pytest.approx(pod.gpu_count, abs=1e-5)
    assert set(shared.shared.tenants).isdisjoint(ClusterSpec.demo().tenants)


def test_their_dcgm_series_are_in_every_rendering(shared: SimCluster) -> None:
    assert shared.shared is not None
    text = shared.dcgm_exposition(NOW)
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))  # one family block each, the pools' series inside
    uuids = {g.uuid for n in shared.shared.nodes for g in n.gpus}
    on_page = {s.labels["UUID"] for f in text_string_to_metric_families(text) for s in f.samples}
    assert uuids <= on_page
    stored = shared.prometheus_series(NOW, "DCGM_FI_DEV_GPU_UTIL")
    per_pod = [labels for labels, _ in stored if labels.get("pod_uid")]
    assert per_pod and all(labels["instance"].startswith("10.9.0.") for labels in per_pod)
    vector = shared.prometheus_vector(NOW, 'DCGM_FI_DEV_GPU_UTIL{pod_uid!=""}')
    assert len(vector["data"]["result"]) == len(per_pod)


@pytest.mark.parametrize(("billing", "weight"), [("cores", 0.5), ("memory", 0.5), ("mix", 0.25)])
def test_the_cluster_key_takes_the_shared_key_and_still_sums(
    shared: SimCluster, billing: str, weight: float
) -> None:
    assert shared.shared is not None
    gt = shared.ground_truth(NOW, billing_share=billing, core_weight=weight)  # type: ignore[arg-type]
    key = shared.shared.key(NOW, billing_share=billing, core_weight=weight)  # type: ignore[arg-type]
    for basis in BASES:
        for tenant in key.tenants:
            assert gt.rate(basis, tenant, "gpu") == pytest.approx(key.rate(basis, tenant))
        for resource in RESOURCES:
            assert gt.basis_total(basis, resource) == pytest.approx(gt.cluster[resource])
    for (tenant, model), value in key.gpus_by_model.items():
        assert gt.gpus_allocated[(tenant, model)] == pytest.approx(value)
    # The cluster's GPU total is OpenCost's (its idle row absorbed the whole-GPU bills).
    rows = shared.opencost_allocation(NOW)["data"][0]
    billed = math.fsum(r["gpuCost"] for r in rows.values())
    assert gt.cluster["gpu"] == pytest.approx(billed, rel=1e-6)
    assert gt.rate("allocation", IDLE_TENANT, "gpu") > 0


async def test_hamis_pages_are_served_with_their_generation_and_faults() -> None:
    sim = SimCluster(ClusterSpec.demo(shared_gpus=True))
    assert sim.shared is not None
    pool = sim.shared.hami
    node = pool.nodes[0].name
    up = await start_upstreams(sim, clock=lambda: NOW)
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            base = f"{up.dcgm_url}/hami"
            r = await client.get(f"{base}/scheduler/metrics")
            assert r.status_code == 200 and r.text == pool.scheduler_page(NOW, "2.10")
            r = await client.get(f"{base}/scheduler/metrics?generation=2.8")
            assert r.text == pool.scheduler_page(NOW, "2.8")
            r = await client.get(f"{base}/scheduler/metrics?legacy=1")
            assert r.text == pool.scheduler_page(NOW, "2.10", legacy_metrics=True)
            r = await client.get(f"{base}/monitor/{node}/metrics")
            assert r.text == pool.monitor_page(node, NOW)
            r = await client.get(f"{base}/monitor/no-such-node/metrics")
            assert r.status_code == 404
            up.faults.set("hami", "unavailable")
            r = await client.get(f"{base}/scheduler/metrics")
            assert r.status_code == 503
            assert up.faults.requests("hami") == 6
        config = up.exporter_config()
        urls = config["sources"]["hami"]["scrape_urls"]
        assert urls == [f"{base}/scheduler/metrics", f"{base}/monitor/{node}/metrics"]
        settings_from_mapping(config)  # the demo's configuration is valid as it is
    finally:
        await up.close()
