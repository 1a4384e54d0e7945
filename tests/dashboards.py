"""Reading the Grafana dashboards (dashboards/*.json) for the structure tests
(tests/artifacts/test_dashboards.py) and the query tests on a real Prometheus
(tests/e2e/test_stack.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = ROOT / "dashboards"
RULE_FILES = sorted((ROOT / "rules").glob("*.rules.yaml"))

# Grafana's own variables a query may use; each test substitutes them.
GRAFANA_VARIABLES = frozenset({"__rate_interval", "__range", "__interval"})
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Query:
    dashboard: str  # file name
    panel: str  # panel title
    ref: str  # refId, or "var:<name>" for a variable's query
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def load_dashboards(folder: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """``{file name: dashboard}`` for every dashboards/*.json."""
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboards: dict[str, dict[str, Any]]) -> list[Query]:
    """Every PromQL expression: panel targets and query variables (``label_values(selector,
    label)`` yields its selector, the part that reads series)."""
    out: list[Query] = []
    for name, dashboard in dashboards.items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                out.append(Query(name, panel["title"], target["refId"], target["expr"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text, re.S)
            out.append(
                Query(name, f"${variable['name']}", "variable", match.group(1) if match else text)
            )
    return out


def variables_used(expr: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with ``$name`` / ``${name}`` replaced from ``values`` (KeyError if missing)."""
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def mask_strings(expr: str) -> str:
    """``expr`` with the inside of every string literal blanked (same length), so names in
    label values (``job=~".*aifinops.*"``) are not taken for series."""
    return STRING.sub(lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', expr)


# A series name in an expression: not preceded by a name character or `$` (variables), not
# followed by `(` (functions); label names inside `by (...)` never contain "aifinops".
SERIES_REF = re.compile(r"(?<![\w:$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")


def series_refs(expr: str) -> list[tuple[str, str | None]]:
    """``[(series name, its {matchers} or None)]`` for every AI FinOps series (raw or
    recorded) and ``up`` in ``expr``."""
    masked = mask_strings(expr)
    out: list[tuple[str, str | None]] = []
    for match in SERIES_REF.finditer(masked):
        name = match.group(1)
        if "aifinops" not in name and name != "up":
            continue
        brace = re.compile(r"\s*\{[^}]*\}").match(masked, match.end())
        out.append((name, expr[brace.start() : brace.end()].strip() if brace else None))
    return out


def recording_rules() -> dict[str, str]:
    """``{record name: expr}`` of rules/*.rules.yaml."""
    out: dict[str, str] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out[rule["record"]] = rule["expr"]
    return out
