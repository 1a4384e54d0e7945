"""Cost per tenant: OpenCost allocations joined with DCGM utilization. Pure; no clock.

Two bases, both published with a ``basis`` label:

* ``allocation`` — what OpenCost billed: each pod's window cost / window length goes to its
  tenant, OpenCost's ``__idle__`` row to ``__idle__``, pods no rule matches to
  ``__unallocated__``.
* ``usage`` — GPU dollars re-split by measured use of the *physical* device. A hold (one pod
  on a whole GPU, a MIG instance, or a time-slice replica) costs ``P · m``: ``P`` is the
  device's price per GPU-hour (OpenCost's ``gpuCost / gpuHours`` of its pods, or the catalog)
  and ``m`` the hold's share of the device's time — its utilization on a whole GPU, the MIG
  fraction × the instance's utilization on a MIG slice, its own figure on a time-sliced GPU
  (scaled down if the pods' figures sum over 1), or, where DCGM repeats the device figure on
  every pod (all equal), that figure split by the pods' requests. So ``Σ m ≤ 1`` per device: a
  device never costs more than its price. Each holder's *unused* cost is
  ``P · max(0, request − m)`` (bounded by the device's unused time), booked to ``__idle__``
  and reported per tenant; capacity nobody requested stays ``__idle__``. Usage above what a
  hold was billed is paid from idle money (OpenCost's ``__idle__`` row and what other holds
  left unused); where there is not enough (OpenCost queried without its idle row), the excess
  is scaled down to what there is and no unused cost is reported, so sums still reconcile.
  Pods with GPU cost but no DCGM series keep their allocation cost (unmeasured). Non-GPU
  resources are the same on both bases.

  Worked example: a $4/h H100 time-sliced into 4 replicas, pods A and B request one each
  (OpenCost bills $1/h each; $2/h is ``__idle__``). A uses 37 %, B 10 % of the device: A
  costs 0.37 × 4 = $1.48/h, B $0.40/h; B's unused is (0.25 − 0.10) × 4 = $0.60/h, A's 0;
  ``__idle__`` is 4 − 1.48 − 0.40 = $2.12/h (of which $0.60/h is B's unused).

GPU counts (``held``) are the requested share: OpenCost's request split over a pod's holds
(0.25 for one of 4 replicas, 1/7 for a 1g slice), or what DCGM alone says where OpenCost has
none (1, the MIG fraction, 1/k of a GPU shared by k pods).

Conservation holds by construction: for each basis and resource, the tenants (including
``__idle__`` and ``__unallocated__``) sum to the cluster total. The usage basis is published
only when DCGM data is present.

GPU prices: OpenCost's ``gpuCost`` when the cluster's OpenCost rows carry any GPU cost;
otherwise (OpenCost without GPU pricing) every hold is priced from the catalog
(``price × request``) and the rest of every GPU DCGM sees (its unrequested part, or all of it)
is priced into ``__idle__``.

Owned GPUs (``gpu_pricing.owned``, :mod:`aifinops.model.owned_prices`): where the catalog would
price a GPU, an owned entry matching its model (and node) prices it instead. Where OpenCost
prices GPUs, ``precedence`` decides: ``opencost`` (default) keeps OpenCost's price as the
billed basis (owned prices are published beside it, billed nowhere), so every dollar still
reconciles with OpenCost's totals; ``owned`` drops OpenCost's ``gpuCost`` from every row and
prices every GPU DCGM sees as above (owned, override, catalog): held parts to their tenants,
the rest to ``__idle__``, so the buckets still sum to the cluster GPU total, which is then the
owned fleet's cost rather than OpenCost's (non-GPU resources are OpenCost's either way).

All rates are floats in USD per hour (gauges); sums use :func:`math.fsum`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

from aifinops.model.gpu_prices import GpuPricer, mig_fraction
from aifinops.model.inputs import Allocation, AllocationSet, GpuSample
from aifinops.model.owned_prices import OwnedHourlyCost
from aifinops.model.tenancy import TenantResolver
from aifinops.model.vocabulary import IDLE_TENANT, OTHER_TENANT, RESOURCES, UNALLOCATED_TENANT

PodKey = tuple[str, str]  # (namespace, pod)
UnitKey = tuple[str, str]  # (gpu uuid, MIG instance id or "")
IdleKey = tuple[str, str, str, str]  # (uuid, MIG instance, namespace, pod)


@dataclass(frozen=True, slots=True)
class GpuShare:
    """One pod's hold on one GPU unit, after the join."""

    tenant: str
    gpu_model: str
    held: float  # GPU-equivalents requested (OpenCost's request: 1, 1/7, 0.25, ...)
    used: float  # GPU-equivalents of the physical device's time used (m)
    utilization: float  # raw 0-1 utilization of this series
    alloc_rate: float  # USD/h billed (allocation basis) for this hold
    usage_rate: float  # USD/h charged under the usage basis (device price x used)
    unused_rate: float  # USD/h of its request left unused (device price x (held - used), bounded)
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
    # GPU units (whole GPUs and MIG instances) per DCGM metric their utilization came from.
    utilization_metrics: Mapping[str, int] = field(default_factory=dict)
    # Each configured owned-GPU entry's price at this refresh (billed or not: see above).
    owned_prices: tuple[OwnedHourlyCost, ...] = ()


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


