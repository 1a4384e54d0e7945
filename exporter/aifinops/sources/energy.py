"""GPU energy per physical GPU from NVIDIA dcgm-exporter, over the interval between reads.

Read where ``sources.dcgm`` reads utilization (its Prometheus, or its scrape pages), when
``energy.enabled``. Names, as NVIDIA documents them (tests/fixtures/PROVENANCE.md):

* ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``: a counter, millijoules since the driver loaded
  (dcgm-exporter's ``etc/default-counters.csv``, ≤ 4.8);
* ``DCGM_FI_DEV_POWER_USAGE`` (≤ 4.8) and ``DCGM_FI_DEV_BOARD_POWER_WATTS`` (its DCGM 4.6
  renamed alias in ``dcgmlib/dcgm_fields.h``, the name dcgm-exporter ≥ 4.9 emits): watts.

dcgm-exporter ≥ 4.9 reports energy in joules under a DCGM 4.7 name that neither the stored
DCGM sources (4.6.0) nor the dcgm-exporter sources (≤ 4.8) hold, so it is not guessed here:
on those versions energy comes from the power draw × time.

This is the one source that keeps state between reads (the previous counter and power of each
GPU, :class:`EnergyMemory`): the model is pure and receives each GPU's joules over the
interval (:class:`~aifinops.model.inputs.EnergyReadings`). A counter lower than its previous
reading was reset (driver reload, GPU reset): the interval counts the new value from zero, as
Prometheus' ``increase()`` does. A GPU without a usable counter pair uses the trapezoid of its
previous and current power × the time between the reads. Every series of one GPU (MIG
instances, time-sliced pods: dcgm-exporter repeats the device's value on each) counts once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx

from aifinops.model.inputs import EnergyReadings, GpuEnergy
from aifinops.settings import DcgmSettings
from aifinops.sources.base import CpuRunner, Slot, SourceError
from aifinops.sources.dcgm import read_pages, utilization_query
from aifinops.sources.promapi import VectorReader
from aifinops.sources.promtext import SeriesEntry, SeriesReader
from aifinops.sources.transport import Transport

# Per metric name: (kind, multiplier to joules or watts).
ENERGY_NAMES: Mapping[str, tuple[Literal["energy", "power"], float]] = {
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy", 1e-3),  # mJ
    "DCGM_FI_DEV_POWER_USAGE": ("power", 1.0),  # W
    "DCGM_FI_DEV_BOARD_POWER_WATTS": ("power", 1.0),  # W (DCGM 4.6+ name)
}


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one read: its energy counter in joules and its power in watts (``None``
    where the page has no such series)."""

    joules: float | None = None
    watts: float | None = None


# A GPU absent from the reads this long is forgotten (it comes back as a new one), so the
# memory stays bounded while autoscaled nodes bring new GPU UUIDs.
FORGET_AFTER_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class EnergyMemory:
    """The previous read: when (unix seconds), each GPU's last reading and when it was read."""

    at: float | None = None
    gpus: Mapping[str, GpuReading] = field(default_factory=dict)
    seen: Mapping[str, float] = field(default_factory=dict)


def gpu_readings(series: Iterable[tuple[str, Mapping[str, str], float]]) -> dict[str, GpuReading]:
    """Per GPU UUID, its counter (J) and power (W) from ``(name, labels, value)`` series.
    Unknown names, non-finite or negative values and series without a UUID are skipped; a
    GPU's value repeated on several series (MIG instances, pods) is read once (the highest)."""
    entries: list[EnergySeries] = []
    values: list[float] = []
    for name, labels, value in series:
        entries.append(EnergySeries.of(name, labels))
        values.append(value)
    return readings_of(entries, values)


class EnergySeries(SeriesEntry):
    """What :func:`readings_of` needs of one series, worked out once from its name and
    labels (a source reading the same series again reads only their values): ``kind`` is
    ``None`` for a series never used (an unknown name, no GPU UUID)."""

    __slots__ = ("kind", "scale", "uuid")

    def __init__(
        self,
        kind: Literal["energy", "power"] | None = None,
        scale: float = 1.0,
        uuid: str = "",
    ) -> None:
        super().__init__()  # the reader's own fields (SeriesEntry)
        self.kind = kind
        self.scale = scale
        self.uuid = uuid

    @classmethod
    def of(cls, name: str, labels: Mapping[str, str]) -> EnergySeries:
        known = ENERGY_NAMES.get(name)
        uuid = labels.get("UUID") or labels.get("uuid")
        if known is None or not uuid:
            return cls()
        return cls(known[0], known[1], uuid)


