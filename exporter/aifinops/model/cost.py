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
  HAMi-shared devices (``shared``) are split by HAMi's allocations and live use instead (see
  :func:`attribute_costs`); each hold's split is :func:`holding_shares`, which also names
  its ``method`` (docs/shared-gpus.md).
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
only when DCGM (or HAMi) data is present.

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
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, sub
from typing import Any, TypeVar, cast

import msgspec
import numpy as np
import numpy.typing as npt

from aifinops.model.gpu_prices import GpuPricer, mig_fraction
from aifinops.model.inputs import Allocation, AllocationSet, GpuSample, SharedHold
from aifinops.model.owned_prices import OwnedHourlyCost
from aifinops.model.tenancy import TenantResolver
from aifinops.model.vocabulary import (
    IDLE_TENANT,
    OTHER_TENANT,
    RESOURCES,
    UNALLOCATED_TENANT,
)

PodKey = tuple[str, str]  # (namespace, pod)
UnitKey = tuple[str, str]  # (gpu uuid, MIG instance id or "")
IdleKey = tuple[str, str, str, str]  # (uuid, MIG instance, namespace, pod)


class GpuShare(msgspec.Struct, frozen=True, gc=False):
    """One pod's hold on one GPU unit, after the join.

    A msgspec Struct, not a dataclass: a refresh builds one per hold (13k at fleet scale),
    and a frozen dataclass sets each field through ``object.__setattr__``; ``gc=False``
    because a share holds only strings, numbers and a tuple of strings (no cycle)."""

    tenant: str
    gpu_model: str
    held: float  # GPU-equivalents requested (OpenCost's request: 1, 1/7, 0.25, ...)
    used: float  # GPU-equivalents of the physical device's time used (m)
    utilization: float  # raw 0-1 utilization of this series
    alloc_rate: float  # USD/h billed (allocation basis) for this hold
    usage_rate: float  # USD/h charged under the usage basis (device price x used)
    unused_rate: float  # USD/h of its request left unused (device price x (held - used), bounded)
    idle_key: IdleKey
    method: str = "request_share"  # how its device was split (vocabulary.SPLIT_METHODS)
    # False for a HAMi pod with no usage series yet (no CUDA call): held at its share, and
    # never idle for want of a figure.
    measured: bool = True


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
    # USD/hour (the pod's part of its tenant's rate on that basis; a :class:`PodRates`, each
    # pod's map built when read) and the pod's tenant.
    # Token charge-back reads them to move a serving pod's cost to the tenants it served.
    pod_rates: Mapping[str, Mapping[PodKey, Mapping[str, float]]] = field(default_factory=dict)
    pod_tenants: Mapping[PodKey, str] = field(default_factory=dict)
    # GPU units (whole GPUs and MIG instances) per DCGM metric their utilization came from.
    utilization_metrics: Mapping[str, int] = field(default_factory=dict)
    # Each configured owned-GPU entry's price at this refresh (billed or not: see above).
    owned_prices: tuple[OwnedHourlyCost, ...] = ()
    # GPU USD/hour per basis, tenant and split method: ``method_rates[basis][(tenant,
    # method)]``; per basis it sums to the cluster's GPU rate (before token charge-back).
    method_rates: Mapping[str, Mapping[tuple[str, str], float]] = field(default_factory=dict)
    # HAMi holds with no usage series yet (no CUDA call so far): held at their share.
    held_unmeasured: int = 0


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


def holding_shares(
    utils: list[float | None],
    requests: list[float],
    *,
    mig: bool = False,
    hami: bool = False,
    per_process: bool = False,
) -> tuple[list[float], str]:
    """Each hold's share (0–1) of its unit's time, and how the unit was split (its
    ``method``, one of :data:`~aifinops.model.vocabulary.SPLIT_METHODS`). The one place a
    unit's time is split among its holds: energy and anything else that follows the GPU
    split reads the results (``GpuShare.used``, ``GpuShare.method``), never its own rule.

    ``utils`` are the holds' measured figures (0–1 of the unit); ``None`` only on HAMi, for a
    pod with no usage series yet. ``requests`` are what each hold requested (or, on HAMi, its
    billing share) in the unit's terms.

    * HAMi (``hami``): each pod's own figure; a pod not measured yet (no CUDA call: HAMi
      #281) is *held* at its share, and the measured ones are scaled down to the rest of the
      unit if they would exceed it. Method ``hami``.
    * One hold: its utilization (``exclusive``, ``mig`` on a MIG instance).
    * Several pods (time-slicing), dcgm-exporter's per-process series (``per_process``), or
      figures that differ: each pod's own share, scaled down if they sum over 1 (a device
      never exceeds all of its time). Method ``per_process``.
    * Several pods with equal figures: stock dcgm-exporter repeats the device's figure on
      every pod, so it is split by the pods' requests (0.25 and 0.25 of a 60 % device: 30 %
      each): a guess, method ``even_split``.
    """
    if hami:
        held = math.fsum(r for u, r in zip(utils, requests, strict=True) if u is None)
        measured = math.fsum(u for u in utils if u is not None)
        room = max(0.0, 1.0 - held)
        k = room / measured if measured > room else 1.0
        return [r if u is None else u * k for u, r in zip(utils, requests, strict=True)], "hami"
    figures = [0.0 if u is None else u for u in utils]
    if len(figures) == 1:
        return figures, "mig" if mig else "exclusive"
    if not per_process and max(figures) - min(figures) <= 1e-9:
        total_req = math.fsum(requests)
        if total_req <= 0:
            return [figures[0] / len(figures)] * len(figures), "even_split"
        return [figures[0] * r / total_req for r in requests], "even_split"
    total = math.fsum(figures)
    if total <= 1.0:
        return figures, "per_process"
    return [u / total for u in figures], "per_process"


def hami_billing_share(hold: SharedHold, core_weight: float) -> float:
    """A HAMi pod's billing share of its device: ``core_weight`` × cores + the rest × memory
    (1: cores, 0: memory). A pod that set no core limit (``gpucores`` unset: 0 allocated, it
    may use the whole device) is billed its memory share for the core part."""
    cores = hold.core_share if hold.core_share > 0 else hold.memory_share
    share = core_weight * cores + (1.0 - core_weight) * hold.memory_share
    return min(max(share, 0.0), 1.0)


