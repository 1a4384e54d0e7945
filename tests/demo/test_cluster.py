"""The simulated cluster: determinism, real formats, and a self-consistent answer key."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.cluster import (
    BASES,
    IDLE_TENANT,
    RESOURCES,
    UNALLOCATED_TENANT,
    ClusterSpec,
    GroundTruth,
    SimCluster,
    opencost_round,
    opencost_window_hours,
    parse_selector,
)

SWAGGER_EXAMPLE = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "opencost_swagger_allocation_compute_example.json"
)
NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
TIMES = [NOW + k * 3917.0 for k in range(0, 26, 5)]  # spread over a day, odd offsets


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    return SimCluster(ClusterSpec.demo())


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_bytes() -> None:
    a, b = SimCluster(ClusterSpec.demo()), SimCluster(ClusterSpec.demo())
    assert a.dcgm_exposition(NOW) == b.dcgm_exposition(NOW)
    assert json.dumps(a.opencost_allocation(NOW)) == json.dumps(b.opencost_allocation(NOW))
    query = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
    assert json.dumps(a.prometheus_vector(NOW, query)) == json.dumps(
        b.prometheus_vector(NOW, query)
    )
    assert a.ground_truth(NOW) == b.ground_truth(NOW)


_LAYOUT = """
import hashlib, sys
from aifinops.demo.cluster import ClusterSpec, SimCluster
sim = SimCluster(ClusterSpec.demo(shared_gpus=True))
print(hashlib.sha256(sim.dcgm_exposition(float(sys.argv[1])).encode()).hexdigest())
"""


def test_same_seed_same_bytes_in_any_process() -> None:
    # The layout once kept id()s of a previous call's slot tuples; a freed tuple's id reused
    # by a new slot dropped a MIG pod, depending on PYTHONHASHSEED (allocation patterns).
    import os
    import subprocess
    import sys

    digests = set()
    for seed in ("0", "2", "5"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _LAYOUT, str(NOW)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_other_seed_other_cluster() -> None:
    a = SimCluster(ClusterSpec.demo())
    b = SimCluster(ClusterSpec.demo(seed=8))
    assert a.dcgm_exposition(NOW) != b.dcgm_exposition(NOW)


def test_time_moves_utilization_but_not_layout(sim: SimCluster) -> None:
    later = NOW + 6 * 3600
    assert sim.dcgm_exposition(NOW) != sim.dcgm_exposition(later)
    uuids = re.compile(r'UUID="([^"]+)"')
    assert set(uuids.findall(sim.dcgm_exposition(NOW))) == set(
        uuids.findall(sim.dcgm_exposition(later))
    )


# --- shape of the demo cluster ----------------------------------------------------------------


def test_demo_shape(sim: SimCluster) -> None:
    models = Counter(g.model.name for n in sim.nodes for g in n.gpus)
    assert models == {
        "NVIDIA H100 80GB HBM3": 16 + 4,  # + the owned pools (exact energy counters)
        "NVIDIA A100-SXM4-80GB": 16 + 2,
        "NVIDIA L4": 8 + 2,
        "Tesla T4": 2,  # no profiling counters
    }
    # both dcgm-exporter generations in one fleet
    assert {sim.dcgm_generation(n.name) for n in sim.nodes if n.gpus} == {"4.8", "4.9"}
    assert len(sim.spec.tenants) == 10
    assert any(not n.gpus for n in sim.nodes)
    assert any(not p.holds for p in sim.pods)
    assert any(p.namespace == "kube-system" for p in sim.pods)
    assert sim.spec.odd_tenant is None


def test_demo_has_mig_with_seven_slices(sim: SimCluster) -> None:
    mig = [g for n in sim.nodes for g in n.gpus if g.sharing == "mig"]
    assert mig
    assert all(g.model.mig_slices == 7 for g in mig)
    assert all(sum(i.slices for i in g.mig) <= 7 for g in mig)
    profiles = {i.profile for g in mig for i in g.mig}
    assert {"1g.10gb", "2g.20gb", "3g.40gb"} <= profiles
    held = {h.unit for p in sim.pods for h in p.holds if h.gi_id}
    instances = {(g.uuid, i.gi_id) for g in mig for i in g.mig}
    assert held < instances  # some MIG instances are assigned, at least one is not
    one_g = [h for p in sim.pods for h in p.holds if h.gi_id and h.fraction == 1 / 7]
    assert one_g  # a 1g.10gb pod holds 1/7 of a GPU


def test_demo_has_time_slicing(sim: SimCluster) -> None:
    text = sim.dcgm_exposition(NOW)
    util = [
        line
        for line in text.splitlines()
        if line.startswith(("DCGM_FI_DEV_GPU_UTIL{", "DCGM_FI_DEV_GPU_UTIL_RATIO{"))
    ]
    pods_per_uuid: dict[str, set[str]] = defaultdict(set)
    for line in util:
        m = re.search(r'UUID="([^"]+)".*pod="([^"]+)"', line)
        if m and "GPU_I_ID" not in line:
            pods_per_uuid[m.group(1)].add(m.group(2))
    shared = [u for u, pods in pods_per_uuid.items() if len(pods) > 1]
    assert shared, "a time-sliced GPU shows several pods on one UUID"
    fractions = {h.fraction for p in sim.pods for h in p.holds if h.uuid in shared}
    assert fractions == {1 / sim.spec.timeslice_replicas}
    # Some time-sliced GPUs are only partly requested (2 of 4 replicas): the rest is idle.
    requested = Counter(h.uuid for p in sim.pods for h in p.holds if h.uuid in shared)
    assert min(requested.values()) < sim.spec.timeslice_replicas


def test_demo_has_idle_unallocated_and_unmeasured(sim: SimCluster) -> None:
    assert any(not p.busy for p in sim.pods if p.holds)
    held = {h.uuid for p in sim.pods for h in p.holds}
    assert any(g.uuid not in held for n in sim.nodes for g in n.gpus)
    gt = sim.ground_truth(NOW)
    assert gt.idle_holds
    assert gt.unmeasured_pods  # the pod DCGM cannot map, and the batch job's earlier run


# --- tenancy ----------------------------------------------------------------------------------


def test_every_tenancy_rule_kind_decides_some_pod(sim: SimCluster) -> None:
    used = Counter(sim.rule_used(p) for p in sim.pods)
    for kind in ("pod_label", "namespace_label", "namespace_map", "namespace_pattern", "none"):
        assert used[kind] > 0, kind
    assert any(sim.tenant_of(p) == UNALLOCATED_TENANT for p in sim.pods if p.holds)


def test_rule_precedence_cases(sim: SimCluster) -> None:
    # A pod label beats the namespace pattern.
    in_pattern = [
        p
        for p in sim.pods
        if p.namespace.startswith("team-") and p.labels.get("aifinops.io/tenant")
    ]
    assert in_pattern
    assert all(sim.tenant_of(p) == p.labels["aifinops.io/tenant"] for p in in_pattern)
    # A namespace label beats the namespace pattern.
    recsys = [p for p in sim.pods if p.namespace == "team-recsys"]
    assert recsys and {sim.tenant_of(p) for p in recsys} == {"personalization"}
    # A pod's own `team` label is not a configured pod label key: the pattern decides.
    decoys = [p for p in sim.pods if p.labels.get("team") == "ml-infra"]
    assert decoys and all(sim.tenant_of(p) == p.namespace.removeprefix("team-") for p in decoys)


def test_tenancy_config_is_valid_settings(sim: SimCluster) -> None:
    from aifinops.settings import settings_from_mapping

    settings = settings_from_mapping({"tenancy": sim.tenancy_config()})
    assert settings.tenancy.pod_label_keys == ("aifinops.io/tenant",)
    assert settings.tenancy.namespaces["ml-research"] == "research"


def test_odd_tenant_name_only_when_asked() -> None:
    odd = 'Legal "EU"\\ops\nteam'
    sim = SimCluster(ClusterSpec.demo(odd_tenant=odd))
    gt = sim.ground_truth(NOW)
    assert odd in gt.tenants
    assert gt.tenant_total("allocation", odd) > 0
    assert odd not in SimCluster().ground_truth(NOW).tenants


# --- ground truth: conservation and the usage rules -------------------------------------------


@pytest.mark.parametrize("now", TIMES)
@pytest.mark.parametrize("metric", ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"])
def test_conservation_per_basis(sim: SimCluster, now: float, metric: str) -> None:
    gt = sim.ground_truth(now, metric=metric)
    for basis in BASES:
        for resource in RESOURCES:
            assert close(gt.basis_total(basis, resource), gt.cluster[resource]), (basis, resource)
    assert gt.cluster["gpu"] > 0 and gt.cluster["cpu"] > 0


def test_non_gpu_resources_equal_on_both_bases(sim: SimCluster) -> None:
    gt = sim.ground_truth(NOW)
    for tenant in gt.tenants:
        for resource in RESOURCES[1:]:
            assert gt.rate("usage", tenant, resource) == gt.rate("allocation", tenant, resource)


def test_usage_never_exceeds_allocation_without_time_slice_redistribution(
    sim: SimCluster,
) -> None:
    """What holds: on a whole GPU or a MIG instance a pod pays R·u ≤ R. On a time-sliced GPU a
    pod pays R·u' where R is the sum of all its neighbours' rates, so a tenant can pay more than
    its own allocation only when its neighbours' rates are larger than its own. In the demo the
    pods sharing a GPU are billed equally and busy shares stay ≤ 0.30 of 3 replicas, so usage ≤
    allocation for every real tenant, and __idle__ only gains."""
    for now in TIMES:
        gt = sim.ground_truth(now)
        for tenant in gt.tenants:
            if tenant == IDLE_TENANT:
                continue
            assert gt.rate("usage", tenant, "gpu") <= gt.rate("allocation", tenant, "gpu") + 1e-12
        assert gt.rate("usage", IDLE_TENANT, "gpu") >= gt.rate("allocation", IDLE_TENANT, "gpu")


def test_time_slice_redistribution_can_exceed_allocation() -> None:
    sim = SimCluster(ClusterSpec.demo())

    def time_sliced(p: Any) -> bool:
        return bool(p.holds) and not p.holds[0].gi_id and p.holds[0].fraction < 1

    ts_pods = [p for p in sim.pods if time_sliced(p) and p.busy]
    by_uuid: dict[str, list[Any]] = defaultdict(list)
    for p in sim.pods:
        if time_sliced(p):
            by_uuid[p.holds[0].uuid].append(p)
    # Scale one neighbour of a busy pod on a shared GPU: the busy pod's unit rate R grows.
    victim = next(
        p
        for p in ts_pods
        if any(sim.tenant_of(q) != sim.tenant_of(p) for q in by_uuid[p.holds[0].uuid])
    )
    neighbour = next(
        q for q in by_uuid[victim.holds[0].uuid] if sim.tenant_of(q) != sim.tenant_of(victim)
    )
    tenant = sim.tenant_of(victim)
    before = sim.ground_truth(NOW)
    sim.scale_tenant(sim.tenant_of(neighbour), 1000.0)
    gt = sim.ground_truth(NOW)
    assert gt.rate("allocation", tenant, "gpu") == before.rate("allocation", tenant, "gpu")
    assert gt.rate("usage", tenant, "gpu") > gt.rate("allocation", tenant, "gpu")
    for resource in RESOURCES:
        assert close(gt.basis_total("usage", resource), gt.cluster[resource])


def test_unused_cost_is_part_of_usage_idle(sim: SimCluster) -> None:
    # Holders' unused cost is booked to __idle__ under the usage basis; __idle__ also keeps
    # the capacity nobody requested, less what holders used beyond their request.
    for now in TIMES:
        gt = sim.ground_truth(now)
        unused = math.fsum(gt.gpu_unused_cost.values())
        assert unused > 0
        assert gt.rate("usage", IDLE_TENANT, "gpu") >= unused - 1e-9


def test_gpu_equivalents(sim: SimCluster) -> None:
    gt = sim.ground_truth(NOW)
    for key, allocated in gt.gpus_allocated.items():
        assert 0 <= gt.gpus_used.get(key, 0.0) <= allocated + 1e-12
    # Every held GPU-equivalent that DCGM attributes to a running pod is counted once.
    total = math.fsum(gt.gpus_allocated.values())
    held = math.fsum(
        h.fraction
        for p in sim.pods
        if p.dcgm_mapped and sim.run_at(p, NOW) is not None
        for h in p.holds
    )
    assert close(total, held)


def test_idle_holds_are_the_idle_pods(sim: SimCluster) -> None:
    gt = sim.ground_truth(NOW)
    idle_pods = {(h.namespace, h.pod) for h in gt.idle_holds}
    for p in sim.pods:
        if not p.holds or not p.dcgm_mapped or sim.run_at(p, NOW) is None:
            continue
        assert ((p.namespace, p.name) in idle_pods) == (not p.busy), p.name
    assert all(h.utilization < gt.idle_threshold for h in gt.idle_holds)
    for (tenant, model), n in gt.idle_gpus.items():
        assert n <= gt.gpus_allocated[(tenant, model)] + 1e-12
        assert gt.idle_gpu_cost[(tenant, model)] <= gt.rate("allocation", tenant, "gpu") + 1e-12


def test_unmeasured_pod_keeps_allocation_gpu_cost() -> None:
    sim = SimCluster(ClusterSpec.demo(batch_jobs=0))
    gt = sim.ground_truth(NOW)
    unmapped = [p for p in sim.pods if not p.dcgm_mapped]
    assert [(p.namespace, p.name) for p in unmapped] == list(gt.unmeasured_pods)
    text = sim.dcgm_exposition(NOW)
    assert all(f'pod="{p.name}"' not in text for p in unmapped)
    # Alone in its tenant? Then its tenant's usage GPU cost includes its full allocation.
    pod = unmapped[0]
    rate = pod.gpu_count * next(
        g.model.usd_per_hour for n in sim.nodes for g in n.gpus if g.uuid == pod.holds[0].uuid
    )
    assert gt.rate("usage", sim.tenant_of(pod), "gpu") >= rate - 1e-9


def test_device_level_time_slice_samples_are_rescaled() -> None:
    sim = SimCluster(ClusterSpec.demo(timeslice_util="device"))
    gt = sim.ground_truth(NOW)
    for resource in RESOURCES:
        assert close(gt.basis_total("usage", resource), gt.cluster[resource])
    values: dict[str, list[float]] = defaultdict(list)
    for f in text_string_to_metric_families(sim.dcgm_exposition(NOW)):
        if f.name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_UTIL_RATIO"):
            scale = 100.0 if f.name.endswith("_RATIO") else 1.0  # 4.9 writes a ratio
            for smp in f.samples:
                if "pod" in smp.labels and "GPU_I_ID" not in smp.labels:
                    values[smp.labels["UUID"]].append(round(smp.value * scale, 6))
    shared = {u: v for u, v in values.items() if len(v) > 1}
    assert shared
    # Every pod on a time-sliced GPU shows the same device figure, so Σu > 1 can happen.
    assert all(len(set(v)) == 1 for v in shared.values())
    assert any(sum(v) > 100 for v in shared.values())


def test_scale_tenant_multiplies_its_costs() -> None:
    sim = SimCluster(ClusterSpec.demo())
    before = sim.ground_truth(NOW)
    sim.scale_tenant("search", 3.0)
    after = sim.ground_truth(NOW)
    for resource in RESOURCES:
        b = before.rate("allocation", "search", resource)
        assert after.rate("allocation", "search", resource) == pytest.approx(3 * b, abs=1e-3)
        assert close(after.basis_total("allocation", resource), after.cluster[resource])
    assert after.rate("allocation", "risk", "cpu") == before.rate("allocation", "risk", "cpu")
    with pytest.raises(ValueError):
        sim.scale_tenant("search", 0.0)


# --- OpenCost JSON ----------------------------------------------------------------------------


def _resolve(rule: dict[str, Any], props: dict[str, Any]) -> str:
    """A tiny independent tenancy resolver working on OpenCost's JSON, from tenancy_config()."""
    labels, ns_labels = props.get("labels", {}), props.get("namespaceLabels", {})
    for key in rule["pod_label_keys"]:
        value = labels.get(re.sub(r"[^a-zA-Z0-9_]", "_", key))
        if value:
            return str(value)
    for key in rule["namespace_label_keys"]:
        value = ns_labels.get(re.sub(r"[^a-zA-Z0-9_]", "_", key))
        if value:
            return str(value)
    ns = props.get("namespace", "")
    if ns in rule["namespaces"]:
        return str(rule["namespaces"][ns])
    for pattern in rule["namespace_patterns"]:
        m = re.fullmatch(pattern["regex"], ns)
        if m:
            return str(m.group("tenant"))
    return UNALLOCATED_TENANT


