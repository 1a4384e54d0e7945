"""OpenCost's ``/allocation/compute`` answer: one row per pod run over the window plus the
``__idle__`` row, every number rounded as OpenCost rounds it, and its window grammar.

Every pod has one container; OpenCost's ``totalCost`` and per-field rounding (5 decimals, as
its ``formatFloat64ForResponse``) are reproduced, and the answer key uses the rounded numbers,
exactly as a reader of the JSON sees them.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aifinops.demo.cluster.activity import samples
from aifinops.demo.cluster.hashing import hash_unit
from aifinops.demo.cluster.layout import Layout
from aifinops.demo.cluster.records import PodRun
from aifinops.demo.cluster.spec import GIB, GPU_MODELS
from aifinops.demo.cluster.wire import opencost_round


def rfc3339(ts: float) -> str:
    """Unix seconds → ``2006-01-02T15:04:05Z`` (Go's ``time.RFC3339`` in UTC, whole seconds)."""
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(m|h|d|w)$")


def opencost_window_hours(window: str, now: float) -> float:
    """Length in hours of an OpenCost ``window`` ending at ``now``.

    Accepts durations (``30m``, ``1h``, ``2d``, ``1w``), ``today`` and ``month`` (UTC calendar,
    up to ``now``), ``<unix start>,<unix end>`` and ``<RFC 3339 start>,<RFC 3339 end>`` (the
    window must end at ``now``'s second or earlier; only its length is used). Raises
    ``ValueError`` for anything else.
    """
    start, end = opencost_window_bounds(window, now, cap=False)
    return (end - start) / 3600.0


def opencost_duration_hours(text: str) -> float:
    """An OpenCost duration (``30m``, ``1h``, ``1d``, ``1w``) in hours; ``ValueError`` else."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"illegal duration: {text}")
    hours = float(m.group(1)) * {"m": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}[m.group(2)]
    if not hours > 0:
        raise ValueError(f"illegal duration: {text}")
    return hours


def opencost_window_bounds(window: str, now: float, *, cap: bool = True) -> tuple[float, float]:
    """``(start, end)`` unix seconds of an OpenCost ``window`` at ``now`` (see
    :func:`opencost_window_hours` for the forms). Durations, ``today`` and ``month`` end at
    ``now``; a pair is taken as given, its end capped at ``now`` when ``cap`` (OpenCost has no
    data from the future). Raises ``ValueError`` for an illegal or empty window."""
    text = window.strip()
    if _DURATION.match(text):
        start, end = now - opencost_duration_hours(text) * 3600.0, now
    elif text in ("today", "month"):
        day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = (day if text == "today" else day.replace(day=1)).timestamp(), now
    elif re.fullmatch(r"\d+(\.\d+)?,\d+(\.\d+)?", text):
        start, end = (float(x) for x in text.split(","))
    elif text.count(",") == 1:
        try:
            a, b = (_rfc3339_seconds(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"illegal window: {window}") from None
        start, end = a, b
    else:
        raise ValueError(f"illegal window: {window}")
    if cap:
        end = min(end, now)
    if not end > start:
        raise ValueError(f"illegal window: {window}")
    return start, end


def _rfc3339_seconds(text: str) -> float:
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 3339 time needs a zone: {text}")
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Charge:
    """One OpenCost row for one pod run over the window, every field as OpenCost prints it."""

    run: PodRun
    tenant: str
    start: float
    end: float
    hours: float
    multiplier: float
    cpu: float
    cpu_adj: float
    ram: float
    ram_adj: float
    gpu: float
    pv: float
    network: float
    network_zone: float
    network_region: float
    network_internet: float
    lb: float
    shared: float
    external: float
    total: float
    raw_cpu: float  # unscaled, unrounded: for OpenCost's idle row
    raw_ram: float
    raw_gpu: float

    def resource_costs(self) -> dict[str, float]:
        """Dollars over the window per exporter resource (cost + adjustment)."""
        return {
            "gpu": self.gpu,
            "cpu": self.cpu + self.cpu_adj,
            "ram": self.ram + self.ram_adj,
            "storage": self.pv,
            "network": self.network + self.lb,
            "shared": self.shared + self.external,
        }


def pod_charges(layout: Layout, now: float, window_hours: float) -> list[Charge]:
    """Every pod run's OpenCost row over ``[now − window_hours, now]``."""
    spec = layout.spec
    ws, we = now - window_hours * 3600.0, now
    out: list[Charge] = []
    r = opencost_round
    for pod in layout.pods:
        tenant = layout.tenant_of(pod)
        mult = layout.cost_multiplier(tenant)
        gpu_price = GPU_MODELS[pod.holds[0].model].usd_per_hour if pod.holds else 0.0
        for run in layout.runs(pod, ws, we):
            start, end = max(run.start, ws), min(run.end, we)
            hours = (end - start) / 3600.0
            if hours <= 0:
                continue
            raw_cpu = pod.cpu_cores * hours * spec.cpu_usd_per_core_hour
            raw_ram = pod.ram_bytes / GIB * hours * spec.ram_usd_per_gib_hour
            raw_gpu = pod.gpu_count * hours * gpu_price
            raw_pv = pod.pv_gib * hours * spec.pv_usd_per_gib_hour * mult
            net = pod.network_usd_per_hour * hours * mult
            zone, region = net * 0.5, net * 0.2
            internet = net - zone - region
            lb = pod.lb_usd_per_hour * hours * mult
            shared = pod.shared_usd_per_hour * hours * mult
            external = pod.external_usd_per_hour * hours * mult
            cpu, ram, gpu = raw_cpu * mult, raw_ram * mult, raw_gpu * mult
            cpu_adj, ram_adj = cpu * pod.cost_adjustment, ram * pod.cost_adjustment
            total = cpu + cpu_adj + ram + ram_adj + gpu + raw_pv + net + lb + shared + external
            out.append(
                Charge(
                    run=run,
                    tenant=tenant,
                    start=start,
                    end=end,
                    hours=hours,
                    multiplier=mult,
                    cpu=r(cpu),
                    cpu_adj=r(cpu_adj),
                    ram=r(ram),
                    ram_adj=r(ram_adj),
                    gpu=r(gpu),
                    pv=r(raw_pv),
                    network=r(net),
                    network_zone=r(zone),
                    network_region=r(region),
                    network_internet=r(internet),
                    lb=r(lb),
                    shared=r(shared),
                    external=r(external),
                    total=r(total),
                    raw_cpu=raw_cpu,
                    raw_ram=raw_ram,
                    raw_gpu=raw_gpu,
                )
            )
    return out


def idle_costs(layout: Layout, charges: Sequence[Charge], window_hours: float) -> dict[str, float]:
    """OpenCost's ``__idle__`` row: capacity over the window minus what pods requested
    (unscaled), per resource: dollars (``cpu``, ``ram``, ``gpu``, unrounded) and quantities
    (``cpu_core_hours``, ``ram_byte_hours``, ``gpu_hours``)."""
    spec = layout.spec
    cap_cpu = math.fsum(n.cpu_cores for n in layout.nodes) * window_hours
    cap_ram = math.fsum(n.ram_bytes for n in layout.nodes) * window_hours
    cap_gpu_h = sum(len(n.gpus) for n in layout.nodes) * window_hours
    cap_gpu = math.fsum(g.model.usd_per_hour for n in layout.nodes for g in n.gpus) * window_hours
    used_cpu = math.fsum(c.run.pod.cpu_cores * c.hours for c in charges)
    used_ram = math.fsum(c.run.pod.ram_bytes * c.hours for c in charges)
    used_gpu_h = math.fsum(c.run.pod.gpu_count * c.hours for c in charges)
    return {
        "cpu": max(
            0.0, cap_cpu * spec.cpu_usd_per_core_hour - math.fsum(c.raw_cpu for c in charges)
        ),
        "ram": max(
            0.0,
            cap_ram / GIB * spec.ram_usd_per_gib_hour - math.fsum(c.raw_ram for c in charges),
        ),
        "gpu": max(0.0, cap_gpu - math.fsum(c.raw_gpu for c in charges)),
        "cpu_core_hours": max(0.0, cap_cpu - used_cpu),
        "ram_byte_hours": max(0.0, cap_ram - used_ram),
        "gpu_hours": max(0.0, cap_gpu_h - used_gpu_h),
    }


def allocation(
    layout: Layout,
    now: float,
    window_hours: float = 1.0,
    *,
    aggregate: str = "namespace,pod",
    include_idle: bool = True,
) -> dict[str, Any]:
    """OpenCost ``/allocation/compute?window=…&aggregate=namespace,pod&includeIdle=true
    &accumulate=true`` JSON over ``[now − window_hours, now]``.

    ``aggregate`` is ``"namespace,pod"`` (keys ``namespace/pod``) or ``""`` (OpenCost's
    default: one row per container, keyed ``cluster/node/namespace/pod/container``); other
    values raise ``ValueError``. Numbers are rounded as OpenCost rounds them.
    """
    agg = ",".join(sorted(p.strip() for p in aggregate.split(",") if p.strip()))
    if agg not in ("namespace,pod", ""):
        raise ValueError(f"unsupported aggregate {aggregate!r}")
    ws, we = now - window_hours * 3600.0, now
    window = {"start": rfc3339(ws), "end": rfc3339(we)}
    charges = pod_charges(layout, now, window_hours)
    engine: dict[tuple[str, str], list[float]] = defaultdict(list)
    for smp in samples(layout, now):
        if smp.run is not None:
            engine[(smp.run.pod.namespace, smp.run.name)].append(smp.engine_milli / 1000.0)
    rows: dict[str, Any] = {}
    for c in charges:
        pod = c.run.pod
        if agg:
            key = f"{pod.namespace}/{c.run.name}"
        else:
            key = "/".join(
                (layout.spec.cluster_name, pod.node, pod.namespace, c.run.name, pod.container)
            )
        parts = engine.get((pod.namespace, c.run.name), [])
        gpu_engine = math.fsum(parts) / len(parts) if parts else 0.0
        rows[key] = _allocation_json(layout, key, c, window, gpu_engine)
    if include_idle:
        rows["__idle__"] = idle_json(layout, charges, window_hours, window)
    return {"code": 200, "status": "success", "data": [rows]}


def _allocation_json(
    layout: Layout, key: str, c: Charge, window: Mapping[str, str], engine: float
) -> dict[str, Any]:
    """One OpenCost allocation object; ``engine`` is the pod's mean GR-engine ratio now."""
    r = opencost_round
    pod = c.run.pod
    node = layout.node_by_name[pod.node]
    labels, ns_labels = layout.visible_labels(pod)
    m = c.multiplier
    cpu = pod.cpu_cores * m
    ram = pod.ram_bytes * m
    cpu_use = cpu * (0.2 + 0.7 * hash_unit(pod.name, "cpu"))
    ram_use = ram * (0.3 + 0.6 * hash_unit(pod.name, "ram"))
    minutes = c.hours * 60.0
    gpus = pod.gpu_count
    gpu_usage = gpus * engine
    pv_bytes = pod.pv_gib * GIB * m
    cpu_eff = cpu_use / cpu if cpu else 0.0
    ram_eff = ram_use / ram if ram else 0.0
    total_eff = (
        (cpu_use / cpu * c.cpu + ram_use / ram * c.ram) / (c.cpu + c.ram)
        if c.cpu + c.ram > 0 and cpu and ram
        else 0.0
    )
    properties: dict[str, Any] = {
        "cluster": layout.spec.cluster_name,
        "node": pod.node,
        "container": pod.container,
        "controller": pod.controller,
        "controllerKind": pod.controller_kind,
        "namespace": pod.namespace,
        "pod": c.run.name,
        "providerID": node.provider_id,
        "labels": dict(sorted(labels.items())),
        "namespaceLabels": dict(sorted(ns_labels.items())),
    }
    if pod.lb_service:
        properties["services"] = [pod.lb_service]
    gpu_allocation: dict[str, Any] | None = None
    if pod.holds:
        first = pod.holds[0]
        gpu = next(g for g in node.gpus if g.uuid == first.uuid)
        gpu_allocation = {
            "gpuDevice": f"nvidia{gpu.index}",
            "gpuModel": first.model,
            "gpuUUID": first.uuid,
            "isGPUShared": gpu.sharing == "timeslice",
            "gpuUsageAverage": r(gpu_usage),
            "gpuRequestAverage": r(gpus),
        }
    pvs: dict[str, Any] | None = None
    if pod.pv_name:
        pvs = {
            f"cluster={layout.spec.cluster_name}:name={pod.pv_name}": {
                "byteHours": pv_bytes * c.hours,
                "cost": pod.pv_gib * c.hours * layout.spec.pv_usd_per_gib_hour * m,
            }
        }
    lbs: dict[str, Any] | None = None
    if pod.lb_service:
        lbs = {
            f"{layout.spec.cluster_name}/{pod.namespace}/{pod.lb_service}": {
                "service": f"{pod.namespace}/{pod.lb_service}",
                "cost": pod.lb_usd_per_hour * c.hours * m,
                "private": False,
                "ip": f"34.{int(hash_unit(pod.name, 'ip') * 250)}.10.7",
                "hours": c.hours,
            }
        }
    net_bytes = pod.network_usd_per_hour * m * c.hours / 0.02 * GIB
    return {
        "name": key,
        "properties": properties,
        "window": dict(window),
        "start": rfc3339(c.start),
        "end": rfc3339(c.end),
        "minutes": r(minutes),
        "cpuCores": r(cpu),
        "cpuCoreRequestAverage": r(cpu),
        "cpuCoreLimitAverage": r(cpu),
        "cpuCoreUsageAverage": r(cpu_use),
        "cpuCoreHours": r(cpu * c.hours),
        "cpuCost": c.cpu,
        "cpuCostAdjustment": c.cpu_adj,
        "cpuCostIdle": 0.0,
        "cpuEfficiency": r(cpu_eff),
        "gpuCount": r(gpus),
        "gpuHours": r(gpus * c.hours),
        "gpuCost": c.gpu,
        "gpuCostAdjustment": 0.0,
        "gpuCostIdle": 0.0,
        "gpuEfficiency": r(engine),
        "networkTransferBytes": r(net_bytes),
        "networkReceiveBytes": r(net_bytes * 3.0),
        "networkCost": c.network,
        "networkCrossZoneCost": c.network_zone,
        "networkCrossRegionCost": c.network_region,
        "networkInternetCost": c.network_internet,
        "networkCostAdjustment": 0.0,
        "loadBalancerCost": c.lb,
        "loadBalancerCostAdjustment": 0.0,
        "pvBytes": r(pv_bytes),
        "pvByteHours": r(pv_bytes * c.hours),
        "pvCost": c.pv,
        "pvs": pvs,
        "pvCostAdjustment": 0.0,
        "ramBytes": r(ram),
        "ramByteRequestAverage": r(ram),
        "ramByteLimitAverage": r(ram),
        "ramByteUsageAverage": r(ram_use),
        "ramByteHours": r(ram * c.hours),
        "ramCost": c.ram,
        "ramCostAdjustment": c.ram_adj,
        "ramCostIdle": 0.0,
        "ramEfficiency": r(ram_eff),
        "externalCost": c.external,
        "sharedCost": c.shared,
        "totalCost": c.total,
        "totalEfficiency": r(total_eff),
        "rawAllocationOnly": {
            "cpuCoreUsageMax": cpu_use * 1.4,
            "ramByteUsageMax": ram_use * 1.2,
            "gpuUsageMax": min(gpus, gpu_usage * 1.3) if pod.holds else None,
        },
        "proportionalAssetResourceCosts": None,
        "lbAllocations": lbs,
        "sharedCostBreakdown": None,
        "gpuAllocation": gpu_allocation,
    }


def idle_json(
    layout: Layout, charges: Sequence[Charge], window_hours: float, window: Mapping[str, str]
) -> dict[str, Any]:
    r = opencost_round
    idle = idle_costs(layout, charges, window_hours)
    spec = layout.spec
    cores = idle["cpu_core_hours"] / window_hours
    ram = idle["ram_byte_hours"] / window_hours
    gpus = idle["gpu_hours"] / window_hours
    zero = 0.0
    return {
        "name": "__idle__",
        "properties": {"cluster": spec.cluster_name},
        "window": dict(window),
        "start": window["start"],
        "end": window["end"],
        "minutes": r(window_hours * 60.0),
        "cpuCores": r(cores),
        "cpuCoreRequestAverage": zero,
        "cpuCoreLimitAverage": zero,
        "cpuCoreUsageAverage": zero,
        "cpuCoreHours": r(cores * window_hours),
        "cpuCost": r(idle["cpu"]),
        "cpuCostAdjustment": zero,
        "cpuCostIdle": zero,
        "cpuEfficiency": zero,
        "gpuCount": r(gpus),
        "gpuHours": r(gpus * window_hours),
        "gpuCost": r(idle["gpu"]),
        "gpuCostAdjustment": zero,
        "gpuCostIdle": zero,
        "gpuEfficiency": zero,
        "networkTransferBytes": zero,
        "networkReceiveBytes": zero,
        "networkCost": zero,
        "networkCrossZoneCost": zero,
        "networkCrossRegionCost": zero,
        "networkInternetCost": zero,
        "networkCostAdjustment": zero,
        "loadBalancerCost": zero,
        "loadBalancerCostAdjustment": zero,
        "pvBytes": zero,
        "pvByteHours": zero,
        "pvCost": zero,
        "pvs": None,
        "pvCostAdjustment": zero,
        "ramBytes": r(ram),
        "ramByteRequestAverage": zero,
        "ramByteLimitAverage": zero,
        "ramByteUsageAverage": zero,
        "ramByteHours": r(ram * window_hours),
        "ramCost": r(idle["ram"]),
        "ramCostAdjustment": zero,
        "ramCostIdle": zero,
        "ramEfficiency": zero,
        "externalCost": zero,
        "sharedCost": zero,
        "totalCost": r(idle["cpu"] + idle["ram"] + idle["gpu"]),
        "totalEfficiency": zero,
        "proportionalAssetResourceCosts": None,
        "lbAllocations": None,
        "sharedCostBreakdown": None,
        "gpuAllocation": None,
    }
