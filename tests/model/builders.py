"""Small literal clusters for model tests."""

from __future__ import annotations

from aifinops.model.gpu_prices import GpuPrice, GpuPriceCatalog, GpuPricer, normalize_gpu_model
from aifinops.model.inputs import Allocation, GpuSample
from aifinops.model.report import ModelContext
from aifinops.model.tenancy import TenantResolver
from aifinops.settings import NamespacePattern, TenancySettings

H100 = "NVIDIA H100 80GB HBM3"
L4 = "NVIDIA L4"
A100 = "NVIDIA A100-SXM4-80GB"


def resolver() -> TenantResolver:
    return TenancySettings(
        pod_label_keys=("aifinops.io/tenant",),
        namespace_label_keys=("team",),
        namespaces={"ml-research": "research"},
        namespace_patterns=(NamespacePattern(regex=r"^team-(?P<tenant>[a-z]+)$"),),
    ).to_model()


def pricer(**prices: float) -> GpuPricer:
    catalog = GpuPriceCatalog(
        version="test",
        entries={
            normalize_gpu_model(H100): (H100, GpuPrice(on_demand=4.0, spot=2.0, source="t")),
            normalize_gpu_model(L4): (L4, GpuPrice(on_demand=0.5, spot=0.25, source="t")),
        },
    )
    return GpuPricer(catalog=catalog, overrides=prices)


def context(
    threshold: float = 0.05, window: float = 600.0, max_tenants: int | None = None
) -> ModelContext:
    return ModelContext(resolver(), pricer(), threshold, window, max_tenants)


def pod(
    ns: str,
    name: str,
    labels: dict[str, str] | None = None,
    ns_labels: dict[str, str] | None = None,
    **costs: float,
) -> Allocation:
    return Allocation(
        name=f"{ns}/{name}",
        namespace=ns,
        pod=name,
        node="n1",
        minutes=60.0,
        labels=labels or {},
        namespace_labels=ns_labels or {},
        **costs,
    )


def idle_row(**costs: float) -> Allocation:
    return Allocation(name="__idle__", namespace=None, pod=None, node=None, minutes=60.0, **costs)


def gpu(
    uuid: str,
    model: str,
    util: float,
    ns: str | None = None,
    pod: str | None = None,
    mig: str | None = None,
    mig_id: str | None = None,
) -> GpuSample:
    return GpuSample(
        uuid=uuid,
        gpu_index="0",
        model_name=model,
        node="n1",
        utilization=util,
        namespace=ns,
        pod=pod,
        mig_profile=mig,
        mig_instance=mig_id,
        # As the DCGM source reads it by default: MIG instances have only the profiling metric.
        metric="DCGM_FI_PROF_GR_ENGINE_ACTIVE" if mig else "DCGM_FI_DEV_GPU_UTIL",
    )


def small_cluster() -> tuple[list[Allocation], list[GpuSample]]:
    """alpha: whole H100 at 25 %; beta+gamma time-share one L4; research: a MIG 3g slice;
    one pod matches no rule; OpenCost's idle row holds spare GPU and CPU."""
    allocs = [
        pod(
            "team-x", "a", {"aifinops_io_tenant": "alpha"}, gpu_cost=4.0, cpu_cost=1.0, ram_cost=0.5
        ),
        pod("shared", "b1", ns_labels={"team": "beta"}, gpu_cost=0.4),
        pod("team-gamma", "b2", gpu_cost=0.4),
        pod(
            "ml-research",
            "c",
            gpu_cost=2.0,
            pv_cost=0.125,
            network_cost=0.0625,
            load_balancer_cost=0.0625,
        ),
        pod("default", "d", cpu_cost=0.25, shared_cost=0.5),
        idle_row(gpu_cost=8.0, cpu_cost=2.0),
    ]
    gpus = [
        gpu("GPU-h100", H100, 0.25, "team-x", "a"),
        gpu("GPU-l4", L4, 0.5, "shared", "b1"),
        gpu("GPU-l4", L4, 0.25, "team-gamma", "b2"),
        gpu("GPU-a100", A100, 0.5, "ml-research", "c", mig="3g.40gb", mig_id="1"),
        gpu("GPU-a100", A100, 0.0, mig="1g.10gb", mig_id="2"),  # slice with no pod
        gpu("GPU-free", H100, 0.0),  # no pod: its cost is in OpenCost's idle row
    ]
    return allocs, gpus