def _unit_time_shares(utils: list[float], requests: list[float]) -> list[float]:
    """Each hold's share (0–1) of its unit's time, from the holds' DCGM utilizations.

    One hold: its utilization. Several pods on one unit (time-slicing): stock dcgm-exporter
    repeats the device's figure on every pod, so equal figures are read as the device's and
    split by the pods' requests (0.25 and 0.25 of a 60 % device: 30 % each); different
    figures are each pod's own share, scaled down if they sum over 1 (a device never
    exceeds all of its time).
    """
    if len(utils) == 1:
        return utils
    if max(utils) - min(utils) <= 1e-9:
        total_req = math.fsum(requests)
        if total_req <= 0:
            return [utils[0] / len(utils)] * len(utils)
        return [utils[0] * r / total_req for r in requests]
    total = math.fsum(utils)
    if total <= 1.0:
        return utils
    return [u / total for u in utils]


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
    # Per pod: OpenCost's GPU request (GPU-equivalents) and GPU-hours over the window.
    pod_gpu_count: dict[PodKey, float] = {}
    pod_gpu_hours: dict[PodKey, float] = {}
    opencost_prices_gpus = False
    # Owned prices preferred over OpenCost's: OpenCost's GPU dollars are not billed (see above).
    owned_basis = pricer.now is not None and pricer.owned.precedence == "owned"
    owned_basis = owned_basis and bool(pricer.owned.entries)
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
        gpu_cost = 0.0 if owned_basis else a.gpu_cost
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
        if a.gpu_count > 0 or a.gpu_hours > 0:
            # A pod with two rows (restarted) requests the same GPUs in both: max, not sum.
            pod_gpu_count[pod_key] = max(pod_gpu_count.get(pod_key, 0.0), a.gpu_count)
            pod_gpu_hours[pod_key] = pod_gpu_hours.get(pod_key, 0.0) + a.gpu_hours
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
    metric_units: dict[str, int] = defaultdict(int)
    for unit_samples in by_unit.values():
        metric_units[unit_samples[0].metric or "unknown"] += 1

    mig_fractions: dict[tuple[str, str], float] = {}

    def mig_held(profile: str, model: str) -> float:
        # A fleet has a handful of (profile, model) pairs and thousands of MIG instances.
        key = (profile, model)
        if key not in mig_fractions:
            mig_fractions[key] = mig_fraction(profile, model)
        return mig_fractions[key]

    # Per unit: its physical capacity (1, or a MIG instance's fraction of the device) and its
    # holds (sample, weight, pod). The weight is what DCGM alone says a hold is (the MIG
    # fraction, 1, or 1/k of a GPU time-sliced by k pods); it splits a pod's OpenCost GPU rate
    # and request over its holds, and is the request where OpenCost gives none.
    unit_pods: list[tuple[float, list[tuple[GpuSample, float, PodKey]]]] = []
    pod_weight_total: dict[PodKey, float] = defaultdict(float)
    for unit_samples in by_unit.values():
        with_pod: dict[PodKey, GpuSample] = {}
        for s in unit_samples:
            if s.namespace and s.pod:
                key = (s.namespace, s.pod)
                # Two series for one pod on one unit (two containers): keep the busier one.
                if key not in with_pod or s.utilization > with_pod[key].utilization:
                    with_pod[key] = s
        if not with_pod:
            continue  # an unassigned unit: OpenCost's __idle__ row (or the catalog) prices it
        first = next(iter(with_pod.values()))
        capacity = mig_held(first.mig_profile, first.model_name) if first.mig_profile else 1.0
        weight = capacity / len(with_pod)
        holds = [(s, weight, key) for key, s in with_pod.items()]
        unit_pods.append((capacity, holds))
        for _, w, key in holds:
            pod_weight_total[key] += w

    unpriced: set[str] = set()
    # pricer.price per (model, node), this call (a node matters only for owned node pools).
    prices: dict[tuple[str, str], tuple[float, str] | None] = {}

    def catalog_price(model: str, node: str) -> float:
        key = (model, node if pricer.owned.entries else "")
        if key not in prices:
            prices[key] = pricer.price(model, node)
        found = prices[key]
        if found is None:
            unpriced.add(model)
            return 0.0
        return found[0]

    def requested(key: PodKey, weight: float) -> float:
        """GPU-equivalents the pod requested on this hold: OpenCost's request (0.25 for one
        of four time-slice replicas, 1/7 for a 1g slice) split over the pod's holds by
        weight; the weight itself where OpenCost gives no request."""
        count = pod_gpu_count.get(key, 0.0)
        if count > 0:
            return count * weight / pod_weight_total[key]
        return weight

    def hold_rates(key: PodKey, weight: float, s: GpuSample, req: float) -> tuple[float, float]:
        """(allocation-basis USD/hour of one hold, the physical device's USD per GPU-hour).

        Catalog-priced: the catalog price, and that price × the request. OpenCost-priced: the
        pod's GPU rate split over its holds by weight, and OpenCost's own price per GPU-hour
        (``gpuCost / gpuHours``; else rate per requested GPU; else rate per weight)."""
        if catalog_priced:
            price = catalog_price(s.model_name, s.node)
            return price * req, price
        row = pod_alloc.get(key)
        pod_rate = row.get("gpu", 0.0) if row is not None else 0.0
        total_w = pod_weight_total[key]
        rate = pod_rate * weight / total_w if total_w else 0.0
        hours = pod_gpu_hours.get(key, 0.0)
        count = pod_gpu_count.get(key, 0.0)
        if hours > 0:
            price = pod_rate * window_h / hours
        elif count > 0:
            price = pod_rate / count
        else:
            price = pod_rate / total_w if total_w else 0.0
        return rate, price

    namespace_tenant: dict[str | None, str] = {}  # pods DCGM saw but OpenCost did not

    def tenant_of_pod(s: GpuSample, key: PodKey) -> str:
        """The tenant of a pod with no OpenCost row (or an empty tenant): by namespace."""
        if s.namespace not in namespace_tenant:
            namespace_tenant[s.namespace] = resolver.resolve(s.namespace, {}, {})
        tenant = namespace_tenant[s.namespace]
        pod_tenants.setdefault(key, tenant)
        return tenant

    pod_tenants = dict(pod_tenant)
    price_obs: dict[str, list[float]] = defaultdict(list)
    # Requested GPU-equivalents per physical GPU (catalog pricing books the rest to __idle__).
    device_requested: dict[str, list[float]] = defaultdict(list)
    # Per hold: (sample, pod, tenant, requested, used, billed USD/h, usage USD/h, unused USD/h).
    measured: list[tuple[GpuSample, PodKey, str, float, float, float, float, float]] = []
    for capacity, holds in unit_pods:
        if len(holds) == 1:
            # One pod on the unit (most units): the general path below without its lists.
            s, weight, key = holds[0]
            req = requested(key, weight)
            billed, price = hold_rates(key, weight, s, req)
            # OpenCost's own price, observed; a catalog price is published as such below.
            if price > 0 and not s.mig_profile and weight == 1.0 and not catalog_priced:
                price_obs[s.model_name].append(price)
            if catalog_priced:
                device_requested[s.uuid].append(req)
            used = capacity * s.utilization
            usage = price * used
            deficit = req - used if req > used else 0.0
            unused = price * min(deficit, capacity * max(0.0, 1.0 - s.utilization))
            # Never less than what the usage basis moves to __idle__ for it (see below).
            unused = max(unused, billed - usage)
            tenant = pod_tenant.get(key) or tenant_of_pod(s, key)
            measured.append((s, key, tenant, req, used, billed, usage, unused))
            continue
        unit_parts: list[tuple[GpuSample, PodKey, float, float, float]] = []
        for s, weight, key in holds:
            req = requested(key, weight)
            billed, price = hold_rates(key, weight, s, req)
            unit_parts.append((s, key, req, billed, price))
            if catalog_priced:
                device_requested[s.uuid].append(req)
        # The physical device's price: its holders' (one node, one price; a mean guards
        # against OpenCost rounding each pod's figures).
        price = math.fsum(p[4] for p in unit_parts) / len(unit_parts)
        time_shares = _unit_time_shares(
            [p[0].utilization for p in unit_parts], [p[2] for p in unit_parts]
        )
        left = max(0.0, 1.0 - math.fsum(time_shares))
        # Holders' unused time: what each left of its request, bounded by the unit's rest.
        # In dollars, never less than what a hold was billed beyond its use: OpenCost's
        # rounded request (0.14286 for 1/7) bills a hair more than price x request, and the
        # unused cost must cover every dollar the usage basis moves to __idle__.
        deficits = [
            max(0.0, price * (p[2] - capacity * sh), p[3] - price * capacity * sh)
            for p, sh in zip(unit_parts, time_shares, strict=True)
        ]
        total_deficit = math.fsum(deficits)
        rest = max(
            price * capacity * left,
            math.fsum(p[3] for p in unit_parts) - price * capacity * math.fsum(time_shares),
        )
        unused_total = min(total_deficit, rest)
        for (s, key, req, billed, _), sh, d in zip(unit_parts, time_shares, deficits, strict=True):
            tenant = pod_tenant.get(key) or tenant_of_pod(s, key)
            used = capacity * sh
            unused = unused_total * d / total_deficit if total_deficit > 0 else 0.0
            measured.append((s, key, tenant, req, used, billed, price * used, unused))

    # Usage above what a hold was billed is paid from the money its device's idle time holds
    # (OpenCost's __idle__ row, and holds that used less than billed). Where OpenCost's rows
    # do not carry that time (no __idle__ row), the excess is scaled to what there is, so
    # every basis still sums to the cluster total and no bucket goes negative.
    idle_alloc_gpu = math.fsum(alloc_parts.get((IDLE_TENANT, "gpu"), ()))
    catalog_idle: list[float] = []
    if catalog_priced:
        devices = {s.uuid: s for s in samples}
        for uuid, dev in devices.items():
            rest = 1.0 - math.fsum(device_requested.get(uuid, ()))
            if rest > 1e-12:
                catalog_idle.append(catalog_price(dev.model_name, dev.node) * rest)
        idle_alloc_gpu += math.fsum(catalog_idle)
    excess = math.fsum(max(0.0, m[6] - m[5]) for m in measured)
    pool = idle_alloc_gpu + math.fsum(max(0.0, m[5] - m[6]) for m in measured)
    scale = 1.0 if excess <= pool else max(0.0, pool) / excess

    shares_out: list[GpuShare] = []
    usage_gpu: dict[str, list[float]] = defaultdict(list)
    extra_alloc_gpu: dict[str, list[float]] = defaultdict(list)  # catalog-priced GPU cost
    measured_by_tenant: dict[str, list[float]] = defaultdict(list)  # alloc rate of holds
    pod_shares: dict[PodKey, list[float]] = {}  # per hold: alloc rate, usage rate, ...
    for s, key, tenant, req, used, billed, usage, unused in measured:
        if scale < 1.0:
            # Every idle dollar paid someone's use: no unused money is left in __idle__.
            unused = 0.0
            if usage > billed:
                usage = billed + (usage - billed) * scale
        if catalog_priced:
            extra_alloc_gpu[tenant].append(billed)
        usage_gpu[tenant].append(usage)
        usage_gpu[IDLE_TENANT].append(billed - usage)
        shares_out.append(
            GpuShare(
                tenant,
                s.model_name,
                req,
                used,
                s.utilization,
                billed,
                usage,
                unused,
                (s.uuid, s.mig_instance or "", key[0], key[1]),
            )
        )
        measured_by_tenant[tenant].append(billed)
        pod_parts = pod_shares.get(key)
        if pod_parts is None:
            pod_shares[key] = [billed, usage]
        else:
            pod_parts += (billed, usage)
    if catalog_idle:
        extra_alloc_gpu[IDLE_TENANT].extend(catalog_idle)
        usage_gpu[IDLE_TENANT].extend(catalog_idle)
    shares = shares_out

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
    # The catalog (an override, an owned entry) prices GPUs only where OpenCost prices none:
    # publish it as in use only then, never beside OpenCost's price. Owned node pools may price
    # one model differently per node: the median device's price (and its source) is published.
    by_model: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for s in {s.uuid: s for s in samples}.values() if catalog_priced else ():
        catalog_price(s.model_name, s.node)
        found = prices[(s.model_name, s.node if pricer.owned.entries else "")]
        if found is not None:
            by_model[s.model_name].append(found)
    for model, found_prices in by_model.items():
        found_prices.sort()
        value, source = found_prices[len(found_prices) // 2]
        gpu_prices[(model, source)] = value

    return CostBreakdown(
        rates=rates_by_basis,
        cluster=cluster,
        shares=tuple(shares),
        gpu_prices=gpu_prices,
        folded_tenants=folded,
        unpriced_gpu_models=tuple(sorted(unpriced)) if catalog_priced else (),
        pod_rates=pod_rates,
        pod_tenants=pod_tenants,
        utilization_metrics=dict(metric_units),
        owned_prices=pricer.owned_prices(),
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
