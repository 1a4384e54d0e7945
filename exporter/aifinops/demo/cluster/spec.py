"""The shape of a simulated cluster: GPU models, node pools and :class:`ClusterSpec`, plus the
vocabulary every part of the simulator shares (sentinel tenants, resources, label keys).

A spec is data only; :class:`~aifinops.demo.cluster.layout.Layout` builds nodes, pods and
tenancy from it. Prices are the sim's own list prices (USD per GPU-hour, core-hour, GiB-hour).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
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
    # Node names ``<prefix>-<ip with dashes>`` (on-premises hosts) instead of EC2's
    # ``ip-<ip>.ec2.internal``; the draws are the same.
    node_prefix: str = ""
    # The dcgm-exporter generation of its nodes; "" takes turns over ``dcgm_generations``.
    dcgm_generation: str = ""


@dataclass(frozen=True, slots=True)
class CounterReset:
    """A driver reload on one GPU, which starts its energy counter again from 0: the
    ``gpu``-th GPU of pool ``pool`` (node by node, in index order) at ``at`` (unix seconds, on
    an epoch boundary), and every ``every_s`` seconds after it when not 0 (a GPU that health
    checks reset, for a demo that runs in real time)."""

    pool: str
    gpu: int
    at: float
    every_s: int = 0


@dataclass(frozen=True, slots=True)
class EnergySpec:
    """The pools whose power and energy counters are simulated exactly (:mod:`.power`): their
    use and power are constant over each epoch of ``epoch_s`` seconds; idle power is
    ``idle_power_ratio`` of the model's maximum; drivers reload every ``reload_period_s`` (a
    per-GPU phase), plus ``resets``. A busy pod on a time-sliced GPU uses
    ``timeslice_busy_milli`` thousandths of the device (above 1/replicas: beyond its request)."""

    pools: tuple[str, ...]
    epoch_s: int = 300
    idle_power_ratio: float = 0.1
    reload_period_s: int = 7 * 86400
    resets: tuple[CounterReset, ...] = ()
    timeslice_busy_milli: tuple[int, int] = (150, 450)

    def __post_init__(self) -> None:
        if self.epoch_s <= 0 or 3600 % self.epoch_s:
            raise ValueError("epoch_s must divide an hour")
        if self.reload_period_s % self.epoch_s:
            raise ValueError("reload_period_s must be a multiple of epoch_s")
        for r in self.resets:
            if r.at % self.epoch_s or r.every_s % self.epoch_s or r.every_s < 0:
                raise ValueError(f"reset {r} is not on epoch boundaries")


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


OWNED_NODE_PREFIX = "gpu-onprem"


def owned_pools() -> tuple[NodePoolSpec, ...]:
    """The owned (on-premises) pools: H100s held whole, A100s cut into MIG instances, L4s
    time-sliced; nodes named ``gpu-onprem-…``. Each has its own random stream, so adding
    them moves nothing else in a cluster."""
    # dcgm-exporter 4.8: a 4.9 page has no energy counter (see :mod:`.power`).
    p, g = OWNED_NODE_PREFIX, "4.8"
    return (
        NodePoolSpec(
            "onprem-h100", 1, H100, 4, "none", "dgx-h100", 112.0, 2048.0, "dc1", True, p, g
        ),
        NodePoolSpec(
            "onprem-a100-mig", 1, A100, 2, "mig", "dgx-a100", 128.0, 1024.0, "dc1", True, p, g
        ),
        NodePoolSpec(
            "onprem-l4-shared", 1, L4, 2, "timeslice", "r760xa", 64.0, 512.0, "dc1", True, p, g
        ),
    )


def owned_energy(resets: tuple[CounterReset, ...] = (), **fields: Any) -> EnergySpec:
    """The energy simulation of :func:`owned_pools`."""
    return EnergySpec(tuple(pool.name for pool in owned_pools()), resets=resets, **fields)


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
    # Pools whose power and energy counters are exact (the owned pools; :mod:`.power`).
    energy: EnergySpec | None = None
    # A HAMi-shared node and per-process (time-sliced, MIG) nodes with tenants of their own
    # (demo/shared_pools.py); their HAMi pages are served and their answer is demo/shared_key.
    shared_gpus: bool = False

    @classmethod
    def demo(cls, **overrides: Any) -> ClusterSpec:
        """The demo cluster: 2×8 H100, 2×8 A100 (one node MIG-partitioned), 2×4 L4 (one node
        time-sliced), 2 CPU nodes, 10 tenants named by every tenancy rule kind; and the owned
        pools (:func:`owned_pools`) with exact energy counters, one GPU of which is reset
        every 6 hours."""
        spec = cls(
            pools=(
                _h100_pool(2),
                _a100_pool(1),
                _a100_pool(1, "mig", name="a100-mig"),
                _l4_pool(1),
                _l4_pool(1, "timeslice", name="l4-shared"),
                _cpu_pool(2),
                _t4_pool(1),
                *owned_pools(),
            ),
            serving_pods=("vllm-llama-0", "vllm-llama-1"),
            # Time-sliced pods within their replica, as on the cloud pools (the demo's answer
            # key and its tests assume use ≤ request there); ClusterSpec.owned() goes beyond.
            energy=owned_energy(
                (CounterReset("onprem-h100", 0, 0.0, every_s=6 * 3600),),
                timeslice_busy_milli=(150, 300),
            ),
        )
        return replace(spec, **overrides)

    @classmethod
    def owned(cls, **overrides: Any) -> ClusterSpec:
        """Only the owned pools (and a CPU node), every GPU with an exact energy counter
        (their nodes run dcgm-exporter 4.8). Seed 6 gives a partly
        requested time-sliced GPU, an unheld MIG instance and whole GPU, a pod on two GPUs,
        idle and busy holds and a pod no tenancy rule matches."""
        spec = cls(
            seed=6,
            cluster_name="onprem",
            pools=(_cpu_pool(1), *owned_pools()),
            energy=owned_energy(),
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
