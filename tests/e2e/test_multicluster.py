"""The multi-cluster path of deploy/README.md, on real processes on one machine.

Two demo exporters stand for clusters "a" (the standard demo: named tenants) and "b" (a
simulated 40-GPU cluster: tenants tenant-0000…, plus a few named ones both clusters share).
Each is scraped every second by a Prometheus in agent mode with the external label
`cluster: a|b`, remote-writing to one central Prometheus (`--web.enable-remote-write-receiver`)
that evaluates the whole rule bundle every second. The exporters publish no `cluster` label:
the agents' external label is all that separates the clusters.

The bundle is rendered by scripts/render_rules.py with one override, `budget_usage_for: 0s`
(AIFinOpsBudgetUsageHigh's `for:`), so a budget crossing fires at the next evaluation.
Processes stop newest first: the agents, then the central server, then the exporters.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import (
    LOOPBACK,
    ROOT,
    Exporter,
    Processes,
    Prometheus,
    free_port,
    http_get,
    render_rule_files,
    start_prometheus,
    wait_ready,
    wait_until,
)
from tests.tools import require_binary

pytestmark = pytest.mark.e2e

RULE_OVERRIDES = {"budget_usage_for": "0s"}
# Each basis is a family (and a rule) of its own; the test labels them back with `basis`.
SPEND = (
    'label_replace(tenant:aifinops_tenant_cost_usd_per_hour:sum, "basis", "allocation", "", "")'
    ' or label_replace(tenant:aifinops_tenant_usage_basis_cost_usd_per_hour:sum, "basis", '
    '"usage", "", "")'
)
FAMILY_BASIS = {
    "aifinops_tenant_cost_usd_per_hour": "allocation",
    "aifinops_tenant_usage_basis_cost_usd_per_hour": "usage",
}
REFRESHED = "aifinops_last_refresh_timestamp_seconds"
DEMO_ARGS = {"a": (), "b": ("--demo-gpus=40", "--demo-seed=3")}
BUDGET_CLUSTER = "b"
BUDGET_TENANT = "tenant-0001"
# A budget of one cent: month-to-date spend passes both ratios within a refresh or two.
BUDGET_ENV = {"AIFINOPS__BUDGETS__TENANTS": f"[{{tenant: {BUDGET_TENANT}, amount_usd: 0.01}}]"}
BUDGET_SERIES = (
    "aifinops_budget_used_ratio",
    "aifinops_budget_warning_ratio",
    "aifinops_budget_critical_ratio",
)
BUDGET_ALERT = "AIFinOpsBudgetUsageHigh"
# The demo refreshes every 10 s; a few refreshes are enough for any wait here.
WAIT = 35.0
REL_TOL = 1e-9

Key = tuple[str, ...]


@dataclass
class Topology:
    exporters: dict[str, Exporter]
    central: Prometheus


@dataclass
class Snapshot:
    """One exporter's figures from one `/metrics` read."""

    refreshed: float
    spend: dict[Key, float]  # (tenant, basis) → USD/h
    names: set[str]  # every sample name


def snapshot(exporter: Exporter) -> Snapshot:
    """The exporter's spend per tenant and basis: its USD/h over all resources, summed as
    the recording rule sums them."""
    refreshed = math.nan
    spend: dict[Key, float] = {}
    names: set[str] = set()
    text = http_get(f"{exporter.url}/metrics", timeout=5.0).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            if sample.name == REFRESHED:
                refreshed = sample.value
            elif sample.name in FAMILY_BASIS:
                key = (sample.labels["tenant"], FAMILY_BASIS[sample.name])
                spend[key] = spend.get(key, 0.0) + sample.value
    return Snapshot(refreshed, spend, names)


def by_labels(result: list[dict[str, Any]], *labels: str) -> dict[Key, float]:
    """An instant vector as {(label values…): value}; a missing label reads as ""."""
    out: dict[Key, float] = {}
    for series in result:
        key = tuple(series["metric"].get(label, "") for label in labels)
        assert key not in out, (
            f"two series for {dict(zip(labels, key, strict=True))}: {result} "
            "(is a label such as the agents' `cluster` external label missing?)"
        )
        out[key] = float(series["value"][1])
    return out


