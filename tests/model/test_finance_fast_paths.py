"""The finance step's columnar paths (the month's day folds without a dict per row, each
budget's forecast fit from its scope's own columns, the books summed from columns, today's
part one fsum per key) give exactly what the finance step gave before them, kept in
tests/model/finance_reference.py as the oracle: refresh after refresh on the same inputs,
across local midnights, a month boundary and a daylight-saving change, on the demo
cluster's OpenCost answers read by the month parser and on awkward hand-made sets. Figures
are compared by ``repr`` (dict order, NaN and the sign of zero included)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType

import msgspec
import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.model import finance
from aifinops.model.budgets import Budget
from aifinops.model.cost import _resource_costs, tenant_of
from aifinops.model.inputs import Allocation, AllocationSet, DailyAllocationSets, Inputs
from aifinops.model.report import ModelState, Report, build_report
from aifinops.model.roi import BenefitInputs, Initiative
from aifinops.sources.opencost import parse_allocation_sets
from tests.model import finance_reference as reference
from tests.model.builders import context, pricer, resolver, small_cluster
from tests.model.test_finance_cache import FIGURES, settled
from tests.model.test_finance_model import DAY, report_at

# 2025-11-01 00:00 local: the month turns inside the run; in Paris the clocks went back on
# 2025-10-26, inside the forecasts' look-back.
NOVEMBER = {
    "UTC": datetime.fromisoformat("2025-11-01T00:00:00+00:00").timestamp(),
    "Europe/Paris": datetime.fromisoformat("2025-11-01T00:00:00+01:00").timestamp(),
}


def figures(f: object) -> dict[str, str]:
    return {name: repr(getattr(f, name)) for name in (*FIGURES, "routing", "monthly_tokens")}


def orders(f: finance.FinanceReport) -> list[object]:
    """The order of the keyed figures (what the exposition and the API walk)."""
    return [
        list(f.month_to_date),
        list(f.tenant_month_to_date),
        [(m, list(b.dollars), list(b.quantities)) for m, b in f.books.items()],
    ]


def ctx_for(tz: str, tenants: list[str]) -> finance.FinanceContext:
    budgets = [Budget("__all__", 5000.0), Budget("__all__", 900.0, scope="gpu")]
    for i, t in enumerate(tenants):
        budgets.append(Budget(t, 50.0 + 40 * i, scope=("all", "gpu", "tokens")[i % 3]))
    budgets.append(Budget("nobody", 10.0))
    return finance.FinanceContext(
        tz=tz,
        lookback_days=10,
        budgets=tuple(budgets),
        initiatives=(
            Initiative("x", (*tenants[:2], "a"), BenefitInputs(hours_saved=5, hourly_rate=40)),
        ),
    )


def run_both(
    tz: str,
    steps: list[float],
    monthly_at: dict[int, DailyAllocationSets],
    tenants: list[str],
    fold_tenants: bool = False,
    spot: bool = False,
) -> int:
    """Both finance steps fed their own states over ``steps`` (the month query answering
    anew at the steps of ``monthly_at``); returns how many steps compared."""
    ctx, res = ctx_for(tz, tenants), resolver()
    new_state, old_state = finance.FinanceState(), reference.FinanceState()
    model = ModelState()
    monthly: DailyAllocationSets | None = None
    tokens = {"a": 0.0, tenants[0]: 0.0}
    for i, now in enumerate(steps):
        monthly = monthly_at.get(i, monthly)
        allocations = None
        if spot:  # a cluster with GPUs and fault-tolerant pods: spot candidates
            allocations = spot_cluster_rows(i)
            report, model = build_report(Inputs(SPOT_GPUS, allocations), context(), model, now)
        else:
            report, model = report_at(now, model, {"a": 1.0 + (i % 3) / 10, "b": 2.0})
        tokens["a"] += 0.25
        tokens[tenants[0]] += 0.5 if i % 4 else 0.0
        accrued = dict(report.accrued)
        accrued |= {(t, "tokens", "allocation"): usd for t, usd in tokens.items()}
        # Self-hosted charge-back moved onto keys OpenCost books too (the exporter's own
        # daily ledger and OpenCost's folds meet on a closed day).
        moved = {(tenants[0], "gpu"): 0.5 + i % 3, (tenants[1], "cpu"): -0.25, ("a", "ram"): 0.1}
        report = replace(report, accrued=accrued, charge_back={"allocation": moved})
        if fold_tenants:  # the report folds all but its own tenants into __other__
            report = replace(report, cost=replace(report.cost, folded_tenants=3))
        inputs = finance.FinanceInputs(monthly=monthly, allocations=allocations)
        new, new_state = finance.build_finance(report, inputs, ctx, res, pricer(), new_state, now)
        old, old_state = reference.build_finance(report, inputs, ctx, res, pricer(), old_state, now)
        assert figures(new) == figures(old), f"step {i} at {now}"
        assert orders(new) == orders(old), f"step {i} at {now}"
    assert isinstance(report, Report) and new.budgets and new.books
    kinds = {r.kind for r in new.recommendations}
    assert "budget_at_risk" in kinds and (not spot or "spot" in kinds), kinds
    return len(steps)


_ROWS, SPOT_GPUS = small_cluster()


def spot_cluster_rows(i: int) -> AllocationSet:
    """small_cluster's rows, two GPU pods labelled fault-tolerant (the raw key and the
    sanitized one), costs moving from refresh to refresh."""
    rows = []
    for row in _ROWS:
        if row.pod in ("a", "b1"):
            key = "aifinops.io/fault-tolerant" if row.pod == "a" else "aifinops_io_fault_tolerant"
            row = msgspec.structs.replace(row, labels={**row.labels, key: "true"})
        rows.append(msgspec.structs.replace(row, gpu_cost=row.gpu_cost * (1 + (i % 4) / 8)))
    return AllocationSet(1.0, tuple(rows))


ANSWERS: dict[tuple[float, float], list[object]] = {}


def sim_month(sim: SimCluster, start: float, now: float) -> DailyAllocationSets:
    """OpenCost's daily sets from ``start`` to ``now`` as the demo cluster answers them,
    through the month source's parser (the last set partial)."""
    data = []
    day = start
    while day < now:
        end = min(day + DAY, now)
        key = (end, (end - day) / 3600.0)
        if key not in ANSWERS:  # a settled day's answer is the same each time
            ANSWERS[key] = sim.opencost_allocation(*key)["data"]
        data += ANSWERS[key]
        day = end
    body = json.dumps({"code": 200, "status": "success", "data": data}).encode()
    return parse_allocation_sets(body, start, now)


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    return SimCluster(ClusterSpec.scaled(40))


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris"])
@pytest.mark.parametrize(("fold_tenants", "spot"), [(False, False), (True, False), (False, True)])
def test_demo_cluster_month_gives_the_reference_figures(
    sim: SimCluster, tz: str, fold_tenants: bool, spot: bool
) -> None:
    month_end = NOVEMBER[tz]
    first = month_end - 12 * DAY
    start = month_end - DAY - 1800  # 23:30 local, the day before the month ends
    steps = [start + i * 3000.0 for i in range(int(1.6 * DAY / 3000))]
    monthly_at: dict[int, DailyAllocationSets] = {}
    previous: DailyAllocationSets | None = None
    for i, now in enumerate(steps):
        if i % 7 == 0:
            previous = monthly_at[i] = settled(previous, sim_month(sim, first, now))
    rows = [row for _, _, s in monthly_at[0].sets for row in s.allocations]
    tenants = sorted({tenant_of(row, resolver()) for row in rows})
    assert len(tenants) > 3 and "__idle__" in tenants
    assert run_both(tz, steps, monthly_at, tenants, fold_tenants, spot) > 40


