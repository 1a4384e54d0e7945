"""Cost attribution with exact dollars on hand-built clusters."""

import math

import pytest

from aifinops.model.cost import attribute_costs
from aifinops.model.inputs import AllocationSet
from tests.unit.builders import A100, H100, L4, gpu, idle_row, pod, pricer, resolver, small_cluster

approx = lambda v: pytest.approx(v, rel=1e-12, abs=1e-12)  # noqa: E731


def breakdown(window_hours=1.0, with_gpus=True, allocs=None, gpus=None):
    a, g = small_cluster()
    allocs = a if allocs is None else allocs
    gpus = g if gpus is None else gpus
    return attribute_costs(
        AllocationSet(window_hours, tuple(allocs)),
        tuple(gpus) if with_gpus else None,
        resolver(),
        pricer(),
    )


def test_allocation_basis_is_opencost_as_billed():
    r = breakdown().rates["allocation"]
    assert r == {
        ("alpha", "gpu"): approx(4.0),
        ("alpha", "cpu"): approx(1.0),
        ("alpha", "ram"): approx(0.5),
        ("beta", "gpu"): approx(0.4),
        ("gamma", "gpu"): approx(0.4),
        ("research", "gpu"): approx(2.0),
        ("research", "storage"): approx(0.125),
        ("research", "network"): approx(0.125),
        ("__unallocated__", "cpu"): approx(0.25),
        ("__unallocated__", "shared"): approx(0.5),
        ("__idle__", "gpu"): approx(8.0),
        ("__idle__", "cpu"): approx(2.0),
    }


def test_usage_basis_splits_each_unit_by_measured_use():
    b = breakdown()
    u = b.rates["usage"]
    assert u[("alpha", "gpu")] == approx(1.0)  # 4.00 x 25 %
    assert u[("beta", "gpu")] == approx(0.4)  # L4 unit 0.80 x 50 %
    assert u[("gamma", "gpu")] == approx(0.2)  # 0.80 x 25 %
    assert u[("research", "gpu")] == approx(1.0)  # MIG slice 2.00 x 50 %
    # OpenCost idle 8 + alpha's unused 3 + the L4's unused 0.2 + research's unused 1
    assert u[("__idle__", "gpu")] == approx(12.2)
    # non-GPU resources are the same on both bases
    assert u[("alpha", "cpu")] == 1.0 and u[("__unallocated__", "shared")] == 0.5


def test_unused_gpu_cost_is_attributed_to_the_holders():
    shares = {s.idle_key[3]: s for s in breakdown().shares}
    assert shares["a"].unused_rate == approx(3.0)
    # The L4's unused 0.2 is what each holder left of its request: b1 used its half, b2 a
    # quarter of the device (0.8/h × (0.5 − 0.25)).
    assert shares["b1"].unused_rate == approx(0.0)
    assert shares["b2"].unused_rate == approx(0.2)
    assert shares["c"].unused_rate == approx(1.0)
    assert shares["c"].held == approx(3 / 7)
    assert shares["b1"].held == 0.5 and shares["b1"].used == 0.5


@pytest.mark.parametrize("basis", ["allocation", "usage"])
def test_every_dollar_in_exactly_one_bucket(basis):
    b = breakdown()
    for resource, total in b.cluster.items():
        parts = [v for (t, r), v in b.rates[basis].items() if r == resource]
        assert math.fsum(parts) == approx(total)
    assert b.cluster["gpu"] == approx(14.8)


def test_window_length_turns_cost_into_a_rate():
    r = breakdown(window_hours=2.0).rates["allocation"]
    assert r[("alpha", "gpu")] == approx(2.0)
    assert r[("__idle__", "cpu")] == approx(1.0)


def test_no_dcgm_means_no_usage_basis():
    b = breakdown(with_gpus=False)
    assert set(b.rates) == {"allocation"}
    assert b.shares == ()


def test_device_figure_repeated_for_each_time_sliced_pod_is_split_evenly():
    allocs = [pod("team-a", "p1", gpu_cost=0.5), pod("team-b", "p2", gpu_cost=0.5)]
    gpus = [gpu("G", L4, 0.8, "team-a", "p1"), gpu("G", L4, 0.8, "team-b", "p2")]
    u = breakdown(allocs=allocs, gpus=gpus).rates["usage"]
    assert u[("a", "gpu")] == approx(0.4) and u[("b", "gpu")] == approx(0.4)
    assert u[("__idle__", "gpu")] == approx(0.2)


def test_pod_with_gpu_cost_but_no_dcgm_series_keeps_its_allocation_cost():
    allocs = [pod("team-a", "p1", gpu_cost=3.0), pod("team-b", "p2", gpu_cost=1.0)]
    gpus = [gpu("G", H100, 0.5, "team-b", "p2")]
    u = breakdown(allocs=allocs, gpus=gpus).rates["usage"]
    assert u[("a", "gpu")] == approx(3.0)
    assert u[("b", "gpu")] == approx(0.5)
    assert u[("__idle__", "gpu")] == approx(0.5)


def test_multi_gpu_pod_cost_is_split_over_its_gpus():
    allocs = [pod("team-a", "p", gpu_cost=8.0)]
    gpus = [gpu("G1", H100, 1.0, "team-a", "p"), gpu("G2", H100, 0.0, "team-a", "p")]
    b = breakdown(allocs=allocs, gpus=gpus)
    assert b.rates["usage"][("a", "gpu")] == approx(4.0)
    assert [s.alloc_rate for s in b.shares] == [4.0, 4.0]
    assert b.gpu_prices[(H100, "opencost")] == approx(4.0)


def test_catalog_prices_gpus_when_opencost_has_no_gpu_pricing():
    allocs = [pod("team-a", "p", cpu_cost=1.0), idle_row(cpu_cost=0.5)]
    gpus = [gpu("G1", H100, 0.5, "team-a", "p"), gpu("G2", L4, 0.0), gpu("G3", "Mystery X", 0.0)]
    b = breakdown(allocs=allocs, gpus=gpus)
    assert b.rates["allocation"][("a", "gpu")] == approx(4.0)  # catalog H100 price
    assert b.rates["allocation"][("__idle__", "gpu")] == approx(0.5)  # unallocated L4
    assert b.rates["usage"][("a", "gpu")] == approx(2.0)
    assert b.rates["usage"][("__idle__", "gpu")] == approx(2.5)
    assert b.unpriced_gpu_models == ("Mystery X",)
    assert b.cluster["gpu"] == approx(4.5)


def test_override_beats_catalog():
    p = pricer(**{"H100 80GB HBM3": 9.5})
    assert p.price(H100) == (9.5, "override")
    assert pricer().price("nvidia h100-80gb hbm3") == (4.0, "catalog")
    assert pricer().price(A100) is None


def test_folding_keeps_money_and_sentinels():
    allocs = [
        pod(f"team-{n}", "p", cpu_cost=c)
        for n, c in [("a", 5.0), ("b", 4.0), ("c", 1.0), ("d", 0.5)]
    ] + [idle_row(cpu_cost=1.0)]
    b = attribute_costs(
        AllocationSet(1.0, tuple(allocs)), None, resolver(), pricer(), max_tenants=2
    )
    assert b.rates["allocation"] == {
        ("a", "cpu"): 5.0,
        ("b", "cpu"): 4.0,
        ("__other__", "cpu"): 1.5,
        ("__idle__", "cpu"): 1.0,
    }
    assert b.folded_tenants == 2
