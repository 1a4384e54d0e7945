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
from typing import TypeVar, cast

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

    Speed (10k GPUs, 20k rows every refresh): each row's costs are read once and feed the
    tenant rates and the per-pod rates together; each GPU hold is visited once for the shares,
    the measured GPU cost and the per-pod GPU rates. Sums are :func:`math.fsum` of the same
    parts as a per-step computation would add, so results do not depend on this order.
    """
    window_h = allocations.window_hours if allocations else 1.0
    rows = allocations.allocations if allocations else ()

    # --- allocation basis from OpenCost --------------------------------------------------
    alloc_parts: dict[tuple[str, str], list[float]] = defaultdict(list)
    pod_tenant: dict[PodKey, str] = {}
    # Per pod and resource, USD/hour. Its "gpu" (0.0 when absent) is the pod's GPU rate.
    pod_alloc: dict[PodKey, dict[str, float]] = {}
    opencost_prices_gpus = False
    resolve = resolver.resolve
    for a in rows:
        name = a.name
        pod_key: PodKey | None = None
        if name.endswith("__idle__"):  # Allocation.is_idle / is_unallocated, as tenant_of
            tenant = IDLE_TENANT
        elif name.endswith("__unallocated__"):
            tenant = UNALLOCATED_TENANT
        else:
            ns, pod_name = a.namespace, a.pod
            tenant = resolve(ns, a.labels, a.namespace_labels)
            if ns and pod_name:
                pod_key = (ns, pod_name)
        gpu_cost = a.gpu_cost
        if gpu_cost > 0:
            opencost_prices_gpus = True
        # _resource_costs(a), in RESOURCES order.
        costs = (
            gpu_cost,
            a.cpu_cost,
            a.ram_cost,
            a.pv_cost,
            a.network_cost + a.load_balancer_cost,
            a.shared_cost + a.external_cost,
        )
        if pod_key is None:
            for resource, cost in zip(RESOURCES, costs, strict=False):
                if cost:
                    alloc_parts[(tenant, resource)].append(cost / window_h)
            continue
        pod_tenant[pod_key] = tenant
        per_pod = pod_alloc.get(pod_key)
        if per_pod is None:  # the usual case: one row per pod
            per_pod = pod_alloc[pod_key] = {}
            for resource, cost in zip(RESOURCES, costs, strict=False):
                if cost:
                    rate = cost / window_h
                    alloc_parts[(tenant, resource)].append(rate)
                    per_pod[resource] = 0.0 + rate
            continue
        for resource, cost in zip(RESOURCES, costs, strict=False):
            if cost:
                rate = cost / window_h
                alloc_parts[(tenant, resource)].append(rate)
                per_pod[resource] = per_pod.get(resource, 0.0) + rate
    catalog_priced = allocations is None or not opencost_prices_gpus

    # --- GPU units from DCGM -------------------------------------------------------------
    samples = gpus or ()
    by_unit: dict[UnitKey, list[GpuSample]] = defaultdict(list)
    for s in samples:
        by_unit[(s.uuid, s.mig_instance or "")].append(s)

    # Fraction held per (pod, unit), and per pod the total held (to split its GPU rate).
    mig_fractions: dict[tuple[str, str], float] = {}

    def mig_held(profile: str, model: str) -> float:
        # A fleet has a handful of (profile, model) pairs and thousands of MIG instances.
        key = (profile, model)
        if key not in mig_fractions:
            mig_fractions[key] = mig_fraction(profile, model)
        return mig_fractions[key]

    # Per unit, its holds: (sample, fraction held, pod).
    unit_pods: list[list[tuple[GpuSample, float, PodKey]]] = []
    pod_held_total: dict[PodKey, float] = defaultdict(float)
    unallocated_units: list[GpuSample] = []
    for unit_samples in by_unit.values():
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
        holds = [
            (
                s,
                mig_held(s.mig_profile, s.model_name) if s.mig_profile else 1.0 / len(with_pod),
                key,
            )
            for key, s in with_pod.items()
        ]
        unit_pods.append(holds)
        for _, held, key in holds:
            pod_held_total[key] += held

    unpriced: set[str] = set()
    prices: dict[str, tuple[float, str] | None] = {}  # pricer.price per model, this call

    def catalog_rate(model: str, held: float) -> float:
        if model not in prices:
            prices[model] = pricer.price(model)
        found = prices[model]
        if found is None:
            unpriced.add(model)
            return 0.0
        return found[0] * held

    def hold_rate(s: GpuSample, held: float, key: PodKey, single: bool) -> float:
        """The allocation-basis USD/hour of one hold: the catalog price of the fraction held,
        or the pod's OpenCost GPU rate split over its holds by fraction held."""
        if catalog_priced:
            return catalog_rate(s.model_name, held)
        total_held = pod_held_total[key]
        row = pod_alloc.get(key)
        pod_rate = row.get("gpu", 0.0) if row is not None else 0.0
        rate = pod_rate * held / total_held if total_held else 0.0
        if rate > 0 and held > 0 and not s.mig_profile and single:
            price_obs[s.model_name].append(rate / held)
        return rate

    namespace_tenant: dict[str | None, str] = {}  # pods DCGM saw but OpenCost did not

    def tenant_of_pod(s: GpuSample, key: PodKey) -> str:
        """The tenant of a pod with no OpenCost row (or an empty tenant): by namespace."""
        if s.namespace not in namespace_tenant:
            namespace_tenant[s.namespace] = resolver.resolve(s.namespace, {}, {})
        tenant = namespace_tenant[s.namespace]
        pod_tenants.setdefault(key, tenant)
        return tenant

    shares: list[GpuShare] = []
    usage_gpu: dict[str, list[float]] = defaultdict(list)
    extra_alloc_gpu: dict[str, list[float]] = defaultdict(list)  # catalog-priced GPU cost
    measured_by_tenant: dict[str, list[float]] = defaultdict(list)  # alloc rate of holds
    pod_shares: dict[PodKey, list[float]] = {}  # per hold: alloc rate, usage rate, ...
    pod_tenants = dict(pod_tenant)
    price_obs: dict[str, list[float]] = defaultdict(list)
    for holds in unit_pods:
        if len(holds) == 1:
            # One pod on the unit (a whole GPU or a MIG instance): the sums below over one
            # part, without the lists (fsum([x]) is x + 0.0).
            s, held, key = holds[0]
            rate = hold_rate(s, held, key, True)
            unit_rate = rate + 0.0
            u = s.utilization
            u_norm = u if u + 0.0 <= 1.0 else u * u / (u + 0.0)
            remainder = unit_rate * max(0.0, 1.0 - (u_norm + 0.0))
            unit = [(s, held, key, rate, u_norm, held * u)]
        else:
            rates = [hold_rate(s, held, key, False) for s, held, key in holds]
            unit_rate = math.fsum(rates)
            normalized = _normalized_utilizations([s.utilization for s, _, _ in holds])
            remainder = unit_rate * max(0.0, 1.0 - math.fsum(normalized))
            unit = [
                (s, held, key, rate, u_norm, held * s.utilization if s.mig_profile else u_norm)
                for (s, held, key), rate, u_norm in zip(holds, rates, normalized, strict=True)
            ]
        for s, held, key, rate, u_norm, used in unit:
            tenant = pod_tenant.get(key) or tenant_of_pod(s, key)
            if catalog_priced:
                extra_alloc_gpu[tenant].append(rate)
            usage = unit_rate * u_norm
            unused = remainder * (rate / unit_rate) if unit_rate else 0.0
            usage_gpu[tenant].append(usage)
            shares.append(
                GpuShare(
                    tenant,
                    s.model_name,
                    held,
                    used,
                    s.utilization,
                    rate,
                    usage,
                    unused,
                    (s.uuid, s.mig_instance or "", key[0], key[1]),
                )
            )
            measured_by_tenant[tenant].append(rate)
            pod_parts = pod_shares.get(key)
            if pod_parts is None:
                pod_shares[key] = [rate, usage]
            else:
                pod_parts += (rate, usage)
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

    pod_rates: dict[str, dict[PodKey, dict[str, float]]] = {}
    if allocations is not None:
        pod_rates = _pod_rates(pod_alloc, pod_shares, catalog_priced, "usage" in rates_by_basis)

    folded = 0
    if max_tenants is not None:
        rates_by_basis, folded = fold_tenants(rates_by_basis, max_tenants)
        if folded:
            shares = fold_shares(shares, rates_by_basis)

    cluster: dict[str, float] = {}
    if allocation_rates:
        by_resource: dict[str, list[float]] = defaultdict(list)
        for (_, r), v in rates_by_basis["allocation"].items():
            by_resource[r].append(v)
        for resource in RESOURCES:
            cluster[resource] = math.fsum(by_resource.get(resource, ()))

    gpu_prices: dict[tuple[str, str], float] = {}
    for model, obs in price_obs.items():
        obs.sort()
        gpu_prices[(model, "opencost")] = obs[len(obs) // 2]
    for model in {s.model_name for s in samples}:
        if model not in prices:
            prices[model] = pricer.price(model)
        found = prices[model]
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
    alloc: dict[PodKey, dict[str, float]],
    pod_shares: Mapping[PodKey, list[float]],
    catalog_priced: bool,
    with_usage: bool,
) -> dict[str, dict[PodKey, dict[str, float]]]:
    """Each pod's USD/hour per resource on each basis, consistent with the tenant rates:
    the allocation basis is OpenCost's rows (``alloc``, plus the catalog-priced GPU holds
    when OpenCost prices no GPU); the usage basis replaces a measured pod's GPU rate by its
    usage rate. ``pod_shares`` holds each measured pod's allocation and usage GPU rates,
    alternating, one pair per hold. A pod the usage basis leaves unchanged shares its
    (read-only) per-resource map with the allocation basis instead of a copy: 20k copies a
    refresh at 10k GPUs."""
    if catalog_priced:
        for key, rates in pod_shares.items():
            d = alloc.setdefault(key, {})
            d["gpu"] = d.get("gpu", 0.0) + math.fsum(rates[0::2])
    out = {"allocation": alloc}
    if with_usage:
        usage = dict(alloc)
        for key, rates in pod_shares.items():
            usage[key] = {**alloc.get(key, {}), "gpu": math.fsum(rates[1::2])}
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
    moved = {t: OTHER_TENANT for t in spend if t not in keep}
    out = {basis: remap_tenants(rates, moved) for basis, rates in rates_by_basis.items()}
    return out, len(spend) - max_tenants


