"""The Prometheus rule bundle (rules/): checked and unit-tested with the real promtool, plus
the conventions promtool does not know: names, annotations, runbook anchors, the metric
contract, `cluster` kept by every aggregation, test coverage of every rule, and thresholds
declared in one place (rules/thresholds.yaml) and rendered without drift.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from aifinops.exposition.catalog import CATALOG
from aifinops.version import RULES_VERSION
from tests.tools import require_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
RULE_FILES = sorted(RULES.glob("*.rules.yaml"))
TEST_FILES = sorted((RULES / "tests").glob("*.yaml"))
RUNBOOK = RULES / "runbook.md"
RUNBOOK_URL = "https://aifinops.example.com/runbook.md"
SEVERITIES = {"critical", "warning", "info"}

# Series of the metric contract that rules use before the exporter publishes them; the lead
# moves each into aifinops.exposition.catalog.CATALOG when it lands (then delete it here:
# test_coming_series_are_not_yet_in_the_catalog says so).
COMING_SERIES: frozenset[str] = frozenset()
CATALOG_NAMES = frozenset(m.name for m in CATALOG)
# Not ours, but read by the bundle.
FOREIGN_SERIES = frozenset({"up"})

AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|stddev|stdvar|group|topk|bottomk|quantile|count_values)\s*"
    r"(?:(by|without)\s*\(([^)]*)\)\s*)?\("
)
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:aifinops_[a-z0-9_]+:[a-z0-9_]+$")
RECORDED_REF = re.compile(r"\b[a-z][a-z0-9_]*:aifinops_[a-z0-9_]+:[a-z0-9_]+\b")
RAW_SERIES_REF = re.compile(r"(?<![:\w])(aifinops_[a-z0-9_]+)\b(?!:)")
ALERT_NAME = re.compile(r"^AIFinOps[A-Z][A-Za-z0-9]+$")
PLACEHOLDER = re.compile(r"\$\{[a-z][a-z0-9_]*(?:\|[a-z]+)?\}")


def _load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_rules", ROOT / "scripts" / "render_rules.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_rules", module)
    spec.loader.exec_module(module)
    return module


render_rules = _load_renderer()


@dataclass(frozen=True)
class Rule:
    file: str
    group: str
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body.get("alert") or self.body.get("record"))

    @property
    def expr(self) -> str:
        return str(self.body["expr"])


def _rules(paths: list[Path]) -> list[Rule]:
    out = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [Rule(path.name, group["name"], r) for r in group["rules"]]
    return out


ALL_RULES = _rules(RULE_FILES)
ALERTS = [r for r in ALL_RULES if "alert" in r.body]
RECORDS = [r for r in ALL_RULES if "record" in r.body]
TEMPLATE_RULES = _rules(sorted((RULES / "src").glob("*.yaml.tmpl")))


def _tests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            yield path, group


# --- the real tools ------------------------------------------------------------------------


def test_promtool_check_rules_is_clean() -> None:
    promtool = require_binary("promtool")
    assert RULE_FILES, "no rules/*.rules.yaml"
    proc = subprocess.run(
        [promtool, "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "WARNING" not in output.upper(), output
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", output))
    assert found == len(ALL_RULES), output


def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    assert TEST_FILES, "no rules/tests/*.yaml"
    proc = subprocess.run(
        [promtool, "test", "rules", *map(str, TEST_FILES)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(TEST_FILES), proc.stdout


# --- thresholds in one place, rendered without drift ---------------------------------------


def test_committed_rule_files_match_their_rendering() -> None:
    rendered = render_rules.render()
    assert sorted(rendered) == [p.name for p in RULE_FILES], (
        "rules/*.rules.yaml and rules/src/*.yaml.tmpl differ: run python scripts/render_rules.py"
    )
    for name, text in rendered.items():
        assert (RULES / name).read_text() == text, (
            f"rules/{name} drifted from its template: run python scripts/render_rules.py"
        )


def test_renderer_rejects_an_undeclared_threshold() -> None:
    with pytest.raises(render_rules.RenderError, match="not declared"):
        render_rules.render_text("expr: x > ${no_such_threshold}", {"a": 1}, "t.yaml.tmpl")


def test_renderer_rejects_an_unused_threshold(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.yaml.tmpl").write_text("groups: []  # ${used}\n")
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text(
        "thresholds:\n"
        "  used: {value: 1, meaning: used}\n"
        "  unused: {value: 2, meaning: never used}\n"
    )
    with pytest.raises(render_rules.RenderError, match="unused"):
        render_rules.render(src_dir=src, thresholds_file=thresholds)


def test_renderer_formats_percentages_and_rejects_overrides_of_unknown_names() -> None:
    text, used = render_rules.render_text("${r|percent} ${r}", {"r": 0.1}, "t")
    assert (text, used) == ("10% 0.1", {"r"})
    with pytest.raises(render_rules.RenderError, match="not declared"):
        render_rules.render(overrides={"no_such_threshold": "1m"})


def bare_numbers(expr: str) -> list[str]:
    """Numeric literals of an alert expression other than 0 and 1, ignoring placeholders,
    quoted strings (label values) and [range] windows."""
    text = PLACEHOLDER.sub(" ", expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"[A-Za-z_:][A-Za-z0-9_:]*", " ", text)  # names, incl. digits inside them
    numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?", text)
    return [n for n in numbers if float(n) not in (0.0, 1.0)]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("x > 5", ["5"]),
        ("x > ${t} and y < 0.25", ["0.25"]),
        ('absent(up{job=~"a9"} == 1)', []),
        ("increase(c[1h]) > 0 unless c offset ${w}", []),
        ("rate1h:aifinops_x:rate5m > 3 * y", ["3"]),
    ],
)
def test_bare_number_detector(expr: str, expected: list[str]) -> None:
    assert bare_numbers(expr) == expected


@pytest.mark.parametrize("rule", [r for r in TEMPLATE_RULES if "alert" in r.body], ids=str)
def test_alert_thresholds_come_from_thresholds_yaml(rule: Rule) -> None:
    assert bare_numbers(rule.expr) == [], (
        f"{rule.file}: {rule.name} compares with a literal; declare it in rules/thresholds.yaml"
    )
    if "for" in rule.body:
        assert PLACEHOLDER.fullmatch(str(rule.body["for"])), (
            f"{rule.file}: {rule.name} has a literal for: {rule.body['for']!r}"
        )


# --- names, labels, annotations ------------------------------------------------------------


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: f"{r.name}-{r.body['labels']['severity']}")
def test_alert_follows_conventions(rule: Rule) -> None:
    body = rule.body
    assert ALERT_NAME.match(rule.name), rule.name
    assert body["labels"]["severity"] in SEVERITIES
    assert set(body["annotations"]) == {"summary", "description", "runbook_url"}
    summary = body["annotations"]["summary"]
    assert "{{" not in summary and "$" not in summary, f"{rule.name}: summary must be static"
    assert "{{" in body["annotations"]["description"], f"{rule.name}: description is static"
    assert body["annotations"]["runbook_url"] == f"{RUNBOOK_URL}#{rule.name.lower()}"


def _runbook_anchors() -> set[str]:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9_ -]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_runbook_has_one_section_per_alert() -> None:
    assert _runbook_anchors() == {r.name.lower() for r in ALERTS}


def test_tiers_of_one_alert_differ_by_severity_only() -> None:
    by_name: dict[str, list[Rule]] = {}
    for rule in ALERTS:
        by_name.setdefault(rule.name, []).append(rule)
    for name, tiers in by_name.items():
        severities = [t.body["labels"]["severity"] for t in tiers]
        assert len(set(severities)) == len(severities), f"{name}: two tiers, one severity"
        assert len({t.body["annotations"]["runbook_url"] for t in tiers}) == 1


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r.name)
def test_recording_rule_name_and_comment(rule: Rule) -> None:
    assert RECORD_NAME.match(rule.name), f"{rule.name}: not level:metric:operations"
    lines = (RULES / rule.file).read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == f"- record: {rule.name}")
    assert lines[index - 1].strip().startswith("# "), f"{rule.name}: needs a one-line comment"


def test_recording_rule_names_are_unique() -> None:
    names = [r.name for r in RECORDS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: f"{r.file}:{r.name}")
def test_every_aggregation_keeps_cluster(rule: Rule) -> None:
    for match in AGGREGATION.finditer(rule.expr):
        op, mode, labels = match.groups()
        assert mode == "by", f"{rule.name}: `{op}` without `by (cluster, ...)`"
        assert "cluster" in [label.strip() for label in labels.split(",")], (
            f"{rule.name}: `{op} by ({labels})` drops cluster"
        )


def test_aggregation_check_can_fail() -> None:
    found = [m.groups() for m in AGGREGATION.finditer("sum(x) + max by (tenant) (y)")]
    assert found == [("sum", None, None), ("max", "by", "tenant")]


# --- the metric contract -------------------------------------------------------------------


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: f"{r.file}:{r.name}")
def test_rule_reads_only_contract_series_and_defined_recordings(rule: Rule) -> None:
    recorded = {r.name for r in RECORDS}
    for ref in RECORDED_REF.findall(rule.expr):
        assert ref in recorded, f"{rule.name}: reads {ref}, which no rule records"
    raw = set(RAW_SERIES_REF.findall(RECORDED_REF.sub(" ", rule.expr)))
    unknown = raw - CATALOG_NAMES - COMING_SERIES
    assert not unknown, f"{rule.name}: reads series outside the metric contract: {unknown}"


def test_coming_series_are_not_yet_in_the_catalog() -> None:
    landed = COMING_SERIES & CATALOG_NAMES
    assert not landed, f"now in the catalog, remove from COMING_SERIES: {sorted(landed)}"


# --- every rule is tested ------------------------------------------------------------------


def _alert_cases() -> dict[tuple[str, str], dict[str, int]]:
    cases: dict[tuple[str, str], dict[str, int]] = {
        (r.name, r.body["labels"]["severity"]): {"fires": 0, "quiet": 0} for r in ALERTS
    }
    for _path, group in _tests():
        for case in group.get("alert_rule_test", []):
            fired = {
                a["exp_labels"].get("severity")
                for a in case.get("exp_alerts") or []
                if {"summary", "description", "runbook_url"} <= set(a.get("exp_annotations", {}))
            }
            for (name, severity), counts in cases.items():
                if case["alertname"] != name:
                    continue
                counts["fires" if severity in fired else "quiet"] += 1
    return cases


@pytest.mark.parametrize(
    ("alert", "severity"), sorted({(r.name, r.body["labels"]["severity"]) for r in ALERTS})
)
def test_alert_has_a_firing_and_a_quiet_case(alert: str, severity: str) -> None:
    counts = _alert_cases()[(alert, severity)]
    assert counts["fires"], f"{alert} ({severity}): no test where it fires with annotations"
    assert counts["quiet"], f"{alert} ({severity}): no test where it must not fire"


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r.name)
def test_recording_rule_has_a_promql_expr_test(rule: Rule) -> None:
    exprs = [
        case["expr"] for _path, group in _tests() for case in group.get("promql_expr_test", [])
    ]
    assert any(rule.name in RECORDED_REF.findall(e) for e in exprs), (
        f"{rule.name}: no promql_expr_test in rules/tests/"
    )


def test_every_test_file_loads_existing_rule_files() -> None:
    for path in TEST_FILES:
        patterns = yaml.safe_load(path.read_text())["rule_files"]
        for pattern in patterns:
            assert list(path.parent.glob(pattern)), f"{path.name}: {pattern} matches nothing"


# --- version ---------------------------------------------------------------------------------


def test_version_is_one_string_everywhere() -> None:
    version = (RULES / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    changelog = (RULES / "CHANGELOG.md").read_text()
    assert re.findall(r"^## (\S+)", changelog, flags=re.MULTILINE)[0] == version
    assert version == RULES_VERSION
