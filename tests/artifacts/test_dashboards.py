"""dashboards/*.json, by structure (no Grafana server here): a small schema of our own.

Unique uids, a ``datasource`` variable that every panel and target uses, the optional
``cluster`` variable, gridPos inside the 24-column grid with no overlaps, the schemaVersion,
series names from the metric contract or the rule bundle, every selector kept to the
selected cluster, recording rules read where one exists, no ``sum`` over a raw series (the
exporter runs two replicas), and no drift from scripts/build_dashboards.py. Every query is
run against a real Prometheus in tests/e2e/test_stack.py.
"""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType
from typing import Any

import pytest

from aifinops.exposition.catalog import CATALOG
from tests.dashboards import (
    GRAFANA_VARIABLES,
    ROOT,
    load_dashboards,
    mask_strings,
    panels,
    queries,
    recording_rules,
    series_refs,
    variables_used,
)

# Grafana 12.0-12.1 write 41; 42 (12.2+) only migrates hideFrom.viz overrides, unused here.
SCHEMA_VERSION = 41
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CLUSTER_MATCHER = 'cluster=~"$cluster"'
EXPECTED_UIDS = {
    "aifinops-executive",
    "aifinops-tenant-chargeback",
    "aifinops-gpu-efficiency",
    "aifinops-tokens-routing",
    "aifinops-exporter-health",
    "aifinops-energy-carbon",
}

CATALOG_NAMES = frozenset(m.name for m in CATALOG)
RECORDS = recording_rules()
FOREIGN_SERIES = frozenset({"up"})

# A raw series read although a recording rule records it unchanged, allowed where the panel
# needs a label the rule drops: (dashboard file, series) → why.
RAW_READS_ALLOWED = {
    ("exporter-health.json", "aifinops_source_up"): "per replica: the rule drops instance",
}

DASHBOARDS = load_dashboards()
QUERIES = queries(DASHBOARDS)


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", ROOT / "scripts" / "build_dashboards.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- checks (each returns the problems found; the tests below also feed them bad input) -----


