"""The answer key: what a correct exporter must publish for the cluster at ``now``.

Computed from the pod list with the simulator's own small implementation of the money rules
(allocation basis from OpenCost's rounded rows, usage basis re-splitting each GPU unit by the
DCGM samples), never with the exporter's model or sources: the key must not share code with
the code it checks (tests/demo/test_cluster.py reads this package's imports to hold that).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aifinops.demo.cluster.activity import Sample, samples
from aifinops.demo.cluster.layout import Layout
from aifinops.demo.cluster.opencost import idle_costs, pod_charges
from aifinops.demo.cluster.records import UnitKey
from aifinops.demo.cluster.spec import (
    IDLE_TENANT,
    RESOURCES,
    UNALLOCATED_TENANT,
    UTILIZATION_METRICS,
)
from aifinops.demo.cluster.wire import opencost_round

if TYPE_CHECKING:
    from aifinops.demo.shared_key import BillingShare


@dataclass(frozen=True, slots=True)
class IdleHold:
    """One pod's hold on a GPU unit whose DCGM sample is under the idle threshold."""

    tenant: str
    gpu_model: str
    node: str
    uuid: str
    mig_instance: str | None
    mig_profile: str | None
    namespace: str
    pod: str
    held: float
    utilization: float
    cost_usd_per_hour: float


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What a correct exporter must publish for this cluster at ``now``.

    ``cost[(basis, tenant, resource)]`` is USD per hour averaged over the OpenCost window
    (window cost / ``window_hours``), for bases ``allocation`` and ``usage`` and resources
    :data:`RESOURCES`; tenants include ``__idle__`` and ``__unallocated__``; missing keys are 0.
    ``cluster[resource]`` is the total every basis sums to.

    GPU-equivalents are instantaneous at ``now`` and count only holds DCGM attributes to a pod
    and measures with ``metric``: ``gpus_allocated`` adds the request (1, slices/7, or 1/k for
    one of k time-slice replicas), ``gpus_used`` the hold's share of the physical GPU's time,
    keyed by ``(tenant, gpu_model)``. Usage basis, GPU: a hold costs its device's price × that
    share; ``gpu_unused_cost`` is price × what the hold left of its request (bounded by the
    unit's unused time), booked to ``__idle__``; ``__idle__`` is the cluster's GPU dollars no
    tenant pays. ``idle_gpus`` /
    ``idle_gpu_cost`` sum the holds whose own sample is under ``idle_threshold`` (held
    GPU-equivalents; their allocation-basis GPU rate in USD/h). ``unmeasured_pods`` have GPU
    cost in the window but no DCGM sample at ``now``; they keep their allocation GPU cost.
    """

    now: float
    window_hours: float
    metric: str
    idle_threshold: float
    cost: Mapping[tuple[str, str, str], float]
    cluster: Mapping[str, float]
    gpus_allocated: Mapping[tuple[str, str], float]
    gpus_used: Mapping[tuple[str, str], float]
    gpu_unused_cost: Mapping[tuple[str, str], float]
    idle_gpus: Mapping[tuple[str, str], float]
    idle_gpu_cost: Mapping[tuple[str, str], float]
    idle_holds: tuple[IdleHold, ...]
    unmeasured_pods: tuple[tuple[str, str], ...]
    tenants: tuple[str, ...]

    def rate(self, basis: str, tenant: str, resource: str) -> float:
        """USD/h for one (basis, tenant, resource); 0 when absent."""
        return self.cost.get((basis, tenant, resource), 0.0)

    def tenant_total(self, basis: str, tenant: str) -> float:
        """USD/h of one tenant over all resources."""
        return math.fsum(v for (b, t, _), v in self.cost.items() if b == basis and t == tenant)

    def basis_total(self, basis: str, resource: str) -> float:
        """USD/h of one resource summed over every tenant (equals ``cluster[resource]``)."""
        return math.fsum(v for (b, _, r), v in self.cost.items() if b == basis and r == resource)


def ground_truth(
    layout: Layout,
    now: float,
    window_hours: float = 1.0,
    *,
    metric: str = "auto",
    idle_threshold: float = 0.05,
    billing_share: BillingShare = "cores",
    core_weight: float = 0.5,
) -> GroundTruth:
    """The answer key at ``now`` for an OpenCost window of ``window_hours`` and DCGM
    ``metric`` (see :class:`GroundTruth` and the rules in the exporter's cost model).

    Computed from the pod list: each pod run's OpenCost cost (as OpenCost rounds it) over
    the window, divided by ``window_hours``; the usage basis re-splits each GPU unit's rate
    by the DCGM samples at ``now``. The GPU dollars and GPU-equivalents of the shared pools'
    pods (``spec.shared_gpus``) are demo/shared_key.py's, with HAMi's ``billing_share`` and
    ``core_weight``; what OpenCost billed them beyond that is ``__idle__``'s; their idle GPUs
    are the key's too (not in ``idle_holds``). Their unused GPU cost is not modelled here.
    """
    if metric not in UTILIZATION_METRICS:
        raise ValueError(f"metric must be one of {UTILIZATION_METRICS}, got {metric!r}")
    wh = window_hours
    charges = pod_charges(layout, now, wh)
    parts: dict[tuple[str, str, str], list[float]] = defaultdict(list)

    def add(basis: str, tenant: str, resource: str, value: float) -> None:
        parts[(basis, tenant, resource)].append(value)

    shared_pods = (
        {(p.namespace, p.name) for p in layout.shared.pods} if layout.shared is not None else set()
    )
    shared_billed: list[float] = []  # OpenCost's GPU dollars of the shared pools' pods
    for c in charges:
        shared = (c.run.pod.namespace, c.run.pod.name) in shared_pods
        for resource, dollars in c.resource_costs().items():
            if resource == "gpu" and shared:
                shared_billed.append(dollars / wh)
                continue
            add("allocation", c.tenant, resource, dollars / wh)
            if resource != "gpu":
                add("usage", c.tenant, resource, dollars / wh)
    idle = idle_costs(layout, charges, wh)
    r = opencost_round
    for resource in RESOURCES:
        value = {"cpu": r(idle["cpu"]), "ram": r(idle["ram"]), "gpu": r(idle["gpu"])}.get(
            resource, 0.0
        )
        add("allocation", IDLE_TENANT, resource, value / wh)
        add("usage", IDLE_TENANT, resource, value / wh)

    # --- usage basis, GPU: the physical-device rule ----------------------------------
    # A hold costs its device's price × its share of the device's time; what a holder
    # left of its request is its unused cost; __idle__ is whatever the tenants do not pay.
    gpu_rate = {c.run.name + "\x00" + c.run.pod.namespace: c.gpu / wh for c in charges}
    sampled: dict[UnitKey, list[tuple[Sample, float]]] = defaultdict(list)
    for s in samples(layout, now):
        u_read = s.utilization(metric)
        if s.run is not None and u_read is not None:
            sampled[(s.gpu.uuid, s.mig.gi_id if s.mig else "")].append((s, u_read))
    measured: set[str] = set()
    allocated: dict[tuple[str, str], list[float]] = defaultdict(list)
    used: dict[tuple[str, str], list[float]] = defaultdict(list)
    unused: dict[tuple[str, str], list[float]] = defaultdict(list)
    idle_n: dict[tuple[str, str], list[float]] = defaultdict(list)
    idle_cost: dict[tuple[str, str], list[float]] = defaultdict(list)
    idle_holds: list[IdleHold] = []
    for unit, unit_samples in sampled.items():
        first = unit_samples[0][0]
        model_ = first.gpu.model
        # The unit's part of its physical GPU: a MIG instance's slices, else all of it.
        part = first.mig.slices / model_.mig_slices if first.mig else 1.0
        holds = []  # sample, utilization read, request, billed USD/h, tenant, price
        for s, u_read in unit_samples:
            assert s.run is not None
            pod = s.run.pod
            run_key = s.run.name + "\x00" + pod.namespace
            measured.add(run_key)
            hold = next(h for h in pod.holds if h.unit == unit)
            billed = gpu_rate.get(run_key, 0.0) * hold.fraction / pod.gpu_count
            tenant = layout.tenant_of(pod)
            price = model_.usd_per_hour * layout.cost_multiplier(tenant)
            holds.append((s, u_read, hold.fraction, billed, tenant, price))
        price = math.fsum(h[5] for h in holds) / len(holds)
        reads = [h[1] for h in holds]
        if len(holds) == 1:
            fractions = reads  # of the unit's time
        elif max(reads) == min(reads):
            # The device's figure on every pod: split by request (the exporter's rule).
            req_total = math.fsum(h[2] for h in holds)
            fractions = [reads[0] * h[2] / req_total for h in holds]
        elif math.fsum(reads) > 1.0:
            fractions = [u / math.fsum(reads) for u in reads]
        else:
            fractions = reads
        device_share = [part * f for f in fractions]  # of the physical GPU's time
        rest = part * (1.0 - math.fsum(fractions))
        short = [max(0.0, h[2] - m) for h, m in zip(holds, device_share, strict=True)]
        unused_total = price * min(math.fsum(short), max(0.0, rest))
        for h, m, d in zip(holds, device_share, short, strict=True):
            s, u_raw, req, billed, tenant, _ = h
            model = model_.name
            add("usage", tenant, "gpu", price * m)
            unused[(tenant, model)].append(
                unused_total * d / math.fsum(short) if math.fsum(short) > 0 else 0.0
            )
            allocated[(tenant, model)].append(req)
            used[(tenant, model)].append(m)
            if u_raw < idle_threshold:
                assert s.run is not None
                idle_n[(tenant, model)].append(req)
                idle_cost[(tenant, model)].append(billed)
                idle_holds.append(
                    IdleHold(
                        tenant=tenant,
                        gpu_model=model,
                        node=s.gpu.node,
                        uuid=s.gpu.uuid,
                        mig_instance=s.mig.gi_id if s.mig else None,
                        mig_profile=s.mig.profile if s.mig else None,
                        namespace=s.run.pod.namespace,
                        pod=s.run.name,
                        held=req,
                        utilization=u_raw,
                        cost_usd_per_hour=billed,
                    )
                )
    if layout.shared is not None:
        key = layout.shared.key(
            now,
            wh,
            billing_share=billing_share,
            core_weight=core_weight,
            idle_threshold=idle_threshold,
        )
        for (basis, tenant), value in key.cost.items():
            add(basis, tenant, "gpu", value)
        # What OpenCost billed the shared pods beyond their shares (a whole GPU per HAMi
        # container, OpenCost #3828) is capacity nobody uses: __idle__'s, on allocation.
        add(
            "allocation",
            IDLE_TENANT,
            "gpu",
            math.fsum(shared_billed) - key.rate_total("allocation"),
        )
        for k, v in key.gpus_by_model.items():
            allocated[k].append(v)
        for k, v in key.used_by_model.items():
            used[k].append(v)
        for k, v in key.idle_gpus.items():
            idle_n[k].append(v)
        for k, v in key.idle_gpu_cost.items():
            idle_cost[k].append(v)
    unmeasured: list[tuple[str, str]] = []
    for c in charges:
        run_key = c.run.name + "\x00" + c.run.pod.namespace
        if (c.run.pod.namespace, c.run.pod.name) in shared_pods:
            continue
        if c.gpu and run_key not in measured:
            add("usage", c.tenant, "gpu", c.gpu / wh)
            unmeasured.append((c.run.pod.namespace, c.run.name))
    # __idle__ (usage, GPU): the cluster's GPU dollars no tenant pays under this basis.
    paid = math.fsum(
        v
        for (b, t, r_), vs in parts.items()
        if b == "usage" and r_ == "gpu" and t != IDLE_TENANT
        for v in vs
    )
    all_gpu = math.fsum(
        v for (b, _, r_), vs in parts.items() if b == "allocation" and r_ == "gpu" for v in vs
    )
    parts[("usage", IDLE_TENANT, "gpu")] = [all_gpu - paid]

    cost = {k: math.fsum(v) for k, v in parts.items()}
    cluster = {
        res: math.fsum(v for (b, _, r_), v in cost.items() if b == "allocation" and r_ == res)
        for res in RESOURCES
    }
    tenants = sorted({t for (_, t, _) in cost} | {IDLE_TENANT, UNALLOCATED_TENANT})
    return GroundTruth(
        now=now,
        window_hours=wh,
        metric=metric,
        idle_threshold=idle_threshold,
        cost=cost,
        cluster=cluster,
        gpus_allocated=_fsum_map(allocated),
        gpus_used=_fsum_map(used),
        gpu_unused_cost=_fsum_map(unused),
        idle_gpus=_fsum_map(idle_n),
        idle_gpu_cost=_fsum_map(idle_cost),
        idle_holds=tuple(idle_holds),
        unmeasured_pods=tuple(sorted(unmeasured)),
        tenants=tuple(tenants),
    )


def summary(layout: Layout, now: float, window_hours: float = 1.0) -> dict[str, Any]:
    """A human-readable shape of the cluster at ``now`` (for docs, logs and the report)."""
    gt = ground_truth(layout, now, window_hours)
    gpus: dict[str, int] = defaultdict(int)
    for n in layout.nodes:
        for g in n.gpus:
            gpus[f"{g.model.name} ({g.sharing})"] += 1
    return {
        "nodes": len(layout.nodes),
        "gpus": dict(sorted(gpus.items())),
        "mig_instances": sum(len(g.mig) for n in layout.nodes for g in n.gpus),
        "pods": len(layout.pods),
        "gpu_pods": sum(1 for p in layout.pods if p.holds),
        "tenants": list(gt.tenants),
        "cluster_usd_per_hour": {k: round(v, 4) for k, v in gt.cluster.items()},
        "total_usd_per_hour": round(math.fsum(gt.cluster.values()), 4),
    }


def _fsum_map(parts: Mapping[tuple[str, str], Iterable[float]]) -> dict[tuple[str, str], float]:
    return {k: math.fsum(v) for k, v in sorted(parts.items())}
