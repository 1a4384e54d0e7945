"""The monitoring mixin (mixin/, jsonnet): rendered with the `jsonnet` package, its rules
equal the committed rules/*.rules.yaml and pass promtool; `_config` changes what it renders
(the cluster label, the exporter selector, the runbook URL pattern, the thresholds); and the
dashboards read the same thresholds as the alerts."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.tools import require_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render_rules = _script("render_rules")


def mixin(expression: str, config: dict[str, Any] | None = None) -> Any:
    return render_rules.evaluate_mixin(expression, config)


def committed_groups() -> list[dict[str, Any]]:
    return [
        g
        for path in sorted(RULES.glob("*.rules.yaml"))
        for g in yaml.safe_load(path.read_text())["groups"]
    ]


def test_the_mixin_has_the_kube_prometheus_fields() -> None:
    fields = mixin(
        "{ config: std.objectHasAll(mixin, '_config'), alerts: mixin.prometheusAlerts,"
        " rules: mixin.prometheusRules, dashboards: std.objectFields(mixin.grafanaDashboards) }"
    )
    assert fields["config"] is True
    assert fields["alerts"]["groups"] and fields["rules"]["groups"]
    assert all("alert" in r for g in fields["alerts"]["groups"] for r in g["rules"])
    assert all("record" in r for g in fields["rules"]["groups"] for r in g["rules"])
    assert sorted(fields["dashboards"]) == sorted(
        f"aifinops-{p.name}" for p in (ROOT / "dashboards").glob("*.json")
    )


def test_the_mixins_rules_equal_the_committed_rule_files() -> None:
    rendered = mixin("mixin.prometheusRules.groups + mixin.prometheusAlerts.groups")
    by_name = {g["name"]: g for g in committed_groups()}
    assert sorted(g["name"] for g in rendered) == sorted(by_name)
    for group in rendered:
        assert group == by_name[group["name"]], group["name"]
    # and the committed files are the mixin's rendering, byte for byte
    for name, text in render_rules.render_mixin().items():
        assert (RULES / name).read_text() == text, f"run python scripts/render_rules.py ({name})"


def test_the_rendered_mixin_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    doc = mixin("{ groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups }")
    path = tmp_path / "mixin.rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


RAW_SERIES = re.compile(r"(?<![:\w])aifinops_[a-z0-9_]+(?![:\w])")


def test_the_aifinops_selector_reaches_every_raw_series_and_passes_promtool(
    tmp_path: Path,
) -> None:
    """Every aifinops_* series an expression reads carries _config.aifinopsSelector (a new
    rule without ${selector:braces} / ${selector:comma} fails here), and the result is valid."""
    selector = 'job="finops"'
    groups = mixin(
        "mixin.prometheusRules.groups + mixin.prometheusAlerts.groups",
        {"aifinopsSelector": selector},
    )
    missing = [
        (rule.get("record") or rule.get("alert"), m.group(0))
        for g in groups
        for rule in g["rules"]
        for m in RAW_SERIES.finditer(rule["expr"])
        if not rule["expr"][m.end() :].startswith("{" + selector)
    ]
    assert not missing
    promtool = require_binary("promtool")
    path = tmp_path / "selected.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_changes_what_the_mixin_renders() -> None:
    config = {
        "clusterLabel": "k8s_cluster",
        "exporterSelector": 'job="finops", namespace="monitoring"',
        "runbookURLPattern": "https://wiki.example.org/aifinops#%s",
        "idle_gpu_cost_usd_per_hour": 25,
    }
    text = json.dumps(mixin("mixin.prometheusRules.groups + mixin.prometheusAlerts.groups", config))
    assert "by (k8s_cluster, tenant" in text and "by (cluster," not in text
    assert 'up{job=\\"finops\\", namespace=\\"monitoring\\"}' in text
    assert "https://wiki.example.org/aifinops#aifinopsidlegpucosthigh" in text
    idle = next(
        r
        for g in mixin("mixin.prometheusAlerts.groups", config)
        for r in g["rules"]
        if r["alert"] == "AIFinOpsIdleGPUCostHigh"
    )
    assert idle["expr"].strip().endswith("> 25")
    assert "threshold 25 USD/h" in idle["annotations"]["description"]


def test_dashboards_colour_at_the_alerts_thresholds() -> None:
    config = mixin("mixin._config")
    build = _script("build_dashboards")
    assert build.THRESHOLDS["idle_gpu_cost_usd_per_hour"] == config["idle_gpu_cost_usd_per_hour"]
    dashboards = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}

    def steps(title: str) -> list[float]:
        for board in dashboards.values():
            for panel in board["panels"]:
                if panel.get("title") == title:
                    return [
                        s["value"]
                        for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                        if s["value"] is not None
                    ]
        raise AssertionError(f"no panel {title!r}")

    assert config["idle_gpu_cost_usd_per_hour"] in steps("Idle GPU cost (USD/h)")
    assert config["gpu_efficiency_low_ratio"] in steps("GPU efficiency by GPU model")
    exporter = json.dumps(dashboards["exporter-health.json"])
    assert json.dumps(config["exporterSelector"])[1:-1] in exporter


def test_config_reaches_the_dashboards() -> None:
    """The dashboards are rendered by the mixin too: a user's _config changes them."""
    config = {"clusterLabel": "k8s_cluster", "idle_gpu_cost_usd_per_hour": 25}
    boards = mixin("mixin.grafanaDashboards", config)
    text = json.dumps(boards)
    assert "@@" not in text
    assert 'k8s_cluster=~\\"$cluster\\"' in text and 'cluster=~\\"$cluster\\"' not in text.replace(
        "k8s_cluster", ""
    )
    idle = [
        step["value"]
        for panel in boards["aifinops-executive.json"]["panels"]
        if panel.get("title") == "Idle GPU cost (USD/h)"
        for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    ]
    assert 25 in idle
    # and the committed dashboards are the mixin's rendering with the default _config
    build = _script("build_dashboards")
    for name, text in build.render().items():
        assert (ROOT / "dashboards" / name).read_text() == text, name