def differences(expected: dict[Key, float], seen: dict[Key, float], what: str) -> list[str]:
    problems = [f"{what}: missing {k}" for k in sorted(expected.keys() - seen.keys())]
    problems += [f"{what}: unexpected {k}" for k in sorted(seen.keys() - expected.keys())]
    problems += [
        f"{what}: {k} is {seen[k]!r}, the exporters say {expected[k]!r}"
        for k in sorted(expected.keys() & seen.keys())
        if not math.isclose(expected[k], seen[k], rel_tol=REL_TOL, abs_tol=1e-12)
    ]
    return problems


def start_exporter(
    procs: Processes,
    workdir: Path,
    name: str,
    args: Sequence[str],
    env: Mapping[str, str] | None,
) -> Exporter:
    """``python -m aifinops --demo`` plus ``args`` (harness.start_demo_exporter takes none),
    ready once ``/readyz`` is 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", "aifinops", "--demo", f"--port={port}", *args]
    process = procs.start(name, argv, cwd=workdir, env={**os.environ, **(env or {})})
    exporter = Exporter(f"http://{LOOPBACK}:{port}", process)
    wait_ready(exporter)
    return exporter


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    prometheus = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("multicluster")
    rule_files = render_rule_files(workdir / "rules", RULE_OVERRIDES)
    # The whole bundle: one rendering per committed rule file.
    assert sorted(p.name for p in rule_files) == sorted(
        p.name for p in (ROOT / "rules").glob("*.rules.yaml")
    )
    with Processes() as procs:  # stops newest first: agents, central, exporters
        exporters = {
            name: start_exporter(
                procs,
                workdir / f"exporter-{name}",
                f"exporter-{name}",
                args,
                BUDGET_ENV if name == BUDGET_CLUSTER else None,
            )
            for name, args in DEMO_ARGS.items()
        }
        central = start_prometheus(
            procs,
            workdir / "central",
            rule_files=rule_files,
            remote_write_receiver=True,
            name="central",
            binary=prometheus,
        )
        for name, exporter in exporters.items():
            start_prometheus(
                procs,
                workdir / f"agent-{name}",
                scrape_targets={"aifinops-exporter": [exporter.host_port]},
                external_labels={"cluster": name},
                agent=True,
                remote_write_urls=[f"{central.url}/api/v1/write"],
                name=f"agent-{name}",
                binary=prometheus,
            )
        wait_until(
            lambda: {s["metric"].get("cluster") for s in central.query(REFRESHED)} == {"a", "b"},
            WAIT,
            "both clusters' series on the central Prometheus",
            on_timeout=lambda: "\n".join(p.log_tail(15) for p in procs.started),
        )
        yield Topology(exporters, central)


@dataclass
class Observation:
    exporters: dict[str, Snapshot]
    per_cluster: dict[Key, float]  # (cluster, tenant, basis) → USD/h
    global_: dict[Key, float]  # (tenant, basis) → USD/h


def test_per_cluster_and_global_spend_equal_the_exporters_figures(topology: Topology) -> None:
    central = topology.central
    last_problems: list[str] = []

    def consistent() -> Observation | None:
        """Exporters and central agree, read within one refresh of each exporter (values
        change at every refresh; between two, every scrape carries the same figures)."""
        before = {c: snapshot(e) for c, e in topology.exporters.items()}
        per_cluster = by_labels(central.query(SPEND), "cluster", "tenant", "basis")
        global_ = by_labels(central.query(f"sum without (cluster) ({SPEND})"), "tenant", "basis")
        refreshed = by_labels(central.query(REFRESHED), "cluster")
        after = {c: snapshot(e) for c, e in topology.exporters.items()}
        last_problems[:] = [
            f"cluster {c}: exporter refreshed at {before[c].refreshed}, then "
            f"{after[c].refreshed}; the central Prometheus has {refreshed.get((c,))}"
            for c in before
            if not before[c].refreshed == after[c].refreshed == refreshed.get((c,))
        ]
        if last_problems:
            return None
        expected_per_cluster = {
            (c, *key): value for c, snap in before.items() for key, value in snap.spend.items()
        }
        expected_global: dict[Key, float] = {}
        for snap in before.values():
            for key, value in snap.spend.items():
                expected_global[key] = expected_global.get(key, 0.0) + value
        last_problems[:] = differences(expected_per_cluster, per_cluster, SPEND) + differences(
            expected_global, global_, f"sum without (cluster) ({SPEND})"
        )
        return None if last_problems else Observation(before, per_cluster, global_)

    seen = wait_until(
        consistent,
        WAIT,
        "per-cluster and global spend on the central Prometheus equal to the exporters'",
        interval=0.5,
        on_timeout=lambda: "\n".join(last_problems[:40]),
    )

    # The clusters differ (tenants and size), and some tenants run in both, so the global
    # figure is a real sum across clusters and not one cluster's figure.
    tenants = {c: {t for t, _ in snap.spend} for c, snap in seen.exporters.items()}
    assert tenants["a"] != tenants["b"]
    shared = tenants["a"] & tenants["b"] - {"__idle__", "__unallocated__"}
    assert {"platform"} <= shared, shared
    assert {t for t in tenants["b"] if t.startswith("tenant-")}, tenants["b"]
    for tenant in shared:
        a, b = (seen.per_cluster[(c, tenant, "allocation")] for c in ("a", "b"))
        assert a > 0 and b > 0
        assert math.isclose(seen.global_[(tenant, "allocation")], a + b, rel_tol=REL_TOL)
    # The cost-rate recording rules keep `cluster` (a rule in another group may lag one
    # evaluation behind its input).
    records = (
        "tenant_resource:aifinops_tenant_cost_usd_per_hour:max",
        "tenant:aifinops_tenant_cost_usd_per_hour:share",
        "tenant:aifinops_tenant_usage_basis_cost_usd_per_hour:sum",
    )

    def clusters() -> dict[str, set[str | None]]:
        return {r: {s["metric"].get("cluster") for s in central.query(r)} for r in records}

    wait_until(
        lambda: all(c == {"a", "b"} for c in clusters().values()),
        WAIT,
        "cluster a and b, and no other, on every cost-rate recording rule",
        on_timeout=lambda: f"cluster values: {clusters()}",
    )
    # The whole bundle evaluates on remote-written data without an error.
    errors = [
        f"{rule['name']}: {rule['lastError']}"
        for group in central.api("rules")["groups"]
        for rule in group["rules"]
        if rule["health"] == "err"
    ]
    assert errors == []


def test_budget_alert_fires_for_the_right_cluster_and_tenant(topology: Topology) -> None:
    exporter = topology.exporters[BUDGET_CLUSTER]
    names = snapshot(exporter).names
    missing = [s for s in BUDGET_SERIES if s not in names]
    assert not missing, (
        f"exporter {BUDGET_CLUSTER}, started with {BUDGET_ENV}, publishes no "
        f"{', '.join(missing)} on /metrics"
    )
    central = topology.central

    def budget_alerts() -> list[dict[str, Any]]:
        return [
            a
            for a in central.api("alerts")["alerts"]
            if a["labels"]["alertname"].startswith("AIFinOpsBudget")
        ]

    def firing() -> dict[str, dict[str, Any]]:
        """The firing tiers (severity → alert) for that cluster and tenant, once both fire."""
        tiers = {
            a["labels"]["severity"]: a
            for a in budget_alerts()
            if a["state"] == "firing"
            and a["labels"]["alertname"] == BUDGET_ALERT
            and a["labels"].get("cluster") == BUDGET_CLUSTER
            and a["labels"].get("tenant") == BUDGET_TENANT
        }
        return tiers if set(tiers) == {"warning", "critical"} else {}

    # One cent is far below the month-to-date spend: both the warning and the critical tier.
    tiers = wait_until(
        firing,
        WAIT,
        f"{BUDGET_ALERT} (warning and critical) firing for cluster {BUDGET_CLUSTER}, "
        f"tenant {BUDGET_TENANT}",
        interval=0.5,
        on_timeout=lambda: (
            f"budget alerts: {budget_alerts()}\n"
            + f"used ratio: {central.query('aifinops_budget_used_ratio')}"
        ),
    )
    for alert in tiers.values():
        assert alert["labels"]["scope"] == "all"
        description = alert["annotations"]["description"]
        assert f"Tenant {BUDGET_TENANT} in cluster {BUDGET_CLUSTER} has spent" in description
    # Only that cluster for that tenant: in cluster b nothing but the one-cent budget alerts;
    # cluster a's own demo budgets may alert for its own tenants, never for this one; and no
    # budget alert lacks a cluster label.
    wrong = [
        a["labels"]
        for a in budget_alerts()
        if a["labels"].get("cluster") not in ("a", "b")
        or (a["labels"].get("tenant") == BUDGET_TENANT)
        != (a["labels"].get("cluster") == BUDGET_CLUSTER)
    ]
    assert wrong == []