def attribute_costs(
    allocations: AllocationSet | None,
    gpus: tuple[GpuSample, ...] | None,
    resolver: TenantResolver,
    pricer: GpuPricer,
    max_tenants: int | None = None,
    shared: tuple[SharedHold, ...] | None = None,
    hami_core_weight: float = 1.0,
) -> CostBreakdown:
    """Join allocations and GPU samples into per-tenant rates on both bases.

    ``shared`` are HAMi's allocations: a device HAMi shares is split by them (each pod's
    billing share, :func:`hami_billing_share` with ``hami_core_weight``; its live use on the
    usage basis), whatever DCGM says of its pods. On the allocation basis each pod is billed
    the device's price × its share; what OpenCost billed the device's pods beyond that (it
    bills each HAMi pod a whole GPU: OpenCost #3828) goes to ``__idle__``, and where OpenCost
    billed less, the shares split what it billed: the cluster total is OpenCost's either way.

    With ``allocations is None`` (OpenCost unavailable) no cost rates are produced, but GPU
    shares are still built (priced from the catalog) so idle GPUs and efficiency remain.

    The phases, in order (each a function below): read OpenCost's rows
    (:func:`_read_rows`); index the GPU samples per unit, HAMi's devices included
    (:func:`_index_units`); list each unit's holds (:func:`_unit_holds`); price and split
    each unit among its holds (:func:`_split_units`, over :class:`_HoldPricer`); size the
    idle money that pays use above a bill (:func:`_usage_scale`); book each hold on both
    bases (:func:`_book_holds`); assemble the bases (:func:`_allocation_rates`,
    :func:`_usage_rates`), the rates by split method, the per-pod rates, folding, the
    cluster totals (:func:`_cluster_totals`) and the published prices
    (:func:`_published_gpu_prices`).

    Speed (10k GPUs, 20k rows every refresh): each row's costs are read once and feed the
    tenant rates and the per-pod rates together; each GPU hold is visited once for the shares,
    the measured GPU cost and the per-pod GPU rates. Sums are :func:`math.fsum` of the same
    parts as a per-step computation would add, so results do not depend on this order.
    """
    window_h = allocations.window_hours if allocations else 1.0
    # Owned prices preferred over OpenCost's: OpenCost's GPU dollars are not billed (see above).
    owned_basis = pricer.now is not None and pricer.owned.precedence == "owned"
    owned_basis = owned_basis and bool(pricer.owned.entries)
    rows = _read_rows(
        allocations.allocations if allocations else (), window_h, resolver, owned_basis
    )
    catalog_priced = allocations is None or not rows.opencost_prices_gpus

    units = _index_units(gpus or (), shared, hami_core_weight)
    unit_pods, pod_weight_total = _unit_holds(units)
    hp = _HoldPricer(pricer, resolver, rows, pod_weight_total, window_h, catalog_priced)
    split = _split_units(unit_pods, units.hami, hp)

    # HAMi's re-split on the allocation basis: what OpenCost overbilled goes to __idle__.
    hami_idle = math.fsum(split.hami_moved.get(IDLE_TENANT, ()))
    for tenant, changes in split.hami_moved.items():
        rows.alloc_parts[(tenant, "gpu")].extend(changes)
    catalog_idle = (
        _catalog_idle(units.samples, split.device_requested, hp) if catalog_priced else []
    )
    scale = _usage_scale(rows.alloc_parts, catalog_idle, split.measured, catalog_priced)
    booked = _book_holds(split, scale, catalog_priced, hami_idle, catalog_idle)

    allocation_rates = _allocation_rates(rows.alloc_parts, booked.extra_alloc_gpu, catalog_priced)
    if allocations is None:
        allocation_rates = {}
    rates_by_basis: dict[str, dict[tuple[str, str], float]] = {"allocation": allocation_rates}
    if (gpus is not None or shared is not None) and allocations is not None:
        rates_by_basis["usage"] = _usage_rates(allocation_rates, booked, catalog_priced)

    method_rates = {
        basis: _method_rates(rates, booked.method_parts[basis])
        for basis, rates in rates_by_basis.items()
    }

    pod_rates: dict[str, PodRates] = {}
    if allocations is not None:
        pod_rates = _pod_rates(
            rows.pod_alloc, booked.pod_shares, catalog_priced, "usage" in rates_by_basis
        )

    shares: list[GpuShare] = booked.shares
    folded = 0
    if max_tenants is not None:
        rates_by_basis, folded = fold_tenants(rates_by_basis, max_tenants)
        if folded:
            shares, method_rates = _fold_shares_and_methods(shares, method_rates, rates_by_basis)

    cluster = _cluster_totals(rates_by_basis["allocation"]) if allocation_rates else {}
    # Before ``hp.unpriced`` is read: publishing the catalog's prices looks every GPU up.
    gpu_prices = _published_gpu_prices(split.price_obs, units.samples, hp, catalog_priced)
    return CostBreakdown(
        rates=rates_by_basis,
        cluster=cluster,
        shares=tuple(shares),
        gpu_prices=gpu_prices,
        folded_tenants=folded,
        unpriced_gpu_models=tuple(sorted(hp.unpriced)) if catalog_priced else (),
        pod_rates=pod_rates,
        pod_tenants=hp.pod_tenants,
        utilization_metrics=dict(units.metric_units),
        owned_prices=pricer.owned_prices(),
        method_rates=method_rates,
        held_unmeasured=len(split.held_keys),
    )


class PodRates(Mapping[PodKey, Mapping[str, float]]):
    """Each pod's USD/hour per resource on one basis (``CostBreakdown.pod_rates[basis]``),
    kept as the OpenCost rows' rate columns rather than a dict per pod: at fleet scale that
    was tens of thousands of dicts built and freed every refresh, and only a few (the
    serving pods token charge-back moves) are ever read. A pod's map is built when asked for,
    equal to (and in the key order of) the dict a pass over the rows would have made.

    ``index`` maps a pod to its row of ``rates`` (``billed`` says which resources the row
    has: the others are absent, not 0) and ``gpu_column`` to that row's GPU rate (0.0 where
    it has none); ``own`` holds the pods whose map is not one row's
    (several rows, a HAMi re-split, a catalog price, pods no row names), iterated after the
    indexed ones; ``gpu`` replaces (or adds) a pod's ``"gpu"`` rate (the usage basis).
    Read-only once built (:meth:`mutable` is for the model while it builds one)."""

    __slots__ = ("_billed", "_extra", "_gpu", "_gpu_column", "_index", "_own", "_rates")

    def __init__(
        self,
        index: Mapping[PodKey, int],
        rates: npt.NDArray[np.float64],
        billed: npt.NDArray[np.bool_],
        gpu_column: Mapping[PodKey, float],
        own: dict[PodKey, dict[str, float]] | None = None,
        gpu: Mapping[PodKey, float] | None = None,
    ) -> None:
        self._index = index
        self._rates = rates
        self._billed = billed
        self._gpu_column = gpu_column
        self._own = {} if own is None else own
        self._gpu: Mapping[PodKey, float] = {} if gpu is None else gpu
        self._extra: list[PodKey] | None = None  # own and gpu keys not in index, in order

    def _row(self, key: PodKey) -> dict[str, float] | None:
        found = self._own.get(key)
        if found is not None:
            return found
        i = self._index.get(key)
        if i is None:
            return None
        values: list[float] = self._rates[i].tolist()
        return dict(compress(zip(RESOURCES, values, strict=True), self._billed[i].tolist()))

    def __getitem__(self, key: PodKey) -> Mapping[str, float]:
        row = self._row(key)
        gpu = self._gpu.get(key)
        if gpu is not None:
            return {**(row or {}), "gpu": gpu}
        if row is None:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        return key in self._index or key in self._own or key in self._gpu

    def _extras(self) -> list[PodKey]:
        if self._extra is None:
            index, own = self._index, self._own
            extra = [k for k in own if k not in index]
            extra += [k for k in self._gpu if k not in index and k not in own]
            self._extra = extra
        return self._extra

    def __iter__(self) -> Iterator[PodKey]:
        return chain(self._index, self._extras())

    def __len__(self) -> int:
        return len(self._index) + len(self._extras())

    def gpu_rate(self, key: PodKey) -> float:
        """The pod's ``"gpu"`` rate, 0.0 where it has none."""
        gpu = self._gpu.get(key)
        if gpu is not None:
            return gpu
        row = self._own.get(key)
        if row is not None:
            return row.get("gpu", 0.0)
        return self._gpu_column.get(key, 0.0)

    def mutable(self, key: PodKey) -> dict[str, float]:
        """The pod's map, to change in place while the model builds this basis (a new,
        empty one for a pod not listed yet)."""
        assert not self._gpu and self._extra is None, "built already"
        row = self._own.get(key)
        if row is None:
            row = self._own[key] = self._row(key) or {}
        return row

    def with_gpu(self, gpu: Mapping[PodKey, float]) -> PodRates:
        """These rates with each pod in ``gpu`` at that GPU rate (``{**row, "gpu": v}``:
        the key keeps its place, or comes last), the others shared."""
        return PodRates(self._index, self._rates, self._billed, self._gpu_column, self._own, gpu)


