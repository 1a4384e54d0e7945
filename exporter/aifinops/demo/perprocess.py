"""Time-shared GPUs whose dcgm-exporter reports per-process figures (``--kubernetes-virtual-gpus``).

Stock dcgm-exporter repeats a GPU's device figures on every pod that shares it (dcgm-exporter
#587, #642: "a limitation of NVML"). Since dcgm-exporter #594 (in 4.5.3-4.8.2, commit fb5e3dc),
with ``--kubernetes-virtual-gpus`` (``KUBERNETES_VIRTUAL_GPUS=true``) it also asks NVML per
process and maps each PID to its pod through the cgroup
(``internal/pkg/transformation/process_metrics.go`` and ``kubernetes.go``):

* only two fields are per process: ``DCGM_FI_DEV_GPU_UTIL`` (``nvmlDeviceGetProcessUtilization``:
  the process's SM utilization, in percent of the whole GPU; regular GPUs only) and
  ``DCGM_FI_DEV_FB_USED`` (``nvmlDeviceGetComputeRunningProcesses``: bytes, written in MiB;
  also on MIG instances, per instance);
* for such a field the page keeps the **device-level series** (no pod labels) and adds one
  series per pod sharing the device, the sum over the pod's processes (``%d``), labelled
  ``container, namespace, pod, pod_uid`` and ``vgpu`` (the replica, from the device plugin's
  ``<uuid>::<n>`` id); a pod with no process on the device gets ``0``;
* every other field is repeated per pod with the device's value (and ``vgpu``).

So on a time-sliced GPU each pod's own share is visible; on a MIG instance shared by several
pods only memory is, and the instance's engine activity is repeated on each of them.

:class:`PerProcessPool` is a time-sliced L4 node and a MIG A100 node (MIG instances
time-sliced too), with their own tenants, and renders their dcgm-exporter (≤ 4.8 names:
utilization in percent, ``Hostname``) page. Nothing here imports ``aifinops.model`` or
``aifinops.sources``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aifinops.demo.cluster.hashing import diurnal, hash_unit
from aifinops.demo.cluster.records import (
    GpuHold,
    MigInstance,
    SimGpu,
    SimNode,
    SimPod,
    mig_instances,
)
from aifinops.demo.cluster.spec import A100, GIB, GPU_MODELS, L4, GpuModel, Sharing
from aifinops.demo.cluster.wire import DCGM_FAMILIES

PER_PROCESS_FAMILIES: tuple[str, ...] = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED")
PER_PROCESS_TENANTS: tuple[str, ...] = ("translation", "copilot", "batch-infer")
PER_PROCESS_POOL = "per-process"
# The families this page writes, in dcgm-exporter's default-counters order.
_FAMILIES: tuple[str, ...] = (
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
)


@dataclass(frozen=True, slots=True)
class SharedHolder:
    """A pod holding one replica of a time-sliced GPU or MIG instance.

    ``fraction`` is the GPU-equivalents OpenCost bills it (1/replicas of a GPU, or
    slices/7/replicas of a MIG instance). ``has_process=False``: the pod runs no CUDA process
    now (its per-process figures are 0). ``tenant`` is the ground truth (``team-<tenant>``).
    """

    tenant: str
    namespace: str
    pod: str
    container: str
    pod_uid: str
    node: str
    gpu_uuid: str
    gi_id: str  # "" on a whole (time-sliced) GPU
    vgpu: str
    fraction: float
    has_process: bool
    busy: bool

    @property
    def unit(self) -> tuple[str, str]:
        return (self.gpu_uuid, self.gi_id)


# Time-sliced L4s: (replicas, [(busy, has a process)] per requested replica).
TIMESLICE_PLANS: tuple[tuple[int, tuple[tuple[bool, bool], ...]], ...] = (
    (4, ((True, True), (True, True), (False, False))),  # one replica free, one pod with no process
    (2, ((True, True), (False, True))),
)
# One MIG A100, its instances time-sliced in 2: profile → holders (busy flags).
MIG_LAYOUT: tuple[str, ...] = ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb")
MIG_REPLICAS = 2
MIG_PLAN: tuple[tuple[bool, ...], ...] = ((True, True), (True,), (False,), ())


@dataclass(frozen=True, slots=True)
class PerProcessPool:
    """The per-process nodes, their pods (ready for the cluster's OpenCost rows) and holders."""

    seed: int
    nodes: tuple[SimNode, ...]
    pods: tuple[SimPod, ...]
    holders: tuple[SharedHolder, ...]
    replicas: Mapping[tuple[str, str], int]  # per unit: the device plugin's replica count
    driver_version: str = "550.90.07"

    @classmethod
    def build(
        cls,
        seed: int = 7,
        *,
        tenants: Sequence[str] = PER_PROCESS_TENANTS,
        ips: tuple[str, str] = ("10.9.0.31", "10.9.0.32"),
    ) -> PerProcessPool:
        """The two nodes at ``ips``; holders' tenants cycle over ``tenants``."""
        if not tenants:
            raise ValueError("a per-process pool needs at least one tenant")
        rng = random.Random(f"{seed}:per-process")
        nodes: list[SimNode] = []
        holders: list[SharedHolder] = []
        replicas: dict[tuple[str, str], int] = {}
        k = 0

        def holder(
            node: str, gpu: SimGpu, gi: str, vgpu: int, frac: float, flags: tuple[bool, bool]
        ) -> None:
            nonlocal k
            tenant = tenants[k % len(tenants)]
            k += 1
            app = ("translator", "copilot-api", "embedder", "reranker")[k % 4]
            rs = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(10))
            pod = (
                f"{app}-{rs}-{''.join(rng.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"
            )
            h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
            uid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
            busy, has_process = flags
            holders.append(
                SharedHolder(
                    tenant=tenant,
                    namespace=f"team-{tenant}",
                    pod=pod,
                    container="server",
                    pod_uid=uid,
                    node=node,
                    gpu_uuid=gpu.uuid,
                    gi_id=gi,
                    vgpu=str(vgpu),
                    fraction=frac,
                    has_process=has_process,
                    busy=busy,
                )
            )

        # Node 1: time-sliced L4s.
        l4 = GPU_MODELS[L4]
        name = _node_name(ips[0])
        gpus = [_gpu(rng, name, i, l4, "timeslice") for i in range(len(TIMESLICE_PLANS))]
        for gpu, (k_rep, plan) in zip(gpus, TIMESLICE_PLANS, strict=True):
            replicas[(gpu.uuid, "")] = k_rep
            for replica, flags in enumerate(plan):
                holder(name, gpu, "", replica, 1.0 / k_rep, flags)
        nodes.append(
            _node(rng, name, ips[0], "g6.12xlarge", "us-east-1c", 48.0, 192.0, gpus, "time-slicing")
        )
        # Node 2: one MIG A100 whose instances are time-sliced.
        a100 = GPU_MODELS[A100]
        name = _node_name(ips[1])
        instances = mig_instances(MIG_LAYOUT)
        gpu = _gpu(rng, name, 0, a100, "mig", instances)
        for inst, busy_flags in zip(instances, MIG_PLAN, strict=True):
            replicas[(gpu.uuid, inst.gi_id)] = MIG_REPLICAS
            frac = inst.slices / a100.mig_slices / MIG_REPLICAS
            for replica, busy in enumerate(busy_flags):
                holder(name, gpu, inst.gi_id, replica, frac, (busy, True))
        nodes.append(
            _node(rng, name, ips[1], "p4de.24xlarge", "us-east-1b", 96.0, 1152.0, [gpu], "mig")
        )
        pods = tuple(_pod(h, nodes) for h in holders)
        return cls(seed, tuple(nodes), pods, tuple(holders), replicas)

    # --- truth ----------------------------------------------------------------------------

    def gpu(self, uuid: str) -> SimGpu:
        return next(g for n in self.nodes for g in n.gpus if g.uuid == uuid)

    def instance(self, uuid: str, gi_id: str) -> MigInstance:
        return next(i for i in self.gpu(uuid).mig if i.gi_id == gi_id)

    def holders_of(self, unit: tuple[str, str]) -> tuple[SharedHolder, ...]:
        return tuple(h for h in self.holders if h.unit == unit)

    def use(self, h: SharedHolder, now: float) -> int:
        """The holder's true use at ``now`` in whole percent: of the GPU on a time-sliced GPU
        (what NVML's per-process SM utilization reports), of its instance on MIG (which no
        series shows per pod). 0 without a process."""
        if not h.has_process:
            return 0
        key = f"{h.namespace}/{h.pod}/{h.gpu_uuid}/{h.gi_id}"
        if not h.busy:
            return round(2 * hash_unit(key, "idle", math.floor(now / 60.0)))
        band = 1.0 / len(self.holders_of(h.unit))  # busy holders together stay ≤ 100 %
        return max(1, round(100 * band * (0.35 + 0.6 * diurnal(key, now))))

    def unit_percent(self, unit: tuple[str, str], now: float) -> int:
        """The device's (or MIG instance's) activity in percent: its holders' use, ≤ 100."""
        return min(100, sum(self.use(h, now) for h in self.holders_of(unit)))

    def memory_mib(self, h: SharedHolder, now: float) -> int:
        """Device memory of the holder's processes in MiB (0 without a process)."""
        if not h.has_process:
            return 0
        gpu = self.gpu(h.gpu_uuid)
        total = gpu.model.memory_mib
        if h.gi_id:
            total = total * self.instance(h.gpu_uuid, h.gi_id).slices // gpu.model.mig_slices
        share = total / self.replicas[h.unit]
        return math.floor(share * (0.3 + 0.5 * hash_unit(h.pod, "mem", math.floor(now / 600))))

    # --- dcgm-exporter --------------------------------------------------------------------

    def dcgm_series(
        self, now: float
    ) -> list[tuple[SimGpu, MigInstance | None, str, dict[str, str], str]]:
        """Every series of this pool's GPUs as ``(gpu, MIG instance, legacy family, pod
        attributes, value text)``; empty attributes for a device-level series. In
        dcgm-exporter's order: family, then GPU and instance, then pod."""
        out: list[tuple[SimGpu, MigInstance | None, str, dict[str, str], str]] = []
        units: list[tuple[SimGpu, MigInstance | None]] = []
        for node in self.nodes:
            for gpu in node.gpus:
                if gpu.mig:
                    units.extend((gpu, inst) for inst in gpu.mig)
                else:
                    units.append((gpu, None))
        for family in _FAMILIES:
            for gpu, inst in units:
                unit = (gpu.uuid, inst.gi_id if inst else "")
                holders = self.holders_of(unit)
                device = self._device_value(gpu, inst, family, now)
                if device is None:
                    continue
                if not holders:
                    out.append((gpu, inst, family, {}, device))
                    continue
                if family in PER_PROCESS_FAMILIES:
                    out.append((gpu, inst, family, {}, device))
                    for h in holders:
                        value = (
                            self.use(h, now)
                            if family == "DCGM_FI_DEV_GPU_UTIL"
                            else (self.memory_mib(h, now))
                        )
                        out.append((gpu, inst, family, _attributes(h, uid=True), str(value)))
                    continue
                for h in holders:
                    out.append((gpu, inst, family, _attributes(h, uid=False), device))
        return out

    def _device_value(
        self, gpu: SimGpu, inst: MigInstance | None, family: str, now: float
    ) -> str | None:
        unit = (gpu.uuid, inst.gi_id if inst else "")
        pct = self.unit_percent(unit, now)
        if family == "DCGM_FI_DEV_GPU_UTIL":
            return None if inst is not None else str(pct)  # no device utilization on MIG
        if family == "DCGM_FI_DEV_FB_USED":
            return str(sum(self.memory_mib(h, now) for h in self.holders_of(unit)))
        if family == "DCGM_FI_PROF_GR_ENGINE_ACTIVE":
            return f"{pct / 100.0:f}" if gpu.model.profiling else None
        # Device-wide sensors: the same on every instance of a GPU.
        whole = (
            sum(
                self.unit_percent(u, now) * (self._part(u))
                for u in self.replicas
                if u[0] == gpu.uuid
            )
            / 100.0
        )
        if family == "DCGM_FI_DEV_GPU_TEMP":
            return str(round(32 + 45 * whole))
        return f"{round(gpu.model.max_power_w * (0.1 + 0.85 * whole), 3):f}"

    def _part(self, unit: tuple[str, str]) -> float:
        gpu = self.gpu(unit[0])
        if not unit[1]:
            return 1.0
        return self.instance(unit[0], unit[1]).slices / gpu.model.mig_slices

    def dcgm_page(self, now: float, node: str | None = None) -> str:
        """dcgm-exporter's ``/metrics`` for this pool (or one ``node``) in ≤ 4.8 names: labels
        ``gpu, UUID, pci_bus_id, device, modelName`` (MIG: ``GPU_I_PROFILE, GPU_I_ID``),
        ``Hostname, DCGM_FI_DRIVER_VERSION``, then the pod attributes in name order."""
        helps = {name: (type_, help_) for name, type_, help_ in DCGM_FAMILIES}
        lines: list[str] = []
        current = ""
        for gpu, inst, family, attrs, value in self.dcgm_series(now):
            if node is not None and gpu.node != node:
                continue
            if family != current:
                type_, help_ = helps[family]
                lines.append(f"# HELP {family} {help_}")
                lines.append(f"# TYPE {family} {type_}")
                current = family
            labels = [
                f'gpu="{gpu.index}"',
                f'UUID="{gpu.uuid}"',
                f'pci_bus_id="{gpu.pci_bus_id}"',
                f'device="nvidia{gpu.index}"',
                f'modelName="{gpu.model.name}"',
            ]
            if inst is not None:
                labels += [f'GPU_I_PROFILE="{inst.profile}"', f'GPU_I_ID="{inst.gi_id}"']
            labels += [
                f'Hostname="{gpu.node}"',
                f'DCGM_FI_DRIVER_VERSION="{self.driver_version}"',
            ]
            labels += [f'{k}="{v}"' for k, v in sorted(attrs.items())]
            lines.append(f"{family}{{{','.join(labels)}}} {value}")
        return "\n".join(lines) + "\n"