def grid_problems(dashboard: dict[str, Any]) -> list[str]:
    """Panels outside the 24-column grid, overlapping, or with duplicate ids."""
    problems: list[str] = []
    boxes: list[tuple[str, int, int, int, int]] = []
    ids: set[int] = set()
    for panel in dashboard["panels"]:
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problems.append(f"{title}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        pos = panel.get("gridPos") or {}
        x, y, w, h = (pos.get(k) for k in "xywh")
        if not all(isinstance(v, int) for v in (x, y, w, h)):
            problems.append(f"{title}: gridPos needs integer x, y, w, h: {pos}")
            continue
        assert isinstance(x, int) and isinstance(y, int) and isinstance(w, int)
        assert isinstance(h, int)
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > GRID_WIDTH:
            problems.append(f"{title}: gridPos {pos} is outside the {GRID_WIDTH}-column grid")
        for other, ox, oy, ow, oh in boxes:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                problems.append(f"{title} overlaps {other}")
        boxes.append((title, x, y, w, h))
    return problems


def datasource_problems(dashboard: dict[str, Any]) -> list[str]:
    """A missing ``datasource`` variable, or a panel or target that does not use it."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    problems = []
    ds = variables.get("datasource")
    if not ds or ds["type"] != "datasource" or ds["query"] != "prometheus":
        problems.append("no variable `datasource` of type datasource (query prometheus)")
    for variable in variables.values():
        if variable["type"] == "query" and variable.get("datasource") != DATASOURCE:
            problems.append(f"variable {variable['name']}: datasource is not $datasource")
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{panel['title']}: datasource {panel.get('datasource')}")
        if not panel.get("targets"):
            problems.append(f"{panel['title']}: no queries")
        for target in panel.get("targets", []):
            if target.get("datasource") != DATASOURCE:
                problems.append(f"{panel['title']} {target['refId']}: datasource of the target")
            if not target.get("expr", "").strip():
                problems.append(f"{panel['title']} {target['refId']}: empty expr")
        refs = [t["refId"] for t in panel.get("targets", [])]
        if len(refs) != len(set(refs)):
            problems.append(f"{panel['title']}: duplicate refIds {refs}")
    return problems


def unknown_series(expr: str) -> set[str]:
    known = CATALOG_NAMES | RECORDS.keys() | FOREIGN_SERIES
    return {name for name, _ in series_refs(expr)} - known


def selectors_without_cluster(expr: str) -> list[str]:
    return [
        name
        for name, matchers in series_refs(expr)
        if matchers is None or CLUSTER_MATCHER not in matchers
    ]


# `sum` straight over a raw series, or over rate()/increase()/…_over_time() of one.
SUM_OVER_RAW = re.compile(
    r"\bsum\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*"
    r"(?:(?:rate|irate|increase|delta|\w+_over_time)\s*\(\s*)?(aifinops_\w+)"
)


def sums_over_raw(expr: str) -> list[str]:
    return [n for n in SUM_OVER_RAW.findall(mask_strings(expr)) if n in CATALOG_NAMES]


def _twins() -> dict[str, str]:
    """Raw series → the recording rule that records it as ``max by (...) (series)``."""
    out = {}
    for record, expr in RECORDS.items():
        match = re.fullmatch(r"\s*max by \([^)]*\) \((aifinops_\w+)\)\s*", expr)
        if match:
            out[match.group(1)] = record
    return out


TWINS = _twins()


# --- the dashboards ------------------------------------------------------------------------


def test_the_six_dashboards_exist_with_fixed_uids() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids)), f"duplicate uids: {uids}"
    assert set(uids) == EXPECTED_UIDS
    for uid in uids:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(titles) == len(set(titles)), titles


def test_committed_dashboards_match_their_build() -> None:
    rendered = _builder().render()
    assert set(rendered) == set(DASHBOARDS), "run python scripts/build_dashboards.py"
    for name, text in rendered.items():
        assert (ROOT / "dashboards" / name).read_text() == text, (
            f"dashboards/{name} differs from scripts/build_dashboards.py: run it"
        )


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_schema_version_tags_and_time(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert "aifinops" in dashboard["tags"]
    assert dashboard["time"]["to"] == "now"
    assert dashboard.get("description")


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlap(name: str) -> None:
    assert grid_problems(DASHBOARDS[name]) == []


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_uses_the_datasource_variable(name: str) -> None:
    assert datasource_problems(DASHBOARDS[name]) == []


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_cluster_variable_and_every_variable_defined(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    cluster = variables["cluster"]
    assert cluster["query"] == "label_values(aifinops_build_info, cluster)"
    assert cluster["includeAll"] is True
    assert cluster["allValue"] == ".*"  # also matches series without a cluster label
    for query in (q for q in QUERIES if q.dashboard == name):
        undefined = variables_used(query.expr) - variables.keys() - GRAFANA_VARIABLES
        assert not undefined, f"{query}: undefined variables {undefined}"


def test_chargeback_has_a_tenant_variable_used_by_every_panel() -> None:
    dashboard = DASHBOARDS["tenant-chargeback.json"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["tenant"]["type"] == "query"
    assert variables["tenant"]["multi"] is False
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        exprs = " ".join(t["expr"] for t in panel["targets"])
        assert "$tenant" in exprs, f"{panel['title']} ignores the tenant variable"


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_query_reads_known_series_in_the_selected_cluster(query: Any) -> None:
    unknown = unknown_series(query.expr)
    assert not unknown, (
        f"{query}: {sorted(unknown)} are neither in aifinops.exposition.catalog.CATALOG nor "
        "recorded by rules/*.rules.yaml"
    )
    # The cluster variable's own query lists every cluster.
    missing = [] if query.panel == "$cluster" else selectors_without_cluster(query.expr)
    assert not missing, f"{query}: {missing} without {CLUSTER_MATCHER}"
    assert not sums_over_raw(query.expr), (
        f"{query}: sum over raw exporter series double-counts its replicas; use max by "
        "or a recording rule"
    )


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_query_reads_the_recording_rule_where_one_exists(query: Any) -> None:
    for name, _ in series_refs(query.expr):
        if name in TWINS and (query.dashboard, name) not in RAW_READS_ALLOWED:
            pytest.fail(f"{query}: reads {name}; the recording rule {TWINS[name]} has it")


def test_every_dashboard_is_in_the_deploy_bundle() -> None:
    generated = ROOT / "deploy" / "kubernetes" / "base" / "generated" / "dashboards"
    for name in DASHBOARDS:
        path = generated / name
        assert path.exists(), f"run python scripts/generate.py: {path} is missing"
        assert path.read_text() == (ROOT / "dashboards" / name).read_text()


# --- the checks can fail -------------------------------------------------------------------


def _dashboard(*gridpos: tuple[int, int, int, int]) -> dict[str, Any]:
    return {
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "x"}]},
        "panels": [
            {
                "id": i,
                "title": f"p{i}",
                "type": "stat",
                "gridPos": dict(zip("xywh", pos, strict=True)),
                "datasource": {"type": "prometheus", "uid": "prom-1"},
                "targets": [{"refId": "A", "expr": "up", "datasource": DATASOURCE}],
            }
            for i, pos in enumerate(gridpos)
        ],
    }


def test_grid_check_finds_overflow_and_overlap() -> None:
    assert grid_problems(_dashboard((0, 0, 12, 4), (12, 0, 12, 4), (0, 4, 24, 2))) == []
    assert grid_problems(_dashboard((0, 0, 12, 4), (11, 3, 4, 4))) == ["p1 overlaps p0"]
    assert "outside" in grid_problems(_dashboard((16, 0, 12, 4)))[0]


def test_datasource_check_finds_a_fixed_datasource() -> None:
    problems = datasource_problems(_dashboard((0, 0, 4, 4)))
    assert "no variable `datasource`" in problems[0]
    assert "p0: datasource {'type': 'prometheus', 'uid': 'prom-1'}" in problems


def test_series_checks_find_unknown_names_missing_cluster_and_sums_over_raw() -> None:
    expr = 'sum by (tenant) (aifinops_tenant_gpus{tenant="a"}) / aifinops_nope{job=~".*aifinops"}'
    assert unknown_series(expr) == {"aifinops_nope"}
    assert selectors_without_cluster(expr) == ["aifinops_tenant_gpus", "aifinops_nope"]
    assert sums_over_raw(expr) == ["aifinops_tenant_gpus"]
    assert sums_over_raw(f"sum(rate(aifinops_tokens_total{{{CLUSTER_MATCHER}}}[5m]))") == [
        "aifinops_tokens_total"
    ]
    fine = f"sum(max by (cluster, tenant) (aifinops_tenant_gpus{{{CLUSTER_MATCHER}}}))"
    assert sums_over_raw(fine) == [] and selectors_without_cluster(fine) == []
    assert TWINS["aifinops_tenant_gpus"] == "tenant_gpu_model:aifinops_tenant_gpus:max"
