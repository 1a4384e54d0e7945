"""dcgm-exporter's ``/metrics`` pages, rendered from the samples at ``now``.

GPU nodes speak the dcgm-exporter generations of ``spec.dcgm_generations`` in turn: ``"4.8"``
(legacy names, utilization in percent, ``Hostname``/``DCGM_FI_DRIVER_VERSION`` labels) or
``"4.9"`` (DCGM 4.7 names, utilization as a 0–1 ratio, ``hostname`` and
``DCGM_FI_SYSTEM_DRIVER_VERSION``). A 4.9 page carries only the families whose new names the
sources this project read name (see tests/fixtures/PROVENANCE.md); SM clock, energy and
framebuffer are left out there. MIG instances carry only the profiling metric, as real DCGM
does; a GPU model without profiling counters (``Tesla T4``) only ``DCGM_FI_DEV_GPU_UTIL``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from aifinops.demo.cluster.activity import Sample, samples
from aifinops.demo.cluster.hashing import hash_unit
from aifinops.demo.cluster.layout import Layout
from aifinops.demo.cluster.wire import DCGM_FAMILIES

# dcgm-exporter ≥ 4.9 names (DCGM 4.7's) of the legacy families whose new name the sources
# read for this project give (DCGM's dcgm_fields.h deprecation aliases): see
# tests/fixtures/PROVENANCE.md. Help texts here are the sim's own.
DCGM_4_9_NAMES: Mapping[str, str] = {
    "DCGM_FI_DEV_GPU_TEMP": "DCGM_FI_DEV_GPU_TEMP_CELSIUS",
    "DCGM_FI_DEV_POWER_USAGE": "DCGM_FI_DEV_BOARD_POWER_WATTS",
    "DCGM_FI_DEV_GPU_UTIL": "DCGM_FI_DEV_GPU_UTIL_RATIO",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO",
}
DCGM_4_9_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("DCGM_FI_DEV_GPU_TEMP_CELSIUS", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_BOARD_POWER_WATTS", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_UTIL_RATIO", "gauge", "GPU utilization (ratio)."),
    ("DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", "gauge", "Ratio of time the graphics engine is active."),
)
DCGM_FAMILY_NAMES: frozenset[str] = frozenset(
    name for name, _, _ in DCGM_FAMILIES + DCGM_4_9_FAMILIES
)


def _format_dcgm_float(value: float) -> str:
    # dcgm-exporter prints float fields with Go's %f.
    if math.isnan(value):
        return "NaN"
    return f"{value:f}"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_text(layout: Layout, s: Sample) -> str:
    """The label set of one sample's series, in dcgm-exporter's order."""
    gpu = s.gpu
    parts = [
        f'gpu="{gpu.index}"',
        f'UUID="{gpu.uuid}"',
        f'pci_bus_id="{gpu.pci_bus_id}"',
        f'device="nvidia{gpu.index}"',
        f'modelName="{gpu.model.name}"',
    ]
    if s.mig is not None:
        parts.append(f'GPU_I_PROFILE="{s.mig.profile}"')
        parts.append(f'GPU_I_ID="{s.mig.gi_id}"')
    new = layout.dcgm_generation(gpu.node) != "4.8"
    parts.append(f'hostname="{gpu.node}"' if new else f'Hostname="{gpu.node}"')
    driver = "DCGM_FI_SYSTEM_DRIVER_VERSION" if new else "DCGM_FI_DRIVER_VERSION"
    parts.append(f'{driver}="{layout.spec.driver_version}"')
    if s.run is not None:
        pod = s.run.pod
        parts.append(f'container="{_escape_label_value(pod.container)}"')
        parts.append(f'namespace="{_escape_label_value(pod.namespace)}"')
        parts.append(f'pod="{_escape_label_value(s.run.name)}"')
    return ",".join(parts)


def _values(layout: Layout, s: Sample, now: float) -> dict[str, str]:
    """Every legacy family's value text for one sample, as a 4.8 page writes it."""
    model = s.gpu.model
    u = s.util_pct / 100.0
    mem = model.memory_mib
    if s.mig is not None:
        mem = mem * s.mig.slices // model.mig_slices
    key = f"{s.gpu.uuid}/{s.mig.gi_id if s.mig else ''}"
    boot = 1_700_000_000.0 - 86400.0 * 30 * hash_unit(s.gpu.uuid, "boot")
    avg_power = model.max_power_w * (0.35 + 0.3 * hash_unit(s.gpu.uuid, "power"))
    energy_mj = max(0, math.floor((now - boot) * avg_power * 1000.0))
    sm_clock = 210 if u < 0.05 else round(model.max_sm_clock_mhz * (0.6 + 0.4 * u))
    fb_used = 0 if s.run is None and u == 0 else round(mem * (0.15 + 0.8 * u))
    values = {
        "DCGM_FI_DEV_SM_CLOCK": str(sm_clock),
        "DCGM_FI_DEV_GPU_TEMP": str(round(32 + 45 * u + 4 * hash_unit(key, "temp"))),
        "DCGM_FI_DEV_POWER_USAGE": _format_dcgm_float(
            round(model.max_power_w * (0.1 + 0.85 * u) + hash_unit(key, "pw"), 3)
        ),
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": str(energy_mj),
        "DCGM_FI_DEV_GPU_UTIL": str(s.util_pct),
        "DCGM_FI_DEV_FB_USED": str(fb_used),
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": _format_dcgm_float(s.engine_milli / 1000.0),
    }
    if layout.energy is not None and layout.energy.covers(s.gpu.uuid):
        values.update(layout.energy.device_values(s.gpu, now))
    return values


