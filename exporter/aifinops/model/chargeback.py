"""Chargeback for one calendar month: per tenant × resource, rounded to the cent. Pure; the
time zone and ``now`` are arguments.

Rows
----
Each ``(tenant, resource)`` of the period's accrued dollars is a ``direct`` row, the sentinels
``__idle__`` and ``__unallocated__`` included. Optionally (``share_idle`` /
``share_unallocated``) a sentinel's dollars on a resource are shared out to the real tenants
in proportion to their direct cost *on that resource*; when no real tenant has direct cost on
it, in proportion to their total direct cost; when none has any, the sentinel row stays.
Shared dollars become ``idle_share`` / ``unallocated_share`` rows and the sentinel row goes.

Rounding
--------
Amounts are :class:`~decimal.Decimal` cents. The total is the exact sum of the rows (each float
taken at its exact binary value) rounded half-up to the cent; every row is floored to the cent
and the missing cents go, one each, to the rows with the largest remainders (ties: row order)
— the largest-remainder method — so the rounded rows sum *exactly* to the rounded total.

The files (CSV, FOCUS 1.2, JSON) are written by :mod:`aifinops.exposition.chargeback_files`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Literal
from zoneinfo import ZoneInfo

from aifinops.model.energy import EnergyUse
from aifinops.model.vocabulary import IDLE_TENANT, UNALLOCATED_TENANT

ChargeAllocation = Literal["direct", "idle_share", "unallocated_share"]
CURRENCY = "USD"
CENT = Decimal("0.01")
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_SENTINEL_SHARE: Mapping[str, ChargeAllocation] = {
    IDLE_TENANT: "idle_share",
    UNALLOCATED_TENANT: "unallocated_share",
}
# Exact decimal arithmetic on binary floats needs many digits; 2000 covers any double.
_EXACT = Context(prec=2000)


@dataclass(frozen=True, slots=True)
class Quantity:
    """A measured usage quantity and its FOCUS unit (e.g. ``GPU-Hours``, ``Tokens``)."""

    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class ChargebackRow:
    tenant: str
    resource: str
    allocation: ChargeAllocation
    amount_usd: Decimal  # rounded to the cent
    exact_usd: float  # before rounding
    quantity: Quantity | None = None
    # GPU rows: the tenant's GPU dollars by split method (method, share 0-1), sorted by
    # method; empty where unknown (other resources, shares of pools, past months).
    split: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Chargeback:
    """One month's chargeback. ``start``/``end`` bound the calendar month (unix seconds, end
    exclusive); ``charge_end`` is ``min(end, now)`` for the month in progress, or the end of
    the data; ``charge_start`` the start of the data when later than ``start``."""

    period: str
    start: float
    end: float
    charge_end: float
    basis: str
    rows: tuple[ChargebackRow, ...]
    total_usd: Decimal
    share_idle: bool
    share_unallocated: bool
    currency: str = CURRENCY
    charge_start: float | None = None  # when the data starts; None: the period start
    source: str = "opencost"  # "opencost" (books of record) or "exporter_ledger"
    # Per tenant, its measured GPU electricity in the period (energy.enabled, this month
    # only: the exporter keeps no energy history). Not in the rows' dollars: its own figures.
    energy: Mapping[str, EnergyUse] = field(default_factory=dict)

    @property
    def charge_from(self) -> float:
        return self.start if self.charge_start is None else max(self.start, self.charge_start)

    def tenant_totals(self) -> dict[str, Decimal]:
        """Rounded USD per tenant (sums of its rounded rows)."""
        out: dict[str, Decimal] = defaultdict(Decimal)
        for r in self.rows:
            out[r.tenant] += r.amount_usd
        return dict(out)


def parse_period(period: str, tz: str) -> tuple[float, float]:
    """``"YYYY-MM"`` → (start, end) unix seconds of that calendar month in ``tz``; raises
    :class:`ValueError` on a malformed period."""
    m = _PERIOD.match(period)
    if not m:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    year, month = int(m.group(1)), int(m.group(2))
    zone = ZoneInfo(tz)
    first = date(year, month, 1)
    nxt = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    start = datetime(first.year, first.month, 1, tzinfo=zone).timestamp()
    end = datetime(nxt.year, nxt.month, 1, tzinfo=zone).timestamp()
    return start, end


def current_period(now: float, tz: str) -> str:
    """The ``YYYY-MM`` containing ``now`` in ``tz``."""
    return datetime.fromtimestamp(now, ZoneInfo(tz)).strftime("%Y-%m")


def round_cents(values: Sequence[float]) -> tuple[list[Decimal], Decimal]:
    """Largest-remainder rounding to the cent: ``(rounded values, rounded total)`` with
    ``sum(rounded values) == rounded total`` exactly. Raises :class:`ValueError` on a
    non-finite value."""
    if any(not math.isfinite(v) for v in values):
        raise ValueError("amounts must be finite")
    with localcontext(_EXACT):
        cents = [Decimal(v) * 100 for v in values]
        floors = [c.to_integral_value(rounding=ROUND_FLOOR) for c in cents]
        remainders = [c - f for c, f in zip(cents, floors, strict=True)]
        total_cents = sum(cents, Decimal(0)).to_integral_value(rounding=ROUND_HALF_UP)
        missing = int(total_cents - sum(floors, Decimal(0)))
        for i in sorted(range(len(values)), key=lambda i: (-remainders[i], i))[:missing]:
            floors[i] += 1
        return [(f * CENT).quantize(CENT) for f in floors], (total_cents * CENT).quantize(CENT)


def share_out(
    dollars: Mapping[tuple[str, str], float],
    share_idle: bool = False,
    share_unallocated: bool = False,
) -> dict[tuple[str, str, ChargeAllocation], float]:
    """Per ``(tenant, resource, allocation)`` USD with the chosen sentinels shared out (see the
    module docstring). The values sum to the input's sum (up to float rounding)."""
    shared = {
        t for t, on in ((IDLE_TENANT, share_idle), (UNALLOCATED_TENANT, share_unallocated)) if on
    }
    out: dict[tuple[str, str, ChargeAllocation], float] = {}
    direct_by_resource: dict[str, dict[str, float]] = defaultdict(dict)
    direct_total: dict[str, list[float]] = defaultdict(list)
    for (tenant, resource), usd in dollars.items():
        out[(tenant, resource, "direct")] = usd
        if tenant not in _SENTINEL_SHARE:
            direct_by_resource[resource][tenant] = max(0.0, usd)
            direct_total[tenant].append(max(0.0, usd))
    totals = {t: math.fsum(v) for t, v in direct_total.items()}
    for (tenant, resource), usd in sorted(dollars.items()):
        if tenant not in shared or usd == 0:
            continue
        weights = {t: w for t, w in direct_by_resource.get(resource, {}).items() if w > 0}
        if not weights:
            weights = {t: w for t, w in totals.items() if w > 0}
        if not weights:
            continue
        del out[(tenant, resource, "direct")]
        names = sorted(weights)
        weight_sum = math.fsum(weights.values())
        parts = [usd * weights[t] / weight_sum for t in names[:-1]]
        parts.append(usd - math.fsum(parts))  # the last takes the rest: shares sum to usd
        allocation = _SENTINEL_SHARE[tenant]
        for t, part in zip(names, parts, strict=True):
            key = (t, resource, allocation)
            out[key] = out.get(key, 0.0) + part
    return out


