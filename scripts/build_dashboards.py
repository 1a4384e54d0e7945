#!/usr/bin/env python3
"""Build the Grafana dashboards: this file → dashboards/*.json (committed).

The dashboards are written as code, as the monitoring mixins do with jsonnet: a panel is a
title, a description, its queries and a width; :func:`layout` places the panels on Grafana's
24-column grid, row after row, so positions never overlap or overflow. Every query keeps to
the selected cluster (:func:`sel`), reads a recording rule of ``rules/`` where one exists,
and de-duplicates the exporter's replicas with ``max by`` where it reads a raw series.

Usage::

    python scripts/build_dashboards.py          # write dashboards/*.json
    python scripts/build_dashboards.py --check  # exit 1 if a committed file differs

Then ``python scripts/generate.py`` copies them into deploy/ as ConfigMaps.
``tests/artifacts/test_dashboards.py`` checks the structure, the drift and the series names;
``tests/e2e/test_stack.py`` runs every query against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "dashboards"
TEMPLATES_DIR = ROOT / "mixin" / "dashboards"
sys.path.insert(0, str(ROOT / "scripts"))
from render_rules import evaluate_mixin  # noqa: E402  (the script's sibling, not a package)

# The monitoring mixin's _config (mixin/config.libsonnet: rules/thresholds.yaml's values, the
# cluster label, the exporter selector). The panels are built here with `@@name@@` in place
# of those values; the mixin fills them (mixin/dashboards.libsonnet), so the dashboards colour
# at the values the alerts fire at and follow a user's _config.
THRESHOLDS: dict[str, Any] = evaluate_mixin("mixin._config")


def cfg(name: str) -> Any:
    """A placeholder the mixin fills with ``_config[name]`` (a number stays a number)."""
    if name not in THRESHOLDS:
        raise KeyError(f"{name!r} is not in the mixin's _config")
    return f"@@{name}@@"


CLUSTER_LABEL = cfg("clusterLabel")

# Grafana 12.0-12.1 save schemaVersion 41; 42 (Grafana 12.2+) only moves hideFrom.viz
# overrides, which these dashboards do not use, so newer Grafana upgrades them unchanged and
# Grafana 11 still imports them.
SCHEMA_VERSION = 41
GRID_WIDTH = 24
TAG = "aifinops"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CLUSTER = f'{CLUSTER_LABEL}=~"$cluster"'
TENANT = 'tenant="$tenant"'
SCOPE_ALL = 'scope="all"'
GPU = 'resource="gpu"'
API_TOKENS = 'resource="tokens"'
EXPORTER_JOB = cfg("exporterSelector")  # as AIFinOpsExporterAbsent selects them

Json = dict[str, Any]


def sel(metric: str, *matchers: str) -> str:
    """``metric{cluster=~"$cluster", <matchers>}``: every selector keeps to the cluster."""
    return f"{metric}{{{', '.join((CLUSTER, *matchers))}}}"


# --- panels ----------------------------------------------------------------------------------


def _target(ref: str, expr: str, legend: str, instant: bool, table: bool) -> Json:
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if table else "time_series",
    }


Steps = Sequence[tuple[str, float | None]]
IDLE_COST_STEPS: Steps = (("orange", cfg("idle_gpu_cost_usd_per_hour")),)
EFFICIENCY_LOW: Steps = (("red", cfg("gpu_efficiency_low_ratio")),)


def _thresholds(steps: Steps) -> Json:
    """Grafana threshold steps; the base colour is green unless the first step is
    ``(colour, None)``."""
    if not steps or steps[0][1] is not None:
        steps = [("green", None), *steps]
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


def _panel(
    kind: str,
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    width: int,
    height: int,
    unit: str,
    instant: bool = False,
    table: bool = False,
    thresholds: Steps = (),
    options: Json | None = None,
    custom: Json | None = None,
    overrides: Sequence[Json] = (),
    transformations: Sequence[Json] = (),
    decimals: int | None = None,
    min_value: float | None = None,
    mappings: Sequence[Json] = (),
) -> Json:
    defaults: Json = {
        "unit": unit,
        "color": {"mode": "thresholds" if thresholds or mappings else "palette-classic"},
        "thresholds": _thresholds(thresholds),
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_value is not None:
        defaults["min"] = min_value
    if mappings:
        defaults["mappings"] = list(mappings)
    if custom:
        defaults["custom"] = custom
    panel: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": options or {},
        "targets": [
            _target(chr(ord("A") + i), expr, legend, instant, table)
            for i, (expr, legend) in enumerate(queries)
        ],
    }
    if transformations:
        panel["transformations"] = list(transformations)
    return panel


_REDUCE_LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def stat(
    title: str,
    description: str,
    expr: str,
    unit: str,
    width: int = 4,
    height: int = 4,
    thresholds: Steps = (),
    decimals: int | None = None,
) -> Json:
    return _panel(
        "stat",
        title,
        description,
        [(expr, "")],
        width,
        height,
        unit,
        thresholds=thresholds,
        decimals=decimals,
        options={
            "reduceOptions": _REDUCE_LAST,
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
    )


def timeseries(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    thresholds: Steps = (),
) -> Json:
    custom: Json = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 60 if stacked else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
    }
    return _panel(
        "timeseries",
        title,
        description,
        queries,
        width,
        height,
        unit,
        thresholds=thresholds,
        custom=custom,
        min_value=0,
        options={
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "calcs": ["lastNotNull", "mean"],
                "sortBy": "Last *",
                "sortDesc": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def bargauge(
    title: str,
    description: str,
    expr: str,
    legend: str,
    unit: str,
    width: int = 12,
    height: int = 8,
    thresholds: Steps = (),
    max_value: float | None = None,
) -> Json:
    panel = _panel(
        "bargauge",
        title,
        description,
        [(expr, legend)],
        width,
        height,
        unit,
        instant=True,
        thresholds=thresholds or (("green", 0),),
        min_value=0,
        options={
            "reduceOptions": _REDUCE_LAST,
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "maxVizHeight": 300,
        },
    )
    if max_value is not None:
        panel["fieldConfig"]["defaults"]["max"] = max_value
    return panel


def table(
    title: str,
    description: str,
    columns: Sequence[tuple[str, str, str]],
    width: int = 12,
    height: int = 8,
    pivot: tuple[str, str] | None = None,
    sort_by: str | None = None,
) -> Json:
    """Instant queries shown as one table; ``columns`` are ``(expr, column title, unit)``.

    Several queries are merged on their labels (Grafana's ``merge``: one row per label set).
    ``pivot=(row label, column label)`` turns one query into a matrix instead.
    """
    many = len(columns) > 1
    overrides = [
        {
            "matcher": {
                "id": "byName",
                "options": f"Value #{chr(ord('A') + i)}" if many else "Value",
            },
            "properties": [{"id": "displayName", "value": name}, {"id": "unit", "value": unit}],
        }
        for i, (_, name, unit) in enumerate(columns)
    ]
    transformations: list[Json] = []
    if pivot:
        transformations.append(
            {
                "id": "groupingToMatrix",
                "options": {"rowField": pivot[0], "columnField": pivot[1], "valueField": "Value"},
            }
        )
        overrides = []
    elif many:
        transformations.append({"id": "merge", "options": {}})
    if not pivot:
        transformations.append(
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {}}}
        )
    options: Json = {
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "fields": "", "countRows": False},
    }
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": True}]
    return _panel(
        "table",
        title,
        description,
        [(expr, "") for expr, _, _ in columns],
        width,
        height,
        columns[0][2],
        instant=True,
        table=True,
        options=options,
        overrides=overrides,
        transformations=transformations,
        decimals=2,
    )


def piechart(
    title: str, description: str, expr: str, legend: str, unit: str, width: int, height: int = 8
) -> Json:
    return _panel(
        "piechart",
        title,
        description,
        [(expr, legend)],
        width,
        height,
        unit,
        instant=True,
        options={
            "reduceOptions": _REDUCE_LAST,
            "pieType": "donut",
            "displayLabels": [],
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "values": ["value", "percent"],
            },
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def state_timeline(
    title: str, description: str, expr: str, legend: str, width: int = 12, height: int = 8
) -> Json:
    return _panel(
        "state-timeline",
        title,
        description,
        [(expr, legend)],
        width,
        height,
        "none",
        mappings=[
            {
                "type": "value",
                "options": {
                    "0": {"text": "down", "color": "red", "index": 0},
                    "1": {"text": "up", "color": "green", "index": 1},
                },
            }
        ],
        custom={"fillOpacity": 80, "lineWidth": 0},
        options={
            "mergeValues": True,
            "showValue": "never",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


# --- layout and dashboards ------------------------------------------------------------------

Section = tuple[str | None, Sequence[Sequence[Json]]]


def layout(sections: Sequence[Section]) -> list[Json]:
    """Place panels line by line: each section is an optional row header and lines of panels
    whose widths add up to at most 24; returns the panels with ``gridPos`` and ``id`` set."""
    panels: list[Json] = []
    y = 0
    for title, lines in sections:
        if title is not None:
            panels.append(
                {
                    "type": "row",
                    "title": title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y += 1
        for line in lines:
            x = 0
            for panel in line:
                panel["gridPos"].update(x=x, y=y)
                x += panel["gridPos"]["w"]
            if x > GRID_WIDTH:
                titles = ", ".join(p["title"] for p in line)
                raise ValueError(f"panels {titles} are {x} columns wide (grid: {GRID_WIDTH})")
            y += max(panel["gridPos"]["h"] for panel in line)
            panels.extend(line)
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return panels


def _variables(tenant: bool) -> list[Json]:
    variables: list[Json] = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
        },
        {
            # Empty on a single Prometheus (no cluster label): "All" (.*) matches that too.
            "name": "cluster",
            "label": "Cluster",
            "type": "query",
            "datasource": DATASOURCE,
            "query": f"label_values(aifinops_build_info, {CLUSTER_LABEL})",
            "definition": f"label_values(aifinops_build_info, {CLUSTER_LABEL})",
            "current": {},
            "hide": 0,
            "includeAll": True,
            "allValue": ".*",
            "multi": False,
            "options": [],
            "refresh": 2,
            "regex": "",
            "sort": 1,
        },
    ]
    if tenant:
        query = f"label_values({sel('tenant:aifinops_tenant_cost_usd_per_hour:sum')}, tenant)"
        variables.append(
            {
                "name": "tenant",
                "label": "Tenant",
                "type": "query",
                "datasource": DATASOURCE,
                "query": query,
                "definition": query,
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 2,
                "regex": "",
                "sort": 1,
            }
        )
    return variables


def dashboard(
    uid: str,
    title: str,
    description: str,
    sections: Sequence[Section],
    time_from: str = "now-24h",
    tenant_variable: bool = False,
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": "1m",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "title": "AI FinOps",
                "tags": [TAG],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": _variables(tenant_variable)},
        "panels": layout(sections),
    }


# --- the five dashboards ---------------------------------------------------------------------

USD = "currencyUSD"
PERCENT = "percentunit"
BUDGET_STEPS: Steps = (("orange", 0.8), ("red", 1.0))
EFFICIENCY_STEPS: Steps = (
    ("red", None),
    ("orange", cfg("gpu_efficiency_low_ratio")),
    ("green", cfg("gpuEfficiencyGoodRatio")),
)
BY_TENANT = "{{tenant}} {{" + CLUSTER_LABEL + "}}"
BY_MODEL = "{{model}} ({{provider}})"

# Recording rules of rules/*.rules.yaml the panels read.
# One family per basis (sum-safe): allocation (as billed) and usage (GPU by measured use).
COST_RATE = "tenant_resource:aifinops_tenant_cost_usd_per_hour:max"
USAGE_COST_RATE = "tenant_resource:aifinops_tenant_usage_basis_cost_usd_per_hour:max"
TENANT_COST_RATE = "tenant:aifinops_tenant_cost_usd_per_hour:sum"
TENANT_USAGE_COST_RATE = "tenant:aifinops_tenant_usage_basis_cost_usd_per_hour:sum"
COST_1D = "tenant_resource:aifinops_tenant_cost_usd:increase1d"
USAGE_COST_1D = "tenant_resource:aifinops_tenant_usage_basis_cost_usd:increase1d"
TENANT_COST_1D = "tenant:aifinops_tenant_cost_usd:increase1d"
TENANT_COST_30D = "tenant:aifinops_tenant_cost_usd:increase30d"
MTD = "tenant:aifinops_tenant_month_to_date_cost_usd:max"
BURN_RATE = "tenant_scope:aifinops_budget_burn_rate:ratio"
FORECAST_RATIO = "tenant_scope:aifinops_budget_forecast:ratio"
GPUS = "tenant_gpu_model:aifinops_tenant_gpus:max"
GPUS_USED = "tenant_gpu_model:aifinops_tenant_gpus_used:max"
EFFICIENCY = "tenant_gpu_model:aifinops_tenant_gpu_efficiency:ratio"
TENANT_EFFICIENCY = "tenant:aifinops_tenant_gpu_efficiency:ratio"
IDLE_GPUS = "tenant_gpu_model:aifinops_idle_gpus:max"
IDLE_COST = "tenant_gpu_model:aifinops_idle_gpu_cost_usd_per_hour:max"
TENANT_IDLE_COST = "tenant:aifinops_idle_gpu_cost_usd_per_hour:sum"
TOKENS = "tenant_model_provider_token_type:aifinops_tokens:rate1h"
TOKEN_COST = "tenant_model_provider:aifinops_token_cost_usd_per_hour:rate1h"
MODEL_TOKEN_COST = "model_provider:aifinops_token_cost_usd_per_hour:rate1h"
API_RATIO = (
    "model_provider_token_type:aifinops_model_cost_per_million_tokens_usd:api_equivalent_ratio"
)
SOURCE_UP = "source:aifinops_source_up:max"
SOURCE_ERRORS = "source_reason:aifinops_source_errors:rate5m"


def max_by(labels: str, selector: str) -> str:
    """``max by (cluster, <labels>) (<selector>)``: one value per series whatever the number
    of exporter replicas (a ``sum`` would count every dollar once per replica)."""
    return f"max by ({CLUSTER_LABEL}, {labels}) ({selector})"


def executive() -> Json:
    mtd = sel(MTD)
    rate = sel(TENANT_COST_RATE)

    def budget(metric: str) -> str:
        """A per-(tenant, scope) series, scope all."""
        return max_by("tenant", sel(metric, SCOPE_ALL))

    def budget_usd(metric: str) -> str:
        """A scope-all money family (one per scope: no scope label)."""
        return max_by("tenant", sel(metric))

    roi = max_by("initiative", sel("aifinops_roi_ratio"))
    savings = max_by("kind, tenant", sel("aifinops_recommendation_savings_usd_per_month"))
    headline = [
        stat(
            "Spend this month",
            "Month-to-date spend of every tenant, idle and unallocated included (calendar "
            "month in the finance time zone).",
            f"sum({mtd})",
            USD,
        ),
        stat(
            "Month-end forecast (budgeted tenants)",
            "Sum of the month-end spend forecasts of the tenants with an all-resources budget.",
            "sum(" + max_by("tenant", sel("aifinops_tenant_budget_forecast_usd")) + ")",
            USD,
        ),
        stat(
            "Cost rate now (USD/h)",
            "Whole-cluster cost rate as billed (basis allocation).",
            f"sum({rate})",
            USD,
        ),
        stat(
            "Idle GPU cost (USD/h)",
            "Cost rate of allocated GPUs that stayed idle for the whole idle window.",
            f"sum({sel(TENANT_IDLE_COST)})",
            USD,
            thresholds=IDLE_COST_STEPS,
        ),
        stat(
            "Savings found (USD/month)",
            "Estimated monthly savings of all recommendations (idle GPUs, right-sizing, spot, "
            "model switch); kinds may overlap.",
            f"sum({savings})",
            USD,
        ),
        stat(
            "Budgets at or over 100%",
            "Tenant budgets (all scopes) whose month-to-date spend reached the amount.",
            "sum(" + max_by("tenant, scope", sel("aifinops_budget_used_ratio")) + " >= bool 1)",
            "none",
            thresholds=(("red", 1),),
        ),
    ]
    used = bargauge(
        "Budget used this month",
        "Month-to-date spend / monthly budget (scope all) per tenant; warning at 80%, critical "
        "at 100% unless configured otherwise.",
        budget("aifinops_budget_used_ratio"),
        BY_TENANT,
        PERCENT,
        width=10,
        thresholds=BUDGET_STEPS,
        max_value=1.2,
    )
    versus = table(
        "Spend vs budget per tenant",
        "This month's spend, budget (scope all), month-end forecast, forecast / budget, burn "
        "rate (1 = on pace to spend exactly the budget) and the time until it is exhausted.",
        [
            (mtd, "Spend this month", USD),
            (budget_usd("aifinops_tenant_budget_usd"), "Budget", USD),
            (budget_usd("aifinops_tenant_budget_forecast_usd"), "Forecast", USD),
            (budget(FORECAST_RATIO), "Forecast / budget", PERCENT),
            (budget(BURN_RATE), "Burn rate", "none"),
            (budget("aifinops_budget_exhaustion_seconds"), "Time to exhaustion", "s"),
        ],
        width=14,
        sort_by="Spend this month",
    )
    mtd_series = timeseries(
        "Month-to-date spend per tenant",
        "Spend since the 1st of the month per tenant.",
        [(mtd, BY_TENANT)],
        USD,
    )
    burn = timeseries(
        "Burn rate per tenant",
        "Budget spent per month at the current cost rate (scope all): above 1 the tenant "
        "overruns if nothing changes.",
        [(sel(BURN_RATE, SCOPE_ALL), BY_TENANT)],
        "none",
        thresholds=(("red", 1),),
    )
    roi_bars = bargauge(
        "ROI per initiative",
        "(benefits - AI cost) / AI cost over each initiative's period; absent while its AI "
        "cost is zero.",
        roi,
        "{{initiative}} {{" + CLUSTER_LABEL + "}}",
        PERCENT,
        width=8,
        thresholds=(("red", None), ("green", 0)),
    )
    roi_table = table(
        "AI cost and benefit per initiative",
        "Measured AI cost (GPU, tokens, other infrastructure) and the configured benefits over "
        "the initiative's period.",
        [
            (max_by("initiative", sel("aifinops_roi_cost_usd")), "AI cost", USD),
            (
                f"sum by ({CLUSTER_LABEL}, initiative) ("
                + max_by("initiative, kind", sel("aifinops_roi_benefit_usd"))
                + ")",
                "Benefit",
                USD,
            ),
            (roi, "ROI", PERCENT),
        ],
        width=8,
        sort_by="ROI",
    )
    idle = bargauge(
        "Idle GPU cost per tenant (USD/h)",
        "Cost rate of each tenant's idle GPUs, all GPU models.",
        f"sort_desc(sum by (tenant) ({sel(TENANT_IDLE_COST)}))",
        "{{tenant}}",
        USD,
        width=8,
        thresholds=IDLE_COST_STEPS,
    )
    top_savings = table(
        "Top savings (USD/month)",
        "The ten largest savings found, by kind and tenant (details: GET /api/v1/recommendations).",
        [(f"topk(10, {savings})", "Saving per month", USD)],
        sort_by="Saving per month",
    )
    per_tenant = timeseries(
        "Cost rate per tenant (USD/h)",
        "Cost rate as billed (basis allocation), idle and unallocated included: the stack adds "
        "up to the cluster's cost.",
        [(f"sum by (tenant) ({rate})", "{{tenant}}")],
        USD,
        stacked=True,
    )
    return dashboard(
        "aifinops-executive",
        "AI FinOps / Executive",
        "Spend this month against budgets, month-end forecast, ROI per initiative, idle GPU "
        "cost and the largest savings found.",
        [
            (None, [headline]),
            ("Budgets", [[used, versus], [mtd_series, burn]]),
            ("Value and waste", [[roi_bars, roi_table, idle], [top_savings, per_tenant]]),
        ],
        time_from="now-7d",
    )


def tenant_chargeback() -> Json:
    tenant_rate = sel(TENANT_COST_RATE, TENANT)
    headline = [
        stat(
            "Cost rate now (USD/h)",
            "The tenant's cost rate as billed (basis allocation).",
            f"sum({tenant_rate})",
            USD,
        ),
        stat(
            "Spend this month",
            "Month-to-date spend (calendar month in the finance time zone).",
            f"sum({sel(MTD, TENANT)})",
            USD,
        ),
        stat(
            "Spend last 24 h",
            "Dollars accrued over the last 24 hours (basis allocation).",
            f"sum({sel(TENANT_COST_1D, TENANT)})",
            USD,
        ),
        stat(
            "Spend last 30 days",
            "Dollars accrued over the last 30 days (basis allocation).",
            f"sum({sel(TENANT_COST_30D, TENANT)})",
            USD,
        ),
        stat(
            "Share of cluster cost",
            "The tenant's part of the cost rate of the selected clusters (basis allocation).",
            f"sum({tenant_rate}) / sum({sel(TENANT_COST_RATE)})",
            PERCENT,
        ),
        stat(
            "Budget used (all resources)",
            "Month-to-date spend / monthly budget, scope all.",
            f"max({sel('aifinops_budget_used_ratio', TENANT, SCOPE_ALL)})",
            PERCENT,
            thresholds=BUDGET_STEPS,
        ),
    ]
    by_resource = timeseries(
        "Cost rate by resource (USD/h)",
        "gpu, cpu, ram, storage, network, shared and tokens (API token dollars; a self-hosted "
        "model's cost is in gpu, cpu and ram).",
        [(f"sum by (resource) ({sel(COST_RATE, TENANT)})", "{{resource}}")],
        USD,
        stacked=True,
    )
    range_spend = piechart(
        "Spend by resource over the time range",
        "Dollars accrued in the dashboard's time range, per resource.",
        "sum by (resource) ("
        + max_by(
            "tenant, resource",
            f"increase({sel('aifinops_tenant_cost_usd_total', TENANT)}[$__range])",
        )
        + ")",
        "{{resource}}",
        USD,
        width=6,
    )
    last_day = table(
        "Chargeback last 24 h (USD)",
        "Dollars over the last 24 hours per resource on both bases: allocation (as billed) and "
        "usage (GPU cost by measured use).",
        [
            (f"sum by (resource) ({sel(COST_1D, TENANT)})", "Allocation", USD),
            (f"sum by (resource) ({sel(USAGE_COST_1D, TENANT)})", "Usage", USD),
        ],
        width=6,
    )
    bases = timeseries(
        "Allocation vs usage basis (USD/h)",
        "The tenant's cost rate as billed (allocation) and as used (usage: the unused GPU share "
        "goes to __idle__).",
        [
            (f"sum({sel(TENANT_COST_RATE, TENANT)})", "allocation"),
            (f"sum({sel(TENANT_USAGE_COST_RATE, TENANT)})", "usage"),
        ],
        USD,
    )
    efficiency = timeseries(
        "GPU efficiency by GPU model",
        "Used / allocated GPU-equivalents of the tenant per GPU model.",
        [(sel(EFFICIENCY, TENANT), "{{gpu_model}} {{" + CLUSTER_LABEL + "}}")],
        PERCENT,
        thresholds=EFFICIENCY_LOW,
    )
    token_cost = timeseries(
        "Token cost by model (USD/h)",
        "Token cost rate over the last hour per model: API models at list price, self-hosted "
        "models at their measured price.",
        [(f"sum by (model, provider) ({sel(TOKEN_COST, TENANT)})", BY_MODEL)],
        USD,
        stacked=True,
    )
    tokens = timeseries(
        "Tokens per second by model and type",
        "Tokens per second over the last hour per model and token type.",
        [(f"sum by (model, token_type) ({sel(TOKENS, TENANT)})", "{{model}} {{token_type}}")],
        "short",
    )
    token_spend = table(
        "Token spend by model over the time range (USD)",
        "Dollars of tokens in the dashboard's time range per model.",
        [
            (
                "sort_desc(sum by (model, provider) ("
                + max_by(
                    "tenant, model, provider, token_type",
                    f"increase({sel('aifinops_token_cost_usd_total', TENANT)}[$__range])",
                )
                + "))",
                "USD",
                USD,
            )
        ],
        sort_by="USD",
    )
    idle = table(
        "Idle GPUs held",
        "The tenant's GPUs idle for the whole idle window and their cost rate.",
        [
            (sel(IDLE_GPUS, TENANT), "Idle GPUs", "short"),
            (sel(IDLE_COST, TENANT), "Cost (USD/h)", USD),
        ],
        sort_by="Cost (USD/h)",
    )
    return dashboard(
        "aifinops-tenant-chargeback",
        "AI FinOps / Tenant chargeback",
        "One tenant's cost by resource and by model: rate, daily, 30-day and month-to-date "
        "spend, allocation vs usage basis, tokens.",
        [
            (None, [headline]),
            ("Cost by resource", [[by_resource, range_spend, last_day], [bases, efficiency]]),
            ("Cost by model", [[token_cost, tokens], [token_spend, idle]]),
        ],
        tenant_variable=True,
    )


def gpu_efficiency() -> Json:
    gpus, used, idle_gpus = sel(GPUS), sel(GPUS_USED), sel(IDLE_GPUS)
    unused = max_by("tenant, gpu_model", sel("aifinops_tenant_gpu_unused_cost_usd_per_hour"))
    headline = [
        stat(
            "GPUs allocated",
            "Whole-GPU equivalents allocated to pods.",
            f"sum({gpus})",
            "short",
            decimals=1,
        ),
        stat(
            "GPUs used",
            "Allocated GPU-equivalents x measured utilization.",
            f"sum({used})",
            "short",
            decimals=1,
        ),
        stat(
            "GPU efficiency",
            "Used / allocated GPU-equivalents over the selected clusters.",
            f"sum({used}) / sum({gpus})",
            PERCENT,
            thresholds=EFFICIENCY_STEPS,
        ),
        stat(
            "Idle GPUs",
            "Allocated GPUs below the idle threshold for the whole idle window.",
            f"sum({idle_gpus})",
            "short",
            decimals=1,
        ),
        stat(
            "Idle GPU cost (USD/h)",
            "Cost rate of the idle GPUs.",
            f"sum({sel(TENANT_IDLE_COST)})",
            USD,
        ),
        stat(
            "Unused GPU cost (USD/h)",
            "The unused share of allocated GPUs, idle or not: what basis usage books to __idle__.",
            f"sum({unused})",
            USD,
        ),
    ]
    per_tenant = timeseries(
        "GPU efficiency per tenant",
        "Used / allocated GPU-equivalents per tenant, all GPU models.",
        [(sel(TENANT_EFFICIENCY), BY_TENANT)],
        PERCENT,
        thresholds=EFFICIENCY_LOW,
    )
    per_model = bargauge(
        "GPU efficiency per tenant and GPU model",
        "Now, lowest first.",
        f"sort({sel(EFFICIENCY)})",
        "{{tenant}} · {{gpu_model}}",
        PERCENT,
        thresholds=EFFICIENCY_STEPS,
        max_value=1,
    )
    allocated_used = timeseries(
        "Allocated vs used GPUs by GPU model",
        "GPU-equivalents allocated and used per GPU model.",
        [
            (f"sum by (gpu_model) ({gpus})", "{{gpu_model}} allocated"),
            (f"sum by (gpu_model) ({used})", "{{gpu_model}} used"),
        ],
        "short",
    )
    idle_by_model = timeseries(
        "Idle GPUs by GPU model",
        "GPUs idle for the whole idle window per GPU model.",
        [(f"sum by (gpu_model) ({idle_gpus})", "{{gpu_model}}")],
        "short",
    )
    idle_cost = timeseries(
        "Idle GPU cost per tenant (USD/h)",
        "Cost rate of each tenant's idle GPUs; AIFinOpsIdleGPUCostHigh fires above 10 USD/h "
        "for 2h.",
        [(f"sum by (tenant) ({sel(TENANT_IDLE_COST)})", "{{tenant}}")],
        USD,
        stacked=True,
    )
    idle_table = table(
        "Idle GPUs and their cost by GPU model and tenant",
        "Now, most expensive first.",
        [(idle_gpus, "Idle GPUs", "short"), (sel(IDLE_COST), "Cost (USD/h)", USD)],
        sort_by="Cost (USD/h)",
    )
    bases = table(
        "GPU cost per tenant: allocation vs usage (USD/h)",
        "allocation: requested GPUs x hours x price, as billed. usage: each GPU's cost split by "
        "measured use; the unused rest is __idle__.",
        [
            (f"sum by (tenant) ({sel(COST_RATE, GPU)})", "Allocation", USD),
            (f"sum by (tenant) ({sel(USAGE_COST_RATE, GPU)})", "Usage", USD),
        ],
        width=8,
    )
    unused_series = timeseries(
        "Unused GPU cost per tenant (USD/h)",
        "Whose GPUs the usage basis' __idle__ money came from.",
        [(f"sum by (tenant) ({unused})", "{{tenant}}")],
        USD,
        width=8,
        stacked=True,
    )
    prices = table(
        "GPU price per hour",
        "Price per whole GPU-hour per GPU model and where it comes from (opencost, owned, "
        "catalog, override; docs/owned-gpus.md).",
        [(max_by("gpu_model, source", sel("aifinops_gpu_price_usd_per_hour")), "USD/h", USD)],
        width=8,
    )
    return dashboard(
        "aifinops-gpu-efficiency",
        "AI FinOps / GPU efficiency",
        "GPU utilization per tenant and GPU model, idle GPUs and their cost, and the GPU cost "
        "on the allocation and usage bases.",
        [
            (None, [headline]),
            ("Utilization", [[per_tenant, per_model], [allocated_used, idle_by_model]]),
            ("Idle GPU cost", [[idle_cost, idle_table], [bases, unused_series, prices]]),
        ],
    )


def tokens_routing() -> Json:
    tokens, cost = sel(TOKENS), sel(MODEL_TOKEN_COST)
    routing_savings = max_by(
        "workload, model, provider", sel("aifinops_routing_savings_usd_per_month")
    )
    headline = [
        stat("Tokens per second", "All tokens, last hour.", f"sum({tokens})", "short"),
        stat(
            "Token cost (USD/h)",
            "API tokens at list price plus self-hosted tokens at their measured price, last hour.",
            f"sum({cost})",
            USD,
        ),
        stat(
            "API token cost (USD/h)",
            "Dollars paid to API providers (resource tokens of the chargeback).",
            f"sum({sel(COST_RATE, API_TOKENS)})",
            USD,
        ),
        stat(
            "Unpriced tokens over the time range",
            "Tokens of models with no price: their cost is missing, not zero.",
            "sum("
            + max_by(
                "model, provider", f"increase({sel('aifinops_unpriced_tokens_total')}[$__range])"
            )
            + ")",
            "short",
            thresholds=(("orange", 1),),
        ),
        stat(
            "Routing savings (USD/month)",
            "Monthly savings of moving each workload to its recommended model.",
            f"sum({routing_savings})",
            USD,
        ),
        stat(
            "Self-hosted above API price",
            "Self-hosted models and token types whose measured cost per 1M tokens is above "
            "their API equivalent's price.",
            f"sum({sel(API_RATIO)} > bool 1)",
            "none",
            thresholds=(("orange", 1),),
        ),
    ]
    tokens_by_model = timeseries(
        "Tokens per second by model and provider",
        "Last-hour rate of input, output and cached input tokens together.",
        [(f"sum by (model, provider) ({tokens})", BY_MODEL)],
        "short",
        stacked=True,
    )
    cost_by_model = timeseries(
        "Token cost by model and provider (USD/h)",
        "Last-hour token cost rate.",
        [(f"sum by (model, provider) ({cost})", BY_MODEL)],
        USD,
        stacked=True,
    )
    cost_by_tenant = table(
        "Token cost by tenant and model (USD/h)",
        "Last-hour token cost rate per tenant, model and provider.",
        [(f"sum by (tenant, model, provider) ({sel(TOKEN_COST)})", "USD/h", USD)],
        sort_by="USD/h",
    )
    by_type = timeseries(
        "Tokens per second by token type",
        "input (without cached input), output and cached_input.",
        [(f"sum by (token_type) ({tokens})", "{{token_type}}")],
        "short",
        stacked=True,
    )
    prices = table(
        "USD per 1M tokens",
        "source price_list: the price file or an override; source measured: self-hosted "
        "serving cost / tokens.",
        [
            (
                max_by(
                    "model, provider, token_type, source",
                    sel("aifinops_model_cost_per_million_tokens_usd"),
                ),
                "USD / 1M tokens",
                USD,
            )
        ],
        width=10,
    )
    measured_vs_api = timeseries(
        "Self-hosted measured vs API equivalent (USD / 1M tokens)",
        "A self-hosted model's measured price and the list price of the API model configured "
        "as its equivalent.",
        [
            (
                max_by(
                    "model, token_type",
                    sel("aifinops_model_cost_per_million_tokens_usd", 'source="measured"'),
                ),
                "{{model}} {{token_type}} measured",
            ),
            (
                max_by(
                    "model, token_type",
                    sel("aifinops_model_api_equivalent_cost_per_million_tokens_usd"),
                ),
                "{{model}} {{token_type}} API equivalent",
            ),
        ],
        USD,
        width=8,
    )
    ratio = bargauge(
        "Measured / API equivalent price",
        "Above 100% the self-hosted model costs more per token than its API equivalent.",
        sel(API_RATIO),
        "{{model}} {{token_type}}",
        PERCENT,
        width=6,
        thresholds=(("red", 1),),
    )
    scores = table(
        "Routing score per workload and model",
        "Weighted score in [0, 1] of cost, quality and latency among each workload's "
        "candidates (candidates breaking a constraint are excluded); Recommended = 1 marks the "
        "best.",
        [
            (max_by("workload, model, provider", sel("aifinops_routing_score")), "Score", PERCENT),
            (
                max_by("workload, model, provider", sel("aifinops_routing_recommended")),
                "Recommended",
                "none",
            ),
        ],
        sort_by="Score",
    )
    savings = bargauge(
        "Monthly savings of the recommended model per workload",
        "The workload's observed token volume at the recommended model's price vs its current "
        "model.",
        f"sum by (workload) ({routing_savings})",
        "{{workload}}",
        USD,
    )
    return dashboard(
        "aifinops-tokens-routing",
        "AI FinOps / Tokens and routing",
        "LLM tokens and their cost by model and provider, USD per 1M tokens measured vs list "
        "price, model routing scores and the savings of switching.",
        [
            (None, [headline]),
            ("Tokens and cost", [[tokens_by_model, cost_by_model], [cost_by_tenant, by_type]]),
            ("USD per 1M tokens", [[prices, measured_vs_api, ratio]]),
            ("Model routing", [[scores, savings]]),
        ],
    )


def exporter_health() -> Json:
    per_replica = "{{source}} · {{instance}}"
    headline = [
        stat(
            "Replicas up",
            "Exporter targets Prometheus scrapes successfully.",
            f"sum({sel('up', EXPORTER_JOB)})",
            "none",
        ),
        stat(
            "Sources up",
            "Sources whose last fetch succeeded on at least one replica.",
            f"sum({sel(SOURCE_UP)})",
            "none",
        ),
        stat(
            "Sources stale",
            "Sources whose data passed stale_after_seconds and was dropped.",
            f"sum({max_by('source', sel('aifinops_source_stale'))})",
            "none",
            thresholds=(("red", 1),),
        ),
        stat(
            "Oldest data in use",
            "Age of the oldest source data any replica serves.",
            f"max({sel('aifinops_source_age_seconds')})",
            "s",
            thresholds=(("orange", 300),),
        ),
        stat(
            "Since last refresh",
            "Time since the most recent refresh cycle of any replica.",
            f"time() - max({sel('aifinops_last_refresh_timestamp_seconds')})",
            "s",
            thresholds=(("orange", 120),),
        ),
        stat(
            "Tenants folded into __other__",
            "Tenants beyond limits.max_tenants (their money is kept in __other__).",
            f"max({sel('aifinops_folded_tenants')})",
            "none",
            thresholds=(("orange", 1),),
        ),
    ]
    up = state_timeline(
        "Source up per replica",
        "Whether each replica's last fetch of each source succeeded.",
        sel("aifinops_source_up"),
        per_replica,
    )
    age = timeseries(
        "Data age per source and replica",
        "Seconds since each source's last successful fetch.",
        [(sel("aifinops_source_age_seconds"), per_replica)],
        "s",
    )
    errors = timeseries(
        "Fetch errors per second",
        "Failed fetches per source and reason (connect, timeout, http_status, too_large, "
        "parse, invalid), last 5 minutes.",
        [(sel(SOURCE_ERRORS), "{{source}} {{reason}}")],
        "short",
        width=8,
    )
    fetch = timeseries(
        "Fetch duration per source",
        "Duration of each source's last fetch and parse (slowest replica).",
        [(max_by("source", sel("aifinops_source_duration_seconds")), "{{source}}")],
        "s",
        width=8,
    )
    refresh = timeseries(
        "Refresh duration per replica",
        "Duration of the last refresh cycle (fetch, model, render).",
        [(sel("aifinops_refresh_duration_seconds"), "{{instance}}")],
        "s",
        width=8,
    )
    refreshes = timeseries(
        "Refreshes per minute per replica",
        "Refresh cycles completed per minute.",
        [(f"rate({sel('aifinops_refreshes_total')}[$__rate_interval]) * 60", "{{instance}}")],
        "short",
    )
    versions = table(
        "Versions per replica",
        "Exporter, rule bundle and GPU price catalog versions.",
        [(sel("aifinops_build_info"), "Up", "none")],
    )
    return dashboard(
        "aifinops-exporter-health",
        "AI FinOps / Exporter health",
        "The exporter itself: replicas and sources up, data age, refresh and fetch durations, "
        "fetch errors.",
        [
            (None, [headline]),
            ("Sources", [[up, age], [errors, fetch, refresh], [refreshes, versions]]),
        ],
        time_from="now-6h",
    )


DASHBOARDS = {
    "executive.json": executive,
    "tenant-chargeback.json": tenant_chargeback,
    "gpu-efficiency.json": gpu_efficiency,
    "tokens-routing.json": tokens_routing,
    "exporter-health.json": exporter_health,
}


def templates() -> dict[str, str]:
    """``{file name: JSON text}`` of every dashboard as built here, placeholders unfilled:
    the mixin's dashboard sources (mixin/dashboards/*.json)."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def render(sources: dict[str, str] | None = None) -> dict[str, str]:
    """``{file name: JSON text}`` of every dashboard as the mixin renders ``sources`` (by
    default :func:`templates`) with its default _config: the committed dashboards/*.json."""
    sources = templates() if sources is None else sources
    rendered: dict[str, Any] = evaluate_mixin(
        "(mixin + { dashboardTemplates:: std.parseJson(std.extVar('templates')) })"
        ".renderedDashboards",
        ext={"templates": json.dumps({n: json.loads(t) for n, t in sources.items()})},
    )
    return {name: json.dumps(rendered[name], indent=2) + "\n" for name in sources}


ERR = sys.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed files drift")
    args = parser.parse_args(argv)
    sources = templates()
    rendered = render(sources)
    stale_sources = [n for n, t in sources.items() if _read(TEMPLATES_DIR / n) != t]
    stale = [n for n, t in rendered.items() if _read(DASHBOARDS_DIR / n) != t]
    if args.check:
        for name in stale_sources:
            print(
                f"build_dashboards: mixin/dashboards/{name} differs from its build", file=sys.stderr
            )
        for name in stale:
            print(f"build_dashboards: dashboards/{name} differs from its build", file=sys.stderr)
        return 1 if stale or stale_sources else 0
    TEMPLATES_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale_sources:
        (TEMPLATES_DIR / name).write_text(sources[name])
        print(f"wrote mixin/dashboards/{name}")
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for name in stale:
        (DASHBOARDS_DIR / name).write_text(rendered[name])
        print(f"wrote dashboards/{name}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
