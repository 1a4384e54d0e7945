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

Which series are "largest": by value, descending (NaN last), ties broken by labels ascending
(:func:`_rank`). A kept series keeps its value; a fold is the :func:`math.fsum` of its series
(and of a kept series already named like it: an ``__other__`` row the model folded). The
capped family is sorted by labels (additive) or in rank order (the others).

At fleet scale several families are over the cap at once (tens of thousands of samples each, every
refresh), so :func:`cap_family` does not rank them with a Python key (that cost a noticeable share
of a refresh at fleet scale: bench/README.md): it finds the value of the last kept series from a
sort of the bare floats, selects the kept series with C-level comparisons, counts the fold groups by
projecting the labels onto the dimension labels (:func:`operator.itemgetter`), builds fold keys per
group rather than per sample and never hashes a kept series' labels (duplicates and kept rows named
like a fold show up as neighbours after the final sort). Its output is exactly that of the plain
definition, :func:`_cap_sorted`, which still handles the inputs where the shortcuts do not hold: NaN
or infinite values, a series listed twice, label tuples of the wrong width. An additive family held
in :class:`Columns` with a key set takes :func:`_cap_columns` first: its labels are checked sorted
and unique and its fold groups computed once per key set, so a steady refresh selects and sums over
the columns and sorts nothing by labels.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, islice, repeat
from operator import eq, itemgetter, lt, not_
from typing import Any

from aifinops.exposition.catalog import OTHER_TENANT, MetricSpec
from aifinops.exposition.render import Columns, Family, Sample

ADDITIVE = frozenset(
    {
        "aifinops_tenant_cost_usd_per_hour",
        "aifinops_tenant_cost_usd_total",
        "aifinops_tenant_usage_basis_cost_usd_per_hour",
        "aifinops_tenant_usage_basis_cost_usd_total",
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
        # Energy per tenant: its totals keep every tenant that ever drew energy.
        "aifinops_tenant_gpu_energy_joules_total",
        "aifinops_tenant_gpu_power_watts",
        "aifinops_tenant_energy_cost_usd_total",
        "aifinops_tenant_energy_cost_usd_per_hour",
        "aifinops_tenant_carbon_grams_total",
        "aifinops_tenant_carbon_grams_per_hour",
        "aifinops_tenant_energy_month_to_date_cost_usd",
        "aifinops_tenant_carbon_month_to_date_grams",
        # GPU dollars by split method: sum() is the cluster GPU rate, per method too.
        "aifinops_tenant_gpu_cost_by_method_usd_per_hour",
        "aifinops_tenant_usage_basis_gpu_cost_by_method_usd_per_hour",
    }
)
# Labels that split a total into parts that must not be mixed; kept when folding.
DIMENSIONS = frozenset({"basis", "resource", "token_type", "source", "kind", "reason", "method"})


def _rank(sample: Sample) -> tuple[bool, float, tuple[str, ...]]:
    labels, value = sample
    finite = not math.isnan(value)
    return (not finite, -value if finite else 0.0, labels)


_first = itemgetter(0)
_second = itemgetter(1)


def cap_family(family: Family, max_series: int) -> tuple[Family, int]:
    """``family`` with at most ``max_series`` series (see the module docstring), and how many
    series lost their identity (0 when under the cap)."""
    if len(family.samples) <= max_series:
        return family, 0
    capped = _cap_columns(family, max_series)
    if capped is None:
        capped = _cap_selected(family, max_series)
    return capped if capped is not None else _cap_sorted(family, max_series)


def _cap_sorted(family: Family, max_series: int) -> tuple[Family, int]:
    """The cap by its definition: rank every sample, keep the first, fold or drop the rest.
    The reference for :func:`_cap_selected`, and the path for the inputs it declines."""
    samples = family.samples
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
    kept = dict(ranked[:keep])  # a series listed twice: the last in rank order
    folds: dict[tuple[str, ...], list[float]] = {}
    for labels, value in ranked[keep:]:
        folds.setdefault(fold_key(labels), []).append(value)
    out: dict[tuple[str, ...], float] = {}
    for labels, value in kept.items():
        # A kept series named like a fold (an __other__ row the model folded) absorbs it.
        out[labels] = math.fsum([*folds.pop(labels), value]) if labels in folds else value
    out.update((labels, math.fsum(values)) for labels, values in folds.items())
    return Family(family.spec, sorted(out.items())), len(samples) - keep


