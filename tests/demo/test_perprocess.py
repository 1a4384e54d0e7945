"""dcgm-exporter's per-process page (``--kubernetes-virtual-gpus``) as the simulator renders it.

The rules checked come from NVIDIA/dcgm-exporter at d5e5f510a1b6b393f39a43293ccd9dc985defc79
(PR #594): ``internal/pkg/transformation/process_metrics.go`` (``isPerProcessMetric``: only
``DCGM_FI_DEV_GPU_UTIL`` and ``DCGM_FI_DEV_FB_USED``; MIG instances get memory only),
``kubernetes.go`` (``createPerProcessMetrics``: the device-level series kept, one per pod added
with ``pod_uid`` and ``vgpu``, ``0`` for a pod without a process; other fields copied per pod)
and ``const.go`` (attribute names), and ``rendermetrics/render_metrics.go`` (label order).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.perprocess import PER_PROCESS_FAMILIES, PerProcessPool

NOW = 1_750_000_000.0
TIMES = [NOW + k * 3917.0 for k in range(0, 26, 5)]
POD_ATTRS = {"container", "namespace", "pod", "vgpu"}


@pytest.fixture(scope="module")
def pool() -> PerProcessPool:
    return PerProcessPool.build()


def series(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[fam.name].append((dict(s.labels), s.value))
    return out


def unit_of(labels: dict[str, str]) -> tuple[str, str]:
    return (labels["UUID"], labels.get("GPU_I_ID", ""))


def test_time_sliced_gpus_show_the_device_once_and_each_pod_its_own_processes(
    pool: PerProcessPool,
) -> None:
    for now in TIMES:
        got = series(pool.dcgm_page(now))
        by_unit: dict[tuple[str, str], list[tuple[dict[str, str], float]]] = defaultdict(list)
        for labels, value in got["DCGM_FI_DEV_GPU_UTIL"]:
            by_unit[unit_of(labels)].append((labels, value))
        shared = [u for u in pool.replicas if not u[1]]
        assert set(by_unit) == set(shared)  # no device utilization on MIG instances
        for unit, rows in by_unit.items():
            device = [v for labels, v in rows if "pod" not in labels]
            pods = {labels["pod"]: (labels, v) for labels, v in rows if "pod" in labels}
            holders = pool.holders_of(unit)
            assert len(device) == 1
            assert set(pods) == {h.pod for h in holders}
            for h in holders:
                labels, value = pods[h.pod]
                assert labels["pod_uid"] == h.pod_uid
                assert labels["vgpu"] == h.vgpu
                assert value == pool.use(h, now)
                if not h.has_process:
                    assert value == 0  # buildIdlePodValues
            # Different pods, different figures: not the repeated device value of #587.
            assert len({v for _, v in pods.values()}) > 1
            assert device[0] == min(100, sum(v for _, v in pods.values()))


def test_mig_instances_share_memory_per_process_and_repeat_the_engine_figure(
    pool: PerProcessPool,
) -> None:
    got = series(pool.dcgm_page(NOW))
    shared_mig = [u for u in pool.replicas if u[1] and len(pool.holders_of(u)) > 1]
    assert shared_mig, "the layout must time-share a MIG instance"
    for unit in shared_mig:
        fb = [(lab, v) for lab, v in got["DCGM_FI_DEV_FB_USED"] if unit_of(lab) == unit]
        per_pod = {lab["pod"]: v for lab, v in fb if "pod" in lab}
        device = [v for lab, v in fb if "pod" not in lab]
        assert device == [sum(per_pod.values())]
        assert len(per_pod) == len(pool.holders_of(unit))
        engine = [
            (lab, v) for lab, v in got["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] if unit_of(lab) == unit
        ]
        assert len(engine) == len(pool.holders_of(unit))
        assert len({v for _, v in engine}) == 1  # the instance's figure on each pod
        assert all("pod_uid" not in lab for lab, _ in engine)  # copies, not per process
        assert engine[0][1] == pytest.approx(pool.unit_percent(unit, NOW) / 100.0)


def test_labels_are_in_dcgm_exporters_order_and_units_without_pods_keep_the_device_row(
    pool: PerProcessPool,
) -> None:
    text = pool.dcgm_page(NOW)
    fixed = ["gpu", "UUID", "pci_bus_id", "device", "modelName"]
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        family = line[: line.index("{")]
        names = [
            p.split("=", 1)[0] for p in line[line.index("{") + 1 : line.rindex("}")].split('",')
        ]
        assert names[:5] == fixed
        rest = names[5:]
        if rest[0] == "GPU_I_PROFILE":
            assert rest[1] == "GPU_I_ID"
            rest = rest[2:]
        assert rest[:2] == ["Hostname", "DCGM_FI_DRIVER_VERSION"]
        attrs = rest[2:]
        assert attrs == sorted(attrs)  # a Go template ranges over a map in key order
        assert set(attrs) in (set(), POD_ATTRS, POD_ATTRS | {"pod_uid"})
        if "pod_uid" in attrs:
            assert family in PER_PROCESS_FAMILIES
    got = series(text)
    empty = [u for u in pool.replicas if not pool.holders_of(u)]
    assert empty, "the layout must leave a MIG instance to nobody"
    for unit in empty:
        rows = [lab for lab, _ in got["DCGM_FI_DEV_FB_USED"] if unit_of(lab) == unit]
        assert rows and all("pod" not in lab for lab in rows)


def test_every_holder_is_billed_its_replica_and_the_pool_is_deterministic(
    pool: PerProcessPool,
) -> None:
    for pod, h in zip(pool.pods, pool.holders, strict=True):
        assert pod.name == h.pod
        assert pod.gpu_count == pytest.approx(h.fraction)
        replicas = pool.replicas[h.unit]
        gpu = pool.gpu(h.gpu_uuid)
        part = pool.instance(*h.unit).slices / gpu.model.mig_slices if h.gi_id else 1.0
        assert h.fraction == pytest.approx(part / replicas)
    assert PerProcessPool.build().dcgm_page(NOW) == pool.dcgm_page(NOW)
    node = pool.nodes[0].name
    assert all(node in line for line in pool.dcgm_page(NOW, node).splitlines() if "{" in line)
