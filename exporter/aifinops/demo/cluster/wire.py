"""Wire details the renderers and the shared-GPU pools both need, below the layout so that
any module of the demo can import them without importing the cluster that renders them:
OpenCost's number rounding and dcgm-exporter's family table (name, type, HELP)."""

from __future__ import annotations

import math

DCGM_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
    ),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
)


def opencost_round(value: float) -> float:
    """OpenCost's ``formatFloat64ForResponse``: ``math.Round(f*100000)/100000`` (half away
    from zero). NaN and ±Inf become ``None`` there; the sim never produces them."""
    scaled = value * 100000.0
    rounded = math.floor(scaled + 0.5) if scaled >= 0 else -math.floor(-scaled + 0.5)
    return rounded / 100000.0
