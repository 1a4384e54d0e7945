"""The JSON API (``/api/v1/...``): executive summary, budgets, recommendations, chargeback,
what-if ROI and routing, and the OpenAPI document.

Every read route answers from the current finance figures
(:class:`~aifinops.model.finance.FinanceReport`, which the refresh's snapshot holds beside its
report), the same object the ``/metrics`` page was rendered from, so the API and ``/metrics``
always agree. Requests and responses are the pydantic models of
:mod:`aifinops.web.schemas`; unknown query parameters and body fields are rejected.

Errors are ``{"error": {"code", "message", "field"}}`` (:class:`ErrorResponse`):

=====  ====================  ==========================================================
400    ``invalid_request``   a query parameter is malformed, unknown or repeated; the body
                             is not JSON
404    ``not_found``         unknown route, initiative, workload, or a period the exporter
                             holds no dollars for
405    ``invalid_request``   wrong method for the route
413    ``invalid_request``   body over 1 MiB
422    ``invalid_request``   the body breaks the schema (``field`` names the first bad one)
401    ``unauthorized``      see :mod:`aifinops.web.auth`; 403 ``forbidden`` likewise
503    ``unavailable``       no report yet (the first refresh is pending)
=====  ====================  ==========================================================

Chargeback (``GET /api/v1/chargeback``): dollars per tenant and resource in the period,
rounded to the cent by the largest-remainder method so rows sum exactly to the total;
``format=csv`` is a plain CSV, ``format=focus`` a FOCUS 1.2 cost-and-usage CSV. On the
allocation basis they come from the books of record (``source: opencost``): OpenCost's daily
allocation sets for infrastructure and the exporter's own ledger for API tokens and
self-hosted charge-back (:func:`aifinops.model.finance.period_books`); the month in progress
is exactly the month to date of ``/api/v1/summary`` and ``/api/v1/budgets``, and every whole
month ``sources.opencost.history_months`` reaches back is answered. The usage basis, and any
month OpenCost's sets do not cover, come from the exporter's accrued counters
(``source: exporter_ledger``: the increments of ``aifinops_tenant_cost_usd_total``, which
hold only what this process, and its state file, saw; the charge period starts when this
process's ledger began the month, or at the month start for a ledger restored from a state
file, whose start is not recorded).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import structlog
from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping
from pydantic import BaseModel, ValidationError

from aifinops.exposition.chargeback_files import FocusParties, chargeback_csv, focus_csv
from aifinops.model.chargeback import Chargeback, build_chargeback
from aifinops.model.energy import EnergyReport, EnergyUse, month_use
from aifinops.model.finance import FinanceContext, FinanceReport
from aifinops.model.recommend import filter_recommendations
from aifinops.model.report import Report
from aifinops.model.roi import compute_roi
from aifinops.model.routing import optimize_workload
from aifinops.offload import run_side
from aifinops.settings import Settings
from aifinops.web.auth import TokenStore
from aifinops.web.gate import API_TOKENS as API_TOKENS
from aifinops.web.gate import BUDGETS_PATH as BUDGETS_PATH
from aifinops.web.gate import CHARGEBACK_FORMATS as CHARGEBACK_FORMATS
from aifinops.web.gate import CHARGEBACK_PATH as CHARGEBACK_PATH
from aifinops.web.gate import OPENAPI_PATH as OPENAPI_PATH
from aifinops.web.gate import PREFIX as PREFIX
from aifinops.web.gate import PREPARABLE as PREPARABLE
from aifinops.web.gate import PREPARE_WINDOW_S as PREPARE_WINDOW_S
from aifinops.web.gate import PUSH_TOKEN_CONFIGURED as PUSH_TOKEN_CONFIGURED
from aifinops.web.gate import RECOMMENDATIONS_PATH as RECOMMENDATIONS_PATH
from aifinops.web.gate import SUMMARY_PATH as SUMMARY_PATH
from aifinops.web.gate import USAGE_PATH as USAGE_PATH
from aifinops.web.gate import ApiError as ApiError
from aifinops.web.gate import CachedAnswer as CachedAnswer
from aifinops.web.gate import PreparedAnswers as PreparedAnswers
from aifinops.web.gate import api_middleware as api_middleware
from aifinops.web.gate import error_response as error_response
from aifinops.web.openapi import openapi_document
from aifinops.web.schemas import (
    BudgetsResponse,
    ChargebackQuery,
    ChargebackResponse,
    RecommendationsQuery,
    RecommendationsResponse,
    RoiCalculateRequest,
    RoiResponse,
    RoutingOptimizeRequest,
    RoutingResponse,
    SummaryResponse,
    error_from_validation,
)

log = structlog.get_logger("aifinops.web.api")

WHAT_IF_PATHS = frozenset({f"{PREFIX}/roi/calculate", f"{PREFIX}/routing/optimize"})
MAX_BODY_BYTES = 1024 * 1024
TOP_SAVINGS = 5

FinanceGetter = Callable[[], FinanceReport | None]
ContextGetter = Callable[[], FinanceContext | None]
ReportGetter = Callable[[], Report | None]
EnergyGetter = Callable[[], EnergyReport | None]

API_FINANCE: web.AppKey[FinanceGetter] = web.AppKey("api_finance")
API_CONTEXT: web.AppKey[ContextGetter] = web.AppKey("api_finance_context")
API_REPORT: web.AppKey[ReportGetter] = web.AppKey("api_report")
# The same snapshot's measured electricity (energy.enabled), beside the finance report.
API_ENERGY: web.AppKey[EnergyGetter] = web.AppKey("api_energy")
API_READ_CACHE: web.AppKey[ReadCache] = web.AppKey("api_read_cache")
# The current snapshot's PreparedAnswers (the refresh's ``prepare`` hook), or None.
PreparedGetter = Callable[[], object]
API_PREPARED: web.AppKey[PreparedGetter] = web.AppKey("api_prepared")
Handler = Callable[[web.Request], Awaitable[web.Response]]
API_SETTINGS = web.AppKey("api_settings", Settings)

CSV_TYPE = "text/csv"
M = TypeVar("M", bound=BaseModel)


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def _all_finite(node: Any) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, dict):
        return all(_all_finite(v) for v in node.values())
    if isinstance(node, list | tuple):
        return all(_all_finite(v) for v in node)
    return True


def _what_if(compute: Callable[[], BaseModel]) -> web.Response:
    """A calculator's answer; inputs so large that a figure overflows (schema-valid floats
    near 1e308) are a 422, never a 5xx or a non-JSON ``Infinity``."""
    try:
        model = compute()
    except (OverflowError, ZeroDivisionError, ValueError) as exc:
        raise ApiError(422, "invalid_request", f"inputs out of range: {exc}") from None
    doc = model.model_dump(mode="json")
    if not _all_finite(doc):
        raise ApiError(422, "invalid_request", "inputs out of range: a figure overflowed")
    return web.json_response(doc)


# --- request parsing -------------------------------------------------------------------------


Query = MultiMapping[str]


def _query(query: Query, aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Query parameters as a dict, ``aliases`` mapping public names to model fields; a
    repeated parameter is a 400."""
    out: dict[str, str] = {}
    names = aliases or {}
    for key in query:
        values = query.getall(key)
        if len(values) > 1:
            raise ApiError(400, "invalid_request", f"{key} given more than once", key)
        out[names.get(key, key)] = values[0]
    return out


