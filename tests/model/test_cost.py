"""Cost attribution with exact dollars on hand-built clusters."""

import math

import pytest

from aifinops.model.cost import attribute_costs
from aifinops.model.inputs import AllocationSet
from tests.model.builders import A100, H100, L4, gpu, idle_row, pod, pricer, resolver, small_cluster

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


def test_time_sliced_hold_costs_the_physical_device_price_times_its_share():
    # README's worked example: a $4/h H100 with 4 replicas, A and B request one each (OpenCost:
    # gpuCount 0.25, $1/h each; the two free replicas, $2/h, are its __idle__ row).
    allocs = [
        pod("team-a", "a", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
        pod("team-b", "b", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
        idle_row(gpu_cost=2.0),
    ]
    gpus = [gpu("G", H100, 0.37, "team-a", "a"), gpu("G", H100, 0.10, "team-b", "b")]
    b = breakdown(allocs=allocs, gpus=gpus)
    u = b.rates["usage"]
    assert u[("a", "gpu")] == approx(1.48)  # 0.37 x $4, not 0.37 x $2 billed to the pair
    assert u[("b", "gpu")] == approx(0.40)
    assert u[("__idle__", "gpu")] == approx(2.12)
    shares = {s.idle_key[3]: s for s in b.shares}
    assert shares["a"].held == approx(0.25) and shares["b"].held == approx(0.25)
    assert shares["a"].unused_rate == approx(0.0)
    assert shares["b"].unused_rate == approx(0.60)  # (0.25 − 0.10) x $4
    assert math.fsum(u[k] for k in u if k[1] == "gpu") == approx(b.cluster["gpu"])
    # The same pod at the same utilization costs the same whoever holds the free replicas.
    allocs_full = [
        *allocs[:2],
        pod("team-c", "c", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
        pod("team-c", "d", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
    ]
    gpus_full = [*gpus, gpu("G", H100, 0.0, "team-c", "c"), gpu("G", H100, 0.2, "team-c", "d")]
    full = breakdown(allocs=allocs_full, gpus=gpus_full).rates["usage"]
    assert full[("a", "gpu")] == approx(1.48)


def test_device_figure_on_every_pod_is_split_by_request():
    # Stock dcgm-exporter repeats the device's 60 % on each pod: 1 and 2 replicas of 4.
    allocs = [
        pod("team-a", "a", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
        pod("team-b", "b", gpu_cost=2.0, gpu_count=0.5, gpu_hours=0.5),
        idle_row(gpu_cost=1.0),
    ]
    gpus = [gpu("G", H100, 0.6, "team-a", "a"), gpu("G", H100, 0.6, "team-b", "b")]
    u = breakdown(allocs=allocs, gpus=gpus).rates["usage"]
    assert u[("a", "gpu")] == approx(0.8)  # 4 x 0.6 x 1/3
    assert u[("b", "gpu")] == approx(1.6)  # 4 x 0.6 x 2/3
    assert u[("__idle__", "gpu")] == approx(1.6)


def test_usage_over_the_request_without_an_idle_row_is_scaled_so_sums_hold():
    # OpenCost queried without its idle row: nothing pays for A's use beyond its request
    # except B's unused part.
    allocs = [
        pod("team-a", "a", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
        pod("team-b", "b", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
    ]
    gpus = [gpu("G", H100, 0.8, "team-a", "a"), gpu("G", H100, 0.1, "team-b", "b")]
    b = breakdown(allocs=allocs, gpus=gpus)
    u = b.rates["usage"]
    assert u[("b", "gpu")] == approx(0.4)
    assert u[("a", "gpu")] == approx(1.6)  # 1.0 billed + B's 0.6 left, not 3.2
    assert u.get(("__idle__", "gpu"), 0.0) == approx(0.0)
    assert math.fsum(v for k, v in u.items() if k[1] == "gpu") == approx(b.cluster["gpu"])
    assert all(s.unused_rate == 0.0 for s in b.shares)  # no unused money is left in __idle__


def test_catalog_pricing_books_a_mig_gpus_unrequested_slices_to_idle():
    # One 3g slice of a catalog-priced H100 ($4/h) is held; the rest of the GPU is idle, and
    # an unassigned 1g instance is not priced as a whole GPU.
    allocs = [pod("team-a", "p", cpu_cost=1.0)]
    gpus = [
        gpu("G", H100, 0.5, "team-a", "p", mig="3g.40gb", mig_id="1"),
        gpu("G", H100, 0.0, mig="1g.10gb", mig_id="9"),
    ]
    b = breakdown(allocs=allocs, gpus=gpus)
    assert b.rates["allocation"][("a", "gpu")] == approx(4.0 * 3 / 7)
    assert b.rates["allocation"][("__idle__", "gpu")] == approx(4.0 * 4 / 7)
    assert b.rates["usage"][("a", "gpu")] == approx(4.0 * 3 / 7 * 0.5)
    assert b.cluster["gpu"] == approx(4.0)


def test_per_pod_figures_over_the_whole_device_are_scaled_to_it():
    # Two pods' own figures, 0.8 and 0.6 of the device: more than all of its time.
    allocs = [
        pod("team-a", "a", gpu_cost=2.0, gpu_count=0.5, gpu_hours=0.5),
        pod("team-b", "b", gpu_cost=2.0, gpu_count=0.5, gpu_hours=0.5),
    ]
    gpus = [gpu("G", H100, 0.8, "team-a", "a"), gpu("G", H100, 0.6, "team-b", "b")]
    b = breakdown(allocs=allocs, gpus=gpus)
    u = b.rates["usage"]
    assert u[("a", "gpu")] == approx(4.0 * 0.8 / 1.4)
    assert u[("b", "gpu")] == approx(4.0 * 0.6 / 1.4)
    assert math.fsum(s.used for s in b.shares) == approx(1.0)  # never over the device


def test_unused_cost_covers_what_the_usage_basis_moves_to_idle_despite_rounded_requests():
    # OpenCost prints requests to 5 decimals: a 1g slice of an A100 is 0.14286 (> 1/7), billed
    # 0.39286 $/h at 2.75 $/GPU-h, a hair more than price x slice. The unused cost must still
    # cover every dollar the usage basis books to __idle__ (sum() in tests/e2e/test_sums.py).
    allocs = [
        pod("team-a", "a", gpu_cost=0.39286, gpu_count=0.14286, gpu_hours=0.14286),
        pod("team-b", "b", gpu_cost=0.39286, gpu_count=0.14286, gpu_hours=0.14286),
        pod("team-c", "c", gpu_cost=0.39286, gpu_count=0.14286, gpu_hours=0.14286),
        idle_row(gpu_cost=0.0),
    ]
    gpus = [
        gpu("M", A100, 0.02, "team-a", "a", mig="1g.10gb", mig_id="7"),
        # two pods time-sliced on one slice, each with its own figure
        gpu("N", A100, 0.30, "team-b", "b", mig="1g.10gb", mig_id="8"),
        gpu("N", A100, 0.10, "team-c", "c", mig="1g.10gb", mig_id="8"),
    ]
    b = breakdown(allocs=allocs, gpus=gpus)
    idle = ("__idle__", "gpu")
    moved = b.rates["usage"].get(idle, 0.0) - b.rates["allocation"].get(idle, 0.0)
    unused = math.fsum(s.unused_rate for s in b.shares)
    assert moved > 0.5
    assert unused >= moved - 1e-12
    # and never more than the holders were billed beyond their use
    assert unused <= math.fsum(max(0.0, s.alloc_rate - s.usage_rate) for s in b.shares) + 1e-12
