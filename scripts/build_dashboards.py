#!/usr/bin/env python3
"""Build the Grafana dashboards: scripts/dashboards/ → dashboards/*.json (committed).

The dashboards are written as code, as the monitoring mixins do with jsonnet: the panel
library is ``scripts/dashboards/panels.py``, each dashboard one module beside it, registered
in ``scripts/dashboards/__init__.py`` (``DASHBOARDS``). Every query keeps to the selected
cluster, reads a recording rule of ``rules/`` where one exists, and de-duplicates the
exporter's replicas with ``max by`` where it reads a raw series.

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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "dashboards"
TEMPLATES_DIR = ROOT / "mixin" / "dashboards"
# The script's siblings (render_rules.py, the dashboards/ package) are not an installed package.
sys.path.insert(0, str(ROOT / "scripts"))
from render_rules import evaluate_mixin  # noqa: E402

from dashboards import DASHBOARDS, THRESHOLDS  # noqa: E402

__all__ = ["DASHBOARDS", "THRESHOLDS", "main", "render", "templates"]


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
