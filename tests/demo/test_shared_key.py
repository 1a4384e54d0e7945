"""The shared-GPU answer key: built from the simulation's facts, read back from its pages, and
sharing no code with the exporter's model."""

from __future__ import annotations

import ast
import math
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.cluster import GPU_MODELS, opencost_round
from aifinops.demo.hami import HamiPool
from aifinops.demo.perprocess import PerProcessPool
from aifinops.demo.shared_key import SHARED_BASES, answer_key, billing_fraction

DEMO = Path(__file__).resolve().parents[2] / "exporter" / "aifinops" / "demo"
NOW = 1_750_000_000.0
TIMES = [NOW + k * 3917.0 for k in range(0, 26, 5)]


@pytest.fixture(scope="module")
def hami() -> HamiPool:
    return HamiPool.build()


@pytest.fixture(scope="module")
def pp() -> PerProcessPool:
    return PerProcessPool.build()


def test_the_key_and_the_pools_import_nothing_of_the_exporter() -> None:
    for name in ("hami.py", "perprocess.py", "shared_key.py"):
        tree = ast.parse((DEMO / name).read_text())
        imported = {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        ours = {m for m in imported if m.startswith("aifinops")}
        demo_only = {"aifinops.demo.hami", "aifinops.demo.perprocess"}
        assert all(m.startswith("aifinops.demo.cluster") or m in demo_only for m in ours), ours


def test_a_hami_device_worked_by_hand(hami: HamiPool) -> None:
    # Device 0: an $2.75/h A100 split 30 / 50 / 20 % of cores, 20 / 40 / 10 GiB of 80 GiB;
    # the 20 % container has not touched CUDA yet.
    d = hami.devices[0]
    price = GPU_MODELS[d.model.name].usd_per_hour
    assert price == 2.75
    c30, c50, c20 = d.containers
    key = answer_key(NOW, hami=HamiPool(hami.seed, (d,), hami.nodes, hami.pods))
    assert key.rate("allocation", c30.tenant) == pytest.approx(0.30 * 2.75)
    assert key.rate("allocation", c50.tenant) == pytest.approx(0.50 * 2.75)
    assert key.rate("allocation", c20.tenant) == pytest.approx(0.20 * 2.75)
    assert key.idle["allocation"] == pytest.approx(0.0, abs=1e-12)  # every core is allocated
    # Usage: each pays its monitor figure; the held one its share, as on allocation.
    assert key.rate("usage", c20.tenant) == pytest.approx(0.20 * 2.75)
    assert key.held == ((c20.namespace, c20.pod),)
    sm30, sm50 = hami.sm_percent(c30, NOW), hami.sm_percent(c50, NOW)
    assert key.rate("usage", c30.tenant) == pytest.approx(sm30 / 100 * 2.75)
    assert key.idle["usage"] == pytest.approx(2.75 * (1 - 0.20 - (sm30 + sm50) / 100))
    # Memory billing: 20 480 / 81 920 MiB = 0.25 of the device.
    by_memory = answer_key(
        NOW, hami=HamiPool(hami.seed, (d,), hami.nodes, hami.pods), billing_share="memory"
    )
    assert by_memory.rate("allocation", c30.tenant) == pytest.approx(0.25 * 2.75)
    assert by_memory.gpus[c30.tenant] == pytest.approx(0.25)
    assert by_memory.idle["allocation"] == pytest.approx(2.75 * (1 - 71680 / 81920))


def test_a_mix_lies_between_its_ends_by_the_core_weight(hami: HamiPool) -> None:
    cores = answer_key(NOW, hami=hami, billing_share="cores")
    memory = answer_key(NOW, hami=hami, billing_share="memory")
    for w in (0.0, 0.3, 1.0):
        mix = answer_key(NOW, hami=hami, billing_share="mix", core_weight=w)
        for t in mix.tenants:
            want = w * cores.gpus[t] + (1 - w) * memory.gpus[t]
            assert mix.gpus[t] == pytest.approx(want)
    assert cores.gpus != memory.gpus  # the layout gives the two rules different answers
    with pytest.raises(ValueError, match="core_weight"):
        answer_key(NOW, hami=hami, billing_share="mix", core_weight=1.5)
    with pytest.raises(ValueError, match="billing_share"):
        answer_key(NOW, hami=hami, billing_share="gpus")  # type: ignore[arg-type]
    d = hami.devices[1]
    c = d.containers[0]
    assert billing_fraction(c, d, "mix", 0.5) == pytest.approx(
        0.5 * c.cores / 100 + 0.5 * c.memory_mib / d.memory_mib
    )


@pytest.mark.parametrize("window", [1.0, 24.0])
def test_every_device_dollar_lands_once_on_both_bases(
    hami: HamiPool, pp: PerProcessPool, window: float
) -> None:
    for now in TIMES:
        key = answer_key(now, hami=hami, per_process=pp, window_hours=window)
        prices = [g.model.usd_per_hour for pool in (hami, pp) for n in pool.nodes for g in n.gpus]
        assert key.device_cost == pytest.approx(math.fsum(prices))
        for basis in SHARED_BASES:
            tenants = math.fsum(key.rate(basis, t) for t in key.tenants)
            assert tenants + key.idle[basis] == pytest.approx(key.device_cost, rel=1e-12)
            assert key.idle[basis] >= -1e-9
            by_method = math.fsum(v for (b, _), v in key.method_cost.items() if b == basis)
            assert by_method == pytest.approx(tenants)
        assert {m for _, m in key.method_cost} == {"hami", "per_process", "mig", "even_split"}


def test_the_key_reads_what_the_pages_show(hami: HamiPool, pp: PerProcessPool) -> None:
    """Usage dollars = price × the figure an exporter can read, never a hidden truth."""
    key = answer_key(NOW, hami=hami, per_process=pp)
    expected: dict[str, list[float]] = defaultdict(list)
    monitor = hami.monitor_page(hami.nodes[0].name, NOW)
    figures = {
        dict(s.labels)["pod"]: s.value
        for fam in text_string_to_metric_families(monitor)
        if fam.name == "hami_container_device_utilization_ratio"
        for s in fam.samples
    }
    for d in hami.devices:
        for c in d.containers:
            share = c.cores / 100
            use = figures[c.pod] / 100 if c.pod in figures else share  # held: its share
            expected[c.tenant].append(d.model.usd_per_hour * use)
    page = pp.dcgm_page(NOW)
    for fam in text_string_to_metric_families(page):
        for s in fam.samples:
            labels = dict(s.labels)
            if "pod" not in labels:
                continue
            h = next(h for h in pp.holders if h.pod == labels["pod"])
            price = GPU_MODELS[labels["modelName"]].usd_per_hour
            if fam.name == "DCGM_FI_DEV_GPU_UTIL":
                expected[h.tenant].append(price * s.value / 100)
            elif fam.name == "DCGM_FI_PROF_GR_ENGINE_ACTIVE" and "GPU_I_ID" in labels:
                inst = pp.instance(h.gpu_uuid, h.gi_id)
                sharing = len(pp.holders_of(h.unit))
                expected[h.tenant].append(price * inst.slices / 7 * s.value / sharing)
    for tenant, parts in expected.items():
        assert key.rate("usage", tenant) == pytest.approx(math.fsum(parts), rel=1e-9)


def test_per_process_allocation_is_what_opencost_bills(pp: PerProcessPool) -> None:
    for wh in (1.0, 7.0):
        key = answer_key(NOW, per_process=pp, window_hours=wh)
        billed: dict[str, float] = defaultdict(float)
        gpus: dict[str, float] = defaultdict(float)
        for h in pp.holders:
            price = pp.gpu(h.gpu_uuid).model.usd_per_hour
            billed[h.tenant] += opencost_round(price * h.fraction * wh) / wh
            gpus[h.tenant] += h.fraction
        for t in billed:
            assert key.rate("allocation", t) == pytest.approx(billed[t], rel=1e-12)
            assert key.gpus[t] == pytest.approx(gpus[t])


def test_idle_holds_are_the_ones_showing_no_use_and_never_the_held(
    hami: HamiPool, pp: PerProcessPool
) -> None:
    for now in TIMES:
        key = answer_key(now, hami=hami, per_process=pp)
        want: dict[tuple[str, str], float] = defaultdict(float)
        for d in hami.devices:
            for c in d.containers:
                if c.touched_cuda and hami.sm_percent(c, now) < 5:
                    want[(c.tenant, d.model.name)] += c.cores / 100
        for h in pp.holders:
            shown = pp.use(h, now) if not h.gi_id else pp.unit_percent(h.unit, now)
            if shown < 5:
                want[(h.tenant, pp.gpu(h.gpu_uuid).model.name)] += h.fraction
        assert key.idle_gpus == pytest.approx(dict(want))
        held_tenants = {c.tenant for c in hami.containers if not c.touched_cuda}
        only_held = held_tenants - {c.tenant for c in hami.containers if c.touched_cuda}
        assert only_held and not any(t in only_held for t, _ in key.idle_gpus)
        assert any(not h.has_process for h in pp.holders)  # a pod with no process is idle
