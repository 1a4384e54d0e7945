"""Measured p95 latency per (model, provider) for model routing, from a latency histogram.

The routing model ranks candidates by cost, quality and p95 latency; this source gives it the
latency the model servers measured, so a candidate's latency is what its users get, not what
someone wrote in the configuration. The default histogram is vLLM's
``vllm:e2e_request_latency_seconds`` (time from request arrival to its last token): the same
family name in the V0 and V1 engines, labelled ``model_name`` (the served model name); V1
adds ``engine`` (one histogram per engine core). Bucket bounds differ by release (V0 had
1…60 s; later releases 0.3…7680 s) and are read from the page, never assumed.

Two modes (``latency.sources[]``, :class:`~aifinops.settings.LatencySourceSettings`):

* **prometheus** — one instant query, by default::

      histogram_quantile(0.95, sum by (le, model_name)
          (rate(vllm:e2e_request_latency_seconds_bucket{<selector>}[300s])))
        and on (model_name)
      (sum by (model_name)
          (increase(vllm:e2e_request_latency_seconds_bucket{le="+Inf",<selector>}[300s]))
        >= <min_requests>)

  The ``and`` keeps only models with ``min_requests`` requests in the window, as scrape mode
  does: a p95 of three requests is noise, and the configured figure is better than noise.
* **scrape** — the servers' ``/metrics`` pages, read directly. Bucket counters are
  cumulative since the server started, so :class:`HistogramWindow` keeps a bounded ring of
  cumulative readings per series and takes the quantile of the increase over the window,
  like ``rate()`` does (without its extrapolation, which scales every bucket alike and so
  does not move a quantile).

Either way a model without a figure (too few requests, no data, the source down past its
``stale_after_seconds``) falls back to the candidate's configured ``p95_latency_seconds``.

Merging replicas and engines: a model's p95 is the quantile of the *sum* of its series'
bucket increases, as ``sum by (le, model_name)`` does. When the series of one model have
different bucket bounds (a rolling upgrade between vLLM releases), PromQL's ``sum by (le)``
would mix buckets that exist in some series only; here the sum is taken over the bounds that
every series has (the intersection, ``+Inf`` always among them), where each cumulative count
is exact — coarser, never wrong. With ``+Inf`` as the only common bound there is no figure.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import httpx

from aifinops.model.routing import histogram_quantile
from aifinops.settings import LatencySourceSettings
from aifinops.sources.base import CpuRunner, Slot, SourceError
from aifinops.sources.promtext import Sample, decode_page, parse_text
from aifinops.sources.transport import Transport
from aifinops.text import clean_value

LatencyFigures: TypeAlias = Mapping[tuple[str, str], float]
"""Seconds per (model, provider): what the source gives the routing model."""
SeriesId: TypeAlias = tuple[tuple[str, str], ...]
"""A histogram series' labels other than ``le``, sorted: its identity on a page."""
Clock = Callable[[], float]

MAX_SERIES = 10_000
"""Histogram series one source follows at most (each holds up to ``max_snapshots``
readings): a page with more is refused rather than allowed to grow memory without bound."""


# --- prometheus mode -------------------------------------------------------------------------


def _matchers(selector: str) -> str:
    inner = selector.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1].strip()
    return inner


def latency_query(s: LatencySourceSettings) -> str:
    """The PromQL of a ``mode: prometheus`` source: ``s.query`` when set, else the default
    of the module docstring built from ``metric``, ``selector``, ``window_seconds``,
    ``quantile``, ``model_label`` and ``min_requests``."""
    if s.query is not None:
        return s.query
    inner = _matchers(s.selector)
    sel = "{" + inner + "}" if inner else ""
    inf = "{" + ",".join(['le="+Inf"', *([inner] if inner else [])]) + "}"
    window = f"[{s.window_seconds}s]"
    label = s.model_label
    bucket = f"{s.metric}_bucket"
    quantile = (
        f"histogram_quantile({s.quantile!r}, sum by (le, {label}) (rate({bucket}{sel}{window})))"
    )
    enough = f"sum by ({label}) (increase({bucket}{inf}{window})) >= {s.min_requests}"
    return f"{quantile} and on ({label}) ({enough})"