def emitted(layout: Layout, s: Sample, now: float) -> dict[str, str]:
    """The families this sample's exporter writes, by the name it writes them under: a MIG
    instance has no device utilization, a GPU without profiling counters no profiling
    metric, and a 4.9 exporter writes DCGM 4.7 names (utilization as a ratio)."""
    values = _values(layout, s, now)
    if s.mig is not None:
        del values["DCGM_FI_DEV_GPU_UTIL"]
    if not s.gpu.model.profiling:
        del values["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
    if layout.dcgm_generation(s.gpu.node) == "4.8":
        return values
    out: dict[str, str] = {}
    for legacy, value in values.items():
        name = DCGM_4_9_NAMES.get(legacy)
        if name is None:
            continue
        if legacy == "DCGM_FI_DEV_GPU_UTIL":
            value = _format_dcgm_float(s.util_pct / 100.0)
        out[name] = value
    return out


def exposition(layout: Layout, now: float, *, node: str | None = None) -> str:
    """dcgm-exporter ``/metrics`` text at ``now``: every node's GPUs, or one ``node``'s.

    Families in ``default-counters.csv`` order, each ``# HELP``/``# TYPE`` then its series;
    labels in dcgm-exporter's order (``gpu, UUID, pci_bus_id, device, modelName``, MIG's
    ``GPU_I_PROFILE, GPU_I_ID``, ``Hostname, DCGM_FI_DRIVER_VERSION``, then ``container,
    namespace, pod`` when a pod holds the device). Raises ``KeyError`` for an unknown node.
    """
    if node is not None and node not in layout.node_by_name:
        raise KeyError(node)
    page = [s for s in samples(layout, now) if node is None or s.gpu.node == node]
    return render(layout, page, now, _shared_rows(layout, now, node))


def pages(layout: Layout, now: float) -> dict[str, str]:
    """One dcgm-exporter page per GPU node (it runs as a DaemonSet), keyed by node name."""
    by_node: dict[str, list[Sample]] = defaultdict(list)
    for s in samples(layout, now):
        by_node[s.gpu.node].append(s)
    return {
        n.name: render(layout, by_node[n.name], now, _shared_rows(layout, now, n.name))
        for n in layout.nodes
        if n.gpus
    }


def _shared_rows(layout: Layout, now: float, node: str | None) -> list[tuple[str, str, str]]:
    """The shared pools' series (demo/shared_pools.py) as ``(family, label text, value)``."""
    if layout.shared is None:
        return []
    from aifinops.demo.shared_pools import label_text as shared_label_text

    return [
        (family, shared_label_text(pairs), value)
        for family, pairs, value in layout.shared.dcgm_rows(now, layout.spec.driver_version, node)
    ]


def render(
    layout: Layout,
    page: Sequence[Sample],
    now: float,
    extra: Sequence[tuple[str, str, str]] = (),
) -> str:
    """One page: the families in ``default-counters.csv`` order, then the 4.9 names;
    ``extra`` series ``(family, label text, value)`` follow a family's own."""
    rendered = [(label_text(layout, s), emitted(layout, s, now)) for s in page]
    lines: list[str] = []
    for name, type_, help_ in DCGM_FAMILIES + DCGM_4_9_FAMILIES:
        series = [
            f"{name}{{{labels}}} {values[name]}" for labels, values in rendered if name in values
        ]
        series += [
            f"{name}{{{labels}}} {value}" for family, labels, value in extra if family == name
        ]
        if not series:
            continue
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {type_}")
        lines.extend(series)
    return "\n".join(lines) + "\n"
