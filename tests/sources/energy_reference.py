"""The reference reading of DCGM energy series: the exporter's own
``sources.energy.gpu_readings`` before the source read series once and values every read,
kept verbatim as the oracle the source is compared with (tests/sources/test_dcgm_fastpath.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from aifinops.sources.energy import ENERGY_NAMES, GpuReading


def reference_gpu_readings(
    series: Iterable[tuple[str, Mapping[str, str], float]],
) -> dict[str, GpuReading]:
    """Per GPU UUID, its counter (J) and power (W) from ``(name, labels, value)`` series.
    Unknown names, non-finite or negative values and series without a UUID are skipped; a
    GPU's value repeated on several series (MIG instances, pods) is read once (the highest)."""
    energy: dict[str, float] = {}
    power: dict[str, float] = {}
    for name, labels, value in series:
        known = ENERGY_NAMES.get(name)
        uuid = labels.get("UUID") or labels.get("uuid")
        if known is None or not uuid or not math.isfinite(value) or value < 0:
            continue
        kind, scale = known
        into = energy if kind == "energy" else power
        into[uuid] = max(into.get(uuid, 0.0), value * scale)
    return {
        uuid: GpuReading(energy.get(uuid), power.get(uuid)) for uuid in sorted({*energy, *power})
    }