FIELDS = {
    "gpu": ("gpuCost", "gpuCostAdjustment"),
    "cpu": ("cpuCost", "cpuCostAdjustment"),
    "ram": ("ramCost", "ramCostAdjustment"),
    "storage": ("pvCost", "pvCostAdjustment"),
    "network": (
        "networkCost",
        "networkCostAdjustment",
        "loadBalancerCost",
        "loadBalancerCostAdjustment",
    ),
    "shared": ("sharedCost", "externalCost"),
}


@pytest.mark.parametrize("now", TIMES[:3])
@pytest.mark.parametrize("window_hours", [1.0, 0.5, 48.0])
def test_opencost_json_sums_to_ground_truth(
    sim: SimCluster, now: float, window_hours: float
) -> None:
    payload = json.loads(json.dumps(sim.opencost_allocation(now, window_hours)))
    assert payload["code"] == 200 and payload["status"] == "success"
    rows = payload["data"][0]
    assert "__idle__" in rows
    gt = sim.ground_truth(now, window_hours)
    rule = sim.tenancy_config()
    per_tenant: dict[tuple[str, str], list[float]] = defaultdict(list)
    for key, row in rows.items():
        tenant = IDLE_TENANT if key == "__idle__" else _resolve(rule, row["properties"])
        for resource, names in FIELDS.items():
            per_tenant[(tenant, resource)].append(math.fsum(row[n] for n in names) / window_hours)
    for resource in RESOURCES:
        total = math.fsum(v for (_, r), vs in per_tenant.items() if r == resource for v in vs)
        assert close(total, gt.cluster[resource]), resource
    for (tenant, resource), values in per_tenant.items():
        assert close(math.fsum(values), gt.rate("allocation", tenant, resource)), (tenant, resource)


