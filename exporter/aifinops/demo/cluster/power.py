"""Exact power and DCGM energy counters for the pools of ``ClusterSpec.energy`` (the owned,
on-premises pools of :func:`~.spec.owned_pools`).

The other pools report a power gauge and an energy counter that do not agree with each other
(the counter is a constant average since boot). These are simulated so that a reader can be
checked against the truth (:mod:`.energy_truth`) to a fraction of a percent: every GPU's
power is a function of its measured use, constant over an *epoch* (``epoch_s``, 300 s), and
DCGM's energy counter is the exact integral of that power.

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

Conventions, so the answer key is exact:

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aifinops.demo.cluster.hashing import hash_unit
from aifinops.demo.cluster.records import GpuHold, MigInstance, SimGpu, SimNode, SimPod
from aifinops.demo.cluster.spec import EnergySpec

ENERGY_METRIC = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"
ENERGY_4_9_NAME: str | None = None  # DCGM ≤ 4.6 has no rename of field 156 (see above)
MJ_PER_KWH = 3.6e9

# Thousandths of the unit's time (of the device's, for a pod on a time-sliced GPU).
_BUSY = (300, 950)
_IDLE = (8, 24)  # GPU_UTIL 1–3 %, as the other pools' idle pods
_SHARE_CAP = 950  # pods of one time-sliced GPU never sum above this


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
    last_read: tuple[float, int] = (math.nan, 0)  # (t, counter): one read serves every series
    blocks: dict[int, int] = field(default_factory=dict)  # hour block -> mJ


class EnergySim:
    """Power, energy counters and per-hold use of the GPUs of the pools ``spec.pools``, built
    from the layout's ``nodes`` and ``pods`` (the layout builds one when its spec has
    ``energy``).

    Pure: every figure is a function of the layout, ``spec`` and the time asked. Hour blocks
    of energy are cached per GPU (a read sums at most a reload period of them), and the last
    counter read per GPU (every MIG instance and pod series repeats it).
    """

    def __init__(
        self,
        spec: EnergySpec,
        nodes: Sequence[SimNode],
        pods: Sequence[SimPod],
        *,
        timeslice_util: str = "per_pod",
    ) -> None:
        # "device": every pod of a time-sliced GPU shows the device's figure, as stock
        # dcgm-exporter does (the answer key assumes each pod's own, "per_pod").
        self._device_figure = timeslice_util == "device"
        self.spec = spec
        known = {n.pool for n in nodes}
        if not set(spec.pools) <= known:
            raise ValueError(f"unknown pools {sorted(set(spec.pools) - known)}")
        by_unit: dict[tuple[str, str], list[tuple[SimPod, GpuHold]]] = {}
        for pod in pods:
            for h in pod.holds:
                by_unit.setdefault(h.unit, []).append((pod, h))
        self._state: dict[str, _GpuState] = {}
        self._ordinal: dict[tuple[str, int], str] = {}
        for pool in spec.pools:
            n = 0
            for node in (x for x in nodes if x.pool == pool):
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
        phase = math.floor(hash_unit(gpu.uuid, "reload") * epochs) * self.spec.epoch_s
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
            lo, hi = self.spec.timeslice_busy_milli if h.pod.busy else _IDLE
        else:
            lo, hi = _BUSY if h.pod.busy else _IDLE
        mid = (e + 0.5) * self.spec.epoch_s
        diurnal = 0.5 + 0.35 * math.sin(2.0 * math.pi * (mid / 86400.0 + hash_unit(key, "phase")))
        x = min(1.0, max(0.0, diurnal + 0.15 * (2.0 * hash_unit(key, "noise", e) - 1.0)))
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
        st = self._state[uuid]
        if st.last_read[0] == t:
            return st.last_read[1]
        value = self.energy_mj(uuid, self.last_reset(uuid, t), t)
        st.last_read = (t, value)
        return value

    # --- what dcgm-exporter prints --------------------------------------------------------

    def figure(self, gpu: SimGpu, pod: SimPod | None, gi_id: str, t: float) -> tuple[int, int]:
        """What DCGM shows for ``pod``'s hold on unit ``gi_id`` of ``gpu`` at ``t`` (or the
        unheld unit: 0): ``(DCGM_FI_DEV_GPU_UTIL percent, engine-active thousandths)``.
        GPU_UTIL counts any kernel running, so it reads above the engine's active ratio."""
        milli = 0
        if pod is not None:
            use = self.use(gpu.uuid, self.epoch(t))
            for h, m in zip(self._state[gpu.uuid].holds, use.milli, strict=True):
                if h.unit == gi_id and (h.pod is pod or self._device_figure):
                    milli = m if not self._device_figure else min(1000, sum(use.milli))
        # Time-sliced pods' percents must not sum over 100: no margin there.
        factor = 1.0 if gpu.sharing == "timeslice" else 1.25
        return min(100, math.ceil(milli * factor / 10)), milli

    def device_values(self, gpu: SimGpu, t: float) -> dict[str, str]:
        """The device-scope figures every series of ``gpu`` repeats, as dcgm-exporter ≤ 4.8
        prints them: power (W, Go's ``%f``) and the energy counter (mJ, an integer)."""
        power_mw = self.use(gpu.uuid, self.epoch(t)).power_mw
        return {
            POWER_METRIC: f"{power_mw / 1000.0:f}",
            ENERGY_METRIC: str(self.counter_mj(gpu.uuid, t)),
        }
