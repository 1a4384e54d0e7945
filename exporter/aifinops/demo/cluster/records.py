"""What a built cluster is made of: GPUs, MIG instances, nodes, pods, their GPU holds and
schedules, and the runs of a scheduled pod. Frozen records; :mod:`.layout` builds them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aifinops.demo.cluster.spec import MIG_PROFILES, GpuModel, Sharing

UnitKey = tuple[str, str]  # (physical GPU UUID, MIG GPU instance id or "")


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One MIG GPU instance: ``gi_id`` as DCGM's ``GPU_I_ID``, ``profile`` as ``GPU_I_PROFILE``."""

    gi_id: str
    profile: str
    slices: int


@dataclass(frozen=True, slots=True)
class SimGpu:
    """One physical GPU. ``mig`` lists its instances (empty unless ``sharing == "mig"``)."""

    node: str
    index: int
    uuid: str
    pci_bus_id: str
    model: GpuModel
    sharing: Sharing
    mig: tuple[MigInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class SimNode:
    """A node; ``labels`` are raw Kubernetes labels (OpenCost merges them into pod labels)."""

    name: str
    pool: str
    instance_type: str
    zone: str
    provider_id: str
    ip: str
    cpu_cores: float
    ram_bytes: float
    gpus: tuple[SimGpu, ...]
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class GpuHold:
    """A pod's hold on one GPU unit: ``fraction`` of a whole GPU (1, slices/7 or 1/replicas)."""

    uuid: str
    gi_id: str
    fraction: float
    model: str

    @property
    def unit(self) -> UnitKey:
        return (self.uuid, self.gi_id)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A CronJob-like pod: runs ``run_s`` seconds out of every ``period_s``, offset ``phase_s``."""

    period_s: float
    run_s: float
    phase_s: float


@dataclass(frozen=True, slots=True)
class SimPod:
    """A pod and its constant requests. ``labels`` are raw Kubernetes pod labels.

    Rates (``*_usd_per_hour``) are what OpenCost bills while the pod runs. ``busy`` picks the
    utilization band of its GPU holds (busy 0.30–0.95, idle 0.01–0.03; time-sliced busy shares
    0.15–0.30). ``dcgm_mapped=False`` means dcgm-exporter shows its devices without pod labels
    (the kubelet pod-resources mapping failed), so the pod has GPU cost but no DCGM sample.
    ``cost_adjustment`` is OpenCost's ``cpuCostAdjustment``/``ramCostAdjustment`` as a fraction
    of the cost (a reconciliation discount when negative).
    """

    namespace: str
    name: str
    node: str
    container: str
    controller: str
    controller_kind: str
    labels: Mapping[str, str]
    cpu_cores: float
    ram_bytes: float
    holds: tuple[GpuHold, ...] = ()
    busy: bool = True
    pv_gib: float = 0.0
    pv_name: str = ""
    network_usd_per_hour: float = 0.0
    lb_usd_per_hour: float = 0.0
    lb_service: str = ""
    shared_usd_per_hour: float = 0.0
    external_usd_per_hour: float = 0.0
    cost_adjustment: float = 0.0
    schedule: Schedule | None = None
    dcgm_mapped: bool = True

    @property
    def gpu_count(self) -> float:
        """GPU-equivalents requested (sum of hold fractions)."""
        return math.fsum(h.fraction for h in self.holds)


@dataclass(frozen=True, slots=True)
class PodRun:
    """One run of a pod: ``name`` is the pod name OpenCost and DCGM see; ``start``/``end`` in
    unix seconds (infinite for always-running pods)."""

    pod: SimPod
    name: str
    start: float
    end: float


def mig_instances(layout: Sequence[str]) -> tuple[MigInstance, ...]:
    """A GPU's MIG instances for a layout of profiles. NVIDIA's placement: instances of one
    profile count up from its first GPU instance id."""
    next_id: dict[str, int] = {}
    out: list[MigInstance] = []
    for profile in layout:
        slices, first = MIG_PROFILES[profile]
        gi = next_id.get(profile, first)
        next_id[profile] = gi + 1
        out.append(MigInstance(str(gi), profile, slices))
    return tuple(out)
