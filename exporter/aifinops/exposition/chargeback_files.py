"""The chargeback's files: JSON rows, a plain CSV and a FOCUS 1.2 cost-and-usage CSV, written
from the model's :class:`~aifinops.model.chargeback.Chargeback` (file formats live with the
exposition; the model computes the rows and their cents).

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from aifinops.model.chargeback import Chargeback, ChargebackRow
from aifinops.model.energy import EnergyUse


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


def focus_rows(cb: Chargeback, parties: FocusParties | None = None) -> list[dict[str, str]]:
    """FOCUS rows as ``column → text`` (``""`` is null), in :data:`FOCUS_COLUMNS` order."""
    parties = parties or FocusParties()
    hours = (cb.charge_end - cb.charge_from) / 3600.0
    # The columns every row shares (who bills whom, the periods, the basis).
    template = {
        "BillingAccountId": parties.billing_account_id,
        "BillingAccountName": parties.billing_account_name,
        "BillingCurrency": cb.currency,
        "BillingPeriodEnd": iso_utc(cb.end),
        "BillingPeriodStart": iso_utc(cb.start),
        "ChargeCategory": "Usage",
        "ChargeClass": "",
        "ChargePeriodEnd": iso_utc(cb.charge_end),
        "ChargePeriodStart": iso_utc(cb.charge_from),
        "InvoiceIssuerName": parties.invoice_issuer_name,
        "ProviderName": parties.provider_name,
        "PublisherName": parties.publisher_name,
        "ChargeFrequency": "Usage-Based",
        "x_Basis": cb.basis,
        "x_Period": cb.period,
        "x_Cluster": parties.cluster,
        "x_Source": cb.source,
        "x_EnergyKWh": "",
        "x_EnergyCost": "",
        "x_CarbonKgCO2e": "",
    }
    placed: set[str] = set()
    out = []
    for r in cb.rows:
        category, subcategory, service = SERVICES.get(r.resource, _OTHER_SERVICE)
        amount = str(r.amount_usd)
        if r.quantity is not None:
            quantity, unit, source = _plain(r.quantity.value), r.quantity.unit, "measured"
        else:
            quantity, unit, source = _plain(hours), "Hours", "charge_period_hours"
        values = {
            **template,
            "BilledCost": amount,
            "ChargeDescription": _describe(r, cb.basis),
            "ContractedCost": amount,
            "EffectiveCost": amount,
            "ListCost": amount,
            "PricingQuantity": quantity,
            "PricingUnit": unit,
            "ServiceCategory": category,
            "ServiceName": service,
            "ConsumedQuantity": quantity,
            "ConsumedUnit": unit,
            "SubAccountId": r.tenant,
            "SubAccountName": r.tenant,
            "ServiceSubcategory": subcategory,
            "x_Tenant": r.tenant,
            "x_Resource": r.resource,
            "x_Allocation": r.allocation,
            "x_QuantitySource": source,
            "x_GpuSplitMethods": split_text(r.split),
        }
        use = cb.energy.get(r.tenant)
        if use is not None and r.resource == "gpu" and r.allocation == "direct":
            _put_energy(values, use)
            placed.add(r.tenant)
        out.append(_cells(values))
    # Energy of a tenant or sentinel with no direct GPU row (no GPU dollars in the period, or
    # __idle__ whose dollars share_idle spread): a row of its own at $0, so the file's
    # x_EnergyKWh adds up to the fleet's measured energy and no dollar moves.
    for tenant, use in sorted(cb.energy.items()):
        if tenant in placed or not (use.facility_kwh or use.usd or use.kg_co2e):
            continue
        kwh = _plain(round(use.facility_kwh, 6))
        values = {
            **template,
            "BilledCost": "0",
            "ChargeDescription": f"GPU electricity of {tenant} (no GPU charge in the period)",
            "ContractedCost": "0",
            "EffectiveCost": "0",
            "ListCost": "0",
            "PricingQuantity": kwh,
            "PricingUnit": "kWh",
            "ServiceCategory": SERVICES["gpu"][0],
            "ServiceName": SERVICES["gpu"][2],
            "ServiceSubcategory": SERVICES["gpu"][1],
            "ConsumedQuantity": kwh,
            "ConsumedUnit": "kWh",
            "SubAccountId": tenant,
            "SubAccountName": tenant,
            "x_Tenant": tenant,
            "x_Resource": "gpu",
            "x_Allocation": "energy_only",
            "x_QuantitySource": "measured",
            "x_GpuSplitMethods": "",
        }
        _put_energy(values, use)
        out.append(_cells(values))
    return out


def _put_energy(values: dict[str, str], use: EnergyUse) -> None:
    # Six decimals: Wh, micro-dollars and grams are finer than any meter behind them.
    values["x_EnergyKWh"] = _plain(round(use.facility_kwh, 6))
    values["x_EnergyCost"] = _plain(round(use.usd, 6))
    values["x_CarbonKgCO2e"] = _plain(round(use.kg_co2e, 6))


def _cells(values: dict[str, str]) -> dict[str, str]:
    return {
        c: values[c] if c in _FOCUS_NUMERIC else spreadsheet_safe(values[c]) for c in FOCUS_COLUMNS
    }


def focus_csv(cb: Chargeback, parties: FocusParties | None = None) -> str:
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
