"""Chargeback for one calendar month: per tenant × resource, rounded to the cent, as JSON rows,
CSV or a FOCUS 1.2 cost-and-usage CSV. Pure; the time zone and ``now`` are arguments.

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

FOCUS
-----
:func:`focus_csv` emits every Mandatory column of FOCUS 1.2 and the Conditional ones that
apply (usage is measured: ``ConsumedQuantity``/``ConsumedUnit``; tenants are sub accounts:
``SubAccountId``/``SubAccountName``), the Recommended ``ChargeFrequency`` and
``ServiceSubcategory``, and ``x_``-prefixed columns of our own (``x_Cluster`` names the
cluster). Every row is ``ChargeCategory`` ``Usage`` with a null ``ChargeClass``;
``BilledCost = EffectiveCost = ListCost = ContractedCost`` (no discounts are modelled);
datetimes are ISO 8601 UTC (``YYYY-MM-DDTHH:MM:SSZ``); the billing period is the calendar
month in the configured time zone, converted to UTC; the charge period is the span the data
covers (``charge_start`` to ``charge_end``: OpenCost's first daily set in the month to its
last, or ``now`` for the month in progress). Usage on a ``Usage`` row must not be null:
``PricingQuantity``/``ConsumedQuantity`` are the measured quantity when known (OpenCost's
``gpuHours`` in ``GPU-Hours``, ``cpuCoreHours`` in ``Core-Hours`` (vCPU-hours), ``ramByteHours`` and
``pvByteHours`` in ``GiB-Hours``, API tokens in ``Tokens``) and otherwise the hours of the
charge period (unit ``Hours``, "this share of the resource over N hours": network and shared
cost, shares of idle), which ``x_QuantitySource`` says.

Spreadsheet safety
------------------
Text cells of the CSV and FOCUS files (tenant names come from pod labels, LiteLLM teams and
pushed usage) are neutralised as OWASP's CSV-injection guidance says: a cell starting with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` so a spreadsheet
shows it as text instead of running it as a formula; quoting is the csv module's. Numbers and
dates are ours and never start with those. JSON is not altered.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
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


def split_text(split: tuple[tuple[str, float], ...]) -> str:
    """``method=share;…`` (shares to 4 decimals), e.g. ``exclusive=0.75;hami=0.25``."""
    return ";".join(f"{m}={v:.4f}" for m, v in split)


# --- formats -------------------------------------------------------------------------------


def _plain(x: float) -> str:
    """A float as a plain decimal (no exponent, no ``+``), per FOCUS Numeric Format."""
    text = format(Decimal(repr(x)), "f")
    return text


# RFC 4180's CRLF: the csv module then quotes a field holding a CR as well as a LF (with
# "\n" alone, a bare CR in a tenant name would be written unquoted and break the row).
CSV_LINE_END = "\r\n"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would read it as a formula (it starts
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return): OWASP's CSV injection
    defence. Other text is returned as it is."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def iso_utc(ts: float) -> str:
    """Unix seconds → ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def chargeback_json_rows(
    cb: Chargeback,
) -> list[dict[str, str | float | dict[str, float] | None]]:
    """Rows as JSON-ready dicts (``amount_usd`` as a number with two decimals)."""
    return [
        {
            "tenant": r.tenant,
            "resource": r.resource,
            "allocation": r.allocation,
            "amount_usd": float(r.amount_usd),
            "quantity": r.quantity.value if r.quantity else None,
            "unit": r.quantity.unit if r.quantity else None,
            "split_methods": dict(r.split) if r.split else None,
        }
        for r in cb.rows
    ]


CSV_COLUMNS = (
    "period",
    "tenant",
    "resource",
    "allocation",
    "basis",
    "amount_usd",
    "quantity",
    "unit",
)