def awkward_row(name: str, tenant: str | None, **costs: float) -> Allocation:
    labels = {"aifinops_io_tenant": tenant} if tenant is not None else {}
    return Allocation(
        name=name,
        namespace=name.split("/")[0],
        pod=name.split("/")[-1],
        node="n1",
        minutes=1440.0,
        labels=labels,
        **costs,
    )


def awkward_month(start: float, now: float) -> DailyAllocationSets:
    """Daily sets an exporter may meet: a tenant named like the global budget, two pods of
    one tenant on a day, keys that come and go (days whose keys differ in set and order),
    a day without rows, a missing day, NaN and extreme costs, usage without cost, idle and
    unallocated rows, and a partial last day split in two sets."""
    sets: list[tuple[float, float, AllocationSet]] = []
    day, i = start, 0
    while day < now:
        end = min(day + DAY, now)
        rows = [
            awkward_row("ns/p1", "t1", gpu_cost=10.0 + i, cpu_cost=0.1 * i, gpu_hours=24.0),
            awkward_row("ns/p2", "t1", gpu_cost=1e-300, ram_cost=5e-324, ram_byte_hours=2.0**40),
            awkward_row("ns/glob", "__all__", cpu_cost=3.0, network_cost=1e15),
            awkward_row("__idle__", None, gpu_cost=7.5, cpu_cost=1.25),
            awkward_row("__unallocated__", None, shared_cost=0.3, external_cost=0.7),
        ]
        if i % 3 == 0:
            rows.insert(0, awkward_row("ns/p3", "t2", gpu_cost=2.0, pv_cost=0.5))
        if i % 5 == 1:
            rows.append(awkward_row("ns/p4", "t3", cpu_cost=float("nan"), cpu_core_hours=3.0))
        if i % 4 == 2:
            rows.reverse()
        if i == 3:
            rows = []  # a day OpenCost answered without rows
        if i != 6:  # a day missing from the answer
            if end == now and end - day > 3600:
                mid = day + (end - day) / 2
                sets.append((day, mid, AllocationSet((mid - day) / 3600, tuple(rows[:2]))))
                sets.append((mid, end, AllocationSet((end - mid) / 3600, tuple(rows[2:]))))
            elif i % 2:
                sets.append((day, end, AllocationSet((end - day) / 3600, tuple(rows))))
            else:  # as the month source holds them
                sets.append((day, end, AllocationSet.columnar((end - day) / 3600, rows)))
        day, i = end, i + 1
    return DailyAllocationSets(start, now, tuple(sets))


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris"])
def test_awkward_sets_give_the_reference_figures(tz: str) -> None:
    month_end = NOVEMBER[tz]
    first = month_end - 12 * DAY
    start = month_end - DAY - 2400
    steps = [start + i * 3000.0 for i in range(int(1.5 * DAY / 3000))]
    monthly_at: dict[int, DailyAllocationSets] = {}
    previous: DailyAllocationSets | None = None
    for i, now in enumerate(steps):
        if i % 5 == 0:
            previous = monthly_at[i] = settled(previous, awkward_month(first, now))
    assert run_both(tz, steps, monthly_at, ["t1", "t2", "t3", "__all__"]) > 40


