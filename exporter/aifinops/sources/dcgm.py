"""GPU utilization from NVIDIA dcgm-exporter, per GPU (or MIG instance) and pod.

Two ways to read it, chosen by ``sources.dcgm.mode``:

* ``prometheus``: one instant query of the utilization metrics (``{__name__=~"…"}``) against a
  Prometheus (or Thanos, Mimir) that scrapes dcgm-exporter;
* ``scrape``: the dcgm-exporter ``/metrics`` pages themselves, all fetched concurrently.

Either way the series end up in :func:`gpu_samples_from_series`, the pure mapping from
dcgm-exporter's labels to :class:`~aifinops.model.inputs.GpuSample`. The label names are
dcgm-exporter's (``internal/pkg/transformation/const.go`` and its exposition template):

* ``UUID`` (``uuid`` with ``--use-old-namespace``): the GPU; for a MIG instance, its parent;
* ``gpu``: the GPU index on the node; ``modelName``: e.g. ``NVIDIA H100 80GB HBM3``;
* ``hostname``, or ``Hostname`` before dcgm-exporter PR #655: the node;
* ``GPU_I_PROFILE`` (e.g. ``1g.10gb``) and ``GPU_I_ID``: the MIG instance;
* ``pod``, ``namespace``, ``container`` (``pod_name``, ``pod_namespace``, ``container_name``
  with ``--use-old-namespace``): the pod the device is assigned to, empty when none.

Metric names, both dcgm-exporter generations, recognised without configuration (see
tests/fixtures/PROVENANCE.md for where each name was looked up):

* ≤ 4.8: ``DCGM_FI_DEV_GPU_UTIL`` (percent, 0–100) and ``DCGM_FI_PROF_GR_ENGINE_ACTIVE``
  (ratio), driver label ``DCGM_FI_DRIVER_VERSION``;
* ≥ 4.9 (DCGM 4.7 field names): ``DCGM_FI_DEV_GPU_UTIL_RATIO`` (a 0–1 ratio now) and
  ``DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO``, driver label ``DCGM_FI_SYSTEM_DRIVER_VERSION``.

``utilization_metric: auto`` (the default) picks per unit (a GPU, or a MIG instance): the
profiling metric where any series of the unit has it (MIG instances have only it), else the
device metric. A GPU without profiling counters (a T4) is measured by the device metric and
never fails the source. dcgm-exporter's per-process series (``--kubernetes-virtual-gpus``,
PR #594: the device's series without a pod beside one per pod, with ``pod_uid`` and the pod's
own processes' figure) are marked ``per_process``: each pod's own share. The same series
read twice (two Prometheus jobs scraping one dcgm-exporter) counts once: the highest value
of each (unit, pod, container, metric) is kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

import httpx

from aifinops.model.inputs import GpuSample
from aifinops.settings import DcgmSettings
from aifinops.sources.base import CpuRunner, Slot, SourceError
from aifinops.sources.promtext import decode_page, parse_text
from aifinops.sources.transport import Transport

UtilizationMetric = Literal["auto", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"]

# Per metric name: (kind, multiplier from its unit to a 0–1 ratio). dcgm-exporter ≥ 4.9 renamed
# the fields to DCGM 4.7's names and reports device utilization as a ratio.
UTILIZATION_NAMES: Mapping[str, tuple[Literal["device", "profiling"], float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("device", 0.01),
    "DCGM_FI_DEV_GPU_UTIL_RATIO": ("device", 1.0),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("profiling", 1.0),
    "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO": ("profiling", 1.0),
}
_KIND_OF_CHOICE = {"DCGM_FI_DEV_GPU_UTIL": "device", "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "profiling"}


def metric_names(choice: UtilizationMetric) -> tuple[str, ...]:
    """The DCGM metric names read for ``choice`` (both generations' names)."""
    if choice == "auto":
        return tuple(UTILIZATION_NAMES)
    kind = _KIND_OF_CHOICE[choice]
    return tuple(n for n, (k, _) in UTILIZATION_NAMES.items() if k == kind)


# Where the pod a device is assigned to can be found, most specific first. A Prometheus job
# that does not honor the target's labels renames dcgm-exporter's pod/namespace/container to
# exported_*, and its own pod/namespace/container then name the dcgm-exporter pod itself.
_POD_LABELS = (
    ("exported_namespace", "exported_pod", "exported_container"),
    ("pod_namespace", "pod_name", "container_name"),
    ("namespace", "pod", "container"),
)
_RENAMED_POD_KEYS = ("exported_namespace", "exported_pod", "pod_namespace", "pod_name")


class DcgmSource:
    """Reads the configured utilization metric and returns one sample per series.

    ``fetch`` raises :class:`SourceError` when Prometheus, or any one of the scraped pages,
    fails: partial GPU data would misstate idle cost (a GPU missing from the data looks unused,
    and its whole cost would be reported as idle), so the refresh loop keeps the last complete
    data instead.
    """

    name = "dcgm"
    slot = Slot.GPUS
    local = False
    min_interval_seconds = 0.0
    targets = None

    def __init__(self, settings: DcgmSettings, *, run: CpuRunner) -> None:
        self._settings = settings
        self._run = run
        self._transport = Transport(self.name, settings, run)

    async def fetch(self, client: httpx.AsyncClient) -> tuple[GpuSample, ...]:
        s = self._settings
        names = metric_names(s.utilization_metric)
        headers = self._transport.headers()
        if s.mode == "prometheus":
            # One query for every name (both generations, both metrics): one round trip and
            # one response; each series says its metric in __name__.
            series = await self._transport.query(
                client, utilization_query(names, s.selector), headers
            )
            default = names[0]
            triples = [
                (labels.get("__name__") or default, labels, value) for labels, value in series
            ]
            samples = await self._run(gpu_samples, triples, s.utilization_metric)
            return _not_empty(samples, names)
        # Tens of ms per 1,000-GPU page: each parsed on the worker thread as it arrives.
        scraped = await self._transport.read_pages(
            client, s.scrape_urls, headers, _parse_page, names
        )
        return _not_empty(await self._run(gpu_samples, scraped, s.utilization_metric), names)


def _parse_page(body: bytes, names: tuple[str, ...]) -> list[tuple[str, Mapping[str, str], float]]:
    return list(parse_text(decode_page(body), frozenset(names)))


def _not_empty(samples: tuple[GpuSample, ...], names: tuple[str, ...]) -> tuple[GpuSample, ...]:
    """An answer without one usable GPU series is a failure (reason ``invalid``), not an empty
    cluster: a Prometheus that lost its dcgm-exporter targets, or an exporter restarting,
    answers that way, and taking it as data would report every GPU dollar as unused. The
    last good data is kept instead, until it is stale."""
    if not samples:
        raise SourceError(
            "invalid", f"empty answer: no usable {'/'.join(names)} series with a GPU UUID"
        )
    return samples


def utilization_query(metric: str | Sequence[str], selector: str) -> str:
    """The PromQL for ``metric`` (one name, or several) scoped by ``selector``.

    ``selector`` is extra matchers, with or without braces: ``{cluster="prod"}`` and
    ``cluster="prod"`` both give ``DCGM_FI_DEV_GPU_UTIL{cluster="prod"}``; empty gives the bare
    metric name. Several names give ``{__name__=~"A|B",cluster="prod"}``.
    """
    names = [metric] if isinstance(metric, str) else list(metric)
    body = selector.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1].strip()
    if len(names) == 1:
        return names[0] + ("{" + body + "}" if body else "")
    pattern = "|".join(re.escape(n) for n in names)
    return "{" + ",".join([f'__name__=~"{pattern}"', *([body] if body else [])]) + "}"


def gpu_samples_from_series(
    series: Iterable[tuple[Mapping[str, str], float]], metric: UtilizationMetric
) -> tuple[GpuSample, ...]:
    """:func:`gpu_samples` of ``(labels, value)`` pairs: each series' metric is its
    ``__name__`` label, else ``metric`` (``DCGM_FI_DEV_GPU_UTIL`` for ``auto``)."""
    default = "DCGM_FI_DEV_GPU_UTIL" if metric == "auto" else metric
    return gpu_samples(
        ((labels.get("__name__") or default, labels, value) for labels, value in series), metric
    )


def gpu_samples(
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
