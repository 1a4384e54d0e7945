"""The answer key for energy, energy cost and carbon on the pools of :mod:`.power`.

Computed from the simulation's own truth — each epoch's true per-hold shares and true
energy — with its own small implementation of the split rule, never with the exporter's code
(nothing here imports ``aifinops.model`` or ``aifinops.sources``):

* A GPU's energy over an epoch goes to each hold in proportion to the hold's share of the
  physical GPU's time (its MIG slice's fraction × the instance's figure; a time-sliced pod's
  own figure). What a holder left of its request (request − share, bounded by what the
  unit left unused, shared in proportion) is its *unused* energy: with ``unused_to="holder"``
  the holder's, with ``"idle"`` ``__idle__``'s (and reported per tenant either way). The rest
  — unheld GPUs and MIG instances, replicas nobody requested, use beyond a request paid out
  of them — is ``__idle__``'s. Tenants + ``__idle__`` = the fleet's energy, to the mJ.
* Facility energy = GPU energy × PUE; cost = facility kWh × the $/kWh in force; carbon =
  facility kWh × the grid's gCO2e/kWh in force / 1000. Both schedules are daily, in a time
  zone; their changes fall on epoch boundaries, so each epoch has one price and intensity.

Units: energy in kWh (1 kWh = 3.6e9 mJ), money in US dollars, carbon in kg CO2e.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aifinops.demo.cluster.layout import Layout
from aifinops.demo.cluster.power import MJ_PER_KWH, Hold
from aifinops.demo.cluster.spec import IDLE_TENANT

HOURS_PER_YEAR = 8760.0
HOURS_PER_MONTH = HOURS_PER_YEAR / 12.0
UnusedTo = Literal["holder", "idle"]


@dataclass(frozen=True, slots=True)
class DailySchedule:
    """A value that changes at fixed local times each day: ``periods`` are ``("HH:MM",
    value)`` in order, the first at ``"00:00"``; a flat value is one period."""

    time_zone: str
    periods: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        if not self.periods or self.periods[0][0] != "00:00":
            raise ValueError("the first period starts at 00:00")
        minutes = [self._minute(p) for p, _ in self.periods]
        if minutes != sorted(set(minutes)):
            raise ValueError("periods must be in order")

    @staticmethod
    def _minute(text: str) -> int:
        hh, mm = text.split(":")
        return int(hh) * 60 + int(mm)

    def at(self, t: float) -> float:
        """The value in force at ``t`` (unix seconds)."""
        local = datetime.fromtimestamp(t, UTC).astimezone(ZoneInfo(self.time_zone))
        minute = local.hour * 60 + local.minute
        value = self.periods[0][1]
        for start, v in self.periods:
            if self._minute(start) <= minute:
                value = v
        return value


def flat(value: float, time_zone: str = "UTC") -> DailySchedule:
    """A schedule with one value all day."""
    return DailySchedule(time_zone, (("00:00", value),))


@dataclass(frozen=True, slots=True)
class EnergyPrices:
    """What turns GPU energy into money and carbon: $/kWh, grid gCO2e/kWh and PUE (≥ 1)."""

    usd_per_kwh: DailySchedule
    grid_gco2e_per_kwh: DailySchedule
    pue: float


@dataclass(frozen=True, slots=True)
class TenantEnergy:
    """One tenant's (or ``__idle__``'s) energy over the key's interval.

    ``kwh`` is the GPU energy booked to it (``used_kwh`` plus, with ``unused_to="holder"``,
    ``unused_kwh``); ``facility_kwh`` = ``kwh`` × PUE; ``usd`` and ``kg_co2e`` follow it.
    """

    kwh: float
    used_kwh: float
    unused_kwh: float
    facility_kwh: float
    usd: float
    kg_co2e: float


@dataclass(frozen=True, slots=True)
class EnergyKey:
    """Per tenant and per GPU energy over ``(start, end]``; ``fleet_*`` are the totals the
    tenants and ``__idle__`` sum to."""

    start: float
    end: float
    unused_to: UnusedTo
    tenants: Mapping[str, TenantEnergy]
    gpu_kwh: Mapping[str, float]
    fleet_kwh: float
    fleet_usd: float
    fleet_kg_co2e: float

    def tenant(self, name: str) -> TenantEnergy:
        """``name``'s row; zeros when it has none."""
        return self.tenants.get(name, TenantEnergy(0.0, 0.0, 0.0, 0.0, 0.0, 0.0))