def test_row_tuples_read_as_the_cost_model_reads_rows(sim: SimCluster) -> None:
    """The fold's tuples of a row are cost.py's ``_resource_costs`` and the books' usage."""
    rows = [*sim_month(sim, NOVEMBER["UTC"] - DAY, NOVEMBER["UTC"]).sets[0][2].allocations]
    rows.append(awkward_row("ns/x", "t", network_cost=1.0, load_balancer_cost=2.0))
    for row in rows:
        assert dict(zip(finance.COST_RESOURCES, finance._row_costs(row), strict=True)) == (
            _resource_costs(row)
        )
        assert dict(
            zip(finance.QUANTITY_RESOURCES, finance._row_quantity_values(row), strict=True)
        ) == (finance._row_quantities(row))
    assert any(finance._row_costs(r)[0] for r in rows) and math.isfinite(rows[0].cpu_cost)


def test_the_daily_ledger_is_pruned_as_the_reference_prunes_it() -> None:
    """The daily ledger is pruned once per oldest day kept (then copied as it is): a
    restored ledger with days long gone, and one whose oldest day falls out at midnight,
    keep what the reference keeps, refresh after refresh."""
    tz = "UTC"
    ctx = ctx_for(tz, ["a", "b", "c"])
    start = NOVEMBER[tz] - 3600.0  # the last hour of October, then November's first
    today = finance.local_date(start, tz)
    keep_from = finance.exporter_daily_keep_from(today, ctx.lookback_days, ctx.books_months)
    ledger = {
        (t, r, keep_from + timedelta(days=offset)): 1.0 + offset
        for t in ("a", "b")
        for r in ("tokens", "gpu")
        for offset in (-200, -1, 0, 1, 5, 30)
    }
    new_state = finance.FinanceState(last_now=start - 30.0, exporter_daily=ledger)
    old_state = reference.FinanceState(last_now=start - 30.0, exporter_daily=ledger)
    model = ModelState()
    kept = []
    for i in range(8):
        now = start + i * 900.0
        report, model = report_at(now, model, {"a": 1.0, "b": 2.0})
        accrued = {**report.accrued, ("a", "tokens", "allocation"): 0.5 * (i + 1)}
        report = replace(report, accrued=accrued)
        inputs = finance.FinanceInputs()
        new, new_state = finance.build_finance(
            report, inputs, ctx, resolver(), pricer(), new_state, now
        )
        old, old_state = reference.build_finance(
            report, inputs, ctx, resolver(), pricer(), old_state, now
        )
        assert repr(new_state.exporter_daily) == repr(old_state.exporter_daily), f"step {i}"
        assert figures(new) == figures(old), f"step {i}"
        kept.append(min(k[2] for k in new_state.exporter_daily))
    # The 200-day-old days went at once; the oldest day kept moved at midnight.
    assert kept[0] == keep_from and kept[-1] > keep_from


