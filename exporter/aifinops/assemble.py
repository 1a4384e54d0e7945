"""The composition root: the one module that turns the settings into runtime objects.

It builds the sources (a registry: configuration section → factory), the model context (each
settings section compiles itself with ``to_model()``; the GPU price catalog is read here),
the push store, the state store and the upstream routes. The web app and the reload path
call it; neither builds a source nor compiles configuration itself (docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aifinops.model.gpu_prices import GpuPriceCatalog, GpuPricer, normalize_gpu_model
from aifinops.model.report import ModelContext
from aifinops.model.tenancy import sanitize_label_key
from aifinops.offload import run_cpu, settle_heap
from aifinops.settings import ConfigError, Settings, UpstreamHttpSettings
from aifinops.sources.base import CpuRunner, Source
from aifinops.sources.dcgm import DcgmSource
from aifinops.sources.energy import EnergySource
from aifinops.sources.gpu_catalog import load_gpu_catalog
from aifinops.sources.hami import HamiSource
from aifinops.sources.latency import LatencySource
from aifinops.sources.llm_prices import LlmPriceSource
from aifinops.sources.opencost import LabelKeys, OpenCostMonthSource, OpenCostSource, month_timeout
from aifinops.sources.push import PushSource
from aifinops.sources.tokens import TokenSource

# What the web side holds without importing a source module: the upstream client's pieces.
from aifinops.sources.upstream import Route as Route
from aifinops.sources.upstream import Upstream, upstream_routes
from aifinops.sources.upstream import UpstreamTransport as UpstreamTransport
from aifinops.sources.upstream import build_client as build_client
from aifinops.statefile import StateStore
from aifinops.usage import UsageStore

Clock = Callable[[], float]
# A source with its fetch timeout and the age past which its data is dropped (seconds).
SourceSpec = tuple[Source[Any], float, float]

# What the process's runtime does after each refresh: with the GC settings of
# offload.apply_runtime_settings (the CLI applies them), freeze what the refresh left alive;
# without them, nothing. The refresh loop itself knows no garbage collector.
AFTER_REFRESH: Callable[[], None] = settle_heap

# The price list is never dropped for age: the last good copy beats no prices at all.
PRICES_NEVER_STALE = 10.0 * 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Wiring:
    """What a source factory gets besides the settings: the push store (``None`` when
    ``tokens.push`` is off), the clock that dates windowed queries, and the CPU worker that
    parses what a source fetched (sources do not import it: ``sources.base.CpuRunner``)."""

    store: UsageStore | None = None
    clock: Clock = time.time
    run: CpuRunner = run_cpu


SourceFactory = Callable[[Settings, Wiring], Iterable[SourceSpec]]
UpstreamList = Callable[[Settings], Iterable[Upstream]]


def _none(settings: Settings) -> Iterable[Any]:
    return ()


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One configuration section's entry in the registry: ``build`` makes its sources;
    ``upstreams`` lists the URLs they call, each with its field and HTTP settings (their
    TLS and credentials routes, :func:`routes`); ``data`` names its enabled sources of cost or
    token data (a configuration with none is refused, :func:`check_has_sources`)."""

    build: SourceFactory
    upstreams: UpstreamList = _none
    data: Callable[[Settings], Iterable[str]] = _none


def model_context(settings: Settings) -> ModelContext:
    """Compile configuration into what the pure model needs (raises ConfigError)."""
    catalog = load_gpu_catalog(settings.gpu_pricing.catalog_file)
    check_owned_models(settings, catalog)
    return ModelContext(
        resolver=settings.tenancy.to_model(),
        pricer=GpuPricer(
            catalog=catalog,
            purchase_option=settings.gpu_pricing.purchase_option,
            overrides=dict(settings.gpu_pricing.overrides),
            owned=settings.gpu_pricing.owned.to_model(),
        ),
        idle_threshold=settings.idle_gpu.utilization_threshold,
        idle_window_seconds=settings.idle_gpu.window_seconds,
        max_tenants=settings.limits.max_tenants,
        tokens=settings.tokens.to_model() if settings.tokens.active else None,
        finance=settings.finance_to_model(),
        max_series_per_family=settings.limits.max_series_per_family,
        hami_core_weight=settings.sources.hami.to_model(),
        energy=settings.energy.to_model(settings.budgets.time_zone)
        if settings.energy.enabled
        else None,
    )


