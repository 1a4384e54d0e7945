"""HAMi fractional GPUs (Project-HAMi/HAMi): what each pod was allocated on a device, and
what it uses live.

Two HAMi components publish the series (names and labels from HAMi's
``cmd/scheduler/metrics.go`` and ``cmd/vGPUmonitor/metrics.go``; commit in
tests/fixtures/PROVENANCE.md and docs/shared-gpus.md):

* the scheduler (``--metrics-bind-address``, default ``:9395``; the Helm chart's Service
  port 31993): per device its core limit (``hami_gpu_core_limit_ratio``, 100 on NVIDIA) and
  memory (``hami_gpu_memory_limit_bytes``); per container its allocated cores
  (``hami_vgpu_core_allocated_ratio``, 0–100) and memory (``hami_vgpu_memory_allocated_bytes``);
* the device plugin's vGPU monitor on every node (``:9394``; Service port 31992): per
  container its processes' SM use (``hami_container_device_utilization_ratio``, 0–100), only
  once the container has made a CUDA call (HAMi #281).

Both generations are read: these current names, and the legacy names the Helm chart still
emits (``--legacy-metrics=true``): ``GPUDeviceCoreLimit``, ``GPUDeviceMemoryLimit``,
``vGPUCoreAllocated``, ``vGPUMemoryAllocated``, ``Device_utilization_desc_of_container``,
with their own label names (``deviceuuid``, ``podnamespace``, ``podname``, ``nodename``,
``nodeid``). HAMi's ``_ratio`` names carry 0–100 values, as their help text says.

``mode: prometheus`` asks one instant query for every name; ``mode: scrape`` reads the
scheduler's page and every monitor's. A Prometheus job that does not honour the target's
labels renames ``namespace``/``pod``/``node`` to ``exported_*``: those are read first.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Literal

import httpx

from aifinops.model.inputs import SharedHold
from aifinops.settings import HamiSettings
from aifinops.sources.base import CpuRunner, Slot
from aifinops.sources.promtext import decode_page, parse_text
from aifinops.sources.transport import Transport

Kind = Literal["core_limit", "memory_limit", "core_alloc", "memory_alloc", "use"]

# Per name: what it is, and the multiplier to its unit (cores and use as 0–1 of the device).
HAMI_NAMES: Mapping[str, tuple[Kind, float]] = {
    "hami_gpu_core_limit_ratio": ("core_limit", 1.0),
    "GPUDeviceCoreLimit": ("core_limit", 1.0),
    "hami_gpu_memory_limit_bytes": ("memory_limit", 1.0),
    "GPUDeviceMemoryLimit": ("memory_limit", 1.0),
    "hami_vgpu_core_allocated_ratio": ("core_alloc", 1.0),
    "vGPUCoreAllocated": ("core_alloc", 1.0),
    "hami_vgpu_memory_allocated_bytes": ("memory_alloc", 1.0),
    "vGPUMemoryAllocated": ("memory_alloc", 1.0),
    "hami_container_device_utilization_ratio": ("use", 0.01),
    "Device_utilization_desc_of_container": ("use", 0.01),
}
# Legacy names first: where both generations are published, the current name's value wins.
_LEGACY = frozenset(
    {
        "GPUDeviceCoreLimit",
        "GPUDeviceMemoryLimit",
        "vGPUCoreAllocated",
        "vGPUMemoryAllocated",
        "Device_utilization_desc_of_container",
    }
)

# Label names, most specific first: exported_* (a Prometheus job renamed HAMi's own), then
# the legacy generation's (no clash with a scrape target's labels), then the current one's
# (on a legacy series a plain namespace/pod/node is the target's, never HAMi's).
_UUID = ("device_uuid", "deviceuuid")
_NAMESPACE = ("exported_namespace", "podnamespace", "namespace")
_POD = ("exported_pod", "podname", "pod")
_NODE = ("exported_node", "nodename", "nodeid", "node")
_CONTAINER = ("container_index", "containeridx", "exported_container", "container", "ctrname")
_INDEX = ("device_index", "deviceidx")
_TYPE = ("device_type", "devicetype")

# NVIDIA's default core limit: a device's 100 %.
DEFAULT_CORE_LIMIT = 100.0


def _first(labels: Mapping[str, str], keys: tuple[str, ...]) -> str:
    for k in keys:
        v = labels.get(k)
        if v:
            return v
    return ""


def shared_holds(series: Iterable[tuple[str, Mapping[str, str], float]]) -> tuple[SharedHold, ...]:
    """Map HAMi series ``(metric name, labels, value)`` to one :class:`SharedHold` per (device,
    pod), in order of first appearance. Pure.

    A pod's containers on one device are summed: allocated cores over the device's core limit
    (100 when HAMi gives none), allocated memory over the device's memory (0 when HAMi gives
    none), live use (percent / 100, clamped to [0, 1]; ``None`` when no container of the pod
    has a usage series yet). Only pods with an allocation are returned: a usage series alone
    (a pod the scheduler no longer lists) allocates nothing. Skipped: unknown names, NaN and
    ±Inf values, negative values, series without a device UUID or a pod.
    """
    rows = [
        (name, labels, value)
        for name, labels, value in series
        if name in HAMI_NAMES and math.isfinite(value) and value >= 0
    ]
    rows.sort(key=lambda r: r[0] not in _LEGACY)  # stable: legacy first, current overrides
    core_limit: dict[str, float] = {}
    memory_limit: dict[str, float] = {}
    device_meta: dict[str, tuple[str, str, str]] = {}  # uuid -> (node, index, model)
    # (uuid, namespace, pod) -> container -> value, per kind.
    per_container: dict[Kind, dict[tuple[str, str, str], dict[str, float]]] = {
        "core_alloc": defaultdict(dict),
        "memory_alloc": defaultdict(dict),
        "use": defaultdict(dict),
    }
    pod_node: dict[tuple[str, str, str], str] = {}
    order: dict[tuple[str, str, str], None] = {}
    for name, labels, value in rows:
        kind, scale = HAMI_NAMES[name]
        uuid = _first(labels, _UUID)
        if not uuid:
            continue
        if kind in ("core_limit", "memory_limit"):
            (core_limit if kind == "core_limit" else memory_limit)[uuid] = value * scale
            model = _first(labels, _TYPE)
            model = model.removeprefix("NVIDIA-")
            device_meta[uuid] = (_first(labels, _NODE), _first(labels, _INDEX), model)
            continue
        namespace = _first(labels, _NAMESPACE)
        pod = _first(labels, _POD)
        if not namespace or not pod:
            continue
        key = (uuid, namespace, pod)
        per_container[kind][key][_first(labels, _CONTAINER)] = value * scale
        if kind != "use":
            order[key] = None
            node = _first(labels, _NODE)
            if node:
                pod_node[key] = node
    out = []
    for key in order:
        uuid, namespace, pod = key
        cores = math.fsum(per_container["core_alloc"].get(key, {}).values())
        memory = math.fsum(per_container["memory_alloc"].get(key, {}).values())
        limit = core_limit.get(uuid) or DEFAULT_CORE_LIMIT
        mem_limit = memory_limit.get(uuid, 0.0)
        use = per_container["use"].get(key)
        node, index, model = device_meta.get(uuid, ("", "", ""))
        out.append(
            SharedHold(
                uuid=uuid,
                node=pod_node.get(key) or node,
                namespace=namespace,
                pod=pod,
                core_share=min(cores / limit, 1.0),
                memory_share=min(memory / mem_limit, 1.0) if mem_limit > 0 else 0.0,
                utilization=None if not use else min(math.fsum(use.values()), 1.0),
                model_name=model,
                gpu_index=index,
            )
        )
    return tuple(out)


def hami_query(selector: str) -> str:
    """One instant query for every HAMi name, scoped by ``selector`` (as dcgm's)."""
    body = selector.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1].strip()
    pattern = "|".join(re.escape(n) for n in HAMI_NAMES)
    return "{" + ",".join([f'__name__=~"{pattern}"', *([body] if body else [])]) + "}"


