"""The panel library of the dashboards: a panel is a title, a description, its queries and a
width; :func:`layout` places the panels on Grafana's 24-column grid, row after row, so
positions never overlap or overflow. Every query keeps to the selected cluster (:func:`sel`)
and de-duplicates the exporter's replicas with :func:`max_by` where it reads a raw series.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from render_rules import evaluate_mixin  # the scripts' sibling module (scripts/ on sys.path)

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


# --- units, colours and legends the dashboards share ---------------------------------------

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


def max_by(labels: str, selector: str) -> str:
    """``max by (cluster, <labels>) (<selector>)``: one value per series whatever the number
    of exporter replicas (a ``sum`` would count every dollar once per replica)."""
    return f"max by ({CLUSTER_LABEL}, {labels}) ({selector})"