def _top_mask(labels: Sequence[tuple[str, ...]], values: list[float], keep: int) -> list[bool]:
    """Which samples are among the first ``keep`` by :func:`_rank` (all values finite):
    every value above the ``keep``-th largest, then the ties at that value in label order."""
    if keep <= 0:
        return [False] * len(values)
    threshold = sorted(values, reverse=True)[keep - 1]
    mask = list(map(lt, repeat(threshold), values))
    ties = compress(range(len(values)), map(eq, values, repeat(threshold)))
    for i in sorted(ties, key=labels.__getitem__)[: keep - mask.count(True)]:
        mask[i] = True
    return mask


def _cap_selected(family: Family, max_series: int) -> tuple[Family, int] | None:
    """:func:`_cap_sorted`'s result without ranking every sample in Python; ``None`` for the
    inputs its shortcuts do not cover (then the caller ranks)."""
    samples = family.samples
    values = list(map(_second, samples))
    if not math.isfinite(sum(values)):
        # NaN ranks apart, and an infinity can make fsum's result order-dependent (a finite
        # sum that overflows lands here too: merely the slower path).
        return None
    spec = family.spec
    label_sets = list(map(_first, samples))
    if spec.name not in ADDITIVE:
        if max_series < 0:
            return None
        kept = list(compress(samples, _top_mask(label_sets, values, max_series)))
        kept.sort(key=_first)
        kept.sort(key=_second, reverse=True)  # stable: ties stay in label order
        return Family(spec, kept), len(samples) - max_series

    width = len(spec.labels)
    if set(map(len, label_sets)) != {width}:
        return None  # the definition's strict zip reports it
    dims = [i for i, name in enumerate(spec.labels) if name in DIMENSIONS]
    # Two samples fold together when they agree on every dimension label.
    project = itemgetter(*dims) if dims else None
    groups = len(set(map(project, label_sets))) if project else 1
    keep = max(0, max_series - groups)
    mask = _top_mask(label_sets, values, keep)

    # The folded tail summed per group, keyed by the projection (one label value, or a tuple
    # of them): fold labels are built per group, never per sample.
    rest = list(map(not_, mask))
    tails: dict[Any, list[float]] = {}
    if project is None:
        tails[None] = list(compress(values, rest))
    else:
        for key, value in zip(
            map(project, compress(label_sets, rest)), compress(values, rest), strict=True
        ):
            bucket = tails.get(key)
            if bucket is None:
                tails[key] = [value]
            else:
                bucket.append(value)
    folds: dict[tuple[str, ...], list[float]] = {}
    for key, bucket in tails.items():
        fold = [OTHER_TENANT] * width
        for i, v in zip(dims, key if len(dims) > 1 else (key,) if dims else (), strict=True):
            fold[i] = v
        folds[tuple(fold)] = bucket
    folded = [(labels, math.fsum(bucket)) for labels, bucket in folds.items()]
    out = list(compress(samples, mask)) + folded
    out.sort(key=_first)  # stable: a kept series stays before a fold of the same name
    merged = _merge_equal_labels(out, {id(row) for row in folded}, folds)
    return None if merged is None else (Family(spec, merged), len(samples) - keep)


@dataclass(frozen=True, slots=True)
class _Groups:
    """What the cap of an additive family derives from its labels alone, kept per key set
    (:attr:`Columns.key`): whether the labels are sorted and unique (the builders' promise,
    checked once), each series' fold group and each group's fold labels."""

    key: object
    ordered: bool
    codes: bytes | array[int]
    folds: list[tuple[str, ...]]


# One entry per family (its spec): the current page's key sets, replaced whole.
_GROUPS: dict[MetricSpec, _Groups] = {}
# More fold groups than this are summed through a dict (one pass); fewer, one C-level pass
# each.
_FEW_GROUPS = 16


