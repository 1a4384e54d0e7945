"""HAMi's scheduler and monitor pages as the simulator renders them, checked against the
families, labels and help texts HAMi's own sources declare (tests/fixtures/
hami_metric_families.tsv, derived from cmd/scheduler/metrics.go and cmd/vGPUmonitor/metrics.go
at v2.8.0 and v2.10.0)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.cluster import MIB
from aifinops.demo.hami import (
    HAMI_GENERATIONS,
    HAMI_ZONE,
    HamiGeneration,
    HamiPool,
    go_float,
)

FAMILIES_TSV = Path(__file__).resolve().parents[1] / "fixtures" / "hami_metric_families.tsv"
NOW = 1_750_000_000.0
TIMES = [NOW + k * 3917.0 for k in range(0, 26, 5)]


def declared() -> dict[tuple[str, str], dict[str, tuple[frozenset[str], str, str]]]:
    """(generation, component) → family → (label names, emitted, help)."""
    out: dict[tuple[str, str], dict[str, tuple[frozenset[str], str, str]]] = defaultdict(dict)
    for line in FAMILIES_TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        gen, comp, family, labels, emitted, help_ = line.split("\t")
        out[(gen, comp)][family] = (frozenset(labels.split(",")), emitted, help_)
    return out


@pytest.fixture(scope="module")
def pool() -> HamiPool:
    return HamiPool.build()


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[fam.name].append((dict(s.labels), s.value))
    return out


def pages(pool: HamiPool, gen: HamiGeneration, legacy: bool) -> dict[str, str]:
    node = pool.nodes[0].name
    return {
        "scheduler": pool.scheduler_page(NOW, gen, legacy_metrics=legacy),
        "monitor": pool.monitor_page(node, NOW, gen, legacy_metrics=legacy),
    }


@pytest.mark.parametrize(("gen", "legacy"), [("2.8", False), ("2.10", False), ("2.10", True)])
def test_every_family_is_declared_upstream_with_its_labels_and_help(
    pool: HamiPool, gen: HamiGeneration, legacy: bool
) -> None:
    table = declared()
    for component, text in pages(pool, gen, legacy).items():
        allowed = table[(gen, component)]
        seen: set[str] = set()
        for line in text.splitlines():
            if line.startswith("# HELP "):
                family, help_ = line[len("# HELP ") :].split(" ", 1)
                assert family in allowed, (component, family)
                assert help_ == allowed[family][2], family
        for family, series in parse(text).items():
            labels, emitted, _ = allowed[family]
            assert emitted == "always" or legacy, family
            seen.add(family)
            for s_labels, _ in series:
                assert set(s_labels) == labels | {"zone"}, family
                assert s_labels["zone"] == HAMI_ZONE
        # Old names appear only when asked for on 2.10, and then beside the new ones.
        old = {f for f, (_, e, _) in allowed.items() if e == "legacy_metrics"}
        assert bool(seen & old) == legacy


def test_the_page_is_written_the_way_client_golang_writes_it(pool: HamiPool) -> None:
    text = pool.scheduler_page(NOW, "2.10")
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert names == sorted(names)
    for fam in text_string_to_metric_families(text):
        keys = [tuple(v for _, v in sorted(s.labels.items())) for s in fam.samples]
        assert keys == sorted(keys), fam.name
    for line in text.splitlines():
        if not line.startswith("#"):
            body = line[line.index("{") + 1 : line.rindex("}")]
            names_in_order = [p.split("=", 1)[0] for p in body.split('",') if p]
            assert names_in_order == sorted(names_in_order)


def test_go_float_matches_the_values_hami_documents() -> None:
    # docs: userguide/monitoring/device-allocation.md shows these exact renderings.
    assert go_float(34359738368.0) == "3.4359738368e+10"
    assert go_float(3221225472.0) == "3.221225472e+09"
    assert go_float(45.0) == "45"
    assert go_float(100.0) == "100"
    # strconv 'g' -1: plain from 1e-4 to below 1e6, an exponent outside.
    assert go_float(123456.0) == "123456"
    assert go_float(1e6) == "1e+06"
    assert go_float(0.0001) == "0.0001"
    assert go_float(0.00001) == "1e-05"
    assert go_float(0.875) == "0.875"
    assert go_float(-2.5) == "-2.5"
    assert go_float(math.nan) == "NaN"


@pytest.mark.parametrize("gen", HAMI_GENERATIONS)
def test_scheduler_lists_every_allocation_in_hami_units(
    pool: HamiPool, gen: HamiGeneration
) -> None:
    got = parse(pool.scheduler_page(NOW, gen))
    core, mem = (
        ("hami_vgpu_core_allocated_ratio", "hami_vgpu_memory_allocated_bytes")
        if gen == "2.10"
        else ("vGPUCoreAllocated", "vGPUMemoryAllocated")
    )
    pod_key = "pod" if gen == "2.10" else "podname"
    index_key = "container_index" if gen == "2.10" else "containeridx"
    cores = {s[pod_key]: (v, s[index_key]) for s, v in got[core]}
    memory = {s[pod_key]: v for s, v in got[mem]}
    assert len(cores) == len(pool.containers)  # held containers too: allocation is known
    for c in pool.containers:
        assert cores[c.pod] == (c.cores, str(c.container_index))  # percent, not a 0-1 ratio
        assert memory[c.pod] == c.memory_mib * MIB
    device_cores = "hami_gpu_core_allocated_ratio" if gen == "2.10" else "GPUDeviceCoreAllocated"
    shared = "hami_gpu_shared_count" if gen == "2.10" else "GPUDeviceSharedNum"
    uuid_key = "device_uuid" if gen == "2.10" else "deviceuuid"
    by_uuid = {s[uuid_key]: v for s, v in got[device_cores]}
    counts = {s[uuid_key]: v for s, v in got[shared]}
    for d in pool.devices:
        assert by_uuid[d.uuid] == sum(c.cores for c in d.containers)
        assert counts[d.uuid] == len(d.containers)


@pytest.mark.parametrize("gen", HAMI_GENERATIONS)
def test_monitor_shows_use_only_after_the_first_cuda_call(
    pool: HamiPool, gen: HamiGeneration
) -> None:
    held = [c for c in pool.containers if not c.touched_cuda]
    assert held, "the layout must have a container that has not touched CUDA (HAMi #281)"
    util = (
        "hami_container_device_utilization_ratio"
        if gen == "2.10"
        else "Device_utilization_desc_of_container"
    )
    pod_key = "pod" if gen == "2.10" else "podname"
    for now in TIMES:
        got = parse(pool.monitor_page(pool.nodes[0].name, now, gen))
        figures = {s[pod_key]: v for s, v in got[util]}
        assert set(figures) == {c.pod for c in pool.containers if c.touched_cuda}
        for c in pool.containers:
            if c.touched_cuda:
                # HAMi-core caps a container at its cores; the figure is percent of the device.
                assert 0 <= figures[c.pod] <= c.cores
                assert figures[c.pod] == pool.sm_percent(c, now)
        host = "hami_host_gpu_utilization_ratio" if gen == "2.10" else "HostCoreUtilization"
        uuid_key = "device_uuid" if gen == "2.10" else "deviceuuid"
        devices = {s[uuid_key]: v for s, v in got[host]}
        for d in pool.devices:
            mine = sum(figures.get(c.pod, 0.0) for c in d.containers)
            assert devices[d.uuid] == min(100.0, mine)


def test_busy_containers_follow_the_clock_and_the_same_time_gives_the_same_bytes() -> None:
    a, b = HamiPool.build(), HamiPool.build()
    node = a.nodes[0].name
    assert a.monitor_page(node, NOW) == b.monitor_page(node, NOW)
    assert a.scheduler_page(NOW, "2.8") == b.scheduler_page(NOW, "2.8")
    busy = [c for c in a.containers if c.busy and c.touched_cuda]
    assert len({tuple(a.sm_percent(c, t) for c in busy) for t in TIMES}) > 1
    assert HamiPool.build(seed=8).devices[0].uuid != a.devices[0].uuid


def test_monitor_is_per_node_and_a_plan_over_capacity_is_refused(pool: HamiPool) -> None:
    with pytest.raises(KeyError):
        pool.monitor_page("no-such-node", NOW)
    with pytest.raises(ValueError, match="cores over 100"):
        HamiPool.build(plans=(((60, 1024, True, True), (50, 1024, True, True)),))
    with pytest.raises(ValueError, match="memory over"):
        HamiPool.build(plans=(((10, 90000, True, True),),))
    with pytest.raises(ValueError, match="generation"):
        pool.scheduler_page(NOW, "2.9")  # type: ignore[arg-type]


def test_opencost_sees_a_whole_gpu_per_hami_container_and_dcgm_no_pod(pool: HamiPool) -> None:
    # OpenCost #3828: nvidia.com/gpu: 1 is all OpenCost reads, so it bills a whole GPU.
    assert all(p.gpu_count == 1.0 for p in pool.pods)
    assert all(not p.dcgm_mapped for p in pool.pods)
    uuids = {d.uuid for d in pool.devices}
    series = pool.dcgm_series(NOW)
    assert {g.uuid for g, _, _ in series} == uuids
    util = {g.uuid: int(v) for g, fam, v in series if fam == "DCGM_FI_DEV_GPU_UTIL"}
    for d in pool.devices:
        assert util[d.uuid] == pool.device_percent(d, NOW)
