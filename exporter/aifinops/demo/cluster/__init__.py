"""A deterministic simulated Kubernetes GPU cluster that speaks the upstreams' real formats.

One :class:`SimCluster` serves ``aifinops-exporter --demo``, the tests and the benchmark. It
renders what the exporter reads — dcgm-exporter ``/metrics`` text, Prometheus instant-query
JSON and OpenCost ``/allocation/compute`` JSON — and reports its own :class:`GroundTruth`,
computed from its pod list with its own small implementation of the money rules. Nothing in
this package imports ``aifinops.model`` or ``aifinops.sources``: the answer key must not share
code with the code it checks.

Everything is a pure function of the :class:`ClusterSpec` (layout from ``random.Random(seed)``)
and of ``now`` (unix seconds) passed explicitly; no clock is read. Units: money in US dollars
(rates in USD per hour), time in hours unless a name says seconds, utilization as a 0–1 ratio,
memory in bytes unless a name says GiB or MiB.

Where things are (each module imports only those above it):

* :mod:`.spec` — GPU models, node pools, :class:`ClusterSpec`, the shared vocabulary;
* :mod:`.records` — the built nodes, GPUs, pods, holds and runs; :mod:`.hashing` — keyed noise;
  :mod:`.wire` — OpenCost's rounding and dcgm-exporter's family table, which the shared-GPU
  pools (``demo/hami.py``, ``demo/perprocess.py``) share with the renderers;
* :mod:`.tenancy` — namespaces and the rules that name each pod's tenant;
* :mod:`.power` — exact power and DCGM energy counters of the pools ``spec.energy`` names
  (the owned pools: :func:`~.spec.owned_pools`), counter resets included;
* :mod:`.layout` — :class:`~.layout.Layout`: building nodes, pods and tenancy; runs over time;
* :mod:`.activity` — the DCGM samples (utilization) at ``now``;
* one renderer per upstream format: :mod:`.dcgm` (exposition pages), :mod:`.prometheus`
  (stored series, instant-query JSON, the selector parser), :mod:`.opencost` (allocation JSON,
  window grammar);
* :mod:`.truth` — the answer key (:class:`GroundTruth`); :mod:`.energy_truth` — the energy,
  energy cost and carbon answer key of the owned pools, and the owned GPUs' price;
* :mod:`.sim` — :class:`SimCluster`, the layout with one method per upstream answer.

Simplifications, stated so nobody mistakes them for upstream behaviour, are in the docstrings
of :mod:`.dcgm` (generations, MIG, T4), :mod:`.opencost` (one container per pod, rounding)
and here: a time-sliced GPU has ``timeslice_replicas`` replicas; on a
``timeslice_partly_requested`` share of them only half the replicas are requested (the rest is
OpenCost's ``__idle__``). It reports each pod's own share by default
(``timeslice_util="per_pod"``, as vGPU/HAMi-style exporters do); ``"device"`` repeats the
device figure for every pod, as stock dcgm-exporter does, which the exporter splits by request.
"""

from aifinops.demo.cluster.dcgm import (
    DCGM_4_9_FAMILIES,
    DCGM_4_9_NAMES,
    DCGM_FAMILY_NAMES,
)
from aifinops.demo.cluster.opencost import (
    opencost_duration_hours,
    opencost_window_bounds,
    opencost_window_hours,
    rfc3339,
)
from aifinops.demo.cluster.prometheus import Matcher, parse_selector
from aifinops.demo.cluster.records import (
    GpuHold,
    MigInstance,
    PodRun,
    Schedule,
    SimGpu,
    SimNode,
    SimPod,
    UnitKey,
)
from aifinops.demo.cluster.sim import SimCluster
from aifinops.demo.cluster.spec import (
    A100,
    BASES,
    DEMO_TENANTS,
    FAULT_TOLERANT_LABEL,
    GIB,
    GPU_MODELS,
    H100,
    IDLE_TENANT,
    L4,
    MIB,
    MIG_LAYOUTS,
    MIG_PROFILES,
    PLATFORM_TENANT,
    RESOURCES,
    RULE_KINDS,
    SERVING_NAMESPACE,
    SYSTEM_NAMESPACES,
    T4,
    TEAM_LABEL,
    TENANT_LABEL,
    TENANT_PATTERN,
    UNALLOCATED_TENANT,
    UNMATCHED_NAMESPACES,
    UTILIZATION_METRICS,
    ClusterSpec,
    GpuModel,
    NodePoolSpec,
    RuleKind,
    Sharing,
    UtilMetric,
)
from aifinops.demo.cluster.tenancy import sanitize_label_key
from aifinops.demo.cluster.truth import GroundTruth, IdleHold
from aifinops.demo.cluster.wire import DCGM_FAMILIES, opencost_round

__all__ = [
    "A100",
    "BASES",
    "DCGM_4_9_FAMILIES",
    "DCGM_4_9_NAMES",
    "DCGM_FAMILIES",
    "DCGM_FAMILY_NAMES",
    "DEMO_TENANTS",
    "FAULT_TOLERANT_LABEL",
    "GIB",
    "GPU_MODELS",
    "H100",
    "IDLE_TENANT",
    "L4",
    "MIB",
    "MIG_LAYOUTS",
    "MIG_PROFILES",
    "PLATFORM_TENANT",
    "RESOURCES",
    "RULE_KINDS",
    "SERVING_NAMESPACE",
    "SYSTEM_NAMESPACES",
    "T4",
    "TEAM_LABEL",
    "TENANT_LABEL",
    "TENANT_PATTERN",
    "UNALLOCATED_TENANT",
    "UNMATCHED_NAMESPACES",
    "UTILIZATION_METRICS",
    "ClusterSpec",
    "GpuHold",
    "GpuModel",
    "GroundTruth",
    "IdleHold",
    "Matcher",
    "MigInstance",
    "NodePoolSpec",
    "PodRun",
    "RuleKind",
    "Schedule",
    "Sharing",
    "SimCluster",
    "SimGpu",
    "SimNode",
    "SimPod",
    "UnitKey",
    "UtilMetric",
    "opencost_duration_hours",
    "opencost_round",
    "opencost_window_bounds",
    "opencost_window_hours",
    "parse_selector",
    "rfc3339",
    "sanitize_label_key",
]
