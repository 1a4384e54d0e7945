"""Owned GPUs: the hourly cost of a GPU the company bought, from its finance inputs. Pure.

Per GPU (one entry of ``gpu_pricing.owned``, for a GPU model, optionally one node pool)::

    capital  = depreciation of the year the GPU is in / 8760     (stops at the end of its life)
    support  = support_usd_per_year / 8760
    hosting  = hosting_usd_per_gpu_month / 730
    price    = capital + support + hosting                       USD per GPU-hour

Hours are counted on a 365-day year: 8760 hours a year, 730 (8760 / 12) a month, so twelve
"months" of a price are exactly its year and a month's bill is ``price × 730`` for a GPU held
all month. A GPU's age is ``(now − purchase date at 00:00 UTC) / (365 × 86400 s)``; ``now``
is a parameter (unix seconds), never read from a clock. A ``now`` before the purchase date
counts as age 0 (start-up refuses a future date; this only guards a clock set backwards).

Depreciation, from ``purchase_usd`` down to ``residual_usd`` over ``life_years``:

* ``straight_line``: ``(purchase − residual) / life`` every year of the life (any life > 0).
* ``declining_balance``: double declining balance (rate ``2 / life``, whole years only): year
  ``k`` charges ``rate ×`` the book value at its start, never below the residual; the last
  year charges what is left down to the residual, so the life's charges sum to
  ``purchase − residual`` exactly, as with straight line.

After the life ends the book value stays at the residual: the capital part is 0 and only
support and hosting are charged (the GPU still runs, is still supported and still hosted).
All figures are floats (a rate on a gauge); the docs' worked example is in docs/owned-gpus.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

HOURS_PER_YEAR = 8760.0  # 365 × 24
HOURS_PER_MONTH = HOURS_PER_YEAR / 12  # 730
SECONDS_PER_YEAR = HOURS_PER_YEAR * 3600.0

DepreciationMethod = Literal["straight_line", "declining_balance"]
Precedence = Literal["opencost", "owned"]


@dataclass(frozen=True, slots=True)
class OwnedGpuSpec:
    """One configured owned-GPU entry. Money in USD per GPU; ``purchased_at`` in unix seconds
    (the purchase date at 00:00 UTC); ``purchase_date`` is the same date as text (a label)."""

    pool: str
    gpu_model: str
    purchase_usd: float
    purchase_date: str
    purchased_at: float
    life_years: float
    residual_usd: float = 0.0
    support_usd_per_year: float = 0.0
    hosting_usd_per_gpu_month: float = 0.0
    method: DepreciationMethod = "straight_line"
    node_pattern: str | None = None  # a full-match regex on the node name; None: every node


@dataclass(frozen=True, slots=True)
class OwnedHourlyCost:
    """An entry's price at one instant, in USD per GPU-hour, by component."""

    spec: OwnedGpuSpec
    capital: float
    support: float
    hosting: float
    book_value_usd: float  # the GPU's book value at the start of the year it is in
    precedence: Precedence = "opencost"  # the configured precedence (a label on the info)

    @property
    def total(self) -> float:
        return math.fsum((self.capital, self.support, self.hosting))


def _yearly_depreciation(spec: OwnedGpuSpec, year: int) -> tuple[float, float]:
    """(depreciation charged in year ``year`` (0-based), book value at its start)."""
    base = spec.purchase_usd - spec.residual_usd
    if spec.method == "straight_line":
        per_year = base / spec.life_years
        if year >= spec.life_years:
            return 0.0, spec.residual_usd
        return per_year, spec.purchase_usd - per_year * year
    life = int(spec.life_years)
    rate = 2.0 / life
    value = spec.purchase_usd
    for _ in range(min(year, life)):
        value -= min(value * rate, value - spec.residual_usd)
    if year >= life:
        return 0.0, spec.residual_usd
    if year == life - 1:
        return value - spec.residual_usd, value
    return min(value * rate, value - spec.residual_usd), value


def owned_hourly_cost(
    spec: OwnedGpuSpec, now: float, precedence: Precedence = "opencost"
) -> OwnedHourlyCost:
    """The entry's USD per GPU-hour at ``now`` (unix seconds); see the module docstring."""
    age_years = max(0.0, now - spec.purchased_at) / SECONDS_PER_YEAR
    year = int(age_years)
    if spec.method == "straight_line" and age_years >= spec.life_years:
        year = max(year, math.ceil(spec.life_years))  # past a fractional life: ended
    yearly, book = _yearly_depreciation(spec, year)
    return OwnedHourlyCost(
        spec=spec,
        capital=yearly / HOURS_PER_YEAR,
        support=spec.support_usd_per_year / HOURS_PER_YEAR,
        hosting=spec.hosting_usd_per_gpu_month / HOURS_PER_MONTH,
        book_value_usd=book,
        precedence=precedence,
    )


@dataclass(frozen=True, slots=True)
class OwnedPricing:
    """The configured owned entries, in configuration order, and the precedence between an
    owned price and OpenCost's where OpenCost prices GPUs (see model/cost.py)."""

    entries: tuple[OwnedGpuSpec, ...] = ()
    precedence: Precedence = "opencost"

    def at(self, now: float) -> tuple[OwnedHourlyCost, ...]:
        """Every entry's price at ``now``."""
        return tuple(owned_hourly_cost(s, now, self.precedence) for s in self.entries)