def test_opencost_rows_have_real_fields(sim: SimCluster) -> None:
    rows = sim.opencost_allocation(NOW)["data"][0]
    example = json.loads(SWAGGER_EXAMPLE.read_text())["data"][0]["opencost"]
    for key, row in rows.items():
        missing = set(example) - set(row) - {"rawAllocationOnly"}
        assert not missing, (key, missing)
        assert row["name"] == key
    pods = [r for k, r in rows.items() if k != "__idle__"]
    gpu_rows = [r for r in pods if r["gpuCost"] > 0]
    assert all(r["gpuAllocation"]["gpuRequestAverage"] == r["gpuCount"] for r in gpu_rows)
    assert any(r["gpuAllocation"]["isGPUShared"] for r in gpu_rows)
    assert any(r["gpuCount"] == round(1 / 7, 5) for r in gpu_rows)
    assert any("aifinops_io_tenant" in r["properties"]["labels"] for r in pods)
    assert any(r["cpuCostAdjustment"] < 0 for r in pods)
    assert any(r["loadBalancerCost"] > 0 for r in pods)
    assert any(r["externalCost"] > 0 for r in pods)
    assert any(r["pvs"] for r in pods)
    for r in pods:
        assert r["properties"]["namespace"] + "/" + r["properties"]["pod"] in rows
        total = sum(
            r[k]
            for k in (
                "cpuCost",
                "cpuCostAdjustment",
                "gpuCost",
                "ramCost",
                "ramCostAdjustment",
                "pvCost",
                "networkCost",
                "loadBalancerCost",
                "sharedCost",
                "externalCost",
            )
        )
        assert r["totalCost"] == pytest.approx(total, abs=1e-4)
    idle = rows["__idle__"]
    assert idle["gpuCost"] > 0 and idle["cpuCost"] > 0 and idle["ramCost"] > 0


