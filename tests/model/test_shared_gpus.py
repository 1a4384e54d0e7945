"""Shared GPUs: HAMi shares, per-process DCGM series and the split method of every dollar.

Worked example (docs/shared-gpus.md): a $4/h H100 shared by HAMi. trainer-0 (team-a) holds
50 % of its cores and uses 37 % of its time; infer-0 (team-b) holds 25 % and uses 10 %.
OpenCost bills each HAMi pod a whole GPU ($4/h each, $8/h in all: OpenCost #3828).
Allocation basis: team-a $2/h, team-b $1/h, __idle__ the other $5/h OpenCost billed.
Usage basis: team-a 0.37 x 4 = $1.48/h, team-b $0.40/h, __idle__ 8 - 1.88 = $6.12/h.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops.model.cost import (
    attribute_costs,
    follow_gpu_rates,
    hami_billing_share,
    holding_shares,
)
from aifinops.model.idle import is_idle, observe
from aifinops.model.inputs import AllocationSet, GpuSample, SharedHold
from aifinops.model.vocabulary import SPLIT_METHODS
from tests.model.builders import H100, L4, gpu, idle_row, pod, pricer, resolver

DEV = "GPU-h100-0"


def hami_hold(ns: str, name: str, cores: float, memory: float, use: float | None) -> SharedHold:
    return SharedHold(DEV, "n1", ns, name, cores, memory, use, H100, "0")


HOLDS = (
    hami_hold("team-a", "trainer-0", 0.5, 0.5, 0.37),
    hami_hold("team-b", "infer-0", 0.25, 0.25, 0.10),
)


def whole_gpu_rows() -> list:
    return [
        pod("team-a", "trainer-0", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0, cpu_cost=1.0),
        pod("team-b", "infer-0", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0),
    ]


def gpu_rates(b, basis: str) -> dict[str, float]:
    return {t: round(v, 9) for (t, r), v in b.rates[basis].items() if r == "gpu"}


def by_method(b, basis: str) -> dict[tuple[str, str], float]:
    return {k: round(v, 9) for k, v in b.method_rates[basis].items()}


def test_worked_example_opencost_bills_whole_gpus() -> None:
    b = attribute_costs(
        AllocationSet(1.0, tuple(whole_gpu_rows())), (), resolver(), pricer(), shared=HOLDS
    )
    assert gpu_rates(b, "allocation") == {"a": 2.0, "b": 1.0, "__idle__": 5.0}
    assert gpu_rates(b, "usage") == {"a": 1.48, "b": 0.4, "__idle__": 6.12}
    assert b.cluster["gpu"] == 8.0  # OpenCost's total stays the total
    assert by_method(b, "usage") == {
        ("a", "hami"): 1.48,
        ("b", "hami"): 0.4,
        ("__idle__", "hami"): 6.12,
    }
    held = {s.tenant: (s.held, round(s.used, 9), s.method) for s in b.shares}
    assert held == {"a": (0.5, 0.37, "hami"), "b": (0.25, 0.1, "hami")}
    # The serving pod's own rates follow (token charge-back reads them).
    assert round(b.pod_rates["allocation"][("team-a", "trainer-0")]["gpu"], 9) == 2.0
    assert b.pod_rates["allocation"][("team-a", "trainer-0")]["cpu"] == 1.0


def test_hami_replaces_what_dcgm_says_of_the_devices_pods() -> None:
    # Stock dcgm-exporter repeats the device's 47 % on both pods: ignored where HAMi speaks.
    dcgm = (gpu(DEV, H100, 0.47, "team-a", "trainer-0"), gpu(DEV, H100, 0.47, "team-b", "infer-0"))
    b = attribute_costs(
        AllocationSet(1.0, tuple(whole_gpu_rows())), dcgm, resolver(), pricer(), shared=HOLDS
    )
    assert gpu_rates(b, "usage") == {"a": 1.48, "b": 0.4, "__idle__": 6.12}
    without = attribute_costs(
        AllocationSet(1.0, tuple(whole_gpu_rows())), dcgm, resolver(), pricer()
    )
    assert {m for (_, m) in without.method_rates["usage"]} == {"even_split"}


def test_catalog_priced_hami_bills_price_times_share_and_the_rest_is_idle() -> None:
    rows = [pod("team-a", "trainer-0", cpu_cost=1.0), pod("team-b", "infer-0", cpu_cost=1.0)]
    b = attribute_costs(AllocationSet(1.0, tuple(rows)), (), resolver(), pricer(), shared=HOLDS)
    assert gpu_rates(b, "allocation") == {"a": 2.0, "b": 1.0, "__idle__": 1.0}
    assert gpu_rates(b, "usage") == {"a": 1.48, "b": 0.4, "__idle__": 2.12}


def test_opencost_billing_less_than_the_shares_is_split_by_them() -> None:
    rows = [
        pod("team-a", "trainer-0", gpu_cost=1.0, gpu_count=0.5, gpu_hours=0.25),
        pod("team-b", "infer-0", gpu_cost=0.5, gpu_count=0.5, gpu_hours=0.125),
    ]
    # Both at $4 per GPU-hour; the shares are worth 3, OpenCost billed 1.5: split 2 : 1.
    b = attribute_costs(AllocationSet(1.0, tuple(rows)), (), resolver(), pricer(), shared=HOLDS)
    assert gpu_rates(b, "allocation") == {"a": 1.0, "b": 0.5}


def test_a_pod_before_its_first_cuda_call_is_held_and_never_idle() -> None:
    holds = (HOLDS[0], hami_hold("team-b", "infer-0", 0.25, 0.25, None))
    b = attribute_costs(
        AllocationSet(1.0, tuple(whole_gpu_rows())), (), resolver(), pricer(), shared=holds
    )
    # Held at its share on the usage basis: $1/h, as billed; not idle, not unused.
    assert gpu_rates(b, "usage") == {"a": 1.48, "b": 1.0, "__idle__": 5.52}
    share = next(s for s in b.shares if s.tenant == "b")
    assert (share.measured, share.unused_rate, b.held_unmeasured) == (False, 0.0, 1)
    state = observe({}, b.shares, 0.0, threshold=0.05)
    state = observe(state, b.shares, 10_000.0, threshold=0.05)
    idle = {k[3]: is_idle(h, 10_000.0, 600.0) for k, h in state.items()}
    assert idle == {"trainer-0": False, "infer-0": False}


def test_billing_share_mix_and_pods_without_a_core_limit() -> None:
    h = hami_hold("t", "p", 0.2, 0.6, None)
    assert hami_billing_share(h, 1.0) == pytest.approx(0.2)
    assert hami_billing_share(h, 0.0) == pytest.approx(0.6)
    assert hami_billing_share(h, 0.5) == pytest.approx(0.4)
    # gpucores unset: HAMi allocates 0 cores and the pod may use the whole device.
    assert hami_billing_share(hami_hold("t", "p", 0.0, 0.25, None), 1.0) == pytest.approx(0.25)


def per_process(uuid: str, model: str, util: float, ns: str, name: str) -> GpuSample:
    return GpuSample(uuid, "0", model, "n1", util, ns, name, per_process=True)


def test_per_process_series_are_each_pods_own_even_when_equal() -> None:
    rows = [
        pod("team-a", "a", gpu_cost=2.0, gpu_count=0.5, gpu_hours=0.5),
        pod("team-b", "b", gpu_cost=2.0, gpu_count=0.5, gpu_hours=0.5),
    ]
    # Both pods' own processes use 30 % of a $4/h H100: 30 % each, not 15 % each.
    samples = (
        per_process("S", H100, 0.3, "team-a", "a"),
        per_process("S", H100, 0.3, "team-b", "b"),
    )
    b = attribute_costs(AllocationSet(1.0, tuple(rows)), samples, resolver(), pricer())
    assert gpu_rates(b, "usage") == {"a": 1.2, "b": 1.2, "__idle__": 1.6}
    assert by_method(b, "usage") == {
        ("a", "per_process"): 1.2,
        ("b", "per_process"): 1.2,
        ("__idle__", "per_process"): 1.6,
    }
    assert by_method(b, "allocation") == {("a", "per_process"): 2.0, ("b", "per_process"): 2.0}


def test_methods_of_plain_units() -> None:
    assert holding_shares([0.4], [1.0]) == ([0.4], "exclusive")
    assert holding_shares([0.4], [1 / 7], mig=True) == ([0.4], "mig")
    assert holding_shares([0.6, 0.6], [0.25, 0.25]) == ([0.3, 0.3], "even_split")
    assert holding_shares([0.6, 0.6], [0.25, 0.25], per_process=True) == ([0.5, 0.5], "per_process")
    assert holding_shares([0.2, 0.1], [0.25, 0.25]) == ([0.2, 0.1], "per_process")
    # HAMi: held pods keep their share, the measured ones fit in the rest.
    shares, method = holding_shares([0.9, None], [0.5, 0.4], hami=True)
    assert method == "hami" and shares == [pytest.approx(0.6), 0.4]


# --- property: conservation with HAMi and per-process shares -----------------------------

money = st.floats(min_value=0, max_value=100, allow_nan=False)
frac = st.floats(min_value=0, max_value=1, allow_nan=False)


@st.composite
def shared_clusters(draw):
    allocs, gpus, holds = [], [], []
    for i in range(draw(st.integers(0, 8))):
        ns = draw(st.sampled_from(["team-a", "team-b", "ml-research", "default"]))
        request = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]))
        allocs.append(
            pod(
                ns,
                f"p{i}",
                gpu_cost=draw(money),
                cpu_cost=draw(money),
                gpu_count=request,
                gpu_hours=request * draw(st.sampled_from([0, 0.5, 1])),
            )
        )
        kind = draw(st.sampled_from(["hami", "per_process", "repeated", "whole", "none"]))
        dev = f"D{draw(st.integers(0, 3))}"
        if kind == "hami":
            cores, memory = draw(frac) / 2, draw(frac) / 2
            use = draw(st.one_of(st.none(), frac))
            holds.append(SharedHold(f"H{dev}", "n1", ns, f"p{i}", cores, memory, use, L4))
        elif kind == "per_process":
            gpus.append(per_process(f"P{dev}", H100, draw(frac), ns, f"p{i}"))
        elif kind == "repeated":
            gpus.append(gpu(f"R{dev}", H100, 0.5, ns, f"p{i}"))
        elif kind == "whole":
            gpus.append(gpu(f"W{i}", H100, draw(frac), ns, f"p{i}"))
    if draw(st.booleans()):
        allocs.append(idle_row(gpu_cost=draw(money)))
    return allocs, gpus, holds, draw(st.sampled_from([0.0, 0.5, 1.0])), draw(st.integers(1, 5))


@settings(max_examples=300, deadline=None)
@given(shared_clusters())
def test_every_dollar_lands_once_and_says_how_it_was_split(cluster) -> None:
    allocs, gpus, holds, weight, max_tenants = cluster
    b = attribute_costs(
        AllocationSet(1.0, tuple(allocs)),
        tuple(gpus),
        resolver(),
        pricer(),
        max_tenants,
        shared=tuple(holds),
        hami_core_weight=weight,
    )
    for basis, rates in b.rates.items():
        for resource, total in b.cluster.items():
            parts = math.fsum(v for (_, r), v in rates.items() if r == resource)
            assert math.isclose(parts, total, rel_tol=1e-9, abs_tol=1e-9), (basis, resource)
        assert all(v >= -1e-9 for v in rates.values()), basis
        # Per tenant, the split methods sum to its GPU dollars; every method is a known one.
        methods = b.method_rates[basis]
        assert {m for (_, m) in methods} <= set(SPLIT_METHODS)
        assert all(v >= 0 for v in methods.values())
        for (tenant, resource), value in rates.items():
            if resource == "gpu":
                split = math.fsum(v for (t, _), v in methods.items() if t == tenant)
                assert math.isclose(split, value, rel_tol=1e-9, abs_tol=1e-9), (basis, tenant)
    # The cluster total is what OpenCost billed (HAMi re-splits inside it).
    if any(a.gpu_cost > 0 for a in allocs):
        billed = math.fsum(a.total_cost for a in allocs)
        assert math.isclose(math.fsum(b.cluster.values()), billed, rel_tol=1e-9, abs_tol=1e-9)
    used: dict[str, float] = {}
    for s in b.shares:
        assert s.used >= 0 and s.unused_rate >= 0
        used[s.idle_key[0]] = used.get(s.idle_key[0], 0.0) + s.used
    assert all(u <= 1.0 + 1e-9 for u in used.values()), used


def test_split_methods_follow_the_gpu_dollars_a_charge_back_moved() -> None:
    before = {
        "usage": {
            ("serving", "exclusive"): 3.0,
            ("serving", "even_split"): 1.0,
            ("b", "hami"): 2.0,
            ("gone", "mig"): 1.0,
            ("__idle__", "request_share"): 1.0,
        }
    }
    # Charge-back moved $2/h of serving's GPU cost to the sender "a"; "gone" was folded into
    # __other__.
    rates = {
        "usage": {
            ("serving", "gpu"): 2.0,
            ("a", "gpu"): 2.0,
            ("b", "gpu"): 2.0,
            ("__other__", "gpu"): 1.0,
            ("__idle__", "gpu"): 1.0,
            ("a", "cpu"): 5.0,
        }
    }
    after = {k: round(v, 9) for k, v in follow_gpu_rates(before, rates)["usage"].items()}
    assert after == {
        ("serving", "exclusive"): 1.5,
        ("serving", "even_split"): 0.5,
        ("a", "exclusive"): 1.5,
        ("a", "even_split"): 0.5,
        ("b", "hami"): 2.0,
        ("__other__", "mig"): 1.0,
        ("__idle__", "request_share"): 1.0,
    }


def test_a_device_dcgm_reports_as_mig_instances_keeps_its_mig_split() -> None:
    rows = [pod("team-a", "trainer-0", gpu_cost=4 / 7, gpu_count=1 / 7, gpu_hours=1 / 7)]
    mig = (gpu(DEV, H100, 0.5, "team-a", "trainer-0", mig="1g.10gb", mig_id="1"),)
    b = attribute_costs(AllocationSet(1.0, tuple(rows)), mig, resolver(), pricer(), shared=HOLDS)
    assert [(s.tenant, s.method, round(s.held, 6)) for s in b.shares] == [("a", "mig", 0.142857)]
