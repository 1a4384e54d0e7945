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
        "Money is in US dollars (`_usd`), rates per hour (`_usd_per_hour`), ratios 0-1 (`_ratio`),",
        "durations in seconds (`_seconds`).",
        "",
        "Sums are safe: `sum()` over any money family equals the total its meaning names. Each",
        "cost basis is a family of its own (allocation: `aifinops_tenant_cost_usd_per_hour`;",
        "usage: `aifinops_tenant_usage_basis_cost_usd_per_hour`), budget money has one family",
        "per scope, and the global budget has `aifinops_cluster_*` families (no `__all__` row",
        "beside the tenants). `tests/e2e/test_sums.py` checks every money family on a real",
        "Prometheus.",
        "",
        "Energy and carbon (`energy:`) are families of their own, conserved the same way: each",
        "`aifinops_tenant_*` energy, power, electricity-cost and carbon family sums to its",
        "`aifinops_cluster_*` total, the fleet's measured figure (tenants, `__idle__` and",
        "`__unallocated__` together). A GPU's energy follows the usage basis' shares of the",
        "device; what a hold requested and left unused is its holder's, unrequested capacity",
        "and unheld GPUs are `__idle__`. Electricity dollars are not in the cost families:",
        "a bill adds `aifinops_tenant_energy_cost_usd_total` (docs/owned-gpus.md).",
        "",
        "The two bases. *Allocation* is OpenCost as billed: a pod pays for what it requested",
        "(requested GPUs x hours x price). *Usage* charges each GPU hold the physical device's",
        "price x the share of the device's time it used; what it requested and did not use is",
        "booked to `__idle__` and named in `aifinops_tenant_gpu_unused_cost_usd_per_hour`;",
        "capacity nobody requested is `__idle__` on both bases. Worked example: a $4/h H100",
        "time-sliced into 4 replicas; pods A and B request one each (OpenCost bills $1/h each,",
        "the 2 free replicas, $2/h, are `__idle__`). DCGM gives A 37 % and B 10 % of the device.",
        "Usage basis: A $4 x 0.37 = $1.48/h, B $4 x 0.10 = $0.40/h, `__idle__` $4 - $1.88 =",
        "$2.12/h; unused cost: A $0 (it used more than its $1), B $1 - $0.40 = $0.60/h.",
        "`aifinops_tenant_gpus` is 0.25 for each (the request), not 0.5.",
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