def test_opencost_container_keys_and_no_idle_by_default(sim: SimCluster) -> None:
    rows = sim.opencost_allocation(NOW, aggregate="", include_idle=False)["data"][0]
    assert "__idle__" not in rows
    assert all(k.count("/") == 4 and k.startswith("demo/") for k in rows)
    with pytest.raises(ValueError):
        sim.opencost_allocation(NOW, aggregate="label:app")


def test_batch_job_runs_part_of_the_window() -> None:
    sim = SimCluster(ClusterSpec.demo())
    batch = next(p for p in sim.pods if p.schedule is not None)
    rows = sim.opencost_allocation(NOW, 3.0)["data"][0]
    runs = [r for r in rows.values() if r["properties"].get("controller") == batch.controller]
    assert len(runs) >= 2
    assert all(0 < r["minutes"] <= 40 for r in runs)
    assert math.isclose(sum(r["minutes"] for r in runs), 120, abs_tol=40)


def test_opencost_rounding_matches_go() -> None:
    # Go's math.Round(f*100000)/100000: half away from zero, 5 decimals.
    assert opencost_round(7e-6) == 0.00001
    assert opencost_round(-7e-6) == -0.00001
    assert opencost_round(3e-6) == 0.0
    assert opencost_round(0.125) == 0.125
    assert opencost_round(1.234567) == 1.23457


