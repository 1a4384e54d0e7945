"""The finance step's closed-day cache (``FinanceState.closed``, ``FinanceState.infra``)
changes how often things are computed, never the figures: refresh after refresh across a
local midnight and a month boundary, with the month query answering anew now and then, the
step fed its own state gives what it gives when it folds everything again each time."""

from __future__ import annotations

import math
import random
import struct
from array import array
from dataclasses import replace
from datetime import datetime

import pytest

from aifinops.model.budgets import Budget
from aifinops.model.finance import (
    DayColumns,
    FinanceContext,
    FinanceInputs,
    FinanceReport,
    FinanceState,
    build_finance,
    exact_partials,
    infra_month,
)
from aifinops.model.inputs import AllocationSet, DailyAllocationSets
from aifinops.model.report import ModelState
from aifinops.model.roi import BenefitInputs, Initiative
from tests.model.builders import pricer, resolver
from tests.model.test_finance_model import DAY, daily, report_at

JULY = datetime.fromisoformat("2025-07-01T00:00:00+00:00").timestamp()
PARIS_JULY = datetime.fromisoformat("2025-07-01T00:00:00+02:00").timestamp()

# Every figure of the report but the lookups (functions, compared by identity).
FIGURES = (
    "infra_available",
    "month_to_date",
    "tenant_month_to_date",
    "budgets",
    "budget_notes",
    "cluster",
    "initiatives",
    "routing_window_seconds",
    "recommendations",
    "periods",
    "idle_cost_usd_per_hour",
    "books",
    "ledger_since",
)


def figures(f: FinanceReport) -> dict[str, object]:
    return {name: getattr(f, name) for name in FIGURES}


def uncached(state: FinanceState) -> FinanceState:
    """The state without its caches: the step folds every day and set again, and scans
    the daily ledger whole."""
    return replace(
        state, infra=None, closed=None, books=None, daily_kept_from=None, exporter_open=None
    )


def settled(old: DailyAllocationSets | None, new: DailyAllocationSets) -> DailyAllocationSets:
    """``new`` with ``old``'s set objects for the days that ended two days before."""
    if old is None:
        return new
    kept = {start: entry for start, *_ in old.sets for entry in [_entry(old, start)]}
    sets = tuple(
        kept[s[0]] if s[0] in kept and s[1] <= new.end - 2 * DAY and kept[s[0]][1] == s[1] else s
        for s in new.sets
    )
    return DailyAllocationSets(new.start, new.end, sets)


def _entry(monthly: DailyAllocationSets, start: float) -> tuple[float, float, AllocationSet]:
    return next(s for s in monthly.sets if s[0] == start)


def ctx_for(tz: str) -> FinanceContext:
    return FinanceContext(
        tz=tz,
        lookback_days=7,
        budgets=(
            Budget("a", 900.0),
            Budget("b", 1500.0, scope="gpu"),
            Budget("a", 40.0, scope="tokens"),
            Budget("__all__", 3000.0),
        ),
        initiatives=(
            Initiative("x", ("a", "b"), BenefitInputs(hours_saved=10, hourly_rate=30, headcount=3)),
        ),
    )


@pytest.mark.parametrize(("tz", "month_end"), [("UTC", JULY), ("Europe/Paris", PARIS_JULY)])
def test_cached_finance_equals_folding_everything_again(tz: str, month_end: float) -> None:
    ctx = ctx_for(tz)
    res = resolver()
    start = month_end - 2 * DAY - 1800  # 23:30 local, two days before the month ends
    # Every 20 minutes for 2.6 days: three local midnights, the last one the 1st.
    steps = [start + i * 1200.0 for i in range(int(2.6 * DAY / 1200))]
    model = ModelState()
    cached, fresh = FinanceState(), FinanceState()
    monthly: DailyAllocationSets | None = None
    reused = turned = 0
    tokens = {"a": 0.0, "b": 0.0}
    for i, now in enumerate(steps):
        # The month query answers anew every 9th refresh (its sets end when it ran), with
        # the very sets of days that settled two days before, as the month source keeps them.
        if i % 9 == 0:
            monthly = settled(
                monthly, daily(month_end - 40 * DAY, 41, now, {"a": 24.0 + i % 5, "b": 48.0})
            )
        report, model = report_at(now, model, {"a": 1.0 + (i % 3) / 10, "b": 2.0})
        # Token dollars the exporter counts (its own daily ledger), on a's and b's counters.
        tokens["a"] += 0.25
        tokens["b"] += 0.5 if i % 4 else 0.0
        accrued = dict(report.accrued)
        accrued |= {(t, "tokens", "allocation"): usd for t, usd in tokens.items()}
        report = replace(report, accrued=accrued)
        inputs = FinanceInputs(monthly=monthly)
        f_cached, next_cached = build_finance(report, inputs, ctx, res, pricer(), cached, now)
        f_fresh, fresh = build_finance(report, inputs, ctx, res, pricer(), uncached(fresh), now)
        assert figures(f_cached) == figures(f_fresh), f"step {i} at {now}"
        if cached.closed is not None:
            same_day = cached.closed.today == next_cached.closed.today  # type: ignore[union-attr]
            if next_cached.closed is cached.closed:
                reused += 1
            elif not same_day:
                turned += 1
        cached = next_cached
    # The cache did its work (most refreshes reuse the closed days) and was dropped at
    # each local midnight; the run crossed into the next month with data on both sides.
    assert reused > len(steps) // 2
    assert turned == 3
    assert f_cached.period == "2025-07"
    assert f_cached.budgets and f_cached.initiatives and f_cached.cluster is not None
    assert f_cached.month_to_date[("a", "tokens")] > 0


