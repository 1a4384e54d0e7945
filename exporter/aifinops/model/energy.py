"""Measured GPU energy per tenant, its cost and its carbon. Pure; no clock.

The energy source (``sources/energy.py``) keeps the previous counter readings and hands the
model each GPU's energy over one interval (:class:`~aifinops.model.inputs.EnergyReadings`).
Here that energy is split to tenants with the holds the cost model already joined
(:class:`~aifinops.model.cost.GpuShare`, the usage basis' shares of the physical device):

* a hold gets ``E · used`` (its share of the device's time: utilization on a whole GPU, MIG
  fraction × utilization on a slice, its own share on a time-sliced GPU) plus
  ``E · unused`` (what it requested and left unused, bounded by the device's unused time):
  a held GPU's idle draw is its holders', as its unused money is theirs;
* the rest of the device (capacity nobody requested) and every GPU without a hold go to
  ``__idle__``; a hold whose pod no tenancy rule matches is ``__unallocated__`` already.

So, per GPU and in total, tenants + ``__idle__`` + ``__unallocated__`` = the measured energy.
Energy is in joules (before PUE). Its cost is ``kWh × PUE × price`` and its carbon
``kWh × PUE × intensity``, with the price and the intensity flat or a time-of-use schedule in
the finance time zone, averaged over the interval by time. Energy, carbon and the energy
dollars are families of their own: they are never added to the resource cost rates.

Worked example (one interval of 60 s): a GPU measured 30 kJ (500 W). Pod A holds it whole and
uses 40 %: A gets 12 kJ used + 18 kJ unused = 30 kJ. A time-sliced GPU (4 replicas, A and B
request one each, A uses 37 %, B 10 %) measured 20 kJ: A 7.4 kJ, B 2 kJ used + 3 kJ unused
(0.25 − 0.10), ``__idle__`` the remaining 7.6 kJ.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from aifinops.model.cost import GpuShare
from aifinops.model.inputs import EnergyReadings
from aifinops.model.vocabulary import IDLE_TENANT, UNALLOCATED_TENANT

JOULES_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window of a time-of-use schedule, in local time of the finance time zone:
    ``[start_minute, end_minute)`` minutes after midnight on the ``weekdays`` (0 = Monday)."""

    weekdays: frozenset[int]
    start_minute: int
    end_minute: int
    value: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """A value per kWh (USD, or grams CO2e): ``flat``, except inside the first window of
    ``windows`` that covers a moment."""

    flat: float
    windows: tuple[TimeWindow, ...] = ()

    def at(self, ts: float, zone: ZoneInfo) -> float:
        """The value in force at unix time ``ts``."""
        if not self.windows:
            return self.flat
        local = datetime.fromtimestamp(ts, zone)
        minute = local.hour * 60 + local.minute + local.second / 60.0
        weekday = local.weekday()
        for w in self.windows:
            if weekday in w.weekdays and w.start_minute <= minute < w.end_minute:
                return w.value
        return self.flat

    def average(self, start: float, end: float, zone: ZoneInfo) -> float:
        """The time-weighted mean over ``[start, end]`` (the value at ``end`` when empty):
        the interval is cut at every window edge and midnight in local time."""
        if not self.windows or end <= start:
            return self.at(end, zone)
        cuts = {start, end}
        day = datetime.fromtimestamp(start, zone).date()
        last = datetime.fromtimestamp(end, zone).date()
        edges = {0} | {m for w in self.windows for m in (w.start_minute, w.end_minute)}
        while day <= last:
            midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
            for minute in edges:
                ts = (midnight + timedelta(minutes=minute)).timestamp()
                if start < ts < end:
                    cuts.add(ts)
            day += timedelta(days=1)
        points = sorted(cuts)
        parts = [(b - a) * self.at(a + (b - a) / 2, zone) for a, b in pairwise(points)]
        return math.fsum(parts) / (end - start)


@dataclass(frozen=True, slots=True)
class EnergyBudget:
    """A tenant's monthly energy budgets: dollars of electricity and grams of CO2e (``None``:
    not budgeted)."""

    usd: float | None = None
    grams: float | None = None


