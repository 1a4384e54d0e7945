"""An owned (on-premises) GPU node pool whose power and energy the simulator integrates.

The cloud pools of :mod:`aifinops.demo.cluster` report a power gauge and an energy counter
that do not agree with each other (the counter is a constant average since boot). The owned
pools here are simulated so that a reader can be checked against the truth to a fraction of a
percent: every GPU's power is a function of its measured use, constant over an *epoch*
(``epoch_s``, 300 s), and DCGM's energy counter is the exact integral of that power.

Upstream format (NVIDIA DCGM ``dcgmlib/dcgm_fields.h`` and ``dcgm_fields.cpp`` at DCGM 4.6.0,
dcgm-exporter ``etc/default-counters.csv``; see tests/fixtures/PROVENANCE.md):

* ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (field 156) is an INT64 in millijoules, "since the
  driver was last reloaded", device scope; dcgm-exporter exports it as a ``counter``. A
  driver reload (or GPU reset) starts it again from 0: a counter reset, as ``increase()``
  reads it. Being device scope, every MIG instance and every pod of a time-sliced GPU repeats
  its GPU's value (as ``DCGM_FI_DEV_POWER_USAGE`` does, dcgm-exporter issue #317).
* ``DCGM_FI_DEV_POWER_USAGE`` (≥ 4.9: ``DCGM_FI_DEV_BOARD_POWER_WATTS``) is a double in W.
* DCGM 4.6.0 has no new name for the energy field (its "renamed per DCGM Field Naming
  Standard" aliases do not list it), so :data:`ENERGY_4_9_NAME` is ``None``: a ≥ 4.9 page
  carries no energy counter, as the cluster's 4.9 pages today.

Conventions, so the answer key (:mod:`aifinops.demo.energy_key`) is exact:

* Epoch ``e`` is the interval ``(e·epoch_s, (e+1)·epoch_s]``. A utilization figure read at
  ``t`` is the use over the epoch that ends at or contains ``t`` (DCGM's utilization is an
  average over the sample period just past), so a reader that samples at every epoch
  boundary reads, for each epoch, that epoch's use and the energy its counter gained.
* Utilization is in thousandths (``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` prints three decimals), so
  the share a reader sees is the share the truth uses; ``DCGM_FI_DEV_GPU_UTIL`` (integer
  percent) is derived from it and is not exact.
* Power in whole milliwatts, so an epoch's energy (mW × s = mJ) is an exact integer.
* A counter reset happens on an epoch boundary ``r``: read at ``r`` the counter still shows
  the energy before it; after ``r`` it counts from 0. Drivers also reload every
  ``reload_period_s`` (weekly maintenance, a per-GPU phase), which bounds the work of one
  read.

Nothing here imports ``aifinops.model`` or ``aifinops.sources``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aifinops.demo.cluster import (
    A100,
    H100,
    L4,
    ClusterSpec,
    GpuHold,
    MigInstance,
    NodePoolSpec,
    SimCluster,
    SimGpu,
    SimPod,
)

ENERGY_METRIC = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"
ENERGY_4_9_NAME: str | None = None  # DCGM ≤ 4.6 has no rename of field 156 (see above)
MJ_PER_KWH = 3.6e9

# Thousandths of the unit's time (of the device's, for a pod on a time-sliced GPU).
_BUSY = (300, 950)
_IDLE = (10, 30)
_SHARE_BUSY = (150, 450)  # above 1/3 at times: a pod using more than its replica
_SHARE_CAP = 950  # pods of one time-sliced GPU never sum above this


def owned_pools(prefix: str = "onprem") -> tuple[NodePoolSpec, ...]:
    """The owned pools the demo adds: H100s held whole, A100s cut into MIG instances, L4s
    time-sliced. Each is built from its own random stream, so adding them moves nothing else
    in the cluster."""
    return (
        NodePoolSpec(
            f"{prefix}-h100", 1, H100, 4, "none", "dgx-h100", 112.0, 2048.0, "dc1", own_rng=True
        ),
        NodePoolSpec(
            f"{prefix}-a100-mig", 1, A100, 2, "mig", "dgx-a100", 128.0, 1024.0, "dc1", own_rng=True
        ),
        NodePoolSpec(
            f"{prefix}-l4-shared", 1, L4, 2, "timeslice", "r760xa", 64.0, 512.0, "dc1", own_rng=True
        ),
    )


def owned_cluster_spec(**overrides: Any) -> ClusterSpec:
    """A cluster of only the owned pools and one CPU node (tests of energy: every GPU's
    counter is exact)."""
    general = NodePoolSpec("general", 1, None, 0, "none", "m7i.8xlarge", 32.0, 128.0, "dc1")
    # Seed 6: a partly requested time-sliced GPU, an unheld MIG instance and whole GPU, a
    # pod holding two GPUs, idle and busy holds, a pod no tenancy rule matches.
    spec = ClusterSpec(seed=6, cluster_name="onprem", pools=(general, *owned_pools()))
    return replace(spec, **overrides)


@dataclass(frozen=True, slots=True)
class CounterReset:
    """A driver reload on one GPU: the ``gpu``-th GPU of pool ``pool`` (node by node, in
    index order) at ``at`` (unix seconds, on an epoch boundary), and every ``every_s``
    seconds after it when that is not 0 (a GPU reset by health checks, for the demo)."""

    pool: str
    gpu: int
    at: float
    every_s: int = 0


@dataclass(frozen=True, slots=True)
class EnergySpec:
    """What shapes the owned pools' power: which pools, the epoch, idle power as a fraction
    of the model's maximum, the drivers' reload period and extra resets."""

    pools: tuple[str, ...]
    epoch_s: int = 300
    idle_power_ratio: float = 0.1
    reload_period_s: int = 7 * 86400
    resets: tuple[CounterReset, ...] = ()

    def __post_init__(self) -> None:
        if self.epoch_s <= 0 or 3600 % self.epoch_s:
            raise ValueError("epoch_s must divide an hour")
        if self.reload_period_s % self.epoch_s:
            raise ValueError("reload_period_s must be a multiple of epoch_s")
        for r in self.resets:
            if r.at % self.epoch_s or r.every_s % self.epoch_s or r.every_s < 0:
                raise ValueError(f"reset {r} is not on epoch boundaries")


@dataclass(frozen=True, slots=True)
class Hold:
    """One pod's hold on a simulated GPU: ``unit`` is the MIG GPU instance id or ``""``;
    ``request`` the fraction of the physical GPU it holds (1, slices/7, or 1/replicas);
    ``part`` the unit's fraction of the physical GPU."""

    pod: SimPod
    hold: GpuHold
    unit: str
    request: float
    part: float