def test_a_fit_is_kept_while_the_closed_days_are() -> None:
    """Between month answers on one day, a budget's trend is fitted once: the forecast
    moves with today's spend and the hour, on the same slope."""
    ctx = ctx_for("UTC")
    now = JULY - 10 * DAY + 3600
    monthly = daily(JULY - 40 * DAY, 31, now, {"a": 24.0, "b": 48.0})
    report, model = report_at(now, ModelState(), {"a": 1.0, "b": 2.0})
    inputs = FinanceInputs(monthly=monthly)
    res = resolver()  # one tenancy: another one (a config reload) folds again
    f1, s1 = build_finance(report, inputs, ctx, res, pricer(), FinanceState(), now)
    later = now + 3 * 3600
    report2, _ = report_at(later, model, {"a": 1.0, "b": 2.0})
    f2, s2 = build_finance(report2, inputs, ctx, res, pricer(), s1, later)
    assert s2.closed is s1.closed and s1.closed is not None
    a1, a2 = f1.budgets[0], f2.budgets[0]
    assert a2.forecast.slope_usd_per_day == a1.forecast.slope_usd_per_day
    assert a2.spend_usd == pytest.approx(a1.spend_usd + 3.0)  # $1/h for three more hours
    assert a2.forecast_usd == pytest.approx(a1.forecast_usd)  # a flat trend: same month end


def test_a_new_month_answer_folds_only_the_days_whose_sets_changed() -> None:
    now = JULY - 10 * DAY + 3600
    res = resolver()
    first = daily(JULY - 40 * DAY, 31, now, {"a": 24.0, "b": 48.0})
    later = now + 600
    # The month source's next answer: the settled days' very sets, the last days anew.
    monthly = settled(first, daily(JULY - 40 * DAY, 31, later, {"a": 25.0, "b": 48.0}))
    old = infra_month(None, first, res, None, "UTC")
    new = infra_month(old, monthly, res, None, "UTC")
    fresh = infra_month(None, monthly, res, None, "UTC")
    assert (new.by_day, new.quantities, new.spans, new.start) == (
        fresh.by_day,
        fresh.quantities,
        fresh.spans,
        fresh.start,
    )
    refolded = sorted(d for d in new.days if new.days[d] is not old.days.get(d))
    # 01:10 on the 21st: the 19th, the 20th and today had not settled
    assert [d.day for d in refolded] == [19, 20, 21] and refolded[-1] == max(new.days)
    assert new.by_day[("a", "gpu")][refolded[0]] == pytest.approx(25.0)
    # another tenancy (a config reload) folds every day again
    other = infra_month(new, monthly, resolver(), None, "UTC")
    assert all(other.days[d] is not new.days[d] for d in new.days)


def test_exact_partials_sum_bit_for_bit_as_the_values_do() -> None:
    """A month's closed days summed once into partials give the very ``fsum`` the values
    give, with today's added: dollars of every magnitude, cancellations, 1e-17 cents."""
    rng = random.Random(16)
    for _ in range(2000):
        n = rng.randrange(0, 40)
        values = [rng.choice((1.0, -1.0, 1e-9, 1e6, 0.1)) * rng.random() for _ in range(n)]
        values += [0.1] * rng.randrange(3) + [1e16, -1e16][: rng.randrange(3)]
        today = rng.random() * rng.choice((1.0, 1e-12, 1e9))
        partials = exact_partials(values)
        assert math.fsum((*partials, today)) == math.fsum((*values, today))
        assert math.fsum(partials) == math.fsum(values)
        assert len(partials) <= max(1, len(values))


def _columns(parts: dict[tuple[str, str], list[float]]) -> DayColumns[tuple[str, str]]:
    """Each key's ``fsum``, as :class:`DayColumns` (as the day folds build them)."""
    return DayColumns(tuple(parts), array("d", map(math.fsum, parts.values())))


def test_day_columns_read_as_the_dict_of_fsums_they_replace() -> None:
    """A day fold's columns give the keys, values (bit for bit, signed zero and NaN
    included), look-ups and equality of ``{key: fsum(parts)}``, in the same order."""
    rng = random.Random(16)
    parts: dict[tuple[str, str], list[float]] = {}
    for _ in range(500):
        key = (f"t{rng.randrange(60)}", rng.choice(["gpu", "cpu", "ram"]))
        parts.setdefault(key, []).append(rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-12, 3))
    parts[("neg", "gpu")] = [-0.0]
    parts[("nan", "gpu")] = [math.nan, 1.0]
    want = {k: math.fsum(v) for k, v in parts.items()}
    got = _columns(parts)
    assert list(got) == list(want) and len(got) == len(want)
    pairs = list(got.items())
    assert [k for k, _ in pairs] == list(want)
    bits = [struct.pack("<d", v) for v in want.values()]
    assert [struct.pack("<d", v) for _, v in pairs] == bits
    assert [struct.pack("<d", v) for v in got.values()] == bits
    assert [struct.pack("<d", got[k]) for k in reversed(want)] == bits[::-1]
    assert ("neg", "gpu") in got and ("none", "gpu") not in got and got.get(("x", "y")) is None
    del want[("nan", "gpu")], parts[("nan", "gpu")]  # NaN is unequal to itself
    assert _columns(parts) == want and _columns(parts) != {**want, ("t0", "x"): 1.0}
    with pytest.raises(KeyError):
        got[("none", "gpu")]
