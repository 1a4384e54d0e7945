"""Sum-safe families on a real Prometheus: the demo exporter scraped every second, and
``sum()`` over every money family (a name with ``_usd``) equal to the total its HELP claims,
each side evaluated by Prometheus at the same instant (so from the same scrape).

Also here, because it needs the real demo process: ``promtool check metrics`` finds nothing
on the FULL demo page (budgets, ROI, routing, tokens and recommendations included), not only
on the golden page.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from aifinops.exposition.catalog import CATALOG
from tests.e2e.harness import (
    EXPORTER_JOB,
    Processes,
    Prometheus,
    http_get,
    start_demo_exporter,
    start_prometheus,
    wait_until,
)
from tests.tools import require_binary

pytestmark = pytest.mark.e2e

REL_TOL = 1e-9
ALLOC = "aifinops_tenant_cost_usd_per_hour"
USAGE = "aifinops_tenant_usage_basis_cost_usd_per_hour"
SELF_HOSTED = 'aifinops_model_cost_per_million_tokens_usd{source="measured"}'

# family -> (sum of the family, the total it claims, how they compare). "=" is equal within
# REL_TOL; "<=" an upper bound the family must not pass; ">=" a lower bound.
CLAIMS: dict[str, tuple[str, str, str]] = {
    ALLOC: (f"sum({ALLOC})", "sum(aifinops_cluster_cost_usd_per_hour)", "="),
    USAGE: (f"sum({USAGE})", "sum(aifinops_cluster_cost_usd_per_hour)", "="),
    "aifinops_cluster_cost_usd_per_hour": (
        "sum(aifinops_cluster_cost_usd_per_hour)",
        f"sum({ALLOC})",
        "=",
    ),
    # Both bases accrue the cluster's dollars (DCGM is up from the first refresh).
    "aifinops_tenant_cost_usd_total": (
        "sum(aifinops_tenant_cost_usd_total)",
        "sum(aifinops_tenant_usage_basis_cost_usd_total)",
        "=",
    ),
    "aifinops_tenant_usage_basis_cost_usd_total": (
        "sum(aifinops_tenant_usage_basis_cost_usd_total)",
        "sum(aifinops_tenant_cost_usd_total)",
        "=",
    ),
    # The usage basis books the unused share of held GPUs to __idle__ and pays use beyond a
    # request out of it: __idle__ grows by the unused cost less that use, never by more.
    "aifinops_tenant_gpu_unused_cost_usd_per_hour": (
        "sum(aifinops_tenant_gpu_unused_cost_usd_per_hour)",
        f'sum({USAGE}{{tenant="__idle__",resource="gpu"}})'
        f' - sum({ALLOC}{{tenant="__idle__",resource="gpu"}})',
        ">=",
    ),
    "aifinops_idle_gpu_cost_usd_per_hour": (
        "sum(aifinops_idle_gpu_cost_usd_per_hour)",
        f'sum({ALLOC}{{resource="gpu"}})',
        "<=",
    ),
    # API token dollars are the tenants' resource=tokens dollars; self-hosted ones are in
    # gpu/cpu/ram through the charge-back.
    "aifinops_token_cost_usd_total": (
        f"sum(aifinops_token_cost_usd_total unless on (model, provider) {SELF_HOSTED})",
        'sum(aifinops_tenant_cost_usd_total{resource="tokens"})',
        "=",
    ),
    # GPU dollars by split method (docs/shared-gpus.md): each basis' methods sum to the
    # cluster's GPU cost, and so does the self-metric.
    "aifinops_tenant_gpu_cost_by_method_usd_per_hour": (
        "sum(aifinops_tenant_gpu_cost_by_method_usd_per_hour)",
        'sum(aifinops_cluster_cost_usd_per_hour{resource="gpu"})',
        "=",
    ),
    "aifinops_tenant_usage_basis_gpu_cost_by_method_usd_per_hour": (
        "sum(aifinops_tenant_usage_basis_gpu_cost_by_method_usd_per_hour)",
        'sum(aifinops_cluster_cost_usd_per_hour{resource="gpu"})',
        "=",
    ),
    "aifinops_gpu_split_cost_usd_per_hour": (
        "sum(aifinops_gpu_split_cost_usd_per_hour)",
        'sum(aifinops_cluster_cost_usd_per_hour{resource="gpu"})',
        "=",
    ),
    # The global budget (scope all) counts every tenant's month to date, sentinels included.
    "aifinops_tenant_month_to_date_cost_usd": (
        "sum(aifinops_tenant_month_to_date_cost_usd)",
        "sum(aifinops_cluster_budget_spend_usd)",
        "=",
    ),
    "aifinops_cluster_budget_spend_usd": (
        "sum(aifinops_cluster_budget_spend_usd)",
        "sum(aifinops_tenant_month_to_date_cost_usd)",
        "=",
    ),
    # A tenant's all-resources budget counts its whole month to date.
    "aifinops_tenant_budget_spend_usd": (
        "sum(aifinops_tenant_budget_spend_usd)",
        "sum(aifinops_tenant_month_to_date_cost_usd"
        " and on (tenant) aifinops_tenant_budget_spend_usd)",
        "=",
    ),
    "aifinops_tenant_gpu_budget_spend_usd": (
        "sum(aifinops_tenant_gpu_budget_spend_usd)",
        "sum(aifinops_tenant_month_to_date_cost_usd"
        " and on (tenant) aifinops_tenant_gpu_budget_spend_usd)",
        "<=",
    ),
    "aifinops_tenant_token_budget_spend_usd": (
        "sum(aifinops_tenant_token_budget_spend_usd)",
        "sum(aifinops_tenant_month_to_date_cost_usd"
        " and on (tenant) aifinops_tenant_token_budget_spend_usd)",
        "<=",
    ),
    "aifinops_cluster_gpu_budget_spend_usd": (
        "sum(aifinops_cluster_gpu_budget_spend_usd)",
        "sum(aifinops_cluster_budget_spend_usd)",
        "<=",
    ),
    "aifinops_cluster_token_budget_spend_usd": (
        "sum(aifinops_cluster_token_budget_spend_usd)",
        "sum(aifinops_cluster_budget_spend_usd)",
        "<=",
    ),
    # A month-end forecast is never below the spend so far.
    "aifinops_tenant_budget_forecast_usd": (
        "sum(aifinops_tenant_budget_spend_usd)",
        "sum(aifinops_tenant_budget_forecast_usd)",
        "<=",
    ),
    "aifinops_cluster_budget_forecast_usd": (
        "sum(aifinops_cluster_budget_spend_usd)",
        "sum(aifinops_cluster_budget_forecast_usd)",
        "<=",
    ),
    # Energy (issue 17): its dollars are a family of their own, conserved like money.
    "aifinops_tenant_energy_cost_usd_total": (
        "sum(aifinops_tenant_energy_cost_usd_total)",
        "sum(aifinops_cluster_energy_cost_usd_total)",
        "=",
    ),
    "aifinops_cluster_energy_cost_usd_total": (
        "sum(aifinops_cluster_energy_cost_usd_total)",
        "sum(aifinops_tenant_energy_cost_usd_total)",
        "=",
    ),
    "aifinops_tenant_energy_cost_usd_per_hour": (
        "sum(aifinops_tenant_energy_cost_usd_per_hour)",
        "sum(aifinops_cluster_energy_cost_usd_per_hour)",
        "=",
    ),
    "aifinops_cluster_energy_cost_usd_per_hour": (
        "sum(aifinops_cluster_energy_cost_usd_per_hour)",
        "sum(aifinops_tenant_energy_cost_usd_per_hour)",
        "=",
    ),
    "aifinops_tenant_energy_month_to_date_cost_usd": (
        "sum(aifinops_tenant_energy_month_to_date_cost_usd)",
        "sum(aifinops_cluster_energy_month_to_date_cost_usd)",
        "=",
    ),
    "aifinops_cluster_energy_month_to_date_cost_usd": (
        "sum(aifinops_cluster_energy_month_to_date_cost_usd)",
        "sum(aifinops_tenant_energy_month_to_date_cost_usd)",
        "=",
    ),
}
# Energy and carbon are not dollars, but are conserved the same way: tenants + __idle__ +
# __unallocated__ = the fleet's measured total (joules and watts before PUE, grams after).
QUANTITY_CLAIMS: dict[str, tuple[str, str]] = {
    f"aifinops_tenant_{name}": (f"sum(aifinops_tenant_{name})", f"sum(aifinops_cluster_{name})")
    for name in (
        "gpu_energy_joules_total",
        "gpu_power_watts",
        "carbon_grams_total",
        "carbon_grams_per_hour",
        "carbon_month_to_date_grams",
    )
}
# Every energy family: published once the demo's DCGM has energy or power series.
ENERGY = {m.name for m in CATALOG if "energy" in m.name or "carbon" in m.name}
# Money families whose sum() is by definition the sum of their rows (amounts configured or
# estimated per row: budgets, ROI, savings) or that are prices (a sum means nothing): for
# these the test checks the structure that makes sum() safe (below), not a second source.
DEFINITIONAL = {
    "aifinops_gpu_price_usd_per_hour",
    "aifinops_owned_gpu_price_usd_per_hour",
    "aifinops_model_cost_per_million_tokens_usd",
    "aifinops_model_api_equivalent_cost_per_million_tokens_usd",
    "aifinops_roi_benefit_usd",
    "aifinops_roi_cost_usd",
    "aifinops_routing_savings_usd_per_month",
    "aifinops_recommendation_savings_usd_per_month",
    "aifinops_tenant_budget_usd",
    "aifinops_tenant_gpu_budget_usd",
    "aifinops_tenant_token_budget_usd",
    "aifinops_cluster_budget_usd",
    "aifinops_cluster_gpu_budget_usd",
    "aifinops_cluster_token_budget_usd",
    "aifinops_tenant_gpu_budget_forecast_usd",
    "aifinops_tenant_token_budget_forecast_usd",
    "aifinops_cluster_gpu_budget_forecast_usd",
    "aifinops_cluster_token_budget_forecast_usd",
    "aifinops_tenant_energy_budget_usd",
    "aifinops_energy_price_usd_per_kwh",
}
MONEY = {m.name for m in CATALOG if "_usd" in m.name}
# One budget per tenant and one global budget (the configuration allows no more): a budget
# of each scope, the global one on all resources.
BUDGETS = {
    "budgets": {
        "tenants": [
            # search has spent more than this: exhaustion 0 s, a sample in every family.
            {"tenant": "search", "amount_usd": 1.0, "scope": "all"},
            {"tenant": "platform", "amount_usd": 1e7, "scope": "gpu"},
            {"tenant": "chatbot", "amount_usd": 1e7, "scope": "tokens"},
            {"tenant": "__all__", "amount_usd": 1e8, "scope": "all"},
        ]
    },
    # Owned H100s beside OpenCost's price (default precedence): the owned price family is
    # published, OpenCost's price stays the one in use (one per GPU model, checked below).
    "gpu_pricing": {
        "owned": {
            "gpus": [
                {
                    "gpu_model": "NVIDIA H100 80GB HBM3",
                    "purchase_price_usd": 30000,
                    "purchase_date": "2025-01-01",
                    "depreciation_life_years": 4,
                    "residual_value_usd": 2000,
                    "support_usd_per_year": 1500,
                    "hosting_usd_per_gpu_month": 150,
                }
            ]
        }
    },
    # Measured GPU energy, priced flat, with carbon and budgets (one tenant over them).
    "energy": {
        "enabled": True,
        "pue": 1.25,
        "price": {"usd_per_kwh": 0.15},
        "carbon": {"grams_co2e_per_kwh": 400},
        "budgets": [{"tenant": "search", "energy_usd": 1e-6, "carbon_kg": 1e-6}],
    },
}
# The global budget has one scope: the other scopes' global families stay empty here (the
# unit tests in tests/web/api/test_budgets.py cover them).
UNPUBLISHED = {
    f"aifinops_cluster_{scope}_budget{what}_usd"
    for scope in ("gpu", "token")
    for what in ("", "_spend", "_forecast")
}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, str]]:
    prometheus = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("sums")
    with Processes() as procs:
        config = workdir / "budgets.yaml"
        config.write_text(yaml.safe_dump(BUDGETS))
        exporter = start_demo_exporter(procs, workdir / "exporter", config=config)
        prom = start_prometheus(
            procs,
            workdir / "prometheus",
            scrape_targets={EXPORTER_JOB: [exporter.host_port]},
            binary=prometheus,
        )
        # Every money family scraped: the counters have accrued, the token prices exist.
        wait_until(
            lambda: not MONEY - UNPUBLISHED - ENERGY - _names(prom, time.time() - 1),
            60,
            "every money family scraped",
            interval=0.5,
        )
        if _demo_measures_energy(http_get(f"{exporter.url}/metrics").decode()):
            wait_until(
                lambda: not (MONEY & ENERGY) - _names(prom, time.time() - 1),
                60,
                "every energy money family scraped",
                interval=0.5,
            )
        yield prom, http_get(f"{exporter.url}/metrics").decode()


def _demo_measures_energy(page: str) -> bool:
    """Whether the demo's DCGM pages carry energy or power: an interval was measured (the
    GPUs per method are published only then)."""
    return "\naifinops_energy_gpus{" in page


def _unpublished(page: str) -> set[str]:
    """Families this demo cannot publish: the other scopes' global budgets, and energy while
    the demo's DCGM has no energy or power series (the demo gains them in issue 17 item 5)."""
    return UNPUBLISHED | (set() if _demo_measures_energy(page) else ENERGY)