def _groups(spec: MetricSpec, columns: Columns) -> _Groups:
    groups = _GROUPS.get(spec)
    if groups is not None and groups.key == columns.key:
        return groups
    labels = columns.labels
    width = len(spec.labels)
    ordered = set(map(len, labels)) <= {width} and all(map(lt, labels, islice(labels, 1, None)))
    dims = [i for i, name in enumerate(spec.labels) if name in DIMENSIONS]
    index: dict[tuple[str, ...], int] = {}
    codes: list[int] = []
    for row in labels:
        fold = [OTHER_TENANT] * width
        for i in dims:
            fold[i] = row[i]
        codes.append(index.setdefault(tuple(fold), len(index)))
    # Held as bytes (one per series) where the groups are few, as they are: a dimension
    # label has a handful of values.
    packed = bytes(codes) if len(index) <= 256 else array("i", codes)
    groups = _Groups(columns.key, ordered, packed, list(index))
    _GROUPS[spec] = groups
    return groups


def _cap_columns(family: Family, max_series: int) -> tuple[Family, int] | None:
    """:func:`_cap_selected`'s result for an additive family held in :class:`Columns` whose
    key set is known (sorted and unique labels, checked once per key set): the selection
    and sums run over the columns, the fold groups are kept per key set, and the kept series
    stay in label order, so nothing is sorted by labels. ``None`` where it does not apply."""
    columns = family.samples
    spec = family.spec
    if not isinstance(columns, Columns) or columns.key is None or spec.name not in ADDITIVE:
        return None
    values = list(columns.values)
    if not math.isfinite(sum(values)):
        return None
    groups = _groups(spec, columns)
    if not groups.ordered:
        return None
    labels = columns.labels
    keep = max(0, max_series - len(groups.folds))
    mask = _top_mask(labels, values, keep)
    rest = list(map(not_, mask))
    tail_codes = list(compress(groups.codes, rest))
    tail_values = list(compress(values, rest))
    buckets: list[list[float]]
    if len(groups.folds) <= _FEW_GROUPS:
        buckets = [
            list(compress(tail_values, map(eq, tail_codes, repeat(g))))
            for g in range(len(groups.folds))
        ]
    else:
        buckets = [[] for _ in groups.folds]
        for code, value in zip(tail_codes, tail_values, strict=True):
            buckets[code].append(value)
    out_labels = list(compress(labels, mask))
    out_values = list(compress(values, mask))
    for fold, bucket in zip(groups.folds, buckets, strict=True):
        if not bucket:
            continue  # a group whose series are all kept has no fold
        at = bisect_left(out_labels, fold)
        if at < len(out_labels) and out_labels[at] == fold:
            # A kept series named like a fold (an __other__ row the model folded) absorbs it.
            out_values[at] = math.fsum([*bucket, out_values[at]])
        else:
            out_labels.insert(at, fold)
            out_values.insert(at, math.fsum(bucket))
    # The capped family's key set is the same while the kept series are (the same input
    # key set and selection): the renderer keeps its label columns meanwhile.
    selection = bytes(mask)
    kept = _KEPT.get(spec)
    if kept is None or kept[0] != columns.key or kept[1] != selection:
        kept = (columns.key, selection, object())
        _KEPT[spec] = kept
    return Family(spec, Columns(out_labels, out_values, kept[2])), len(values) - keep


# Per family (its spec): the input key set, the selection and the capped family's key set.
_KEPT: dict[MetricSpec, tuple[object, bytes, object]] = {}


def _merge_equal_labels(
    out: list[Sample], folded: set[int], folds: Mapping[tuple[str, ...], list[float]]
) -> list[Sample] | None:
    """``out`` (sorted by labels, kept series and folds) with each kept series that is named
    like a fold (an ``__other__`` row the model already folded) summed into that fold, as the
    definition does; ``None`` where two kept series have the same labels (the definition
    keeps the last in rank order: the caller ranks). Equal labels are adjacent after the
    sort, so one C-level pass over neighbours finds them (usually none)."""
    labels = list(map(_first, out))
    for i in reversed(list(compress(range(len(out) - 1), map(eq, labels, labels[1:])))):
        kept, fold = out[i], out[i + 1]
        if id(kept) in folded or id(fold) not in folded:
            return None
        out[i : i + 2] = [(fold[0], math.fsum([*folds[fold[0]], kept[1]]))]
    return out


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