def test_window_parsing() -> None:
    assert opencost_window_hours("1h", NOW) == 1.0
    assert opencost_window_hours("30m", NOW) == 0.5
    assert opencost_window_hours("2d", NOW) == 48.0
    assert opencost_window_hours("month", NOW) == pytest.approx(14 * 24 + 15 + 6 / 60 + 40 / 3600)
    assert opencost_window_hours("today", NOW) == pytest.approx(15 + 6 / 60 + 40 / 3600)
    assert opencost_window_hours(f"{NOW - 7200:.0f},{NOW:.0f}", NOW) == 2.0
    for bad in ("", "1y", "-1h", "0h", "yesterday-ish"):
        with pytest.raises(ValueError):
            opencost_window_hours(bad, NOW)


# --- dcgm-exporter text -----------------------------------------------------------------------

LABEL_ORDER = re.compile(
    r'^DCGM_FI_[A-Z_]+\{gpu="\d+",UUID="GPU-[0-9a-f-]{36}",pci_bus_id="00000000:[0-9A-F]{2}:00\.0",'
    r'device="nvidia\d+",modelName="[^"]+"(,GPU_I_PROFILE="\dg\.\d+gb",GPU_I_ID="\d+")?,'
    r'(Hostname="[^"]+",DCGM_FI_DRIVER_VERSION|hostname="[^"]+",DCGM_FI_SYSTEM_DRIVER_VERSION)'
    r'="[\d.]+"'
    r'(,container="[^"]+",namespace="[^"]+",pod="[^"]+")?\} -?[\d.]+$'
)