def figures_from_vector(
    series: Iterable[tuple[Mapping[str, str], float]], model_label: str, provider: str
) -> dict[tuple[str, str], float]:
    """Seconds per (model, ``provider``) from an instant vector of quantiles.

    Skipped: series without a usable ``model_label`` value, and NaN (PromQL's answer for a
    model with no requests in the window), infinite or negative values. A model in several
    series (a custom query that does not aggregate) gets the highest: the conservative p95.
    """
    out: dict[tuple[str, str], float] = {}
    for labels, value in series:
        model = clean_value(labels.get(model_label))
        if model is None or not math.isfinite(value) or value < 0:
            continue
        key = (model, provider)
        out[key] = max(value, out.get(key, value))
    return out


# --- scrape mode: parse ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Histogram:
    """One histogram series as a page shows it: its model, bucket upper bounds ascending
    (the last is ``+Inf``) and the cumulative count of each bucket."""

    model: str
    bounds: tuple[float, ...]
    counts: tuple[float, ...]


def _bound(text: str) -> float | None:
    try:
        le = float(text)
    except ValueError:
        return None
    return None if math.isnan(le) else le


def histograms_from_samples(
    samples: Iterable[Sample], model_label: str
) -> dict[SeriesId, Histogram]:
    """Group ``<metric>_bucket`` samples into histograms, one per label set without ``le``.

    A series is left out whole when any bucket is unusable (no or unparsable ``le``, a
    duplicated ``le``, a NaN, infinite or negative count), when it has no ``+Inf`` bucket
    (an incomplete histogram has no total), or when it has no usable ``model_label`` value:
    half a histogram would give a wrong quantile, none gives the configured one.
    """
    groups: dict[SeriesId, dict[float, float]] = {}
    broken: set[SeriesId] = set()
    # A page writes a series' labels in one order: each distinct order is sorted once.
    sorted_ids: dict[SeriesId, SeriesId] = {}
    for _, labels, value in samples:
        raw = tuple(kv for kv in labels.items() if kv[0] != "le")
        sid = sorted_ids.get(raw)
        if sid is None:
            sid = sorted_ids[raw] = tuple(sorted(raw))
        if sid in broken:
            continue
        le = _bound(labels.get("le", ""))
        buckets = groups.setdefault(sid, {})
        if le is None or le in buckets or not math.isfinite(value) or value < 0:
            broken.add(sid)
            continue
        buckets[le] = value
    out: dict[SeriesId, Histogram] = {}
    for sid, buckets in groups.items():
        if sid in broken or math.inf not in buckets:
            continue
        model = clean_value(dict(sid).get(model_label))
        if model is None:
            continue
        bounds = tuple(sorted(buckets))
        out[sid] = Histogram(model, bounds, tuple(buckets[b] for b in bounds))
    return out


# --- scrape mode: the window -----------------------------------------------------------------


@dataclass(slots=True)
class _Series:
    """One series' readings. ``ring`` holds (time, reset-corrected cumulative counts); the
    correction adds, at each counter reset, the counts the process had before it, so the
    corrected counts only grow and a difference across a restart is still the increase."""

    model: str
    bounds: tuple[float, ...]
    ring: deque[tuple[float, tuple[float, ...]]]
    last_raw: tuple[float, ...]
    offset: tuple[float, ...]
    current: tuple[float, tuple[float, ...]]