def test_a_week_of_utilization_peaks_gives_the_reference_figures() -> None:
    """A state holding a week of hourly peaks (restored: not dicts) whose oldest hours
    expire, peaks that rise and that do not: the kept extremes give the reference's
    rightsizing and peaks, refresh after refresh."""
    tz = "UTC"
    ctx = ctx_for(tz, ["alpha", "beta", "research"])
    start = NOVEMBER[tz] + 5 * 3600.0 + 600.0
    hour = math.floor(start / 3600.0)
    model = ModelState()
    report, model = build_report(Inputs(SPOT_GPUS, spot_cluster_rows(0)), context(), model, start)
    peaks = {
        key: MappingProxyType({h: 0.1 + (h % 5) / 10 for h in range(hour - 168, hour)})
        for key in report.gpu_stats
    }
    since = {key: start - 7 * 86400.0 for key in report.gpu_stats}
    new_state = finance.FinanceState(last_now=start - 30, util_peaks=peaks, util_since=since)
    old_state = reference.FinanceState(last_now=start - 30, util_peaks=peaks, util_since=since)
    for i in range(12):
        now = start + i * 1200.0
        if i == 7:  # other peaks put in the states (as a restore would): none reused stale
            this_hour = math.floor(now / 3600.0)
            other = {
                k: {hour - 200: 0.9, **p, this_hour: 1.0} for k, p in new_state.util_peaks.items()
            }
            new_state = replace(new_state, util_peaks=other)
            old_state = replace(old_state, util_peaks=other)
        allocations = spot_cluster_rows(i)
        gpus = [replace(g, utilization=min(1.0, g.utilization * (1 + i % 3))) for g in SPOT_GPUS]
        report, model = build_report(Inputs(gpus, allocations), context(), model, now)
        inputs = finance.FinanceInputs(allocations=allocations)
        new, new_state = finance.build_finance(
            report, inputs, ctx, resolver(), pricer(), new_state, now
        )
        old, old_state = reference.build_finance(
            report, inputs, ctx, resolver(), pricer(), old_state, now
        )
        assert figures(new) == figures(old), f"step {i}"
        assert repr(new_state.util_peaks) == repr(old_state.util_peaks), f"step {i}"
    # The week's oldest hours expired and this hour's peaks came in, for every key.
    last = math.floor(now / 3600.0)
    assert all(min(h) > hour - 168 and max(h) == last for h in new_state.util_peaks.values())