K = TypeVar("K", bound=tuple[str, ...])


def remap_tenants(values: Mapping[K, float], moved: Mapping[str, str]) -> dict[K, float]:
    """``values`` keyed by tuples that start with a tenant, with each tenant in ``moved``
    replaced by its target and the values that land on one key summed (:func:`math.fsum`).

    The same result as collecting every value's parts and ``fsum``-ing them, key order
    included, but a value alone on its key is not put in a list (``v + 0.0`` is ``fsum([v])``,
    -0.0 included): at fleet scale nearly every key is alone, and folding is a few tenants.
    """
    if not moved:
        return {k: v + 0.0 for k, v in values.items()}
    # Only keys of a moved tenant or of a target can meet another key; the rest go straight in.
    special = set(moved) | set(moved.values())
    out: dict[K, float] = {}
    merged: dict[K, list[float]] = {}
    for k, v in values.items():
        tenant = k[0]
        if tenant not in special:
            out[k] = v + 0.0
            continue
        target = moved.get(tenant)
        if target is not None:
            k = cast(K, (target, *k[1:]))
        if k in out:
            parts = merged.get(k)
            if parts is None:
                merged[k] = [out[k], v]
            else:
                parts.append(v)
        else:
            out[k] = v + 0.0
    for k, parts in merged.items():
        out[k] = math.fsum(parts)
    return out


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
