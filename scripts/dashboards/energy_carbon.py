"""AI FinOps / Energy and carbon: the GPUs' measured power, what their electricity costs and
emits per tenant (DCGM's energy counter, else power x time; x PUE; the price and the grid
intensity in force), month to date against the energy budgets, and how the energy was
measured (counter or power, counter resets)."""

from __future__ import annotations

from .panels import (
    BUDGET_STEPS,
    BY_TENANT,
    CLUSTER_LABEL,
    PERCENT,
    USD,
    Json,
    bargauge,
    dashboard,
    max_by,
    sel,
    stat,
    table,
    timeseries,
)
from .rules import ENERGY_BUDGET_USED, ENERGY_COST_RATE

JOULES_PER_KWH = 3.6e6


def _fleet(metric: str) -> str:
    """A fleet series summed over the selected clusters, its replicas de-duplicated."""
    return f"sum(max by ({CLUSTER_LABEL}) ({sel(metric)}))"


def build() -> Json:
    headline = [
        stat(
            "GPU power",
            "Average power of every measured GPU over the last interval, before PUE.",
            _fleet("aifinops_cluster_gpu_power_watts"),
            "watt",
        ),
        stat(
            "Electricity cost (USD/h)",
            "GPU electricity cost rate: energy x PUE x the price in force.",
            f"sum({sel(ENERGY_COST_RATE)})",
            USD,
        ),
        stat(
            "Carbon (kg CO2e/h)",
            "Carbon rate of the GPUs' electricity: energy x PUE x the grid intensity.",
            f"{_fleet('aifinops_cluster_carbon_grams_per_hour')} / 1000",
            "short",
            decimals=2,
        ),
        stat(
            "Electricity price (USD/kWh)",
            "The price in force now (flat, or the time-of-use window in budgets.time_zone).",
            f"max({sel('aifinops_energy_price_usd_per_kwh')})",
            USD,
            decimals=3,
        ),
        stat(
            "Grid intensity (gCO2e/kWh)",
            "The grid carbon intensity in force now.",
            f"max({sel('aifinops_grid_carbon_intensity_grams_per_kwh')})",
            "short",
        ),
        stat(
            "PUE",
            "Power usage effectiveness: facility energy = GPU energy x PUE.",
            f"max({sel('aifinops_energy_pue')})",
            "short",
            decimals=2,
        ),
    ]
    power = timeseries(
        "GPU power by tenant",
        "Each tenant's share of the measured GPU power (the usage basis' split: its use, plus "
        "what it holds and leaves unused); unrequested capacity and unheld GPUs are __idle__.",
        [(max_by("tenant", sel("aifinops_tenant_gpu_power_watts")), BY_TENANT)],
        "watt",
        stacked=True,
    )
    cost = timeseries(
        "Electricity cost by tenant (USD/h)",
        "GPU electricity cost rate per tenant (x PUE): not part of the GPU cost families.",
        [(sel(ENERGY_COST_RATE), BY_TENANT)],
        USD,
        stacked=True,
    )
    carbon = timeseries(
        "Carbon by tenant (kg CO2e/h)",
        "Carbon rate of each tenant's GPU electricity.",
        [(f"{max_by('tenant', sel('aifinops_tenant_carbon_grams_per_hour'))} / 1000", BY_TENANT)],
        "short",
        stacked=True,
    )
    energy = bargauge(
        "GPU energy over the time range (kWh)",
        "Measured GPU energy per tenant over the dashboard's time range, before PUE.",
        f"max by ({CLUSTER_LABEL}, tenant) "
        f"(increase({sel('aifinops_tenant_gpu_energy_joules_total')}[$__range])) "
        f"/ {JOULES_PER_KWH:g}",
        BY_TENANT,
        "short",
    )
    budgets = bargauge(
        "Energy budgets used",
        "Month to date against the monthly energy budgets (energy.budgets): electricity "
        "dollars (energy_cost) and carbon. AIFinOpsEnergyBudgetHigh fires at 80 % and 100 %.",
        sel(ENERGY_BUDGET_USED),
        "{{tenant}} {{kind}} {{" + CLUSTER_LABEL + "}}",
        PERCENT,
        thresholds=BUDGET_STEPS,
        max_value=1.2,
    )
    month = table(
        "Month to date by tenant",
        "Electricity dollars and carbon since the month started (budgets.time_zone), as this "
        "exporter measured them.",
        [
            (max_by("tenant", sel("aifinops_tenant_energy_month_to_date_cost_usd")), "USD", USD),
            (
                f"{max_by('tenant', sel('aifinops_tenant_carbon_month_to_date_grams'))} / 1000",
                "kg CO2e",
                "short",
            ),
        ],
        sort_by="USD",
    )
    methods = timeseries(
        "GPUs measured, by method",
        "counter: DCGM's total-energy counter; power: power draw x time where the counter is "
        "absent (dcgm-exporter >= 4.9 pages carry none).",
        [(max_by("method", sel("aifinops_energy_gpus")), "{{method}} {{" + CLUSTER_LABEL + "}}")],
        "short",
        width=16,
    )
    resets = stat(
        "Counter resets over the time range",
        "DCGM energy counters seen going down (driver reload, GPU reset); each interval is "
        "counted from zero, as increase() does.",
        f"sum(max by ({CLUSTER_LABEL}) "
        f"(increase({sel('aifinops_energy_dcgm_resets_total')}[$__range])))",
        "short",
        width=8,
        height=8,
        decimals=0,
    )
    return dashboard(
        "aifinops-energy-carbon",
        "AI FinOps / Energy and carbon",
        "Measured GPU energy per tenant, its electricity cost and its carbon (docs/owned-gpus.md).",
        [
            (None, [headline]),
            ("Per tenant", [[power, cost], [carbon, energy]]),
            ("Month to date", [[budgets, month]]),
            ("Measurement", [[methods, resets]]),
        ],
    )