@dataclass(frozen=True, slots=True)
class EnergyContext:
    """``energy:`` compiled: PUE (≥ 1), the price (USD/kWh) and the grid intensity
    (gCO2e/kWh) schedules, the finance time zone they are read in, and the budgets."""

    pue: float
    price: Schedule
    carbon: Schedule
    tz: str = "UTC"
    budgets: Mapping[str, EnergyBudget] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EnergyState:
    """What survives between refreshes: the accrued totals per tenant (joules, USD, grams),
    the month to date per tenant (USD, grams) and its month (``YYYY-MM`` in the finance time
    zone), the end of the last interval accounted, and that interval's split (for the rates
    republished until a new interval arrives)."""

    last_end: float | None = None
    joules: Mapping[str, float] = field(default_factory=dict)
    usd: Mapping[str, float] = field(default_factory=dict)
    grams: Mapping[str, float] = field(default_factory=dict)
    month: str = ""
    month_usd: Mapping[str, float] = field(default_factory=dict)
    month_grams: Mapping[str, float] = field(default_factory=dict)
    month_joules: Mapping[str, float] = field(default_factory=dict)
    last: EnergyInterval | None = None
    counter_resets: int = 0


@dataclass(frozen=True, slots=True)
class EnergyInterval:
    """One measured interval split per tenant: joules, USD and grams over ``seconds``."""

    seconds: float
    joules: Mapping[str, float]
    usd: Mapping[str, float]
    grams: Mapping[str, float]
    methods: Mapping[str, int]  # GPUs per method ("counter", "power")
    price_usd_per_kwh: float
    grams_per_kwh: float


@dataclass(frozen=True, slots=True)
class EnergyReport:
    """Energy figures of one refresh. ``interval`` is the last measured interval (``None``
    before the second reading); the totals and month to date are since the exporter started
    (or the state file's start) and since the month started."""

    interval: EnergyInterval | None
    joules: Mapping[str, float]
    usd: Mapping[str, float]
    grams: Mapping[str, float]
    month_usd: Mapping[str, float]
    month_grams: Mapping[str, float]
    month_joules: Mapping[str, float]
    month: str  # YYYY-MM in the finance time zone
    price_usd_per_kwh: float
    grams_per_kwh: float
    pue: float
    budgets: Mapping[str, EnergyBudget]
    counter_resets: int


@dataclass(frozen=True, slots=True)
class EnergyUse:
    """A tenant's electricity over a period, for the chargeback: GPU energy measured (kWh),
    the facility's (× PUE, what is priced), its dollars and its kg CO2e."""

    gpu_kwh: float
    facility_kwh: float
    usd: float
    kg_co2e: float


def month_use(report: EnergyReport) -> dict[str, EnergyUse]:
    """Per tenant, its electricity this month (:attr:`EnergyReport.month`)."""
    tenants = sorted({*report.month_joules, *report.month_usd, *report.month_grams})
    out = {}
    for t in tenants:
        kwh = report.month_joules.get(t, 0.0) / JOULES_PER_KWH
        out[t] = EnergyUse(
            kwh,
            kwh * report.pue,
            report.month_usd.get(t, 0.0),
            report.month_grams.get(t, 0.0) / 1000.0,
        )
    return out


