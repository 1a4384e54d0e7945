"""Model routing: rank candidate models for a workload class by cost, quality and latency.
Pure; prices and measured latencies come in as lookup callables.

For each candidate:

* **cost** — USD per 1M tokens blended by the workload's token mix:
  ``input_share × input price + output_share × output price``. The price is the candidate's
  configured override, else the lookup (price list, or measured self-hosted cost);
* **latency** — p95 seconds: measured (the lookup, e.g. :func:`histogram_quantile` over
  vLLM's ``vllm:e2e_request_latency_seconds`` bucket increases) when known, else configured;
* **quality** — the team's eval score in ``[0, 1]``.

Candidates that break a constraint (provider not allowed, quality below the minimum, p95
above the maximum) or lack a figure the ranking needs (no price; no latency while latency is
constrained or weighted) are excluded, each with every reason. The rest are scored:

* ``cost_score = (max − c) / (max − min)`` over the remaining candidates (1 when all equal),
  ``latency_score`` likewise;
* ``quality_score = quality`` as configured, *not* min–max normalized: eval scores are
  already on an absolute 0–1 scale, and stretching them would turn 0.90 vs 0.91 into 0 vs 1
  and make a candidate's score depend on how close its rivals happen to be;
* ``score = w_cost·cost_score + w_quality·quality + w_latency·latency_score`` ∈ [0, 1]
  (weights sum to 1).

Ranking: score descending, then cheaper, then model name. Savings of moving the workload's
observed monthly token volume from ``current_model`` to the recommended one are
``max(0, current monthly cost − recommended monthly cost)`` (0 when the current model is the
best one or is cheaper). Money is float USD (gauges).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

TOKENS_PER_MILLION = 1_000_000.0

PriceSource = Literal["config", "price_list", "measured"]
LatencySource = Literal["measured", "config"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens by token type, and where the price came from."""

    input_usd_per_million: float
    output_usd_per_million: float
    source: PriceSource = "price_list"


PriceLookup = Callable[[str, str], ModelPrice | None]
"""``(model, provider) → price``; ``None`` when unknown."""
LatencyLookup = Callable[[str, str], float | None]
"""``(model, provider) → measured p95 latency in seconds``; ``None`` when not measured."""


def no_prices(model: str, provider: str) -> ModelPrice | None:
    """A :data:`PriceLookup` that knows nothing (candidates must carry overrides)."""
    return None


def no_latencies(model: str, provider: str) -> float | None:
    """A :data:`LatencyLookup` that knows nothing (configured latencies only)."""
    return None


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    provider: str
    quality: float  # 0-1, from the team's evals
    p95_latency_seconds: float | None = None  # configured fallback
    price: ModelPrice | None = None  # configured override (source "config")


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the normalized cost, quality and latency scores; sum to 1."""

    cost: float = 0.5
    quality: float = 0.3
    latency: float = 0.2


@dataclass(frozen=True, slots=True)
class Constraints:
    min_quality: float = 0.0
    max_p95_latency_seconds: float | None = None
    allowed_providers: frozenset[str] | None = None  # None: any provider


@dataclass(frozen=True, slots=True)
class TokenMix:
    """Shares of input and output tokens in the workload's volume; sum to 1."""

    input: float = 0.75
    output: float = 0.25


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    candidates: tuple[Candidate, ...]
    weights: Weights = Weights()
    constraints: Constraints = Constraints()
    token_mix: TokenMix = TokenMix()
    current_model: str | None = None
    tenant: str = "__all__"  # who pays for it (recommendations are per tenant)


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    rank: int  # 1 = recommended
    model: str
    provider: str
    quality: float
    cost_usd_per_million: float  # blended by the token mix
    price_source: PriceSource
    p95_latency_seconds: float | None
    latency_source: LatencySource | None
    cost_score: float
    quality_score: float
    latency_score: float | None  # None when latency is neither weighted nor constrained
    score: float
    monthly_cost_usd: float