def check_owned_models(settings: Settings, catalog: GpuPriceCatalog) -> None:
    """Raise ConfigError for an owned entry whose GPU model neither the catalog nor
    ``gpu_pricing.overrides`` knows: a misspelt name would match no GPU and price nothing."""
    known = {normalize_gpu_model(k) for k in settings.gpu_pricing.overrides}
    for i, g in enumerate(settings.gpu_pricing.owned.gpus):
        if catalog.lookup(g.gpu_model) is None and normalize_gpu_model(g.gpu_model) not in known:
            raise ConfigError(
                f"invalid configuration: gpu_pricing.owned.gpus.{i}.gpu_model: unknown GPU "
                f"model (got {g.gpu_model!r}; not in the GPU price catalog {catalog.version} "
                "nor in gpu_pricing.overrides; use DCGM's modelName or a catalog name or alias)"
            )


def usage_store(settings: Settings) -> UsageStore | None:
    """The push store when ``tokens.push.enabled``."""
    push = settings.tokens.push
    if not push.enabled:
        return None
    return UsageStore(
        max_series=push.max_series,
        max_tokens_per_record=push.max_tokens_per_record,
        idempotency_cache_size=push.idempotency_cache_size,
    )


def state_store(settings: Settings, store: UsageStore | None) -> StateStore | None:
    """The state file when ``state.path`` is set; pushes are journalled through it."""
    return StateStore.from_settings(settings, usage=store)


def routes(settings: Settings) -> list[Route]:
    """Each upstream's TLS and credentials (raises ConfigError naming the field), for the
    URLs the registry's entries list, in registry order."""
    return upstream_routes(u for entry in SOURCES.values() for u in entry.upstreams(settings))


def check_has_sources(settings: Settings) -> None:
    """Raise :class:`ConfigError` when no source of cost or token data is enabled and
    ``allow_no_sources`` is not set: an empty or source-less file would otherwise blank every
    series and still be "ready"; or when ``energy.enabled`` has no DCGM source to read
    energy from."""
    if settings.energy.enabled and not settings.sources.dcgm.enabled:
        # Checked with the sources (not by the schema): the demo adds DCGM after loading.
        raise ConfigError(
            "invalid configuration: energy.enabled needs sources.dcgm enabled (GPU energy is "
            "read where DCGM is)"
        )
    enabled = [name for entry in SOURCES.values() for name in entry.data(settings)]
    if not settings.allow_no_sources and not enabled:
        raise ConfigError(
            "invalid configuration: no source is enabled (sources.dcgm, sources.opencost, "
            "tokens.sources, tokens.push): the exporter would publish no cost series; enable "
            "one, or set allow_no_sources: true if this is meant"
        )


# --- the source registry -------------------------------------------------------------------


def _dcgm(settings: Settings, wiring: Wiring) -> Iterable[SourceSpec]:
    dcgm = settings.sources.dcgm
    if dcgm.enabled:
        yield DcgmSource(dcgm, run=wiring.run), dcgm.timeout_seconds, dcgm.stale_after_seconds


def _hami(settings: Settings, wiring: Wiring) -> Iterable[SourceSpec]:
    hami = settings.sources.hami
    if hami.enabled:
        yield HamiSource(hami, run=wiring.run), hami.timeout_seconds, hami.stale_after_seconds