@dataclass(slots=True)
class HistogramWindow:
    """Cumulative bucket readings per (target, series) over a sliding window: the state of a
    ``mode: scrape`` source, pure (the clock comes in as ``now``).

    A reading is kept in the ring when ``window / (max_snapshots − 1)`` seconds have passed
    since the last kept one, so the ring spans the window at a bounded size whatever the
    refresh interval; the oldest kept reading is the newest one at or before the window's
    start (the increase covers at least the window once it has been watched that long).

    Counter resets: a bucket lower than at the previous reading means the server restarted;
    its counts since the restart are added to what it had before (as PromQL's ``increase``
    does), so a restart inside the window loses nothing. A reset that goes unseen (the
    restarted process passed its old counts before the next reading) is missed, as it is by
    Prometheus. Bucket bounds that change (a new vLLM release) are a restart too: the new
    layout cannot be compared with the old one, so the older readings are dropped and the
    series starts from zero at the previous reading. A series that a target's page no longer
    shows is forgotten.
    """

    window_seconds: float
    max_snapshots: int = 32
    targets: dict[str, dict[SeriesId, _Series]] = field(default_factory=dict)
    size: int = 0

    def observe(self, target: str, now: float, histograms: Mapping[SeriesId, Histogram]) -> None:
        """Record the series one target's page showed at ``now``."""
        spacing = self.window_seconds / (self.max_snapshots - 1)
        old = self.targets.get(target, {})
        # Only the series the page shows are kept: a vanished one is forgotten.
        series: dict[SeriesId, _Series] = {}
        self.size -= len(old)
        self.targets[target] = series
        for sid, h in histograms.items():
            s = old.get(sid)
            if s is None:
                if self.size >= MAX_SERIES:
                    raise SourceError(
                        "invalid", f"over {MAX_SERIES} latency histogram series: narrow the pages"
                    )
                # First reading: a baseline (its counts go back to the server's start).
                s = _Series(
                    h.model, h.bounds, deque(), h.counts, (0.0,) * len(h.counts), (now, h.counts)
                )
            elif h.bounds != s.bounds:
                zeros = (0.0,) * len(h.bounds)
                prev_t = s.current[0]
                s.model, s.bounds, s.offset = h.model, h.bounds, zeros
                s.ring = deque([(prev_t, zeros)])
            elif any(c < p for c, p in zip(h.counts, s.last_raw, strict=True)):
                s.offset = tuple(o + p for o, p in zip(s.offset, s.last_raw, strict=True))
            s.model = h.model
            s.last_raw = h.counts
            corrected = tuple(c + o for c, o in zip(h.counts, s.offset, strict=True))
            s.current = (now, corrected)
            if not s.ring or now - s.ring[-1][0] >= spacing:
                s.ring.append(s.current)
            start = now - self.window_seconds
            while len(s.ring) >= 2 and s.ring[1][0] <= start:
                s.ring.popleft()
            while len(s.ring) > self.max_snapshots:
                s.ring.popleft()
            series[sid] = s
            self.size += 1

    def all_series(self) -> list[_Series]:
        return [s for by_sid in self.targets.values() for s in by_sid.values()]

    def increases(self) -> dict[str, list[tuple[tuple[float, ...], tuple[float, ...]]]]:
        """Per model, each series' (bounds, cumulative bucket increases) from its oldest kept
        reading to its latest."""
        out: dict[str, list[tuple[tuple[float, ...], tuple[float, ...]]]] = {}
        for s in self.all_series():
            _, base = s.ring[0]
            _, now = s.current
            delta = tuple(max(0.0, n - b) for n, b in zip(now, base, strict=True))
            out.setdefault(s.model, []).append((s.bounds, delta))
        return out

    def figures(
        self, quantile: float, min_requests: float, provider: str
    ) -> dict[tuple[str, str], float]:
        """The ``quantile`` of each model's merged increases, for models with at least
        ``min_requests`` requests in the window."""
        out: dict[tuple[str, str], float] = {}
        for model, parts in self.increases().items():
            merged = merge_buckets(parts)
            if not merged or merged[-1][1] < min_requests:
                continue
            value = histogram_quantile(merged, quantile)
            if value is not None:
                out[(model, provider)] = value
        return out


