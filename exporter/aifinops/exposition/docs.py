"""Render the series catalog as Markdown: ``python -m aifinops.exposition.docs > docs/metrics.md``.

A test fails when the committed ``docs/metrics.md`` differs from this output.
"""

from __future__ import annotations

from aifinops.exposition.catalog import CATALOG, PROCESS


def catalog_markdown() -> str:
    lines = [
        "# Series published by the AI FinOps exporter",
        "",
        "Generated from `exporter/aifinops/exposition/catalog.py` by",
        "`python -m aifinops.exposition.docs`; do not edit by hand.",
        "",
        "Metric policy: a `stable` series keeps its name, type and labels within a major",
        "version; an `experimental` one may change in a minor version, with a CHANGELOG entry.",
        "Money is in US dollars (`_usd`), rates per hour (`_usd_per_hour`), ratios 0-1 (`_ratio`).",
        "",
        "| series | type | labels | stability | meaning |",
        "|---|---|---|---|---|",
    ]
    for m in (*CATALOG, *PROCESS):
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        help_text = m.help.replace("|", "\\|")
        lines.append(f"| `{m.name}` | {m.type} | {labels} | {m.stability} | {help_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(catalog_markdown(), end="")