def _energy(settings: Settings, wiring: Wiring) -> Iterable[SourceSpec]:
    """GPU energy (``energy.enabled``), read where ``sources.dcgm`` reads utilization."""
    dcgm = settings.sources.dcgm
    if settings.energy.enabled and dcgm.enabled:
        source = EnergySource(dcgm, wiring.clock, run=wiring.run)
        yield source, dcgm.timeout_seconds, dcgm.stale_after_seconds


def allocation_label_keys(settings: Settings) -> LabelKeys:
    """Every label key the configuration reads from OpenCost's rows, in each spelling its
    reader tries (the OpenCost sources keep only these; a reload rebuilds the sources, so a
    key added there is read from the next fetch on):

    * tenancy: its pod label keys in pods' labels, its namespace label keys in namespace
      labels (:meth:`~aifinops.model.tenancy.TenantResolver.label_keys`);
    * self-hosted models' selectors: their ``pod_labels`` keys, as written
      (``SelfHostedSpec.selects``);
    * the spot recommendation: ``recommendations.spot.label_key`` raw and sanitized
      (``finance._spot_candidates``), when it is enabled.

    No reader matches label keys by pattern; one that did would need the maps whole
    (``label_keys=None``). The keys come from the compiled model objects where they exist,
    so a reader and this list cannot spell a key differently."""
    pod, namespace = settings.tenancy.to_model().label_keys()
    read = set(pod)
    if settings.tokens.active:
        read.update(k for spec in settings.tokens.to_model().models for k in spec.pod_labels)
    policy = settings.recommendations.to_model()
    if policy.spot:
        key = policy.spot_label_key
        # Both sanitizations: finance's (str.isalnum) and tenancy's ([a-zA-Z0-9_]).
        read.update((key, sanitize_label_key(key)))
        read.add("".join(c if c.isalnum() or c == "_" else "_" for c in key))
    return LabelKeys(pod=frozenset(read), namespace=namespace)


def _opencost(settings: Settings, wiring: Wiring) -> Iterable[SourceSpec]:
    """The rate query, and the month-to-date query (``opencost_month``, every
    ``budgets.refresh_interval_seconds``, dates by the clock); both keep only the label
    keys the configuration reads (:func:`allocation_label_keys`)."""
    oc = settings.sources.opencost
    if not oc.enabled:
        return
    keys = allocation_label_keys(settings)
    rate = OpenCostSource(oc, run=wiring.run, label_keys=keys)
    yield rate, oc.timeout_seconds, oc.stale_after_seconds
    interval = settings.budgets.refresh_interval_seconds
    yield (
        OpenCostMonthSource(
            oc, settings.budgets, wiring.clock, settings.tenancy, run=wiring.run, label_keys=keys
        ),
        month_timeout(oc),
        max(oc.stale_after_seconds, 3 * interval),
    )


def _tokens(settings: Settings, wiring: Wiring) -> Iterable[SourceSpec]:
    return token_sources(settings, wiring.store, run=wiring.run)


def _latency(settings: Settings, wiring: Wiring) -> Iterable[SourceSpec]:
    return latency_sources(settings, wiring.clock, run=wiring.run)


def _query_or_pages(
    where: str, url: str | None, pages: Iterable[str], mode: str, up: UpstreamHttpSettings
) -> Iterator[Upstream]:
    """A PromQL source's URLs: its Prometheus in ``mode: prometheus``, its pages in
    ``mode: scrape``."""
    if mode == "prometheus" and url:
        yield where, url, up
    if mode == "scrape":
        for page in pages:
            yield where, page, up


def _dcgm_upstreams(settings: Settings) -> Iterator[Upstream]:
    d = settings.sources.dcgm
    if d.enabled:
        yield from _query_or_pages("sources.dcgm", d.prometheus_url, d.scrape_urls, d.mode, d)


def _hami_upstreams(settings: Settings) -> Iterator[Upstream]:
    h = settings.sources.hami
    if h.enabled:
        yield from _query_or_pages("sources.hami", h.prometheus_url, h.scrape_urls, h.mode, h)


