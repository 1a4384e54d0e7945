"""Cost per tenant: OpenCost allocations joined with DCGM utilization. Pure; no clock.

Two bases, both published with a ``basis`` label:

* ``allocation`` — what OpenCost billed: each pod's window cost / window length goes to its
  tenant, OpenCost's ``__idle__`` row to ``__idle__``, pods no rule matches to
  ``__unallocated__``.
* ``usage`` — GPU dollars re-split by measured use. A *unit* is a whole GPU, one MIG
  instance, or one physical GPU time-sliced among pods. Its rate ``R`` is the sum of the
  allocation-basis GPU rates of the pods on it (a pod's GPU rate is split over its units by
  the fraction of a GPU each holds). Pod ``i`` on the unit with utilization ``u_i`` is charged
  ``R · u_i'`` where ``u_i' = u_i`` if ``Σu ≤ 1`` else ``u_i · max(u) / Σu`` (time-sliced GPUs
  where DCGM repeats the device figure for every pod split it evenly). The remainder
  ``R · (1 − Σu')`` goes to ``__idle__`` and is reported as *unused* GPU cost of the pods'
  tenants, in proportion to their allocation rates on the unit. Pods with GPU cost but no DCGM
  series keep their allocation cost (unmeasured). Non-GPU resources are the same on both bases.

Conservation holds by construction: for each basis and resource, the tenants (including
``__idle__`` and ``__unallocated__``) sum to the cluster total. The usage basis is published
only when DCGM data is present.

GPU prices: OpenCost's ``gpuCost`` when the cluster's OpenCost rows carry any GPU cost;
otherwise (OpenCost without GPU pricing) every held GPU unit is priced from the catalog
(``price × fraction held``) and unallocated GPUs seen by DCGM are priced into ``__idle__``.

All rates are floats in USD per hour (gauges); sums use :func:`math.fsum`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aifinops.exposition.catalog import IDLE_TENANT, OTHER_TENANT, RESOURCES, UNALLOCATED_TENANT
from aifinops.model.gpu_prices import GpuPricer, mig_fraction
from aifinops.model.inputs import Allocation, AllocationSet, GpuSample
from aifinops.model.tenancy import TenantResolver

PodKey = tuple[str, str]  # (namespace, pod)
UnitKey = tuple[str, str]  # (gpu uuid, MIG instance id or "")
IdleKey = tuple[str, str, str, str]  # (uuid, MIG instance, namespace, pod)


@dataclass(frozen=True, slots=True)
class GpuShare:
    """One pod's hold on one GPU unit, after the join."""

    tenant: str
    gpu_model: str
    held: float  # GPU-equivalents held (1, a MIG fraction, or 1/k when time-sliced)
    used: float  # GPU-equivalents used (held x utilization; time-sliced: u' of the device)
    utilization: float  # raw 0-1 utilization of this series
    alloc_rate: float  # USD/h billed (allocation basis) for this hold
    usage_rate: float  # USD/h charged under the usage basis
    unused_rate: float  # USD/h of this hold's share of the unit's unused remainder
    idle_key: IdleKey


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """Per-tenant cost rates and GPU shares for one refresh.

    ``rates[basis][(tenant, resource)]`` in USD/hour. ``cluster[resource]`` is the total every
    basis sums to. ``shares`` are the joined GPU holds (for idle detection and GPU series).
    """

    rates: Mapping[str, Mapping[tuple[str, str], float]]
    cluster: Mapping[str, float]
    shares: tuple[GpuShare, ...]
    gpu_prices: Mapping[tuple[str, str], float]  # (gpu_model, source) -> USD per GPU-hour
    folded_tenants: int = 0
    unpriced_gpu_models: tuple[str, ...] = field(default=())
    # Per pod, before tenant folding: ``pod_rates[basis][(namespace, pod)][resource]`` in
    # USD/hour (the pod's part of its tenant's rate on that basis) and the pod's tenant.
    # Token charge-back reads them to move a serving pod's cost to the tenants it served.
    pod_rates: Mapping[str, Mapping[PodKey, Mapping[str, float]]] = field(default_factory=dict)
    pod_tenants: Mapping[PodKey, str] = field(default_factory=dict)


def _resource_costs(a: Allocation) -> dict[str, float]:
    return {
        "gpu": a.gpu_cost,
        "cpu": a.cpu_cost,
        "ram": a.ram_cost,
        "storage": a.pv_cost,
        "network": a.network_cost + a.load_balancer_cost,
        "shared": a.shared_cost + a.external_cost,
    }


