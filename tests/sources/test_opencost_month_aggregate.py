"""The month query aggregated by tenancy: the ``aggregate`` parameter built from the tenancy
rules, aggregated keys read back (both OpenCost key formats), and per-tenant daily spend equal
to the pod aggregation's, to the cent, on the demo cluster and on a bench-sized one."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import httpx
import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.upstreams import Upstreams, start_upstreams
from aifinops.exposition.catalog import IDLE_TENANT, UNALLOCATED_TENANT
from aifinops.model.cost import _resource_costs, tenant_of
from aifinops.model.inputs import DailyAllocationSets
from aifinops.model.tenancy import MonthAggregation, TenantResolver
from aifinops.offload import run_cpu
from aifinops.settings import OpenCostSettings, TenancySettings
from aifinops.settings_finance import BudgetsSettings
from aifinops.sources.opencost import (
    OpenCostMonthSource,
    month_aggregation,
    parse_allocation_sets,
    rfc3339_utc,
)

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
DAY = 86400.0
URL = "http://opencost.test"


def oc(**kw: object) -> OpenCostSettings:
    return OpenCostSettings(url=URL, **kw)  # type: ignore[arg-type]


def test_aggregate_holds_namespace_and_every_form_of_the_pod_label_keys() -> None:
    agg = month_aggregation(TenancySettings(pod_label_keys=("aifinops.io/tenant", "team")), oc())
    assert agg.aggregate == (
        "cluster,namespace,label:aifinops_io_tenant,label:label_aifinops_io_tenant,"
        "label:team,label:label_team"
    )


@pytest.mark.parametrize(
    ("tenancy", "settings", "why"),
    [
        (TenancySettings(), oc(month_aggregation="pod"), "month_aggregation is pod"),
        (None, oc(), "no tenancy rules"),
        (TenancySettings(), oc(params={"shareSplit": "even"}), "shareSplit=even"),
    ],
)
def test_pod_aggregation_when_aggregating_could_change_a_figure(
    tenancy: TenancySettings | None, settings: OpenCostSettings, why: str
) -> None:
    agg = month_aggregation(tenancy, settings)
    assert agg.labels is None and agg.aggregate == "namespace,pod"
    assert why in agg.reason


def test_the_query_asks_for_the_aggregation() -> None:
    source = OpenCostMonthSource(
        oc(params={"aggregate": "cluster", "filter": 'cluster:"a"'}),
        BudgetsSettings(),
        tenancy=TenancySettings(pod_label_keys=("team",)),
        run=run_cpu,
    )
    _, _, params = source.query(T0)
    assert params["aggregate"] == "cluster,namespace,label:team,label:label_team"
    assert params["filter"] == 'cluster:"a"'  # configured params are kept, ours win


AGG = MonthAggregation(("aifinops_io_tenant", "team"), "test")


@pytest.mark.parametrize(
    ("key", "name", "namespace", "labels"),
    [
        ("c/ml/acme/__unallocated__", "c/ml{aifinops_io_tenant=acme}", "ml",
         {"aifinops_io_tenant": "acme"}),
        ("c/ml/__unallocated__/__unallocated__", "c/ml{}", "ml", {}),
        ("c/ml//blue", "c/ml{team=blue}", "ml", {"team": "blue"}),  # a blank value is no value
        # OpenCost before 2023 wrote <label>=<value>
        ("c/ml/aifinops_io_tenant=acme/team=blue", "c/ml{aifinops_io_tenant=acme,team=blue}",
         "ml", {"aifinops_io_tenant": "acme", "team": "blue"}),
        ("/ml/__unallocated__/__unallocated__", "/ml{}", "ml", {}),  # no cluster name
        ("c//__unallocated__/__unallocated__", "c/{}", None, {}),  # no namespace
        # a cluster name with slashes (an EKS ARN)
        ("arn:aws:eks:eu-west-1:1:cluster/prod/ml/x/__unallocated__",
         "arn:aws:eks:eu-west-1:1:cluster/prod/ml{aifinops_io_tenant=x}", "ml",
         {"aifinops_io_tenant": "x"}),
    ],
)  # fmt: skip
def test_aggregated_keys_are_read_back_for_tenancy(
    key: str, name: str, namespace: str | None, labels: dict[str, str]
) -> None:
    assert AGG.identity(key) == (name, namespace, labels)


@pytest.mark.parametrize("key", ["__idle__", "c1/__idle__", "__unallocated__", "a/b", "a/b/c"])
def test_other_keys_stay_as_opencost_named_them(key: str) -> None:
    assert AGG.identity(key) is None


def test_a_namespace_whose_pods_lack_the_labels_is_not_unallocated() -> None:
    """``c/ns/__unallocated__/...`` means "no tenant label", not OpenCost's unallocated
    row: the namespace rules still apply to it."""
    start = 1_748_736_000.0
    rows = {
        "c/team-a/__unallocated__/__unallocated__": {
            "properties": {"namespace": "team-a", "namespaceLabels": {"team": "ns-owner"}},
            "window": {"start": rfc3339_utc(start)},
            "gpuCost": 10.0,
        },
        "c/team-b/__unallocated__/__unallocated__": {
            "properties": {"namespace": "team-b"},
            "gpuCost": 5.0,
        },
        "c/team-b/acme/__unallocated__": {"properties": {"namespace": "team-b"}, "cpuCost": 2.0},
        "__idle__": {"properties": {"cluster": "c"}, "gpuCost": 1.0},
    }
    body = json.dumps({"code": 200, "status": "success", "data": [rows]}).encode()
    [(_, _, day)] = parse_allocation_sets(body, start, start + DAY, aggregation=AGG).sets
    resolver = TenancySettings(
        pod_label_keys=("aifinops.io/tenant",),
        namespace_label_keys=("team",),
        namespaces={"team-b": "bee"},
    ).to_model()
    tenants = {a.name: tenant_of(a, resolver) for a in day.allocations}
    assert tenants == {
        "c/team-a{}": "ns-owner",
        "c/team-b{}": "bee",
        "c/team-b{aifinops_io_tenant=acme}": "acme",
        "__idle__": IDLE_TENANT,
    }
    assert UNALLOCATED_TENANT not in tenants.values()


# --- aggregated == pod level, through the fake OpenCost ---------------------------------------

Daily = dict[tuple[str, str, float], float]


def daily_spend(sets: DailyAllocationSets, resolver: TenantResolver) -> Daily:
    """USD per (tenant, resource, set start), as the finance model books the daily sets."""
    parts: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for set_start, _, allocation_set in sets.sets:
        for row in allocation_set.allocations:
            tenant = tenant_of(row, resolver)
            for resource, usd in _resource_costs(row).items():
                if usd:
                    parts[(tenant, resource, set_start)].append(usd)
    return {k: math.fsum(v) for k, v in parts.items()}


async def both_ways(
    sim: SimCluster, budgets: BudgetsSettings, history_months: int = 1
) -> tuple[Daily, Daily]:
    tenancy = TenancySettings.model_validate(sim.tenancy_config())
    resolver = tenancy.to_model()
    async with await start_upstreams(sim, clock=lambda: T0) as up:
        got = []
        for how in ("tenancy", "pod"):
            source = OpenCostMonthSource(
                oc_for(up, month_aggregation=how, history_months=history_months),
                budgets,
                lambda: T0,
                tenancy,
                run=run_cpu,
            )
            async with httpx.AsyncClient() as client:
                got.append(daily_spend(await source.fetch(client), resolver))
    return got[0], got[1]


def oc_for(up: Upstreams, **kw: object) -> OpenCostSettings:
    return OpenCostSettings(url=up.opencost_url, max_response_bytes=1 << 30, **kw)  # type: ignore[arg-type]


def assert_same_to_the_cent(aggregated: Daily, pods: Daily) -> None:
    assert aggregated.keys() == pods.keys()
    cents = {k: (round(aggregated[k], 2), round(pods[k], 2)) for k in pods}
    assert {k: v for k, v in cents.items() if v[0] != v[1]} == {}
    assert {t for t, _, _ in pods} - {IDLE_TENANT, UNALLOCATED_TENANT}  # tenants are there


async def test_demo_month_aggregated_equals_pod_level() -> None:
    sim = SimCluster(ClusterSpec.demo())
    aggregated, pods = await both_ways(sim, BudgetsSettings(lookback_days=28))
    # All of May (history_months=1: 31 days) and June to date (14 full days and today), in
    # pieces of a week: the lookback's 28 days lie inside those.
    assert len({day for _, _, day in pods}) == 31 + 15
    assert_same_to_the_cent(aggregated, pods)


async def test_bench_sized_month_aggregated_equals_pod_level() -> None:
    sim = SimCluster(ClusterSpec.scaled(1000))
    aggregated, pods = await both_ways(sim, BudgetsSettings(lookback_days=3), history_months=0)
    assert len({day for _, _, day in pods}) == 15  # the month so far: 14 days and today
    assert len({t for t, _, _ in pods}) > 150
    assert_same_to_the_cent(aggregated, pods)