def _names(prom: Prometheus, at: float) -> set[str]:
    expr = 'count by (__name__) ({__name__=~"aifinops_.*_usd.*"})'
    return {s["metric"]["__name__"] for s in _series(prom, expr, at)}


def _value(prom: Prometheus, expr: str, at: float) -> float:
    result = prom.api("query", query=expr, time=f"{at:.3f}")["result"]
    return float(result[0]["value"][1]) if result else math.nan


def _series(prom: Prometheus, expr: str, at: float) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = prom.api("query", query=expr, time=f"{at:.3f}")["result"]
    return result


def test_every_money_family_is_claimed_or_definitional() -> None:
    assert set(CLAIMS) | DEFINITIONAL == MONEY, "a money family with no sum check"
    assert not set(CLAIMS) & DEFINITIONAL


def test_sum_over_every_money_family_equals_its_claimed_total(
    scraped: tuple[Prometheus, str],
) -> None:
    prom, page = scraped
    at = time.time() - 1  # a settled instant: both sides read the same scrape
    unpublished = _unpublished(page)
    missing = MONEY - unpublished - _names(prom, at)
    assert not missing, f"money families the demo does not publish: {sorted(missing)}"
    problems = []
    for family, (lhs, rhs, how) in sorted(CLAIMS.items()):
        if family in unpublished:
            continue
        left, right = _value(prom, lhs, at), _value(prom, rhs, at)
        # An equality between two zeros proves nothing: those sums must hold money.
        assert left > 0 or how == "<=", (family, lhs, left)
        if how == "=":
            ok = math.isclose(left, right, rel_tol=REL_TOL, abs_tol=1e-9)
        elif how == "<=":
            ok = left <= right * (1 + REL_TOL) + 1e-9
        else:
            ok = left * (1 + REL_TOL) + 1e-9 >= right
        if not ok:
            problems.append(f"{family}: {lhs} = {left!r}, claimed {how} {rhs} = {right!r}")
    assert not problems, "\n".join(problems)
    # Per resource too: each basis' tenants sum to the cluster's cost of that resource.
    for family in (ALLOC, USAGE):
        gap = _series(
            prom,
            f"abs(sum by (resource) ({family}) - sum by (resource) "
            "(aifinops_cluster_cost_usd_per_hour)) > 1e-9",
            at,
        )
        assert not gap, (family, gap)


