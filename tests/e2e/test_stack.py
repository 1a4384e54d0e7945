"""The whole stack end to end: two replicas of the demo exporter → a real Prometheus loading
every rule file → a real Alertmanager with alertmanager/alertmanager.yml → Slack and PagerDuty
payloads at a local sink; and every dashboard query against that Prometheus.

What is not the committed bundle, and why:
- Rules are rendered with `budget_usage_for` and `budget_exceeded_for` at 0s (15m and 5m in
  the bundle), so an overrun fires at the next evaluation, and every group runs at the
  global 1s interval (the 30-day group's own 3m would delay its first evaluation by up to 3
  minutes).
- Prometheus starts with one week of history (:func:`backfill_week`), as if it had scraped
  the demo for 7 days: the demo's own cost rates written at past timestamps
  (`promtool tsdb create-blocks-from openmetrics`), and the hourly cost baseline the anomaly
  rules read computed from them by `promtool tsdb create-blocks-from rules` - the documented
  way to give a new recording rule its history. Without it `…:avg1w`, `…:stddev1w` and
  `…:avg1h_offset1w` stay empty for a week.
- The exporter gets a small configuration (:data:`FINANCE`): one tenant with a budget it has
  already exceeded, one initiative and one routing workload, so every series has data.
- Alertmanager: the committed file with the secrets and URLs pointed at the sink, 1s timings.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboards import (
    GRAFANA_VARIABLES,
    Query,
    load_dashboards,
    queries,
    recording_rules,
    series_refs,
    substitute,
)
from tests.e2e.harness import (
    EXPORTER_JOB,
    Alertmanager,
    Exporter,
    HarnessError,
    Processes,
    Prometheus,
    RecordingSink,
    bundled_alertmanager,
    http_get,
    render_rule_files,
    start_demo_exporter,
    start_prometheus,
    wait_ready,
    wait_until,
)
from tests.tools import require_binary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = "https://aifinops.example.com/runbook.md"
RULE_OVERRIDES = {"budget_usage_for": "0s", "budget_exceeded_for": "0s"}
WAIT = 30.0
REPLICAS = 2

TENANT = "speech"  # driven over budget; also the dashboards' $tenant
FINANCE: dict[str, Any] = {
    "budgets": {
        "tenants": [
            # speech spent about 900 USD this month in the demo: 1 cent is long gone.
            {"tenant": TENANT, "amount_usd": 0.01},
            {"tenant": "search", "amount_usd": 1_000_000},
            # the global budget: its own families and rules need data too
            {"tenant": "__all__", "amount_usd": 1_000_000_000},
        ]
    },
    "initiatives": [
        {
            "name": "support-assistant",
            "tenants": ["chatbot"],
            "benefits": {"hours_saved": 10, "hourly_rate": 80, "headcount": 20},
        }
    ],
    "routing": {
        "workloads": [
            {
                "name": "search-answers",
                "tenant": "search",
                "current_model": "gpt-4o",
                "candidates": [
                    {
                        "model": "gpt-4o",
                        "provider": "openai",
                        "quality": 0.9,
                        "p95_latency_seconds": 2.0,
                    },
                    {
                        "model": "gpt-4.1-mini",
                        "provider": "openai",
                        "quality": 0.8,
                        "p95_latency_seconds": 1.0,
                    },
                ],
            }
        ]
    },
}
RAISED_BUDGET = 1e9  # the rolling restart's new budget for TENANT

# Grafana's variables as a dashboard would send them with "All" clusters.
VARIABLES = {
    "cluster": ".*",
    "tenant": TENANT,
    "__rate_interval": "1m",
    "__range": "1h",
    "__interval": "15s",
}

BACKFILL_SERIES = "aifinops_tenant_cost_usd_per_hour"
BACKFILL_RULE = "tenant:aifinops_tenant_cost_usd_per_hour:avg1h"
HOUR = 3600
WEEK = 7 * 24 * HOUR


@dataclass
class Stack:
    procs: Processes
    workdir: Path
    sink: RecordingSink
    alertmanager: Alertmanager
    prometheus: Prometheus
    replicas: list[Exporter]


def finance_config(path: Path, budget_usd: float) -> Path:
    config = json.loads(json.dumps(FINANCE))
    config["budgets"]["tenants"][0]["amount_usd"] = budget_usd
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def backfill_week(
    procs: Processes, workdir: Path, exporter: Exporter, promtool: str, prometheus: str
) -> None:
    """Write one week of history into ``workdir/prometheus-data`` (see the module docstring):
    the demo's cost rates hourly, then the hourly baseline rule every 5 minutes."""
    workdir.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    first = (now - WEEK - 2 * HOUR) // HOUR * HOUR
    last = now - 10 * 60  # the live scrapes start after this; no overlap with the head
    exposition = http_get(f"{exporter.url}/metrics").decode()
    lines = [f"# TYPE {BACKFILL_SERIES} gauge"]
    for sample in exposition.splitlines():
        if not sample.startswith(BACKFILL_SERIES + "{"):
            continue
        series, value = sample.rsplit(" ", 1)
        series = series.replace("{", f'{{job="{EXPORTER_JOB}",instance="backfill",', 1)
        lines += [f"{series} {value} {t}" for t in range(first, last, HOUR)]
    assert len(lines) > 1, f"no {BACKFILL_SERIES} in the demo's exposition"
    openmetrics = workdir / "history.om"
    openmetrics.write_text("\n".join([*lines, "# EOF"]) + "\n")
    data = workdir / "prometheus-data"
    _run(promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(openmetrics), str(data))

    # promtool evaluates the rule against a Prometheus that holds the raw history.
    rule = next(
        r
        for path in sorted((ROOT / "rules").glob("*.rules.yaml"))
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if r.get("record") == BACKFILL_RULE
    )
    rule_file = workdir / "backfill.rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "backfill", "rules": [rule]}]}))
    reader = start_prometheus(procs, workdir, name="prometheus", binary=prometheus)
    try:
        _run(
            promtool,
            "tsdb",
            "create-blocks-from",
            "rules",
            "-q",
            f"--url={reader.url}",
            f"--start={first + HOUR}",
            f"--end={last}",
            "--eval-interval=5m",
            f"--output-dir={workdir / 'rule-blocks'}",
            str(rule_file),
        )
    finally:
        procs.stop(reader.process)
    for block in (workdir / "rule-blocks").iterdir():
        block.rename(data / block.name)


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(argv[:4])}: {proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")
    promtool = require_binary("promtool")
    workdir = tmp_path_factory.mktemp("stack")
    config = finance_config(
        workdir / "finance.yaml", FINANCE["budgets"]["tenants"][0]["amount_usd"]
    )
    with Processes() as procs, RecordingSink() as sink:
        am = bundled_alertmanager(
            procs,
            workdir / "alertmanager",
            ROOT / "alertmanager",
            sink.url,
            route_timings={"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            binary=alertmanager,
        )
        replicas = [
            start_demo_exporter(
                procs, workdir / f"exporter-{i}", config=config, name=f"exporter-{i}", wait=False
            )
            for i in range(REPLICAS)
        ]
        for replica in replicas:
            wait_ready(replica)
        backfill_week(procs, workdir / "prometheus", replicas[0], promtool, prometheus)
        prom = start_prometheus(
            procs,
            workdir / "prometheus",
            scrape_targets={EXPORTER_JOB: [r.host_port for r in replicas]},
            rule_files=render_rule_files(
                workdir / "rules", RULE_OVERRIDES, every_group_at_global_interval=True
            ),
            alertmanagers=[am],
            binary=prometheus,
        )
        yield Stack(procs, workdir, sink, am, prom, replicas)


# --- queries -------------------------------------------------------------------------------


def run_query(prom: Prometheus, expr: str) -> tuple[list[dict[str, Any]] | None, str]:
    """``(result, "")`` or ``(None, Prometheus' error)`` for an invalid expression."""
    url = f"{prom.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = json.loads(exc.read() or b"{}")
        return None, f"{body.get('errorType')}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result, ""


def series_without_data(prom: Prometheus, expr: str) -> list[str]:
    """The AI FinOps series ``expr`` reads that have no data at all (why it is empty)."""
    names = sorted({name for name, _ in series_refs(expr)})
    return [n for n in names if not prom.query(f"count({{__name__={json.dumps(n)}}})")]


def wait_for_data(prom: Prometheus, exprs: dict[str, str], timeout: float = WAIT) -> dict[str, str]:
    """Poll until every expression returns data or ``timeout`` passes; return
    ``{label: why}`` for those that are invalid or still empty."""
    pending = dict(exprs)
    invalid: dict[str, str] = {}

    def done() -> bool:
        for label, expr in list(pending.items()):
            result, error = run_query(prom, expr)
            if error:
                invalid[label] = f"invalid: {error}"
                del pending[label]
            elif result:
                del pending[label]
        return not pending

    with contextlib.suppress(HarnessError):  # what is still pending is reported below
        wait_until(done, timeout, "every query to return data", interval=0.5)
    empty = {
        label: "no data; series without data: "
        + (", ".join(series_without_data(prom, expr)) or "none (the expression filters all)")
        for label, expr in pending.items()
    }
    return {**invalid, **empty}


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    records = recording_rules()
    problems = wait_for_data(stack.prometheus, {name: name for name in records})
    problems = {
        name: f"{why} (reads {', '.join(sorted({n for n, _ in series_refs(records[name])}))})"
        for name, why in problems.items()
    }
    assert not problems, "recording rules without data:\n" + "\n".join(
        f"  {name}: {why}" for name, why in sorted(problems.items())
    )


def test_every_dashboard_query_is_valid_and_returns_data(stack: Stack) -> None:
    all_queries: list[Query] = queries(load_dashboards())
    assert len(all_queries) > 50
    exprs = {}
    for query in all_queries:
        exprs[str(query)] = substitute(query.expr, VARIABLES)
        assert "$" not in exprs[str(query)], f"{query}: unsubstituted variable"
    assert set(VARIABLES) - {"cluster", "tenant"} == GRAFANA_VARIABLES
    problems = wait_for_data(stack.prometheus, exprs)
    assert not problems, "dashboard queries that fail:\n" + "\n".join(
        f"  {label}: {why}\n    {exprs[label]}" for label, why in sorted(problems.items())
    )
    # $tenant's value is one the tenant variable offers.
    tenants = stack.prometheus.api(
        "label/tenant/values",
        **{"match[]": "tenant:aifinops_tenant_cost_usd_per_hour:sum"},
    )
    assert TENANT in tenants


def test_the_demo_shows_gpu_spend_by_split_method(stack: Stack) -> None:
    """The GPU efficiency dashboard's split-method panels have HAMi-shared GPUs to show: the
    demo cluster has a HAMi node and its exporter reads HAMi's pages."""
    rule = "method:aifinops_gpu_split_cost_usd_per_hour:max"
    assert not wait_for_data(stack.prometheus, {rule: rule})
    methods = {r["metric"]["method"]: float(r["value"][1]) for r in stack.prometheus.query(rule)}
    assert {"exclusive", "mig", "hami"} <= set(methods), methods
    assert methods["hami"] > 0


def test_dashboard_query_check_can_fail(stack: Stack) -> None:
    problems = wait_for_data(
        stack.prometheus,
        {"bad": "sum by (tenant (aifinops_tenant_gpus)", "empty": "aifinops_tenant_gpus{x='y'}"},
        timeout=1,
    )
    assert problems["bad"].startswith("invalid: bad_data: ")
    assert problems["empty"] == "no data; series without data: none (the expression filters all)"


# --- a tenant over budget ------------------------------------------------------------------


def _attachment(body: Any) -> dict[str, Any]:
    attachment: dict[str, Any] = body["attachments"][0]
    return attachment


def test_tenant_over_budget_pages_and_posts_then_resolves_after_a_raised_budget(
    stack: Stack,
) -> None:
    """The demo tenant has spent its 1-cent budget: AIFinOpsBudgetExceeded pages and posts,
    and inhibits AIFinOpsBudgetUsageHigh (both tiers fire too). Restarting a replica with a
    raised budget resolves it while the other replica keeps publishing the series."""
    sink, prom, am = stack.sink, stack.prometheus, stack.alertmanager
    alert = "AIFinOpsBudgetExceeded"
    try:
        wait_until(
            lambda: prom.query(f'aifinops_tenant_budget_usd{{tenant="{TENANT}"}} == 0.01'),
            WAIT,
            "the test's budget",
        )
    except HarnessError:
        pytest.fail(
            f"the exporter does not publish the 0.01 USD budget of {TENANT} given with --config "
            "(budgets.tenants): the demo's own finance sections must not replace the user's"
        )
    title = f"[FIRING:1] {alert} · {TENANT}"

    page = sink.wait_for(
        "/pagerduty",
        lambda b: b["event_action"] == "trigger" and b["payload"]["summary"].startswith(title),
        WAIT,
        f"a PagerDuty trigger for {TENANT}",
    )
    assert page.body["routing_key"] == "e2e-routing-key"
    assert page.body["payload"]["severity"] == "critical"
    assert page.body["payload"]["summary"] == (
        f"{title}: Month-to-date spend is above a monthly budget."
    )
    assert page.body["payload"]["custom_details"]["tenant"] == TENANT
    firing = page.body["payload"]["custom_details"]["firing"]
    assert re.fullmatch(
        rf"\[critical\] Tenant {TENANT} has spent more than its monthly budget \(scope all\): "
        r"[0-9.e+]+% of it\. "
        rf"Runbook: {re.escape(RUNBOOK)}#aifinopsbudgetexceeded\n",
        firing,
    ), firing
    assert page.body["links"] == [{"href": f"{RUNBOOK}#aifinopsbudgetexceeded", "text": "Runbook"}]

    slack = sink.wait_for(
        "/slack", lambda b: _attachment(b)["title"] == title, WAIT, f"{TENANT}'s Slack message"
    )
    assert slack.body["channel"] == "#aifinops-alerts"
    assert _attachment(slack.body)["color"] == "danger"
    assert _attachment(slack.body)["text"].startswith(
        f"*Month-to-date spend is above a monthly budget.*\n• [critical] Tenant {TENANT} has spent "
    )

    # Both tiers of AIFinOpsBudgetUsageHigh fire and are inhibited by the exceeded budget.
    def usage_alerts_inhibited() -> bool:
        inhibited = [
            a
            for a in am.alerts(inhibited=True, active=False)
            if a["labels"]["alertname"] == "AIFinOpsBudgetUsageHigh"
            and a["labels"].get("tenant") == TENANT
            and a["status"]["inhibitedBy"]
        ]
        return {a["labels"]["severity"] for a in inhibited} == {"warning", "critical"}

    wait_until(usage_alerts_inhibited, WAIT, "AIFinOpsBudgetUsageHigh inhibited for the tenant")

    # So far only the exceeded budget was notified: the inhibited tiers never were.
    usage = f"AIFinOpsBudgetUsageHigh · {TENANT}"
    assert all(usage not in json.dumps(r.body, ensure_ascii=False) for r in sink.received())

    # The budget is raised: a rolling update restarts the first replica with the new
    # configuration while the second, still up, serves the old one. The rules take the
    # larger of the replicas' budgets (max by), so the alert resolves now, with every series
    # still scraped: because the budget now covers the spend, not because data vanished.
    raised = finance_config(stack.workdir / "raised.yaml", RAISED_BUDGET)
    old = stack.replicas[0]
    stack.procs.stop(old.process)
    new = start_demo_exporter(
        stack.procs,
        stack.workdir / "exporter-0",
        port=int(old.host_port.rsplit(":", 1)[1]),
        config=raised,
        name="exporter-0-raised",
    )
    stack.replicas[0] = new
    wait_until(
        lambda: prom.query(
            f'aifinops_budget_used_ratio{{instance="{new.host_port}",tenant="{TENANT}"}} < 0.8'
        ),
        WAIT,
        "the restarted replica's new budget scraped",
    )

    resolve = sink.wait_for(
        "/pagerduty",
        lambda b: b["event_action"] == "resolve" and b["dedup_key"] == page.body["dedup_key"],
        WAIT,
        "the PagerDuty resolve",
    )
    assert resolve.at > page.at
    resolved = sink.wait_for(
        "/slack",
        lambda b: _attachment(b)["title"] == f"[RESOLVED] {alert} · {TENANT}",
        WAIT,
        "the Slack resolution",
    )
    assert _attachment(resolved.body)["color"] == "good"
    # Every replica is up and the tenant's spend and budget series are there.
    up = prom.query(f'up{{job="{EXPORTER_JOB}"}} == 1')
    assert len(up) == REPLICAS, up
    spend = prom.query(f'max(aifinops_tenant_budget_spend_usd{{tenant="{TENANT}"}})')
    budget = prom.query(f'max(aifinops_tenant_budget_usd{{tenant="{TENANT}"}})')
    assert spend and budget and float(spend[0]["value"][1]) < float(budget[0]["value"][1])
