"""alertmanager/alertmanager.yml: validated by the real amtool (0.25), routing checked with
`amtool config routes test --verify.receivers` (exit 1 on a mismatch), and the properties the
tools do not check: grouping, inhibition, secrets from files only, templates defined.
Delivery of real notifications is tested in tests/e2e/test_alert_pipeline.py.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import require_binary

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
TEMPLATES = ROOT / "alertmanager" / "templates"

# Keys that would put a secret in the file; each has a *_file (or credentials_file) twin.
INLINE_SECRET_KEYS = {
    "slack_api_url",
    "api_url",
    "routing_key",
    "service_key",
    "auth_password",
    "smtp_auth_password",
    "auth_secret",
    "smtp_auth_secret",
    "credentials",
    "password",
    "bearer_token",
    "opsgenie_api_key",
    "api_key",
}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("amtool"), *args], capture_output=True, text=True, timeout=60
    )


def config() -> dict[str, Any]:
    doc = yaml.safe_load(CONFIG.read_text())
    assert isinstance(doc, dict)
    return doc


def test_amtool_check_config_is_clean() -> None:
    proc = amtool("check-config", str(CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# (labels of the alert, receivers in route order). `notify` opts an alert or a tenant into
# the optional email / webhook copies (set by Prometheus' alert_relabel_configs).
ROUTES = [
    ({"alertname": "AIFinOpsBudgetUsageHigh", "severity": "warning", "tenant": "acme"}, "slack"),
    (
        {"alertname": "AIFinOpsBudgetUsageHigh", "severity": "critical", "tenant": "acme"},
        "pagerduty,slack",
    ),
    (
        {"alertname": "AIFinOpsSourceStale", "severity": "critical", "cluster": "eu"},
        "pagerduty,slack",
    ),
    ({"alertname": "AIFinOpsGPUEfficiencyLow", "severity": "info", "tenant": "acme"}, "null"),
    (
        {"alertname": "AIFinOpsBudgetExceeded", "severity": "critical", "notify": "email"},
        "pagerduty,email,slack",
    ),
    (
        {"alertname": "AIFinOpsCostAnomaly", "severity": "warning", "notify": "email,webhook"},
        "email,webhook,slack",
    ),
    (
        {"alertname": "AIFinOpsSelfHostedCostAboveAPI", "severity": "info", "notify": "webhook"},
        "webhook",
    ),
    # Near misses of the notify list do not match.
    ({"alertname": "AIFinOpsCostAnomaly", "severity": "warning", "notify": "emails"}, "slack"),
    # A per-tenant Slack channel is a label, not a route: same receiver.
    (
        {"alertname": "AIFinOpsIdleGPUCostHigh", "severity": "warning", "slack_channel": "#x"},
        "slack",
    ),
    # Unknown severities and foreign alerts stay in Alertmanager.
    ({"alertname": "SomethingElse"}, "null"),
    ({"alertname": "AIFinOpsCostAnomaly", "severity": "page"}, "null"),
]


@pytest.mark.parametrize(("labels", "receivers"), ROUTES, ids=lambda v: str(v))
def test_route(labels: dict[str, str], receivers: str) -> None:
    args = [f"{k}={v}" for k, v in labels.items()]
    proc = amtool(
        "config", "routes", "test", f"--config.file={CONFIG}",
        f"--verify.receivers={receivers}", *args,
    )  # fmt: skip
    assert proc.returncode == 0, f"got {proc.stdout.strip()!r}, want {receivers!r}"
    assert proc.stdout.strip() == receivers


def test_route_check_can_fail() -> None:
    proc = amtool(
        "config", "routes", "test", f"--config.file={CONFIG}",
        "--verify.receivers=pagerduty", "severity=warning",
    )  # fmt: skip
    assert proc.returncode == 1


def test_grouping_is_by_alertname_tenant_and_cluster() -> None:
    route = config()["route"]
    assert set(route["group_by"]) == {"alertname", "tenant", "cluster"}
    assert route["receiver"] == "null"


def test_critical_inhibits_warning_of_the_same_alert_tenant_and_cluster() -> None:
    rules = config()["inhibit_rules"]
    tiers = [
        r
        for r in rules
        if r.get("source_matchers") == ['severity="critical"']
        and r.get("target_matchers") == ['severity="warning"']
    ]
    assert len(tiers) == 1
    assert {"alertname", "tenant", "cluster", "scope"} == set(tiers[0]["equal"])


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def test_secrets_come_from_files_only() -> None:
    inline = [f"{p}.{k}" for p, k, _v in _walk(config()) if k in INLINE_SECRET_KEYS]
    assert not inline, f"secrets must be *_file references: {inline}"
    files = [v for _p, k, v in _walk(config()) if k.endswith("_file")]
    assert files and all(isinstance(v, str) and v.startswith("secrets/") for v in files)


def test_pagerduty_only_for_criticals_and_slack_for_warnings_and_criticals() -> None:
    routes = config()["route"]["routes"]
    by_receiver = {r["receiver"]: r for r in routes}
    assert by_receiver["pagerduty"]["matchers"] == ['severity="critical"']
    assert by_receiver["pagerduty"]["continue"] is True
    assert by_receiver["slack"]["matchers"] == ['severity=~"warning|critical"']
    receivers = {r["name"]: r for r in config()["receivers"]}
    for name in ("slack", "pagerduty", "email", "webhook"):
        configs = next(v for k, v in receivers[name].items() if k.endswith("_configs"))
        assert all(c.get("send_resolved") is True for c in configs), name


def _defined_templates() -> set[str]:
    text = "".join(p.read_text() for p in TEMPLATES.glob("*.tmpl"))
    return set(re.findall(r'{{-?\s*define\s+"([^"]+)"', text))


def test_every_template_used_is_defined_and_renders() -> None:
    used = set(re.findall(r'template\s+"([^"]+)"', CONFIG.read_text()))
    defined = _defined_templates()
    assert used and used <= defined, f"undefined: {used - defined}"
    text = "|".join(
        f'{{{{ template "{name}" {".Alerts" if name == "aifinops.text" else "."} }}}}'
        for name in sorted(defined)
    )
    proc = amtool(
        "template", "render", f"--template.glob={TEMPLATES}/*.tmpl", f"--template.text={text}"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "#aifinops-alerts" in proc.stdout  # the default Slack channel