def _validate_query(
    model: type[M], data: Mapping[str, str], public: Mapping[str, str] | None = None
) -> M:
    """``data`` validated as ``model``; a 400 naming the (public) parameter otherwise."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        err = error_from_validation(exc).error
        field = err.field
        if field is not None and public:
            field = public.get(field, field)
        raise ApiError(400, "invalid_request", err.message, field) from None


async def _body(request: web.Request, model: type[M]) -> M:
    """The JSON body validated as ``model``: 400 when it is not JSON, 413 when too large,
    422 naming the first bad field."""
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "invalid_request", f"body over {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_request", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_request", "body must be a JSON object")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        err = error_from_validation(exc).error
        raise ApiError(422, "invalid_request", err.message, err.field) from None


@dataclass(frozen=True, slots=True)
class ReadView:
    """What a read answer is built from: one snapshot's finance figures, report and energy
    (read together on the event loop, so never two refreshes' halves), and the settings."""

    finance: FinanceReport | None
    report: Report | None
    energy: EnergyReport | None
    settings: Settings | None

    @classmethod
    def of(cls, app: web.Application) -> ReadView:
        """The app's current snapshot, as the getters given to :func:`register_api` see it."""
        return cls(
            app[API_FINANCE](),
            app[API_REPORT]() if API_REPORT in app else None,
            app[API_ENERGY]() if API_ENERGY in app else None,
            app.get(API_SETTINGS),
        )


def _finance(request: web.Request | ReadView) -> FinanceReport:
    finance = request.finance if isinstance(request, ReadView) else request.app[API_FINANCE]()
    if finance is None:
        raise ApiError(
            503,
            "unavailable",
            "no report yet: the first refresh is pending",
            headers={"Retry-After": "10"},
        )
    return finance


def _context(request: web.Request) -> FinanceContext:
    ctx = request.app[API_CONTEXT]()
    return ctx if ctx is not None else FinanceContext()


# --- handlers --------------------------------------------------------------------------------


def _summary(view: ReadView, query: Query) -> web.Response:
    """``GET /api/v1/summary``: spend month to date and its forecast (the whole cluster),
    budget state per tenant, ROI per initiative, idle GPU cost, the top savings."""
    _query_empty(query)
    f = _finance(view)
    spend = f.cluster.spend_usd if f.cluster is not None else math.fsum(f.month_to_date.values())
    return _json(
        SummaryResponse.build(
            now=f.now,
            spend_month_to_date_usd=spend,
            idle_cost_usd_per_hour=f.idle_cost_usd_per_hour,
            budgets=f.budgets,
            initiatives=f.initiatives,
            recommendations=f.recommendations,
            forecast=f.cluster,
            top=TOP_SAVINGS,
        )
    )


def _query_empty(query: Query) -> None:
    """A route without parameters rejects any (a typo should not pass silently)."""
    if query:
        key = next(iter(query))
        raise ApiError(400, "invalid_request", "unknown field", key)


def _budgets(view: ReadView, query: Query) -> web.Response:
    """``GET /api/v1/budgets``: every evaluated budget and the month to date per tenant."""
    _query_empty(query)
    f = _finance(view)
    return _json(
        BudgetsResponse.build(
            now=f.now,
            time_zone=f.tz,
            period=f.period,
            month_start=f.month_start,
            budgets=f.budgets,
            tenant_month_to_date=dict(f.tenant_month_to_date),
            notes=f.budget_notes,
            energy=view.energy,
        )
    )


RECOMMENDATION_ALIASES = {"min_saving": "min_saving_usd"}
RECOMMENDATION_PUBLIC = {"min_saving_usd": "min_saving"}


def _recommendations(view: ReadView, q: Query) -> web.Response:
    """``GET /api/v1/recommendations?tenant=&kind=&min_saving=`` (USD per month,
    inclusive). An unknown tenant is no error: the list is empty."""
    query = _validate_query(
        RecommendationsQuery,
        _query(q, RECOMMENDATION_ALIASES),
        RECOMMENDATION_PUBLIC,
    )
    f = _finance(view)
    recs = filter_recommendations(f.recommendations, query.tenant, query.kind, query.min_saving_usd)
    return _json(RecommendationsResponse.from_model(recs, f.now))


def _chargeback(view: ReadView, q: Query) -> web.Response:
    """``GET /api/v1/chargeback?period=YYYY-MM&format=json|csv|focus&basis=&share_idle=
    &share_unallocated=``; ``period`` defaults to the current month."""
    query, cb = _chargeback_of(view, q)
    return _chargeback_file(view, query, cb)


def _chargeback_of(view: ReadView, q: Query) -> tuple[ChargebackQuery, Chargeback]:
    """The chargeback query (validated) and its rows, whatever the format."""
    data = _query(q)
    f = _finance(view)
    report = view.report
    data.setdefault("period", f.period)
    query = _validate_query(ChargebackQuery, data)
    # How each tenant's GPU dollars are split now: said for the month in progress only (the
    # books of record do not carry it for past months).
    splits: dict[str, dict[str, float]] = {}
    if report is not None and query.period == f.period:
        for (tenant, method), usd in report.cost.method_rates.get(query.basis, {}).items():
            splits.setdefault(tenant, {})[method] = usd
    books = f.books.get(query.period) if query.basis == "allocation" else None
    if books is not None:
        dollars: Mapping[tuple[str, str], float] | None = books.dollars
        quantities = books.quantities
        covered: tuple[float, float] | None = (books.covered_start, books.covered_end)
        source = "opencost"
    else:
        dollars = f.period_dollars(query.period, query.basis)
        quantities, covered, source = {}, None, "exporter_ledger"
        since = f.ledger_since.get(query.period)
        if since is not None:  # the charge period is what this process's ledger holds
            covered = (since, f.now)
    if dollars is None:
        kept = ", ".join(sorted({*f.periods, *f.books})) or "none"
        raise ApiError(
            404,
            "not_found",
            f"neither OpenCost's history nor the exporter's ledger holds {query.period} "
            f"(periods held: {kept})",
            "period",
        )
    cb = build_chargeback(
        dollars,
        query.period,
        f.tz,
        basis=query.basis,
        share_idle=query.share_idle,
        share_unallocated=query.share_unallocated,
        quantities=quantities,
        now=f.now,
        covered=covered,
        source=source,
        splits=splits,
        energy=_energy_of(view.energy, query.period),
    )
    return query, cb


def _chargeback_file(view: ReadView, query: ChargebackQuery, cb: Chargeback) -> web.Response:
    """``cb`` in the query's format (JSON, CSV or FOCUS CSV)."""
    if query.format == "json":
        return _json(ChargebackResponse.from_model(cb))
    text = chargeback_csv(cb) if query.format == "csv" else focus_csv(cb, _parties(view))
    name = f"chargeback-{query.period}{'-focus' if query.format == 'focus' else ''}.csv"
    return web.Response(
        text=text,
        content_type=CSV_TYPE,
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _energy_of(e: EnergyReport | None, period: str) -> dict[str, EnergyUse] | None:
    """Each tenant's measured electricity in ``period``: this month's, when energy is on (the
    exporter keeps no energy history of past months)."""
    return month_use(e) if e is not None and e.month == period else None


def _parties(view: ReadView) -> FocusParties:
    """The FOCUS export's billing account, provider and cluster from ``chargeback``."""
    settings = view.settings
    assert settings is not None  # register_api sets it
    c = settings.chargeback
    return FocusParties(
        billing_account_id=c.billing_account_id,
        billing_account_name=c.billing_account_name,
        provider_name=c.provider_name,
        publisher_name=c.publisher_name,
        invoice_issuer_name=c.invoice_issuer_name,
        cluster=c.cluster or settings.state.cluster_name,
    )


async def handle_roi(request: web.Request) -> web.Response:
    """``POST /api/v1/roi/calculate``: a what-if. With ``initiative``, its configured
    benefits, measured ai_cost (so far), period and elapsed fraction are the defaults and the
    request's fields replace them; without, the request's ``benefits`` and ``ai_cost`` over
    ``period_days`` (default 30), fully realized."""
    req = await _body(request, RoiCalculateRequest)
    f = _finance(request)
    if req.initiative is None:
        benefits, ai_cost = req.benefits, req.ai_cost
        assert benefits is not None and ai_cost is not None  # the schema checks it
        return _what_if(
            lambda: RoiResponse.from_result(
                compute_roi(benefits.to_model(), ai_cost.to_model(), req.period_days or 30.0, 1.0)
            )
        )
    base = f.initiative(req.initiative)
    configured = next((i for i in _context(request).initiatives if i.name == req.initiative), None)
    if base is None or configured is None:
        raise ApiError(404, "not_found", f"no initiative named {req.initiative!r}", "initiative")
    return _what_if(
        lambda: RoiResponse.from_result(
            compute_roi(
                req.benefits.to_model() if req.benefits else configured.benefits,
                req.ai_cost.to_model() if req.ai_cost else base.result.ai_cost,
                req.period_days or base.result.period_days,
                base.result.realized_fraction,
            ),
            base,
        )
    )


async def handle_routing(request: web.Request) -> web.Response:
    """``POST /api/v1/routing/optimize``: rank candidates for a configured workload (the
    request's fields replace its configuration; its observed monthly token volume is the
    default) or for ad-hoc candidates (volume 0 unless given)."""
    req = await _body(request, RoutingOptimizeRequest)
    f = _finance(request)
    base = _context(request).workload(req.workload) if req.workload else None
    if req.workload is not None and base is None and req.candidates is None:
        raise ApiError(404, "not_found", f"no workload named {req.workload!r}", "workload")
    workload = req.to_workload(base)
    tokens = req.monthly_tokens
    if tokens is None:
        tokens = f.monthly_tokens.get(base.name, 0.0) if base is not None else 0.0
    volume = tokens
    return _what_if(
        lambda: RoutingResponse.from_result(
            optimize_workload(workload, f.prices, f.latencies, volume)
        )
    )


async def handle_openapi(request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of every route."""
    return web.json_response(
        openapi_document(push_enabled=request.app[API_SETTINGS].tokens.push.enabled)
    )


# Answers kept per report (see ReadCache): at most this many, and this many body bytes.
READ_CACHE_ENTRIES = 64
READ_CACHE_BYTES = 32 * 1024 * 1024

ReadBuild = Callable[[ReadView, Query], web.Response]


def prepare_answers(
    view: ReadView,
    wanted: Collection[str] = PREPARABLE,
    max_entries: int = READ_CACHE_ENTRIES,
    max_bytes: int = READ_CACHE_BYTES,
) -> PreparedAnswers | None:
    """The answers to the ``wanted`` requests among :data:`PREPARABLE` over ``view``, so
    that the first request after a refresh is not built on the side thread while the next
    refresh holds the interpreter.

    Memory: at most 7 keys (6 bodies: the bare chargeback is the JSON one; ~11 MB at 10k
    GPUs, FOCUS 5 MB of it), within the cache's own ``max_entries`` and ``max_bytes``: an
    answer that would pass either is left out (built on request instead), so the prepared
    set never holds more than the cache may. An answer that is an error (a 404 period) is
    left out too; anything else raised is the caller's (the refresh counts it, stage
    ``prepare``, and the API builds on request)."""
    finance = view.finance
    if finance is None:
        return None
    answers: dict[str, CachedAnswer] = {}
    used = 0

    def keep(path: str, build: Callable[[], web.Response]) -> None:
        nonlocal used
        if path not in wanted:
            return
        try:
            built = build()
        except ApiError:
            return
        if built.status != 200 or not isinstance(built.body, bytes):
            return
        answer = CachedAnswer.of(built)
        if len(answers) < max_entries and used + len(answer.body) <= max_bytes:
            answers[path] = answer
            used += len(answer.body)

    empty: Query = MultiDictProxy(MultiDict())
    keep(SUMMARY_PATH, lambda: _summary(view, empty))
    keep(BUDGETS_PATH, lambda: _budgets(view, empty))
    keep(RECOMMENDATIONS_PATH, lambda: _recommendations(view, empty))
    if not any(path.startswith(CHARGEBACK_PATH) for path in wanted):
        return PreparedAnswers(finance, answers)
    try:
        query, cb = _chargeback_of(view, empty)
    except ApiError:
        return PreparedAnswers(finance, answers)
    # One chargeback, three files: the format does not change the rows.
    for fmt in CHARGEBACK_FORMATS:
        as_fmt = query.model_copy(update={"format": fmt})
        keep(f"{CHARGEBACK_PATH}?format={fmt}", partial(_chargeback_file, view, as_fmt, cb))
    json_answer = answers.get(f"{CHARGEBACK_PATH}?format=json")
    json_query = query.model_copy(update={"format": "json"})
    keep(  # format defaults to json: the same bytes
        CHARGEBACK_PATH,
        (lambda: json_answer.response())
        if json_answer is not None
        else partial(_chargeback_file, view, json_query, cb),
    )
    return PreparedAnswers(finance, answers)


class ReadCache:
    """The read routes' answers for the current report, keyed by path and query string.

    The read routes are pure functions of the report and the request, and the report changes
    once per refresh; at fleet scale an answer over 2,000 tenants takes tens of ms of Python
    to build. The default requests' answers come ready with the snapshot
    (:class:`PreparedAnswers`, built by the refresh before it publishes) and are installed
    when the cache first sees that snapshot's report, so a swap never leaves the next
    request to build one. Any other distinct request is built once per report, on the side
    thread (:func:`aifinops.offload.run_side`) so that ``/metrics`` keeps being served
    meanwhile, and later identical requests get the same bytes. A new report empties the
    cache; it is bounded in entries and bytes (oldest out first: the prepared answers go
    before any built since). Errors (4xx) are not cached. Which requests are prepared:
    those of :data:`PREPARABLE` asked for in the last :data:`PREPARE_WINDOW_S` seconds
    (:meth:`wanted`).
    """

    def __init__(
        self,
        max_entries: int = READ_CACHE_ENTRIES,
        max_bytes: int = READ_CACHE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._report: tuple[int, float] | None = None
        self._entries: dict[str, CachedAnswer] = {}
        self._bytes = 0
        # Answers built on request (misses), and reports whose prepared answers were used.
        self.built = 0
        self.prepared_reports = 0
        # When each preparable request was last asked for. Replaced, never changed in place:
        # the refresh's worker thread reads it (wanted()) while the loop serves.
        self._clock = clock
        self._asked: Mapping[str, float] = {}

    def wanted(self) -> frozenset[str]:
        """The preparable requests asked for within :data:`PREPARE_WINDOW_S` (any thread)."""
        asked, now = self._asked, self._clock()
        return frozenset(path for path, at in asked.items() if now - at <= PREPARE_WINDOW_S)

    async def answer(self, request: web.Request, build: ReadBuild) -> web.Response:
        # The snapshot's parts are read here, on the event loop, all at once: the answer is
        # built from one refresh even if the next one swaps in while it is being built.
        view = ReadView.of(request.app)
        finance = view.finance
        if finance is None:
            return build(view, request.query)  # 503, no report yet: nothing to cache
        # id() alone could be reused by the next report once this one is freed; with the
        # report's timestamp the pair is unique per refresh.
        key = (id(finance), finance.now)
        if key != self._report:
            self._report, self._entries, self._bytes = key, {}, 0
            prepared = request.app[API_PREPARED]() if API_PREPARED in request.app else None
            if isinstance(prepared, PreparedAnswers) and prepared.finance is finance:
                self.prepared_reports += 1
                for path, ready in prepared.answers.items():
                    self._store(path, ready)
        if request.path_qs in PREPARABLE:
            self._asked = {**self._asked, request.path_qs: self._clock()}
        cached = self._entries.get(request.path_qs)
        if cached is None:
            self.built += 1
            built = await run_side(build, view, request.query)
            if built.status != 200 or not isinstance(built.body, bytes):
                return built
            cached = CachedAnswer.of(built)
            if key == self._report:  # not if a refresh swapped the report meanwhile
                self._store(request.path_qs, cached)
        return cached.response()

    def _store(self, key: str, answer: CachedAnswer) -> None:
        if len(answer.body) > self._max_bytes:
            return
        self._entries[key] = answer
        self._bytes += len(answer.body)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._bytes -= len(self._entries.pop(oldest).body)


def _read_route(build: ReadBuild) -> Handler:
    """An aiohttp handler answering ``build(view, query)`` through the app's
    :class:`ReadCache`."""

    async def handler(request: web.Request) -> web.Response:
        return await request.app[API_READ_CACHE].answer(request, build)

    handler.__doc__ = build.__doc__
    handler.__name__ = f"handle{build.__name__}"
    return handler


handle_summary = _read_route(_summary)
handle_budgets = _read_route(_budgets)
handle_recommendations = _read_route(_recommendations)
handle_chargeback = _read_route(_chargeback)


def register_api(
    app: web.Application,
    settings: Settings,
    finance: FinanceGetter,
    context: ContextGetter,
    report: ReportGetter = lambda: None,
    energy: EnergyGetter = lambda: None,
    prepared: PreparedGetter = lambda: None,
) -> None:
    """Add the API routes and the auth/error middleware to ``app`` (before it starts).
    ``prepared`` gives the current snapshot's :class:`PreparedAnswers` (see
    :func:`answer_preparer`). Raises :class:`~aifinops.settings.ConfigError` when a
    configured token cannot be read."""
    app[API_TOKENS] = TokenStore.from_settings(settings.api)
    app[API_FINANCE] = finance
    app[API_CONTEXT] = context
    app[API_REPORT] = report
    app[API_ENERGY] = energy
    app[API_PREPARED] = prepared
    app[API_SETTINGS] = settings
    app[API_READ_CACHE] = ReadCache()
    app[PUSH_TOKEN_CONFIGURED] = settings.tokens.push.bearer_token_file is not None
    app.middlewares.append(api_middleware)
    app.router.add_get(f"{PREFIX}/summary", handle_summary)
    app.router.add_get(f"{PREFIX}/budgets", handle_budgets)
    app.router.add_get(f"{PREFIX}/recommendations", handle_recommendations)
    app.router.add_get(f"{PREFIX}/chargeback", handle_chargeback)
    app.router.add_post(f"{PREFIX}/roi/calculate", handle_roi)
    app.router.add_post(f"{PREFIX}/routing/optimize", handle_routing)
    app.router.add_get(OPENAPI_PATH, handle_openapi)


def answer_preparer(
    settings: Settings, cache: ReadCache
) -> Callable[[Report | None, FinanceReport | None], PreparedAnswers | None]:
    """The refresh's ``prepare`` hook: a report and its finance figures to the
    :class:`PreparedAnswers` of the requests ``cache`` says are wanted (on the refresh's CPU
    worker, before the snapshot is published). The energy is the report's own, as
    ``web/app.py``'s energy getter reads it."""

    def prepare(report: Report | None, finance: FinanceReport | None) -> PreparedAnswers | None:
        wanted = cache.wanted()
        if not wanted:
            return None
        energy = report.energy if report is not None else None
        return prepare_answers(ReadView(finance, report, energy, settings), wanted)

    return prepare