def chargeback_csv(cb: Chargeback) -> str:
    """A plain CSV (header :data:`CSV_COLUMNS`), amounts with two decimals."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=CSV_LINE_END)
    w.writerow(CSV_COLUMNS)
    for r in cb.rows:
        w.writerow(
            [
                cb.period,
                spreadsheet_safe(r.tenant),
                spreadsheet_safe(r.resource),
                r.allocation,
                cb.basis,
                str(r.amount_usd),
                _plain(r.quantity.value) if r.quantity else "",
                spreadsheet_safe(r.quantity.unit) if r.quantity else "",
            ]
        )
    return buf.getvalue()


@dataclass(frozen=True, slots=True)
class FocusParties:
    """Who bills whom in the FOCUS export (internal chargeback: the platform team)."""

    billing_account_id: str = "aifinops"
    billing_account_name: str = "AI FinOps chargeback"
    provider_name: str = "Internal AI platform"
    publisher_name: str = "Internal AI platform"
    invoice_issuer_name: str = "Internal AI platform"
    cluster: str = ""


# resource -> (ServiceCategory, ServiceSubcategory, ServiceName)
SERVICES: Mapping[str, tuple[str, str, str]] = {
    "gpu": ("AI and Machine Learning", "Machine Learning", "GPU compute"),
    "tokens": ("AI and Machine Learning", "Generative AI", "LLM tokens"),
    "cpu": ("Compute", "Containers", "Kubernetes CPU"),
    "ram": ("Compute", "Containers", "Kubernetes memory"),
    "storage": ("Storage", "Block Storage", "Kubernetes persistent volumes"),
    "network": ("Networking", "Network Connectivity", "Kubernetes network"),
    "shared": ("Compute", "Other (Compute)", "Shared cluster cost"),
}
_OTHER_SERVICE = ("Compute", "Other (Compute)", "Other cluster cost")

FOCUS_COLUMNS: tuple[str, ...] = (
    # Mandatory
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
    # Conditional, applicable here
    "ConsumedQuantity",
    "ConsumedUnit",
    "SubAccountId",
    "SubAccountName",
    # Recommended
    "ChargeFrequency",
    "ServiceSubcategory",
    # Ours
    "x_Tenant",
    "x_Resource",
    "x_Basis",
    "x_Allocation",
    "x_Period",
    "x_QuantitySource",
    "x_Cluster",
    "x_Source",
    "x_GpuSplitMethods",
    # A tenant's measured GPU electricity in the period (this month, energy.enabled), on its
    # direct GPU row: facility kWh (x PUE), its USD (not in BilledCost) and kg CO2e.
    "x_EnergyKWh",
    "x_EnergyCost",
    "x_CarbonKgCO2e",
)
# Columns holding numbers and dates we format ourselves; every other cell is text and is
# neutralised (see spreadsheet_safe).
_FOCUS_NUMERIC = frozenset(
    {
        "BilledCost",
        "ContractedCost",
        "EffectiveCost",
        "ListCost",
        "PricingQuantity",
        "ConsumedQuantity",
        "BillingPeriodEnd",
        "BillingPeriodStart",
        "ChargePeriodEnd",
        "ChargePeriodStart",
        "x_EnergyKWh",
        "x_EnergyCost",
        "x_CarbonKgCO2e",
    }
)


def _describe(r: ChargebackRow, basis: str) -> str:
    service = SERVICES.get(r.resource, _OTHER_SERVICE)[2]
    if r.allocation == "direct":
        return f"{service} used by tenant {r.tenant} ({basis} basis)"
    pool = "idle" if r.allocation == "idle_share" else "unallocated"
    return (
        f"Share of {pool} {service} charged to tenant {r.tenant} "
        f"in proportion to its direct cost ({basis} basis)"
    )


def focus_rows(cb: Chargeback, parties: FocusParties = FocusParties()) -> list[dict[str, str]]:
    """FOCUS rows as ``column → text`` (``""`` is null), in :data:`FOCUS_COLUMNS` order."""
    hours = (cb.charge_end - cb.charge_from) / 3600.0
    out = []
    for r in cb.rows:
        category, subcategory, service = SERVICES.get(r.resource, _OTHER_SERVICE)
        amount = str(r.amount_usd)
        if r.quantity is not None:
            quantity, unit, source = _plain(r.quantity.value), r.quantity.unit, "measured"
        else:
            quantity, unit, source = _plain(hours), "Hours", "charge_period_hours"
        values = {
            "BilledCost": amount,
            "BillingAccountId": parties.billing_account_id,
            "BillingAccountName": parties.billing_account_name,
            "BillingCurrency": cb.currency,
            "BillingPeriodEnd": iso_utc(cb.end),
            "BillingPeriodStart": iso_utc(cb.start),
            "ChargeCategory": "Usage",
            "ChargeClass": "",
            "ChargeDescription": _describe(r, cb.basis),
            "ChargePeriodEnd": iso_utc(cb.charge_end),
            "ChargePeriodStart": iso_utc(cb.charge_from),
            "ContractedCost": amount,
            "EffectiveCost": amount,
            "InvoiceIssuerName": parties.invoice_issuer_name,
            "ListCost": amount,
            "PricingQuantity": quantity,
            "PricingUnit": unit,
            "ProviderName": parties.provider_name,
            "PublisherName": parties.publisher_name,
            "ServiceCategory": category,
            "ServiceName": service,
            "ConsumedQuantity": quantity,
            "ConsumedUnit": unit,
            "SubAccountId": r.tenant,
            "SubAccountName": r.tenant,
            "ChargeFrequency": "Usage-Based",
            "ServiceSubcategory": subcategory,
            "x_Tenant": r.tenant,
            "x_Resource": r.resource,
            "x_Basis": cb.basis,
            "x_Allocation": r.allocation,
            "x_Period": cb.period,
            "x_QuantitySource": source,
            "x_Cluster": parties.cluster,
            "x_Source": cb.source,
            "x_GpuSplitMethods": split_text(r.split),
            "x_EnergyKWh": "",
            "x_EnergyCost": "",
            "x_CarbonKgCO2e": "",
        }
        use = cb.energy.get(r.tenant)
        if use is not None and r.resource == "gpu" and r.allocation == "direct":
            # Six decimals: Wh, micro-dollars and grams are finer than any meter behind them.
            values["x_EnergyKWh"] = _plain(round(use.facility_kwh, 6))
            values["x_EnergyCost"] = _plain(round(use.usd, 6))
            values["x_CarbonKgCO2e"] = _plain(round(use.kg_co2e, 6))
        out.append(
            {
                c: values[c] if c in _FOCUS_NUMERIC else spreadsheet_safe(values[c])
                for c in FOCUS_COLUMNS
            }
        )
    return out


def focus_csv(cb: Chargeback, parties: FocusParties = FocusParties()) -> str:
    """The FOCUS 1.2 cost-and-usage CSV (header :data:`FOCUS_COLUMNS`; null = empty field)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FOCUS_COLUMNS, lineterminator=CSV_LINE_END)
    w.writeheader()
    w.writerows(focus_rows(cb, parties))
    return buf.getvalue()


def chargeback_json(cb: Chargeback) -> str:
    """The whole chargeback as a JSON document (for tests and the CLI; the API uses schemas)."""
    return json.dumps(
        {
            "period": cb.period,
            "basis": cb.basis,
            "currency": cb.currency,
            "start": iso_utc(cb.start),
            "end": iso_utc(cb.end),
            "total_usd": float(cb.total_usd),
            "rows": chargeback_json_rows(cb),
        }
    )
