"""The refresh loop: fetch every source concurrently, run the model, render, swap.

One cycle: each source's ``fetch`` runs with its own timeout (concurrently, but a source
reading a large body holds the cycle's gate for it until its fetch ends:
``sources.base.LargeBodies``); a success replaces that
source's last good data, a failure keeps it (counted by reason, logged once per state change)
until it is older than the source's ``stale_after_seconds``, when it is dropped and the
source is marked stale. The model then runs on a frozen :class:`Inputs`, the exposition is
rendered to bytes once, and the new :class:`Snapshot` replaces the old one in a single
assignment, so a scrape or an API call always sees one consistent report. Nothing a source
or the model raises ends the loop: each stage of a cycle is isolated and counted
(:data:`STAGES`), the previous report is kept when the model or the render fails, and a
watchdog (:meth:`Refresher.watch`) marks the loop stalled (``/readyz`` 503,
``aifinops_refresh_stalled``) when no cycle has published a report for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import structlog

from aifinops.exposition.bounds import cap_families, dropped_samples
from aifinops.exposition.catalog import (
    MONTH_TO_DATE_READY,
    REFRESH_FAILURES,
    REFRESH_STALLED,
    SERIES_DROPPED,
)
from aifinops.exposition.families import (
    BuildInfo,
    cost_families,
    self_families,
    state_families,
)
from aifinops.exposition.render import Exposition, Family, render
from aifinops.exposition.targets import token_source_families
from aifinops.model.finance import (
    FinanceContext,
    FinanceInputs,
    FinanceReport,
    FinanceState,
    build_finance,
)
from aifinops.model.inputs import (
    AllocationSet,
    DailyAllocationSets,
    EnergyReadings,
    GpuSample,
    Inputs,
    SharedHold,
    TokenInputs,
    TokenItem,
)
from aifinops.model.llm_prices import LlmPriceCatalog
from aifinops.model.report import ModelContext, ModelState, Report, build_report
from aifinops.offload import release, render_and_compress, run_cpu, run_side
from aifinops.sources.base import LargeBodies, Slot, Source, SourceError
from aifinops.statefile import StateStore
from aifinops.status import RefreshStatus, SourceStatus

log = structlog.get_logger("aifinops.refresh")

Clock = Callable[[], float]
Prepare = Callable[[Report | None, FinanceReport | None], object]
"""The ``prepare`` hook (:class:`Refresher`): a cycle's report and finance to what its
snapshot carries beside them."""
RETRY_SECONDS = 60.0
"""How soon a source with its own interval is tried again after a failed fetch."""
WATCHDOG_INTERVALS = 3
"""Refresh intervals without a published report after which the loop counts as stalled:
``/readyz`` 503, ``aifinops_refresh_stalled`` 1, the AIFinOpsRefreshStalled alert."""
STAGES: tuple[str, ...] = (
    "fetch",
    "release",
    "inputs",
    "model",
    "finance",
    "report",
    "render",
    "prepare",
    "state",
    "loop",
)
"""The refresh's stages, as ``aifinops_refresh_failures_total{stage}`` names them."""


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
    # A deferred fetch landed and no cycle has used its data yet.
    unused: bool = False

    def due(self, now: float) -> bool:
        """Whether to fetch this cycle: always, unless the source sets
        ``min_interval_seconds`` (a heavy query such as ``opencost_month``); then once per
        interval after a success and at most every :data:`RETRY_SECONDS` after a failure.
        Never while a deferred read's data is unused: the cycle it triggered uses that read
        (a token counter's baseline is the first read, not a second one a moment later)."""
        if self.unused:
            return False
        interval = self.source.min_interval_seconds
        if interval <= 0 or self.attempted_at is None:
            return True
        wait = interval if self.up else min(interval, RETRY_SECONDS)
        return now - self.attempted_at >= wait

    @property
    def deferrable(self) -> bool:
        """A source with its own interval (the month query), or one whose first read only
        sets baselines (token counters) before that read: the loop does not wait for it
        (see :meth:`Refresher.refresh_once`)."""
        if self.source.min_interval_seconds > 0:
            return True
        return self.source.first_read_baseline and self.attempted_at is None

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
    """What one refresh publishes. ``finance`` is built from ``report`` (the same cycle's,
    or both the previous cycle's) and travels beside it; it is None when finance is not
    configured or its step failed. ``prepared`` is what the ``prepare`` hook made of this
    report and finance (the JSON API's ready answers; opaque here), or None."""

    report: Report | None
    finance: FinanceReport | None
    status: RefreshStatus | None
    exposition: Exposition
    ready: bool
    prepared: object = None


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
        *,
        interval: float = 30.0,
        watchdog_intervals: int = WATCHDOG_INTERVALS,
        monotonic: Clock = time.monotonic,
        after_refresh: Callable[[], None] | None = None,
        prepare: Prepare | None = None,
        on_publish: Callable[[Snapshot], None] | None = None,
    ) -> None:
        """``sources`` are ``(source, timeout_seconds, stale_after_seconds)`` triples;
        ``state_store``, when given, restores the saved state now and is written after
        refreshes (:mod:`aifinops.statefile`). ``interval`` (seconds, :meth:`run` sets it
        too) times ``watchdog_intervals`` without a published report is a stall
        (:meth:`stalled`), measured on ``monotonic``. ``after_refresh`` runs after each
        cycle's snapshot swap (the process's runtime settings decide what: see
        ``assemble.AFTER_REFRESH``); a failure there counts as stage ``release``.
        ``prepare`` turns a cycle's report and finance into what the snapshot carries as
        ``prepared`` (``web/app.py`` gives the API's ready answers; the refresh does not know
        the API): on the CPU worker, before the swap; a failure counts as stage ``prepare``
        and the snapshot carries None. ``on_publish`` is called on the event loop with each
        snapshot swapped in (refresh, re-render, watchdog): the refresh engine hands it to
        its front process (``web/publish.py``); it must not block."""
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
        # A cycle's fetches take large bodies one source at a time (sources/base.py).
        self._large_bodies = LargeBodies()
        # Fetches of deferrable sources in flight (by source name), and a flag the loop waits
        # on to refresh as soon as one lands.
        self._deferred: dict[str, asyncio.Task[None]] = {}
        self._deferred_landed = asyncio.Event()
        # The watchdog's state: failures per stage, which stages are failing (and how, for
        # logging once), and when a cycle last published its report.
        self.interval = interval
        self.watchdog_intervals = watchdog_intervals
        self.stall_after: float | None = None  # seconds; None: from the interval (tests set it)
        self._monotonic = monotonic
        self._after_refresh = after_refresh
        self._prepare = prepare
        self.on_publish = on_publish
        self._started = monotonic()
        self._last_success: float | None = None
        self._last_success_at = 0.0
        self._stage_failures: Counter[str] = Counter()
        self._failing: dict[str, str] = {}
        self._stalled_on_page = False
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
            finance=None,
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

    async def _fetch_one(self, rt: SourceRuntime, *, gated: bool = True) -> None:
        """Fetch ``rt``'s source and keep what it brought. ``gated`` (a cycle's fetches): a
        fetch that reads a large body holds :attr:`_large_bodies` from then until its old
        data is freed, so the cycle's big bodies and their parses do not pile up (waiting
        at most half the source's timeout: the whole fetch may take one and a half)."""
        if not gated:
            await self._fetch_and_keep(rt)
            return
        async with self._large_bodies.scope(wait=rt.timeout / 2):
            await self._fetch_and_keep(rt)

    async def _fetch_and_keep(self, rt: SourceRuntime) -> None:
        started = time.perf_counter()
        graveyard: list[Any] = []
        rt.attempted_at = self._clock()
        try:
            # The source's own HTTP timeout applies per request; this bounds the whole fetch.
            data = await asyncio.wait_for(rt.source.fetch(self._client), rt.timeout * 1.5)
        except SourceError as exc:
            self._failed(rt, exc.reason, str(exc))
            forget_frames(exc)
        except TimeoutError as exc:
            self._failed(rt, "timeout", f"fetch exceeded {rt.timeout * 1.5:g}s")
            forget_frames(exc)
        except Exception as exc:  # a bug in a parser must not stop the loop
            self._failed(rt, "parse", f"{type(exc).__name__}: {exc}")
            log.exception("source_crashed", source=rt.source.name)
            forget_frames(exc)
        else:
            graveyard.append(rt.data)
            rt.data = data
            del data
            rt.fetched_at = self._clock()
            rt.up = True
            rt.stale = False
            rt.last_error = None
            self._log_state(rt, "up")
        finally:
            rt.duration = time.perf_counter() - started
        # The previous data is freed now, a chunk at a time (see _bury), not after every
        # fetch: the sources still parsing then reuse its memory instead of adding to the peak.
        if graveyard:
            try:
                await run_cpu(release, graveyard)
            except Exception as exc:
                self._stage_failed("release", exc)

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
        observations: list[TokenItem] = []
        token_sources: set[str] = set()
        # Measured p95 latency per (model, provider) for routing; the first source listed
        # wins a key. A source down past its staleness has no data: configured figures apply.
        latencies: dict[tuple[str, str], float] = {}
        shared: tuple[SharedHold, ...] | None = None
        energy: EnergyReadings | None = None
        for rt in self._runtimes:
            if rt.data is None:
                continue
            slot = rt.source.slot
            if slot is Slot.GPUS:
                gpus = rt.data
                dcgm_at = rt.fetched_at
            elif slot is Slot.ALLOCATIONS:
                allocations = rt.data
            elif slot is Slot.MONTHLY:
                monthly = rt.data
            elif slot is Slot.PRICES:
                catalog = rt.data
            elif slot is Slot.TOKENS:
                observations.extend(rt.data)
                # The origins read (a source's scrape targets), empty reads included.
                token_sources.update(getattr(rt.data, "origins", (rt.source.name,)))
            elif slot is Slot.LATENCY:
                for key, seconds in rt.data.items():
                    latencies.setdefault(key, seconds)
            elif slot is Slot.SHARED:
                shared = rt.data
            elif slot is Slot.ENERGY:
                energy = rt.data
        tokens = None
        if self._context.tokens is not None:
            tokens = TokenInputs(tuple(observations), frozenset(token_sources), catalog)
        finance = FinanceInputs(
            monthly=monthly, allocations=allocations, catalog=catalog, latencies=latencies
        )
        inputs = Inputs(
            gpus=gpus, allocations=allocations, tokens=tokens, shared=shared, energy=energy
        )
        return inputs, dcgm_at, finance

    def _build_finance(
        self, report: Report | None, inputs: FinanceInputs, now: float
    ) -> FinanceReport | None:
        """``report``'s finance figures (budgets, ROI, routing, recommendations, month to
        date) when finance is configured (on the CPU worker; a failure is the ``finance``
        stage's, see :meth:`_finance`)."""
        ctx = self._context
        if report is None or ctx.finance is None:
            return None
        # The pricer at now: an owned GPU model is priced as owned in the recommendations too.
        pricer = ctx.pricer.at(now)
        finance, self._finance_state = build_finance(
            report, inputs, ctx.finance, ctx.resolver, pricer, self._finance_state, now
        )
        return finance

    def _log_unpriced(self, report: Report | None) -> None:
        """One warning per model that starts getting tokens without a price."""
        if report is None or report.tokens is None:
            return
        for model, provider in sorted(set(report.tokens.unpriced) - self._unpriced_logged):
            log.warning("llm_model_unpriced", model=model, provider=provider)
        self._unpriced_logged |= set(report.tokens.unpriced)

    def _start_deferred(self, rt: SourceRuntime) -> None:
        async def fetch() -> None:
            try:
                # Not gated: it runs beside the next cycle, which must not wait for it.
                await self._fetch_one(rt, gated=False)
            finally:
                self._deferred.pop(rt.source.name, None)
            if rt.up:
                rt.unused = True
                self._deferred_landed.set()

        self._deferred[rt.source.name] = asyncio.create_task(fetch())

    async def settle_deferred(self) -> None:
        """Wait for the deferred fetches in flight (benchmarks, tests)."""
        while self._deferred:
            await asyncio.gather(*self._deferred.values(), return_exceptions=True)

    async def cancel_deferred(self) -> None:
        """Cancel the deferred fetches in flight (shutdown)."""
        tasks = list(self._deferred.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def month_pending(self) -> bool:
        """Whether a month-to-date fetch is in flight."""
        return any(
            rt.source.slot is Slot.MONTHLY and rt.source.name in self._deferred
            for rt in self._runtimes
        )

    async def refresh_once(self, *, defer: bool = False) -> Snapshot:
        """Run one cycle and swap in its snapshot. Never raises (except cancellation).

        ``defer`` (the loop's refreshes): a source with its own interval (the month-to-date
        query: seconds at fleet scale) is fetched after the cycle has published instead of
        within it, so the first refresh publishes the cost series without waiting for it or
        sharing the CPU worker with its decoding; the budgets and chargeback appear with the
        refresh after it lands (the loop starts that one at once, :meth:`run`). Until then
        its last good data, if any, stays in use. So is a source's first read when that read
        only sets baselines (``first_read_baseline``: token counters, whose first read is the
        coldest of all); the cycle after it counts their increments as it would have.

        Every stage is isolated (:data:`STAGES`): an unexpected exception is counted in
        ``aifinops_refresh_failures_total{stage}``, logged once per stage until the stage
        works again, and the cycle goes on with what it has: the previous report when the
        model or the render fails, the report without finance figures when finance fails.
        A cycle that publishes a new report is a success (:meth:`stalled`)."""
        async with self._lock:
            started = time.perf_counter()
            at = self._clock()
            due = [
                rt for rt in self._runtimes if rt.due(at) and rt.source.name not in self._deferred
            ]
            # Started once this cycle has published (below): its decoding would otherwise
            # share the CPU worker with this cycle's model and render.
            later = [rt for rt in due if defer and rt.deferrable]
            for rt in self._runtimes:
                rt.unused = False  # this cycle's model reads what deferred fetches brought
            try:
                await asyncio.gather(*(self._fetch_one(rt) for rt in due if rt not in later))
            except Exception as exc:  # _fetch_one catches a source's own errors
                self._stage_failed("fetch", exc)
            else:
                self._stage_ok("fetch")
            await self._bury()  # the sources' previous data, before the model allocates
            now = self._clock()
            previous = self.snapshot
            report: Report | None = previous.report
            finance: FinanceReport | None = previous.finance
            fresh = False
            try:
                for rt in self._runtimes:
                    self._expire(rt, now)
                inputs, dcgm_at, finance_inputs = self._inputs()
            except Exception as exc:
                self._stage_failed("inputs", exc)
            else:
                self._stage_ok("inputs")
                try:
                    # CPU-heavy steps run on the one CPU worker thread (aifinops.offload) so
                    # that scrapes keep being answered from the previous snapshot meanwhile.
                    report, state = await run_cpu(
                        build_report, inputs, self._context, self._state, now, dcgm_at
                    )
                except Exception as exc:
                    self._stage_failed("model", exc)
                else:
                    self._stage_ok("model")
                    fresh = True
                    self._graveyard.append(self._state)
                    self._state = state
                    finance = await self._finance(report, finance_inputs, now)
                    del state
                del inputs, finance_inputs
            if fresh:
                try:
                    self._log_unpriced(report)
                except Exception as exc:
                    self._stage_failed("report", exc)
            self._refreshes += 1
            status = RefreshStatus(
                sources=tuple(rt.status(now) for rt in self._runtimes),
                duration_seconds=time.perf_counter() - started,
                # aifinops_last_refresh_timestamp_seconds: the last cycle that published
                # its own report (0 before the first), so it stops when the model does.
                completed_at=now if fresh else self._last_success_at,
                refreshes=self._refreshes,
            )
            exposition, published, published_finance = await self._render_page(
                report, finance, fresh, status, previous
            )
            done = fresh and published is report
            if fresh and not done:
                status = replace(status, completed_at=self._last_success_at)
            # Ready once an upstream gave data: a local source (the bundled price list, the
            # push store) has data from the start and says nothing about the upstreams.
            in_use = any(rt.data is not None and not rt.source.local for rt in self._runtimes)
            prepared = await self._prepared(published, published_finance, previous)
            self._graveyard.append(previous)
            self.snapshot = Snapshot(
                report=published,
                finance=published_finance,
                status=status,
                exposition=exposition,
                ready=previous.ready or in_use,
                prepared=prepared,
            )
            self._published()
            if done:
                self._last_success = self._monotonic()
                self._last_success_at = now
            for rt in later:
                self._start_deferred(rt)
            log.info(
                "refresh",
                seconds=round(status.duration_seconds, 4),
                sources_up=sum(rt.up for rt in self._runtimes),
                sources=len(self._runtimes),
                tenants=len({t for t, _ in report.tenant_rates("allocation")}) if report else 0,
                exposition_bytes=len(exposition.plain),
                published=done,
            )
            del report, finance, exposition, published, published_finance, previous, prepared
            await self._bury()
            try:
                await self._save_state(now)
            except Exception as exc:
                self._stage_failed("state", exc)
            else:
                self._stage_ok("state")
            if self._after_refresh is not None:
                try:
                    self._after_refresh()
                except Exception as exc:
                    self._stage_failed("release", exc)
            return self.snapshot

    async def _finance(
        self, report: Report | None, inputs: FinanceInputs, now: float
    ) -> FinanceReport | None:
        """``report``'s finance figures; None (stage ``finance`` counted) when building them
        fails."""
        try:
            out = await run_cpu(self._build_finance, report, inputs, now)
        except Exception as exc:
            self._stage_failed("finance", exc)
            return None
        self._stage_ok("finance")
        return out

    async def _prepared(
        self, report: Report | None, finance: FinanceReport | None, previous: Snapshot
    ) -> object:
        """What the ``prepare`` hook makes of the report and finance about to be published
        (the previous snapshot's when they are the previous ones); None (stage ``prepare``
        counted) when it fails: the API then builds its answers on request."""
        if self._prepare is None:
            return None
        if report is previous.report and finance is previous.finance:
            return previous.prepared
        try:
            out = await run_cpu(self._prepare, report, finance)
        except Exception as exc:
            self._stage_failed("prepare", exc)
            return None
        self._stage_ok("prepare")
        return out

    async def _render_page(
        self,
        report: Report | None,
        finance: FinanceReport | None,
        fresh: bool,
        status: RefreshStatus,
        previous: Snapshot,
    ) -> tuple[Exposition, Report | None, FinanceReport | None]:
        """The page and the report and finance figures it shows: this cycle's; else (its
        render failed, stage ``render``) the previous ones with this cycle's self-metrics;
        else the previous page as it was."""
        try:
            exposition = await run_cpu(
                self._render, report, finance, status, count_dropped=True, publishing=fresh
            )
        except Exception as exc:
            self._stage_failed("render", exc)
        else:
            self._stage_ok("render")
            return exposition, report, finance
        if fresh:
            try:
                exposition = await run_cpu(
                    self._render,
                    previous.report,
                    previous.finance,
                    replace(status, completed_at=self._last_success_at),
                    count_dropped=False,
                )
            except Exception as exc:
                self._stage_failed("render", exc)
            else:
                return exposition, previous.report, previous.finance
        return previous.exposition, previous.report, previous.finance

    def _stage_failed(self, stage: str, exc: BaseException) -> None:
        """Count a failed stage; log it (with its traceback) when the stage was working or
        failed differently before; then drop the exception's frames (see
        :func:`forget_frames`)."""
        self._stage_failures[stage] += 1
        kind = type(exc).__name__
        if self._failing.get(stage) != kind:
            self._failing[stage] = kind
            log.error(
                "refresh_stage_failed",
                stage=stage,
                error=f"{kind}: {str(exc)[:200]}",
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        forget_frames(exc)

    def _stage_ok(self, stage: str) -> None:
        if self._failing.pop(stage, None) is not None:
            log.info("refresh_stage_recovered", stage=stage)

    def stalled(self) -> bool:
        """Whether no refresh has published a report for :meth:`stall_seconds` (counted
        from start-up before the first one), by the monotonic clock: the watchdog behind
        ``/readyz`` 503 and ``aifinops_refresh_stalled``."""
        since = self._last_success if self._last_success is not None else self._started
        return self._monotonic() - since > self.stall_seconds()

    def stall_seconds(self) -> float:
        """How long without a published report is a stall: :attr:`watchdog_intervals`
        refresh intervals, or as many times the longest a fetch may take (1.5 × its
        timeout) when that is longer, so that a slow upstream is not a stalled loop; or
        :attr:`stall_after` when set."""
        if self.stall_after is not None:
            return self.stall_after
        longest = max((rt.timeout * 1.5 for rt in self._runtimes), default=0.0)
        return self.watchdog_intervals * max(self.interval, longest)

    async def _bury(self) -> None:
        """Free what :attr:`_graveyard` holds (the sources' previous data, the previous
        snapshot and model state) on the worker thread, a chunk at a time
        (:func:`aifinops.offload.release`): dropped whole, 100k objects are one C call of
        tens of ms that scrapes would wait for."""
        graveyard, self._graveyard = self._graveyard, []
        try:
            await run_cpu(release, graveyard)
        except Exception as exc:
            self._stage_failed("release", exc)
        finally:
            graveyard.clear()

    def _render(
        self,
        report: Report | None,
        finance: FinanceReport | None,
        status: RefreshStatus | None,
        *,
        count_dropped: bool,
        publishing: bool = False,
    ) -> Exposition:
        """The page: model families capped to ``max_series_per_family`` (counted once per
        refresh), then self-metrics and the extra families. ``publishing``: the page of a
        cycle that publishes its report (so not stalled, whatever the time since the last)."""
        families, dropped = cap_families(
            cost_families(report, finance), self._context.max_series_per_family
        )
        if count_dropped:
            self._series_dropped.update(dropped)
        families += self_families(status, self._build)
        families.append(Family(SERIES_DROPPED, dropped_samples(self._series_dropped)))
        families += self._month_families(finance)
        families += token_source_families(
            rt.source.targets for rt in self._runtimes if rt.source.targets is not None
        )
        families += self._watchdog_families(publishing)
        for extra in self.extra_families:
            families.extend(extra())
        return render_and_compress(families)

    def _month_families(self, finance: FinanceReport | None) -> list[Family]:
        """``aifinops_month_to_date_ready``, where the month-to-date query is configured:
        1 when the page's budgets and chargeback come from OpenCost's month, 0 while it has
        not landed (first refresh, or the source down past its staleness)."""
        if not any(rt.source.slot is Slot.MONTHLY for rt in self._runtimes):
            return []
        ready = finance is not None and finance.infra_available
        return [Family(MONTH_TO_DATE_READY, [((), 1.0 if ready else 0.0)])]

    def rerender(self) -> None:
        """Render the current report again (after a change to an extra family, such as a
        config reload), without fetching anything."""
        snap = self.snapshot
        exposition = self._render(snap.report, snap.finance, snap.status, count_dropped=False)
        self.snapshot = replace(snap, exposition=exposition)
        self._published()

    async def replace_sources(self, sources: Sequence[tuple[Source[Any], float, float]]) -> None:
        """Use new sources from the next refresh (config reload). A source whose name stays
        keeps its last good data, error counts and logged state; one that goes away is
        forgotten. A source whose optional ``reads`` (what the configuration makes it keep of
        an answer) changed is fetched again at the next refresh, not after its own interval.
        Waits for a refresh in flight."""
        async with self._lock:
            old = {rt.source.name: rt for rt in self._runtimes}
            runtimes = []
            for source, timeout, stale_after in sources:
                rt = old.get(source.name)
                if rt is None:
                    rt = SourceRuntime(source, timeout, stale_after)
                else:
                    if getattr(source, "reads", None) != getattr(rt.source, "reads", None):
                        # Its data was read for the old configuration (the month query's
                        # aggregation and label keys): kept in use, but asked for again now.
                        rt.attempted_at = None
                    rt.source, rt.timeout, rt.stale_after = source, timeout, stale_after
                runtimes.append(rt)
            self._runtimes = runtimes

    def _restore(self, store: StateStore) -> None:
        """Start from the saved state (start-up; a missing or bad file starts empty)."""
        finance = self._context.finance or FinanceContext()
        restored = store.load(self._clock(), finance)
        if restored is not None:
            self._state, self._finance_state = restored.model, restored.finance
        self.extra_families.append(lambda: state_families(store))

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
        cancelled). Nothing to write before a first refresh: the file stays as loaded.
        Never raises: a failure is logged and counted (stage ``state``)."""
        if self._state_store is not None and self._persist is not None:
            try:
                await run_cpu(self._state_store.save, *self._persist, self._clock())
            except Exception as exc:
                self._stage_failed("state", exc)

    async def run(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled (start-to-start spacing), with
        the watchdog (:meth:`watch`) beside it. Nothing a refresh raises ends the loop."""
        self.interval = interval
        watchdog = asyncio.create_task(self.watch())
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.refresh_once(defer=True)
                except Exception as exc:  # refresh_once isolates its stages; the last net
                    self._stage_failed("loop", exc)
                # The next refresh at the interval, or as soon as a deferred fetch (the
                # month to date) lands, so budgets do not wait a whole interval for it.
                wait = max(0.0, interval - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._deferred_landed.wait(), wait)
                self._deferred_landed.clear()
        finally:
            watchdog.cancel()
            await self.cancel_deferred()

    async def watch(self) -> None:
        """Every half interval: when :meth:`stalled` changed, log it and put it on the page.

        A wedged refresh never renders again, so the page is re-rendered here, on the side
        thread (the CPU worker may be the thing that is stuck); a refresh that runs renders
        the flag itself."""
        while True:
            await asyncio.sleep(max(self.interval / 2, 0.05))
            stalled = self.stalled()
            if stalled == self._stalled_on_page:
                continue
            if stalled:
                log.error("refresh_stalled", after_seconds=round(self.stall_seconds(), 1))
            else:
                log.info("refresh_resumed")
            snap = self.snapshot
            try:
                exposition = await run_side(
                    self._render, snap.report, snap.finance, snap.status, count_dropped=False
                )
            except Exception as exc:
                self._stage_failed("render", exc)
                self._stalled_on_page = stalled  # not again every half interval
                continue
            if self.snapshot is snap:
                self.snapshot = replace(snap, exposition=exposition)
                self._published()

    def _published(self) -> None:
        """Hand the snapshot just swapped in to :attr:`on_publish` (a failure there counts
        as stage ``release``: the snapshot is in place either way)."""
        if self.on_publish is not None:
            try:
                self.on_publish(self.snapshot)
            except Exception as exc:
                self._stage_failed("release", exc)

    def _watchdog_families(self, publishing: bool) -> list[Family]:
        """``aifinops_refresh_failures_total{stage}`` (every stage, 0 until it fails) and
        ``aifinops_refresh_stalled``; remembers which stall state went on the page."""
        stalled = not publishing and self.stalled()
        self._stalled_on_page = stalled
        return [
            Family(
                REFRESH_FAILURES,
                [((stage,), float(self._stage_failures.get(stage, 0))) for stage in STAGES],
            ),
            Family(REFRESH_STALLED, [((), 1.0 if stalled else 0.0)]),
        ]


def forget_frames(exc: BaseException) -> None:
    """Drop what a handled exception keeps alive: the local variables of the frames in its
    traceback, and of its cause and context, recursively.

    Why: a failed fetch's traceback holds the frames that read and parsed the body (their
    ``body`` locals: up to ``max_response_bytes``), and ``asyncio.wait_for``'s frame holds
    the task that holds the exception, a reference cycle that only the cyclic collector
    frees. With the production GC settings (:func:`aifinops.offload.tune_gc`) it never
    does: the runtime's after-refresh step (``assemble.AFTER_REFRESH``) freezes it, and every
    failed fetch of a large answer kept its body (RSS 78 MiB to 2 GiB in 16 refreshes).
    Frames still running (the caller's) are left alone."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)
            e.__traceback__ = None
        todo += [e.__cause__, e.__context__]
        if isinstance(e, BaseExceptionGroup):
            todo += e.exceptions