def _parse_page(body: bytes) -> list[tuple[str, Mapping[str, str], float]]:
    return list(parse_text(decode_page(body), frozenset(HAMI_NAMES)))


class HamiSource:
    """Reads HAMi's allocations and live use; one :class:`SharedHold` per (device, pod).

    ``fetch`` raises :class:`SourceError` when Prometheus, or any one scraped page, fails:
    a device missing its allocations would be billed to its pods as OpenCost billed it (whole
    GPUs), so the last complete data is kept instead until it is stale.
    """

    name = "hami"
    slot = Slot.SHARED
    local = False
    min_interval_seconds = 0.0
    first_read_baseline = False
    targets = None

    def __init__(self, settings: HamiSettings, *, run: CpuRunner) -> None:
        self._settings = settings
        self._run = run
        self._transport = Transport(self.name, settings, run)

    async def fetch(self, client: httpx.AsyncClient) -> tuple[SharedHold, ...]:
        s = self._settings
        headers = self._transport.headers()
        if s.mode == "prometheus":
            series = await self._transport.query(client, hami_query(s.selector), headers)
            triples = [(labels.get("__name__", ""), labels, value) for labels, value in series]
            return await self._run(shared_holds, triples)
        scraped = await self._transport.read_pages(client, s.scrape_urls, headers, _parse_page)
        return await self._run(shared_holds, scraped)
