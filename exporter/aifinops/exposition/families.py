"""Map a Report and the refresh status to catalog families (samples sorted, deterministic)."""

from __future__ import annotations

from dataclasses import dataclass

from aifinops.exposition import catalog as c
from aifinops.exposition.render import Family, Sample
from aifinops.model.report import Report
from aifinops.model.tokens import TokenReport
from aifinops.sources.base import REASONS
from aifinops.status import RefreshStatus


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    rules_version: str
    gpu_price_catalog_version: str


def cost_families(report: Report | None) -> list[Family]:
    if report is None:
        return []
    rate: list[Sample] = []
    total: list[Sample] = []
    for basis in c.BASES:
        for (tenant, resource), value in sorted(report.tenant_rates(basis).items()):
            rate.append(((tenant, resource, basis), value))
    for (tenant, resource, basis), value in sorted(report.accrued.items()):
        total.append(((tenant, resource, basis), value))
    cluster = [((r,), v) for r, v in sorted(report.cost.cluster.items())]

    held: list[Sample] = []
    used: list[Sample] = []
    unused: list[Sample] = []
    idle_n: list[Sample] = []
    idle_cost: list[Sample] = []
    for (tenant, model), s in sorted(report.gpu_stats.items()):
        key = (tenant, model)
        held.append((key, s.held))
        used.append((key, s.used))
        unused.append((key, s.unused_rate))
        idle_n.append((key, s.idle_gpus))
        idle_cost.append((key, s.idle_rate))
    eff = [((t,), v) for t, v in sorted(report.efficiency.items())]
    prices = [((m, src), v) for (m, src), v in sorted(report.cost.gpu_prices.items())]
    folded = [((), float(report.cost.folded_tenants))]
    return [
        Family(c.TENANT_COST_RATE, rate),
        Family(c.TENANT_COST_TOTAL, total),
        Family(c.CLUSTER_COST_RATE, cluster),
        Family(c.TENANT_GPUS, held),
        Family(c.TENANT_GPUS_USED, used),
        Family(c.TENANT_GPU_EFFICIENCY, eff),
        Family(c.TENANT_GPU_UNUSED_COST, unused),
        Family(c.IDLE_GPUS, idle_n),
        Family(c.IDLE_GPU_COST, idle_cost),
        Family(c.GPU_PRICE, prices),
        Family(c.FOLDED_TENANTS, folded),
        *token_families(report.tokens),
    ]


def token_families(tokens: TokenReport | None) -> list[Family]:
    """Token series; none when token analytics is off."""
    if tokens is None:
        return []
    info = [((tokens.catalog_version,), 1.0)] if tokens.catalog_version else []
    return [
        Family(c.TOKENS, sorted(((k, v) for k, v in tokens.tokens.items()))),
        Family(c.TOKEN_COST, sorted(((k, v) for k, v in tokens.cost.items()))),
        Family(c.MODEL_TOKEN_PRICE, sorted(((k, v) for k, v in tokens.prices.items()))),
        Family(
            c.MODEL_API_EQUIVALENT_PRICE,
            sorted(((k, v) for k, v in tokens.api_equivalent.items())),
        ),
        Family(c.UNPRICED_TOKENS, sorted(((k, v) for k, v in tokens.unpriced.items()))),
        Family(c.LLM_PRICE_CATALOG_INFO, info),
    ]


def self_families(status: RefreshStatus | None, build: BuildInfo) -> list[Family]:
    families = [
        Family(
            c.BUILD_INFO,
            [((build.version, build.rules_version, build.gpu_price_catalog_version), 1.0)],
        )
    ]
    if status is None:
        return families
    up: list[Sample] = []
    age: list[Sample] = []
    stale: list[Sample] = []
    duration: list[Sample] = []
    errors: list[Sample] = []
    for s in sorted(status.sources, key=lambda s: s.name):
        up.append(((s.name,), 1.0 if s.up else 0.0))
        if s.age_seconds is not None:
            age.append(((s.name,), s.age_seconds))
        stale.append(((s.name,), 1.0 if s.stale else 0.0))
        duration.append(((s.name,), s.duration_seconds))
        # Every reason is always present (0 until it happens), so rate() works from the start.
        for reason in REASONS:
            errors.append(((s.name, reason), float(s.errors.get(reason, 0))))
    families += [
        Family(c.SOURCE_UP, up),
        Family(c.SOURCE_AGE, age),
        Family(c.SOURCE_STALE, stale),
        Family(c.SOURCE_ERRORS, errors),
        Family(c.SOURCE_DURATION, duration),
        Family(c.REFRESH_DURATION, [((), status.duration_seconds)]),
        Family(c.REFRESH_TIMESTAMP, [((), status.completed_at)]),
        Family(c.REFRESHES, [((), float(status.refreshes))]),
    ]
    return families