def _attributes(h: SharedHolder, *, uid: bool) -> dict[str, str]:
    # pod_uid is set on the per-process copies only (without --kubernetes-enable-pod-uid).
    out = {"container": h.container, "namespace": h.namespace, "pod": h.pod, "vgpu": h.vgpu}
    if uid:
        out["pod_uid"] = h.pod_uid
    return out


def _pod(h: SharedHolder, nodes: Sequence[SimNode]) -> SimPod:
    node = next(n for n in nodes if n.name == h.node)
    model = node.gpus[0].model
    app = h.pod.rsplit("-", 2)[0]
    return SimPod(
        namespace=h.namespace,
        name=h.pod,
        node=h.node,
        container=h.container,
        controller=app,
        controller_kind="deployment",
        labels={"app": app, "pod-template-hash": h.pod.rsplit("-", 2)[1]},
        cpu_cores=round(max(0.5, node.cpu_cores / len(node.gpus) * h.fraction * 0.5), 1),
        ram_bytes=float(max(1, round(node.ram_bytes / GIB / len(node.gpus) * h.fraction * 0.5)))
        * GIB,
        holds=(GpuHold(h.gpu_uuid, h.gi_id, h.fraction, model.name),),
        busy=h.busy,
    )


def _node_name(ip: str) -> str:
    return f"ip-{ip.replace('.', '-')}.ec2.internal"