def split_epoch(
    holds: tuple[Hold, ...], shares: tuple[float, ...]
) -> tuple[list[float], list[float]]:
    """Each hold's used and unused fraction of its GPU's energy for one epoch (the rule in
    the module docstring); what is left of 1 is ``__idle__``'s."""
    used = list(shares)
    unused = [0.0] * len(holds)
    units: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(holds):
        units[h.unit].append(i)
    for members in units.values():
        part = holds[members[0]].part
        rest = max(0.0, part - math.fsum(used[i] for i in members))
        short = {i: max(0.0, holds[i].request - used[i]) for i in members}
        total_short = math.fsum(short.values())
        if total_short > 0:
            pool = min(total_short, rest)
            for i in members:
                unused[i] = pool * short[i] / total_short
    return used, unused


def energy_answer_key(
    sim: Layout,
    prices: EnergyPrices,
    start: float,
    end: float,
    *,
    unused_to: UnusedTo = "holder",
) -> EnergyKey:
    """The truth over ``(start, end]`` (unix seconds) for every GPU of ``sim.energy`` (the
    pools of ``ClusterSpec.energy``; other GPUs are not in the key)."""
    energy = sim.energy
    if energy is None:
        raise ValueError("the cluster simulates no energy (ClusterSpec.energy)")
    if end <= start:
        raise ValueError("end must be after start")
    step = energy.spec.epoch_s
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    gpu_kwh: dict[str, float] = {}
    fleet: dict[str, list[float]] = defaultdict(list)
    for gpu in energy.gpus:
        holds = energy.holds(gpu.uuid)
        tenants = [sim.tenant_of(h.pod) for h in holds]
        per_gpu: list[float] = []
        for e in range(math.floor(start / step), energy.epoch(end) + 1):
            lo, hi = max(start, e * step), min(end, (e + 1) * step)
            if hi <= lo:
                continue
            use = energy.use(gpu.uuid, e)
            kwh = use.power_mw * (hi - lo) / MJ_PER_KWH
            usd_rate = prices.usd_per_kwh.at(lo)
            grid = prices.grid_gco2e_per_kwh.at(lo)
            if usd_rate != prices.usd_per_kwh.at(hi - 1) or grid != (
                prices.grid_gco2e_per_kwh.at(hi - 1)
            ):
                raise ValueError(f"a schedule changes inside epoch {e}: not on a boundary")
            used, unused = split_epoch(holds, use.shares)
            booked = 0.0
            for tenant, u, w in zip(tenants, used, unused, strict=True):
                row = parts[tenant]
                row["used"].append(kwh * u)
                row["unused"].append(kwh * w)
                own = u + w if unused_to == "holder" else u
                row["kwh"].append(kwh * own)
                row["usd"].append(kwh * own * prices.pue * usd_rate)
                row["kg"].append(kwh * own * prices.pue * grid / 1000.0)
                booked += own
            rest = max(0.0, 1.0 - booked)
            idle = parts[IDLE_TENANT]
            idle["kwh"].append(kwh * rest)
            idle["usd"].append(kwh * rest * prices.pue * usd_rate)
            idle["kg"].append(kwh * rest * prices.pue * grid / 1000.0)
            per_gpu.append(kwh)
            fleet["usd"].append(kwh * prices.pue * usd_rate)
            fleet["kg"].append(kwh * prices.pue * grid / 1000.0)
        gpu_kwh[gpu.uuid] = math.fsum(per_gpu)
    tenants_out = {
        t: TenantEnergy(
            kwh=math.fsum(p["kwh"]),
            used_kwh=math.fsum(p["used"]),
            unused_kwh=math.fsum(p["unused"]),
            facility_kwh=math.fsum(p["kwh"]) * prices.pue,
            usd=math.fsum(p["usd"]),
            kg_co2e=math.fsum(p["kg"]),
        )
        for t, p in sorted(parts.items())
    }
    return EnergyKey(
        start=start,
        end=end,
        unused_to=unused_to,
        tenants=tenants_out,
        gpu_kwh=gpu_kwh,
        fleet_kwh=math.fsum(gpu_kwh.values()),
        fleet_usd=math.fsum(fleet["usd"]),
        fleet_kg_co2e=math.fsum(fleet["kg"]),
    )


