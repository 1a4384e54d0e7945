"""The finance step's reuse between refreshes (the token counters that did not move, the
books' API tokens while the volume holds, the closed days' columns, the recommendations'
inputs for the keys they read) gives what the reference step (tests/model/finance_reference.py)
gives, refresh after refresh with both fed their own states: across a local midnight and a
month boundary, a config reload (budgets, initiatives and right-sizing GPUs changed), the
month source stale or absent, the token source absent, and token counters that hold, move,
reset and appear. Figures are compared by ``repr`` (dict order, NaN and the sign of zero
included)."""

from __future__ import annotations

from dataclasses import replace

import msgspec
import pytest

from aifinops.demo.cluster import SimCluster
from aifinops.model import finance
from aifinops.model.budgets import Budget
from aifinops.model.cost import tenant_of
from aifinops.model.inputs import Allocation, AllocationSet, DailyAllocationSets, Inputs
from aifinops.model.recommend import GpuSpec
from aifinops.model.report import ModelState, Report, build_report
from aifinops.model.roi import BenefitInputs, Initiative
from aifinops.model.tokens import TokenReport
from tests.model import finance_reference as reference
from tests.model.builders import A100, H100, L4, context, pricer, resolver, small_cluster
from tests.model.test_finance_cache import settled
from tests.model.test_finance_fast_paths import (
    NOVEMBER,
    awkward_month,
    awkward_row,
    figures,
    orders,
    sim,
    sim_month,
)
from tests.model.test_finance_model import DAY, daily, report_at

_ROWS, GPUS = small_cluster()
__all__ = ["sim"]  # the demo cluster fixture, shared
TENANTS = ("alpha", "beta", "team-gamma", "ml-research", "__idle__")


def contexts(tz: str) -> tuple[finance.FinanceContext, finance.FinanceContext]:
    """The configuration before and after a reload: budgets changed (amounts, one scope,
    one added, one removed), initiatives changed, right-sizing given GPUs to move to."""
    before = finance.FinanceContext(
        tz=tz,
        lookback_days=7,
        budgets=(
            Budget("__all__", 400.0),
            Budget("alpha", 30.0),
            Budget("beta", 5.0, scope="gpu"),
            Budget("team-gamma", 1.0, scope="tokens"),
            Budget("nobody", 10.0),
        ),
        initiatives=(Initiative("x", ("alpha",), BenefitInputs(hours_saved=5, hourly_rate=40)),),
    )
    after = replace(
        before,
        budgets=(
            Budget("__all__", 300.0),
            Budget("__all__", 90.0, scope="gpu"),
            Budget("alpha", 20.0, scope="gpu"),
            Budget("team-gamma", 2.0, scope="tokens"),
            Budget("ml-research", 3.0),
        ),
        initiatives=(
            Initiative("x", ("alpha", "beta"), BenefitInputs(hours_saved=6, hourly_rate=40)),
            Initiative("y", ("team-gamma",), BenefitInputs(hours_saved=1, hourly_rate=10)),
        ),
        gpu_specs=(
            GpuSpec(H100, 4.0, 80.0),
            GpuSpec(A100, 2.0, 80.0, ("1g.10gb", "3g.40gb")),
            GpuSpec(L4, 1.5, 24.0),
        ),
    )
    return before, after


def token_report(i: int) -> TokenReport | None:
    """Cumulative tokens per (tenant, model, provider, type) at step ``i``: absent every
    ninth step (the source down), every counter held from step 11 to 14 (while the model
    beta sends to turns measured at 12: its tokens leave the API tokens), one reset at 20,
    a key appearing at 8."""
    if i % 9 == 4:
        return None
    n = float(min(i, 11) + max(0, i - 14)) * 100
    tokens = {
        ("alpha", "gpt-4o", "openai", "input"): n * 3,
        ("alpha", "gpt-4o", "openai", "output"): n / 4,
        ("beta", "llama-3", "vllm", "input"): n * 7,
        ("team-gamma", "gpt-4o", "openai", "input"): n if i != 20 else 10.0,  # a reset
    }
    if i > 7:
        tokens[("ml-research", "claude", "anthropic", "input")] = n * 2
    prices = {("gpt-4o", "openai", "input", "price_list"): 2.5}
    if i >= 12:
        prices[("llama-3", "vllm", "input", "measured")] = 0.1
        prices[("llama-3", "vllm", "output", "measured")] = 0.2
    return TokenReport(
        tokens=tokens,
        cost={},
        unpriced={},
        prices=prices,
        api_equivalent={},
        api_cost={},
        api_cost_rate={},
        self_hosted={},
        catalog_version=None,
    )