def _gpu(
    rng: random.Random,
    node: str,
    index: int,
    model: GpuModel,
    sharing: Sharing,
    mig: tuple[MigInstance, ...] = (),
) -> SimGpu:
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    bus = 0x10 + 0x20 * index + rng.randrange(0, 0x10)
    return SimGpu(node, index, uuid, f"00000000:{bus:02X}:00.0", model, sharing, mig)


def _node(
    rng: random.Random,
    name: str,
    ip: str,
    instance_type: str,
    zone: str,
    cpu: float,
    ram_gib: float,
    gpus: Sequence[SimGpu],
    strategy: str,
) -> SimNode:
    labels = {
        "kubernetes.io/hostname": name,
        "node.kubernetes.io/instance-type": instance_type,
        "topology.kubernetes.io/zone": zone,
        "nvidia.com/gpu.product": gpus[0].model.name.replace(" ", "-"),
        "nvidia.com/gpu.sharing-strategy": "time-slicing",
    }
    if strategy == "mig":
        labels["nvidia.com/mig.config"] = "custom-mixed"
    return SimNode(
        name=name,
        pool=PER_PROCESS_POOL,
        instance_type=instance_type,
        zone=zone,
        provider_id="i-0" + "".join(rng.choice("0123456789abcdef") for _ in range(16)),
        ip=ip,
        cpu_cores=cpu,
        ram_bytes=ram_gib * GIB,
        gpus=tuple(gpus),
        labels=labels,
    )


__all__ = [
    "MIG_LAYOUT",
    "MIG_REPLICAS",
    "PER_PROCESS_FAMILIES",
    "PER_PROCESS_TENANTS",
    "TIMESLICE_PLANS",
    "PerProcessPool",
    "SharedHolder",
]
