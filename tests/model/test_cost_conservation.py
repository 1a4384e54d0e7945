"""Property: on any generated cluster, every dollar lands in exactly one bucket, per basis."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops.model.cost import attribute_costs
from aifinops.model.inputs import AllocationSet
from tests.model.builders import H100, L4, gpu, idle_row, pod, pricer, resolver

money = st.floats(min_value=0, max_value=1000, allow_nan=False)
util = st.floats(min_value=0, max_value=1, allow_nan=False)
namespaces = st.sampled_from(["team-a", "team-b", "ml-research", "default", "kube-system"])


@st.composite
def clusters(draw):
    n_pods = draw(st.integers(0, 12))
    allocs, gpus = [], []
    for i in range(n_pods):
        ns = draw(namespaces)
        labels = draw(st.sampled_from([{}, {"aifinops_io_tenant": "lab"}]))
        # OpenCost's GPU request: none (older OpenCost), one of 4 time-slice replicas, a 1g
        # MIG slice, whole GPUs; GPU-hours over all or part of the window, or none.
        request = draw(st.sampled_from([0.0, 0.25, 0.5, 1 / 7, 3 / 7, 1.0, 2.0]))
        run = draw(st.sampled_from([0.0, 0.5, 1.0]))
        window_h = draw(st.sampled_from([0.5, 1.0, 24.0]))
        allocs.append(
            pod(
                ns,
                f"p{i}",
                labels,
                gpu_cost=draw(money),
                cpu_cost=draw(money),
                ram_cost=draw(money),
                pv_cost=draw(money),
                gpu_count=request,
                gpu_hours=request * run * window_h,
            )
        )
        for j in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["whole", "shared", "mig"]))
            if kind == "whole":
                gpus.append(gpu(f"G{i}-{j}", H100, draw(util), ns, f"p{i}"))
            elif kind == "shared":
                gpus.append(gpu(f"S{draw(st.integers(0, 2))}", L4, draw(util), ns, f"p{i}"))
            else:
                gpus.append(
                    gpu(
                        f"M{draw(st.integers(0, 1))}",
                        H100,
                        draw(util),
                        ns,
                        f"p{i}",
                        mig=draw(st.sampled_from(["1g.10gb", "3g.40gb", "7g.80gb"])),
                        mig_id=f"{i}-{j}",
                    )
                )
    for k in range(draw(st.integers(0, 3))):
        gpus.append(gpu(f"F{k}", draw(st.sampled_from([H100, L4])), 0.0))
    if draw(st.booleans()):
        allocs.append(idle_row(gpu_cost=draw(money), cpu_cost=draw(money)))
    return allocs, gpus, draw(st.sampled_from([0.5, 1.0, 24.0]))


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_tenants_idle_and_unallocated_sum_to_the_cluster_total(cluster):
    allocs, gpus, window = cluster
    b = attribute_costs(AllocationSet(window, tuple(allocs)), tuple(gpus), resolver(), pricer())
    for basis, rates in b.rates.items():
        for resource, total in b.cluster.items():
            parts = math.fsum(v for (_, r), v in rates.items() if r == resource)
            assert math.isclose(parts, total, rel_tol=1e-9, abs_tol=1e-9), (basis, resource)
        assert all(v >= -1e-9 for v in rates.values()), basis
    # A physical GPU (not MIG-partitioned) never gives more than all of its time; holds are
    # counted by their request; nothing is negative.
    used: dict[str, float] = {}
    for s in b.shares:
        assert s.held > 0 and s.used >= 0 and s.usage_rate >= -1e-9 and s.unused_rate >= 0
        if not s.idle_key[1]:
            used[s.idle_key[0]] = used.get(s.idle_key[0], 0.0) + s.used
    assert all(u <= 1.0 + 1e-9 for u in used.values()), used
    # the cluster total is what OpenCost billed (or the catalog where OpenCost priced no GPU)
    billed = math.fsum(a.total_cost for a in allocs) / window
    if any(a.gpu_cost > 0 for a in allocs):
        assert math.isclose(math.fsum(b.cluster.values()), billed, rel_tol=1e-9, abs_tol=1e-9)