def tenant_of(a: Allocation, resolver: TenantResolver) -> str:
    if a.is_idle:
        return IDLE_TENANT
    if a.is_unallocated:
        return UNALLOCATED_TENANT
    return resolver.resolve(a.namespace, a.labels, a.namespace_labels)


def _normalized_utilizations(utils: list[float]) -> list[float]:
    total = math.fsum(utils)
    if total <= 1.0:
        return utils
    peak = max(utils)
    return [u * peak / total for u in utils]


def _unit_key(s: GpuSample) -> UnitKey:
    return (s.uuid, s.mig_instance or "")


def _held_fraction(s: GpuSample, pods_on_unit: int) -> float:
    if s.mig_profile:
        return mig_fraction(s.mig_profile, s.model_name)
    return 1.0 / pods_on_unit


def attribute_costs(
    allocations: AllocationSet | None,
    gpus: tuple[GpuSample, ...] | None,
    resolver: TenantResolver,
    pricer: GpuPricer,
    max_tenants: int | None = None,
) -> CostBreakdown:
    """Join allocations and GPU samples into per-tenant rates on both bases.

    With ``allocations is None`` (OpenCost unavailable) no cost rates are produced, but GPU
    shares are still built (priced from the catalog) so idle GPUs and efficiency remain.
    """
    window_h = allocations.window_hours if allocations else 1.0
    rows = allocations.allocations if allocations else ()

    # --- allocation basis from OpenCost --------------------------------------------------
    alloc_parts: dict[tuple[str, str], list[float]] = defaultdict(list)
    pod_tenant: dict[PodKey, str] = {}
    pod_gpu_rate: dict[PodKey, float] = {}
    for a in rows:
        tenant = tenant_of(a, resolver)
        for resource, cost in _resource_costs(a).items():
            if cost:
                alloc_parts[(tenant, resource)].append(cost / window_h)
        if a.namespace and a.pod and not (a.is_idle or a.is_unallocated):
            key = (a.namespace, a.pod)
            pod_tenant[key] = tenant
            pod_gpu_rate[key] = pod_gpu_rate.get(key, 0.0) + a.gpu_cost / window_h
    opencost_prices_gpus = any(a.gpu_cost > 0 for a in rows)
    catalog_priced = allocations is None or not opencost_prices_gpus

    # --- GPU units from DCGM -------------------------------------------------------------
    samples = gpus or ()
    by_unit: dict[UnitKey, list[GpuSample]] = defaultdict(list)
    for s in samples:
        by_unit[_unit_key(s)].append(s)

    # Fraction held per (pod, unit), and per pod the total held (to split its GPU rate).
    unit_pods: dict[UnitKey, list[tuple[GpuSample, float]]] = {}
    pod_held_total: dict[PodKey, float] = defaultdict(float)
    unallocated_units: list[GpuSample] = []
    for unit, unit_samples in by_unit.items():
        with_pod: dict[PodKey, GpuSample] = {}
        for s in unit_samples:
            if s.namespace and s.pod:
                key = (s.namespace, s.pod)
                # Two series for one pod on one unit (two containers): keep the busier one.
                if key not in with_pod or s.utilization > with_pod[key].utilization:
                    with_pod[key] = s
        if not with_pod:
            unallocated_units.append(unit_samples[0])
            continue
        holds = [(s, _held_fraction(s, len(with_pod))) for s in with_pod.values()]
        unit_pods[unit] = holds
        for s, held in holds:
            pod_held_total[(s.namespace or "", s.pod or "")] += held

    unpriced: set[str] = set()

    def catalog_rate(model: str, held: float) -> float:
        found = pricer.price(model)
        if found is None:
            unpriced.add(model)
            return 0.0
        return found[0] * held

    shares: list[GpuShare] = []
    usage_gpu: dict[str, list[float]] = defaultdict(list)
    measured_pods: set[PodKey] = set()
    extra_alloc_gpu: dict[str, list[float]] = defaultdict(list)  # catalog-priced GPU cost
    price_obs: dict[str, list[float]] = defaultdict(list)
    for holds in unit_pods.values():
        rates: list[float] = []
        for s, held in holds:
            key = (s.namespace or "", s.pod or "")
            if catalog_priced:
                rate = catalog_rate(s.model_name, held)
            else:
                total_held = pod_held_total[key]
                rate = pod_gpu_rate.get(key, 0.0) * held / total_held if total_held else 0.0
                if rate > 0 and held > 0 and not s.mig_profile and len(holds) == 1:
                    price_obs[s.model_name].append(rate / held)
            rates.append(rate)
        unit_rate = math.fsum(rates)
        normalized = _normalized_utilizations([s.utilization for s, _ in holds])
        remainder = unit_rate * max(0.0, 1.0 - math.fsum(normalized))
        for (s, held), rate, u_norm in zip(holds, rates, normalized, strict=True):
            key = (s.namespace or "", s.pod or "")
            tenant = pod_tenant.get(key) or resolver.resolve(s.namespace, {}, {})
            if catalog_priced:
                extra_alloc_gpu[tenant].append(rate)
            usage = unit_rate * u_norm
            unused = remainder * (rate / unit_rate) if unit_rate else 0.0
            measured_pods.add(key)
            usage_gpu[tenant].append(usage)
            time_sliced = len(holds) > 1 and not s.mig_profile
            used = u_norm if time_sliced else held * s.utilization
            shares.append(
                GpuShare(
                    tenant=tenant,
                    gpu_model=s.model_name,
                    held=held,
                    used=used,
                    utilization=s.utilization,
                    alloc_rate=rate,
                    usage_rate=usage,
                    unused_rate=unused,
                    idle_key=(s.uuid, s.mig_instance or "", s.namespace or "", s.pod or ""),
                )
            )
        if remainder:
            usage_gpu[IDLE_TENANT].append(remainder)
    if catalog_priced:
        for s in unallocated_units:
            rate = catalog_rate(s.model_name, 1.0)
            extra_alloc_gpu[IDLE_TENANT].append(rate)
            usage_gpu[IDLE_TENANT].append(rate)

    # --- assemble both bases ---------------------------------------------------------------
    allocation_rates: dict[tuple[str, str], float] = {
        k: math.fsum(v) for k, v in alloc_parts.items()
    }
    if catalog_priced:
        # OpenCost billed no GPU: the catalog-priced holds are the allocation-basis GPU cost.
        for tenant, parts in extra_alloc_gpu.items():
            allocation_rates[(tenant, "gpu")] = allocation_rates.get(
                (tenant, "gpu"), 0.0
            ) + math.fsum(parts)
    if allocations is None:
        allocation_rates = {}

    rates_by_basis: dict[str, dict[tuple[str, str], float]] = {"allocation": allocation_rates}
    if gpus is not None and allocations is not None:
        usage_rates = {k: v for k, v in allocation_rates.items() if k[1] != "gpu"}
        gpu_parts: dict[str, list[float]] = defaultdict(list)
        for tenant, parts in usage_gpu.items():
            gpu_parts[tenant].extend(parts)
        if not catalog_priced:
            # GPU cost not carried by a measured unit keeps its allocation-basis owner:
            # OpenCost's idle row, unmeasured pods, and the unallocated bucket.
            measured_by_tenant: dict[str, list[float]] = defaultdict(list)
            for share in shares:
                measured_by_tenant[share.tenant].append(share.alloc_rate)
            for (tenant, resource), value in allocation_rates.items():
                if resource != "gpu":
                    continue
                rest = value - math.fsum(measured_by_tenant.get(tenant, []))
                if abs(rest) > 1e-12:
                    gpu_parts[tenant].append(rest)
        for tenant, parts in gpu_parts.items():
            total = math.fsum(parts)
            if total or (tenant, "gpu") in allocation_rates:
                usage_rates[(tenant, "gpu")] = total
        rates_by_basis["usage"] = usage_rates

    pod_rates = _pod_rates(rows, window_h, shares, catalog_priced, set(rates_by_basis))
    if allocations is None:
        pod_rates = {}
    pod_tenants = dict(pod_tenant)
    for share in shares:
        pod_tenants.setdefault((share.idle_key[2], share.idle_key[3]), share.tenant)

    folded = 0
    if max_tenants is not None:
        rates_by_basis, folded = fold_tenants(rates_by_basis, max_tenants)
        if folded:
            shares = fold_shares(shares, rates_by_basis)

    cluster: dict[str, float] = {}
    if allocation_rates:
        for resource in RESOURCES:
            cluster[resource] = math.fsum(
                v for (_, r), v in rates_by_basis["allocation"].items() if r == resource
            )

    gpu_prices: dict[tuple[str, str], float] = {}
    for model, obs in price_obs.items():
        obs.sort()
        gpu_prices[(model, "opencost")] = obs[len(obs) // 2]
    for model in {s.model_name for s in samples}:
        found = pricer.price(model)
        if found is not None:
            gpu_prices[(model, found[1])] = found[0]

    return CostBreakdown(
        rates=rates_by_basis,
        cluster=cluster,
        shares=tuple(shares),
        gpu_prices=gpu_prices,
        folded_tenants=folded,
        unpriced_gpu_models=tuple(sorted(unpriced)) if catalog_priced else (),
        pod_rates=pod_rates,
        pod_tenants=pod_tenants,
    )


def _pod_rates(
    rows: Iterable[Allocation],
    window_h: float,
    shares: Iterable[GpuShare],
    catalog_priced: bool,
    bases: set[str],
) -> dict[str, dict[PodKey, dict[str, float]]]:
    """Each pod's USD/hour per resource on each basis, consistent with the tenant rates:
    the allocation basis is OpenCost's row (plus the catalog-priced GPU holds when OpenCost
    prices no GPU); the usage basis replaces a measured pod's GPU rate by its usage rate."""
    alloc: dict[PodKey, dict[str, float]] = {}
    for a in rows:
        if not a.namespace or not a.pod or a.is_idle or a.is_unallocated:
            continue
        d = alloc.setdefault((a.namespace, a.pod), {})
        for resource, cost in _resource_costs(a).items():
            if cost:
                d[resource] = d.get(resource, 0.0) + cost / window_h
    held: dict[PodKey, list[float]] = defaultdict(list)
    used: dict[PodKey, list[float]] = defaultdict(list)
    for share in shares:
        key = (share.idle_key[2], share.idle_key[3])
        held[key].append(share.alloc_rate)
        used[key].append(share.usage_rate)
    if catalog_priced:
        for key, parts in held.items():
            d = alloc.setdefault(key, {})
            d["gpu"] = d.get("gpu", 0.0) + math.fsum(parts)
    out = {"allocation": alloc}
    if "usage" in bases:
        usage = {k: dict(v) for k, v in alloc.items()}
        for key, parts in used.items():
            usage.setdefault(key, {})["gpu"] = math.fsum(parts)
        out["usage"] = usage
    return out


_SENTINELS = frozenset({IDLE_TENANT, UNALLOCATED_TENANT, OTHER_TENANT})


def fold_tenants(
    rates_by_basis: Mapping[str, Mapping[tuple[str, str], float]], max_tenants: int
) -> tuple[dict[str, dict[tuple[str, str], float]], int]:
    """Keep the ``max_tenants`` costliest real tenants (allocation basis); fold the rest into
    ``__other__``, summing their money so totals are unchanged. Sentinels are never folded."""
    spend: dict[str, float] = defaultdict(float)
    for (tenant, _), value in rates_by_basis.get("allocation", {}).items():
        if tenant not in _SENTINELS:
            spend[tenant] += value
    for basis_rates in rates_by_basis.values():
        for tenant, _ in basis_rates:
            if tenant not in _SENTINELS:
                spend.setdefault(tenant, 0.0)
    if len(spend) <= max_tenants:
        return {b: dict(r) for b, r in rates_by_basis.items()}, 0
    keep = set(sorted(spend, key=lambda t: (-spend[t], t))[:max_tenants])
    out: dict[str, dict[tuple[str, str], float]] = {}
    for basis, basis_rates in rates_by_basis.items():
        folded: dict[tuple[str, str], list[float]] = defaultdict(list)
        for (tenant, resource), value in basis_rates.items():
            target = tenant if tenant in keep or tenant in _SENTINELS else OTHER_TENANT
            folded[(target, resource)].append(value)
        out[basis] = {k: math.fsum(v) for k, v in folded.items()}
    return out, len(spend) - max_tenants


def fold_shares(
    shares: Iterable[GpuShare], rates_by_basis: Mapping[str, Mapping[tuple[str, str], float]]
) -> list[GpuShare]:
    kept = {t for basis in rates_by_basis.values() for (t, _) in basis}
    out = []
    for s in shares:
        if s.tenant not in kept:
            s = GpuShare(
                OTHER_TENANT,
                s.gpu_model,
                s.held,
                s.used,
                s.utilization,
                s.alloc_rate,
                s.usage_rate,
                s.unused_rate,
                s.idle_key,
            )
        out.append(s)
    return out