@dataclass(frozen=True, slots=True)
class EpochUse:
    """One GPU over one epoch: each hold's figure (thousandths of its unit's time; of the
    device's for a time-sliced GPU), its share of the physical GPU, the power and energy."""

    epoch: int
    milli: tuple[int, ...]  # parallel to EnergySim.holds(gpu)
    shares: tuple[float, ...]
    power_mw: int
    energy_mj: int


@dataclass(slots=True)
class _GpuState:
    gpu: SimGpu
    holds: tuple[Hold, ...]
    resets: tuple[tuple[float, int], ...]  # (first, every_s or 0)
    reload_phase: int  # seconds, on an epoch boundary
    blocks: dict[int, int] = field(default_factory=dict)  # hour block -> mJ


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (stable across runs and platforms)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class EnergySim:
    """Power, energy counters and per-hold use of the GPUs in ``spec.pools`` of ``sim``.

    Pure: every figure is a function of the cluster's layout, ``spec`` and the time asked.
    Hour blocks of energy are cached per GPU (a read sums at most a reload period of them).
    """

    def __init__(self, sim: SimCluster, spec: EnergySpec) -> None:
        if sim.spec.timeslice_util != "per_pod":
            raise ValueError("the energy sim reports each pod's own share (timeslice_util)")
        self.sim = sim
        self.spec = spec
        pools = set(spec.pools)
        known = {p.name for p in sim.spec.pools}
        if not pools <= known:
            raise ValueError(f"unknown pools {sorted(pools - known)}")
        by_unit: dict[tuple[str, str], list[tuple[SimPod, GpuHold]]] = {}
        for pod in sim.pods:
            for h in pod.holds:
                by_unit.setdefault(h.unit, []).append((pod, h))
        self._state: dict[str, _GpuState] = {}
        self._ordinal: dict[tuple[str, int], str] = {}
        for pool in spec.pools:
            n = 0
            for node in (x for x in sim.nodes if x.pool == pool):
                for gpu in node.gpus:
                    self._ordinal[(pool, n)] = gpu.uuid
                    n += 1
                    self._state[gpu.uuid] = self._gpu_state(gpu, by_unit)
        for r in spec.resets:
            uuid = self._ordinal.get((r.pool, r.gpu))
            if uuid is None:
                raise ValueError(f"no GPU {r.gpu} in pool {r.pool!r}")
            st = self._state[uuid]
            st.resets = (*st.resets, (float(r.at), r.every_s))

    def _gpu_state(
        self, gpu: SimGpu, by_unit: Mapping[tuple[str, str], list[tuple[SimPod, GpuHold]]]
    ) -> _GpuState:
        holds: list[Hold] = []
        units: Sequence[MigInstance | None] = gpu.mig if gpu.sharing == "mig" else (None,)
        for inst in units:
            gi = inst.gi_id if inst else ""
            part = inst.slices / gpu.model.mig_slices if inst else 1.0
            for pod, h in by_unit.get((gpu.uuid, gi), ()):
                if pod.schedule is not None or not pod.dcgm_mapped:
                    raise ValueError(f"{pod.name}: owned pools hold only steady, mapped pods")
                holds.append(Hold(pod, h, gi, h.fraction, part))
        period = self.spec.reload_period_s
        epochs = period // self.spec.epoch_s
        phase = math.floor(_unit(gpu.uuid, "reload") * epochs) * self.spec.epoch_s
        return _GpuState(gpu, tuple(holds), (), phase)

    # --- layout -----------------------------------------------------------------------

    @property
    def gpus(self) -> tuple[SimGpu, ...]:
        """The simulated GPUs, node by node."""
        return tuple(st.gpu for st in self._state.values())

    def covers(self, uuid: str) -> bool:
        """Whether the GPU ``uuid`` is one of this sim's (its counter is exact)."""
        return uuid in self._state

    def gpu(self, pool: str, ordinal: int) -> SimGpu:
        """The ``ordinal``-th GPU of ``pool``."""
        return self._state[self._ordinal[(pool, ordinal)]].gpu

    def holds(self, uuid: str) -> tuple[Hold, ...]:
        """The holds on GPU ``uuid`` (unit by unit, pods in layout order)."""
        return self._state[uuid].holds

    def epoch(self, t: float) -> int:
        """The epoch ``(e·Δ, (e+1)·Δ]`` that contains ``t``."""
        return math.ceil(t / self.spec.epoch_s) - 1

    # --- use and power ----------------------------------------------------------------

    def _figure(self, gpu: SimGpu, h: Hold, e: int) -> int:
        key = f"{h.pod.namespace}/{h.pod.name}/{gpu.uuid}/{h.unit}"
        if gpu.sharing == "timeslice":
            lo, hi = _SHARE_BUSY if h.pod.busy else _IDLE
        else:
            lo, hi = _BUSY if h.pod.busy else _IDLE
        mid = (e + 0.5) * self.spec.epoch_s
        diurnal = 0.5 + 0.35 * math.sin(2.0 * math.pi * (mid / 86400.0 + _unit(key, "phase")))
        x = min(1.0, max(0.0, diurnal + 0.15 * (2.0 * _unit(key, "noise", e) - 1.0)))
        return lo + round(x * (hi - lo))

    def use(self, uuid: str, e: int) -> EpochUse:
        """GPU ``uuid`` over epoch ``e``: per-hold figures and shares, power and energy."""
        st = self._state[uuid]
        gpu = st.gpu
        milli = [self._figure(gpu, h, e) for h in st.holds]
        if gpu.sharing == "timeslice" and sum(milli) > _SHARE_CAP:
            total = sum(milli)
            milli = [m * _SHARE_CAP // total for m in milli]
        shares = tuple(
            m / 1000.0 if gpu.sharing == "timeslice" else h.part * m / 1000.0
            for h, m in zip(st.holds, milli, strict=True)
        )
        busy = min(1.0, math.fsum(shares))
        max_w = gpu.model.max_power_w
        idle_w = max_w * self.spec.idle_power_ratio
        power_mw = round(1000.0 * (idle_w + (max_w - idle_w) * busy))
        return EpochUse(e, tuple(milli), shares, power_mw, power_mw * self.spec.epoch_s)

    def figure_at(self, uuid: str, hold: Hold, t: float) -> int:
        """The figure (thousandths) DCGM shows for ``hold`` at ``t``."""
        use = self.use(uuid, self.epoch(t))
        return use.milli[self._state[uuid].holds.index(hold)]

    def power_w(self, uuid: str, t: float) -> float:
        """The power DCGM shows at ``t`` (W): the epoch's, constant over it."""
        return self.use(uuid, self.epoch(t)).power_mw / 1000.0

    # --- the counter ------------------------------------------------------------------

    def last_reset(self, uuid: str, t: float) -> float:
        """When GPU ``uuid``'s counter last started from 0 before ``t`` (strictly)."""
        st = self._state[uuid]
        period = self.spec.reload_period_s
        reload = st.reload_phase + (math.ceil((t - st.reload_phase) / period) - 1) * period
        latest = float(reload)
        for first, every in st.resets:
            if first < t:
                k = math.ceil((t - first) / every) - 1 if every else 0
                latest = max(latest, first + k * every)
        return latest

    def energy_mj(self, uuid: str, start: float, end: float) -> int:
        """The GPU's true energy over ``(start, end]`` in mJ (floor; exact on boundaries)."""
        if end <= start:
            return 0
        step = self.spec.epoch_s
        # The interval opens just after ``start``: in the epoch that starts at or before it.
        first, last = math.floor(start / step), self.epoch(end)
        if first == last:
            return math.floor(self.use(uuid, first).power_mw * (end - start))
        head = math.floor(self.use(uuid, first).power_mw * ((first + 1) * step - start))
        tail = math.floor(self.use(uuid, last).power_mw * (end - last * step))
        return head + self._whole_epochs(uuid, first + 1, last) + tail

    def _whole_epochs(self, uuid: str, lo: int, hi: int) -> int:
        """Energy (mJ) of the whole epochs ``lo ≤ e < hi``, by cached hour blocks."""
        per_block = 3600 // self.spec.epoch_s
        st = self._state[uuid]
        total = 0
        e = lo
        while e < hi:
            if e % per_block == 0 and e + per_block <= hi:
                b = e // per_block
                cached = st.blocks.get(b)
                if cached is None:
                    cached = sum(self.use(uuid, k).energy_mj for k in range(e, e + per_block))
                    st.blocks[b] = cached
                total += cached
                e += per_block
            else:
                total += self.use(uuid, e).energy_mj
                e += 1
        return total

    def counter_mj(self, uuid: str, t: float) -> int:
        """``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` at ``t``: mJ since the last reset."""
        return self.energy_mj(uuid, self.last_reset(uuid, t), t)

    # --- what dcgm-exporter prints --------------------------------------------------------

    def dcgm_values(self, gpu: SimGpu, pod: SimPod | None, gi_id: str, t: float) -> dict[str, str]:
        """The sample's figures as dcgm-exporter ≤ 4.8 prints them (legacy names): the
        hold's (or the unheld unit's) use, and the device's power and energy counter."""
        use = self.use(gpu.uuid, self.epoch(t))
        st = self._state[gpu.uuid]
        milli = 0
        for h, m in zip(st.holds, use.milli, strict=True):
            if h.unit == gi_id and pod is not None and h.pod is pod:
                milli = m
        return {
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE": f"{milli / 1000.0:f}",
            # GPU_UTIL counts any kernel running, above the engine's active ratio.
            "DCGM_FI_DEV_GPU_UTIL": str(min(100, math.ceil(milli * 1.25 / 10))),
            POWER_METRIC: f"{use.power_mw / 1000.0:f}",
            ENERGY_METRIC: str(self.counter_mj(gpu.uuid, t)),
        }