def test_dcgm_text_is_valid_exposition(sim: SimCluster) -> None:
    text = sim.dcgm_exposition(NOW)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_FB_USED",
    } <= set(families)
    assert families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].type == "counter"
    for s in families["DCGM_FI_DEV_GPU_UTIL"].samples:
        assert 0 <= s.value <= 100 and s.value == int(s.value)
    for s in families["DCGM_FI_PROF_GR_ENGINE_ACTIVE"].samples:
        assert 0 <= s.value <= 1
    # MIG instances have only the profiling metric, as in real DCGM
    assert not [s for s in families["DCGM_FI_DEV_GPU_UTIL"].samples if "GPU_I_ID" in s.labels]
    engine = families.get("DCGM_FI_PROF_GR_ENGINE_ACTIVE")
    engine_new = families.get("DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO")
    mig = [s for f in (engine, engine_new) if f for s in f.samples if "GPU_I_PROFILE" in s.labels]
    assert mig and all(s.labels["GPU_I_ID"].isdigit() for s in mig)
    # a T4 has no profiling counters: only the device metric
    t4 = {s.labels["UUID"] for f in families.values() for s in f.samples if "T4" in str(s.labels)}
    assert t4
    profiled = {s.labels["UUID"] for f in (engine, engine_new) if f for s in f.samples}
    assert not t4 & profiled
    # 4.9 pages: utilization is a 0–1 ratio
    for s in families["DCGM_FI_DEV_GPU_UTIL_RATIO"].samples:
        assert 0 <= s.value <= 1
    for line in text.splitlines():
        if not line.startswith("#"):
            assert LABEL_ORDER.match(line), line
    assert text.endswith("\n") and "\n\n" not in text