def owned_price_usd_per_hour(
    *,
    purchase_usd: float,
    residual_usd: float,
    life_years: float,
    support_usd_per_year: float,
    hosting_usd_per_gpu_month: float,
    purchased_at: float,
    at: float,
) -> float:
    """Straight-line owned price of one GPU at ``at`` (USD per hour), by the docs' formula
    (docs/owned-gpus.md): capital (purchase − residual) / life over 8760 h a year while the
    life lasts (a clock before the purchase counts as age 0), plus support / 8760 and
    hosting / 730."""
    age_h = max(0.0, (at - purchased_at) / 3600.0)
    capital = 0.0
    if age_h < life_years * HOURS_PER_YEAR:
        capital = (purchase_usd - residual_usd) / life_years / HOURS_PER_YEAR
    return capital + support_usd_per_year / HOURS_PER_YEAR + hosting_usd_per_gpu_month / 730.0


# --- the demo's prices, and the exporter configuration that says the same -------------------

DEMO_PRICES = EnergyPrices(
    # Time of use: night, shoulder, evening peak, late evening.
    usd_per_kwh=DailySchedule(
        "UTC", (("00:00", 0.08), ("07:00", 0.13), ("17:00", 0.21), ("21:00", 0.10))
    ),
    # Solar hours are cleaner.
    grid_gco2e_per_kwh=DailySchedule("UTC", (("00:00", 420.0), ("10:00", 260.0), ("16:00", 390.0))),
    pue=1.35,
)


def _windows(schedule: DailySchedule, key: str) -> dict[str, Any]:
    periods = list(schedule.periods)
    ends = [start for start, _ in periods[1:]] + ["24:00"]
    return {
        key: periods[0][1],
        "schedule": [
            {"start": start, "end": end, key: value}
            for (start, value), end in zip(periods[1:], ends[1:], strict=True)
        ],
    }


def energy_config(prices: EnergyPrices, **extra: Any) -> dict[str, Any]:
    """The exporter's ``energy:`` section that prices energy as ``prices`` does: the first
    period is the flat value, every later one a window on every day (the schedules are read
    in ``budgets.time_zone``, which must be ``prices``' time zone); ``extra`` adds fields
    (``budgets``)."""
    if prices.usd_per_kwh.time_zone != prices.grid_gco2e_per_kwh.time_zone:
        raise ValueError("one time zone for both schedules (the exporter's budgets.time_zone)")
    return {
        "enabled": True,
        "pue": prices.pue,
        "price": _windows(prices.usd_per_kwh, "usd_per_kwh"),
        "carbon": _windows(prices.grid_gco2e_per_kwh, "grams_co2e_per_kwh"),
        **extra,
    }


# The owned pools' hardware (``gpu_pricing.owned``): the H100s are the docs' worked example
# (docs/owned-gpus.md), so the demo publishes its $1.175799 a GPU-hour.
DEMO_OWNED_GPUS: tuple[dict[str, Any], ...] = (
    {
        "gpu_model": "NVIDIA H100 80GB HBM3",
        "pool": "h100-onprem",
        "node_pattern": "gpu-onprem-.*",
        "purchase_price_usd": 30000,
        "purchase_date": "2025-01-01",
        "depreciation_life_years": 4,
        "residual_value_usd": 2000,
        "support_usd_per_year": 1500,
        "hosting_usd_per_gpu_month": 150,
    },
    {
        "gpu_model": "NVIDIA A100-SXM4-80GB",
        "pool": "a100-onprem",
        "node_pattern": "gpu-onprem-.*",
        "purchase_price_usd": 15000,
        "purchase_date": "2023-07-01",
        "depreciation_life_years": 5,
        "residual_value_usd": 1000,
        "support_usd_per_year": 900,
        "hosting_usd_per_gpu_month": 120,
    },
    {
        "gpu_model": "NVIDIA L4",
        "pool": "l4-onprem",
        "node_pattern": "gpu-onprem-.*",
        "purchase_price_usd": 2500,
        "purchase_date": "2024-03-01",
        "depreciation_life_years": 3,
        "residual_value_usd": 100,
        "support_usd_per_year": 150,
        "hosting_usd_per_gpu_month": 40,
    },
)