def _opencost_upstreams(settings: Settings) -> Iterator[Upstream]:
    oc = settings.sources.opencost
    if oc.enabled and oc.url:
        yield "sources.opencost", oc.url, oc


def _tokens_upstreams(settings: Settings) -> Iterator[Upstream]:
    t = settings.tokens
    if t.prices.url:
        yield "tokens.prices", t.prices.url, t.prices
    for s in t.sources:
        if s.enabled:
            urls = [target.url for target in s.scrape_targets]
            yield from _query_or_pages(
                f"tokens.sources.{s.name}", s.prometheus_url, urls, s.mode, s
            )


def _latency_upstreams(settings: Settings) -> Iterator[Upstream]:
    for s in settings.latency.sources:
        if s.enabled:
            urls = [target.url for target in s.scrape_targets]
            yield from _query_or_pages(
                f"latency.sources.{s.name}", s.prometheus_url, urls, s.mode, s
            )


def _dcgm_data(settings: Settings) -> list[str]:
    return ["sources.dcgm"] if settings.sources.dcgm.enabled else []


def _hami_data(settings: Settings) -> list[str]:
    return ["sources.hami"] if settings.sources.hami.enabled else []


def _opencost_data(settings: Settings) -> list[str]:
    return ["sources.opencost"] if settings.sources.opencost.enabled else []


def _tokens_data(settings: Settings) -> list[str]:
    t = settings.tokens
    pushed = ["tokens.push"] if t.push.enabled else []
    return pushed + [f"tokens.sources.{s.name}" for s in t.sources if s.enabled]


# In refresh order: the latency sources come last. (The price list and the latency sources
# only refine the data of the others: they list no data source of their own.)
SOURCES: dict[str, SourceEntry] = {
    "dcgm": SourceEntry(_dcgm, _dcgm_upstreams, _dcgm_data),
    "hami": SourceEntry(_hami, _hami_upstreams, _hami_data),
    # Reads sources.dcgm's URLs (their routes are dcgm's); it refines DCGM's data.
    "energy": SourceEntry(_energy),
    "opencost": SourceEntry(_opencost, _opencost_upstreams, _opencost_data),
    "tokens": SourceEntry(_tokens, _tokens_upstreams, _tokens_data),
    "latency": SourceEntry(_latency, _latency_upstreams),
}


def build_sources(
    settings: Settings, store: UsageStore | None = None, clock: Clock = time.time
) -> list[SourceSpec]:
    """The enabled sources with their (timeout, stale_after) settings, registry order."""
    wiring = Wiring(store, clock)
    return [spec for entry in SOURCES.values() for spec in entry.build(settings, wiring)]


def token_sources(
    settings: Settings,
    store: UsageStore | None,
    *,
    configured: bool = True,
    run: CpuRunner = run_cpu,
) -> list[SourceSpec]:
    """Token analytics sources: the price list, the configured token sources (unless
    ``configured`` is false) and the push store; none when token analytics is off."""
    t = settings.tokens
    if not t.active:
        return []
    out: list[SourceSpec] = [
        (LlmPriceSource(t.prices), t.prices.timeout_seconds, PRICES_NEVER_STALE)
    ]
    if configured:
        for s in t.sources:
            if s.enabled:
                out.append((TokenSource(s, run=run), s.timeout_seconds, s.stale_after_seconds))
    if store is not None:
        out.append((PushSource(store), 1.0, PRICES_NEVER_STALE))
    return out


def latency_sources(
    settings: Settings, clock: Clock = time.time, *, run: CpuRunner = run_cpu
) -> list[SourceSpec]:
    """The enabled ``latency.sources`` (measured p95 latency for routing); ``clock`` dates
    the readings of the scrape mode's window."""
    return [
        (LatencySource(s, clock, run=run), s.timeout_seconds, s.stale_after_seconds)
        for s in settings.latency.sources
        if s.enabled
    ]