def test_dcgm_pages_per_node(sim: SimCluster) -> None:
    pages = sim.dcgm_pages(NOW)
    assert set(pages) == {n.name for n in sim.nodes if n.gpus}
    series = [
        line for page in pages.values() for line in page.splitlines() if not line.startswith("#")
    ]
    whole = [line for line in sim.dcgm_exposition(NOW).splitlines() if not line.startswith("#")]
    assert sorted(series) == sorted(whole)
    for node, page in pages.items():
        list(text_string_to_metric_families(page))
        host = "Hostname" if sim.dcgm_generation(node) == "4.8" else "hostname"
        assert all(f'{host}="{node}"' in line for line in page.splitlines() if "{" in line)
    with pytest.raises(KeyError):
        sim.dcgm_exposition(NOW, node="no-such-node")


@pytest.mark.parametrize("now", TIMES)
def test_utilization_bands(sim: SimCluster, now: float) -> None:
    gt = sim.ground_truth(now)
    assert gt.idle_holds  # idle pods exist at every hour of the day
    text = sim.dcgm_exposition(now)
    per_device: dict[str, int] = defaultdict(int)
    for f in text_string_to_metric_families(text):
        if f.name != "DCGM_FI_DEV_GPU_UTIL":
            continue
        for s in f.samples:
            if "pod" in s.labels:
                per_device[s.labels["UUID"] + s.labels.get("GPU_I_ID", "")] += int(s.value)
    assert per_device and all(v <= 100 for v in per_device.values())
    running = [(p, sim.run_at(p, now)) for p in sim.pods]
    busy = {(p.namespace, r.name) for p, r in running if r is not None and p.busy}
    for f in text_string_to_metric_families(text):
        if f.name != "DCGM_FI_DEV_GPU_UTIL":
            continue
        for s in f.samples:
            if "pod" not in s.labels:
                continue
            if (s.labels["namespace"], s.labels["pod"]) in busy:
                assert s.value >= 15  # busy: 30–95 %, a busy time-sliced share 15–30 %
            else:
                assert 1 <= s.value <= 3


# --- Prometheus API JSON ----------------------------------------------------------------------


