"""The immutable Report one refresh produces, and the pure function that builds it.

``build_report(inputs, context, state, now)`` returns ``(report, new_state)``. The state
carries what must survive between refreshes — accrued dollars for the counters, the idle-GPU
history, the previous ``now`` — and is owned by the refresh loop, never by the model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import compress
from operator import attrgetter

from aifinops.model.cost import (
    CostBreakdown,
    IdleKey,
    _append_grouped,
    attribute_costs,
    fold_shares,
    fold_tenants,
    follow_gpu_rates,
)
from aifinops.model.energy import EnergyContext, EnergyReport, EnergyState, account_energy
from aifinops.model.finance_types import FinanceContext
from aifinops.model.gpu_prices import GpuPricer
from aifinops.model.idle import HoldHistory, is_idle, observe_holds
from aifinops.model.inputs import Inputs
from aifinops.model.tenancy import TenantResolver
from aifinops.model.tokens import (
    TokenContext,
    TokenReport,
    TokenState,
    account_tokens,
    fold_token_report,
)
from aifinops.model.vocabulary import (
    IDLE_TENANT,
    OTHER_TENANT,
    TOKENS_RESOURCE,
    UNALLOCATED_TENANT,
)

SECONDS_PER_HOUR = 3600.0
_TENANT = attrgetter("tenant")
_GPU_MODEL = attrgetter("gpu_model")
_HELD = attrgetter("held")
_USED = attrgetter("used")
_UNUSED = attrgetter("unused_rate")
_ALLOC = attrgetter("alloc_rate")


@dataclass(frozen=True, slots=True)
class ModelContext:
    """Configuration the model needs, compiled once per (re)load."""

    resolver: TenantResolver
    pricer: GpuPricer
    idle_threshold: float
    idle_window_seconds: float
    max_tenants: int | None = None
    tokens: TokenContext | None = None
    finance: FinanceContext | None = None
    # Applied to the rendered families by the refresh loop (exposition/bounds.py).
    max_series_per_family: int | None = None
    # A HAMi pod's billing share: this weight x its cores share + the rest x its memory share.
    hami_core_weight: float = 1.0
    energy: EnergyContext | None = None  # energy.enabled


@dataclass(frozen=True, slots=True)
class ModelState:
    last_now: float | None = None
    accrued: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    idle: Mapping[IdleKey, HoldHistory] = field(default_factory=dict)
    dcgm_observed_at: float | None = None
    tokens: TokenState | None = None
    energy: EnergyState | None = None


@dataclass(frozen=True, slots=True)
class GpuTenantStats:
    """Per (tenant, GPU model): GPU-equivalents held and used, and dollars per hour."""

    held: float = 0.0
    used: float = 0.0
    unused_rate: float = 0.0
    idle_gpus: float = 0.0
    idle_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Report:
    """One refresh's figures. ``charge_back[basis][(tenant, resource)]`` is the USD/hour the
    self-hosted token charge-back moved on each non-token resource (positive for the tenants
    that sent tokens, negative for the serving pods' owner; it sums to 0 per resource), already
    included in ``cost.rates``. The finance figures (budgets, ROI, routing, recommendations,
    month to date: :mod:`aifinops.model.finance`) are built from a report, not carried in it:
    the refresh's snapshot holds the two side by side."""

    now: float
    cost: CostBreakdown
    accrued: Mapping[tuple[str, str, str], float]
    gpu_stats: Mapping[tuple[str, str], GpuTenantStats]
    efficiency: Mapping[str, float]
    tokens: TokenReport | None = None
    charge_back: Mapping[str, Mapping[tuple[str, str], float]] = field(default_factory=dict)
    energy: EnergyReport | None = None

    def tenant_rates(self, basis: str) -> Mapping[tuple[str, str], float]:
        return self.cost.rates.get(basis, {})


def accrue(
    previous: Mapping[tuple[str, str, str], float],
    rates: Mapping[str, Mapping[tuple[str, str], float]],
    hours: float,
) -> dict[tuple[str, str, str], float]:
    """Dollars accrued per (tenant, resource, basis): previous + rate × hours.

    Keys without a current rate are dropped (their series disappear); a new key starts at
    its first increment, so a counter never decreases while it exists.
    """
    out: dict[tuple[str, str, str], float] = {}
    get = previous.get
    for basis, basis_rates in rates.items():
        for (tenant, resource), rate in basis_rates.items():
            key = (tenant, resource, basis)
            # max(0.0, rate) without the call (NaN and -0.0 give 0.0 either way)
            out[key] = get(key, 0.0) + (rate if rate > 0.0 else 0.0) * hours
    return out


def build_report(
    inputs: Inputs,
    context: ModelContext,
    state: ModelState,
    now: float,
    dcgm_observed_at: float | None = None,
) -> tuple[Report, ModelState]:
    """One refresh of the model. ``dcgm_observed_at`` is when the GPU samples were fetched
    (unix seconds); the idle history only advances on a new observation."""
    cost = attribute_costs(
        inputs.allocations,
        inputs.gpus,
        context.resolver,
        context.pricer.at(now),  # owned GPUs are priced by their age at now
        context.max_tenants,
        inputs.shared,
        context.hami_core_weight,
    )
    token_report: TokenReport | None = None
    token_state = state.tokens
    charge_back: dict[str, dict[tuple[str, str], float]] = {}
    if context.tokens is not None and inputs.tokens is not None:
        before = cost.rates
        token_report, token_state, token_rates = account_tokens(
            inputs.tokens,
            context.tokens,
            state.tokens or TokenState(),
            now,
            cost,
            inputs.allocations,
            context.resolver,
        )
        cost, owner = _with_token_rates(cost, token_rates, context.max_tenants)
        # The split methods follow the GPU dollars the charge-back moved.
        cost = replace(cost, method_rates=follow_gpu_rates(cost.method_rates, cost.rates))
        token_report = fold_token_report(token_report, owner)
        charge_back = _moved(before, cost.rates)

    idle_state: Mapping[IdleKey, HoldHistory] = state.idle
    histories: Iterable[HoldHistory | None]
    if inputs.gpus is None:
        idle_state = {}
        histories = [None] * len(cost.shares)
    elif dcgm_observed_at is not None and dcgm_observed_at != state.dcgm_observed_at:
        idle_state, histories = observe_holds(
            state.idle, cost.shares, dcgm_observed_at, context.idle_threshold
        )
    else:
        histories = map(idle_state.get, (s.idle_key for s in cost.shares))

    # Per (tenant, GPU model): held, used, unused rate, idle GPUs, idle rate (parts to fsum),
    # grouped column by column in C-level passes, keys in the order the shares first bring
    # them (a Python step per share and list was most of this at fleet scale).
    shares = cost.shares
    window = context.idle_window_seconds
    keys = list(zip(map(_TENANT, shares), map(_GPU_MODEL, shares), strict=True))
    held_gpus = list(map(_HELD, shares))
    idle = [is_idle(history, now, window) for history in histories]
    held: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    used: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    unused: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    idle_held: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    idle_rate: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    _append_grouped(held, keys, held_gpus)
    _append_grouped(used, keys, map(_USED, shares))
    _append_grouped(unused, keys, map(_UNUSED, shares))
    _append_grouped(idle_held, compress(keys, idle), compress(held_gpus, idle))
    _append_grouped(idle_rate, compress(keys, idle), compress(map(_ALLOC, shares), idle))
    fsum = math.fsum
    gpu_stats = {
        key: GpuTenantStats(
            fsum(parts),
            fsum(used[key]),
            fsum(unused[key]),
            fsum(idle_held.get(key, ())),
            fsum(idle_rate.get(key, ())),
        )
        for key, parts in held.items()
    }
    held_by_tenant: dict[str, float] = defaultdict(float)
    used_by_tenant: dict[str, float] = defaultdict(float)
    for (tenant, _), stats in gpu_stats.items():
        held_by_tenant[tenant] += stats.held
        used_by_tenant[tenant] += stats.used
    efficiency = {
        t: min(1.0, used_by_tenant[t] / held) for t, held in held_by_tenant.items() if held > 0
    }

    hours = 0.0
    if state.last_now is not None and now > state.last_now:
        hours = (now - state.last_now) / SECONDS_PER_HOUR
    accrued = accrue(state.accrued, cost.rates, hours)
    if token_report is not None:
        # API token dollars accrue exactly (the cumulative cost), not as rate x hours.
        for basis in cost.rates:
            for tenant, usd in token_report.api_cost.items():
                accrued[(tenant, TOKENS_RESOURCE, basis)] = usd

    energy_report: EnergyReport | None = None
    energy_state = state.energy
    if context.energy is not None:
        # The shares after every fold: energy lands on the tenants the money series show.
        energy_report, energy_state = account_energy(
            inputs.energy,
            cost.shares if inputs.gpus is not None else None,
            context.energy,
            state.energy or EnergyState(),
            now,
        )

    report = Report(
        now=now,
        cost=cost,
        accrued=accrued,
        gpu_stats=gpu_stats,
        efficiency=efficiency,
        tokens=token_report,
        charge_back=charge_back,
        energy=energy_report,
    )
    new_state = ModelState(
        last_now=now,
        accrued=accrued,
        idle=idle_state,
        dcgm_observed_at=dcgm_observed_at if inputs.gpus is not None else None,
        tokens=token_state,
        energy=energy_state,
    )
    return report, new_state


def _moved(
    before: Mapping[str, Mapping[tuple[str, str], float]],
    after: Mapping[str, Mapping[tuple[str, str], float]],
) -> dict[str, dict[tuple[str, str], float]]:
    """Per basis, the change of each non-token (tenant, resource) rate: what charge-back
    moved (USD/hour); zero changes are left out. Keys in ``after``'s order, then those only
    in ``before``."""
    out: dict[str, dict[tuple[str, str], float]] = {}
    for basis, rates in after.items():
        old = before.get(basis, {})
        moved = {}
        for key, value in rates.items():
            if key[1] != TOKENS_RESOURCE:
                delta = value - old.get(key, 0.0)
                if delta != 0.0:
                    moved[key] = delta
        for key, value in old.items():
            if key[1] != TOKENS_RESOURCE and key not in rates:
                delta = 0.0 - value
                if delta != 0.0:
                    moved[key] = delta
        out[basis] = moved
    return out


_SENTINELS = frozenset({IDLE_TENANT, UNALLOCATED_TENANT, OTHER_TENANT})


def _with_token_rates(
    cost: CostBreakdown,
    rates: Mapping[str, Mapping[tuple[str, str], float]],
    max_tenants: int | None,
) -> tuple[CostBreakdown, Callable[[str], str]]:
    """``cost`` with the rates after token charge-back and resource ``tokens``, folded again
    to ``max_tenants`` (token-only tenants may push past it), and the cluster total of
    ``tokens``. Returns the tenant mapping the token series must use too."""
    folded = 0
    new_rates = {b: dict(r) for b, r in rates.items()}
    if max_tenants is not None:
        new_rates, folded = fold_tenants(new_rates, max_tenants)
    shares = fold_shares(cost.shares, new_rates) if folded else list(cost.shares)
    cluster = dict(cost.cluster)
    token_parts = [
        v for (_, r), v in new_rates.get("allocation", {}).items() if r == TOKENS_RESOURCE
    ]
    if token_parts:
        cluster[TOKENS_RESOURCE] = math.fsum(token_parts)
    kept = {t for basis_rates in new_rates.values() for t, _ in basis_rates}
    any_folded = bool(folded or cost.folded_tenants)

    def owner(tenant: str) -> str:
        if any_folded and tenant not in kept and tenant not in _SENTINELS:
            return OTHER_TENANT
        return tenant

    return (
        replace(
            cost,
            rates=new_rates,
            cluster=cluster,
            shares=tuple(shares),
            folded_tenants=cost.folded_tenants + folded,
        ),
        owner,
    )