def merge_buckets(
    parts: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> list[tuple[float, float]]:
    """Sum cumulative bucket counts of several series over the bounds they all have.

    ``parts`` are (bounds, cumulative counts) pairs. Returns ``(le, count)`` pairs ascending,
    ending with ``+Inf``; empty when ``parts`` is. On a bound every series has, each series'
    cumulative count is exact, so the sum is exact there (see the module docstring).
    """
    if not parts:
        return []
    common = set(parts[0][0])
    for bounds, _ in parts[1:]:
        common.intersection_update(bounds)
    totals = dict.fromkeys(sorted(common), 0.0)
    for bounds, counts in parts:
        for le, c in zip(bounds, counts, strict=True):
            if le in totals:
                totals[le] += c
    return list(totals.items())


# --- the source ------------------------------------------------------------------------------


class LatencySource:
    """One configured latency source (``latency.sources[]``), named ``latency:<name>``.

    ``fetch`` returns :data:`LatencyFigures` (possibly empty: no model has enough requests
    yet); a failure raises :class:`SourceError`, and the refresh loop keeps the last figures
    until the source's ``stale_after_seconds``, then routing falls back to configuration.
    In scrape mode the pages are read concurrently; every page that answered updates the
    window, and one that did not fails the fetch (its last figures stay in use). The window
    lives in this object: a configuration reload builds a new one, which needs two readings
    (and ``min_requests`` requests between them) before it has figures again.
    """

    def __init__(self, settings: LatencySourceSettings, clock: Clock, *, run: CpuRunner) -> None:
        self._settings = settings
        self._clock = clock
        self._window = HistogramWindow(float(settings.window_seconds), settings.max_snapshots)
        self._bucket = f"{settings.metric}_bucket"
        self.name = f"latency:{settings.name}"
        self.slot = Slot.LATENCY
        self.local = False
        self.min_interval_seconds = 0.0
        self.first_read_baseline = False
        self.targets = None
        self._transport = Transport(self.name, settings, run)

    @property
    def window(self) -> HistogramWindow:
        return self._window

    async def fetch(self, client: httpx.AsyncClient) -> LatencyFigures:
        s = self._settings
        headers = self._transport.headers()
        if s.mode == "prometheus":
            series = await self._transport.query(client, latency_query(s), headers)
            return figures_from_vector(series, s.model_label, s.provider)
        now = self._clock()
        # Every page is fetched (one that fails does not cancel the others), then all are
        # parsed into the window in one go on the CPU worker.
        bodies = await asyncio.gather(
            *(self._transport.page(client, t.url, headers) for t in s.scrape_targets),
            return_exceptions=True,
        )
        pages: list[tuple[str, Mapping[str, str], bytes | SourceError]] = []
        for target, body in zip(s.scrape_targets, bodies, strict=True):
            if isinstance(body, SourceError | bytes):
                pages.append((target.url, target.labels, body))
            else:  # a bug, or cancellation: not a fetch failure to count
                raise body
        figures, error = await self._transport.run(self._update, pages, now)
        if error is not None:
            raise error
        return figures

    def _update(
        self, pages: Sequence[tuple[str, Mapping[str, str], bytes | SourceError]], now: float
    ) -> tuple[dict[tuple[str, str], float], SourceError | None]:
        """Parse the pages that answered into the window; the figures, and the first error
        (a page that failed to arrive or to parse) if any. Runs on the CPU worker thread."""
        s = self._settings
        first: SourceError | None = None
        wanted = frozenset({self._bucket})
        for url, labels, body in pages:
            if isinstance(body, SourceError):
                first = first or body
                continue
            try:
                samples = parse_text(decode_page(body), wanted)
            except ValueError as exc:  # UnicodeDecodeError included
                first = first or SourceError("parse", f"{url}: {exc}")
                continue
            if labels:
                # Target labels where the sample has none of its own (honor_labels: true).
                samples = [(n, {**labels, **lbl}, v) for n, lbl, v in samples]
            self._window.observe(url, now, histograms_from_samples(samples, s.model_label))
        return self._window.figures(s.quantile, s.min_requests, s.provider), first


__all__ = [
    "MAX_SERIES",
    "Histogram",
    "HistogramWindow",
    "LatencyFigures",
    "LatencySource",
    "figures_from_vector",
    "histograms_from_samples",
    "latency_query",
    "merge_buckets",
]
