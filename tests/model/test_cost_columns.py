"""The columnar cost attribution (OpenCost's rows as one cost array, per-pod rates kept as
columns, holds booked column by column) gives exactly what the row-by-row code gave: the
oracle, tests/model/cost_reference.py. Compared field by field with floats by ``repr`` and
every mapping in its iteration order, on the demo cluster's real-format payloads (parsed by
the exporter's own parsers), on generated clusters and on hostile rows."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.cluster.energy_truth import DEMO_OWNED_GPUS
from aifinops.model import cost
from aifinops.model.gpu_prices import GpuPricer
from aifinops.model.inputs import Allocation, AllocationSet, GpuSample, SharedHold
from aifinops.model.tenancy import TenantResolver
from aifinops.settings import settings_from_mapping
from aifinops.sources import dcgm, hami, opencost
from aifinops.sources.promtext import parse_text
from tests.model import cost_reference
from tests.model.builders import H100, L4, gpu, idle_row, pod, pricer, resolver
from tests.model.test_cost_conservation import clusters
from tests.model.test_shared_gpus import shared_clusters

T0 = 1_750_000_000.0


def dump(x: Any) -> str:
    """``x`` as text: dataclasses by field name (the two modules' classes are different
    classes of the same shape), floats by ``repr`` (``0.0`` is not ``-0.0``), mappings in
    iteration order."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.append(type(v).__name__ + "(")
            for f in dataclasses.fields(v):
                out.append(f.name + "=")
                walk(getattr(v, f.name))
            out.append(")")
        elif isinstance(v, msgspec.Struct):  # GpuShare: a dataclass in the reference
            out.append(type(v).__name__ + "(")
            for name in v.__struct_fields__:
                out.append(name + "=")
                walk(getattr(v, name))
            out.append(")")
        elif isinstance(v, Mapping):
            out.append("{")
            for k, item in v.items():
                walk(k)
                out.append(":")
                walk(item)
                out.append(",")
            out.append("}")
        elif isinstance(v, list | tuple):
            out.append("[")
            for item in v:
                walk(item)
                out.append(",")
            out.append("]")
        else:
            out.append(repr(v))

    walk(x)
    return "".join(out)


def assert_same(*args: Any, **kwargs: Any) -> cost.CostBreakdown | None:
    """The new and the reference attribution of the same inputs: equal dumps, or the same
    exception."""
    try:
        expected = cost_reference.attribute_costs(*args, **kwargs)
    except Exception as exc:
        with pytest.raises(type(exc)):
            cost.attribute_costs(*args, **kwargs)
        return None
    got = cost.attribute_costs(*args, **kwargs)
    assert dump(got) == dump(expected)
    # The per-pod rates answer lookups as the dicts did (token charge-back reads them so).
    for basis, pods in expected.pod_rates.items():
        mine = got.pod_rates[basis]
        assert len(mine) == len(pods) and list(mine) == list(pods)
        for key, rates in pods.items():
            assert key in mine and mine.get(key, {}).get("gpu", 0.0) == rates.get("gpu", 0.0)
        assert ("no-such", "pod") not in mine and mine.get(("no-such", "pod")) is None
    return got


# --- the demo cluster's payloads, through the exporter's parsers --------------------------


def demo_inputs(
    spec: ClusterSpec, now: float = T0
) -> tuple[AllocationSet, tuple[GpuSample, ...], tuple[SharedHold, ...] | None, TenantResolver]:
    sim = SimCluster(spec)
    body = json.dumps(sim.opencost_allocation(now, 1.0)).encode()
    allocations = opencost.parse_allocation_response(body, 1.0)
    names = frozenset(dcgm.metric_names("auto"))
    gpus = dcgm.gpu_samples(parse_text(sim.dcgm_exposition(now), names), "auto")
    shared = None
    if sim.shared is not None:
        pool = sim.shared.hami
        pages = [pool.scheduler_page(now)] + [pool.monitor_page(n.name, now) for n in pool.nodes]
        shared = hami.shared_holds(s for page in pages for s in parse_text(page))
    tenancy = settings_from_mapping({"tenancy": sim.tenancy_config()}).tenancy.to_model()
    return allocations, gpus, shared, tenancy


def owned_pricer(precedence: str) -> GpuPricer:
    gpus = [dict(g) for g in DEMO_OWNED_GPUS]
    s = settings_from_mapping({"gpu_pricing": {"owned": {"precedence": precedence, "gpus": gpus}}})
    return replace(pricer(), owned=s.gpu_pricing.owned.to_model()).at(T0)


DEMO_SPECS = {
    "demo": ClusterSpec.demo(),
    "demo-shared": ClusterSpec.demo(shared_gpus=True),
    "scaled": ClusterSpec.scaled(120, shared_gpus=True),
}


@pytest.fixture(scope="module", params=list(DEMO_SPECS))
def demo(request: pytest.FixtureRequest) -> Any:
    return demo_inputs(DEMO_SPECS[request.param])


@pytest.mark.parametrize("precedence", [None, "opencost", "owned"])
@pytest.mark.parametrize("max_tenants", [None, 3])
def test_demo_cluster_attributes_as_the_reference(
    demo: Any, precedence: str | None, max_tenants: int | None
) -> None:
    allocations, gpus, shared, tenancy = demo
    prices = pricer().at(T0) if precedence is None else owned_pricer(precedence)
    got = assert_same(allocations, gpus, tenancy, prices, max_tenants, shared, 0.7)
    assert got is not None and got.shares and got.pod_rates["usage"]
    # Each input missing in turn, and OpenCost without its idle row.
    assert_same(None, gpus, tenancy, prices, max_tenants, shared)
    assert_same(allocations, None, tenancy, prices, max_tenants, shared)
    assert_same(allocations, gpus, tenancy, prices, max_tenants, None)
    assert_same(allocations, None, tenancy, prices, max_tenants, None)
    no_idle = tuple(a for a in allocations.allocations if not a.is_idle)
    assert_same(AllocationSet(1.0, no_idle), gpus, tenancy, prices, max_tenants, shared)


# --- generated clusters, with restarted pods (two rows for one pod) ---------------------


def restarted(allocs: list[Allocation], picks: list[int]) -> list[Allocation]:
    """``allocs`` with a second row for some pods (a restart): other costs, other GPUs."""
    out = list(allocs)
    for i in picks:
        a = allocs[i % len(allocs)]
        if a.pod is None:
            continue
        out.append(
            msgspec.structs.replace(
                a, cpu_cost=a.gpu_cost / 3, gpu_cost=a.cpu_cost, gpu_count=a.gpu_count / 2
            )
        )
    return out


@settings(max_examples=60, deadline=None)
@given(clusters(), st.lists(st.integers(0, 20), max_size=4), st.sampled_from([None, 2]))
def test_generated_clusters_attribute_as_the_reference(
    cluster: Any, picks: list[int], max_tenants: int | None
) -> None:
    allocs, gpus, window = cluster
    if allocs:
        allocs = restarted(allocs, picks)
    rows = AllocationSet(window, tuple(allocs))
    assert_same(rows, tuple(gpus), resolver(), pricer(), max_tenants)
    # Owned prices preferred over OpenCost's: every GPU priced as the catalog would.
    assert_same(rows, tuple(gpus), resolver(), owned_pricer("owned"), max_tenants)


@settings(max_examples=60, deadline=None)
@given(shared_clusters())
def test_generated_shared_gpus_attribute_as_the_reference(cluster: Any) -> None:
    allocs, gpus, holds, weight, max_tenants = cluster
    rows = AllocationSet(1.0, tuple(allocs))
    assert_same(rows, tuple(gpus), resolver(), pricer(), max_tenants, tuple(holds), weight)
    # OpenCost without GPU prices: HAMi's pods and the holds are catalog-priced.
    free = AllocationSet(1.0, tuple(msgspec.structs.replace(a, gpu_cost=0.0) for a in allocs))
    assert_same(free, tuple(gpus), resolver(), pricer(), max_tenants, tuple(holds), weight)


# --- hostile rows ------------------------------------------------------------------------


def test_a_restarted_pod_sums_its_rows_in_row_order_and_keys_in_first_seen_order() -> None:
    rows = AllocationSet(
        2.0,
        (
            pod("team-a", "p", cpu_cost=1.0),
            pod("team-b", "q", gpu_cost=3.0, gpu_count=1.0),
            pod("team-a", "p", gpu_cost=2.0, ram_cost=0.1, gpu_count=1.0, gpu_hours=1.0),
            pod("team-a", "p", cpu_cost=0.2, gpu_count=0.5),
        ),
    )
    gpus = (gpu("G1", H100, 0.4, "team-a", "p"), gpu("G2", H100, 0.9, "team-b", "q"))
    got = assert_same(rows, gpus, resolver(), pricer())
    assert got is not None
    assert list(got.pod_rates["allocation"][("team-a", "p")]) == ["cpu", "gpu", "ram"]


@pytest.mark.parametrize(
    "odd",
    [
        {"cpu_cost": math.nan},
        {"gpu_cost": math.inf, "gpu_count": 1.0},
        {"ram_cost": math.inf, "pv_cost": -math.inf},
        {"cpu_cost": 3, "gpu_cost": 2, "gpu_count": 1},  # ints where floats are expected
        {"cpu_cost": -1.0, "network_cost": 5e-324},  # negative, and the smallest denormal
        {"gpu_cost": 1e308, "cpu_cost": 1e308},
        {"cpu_cost": -5e-324},  # a rate of -0.0 over a long window: a pod's is 0.0
    ],
)
@pytest.mark.parametrize("window", [1.0, 4.0, 0.0, 1e-310])
def test_hostile_numbers_give_what_the_reference_gives(odd: dict[str, Any], window: float) -> None:
    rows = AllocationSet(
        window,
        (
            pod("team-a", "p", gpu_cost=1.0, cpu_cost=1.0, gpu_count=1.0),
            msgspec.structs.replace(pod("team-a", "odd", gpu_count=0.0), **odd),
            idle_row(gpu_cost=4.0, cpu_cost=1.0),
        ),
    )
    gpus = (gpu("G1", H100, 0.5, "team-a", "p"), gpu("G2", H100, 0.2, "team-a", "odd"))
    assert_same(rows, gpus, resolver(), pricer())


def test_odd_rows_and_names_give_what_the_reference_gives() -> None:
    rows = AllocationSet(
        1.0,
        (
            pod("team-a", "p", {"aifinops.io/tenant": "__idle__"}, gpu_cost=1.0, gpu_count=1.0),
            Allocation("c/n/team-b/", "team-b", None, "n", 60.0, cpu_cost=1.0),  # no pod
            Allocation("c/n//x", None, "x", "n", 60.0, ram_cost=1.0),  # no namespace
            Allocation("cluster/__unallocated__", None, None, None, 60.0, cpu_cost=0.5),
            idle_row(gpu_cost=2.0),
            pod("team-c", "only-zero"),  # a row with no cost at all
        ),
    )
    # DCGM sees a pod OpenCost does not list, and a HAMi pod OpenCost does not list either.
    gpus = (gpu("G1", H100, 0.5, "team-a", "p"), gpu("G2", L4, 0.3, "team-z", "ghost"))
    holds = (SharedHold("H1", "n1", "team-y", "hami-ghost", 0.5, 0.25, 0.4, L4),)
    assert_same(rows, gpus, resolver(), pricer(), None, holds)
    assert_same(AllocationSet(1.0, ()), gpus, resolver(), pricer(), None, holds)
    no_gpu_cost = AllocationSet(
        1.0, tuple(msgspec.structs.replace(a, gpu_cost=0.0) for a in rows.allocations)
    )
    assert_same(no_gpu_cost, gpus, resolver(), pricer(), None, holds)


# --- tenancy resolved once per distinct (namespace, label maps) ----------------------------


def test_rows_sharing_label_maps_resolve_as_each_row_alone() -> None:
    # One map object on pods of other namespaces, equal maps that are other objects, the
    # same pod map beside other namespace maps, blank values and the empty map: each row's
    # tenant is the one its own (namespace, labels, namespace labels) give.
    shared = {"aifinops.io/tenant": "alpha"}
    blank = {"aifinops.io/tenant": ""}
    team = {"team": "gamma"}
    rows = AllocationSet(
        1.0,
        (
            pod("team-a", "p1", shared, gpu_cost=1.0, gpu_count=1.0),
            pod("team-b", "p2", shared, cpu_cost=1.0),
            pod("team-b", "p3", dict(shared), cpu_cost=2.0),
            pod("team-b", "p4", blank, cpu_cost=0.5),
            pod("team-c", "p5", blank, team, cpu_cost=0.25),
            pod("ml-research", "p6", blank, team, ram_cost=1.0),
            pod("ml-research", "p7", blank, cpu_cost=1.5),
            pod("nowhere", "p8", blank, cpu_cost=0.75),
            pod("nowhere", "p9", {"aifinops.io/tenant": "__unallocated__"}, cpu_cost=0.5),
            idle_row(gpu_cost=2.0),
        ),
    )
    expected = [cost_reference.tenant_of(a, resolver()) for a in rows.allocations]
    assert expected == [
        "alpha",
        "alpha",
        "alpha",
        "b",
        "gamma",
        "gamma",
        "research",
        "__unallocated__",
        "__unallocated__",
        "__idle__",
    ]
    cached = resolver().cached()
    for _ in range(2):  # the second pass answers every row from what the first resolved
        got_rows = [
            cached(a.namespace, a.labels, a.namespace_labels)
            for a in rows.allocations
            if not (a.is_idle or a.is_unallocated)
        ]
        assert got_rows == expected[:-1]
    gpus = (gpu("G1", H100, 0.5, "team-a", "p1"),)
    got = assert_same(rows, gpus, resolver(), pricer())
    assert got is not None
    assert got.pod_tenants[("team-b", "p4")] == "b"
    assert got.pod_tenants[("ml-research", "p7")] == "research"


def test_a_cached_resolver_resolves_the_demo_rows_as_resolve() -> None:
    for spec in DEMO_SPECS.values():
        allocations, _, _, tenancy = demo_inputs(spec)
        cached = tenancy.cached()
        for _ in range(2):
            for a in allocations.allocations:
                args = (a.namespace, a.labels, a.namespace_labels)
                assert cached(*args) == tenancy.resolve(*args)


def test_a_cached_resolver_never_answers_for_a_map_that_took_a_freed_maps_place() -> None:
    # Maps made and dropped one after another would reuse one address (and id); the cache
    # keeps each map it answered for, so a new map is never taken for an old one.
    cached = resolver().cached()
    for i in range(200):
        labels = {"aifinops.io/tenant": f"t{i}"}
        assert cached("team-a", labels, {}) == f"t{i}"
        del labels


def test_the_same_label_maps_under_reloaded_tenancy_rules_give_the_new_tenants() -> None:
    # A reload replaces the rules while the rows (and their map objects) stay: nothing of
    # the last call's resolution is kept, each call gives what the reference gives.
    labels = {"aifinops.io/tenant": "alpha", "team": "x"}
    rows = AllocationSet(
        1.0,
        (
            pod("team-a", "p1", labels, gpu_cost=1.0, gpu_count=1.0),
            pod("team-b", "p2", labels, labels, cpu_cost=1.0),
            pod("team-b", "p3", None, labels, cpu_cost=2.0),
        ),
    )
    gpus = (gpu("G1", H100, 0.5, "team-a", "p1"),)
    reloaded = TenantResolver.compile(("nothing",), ("team",), {"team-a": "mapped"}, ())
    tenants = []
    for rules in (resolver(), reloaded, resolver()):
        got = assert_same(rows, gpus, rules, pricer())
        assert got is not None
        tenants.append(dict(got.pod_tenants))
    assert tenants[0] == tenants[2] != tenants[1]
    assert tenants[1] == {("team-a", "p1"): "mapped", ("team-b", "p2"): "x", ("team-b", "p3"): "x"}
