"""The alert pipeline end to end: exposition → Prometheus with the rendered rule bundle →
Alertmanager with alertmanager/alertmanager.yml → Slack and PagerDuty payloads.

The rules are rendered by scripts/render_rules.py with one override, `budget_usage_for: 0s`
(AIFinOpsBudgetUsageHigh's `for:`, 15m in the bundle), so a threshold crossing fires at the
next evaluation; everything else is the committed bundle. The Alertmanager configuration is
the committed file with test-only values: the secret files (written into its temporary
folder, resolved relative to it), the PagerDuty endpoint and 1s group timings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    Alertmanager,
    ExpositionServer,
    Processes,
    Prometheus,
    RecordingSink,
    bundled_alertmanager,
    start_prometheus,
    wait_until,
)
from tests.e2e.harness import render_rule_files as harness_render_rule_files
from tests.tools import require_binary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER_DIR = ROOT / "alertmanager"
RUNBOOK = "https://aifinops.example.com/runbook.md"
RULE_OVERRIDES = {"budget_usage_for": "0s"}
WAIT = 20.0
ALERT = "AIFinOpsBudgetUsageHigh"


def render_rule_files(folder: Path) -> list[Path]:
    return harness_render_rule_files(folder, RULE_OVERRIDES)


def exposition(used: dict[str, float]) -> str:
    """What the exporter publishes for budgets (scope all; default thresholds)."""
    lines = [
        "# TYPE aifinops_budget_used_ratio gauge",
        *(f'aifinops_budget_used_ratio{{tenant="{t}",scope="all"}} {r}' for t, r in used.items()),
        "# TYPE aifinops_budget_warning_ratio gauge",
        *(f'aifinops_budget_warning_ratio{{tenant="{t}",scope="all"}} 0.8' for t in used),
        "# TYPE aifinops_budget_critical_ratio gauge",
        *(f'aifinops_budget_critical_ratio{{tenant="{t}",scope="all"}} 1' for t in used),
    ]
    return "\n".join(lines) + "\n"


def start_alertmanager_from_repo(
    procs: Processes, workdir: Path, sink: RecordingSink
) -> Alertmanager:
    return bundled_alertmanager(
        procs,
        workdir,
        ALERTMANAGER_DIR,
        sink.url,
        route_timings={"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        binary=require_binary("prometheus-alertmanager"),
    )


def slack_attachment(body: Any) -> dict[str, Any]:
    attachment: dict[str, Any] = body["attachments"][0]
    return attachment


def evaluated_after(prom: Prometheus, moment: float) -> bool:
    """Every alerting rule named ALERT was evaluated after ``moment`` (epoch seconds)."""
    rules = [r for r in prom.alert_rules() if r["name"] == ALERT]
    return bool(rules) and all(
        datetime.fromisoformat(r["lastEvaluation"]).timestamp() > moment for r in rules
    )


@pytest.fixture
def procs() -> Iterator[Processes]:
    with Processes() as processes:
        yield processes


def test_budget_alert_reaches_slack_and_pagerduty_inhibits_and_resolves(
    tmp_path: Path, procs: Processes
) -> None:
    with RecordingSink() as sink, ExpositionServer(exposition({"acme": 0.5, "beta": 0.5})) as expo:
        am = start_alertmanager_from_repo(procs, tmp_path / "am", sink)
        prom = start_prometheus(
            procs,
            tmp_path / "prom",
            scrape_targets={"aifinops-exporter": [expo.host_port]},
            rule_files=render_rule_files(tmp_path / "rules"),
            alertmanagers=[am],
            # The documented way to give a tenant its own Slack channel.
            alert_relabel_configs=[
                {
                    "source_labels": ["tenant"],
                    "regex": "acme",
                    "target_label": "slack_channel",
                    "replacement": "#finops-acme",
                }
            ],
            binary=require_binary("prometheus"),
        )

        # 1. Under budget: the rules evaluate the scraped series and nothing fires.
        wait_until(
            lambda: len(prom.query("aifinops_budget_used_ratio == 0.5")) == 2,
            WAIT,
            "the first scrape",
        )
        scraped = time.time()
        wait_until(lambda: evaluated_after(prom, scraped), WAIT, f"{ALERT} evaluated")
        assert all(r["state"] == "inactive" for r in prom.alert_rules() if r["name"] == ALERT)

        # 2. Both tenants cross the warning ratio: one Slack message per tenant; acme's in its
        #    own channel (slack_channel label), beta's in the default one; no page.
        expo.set(exposition({"acme": 0.9, "beta": 0.9}))
        acme_warning = sink.wait_for(
            "/slack",
            lambda b: (
                b["channel"] == "#finops-acme"
                and slack_attachment(b)["title"] == f"[FIRING:1] {ALERT} · acme"
            ),
            WAIT,
            "acme's warning in #finops-acme",
        )
        attachment = slack_attachment(acme_warning.body)
        assert attachment["text"] == (
            "*Month-to-date spend reached the warning ratio of a budget.*\n"
            "• [warning] Tenant acme has spent 90% of its monthly budget (scope all); "
            f"warning at 80%. <{RUNBOOK}#aifinopsbudgetusagehigh|Runbook>\n"
        )
        assert attachment["color"] == "warning"
        assert attachment["title_link"] == f"{RUNBOOK}#aifinopsbudgetusagehigh"
        sink.wait_for(
            "/slack",
            lambda b: (
                b["channel"] == "#aifinops-alerts"
                and slack_attachment(b)["title"] == f"[FIRING:1] {ALERT} · beta"
            ),
            WAIT,
            "beta's warning in the default channel",
        )
        assert sink.received("/pagerduty") == []

        # 3. acme crosses the critical ratio: PagerDuty is paged, Slack shows the critical
        #    and not the warning, which Alertmanager inhibits.
        expo.set(exposition({"acme": 1.2, "beta": 0.9}))
        page = sink.wait_for(
            "/pagerduty",
            lambda b: b["event_action"] == "trigger",
            WAIT,
            "a PagerDuty trigger",
        )
        assert page.body["routing_key"] == "e2e-routing-key"
        assert page.body["payload"]["severity"] == "critical"
        assert page.body["payload"]["summary"] == (
            f"[FIRING:1] {ALERT} · acme: "
            "Month-to-date spend reached the critical ratio of a budget."
        )
        assert page.body["links"] == [
            {"href": f"{RUNBOOK}#aifinopsbudgetusagehigh", "text": "Runbook"}
        ]
        assert "critical at 100%" in page.body["payload"]["custom_details"]["firing"]
        critical = sink.wait_for(
            "/slack",
            lambda b: "critical at 100%" in slack_attachment(b)["text"],
            WAIT,
            "acme's critical in Slack",
        )
        assert slack_attachment(critical.body)["title"] == f"[FIRING:1] {ALERT} · acme"
        assert "warning at 80%" not in slack_attachment(critical.body)["text"]
        assert slack_attachment(critical.body)["color"] == "danger"

        def inhibited_warning() -> dict[str, Any] | None:
            return next(
                (
                    a
                    for a in am.alerts(inhibited=True)
                    if a["labels"].get("tenant") == "acme"
                    and a["labels"]["severity"] == "warning"
                    and a["status"]["inhibitedBy"]
                ),
                None,
            )

        warning = wait_until(inhibited_warning, WAIT, "acme's warning inhibited")
        assert warning["status"]["state"] == "suppressed"
        # beta's warning has no critical beside it: not inhibited.
        assert all(a["labels"]["tenant"] != "beta" for a in am.alerts(inhibited=True, active=False))

        # 4. Back under budget: Slack and PagerDuty get the resolution.
        expo.set(exposition({"acme": 0.5, "beta": 0.9}))
        resolve = sink.wait_for(
            "/pagerduty",
            lambda b: b["event_action"] == "resolve",
            WAIT,
            "a PagerDuty resolve",
        )
        assert resolve.body["dedup_key"] == page.body["dedup_key"]
        resolved = sink.wait_for(
            "/slack",
            lambda b: slack_attachment(b)["title"] == f"[RESOLVED] {ALERT} · acme",
            WAIT,
            "acme's resolution in Slack",
        )
        assert "[RESOLVED] [critical] Tenant acme" in slack_attachment(resolved.body)["text"]
        assert slack_attachment(resolved.body)["color"] == "good"
        # Nothing about beta was ever paged.
        assert all("beta" not in str(r.body) for r in sink.received("/pagerduty"))


def test_bundle_on_a_central_ruler_keeps_the_cluster_label(
    tmp_path: Path, procs: Processes
) -> None:
    """A Prometheus agent in cluster "eu" remote-writes to a central Prometheus that runs the
    bundle: the alert carries cluster="eu" and the notification names the cluster."""
    with RecordingSink() as sink, ExpositionServer(exposition({"acme": 1.2})) as expo:
        am = start_alertmanager_from_repo(procs, tmp_path / "am", sink)
        central = start_prometheus(
            procs,
            tmp_path / "central",
            rule_files=render_rule_files(tmp_path / "rules"),
            alertmanagers=[am],
            remote_write_receiver=True,
            name="central",
            binary=require_binary("prometheus"),
        )
        start_prometheus(
            procs,
            tmp_path / "agent",
            scrape_targets={"aifinops-exporter": [expo.host_port]},
            external_labels={"cluster": "eu"},
            agent=True,
            remote_write_urls=[f"{central.url}/api/v1/write"],
            name="agent-eu",
            binary=require_binary("prometheus"),
        )
        wait_until(
            lambda: central.query('aifinops_budget_used_ratio{cluster="eu",tenant="acme"}'),
            WAIT,
            "remote-written series on the central Prometheus",
        )
        page = sink.wait_for(
            "/pagerduty", lambda b: b["event_action"] == "trigger", WAIT, "a page from eu"
        )
        assert page.body["payload"]["summary"].startswith(f"[FIRING:1] {ALERT} · acme · eu: ")
        assert page.body["payload"]["custom_details"]["cluster"] == "eu"
        slack = sink.wait_for(
            "/slack",
            lambda b: "critical at 100%" in slack_attachment(b)["text"],
            WAIT,
            "the critical in Slack",
        )
        assert "Tenant acme in cluster eu has spent 120%" in slack_attachment(slack.body)["text"]