@dataclass(frozen=True, slots=True)
class ExcludedCandidate:
    model: str
    provider: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoutingResult:
    workload: str
    tenant: str
    ranked: tuple[ScoredCandidate, ...]
    excluded: tuple[ExcludedCandidate, ...]
    recommended: ScoredCandidate | None
    current_model: str | None
    current_cost_usd_per_million: float | None
    current_quality: float | None
    monthly_tokens: float
    current_monthly_cost_usd: float | None
    monthly_savings_usd: float | None  # None when there is no priced current model
    reason: str | None = None  # why there is no recommendation or no savings figure


def blended_cost_per_million(price: ModelPrice, mix: TokenMix) -> float:
    """USD per 1M tokens of the workload's mix."""
    return mix.input * price.input_usd_per_million + mix.output * price.output_usd_per_million


def _min_max_score(value: float, lo: float, hi: float) -> float:
    """``(hi − value) / (hi − lo)``: 1 for the best (lowest), 0 for the worst; 1 if all equal."""
    if hi <= lo:
        return 1.0
    return min(1.0, max(0.0, (hi - value) / (hi - lo)))


def histogram_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The ``q``-quantile of a classic Prometheus histogram, as PromQL's
    ``histogram_quantile`` computes it.

    ``buckets`` are ``(upper bound le, cumulative count)`` pairs, one of them ``+Inf`` — use
    the *increase* of each ``_bucket`` counter over a window, not the raw counters. Like
    Prometheus: buckets are sorted, equal bounds merged, counts forced monotonic; the quantile
    is interpolated linearly inside its bucket, from 0 for the first bucket (or that bucket's
    bound when it is ≤ 0); a rank in the ``+Inf`` bucket returns the highest finite bound.
    Where PromQL returns NaN (no ``+Inf`` bucket, fewer than 2 buckets, no observations) this
    returns ``None``. ``q`` must be in ``[0, 1]`` (PromQL's ±Inf results are a ValueError).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    merged: dict[float, float] = {}
    for le, count in buckets:
        merged[le] = merged.get(le, 0.0) + count
    ordered = sorted(merged.items())
    if not ordered or ordered[-1][0] != math.inf:
        return None
    if len(ordered) < 2:
        return None
    bounds = [le for le, _ in ordered]
    counts: list[float] = []
    running = -math.inf
    for _, c in ordered:
        running = max(running, c)
        counts.append(running)
    observations = counts[-1]
    if not observations > 0:
        return None
    rank = q * observations
    # sort.Search over all but the +Inf bucket: the first bucket whose count reaches the rank.
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count <= 0:
        # An empty bucket reached with rank 0 (q = 0): PromQL divides 0 by 0 here (NaN); the
        # bucket's lower edge is the value it tends to.
        return start
    return start + (end - start) * (rank / count)


def _price_of(c: Candidate, prices: PriceLookup) -> ModelPrice | None:
    if c.price is not None:
        return ModelPrice(c.price.input_usd_per_million, c.price.output_usd_per_million, "config")
    return prices(c.model, c.provider)


def _latency_of(
    c: Candidate, latencies: LatencyLookup
) -> tuple[float | None, LatencySource | None]:
    measured = latencies(c.model, c.provider)
    if measured is not None and math.isfinite(measured) and measured >= 0:
        return measured, "measured"
    if c.p95_latency_seconds is not None:
        return c.p95_latency_seconds, "config"
    return None, None


@dataclass(frozen=True, slots=True)
class _Eligible:
    candidate: Candidate
    price: ModelPrice
    cost: float
    latency: float | None
    latency_source: LatencySource | None


def optimize_workload(
    workload: Workload,
    prices: PriceLookup,
    latencies: LatencyLookup,
    monthly_tokens: float,
) -> RoutingResult:
    """Rank ``workload``'s candidates and price the switch from its current model.

    ``monthly_tokens`` is the workload's observed token volume per month (input + output; its
    split is the configured token mix). See the module docstring for the scoring rules.
    """
    volume = max(0.0, monthly_tokens) if math.isfinite(monthly_tokens) else 0.0
    w, cons, mix = workload.weights, workload.constraints, workload.token_mix
    latency_needed = w.latency > 0 or cons.max_p95_latency_seconds is not None
    eligible: list[_Eligible] = []
    excluded: list[ExcludedCandidate] = []
    for c in workload.candidates:
        reasons: list[str] = []
        if cons.allowed_providers is not None and c.provider not in cons.allowed_providers:
            allowed = ", ".join(sorted(cons.allowed_providers))
            reasons.append(f"provider {c.provider!r} is not allowed (allowed: {allowed})")
        if c.quality < cons.min_quality:
            reasons.append(f"quality {c.quality:g} is below min_quality {cons.min_quality:g}")
        latency, latency_source = _latency_of(c, latencies)
        if latency is None and latency_needed:
            reasons.append("no p95 latency: none measured and none configured")
        elif (
            latency is not None
            and cons.max_p95_latency_seconds is not None
            and latency > cons.max_p95_latency_seconds
        ):
            reasons.append(
                f"p95 latency {latency:g}s ({latency_source}) is above "
                f"max_p95_latency_seconds {cons.max_p95_latency_seconds:g}s"
            )
        price = _price_of(c, prices)
        if price is None:
            reasons.append("no price: not in the price list, not measured, no override")
        if reasons or price is None:
            excluded.append(ExcludedCandidate(c.model, c.provider, tuple(reasons)))
            continue
        eligible.append(
            _Eligible(c, price, blended_cost_per_million(price, mix), latency, latency_source)
        )

    costs = [e.cost for e in eligible]
    lats = [e.latency for e in eligible if e.latency is not None]
    scored: list[ScoredCandidate] = []
    for e in eligible:
        cost_score = _min_max_score(e.cost, min(costs), max(costs))
        latency_score: float | None = None
        if latency_needed and e.latency is not None:
            latency_score = _min_max_score(e.latency, min(lats), max(lats))
        quality = e.candidate.quality
        score = w.cost * cost_score + w.quality * quality + w.latency * (latency_score or 0.0)
        scored.append(
            ScoredCandidate(
                rank=0,
                model=e.candidate.model,
                provider=e.candidate.provider,
                quality=quality,
                cost_usd_per_million=e.cost,
                price_source=e.price.source,
                p95_latency_seconds=e.latency,
                latency_source=e.latency_source,
                cost_score=cost_score,
                quality_score=quality,
                latency_score=latency_score,
                score=min(1.0, max(0.0, score)),
                monthly_cost_usd=volume / TOKENS_PER_MILLION * e.cost,
            )
        )
    scored.sort(key=lambda s: (-s.score, s.cost_usd_per_million, s.model, s.provider))
    ranked = tuple(replace(s, rank=i + 1) for i, s in enumerate(scored))
    best = ranked[0] if ranked else None

    current_cost: float | None = None
    current_quality: float | None = None
    reason: str | None = None
    current = next((c for c in workload.candidates if c.model == workload.current_model), None)
    if workload.current_model is None:
        reason = "no current_model configured: savings are not computed"
    elif current is None:
        reason = f"current_model {workload.current_model!r} is not a candidate"
    else:
        current_quality = current.quality
        current_price = _price_of(current, prices)
        if current_price is None:
            reason = f"current_model {current.model!r} has no price: savings are not computed"
        else:
            current_cost = blended_cost_per_million(current_price, mix)
    if best is None:
        reason = "every candidate is excluded: no recommendation"

    current_monthly = (
        volume / TOKENS_PER_MILLION * current_cost if current_cost is not None else None
    )
    savings: float | None = None
    if current_monthly is not None and best is not None:
        savings = max(0.0, current_monthly - best.monthly_cost_usd)
    return RoutingResult(
        workload=workload.name,
        tenant=workload.tenant,
        ranked=ranked,
        excluded=tuple(excluded),
        recommended=best,
        current_model=workload.current_model,
        current_cost_usd_per_million=current_cost,
        current_quality=current_quality,
        monthly_tokens=volume,
        current_monthly_cost_usd=current_monthly,
        monthly_savings_usd=savings,
        reason=reason,
    )


def optimize_workloads(
    workloads: Sequence[Workload],
    prices: PriceLookup,
    latencies: LatencyLookup,
    monthly_tokens: Callable[[Workload], float],
) -> tuple[RoutingResult, ...]:
    """:func:`optimize_workload` for each workload; ``monthly_tokens`` gives each one's
    observed monthly volume."""
    return tuple(optimize_workload(w, prices, latencies, monthly_tokens(w)) for w in workloads)
