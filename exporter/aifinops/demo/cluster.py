"""A deterministic simulated Kubernetes GPU cluster that speaks the upstreams' real formats.

One :class:`SimCluster` serves ``aifinops-exporter --demo``, the tests and the benchmark. It
renders what the exporter reads — dcgm-exporter ``/metrics`` text, Prometheus instant-query
JSON and OpenCost ``/allocation/compute`` JSON — and reports its own :class:`GroundTruth`,
computed from its pod list with its own small implementation of the money rules. Nothing here
imports ``aifinops.model`` or ``aifinops.sources``: the answer key must not share code with the
code it checks.

Everything is a pure function of the :class:`ClusterSpec` (layout from ``random.Random(seed)``)
and of ``now`` (unix seconds) passed explicitly; no clock is read. Utilization is a diurnal sine
plus per-device phase and noise from a hash, so two calls with the same ``now`` give the same
bytes.

Units: money in US dollars (rates in USD per hour), time in hours unless a name says seconds,
utilization as a 0–1 ratio, memory in bytes unless a name says GiB or MiB.

Simplifications, stated so nobody mistakes them for upstream behaviour:

* MIG instances carry only the profiling metric (``DCGM_FI_PROF_GR_ENGINE_ACTIVE``), as real
  DCGM does; a GPU model without profiling counters (``Tesla T4``) carries only
  ``DCGM_FI_DEV_GPU_UTIL``.
* GPU nodes speak the dcgm-exporter generations of ``dcgm_generations`` in turn: ``"4.8"``
  (legacy names, utilization in percent, ``Hostname``/``DCGM_FI_DRIVER_VERSION`` labels) or
  ``"4.9"`` (DCGM 4.7 names, utilization as a 0–1 ratio, ``hostname`` and
  ``DCGM_FI_SYSTEM_DRIVER_VERSION``). A 4.9 page carries only the families whose new names the
  sources this project read name (see tests/fixtures/PROVENANCE.md); SM clock, energy and
  framebuffer are left out there.
* A time-sliced GPU has ``timeslice_replicas`` replicas; on a ``timeslice_partly_requested``
  share of them only half the replicas are requested (the rest is OpenCost's ``__idle__``).
  It reports each pod's own share by default (``timeslice_util="per_pod"``, as vGPU/HAMi-style
  exporters do); ``"device"`` repeats the device figure for every pod, as stock dcgm-exporter
  does, which the exporter splits by request.
* Every pod has one container; OpenCost's ``totalCost`` and per-field rounding (5 decimals, as
  its ``formatFloat64ForResponse``) are reproduced, and the ground truth uses the rounded
  numbers, exactly as a reader of the JSON sees them.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

IDLE_TENANT = "__idle__"
UNALLOCATED_TENANT = "__unallocated__"
RESOURCES: tuple[str, ...] = ("gpu", "cpu", "ram", "storage", "network", "shared")
BASES: tuple[str, ...] = ("allocation", "usage")
UTILIZATION_METRICS: tuple[str, ...] = (
    "auto",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
)

TENANT_LABEL = "aifinops.io/tenant"
TEAM_LABEL = "team"
FAULT_TOLERANT_LABEL = "aifinops.io/fault-tolerant"
PLATFORM_TENANT = "platform"
SERVING_NAMESPACE = "llm-serving"
SYSTEM_NAMESPACES: tuple[str, ...] = ("kube-system", "monitoring", "gpu-operator", "opencost")
UNMATCHED_NAMESPACES: tuple[str, ...] = ("default", "sandbox")
TENANT_PATTERN = r"^team-(?P<tenant>[a-z0-9-]+)$"
GIB = 1024**3
MIB = 1024**2

Sharing = Literal["none", "mig", "timeslice"]
RuleKind = Literal["pod_label", "namespace_label", "namespace_map", "namespace_pattern"]
RULE_KINDS: tuple[RuleKind, ...] = (
    "pod_label",
    "namespace_label",
    "namespace_map",
    "namespace_pattern",
)
UtilMetric = Literal["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"]


@dataclass(frozen=True, slots=True)
class GpuModel:
    """A GPU model as DCGM's ``modelName`` reports it, with the sim's list price.

    ``usd_per_hour`` is the price OpenCost bills per whole GPU-hour; ``mig_slices`` is the
    number of MIG compute slices (0 when the model has no MIG).
    """

    name: str
    usd_per_hour: float
    memory_mib: int
    max_sm_clock_mhz: int
    max_power_w: float
    mig_slices: int
    profiling: bool = True  # DCGM profiling (DCP) counters: not on a T4


GPU_MODELS: Mapping[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("NVIDIA H100 80GB HBM3", 4.50, 81559, 1980, 700.0, 7),
        GpuModel("NVIDIA A100-SXM4-80GB", 2.75, 81920, 1410, 400.0, 7),
        GpuModel("NVIDIA L4", 0.80, 23034, 2040, 72.0, 0),
        GpuModel("Tesla T4", 0.526, 15360, 1590, 70.0, 0, profiling=False),
    )
}
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
L4 = "NVIDIA L4"
T4 = "Tesla T4"

# MIG profiles of a 7-slice 80 GB GPU: compute slices, and the first GPU instance id NVIDIA's
# placement gives each profile (instances of one profile count up from there).
MIG_PROFILES: Mapping[str, tuple[int, int]] = {
    "1g.10gb": (1, 7),
    "2g.20gb": (2, 3),
    "3g.40gb": (3, 1),
    "4g.40gb": (4, 1),
    "7g.80gb": (7, 0),
}
MIG_LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"),
    ("1g.10gb",) * 7,
    ("3g.40gb", "3g.40gb"),  # 6 of 7 slices: one slice of capacity nobody can request
    ("4g.40gb", "2g.20gb", "1g.10gb"),
)


# ----------------------------------------------------------------------------------------------
# Spec
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodePoolSpec:
    """Identical nodes: ``nodes`` × (``cpu_cores``, ``ram_gib``, ``gpus_per_node`` GPUs)."""

    name: str
    nodes: int
    gpu_model: str | None = None
    gpus_per_node: int = 0
    sharing: Sharing = "none"
    instance_type: str = "m7i.8xlarge"
    cpu_cores: float = 32.0
    ram_gib: float = 128.0
    zone: str = "us-east-1a"
    # Built after the rest of the cluster from its own random stream (seed, pool name), so
    # adding such a pool leaves every other node and pod as it was.
    own_rng: bool = False


def _h100_pool(nodes: int, name: str = "h100") -> NodePoolSpec:
    return NodePoolSpec(name, nodes, H100, 8, "none", "p5.48xlarge", 192.0, 2048.0, "us-east-1a")


def _a100_pool(nodes: int, sharing: Sharing = "none", name: str = "a100") -> NodePoolSpec:
    return NodePoolSpec(name, nodes, A100, 8, sharing, "p4de.24xlarge", 96.0, 1152.0, "us-east-1b")


def _l4_pool(
    nodes: int, sharing: Sharing = "none", name: str = "l4", gpus: int = 4
) -> NodePoolSpec:
    return NodePoolSpec(name, nodes, L4, gpus, sharing, "g6.12xlarge", 48.0, 192.0, "us-east-1c")


def _t4_pool(nodes: int, gpus: int = 2) -> NodePoolSpec:
    return NodePoolSpec(
        "t4", nodes, T4, gpus, "none", "g4dn.12xlarge", 48.0, 192.0, "us-east-1c", own_rng=True
    )


def _cpu_pool(nodes: int) -> NodePoolSpec:
    return NodePoolSpec("general", nodes, None, 0, "none", "m7i.8xlarge", 32.0, 128.0)


DEMO_TENANTS: tuple[str, ...] = (
    # Cycled over RULE_KINDS: pod_label, namespace_label, namespace_map, namespace_pattern.
    "search",
    "risk",
    "research",
    "vision",
    "chatbot",
    "data",
    "platform",
    "speech",
    "ads",
    "personalization",
)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Everything that shapes a :class:`SimCluster`; same spec → same cluster, byte for byte.

    Fractions are probabilities drawn from ``random.Random(seed)``. ``tenant_rules`` is cycled
    over ``tenants`` to pick the tenancy rule kind that names each tenant. ``odd_tenant`` (tests
    only) adds a namespace ``legal`` mapped to a tenant name that needs label escaping.
    ``target_pods`` fills CPU-only pods until the cluster has that many pods. Prices are in USD
    per core-hour, per GiB-hour (RAM) and per GiB-hour (persistent volumes).
    """

    seed: int = 7
    cluster_name: str = "demo"
    pools: tuple[NodePoolSpec, ...] = ()
    tenants: tuple[str, ...] = DEMO_TENANTS
    tenant_rules: tuple[RuleKind, ...] = RULE_KINDS
    idle_fraction: float = 0.25
    unallocated_gpu_fraction: float = 0.1
    mig_unassigned_fraction: float = 0.15
    timeslice_replicas: int = 3
    timeslice_partly_requested: float = 0.5
    dcgm_generations: tuple[str, ...] = ("4.8", "4.9")
    timeslice_util: Literal["per_pod", "device"] = "per_pod"
    unmatched_fraction: float = 0.04
    cpu_pods_per_node: int = 3
    target_pods: int | None = None
    unmapped_dcgm_pods: int = 1
    batch_jobs: int = 1
    precedence_cases: bool = True
    odd_tenant: str | None = None
    # Pods (namespace llm-serving, tenant "platform") serving the self-hosted LLM of demo/llm.py:
    # each holds one whole GPU, busy, so its cost can be measured per token and charged back.
    serving_pods: tuple[str, ...] = ()
    prometheus_honor_labels: bool = True
    # Two Prometheus jobs scrape every dcgm-exporter (a ServiceMonitor beside a static job):
    # each DCGM series is stored twice, differing only in ``job``.
    prometheus_duplicate_jobs: bool = False
    cpu_usd_per_core_hour: float = 0.031611
    ram_usd_per_gib_hour: float = 0.004237
    pv_usd_per_gib_hour: float = 0.04 / 730
    driver_version: str = "550.90.07"

    @classmethod
    def demo(cls, **overrides: Any) -> ClusterSpec:
        """The demo cluster: 2×8 H100, 2×8 A100 (one node MIG-partitioned), 2×4 L4 (one node
        time-sliced), 2 CPU nodes, 10 tenants named by every tenancy rule kind."""
        spec = cls(
            pools=(
                _h100_pool(2),
                _a100_pool(1),
                _a100_pool(1, "mig", name="a100-mig"),
                _l4_pool(1),
                _l4_pool(1, "timeslice", name="l4-shared"),
                _cpu_pool(2),
                _t4_pool(1),
            ),
            serving_pods=("vllm-llama-0", "vllm-llama-1"),
        )
        return replace(spec, **overrides)

    @classmethod
    def scaled(cls, n_gpus: int, seed: int = 1, **overrides: Any) -> ClusterSpec:
        """A benchmark cluster with exactly ``n_gpus`` physical GPUs (≈40 % H100, 30 % A100 of
        which a quarter MIG, 30 % L4 of which a third time-sliced), ``n_gpus/5`` tenants (4 to
        2000) and about ``2 × n_gpus`` pods."""
        if n_gpus < 1:
            raise ValueError("n_gpus must be >= 1")
        h100_nodes = round(n_gpus * 0.4 / 8)
        a100_nodes = round(n_gpus * 0.3 / 8)
        a100_mig = a100_nodes // 4
        rest = n_gpus - 8 * (h100_nodes + a100_nodes)
        while rest < 0:  # tiny clusters: give GPUs back
            if h100_nodes:
                h100_nodes -= 1
            else:
                a100_nodes -= 1
                a100_mig = min(a100_mig, a100_nodes)
            rest += 8
        l4_nodes, l4_tail = divmod(rest, 4)
        l4_ts = l4_nodes // 3
        pools: list[NodePoolSpec] = []
        if h100_nodes:
            pools.append(_h100_pool(h100_nodes))
        if a100_nodes - a100_mig:
            pools.append(_a100_pool(a100_nodes - a100_mig))
        if a100_mig:
            pools.append(_a100_pool(a100_mig, "mig", name="a100-mig"))
        if l4_nodes - l4_ts:
            pools.append(_l4_pool(l4_nodes - l4_ts))
        if l4_ts:
            pools.append(_l4_pool(l4_ts, "timeslice", name="l4-shared"))
        if l4_tail:
            pools.append(_l4_pool(1, name="l4-small", gpus=l4_tail))
        pools.append(_cpu_pool(max(1, n_gpus // 50)))
        n_tenants = min(2000, max(4, n_gpus // 5))
        spec = cls(
            seed=seed,
            cluster_name="bench",
            pools=tuple(pools),
            tenants=tuple(f"tenant-{i:04d}" for i in range(n_tenants)),
            target_pods=2 * n_gpus,
            unmapped_dcgm_pods=max(1, n_gpus // 200),
            batch_jobs=max(1, n_gpus // 100),
        )
        return replace(spec, **overrides)

    @property
    def n_nodes(self) -> int:
        """Number of nodes, GPU and CPU-only."""
        return sum(p.nodes for p in self.pools)

    @property
    def n_gpus(self) -> int:
        """Number of physical GPUs."""
        return sum(p.nodes * p.gpus_per_node for p in self.pools)


# ----------------------------------------------------------------------------------------------
# Layout records
# ----------------------------------------------------------------------------------------------

UnitKey = tuple[str, str]  # (physical GPU UUID, MIG GPU instance id or "")


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One MIG GPU instance: ``gi_id`` as DCGM's ``GPU_I_ID``, ``profile`` as ``GPU_I_PROFILE``."""

    gi_id: str
    profile: str
    slices: int


@dataclass(frozen=True, slots=True)
class SimGpu:
    """One physical GPU. ``mig`` lists its instances (empty unless ``sharing == "mig"``)."""

    node: str
    index: int
    uuid: str
    pci_bus_id: str
    model: GpuModel
    sharing: Sharing
    mig: tuple[MigInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class SimNode:
    """A node; ``labels`` are raw Kubernetes labels (OpenCost merges them into pod labels)."""

    name: str
    pool: str
    instance_type: str
    zone: str
    provider_id: str
    ip: str
    cpu_cores: float
    ram_bytes: float
    gpus: tuple[SimGpu, ...]
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class GpuHold:
    """A pod's hold on one GPU unit: ``fraction`` of a whole GPU (1, slices/7 or 1/replicas)."""

    uuid: str
    gi_id: str
    fraction: float
    model: str

    @property
    def unit(self) -> UnitKey:
        return (self.uuid, self.gi_id)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A CronJob-like pod: runs ``run_s`` seconds out of every ``period_s``, offset ``phase_s``."""

    period_s: float
    run_s: float
    phase_s: float


@dataclass(frozen=True, slots=True)
class SimPod:
    """A pod and its constant requests. ``labels`` are raw Kubernetes pod labels.

    Rates (``*_usd_per_hour``) are what OpenCost bills while the pod runs. ``busy`` picks the
    utilization band of its GPU holds (busy 0.30–0.95, idle 0.01–0.03; time-sliced busy shares
    0.15–0.30). ``dcgm_mapped=False`` means dcgm-exporter shows its devices without pod labels
    (the kubelet pod-resources mapping failed), so the pod has GPU cost but no DCGM sample.
    ``cost_adjustment`` is OpenCost's ``cpuCostAdjustment``/``ramCostAdjustment`` as a fraction
    of the cost (a reconciliation discount when negative).
    """

    namespace: str
    name: str
    node: str
    container: str
    controller: str
    controller_kind: str
    labels: Mapping[str, str]
    cpu_cores: float
    ram_bytes: float
    holds: tuple[GpuHold, ...] = ()
    busy: bool = True
    pv_gib: float = 0.0
    pv_name: str = ""
    network_usd_per_hour: float = 0.0
    lb_usd_per_hour: float = 0.0
    lb_service: str = ""
    shared_usd_per_hour: float = 0.0
    external_usd_per_hour: float = 0.0
    cost_adjustment: float = 0.0
    schedule: Schedule | None = None
    dcgm_mapped: bool = True

    @property
    def gpu_count(self) -> float:
        """GPU-equivalents requested (sum of hold fractions)."""
        return math.fsum(h.fraction for h in self.holds)


@dataclass(frozen=True, slots=True)
class PodRun:
    """One run of a pod: ``name`` is the pod name OpenCost and DCGM see; ``start``/``end`` in
    unix seconds (infinite for always-running pods)."""

    pod: SimPod
    name: str
    start: float
    end: float


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdleHold:
    """One pod's hold on a GPU unit whose DCGM sample is under the idle threshold."""

    tenant: str
    gpu_model: str
    node: str
    uuid: str
    mig_instance: str | None
    mig_profile: str | None
    namespace: str
    pod: str
    held: float
    utilization: float
    cost_usd_per_hour: float


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What a correct exporter must publish for this cluster at ``now``.

    ``cost[(basis, tenant, resource)]`` is USD per hour averaged over the OpenCost window
    (window cost / ``window_hours``), for bases ``allocation`` and ``usage`` and resources
    :data:`RESOURCES`; tenants include ``__idle__`` and ``__unallocated__``; missing keys are 0.
    ``cluster[resource]`` is the total every basis sums to.

    GPU-equivalents are instantaneous at ``now`` and count only holds DCGM attributes to a pod
    and measures with ``metric``: ``gpus_allocated`` adds the request (1, slices/7, or 1/k for
    one of k time-slice replicas), ``gpus_used`` the hold's share of the physical GPU's time,
    keyed by ``(tenant, gpu_model)``. Usage basis, GPU: a hold costs its device's price × that
    share; ``gpu_unused_cost`` is price × what the hold left of its request (bounded by the
    unit's unused time), booked to ``__idle__``; ``__idle__`` is the cluster's GPU dollars no
    tenant pays. ``idle_gpus`` /
    ``idle_gpu_cost`` sum the holds whose own sample is under ``idle_threshold`` (held
    GPU-equivalents; their allocation-basis GPU rate in USD/h). ``unmeasured_pods`` have GPU
    cost in the window but no DCGM sample at ``now``; they keep their allocation GPU cost.
    """

    now: float
    window_hours: float
    metric: str
    idle_threshold: float
    cost: Mapping[tuple[str, str, str], float]
    cluster: Mapping[str, float]
    gpus_allocated: Mapping[tuple[str, str], float]
    gpus_used: Mapping[tuple[str, str], float]
    gpu_unused_cost: Mapping[tuple[str, str], float]
    idle_gpus: Mapping[tuple[str, str], float]
    idle_gpu_cost: Mapping[tuple[str, str], float]
    idle_holds: tuple[IdleHold, ...]
    unmeasured_pods: tuple[tuple[str, str], ...]
    tenants: tuple[str, ...]

    def rate(self, basis: str, tenant: str, resource: str) -> float:
        """USD/h for one (basis, tenant, resource); 0 when absent."""
        return self.cost.get((basis, tenant, resource), 0.0)

    def tenant_total(self, basis: str, tenant: str) -> float:
        """USD/h of one tenant over all resources."""
        return math.fsum(v for (b, t, _), v in self.cost.items() if b == basis and t == tenant)

    def basis_total(self, basis: str, resource: str) -> float:
        """USD/h of one resource summed over every tenant (equals ``cluster[resource]``)."""
        return math.fsum(v for (b, _, r), v in self.cost.items() if b == basis and r == resource)


# ----------------------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------------------


def _hash_unit(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (stable across runs and platforms)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _hash_suffix(*parts: object, n: int = 5) -> str:
    """A Kubernetes-style random suffix derived from ``parts`` (deterministic)."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    x = int.from_bytes(
        hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big"
    )
    out = []
    for _ in range(n):
        x, i = divmod(x, len(alphabet))
        out.append(alphabet[i])
    return "".join(out)


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _k8s_suffix(rng: random.Random, n: int) -> str:
    # Kubernetes' rand.String alphabet (no vowels, no confusable digits).
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def opencost_round(value: float) -> float:
    """OpenCost's ``formatFloat64ForResponse``: ``math.Round(f*100000)/100000`` (half away
    from zero). NaN and ±Inf become ``None`` there; the sim never produces them."""
    scaled = value * 100000.0
    rounded = math.floor(scaled + 0.5) if scaled >= 0 else -math.floor(-scaled + 0.5)
    return rounded / 100000.0


def sanitize_label_key(key: str) -> str:
    """Prometheus' label-name sanitization as OpenCost applies it to Kubernetes label keys."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def rfc3339(ts: float) -> str:
    """Unix seconds → ``2006-01-02T15:04:05Z`` (Go's ``time.RFC3339`` in UTC, whole seconds)."""
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(m|h|d|w)$")


def opencost_window_hours(window: str, now: float) -> float:
    """Length in hours of an OpenCost ``window`` ending at ``now``.

    Accepts durations (``30m``, ``1h``, ``2d``, ``1w``), ``today`` and ``month`` (UTC calendar,
    up to ``now``), ``<unix start>,<unix end>`` and ``<RFC 3339 start>,<RFC 3339 end>`` (the
    window must end at ``now``'s second or earlier; only its length is used). Raises
    ``ValueError`` for anything else.
    """
    start, end = opencost_window_bounds(window, now, cap=False)
    return (end - start) / 3600.0


def opencost_duration_hours(text: str) -> float:
    """An OpenCost duration (``30m``, ``1h``, ``1d``, ``1w``) in hours; ``ValueError`` else."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"illegal duration: {text}")
    hours = float(m.group(1)) * {"m": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}[m.group(2)]
    if not hours > 0:
        raise ValueError(f"illegal duration: {text}")
    return hours


def opencost_window_bounds(window: str, now: float, *, cap: bool = True) -> tuple[float, float]:
    """``(start, end)`` unix seconds of an OpenCost ``window`` at ``now`` (see
    :func:`opencost_window_hours` for the forms). Durations, ``today`` and ``month`` end at
    ``now``; a pair is taken as given, its end capped at ``now`` when ``cap`` (OpenCost has no
    data from the future). Raises ``ValueError`` for an illegal or empty window."""
    text = window.strip()
    if _DURATION.match(text):
        start, end = now - opencost_duration_hours(text) * 3600.0, now
    elif text in ("today", "month"):
        day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = (day if text == "today" else day.replace(day=1)).timestamp(), now
    elif re.fullmatch(r"\d+(\.\d+)?,\d+(\.\d+)?", text):
        start, end = (float(x) for x in text.split(","))
    elif text.count(",") == 1:
        try:
            a, b = (_rfc3339_seconds(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"illegal window: {window}") from None
        start, end = a, b
    else:
        raise ValueError(f"illegal window: {window}")
    if cap:
        end = min(end, now)
    if not end > start:
        raise ValueError(f"illegal window: {window}")
    return start, end


def _rfc3339_seconds(text: str) -> float:
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 3339 time needs a zone: {text}")
    return parsed.timestamp()


def _format_dcgm_float(value: float) -> str:
    # dcgm-exporter prints float fields with Go's %f.
    if math.isnan(value):
        return "NaN"
    return f"{value:f}"


def _prom_value(value: float) -> str:
    """Prometheus' JSON sample value: ``strconv.FormatFloat(v, 'f', -1, 64)``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(value, ".17f").rstrip("0").rstrip(".")
    return text


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ----------------------------------------------------------------------------------------------
# Utilization
# ----------------------------------------------------------------------------------------------

_BUSY_PCT = (30, 95)
_IDLE_PCT = (1, 3)
_SHARE_BUSY_PCT = (15, 30)  # time-sliced busy shares: ≤ 3 pods × 30 % keeps Σ ≤ 1


def _utilization_pct(key: str, band: tuple[int, int], now: float) -> int:
    """Integer percent in ``band``: diurnal sine over 24 h, per-key phase, per-minute noise."""
    phase = _hash_unit(key, "phase")
    diurnal = 0.5 + 0.35 * math.sin(2.0 * math.pi * (now / 86400.0 + phase))
    noise = 2.0 * _hash_unit(key, "noise", math.floor(now / 60.0)) - 1.0
    x = min(1.0, max(0.0, diurnal + 0.15 * noise))
    lo, hi = band
    return lo + round(x * (hi - lo))


def _engine_milli(key: str, pct: int) -> int:
    """``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` in thousandths: 60–90 % of the percent utilization."""
    factor = 0.6 + 0.3 * _hash_unit(key, "engine")
    return math.floor(pct * 10 * factor)


@dataclass(frozen=True, slots=True)
class _Sample:
    """One DCGM series (a GPU, a MIG instance, or one pod on a time-sliced GPU) at ``now``."""

    gpu: SimGpu
    mig: MigInstance | None
    run: PodRun | None  # the pod dcgm-exporter attributes the device to
    util_pct: int
    engine_milli: int

    def utilization(self, metric: str) -> float | None:
        """The sample as the exporter reads it, as a 0–1 ratio; ``None`` where DCGM has no
        such figure (device utilization of a MIG instance, profiling on a T4). ``auto``: the
        profiling figure where the GPU has one, else the device's."""
        if metric == "auto":
            metric = (
                "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
                if self.gpu.model.profiling
                else "DCGM_FI_DEV_GPU_UTIL"
            )
        if metric == "DCGM_FI_DEV_GPU_UTIL":
            return None if self.mig is not None else self.util_pct / 100.0
        return self.engine_milli / 1000.0 if self.gpu.model.profiling else None


@dataclass(frozen=True, slots=True)
class _Charge:
    """One OpenCost row for one pod run over the window, every field as OpenCost prints it."""

    run: PodRun
    tenant: str
    start: float
    end: float
    hours: float
    multiplier: float
    cpu: float
    cpu_adj: float
    ram: float
    ram_adj: float
    gpu: float
    pv: float
    network: float
    network_zone: float
    network_region: float
    network_internet: float
    lb: float
    shared: float
    external: float
    total: float
    raw_cpu: float  # unscaled, unrounded: for OpenCost's idle row
    raw_ram: float
    raw_gpu: float

    def resource_costs(self) -> dict[str, float]:
        """Dollars over the window per exporter resource (cost + adjustment)."""
        return {
            "gpu": self.gpu,
            "cpu": self.cpu + self.cpu_adj,
            "ram": self.ram + self.ram_adj,
            "storage": self.pv,
            "network": self.network + self.lb,
            "shared": self.shared + self.external,
        }


# ----------------------------------------------------------------------------------------------
# The cluster
# ----------------------------------------------------------------------------------------------


class SimCluster:
    """A deterministic simulated cluster; see the module docstring.

    The layout is built once from ``spec``. The only mutable state is
    :meth:`scale_tenant`'s per-tenant cost multipliers.
    """

    def __init__(self, spec: ClusterSpec | None = None) -> None:
        self.spec: ClusterSpec = spec if spec is not None else ClusterSpec.demo()
        self._scale: dict[str, float] = {}
        self.tenant_rule: dict[str, RuleKind] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.namespace_map: dict[str, str] = {}
        self._build_tenancy()
        rng = random.Random(self.spec.seed)
        self._gpu_used_cpu: dict[str, float] = {}  # cores GPU pods request, per node
        self._gpu_used_ram: dict[str, float] = {}  # bytes GPU pods request, per node
        self._surplus_slots: set[int] = set()  # id() of time-slice replica slots nobody requests
        main = tuple(p for p in self.spec.pools if not p.own_rng)
        self.nodes: tuple[SimNode, ...] = tuple(self._build_nodes(rng, main))
        self.pods: tuple[SimPod, ...] = self._build_pods(rng)
        for pool in (p for p in self.spec.pools if p.own_rng):
            own = random.Random(f"{self.spec.seed}:{pool.name}")
            taken_ips = {n.ip for n in self.nodes}
            nodes = tuple(self._build_nodes(own, (pool,), taken_ips))
            self.nodes += nodes
            names = {(p.namespace, p.name) for p in self.pods}
            self.pods += tuple(self._build_gpu_pods(own, names, nodes, forced_roles=False))
        self._node_by_name: dict[str, SimNode] = {n.name: n for n in self.nodes}
        generations = self.spec.dcgm_generations or ("4.8",)
        gpu_nodes = [n.name for n in self.nodes if n.gpus]
        self._generation: dict[str, str] = {
            name: generations[i % len(generations)] for i, name in enumerate(gpu_nodes)
        }
        self._tenant_cache: dict[tuple[str, str], str] = {}
        self._unit_pods: dict[UnitKey, list[tuple[SimPod, GpuHold]]] = defaultdict(list)
        for pod in self.pods:
            for hold in pod.holds:
                self._unit_pods[hold.unit].append((pod, hold))

    # --- layout ---------------------------------------------------------------------------

    def _build_pods(self, rng: random.Random) -> tuple[SimPod, ...]:
        pods: list[SimPod] = []
        names: set[tuple[str, str]] = set()
        pods.extend(self._build_gpu_pods(rng, names))
        pods.extend(self._build_system_pods(rng, names))
        pods.extend(self._build_cpu_pods(rng, names, len(pods)))
        return tuple(pods)

    def _build_tenancy(self) -> None:
        spec = self.spec
        if len(spec.tenants) < len(RULE_KINDS):
            raise ValueError("a cluster needs at least 4 tenants (one per tenancy rule kind)")
        kinds = spec.tenant_rules or RULE_KINDS
        by_kind: dict[RuleKind, list[str]] = defaultdict(list)
        for i, tenant in enumerate(spec.tenants):
            kind = kinds[i % len(kinds)]
            self.tenant_rule[tenant] = kind
            by_kind[kind].append(tenant)
        self._tenant_namespace: dict[str, str] = {}
        for kind, tenants in by_kind.items():
            for j, tenant in enumerate(tenants):
                if kind == "pod_label":
                    ns = "llm-serving" if j < 25 else f"llm-serving-{j // 25}"
                    labels: dict[str, str] = {}
                elif kind == "namespace_label":
                    ns = f"{tenant}-prod"
                    labels = {TEAM_LABEL: tenant}
                elif kind == "namespace_map":
                    ns = f"ml-{tenant}"
                    labels = {}
                    self.namespace_map[ns] = tenant
                else:
                    ns = f"team-{tenant}"
                    labels = {}
                self._tenant_namespace[tenant] = ns
                self.namespaces.setdefault(ns, {"kubernetes.io/metadata.name": ns}).update(labels)
        for ns in SYSTEM_NAMESPACES:
            self.namespaces[ns] = {"kubernetes.io/metadata.name": ns}
            self.namespace_map[ns] = PLATFORM_TENANT
        for ns in UNMATCHED_NAMESPACES:
            self.namespaces[ns] = {"kubernetes.io/metadata.name": ns}
        # Precedence cases: a pod label beats a namespace pattern; a namespace label beats one.
        self._pod_label_in_pattern_ns: tuple[str, str] | None = None
        self._labelled_pattern_ns: tuple[str, str] | None = None
        self._decoy_team_ns: str | None = None
        if spec.precedence_cases:
            pod_label = by_kind.get("pod_label", [])
            ns_label = by_kind.get("namespace_label", [])
            pattern = by_kind.get("namespace_pattern", [])
            if pod_label and pattern:
                self._pod_label_in_pattern_ns = (self._tenant_namespace[pattern[0]], pod_label[-1])
            if ns_label and "recsys" not in spec.tenants:
                self.namespaces["team-recsys"] = {
                    "kubernetes.io/metadata.name": "team-recsys",
                    TEAM_LABEL: ns_label[-1],
                }
                self._labelled_pattern_ns = ("team-recsys", ns_label[-1])
            if len(pattern) > 1:
                self._decoy_team_ns = self._tenant_namespace[pattern[1]]
        if spec.odd_tenant is not None:
            self.namespaces["legal"] = {"kubernetes.io/metadata.name": "legal"}
            self.namespace_map["legal"] = spec.odd_tenant

    def _build_nodes(
        self,
        rng: random.Random,
        pools: Sequence[NodePoolSpec],
        taken_ips: Iterable[str] = (),
    ) -> list[SimNode]:
        nodes: list[SimNode] = []
        used_ips: set[str] = set(taken_ips)
        for pool in pools:
            model = GPU_MODELS[pool.gpu_model] if pool.gpu_model else None
            for _ in range(pool.nodes):
                while True:
                    ip = f"10.0.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
                    if ip not in used_ips:
                        used_ips.add(ip)
                        break
                name = f"ip-{ip.replace('.', '-')}.ec2.internal"
                gpus: list[SimGpu] = []
                buses = sorted(rng.sample(range(0x10, 0xF0), pool.gpus_per_node))
                for idx in range(pool.gpus_per_node):
                    assert model is not None
                    h = _hex(rng, 32)
                    uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
                    mig: tuple[MigInstance, ...] = ()
                    if pool.sharing == "mig":
                        layout = MIG_LAYOUTS[(len(nodes) + idx) % len(MIG_LAYOUTS)]
                        mig = _mig_instances(layout)
                    gpus.append(
                        SimGpu(
                            node=name,
                            index=idx,
                            uuid=uuid,
                            pci_bus_id=f"00000000:{buses[idx]:02X}:00.0",
                            model=model,
                            sharing=pool.sharing,
                            mig=mig,
                        )
                    )
                labels = {
                    "kubernetes.io/hostname": name,
                    "node.kubernetes.io/instance-type": pool.instance_type,
                    "topology.kubernetes.io/zone": pool.zone,
                }
                if model is not None:
                    labels["nvidia.com/gpu.product"] = model.name.replace(" ", "-")
                    if pool.sharing == "mig":
                        labels["nvidia.com/mig.config"] = "custom-mixed"
                    if pool.sharing == "timeslice":
                        labels["nvidia.com/gpu.sharing-strategy"] = "time-slicing"
                nodes.append(
                    SimNode(
                        name=name,
                        pool=pool.name,
                        instance_type=pool.instance_type,
                        zone=pool.zone,
                        provider_id=f"i-0{_hex(rng, 16)}",
                        ip=ip,
                        cpu_cores=pool.cpu_cores,
                        ram_bytes=pool.ram_gib * GIB,
                        gpus=tuple(gpus),
                        labels=labels,
                    )
                )
        return nodes

    def _gpu_slots(
        self, rng: random.Random, nodes: Sequence[SimNode]
    ) -> list[tuple[SimNode, tuple[GpuHold, ...]]]:
        """Where GPU pods go: one entry per pod, with the units it holds. On a partly
        requested time-sliced GPU the replicas nobody requests are slots too (their ids in
        ``_surplus_slots``): their pods are drawn and then left out, so the rest of the layout
        is the same with or without partial requests."""
        spec = self.spec
        slots: list[tuple[SimNode, tuple[GpuHold, ...]]] = []
        unallocated_left_out = False
        for node in nodes:
            if not node.gpus:
                continue
            sharing = node.gpus[0].sharing
            model = node.gpus[0].model
            if sharing == "none":
                n = len(node.gpus)
                free = sum(rng.random() < spec.unallocated_gpu_fraction for _ in range(n))
                if not unallocated_left_out and n > 1:
                    free = max(free, 1)  # at least one unallocated whole GPU in the cluster
                unallocated_left_out = unallocated_left_out or free > 0
                allocatable = list(node.gpus[: n - free])
                while allocatable:
                    size = rng.choice((8, 4, 2, 1, 1, 1, 1))
                    while size > len(allocatable):
                        size //= 2
                    chunk, allocatable = allocatable[:size], allocatable[size:]
                    slots.append((node, tuple(GpuHold(g.uuid, "", 1.0, model.name) for g in chunk)))
            elif sharing == "mig":
                for gpu in node.gpus:
                    for inst in gpu.mig:
                        if rng.random() < spec.mig_unassigned_fraction:
                            continue
                        frac = inst.slices / model.mig_slices
                        slots.append((node, (GpuHold(gpu.uuid, inst.gi_id, frac, model.name),)))
            else:
                k = max(1, spec.timeslice_replicas)
                for gpu in node.gpus:
                    if rng.random() < spec.unallocated_gpu_fraction:
                        continue
                    # A hash, not the rng: the rest of the layout stays as it was.
                    partly = _hash_unit(gpu.uuid, "partly") < spec.timeslice_partly_requested
                    requested = k - k // 2 if partly else k  # 2 of 3, 2 of 4
                    for replica in range(k):
                        slot = (node, (GpuHold(gpu.uuid, "", 1.0 / k, model.name),))
                        if replica >= requested:
                            self._surplus_slots.add(id(slot))
                        slots.append(slot)
        if spec.mig_unassigned_fraction > 0:
            self._ensure_unassigned_mig(slots)
        return slots

    def _ensure_unassigned_mig(self, slots: list[tuple[SimNode, tuple[GpuHold, ...]]]) -> None:
        mig_slots = [i for i, (_, holds) in enumerate(slots) if holds[0].gi_id]
        held = {slots[i][1][0].unit for i in mig_slots}
        total = sum(len(g.mig) for n in self.nodes for g in n.gpus)
        if mig_slots and len(held) == total:
            del slots[mig_slots[-1]]

    def _build_gpu_pods(
        self,
        rng: random.Random,
        names: set[tuple[str, str]],
        nodes: Sequence[SimNode] | None = None,
        *,
        forced_roles: bool = True,
    ) -> list[SimPod]:
        """GPU pods on ``nodes`` (default: every node); ``forced_roles`` places the special
        pods (unmatched, unmapped, batch, serving, ...) — once per cluster."""
        spec = self.spec
        slots = self._gpu_slots(rng, self.nodes if nodes is None else nodes)
        kinds = {i: _slot_kind(holds) for i, (_, holds) in enumerate(slots)}
        # Forced roles first, each on a distinct slot chosen deterministically.
        taken: set[int] = set()

        def pick(pred: Callable[[tuple[GpuHold, ...]], bool]) -> int | None:
            for i, (_, holds) in enumerate(slots):
                if i not in taken and pred(holds):
                    taken.add(i)
                    return i
            return None

        def kinds_of(holds: tuple[GpuHold, ...]) -> str:
            return _slot_kind(holds)

        def single_whole(holds: tuple[GpuHold, ...]) -> bool:
            return kinds_of(holds) == "none" and len(holds) == 1

        role: dict[int, str] = {}
        if forced_roles:
            cheapest = min(
                (h[0].model for _, h in slots), key=lambda m: GPU_MODELS[m].usd_per_hour, default=""
            )
            i = pick(lambda h: single_whole(h) and h[0].model == cheapest)
            if i is None:
                i = pick(single_whole)
            if i is not None:
                role[i] = "unmatched"
            for _ in range(spec.unmapped_dcgm_pods):
                i = pick(single_whole)
                if i is not None:
                    role[i] = "unmapped"
            for _ in range(spec.batch_jobs):
                i = pick(single_whole)
                if i is not None:
                    role[i] = "batch"
            for serving_pod in spec.serving_pods:
                i = pick(lambda h: single_whole(h) and "H100" in h[0].model)
                if i is None:
                    i = pick(single_whole)
                if i is not None:
                    role[i] = f"serving:{serving_pod}"
            if self._pod_label_in_pattern_ns is not None:
                i = pick(lambda h: kinds_of(h) == "none")
                if i is not None:
                    role[i] = "pod_label_in_pattern"
            if self._labelled_pattern_ns is not None:
                i = pick(lambda h: kinds_of(h) == "mig")
                if i is not None:
                    role[i] = "labelled_pattern"
            if spec.odd_tenant is not None:
                i = pick(lambda h: kinds_of(h) == "timeslice")
                if i is None:
                    i = pick(lambda h: True)
                if i is not None:
                    role[i] = "odd"

        busy = {i: rng.random() >= spec.idle_fraction for i in range(len(slots))}
        for kind in ("none", "mig", "timeslice"):
            members = [i for i in range(len(slots)) if kinds[i] == kind and i not in role]
            if members and all(busy[i] for i in members):
                busy[members[0]] = False
            if members and not any(busy[i] for i in members):
                busy[members[-1]] = True
        for i, r in role.items():
            if r in ("unmapped", "batch") or r.startswith("serving:"):
                busy[i] = True

        # Tenant weights: a few big tenants, a long tail (Zipf-like), as in real clusters.
        tenants = list(spec.tenants)
        cum = _zipf_cum_weights(len(tenants))
        used_cpu: dict[str, float] = defaultdict(float)
        used_ram: dict[str, float] = defaultdict(float)
        pods: list[SimPod] = []
        for i, (node, holds) in enumerate(slots):
            r = role.get(i, "")
            frac = math.fsum(h.fraction for h in holds)
            gpus_on_node = len(node.gpus)
            cpu = max(0.5, round(node.cpu_cores / gpus_on_node * frac * rng.uniform(0.3, 0.85), 1))
            ram = max(
                1.0, round(node.ram_bytes / GIB / gpus_on_node * frac * rng.uniform(0.3, 0.85))
            )
            tenant = rng.choices(tenants, cum_weights=cum)[0]
            if rng.random() < spec.unmatched_fraction:
                tenant = ""
            namespace, labels = self._placement(tenant, rng)
            schedule: Schedule | None = None
            if r == "unmatched":
                namespace, labels = "default", {}
            elif r == "pod_label_in_pattern" and self._pod_label_in_pattern_ns:
                ns, t = self._pod_label_in_pattern_ns
                namespace, labels = ns, {TENANT_LABEL: t}
            elif r == "labelled_pattern" and self._labelled_pattern_ns:
                namespace, labels = self._labelled_pattern_ns[0], {}
            elif r == "odd":
                namespace, labels = "legal", {}
            elif r == "batch":
                schedule = Schedule(3600.0, 2400.0, math.floor(rng.uniform(0, 3600)))
            app, kind = _gpu_app(holds, r, rng)
            if r.startswith("serving:"):
                namespace, labels = SERVING_NAMESPACE, {TENANT_LABEL: PLATFORM_TENANT}
                app, kind = "vllm-llama", "statefulset"
                name, controller, controller_kind = r.split(":", 1)[1], app, kind
                names.add((namespace, name))
            else:
                name, controller, controller_kind = self._pod_name(app, kind, namespace, rng, names)
            pod_labels = {"app": app, **labels}
            if r == "batch":
                # Restartable batch work: the spot recommendation's candidate.
                pod_labels[FAULT_TOLERANT_LABEL] = "true"
            if controller_kind == "deployment":
                pod_labels["pod-template-hash"] = name.split("-")[-2]
            if namespace == self._decoy_team_ns:
                pod_labels[TEAM_LABEL] = "ml-infra"  # not a configured pod label key: ignored
            pv_gib = float(rng.choice((0, 0, 100, 500, 1000))) if kind != "deployment" else 0.0
            serving = controller_kind == "deployment"
            lb = 0.0225 if serving and rng.random() < 0.25 else 0.0
            network = round(rng.uniform(0.005, 0.2), 4) if serving and rng.random() < 0.5 else 0.0
            used_cpu[node.name] += cpu
            used_ram[node.name] += ram * GIB
            pods.append(
                SimPod(
                    namespace=namespace,
                    name=name,
                    node=node.name,
                    container=app.split("-")[0] if kind != "deployment" else "server",
                    controller=controller,
                    controller_kind=controller_kind,
                    labels=pod_labels,
                    cpu_cores=cpu,
                    ram_bytes=ram * GIB,
                    holds=holds,
                    busy=busy[i],
                    pv_gib=pv_gib,
                    pv_name=f"pvc-{_hex(rng, 8)}-{_hex(rng, 4)}" if pv_gib else "",
                    network_usd_per_hour=network,
                    lb_usd_per_hour=lb,
                    lb_service=f"{app}-lb" if lb else "",
                    cost_adjustment=_adjustment(namespace),
                    schedule=schedule,
                    dcgm_mapped=r != "unmapped",
                )
            )
        self._gpu_used_cpu.update(used_cpu)
        self._gpu_used_ram.update(used_ram)
        # Replicas nobody requested: no pod (their draws were made, so nothing else moved).
        return [
            pod
            for i, pod in enumerate(pods)
            if id(slots[i]) not in self._surplus_slots or i in role
        ]

    def _placement(self, tenant: str, rng: random.Random) -> tuple[str, dict[str, str]]:
        """Namespace and tenant-carrying pod labels for a pod of ``tenant`` ("" = unmatched)."""
        if not tenant:
            return rng.choice(UNMATCHED_NAMESPACES), {}
        ns = self._tenant_namespace[tenant]
        if self.tenant_rule[tenant] == "pod_label":
            return ns, {TENANT_LABEL: tenant}
        if (
            self._labelled_pattern_ns is not None
            and tenant == self._labelled_pattern_ns[1]
            and rng.random() < 0.3
        ):
            return self._labelled_pattern_ns[0], {}
        return ns, {}

    def _pod_name(
        self,
        app: str,
        kind: str,
        namespace: str,
        rng: random.Random,
        names: set[tuple[str, str]],
    ) -> tuple[str, str, str]:
        while True:
            if kind == "deployment":
                rs = _k8s_suffix(rng, 10)
                name = f"{app}-{rs}-{_k8s_suffix(rng, 5)}"
                controller = app
            elif kind == "statefulset":
                controller = f"{app}-{_k8s_suffix(rng, 3)}"
                name = f"{controller}-0"
            elif kind == "daemonset":
                controller = app
                name = f"{app}-{_k8s_suffix(rng, 5)}"
            else:  # job / cronjob: the run suffix is added per run
                controller = f"{app}-{_k8s_suffix(rng, 4)}"
                name = controller
            if (namespace, name) not in names:
                names.add((namespace, name))
                return name, controller, kind

    def _build_system_pods(self, rng: random.Random, names: set[tuple[str, str]]) -> list[SimPod]:
        pods: list[SimPod] = []
        daemonsets = [
            ("kube-system", "kube-proxy", 0.1, 0.125),
            ("monitoring", "node-exporter", 0.1, 0.18),
        ]
        for node in self.nodes:
            sets = list(daemonsets)
            if node.gpus:
                sets.append(("gpu-operator", "nvidia-dcgm-exporter", 0.1, 0.5))
            for ns, app, cpu, ram_gib in sets:
                name, controller, kind = self._pod_name(app, "daemonset", ns, rng, names)
                pods.append(
                    SimPod(
                        ns, name, node.name, app, controller, kind, {"app": app}, cpu, ram_gib * GIB
                    )
                )
        general = [n for n in self.nodes if not n.gpus] or list(self.nodes)
        singletons = [
            ("kube-system", "coredns", 0.2, 0.25, 0.0),
            ("monitoring", "prometheus", 2.0, 8.0, 500.0),
            ("opencost", "opencost", 0.5, 1.0, 0.0),
        ]
        for j, (ns, app, cpu, ram_gib, pv) in enumerate(singletons):
            node = general[j % len(general)]
            kind = "statefulset" if pv else "deployment"
            name, controller, kind = self._pod_name(app, kind, ns, rng, names)
            labels = {"app": app}
            if kind == "deployment":
                labels["pod-template-hash"] = name.split("-")[-2]
            pods.append(
                SimPod(
                    ns,
                    name,
                    node.name,
                    app,
                    controller,
                    kind,
                    labels,
                    cpu,
                    ram_gib * GIB,
                    pv_gib=pv,
                    pv_name=f"pvc-{_hex(rng, 8)}-{_hex(rng, 4)}" if pv else "",
                    shared_usd_per_hour=0.05 if app == "prometheus" else 0.0,
                )
            )
        return pods

    def _build_cpu_pods(
        self, rng: random.Random, names: set[tuple[str, str]], existing: int
    ) -> list[SimPod]:
        spec = self.spec
        any_external = False
        if spec.target_pods is not None:
            count = max(0, spec.target_pods - existing)
        else:
            count = spec.cpu_pods_per_node * len(self.nodes)
        tenants = list(spec.tenants)
        cum = _zipf_cum_weights(len(tenants))
        free_cpu = {
            n.name: n.cpu_cores * 0.9 - self._gpu_used_cpu.get(n.name, 0.0) - 0.3
            for n in self.nodes
        }
        free_ram = {
            n.name: n.ram_bytes * 0.9 - self._gpu_used_ram.get(n.name, 0.0) - GIB
            for n in self.nodes
        }
        apps = ("api", "etl", "feature-store", "redis", "postgres", "webhook", "scheduler")
        pods: list[SimPod] = []
        extras: list[str] = []
        if spec.odd_tenant is not None:
            extras.append("legal")
        for j in range(count + len(extras)):
            node = self.nodes[j % len(self.nodes)]
            cpu = min(round(rng.uniform(0.25, 4.0), 2), max(0.0, free_cpu[node.name]) / 4)
            ram = min(rng.uniform(0.5, 16.0) * GIB, max(0.0, free_ram[node.name]) / 4)
            cpu, ram = max(0.05, round(cpu, 3)), max(64 * MIB, float(math.floor(ram / MIB) * MIB))
            free_cpu[node.name] -= cpu
            free_ram[node.name] -= ram
            labels: dict[str, str] = {}
            if j >= count:
                namespace = extras[j - count]
            else:
                tenant = rng.choices(tenants, cum_weights=cum)[0]
                if rng.random() < spec.unmatched_fraction:
                    tenant = ""
                namespace, labels = self._placement(tenant, rng)
            app = rng.choice(apps)
            kind = "statefulset" if app in ("redis", "postgres") else "deployment"
            name, controller, kind = self._pod_name(app, kind, namespace, rng, names)
            pod_labels = {"app": app, **labels}
            if kind == "deployment":
                pod_labels["pod-template-hash"] = name.split("-")[-2]
            pv = float(rng.choice((20, 50, 200))) if kind == "statefulset" else 0.0
            external = 0.0
            # The first ETL pod always has one, so every OpenCost field has data.
            if app == "etl" and (rng.random() < 0.5 or not any_external):
                external = round(rng.uniform(0.02, 0.3), 4)  # e.g. an S3 bucket tagged to it
                any_external = True
            pods.append(
                SimPod(
                    namespace=namespace,
                    name=name,
                    node=node.name,
                    container=app,
                    controller=controller,
                    controller_kind=kind,
                    labels=pod_labels,
                    cpu_cores=cpu,
                    ram_bytes=ram,
                    pv_gib=pv,
                    pv_name=f"pvc-{_hex(rng, 8)}-{_hex(rng, 4)}" if pv else "",
                    network_usd_per_hour=round(rng.uniform(0.001, 0.05), 4)
                    if rng.random() < 0.3
                    else 0.0,
                    external_usd_per_hour=external,
                    cost_adjustment=_adjustment(namespace),
                )
            )
        return pods

    # --- tenancy --------------------------------------------------------------------------

    def tenancy_config(self) -> dict[str, Any]:
        """The exporter's ``tenancy:`` section (keys as ``settings.TenancySettings``) that names
        this cluster's tenants: pod label ``aifinops.io/tenant``, namespace label ``team``, the
        namespace map, and the ``team-<tenant>`` namespace pattern."""
        return {
            "pod_label_keys": [TENANT_LABEL],
            "namespace_label_keys": [TEAM_LABEL],
            "namespaces": dict(sorted(self.namespace_map.items())),
            "namespace_patterns": [{"regex": TENANT_PATTERN}],
        }

    def visible_labels(self, pod: SimPod) -> tuple[dict[str, str], dict[str, str]]:
        """Pod labels and namespace labels as OpenCost reports them: keys sanitized; node, then
        namespace, then pod labels merged into ``labels`` (later ones win)."""
        node = self._node_by_name[pod.node]
        ns_labels = {sanitize_label_key(k): v for k, v in self.namespaces[pod.namespace].items()}
        merged = {sanitize_label_key(k): v for k, v in node.labels.items()}
        merged.update(ns_labels)
        merged.update({sanitize_label_key(k): v for k, v in pod.labels.items()})
        return merged, ns_labels

    def tenant_of(self, pod: SimPod) -> str:
        """The tenant the configured rules give ``pod``, read from what OpenCost reports
        (first match wins: pod label keys, namespace label keys, namespace map, pattern)."""
        key = (pod.namespace, pod.name)
        cached = self._tenant_cache.get(key)
        if cached is not None:
            return cached
        labels, ns_labels = self.visible_labels(pod)
        tenant = UNALLOCATED_TENANT
        value = labels.get(sanitize_label_key(TENANT_LABEL))
        if value:
            tenant = value
        elif ns_labels.get(TEAM_LABEL):
            tenant = ns_labels[TEAM_LABEL]
        elif self.namespace_map.get(pod.namespace):
            tenant = self.namespace_map[pod.namespace]
        else:
            m = re.fullmatch(TENANT_PATTERN, pod.namespace)
            if m and m.group("tenant"):
                tenant = m.group("tenant")
        self._tenant_cache[key] = tenant
        return tenant

    def rule_used(self, pod: SimPod) -> str:
        """Which rule kind decides ``pod``'s tenant (``"none"`` when nothing matches)."""
        labels, ns_labels = self.visible_labels(pod)
        if labels.get(sanitize_label_key(TENANT_LABEL)):
            return "pod_label"
        if ns_labels.get(TEAM_LABEL):
            return "namespace_label"
        if self.namespace_map.get(pod.namespace):
            return "namespace_map"
        if re.fullmatch(TENANT_PATTERN, pod.namespace):
            return "namespace_pattern"
        return "none"

    def scale_tenant(self, tenant: str, factor: float) -> None:
        """Multiply every request and cost of ``tenant``'s pods by ``factor`` (> 0) from now on,
        e.g. to drive it over budget. OpenCost's idle row is computed from unscaled requests."""
        if not factor > 0 or math.isinf(factor):
            raise ValueError(f"factor must be a finite number > 0, got {factor}")
        self._scale[tenant] = factor

    # --- time -----------------------------------------------------------------------------

    def runs(self, pod: SimPod, start: float, end: float) -> list[PodRun]:
        """The runs of ``pod`` that overlap ``[start, end]`` (unix seconds)."""
        if pod.schedule is None:
            return [PodRun(pod, pod.name, -math.inf, math.inf)]
        s = pod.schedule
        first = math.floor((start - s.phase_s - s.run_s) / s.period_s)
        last = math.floor((end - s.phase_s) / s.period_s)
        out: list[PodRun] = []
        for k in range(first, last + 1):
            run = self._run(pod, s, k)
            if run.end > start and run.start < end:
                out.append(run)
        return out

    @staticmethod
    def _run(pod: SimPod, s: Schedule, k: int) -> PodRun:
        # CronJob pods are named <cronjob>-<scheduled unix minute>-<5 random characters>.
        run_start = s.phase_s + k * s.period_s
        minute = math.floor(run_start / 60)
        name = f"{pod.name}-{minute}-{_hash_suffix(pod.namespace, pod.name, minute)}"
        return PodRun(pod, name, run_start, run_start + s.run_s)

    def run_at(self, pod: SimPod, now: float) -> PodRun | None:
        """The run of ``pod`` in progress at ``now`` (start ≤ now < end), if any."""
        if pod.schedule is None:
            return PodRun(pod, pod.name, -math.inf, math.inf)
        s = pod.schedule
        run = self._run(pod, s, math.floor((now - s.phase_s) / s.period_s))
        return run if run.start <= now < run.end else None

    def _samples(self, now: float) -> list[_Sample]:
        """Every DCGM series at ``now``, in dcgm-exporter's order (node, GPU, instance, pod)."""
        out: list[_Sample] = []
        for node in self.nodes:
            for gpu in node.gpus:
                if gpu.sharing == "mig":
                    for inst in gpu.mig:
                        out.append(self._unit_sample(gpu, inst, now))
                elif gpu.sharing == "timeslice":
                    out.extend(self._timeslice_samples(gpu, now))
                else:
                    out.append(self._unit_sample(gpu, None, now))
        return out

    def _unit_sample(self, gpu: SimGpu, inst: MigInstance | None, now: float) -> _Sample:
        unit = (gpu.uuid, inst.gi_id if inst else "")
        for pod, _ in self._unit_pods.get(unit, ()):
            run = self.run_at(pod, now)
            if run is None:
                continue
            key = f"{pod.namespace}/{pod.name}/{unit[0]}/{unit[1]}"
            pct = _utilization_pct(key, _BUSY_PCT if pod.busy else _IDLE_PCT, now)
            return _Sample(
                gpu, inst, run if pod.dcgm_mapped else None, pct, _engine_milli(key, pct)
            )
        return _Sample(gpu, inst, None, 0, 0)

    def _timeslice_samples(self, gpu: SimGpu, now: float) -> list[_Sample]:
        shares: list[tuple[PodRun, int, int]] = []
        for pod, _ in self._unit_pods.get((gpu.uuid, ""), ()):
            run = self.run_at(pod, now)
            if run is None or not pod.dcgm_mapped:
                continue
            key = f"{pod.namespace}/{pod.name}/{gpu.uuid}/"
            pct = _utilization_pct(key, _SHARE_BUSY_PCT if pod.busy else _IDLE_PCT, now)
            shares.append((run, pct, _engine_milli(key, pct)))
        if not shares:
            return [_Sample(gpu, None, None, 0, 0)]
        if self.spec.timeslice_util == "device":
            pct = min(100, sum(s[1] for s in shares))
            eng = min(1000, sum(s[2] for s in shares))
            return [_Sample(gpu, None, run, pct, eng) for run, _, _ in shares]
        return [_Sample(gpu, None, run, pct, eng) for run, pct, eng in shares]

    # --- renderers: dcgm-exporter ---------------------------------------------------------

    def _dcgm_labels(self, s: _Sample) -> str:
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
        new = self.dcgm_generation(gpu.node) != "4.8"
        parts.append(f'hostname="{gpu.node}"' if new else f'Hostname="{gpu.node}"')
        driver = "DCGM_FI_SYSTEM_DRIVER_VERSION" if new else "DCGM_FI_DRIVER_VERSION"
        parts.append(f'{driver}="{self.spec.driver_version}"')
        if s.run is not None:
            pod = s.run.pod
            parts.append(f'container="{_escape_label_value(pod.container)}"')
            parts.append(f'namespace="{_escape_label_value(pod.namespace)}"')
            parts.append(f'pod="{_escape_label_value(s.run.name)}"')
        return ",".join(parts)

    def _dcgm_values(self, s: _Sample, now: float) -> dict[str, str]:
        model = s.gpu.model
        u = s.util_pct / 100.0
        mem = model.memory_mib
        if s.mig is not None:
            mem = mem * s.mig.slices // model.mig_slices
        key = f"{s.gpu.uuid}/{s.mig.gi_id if s.mig else ''}"
        boot = 1_700_000_000.0 - 86400.0 * 30 * _hash_unit(s.gpu.uuid, "boot")
        avg_power = model.max_power_w * (0.35 + 0.3 * _hash_unit(s.gpu.uuid, "power"))
        energy_mj = max(0, math.floor((now - boot) * avg_power * 1000.0))
        sm_clock = 210 if u < 0.05 else round(model.max_sm_clock_mhz * (0.6 + 0.4 * u))
        fb_used = 0 if s.run is None and u == 0 else round(mem * (0.15 + 0.8 * u))
        return {
            "DCGM_FI_DEV_SM_CLOCK": str(sm_clock),
            "DCGM_FI_DEV_GPU_TEMP": str(round(32 + 45 * u + 4 * _hash_unit(key, "temp"))),
            "DCGM_FI_DEV_POWER_USAGE": _format_dcgm_float(
                round(model.max_power_w * (0.1 + 0.85 * u) + _hash_unit(key, "pw"), 3)
            ),
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": str(energy_mj),
            "DCGM_FI_DEV_GPU_UTIL": str(s.util_pct),
            "DCGM_FI_DEV_FB_USED": str(fb_used),
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE": _format_dcgm_float(s.engine_milli / 1000.0),
        }

    def dcgm_generation(self, node: str) -> str:
        """The dcgm-exporter generation the GPU node ``node`` runs (``"4.8"`` or ``"4.9"``)."""
        return self._generation.get(node, "4.8")

    def _dcgm_emitted(self, s: _Sample, now: float) -> dict[str, str]:
        """The families this sample's exporter writes, by the name it writes them under: a MIG
        instance has no device utilization, a GPU without profiling counters no profiling
        metric, and a 4.9 exporter writes DCGM 4.7 names (utilization as a ratio)."""
        values = self._dcgm_values(s, now)
        if s.mig is not None:
            del values["DCGM_FI_DEV_GPU_UTIL"]
        if not s.gpu.model.profiling:
            del values["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
        if self.dcgm_generation(s.gpu.node) == "4.8":
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

    def dcgm_exposition(self, now: float, *, node: str | None = None) -> str:
        """dcgm-exporter ``/metrics`` text at ``now``: every node's GPUs, or one ``node``'s.

        Families in ``default-counters.csv`` order, each ``# HELP``/``# TYPE`` then its series;
        labels in dcgm-exporter's order (``gpu, UUID, pci_bus_id, device, modelName``, MIG's
        ``GPU_I_PROFILE, GPU_I_ID``, ``Hostname, DCGM_FI_DRIVER_VERSION``, then ``container,
        namespace, pod`` when a pod holds the device). Raises ``KeyError`` for an unknown node.
        """
        if node is not None and node not in self._node_by_name:
            raise KeyError(node)
        samples = [s for s in self._samples(now) if node is None or s.gpu.node == node]
        return self._render_dcgm(samples, now)

    def dcgm_pages(self, now: float) -> dict[str, str]:
        """One dcgm-exporter page per GPU node (it runs as a DaemonSet), keyed by node name."""
        by_node: dict[str, list[_Sample]] = defaultdict(list)
        for s in self._samples(now):
            by_node[s.gpu.node].append(s)
        return {n.name: self._render_dcgm(by_node[n.name], now) for n in self.nodes if n.gpus}

    def _render_dcgm(self, samples: Sequence[_Sample], now: float) -> str:
        rendered = [(self._dcgm_labels(s), self._dcgm_emitted(s, now)) for s in samples]
        lines: list[str] = []
        for name, type_, help_ in DCGM_FAMILIES + DCGM_4_9_FAMILIES:
            series = [
                f"{name}{{{labels}}} {values[name]}"
                for labels, values in rendered
                if name in values
            ]
            if not series:
                continue
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {type_}")
            lines.extend(series)
        return "\n".join(lines) + "\n"

    # --- renderers: Prometheus ------------------------------------------------------------

    def prometheus_series(self, now: float, metric: str) -> list[tuple[dict[str, str], str]]:
        """Every series of a DCGM family as a Prometheus scraping dcgm-exporter stores it:
        the exposition labels plus ``instance``, ``job`` and ``cluster``; with
        ``prometheus_honor_labels=False`` the pod labels become ``exported_*`` and the target's
        own ``namespace``/``pod``/``container`` take their place."""
        return self._prometheus_series(now, (metric,))

    def _prometheus_series(
        self, now: float, metrics: Sequence[str]
    ) -> list[tuple[dict[str, str], str]]:
        """:meth:`prometheus_series` of several families, each sample rendered once."""
        wanted = [m for m in metrics if m in DCGM_FAMILY_NAMES]
        if not wanted:
            return []
        rendered = [(s, self._dcgm_emitted(s, now)) for s in self._samples(now)]
        return [
            row
            for metric in wanted
            for s, emitted in rendered
            if metric in emitted
            for row in self._prometheus_rows(s, metric, emitted[metric])
        ]

    def _prometheus_rows(
        self, s: _Sample, metric: str, text: str
    ) -> list[tuple[dict[str, str], str]]:
        """One sample's series of ``metric`` (value ``text``) as Prometheus stores it: once,
        or twice with ``prometheus_duplicate_jobs``."""
        out: list[tuple[dict[str, str], str]] = []
        gpu = s.gpu
        new = self.dcgm_generation(gpu.node) != "4.8"
        node = self._node_by_name[gpu.node]
        labels = {
            "__name__": metric,
            "gpu": str(gpu.index),
            "UUID": gpu.uuid,
            "pci_bus_id": gpu.pci_bus_id,
            "device": f"nvidia{gpu.index}",
            "modelName": gpu.model.name,
        }
        if s.mig is not None:
            labels["GPU_I_PROFILE"] = s.mig.profile
            labels["GPU_I_ID"] = s.mig.gi_id
        labels["hostname" if new else "Hostname"] = gpu.node
        driver = "DCGM_FI_SYSTEM_DRIVER_VERSION" if new else "DCGM_FI_DRIVER_VERSION"
        labels[driver] = self.spec.driver_version
        pod_labels: dict[str, str] = {}
        if s.run is not None:
            pod_labels = {
                "container": s.run.pod.container,
                "namespace": s.run.pod.namespace,
                "pod": s.run.name,
            }
        if self.spec.prometheus_honor_labels:
            labels.update(pod_labels)
        else:
            labels.update({f"exported_{k}": v for k, v in pod_labels.items()})
            labels.update(
                {
                    "container": "nvidia-dcgm-exporter",
                    "namespace": "gpu-operator",
                    "pod": f"nvidia-dcgm-exporter-{node.provider_id[-5:]}",
                    "service": "nvidia-dcgm-exporter",
                    "endpoint": "gpu-metrics",
                }
            )
        labels["instance"] = f"{node.ip}:9400"
        labels["job"] = "nvidia-dcgm-exporter"
        labels["cluster"] = self.spec.cluster_name
        value = float(text)
        out.append((labels, _prom_value(value)))
        if self.spec.prometheus_duplicate_jobs:
            out.append(({**labels, "job": "gpu-operator/nvidia-dcgm-exporter"}, _prom_value(value)))
        return out

    def prometheus_vector(self, now: float, promql: str) -> dict[str, Any]:
        """The Prometheus HTTP API JSON for an instant query at ``now``.

        Understands a vector selector: a metric name optionally followed by ``{l="v",...}``
        matchers (``=``, ``!=``, ``=~``, ``!~``), or ``{__name__="...",...}`` /
        ``{__name__=~"A|B",...}``. A valid selector of
        a metric the sim does not have answers an empty vector, as Prometheus does; anything
        else (functions, operators, syntax errors) answers Prometheus' ``bad_data`` error JSON,
        which the fake server sends with status 400.
        """
        try:
            name, matchers = parse_selector(promql)
        except ValueError as exc:
            return {
                "status": "error",
                "errorType": "bad_data",
                "error": f'invalid parameter "query": {exc}',
            }
        result: list[dict[str, Any]] = []
        ts = round(now, 3)
        # A selector without a name (``{__name__=~"A|B",...}``): the families it matches.
        families = [name] if name is not None else sorted(DCGM_FAMILY_NAMES)
        name_matchers = [(op, v) for k, op, v in matchers if k == "__name__"]
        families = [f for f in families if all(_matches(f, op, v) for op, v in name_matchers)]
        for labels, value in self._prometheus_series(now, families):
            if all(_matches(labels.get(k, ""), op, v) for k, op, v in matchers):
                result.append({"metric": labels, "value": [ts, value]})
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    # --- OpenCost -------------------------------------------------------------------------

    def _charges(self, now: float, window_hours: float) -> list[_Charge]:
        """Every pod run's OpenCost row over ``[now − window_hours, now]``."""
        spec = self.spec
        ws, we = now - window_hours * 3600.0, now
        out: list[_Charge] = []
        r = opencost_round
        for pod in self.pods:
            tenant = self.tenant_of(pod)
            mult = self._scale.get(tenant, 1.0)
            gpu_price = GPU_MODELS[pod.holds[0].model].usd_per_hour if pod.holds else 0.0
            for run in self.runs(pod, ws, we):
                start, end = max(run.start, ws), min(run.end, we)
                hours = (end - start) / 3600.0
                if hours <= 0:
                    continue
                raw_cpu = pod.cpu_cores * hours * spec.cpu_usd_per_core_hour
                raw_ram = pod.ram_bytes / GIB * hours * spec.ram_usd_per_gib_hour
                raw_gpu = pod.gpu_count * hours * gpu_price
                raw_pv = pod.pv_gib * hours * spec.pv_usd_per_gib_hour * mult
                net = pod.network_usd_per_hour * hours * mult
                zone, region = net * 0.5, net * 0.2
                internet = net - zone - region
                lb = pod.lb_usd_per_hour * hours * mult
                shared = pod.shared_usd_per_hour * hours * mult
                external = pod.external_usd_per_hour * hours * mult
                cpu, ram, gpu = raw_cpu * mult, raw_ram * mult, raw_gpu * mult
                cpu_adj, ram_adj = cpu * pod.cost_adjustment, ram * pod.cost_adjustment
                total = cpu + cpu_adj + ram + ram_adj + gpu + raw_pv + net + lb + shared + external
                out.append(
                    _Charge(
                        run=run,
                        tenant=tenant,
                        start=start,
                        end=end,
                        hours=hours,
                        multiplier=mult,
                        cpu=r(cpu),
                        cpu_adj=r(cpu_adj),
                        ram=r(ram),
                        ram_adj=r(ram_adj),
                        gpu=r(gpu),
                        pv=r(raw_pv),
                        network=r(net),
                        network_zone=r(zone),
                        network_region=r(region),
                        network_internet=r(internet),
                        lb=r(lb),
                        shared=r(shared),
                        external=r(external),
                        total=r(total),
                        raw_cpu=raw_cpu,
                        raw_ram=raw_ram,
                        raw_gpu=raw_gpu,
                    )
                )
        return out

    def _idle_costs(self, charges: Sequence[_Charge], window_hours: float) -> dict[str, float]:
        """OpenCost's ``__idle__`` row: capacity over the window minus what pods requested
        (unscaled), per resource: dollars (``cpu``, ``ram``, ``gpu``, unrounded) and quantities
        (``cpu_core_hours``, ``ram_byte_hours``, ``gpu_hours``)."""
        spec = self.spec
        cap_cpu = math.fsum(n.cpu_cores for n in self.nodes) * window_hours
        cap_ram = math.fsum(n.ram_bytes for n in self.nodes) * window_hours
        cap_gpu_h = sum(len(n.gpus) for n in self.nodes) * window_hours
        cap_gpu = math.fsum(g.model.usd_per_hour for n in self.nodes for g in n.gpus) * window_hours
        used_cpu = math.fsum(c.run.pod.cpu_cores * c.hours for c in charges)
        used_ram = math.fsum(c.run.pod.ram_bytes * c.hours for c in charges)
        used_gpu_h = math.fsum(c.run.pod.gpu_count * c.hours for c in charges)
        return {
            "cpu": max(
                0.0, cap_cpu * spec.cpu_usd_per_core_hour - math.fsum(c.raw_cpu for c in charges)
            ),
            "ram": max(
                0.0,
                cap_ram / GIB * spec.ram_usd_per_gib_hour - math.fsum(c.raw_ram for c in charges),
            ),
            "gpu": max(0.0, cap_gpu - math.fsum(c.raw_gpu for c in charges)),
            "cpu_core_hours": max(0.0, cap_cpu - used_cpu),
            "ram_byte_hours": max(0.0, cap_ram - used_ram),
            "gpu_hours": max(0.0, cap_gpu_h - used_gpu_h),
        }

    def opencost_allocation(
        self,
        now: float,
        window_hours: float = 1.0,
        *,
        aggregate: str = "namespace,pod",
        include_idle: bool = True,
    ) -> dict[str, Any]:
        """OpenCost ``/allocation/compute?window=…&aggregate=namespace,pod&includeIdle=true
        &accumulate=true`` JSON over ``[now − window_hours, now]``.

        ``aggregate`` is ``"namespace,pod"`` (keys ``namespace/pod``) or ``""`` (OpenCost's
        default: one row per container, keyed ``cluster/node/namespace/pod/container``); other
        values raise ``ValueError``. Numbers are rounded as OpenCost rounds them.
        """
        agg = ",".join(sorted(p.strip() for p in aggregate.split(",") if p.strip()))
        if agg not in ("namespace,pod", ""):
            raise ValueError(f"unsupported aggregate {aggregate!r}")
        ws, we = now - window_hours * 3600.0, now
        window = {"start": rfc3339(ws), "end": rfc3339(we)}
        charges = self._charges(now, window_hours)
        engine: dict[tuple[str, str], list[float]] = defaultdict(list)
        for smp in self._samples(now):
            if smp.run is not None:
                engine[(smp.run.pod.namespace, smp.run.name)].append(smp.engine_milli / 1000.0)
        rows: dict[str, Any] = {}
        for c in charges:
            pod = c.run.pod
            if agg:
                key = f"{pod.namespace}/{c.run.name}"
            else:
                key = "/".join(
                    (self.spec.cluster_name, pod.node, pod.namespace, c.run.name, pod.container)
                )
            parts = engine.get((pod.namespace, c.run.name), [])
            gpu_engine = math.fsum(parts) / len(parts) if parts else 0.0
            rows[key] = self._allocation_json(key, c, window, gpu_engine)
        if include_idle:
            rows["__idle__"] = self._idle_json(charges, window_hours, window)
        return {"code": 200, "status": "success", "data": [rows]}

    def _allocation_json(
        self, key: str, c: _Charge, window: Mapping[str, str], engine: float
    ) -> dict[str, Any]:
        """One OpenCost allocation object; ``engine`` is the pod's mean GR-engine ratio now."""
        r = opencost_round
        pod = c.run.pod
        node = self._node_by_name[pod.node]
        labels, ns_labels = self.visible_labels(pod)
        m = c.multiplier
        cpu = pod.cpu_cores * m
        ram = pod.ram_bytes * m
        cpu_use = cpu * (0.2 + 0.7 * _hash_unit(pod.name, "cpu"))
        ram_use = ram * (0.3 + 0.6 * _hash_unit(pod.name, "ram"))
        minutes = c.hours * 60.0
        gpus = pod.gpu_count
        gpu_usage = gpus * engine
        pv_bytes = pod.pv_gib * GIB * m
        cpu_eff = cpu_use / cpu if cpu else 0.0
        ram_eff = ram_use / ram if ram else 0.0
        total_eff = (
            (cpu_use / cpu * c.cpu + ram_use / ram * c.ram) / (c.cpu + c.ram)
            if c.cpu + c.ram > 0 and cpu and ram
            else 0.0
        )
        properties: dict[str, Any] = {
            "cluster": self.spec.cluster_name,
            "node": pod.node,
            "container": pod.container,
            "controller": pod.controller,
            "controllerKind": pod.controller_kind,
            "namespace": pod.namespace,
            "pod": c.run.name,
            "providerID": node.provider_id,
            "labels": dict(sorted(labels.items())),
            "namespaceLabels": dict(sorted(ns_labels.items())),
        }
        if pod.lb_service:
            properties["services"] = [pod.lb_service]
        gpu_allocation: dict[str, Any] | None = None
        if pod.holds:
            first = pod.holds[0]
            gpu = next(g for g in node.gpus if g.uuid == first.uuid)
            gpu_allocation = {
                "gpuDevice": f"nvidia{gpu.index}",
                "gpuModel": first.model,
                "gpuUUID": first.uuid,
                "isGPUShared": gpu.sharing == "timeslice",
                "gpuUsageAverage": r(gpu_usage),
                "gpuRequestAverage": r(gpus),
            }
        pvs: dict[str, Any] | None = None
        if pod.pv_name:
            pvs = {
                f"cluster={self.spec.cluster_name}:name={pod.pv_name}": {
                    "byteHours": pv_bytes * c.hours,
                    "cost": pod.pv_gib * c.hours * self.spec.pv_usd_per_gib_hour * m,
                }
            }
        lbs: dict[str, Any] | None = None
        if pod.lb_service:
            lbs = {
                f"{self.spec.cluster_name}/{pod.namespace}/{pod.lb_service}": {
                    "service": f"{pod.namespace}/{pod.lb_service}",
                    "cost": pod.lb_usd_per_hour * c.hours * m,
                    "private": False,
                    "ip": f"34.{int(_hash_unit(pod.name, 'ip') * 250)}.10.7",
                    "hours": c.hours,
                }
            }
        net_bytes = pod.network_usd_per_hour * m * c.hours / 0.02 * GIB
        return {
            "name": key,
            "properties": properties,
            "window": dict(window),
            "start": rfc3339(c.start),
            "end": rfc3339(c.end),
            "minutes": r(minutes),
            "cpuCores": r(cpu),
            "cpuCoreRequestAverage": r(cpu),
            "cpuCoreLimitAverage": r(cpu),
            "cpuCoreUsageAverage": r(cpu_use),
            "cpuCoreHours": r(cpu * c.hours),
            "cpuCost": c.cpu,
            "cpuCostAdjustment": c.cpu_adj,
            "cpuCostIdle": 0.0,
            "cpuEfficiency": r(cpu_eff),
            "gpuCount": r(gpus),
            "gpuHours": r(gpus * c.hours),
            "gpuCost": c.gpu,
            "gpuCostAdjustment": 0.0,
            "gpuCostIdle": 0.0,
            "gpuEfficiency": r(engine),
            "networkTransferBytes": r(net_bytes),
            "networkReceiveBytes": r(net_bytes * 3.0),
            "networkCost": c.network,
            "networkCrossZoneCost": c.network_zone,
            "networkCrossRegionCost": c.network_region,
            "networkInternetCost": c.network_internet,
            "networkCostAdjustment": 0.0,
            "loadBalancerCost": c.lb,
            "loadBalancerCostAdjustment": 0.0,
            "pvBytes": r(pv_bytes),
            "pvByteHours": r(pv_bytes * c.hours),
            "pvCost": c.pv,
            "pvs": pvs,
            "pvCostAdjustment": 0.0,
            "ramBytes": r(ram),
            "ramByteRequestAverage": r(ram),
            "ramByteLimitAverage": r(ram),
            "ramByteUsageAverage": r(ram_use),
            "ramByteHours": r(ram * c.hours),
            "ramCost": c.ram,
            "ramCostAdjustment": c.ram_adj,
            "ramCostIdle": 0.0,
            "ramEfficiency": r(ram_eff),
            "externalCost": c.external,
            "sharedCost": c.shared,
            "totalCost": c.total,
            "totalEfficiency": r(total_eff),
            "rawAllocationOnly": {
                "cpuCoreUsageMax": cpu_use * 1.4,
                "ramByteUsageMax": ram_use * 1.2,
                "gpuUsageMax": min(gpus, gpu_usage * 1.3) if pod.holds else None,
            },
            "proportionalAssetResourceCosts": None,
            "lbAllocations": lbs,
            "sharedCostBreakdown": None,
            "gpuAllocation": gpu_allocation,
        }

    def _idle_json(
        self, charges: Sequence[_Charge], window_hours: float, window: Mapping[str, str]
    ) -> dict[str, Any]:
        r = opencost_round
        idle = self._idle_costs(charges, window_hours)
        spec = self.spec
        cores = idle["cpu_core_hours"] / window_hours
        ram = idle["ram_byte_hours"] / window_hours
        gpus = idle["gpu_hours"] / window_hours
        zero = 0.0
        return {
            "name": "__idle__",
            "properties": {"cluster": spec.cluster_name},
            "window": dict(window),
            "start": window["start"],
            "end": window["end"],
            "minutes": r(window_hours * 60.0),
            "cpuCores": r(cores),
            "cpuCoreRequestAverage": zero,
            "cpuCoreLimitAverage": zero,
            "cpuCoreUsageAverage": zero,
            "cpuCoreHours": r(cores * window_hours),
            "cpuCost": r(idle["cpu"]),
            "cpuCostAdjustment": zero,
            "cpuCostIdle": zero,
            "cpuEfficiency": zero,
            "gpuCount": r(gpus),
            "gpuHours": r(gpus * window_hours),
            "gpuCost": r(idle["gpu"]),
            "gpuCostAdjustment": zero,
            "gpuCostIdle": zero,
            "gpuEfficiency": zero,
            "networkTransferBytes": zero,
            "networkReceiveBytes": zero,
            "networkCost": zero,
            "networkCrossZoneCost": zero,
            "networkCrossRegionCost": zero,
            "networkInternetCost": zero,
            "networkCostAdjustment": zero,
            "loadBalancerCost": zero,
            "loadBalancerCostAdjustment": zero,
            "pvBytes": zero,
            "pvByteHours": zero,
            "pvCost": zero,
            "pvs": None,
            "pvCostAdjustment": zero,
            "ramBytes": r(ram),
            "ramByteRequestAverage": zero,
            "ramByteLimitAverage": zero,
            "ramByteUsageAverage": zero,
            "ramByteHours": r(ram * window_hours),
            "ramCost": r(idle["ram"]),
            "ramCostAdjustment": zero,
            "ramCostIdle": zero,
            "ramEfficiency": zero,
            "externalCost": zero,
            "sharedCost": zero,
            "totalCost": r(idle["cpu"] + idle["ram"] + idle["gpu"]),
            "totalEfficiency": zero,
            "proportionalAssetResourceCosts": None,
            "lbAllocations": None,
            "sharedCostBreakdown": None,
            "gpuAllocation": None,
        }

    # --- ground truth ---------------------------------------------------------------------

    def ground_truth(
        self,
        now: float,
        window_hours: float = 1.0,
        *,
        metric: str = "auto",
        idle_threshold: float = 0.05,
    ) -> GroundTruth:
        """The answer key at ``now`` for an OpenCost window of ``window_hours`` and DCGM
        ``metric`` (see :class:`GroundTruth` and the rules in the exporter's cost model).

        Computed from the pod list: each pod run's OpenCost cost (as OpenCost rounds it) over
        the window, divided by ``window_hours``; the usage basis re-splits each GPU unit's rate
        by the DCGM samples at ``now``.
        """
        if metric not in UTILIZATION_METRICS:
            raise ValueError(f"metric must be one of {UTILIZATION_METRICS}, got {metric!r}")
        wh = window_hours
        charges = self._charges(now, wh)
        parts: dict[tuple[str, str, str], list[float]] = defaultdict(list)

        def add(basis: str, tenant: str, resource: str, value: float) -> None:
            parts[(basis, tenant, resource)].append(value)

        for c in charges:
            for resource, dollars in c.resource_costs().items():
                add("allocation", c.tenant, resource, dollars / wh)
                if resource != "gpu":
                    add("usage", c.tenant, resource, dollars / wh)
        idle = self._idle_costs(charges, wh)
        r = opencost_round
        for resource in RESOURCES:
            value = {"cpu": r(idle["cpu"]), "ram": r(idle["ram"]), "gpu": r(idle["gpu"])}.get(
                resource, 0.0
            )
            add("allocation", IDLE_TENANT, resource, value / wh)
            add("usage", IDLE_TENANT, resource, value / wh)

        # --- usage basis, GPU: the physical-device rule ----------------------------------
        # A hold costs its device's price × its share of the device's time; what a holder
        # left of its request is its unused cost; __idle__ is whatever the tenants do not pay.
        gpu_rate = {c.run.name + "\x00" + c.run.pod.namespace: c.gpu / wh for c in charges}
        sampled: dict[UnitKey, list[tuple[_Sample, float]]] = defaultdict(list)
        for s in self._samples(now):
            u_read = s.utilization(metric)
            if s.run is not None and u_read is not None:
                sampled[(s.gpu.uuid, s.mig.gi_id if s.mig else "")].append((s, u_read))
        measured: set[str] = set()
        allocated: dict[tuple[str, str], list[float]] = defaultdict(list)
        used: dict[tuple[str, str], list[float]] = defaultdict(list)
        unused: dict[tuple[str, str], list[float]] = defaultdict(list)
        idle_n: dict[tuple[str, str], list[float]] = defaultdict(list)
        idle_cost: dict[tuple[str, str], list[float]] = defaultdict(list)
        idle_holds: list[IdleHold] = []
        for unit, unit_samples in sampled.items():
            first = unit_samples[0][0]
            model_ = first.gpu.model
            # The unit's part of its physical GPU: a MIG instance's slices, else all of it.
            part = first.mig.slices / model_.mig_slices if first.mig else 1.0
            holds = []  # sample, utilization read, request, billed USD/h, tenant, price
            for s, u_read in unit_samples:
                assert s.run is not None
                pod = s.run.pod
                run_key = s.run.name + "\x00" + pod.namespace
                measured.add(run_key)
                hold = next(h for h in pod.holds if h.unit == unit)
                billed = gpu_rate.get(run_key, 0.0) * hold.fraction / pod.gpu_count
                tenant = self.tenant_of(pod)
                price = model_.usd_per_hour * self._scale.get(tenant, 1.0)
                holds.append((s, u_read, hold.fraction, billed, tenant, price))
            price = math.fsum(h[5] for h in holds) / len(holds)
            reads = [h[1] for h in holds]
            if len(holds) == 1:
                fractions = reads  # of the unit's time
            elif max(reads) == min(reads):
                # The device's figure on every pod: split by request (the exporter's rule).
                req_total = math.fsum(h[2] for h in holds)
                fractions = [reads[0] * h[2] / req_total for h in holds]
            elif math.fsum(reads) > 1.0:
                fractions = [u / math.fsum(reads) for u in reads]
            else:
                fractions = reads
            device_share = [part * f for f in fractions]  # of the physical GPU's time
            rest = part * (1.0 - math.fsum(fractions))
            short = [max(0.0, h[2] - m) for h, m in zip(holds, device_share, strict=True)]
            unused_total = price * min(math.fsum(short), max(0.0, rest))
            for h, m, d in zip(holds, device_share, short, strict=True):
                s, u_raw, req, billed, tenant, _ = h
                model = model_.name
                add("usage", tenant, "gpu", price * m)
                unused[(tenant, model)].append(
                    unused_total * d / math.fsum(short) if math.fsum(short) > 0 else 0.0
                )
                allocated[(tenant, model)].append(req)
                used[(tenant, model)].append(m)
                if u_raw < idle_threshold:
                    assert s.run is not None
                    idle_n[(tenant, model)].append(req)
                    idle_cost[(tenant, model)].append(billed)
                    idle_holds.append(
                        IdleHold(
                            tenant=tenant,
                            gpu_model=model,
                            node=s.gpu.node,
                            uuid=s.gpu.uuid,
                            mig_instance=s.mig.gi_id if s.mig else None,
                            mig_profile=s.mig.profile if s.mig else None,
                            namespace=s.run.pod.namespace,
                            pod=s.run.name,
                            held=req,
                            utilization=u_raw,
                            cost_usd_per_hour=billed,
                        )
                    )
        unmeasured: list[tuple[str, str]] = []
        for c in charges:
            run_key = c.run.name + "\x00" + c.run.pod.namespace
            if c.gpu and run_key not in measured:
                add("usage", c.tenant, "gpu", c.gpu / wh)
                unmeasured.append((c.run.pod.namespace, c.run.name))
        # __idle__ (usage, GPU): the cluster's GPU dollars no tenant pays under this basis.
        paid = math.fsum(
            v
            for (b, t, r_), vs in parts.items()
            if b == "usage" and r_ == "gpu" and t != IDLE_TENANT
            for v in vs
        )
        all_gpu = math.fsum(
            v for (b, _, r_), vs in parts.items() if b == "allocation" and r_ == "gpu" for v in vs
        )
        parts[("usage", IDLE_TENANT, "gpu")] = [all_gpu - paid]

        cost = {k: math.fsum(v) for k, v in parts.items()}
        cluster = {
            res: math.fsum(v for (b, _, r_), v in cost.items() if b == "allocation" and r_ == res)
            for res in RESOURCES
        }
        tenants = sorted({t for (_, t, _) in cost} | {IDLE_TENANT, UNALLOCATED_TENANT})
        return GroundTruth(
            now=now,
            window_hours=wh,
            metric=metric,
            idle_threshold=idle_threshold,
            cost=cost,
            cluster=cluster,
            gpus_allocated=_fsum_map(allocated),
            gpus_used=_fsum_map(used),
            gpu_unused_cost=_fsum_map(unused),
            idle_gpus=_fsum_map(idle_n),
            idle_gpu_cost=_fsum_map(idle_cost),
            idle_holds=tuple(idle_holds),
            unmeasured_pods=tuple(sorted(unmeasured)),
            tenants=tuple(tenants),
        )

    # --- description ----------------------------------------------------------------------

    def summary(self, now: float, window_hours: float = 1.0) -> dict[str, Any]:
        """A human-readable shape of the cluster at ``now`` (for docs, logs and the report)."""
        gt = self.ground_truth(now, window_hours)
        gpus: dict[str, int] = defaultdict(int)
        for n in self.nodes:
            for g in n.gpus:
                gpus[f"{g.model.name} ({g.sharing})"] += 1
        return {
            "nodes": len(self.nodes),
            "gpus": dict(sorted(gpus.items())),
            "mig_instances": sum(len(g.mig) for n in self.nodes for g in n.gpus),
            "pods": len(self.pods),
            "gpu_pods": sum(1 for p in self.pods if p.holds),
            "tenants": list(gt.tenants),
            "cluster_usd_per_hour": {k: round(v, 4) for k, v in gt.cluster.items()},
            "total_usd_per_hour": round(math.fsum(gt.cluster.values()), 4),
        }


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


def _zipf_cum_weights(n: int) -> list[float]:
    # A few big tenants and a long tail, as in real clusters.
    out: list[float] = []
    acc = 0.0
    for j in range(n):
        acc += 1.0 / (1 + j) ** 0.8
        out.append(acc)
    return out


def _fsum_map(parts: Mapping[tuple[str, str], Iterable[float]]) -> dict[tuple[str, str], float]:
    return {k: math.fsum(v) for k, v in sorted(parts.items())}


def _mig_instances(layout: Sequence[str]) -> tuple[MigInstance, ...]:
    next_id: dict[str, int] = {}
    out: list[MigInstance] = []
    for profile in layout:
        slices, first = MIG_PROFILES[profile]
        gi = next_id.get(profile, first)
        next_id[profile] = gi + 1
        out.append(MigInstance(str(gi), profile, slices))
    return tuple(out)


def _adjustment(namespace: str) -> float:
    """OpenCost cost adjustment (reconciliation) for a namespace: −3 % for about one in ten."""
    if namespace == "data-prod" or _hash_unit(namespace, "adjust") < 0.1:
        return -0.03
    return 0.0


def _slot_kind(holds: tuple[GpuHold, ...]) -> str:
    if holds[0].gi_id:
        return "mig"
    if holds[0].fraction < 1.0:
        return "timeslice"
    return "none"


_GPU_APPS_SERVING = (
    "vllm-llama3-70b",
    "vllm-mistral-7b",
    "triton-ranker",
    "embedder",
    "whisper-asr",
)
_GPU_APPS_SMALL = ("embedder", "reranker", "whisper-asr", "ocr", "sd-turbo")


def _gpu_app(holds: tuple[GpuHold, ...], role: str, rng: random.Random) -> tuple[str, str]:
    """(app name, controller kind) for a GPU pod holding ``holds``."""
    if role == "batch":
        return "nightly-eval", "job"
    kind = _slot_kind(holds)
    if kind != "none":
        return rng.choice(_GPU_APPS_SMALL), "deployment"
    n = len(holds)
    if n >= 8:
        return rng.choice(("train-llm", "pretrain", "train-vision")), "statefulset"
    if n >= 2:
        return rng.choice(("finetune-lora", "train-ranker", "vllm-llama3-70b")), (
            "deployment" if rng.random() < 0.4 else "statefulset"
        )
    if rng.random() < 0.2:
        return "jupyter", "statefulset"
    return rng.choice(_GPU_APPS_SERVING), "deployment"


# ----------------------------------------------------------------------------------------------
# PromQL vector selectors (just enough for the fake Prometheus)
# ----------------------------------------------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OP = re.compile(r"=~|!~|!=|=")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
Matcher = tuple[str, str, str]


def parse_selector(promql: str) -> tuple[str | None, list[Matcher]]:
    """Parse ``name{l="v",...}`` / ``{__name__="name",...}`` into (name, matchers).

    Returns name ``None`` when no equality on ``__name__`` pins the metric (then a
    ``__name__=~"a|b"`` matcher, if any, is among the matchers). Raises
    ``ValueError`` (with a Prometheus-like message) for anything that is not a plain selector.
    """
    text = promql.strip()
    if not text:
        raise ValueError("1:1: parse error: no expression found in input")
    pos = 0
    name: str | None = None
    m = _NAME.match(text)
    if m:
        name = m.group(0)
        pos = m.end()
    matchers: list[Matcher] = []
    rest = text[pos:].lstrip()
    if rest.startswith("{"):
        body_pos = len(text) - len(rest) + 1
        while True:
            while body_pos < len(text) and text[body_pos] in " \t\n":
                body_pos += 1
            if body_pos < len(text) and text[body_pos] == "}":
                body_pos += 1
                break
            lm = _LABEL.match(text, body_pos)
            if not lm:
                raise ValueError(
                    f"1:{body_pos + 1}: parse error: unexpected character in label matching"
                )
            body_pos = lm.end()
            while body_pos < len(text) and text[body_pos] == " ":
                body_pos += 1
            om = _OP.match(text, body_pos)
            if not om:
                raise ValueError(f"1:{body_pos + 1}: parse error: expected label matching operator")
            body_pos = om.end()
            while body_pos < len(text) and text[body_pos] == " ":
                body_pos += 1
            sm = _STRING.match(text, body_pos)
            if not sm:
                raise ValueError(f"1:{body_pos + 1}: parse error: expected string label value")
            value = _unescape(sm.group(1))
            matchers.append((lm.group(0), om.group(0), value))
            body_pos = sm.end()
            while body_pos < len(text) and text[body_pos] in " \t\n":
                body_pos += 1
            if body_pos < len(text) and text[body_pos] == ",":
                body_pos += 1
                continue
            if body_pos < len(text) and text[body_pos] == "}":
                body_pos += 1
                break
            raise ValueError(f"1:{body_pos + 1}: parse error: unexpected end of label matchers")
        rest = text[body_pos:]
    if rest.strip():
        raise ValueError(
            f"1:{len(text) - len(rest.lstrip()) + 1}: parse error: the fake Prometheus "
            "understands only vector selectors"
        )
    for label, op, value in matchers:
        if label == "__name__" and op == "=":
            if name is not None and name != value:
                return None, matchers
            name = value
    if name is None and not any(op in ("=", "=~") and v for _, op, v in matchers):
        raise ValueError(
            "1:1: parse error: vector selector must contain at least one non-empty matcher"
        )
    # An equality on __name__ is the name; any other __name__ matcher (``=~``, ``!=``) stays
    # a matcher, applied to every family.
    return name, [x for x in matchers if not (x[0] == "__name__" and x[1] == "=")]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def _matches(actual: str, op: str, wanted: str) -> bool:
    if op == "=":
        return actual == wanted
    if op == "!=":
        return actual != wanted
    matched = re.fullmatch(wanted, actual) is not None
    return matched if op == "=~" else not matched