def test_prometheus_vector(sim: SimCluster) -> None:
    payload = sim.prometheus_vector(NOW, "DCGM_FI_DEV_GPU_UTIL")
    assert payload["status"] == "success" and payload["data"]["resultType"] == "vector"
    result = payload["data"]["result"]
    assert len(result) == sum(
        1
        for line in sim.dcgm_exposition(NOW).splitlines()
        if line.startswith("DCGM_FI_DEV_GPU_UTIL{")
    )
    first = result[0]
    assert first["metric"]["__name__"] == "DCGM_FI_DEV_GPU_UTIL"
    assert first["metric"]["job"] == "nvidia-dcgm-exporter"
    assert first["metric"]["instance"].endswith(":9400")
    assert first["value"][0] == NOW and isinstance(first["value"][1], str)
    node = first["metric"]["Hostname"]
    sel = sim.prometheus_vector(NOW, f'DCGM_FI_DEV_GPU_UTIL{{Hostname="{node}", cluster="demo"}}')
    assert 0 < len(sel["data"]["result"]) < len(result)
    assert all(r["metric"]["Hostname"] == node for r in sel["data"]["result"])
    engine = sim.prometheus_vector(NOW, '{__name__="DCGM_FI_PROF_GR_ENGINE_ACTIVE"}')
    assert all(0 <= float(r["value"][1]) <= 1 for r in engine["data"]["result"])
    assert sim.prometheus_vector(NOW, "up")["data"]["result"] == []


@pytest.mark.parametrize(
    "query", ["", "sum(DCGM_FI_DEV_GPU_UTIL)", "DCGM_FI_DEV_GPU_UTIL > 5", 'x{a="b"', "{}"]
)
def test_prometheus_bad_queries(sim: SimCluster, query: str) -> None:
    payload = sim.prometheus_vector(NOW, query)
    assert payload["status"] == "error" and payload["errorType"] == "bad_data"
    assert payload["error"].startswith('invalid parameter "query"')


def test_selector_parser() -> None:
    assert parse_selector('m{a="1",b!="2",c=~"x.*"}') == (
        "m",
        [("a", "=", "1"), ("b", "!=", "2"), ("c", "=~", "x.*")],
    )
    assert parse_selector('{__name__="m", a="q\\"x"}') == ("m", [("a", "=", 'q"x')])


def test_prometheus_without_honor_labels_renames_pod_labels() -> None:
    sim = SimCluster(ClusterSpec.demo(prometheus_honor_labels=False))
    result = sim.prometheus_vector(NOW, "DCGM_FI_DEV_GPU_UTIL")["data"]["result"]
    assert all(r["metric"]["namespace"] == "gpu-operator" for r in result)
    assert any("exported_namespace" in r["metric"] for r in result)


# --- the benchmark clusters -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 100, 1000, 10000])
def test_scaled_spec_has_exactly_n_gpus(n: int) -> None:
    spec = ClusterSpec.scaled(n)
    assert spec.n_gpus == n
    assert len(spec.tenants) == min(2000, max(4, n // 5))


@pytest.mark.parametrize("n", [100, 1000])
def test_scaled_cluster(n: int) -> None:
    sim = SimCluster(ClusterSpec.scaled(n))
    assert sum(len(node.gpus) for node in sim.nodes) == n
    assert len(sim.pods) == 2 * n
    gt: GroundTruth = sim.ground_truth(NOW)
    for basis in BASES:
        for resource in RESOURCES:
            assert close(gt.basis_total(basis, resource), gt.cluster[resource])
    assert {g.sharing for node in sim.nodes for g in node.gpus} == {"none", "mig", "timeslice"}


def test_the_answer_key_shares_no_code_with_the_exporter() -> None:
    # The ground truth must be computed without the model's (or the sources') code.
    import ast

    import aifinops.demo.cluster as cluster_module

    # The simulator is a package (layout, renderers, answer key): read every module of it,
    # and every demo module it pulls in (the shared-GPU pools and their key).
    package = Path(cluster_module.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "truth.py", "layout.py"}
    imported: set[str] = set()
    todo, seen = list(modules), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        found = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= found
        for name in found:
            if name.startswith("aifinops.demo.") and not name.startswith("aifinops.demo.cluster"):
                todo.append(package.parent / f"{name.rsplit('.', 1)[1]}.py")
    outside = {m for m in imported if m.startswith("aifinops")} - {
        m for m in imported if m.startswith("aifinops.demo.")
    }
    assert imported and not outside, outside
    assert any(p.name == "shared_key.py" for p in seen)  # the shared-GPU key is read too
