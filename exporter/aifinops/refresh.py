"""The refresh loop: fetch every source concurrently, run the model, render, swap.

One cycle: each source's ``fetch`` runs with its own timeout; a success replaces that
source's last good data, a failure keeps it (counted by reason, logged once per state change)
until it is older than the source's ``stale_after_seconds``, when it is dropped and the
source is marked stale. The model then runs on a frozen :class:`Inputs`, the exposition is
rendered to bytes once, and the new :class:`Snapshot` replaces the old one in a single
assignment, so a scrape or an API call always sees one consistent report. Nothing a source
or the model raises ends the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import structlog

from aifinops.exposition.bounds import cap_families, dropped_samples
from aifinops.exposition.catalog import SERIES_DROPPED
from aifinops.exposition.families import BuildInfo, cost_families, self_families
from aifinops.exposition.render import Exposition, Family, render
from aifinops.model.finance import FinanceContext, FinanceInputs, FinanceState, build_finance
from aifinops.model.inputs import (
    AllocationSet,
    DailyAllocationSets,
    GpuSample,
    Inputs,
    TokenInputs,
    TokenObservation,
)
from aifinops.model.llm_prices import LlmPriceCatalog
from aifinops.model.report import ModelContext, ModelState, Report, build_report
from aifinops.offload import release, render_and_compress, run_cpu, settle_heap
from aifinops.sources.base import Source, SourceError
from aifinops.sources.tokens import token_source_families
from aifinops.statefile import StateStore
from aifinops.status import RefreshStatus, SourceStatus

log = structlog.get_logger("aifinops.refresh")

Clock = Callable[[], float]
RETRY_SECONDS = 60.0
"""How soon a source with its own interval is tried again after a failed fetch."""


@dataclass(slots=True)
class SourceRuntime:
    """Mutable bookkeeping for one source; only the refresh loop touches it."""

    source: Source[Any]
    timeout: float
    stale_after: float
    data: Any = None
    fetched_at: float | None = None
    up: bool = False
    stale: bool = False
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    duration: float = 0.0
    logged_state: str | None = None
    attempted_at: float | None = None

    def due(self, now: float) -> bool:
        """Whether to fetch this cycle: always, unless the source sets
        ``min_interval_seconds`` (a heavy query such as ``opencost_month``); then once per
        interval after a success and at most every :data:`RETRY_SECONDS` after a failure."""
        interval = float(getattr(self.source, "min_interval_seconds", 0.0) or 0.0)
        if interval <= 0 or self.attempted_at is None:
            return True
        wait = interval if self.up else min(interval, RETRY_SECONDS)
        return now - self.attempted_at >= wait

    def status(self, now: float) -> SourceStatus:
        age = None if self.data is None or self.fetched_at is None else now - self.fetched_at
        return SourceStatus(
            name=self.source.name,
            up=self.up,
            age_seconds=age,
            stale=self.stale,
            duration_seconds=self.duration,
            errors=dict(self.errors),
            last_error=self.last_error,
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    report: Report | None
    status: RefreshStatus | None
    exposition: Exposition
    ready: bool


class Refresher:
    """Owns the sources' runtime state, the model state and the current snapshot."""

    def __init__(
        self,
        sources: Sequence[tuple[Source[Any], float, float]],
        context: ModelContext,
        build: BuildInfo,
        client: httpx.AsyncClient,
        clock: Clock = time.time,
        state_store: StateStore | None = None,
    ) -> None:
        """``sources`` are ``(source, timeout_seconds, stale_after_seconds)`` triples;
        ``state_store``, when given, restores the saved state now and is written after
        refreshes (:mod:`aifinops.statefile`)."""
        self._runtimes = [SourceRuntime(s, timeout, stale) for s, timeout, stale in sources]
        self._context = context
        self._build = build
        self._client = client
        self._clock = clock
        self._state = ModelState()
        self._finance_state = FinanceState()
        self._refreshes = 0
        self._unpriced_logged: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()
        self._series_dropped: Counter[str] = Counter()
        self._graveyard: list[Any] = []
        # Families owned outside the loop (config reload status, ...), rendered with each page.
        self.extra_families: list[Callable[[], Sequence[Family]]] = []
        # The state file: the model and finance states of the last completed refresh (one
        # consistent pair, whatever a cancelled refresh left behind) are what gets written.
        self._state_store = state_store
        self._persist: tuple[ModelState, FinanceState] | None = None
        if state_store is not None:
            self._restore(state_store)
        self.snapshot = Snapshot(
            report=None,
            status=None,
            exposition=Exposition.from_bytes(render(self_families(None, build))),
            ready=False,
        )

    @property
    def context(self) -> ModelContext:
        return self._context

    def replace_context(self, context: ModelContext) -> None:
        """Use new compiled configuration from the next refresh (config reload)."""
        self._context = context

    async def _fetch_one(self, rt: SourceRuntime) -> None:
        started = time.perf_counter()
        rt.attempted_at = self._clock()
        try:
            # The source's own HTTP timeout applies per request; this bounds the whole fetch.
            data = await asyncio.wait_for(rt.source.fetch(self._client), rt.timeout * 1.5)
        except SourceError as exc:
            self._failed(rt, exc.reason, str(exc))
        except TimeoutError:
            self._failed(rt, "timeout", f"fetch exceeded {rt.timeout * 1.5:g}s")
        except Exception as exc:  # a bug in a parser must not stop the loop
            self._failed(rt, "parse", f"{type(exc).__name__}: {exc}")
            log.exception("source_crashed", source=rt.source.name)
        else:
            # The previous data is freed after the fetches, a chunk at a time (see _bury).
            self._graveyard.append(rt.data)
            rt.data = data
            rt.fetched_at = self._clock()
            rt.up = True
            rt.stale = False
            rt.last_error = None
            self._log_state(rt, "up")
        finally:
            rt.duration = time.perf_counter() - started

    def _failed(self, rt: SourceRuntime, reason: str, message: str) -> None:
        rt.up = False
        rt.errors[reason] += 1
        rt.last_error = message
        self._log_state(rt, f"down:{reason}", error=message)

    def _log_state(self, rt: SourceRuntime, state: str, **fields: Any) -> None:
        # One line per state change, not per failure: a flapping or dead upstream cannot
        # flood the log.
        if rt.logged_state == state:
            return
        previous = rt.logged_state
        rt.logged_state = state
        if state == "up":
            log.info("source_up", source=rt.source.name, previous=previous)
        else:
            log.warning("source_down", source=rt.source.name, state=state, **fields)

    def _expire(self, rt: SourceRuntime, now: float) -> None:
        if rt.data is None or rt.fetched_at is None:
            return
        if now - rt.fetched_at > rt.stale_after:
            rt.data = None
            rt.stale = True
            log.warning(
                "source_stale_dropped",
                source=rt.source.name,
                age_seconds=round(now - rt.fetched_at, 1),
            )

    def _inputs(self) -> tuple[Inputs, float | None, FinanceInputs]:
        gpus: tuple[GpuSample, ...] | None = None
        allocations: AllocationSet | None = None
        monthly: DailyAllocationSets | None = None
        dcgm_at: float | None = None
        catalog: LlmPriceCatalog | None = None
        observations: list[TokenObservation] = []
        token_sources: set[str] = set()
        # Measured p95 latency per (model, provider) for routing; the first source listed
        # wins a key. A source down past its staleness has no data: configured figures apply.
        latencies: dict[tuple[str, str], float] = {}
        for rt in self._runtimes:
            if rt.data is None:
                continue
            if rt.source.name == "dcgm":
                gpus = rt.data
                dcgm_at = rt.fetched_at
            elif rt.source.name == "opencost":
                allocations = rt.data
            elif rt.source.name == "opencost_month":
                monthly = rt.data
            elif rt.source.name == "llm_prices":
                catalog = rt.data
            elif rt.source.name.startswith("tokens:"):
                observations.extend(rt.data)
                # The origins read (a source's scrape targets), empty reads included.
                token_sources.update(getattr(rt.data, "origins", (rt.source.name,)))
            elif rt.source.name.startswith("latency:"):
                for key, seconds in rt.data.items():
                    latencies.setdefault(key, seconds)
        tokens = None
        if self._context.tokens is not None:
            tokens = TokenInputs(tuple(observations), frozenset(token_sources), catalog)
        finance = FinanceInputs(
            monthly=monthly, allocations=allocations, catalog=catalog, latencies=latencies
        )
        return Inputs(gpus=gpus, allocations=allocations, tokens=tokens), dcgm_at, finance

    def _with_finance(
        self, report: Report | None, inputs: FinanceInputs, now: float
    ) -> Report | None:
        """``report`` with its finance figures (budgets, ROI, routing, recommendations,
        month to date) when finance is configured; on a failure the report goes out without
        them (logged), never the loop down."""
        ctx = self._context
        if report is None or ctx.finance is None:
            return report
        try:
            finance, self._finance_state = build_finance(
                report, inputs, ctx.finance, ctx.resolver, ctx.pricer, self._finance_state, now
            )
        except Exception:
            log.exception("finance_failed")
            return replace(report, finance=None)
        return replace(report, finance=finance)

    def _log_unpriced(self, report: Report | None) -> None:
        """One warning per model that starts getting tokens without a price."""
        if report is None or report.tokens is None:
            return
        for model, provider in sorted(set(report.tokens.unpriced) - self._unpriced_logged):
            log.warning("llm_model_unpriced", model=model, provider=provider)
        self._unpriced_logged |= set(report.tokens.unpriced)

    async def refresh_once(self) -> Snapshot:
        """Run one cycle and swap in its snapshot. Never raises (except cancellation)."""
        async with self._lock:
            started = time.perf_counter()
            at = self._clock()
            await asyncio.gather(*(self._fetch_one(rt) for rt in self._runtimes if rt.due(at)))
            await self._bury()  # the sources' previous data, before the model allocates
            now = self._clock()
            for rt in self._runtimes:
                self._expire(rt, now)
            inputs, dcgm_at, finance_inputs = self._inputs()
            report: Report | None
            try:
                # CPU-heavy steps run on the one CPU worker thread (aifinops.offload) so that
                # scrapes keep being answered from the previous snapshot meanwhile.
                report, state = await run_cpu(
                    build_report, inputs, self._context, self._state, now, dcgm_at
                )
            except Exception:
                log.exception("model_failed")
                report, state = self.snapshot.report, self._state
            self._graveyard.append(self._state)
            self._state = state
            report = await run_cpu(self._with_finance, report, finance_inputs, now)
            self._log_unpriced(report)
            self._refreshes += 1
            status = RefreshStatus(
                sources=tuple(rt.status(now) for rt in self._runtimes),
                duration_seconds=time.perf_counter() - started,
                completed_at=now,
                refreshes=self._refreshes,
            )
            exposition = await run_cpu(self._render, report, status, count_dropped=True)
            # Ready once an upstream gave data: a local source (the bundled price list, the
            # push store) has data from the start and says nothing about the upstreams.
            in_use = any(
                rt.data is not None and not getattr(rt.source, "local", False)
                for rt in self._runtimes
            )
            self._graveyard.append(self.snapshot)
            self.snapshot = Snapshot(
                report=report,
                status=status,
                exposition=exposition,
                ready=self.snapshot.ready or in_use,
            )
            log.info(
                "refresh",
                seconds=round(status.duration_seconds, 4),
                sources_up=sum(rt.up for rt in self._runtimes),
                sources=len(self._runtimes),
                tenants=len({t for t, _ in report.tenant_rates("allocation")}) if report else 0,
                exposition_bytes=len(exposition.plain),
            )
            del inputs, finance_inputs, report, state, exposition
            await self._bury()
            await self._save_state(now)
            settle_heap()
            return self.snapshot

    async def _bury(self) -> None:
        """Free what :attr:`_graveyard` holds (the sources' previous data, the previous
        snapshot and model state) on the worker thread, a chunk at a time
        (:func:`aifinops.offload.release`): dropped whole, 100k objects are one C call of
        tens of ms that scrapes would wait for."""
        graveyard, self._graveyard = self._graveyard, []
        await run_cpu(release, graveyard)

    def _render(
        self, report: Report | None, status: RefreshStatus | None, *, count_dropped: bool
    ) -> Exposition:
        """The page: model families capped to ``max_series_per_family`` (counted once per
        refresh), then self-metrics and the extra families."""
        families, dropped = cap_families(cost_families(report), self._context.max_series_per_family)
        if count_dropped:
            self._series_dropped.update(dropped)
        families += self_families(status, self._build)
        families.append(Family(SERIES_DROPPED, dropped_samples(self._series_dropped)))
        families += token_source_families(rt.source for rt in self._runtimes)
        for extra in self.extra_families:
            families.extend(extra())
        return render_and_compress(families)

    def rerender(self) -> None:
        """Render the current report again (after a change to an extra family, such as a
        config reload), without fetching anything."""
        snap = self.snapshot
        exposition = self._render(snap.report, snap.status, count_dropped=False)
        self.snapshot = replace(snap, exposition=exposition)

    async def replace_sources(self, sources: Sequence[tuple[Source[Any], float, float]]) -> None:
        """Use new sources from the next refresh (config reload). A source whose name stays
        keeps its last good data, error counts and logged state; one that goes away is
        forgotten. Waits for a refresh in flight."""
        async with self._lock:
            old = {rt.source.name: rt for rt in self._runtimes}
            runtimes = []
            for source, timeout, stale_after in sources:
                rt = old.get(source.name)
                if rt is None:
                    rt = SourceRuntime(source, timeout, stale_after)
                else:
                    rt.source, rt.timeout, rt.stale_after = source, timeout, stale_after
                runtimes.append(rt)
            self._runtimes = runtimes

    def _restore(self, store: StateStore) -> None:
        """Start from the saved state (start-up; a missing or bad file starts empty)."""
        finance = self._context.finance or FinanceContext()
        restored = store.load(self._clock(), finance)
        if restored is not None:
            self._state, self._finance_state = restored.model, restored.finance
        self.extra_families.append(store.families)

    async def _save_state(self, now: float) -> None:
        """After a refresh: remember its state and write it when the interval is due, on the
        CPU worker thread (file I/O and encoding never run on the event loop)."""
        store = self._state_store
        if store is None:
            return
        self._persist = (self._state, self._finance_state)
        if store.due(now):
            await run_cpu(store.save, *self._persist, now)

    async def save_state(self) -> None:
        """Write the last completed refresh's state now (on shutdown, after the loop was
        cancelled). Nothing to write before a first refresh: the file stays as loaded."""
        if self._state_store is not None and self._persist is not None:
            await run_cpu(self._state_store.save, *self._persist, self._clock())

    async def run(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled (start-to-start spacing)."""
        while True:
            started = time.monotonic()
            await self.refresh_once()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