def rows_at(i: int) -> list[Allocation]:
    """small_cluster's rows, costs moving from refresh to refresh, one GPU pod labelled
    fault-tolerant (a spot candidate) from step 5."""
    rows = []
    for row in _ROWS:
        if row.pod == "a" and i >= 5:
            row = msgspec.structs.replace(
                row, labels={**row.labels, "aifinops.io/fault-tolerant": "true"}
            )
        rows.append(msgspec.structs.replace(row, gpu_cost=row.gpu_cost * (1 + (i % 5) / 10)))
    return rows


def month_sets(start: float, now: float, answer: int) -> DailyAllocationSets:
    """OpenCost's daily sets, each answer's dollars a little different (every day's)."""
    usd = {"alpha": 24.0 + answer / 3, "beta": 48.0 - answer / 7}
    return daily(start, int((now - start) // DAY) + 1, now, usd)


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris"])
def test_chained_refreshes_give_the_reference_figures(tz: str) -> None:
    month_end = NOVEMBER[tz]
    first = month_end - 9 * DAY
    steps = [month_end - DAY / 2 + k * 2400.0 for k in range(48)]  # a month and a midnight
    reload_at, stale, absent = 20, range(10, 14), range(30, 33)
    before, after = contexts(tz)
    res = resolver()
    new_state, old_state = finance.FinanceState(), reference.FinanceState()
    model = ModelState()
    monthly: DailyAllocationSets | None = None
    kinds: set[str] = set()
    for i, now in enumerate(steps):
        ctx = after if i >= reload_at else before
        if i % 6 == 0:  # the month query answers anew
            monthly = month_sets(first, now, i // 6)
        # Stale: the previous answer is kept (the same object); absent: none.
        month = None if i in absent else monthly
        if i in stale and monthly is not None:
            month = DailyAllocationSets(monthly.start, monthly.end, monthly.sets)
        allocations = AllocationSet(1.0, tuple(rows_at(i)))
        report, model = build_report(Inputs(GPUS, allocations), context(), model, now)
        accrued = dict(report.accrued)
        accrued[("alpha", "tokens", "allocation")] = 0.25 * i
        moved = {("beta", "gpu"): 0.5 + i % 3, ("alpha", "cpu"): -0.25}
        report = replace(
            report, accrued=accrued, charge_back={"allocation": moved}, tokens=token_report(i)
        )
        inputs = finance.FinanceInputs(monthly=month, allocations=allocations)
        new, new_state = finance.build_finance(report, inputs, ctx, res, pricer(), new_state, now)
        old, old_state = reference.build_finance(report, inputs, ctx, res, pricer(), old_state, now)
        assert figures(new) == figures(old), f"step {i} at {now}"
        assert orders(new) == orders(old), f"step {i} at {now}"
        assert new.infra_available is (month is not None)
        kinds |= {r.kind for r in new.recommendations}
    assert isinstance(report, Report)
    # The run reached what it is about: right-sizing after the reload, budget risks.
    assert {"rightsize", "budget_at_risk", "spot"} <= kinds, kinds


def without(report: Report, tenant: str) -> Report:
    """``report`` with ``tenant``'s cost rates left out and a tenant counted as folded: the
    finance step then folds ``tenant``'s month into ``__other__`` (as when it fell below
    the report's cut-off)."""
    rates = {
        b: {k: v for k, v in r.items() if k[0] != tenant} for b, r in report.cost.rates.items()
    }
    return replace(report, cost=replace(report.cost, rates=rates, folded_tenants=1))


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris"])
def test_published_tenants_moving_give_the_reference_figures(sim: SimCluster, tz: str) -> None:
    """The demo cluster's month (many rows per tenant and day) while the tenant folded into
    __other__ changes from refresh to refresh (none, one, another, two, none again)."""
    month_end = NOVEMBER[tz]
    first = month_end - 8 * DAY
    steps = [month_end - DAY / 3 + k * 3000.0 for k in range(14)]
    monthly = sim_month(sim, first, steps[0])
    rows = [row for _, _, s in monthly.sets for row in s.allocations]
    tenants = sorted({tenant_of(row, resolver()) for row in rows} - {"__idle__"})
    assert len(tenants) > 3
    ctx = replace(contexts(tz)[0], budgets=tuple(Budget(t, 40.0) for t in tenants))
    res = resolver()
    new_state, old_state = finance.FinanceState(), reference.FinanceState()
    model = ModelState()
    plan = [(), (tenants[0],), (tenants[1],), (tenants[1],), (tenants[0], tenants[2]), ()]
    folded_any = False
    for i, now in enumerate(steps):
        if i % 5 == 4:
            monthly = settled(monthly, sim_month(sim, first, now))
        report, model = report_at(now, model, {t: 1.0 + i % 3 for t in tenants})
        for tenant in plan[i % len(plan)]:
            report = without(report, tenant)
        inputs = finance.FinanceInputs(monthly=monthly)
        new, new_state = finance.build_finance(report, inputs, ctx, res, pricer(), new_state, now)
        old, old_state = reference.build_finance(report, inputs, ctx, res, pricer(), old_state, now)
        assert figures(new) == figures(old), f"step {i} at {now}"
        assert orders(new) == orders(old), f"step {i} at {now}"
        folded_any |= ("__other__", "gpu") in new.month_to_date
    assert folded_any


def awkward_with_other(start: float, now: float) -> DailyAllocationSets:
    """:func:`awkward_month` (NaN, 1e15 and subnormal costs, a tenant named like the global
    budget, keys that come and go, a day without rows, a missing day) plus a row booked to
    __other__ itself each day (what a folded tenant is merged with)."""
    month = awkward_month(start, now)
    sets = []
    for begin, end, s in month.sets:
        row = awkward_row("ns/o", "__other__", gpu_cost=0.7, cpu_cost=0.1, gpu_hours=3.0)
        sets.append((begin, end, AllocationSet(s.window_hours, (*s.allocations, row))))
    return DailyAllocationSets(month.start, month.end, tuple(sets))


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris"])
def test_awkward_sets_with_moving_folds_give_the_reference_figures(tz: str) -> None:
    month_end = NOVEMBER[tz]
    first = month_end - 10 * DAY
    steps = [month_end - DAY / 4 + k * 2700.0 for k in range(16)]
    tenants = ["t1", "t2", "t3", "__all__"]
    ctx = replace(contexts(tz)[0], budgets=tuple(Budget(t, 40.0) for t in tenants))
    res = resolver()
    new_state, old_state = finance.FinanceState(), reference.FinanceState()
    model = ModelState()
    plan = [("t1",), ("t1",), (), ("t3", "__all__"), ("t2",), ("t2", "t3")]
    monthly = awkward_with_other(first, steps[0])
    for i, now in enumerate(steps):
        if i % 6 == 5:
            monthly = settled(monthly, awkward_with_other(first, now))
        report, model = report_at(now, model, {t: 1.0 + i % 2 for t in tenants})
        for tenant in plan[i % len(plan)]:
            report = without(report, tenant)
        inputs = finance.FinanceInputs(monthly=monthly)
        new, new_state = finance.build_finance(report, inputs, ctx, res, pricer(), new_state, now)
        old, old_state = reference.build_finance(report, inputs, ctx, res, pricer(), old_state, now)
        assert figures(new) == figures(old), f"step {i} at {now}"
        assert orders(new) == orders(old), f"step {i} at {now}"