def readings_of(entries: Sequence[EnergySeries], values: Sequence[float]) -> dict[str, GpuReading]:
    """:func:`gpu_readings` of series already worked out (``values``: one per entry)."""
    energy: dict[str, float] = {}
    power: dict[str, float] = {}
    isfinite = math.isfinite
    for s, value in zip(entries, values, strict=True):
        kind = s.kind
        if kind is None or not isfinite(value) or value < 0:
            continue
        into = energy if kind == "energy" else power
        uuid = s.uuid
        into[uuid] = max(into.get(uuid, 0.0), value * s.scale)
    return {
        uuid: GpuReading(energy.get(uuid), power.get(uuid)) for uuid in sorted({*energy, *power})
    }


def energy_since(
    memory: EnergyMemory, readings: Mapping[str, GpuReading], now: float
) -> tuple[EnergyReadings, EnergyMemory]:
    """Each GPU's joules since ``memory`` (the previous read) and the memory to keep.

    Counter: ``current - previous``, or ``current`` when it went down (a reset, counted in
    ``counter_resets``). Else power: the mean of the previous and current power (the one there
    is) × the seconds between the reads. A GPU seen for the first time, or with neither, adds
    nothing this time. A GPU missing from this read keeps its previous reading, so a
    short gap is covered by the next interval (as ``increase()`` over a gap), for at most
    :data:`FORGET_AFTER_SECONDS`."""
    seen = {
        uuid: at
        for uuid in memory.gpus
        if now - (at := memory.seen.get(uuid, memory.at or now)) <= FORGET_AFTER_SECONDS
    }
    seen.update(dict.fromkeys(readings, now))
    kept = {uuid: r for uuid, r in memory.gpus.items() if uuid in seen}
    kept.update(readings)
    new_memory = EnergyMemory(now, kept, seen)
    if memory.at is None or now <= memory.at:
        return EnergyReadings(now, now), new_memory
    seconds = now - memory.at
    out: list[GpuEnergy] = []
    resets = 0
    for uuid, cur in readings.items():
        prev = memory.gpus.get(uuid)
        if prev is None:
            continue
        if cur.joules is not None and prev.joules is not None:
            if cur.joules >= prev.joules:
                out.append(GpuEnergy(uuid, cur.joules - prev.joules, "counter"))
            else:
                resets += 1
                out.append(GpuEnergy(uuid, cur.joules, "counter"))
            continue
        watts = [w for w in (prev.watts, cur.watts) if w is not None]
        if watts:
            out.append(GpuEnergy(uuid, math.fsum(watts) / len(watts) * seconds, "power"))
    return EnergyReadings(memory.at, now, tuple(out), resets), new_memory


class EnergySource:
    """Reads the energy counters and power of every GPU where ``sources.dcgm`` reads, and
    returns their energy since the previous successful read. A failed read changes nothing:
    the next good read covers the whole gap."""

    name = "dcgm_energy"
    slot = Slot.ENERGY
    local = False
    min_interval_seconds = 0.0  # every refresh: each read closes an interval
    first_read_baseline = False
    targets = None

    def __init__(
        self, settings: DcgmSettings, clock: Callable[[], float], *, run: CpuRunner
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._run = run
        self._transport = Transport(self.name, settings, run)
        self._memory = EnergyMemory()
        # The series of the last read, worked out once (see sources/dcgm.py: the same design).
        self._answer: VectorReader[EnergySeries] = VectorReader()
        names = frozenset(ENERGY_NAMES)
        self._pages = [SeriesReader[EnergySeries](names) for _ in settings.scrape_urls]

    async def fetch(self, client: httpx.AsyncClient) -> EnergyReadings:
        s = self._settings
        names = tuple(ENERGY_NAMES)
        headers = self._transport.headers()
        if s.mode == "prometheus":
            body = await self._transport.query_body(
                client, utilization_query(names, s.selector), headers
            )
            series, values = await self._run(self._answer.read, body, _derive)
        else:
            series, values = await read_pages(
                self._transport, s, client, headers, self._pages, EnergySeries.of
            )
        now = self._clock()
        readings = await self._run(readings_of, series, values)
        if not readings:
            raise SourceError(
                "invalid", f"empty answer: no usable {'/'.join(names)} series with a GPU UUID"
            )
        out, self._memory = energy_since(self._memory, readings, now)
        return out


def _derive(labels: Mapping[str, str]) -> EnergySeries:
    return EnergySeries.of(labels.get("__name__", ""), labels)
