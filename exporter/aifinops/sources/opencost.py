"""Cost allocation per pod from OpenCost's ``/allocation/compute`` API.

The rate query, once per refresh: the configured window, aggregated by ``namespace,pod``,
accumulated into one set, with OpenCost's ``__idle__`` row included and not shared out (the
model decides how idle cost is shown). :func:`parse_allocation_response` is pure and reads the
JSON that OpenCost's ``AllocationJSON`` (``core/pkg/opencost/allocation_json.go``) writes:

* costs ``cpuCost``, ``gpuCost``, ``ramCost``, ``pvCost``, ``networkCost`` and
  ``loadBalancerCost``, each with its ``*CostAdjustment``; ``sharedCost`` and ``externalCost``
  have none;
* GPU requests: since opencost PR #2963 (2024) they are nested in ``gpuAllocation``
  (``gpuRequestAverage``, ``gpuUsageAverage``, ``isGPUShared``, ``gpuDevice``, ``gpuModel``,
  ``gpuUUID``; the averages may be ``null``), earlier versions put ``gpuRequestAverage`` and
  ``gpuUsageAverage`` at the top level, and ``gpuCount`` is always there;
* ``properties`` (``AllocationProperties``): ``cluster``, ``node``, ``namespace``, ``pod``,
  ``labels``, ``namespaceLabels``, ... with label keys sanitized the Prometheus way;
* numbers that were NaN or ±Inf inside OpenCost are written as ``null``.

The month-to-date query (:class:`OpenCostMonthSource`, every
``budgets.refresh_interval_seconds``): ``window=<start>,<end>`` as an RFC 3339 pair with
``step=1d`` and ``accumulate=false``, which OpenCost answers with one allocation set per
24-hour step from the window start (the last set partial, up to now);
:func:`parse_allocation_sets` keeps the sets apart. It is aggregated server-side by what
tenancy reads (see :func:`month_aggregation`), so its size follows tenants, not pods, and it
is asked a few days at a time (:mod:`aifinops.model.calendar`: its segments and pieces): the
current month, ``history_months`` whole months before it (chargeback) and the forecast's
look-back, each piece far under ``max_response_bytes``.

Both fetches decode while the body arrives (:func:`stream_sets`): the answer is cut into
pieces of whole rows (:class:`~aifinops.sources.jsonchunks.SetStream`), each decoded on the
CPU worker in one short call, so a 44 MB answer never exists whole in memory and a scrape
never waits for more than one piece. Any surprise in the body falls back to fetching it
again and decoding it whole, which gives exactly what the parse functions give.

One decoder reads the format: msgspec into the typed rows below (:func:`_decode_document`,
:func:`_typed_rows`), whole or a piece at a time. The stdlib reference decoder it was checked
against lives in the tests (``tests/sources/opencost_reference.py``), as the oracle.

Each row's label maps hold only the label keys the configuration reads (:class:`LabelKeys`,
listed by ``assemble.allocation_label_keys``): at fleet scale the pods' full maps were most
of the rows' memory, and nothing else reads them. ``None`` keeps them whole (the decoder the
tests compare the kept rows with).
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import msgspec
import structlog

from aifinops.model.calendar import DAY_SECONDS, month_pieces, month_query_segments
from aifinops.model.inputs import EMPTY_LABELS, Allocation, AllocationSet, DailyAllocationSets
from aifinops.model.tenancy import MonthAggregation
from aifinops.model.tenancy import month_aggregation as tenancy_aggregation
from aifinops.settings import OpenCostSettings, TenancySettings
from aifinops.settings_finance import BudgetsSettings
from aifinops.sources.base import (
    CpuRunner,
    Slot,
    SourceError,
    accept_encoding,
    check_response,
    get_bytes,
    read_bearer_token,
    read_body,
    transport_error,
)
from aifinops.sources.jsonchunks import Buffer, SetStream, Unsplittable, decode_pieces
from aifinops.text import loads_json

log = structlog.get_logger("aifinops.sources.opencost")
T = TypeVar("T")

# The query every refresh sends; settings.params are added on top and may override these.
# Pod aggregation is needed here: the cost model joins each pod's row with its GPUs' DCGM
# samples (the usage basis), and selects serving pods and spot-tolerant pods by their labels.
ALLOCATION_QUERY: dict[str, str] = {
    "aggregate": "namespace,pod",
    "includeIdle": "true",
    "shareIdle": "false",
    "accumulate": "true",
}


class OpenCostSource:
    """``GET {url}/allocation/compute`` for the configured window; see the module doc."""

    name = "opencost"
    slot = Slot.ALLOCATIONS
    local = False
    min_interval_seconds = 0.0
    first_read_baseline = False
    targets = None

    def __init__(
        self, settings: OpenCostSettings, *, run: CpuRunner, label_keys: LabelKeys | None = None
    ) -> None:
        self._settings = settings
        self._streamer = _Streamer("opencost", run)
        self._label_keys = label_keys

    async def fetch(self, client: httpx.AsyncClient) -> AllocationSet:
        s = self._settings
        if not s.url:
            raise SourceError("invalid", "the opencost source has no url")
        request = _Request(
            url=f"{s.url.rstrip('/')}/allocation/compute",
            params={"window": s.window, **ALLOCATION_QUERY, **s.params},
            timeout=s.timeout_seconds,
            max_bytes=s.max_response_bytes,
            # Read on every fetch: Kubernetes rotates projected service-account tokens.
            headers=read_bearer_token(s.bearer_token_file),
        )
        hours = s.window_hours
        keys = self._label_keys
        allocations = await self._streamer.fetch(
            client,
            request,
            lambda sets: _accumulated(sets.rows, hours),
            lambda body: parse_allocation_response(body, hours, keys),
            memo=_Memo(keys),
        )
        if not allocations.allocations:
            # OpenCost answers an empty set while it (re)builds its cache after a restart; a
            # cluster with any cost has at least an __idle__ row. Keep the last good data.
            raise SourceError("invalid", "empty answer: no allocations in the window")
        return allocations


def parse_allocation_response(
    body: bytes, window_hours: float, label_keys: LabelKeys | None = None
) -> AllocationSet:
    """Parse an ``/allocation/compute`` body into rows over a window of ``window_hours``.

    The body is ``{"code": 200, "data": [{<key>: <allocation>, ...}, ...]}``. ``data`` holds
    one set per step; with ``accumulate=true`` there is one. Several sets are merged by key:
    costs, ``minutes`` and ``gpuHours`` are summed, the GPU request and usage averages are
    weighted by minutes. A ``null`` set or ``data`` is an empty one.

    Per row, each cost is ``*Cost + *CostAdjustment`` in dollars over the window; ``null``
    numbers count as 0 (``gpu_usage_average`` stays ``None``), and a negative or non-finite
    cost or quantity is clamped to 0, because an adjustment can exceed the cost it corrects
    and the model assumes no negative dollars (the count of such clamps is not kept yet).
    Row names are the set's keys (``namespace/pod``, ``__idle__``, ``cluster/__idle__``,
    ``__unallocated__``, ...) and are kept as they are.

    With ``label_keys``, each row's ``labels`` and ``namespace_labels`` hold only those keys
    (:class:`LabelKeys`); a value of another key is then not read at all, not even checked
    to be a string. Several sets merged keep the latest set's map that holds a kept key
    (without keys: the latest non-empty map).

    Raises :class:`SourceError` ``parse`` for a body that is not JSON and ``invalid`` for a
    ``code`` other than 200 or JSON of another shape (a number that is a string, labels that
    are not strings, ...).
    """
    return _accumulated(_whole_sets(body, None, False, _Memo(label_keys)).rows, window_hours)


def _accumulated(sets: list[dict[str, Allocation]], window_hours: float) -> AllocationSet:
    """One row per key over all sets (a later set's row is merged into an earlier one)."""
    if len(sets) == 1:
        return AllocationSet(window_hours=window_hours, allocations=tuple(sets[0].values()))
    rows: dict[str, Allocation] = {}
    for allocation_set in sets:
        for key, row in allocation_set.items():
            seen = rows.get(key)
            rows[key] = row if seen is None else _merge(seen, row)
    return AllocationSet(window_hours=window_hours, allocations=tuple(rows.values()))


@dataclass(slots=True)
class _Sets:
    """Decoded allocation sets in document order: rows by key, and (when asked for) each
    row's ``window.start`` text by key, to date the set."""

    rows: list[dict[str, Allocation]]
    starts: list[dict[str, str]]


def _whole_sets(
    body: bytes, agg: MonthAggregation | None, want_starts: bool, memo: _Memo | None = None
) -> _Sets:
    """Every set of a whole body, decoded (raises :class:`SourceError` like
    :func:`parse_allocation_response`)."""
    out = _Sets([], [])
    memo = memo if memo is not None else _Memo()
    for typed_set in _typed_sets(body, memo.codec):
        out.rows.append(_typed_rows(typed_set, agg, memo))
        out.starts.append(_typed_starts(typed_set) if want_starts else {})
    return out


# --- month to date ------------------------------------------------------------------------

# The month-to-date query: one set per day, not accumulated, idle included and not shared.
# ``window`` is an RFC 3339 pair built per fetch (see :func:`month_query_window`) and
# ``aggregate`` comes from the tenancy rules (see :func:`month_aggregation`).
MONTH_QUERY: dict[str, str] = {
    "step": "1d",
    "accumulate": "false",
    "includeIdle": "true",
    "shareIdle": "false",
}


def month_aggregation(
    tenancy: TenancySettings | None, settings: OpenCostSettings
) -> MonthAggregation:
    """The month query's aggregation for these tenancy rules and this source's settings
    (the rules themselves: :func:`aifinops.model.tenancy.month_aggregation`)."""
    return tenancy_aggregation(
        None if tenancy is None else tenancy.pod_label_keys,
        pod=settings.month_aggregation == "pod",
        share_split_even=settings.params.get("shareSplit", "").strip().lower() == "even",
    )


def rfc3339_utc(ts: float) -> str:
    """Unix seconds → ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds, rounded down)."""
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_allocation_sets(
    body: bytes,
    start: float,
    end: float,
    step_seconds: float = DAY_SECONDS,
    aggregation: MonthAggregation | None = None,
    label_keys: LabelKeys | None = None,
) -> DailyAllocationSets:
    """Parse an ``/allocation/compute`` body asked with ``step`` and ``accumulate=false``:
    one :class:`AllocationSet` per step, in order.

    OpenCost (``QueryAllocation``) builds the sets from the window start in steps of
    ``step``; a set's start is read from its rows' ``window.start`` when present, else it is
    ``start + index × step``. Each set ends one step later or at ``end`` (the last, partial
    day), and its ``window_hours`` is that span. Rows are parsed as
    :func:`parse_allocation_response` parses them; a set with no rows stays (a day with no
    spend is 0, not unknown). With an ``aggregation`` by labels, rows are named and labelled
    from their keys (:meth:`MonthAggregation.identity`). Raises :class:`SourceError` like
    that function, and keeps only ``label_keys`` as it does.
    """
    memo = _Memo(label_keys)
    return _daily_sets(_whole_sets(body, aggregation, True, memo), start, end, step_seconds)


def _daily_sets(
    sets: _Sets,
    start: float,
    end: float,
    step_seconds: float,
    late: list[tuple[float, float]] | None = None,
) -> DailyAllocationSets:
    """The sets dated (see :func:`parse_allocation_sets`). A set that starts at or after
    ``end`` holds no time of the window: it is left out, and when it starts over
    :data:`LATE_TOLERANCE_SECONDS` after ``end`` with dollars in it, ``(its start, its
    dollars)`` is appended to ``late`` for the caller to report."""
    out: list[tuple[float, float, AllocationSet]] = []
    for index, (rows, starts) in enumerate(zip(sets.rows, sets.starts, strict=True)):
        set_start = _set_start(rows, starts)
        if set_start is None:
            set_start = start + index * step_seconds
        set_end = min(set_start + step_seconds, end)
        if set_end <= set_start:
            if late is not None and set_start > end + LATE_TOLERANCE_SECONDS:
                usd = math.fsum(row.total_cost for row in rows.values())
                if usd > 0:
                    late.append((set_start, usd))
            continue
        # Columns: the month's sets are kept for hours and read when a day is folded.
        hours = (set_end - set_start) / 3600.0
        out.append((set_start, set_end, AllocationSet.columnar(hours, rows.values())))
    out.sort(key=lambda s: s[0])
    return DailyAllocationSets(start=start, end=end, sets=tuple(out))


def _set_start(rows: Mapping[str, Allocation], starts: Mapping[str, str]) -> float | None:
    """The ``window.start`` of the set's first row (in key order) that has one."""
    if not starts:
        return None
    for key in rows:
        text = starts.get(key)
        if text is None:
            continue
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return parsed.timestamp()
    return None


def _typed_starts(typed_set: Mapping[str, _Row]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, r in typed_set.items():
        # A start that is not a string does not date its set (the step grid does).
        if r.window is not None and isinstance(r.window.start, str):
            out[key] = r.window.start
    return out


# A set dated this far after the end of the window asked for is not clock jitter.
LATE_TOLERANCE_SECONDS = 300.0
# A piece that ended this long ago is settled (OpenCost's ETL and reconciliation are done):
# its sets are kept and asked again only every CLOSED_REFETCH_SECONDS.
SETTLED_AFTER_SECONDS = 2 * DAY_SECONDS
CLOSED_REFETCH_SECONDS = 6 * 3600.0


class OpenCostMonthSource:
    """``GET {url}/allocation/compute`` for the month to date and ``history_months`` whole
    months before it, in daily sets (see :func:`~aifinops.model.calendar.month_query_segments`,
    :func:`parse_allocation_sets`), named ``opencost_month``, aggregated as
    :func:`month_aggregation` decides for ``tenancy`` (logged once).

    Asked in pieces of ``month_piece_days`` days, one after another, each answer decoded
    while it streams: at fleet scale a whole month is over the default
    ``max_response_bytes`` while a week is well under it (sizes: bench/README.md). A piece
    over the cap is split in
    halves (and later pieces are that size, logged once); a single day over the cap fails
    the fetch with reason ``too_large`` and a message naming the setting. Pieces that ended
    over two days ago are kept and asked again every six hours only, so a steady refresh
    reads the last days. A set dated after the end of its piece (OpenCost's clock or time
    zone ahead of ours) fails the fetch with reason ``invalid`` saying so: such dollars
    cannot be dated within the month, so they are never counted, and the last good data
    stays in use meanwhile.

    The refresh loop runs it at most every ``min_interval_seconds``
    (``budgets.refresh_interval_seconds``): it covers weeks, where the rate query covers an
    hour. ``clock`` gives ``now`` (the demo and the tests pass theirs).
    """

    name = "opencost_month"
    slot = Slot.MONTHLY
    local = False
    targets = None

    def __init__(
        self,
        settings: OpenCostSettings,
        budgets: BudgetsSettings,
        clock: Callable[[], float] = time.time,
        tenancy: TenancySettings | None = None,
        *,
        run: CpuRunner,
        label_keys: LabelKeys | None = None,
    ) -> None:
        self._settings = settings
        self._label_keys = label_keys
        self._budgets = budgets
        self._clock = clock
        self.min_interval_seconds = float(budgets.refresh_interval_seconds)
        self.first_read_baseline = False
        self.aggregation = month_aggregation(tenancy, settings)
        # What a reload that changes it must fetch again at once (Refresher.replace_sources):
        # the month's rows are grouped by the aggregation and keep only these label keys.
        self.reads = (self.aggregation, label_keys)
        self._streamer = _Streamer(self.name, run)
        self.piece_days = settings.month_piece_days
        # (piece start, piece end) -> (fetched at, its sets): settled pieces only.
        self._settled: dict[tuple[float, float], tuple[float, DailyAllocationSets]] = {}
        log.info(
            "opencost_month_aggregation",
            aggregate=self.aggregation.aggregate,
            reason=self.aggregation.reason,
        )

    def _params(self, start: float, end: float) -> dict[str, str]:
        # Configured params (e.g. a filter) are kept; the month query's own ones win.
        return {
            **self._settings.params,
            **MONTH_QUERY,
            "aggregate": self.aggregation.aggregate,
            "window": f"{rfc3339_utc(start)},{rfc3339_utc(end)}",
        }

    def query(self, now: float) -> tuple[float, float, dict[str, str]]:
        """``(start, end, params)`` of the whole window at ``now`` as one request (the
        fetch asks for it in :meth:`pieces`)."""
        segments = self.segments(now)
        start, end = segments[0][0], segments[-1][1]
        return start, end, self._params(start, end)

    def segments(self, now: float) -> list[tuple[float, float]]:
        b = self._budgets
        return month_query_segments(
            now, b.time_zone, b.lookback_days, self._settings.history_months
        )

    def pieces(self, now: float) -> list[tuple[float, float, dict[str, str]]]:
        """``(start, end, params)`` of each request of the fetch at ``now``, oldest first."""
        return [
            (a, b, self._params(a, b)) for a, b in month_pieces(self.segments(now), self.piece_days)
        ]

    async def fetch(self, client: httpx.AsyncClient) -> DailyAllocationSets:
        s = self._settings
        if not s.url:
            raise SourceError("invalid", "the opencost source has no url")
        now = self._clock()
        segments = self.segments(now)
        start, end = segments[0][0], segments[-1][1]
        days = self.piece_days
        # One memo for every piece: a tenant's row key, name and namespace labels are the
        # same every day, so its days share them.
        memo = _Memo(self._label_keys)
        pieces = month_pieces(segments, days)
        # Settled pieces are kept as soon as each arrives: a first fetch of weeks that runs
        # past the refresh loop's bound goes on where it stopped at the next attempt.
        wanted = set(pieces)
        self._settled = {k: v for k, v in self._settled.items() if k in wanted}
        sets: list[tuple[float, float, AllocationSet]] = []
        for piece in pieces:
            cached = self._settled.get(piece)
            if cached is not None and now - cached[0] < CLOSED_REFETCH_SECONDS:
                got = cached[1]
            else:
                got = await self._piece(client, piece[0], piece[1], memo)
                if piece[1] <= now - SETTLED_AFTER_SECONDS and self.piece_days == days:
                    self._settled[piece] = (now, got)
            sets.extend(got.sets)
        sets.sort(key=lambda item: item[0])
        return DailyAllocationSets(start=start, end=end, sets=tuple(sets))

    async def _piece(
        self, client: httpx.AsyncClient, start: float, end: float, memo: _Memo
    ) -> DailyAllocationSets:
        """One piece, split in halves while its answer is over the size cap."""
        s = self._settings
        request = _Request(
            url=f"{(s.url or '').rstrip('/')}/allocation/compute",
            params=self._params(start, end),
            timeout=month_timeout(s),
            max_bytes=s.max_response_bytes,
            headers=read_bearer_token(s.bearer_token_file),
        )
        agg = self.aggregation
        late: list[tuple[float, float]] = []
        try:
            got = await self._streamer.fetch(
                client,
                request,
                lambda sets: _daily_sets(sets, start, end, DAY_SECONDS, late),
                lambda body: _daily_sets(
                    _whole_sets(body, agg, True, memo), start, end, DAY_SECONDS, late
                ),
                agg,
                want_starts=True,
                memo=memo,
            )
        except SourceError as exc:
            if exc.reason != "too_large":
                raise
            days = math.ceil((end - start) / DAY_SECONDS - 1e-9)
            if days <= 1:
                raise SourceError(
                    "too_large",
                    f"one day of the month query ({rfc3339_utc(start)}) is over "
                    f"sources.opencost.max_response_bytes ({s.max_response_bytes} bytes) "
                    f"with aggregate={agg.aggregate}: raise that cap ({exc})",
                ) from None
            half = days // 2
            if half < self.piece_days:
                self.piece_days = half
                log.warning(
                    "opencost_month_pieces_shrunk",
                    piece_days=half,
                    max_response_bytes=s.max_response_bytes,
                    reason=str(exc)[:200],
                )
            middle = start + half * DAY_SECONDS
            first = await self._piece(client, start, middle, memo)
            second = await self._piece(client, middle, end, memo)
            return DailyAllocationSets(start, end, first.sets + second.sets)
        if late:
            usd = math.fsum(v for _, v in late)
            raise SourceError(
                "invalid",
                f"OpenCost answered {len(late)} daily set(s) dated after the window asked for "
                f"(first at {rfc3339_utc(min(t for t, _ in late))}, window end "
                f"{rfc3339_utc(end)}, ${usd:.2f}): its clock or time zone is ahead of the "
                "exporter's; such sets are not counted and the last good month data stays",
            )
        return got


def month_timeout(s: OpenCostSettings) -> float:
    """The month query covers weeks of daily sets: three times the rate query's timeout
    (at most 300 s)."""
    return min(300.0, 3.0 * s.timeout_seconds)


# --- streaming ----------------------------------------------------------------------------

# How many pieces may wait for the CPU worker while the body keeps arriving (each about
# jsonchunks.PIECE_BYTES): the one worker also parses the other sources' answers, and the
# transfer should go on meanwhile rather than wait for it (bench/README.md).
MAX_PENDING_PIECES = 16


@dataclass(frozen=True, slots=True)
class _Request:
    url: str
    params: Mapping[str, str]
    timeout: float
    max_bytes: int
    headers: Mapping[str, str]


class _Restream(Exception):
    """The streamed body could not be decoded piecewise (see :func:`stream_sets`)."""


def _decode_piece(
    piece: bytes, agg: MonthAggregation | None, want_starts: bool, memo: _Memo
) -> tuple[dict[str, Allocation], dict[str, str]]:
    """One piece (a JSON object of whole rows), decoded. Raises :class:`_Restream` for a
    piece that does not decode: the whole body decides the result or which error is
    reported (:func:`_whole_sets`, which also reads text with invalid Unicode)."""
    try:
        typed = memo.codec.decode_rows(piece)
    except ValueError as exc:  # msgspec's DecodeError and ValidationError, UnicodeDecodeError
        raise _Restream(str(exc)[:200]) from None
    rows = _typed_rows(typed, agg, memo)
    return rows, _typed_starts(typed) if want_starts else {}


async def stream_sets(
    client: httpx.AsyncClient,
    request: _Request,
    agg: MonthAggregation | None,
    want_starts: bool,
    run: CpuRunner,
    memo: _Memo | None = None,
) -> _Sets | bytes:
    """GET an ``/allocation/compute`` answer and decode it while it arrives.

    Each piece :class:`SetStream` cuts is decoded by ``run``, the CPU worker (at most
    :data:`MAX_PENDING_PIECES` queued) and the rows land in their set in document order,
    a later duplicate key replacing an earlier one as in a JSON object. Returns the sets, or
    the whole body when its first bytes are not the compact ``{"code":200,...`` shape (the
    caller decodes it whole). Raises :class:`_Restream` when the shape breaks later, or a
    piece does not decode: the bytes before are gone, so the caller fetches it again.
    HTTP failures, the size cap and timeouts raise :class:`SourceError` as
    :func:`~aifinops.sources.base.get_bytes` raises them.
    """
    # accumulate=true: OpenCost answers one set (a second one would fail to decode).
    one_set = request.params.get("accumulate", "").strip().lower() == "true"
    stream = SetStream(_SETS_PREFIX, _ROW_START, one_set=one_set)
    memo = memo if memo is not None else _Memo()
    head: list[bytes] = []  # the bytes until the prefix matched (or all of them, if not)
    whole = False
    sets = _Sets([], [])
    pending: deque[asyncio.Future[tuple[int, tuple[dict[str, Allocation], dict[str, str]]]]]
    pending = deque()

    async def settle(keep: int) -> None:
        while len(pending) > keep:
            index, (rows, starts) = await pending.popleft()
            while len(sets.rows) <= index:
                sets.rows.append({})
                sets.starts.append({})
            sets.rows[index].update(rows)
            sets.starts[index].update(starts)

    async def decode(
        index: int, piece: bytes
    ) -> tuple[int, tuple[dict[str, Allocation], dict[str, str]]]:
        return index, await run(_decode_piece, piece, agg, want_starts, memo)

    def submit(pieces: list[tuple[int, bytes]]) -> None:
        for index, piece in pieces:
            pending.append(asyncio.ensure_future(decode(index, piece)))

    responded = False
    try:
        async with client.stream(
            "GET",
            request.url,
            params=request.params,
            headers=accept_encoding(request.headers),
            timeout=request.timeout,
        ) as resp:
            responded = True
            check_response(resp, request.url, request.max_bytes)
            # Inflated here with the cap applied while inflating (sources/base.py).
            async for chunk in read_body(resp, request.url, request.max_bytes):
                if whole or not stream.started:
                    head.append(chunk)
                    if whole:
                        continue
                    try:
                        pieces = stream.feed(chunk)
                    except Unsplittable:
                        whole = True  # nothing was released: keep every byte instead
                        continue
                    if stream.started:
                        head.clear()
                else:
                    pieces = stream.feed(chunk)
                submit(pieces)
                await settle(MAX_PENDING_PIECES)
        if whole or not stream.started:
            return b"".join(head)
        submit(stream.close())
        await settle(0)
    except httpx.TimeoutException:
        raise SourceError(
            "timeout", f"timed out after {request.timeout:g}s: {request.url}"
        ) from None
    except httpx.TransportError as exc:
        raise transport_error(exc, request.url, responded) from None
    except Unsplittable as exc:
        raise _Restream(str(exc)) from None
    finally:
        head.clear()  # a failure must not keep the body alive through its traceback
        # On any failure, let the pieces already handed to the worker finish (pure, short).
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    while len(sets.rows) < stream.sets:
        sets.rows.append({})
        sets.starts.append({})
    return sets


class _Streamer:
    """Streamed fetch and decode, with the whole-body fallback and its memory.

    A body that breaks the streamed shape midway (or has a piece that does not decode) is
    fetched again and decoded whole by ``parse_whole``, so the result or the error is
    always exactly that function's. When that second decode succeeds, the upstream's answers
    have a shape streaming cannot cut (extra fields, unusual keys): this source then fetches
    whole bodies from now on (logged once), rather than every answer twice. A body that does
    not start as Go's compact encoding writes it (:data:`_SETS_PREFIX`) is decoded whole at
    once, and that is logged once too.
    """

    def __init__(self, name: str, run: CpuRunner) -> None:
        self._name = name
        self._run = run
        self._whole = False
        self._not_compact_logged = False

    async def fetch(
        self,
        client: httpx.AsyncClient,
        request: _Request,
        assemble: Callable[[_Sets], T],
        parse_whole: Callable[[bytes], T],
        agg: MonthAggregation | None = None,
        want_starts: bool = False,
        memo: _Memo | None = None,
    ) -> T:
        if not self._whole:
            try:
                got = await stream_sets(client, request, agg, want_starts, self._run, memo)
            except _Restream as exc:
                reason = str(exc)
            else:
                if isinstance(got, bytes):
                    if not self._not_compact_logged:
                        self._not_compact_logged = True
                        log.info("opencost_not_streamed", source=self._name, bytes=len(got))
                    return await self._run(parse_whole, got)
                return await self._run(assemble, got)
        else:
            reason = ""
        body = await get_bytes(
            client,
            request.url,
            timeout=request.timeout,
            max_bytes=request.max_bytes,
            params=request.params,
            headers=request.headers,
        )
        result = await self._run(parse_whole, body)
        if not self._whole:
            self._whole = True
            log.warning("opencost_whole_bodies", source=self._name, reason=reason[:200])
        return result


# --- the decoder: typed rows ----------------------------------------------------------------
# msgspec decodes straight into these (unknown fields are skipped without building objects),
# so the whole document never exists as Python dicts (figures: bench/README.md). A body these
# types do not fit is OpenCost's error or another shape: SourceError, reason ``invalid``.


class _Gpu(msgspec.Struct, gc=False):
    gpuRequestAverage: float | None = None
    gpuUsageAverage: float | None = None


class _Props(msgspec.Struct, gc=False):
    namespace: str | None = None
    pod: str | None = None
    node: str | None = None
    labels: dict[str, str] | None = None
    namespaceLabels: dict[str, str] | None = None


class _Window(msgspec.Struct, gc=False):
    start: Any = None  # a string to date the set by; anything else is ignored


class _Row(msgspec.Struct, gc=False):
    properties: _Props | None = None
    window: _Window | None = None
    minutes: float | None = None
    gpuHours: float | None = None
    cpuCoreHours: float | None = None
    ramByteHours: float | None = None
    pvByteHours: float | None = None
    gpuCount: float | None = None
    gpuRequestAverage: float | None = None
    gpuUsageAverage: float | None = None
    gpuAllocation: _Gpu | None = None
    cpuCost: float | None = None
    cpuCostAdjustment: float | None = None
    gpuCost: float | None = None
    gpuCostAdjustment: float | None = None
    ramCost: float | None = None
    ramCostAdjustment: float | None = None
    pvCost: float | None = None
    pvCostAdjustment: float | None = None
    networkCost: float | None = None
    networkCostAdjustment: float | None = None
    loadBalancerCost: float | None = None
    loadBalancerCostAdjustment: float | None = None
    sharedCost: float | None = None
    externalCost: float | None = None


class _Doc(msgspec.Struct, gc=False):
    code: Any = None
    message: Any = None
    data: list[dict[str, _Row] | None] | None = None


_decode_doc = msgspec.json.Decoder(_Doc).decode
_decode_rows = msgspec.json.Decoder(dict[str, _Row]).decode


@dataclass(frozen=True, slots=True)
class LabelKeys:
    """The label keys the configuration reads from OpenCost's rows, in every spelling its
    readers try: ``pod`` in a pod's ``labels``, ``namespace`` in its ``namespaceLabels``
    (``assemble.allocation_label_keys`` lists them). A source given these keeps only them in
    each row's maps; given ``None``, it keeps the maps whole."""

    pod: frozenset[str]
    namespace: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Codec:
    """The decoders of one :class:`LabelKeys` (``keep`` false: the maps whole, the types
    above). With keys, the label maps decode into structs with one field per kept key:
    msgspec skips every other key and value without building it (unknown fields), which is
    where the maps' memory and a share of the decode went."""

    decode_doc: Callable[[bytes], _Doc]
    decode_rows: Callable[[bytes], dict[str, _Row]]
    doc_type: type[_Doc]
    keep: bool


_WHOLE = _Codec(_decode_doc, _decode_rows, _Doc, False)


def _labels_struct(name: str, keys: frozenset[str]) -> type:
    # Fields k0, k1, ... named in JSON by the keys (any text); absent is UNSET, and a value
    # that is not a string is refused as in a dict[str, str]. Frozen: hashable, to intern.
    ordered = sorted(keys)
    return msgspec.defstruct(
        name,
        [(f"k{i}", str | msgspec.UnsetType, msgspec.UNSET) for i in range(len(ordered))],
        rename={f"k{i}": key for i, key in enumerate(ordered)},
        frozen=True,
        gc=False,
    )


_UNNAMEABLE = re.compile(r'["\\\x00-\x1f]')


@functools.lru_cache(maxsize=8)
def _codec(keys: LabelKeys | None) -> _Codec:
    """The decoders for ``keys`` (built once per distinct set: a reload may bring another)."""
    if keys is None or any(_UNNAMEABLE.search(k) for k in keys.pod | keys.namespace):
        # msgspec cannot name a field so; no Kubernetes label key is spelt so: maps whole.
        return _WHOLE
    # Built at run time, so typed Any: each has the fields of the static type it stands for.
    pod: Any = _labels_struct("_PodLabels", keys.pod)
    ns: Any = _labels_struct("_NsLabels", keys.namespace)
    props: Any = msgspec.defstruct(
        "_KeptProps",
        [
            ("namespace", str | None, None),
            ("pod", str | None, None),
            ("node", str | None, None),
            ("labels", pod | None, None),
            ("namespaceLabels", ns | None, None),
        ],
        gc=False,
    )
    row: Any = msgspec.defstruct(
        "_KeptRow",
        [
            (f.name, props | None if f.name == "properties" else f.type, f.default)
            for f in msgspec.structs.fields(_Row)
        ],
        gc=False,
    )
    rows: Any = dict[str, row]
    data: Any = list[rows | None] | None
    doc: Any = msgspec.defstruct(
        "_KeptDoc", [("code", Any, None), ("message", Any, None), ("data", data, None)], gc=False
    )
    return _Codec(msgspec.json.Decoder(doc).decode, msgspec.json.Decoder(rows).decode, doc, True)


def _kept_map(s: Any) -> Mapping[str, str]:
    """A kept-labels struct as the map of its present keys."""
    out = {
        key: value
        for key, value in zip(s.__struct_encode_fields__, msgspec.structs.astuple(s), strict=True)
        if value is not msgspec.UNSET
    }
    return out or EMPTY_LABELS


_NO_PROPS = _Props()
_NO_GPU = _Gpu()
# OpenCost's compact answer with one accumulated set, as Go's encoding/json writes it.
_ONE_SET_PREFIX = b'{"code":200,"status":"success","data":[{'
_ONE_SET_SUFFIX = b"}]}"
# The same with any number of sets (the month query's daily sets), cut while streaming.
_SETS_PREFIX = _ONE_SET_PREFIX[:-1]
# Every allocation object OpenCost writes starts with its "name" field.
_ROW_START = b'":{"name":"'


def _row_cut(body: Buffer, at: int, end: int) -> int:
    """The comma before the allocation key of the first row starting at or after ``at``."""
    while (marker := body.find(_ROW_START, at, end)) != -1:
        # A key holds no unescaped quote, so the last ',"' before the marker opens this key.
        cut = body.rfind(b',"', at, marker)
        if cut != -1:
            return cut
        at = marker + 1  # ``at`` fell inside this row's key: cut before the next row
    return -1


def _typed_sets(body: bytes, codec: _Codec = _WHOLE) -> list[dict[str, _Row]]:
    """The allocation sets of a ``code: 200`` body, in order (a ``null`` set or ``data`` is
    an empty one). Raises :class:`SourceError` ``parse`` for a body that is not JSON and
    ``invalid`` for another code or another shape.

    A one-set answer in Go's compact encoding is decoded in pieces of about 1 MB (see
    :mod:`.jsonchunks`), so that a scrape waits for one piece, not for the whole answer;
    any other body (or a piece that does not decode) is decoded whole, which gives the same
    rows."""
    pieces = decode_pieces(
        body, _ONE_SET_PREFIX, _ONE_SET_SUFFIX, _row_cut, codec.decode_rows, (b"{", b"}")
    )
    if pieces is not None:
        merged: dict[str, _Row] = {}
        for piece in pieces:
            merged.update(piece)
        return [merged]
    doc = _decode_document(body, codec)
    if doc.code != 200:
        message = "" if doc.message is None else str(doc.message)[:200]
        raise SourceError("invalid", f"OpenCost answered code {doc.code!r}: {message}")
    return [s if s is not None else {} for s in doc.data or ()]


def _decode_document(body: bytes, codec: _Codec = _WHOLE) -> _Doc:
    """The whole body decoded into the typed rows. msgspec's reader is strict; text it
    refuses that Python's ``json`` reads (``NaN`` and ``Infinity`` tokens; a number beyond
    a double's range, which ``json`` reads as infinity; invalid UTF-8 and lone surrogate
    escapes, replaced by U+FFFD in :func:`aifinops.text.loads_json`) is read by the latter
    and converted to the same types, so the rows and the checks are the same."""
    try:
        return codec.decode_doc(body)
    except msgspec.ValidationError as exc:
        if not str(exc).startswith("Number out of range"):
            raise SourceError(
                "invalid", f"OpenCost response of another shape: {str(exc)[:200]}"
            ) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        doc = loads_json(body)
    except (ValueError, RecursionError) as exc:
        raise SourceError("parse", f"OpenCost response is not JSON: {str(exc)[:200]}") from None
    try:
        return msgspec.convert(doc, codec.doc_type)
    except msgspec.ValidationError as exc:
        raise SourceError(
            "invalid", f"OpenCost response of another shape: {str(exc)[:200]}"
        ) from None


class _Memo:
    """One object for equal values across the rows of one fetch (all the pieces of a month
    fetch): namespaces and nodes, a namespace's label map (the same on each of its pods),
    and the month query's read-back keys (the same every day: one name, namespace and label
    map for all its days).

    It saves a good part of the rows' memory for a dictionary lookup or two per row
    (bench/README.md). Used from one thread at a time (the CPU worker decodes a fetch's
    pieces one after another)."""

    __slots__ = ("codec", "identities", "kept", "namespace_labels", "text")

    def __init__(self, keys: LabelKeys | None = None) -> None:
        self.codec = _codec(keys)
        # A kept-labels struct -> its map: equal maps (a namespace's, a deployment's) shared.
        self.kept: dict[Any, Mapping[str, str]] = {}
        self.text: dict[str, str] = {}
        self.namespace_labels: dict[str, Mapping[str, str]] = {}
        self.identities: dict[str, tuple[str, str | None, Mapping[str, str]] | None] = {}


# The fields _typed_rows fills, in order: rows are built positionally (keyword arguments cost
# nearly twice as much per row: bench/README.md). Allocation must declare exactly these, in
# this order; the import fails loudly otherwise, rather than filling the wrong fields.
_ROW_FIELDS = (
    "name",
    "namespace",
    "pod",
    "node",
    "minutes",
    "cpu_cost",
    "gpu_cost",
    "ram_cost",
    "pv_cost",
    "network_cost",
    "load_balancer_cost",
    "shared_cost",
    "external_cost",
    "gpu_hours",
    "gpu_count",
    "gpu_usage_average",
    "labels",
    "namespace_labels",
    "cpu_core_hours",
    "ram_byte_hours",
    "pv_byte_hours",
)
if Allocation.__struct_fields__ != _ROW_FIELDS:
    raise RuntimeError(
        "model.inputs.Allocation's fields changed: update sources/opencost.py _ROW_FIELDS and "
        "_typed_rows, which build its rows positionally"
    )


def _typed_rows(
    allocation_set: dict[str, _Row],
    agg: MonthAggregation | None = None,
    memo: _Memo | None = None,
) -> dict[str, Allocation]:
    """Each typed row by its key (the same fields, defaults and clamps as
    :func:`_allocation`); with an aggregation by labels, named and labelled as
    :meth:`MonthAggregation.identity` says.
    Equal strings and label maps are shared through ``memo`` (see :class:`_Memo`).

    Each number is clamped as ``x if 0.0 < x < inf else 0.0``, written out: this loop runs
    once per pod, and a function call per field was a third of its time. Zero (and a
    clamped value) is then the one 0.0 constant: most rows' pv, network, shared and external
    costs are zero, and one float object instead of 20k saves memory for nothing."""
    out: dict[str, Allocation] = {}
    memo = memo if memo is not None else _Memo()
    text = memo.text.setdefault
    ns_maps = memo.namespace_labels
    identities = memo.identities
    keep = memo.codec.keep
    kept = memo.kept
    relabel = agg is not None and agg.labels is not None
    inf = math.inf
    row = Allocation
    for key, r in allocation_set.items():
        p = r.properties or _NO_PROPS
        g = r.gpuAllocation or _NO_GPU
        count = g.gpuRequestAverage
        if count is None:
            count = r.gpuRequestAverage
            if count is None:
                count = r.gpuCount or 0.0
        usage = g.gpuUsageAverage
        if usage is None:
            usage = r.gpuUsageAverage
        if usage is not None:
            usage = usage if 0.0 < usage < inf else 0.0
        name: str = key
        namespace = p.namespace or None
        if namespace is not None:
            namespace = text(namespace, namespace)
        pod = p.pod or None
        node = p.node or None
        if node is not None:
            node = text(node, node)
        labels: Mapping[str, str] = EMPTY_LABELS
        ns_labels: Mapping[str, str] = EMPTY_LABELS
        if keep:
            # Only the read keys were decoded (see _Codec); equal maps are one object.
            found: Any = p.labels
            if found is not None:
                labels = kept[found] if found in kept else kept.setdefault(found, _kept_map(found))
            found = p.namespaceLabels
            if found is not None:
                ns_labels = (
                    kept[found] if found in kept else kept.setdefault(found, _kept_map(found))
                )
        else:
            # Whole maps: label values are not shared, rebuilding every map to do so costs
            # more CPU than the memory it saves is worth (bench/README.md); keys are shared.
            labels = p.labels or EMPTY_LABELS
            if p.namespaceLabels:
                ns_labels = p.namespaceLabels
                shared = ns_maps.get(namespace or "")
                if shared == ns_labels:
                    ns_labels = shared
                else:
                    ns_maps[namespace or ""] = ns_labels
        if relabel:
            assert agg is not None
            if key in identities:
                ident = identities[key]
            else:
                ident = identities[key] = agg.identity(key)
            if ident is not None:
                name, namespace, labels = ident
                pod = node = None
        minutes = r.minutes or 0.0
        cpu = (r.cpuCost or 0.0) + (r.cpuCostAdjustment or 0.0)
        gpu = (r.gpuCost or 0.0) + (r.gpuCostAdjustment or 0.0)
        ram = (r.ramCost or 0.0) + (r.ramCostAdjustment or 0.0)
        pv = (r.pvCost or 0.0) + (r.pvCostAdjustment or 0.0)
        net = (r.networkCost or 0.0) + (r.networkCostAdjustment or 0.0)
        lb = (r.loadBalancerCost or 0.0) + (r.loadBalancerCostAdjustment or 0.0)
        shared_cost = r.sharedCost or 0.0
        external = r.externalCost or 0.0
        gpu_hours = r.gpuHours or 0.0
        core_hours = r.cpuCoreHours or 0.0
        ram_hours = r.ramByteHours or 0.0
        pv_hours = r.pvByteHours or 0.0
        out[key] = row(
            name,
            namespace,
            pod,
            node,
            minutes if 0.0 < minutes < inf else 0.0,
            cpu if 0.0 < cpu < inf else 0.0,
            gpu if 0.0 < gpu < inf else 0.0,
            ram if 0.0 < ram < inf else 0.0,
            pv if 0.0 < pv < inf else 0.0,
            net if 0.0 < net < inf else 0.0,
            lb if 0.0 < lb < inf else 0.0,
            shared_cost if 0.0 < shared_cost < inf else 0.0,
            external if 0.0 < external < inf else 0.0,
            gpu_hours if 0.0 < gpu_hours < inf else 0.0,
            count if 0.0 < count < inf else 0.0,
            usage,
            labels,
            ns_labels,
            core_hours if 0.0 < core_hours < inf else 0.0,
            ram_hours if 0.0 < ram_hours < inf else 0.0,
            pv_hours if 0.0 < pv_hours < inf else 0.0,
        )
    return out


# --- accumulation ---------------------------------------------------------------------


def _merge(a: Allocation, b: Allocation) -> Allocation:
    """Two steps of one key: ``b`` follows ``a`` in time."""
    minutes = a.minutes + b.minutes

    def weighted(x: float, y: float) -> float:
        return (x * a.minutes + y * b.minutes) / minutes if minutes else max(x, y)

    usage = None
    if a.gpu_usage_average is not None or b.gpu_usage_average is not None:
        usage = weighted(a.gpu_usage_average or 0.0, b.gpu_usage_average or 0.0)
    return Allocation(
        name=a.name,
        namespace=b.namespace or a.namespace,
        pod=b.pod or a.pod,
        node=b.node or a.node,
        gpu_count=weighted(a.gpu_count, b.gpu_count),
        gpu_usage_average=usage,
        minutes=minutes,
        gpu_hours=a.gpu_hours + b.gpu_hours,
        cpu_cost=a.cpu_cost + b.cpu_cost,
        gpu_cost=a.gpu_cost + b.gpu_cost,
        ram_cost=a.ram_cost + b.ram_cost,
        pv_cost=a.pv_cost + b.pv_cost,
        network_cost=a.network_cost + b.network_cost,
        load_balancer_cost=a.load_balancer_cost + b.load_balancer_cost,
        shared_cost=a.shared_cost + b.shared_cost,
        external_cost=a.external_cost + b.external_cost,
        labels=b.labels or a.labels,
        namespace_labels=b.namespace_labels or a.namespace_labels,
        cpu_core_hours=a.cpu_core_hours + b.cpu_core_hours,
        ram_byte_hours=a.ram_byte_hours + b.ram_byte_hours,
        pv_byte_hours=a.pv_byte_hours + b.pv_byte_hours,
    )
