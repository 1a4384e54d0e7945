"""What the GPUs are doing at ``now``: one :class:`Sample` per DCGM series (a GPU, a MIG
instance, or one pod's share of a time-sliced GPU), in dcgm-exporter's order.

Utilization is a diurnal sine over 24 h plus a per-device phase and per-minute noise from a
hash, so the same ``now`` always gives the same figures. Every renderer and the answer key read
the samples from here, so what DCGM shows and what the key expects cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aifinops.demo.cluster.hashing import hash_unit
from aifinops.demo.cluster.layout import Layout
from aifinops.demo.cluster.records import MigInstance, PodRun, SimGpu, SimPod

_BUSY_PCT = (30, 95)
_IDLE_PCT = (1, 3)
_SHARE_BUSY_PCT = (15, 30)  # time-sliced busy shares: ≤ 3 pods × 30 % keeps Σ ≤ 1


def _utilization_pct(key: str, band: tuple[int, int], now: float) -> int:
    """Integer percent in ``band``: diurnal sine over 24 h, per-key phase, per-minute noise."""
    phase = hash_unit(key, "phase")
    diurnal = 0.5 + 0.35 * math.sin(2.0 * math.pi * (now / 86400.0 + phase))
    noise = 2.0 * hash_unit(key, "noise", math.floor(now / 60.0)) - 1.0
    x = min(1.0, max(0.0, diurnal + 0.15 * noise))
    lo, hi = band
    return lo + round(x * (hi - lo))


def _engine_milli(key: str, pct: int) -> int:
    """``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` in thousandths: 60–90 % of the percent utilization."""
    factor = 0.6 + 0.3 * hash_unit(key, "engine")
    return math.floor(pct * 10 * factor)


@dataclass(frozen=True, slots=True)
class Sample:
    """One DCGM series (a GPU, a MIG instance, or one pod on a time-sliced GPU) at ``now``."""

    gpu: SimGpu
    mig: MigInstance | None
    run: PodRun | None  # the pod dcgm-exporter attributes the device to
    util_pct: int
    engine_milli: int

    def utilization(self, metric: str) -> float | None:
        """The sample as the exporter reads it, as a 0–1 ratio; ``None`` where DCGM has no
        such figure (device utilization of a MIG instance, profiling on a T4). ``auto``: the
        profiling figure where the GPU has one, else the device's."""
        if metric == "auto":
            metric = (
                "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
                if self.gpu.model.profiling
                else "DCGM_FI_DEV_GPU_UTIL"
            )
        if metric == "DCGM_FI_DEV_GPU_UTIL":
            return None if self.mig is not None else self.util_pct / 100.0
        return self.engine_milli / 1000.0 if self.gpu.model.profiling else None


def samples(layout: Layout, now: float) -> list[Sample]:
    """Every DCGM series at ``now``, in dcgm-exporter's order (node, GPU, instance, pod)."""
    out: list[Sample] = []
    shared = layout.shared.node_names if layout.shared is not None else frozenset()
    for node in layout.nodes:
        if node.name in shared:
            continue  # their series: demo/shared_pools.py (HAMi, per-process pages)
        for gpu in node.gpus:
            if gpu.sharing == "mig":
                for inst in gpu.mig:
                    out.append(_unit_sample(layout, gpu, inst, now))
            elif gpu.sharing == "timeslice":
                out.extend(_timeslice_samples(layout, gpu, now))
            else:
                out.append(_unit_sample(layout, gpu, None, now))
    return out


def _unit_sample(layout: Layout, gpu: SimGpu, inst: MigInstance | None, now: float) -> Sample:
    unit = (gpu.uuid, inst.gi_id if inst else "")
    energy = layout.energy
    for pod, _ in layout.unit_pods.get(unit, ()):
        run = layout.run_at(pod, now)
        if run is None:
            continue
        if energy is not None and energy.covers(gpu.uuid):
            pct, milli = energy.figure(gpu, pod, unit[1], now)
            return Sample(gpu, inst, run if pod.dcgm_mapped else None, pct, milli)
        key = f"{pod.namespace}/{pod.name}/{unit[0]}/{unit[1]}"
        pct = _utilization_pct(key, _BUSY_PCT if pod.busy else _IDLE_PCT, now)
        return Sample(gpu, inst, run if pod.dcgm_mapped else None, pct, _engine_milli(key, pct))
    return Sample(gpu, inst, None, 0, 0)


def _running(layout: Layout, gpu: SimGpu, now: float) -> list[tuple[SimPod, PodRun]]:
    """The pods running on a time-sliced GPU at ``now`` that DCGM maps, with their runs."""
    out = []
    for pod, _ in layout.unit_pods.get((gpu.uuid, ""), ()):
        run = layout.run_at(pod, now)
        if run is not None and pod.dcgm_mapped:
            out.append((pod, run))
    return out


def _timeslice_samples(layout: Layout, gpu: SimGpu, now: float) -> list[Sample]:
    energy = layout.energy
    if energy is not None and energy.covers(gpu.uuid):
        # The energy sim's figures: each pod's own, or the device's on every pod.
        running = _running(layout, gpu, now)
        if not running:
            return [Sample(gpu, None, None, 0, 0)]
        return [Sample(gpu, None, run, *energy.figure(gpu, pod, "", now)) for pod, run in running]
    shares: list[tuple[PodRun, int, int]] = []
    for pod, _ in layout.unit_pods.get((gpu.uuid, ""), ()):
        run = layout.run_at(pod, now)
        if run is None or not pod.dcgm_mapped:
            continue
        key = f"{pod.namespace}/{pod.name}/{gpu.uuid}/"
        pct = _utilization_pct(key, _SHARE_BUSY_PCT if pod.busy else _IDLE_PCT, now)
        shares.append((run, pct, _engine_milli(key, pct)))
    if not shares:
        return [Sample(gpu, None, None, 0, 0)]
    if layout.spec.timeslice_util == "device":
        pct = min(100, sum(s[1] for s in shares))
        eng = min(1000, sum(s[2] for s in shares))
        return [Sample(gpu, None, run, pct, eng) for run, _, _ in shares]
    return [Sample(gpu, None, run, pct, eng) for run, pct, eng in shares]
