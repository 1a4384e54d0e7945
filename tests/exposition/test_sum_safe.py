"""Sum-safe money families, on the model's own output: every money sample is >= 0 exactly,
sum() over each cost family equals the cluster total it claims, and a GPU price is published
only where it is the price in use. (tests/e2e/test_sums.py checks the same on a real
Prometheus scraping the demo.)"""

from __future__ import annotations

import math
from dataclasses import replace

import msgspec
import pytest
from hypothesis import given, settings

from aifinops.exposition import catalog as c
from aifinops.exposition.families import cost_families
from aifinops.exposition.render import Family
from aifinops.model.inputs import AllocationSet, Inputs, TokenInputs
from aifinops.model.llm_prices import LlmPriceCatalog, build_catalog, parse_litellm_prices
from aifinops.model.report import ModelState, Report, build_report
from aifinops.model.tokens import TokenContext
from tests.model.builders import H100, context, gpu, small_cluster
from tests.model.test_token_conservation import scenarios, traffic
from tests.model.token_builders import LLAMA, obs, serving_cluster
from tests.upstream_data import price_subset


@pytest.fixture(scope="module")
def catalog() -> LlmPriceCatalog:
    return build_catalog(parse_litellm_prices(price_subset()), "test")


def money_families(report: Report) -> dict[str, Family]:
    return {f.spec.name: f for f in cost_families(report) if "_usd" in f.spec.name}


def family_sum(family: Family) -> float:
    return math.fsum(v for _, v in family.samples)


def test_a_full_charge_back_leaves_the_serving_tenant_at_zero_not_below():
    """Every served token claimed by one tenant: the serving pods' owner keeps nothing. The
    money moved used to round to a hair more than the owner held (-1.1e-16)."""
    allocs = serving_cluster(gpu=0.1 + 0.2, cpu=0.3, ram=0.7)
    ctx = replace(context(), tokens=TokenContext(api_equivalents={}, rate_window_seconds=60))
    state = ModelState()
    for i in range(3):
        now = 1000.0 + 30 * i
        o = [
            obs(
                "tokens:vllm",
                f"{p}/{k}",
                k,
                LLAMA,
                n * now,
                role="serving",
                provider="vllm",
                namespace="llm-serving",
                pod=p,
            )
            for p in ("vllm-0", "vllm-1")
            for k, n in (("input", 7.0), ("output", 3.0))
        ]
        # search and chatbot claim every served token between them, 1:2.
        o += [
            obs("tokens:l", f"{t}/{k}", k, f"hosted_vllm/{LLAMA}", 2 * n * f * now, tenant=t)
            for t, f in (("search", 1 / 3), ("chatbot", 2 / 3))
            for k, n in (("input", 7.0), ("output", 3.0))
        ]
        report, state = build_report(
            Inputs((), allocs, TokenInputs(tuple(o), frozenset(x.source for x in o), None)),
            ctx,
            state,
            now,
        )
    assert report.tokens is not None and report.tokens.self_hosted[LLAMA].charged_back
    platform = {r: v for (t, r), v in report.cost.rates["allocation"].items() if t == "platform"}
    assert platform and all(v == 0.0 for r, v in platform.items() if r in ("gpu", "cpu", "ram"))
    for name, family in money_families(report).items():
        negative = [(labels, v) for labels, v in family.samples if not v >= 0.0]
        assert not negative, (name, negative)


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios())
def test_money_families_are_non_negative_and_sum_to_their_totals(scenario, catalog):
    allocs, gpus, serving, served, used, api, weights, max_tenants = scenario
    ctx = replace(
        context(max_tenants=max_tenants),
        tokens=TokenContext(api_equivalents={}, weights=weights, rate_window_seconds=60),
    )
    state = ModelState()
    for i in range(4):
        now = 1000.0 + 30 * i
        o = tuple(traffic(serving, served, used, api, now))
        inputs = Inputs(
            tuple(gpus),
            AllocationSet(1.0, tuple(allocs)),
            TokenInputs(tuple(o), frozenset(x.source for x in o), catalog),
        )
        report, state = build_report(inputs, ctx, state, now, now)
    families = money_families(report)
    for name, family in families.items():
        negative = [(labels, v) for labels, v in family.samples if not v >= 0.0]
        assert not negative, (name, negative)
    cluster = family_sum(families[c.CLUSTER_COST_RATE.name])
    for spec in (c.TENANT_COST_RATE, c.TENANT_USAGE_COST_RATE):
        assert math.isclose(family_sum(families[spec.name]), cluster, rel_tol=1e-9, abs_tol=1e-9)