def split_energy(readings: EnergyReadings, shares: Iterable[GpuShare] | None) -> dict[str, float]:
    """Joules per tenant over one interval (see the module docstring). Every measured joule
    lands in exactly one tenant; a device whose holds claim more than all of it (rounding) has
    their fractions scaled to 1. ``shares`` is ``None`` when there is no utilization data to
    say who holds what: the energy is then ``__unallocated__`` (not ``__idle__``: the GPUs
    may well be held)."""
    if shares is None:
        total = math.fsum(g.joules for g in readings.gpus if g.joules > 0)
        return {UNALLOCATED_TENANT: total} if total > 0 else {}
    # Per device: each hold's (tenant, used, unused) in device fractions. ``used`` is the
    # usage basis' share (model/cost.py decides it, for every way a GPU is shared); unused is
    # what the hold requested beyond it, bounded by the device's unused time (as its money).
    holds: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for s in shares:
        used = max(0.0, s.used)
        holds[s.idle_key[0]].append((s.tenant, used, max(0.0, s.held - used)))
    parts: dict[str, list[float]] = defaultdict(list)
    for gpu in readings.gpus:
        energy = gpu.joules
        if energy <= 0:
            continue
        on = holds.get(gpu.uuid, ())
        used_total = math.fsum(u for _, u, _ in on)
        # Rounding aside, the holds' used time is at most the device's: scaled to it if not.
        use_scale = 1.0 / used_total if used_total > 1.0 else 1.0
        rest = max(0.0, 1.0 - used_total * use_scale)
        unused_total = math.fsum(x for _, _, x in on)
        unused_scale = rest / unused_total if unused_total > rest else 1.0
        given = []
        for tenant, used, unused in on:
            part = energy * (used * use_scale + unused * unused_scale)
            parts[tenant].append(part)
            given.append(part)
        rest = energy - math.fsum(given)
        if rest > 0:
            parts[IDLE_TENANT].append(rest)
    return {t: math.fsum(p) for t, p in parts.items()}


def _month(ts: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, zone).strftime("%Y-%m")


def _add(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def account_energy(
    readings: EnergyReadings | None,
    shares: Iterable[GpuShare] | None,
    context: EnergyContext,
    state: EnergyState,
    now: float,
) -> tuple[EnergyReport, EnergyState]:
    """Accrue a new interval (one whose end differs from the last accounted one: the refresh
    loop hands the last good readings again while the source fails) and report the totals.
    ``now`` dates the price and intensity in force and the month when no interval is new."""
    zone = ZoneInfo(context.tz)
    interval = state.last
    joules, usd, grams = state.joules, state.usd, state.grams
    month = _month(now, zone)
    same = state.month == month
    month_usd = state.month_usd if same else {}
    month_grams = state.month_grams if same else {}
    month_joules = state.month_joules if same else {}
    last_end = state.last_end
    resets = state.counter_resets
    if readings is not None and readings.end != state.last_end:
        last_end = readings.end
        resets += readings.counter_resets
        seconds = readings.end - readings.start
        if seconds > 0 and readings.gpus:
            split = split_energy(readings, shares)
            price = context.price.average(readings.start, readings.end, zone)
            intensity = context.carbon.average(readings.start, readings.end, zone)
            factor = context.pue / JOULES_PER_KWH
            cost = {t: j * factor * price for t, j in split.items()}
            carbon = {t: j * factor * intensity for t, j in split.items()}
            methods: dict[str, int] = defaultdict(int)
            for gpu in readings.gpus:
                methods[gpu.method] += 1
            interval = EnergyInterval(seconds, split, cost, carbon, dict(methods), price, intensity)
            joules, usd, grams = _add(joules, split), _add(usd, cost), _add(grams, carbon)
            # The whole interval counts in the month it ends in (intervals are a refresh long).
            # ``now`` may already be in the next month (the read is dated a moment before
            # the refresh): the month of the interval decides what it is added to.
            month = _month(readings.end, zone)
            if month != state.month:
                month_usd, month_grams, month_joules = {}, {}, {}
            else:
                month_usd, month_grams = state.month_usd, state.month_grams
                month_joules = state.month_joules
            month_usd, month_grams = _add(month_usd, cost), _add(month_grams, carbon)
            month_joules = _add(month_joules, split)
    if readings is None:
        interval = None  # no current measurement: no rates, the totals stay
    report = EnergyReport(
        interval=interval,
        joules=joules,
        usd=usd,
        grams=grams,
        month_usd=month_usd,
        month_grams=month_grams,
        month_joules=month_joules,
        month=month,
        price_usd_per_kwh=context.price.at(now, zone),
        grams_per_kwh=context.carbon.at(now, zone),
        pue=context.pue,
        budgets=context.budgets,
        counter_resets=resets,
    )
    new_state = EnergyState(
        last_end=last_end,
        joules=joules,
        usd=usd,
        grams=grams,
        month=month,
        month_usd=month_usd,
        month_grams=month_grams,
        month_joules=month_joules,
        last=interval if readings is not None else state.last,
        counter_resets=resets,
    )
    return report, new_state