def build_chargeback(
    dollars: Mapping[tuple[str, str], float],
    period: str,
    tz: str,
    *,
    basis: str = "allocation",
    share_idle: bool = False,
    share_unallocated: bool = False,
    quantities: Mapping[tuple[str, str], Quantity] | None = None,
    now: float | None = None,
    covered: tuple[float, float] | None = None,
    source: str = "opencost",
    splits: Mapping[str, Mapping[str, float]] | None = None,
    energy: Mapping[str, EnergyUse] | None = None,
) -> Chargeback:
    """Chargeback rows for ``period`` (``YYYY-MM`` in ``tz``) from the period's accrued USD per
    ``(tenant, resource)``. ``quantities`` optionally gives measured usage per direct row.
    Rows with an exact amount of 0 are dropped. ``covered``: the ``(start, end)`` the data
    covers, which bounds the charge period. ``splits`` (tenant → split method → USD/h) says
    how each tenant's GPU dollars were split: its direct GPU row carries the shares. Raises
    :class:`ValueError` on a bad period or a non-finite amount."""
    start, end = parse_period(period, tz)
    charge_end = end if now is None or now <= start else min(end, now)
    charge_start: float | None = None
    if covered is not None:
        charge_start = max(start, min(covered[0], charge_end))
        charge_end = max(charge_start, min(charge_end, covered[1]))
    items = sorted(
        ((k, v) for k, v in share_out(dollars, share_idle, share_unallocated).items() if v != 0),
        key=lambda kv: kv[0],
    )
    rounded, total = round_cents([v for _, v in items])
    qty = quantities or {}
    rows = tuple(
        ChargebackRow(
            tenant=t,
            resource=r,
            allocation=a,
            amount_usd=amount,
            exact_usd=exact,
            quantity=qty.get((t, r)) if a == "direct" else None,
            split=split_shares((splits or {}).get(t, {})) if (r, a) == ("gpu", "direct") else (),
        )
        for ((t, r, a), exact), amount in zip(items, rounded, strict=True)
    )
    return Chargeback(
        period=period,
        start=start,
        end=end,
        charge_end=charge_end,
        basis=basis,
        rows=rows,
        total_usd=total,
        share_idle=share_idle,
        share_unallocated=share_unallocated,
        charge_start=charge_start,
        source=source,
        energy=dict(energy or {}),
    )


def split_shares(by_method: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """USD per split method as ``(method, share)`` pairs summing to 1, sorted by method;
    empty when there is nothing to split."""
    total = math.fsum(v for v in by_method.values() if v > 0)
    if total <= 0:
        return ()
    return tuple((m, v / total) for m, v in sorted(by_method.items()) if v > 0)