def test_gpu_price_is_published_only_from_the_source_in_use():
    allocs, gpus = small_cluster()
    opencost_priced, _ = build_report(
        Inputs(tuple(gpus), AllocationSet(1.0, tuple(allocs))), context(), ModelState(), 0.0
    )
    assert set(opencost_priced.cost.gpu_prices) == {(H100, "opencost")}

    # OpenCost bills no GPU: the catalog prices every GPU, and only the catalog is published.
    unpriced = [msgspec.structs.replace(a, gpu_cost=0.0) for a in allocs]
    catalog_priced, _ = build_report(
        Inputs((gpu("G", H100, 0.5, "team-x", "a"),), AllocationSet(1.0, tuple(unpriced))),
        context(),
        ModelState(),
        0.0,
    )
    assert catalog_priced.cost.gpu_prices == {(H100, "catalog"): 4.0}


def test_each_budget_lands_in_the_family_of_its_owner_and_scope():
    """Budgets of every scope, for tenants and for the cluster: one family per (owner, scope)
    for the money, no tenant="__all__" row, durations in seconds."""
    from aifinops.exposition.families import finance_families
    from aifinops.model.budgets import Budget, evaluate_budgets
    from aifinops.model.finance import FinanceReport

    now = 1_750_000_000.0  # 2025-06-15
    budgets = [
        Budget("a", 100.0),
        Budget("b", 50.0, scope="gpu"),
        Budget("c", 10.0, scope="tokens"),
    ]
    budgets += [Budget("__all__", 1000.0, scope="gpu")]
    spend = {
        ("a", "all"): 60.0,
        ("b", "gpu"): 20.0,
        ("c", "tokens"): 10.0,
        ("__all__", "gpu"): 300.0,
    }
    statuses = evaluate_budgets(budgets, spend, {}, now, "UTC")
    # Only what the budget families read; the rest empty (no prices or latencies needed).
    report = FinanceReport(
        now=now,
        tz="UTC",
        period="2025-06",
        month_start=now - 14 * 86400,
        infra_available=True,
        month_to_date={},
        tenant_month_to_date={},
        budgets=statuses,
        budget_notes=(),
        cluster=None,
        initiatives=(),
        routing=(),
        routing_window_seconds=0.0,
        recommendations=(),
        periods={},
        idle_cost_usd_per_hour=0.0,
        prices=None,  # type: ignore[arg-type]
        latencies=None,  # type: ignore[arg-type]
    )
    got = {f.spec.name: f.samples for f in finance_families(report) if f.samples}
    assert got["aifinops_tenant_budget_spend_usd"] == [(("a",), 60.0)]
    assert got["aifinops_tenant_gpu_budget_spend_usd"] == [(("b",), 20.0)]
    assert got["aifinops_tenant_token_budget_spend_usd"] == [(("c",), 10.0)]
    assert got["aifinops_cluster_gpu_budget_usd"] == [((), 1000.0)]
    assert "aifinops_cluster_budget_usd" not in got
    assert got["aifinops_cluster_budget_used_ratio"] == [(("gpu",), 0.3)]
    assert got["aifinops_budget_exhaustion_seconds"][-1] == (("c", "tokens"), 0.0)
    assert all("__all__" not in labels for samples in got.values() for labels, _ in samples)
