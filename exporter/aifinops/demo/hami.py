"""HAMi-shared GPUs for the simulated cluster: layout, true use, and HAMi's own metric pages.

HAMi (Project-HAMi/HAMi, a CNCF project) shares one physical GPU between containers that each
ask for ``nvidia.com/gpu: 1`` plus a core share (``nvidia.com/gpucores``, percent of the
device's SMs) and a memory share (``nvidia.com/gpumem``, MiB). Two of its components publish
what the exporter reads, and this module renders both from one :class:`HamiPool`:

* the **scheduler** (``hami-scheduler``, ``--metrics-bind-address :9395``, chart NodePort
  31993) publishes the allocation per device and per container (``cmd/scheduler/metrics.go``);
* the **device-plugin monitor** (``vGPUmonitor``, ``:9394``, chart NodePort 31992, one per GPU
  node) publishes live use per container, read from the shared-memory region HAMi-core's
  ``libvgpu.so`` writes inside the container (``cmd/vGPUmonitor/metrics.go``). A container
  gets that region only once it has initialised CUDA, so a container that has not touched
  the GPU yet has **no** usage series at all (HAMi #281, #1814), although the scheduler lists
  its allocation.

Two generations, as the sources define them (commits in tests/fixtures/PROVENANCE.md):
``"2.8"`` (v2.8.0: ``GPUDeviceCoreAllocated``, ``vGPUCoreAllocated``,
``Device_utilization_desc_of_container``, ... with ``nodeid``/``podnamespace`` labels) and
``"2.10"`` (v2.9.0 onward: ``hami_*`` names with ``node``/``namespace`` labels; the old names
too with ``--legacy-metrics``). Every series carries ``zone="vGPU"`` (the scheduler and the
monitor register their collectors under that constant label). Units as upstream: cores in
percent of the device (0–100, although the new names end in ``_ratio``), memory in bytes,
the container's SM utilization in percent of the device.

Cost facts the answer key relies on (demo/shared_key.py): OpenCost sees only
``nvidia.com/gpu: 1`` and bills every HAMi container a whole GPU (OpenCost #3828), so the
pods built here hold ``fraction=1.0``; dcgm-exporter cannot map HAMi's per-split device ids
back to a GPU, so the DCGM series of a HAMi GPU carry no pod labels
(:meth:`HamiPool.dcgm_series`).

Nothing here imports ``aifinops.model`` or ``aifinops.sources``; everything is a function of
the pool's seed and of ``now``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from aifinops.demo.cluster.hashing import diurnal, hash_unit
from aifinops.demo.cluster.records import GpuHold, SimGpu, SimNode, SimPod
from aifinops.demo.cluster.spec import A100, GIB, GPU_MODELS, MIB, GpuModel

HamiGeneration = Literal["2.8", "2.10"]
HAMI_GENERATIONS: tuple[HamiGeneration, ...] = ("2.8", "2.10")
HAMI_SCHEDULER_PORT = 9395  # charts/hami/values.yaml scheduler.metricsBindAddress
HAMI_MONITOR_PORT = 9394  # cmd/vGPUmonitor --metrics-bind-address default
HAMI_ZONE = "vGPU"  # the constant label both collectors are registered under
HAMI_TOTAL_CORES = 100  # devcore = DeviceCoreScaling (1) × 100, outside MIG mode
HAMI_NODE_POOL = "hami"


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HamiContainer:
    """One container's HAMi allocation on one device, and what it really does.

    ``cores`` is ``nvidia.com/gpucores`` (percent of the device's SMs), ``memory_mib``
    ``nvidia.com/gpumem``. ``container_index`` is its index in the pod spec (HAMi's
    ``container_index`` label). ``touched_cuda=False``: the container has not initialised CUDA,
    so the monitor has no series for it. ``tenant`` is the ground truth the tenancy rules give
    its namespace (``team-<tenant>``).
    """

    tenant: str
    namespace: str
    pod: str
    container: str
    container_index: int
    node: str
    device_uuid: str
    device_index: int
    cores: int
    memory_mib: int
    touched_cuda: bool
    busy: bool


@dataclass(frozen=True, slots=True)
class HamiDevice:
    """One physical GPU HAMi shares; ``memory_mib`` is what HAMi registers (NVML's total)."""

    node: str
    index: int
    uuid: str
    model: GpuModel
    containers: tuple[HamiContainer, ...]

    @property
    def memory_mib(self) -> int:
        return self.model.memory_mib

    @property
    def used_cores(self) -> int:
        return sum(c.cores for c in self.containers)

    @property
    def used_memory_mib(self) -> int:
        return sum(c.memory_mib for c in self.containers)


# (cores %, memory MiB, has touched CUDA, busy) per container, one tuple per device. Core and
# memory shares differ on purpose, so a billing mix of the two gives a third answer; the first
# device is fully core-allocated, the second leaves 35 % of its cores to nobody.
HAMI_DEVICE_PLANS: tuple[tuple[tuple[int, int, bool, bool], ...], ...] = (
    ((30, 20480, True, True), (50, 40960, True, True), (20, 10240, False, True)),
    ((25, 20480, True, True), (40, 16384, True, False)),
)
HAMI_TENANTS: tuple[str, ...] = ("genai-lab", "notebooks", "fraud")
_APPS = ("jupyter", "embedder", "sd-turbo", "reranker", "ocr")


@dataclass(frozen=True, slots=True)
class HamiPool:
    """One GPU node whose GPUs HAMi shares, its pods, and their true use.

    ``nodes``/``pods`` are the cluster's own records (demo/cluster.py), ready to join its
    OpenCost rows: each pod holds ``fraction=1.0`` of its device, as OpenCost bills it.
    """

    seed: int
    devices: tuple[HamiDevice, ...]
    nodes: tuple[SimNode, ...]
    pods: tuple[SimPod, ...]

    @classmethod
    def build(
        cls,
        seed: int = 7,
        *,
        tenants: Sequence[str] = HAMI_TENANTS,
        model: str = A100,
        plans: Sequence[Sequence[tuple[int, int, bool, bool]]] = HAMI_DEVICE_PLANS,
        ip: str = "10.9.0.21",
    ) -> HamiPool:
        """A node at ``ip`` with one GPU of ``model`` per plan; containers' tenants cycle over
        ``tenants``. Raises ``ValueError`` where a plan allocates more than a device has."""
        if not tenants:
            raise ValueError("a HAMi pool needs at least one tenant")
        gpu_model = GPU_MODELS[model]
        rng = random.Random(f"{seed}:hami")
        node_name = f"ip-{ip.replace('.', '-')}.ec2.internal"
        buses = sorted(rng.sample(range(0x10, 0xF0), len(plans)))
        gpus: list[SimGpu] = []
        devices: list[HamiDevice] = []
        pods: list[SimPod] = []
        k = 0
        for idx, plan in enumerate(plans):
            if sum(p[0] for p in plan) > HAMI_TOTAL_CORES:
                raise ValueError(f"device {idx}: cores over {HAMI_TOTAL_CORES}")
            if sum(p[1] for p in plan) > gpu_model.memory_mib:
                raise ValueError(f"device {idx}: memory over {gpu_model.memory_mib} MiB")
            h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
            uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            gpus.append(
                SimGpu(node_name, idx, uuid, f"00000000:{buses[idx]:02X}:00.0", gpu_model, "none")
            )
            containers: list[HamiContainer] = []
            for cores, mem, touched, busy in plan:
                tenant = tenants[k % len(tenants)]
                app = _APPS[k % len(_APPS)]
                k += 1
                suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
                rs = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(10))
                pod_name = f"{app}-{rs}-{suffix}"
                namespace = f"team-{tenant}"
                # Every other pod runs a log sidecar first: the GPU container is index 1.
                index = k % 2
                c = HamiContainer(
                    tenant=tenant,
                    namespace=namespace,
                    pod=pod_name,
                    container=app,
                    container_index=index,
                    node=node_name,
                    device_uuid=uuid,
                    device_index=idx,
                    cores=cores,
                    memory_mib=mem,
                    touched_cuda=touched,
                    busy=busy,
                )
                containers.append(c)
                pods.append(
                    SimPod(
                        namespace=namespace,
                        name=pod_name,
                        node=node_name,
                        container=app,
                        controller=app,
                        controller_kind="deployment",
                        labels={"app": app, "pod-template-hash": rs},
                        cpu_cores=round(2.0 + 6.0 * cores / 100, 1),
                        ram_bytes=float(max(4, mem // 2048) * GIB),
                        holds=(GpuHold(uuid, "", 1.0, gpu_model.name),),
                        busy=busy,
                        dcgm_mapped=False,
                    )
                )
            devices.append(HamiDevice(node_name, idx, uuid, gpu_model, tuple(containers)))
        node = SimNode(
            name=node_name,
            pool=HAMI_NODE_POOL,
            instance_type="p4de.24xlarge",
            zone="us-east-1b",
            provider_id="i-0" + "".join(rng.choice("0123456789abcdef") for _ in range(16)),
            ip=ip,
            cpu_cores=96.0,
            ram_bytes=1152.0 * GIB,
            gpus=tuple(gpus),
            labels={
                "kubernetes.io/hostname": node_name,
                "node.kubernetes.io/instance-type": "p4de.24xlarge",
                "topology.kubernetes.io/zone": "us-east-1b",
                "nvidia.com/gpu.product": gpu_model.name.replace(" ", "-"),
                "gpu": "on",  # HAMi's chart schedules its device plugin on gpu=on nodes
            },
        )
        return cls(seed, tuple(devices), (node,), tuple(pods))

    @property
    def containers(self) -> tuple[HamiContainer, ...]:
        return tuple(c for d in self.devices for c in d.containers)

    # --- truth ----------------------------------------------------------------------------

    def sm_percent(self, c: HamiContainer, now: float) -> int:
        """The container's SM utilization at ``now`` in whole percent of the device, as the
        monitor reports it: 0 before it touched CUDA; HAMi-core caps it at ``cores``."""
        if not c.touched_cuda:
            return 0
        key = f"{c.namespace}/{c.pod}/{c.device_uuid}"
        if not c.busy:
            return round(2 * hash_unit(key, "idle", math.floor(now / 60.0)))
        x = diurnal(key, now)
        return max(1, round(c.cores * (0.4 + 0.55 * x)))

    def device_percent(self, d: HamiDevice, now: float) -> int:
        """NVML's device utilization (percent): its containers' SM time, at most 100."""
        return min(100, sum(self.sm_percent(c, now) for c in d.containers))

    def memory_used_bytes(self, c: HamiContainer, now: float) -> int:
        """Device memory the container has allocated (bytes, ≤ its limit); 0 before CUDA."""
        if not c.touched_cuda:
            return 0
        fill = 0.5 + 0.4 * hash_unit(c.namespace, c.pod, "mem", math.floor(now / 600.0))
        return math.floor(c.memory_mib * fill) * MIB

    # --- renderers ------------------------------------------------------------------------

    def scheduler_page(
        self, now: float, generation: HamiGeneration = "2.10", *, legacy_metrics: bool = False
    ) -> str:
        """``hami-scheduler`` ``/metrics`` (port 9395) at ``now`` in ``generation``'s names;
        ``legacy_metrics`` (2.10 only) adds the old names, as ``--legacy-metrics`` does."""
        _check_generation(generation)
        page = _Page()
        for d in self.devices:
            used = len(d.containers)
            mem_bytes = float(d.used_memory_mib * MIB)
            limit_bytes = float(d.memory_mib * MIB)
            ratio = d.used_memory_mib / d.memory_mib
            dtype = _scheduler_device_type(d.model)
            if generation == "2.8":
                dev = {"nodeid": d.node, "deviceuuid": d.uuid, "deviceidx": str(d.index)}
                page.add("GPUDeviceMemoryLimit", dev, limit_bytes)
                page.add("GPUDeviceCoreLimit", dev, HAMI_TOTAL_CORES)
                page.add(
                    "GPUDeviceMemoryAllocated", {**dev, "devicecores": str(d.used_cores)}, mem_bytes
                )
                page.add("GPUDeviceSharedNum", dev, used)
                page.add("GPUDeviceCoreAllocated", dev, d.used_cores)
                overview = {
                    **dev,
                    "devicecores": str(d.used_cores),
                    "sharedcontainers": str(used),
                    "devicememorylimit": str(d.memory_mib),
                    "devicetype": dtype,
                }
                page.add("nodeGPUOverview", overview, mem_bytes)
                page.add("nodeGPUMemoryPercentage", dev, ratio)
                continue
            dev = {
                "node": d.node,
                "device_uuid": d.uuid,
                "device_index": str(d.index),
                "device_type": dtype,
            }
            cores = str(HAMI_TOTAL_CORES)
            page.add("hami_gpu_memory_limit_bytes", dev, limit_bytes)
            page.add("hami_gpu_core_limit_ratio", dev, HAMI_TOTAL_CORES)
            page.add("hami_gpu_memory_allocated_bytes", {**dev, "device_cores": cores}, mem_bytes)
            page.add("hami_gpu_shared_count", dev, used)
            page.add("hami_gpu_core_allocated_ratio", dev, d.used_cores)
            overview = {**dev, "device_cores": cores, "device_memory_limit": str(d.memory_mib)}
            page.add("hami_node_gpu_overview", overview, mem_bytes)
            page.add("hami_node_gpu_memory_allocated_ratio", dev, ratio)
            if legacy_metrics:
                old = {
                    "nodeid": d.node,
                    "deviceuuid": d.uuid,
                    "deviceidx": str(d.index),
                    "devicetype": dtype,
                }
                page.add("GPUDeviceMemoryLimit", old, limit_bytes)
                page.add("GPUDeviceCoreLimit", old, HAMI_TOTAL_CORES)
                page.add("GPUDeviceMemoryAllocated", {**old, "devicecores": cores}, mem_bytes)
                page.add("GPUDeviceSharedNum", old, used)
                page.add("GPUDeviceCoreAllocated", old, d.used_cores)
                page.add(
                    "nodeGPUOverview",
                    {**old, "devicecores": cores, "devicememorylimit": str(d.memory_mib)},
                    mem_bytes,
                )
                page.add(
                    "nodeGPUMemoryPercentage",
                    {k: v for k, v in old.items() if k != "devicetype"},
                    ratio,
                )
        for c in self.containers:
            mem = float(c.memory_mib * MIB)
            if generation == "2.10":
                labels = {
                    "namespace": c.namespace,
                    "node": c.node,
                    "pod": c.pod,
                    "container_index": str(c.container_index),
                    "device_uuid": c.device_uuid,
                }
                page.add("hami_vgpu_memory_allocated_bytes", labels, mem)
                page.add("hami_vgpu_core_allocated_ratio", labels, c.cores)
            if generation == "2.8" or legacy_metrics:
                old_labels = {
                    "podnamespace": c.namespace,
                    "nodename": c.node,
                    "podname": c.pod,
                    "containeridx": str(c.container_index),
                    "deviceuuid": c.device_uuid,
                }
                page.add("vGPUMemoryAllocated", old_labels, mem)
                page.add("vGPUCoreAllocated", old_labels, c.cores)
        return page.render()

    def monitor_page(
        self,
        node: str,
        now: float,
        generation: HamiGeneration = "2.10",
        *,
        legacy_metrics: bool = False,
    ) -> str:
        """The device-plugin monitor's ``/metrics`` (port 9394) on ``node`` at ``now``: each
        device's NVML figures, and the series of every container that has touched CUDA (none
        for one that has not). Raises ``KeyError`` for a node of no device here."""
        _check_generation(generation)
        devices = [d for d in self.devices if d.node == node]
        if not devices:
            raise KeyError(node)
        page = _Page()
        for d in devices:
            dtype = "NVIDIA-" + d.model.name  # the monitor prefixes NVML's name
            used = float(sum(self.memory_used_bytes(c, now) for c in d.containers) + 420 * MIB)
            util = self.device_percent(d, now)
            mem_util = round(util * 0.6)
            if generation == "2.8":
                host = {"deviceidx": str(d.index), "deviceuuid": d.uuid, "devicetype": dtype}
                page.add("HostGPUMemoryUsage", host, used)
                page.add("HostCoreUtilization", host, util)
            else:
                host = {
                    "node": d.node,
                    "device_index": str(d.index),
                    "device_uuid": d.uuid,
                    "device_type": dtype,
                }
                page.add("hami_host_gpu_memory_used_bytes", host, used)
                page.add("hami_host_gpu_utilization_ratio", host, util)
                page.add(
                    "hami_host_gpu_memory_controller_utilization_ratio",
                    {k: v for k, v in host.items() if k != "node"},
                    mem_util,
                )
                if legacy_metrics:
                    old = {
                        "nodeid": d.node,
                        "deviceidx": str(d.index),
                        "deviceuuid": d.uuid,
                        "devicetype": dtype,
                    }
                    page.add("HostGPUMemoryUsage", old, used)
                    page.add("HostCoreUtilization", old, util)
            for c in d.containers:
                if not c.touched_cuda:
                    continue  # no shared region yet: the monitor does not know the container
                self._container_series(page, c, now, generation, legacy_metrics)
        return page.render()

    def _container_series(
        self,
        page: _Page,
        c: HamiContainer,
        now: float,
        generation: HamiGeneration,
        legacy_metrics: bool,
    ) -> None:
        used = self.memory_used_bytes(c, now)
        limit = float(c.memory_mib * MIB)
        context, module = 304 * MIB, 2 * MIB
        buffer = max(0, used - context - module)
        offset = used - context - module - buffer
        sm = self.sm_percent(c, now)
        # Seconds since its last kernel: a busy container ran one this second.
        last_kernel = 0 if c.busy else 60 + math.floor(900 * hash_unit(c.pod, "kernel"))
        if generation == "2.10":
            labels = {
                "namespace": c.namespace,
                "pod": c.pod,
                "container": c.container,
                "vdevice_index": "0",
                "device_uuid": c.device_uuid,
            }
            page.add("hami_vgpu_memory_used_bytes", labels, used)
            page.add("hami_vgpu_memory_limit_bytes", labels, limit)
            page.add("hami_container_device_memory_bytes", labels, used)
            page.add("hami_container_device_utilization_ratio", labels, sm)
            page.add("hami_vgpu_memory_context_bytes", labels, context)
            page.add("hami_vgpu_memory_module_bytes", labels, module)
            page.add("hami_vgpu_memory_buffer_bytes", labels, buffer)
            page.add("hami_container_last_kernel_elapsed_seconds", labels, last_kernel)
        if generation == "2.8" or legacy_metrics:
            old = {
                "podnamespace": c.namespace,
                "podname": c.pod,
                "ctrname": c.container,
                "vdeviceid": "0",
                "deviceuuid": c.device_uuid,
            }
            page.add("vGPU_device_memory_usage_in_bytes", old, used)
            page.add("vGPU_device_memory_limit_in_bytes", old, limit)
            desc = {
                **old,
                "context": str(context),
                "module": str(module),
                "data": str(buffer),
                "offset": str(offset),
            }
            page.add("Device_memory_desc_of_container", desc, used)
            page.add("Device_utilization_desc_of_container", old, sm)
            page.add("Device_last_kernel_of_container", old, last_kernel)

    def dcgm_series(self, now: float) -> list[tuple[SimGpu, str, str]]:
        """The DCGM figures of each HAMi GPU as ``(gpu, legacy family, value text)``.

        Device-level only: dcgm-exporter matches pods to GPUs through the kubelet's
        pod-resources device ids, and HAMi's are per-split ids it cannot resolve, so no
        series of a HAMi GPU names a pod. The cluster's renderer writes the labels (gpu,
        UUID, hostname, driver, ...) as for every other GPU.
        """
        gpus = {g.uuid: g for n in self.nodes for g in n.gpus}
        out: list[tuple[SimGpu, str, str]] = []
        for d in self.devices:
            gpu = gpus[d.uuid]
            pct = self.device_percent(d, now)
            engine = math.floor(pct * 10 * (0.6 + 0.3 * hash_unit(d.uuid, "engine")))
            fb_mib = sum(self.memory_used_bytes(c, now) for c in d.containers) // MIB + 420
            out.append((gpu, "DCGM_FI_DEV_GPU_UTIL", str(pct)))
            out.append((gpu, "DCGM_FI_DEV_FB_USED", str(fb_mib)))
            if d.model.profiling:
                out.append((gpu, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", f"{engine / 1000.0:f}"))
        return out


# ----------------------------------------------------------------------------------------------
# The Prometheus text client_golang writes
# ----------------------------------------------------------------------------------------------

# Family → (type, help) as HAMi declares them (help text verbatim from the sources named in
# the module docstring; every family is a gauge there except v2.8's memory description).
HAMI_FAMILIES: Mapping[str, tuple[str, str]] = {
    "GPUDeviceMemoryLimit": ("gauge", "Device memory limit for a certain GPU"),
    "GPUDeviceCoreLimit": ("gauge", "Device memory core limit for a certain GPU"),
    "GPUDeviceMemoryAllocated": ("gauge", "Device memory allocated for a certain GPU"),
    "GPUDeviceSharedNum": ("gauge", "Number of containers sharing this GPU"),
    "GPUDeviceCoreAllocated": ("gauge", "Device core allocated for a certain GPU"),
    "nodeGPUOverview": ("gauge", "GPU overview on a certain node"),
    "nodeGPUMemoryPercentage": ("gauge", "GPU Memory Allocated Percentage on a certain GPU"),
    "vGPUMemoryAllocated": ("gauge", "vGPU memory allocated from a container"),
    "vGPUCoreAllocated": ("gauge", "vGPU core allocated from a container"),
    "hami_gpu_memory_limit_bytes": ("gauge", "Device memory limit for a certain GPU"),
    "hami_gpu_core_limit_ratio": ("gauge", "Device core limit for a certain GPU"),
    "hami_gpu_memory_allocated_bytes": ("gauge", "Device memory allocated for a certain GPU"),
    "hami_gpu_shared_count": ("gauge", "Number of containers sharing this GPU"),
    "hami_gpu_core_allocated_ratio": ("gauge", "Device core allocated for a certain GPU"),
    "hami_node_gpu_overview": ("gauge", "GPU overview on a certain node"),
    "hami_node_gpu_memory_allocated_ratio": (
        "gauge",
        "GPU Memory Allocated Percentage on a certain GPU",
    ),
    "hami_vgpu_memory_allocated_bytes": ("gauge", "vGPU memory allocated from a container"),
    "hami_vgpu_core_allocated_ratio": ("gauge", "vGPU core allocated from a container"),
    "HostGPUMemoryUsage": ("gauge", "GPU device memory usage"),
    "HostCoreUtilization": ("gauge", "GPU core utilization"),
    "vGPU_device_memory_usage_in_bytes": ("gauge", "vGPU device usage"),
    "vGPU_device_memory_limit_in_bytes": ("gauge", "vGPU device limit"),
    "Device_memory_desc_of_container": ("counter", "Container device memory description"),
    "Device_utilization_desc_of_container": (
        "gauge",
        "Container device utilization description",
    ),
    "Device_last_kernel_of_container": ("gauge", "Container device last kernel description"),
    "hami_host_gpu_memory_used_bytes": ("gauge", "GPU device memory usage in bytes"),
    "hami_host_gpu_utilization_ratio": ("gauge", "GPU core utilization ratio (0-100)"),
    "hami_host_gpu_memory_controller_utilization_ratio": (
        "gauge",
        "GPU memory controller utilization ratio (0-100)",
    ),
    "hami_vgpu_memory_used_bytes": ("gauge", "vGPU device memory usage in bytes"),
    "hami_vgpu_memory_limit_bytes": ("gauge", "vGPU device memory limit in bytes"),
    "hami_container_device_memory_bytes": ("gauge", "Container device memory usage in bytes"),
    "hami_container_device_utilization_ratio": ("gauge", "Container device SM utilization ratio"),
    "hami_container_last_kernel_elapsed_seconds": (
        "gauge",
        "Seconds since last kernel execution in container",
    ),
    "hami_vgpu_memory_context_bytes": ("gauge", "Container device memory context size in bytes"),
    "hami_vgpu_memory_module_bytes": ("gauge", "Container device memory module size in bytes"),
    "hami_vgpu_memory_buffer_bytes": ("gauge", "Container device memory buffer size in bytes"),
}


class _Page:
    """Series gathered per family, written as client_golang's registry writes them: families
    sorted by name, each series' labels (with ``zone``) sorted by name, series sorted by
    their label values, values in Go's shortest ``%g``."""

    def __init__(self) -> None:
        self._series: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}

    def add(self, family: str, labels: Mapping[str, str], value: float) -> None:
        pairs = tuple(sorted({**labels, "zone": HAMI_ZONE}.items()))
        self._series.setdefault(family, []).append((pairs, float(value)))

    def render(self) -> str:
        lines: list[str] = []
        for family in sorted(self._series):
            type_, help_ = HAMI_FAMILIES[family]
            lines.append(f"# HELP {family} {_escape_help(help_)}")
            lines.append(f"# TYPE {family} {type_}")
            for pairs, value in sorted(self._series[family], key=lambda s: [v for _, v in s[0]]):
                body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
                lines.append(f"{family}{{{body}}} {go_float(value)}")
        return "\n".join(lines) + "\n" if lines else ""


def go_float(value: float) -> str:
    """A sample value as Prometheus' ``expfmt`` writes it: ``strconv.FormatFloat(v, 'g', -1,
    64)`` (shortest digits; an exponent below 1e-4 or from 1e6 up), ``NaN``, ``±Inf``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    exp = point - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{minus}{text}{'0' * (point - len(text))}"
    return f"{minus}{text[:point]}.{text[point:]}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _scheduler_device_type(model: GpuModel) -> str:
    # The device plugin registers NVML's name, prefixed "NVIDIA-" unless it starts "NVIDIA".
    return model.name if model.name.startswith("NVIDIA") else f"NVIDIA-{model.name}"


def _check_generation(generation: str) -> None:
    if generation not in HAMI_GENERATIONS:
        raise ValueError(f"HAMi generation must be one of {HAMI_GENERATIONS}, got {generation!r}")


__all__ = [
    "HAMI_DEVICE_PLANS",
    "HAMI_FAMILIES",
    "HAMI_GENERATIONS",
    "HAMI_MONITOR_PORT",
    "HAMI_SCHEDULER_PORT",
    "HAMI_TENANTS",
    "HAMI_ZONE",
    "HamiContainer",
    "HamiDevice",
    "HamiGeneration",
    "HamiPool",
    "go_float",
]
