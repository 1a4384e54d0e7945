"""A cap on the series of one family (``limits.max_series_per_family``), money conserved.

Tenants are already capped by the model (``limits.max_tenants`` folds the cheapest into
``__other__``), models by ``tokens.max_models``; this is the last guard, on what is rendered,
against any label that explodes (a model name per request, a GPU model per node, ...).

A family over the cap keeps its largest series. What happens to the rest depends on the
family:

* **additive** families (dollars, tokens, GPU counts: :data:`ADDITIVE`): the excess series
  are summed into series whose identifying labels (tenant, model, provider, gpu_model,
  workload, initiative, ...) read ``__other__`` and whose dimension labels (:data:`DIMENSIONS`:
  basis, resource, token_type, ...) are kept, so every total a rule or a dashboard takes over
  the family — per basis, per resource, per token type — is unchanged;
* every other family (prices, ratios, scores, info series): the excess series are dropped; a
  sum of them means nothing.

Either way the number of series that lost their identity is counted per family in
``aifinops_series_dropped_total{family}`` (a counter over refreshes: ``rate() > 0`` says the
cap is being hit now). A folded counter (``*_total``) may go down when the set of folded
series changes; it is a sum of whatever is over the cap, not a series with a history.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from aifinops.exposition.catalog import OTHER_TENANT
from aifinops.exposition.render import Family, Sample

ADDITIVE = frozenset(
    {
        "aifinops_tenant_cost_usd_per_hour",
        "aifinops_tenant_cost_usd_total",
        "aifinops_tenant_gpus",
        "aifinops_tenant_gpus_used",
        "aifinops_tenant_gpu_unused_cost_usd_per_hour",
        "aifinops_idle_gpus",
        "aifinops_idle_gpu_cost_usd_per_hour",
        "aifinops_tokens_total",
        "aifinops_token_cost_usd_total",
        "aifinops_unpriced_tokens_total",
        "aifinops_tenant_month_to_date_cost_usd",
        "aifinops_recommendation_savings_usd_per_month",
    }
)
# Labels that split a total into parts that must not be mixed; kept when folding.
DIMENSIONS = frozenset({"basis", "resource", "token_type", "source", "kind", "reason"})


def _rank(sample: Sample) -> tuple[bool, float, tuple[str, ...]]:
    labels, value = sample
    finite = not math.isnan(value)
    return (not finite, -value if finite else 0.0, labels)


def cap_family(family: Family, max_series: int) -> tuple[Family, int]:
    """``family`` with at most ``max_series`` series (see the module docstring), and how many
    series lost their identity (0 when under the cap)."""
    samples = family.samples
    if len(samples) <= max_series:
        return family, 0
    names = family.spec.labels
    ranked = sorted(samples, key=_rank)
    if family.spec.name not in ADDITIVE:
        return Family(family.spec, ranked[:max_series]), len(samples) - max_series

    def fold_key(labels: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            v if n in DIMENSIONS else OTHER_TENANT for n, v in zip(names, labels, strict=True)
        )

    groups = {fold_key(labels) for labels, _ in samples}
    keep = max(0, max_series - len(groups))
    out: dict[tuple[str, ...], list[float]] = {}
    for labels, value in ranked[:keep]:
        out[labels] = [value]
    for labels, value in ranked[keep:]:
        out.setdefault(fold_key(labels), []).append(value)
    folded = [(labels, math.fsum(values)) for labels, values in sorted(out.items())]
    return Family(family.spec, folded), len(samples) - keep


def cap_families(
    families: Iterable[Family], max_series: int | None
) -> tuple[list[Family], Mapping[str, int]]:
    """Every family capped; the count of series that lost their identity per family name."""
    if max_series is None:
        return list(families), {}
    out: list[Family] = []
    dropped: Counter[str] = Counter()
    for family in families:
        capped, n = cap_family(family, max_series)
        out.append(capped)
        if n:
            dropped[family.spec.name] += n
    return out, dropped


def dropped_samples(counts: Mapping[str, int]) -> Sequence[Sample]:
    """Samples of ``aifinops_series_dropped_total`` from cumulative counts per family."""
    return [((name,), float(n)) for name, n in sorted(counts.items())]