def test_energy_and_carbon_sum_to_the_fleets_measured_total(
    scraped: tuple[Prometheus, str],
) -> None:
    prom, page = scraped
    if not _demo_measures_energy(page):
        pytest.skip("the demo's DCGM pages carry no energy or power series yet (issue 17 item 5)")
    at = time.time() - 1
    problems = []
    for family, (lhs, rhs) in sorted(QUANTITY_CLAIMS.items()):
        left, right = _value(prom, lhs, at), _value(prom, rhs, at)
        assert left > 0, (family, lhs, left)
        if not math.isclose(left, right, rel_tol=REL_TOL, abs_tol=1e-9):
            problems.append(f"{family}: {lhs} = {left!r}, claimed = {rhs} = {right!r}")
    assert not problems, "\n".join(problems)
    # Every energy figure is >= 0 and the idle bucket is a tenant row like any other.
    assert not _series(prom, '{__name__=~"aifinops_.*(energy|carbon|power).*"} < 0', at)


def test_money_families_have_no_overlapping_rows(scraped: tuple[Prometheus, str]) -> None:
    """What made sum() wrong: a basis or scope label, a tenant="__all__" row, a negative
    rounding remainder, two prices in use for one GPU model."""
    prom, _ = scraped
    at = time.time() - 1
    money = '{__name__=~"aifinops_.*_usd.*"}'
    assert not _series(prom, f'count by (__name__) ({money[:-1]}, basis!=""}})', at)
    assert not _series(prom, f'count by (__name__) ({money[:-1]}, scope!=""}})', at)
    assert not _series(
        prom, 'count by (__name__) ({__name__=~"aifinops_.*", tenant="__all__"})', at
    )
    assert not _series(prom, f"{money} < 0", at)
    assert not _series(prom, "count by (gpu_model) (aifinops_gpu_price_usd_per_hour) > 1", at)
    # A family per scope: one sample per tenant (one exporter scraped); split methods are a
    # partition of a tenant's GPU dollars, not overlapping rows.
    for name in MONEY:
        dup = _series(
            prom,
            f"count by (tenant, model, provider, token_type, resource, kind, "
            f"initiative, workload, gpu_model, source, pool, component, method) ({name}) > 1",
            at,
        )
        assert not dup, (name, dup)


def test_the_full_demo_page_passes_promtool(scraped: tuple[Prometheus, str]) -> None:
    promtool = require_binary("promtool")
    _, page = scraped
    # The full page: every finance family has samples, durations are in seconds.
    for name in (
        "aifinops_budget_exhaustion_seconds",
        "aifinops_roi_payback_seconds",
        "aifinops_cluster_budget_state",
        "aifinops_routing_score",
        "aifinops_tokens_total",
    ):
        assert f"\n{name}{{" in page, f"{name} has no sample on the demo page"
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=page.encode(), capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b""
