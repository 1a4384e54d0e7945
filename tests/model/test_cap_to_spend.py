"""``cap_to_spend`` reads a tenant's spend only when one of its recommendations saves
something, and the recommendations' monthly spend is summed per tenant when asked
(``finance.MonthlySpend``): the same answers as the cap and the sums before (kept below as
the oracle), on tenants with only budget warnings (0), negative, NaN and tiny savings, a
tenant without spend, and savings that must be scaled down."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from aifinops.model.finance import MonthlySpend
from aifinops.model.recommend import HOURS_PER_MONTH, Recommendation, cap_to_spend


def reference_cap(
    recommendations: Iterable[Recommendation], tenant_monthly_spend: Mapping[str, float]
) -> tuple[Recommendation, ...]:
    recs = list(recommendations)
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        by_tenant[r.tenant].append(i)
    for tenant, idx in by_tenant.items():
        spend = tenant_monthly_spend.get(tenant, 0.0)
        spend = spend if math.isfinite(spend) and spend > 0 else 0.0
        savings = [recs[i].saving_usd_per_month for i in idx]
        total = math.fsum(savings)
        if total <= spend:
            continue
        factor = spend / total
        while math.fsum(s * factor for s in savings) > spend:
            factor = math.nextafter(factor, 0.0)
        for i in idx:
            r = recs[i]
            recs[i] = replace(
                r,
                saving_usd_per_month=r.saving_usd_per_month * factor,
                evidence={**r.evidence, "scaled_by": factor},
            )
    return tuple(recs)


def rec(tenant: str, saving: float, kind: str = "idle_gpu") -> Recommendation:
    return Recommendation(tenant, kind, "s", saving, 1.0, "low", "x")  # type: ignore[arg-type]


def test_the_cap_is_the_same_as_reading_every_tenant() -> None:
    recs = [
        rec("warned", 0.0, "budget_at_risk"),
        rec("warned", -0.0, "budget_at_risk"),
        rec("a", 300.0),
        rec("a", 0.0, "budget_at_risk"),
        rec("a", 1e-300),
        rec("b", -5.0),
        rec("c", float("nan")),
        rec("nospend", 7.0),
        rec("fits", 1.0),
        rec("a", 0.1),
    ]
    rates = {
        ("a", "gpu"): 0.2,
        ("a", "cpu"): 0.01,
        ("b", "gpu"): 1.0,
        ("c", "ram"): 2.0,
        ("fits", "gpu"): 5.0,
        ("warned", "gpu"): 0.0,
    }
    spend: dict[str, list[float]] = defaultdict(list)
    for (tenant, _), r in rates.items():
        spend[tenant].append(r * HOURS_PER_MONTH)
    every = {t: math.fsum(v) for t, v in spend.items()}
    lazy = MonthlySpend(rates)
    assert dict(lazy) == every and len(lazy) == len(every)
    assert lazy.get("nospend", 0.0) == 0.0
    new, old = cap_to_spend(recs, lazy), reference_cap(recs, every)
    assert repr(new) == repr(old)
    assert any("scaled_by" in r.evidence for r in new)  # "a" was scaled down
