"""Measured energy per tenant, its cost and its carbon (model/energy.py, issue 17 items 2-3)."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest import approx

from aifinops.exposition.families import energy_families
from aifinops.model.cost import attribute_costs
from aifinops.model.energy import (
    EnergyBudget,
    EnergyContext,
    EnergyState,
    Schedule,
    TimeWindow,
    account_energy,
    split_energy,
)
from aifinops.model.inputs import AllocationSet, EnergyReadings, GpuEnergy
from aifinops.model.report import ModelState, build_report
from aifinops.settings import ConfigError, settings_from_mapping
from tests.model.builders import A100, H100, context, gpu, idle_row, pod, pricer, resolver

UTC = ZoneInfo("UTC")


def shares_of(allocs, gpus):
    return attribute_costs(
        AllocationSet(1.0, tuple(allocs)), tuple(gpus), resolver(), pricer()
    ).shares


def mixed_cluster():
    """An exclusive H100 (alpha, 40 %), a time-sliced H100 (4 replicas: a 37 %, b 10 %), an
    A100 with a 3g slice (research, 50 %) and a free 1g slice, and an H100 nobody holds."""
    allocs = [
        pod("team-alpha", "x", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0),
        pod("team-a", "a", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
        pod("team-b", "b", gpu_cost=1.0, gpu_count=0.25, gpu_hours=0.25),
        pod("ml-research", "c", gpu_cost=2.0, gpu_count=3 / 7, gpu_hours=3 / 7),
        idle_row(gpu_cost=10.0),
    ]
    gpus = [
        gpu("G-excl", H100, 0.40, "team-alpha", "x"),
        gpu("G-ts", H100, 0.37, "team-a", "a"),
        gpu("G-ts", H100, 0.10, "team-b", "b"),
        gpu("G-mig", A100, 0.5, "ml-research", "c", mig="3g.40gb", mig_id="1"),
        gpu("G-mig", A100, 0.0, mig="1g.10gb", mig_id="2"),
        gpu("G-free", H100, 0.0),
    ]
    return allocs, gpus


def test_split_exclusive_time_sliced_and_mig_by_the_usage_basis_shares():
    allocs, gpus = mixed_cluster()
    shares = shares_of(allocs, gpus)
    by_pod = {s.idle_key[3]: s for s in shares}
    # The usage basis' shares of the device that the split reads.
    assert (by_pod["a"].used, by_pod["b"].used) == (approx(0.37), approx(0.10))
    assert by_pod["b"].held == approx(0.25)
    readings = EnergyReadings(
        0.0,
        60.0,
        (
            GpuEnergy("G-excl", 30_000.0),
            GpuEnergy("G-ts", 20_000.0),
            GpuEnergy("G-mig", 14_000.0),
            GpuEnergy("G-free", 5_000.0, "power"),
        ),
    )
    split = split_energy(readings, shares)
    # Exclusive: all of it to its holder (used 40 % + unused 60 %).
    assert split["alpha"] == approx(30_000.0)
    # Time-sliced: A 0.37 x 20 kJ; B 0.10 + 0.15 unused; the two free replicas' rest idle.
    assert split["a"] == approx(7_400.0)
    assert split["b"] == approx(5_000.0)
    # MIG 3g of 7: used 3/7 x 0.5, unused 3/7 x 0.5 -> 3/7 of the device.
    assert split["research"] == approx(14_000.0 * 3 / 7)
    idle = 20_000.0 - 12_400.0 + 14_000.0 * 4 / 7 + 5_000.0
    assert split["__idle__"] == approx(idle)
    assert math.fsum(split.values()) == approx(69_000.0, rel=1e-12)


def test_a_hold_whose_pod_matches_no_rule_is_unallocated_energy():
    allocs = [pod("default", "d", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0)]
    shares = shares_of(allocs, [gpu("G", H100, 0.5, "default", "d")])
    split = split_energy(EnergyReadings(0, 60, (GpuEnergy("G", 1000.0),)), shares)
    assert split == {"__unallocated__": approx(1000.0)}


def test_without_utilization_data_the_energy_is_unallocated_not_idle():
    split = split_energy(EnergyReadings(0, 60, (GpuEnergy("G", 500.0),)), None)
    assert split == {"__unallocated__": 500.0}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # device
            st.integers(0, 3),  # pod
            st.floats(0, 1),  # utilization
            st.sampled_from([1.0, 0.5, 0.25]),  # request
        ),
        min_size=1,
        max_size=14,
    ),
    st.lists(st.floats(0, 5e6), min_size=6, max_size=6),
    st.floats(0, 0.6),
    st.floats(0, 900),
)
def test_energy_and_carbon_are_conserved(holds, energies, price, intensity):
    """Tenants + __idle__ + __unallocated__ = the fleet's measured total, for joules, dollars
    and grams, whatever the sharing (one pod or several per device, any requests)."""
    allocs, gpus, seen = [], [], set()
    for dev, p, util, req in holds:
        ns = ["team-a", "team-b", "default", "ml-research"][p]
        name = f"p{dev}-{p}"
        if name in seen:
            continue
        seen.add(name)
        allocs.append(pod(ns, name, gpu_cost=4.0 * req, gpu_count=req, gpu_hours=req))
        gpus.append(gpu(f"G{dev}", H100, util, ns, name))
    allocs.append(idle_row(gpu_cost=100.0))
    shares = shares_of(allocs, gpus)
    readings = EnergyReadings(
        0.0, 120.0, tuple(GpuEnergy(f"G{i}", e) for i, e in enumerate(energies))
    )
    ctx = EnergyContext(1.4, Schedule(price), Schedule(intensity))
    report, _ = account_energy(readings, shares, ctx, EnergyState(), 120.0)
    fleet = math.fsum(energies)
    assert all(v >= 0 for v in report.joules.values())
    assert math.fsum(report.joules.values()) == approx(fleet, rel=1e-9, abs=1e-6)
    kwh = fleet / 3.6e6 * 1.4
    assert math.fsum(report.usd.values()) == approx(kwh * price, rel=1e-9, abs=1e-9)
    assert math.fsum(report.grams.values()) == approx(kwh * intensity, rel=1e-9, abs=1e-9)


def test_time_of_use_price_is_averaged_over_the_interval_in_the_finance_zone():
    # Peak 08:00-20:00 weekdays in Berlin at $0.30, else $0.10. 2026-12-07 is a Monday;
    # 07:30-08:30 Berlin (UTC+1) is half off-peak, half peak.
    zone = ZoneInfo("Europe/Berlin")
    sched = Schedule(0.10, (TimeWindow(frozenset(range(5)), 8 * 60, 20 * 60, 0.30),))
    start = datetime(2026, 12, 7, 7, 30, tzinfo=zone).timestamp()
    assert sched.average(start, start + 3600, zone) == approx(0.20)
    assert sched.at(start + 3600, zone) == 0.30
    saturday = datetime(2026, 12, 12, 9, 0, tzinfo=zone).timestamp()
    assert sched.at(saturday, zone) == 0.10
    # An interval across a DST change is cut in local time: 2026-03-29 01:30-03:30 Berlin
    # is one real hour (02:00 does not exist), all off-peak.
    dst = datetime(2026, 3, 29, 1, 30, tzinfo=zone).timestamp()
    assert sched.average(dst, dst + 3600, zone) == approx(0.10)


def test_energy_cost_and_carbon_follow_pue_price_and_intensity():
    shares = shares_of(
        [pod("team-a", "a", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0)],
        [gpu("G", H100, 0.8, "team-a", "a")],
    )
    # 700 W for an hour = 0.7 kWh; x PUE 1.5 = 1.05 kWh; x $0.20 = $0.21; x 400 g = 420 g.
    readings = EnergyReadings(0.0, 3600.0, (GpuEnergy("G", 700 * 3600.0),))
    ctx = EnergyContext(1.5, Schedule(0.20), Schedule(400.0), budgets={"a": EnergyBudget(10.0)})
    report, state = account_energy(readings, shares, ctx, EnergyState(), 3600.0)
    assert report.usd == {"a": approx(0.21)}
    assert report.grams == {"a": approx(420.0)}
    samples = {f.spec.name: f.samples for f in energy_families(report)}
    assert samples["aifinops_tenant_gpu_power_watts"] == [(("a",), approx(700.0))]
    assert samples["aifinops_tenant_energy_cost_usd_per_hour"] == [(("a",), approx(0.21))]
    assert samples["aifinops_tenant_energy_budget_usd"] == [(("a",), 10.0)]
    # The same readings handed again (the source failed and its last good data is kept)
    # add nothing; a new interval adds.
    again, state = account_energy(readings, shares, ctx, state, 3660.0)
    assert again.usd == {"a": approx(0.21)}
    nxt = EnergyReadings(3600.0, 7200.0, (GpuEnergy("G", 700 * 3600.0),))
    later, state = account_energy(nxt, shares, ctx, state, 7200.0)
    assert later.joules == {"a": approx(2 * 700 * 3600.0)}
    assert later.month_usd == {"a": approx(0.42)}


def test_month_to_date_starts_again_in_a_new_month_of_the_finance_zone():
    zone = "America/New_York"
    shares = shares_of(
        [pod("team-a", "a", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0)],
        [gpu("G", H100, 0.8, "team-a", "a")],
    )
    ctx = EnergyContext(1.0, Schedule(1.0), Schedule(1.0), tz=zone)
    end_nov = datetime(2026, 11, 30, 23, 0, tzinfo=ZoneInfo(zone)).timestamp()
    one = EnergyReadings(end_nov - 3600, end_nov, (GpuEnergy("G", 3.6e6),))
    r1, state = account_energy(one, shares, ctx, EnergyState(), end_nov)
    assert r1.month_usd == {"a": approx(1.0)}
    two = EnergyReadings(end_nov, end_nov + 7200, (GpuEnergy("G", 3.6e6),))
    r2, state = account_energy(two, shares, ctx, state, end_nov + 7200)
    assert r2.month_usd == {"a": approx(1.0)}  # December only
    assert r2.usd == {"a": approx(2.0)}  # since start


def test_last_interval_of_a_month_read_just_after_midnight_keeps_the_months_total():
    # The source dates its read a moment before the refresh's clock: an interval ending at
    # 23:59:59 counts in its month, on top of that month's earlier intervals (not alone).
    shares = shares_of(
        [pod("team-a", "a", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0)],
        [gpu("G", H100, 0.8, "team-a", "a")],
    )
    ctx = EnergyContext(1.0, Schedule(1.0), Schedule(1.0))
    midnight = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    one = EnergyReadings(midnight - 7200, midnight - 3600, (GpuEnergy("G", 3.6e6),))
    _, state = account_energy(one, shares, ctx, EnergyState(), midnight - 3600)
    two = EnergyReadings(midnight - 3600, midnight - 1, (GpuEnergy("G", 3.6e6),))
    r2, state = account_energy(two, shares, ctx, state, midnight + 1)
    assert (r2.month, r2.month_usd) == ("2026-11", {"a": approx(2.0)})
    r3, _ = account_energy(None, shares, ctx, state, midnight + 61)
    assert (r3.month, r3.month_usd) == ("2026-12", {})


def test_report_carries_energy_only_when_configured():
    allocs, gpus = mixed_cluster()
    inputs_ctx = context()
    from aifinops.model.inputs import Inputs

    inputs = Inputs(
        gpus=tuple(gpus),
        allocations=AllocationSet(1.0, tuple(allocs)),
        energy=EnergyReadings(0.0, 60.0, (GpuEnergy("G-excl", 600.0),)),
    )
    report, _ = build_report(inputs, inputs_ctx, ModelState(), 60.0)
    assert report.energy is None
    from dataclasses import replace

    ctx = replace(inputs_ctx, energy=EnergyContext(1.0, Schedule(0.1), Schedule(100.0)))
    report, state = build_report(inputs, ctx, ModelState(), 60.0)
    assert report.energy is not None and report.energy.joules == {"alpha": approx(600.0)}
    assert state.energy is not None and state.energy.last_end == 60.0


def test_energy_without_dcgm_fails_at_start_up_naming_the_field():
    from aifinops.assemble import check_has_sources

    settings = settings_from_mapping(
        {"energy": {"enabled": True}, "sources": {"opencost": {"url": "http://oc:9003"}}}
    )
    with pytest.raises(ConfigError, match=r"energy\.enabled needs sources\.dcgm"):
        check_has_sources(settings)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("energy: {pue: 0.9}", "energy.pue"),
        ("energy: {price: {usd_per_kwh: -1}}", "energy.price.usd_per_kwh"),
        (
            "energy: {price: {schedule: [{start: '22:00', end: '06:00', usd_per_kwh: 1}]}}",
            "energy.price.schedule.0",
        ),
        (
            "energy: {carbon: {schedule: [{start: '8:00', end: '09:00', grams_co2e_per_kwh: 1}]}}",
            "energy.carbon.schedule.0",
        ),
        (
            "energy: {price: {schedule: [{days: [], start: '08:00', end: '09:00', "
            "usd_per_kwh: 1}]}}",
            "energy.price.schedule.0.days",
        ),
        ("energy: {budgets: [{tenant: a}]}", "energy.budgets.0"),
        ("energy: {budgets: [{tenant: a, energy_usd: 1}, {tenant: a, carbon_kg: 1}]}", "energy"),
    ],
)
def test_bad_energy_configuration_fails_naming_the_field(text, field):
    with pytest.raises(ConfigError) as err:
        settings_from_mapping(yaml.safe_load(text))
    assert field in str(err.value)


def test_chargeback_carries_each_tenants_electricity_beside_its_dollars():
    """FOCUS x_ columns on the tenant's direct GPU row, the JSON per tenant; the dollars of
    the rows and their total are unchanged (energy is a bill line of its own)."""
    import csv
    import io

    from aifinops.exposition.chargeback_files import focus_csv
    from aifinops.model.chargeback import build_chargeback
    from aifinops.model.energy import month_use
    from aifinops.web.schemas import ChargebackResponse
    from tests.model.test_chargeback import assert_focus_rules

    shares = shares_of(
        [pod("team-a", "a", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0)],
        [gpu("G", H100, 0.8, "team-a", "a")],
    )
    ctx = EnergyContext(1.5, Schedule(0.20), Schedule(400.0))
    start = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    readings = EnergyReadings(start, start + 3600, (GpuEnergy("G", 700 * 3600.0),))
    report, _ = account_energy(readings, shares, ctx, EnergyState(), start + 3600)
    assert report.month == "2026-12"
    use = month_use(report)
    assert use["a"].gpu_kwh == approx(0.7) and use["a"].facility_kwh == approx(1.05)
    dollars = {("a", "gpu"): 4.0, ("a", "cpu"): 1.0, ("__idle__", "gpu"): 2.0}
    plain = build_chargeback(dollars, "2026-12", "UTC", now=start + 3600)
    cb = build_chargeback(dollars, "2026-12", "UTC", now=start + 3600, energy=use)
    assert cb.total_usd == plain.total_usd and cb.rows == plain.rows
    rows = list(csv.DictReader(io.StringIO(focus_csv(cb))))
    assert_focus_rules(cb, rows)
    filled = [(r["x_Tenant"], r["x_Resource"], r["x_EnergyKWh"]) for r in rows if r["x_EnergyKWh"]]
    assert filled == [("a", "gpu", "1.05")]
    gpu_row = next(r for r in rows if r["x_Tenant"] == "a" and r["x_Resource"] == "gpu")
    assert float(gpu_row["x_EnergyCost"]) == approx(0.21)
    assert float(gpu_row["x_CarbonKgCO2e"]) == approx(0.42)
    body = ChargebackResponse.from_model(cb).model_dump()
    assert body["energy"] == [
        {
            "tenant": "a",
            "gpu_energy_kwh": approx(0.7),
            "facility_energy_kwh": approx(1.05),
            "energy_cost_usd": approx(0.21),
            "carbon_kg_co2e": approx(0.42),
        }
    ]


def test_docs_monthly_bill_with_energy_to_the_cent():
    """docs/owned-gpus.md: research's two H100s at 550 W, the free one at 70 W, 730 hours,
    PUE 1.3, $0.12/kWh, 350 g/kWh -> $125.27 and 365.4 kg; $1,716.67 + $125.27 = $1,841.94."""
    import re
    from dataclasses import replace
    from pathlib import Path

    from aifinops import assemble
    from aifinops.exposition.render import render_family
    from aifinops.model.inputs import Inputs

    doc = (Path(__file__).resolve().parents[2] / "docs" / "owned-gpus.md").read_text("utf-8")
    owned = yaml.safe_load(re.search(r"## Worked example\n.*?```yaml\n(.*?)```", doc, re.S)[1])
    energy = yaml.safe_load(
        re.search(r"the monthly bill with energy.*?```yaml\n(.*?)```", doc, re.S)[1]
    )
    settings = settings_from_mapping(
        {
            **owned,
            **energy,
            "tenancy": {"namespaces": {"ml-research": "research"}},
            "sources": {"dcgm": {"mode": "scrape", "scrape_urls": ["http://dcgm:9400/metrics"]}},
        }
    )
    ctx = assemble.model_context(settings)
    hours = 730.0
    start = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
    end = start + hours * 3600
    gpus = (
        replace(gpu("GPU-1", H100, 0.9, "ml-research", "train-0"), node="gpu-a"),
        replace(gpu("GPU-2", H100, 0.8, "ml-research", "train-1"), node="gpu-a"),
        replace(gpu("GPU-3", H100, 0.0), node="gpu-a"),
    )
    allocs = (
        pod("ml-research", "train-0", cpu_cost=0.10, gpu_count=1.0),
        pod("ml-research", "train-1", cpu_cost=0.10, gpu_count=1.0),
        idle_row(cpu_cost=0.05),
    )
    joules = [550 * hours * 3600, 550 * hours * 3600, 70 * hours * 3600]
    readings = EnergyReadings(
        start, end, tuple(GpuEnergy(f"GPU-{i + 1}", j) for i, j in enumerate(joules))
    )
    inputs = Inputs(gpus=gpus, allocations=AllocationSet(1.0, allocs), energy=readings)
    report, _ = build_report(inputs, ctx, ModelState(), end)
    e = report.energy
    assert e is not None
    assert round(e.joules["research"] / 3.6e6, 1) == 803.0
    assert round(e.usd["research"], 2) == 125.27
    assert round(e.grams["research"] / 1000, 1) == 365.4
    assert round(e.usd["__idle__"], 2) == 7.97
    assert round(e.grams["__idle__"] / 1000, 1) == 23.3
    hardware = {
        t: r * hours for (t, res), r in report.tenant_rates("allocation").items() if res == "gpu"
    }
    assert round(hardware["research"], 2) == 1716.67
    assert round(hardware["research"], 2) + round(e.usd["research"], 2) == approx(1841.94)
    for figure in ("**$125.27**", "**$1,841.94**", "365.4 kg", "$7.97", "23.3 kg"):
        assert figure in doc, figure
    text = "".join(render_family(f) for f in energy_families(e))
    published = re.search(r'aifinops_tenant_energy_cost_usd_total\{tenant="research"\} (\S+)', text)
    assert published is not None and round(float(published[1]), 2) == 125.27


def test_energy_families_over_the_series_cap_keep_their_total():
    """The energy totals keep every tenant that ever drew energy: over
    limits.max_series_per_family the smallest are summed into __other__, not dropped."""
    from aifinops.exposition.bounds import cap_family

    e, _ = account_energy(
        EnergyReadings(0.0, 60.0, (GpuEnergy("G", 1.0),)),
        [],
        EnergyContext(1.0, Schedule(0.1), Schedule(100.0)),
        EnergyState(joules={f"t{i}": float(i + 1) for i in range(300)}),
        60.0,
    )
    family = next(f for f in energy_families(e) if f.spec.name.endswith("energy_joules_total"))
    assert family.spec.name == "aifinops_tenant_gpu_energy_joules_total"
    capped, lost = cap_family(family, 50)
    assert lost > 0 and len(capped.samples) <= 50
    assert math.fsum(v for _, v in capped.samples) == approx(
        math.fsum(v for _, v in family.samples)
    )


def test_budgets_api_lists_each_tenants_energy_budgets_and_month_to_date():
    from aifinops.web.schemas import BudgetsResponse

    ctx = EnergyContext(
        1.0,
        Schedule(1.0),
        Schedule(1000.0),
        budgets={"a": EnergyBudget(usd=5.0), "b": EnergyBudget(grams=2000.0)},
    )
    shares = shares_of(
        [pod("team-a", "a", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0)],
        [gpu("G", H100, 0.8, "team-a", "a")],
    )
    readings = EnergyReadings(0.0, 3600.0, (GpuEnergy("G", 3.6e6),))  # 1 kWh: $1, 1 kg
    report, _ = account_energy(readings, shares, ctx, EnergyState(), 3600.0)
    body = BudgetsResponse.build(
        now=3600.0,
        time_zone="UTC",
        period="1970-01",
        month_start=0.0,
        budgets=(),
        tenant_month_to_date={},
        energy=report,
    ).model_dump()
    assert body["energy_budgets"] == [
        {
            "tenant": "a",
            "energy_budget_usd": 5.0,
            "energy_month_to_date_usd": approx(1.0),
            "carbon_budget_kg_co2e": None,
            "carbon_month_to_date_kg_co2e": approx(1.0),
        },
        {
            "tenant": "b",
            "energy_budget_usd": None,
            "energy_month_to_date_usd": 0.0,
            "carbon_budget_kg_co2e": 2.0,
            "carbon_month_to_date_kg_co2e": 0.0,
        },
    ]


def test_folded_tenants_energy_lands_on_the_same_rows_as_their_money():
    """With limits.max_tenants reached, a folded tenant's energy is __other__'s, as its
    dollars are: the energy rows are tenants the cost families show, and nothing is lost."""
    from dataclasses import replace as with_

    from aifinops.model.inputs import Inputs

    allocs, gpus = mixed_cluster()
    inputs = Inputs(
        gpus=tuple(gpus),
        allocations=AllocationSet(1.0, tuple(allocs)),
        energy=EnergyReadings(
            0.0,
            60.0,
            (
                GpuEnergy("G-excl", 30_000.0),
                GpuEnergy("G-ts", 20_000.0),
                GpuEnergy("G-mig", 14_000.0),
                GpuEnergy("G-free", 5_000.0),
            ),
        ),
    )
    ctx = with_(context(max_tenants=1), energy=EnergyContext(1.0, Schedule(0.1), Schedule(1.0)))
    report, _ = build_report(inputs, ctx, ModelState(), 60.0)
    assert report.energy is not None
    cost_tenants = {t for (t, _) in report.tenant_rates("allocation")}
    assert "__other__" in report.energy.joules
    assert set(report.energy.joules) <= cost_tenants
    assert math.fsum(report.energy.joules.values()) == approx(69_000.0, rel=1e-12)
