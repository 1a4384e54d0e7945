"""The reference mapping of dcgm-exporter series to GpuSample: the exporter's own
``sources.dcgm.gpu_samples`` before it read series once and values every refresh, kept
verbatim as the oracle the source is compared with (tests/sources/test_dcgm_fastpath.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace

from aifinops.model.inputs import GpuSample
from aifinops.sources.dcgm import _KIND_OF_CHOICE, UTILIZATION_NAMES, UtilizationMetric

_POD_LABELS = (
    ("exported_namespace", "exported_pod", "exported_container"),
    ("pod_namespace", "pod_name", "container_name"),
    ("namespace", "pod", "container"),
)
_RENAMED_POD_KEYS = ("exported_namespace", "exported_pod", "pod_namespace", "pod_name")


def reference_gpu_samples(
    series: Iterable[tuple[str, Mapping[str, str], float]], choice: UtilizationMetric
) -> tuple[GpuSample, ...]:
    """Map dcgm-exporter series ``(metric name, labels, value)`` to :class:`GpuSample`
    records, in input order.

    Each name's unit becomes a 0–1 ratio (``DCGM_FI_DEV_GPU_UTIL`` percent / 100; the rest
    are ratios), clamped to [0, 1]. Per unit (a GPU, or a MIG instance) one kind of metric is
    kept: with ``choice="auto"`` the profiling metric where the unit has it, else the device
    metric; with a named metric only that kind. The same (unit, pod, container, kind) seen
    twice keeps its highest value. Skipped: unknown names, NaN and ±Inf values, and series
    without a GPU UUID (nothing to join them on). An empty label value reads as absent
    (``None`` for the optional fields, ``""`` for ``gpu_index``, ``model_name`` and ``node``).

    The pod is read from ``exported_*`` labels first (Prometheus renamed dcgm-exporter's own),
    then the ``--use-old-namespace`` names, then ``pod``/``namespace``/``container``. When any
    series of the input carries one of the first two forms, plain ``pod``/``namespace`` are
    the scrape target's labels (the dcgm-exporter pod) and are ignored on every series: an
    unassigned GPU has no pod labels of its own for Prometheus to rename. A time-sliced GPU is
    one sample per pod, each with the figure DCGM gives it; a MIG instance is one sample with
    ``mig_profile``/``mig_instance`` set.
    """
    wanted = None if choice == "auto" else _KIND_OF_CHOICE[choice]
    rows = []
    for name, labels, value in series:
        known = UTILIZATION_NAMES.get(name)
        if known is None or not math.isfinite(value):
            continue
        kind, scale = known
        if wanted is not None and kind != wanted:
            continue
        uuid = labels.get("UUID") or labels.get("uuid")
        if not uuid:
            continue
        rows.append((name, kind, scale, uuid, labels, value))
    renamed = any(labels.get(k) for *_, labels, _ in rows for k in _RENAMED_POD_KEYS)
    sources = _POD_LABELS[:2] if renamed else _POD_LABELS

    def unit(uuid: str, labels: Mapping[str, str]) -> tuple[str, str]:
        return uuid, labels.get("GPU_I_ID", "") if labels.get("GPU_I_PROFILE") else ""

    profiled_units = {
        unit(uuid, labels) for _, kind, _, uuid, labels, _ in rows if kind == "profiling"
    }
    # dcgm-exporter's per-process form (#594) makes only the device metric per pod: on such a
    # unit the profiling metric is the device's figure repeated on every pod, so the device
    # metric is the one read there (a pod series with pod_uid beside a pod-less one).
    pod_keys = [k for keys in sources for k in keys[:2]]
    with_pod_uid = {
        unit(uuid, labels)
        for _, kind, _, uuid, labels, _ in rows
        if kind == "device" and labels.get("pod_uid") and any(labels.get(k) for k in pod_keys)
    }
    pod_less = {
        unit(uuid, labels)
        for _, kind, _, uuid, labels, _ in rows
        if kind == "device" and not any(labels.get(k) for k in pod_keys)
    }
    per_process_units = with_pod_uid & pod_less
    kept: dict[tuple[str, ...], GpuSample] = {}
    with_uid: set[tuple[str, ...]] = set()  # pod series carrying pod_uid (per-process form)
    for name, kind, scale, uuid, labels, value in rows:
        profile = labels.get("GPU_I_PROFILE") or None
        instance = (labels.get("GPU_I_ID") or None) if profile else None
        here = (uuid, instance or "")
        if here in per_process_units:
            if kind == "profiling":
                continue  # the device's figure repeated per pod: the per-process one is read
        elif kind == "device" and here in profiled_units:
            continue  # this unit has the profiling metric: it is the one read
        namespace = pod = container = None
        for ns_key, pod_key, container_key in sources:
            namespace = labels.get(ns_key) or None
            pod = labels.get(pod_key) or None
            if namespace or pod:
                container = labels.get(container_key) or None
                break
        sample = GpuSample(
            uuid=uuid,
            gpu_index=labels.get("gpu", ""),
            model_name=labels.get("modelName", ""),
            node=labels.get("hostname") or labels.get("Hostname") or "",
            utilization=min(max(value * scale, 0.0), 1.0),
            namespace=namespace,
            pod=pod,
            container=container,
            mig_profile=profile,
            mig_instance=instance,
            metric=name,
        )
        key = (uuid, instance or "", namespace or "", pod or "", container or "", kind)
        if pod and labels.get("pod_uid"):
            with_uid.add(key)
        seen = kept.get(key)
        if seen is None or sample.utilization > seen.utilization:
            kept[key] = sample  # a duplicate keeps the first position, the highest value
    if not with_uid:
        return tuple(kept.values())
    # dcgm-exporter's per-process form (--kubernetes-virtual-gpus, PR #594): the device's own
    # series (no pod) beside one series per pod with that pod's processes' figure and pod_uid.
    devices = {(k[0], k[1], k[5]) for k, v in kept.items() if v.pod is None}
    return tuple(
        replace(v, per_process=True) if k in with_uid and (k[0], k[1], k[5]) in devices else v
        for k, v in kept.items()
    )
