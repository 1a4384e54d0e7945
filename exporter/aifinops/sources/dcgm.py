"""GPU utilization from NVIDIA dcgm-exporter, per GPU (or MIG instance) and pod.

Two ways to read it, chosen by ``sources.dcgm.mode``:

* ``prometheus``: one instant query of the utilization metric against a Prometheus (or Thanos,
  Mimir) that scrapes dcgm-exporter;
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
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from typing import Literal

import httpx

from aifinops.model.inputs import GpuSample
from aifinops.offload import run_cpu
from aifinops.settings import DcgmSettings
from aifinops.sources.base import SourceError, get_bytes, read_bearer_token
from aifinops.sources.promapi import instant_query
from aifinops.sources.promtext import decode_page, parse_text

UtilizationMetric = Literal["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"]

# Multiplier from the metric's unit to a 0–1 ratio: GPU_UTIL is a percent, GR_ENGINE_ACTIVE a
# ratio already.
_TO_RATIO: dict[str, float] = {"DCGM_FI_DEV_GPU_UTIL": 0.01, "DCGM_FI_PROF_GR_ENGINE_ACTIVE": 1.0}

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

    def __init__(self, settings: DcgmSettings) -> None:
        self._settings = settings

    async def fetch(self, client: httpx.AsyncClient) -> tuple[GpuSample, ...]:
        s = self._settings
        # Read on every fetch: Kubernetes rotates projected service-account tokens.
        headers = read_bearer_token(s.bearer_token_file)
        if s.mode == "prometheus":
            if not s.prometheus_url:
                raise SourceError("invalid", "dcgm mode 'prometheus' has no prometheus_url")
            series = await instant_query(
                client,
                s.prometheus_url,
                utilization_query(s.utilization_metric, s.selector),
                timeout=s.timeout_seconds,
                max_bytes=s.max_response_bytes,
                headers=headers,
            )
            samples = await run_cpu(gpu_samples_from_series, series, s.utilization_metric)
            return _not_empty(samples, s)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._scrape(client, url, headers)) for url in s.scrape_urls
                ]
        except* SourceError as failed:
            # The first failure cancels the other pages; report that one.
            raise failed.exceptions[0] from None
        scraped = [item for task in tasks for item in task.result()]
        return _not_empty(await run_cpu(gpu_samples_from_series, scraped, s.utilization_metric), s)

    async def _scrape(
        self, client: httpx.AsyncClient, url: str, headers: Mapping[str, str]
    ) -> list[tuple[Mapping[str, str], float]]:
        s = self._settings
        body = await get_bytes(
            client, url, timeout=s.timeout_seconds, max_bytes=s.max_response_bytes, headers=headers
        )
        try:
            # Tens of ms per 1,000-GPU page: on the worker thread, not the event loop.
            return await run_cpu(_parse_page, body, s.utilization_metric)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise SourceError("parse", f"{url}: {exc}") from None


def _parse_page(body: bytes, metric: str) -> list[tuple[Mapping[str, str], float]]:
    samples = parse_text(decode_page(body), frozenset((metric,)))
    return [(labels, value) for _, labels, value in samples]


def _not_empty(samples: tuple[GpuSample, ...], s: DcgmSettings) -> tuple[GpuSample, ...]:
    """An answer without one usable GPU series is a failure (reason ``invalid``), not an empty
    cluster: a Prometheus that lost its dcgm-exporter targets, or an exporter restarting,
    answers that way, and taking it as data would report every GPU dollar as unused. The
    last good data is kept instead, until it is stale."""
    if not samples:
        raise SourceError(
            "invalid", f"empty answer: no usable {s.utilization_metric} series with a GPU UUID"
        )
    return samples


def utilization_query(metric: UtilizationMetric, selector: str) -> str:
    """The PromQL for ``metric`` scoped by ``selector``.

    ``selector`` is extra matchers, with or without braces: ``{cluster="prod"}`` and
    ``cluster="prod"`` both give ``DCGM_FI_DEV_GPU_UTIL{cluster="prod"}``; empty gives the bare
    metric name.
    """
    selector = selector.strip()
    if selector and not selector.startswith("{"):
        selector = "{" + selector + "}"
    return metric + selector


def gpu_samples_from_series(
    series: Iterable[tuple[Mapping[str, str], float]], metric: UtilizationMetric
) -> tuple[GpuSample, ...]:
    """Map dcgm-exporter series of ``metric`` to :class:`GpuSample` records, in input order.

    ``DCGM_FI_DEV_GPU_UTIL`` (percent) is divided by 100; ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` is
    a ratio already. Utilization is clamped to [0, 1]. Skipped: NaN and ±Inf values, and series
    without a GPU UUID (nothing to join them on). An empty label value reads as absent (``None``
    for the optional fields, ``""`` for ``gpu_index``, ``model_name`` and ``node``).

    The pod is read from ``exported_*`` labels first (Prometheus renamed dcgm-exporter's own),
    then the ``--use-old-namespace`` names, then ``pod``/``namespace``/``container``. When any
    series of the input carries one of the first two forms, plain ``pod``/``namespace`` are
    the scrape target's labels (the dcgm-exporter pod) and are ignored on every series: an
    unassigned GPU has no pod labels of its own for Prometheus to rename. A time-sliced GPU is
    one sample per pod, each with the GPU's whole utilization; a MIG instance is one sample
    with ``mig_profile``/``mig_instance`` set.
    """
    scale = _TO_RATIO[metric]
    rows = [(labels, value) for labels, value in series if math.isfinite(value)]
    renamed = any(labels.get(k) for labels, _ in rows for k in _RENAMED_POD_KEYS)
    sources = _POD_LABELS[:2] if renamed else _POD_LABELS
    out: list[GpuSample] = []
    for labels, value in rows:
        uuid = labels.get("UUID") or labels.get("uuid")
        if not uuid:
            continue
        namespace = pod = container = None
        for ns_key, pod_key, container_key in sources:
            namespace = labels.get(ns_key) or None
            pod = labels.get(pod_key) or None
            if namespace or pod:
                container = labels.get(container_key) or None
                break
        profile = labels.get("GPU_I_PROFILE") or None
        out.append(
            GpuSample(
                uuid=uuid,
                gpu_index=labels.get("gpu", ""),
                model_name=labels.get("modelName", ""),
                node=labels.get("hostname") or labels.get("Hostname") or "",
                utilization=min(max(value * scale, 0.0), 1.0),
                namespace=namespace,
                pod=pod,
                container=container,
                mig_profile=profile,
                mig_instance=(labels.get("GPU_I_ID") or None) if profile else None,
            )
        )
    return tuple(out)