@dataclass(slots=True)
class _Rows:
    """OpenCost's rows, read once (:func:`_read_rows`)."""

    # Allocation-basis parts, USD/hour per (tenant, resource).
    alloc_parts: dict[tuple[str, str], list[float]]
    pod_tenant: dict[PodKey, str]
    # Per pod and resource, USD/hour. Its "gpu" (0.0 when absent) is the pod's GPU rate.
    pod_alloc: PodRates
    # Per pod: OpenCost's GPU request (GPU-equivalents) and GPU-hours over the window.
    pod_gpu_count: dict[PodKey, float]
    pod_gpu_hours: dict[PodKey, float]
    opencost_prices_gpus: bool  # some row carries GPU cost (that is billed)


def _read_rows(
    rows: Iterable[Allocation], window_h: float, resolver: TenantResolver, owned_basis: bool
) -> _Rows:
    """The allocation basis from OpenCost: each row's costs / window to its tenant (and to its
    pod), and each pod's GPU request and GPU-hours. ``owned_basis``: OpenCost's GPU dollars
    are not billed (owned prices take precedence).

    Columnar: the rows' costs are one array (a row per allocation, a column per resource),
    divided at once and grouped per (tenant, resource) in the order a pass over the rows
    would first meet each; the per-pod rates stay those columns (:class:`PodRates`). The
    row-by-row definition is the oracle in tests/model/cost_reference.py."""
    rows = rows if isinstance(rows, tuple | list) else tuple(rows)
    resolve = resolver.cached()  # once per distinct (namespace, label maps)
    tenants: list[str] = []
    pod_keys: list[PodKey | None] = []
    add_tenant, add_pod = tenants.append, pod_keys.append
    for a in rows:
        name = a.name
        if name.endswith("__idle__"):  # Allocation.is_idle / is_unallocated, as tenant_of
            add_tenant(IDLE_TENANT)
            add_pod(None)
        elif name.endswith("__unallocated__"):
            add_tenant(UNALLOCATED_TENANT)
            add_pod(None)
        else:
            ns, pod_name = a.namespace, a.pod
            add_tenant(resolve(ns, a.labels, a.namespace_labels))
            add_pod((ns, pod_name) if ns and pod_name else None)
    n = len(rows)
    width = len(RESOURCES)
    costs = np.zeros((n, width), dtype=np.float64)  # _resource_costs, in RESOURCES order
    if not owned_basis:
        costs[:, 0] = [a.gpu_cost for a in rows]
    costs[:, 1] = [a.cpu_cost for a in rows]
    costs[:, 2] = [a.ram_cost for a in rows]
    costs[:, 3] = [a.pv_cost for a in rows]
    costs[:, 4] = [a.network_cost + a.load_balancer_cost for a in rows]
    costs[:, 5] = [a.shared_cost + a.external_cost for a in rows]
    billed = costs != 0.0  # a row books the resources it has a cost for (NaN too)
    if window_h == 0 and billed.any():
        raise ZeroDivisionError("float division by zero")  # as cost / window_h does
    with np.errstate(all="ignore"):
        raw = costs / window_h
    rates = raw + 0.0  # a pod's rate is a sum that starts at 0.0

    # (tenant, resource) groups: key = tenant code x width + resource, row-major.
    codes: dict[str, int] = {}
    tenant_codes = np.fromiter(
        (codes.setdefault(t, len(codes)) for t in tenants), dtype=np.int64, count=n
    )
    keys = (tenant_codes[:, None] * width + np.arange(width))[billed]
    order = np.argsort(keys, kind="stable")  # a group's parts stay in row order
    groups, first, counts = np.unique(keys, return_index=True, return_counts=True)
    ends = np.cumsum(counts)
    parts: list[float] = raw[billed][order].tolist()
    names = list(codes)
    alloc_parts: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_first = np.argsort(first, kind="stable")  # dict order is observable downstream
    for key, end, count in zip(
        groups[by_first].tolist(), ends[by_first].tolist(), counts[by_first].tolist(), strict=True
    ):
        alloc_parts[(names[key // width], RESOURCES[key % width])] = parts[end - count : end]

    pod_rows = [i for i, k in enumerate(pod_keys) if k is not None]
    pods = [cast(PodKey, pod_keys[i]) for i in pod_rows]
    pod_tenant = dict(zip(pods, map(tenants.__getitem__, pod_rows), strict=True))
    index = dict(zip(pods, pod_rows, strict=True))
    gpu_rates = np.where(billed[:, 0], rates[:, 0], 0.0)[pod_rows].tolist()
    gpu_column = dict(zip(pods, gpu_rates, strict=True))
    own: dict[PodKey, dict[str, float]] = {}
    if len(index) < len(pods):
        # A pod with two rows (restarted): its first row's place, its rates summed row by row.
        index = {}
        for i, key in zip(pod_rows, pods, strict=True):
            index.setdefault(key, i)
        repeated = {key for key, seen in Counter(pods).items() if seen > 1}
        raw_rows: list[list[float]] = raw.tolist()
        billed_rows: list[list[bool]] = billed.tolist()
        for i, key in zip(pod_rows, pods, strict=True):
            if key not in repeated:
                continue
            resources = compress(zip(RESOURCES, raw_rows[i], strict=True), billed_rows[i])
            per_pod = own.get(key)
            if per_pod is None:
                own[key] = {resource: 0.0 + rate for resource, rate in resources}
                continue
            for resource, rate in resources:
                per_pod[resource] = per_pod.get(resource, 0.0) + rate

    pod_gpu_count: dict[PodKey, float] = {}
    pod_gpu_hours: dict[PodKey, float] = {}
    counts_col = [a.gpu_count for a in rows]
    hours_col = [a.gpu_hours for a in rows]
    for i, key in zip(pod_rows, pods, strict=True):
        count, hours = counts_col[i], hours_col[i]
        if count > 0 or hours > 0:
            # A pod with two rows (restarted) requests the same GPUs in both: max, not sum.
            pod_gpu_count[key] = max(pod_gpu_count.get(key, 0.0), count)
            pod_gpu_hours[key] = pod_gpu_hours.get(key, 0.0) + hours
    return _Rows(
        alloc_parts,
        pod_tenant,
        PodRates(index, rates, billed, gpu_column, own),
        pod_gpu_count,
        pod_gpu_hours,
        bool((costs[:, 0] > 0).any()),
    )


@dataclass(slots=True)
class _Units:
    """The GPU samples per unit (:func:`_index_units`)."""

    by_unit: dict[UnitKey, list[GpuSample]]
    metric_units: dict[str, int]  # units per DCGM metric their utilization came from
    # HAMi-shared devices: per device, each pod's (billing share, live use or None).
    hami: dict[str, dict[PodKey, tuple[float, float | None]]]
    samples: tuple[GpuSample, ...]  # every sample, HAMi's pods in place of DCGM's


def _index_units(
    gpus: tuple[GpuSample, ...], shared: tuple[SharedHold, ...] | None, hami_core_weight: float
) -> _Units:
    """DCGM's samples grouped per unit (a GPU, or a MIG instance); a device HAMi shares gets
    one sample per HAMi pod instead (its live use), since DCGM cannot tell HAMi's containers
    apart on one device."""
    samples = gpus
    by_unit: dict[UnitKey, list[GpuSample]] = defaultdict(list)
    for s in samples:
        by_unit[(s.uuid, s.mig_instance or "")].append(s)
    metric_units: dict[str, int] = defaultdict(int)
    for unit_samples in by_unit.values():
        metric_units[unit_samples[0].metric or "unknown"] += 1
    hami: dict[str, dict[PodKey, tuple[float, float | None]]] = defaultdict(dict)
    hami_device: dict[str, SharedHold] = {}
    # A device DCGM reports as MIG instances is split by its slices (HAMi's MIG mode hands
    # out whole instances, which DCGM attributes exactly): HAMi's figures are not used there.
    mig_devices = {uuid for uuid, instance in by_unit if instance}
    for h in shared or ():
        if h.uuid in mig_devices:
            continue
        share = hami_billing_share(h, hami_core_weight)
        hami[h.uuid][(h.namespace, h.pod)] = (share, h.utilization)
        hami_device.setdefault(h.uuid, h)
    for uuid, hdev in hami_device.items():
        dcgm_seen = [s for s in by_unit.get((uuid, ""), ()) if not s.mig_profile]
        model = dcgm_seen[0].model_name if dcgm_seen else hdev.model_name
        by_unit[(uuid, "")] = [
            GpuSample(
                uuid=uuid,
                gpu_index=hdev.gpu_index,
                model_name=model,
                node=hdev.node,
                utilization=0.0 if use is None else min(max(use, 0.0), 1.0),
                namespace=key[0],
                pod=key[1],
                metric="hami",
            )
            for key, (_, use) in hami[uuid].items()
        ]
    if hami_device:
        samples = tuple(x for unit in by_unit.values() for x in unit)
    return _Units(by_unit, metric_units, hami, samples)


# One unit's physical capacity (1, or a MIG instance's fraction of the device) and its holds
# (sample, weight, pod).
_UnitHolds = tuple[float, list[tuple[GpuSample, float, PodKey]]]


def _unit_holds(units: _Units) -> tuple[list[_UnitHolds], dict[PodKey, float]]:
    """Each unit with a pod: its capacity and its holds, and each pod's total weight.

    The weight is what DCGM alone says a hold is (the MIG fraction, 1, or 1/k of a GPU
    time-sliced by k pods); it splits a pod's OpenCost GPU rate and request over its holds,
    and is the request where OpenCost gives none."""
    mig_fractions: dict[tuple[str, str], float] = {}

    def mig_held(profile: str, model: str) -> float:
        # A fleet has a handful of (profile, model) pairs and thousands of MIG instances.
        key = (profile, model)
        if key not in mig_fractions:
            mig_fractions[key] = mig_fraction(profile, model)
        return mig_fractions[key]

    unit_pods: list[_UnitHolds] = []
    pod_weight_total: dict[PodKey, float] = defaultdict(float)
    hami = units.hami
    for unit_samples in units.by_unit.values():
        if len(unit_samples) == 1:  # most units: the loop below for one sample
            s = unit_samples[0]
            if not (s.namespace and s.pod):
                continue
            key = (s.namespace, s.pod)
            capacity = mig_held(s.mig_profile, s.model_name) if s.mig_profile else 1.0
            weight = 1.0 if s.uuid in hami else capacity  # capacity / 1 pod
            unit_pods.append((capacity, [(s, weight, key)]))
            pod_weight_total[key] += weight
            continue
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
        # A HAMi pod holds one vGPU of the device, which OpenCost counts as one GPU.
        weight = 1.0 if first.uuid in units.hami else capacity / len(with_pod)
        holds = [(s, weight, key) for key, s in with_pod.items()]
        unit_pods.append((capacity, holds))
        for _, w, key in holds:
            pod_weight_total[key] += w
    return unit_pods, pod_weight_total


class _HoldPricer:
    """Prices one hold (its request, billed rate and device price) and names its tenant, for
    one call: it caches the catalog's prices and the tenants of pods OpenCost did not see."""

    def __init__(
        self,
        pricer: GpuPricer,
        resolver: TenantResolver,
        rows: _Rows,
        pod_weight_total: Mapping[PodKey, float],
        window_h: float,
        catalog_priced: bool,
    ) -> None:
        self.pricer = pricer
        self.resolver = resolver
        self.rows = rows
        self.pod_weight_total = pod_weight_total
        self.window_h = window_h
        self.catalog_priced = catalog_priced
        self.unpriced: set[str] = set()
        # pricer.price per (model, node), this call (a node matters only for owned node pools).
        self.prices: dict[tuple[str, str], tuple[float, str] | None] = {}
        self.namespace_tenant: dict[str | None, str] = {}  # pods DCGM saw but OpenCost did not
        self.pod_tenants = dict(rows.pod_tenant)

    def catalog_found(self, model: str, node: str) -> tuple[float, str] | None:
        """The catalog's (price, source) for a GPU, or ``None`` (the model is unpriced)."""
        key = (model, node if self.pricer.owned.entries else "")
        if key not in self.prices:
            self.prices[key] = self.pricer.price(model, node)
        found = self.prices[key]
        if found is None:
            self.unpriced.add(model)
        return found

    def catalog_price(self, model: str, node: str) -> float:
        found = self.catalog_found(model, node)
        return 0.0 if found is None else found[0]

    def requested(self, key: PodKey, weight: float) -> float:
        """GPU-equivalents the pod requested on this hold: OpenCost's request (0.25 for one
        of four time-slice replicas, 1/7 for a 1g slice) split over the pod's holds by
        weight; the weight itself where OpenCost gives no request."""
        count = self.rows.pod_gpu_count.get(key, 0.0)
        if count > 0:
            return count * weight / self.pod_weight_total[key]
        return weight

    def hold_rates(
        self, key: PodKey, weight: float, s: GpuSample, req: float
    ) -> tuple[float, float]:
        """(allocation-basis USD/hour of one hold, the physical device's USD per GPU-hour).

        Catalog-priced: the catalog price, and that price × the request. OpenCost-priced: the
        pod's GPU rate split over its holds by weight, and OpenCost's own price per GPU-hour
        (``gpuCost / gpuHours``; else rate per requested GPU; else rate per weight)."""
        if self.catalog_priced:
            price = self.catalog_price(s.model_name, s.node)
            return price * req, price
        pod_rate = self.rows.pod_alloc.gpu_rate(key)
        total_w = self.pod_weight_total[key]
        rate = pod_rate * weight / total_w if total_w else 0.0
        hours = self.rows.pod_gpu_hours.get(key, 0.0)
        count = self.rows.pod_gpu_count.get(key, 0.0)
        if hours > 0:
            price = pod_rate * self.window_h / hours
        elif count > 0:
            price = pod_rate / count
        else:
            price = pod_rate / total_w if total_w else 0.0
        return rate, price

    def tenant(self, s: GpuSample, key: PodKey) -> str:
        """The pod's tenant: its OpenCost row's, else (no row, or an empty tenant) by
        namespace."""
        tenant = self.rows.pod_tenant.get(key)
        if tenant:
            return tenant
        if s.namespace not in self.namespace_tenant:
            self.namespace_tenant[s.namespace] = self.resolver.resolve(s.namespace, {}, {})
        tenant = self.namespace_tenant[s.namespace]
        self.pod_tenants.setdefault(key, tenant)
        return tenant


# One hold after its unit's split: (sample, pod, tenant, requested, used, billed USD/h,
# usage USD/h, unused USD/h, split method).
_Measured = tuple[GpuSample, PodKey, str, float, float, float, float, float, str]


@dataclass(slots=True)
class _Split:
    """Every unit split among its holds (:func:`_split_units`)."""

    measured: list[_Measured]
    price_obs: dict[str, list[float]]  # OpenCost's own price per GPU-hour, per model
    # Requested GPU-equivalents per physical GPU (catalog pricing books the rest to __idle__).
    device_requested: dict[str, list[float]]
    # HAMi re-split on the allocation basis: per tenant, the change of its billed GPU USD/h
    # (OpenCost's whole-GPU bill -> price x share); the device's rest goes to __idle__.
    hami_moved: dict[str, list[float]]
    held_keys: set[IdleKey]  # HAMi holds with no usage series yet


def _split_units(
    unit_pods: list[_UnitHolds],
    hami: Mapping[str, Mapping[PodKey, tuple[float, float | None]]],
    hp: _HoldPricer,
) -> _Split:
    """Price each unit and split its time among its holds (:func:`holding_shares`): each
    hold's request, use, billed, usage and unused USD/hour. A HAMi device's pods are billed
    the device's price × their share (:func:`_hami_parts`), the change from OpenCost's bill
    recorded in ``hami_moved`` and in the pod's allocation-basis GPU rate."""
    catalog_priced = hp.catalog_priced
    pod_alloc = hp.rows.pod_alloc
    price_obs: dict[str, list[float]] = defaultdict(list)
    device_requested: dict[str, list[float]] = defaultdict(list)
    measured: list[_Measured] = []
    hami_moved: dict[str, list[float]] = defaultdict(list)
    held_keys: set[IdleKey] = set()
    # The one-pod path inlines hp.requested, hp.hold_rates and hp.tenant (OpenCost-priced):
    # three calls per hold were a fifth of this function at fleet scale.
    pod_gpu_count = hp.rows.pod_gpu_count
    pod_gpu_hours = hp.rows.pod_gpu_hours
    pod_tenant = hp.rows.pod_tenant
    pod_weight_total = hp.pod_weight_total
    window_h = hp.window_h
    pod_gpu_rate = pod_alloc.gpu_rate
    for capacity, holds in unit_pods:
        hami_unit = hami.get(holds[0][0].uuid) if not holds[0][0].mig_profile else None
        if len(holds) == 1 and hami_unit is None:
            # One pod on the unit (most units): the general path below without its lists.
            s, weight, key = holds[0]
            count = pod_gpu_count.get(key, 0.0)
            total_w = pod_weight_total[key]
            req = count * weight / total_w if count > 0 else weight
            if catalog_priced:
                billed, price = hp.hold_rates(key, weight, s, req)
                device_requested[s.uuid].append(req)
            else:
                pod_rate = pod_gpu_rate(key)
                billed = pod_rate * weight / total_w if total_w else 0.0
                hours = pod_gpu_hours.get(key, 0.0)
                if hours > 0:
                    price = pod_rate * window_h / hours
                elif count > 0:
                    price = pod_rate / count
                else:
                    price = pod_rate / total_w if total_w else 0.0
                # OpenCost's own price, observed; a catalog price is published as such below.
                if price > 0 and not s.mig_profile and weight == 1.0:
                    price_obs[s.model_name].append(price)
            utilization = s.utilization
            used = capacity * utilization
            usage = price * used
            deficit = req - used if req > used else 0.0
            unused = price * min(deficit, capacity * max(0.0, 1.0 - utilization))
            # Never less than what the usage basis moves to __idle__ for it (see below).
            unused = max(unused, billed - usage)
            tenant = pod_tenant.get(key) or hp.tenant(s, key)
            method = "mig" if s.mig_profile else "exclusive"
            measured.append((s, key, tenant, req, used, billed, usage, unused, method))
            continue
        unit_parts: list[tuple[GpuSample, PodKey, float, float, float]] = []
        if hami_unit is not None:
            unit_parts, moved = _hami_parts(holds, hami_unit, hp.hold_rates, catalog_priced)
            for (s, key, req, _, _), change in zip(unit_parts, moved, strict=True):
                if catalog_priced:
                    device_requested[s.uuid].append(req)
                elif change:
                    hami_moved[hp.tenant(s, key)].append(change)
                    hami_moved[IDLE_TENANT].append(-change)
                    row = pod_alloc.mutable(key)
                    row["gpu"] = row.get("gpu", 0.0) + change
            utils: list[float | None] = [hami_unit[p[1]][1] for p in unit_parts]
            for p, u in zip(unit_parts, utils, strict=True):
                if u is None:
                    held_keys.add((p[0].uuid, "", p[1][0], p[1][1]))
        else:
            for s, weight, key in holds:
                req = hp.requested(key, weight)
                billed, price = hp.hold_rates(key, weight, s, req)
                unit_parts.append((s, key, req, billed, price))
                if catalog_priced:
                    device_requested[s.uuid].append(req)
            utils = [p[0].utilization for p in unit_parts]
        # The physical device's price: its holders' (one node, one price; a mean guards
        # against OpenCost rounding each pod's figures).
        if hami_unit is not None:  # _hami_parts gave every hold the device's price
            price = unit_parts[0][4]
        else:
            price = math.fsum(p[4] for p in unit_parts) / len(unit_parts)
        time_shares, method = holding_shares(
            utils,
            [p[2] for p in unit_parts],
            mig=bool(unit_parts[0][0].mig_profile),
            hami=hami_unit is not None,
            per_process=any(p[0].per_process for p in unit_parts),
        )
        measured += _unused_split(unit_parts, time_shares, method, capacity, price, hp)
    return _Split(measured, price_obs, device_requested, hami_moved, held_keys)


def _unused_split(
    unit_parts: list[tuple[GpuSample, PodKey, float, float, float]],
    time_shares: list[float],
    method: str,
    capacity: float,
    price: float,
    hp: _HoldPricer,
) -> list[_Measured]:
    """A shared unit's holds with their use and unused cost. Holders' unused time: what each
    left of its request, bounded by the unit's rest. In dollars, never less than what a hold
    was billed beyond its use: OpenCost's rounded request (0.14286 for 1/7) bills a hair more
    than price x request, and the unused cost must cover every dollar the usage basis moves
    to __idle__."""
    left = max(0.0, 1.0 - math.fsum(time_shares))
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
    out: list[_Measured] = []
    for (s, key, req, billed, _), sh, d in zip(unit_parts, time_shares, deficits, strict=True):
        tenant = hp.tenant(s, key)
        used = capacity * sh
        unused = unused_total * d / total_deficit if total_deficit > 0 else 0.0
        out.append((s, key, tenant, req, used, billed, price * used, unused, method))
    return out


def _catalog_idle(
    samples: Iterable[GpuSample], device_requested: Mapping[str, list[float]], hp: _HoldPricer
) -> list[float]:
    """Catalog-priced: the USD/hour of every GPU's unrequested part (all of an unheld GPU),
    for ``__idle__``."""
    catalog_idle: list[float] = []
    devices = {s.uuid: s for s in samples}
    for uuid, dev in devices.items():
        rest = 1.0 - math.fsum(device_requested.get(uuid, ()))
        if rest > 1e-12:
            catalog_idle.append(hp.catalog_price(dev.model_name, dev.node) * rest)
    return catalog_idle


def _usage_scale(
    alloc_parts: Mapping[tuple[str, str], list[float]],
    catalog_idle: list[float],
    measured: list[_Measured],
    catalog_priced: bool,
) -> float:
    """How much of the usage above what holds were billed can be paid (1: all of it).

    Usage above what a hold was billed is paid from the money its device's idle time holds
    (OpenCost's __idle__ row, and holds that used less than billed). Where OpenCost's rows
    do not carry that time (no __idle__ row), the excess is scaled to what there is, so
    every basis still sums to the cluster total and no bucket goes negative."""
    idle_alloc_gpu = math.fsum(alloc_parts.get((IDLE_TENANT, "gpu"), ()))
    if catalog_priced:
        idle_alloc_gpu += math.fsum(catalog_idle)
    excess = math.fsum(max(0.0, m[6] - m[5]) for m in measured)
    pool = idle_alloc_gpu + math.fsum(max(0.0, m[5] - m[6]) for m in measured)
    return 1.0 if excess <= pool else max(0.0, pool) / excess


@dataclass(slots=True)
class _Booked:
    """Every hold booked on both bases (:func:`_book_holds`)."""

    shares: list[GpuShare]
    usage_gpu: dict[str, list[float]]  # usage-basis GPU parts per tenant
    extra_alloc_gpu: dict[str, list[float]]  # catalog-priced GPU cost per tenant
    measured_by_tenant: dict[str, list[float]]  # alloc rate of holds per tenant
    pod_shares: dict[PodKey, list[float]]  # per hold: alloc rate, usage rate, ...
    # Per basis, (tenant, method): the GPU USD/h the holds put there; the rest is added later.
    method_parts: dict[str, dict[tuple[str, str], list[float]]]


def _book_holds(
    split: _Split, scale: float, catalog_priced: bool, hami_idle: float, catalog_idle: list[float]
) -> _Booked:
    """Each hold as a :class:`GpuShare` and its dollars on both bases, per tenant, pod and
    split method; with ``scale < 1`` use above a bill is scaled down and no unused money is
    left in ``__idle__``.

    Column by column (one list per field of the holds), each grouping a C-level pass
    (:func:`_append_grouped`): a Python step per hold and bucket cost most of this at fleet
    scale. Every dict gets its keys in the order one pass over the holds would first meet
    them (dict order is observable downstream), so the result is the hold-by-hold one's."""
    usage_gpu: defaultdict[str, list[float]] = defaultdict(list)
    extra_alloc_gpu: defaultdict[str, list[float]] = defaultdict(list)
    measured_by_tenant: defaultdict[str, list[float]] = defaultdict(list)
    pod_shares: defaultdict[PodKey, list[float]] = defaultdict(list)
    alloc_methods: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    usage_methods: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    method_parts: dict[str, dict[tuple[str, str], list[float]]] = {
        "allocation": alloc_methods,
        "usage": usage_methods,
    }
    if hami_idle:
        alloc_methods[(IDLE_TENANT, "hami")].append(hami_idle)
        usage_methods[(IDLE_TENANT, "hami")].append(hami_idle)
    shares_out: list[GpuShare] = []
    if split.measured:
        samples, keys, tenants, reqs, useds, billeds, usages, unuseds, methods = map(
            list, zip(*split.measured, strict=True)
        )
        if scale < 1.0:
            # Every idle dollar paid someone's use: no unused money is left in __idle__.
            unuseds = [0.0] * len(unuseds)
            usages = [
                b + (u - b) * scale if u > b else u for b, u in zip(billeds, usages, strict=True)
            ]
        to_idle = list(map(sub, billeds, usages))
        tenant_methods = list(zip(tenants, methods, strict=True))
        idle_methods = [(IDLE_TENANT, m) for m in methods]
        if catalog_priced:
            _append_grouped(extra_alloc_gpu, tenants, billeds)
        # Each hold books its tenant, then __idle__: the keys in that interleaved order.
        _touch(usage_gpu, chain.from_iterable(zip(tenants, repeat(IDLE_TENANT))))
        _append_grouped(usage_gpu, tenants, usages)
        _append_grouped(usage_gpu, repeat(IDLE_TENANT), to_idle)
        _append_grouped(alloc_methods, tenant_methods, billeds)
        _touch(usage_methods, chain.from_iterable(zip(tenant_methods, idle_methods, strict=True)))
        _append_grouped(usage_methods, tenant_methods, usages)
        _append_grouped(usage_methods, idle_methods, to_idle)
        idle_keys = list(
            zip(
                map(_UUID, samples),
                [s.mig_instance or "" for s in samples],
                map(_FIRST, keys),
                map(_SECOND, keys),
                strict=True,
            )
        )
        held_keys = split.held_keys
        shares_out = _gpu_shares(
            tenants,
            list(map(_MODEL_NAME, samples)),
            reqs,
            useds,
            list(map(_UTILIZATION, samples)),
            billeds,
            usages,
            unuseds,
            idle_keys,
            methods,
            [k not in held_keys for k in idle_keys] if held_keys else [True] * len(idle_keys),
        )
        _append_grouped(measured_by_tenant, tenants, billeds)
        deque(
            map(list.extend, map(pod_shares.__getitem__, keys), zip(billeds, usages, strict=True)),
            0,
        )
    if catalog_idle:
        extra_alloc_gpu[IDLE_TENANT].extend(catalog_idle)
        usage_gpu[IDLE_TENANT].extend(catalog_idle)
    return _Booked(
        shares_out, usage_gpu, extra_alloc_gpu, measured_by_tenant, pod_shares, method_parts
    )


K2 = TypeVar("K2", bound=Hashable)
_UUID = attrgetter("uuid")
_MODEL_NAME = attrgetter("model_name")
_UTILIZATION = attrgetter("utilization")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


def _touch(groups: defaultdict[K2, list[float]], keys: Iterable[K2]) -> None:
    """Create ``groups``' missing lists for ``keys``, in that order (C-level)."""
    deque(map(groups.__getitem__, keys), 0)


def _append_grouped(
    groups: defaultdict[K2, list[float]], keys: Iterable[K2], values: Iterable[float]
) -> None:
    """``groups[key].append(value)`` for each pair, as one C-level pass (no Python step per
    value): new keys are added in the order they come."""
    deque(map(list.append, map(groups.__getitem__, keys), values), 0)


def _gpu_shares(*columns: Sequence[Any]) -> list[GpuShare]:
    """One :class:`GpuShare` per row of ``columns`` (one sequence per field, in field
    order), ``GpuShare(*row)`` each, in one C-level pass."""
    return list(map(GpuShare, *columns))


def _allocation_rates(
    alloc_parts: Mapping[tuple[str, str], list[float]],
    extra_alloc_gpu: Mapping[str, list[float]],
    catalog_priced: bool,
) -> dict[tuple[str, str], float]:
    """The allocation basis: OpenCost's rows, plus the catalog-priced holds and idle GPUs
    where OpenCost billed no GPU."""
    allocation_rates: dict[tuple[str, str], float] = {
        k: math.fsum(v) for k, v in alloc_parts.items()
    }
    if catalog_priced:
        for tenant, parts in extra_alloc_gpu.items():
            allocation_rates[(tenant, "gpu")] = allocation_rates.get(
                (tenant, "gpu"), 0.0
            ) + math.fsum(parts)
    return allocation_rates


def _usage_rates(
    allocation_rates: Mapping[tuple[str, str], float], booked: _Booked, catalog_priced: bool
) -> dict[tuple[str, str], float]:
    """The usage basis: the allocation basis with each tenant's GPU rate replaced by what its
    holds used (and ``__idle__``'s by the rest)."""
    usage_rates = {k: v for k, v in allocation_rates.items() if k[1] != "gpu"}
    gpu_parts: dict[str, list[float]] = defaultdict(list)
    for tenant, parts in booked.usage_gpu.items():
        gpu_parts[tenant].extend(parts)
    if not catalog_priced:
        # GPU cost not carried by a measured unit keeps its allocation-basis owner:
        # OpenCost's idle row, unmeasured pods, and the unallocated bucket.
        for (tenant, resource), value in allocation_rates.items():
            if resource != "gpu":
                continue
            rest = value - math.fsum(booked.measured_by_tenant.get(tenant, []))
            if abs(rest) > 1e-12:
                gpu_parts[tenant].append(rest)
    for tenant, parts in gpu_parts.items():
        total = math.fsum(parts)
        if total or (tenant, "gpu") in allocation_rates:
            usage_rates[(tenant, "gpu")] = total
    return usage_rates


def _fold_shares_and_methods(
    shares: list[GpuShare],
    method_rates: Mapping[str, Mapping[tuple[str, str], float]],
    rates_by_basis: Mapping[str, Mapping[tuple[str, str], float]],
) -> tuple[list[GpuShare], dict[str, dict[tuple[str, str], float]]]:
    """The shares and the rates by split method of the tenants folded into ``__other__``
    (those no longer in ``rates_by_basis``) moved there."""
    kept = {t for basis in rates_by_basis.values() for (t, _) in basis}
    folded_methods = {
        basis: remap_tenants(rates, {t: OTHER_TENANT for (t, _) in rates if t not in kept})
        for basis, rates in method_rates.items()
    }
    return fold_shares(shares, rates_by_basis), folded_methods


def _cluster_totals(allocation: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """The cluster total per resource, which every basis sums to."""
    by_resource: dict[str, list[float]] = defaultdict(list)
    for (_, r), v in allocation.items():
        by_resource[r].append(v)
    return {resource: math.fsum(by_resource.get(resource, ())) for resource in RESOURCES}


def _published_gpu_prices(
    price_obs: dict[str, list[float]],
    samples: Iterable[GpuSample],
    hp: _HoldPricer,
    catalog_priced: bool,
) -> dict[tuple[str, str], float]:
    """The GPU price per (model, source) in use: OpenCost's (the median observed), else the
    catalog's.

    The catalog (an override, an owned entry) prices GPUs only where OpenCost prices none:
    publish it as in use only then, never beside OpenCost's price. Owned node pools may price
    one model differently per node: the median device's price (and its source) is published."""
    gpu_prices: dict[tuple[str, str], float] = {}
    for model, obs in price_obs.items():
        obs.sort()
        gpu_prices[(model, "opencost")] = obs[len(obs) // 2]
    by_model: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for s in {s.uuid: s for s in samples}.values() if catalog_priced else ():
        found = hp.catalog_found(s.model_name, s.node)
        if found is not None:
            by_model[s.model_name].append(found)
    for model, found_prices in by_model.items():
        found_prices.sort()
        value, source = found_prices[len(found_prices) // 2]
        gpu_prices[(model, source)] = value
    return gpu_prices


def _method_rates(
    rates: Mapping[tuple[str, str], float], parts: Mapping[tuple[str, str], list[float]]
) -> dict[tuple[str, str], float]:
    """Each tenant's GPU USD/hour on one basis by split method: what its holds carried
    (``parts``), and the rest of its GPU rate (OpenCost's idle row, pods DCGM does not see,
    unrequested capacity) as ``request_share``. Per tenant the methods sum to its GPU rate.

    A method can carry less than nothing into ``__idle__`` (use above what a hold was billed
    is paid from idle money): its dollars are taken from the tenant's other methods in
    proportion, so every figure is >= 0 and the sum is unchanged."""
    # Each method's dollars summed once per tenant (keys are unique: one list each).
    by_tenant: dict[str, dict[str, float]] = defaultdict(dict)
    for (tenant, method), values in parts.items():
        by_tenant[tenant][method] = math.fsum(values)
    out: dict[tuple[str, str], float] = {}
    for (tenant, resource), value in rates.items():
        if resource != "gpu" or value <= 0:
            continue
        methods = dict(by_tenant.get(tenant, {}))
        rest = value - math.fsum(methods.values())
        methods["request_share"] = methods.get("request_share", 0.0) + rest
        positive = {m: v for m, v in methods.items() if v > 1e-12}
        total = math.fsum(positive.values())
        if total <= 0:
            continue
        k = value / total
        for m, v in positive.items():
            out[(tenant, m)] = v * k
    return out


def follow_gpu_rates(
    method_rates: Mapping[str, Mapping[tuple[str, str], float]],
    rates: Mapping[str, Mapping[tuple[str, str], float]],
) -> dict[str, dict[tuple[str, str], float]]:
    """``method_rates`` made to follow each tenant's final GPU rate in ``rates`` after the
    token charge-back moved serving pods' GPU cost between tenants (and folding merged some):
    a tenant whose GPU dollars fell keeps its method mix, scaled down; the dollars it gave
    up, with their methods, go to the tenants whose GPU dollars rose, in proportion to the
    rise. Per basis the total is unchanged; per tenant the methods sum to its GPU rate."""
    out: dict[str, dict[tuple[str, str], float]] = {}
    for basis, by_method in method_rates.items():
        final = {t: v for (t, r), v in rates.get(basis, {}).items() if r == "gpu" and v > 0}
        mix: dict[str, dict[str, float]] = defaultdict(dict)
        for (tenant, method), usd in by_method.items():
            # A tenant folded away since: its dollars are __other__'s now.
            owner = tenant if tenant in final or tenant in _SENTINELS else OTHER_TENANT
            mix[owner][method] = mix[owner].get(method, 0.0) + usd
        pool: dict[str, list[float]] = defaultdict(list)
        rises: dict[str, float] = {}
        result: dict[tuple[str, str], float] = {}
        # In first-met order, not a set's: the result's key order must not depend on
        # PYTHONHASHSEED.
        for tenant in dict.fromkeys([*mix, *final]):
            methods = mix.get(tenant, {})
            had = math.fsum(methods.values())
            now = final.get(tenant, 0.0)
            if now > had + 1e-12:
                rises[tenant] = now - had
                k = 1.0
            else:
                k = now / had if had > 0 else 0.0
            for method, usd in methods.items():
                if usd * k > 1e-12:
                    result[(tenant, method)] = usd * k
                if k < 1.0:
                    pool[method].append(usd * (1.0 - k))
        pooled = {m: math.fsum(v) for m, v in pool.items()}
        pool_total = math.fsum(pooled.values())
        for tenant, rise in rises.items():
            shares = (
                {m: v / pool_total for m, v in pooled.items() if v > 0}
                if pool_total > 0
                else {"request_share": 1.0}
            )
            for method, share in shares.items():
                key = (tenant, method)
                result[key] = result.get(key, 0.0) + rise * share
        out[basis] = result
    return out


HoldRates = Callable[[PodKey, float, GpuSample, float], tuple[float, float]]


def _hami_parts(
    holds: list[tuple[GpuSample, float, PodKey]],
    unit: Mapping[PodKey, tuple[float, float | None]],
    hold_rates: HoldRates,
    catalog_priced: bool,
) -> tuple[list[tuple[GpuSample, PodKey, float, float, float]], list[float]]:
    """A HAMi device's holds as ``(sample, pod, billing share, billed USD/h, device price)``,
    and how much each hold's billed rate changed from OpenCost's (0 when catalog-priced: the
    catalog already bills price x share).

    OpenCost-priced: each pod is billed the device's price × its share; where OpenCost billed
    the holders less than that in all, the shares split what it billed. Either way the
    holders' total never exceeds OpenCost's, and the difference is the device's ``__idle__``.
    """
    rows = []
    for s, weight, key in holds:
        share = unit[key][0]
        billed, price = hold_rates(key, weight, s, share)
        rows.append((s, key, share, billed, price))
    if catalog_priced:
        return rows, [0.0] * len(rows)
    priced = [r[4] for r in rows if r[4] > 0]
    price = math.fsum(priced) / len(priced) if priced else 0.0
    pool = math.fsum(r[3] for r in rows)
    want = price * math.fsum(r[2] for r in rows)
    k = pool / want if want > pool else 1.0
    parts = []
    moved = []
    for s, key, share, billed_oc, _ in rows:
        billed = price * share * k
        parts.append((s, key, share, billed, price))
        moved.append(billed - billed_oc)
    return parts, moved


def _pod_rates(
    alloc: PodRates,
    pod_shares: Mapping[PodKey, list[float]],
    catalog_priced: bool,
    with_usage: bool,
) -> dict[str, PodRates]:
    """Each pod's USD/hour per resource on each basis, consistent with the tenant rates:
    the allocation basis is OpenCost's rows (``alloc``, plus the catalog-priced GPU holds
    when OpenCost prices no GPU); the usage basis replaces a measured pod's GPU rate by its
    usage rate. ``pod_shares`` holds each measured pod's allocation and usage GPU rates,
    alternating, one pair per hold. The usage basis shares the allocation basis' columns
    and changes only the measured pods' GPU rates (:meth:`PodRates.with_gpu`)."""
    if catalog_priced:
        for key, rates in pod_shares.items():
            d = alloc.mutable(key)
            d["gpu"] = d.get("gpu", 0.0) + math.fsum(rates[0::2])
    out = {"allocation": alloc}
    if with_usage:
        out["usage"] = alloc.with_gpu(
            {key: math.fsum(rates[1::2]) for key, rates in pod_shares.items()}
        )
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
                s.method,
                s.measured,
            )
        out.append(s)
    return out
