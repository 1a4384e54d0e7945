"""The books of record per calendar month (:func:`period_books`), table-driven from literal
daily sets: a past month is OpenCost's dollars plus the exporter's own for its days, the
month in progress is the month to date itself, a month OpenCost holds only part of is left
out, quantities are OpenCost's usage fields in FOCUS units."""

from __future__ import annotations

from datetime import date

import pytest

from aifinops.model.finance import GIB, infra_month, period_books
from aifinops.model.inputs import Allocation, AllocationSet, DailyAllocationSets
from aifinops.model.tenancy import TenantResolver

DAY = 86400.0
MAY_1 = 1_746_057_600.0  # 2025-05-01T00:00:00Z
JUNE_1 = 1_748_736_000.0
NOW = JUNE_1 + 2.5 * DAY
RESOLVER = TenantResolver(pod_keys=(), namespace_keys=(), namespaces={"ml": "ml"}, patterns=())


def day_set(start: float, end: float, gpu_usd: float) -> tuple[float, float, AllocationSet]:
    hours = (end - start) / 3600.0
    rows = (
        Allocation(
            name="ml/p",
            namespace="ml",
            pod="p",
            node=None,
            minutes=hours * 60,
            gpu_cost=gpu_usd,
            cpu_cost=1.0,
            gpu_hours=2 * hours,
            cpu_core_hours=4 * hours,
            ram_byte_hours=GIB * hours,
        ),
        Allocation(name="__idle__", namespace=None, pod=None, node=None, minutes=0, gpu_cost=0.5),
    )
    return (start, end, AllocationSet(hours, rows))


def sets(start: float, end: float) -> DailyAllocationSets:
    out = []
    t = start
    while t < end:
        out.append(day_set(t, min(t + DAY, end), 10.0))
        t += DAY
    return DailyAllocationSets(start, end, tuple(out))


def books_of(monthly: DailyAllocationSets, exporter: dict) -> dict:
    infra = infra_month(None, monthly, RESOLVER, None, "UTC")
    by_day: dict = {k: dict(v) for k, v in infra.by_day.items()}
    for (tenant, resource, day), usd in exporter.items():
        by_day.setdefault((tenant, resource), {})
        by_day[(tenant, resource)][day] = by_day[(tenant, resource)].get(day, 0.0) + usd
    mtd = {("ml", "gpu"): 123.0}  # stands for the month to date: taken as it is
    return period_books(infra, by_day, mtd, "2025-06", NOW, {"ml": 5000.0})


def test_a_past_month_is_opencosts_dollars_plus_the_exporters_for_its_days() -> None:
    books = books_of(sets(MAY_1, NOW), {("ml", "tokens", date(2025, 5, 20)): 7.5})
    may = books["2025-05"]
    assert may.dollars[("ml", "gpu")] == pytest.approx(31 * 10.0)
    assert may.dollars[("ml", "cpu")] == pytest.approx(31 * 1.0)
    assert may.dollars[("__idle__", "gpu")] == pytest.approx(31 * 0.5)
    assert may.dollars[("ml", "tokens")] == 7.5
    assert (may.covered_start, may.covered_end) == (MAY_1, JUNE_1)
    q = may.quantities
    assert (q[("ml", "gpu")].value, q[("ml", "gpu")].unit) == (
        pytest.approx(31 * 48.0),
        "GPU-Hours",
    )
    assert q[("ml", "cpu")].unit == "Core-Hours" and q[("ml", "cpu")].value == pytest.approx(
        31 * 96.0
    )
    assert (q[("ml", "ram")].value, q[("ml", "ram")].unit) == (
        pytest.approx(31 * 24.0),
        "GiB-Hours",
    )
    assert ("ml", "tokens") not in q  # token counts are kept for the month in progress only


def test_the_month_in_progress_is_the_month_to_date() -> None:
    june = books_of(sets(MAY_1, NOW), {})["2025-06"]
    assert june.dollars == {("ml", "gpu"): 123.0}
    assert (june.covered_start, june.covered_end) == (JUNE_1, NOW)
    assert june.quantities[("ml", "tokens")].value == 5000.0
    assert june.quantities[("ml", "gpu")].value == pytest.approx(2.5 * 48.0)


def test_a_month_opencost_holds_only_part_of_is_left_out() -> None:
    # the look-back reaching back into May, or OpenCost's retention ending mid-May
    books = books_of(sets(MAY_1 + 20 * DAY, NOW), {})
    assert set(books) == {"2025-06"}


def test_books_reused_from_the_same_sets_are_the_books_computed_again() -> None:
    monthly = sets(MAY_1, NOW)
    infra = infra_month(None, monthly, RESOLVER, None, "UTC")
    by_day = infra.by_day
    first = period_books(infra, by_day, {("ml", "gpu"): 1.0}, "2025-06", NOW, {"ml": 10.0})
    # a refresh later: the month to date and the token count moved, the sets did not
    again = period_books(
        infra, by_day, {("ml", "gpu"): 2.0}, "2025-06", NOW + 60, {"ml": 20.0}, first
    )
    fresh = period_books(infra, by_day, {("ml", "gpu"): 2.0}, "2025-06", NOW + 60, {"ml": 20.0})
    assert again == fresh
    assert again["2025-05"] is first["2025-05"]
    assert again["2025-06"].quantities[("ml", "tokens")].value == 20.0
