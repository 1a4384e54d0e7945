"""LLM token accounting: counters, prices, measured cost of self-hosted models, charge-back.

Pure: the refresh loop passes the token observations, the price list, the core's cost
breakdown, the previous :class:`TokenState` and ``now``; nothing here reads a clock or the
network.

**Counters.** Each upstream series is tracked by its highest value. An increase is new
tokens. A decrease by at most ``dip_tolerance`` of the highest value is read jitter — HA
Prometheus replicas or Thanos deduplication answer from replicas a few seconds apart — and
counts nothing, the highest value kept (reads 1,000,000 → 1,001,000 → 1,000,500 → 1,002,000
are 2,000 tokens, not a re-billed history). A larger decrease is a counter reset (a vLLM or
LiteLLM restart) and the whole current value is new (what Prometheus' ``increase()`` does),
so a restart never produces negative or doubled tokens. The first reading of a scraped series
is only a baseline when its origin (a source, or one of its scrape targets) is read for the
first time (tokens counted before this process started are not ours to count); a series that
appears in an origin read before — an empty read included — counts from zero (a new pod, a
new team, an app's first LLM call after the exporter's first read of its empty page). Push
counters (``from_zero``) always count from zero. A series not seen for ``retention_seconds``
is forgotten. A scraped source's read comes as columns (:class:`TokenColumns`: its series
table and a value array); while its table is the one counted last refresh, its counters are
kept as arrays and counted with array operations — the same comparisons and subtractions,
row for row — and otherwise one reading at a time, like single observations.

**Prices.** API models: the price list (USD per token, tolerant name matching). Models the
list does not know are *unpriced*: their tokens are counted in ``unpriced`` and never costed
at zero; where LiteLLM reported its own spend for them, that spend is used instead (split over
the token types in proportion to their token counts).

**Self-hosted models.** A model is self-hosted when configured, or (``discover``) when a
``serving`` source saw a model server (vLLM's ``model_name``) serve it; its serving pods are
the pods those series came from plus the pods a configured selector matches in OpenCost's
rows. Their cost (the ``charge_back_resources`` of each pod, USD/hour, from the core's
per-pod rates) gives a measured price::

    $/token of type k = C · w_k / D        D = max(Σ_k w_k · served_k, Σ_t Σ_k w_k · used_t,k)

with ``served_k`` the tokens/hour the model servers counted, ``used_t,k`` the tokens/hour
tenant ``t`` sent (both slopes over ``rate_window_seconds``) and ``w`` the configured cost
weights. **Input/output split:** by compute weight, default input 1, cached input 0.1,
output 4. Decode produces one token per sequence per forward pass and is bound by memory
bandwidth, while prefill processes a whole prompt in one compute-bound pass, so an output
token holds the GPU several times longer than an input token; 4× is the output/input ratio of
the list prices of gpt-4o and gpt-4.1 (5× for Claude) — the market's own estimate of that
asymmetry — and prefix-cached prompt tokens skip prefill compute (0.1 matches the cache-read
discount of Anthropic and Gemini). The level of the price is measured; the split between
types is this documented assumption (configurable in ``tokens.self_hosted.cost_weights``).

**Charge-back.** On each basis, every serving pod's rate per charge-back resource moves from
the pod's tenant to the tenants that sent tokens, in proportion to their weighted tokens
``W_t / D``; the resource is kept, so per-resource conservation still holds. When the servers
counted more tokens than any tenant claimed (traffic that bypassed the usage sources), the
unclaimed share ``1 − Σ W_t / D`` stays with the pod's tenant. No tokens in the window, or no
cost data: nothing moves and no measured price is published.

**Token cost rate.** API token dollars per tenant enter the per-tenant cost rate as resource
``tokens``: the slope of the tenant's cumulative API token cost over ``rate_window_seconds``
(the oldest kept refresh at or before the window start, to now), in USD/hour. Self-hosted
token dollars are already in the gpu/cpu/ram rates through the charge-back, so they are not
added again; ``aifinops_token_cost_usd_total`` shows them at the measured price.

Money: cumulative dollars are floats summed with :func:`math.fsum` per refresh; rates are
float USD/hour.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import add, attrgetter, is_, is_not, itemgetter, mul, not_
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from aifinops.model.cost import CostBreakdown, remap_tenants
from aifinops.model.inputs import (
    Allocation,
    AllocationSet,
    TokenColumns,
    TokenInputs,
    TokenItem,
    TokenObservation,
    TokenSeries,
    TokenTable,
    counter_key,
)
from aifinops.model.llm_prices import (
    PER_MILLION,
    TOKEN_TYPES,
    LlmPrice,
    LlmPriceCatalog,
    TokenType,
    normalize_provider,
    strip_route,
)
from aifinops.model.tenancy import TenantResolver
from aifinops.model.vocabulary import IDLE_TENANT, OTHER_TENANT, UNALLOCATED_TENANT

UsageKey = tuple[str, str, str, str]  # (tenant, model, provider, token_type)
CounterKey = tuple[str, str, str, str]  # (source, series, kind, token_type)
PodKey = tuple[str, str]  # (namespace, pod)
ShKey = tuple[str, str, str]  # (tenant, self-hosted model, token_type)
K = TypeVar("K")

UNKNOWN_PROVIDER = "unknown"
OTHER_MODEL = "__other__"
SECONDS_PER_HOUR = 3600.0
DEFAULT_WEIGHTS: Mapping[str, float] = {"input": 1.0, "cached_input": 0.1, "output": 4.0}
_SENTINELS = frozenset({IDLE_TENANT, UNALLOCATED_TENANT, OTHER_TENANT})


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SelfHostedSpec:
    """A self-hosted model: configured, or discovered from a model server's series.

    A selector (``namespaces``, ``pod_regex``, ``pod_labels``; all given criteria must hold)
    picks serving pods among OpenCost's rows; ``has_selector`` is false for discovered
    models, whose pods are the ones their serving series came from.
    """

    model: str
    provider: str
    aliases: tuple[str, ...] = ()
    api_equivalent: str | None = None
    namespaces: frozenset[str] = frozenset()
    pod_regex: re.Pattern[str] | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    has_selector: bool = False

    def selects(self, a: Allocation) -> bool:
        """Whether OpenCost row ``a`` is a pod this model's selector names."""
        if not self.has_selector or not a.namespace or not a.pod:
            return False
        if self.namespaces and a.namespace not in self.namespaces:
            return False
        if self.pod_regex is not None and not self.pod_regex.fullmatch(a.pod):
            return False
        return all(a.labels.get(k) == v for k, v in self.pod_labels.items())


@dataclass(frozen=True, slots=True)
class TokenContext:
    """Token configuration compiled for the model (``TokensSettings.to_model``)."""

    models: tuple[SelfHostedSpec, ...] = ()
    discover: bool = True
    api_equivalents: Mapping[str, str] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    charge_back_resources: tuple[str, ...] = ("gpu", "cpu", "ram")
    rate_window_seconds: float = 300.0
    retention_seconds: float = 3600.0
    max_models: int = 200
    dip_tolerance: float = 0.1


# --- state and report ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RateSample:
    """Cumulative totals at one refresh, for slopes over the rate window."""

    at: float
    self_hosted_usage: Mapping[ShKey, float]
    served: Mapping[tuple[str, str], float]  # (self-hosted model, token_type) -> tokens
    api_cost: Mapping[str, float]  # tenant -> USD


@dataclass(frozen=True, slots=True)
class TokenState:
    """What survives between refreshes (owned by the refresh loop)."""

    last: Mapping[CounterKey, float] = field(default_factory=dict)
    seen_at: Mapping[CounterKey, float] = field(default_factory=dict)
    source_seen_at: Mapping[str, float] = field(default_factory=dict)
    tokens: Mapping[UsageKey, float] = field(default_factory=dict)
    cost: Mapping[UsageKey, float] = field(default_factory=dict)
    unpriced: Mapping[tuple[str, str], float] = field(default_factory=dict)
    api_cost: Mapping[str, float] = field(default_factory=dict)
    self_hosted_usage: Mapping[ShKey, float] = field(default_factory=dict)
    served: Mapping[tuple[str, str], float] = field(default_factory=dict)
    history: tuple[RateSample, ...] = ()
    models: frozenset[str] = frozenset()
    discovered: Mapping[str, str] = field(default_factory=dict)  # model -> provider
    # Each steady table's routes (:class:`_RouteCache`); never saved: rebuilt from the rows.
    routes: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelServing:
    """One self-hosted model this refresh.

    ``cost_rate[basis]`` is the USD/hour of its serving pods' charge-back resources;
    ``weighted_token_rate`` the denominator ``D`` (weighted tokens/hour); ``served_rate`` the
    tokens/hour the model servers counted, per type; ``price_per_million`` the measured USD per
    1M tokens per type (empty when not measurable); ``charged_back[basis]`` the USD/hour moved
    to the tenants that sent tokens.
    """

    model: str
    provider: str
    pods: tuple[PodKey, ...]
    cost_rate: Mapping[str, float]
    weighted_token_rate: float
    served_rate: Mapping[str, float]
    price_per_million: Mapping[str, float]
    charged_back: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class TokenReport:
    """Token figures for one refresh.

    ``tokens``/``cost``: cumulative tokens and USD per (tenant, model, provider, token_type)
    since this process started. ``unpriced``: cumulative tokens per (model, provider) that got
    no price. ``prices``: USD per 1M tokens per (model, provider, token_type, source) for the
    models seen (source ``price_list`` or ``measured``). ``api_equivalent``: the price-list
    USD per 1M tokens of a self-hosted model's configured API equivalent, per (model,
    provider, token_type). ``api_cost``: cumulative API token USD per tenant; ``api_cost_rate``
    its slope in USD/hour.
    """

    tokens: Mapping[UsageKey, float]
    cost: Mapping[UsageKey, float]
    unpriced: Mapping[tuple[str, str], float]
    prices: Mapping[tuple[str, str, str, str], float]
    api_equivalent: Mapping[tuple[str, str, str], float]
    api_cost: Mapping[str, float]
    api_cost_rate: Mapping[str, float]
    self_hosted: Mapping[str, ModelServing]
    catalog_version: str | None


# --- counters --------------------------------------------------------------------------------
Counted = TokenObservation | TokenSeries
"""A counter with new tokens: an observation, or a row of a columnar read (same fields)."""


@dataclass(frozen=True, slots=True)
class CounterUpdate:
    increments: tuple[tuple[Counted, float], ...]
    last: Mapping[CounterKey, float]
    seen_at: Mapping[CounterKey, float]
    source_seen_at: Mapping[str, float]


def counter_increments(
    observations: Iterable[TokenItem],
    state: TokenState,
    now: float,
    retention_seconds: float,
    origins: Iterable[str] = (),
    dip_tolerance: float = 0.0,
) -> CounterUpdate:
    """New tokens (or dollars) per observation since the previous refresh, never negative.

    ``previous`` is the series' highest value. ``value >= previous``: the difference;
    ``value >= previous × (1 − dip_tolerance)``: jitter, 0 (the highest value kept); lower: a
    reset, the whole value; no previous value: the whole value for a ``from_zero`` counter or
    a series whose origin (``obs.origin``, else ``obs.source``) was already read, else 0 (a
    baseline). ``origins`` are the origins read this refresh, empty ones included (a columnar
    read's rows' origins count as read). NaN, ±Inf and negative values are ignored (the
    previous value is kept). An origin unread for longer than the retention is new again (its
    series would have been forgotten, so they re-baseline instead of being counted twice).
    """
    counted, deltas, last, seen, source_seen, _ = _count(
        observations, state, now, retention_seconds, origins, dip_tolerance
    )
    return CounterUpdate(tuple(zip(counted, deltas, strict=True)), last, seen, source_seen)


_INF = float("inf")
_NAN = float("nan")


def _unexpired(at: Mapping[K, float], now: float, retention_seconds: float) -> dict[K, float]:
    """``at`` without the keys last seen more than the retention before ``now``. Usually
    nothing has expired: one pass for the oldest time then, instead of a filtered copy."""
    if not at or now - min(at.values()) <= retention_seconds:
        return dict(at)
    return {k: t for k, t in at.items() if now - t <= retention_seconds}


class _Block:
    """The counters of one columnar read's table (:class:`TokenTable`): per row, the last
    value and when it was last seen (NaN: no value kept). Arrays, not a dict of 100k keys:
    a steady refresh counts the whole table with a few array operations. A new block each
    refresh (the state is immutable); the keys are worked out when asked (the state file),
    their index once per table when a key is looked up."""

    __slots__ = ("_index", "_keys", "last", "seen", "sources", "table")

    def __init__(
        self,
        table: TokenTable,
        last: npt.NDArray[np.float64],
        seen: npt.NDArray[np.float64],
        like: _Block | None = None,
    ) -> None:
        self.table = table
        self.last = last
        self.seen = seen
        self._keys: tuple[CounterKey, ...] | None = like._keys if like else None
        self._index: dict[CounterKey, int] | None = like._index if like else None
        self.sources: frozenset[str] = (
            like.sources if like else frozenset(r.source for r in table.rows)
        )

    def keys(self) -> tuple[CounterKey, ...]:
        return self._keys if self._keys is not None else _table_keys(self.table)

    def index(self) -> dict[CounterKey, int]:
        """Row by key, kept with the table once asked (a look-up by key: tests, the push
        store's export; the state file iterates instead)."""
        if self._index is None:
            keys = self._keys = self.keys()
            self._index = {k: i for i, k in enumerate(keys)}
        return self._index

    def pairs(self, which: str) -> Iterator[tuple[CounterKey, float]]:
        values = (self.last if which == "last" else self.seen).tolist()
        return ((k, v) for k, v in zip(self.keys(), values, strict=True) if v == v)


def _table_keys(table: TokenTable) -> tuple[CounterKey, ...]:
    return tuple(map(counter_key, table.rows))


class _Counters:
    """The counters' last values and times seen: a dict per field for single observations
    (and tables counted row by row), and a :class:`_Block` per columnar table."""

    __slots__ = ("blocks", "last", "seen")

    def __init__(
        self,
        last: dict[CounterKey, float],
        seen: dict[CounterKey, float],
        blocks: tuple[_Block, ...],
    ) -> None:
        self.last = last
        self.seen = seen
        self.blocks = blocks


class CounterMap(Mapping[CounterKey, float]):
    """:attr:`TokenState.last` or :attr:`TokenState.seen_at` as a read-only mapping over
    :class:`_Counters` (what the state file and the tests read; the model reads the
    counters themselves)."""

    __slots__ = ("_counters", "_which")

    def __init__(self, counters: _Counters, which: str) -> None:
        self._counters = counters
        self._which = which

    def _dict(self) -> dict[CounterKey, float]:
        c = self._counters
        return c.last if self._which == "last" else c.seen

    def __getitem__(self, key: CounterKey) -> float:
        own = self._dict()
        if key in own:
            return own[key]
        for b in self._counters.blocks:
            if key[0] in b.sources:
                i = b.index().get(key)
                if i is not None:
                    v = float((b.last if self._which == "last" else b.seen)[i])
                    if v == v:
                        return v
        raise KeyError(key)

    def _pairs(self) -> Iterator[tuple[CounterKey, float]]:
        yield from self._dict().items()
        for b in self._counters.blocks:
            yield from b.pairs(self._which)

    def __iter__(self) -> Iterator[CounterKey]:
        return (k for k, _ in self._pairs())

    def __len__(self) -> int:
        arrays = [b.last if self._which == "last" else b.seen for b in self._counters.blocks]
        return len(self._dict()) + sum(int(np.count_nonzero(a == a)) for a in arrays)

    def items(self) -> ItemsView[CounterKey, float]:
        return _Items(self)

    def to_dict(self) -> dict[CounterKey, float]:
        return dict(self._pairs())


class _Items(ItemsView[CounterKey, float]):
    _mapping: CounterMap

    def __iter__(self) -> Iterator[tuple[CounterKey, float]]:
        return self._mapping._pairs()


def counter_rows(state: TokenState) -> Iterator[tuple[CounterKey, float, float]]:
    """Each counter of ``state``: its key, last value and when it was last seen (0 when
    unknown) — one pass, without a look-up per key (what the state file writes)."""
    counters = _counters_of(state)
    if counters is None:
        seen = state.seen_at
        for key, v in state.last.items():
            yield key, v, seen.get(key, 0.0)
        return
    seen_own = counters.seen
    for key, v in counters.last.items():
        yield key, v, seen_own.get(key, 0.0)
    for b in counters.blocks:
        for key, v, at in zip(b.keys(), b.last.tolist(), b.seen.tolist(), strict=True):
            if v == v:
                yield key, v, at if at == at else 0.0


def _counters_of(state: TokenState) -> _Counters | None:
    """The state's counters when both maps are views over the same ones."""
    last, seen = state.last, state.seen_at
    if (
        isinstance(last, CounterMap)
        and isinstance(seen, CounterMap)
        and last._counters is seen._counters
        and last._which == "last"
        and seen._which == "seen"
    ):
        return last._counters
    return None


def _plain(m: Mapping[CounterKey, float]) -> dict[CounterKey, float]:
    return m.to_dict() if isinstance(m, CounterMap) else dict(m)


def _count(
    observations: Iterable[TokenItem],
    state: TokenState,
    now: float,
    retention_seconds: float,
    origins: Iterable[str] = (),
    dip_tolerance: float = 0.0,
) -> tuple[
    list[Counted],
    list[float],
    Mapping[CounterKey, float],
    Mapping[CounterKey, float],
    dict[str, float],
    _Segments,
]:
    """:func:`counter_increments` as parallel lists (the counters with new tokens and their
    increments), in input order. A columnar read whose table is the one counted last refresh
    is counted with array operations (:func:`_count_block`, the same arithmetic, row for
    row); any other input one observation at a time (113k at fleet scale). Also returns the
    tables counted as arrays with their rows and increments (:class:`_Segments`)."""
    items = observations if isinstance(observations, tuple | list) else tuple(observations)
    tables = [i.table for i in items if isinstance(i, TokenColumns)]
    once = {id(t): t for t in tables if t.unique}
    if len(once) != len(tables):  # a table given twice is counted row by row, in order
        twice = {id(t) for t in tables if tables.count(t) > 1}
        once = {k: t for k, t in once.items() if k not in twice}
    counters = _counters_of(state)
    kept: dict[int, _Block] = {}
    if counters is None:
        last_in, seen_in = _plain(state.last), _plain(state.seen_at)
    else:
        last_in, seen_in = dict(counters.last), dict(counters.seen)
        for b in counters.blocks:
            if once.get(id(b.table)) is b.table:
                kept[id(b.table)] = b
            else:  # its table is gone or changed: back to single keys
                last_in.update(b.pairs("last"))
                seen_in.update(b.pairs("seen"))
    # Forget series unseen for longer than the retention first, so a series back after a long
    # gap is judged like a new one.
    seen = _unexpired(seen_in, now, retention_seconds)
    if (len(last_in) == len(seen) and all(map(is_, last_in, seen))) or (
        last_in.keys() <= seen.keys()
    ):
        # The first test is the usual case, without hashing 100k keys: nothing expired and
        # the two maps hold the same key objects in the same order (as this function leaves
        # them: it adds each key to both).
        last = last_in
    else:
        last = {k: v for k, v in last_in.items() if k in seen}
    known_sources = {
        src for src, at in state.source_seen_at.items() if now - at <= retention_seconds
    }
    counted: list[Counted] = []
    deltas: list[float] = []
    read: set[str] = set()
    blocks: list[_Block] = []
    segments = _Segments()
    keep = 1.0 - dip_tolerance

    def rowwise(readings: Iterable[tuple[Counted, float]]) -> None:
        get = last.get
        for obs, v in readings:
            if not 0.0 <= v < _INF:  # NaN, ±Inf or negative: keep the previous value
                continue
            key = (obs.source, obs.series, obs.kind, obs.token_type)
            prev = get(key)
            if prev is None:
                delta = v if obs.from_zero or (obs.origin or obs.source) in known_sources else 0.0
            elif v >= prev:
                delta = v - prev
            elif v >= prev * keep:
                delta = 0.0  # a dip: jitter between replicas, not a reset
                v = prev
            else:
                delta = v
            last[key] = v
            seen[key] = now
            if delta > 0:
                counted.append(obs)
                deltas.append(delta)
                segments.only = False

    single: list[TokenObservation] = []
    for item in items:
        if not isinstance(item, TokenColumns):
            single.append(item)
            continue
        if single:
            read.update(o.origin or o.source for o in single)
            rowwise((o, o.value) for o in single)
            single = []
        table = item.table
        read.update(_read_origins(table, item.values))
        block = kept.pop(id(table), None)
        if block is not None:
            block, idx, found = _count_block(
                block, item.values, now, retention_seconds, known_sources, keep
            )
            rows = table.rows
            counted += map(rows.__getitem__, idx.tolist())
            deltas += found.tolist()
            blocks.append(block)
            segments.parts.append((table, idx, found))
            continue
        rowwise(zip(table.rows, item.values.tolist(), strict=True))
        if id(table) in once:  # counted as arrays from the next refresh on
            # The keys are not kept (a tuple per series): the state file asks for them
            # once per save, a look-up by key builds its index.
            keys = _table_keys(table)
            new = _Block(
                table,
                np.array([last.pop(k, _NAN) for k in keys], dtype=np.float64),
                np.array([seen.pop(k, _NAN) for k in keys], dtype=np.float64),
            )
            del keys
            blocks.append(new)
    if single:
        read.update(o.origin or o.source for o in single)
        rowwise((o, o.value) for o in single)
    source_seen = {s: at for s, at in state.source_seen_at.items() if now - at <= retention_seconds}
    for s in read.union(origins):
        source_seen[s] = now
    result = _Counters(last, seen, tuple(blocks))
    last_map, seen_map = CounterMap(result, "last"), CounterMap(result, "seen")
    return counted, deltas, last_map, seen_map, source_seen, segments


class _Segments:
    """The tables :func:`_count` counted as arrays, in input order: each table, its rows with
    new tokens and their increments (arrays); ``only``: whether nothing else had new tokens."""

    __slots__ = ("only", "parts")

    def __init__(self) -> None:
        self.only = True
        self.parts: list[tuple[TokenTable, npt.NDArray[np.intp], npt.NDArray[np.float64]]] = []


def _read_origins(table: TokenTable, values: npt.NDArray[np.float64]) -> list[str]:
    """The origins of the rows with a usable value (those the read's observations name)."""
    if len(table.origins) == 1:
        usable = bool(((values >= 0.0) & (values < _INF)).any())
        return list(table.origins) if usable else []
    with np.errstate(invalid="ignore"):
        usable_rows = (values >= 0.0) & (values < _INF)
    found = np.bincount(table.origin_codes[usable_rows], minlength=len(table.origins))
    return [o for o, n in zip(table.origins, found.tolist(), strict=True) if n]


def _count_block(
    block: _Block,
    values: npt.NDArray[np.float64],
    now: float,
    retention_seconds: float,
    known_sources: set[str],
    keep: float,
) -> tuple[_Block, npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """:func:`_count`'s rule over a table's rows at once: the same comparisons and float
    operations as the row-by-row loop, so the same increments bit for bit. Returns the new
    block, the rows with new tokens (in order) and their increments."""
    table = block.table
    alive = now - block.seen <= retention_seconds  # NaN (no value kept): False
    prev = np.where(alive, block.last, _NAN)
    seen = np.where(alive, block.seen, _NAN)
    v = values
    with np.errstate(invalid="ignore"):
        valid = (v >= 0.0) & (v < _INF)
        has = prev == prev
        up = valid & has & (v >= prev)
        lower = valid & has & ~up
        dip = lower & (v >= prev * keep)
    known = np.fromiter((o in known_sources for o in table.origins), np.bool_, len(table.origins))
    first = valid & ~has & (table.from_zero | known[table.origin_codes])
    delta = np.zeros(len(v))
    delta[up] = v[up] - prev[up]
    reset = lower & ~dip
    delta[reset] = v[reset]
    delta[first] = v[first]
    taken = valid & ~dip
    prev[taken] = v[taken]
    seen[valid] = now
    idx = np.flatnonzero(delta > 0)
    return _Block(table, prev, seen, like=block), idx, delta[idx]


# --- name resolution -------------------------------------------------------------------------
def _self_hosted_forms(name: str) -> list[str]:
    routed = strip_route(name).strip().lower()
    return list(dict.fromkeys([routed, routed.rsplit("/", 1)[-1]]))


@dataclass(frozen=True, slots=True)
class SelfHostedIndex:
    """Self-hosted models by name form: the name without route prefixes, lower case, and its
    last path segment (``hosted_vllm/meta-llama/Llama-3.1-8B`` and ``Llama-3.1-8B`` both name
    ``meta-llama/Llama-3.1-8B``). Configured models win over discovered ones."""

    specs: tuple[SelfHostedSpec, ...]
    by_form: Mapping[str, SelfHostedSpec]

    @classmethod
    def build(cls, specs: Iterable[SelfHostedSpec]) -> SelfHostedIndex:
        ordered = tuple(specs)
        by_form: dict[str, SelfHostedSpec] = {}
        for spec in ordered:
            for name in (spec.model, *spec.aliases):
                for form in _self_hosted_forms(name):
                    by_form.setdefault(form, spec)
        return cls(ordered, by_form)

    def match(self, model: str) -> SelfHostedSpec | None:
        for form in _self_hosted_forms(model):
            spec = self.by_form.get(form)
            if spec is not None:
                return spec
        return None


def _serving(items: Iterable[TokenItem]) -> list[Counted]:
    """The model servers' token counters, in order (a columnar read's rows with a usable
    value: those its observations hold)."""
    out: list[Counted] = []
    for item in items:
        if isinstance(item, TokenColumns):
            rows, values = item.table.rows, item.values
            out += [rows[i] for i in item.table.serving if 0.0 <= values[i] < _INF]
        elif item.role != "usage" and item.kind == "tokens":
            out.append(item)
    return out


def _self_hosted_specs(
    ctx: TokenContext, observations: Iterable[TokenItem], discovered: Mapping[str, str]
) -> tuple[SelfHostedIndex, dict[str, str], dict[str, set[PodKey]]]:
    """Configured specs, plus models a serving source saw (kept across refreshes so a model's
    labels do not flip when its server is briefly unreachable). Returns the index, the
    updated discovered map and the pods each model's serving series came from."""
    configured = SelfHostedIndex.build(ctx.models)
    found = dict(discovered)
    serving_obs = _serving(observations)
    if ctx.discover:
        for o in serving_obs:
            if configured.match(o.model) is None and o.model not in found:
                found[o.model] = normalize_provider(o.provider) or "self_hosted"
    extra = [
        SelfHostedSpec(model=m, provider=p, api_equivalent=ctx.api_equivalents.get(m))
        for m, p in sorted(found.items())
    ]
    index = SelfHostedIndex.build((*ctx.models, *extra))
    pods: dict[str, set[PodKey]] = defaultdict(set)
    for o in serving_obs:
        spec = index.match(o.model)
        if spec is not None and o.namespace and o.pod:
            pods[spec.model].add((o.namespace, o.pod))
    return index, found, pods


class _PairPrice:
    """The price of the API names of one (label, provider) pair this refresh; ``mixed`` once
    two of its names priced differently (see :func:`account_tokens`)."""

    __slots__ = ("mixed", "price", "units")

    def __init__(self, price: LlmPrice | None) -> None:
        self.price = price
        self.mixed = False
        self.units: dict[str, float] = {}  # price.per_token by token type, filled as used


_ApiName = tuple[str, str, LlmPrice | None, _PairPrice]  # label, provider label, price, pair


# --- the accounting --------------------------------------------------------------------------
def _tenant(obs: Counted, pod_tenants: Mapping[PodKey, str], r: TenantResolver) -> str:
    if obs.tenant:
        return obs.tenant
    if obs.namespace and obs.pod and (obs.namespace, obs.pod) in pod_tenants:
        return pod_tenants[(obs.namespace, obs.pod)]
    if obs.namespace:
        return r.resolve(obs.namespace, {}, {})
    return UNALLOCATED_TENANT


def _rate_anchor(history: list[RateSample], now: float, window: float) -> RateSample | None:
    """Drop samples older than needed; the anchor is the newest sample at or before the
    window start (or the oldest kept one when the history is shorter than the window)."""
    while len(history) >= 2 and history[1].at <= now - window:
        history.pop(0)
    return history[0] if history and history[0].at < now else None


def _slope(now_value: float, then_value: float, hours: float) -> float:
    return max(0.0, now_value - then_value) / hours


@dataclass(slots=True)
class _Ledger:
    """The cumulative figures one refresh starts from (copies of the state's) and updates in
    place, phase by phase; the report and the new state share them at the end."""

    tokens: dict[UsageKey, float]
    cost: dict[UsageKey, float]
    unpriced: dict[tuple[str, str], float]
    api_cost: dict[str, float]
    sh_usage: dict[ShKey, float]
    served: dict[tuple[str, str], float]
    models: set[str]
    max_models: int

    @classmethod
    def of(cls, state: TokenState, max_models: int) -> _Ledger:
        return cls(
            dict(state.tokens),
            dict(state.cost),
            dict(state.unpriced),
            dict(state.api_cost),
            dict(state.self_hosted_usage),
            dict(state.served),
            set(state.models),
            max_models,
        )

    def model_label(self, name: str) -> str:
        """``name``, or ``__other__`` once ``max_models`` labels are given (a label, once
        given, stays: the set only grows)."""
        if name in self.models:
            return name
        if len(self.models) >= self.max_models:
            return OTHER_MODEL
        self.models.add(name)
        return name


@dataclass(slots=True)
class _Routed:
    """This refresh's increments, routed: self-hosted ``(key, model, tokens)``; per API
    usage key ``[its pair's price, token increments...]``; LiteLLM's own spend per (tenant,
    label, provider); and per-key prices once a pair's names priced differently."""

    sh_deltas: list[tuple[UsageKey, str, float]]
    api_deltas: dict[UsageKey, tuple[_PairPrice, list[float]]]
    spend: dict[tuple[str, str, str], list[float]]
    key_price: dict[UsageKey, LlmPrice | None]
    # Instead of api_deltas (kept routes, exact sums): keys in order, their pairs and tokens.
    api_sums: tuple[list[UsageKey], list[_PairPrice], list[float]] | None = None


def _route_increments(
    counted: list[Counted],
    deltas: list[float],
    index: SelfHostedIndex,
    catalog: LlmPriceCatalog | None,
    pod_tenants: Mapping[PodKey, str],
    resolver: TenantResolver,
    ledger: _Ledger,
) -> _Routed:
    """Phase 1: each increment to its usage key — self-hosted (served and used tokens added
    to the ledger) or API (with its price-list price) — or to LiteLLM's reported spend.

    What a model name resolves to (self-hosted spec; API label, provider and price) is
    looked up once per distinct (name, provider) this refresh, not once per series: a fleet
    has a few hundred models and 100k series. A name's label is fixed once first given, so
    the memo returns what a fresh call would."""
    routed = _Routed([], {}, defaultdict(list), {})
    served, sh_usage = ledger.served, ledger.sh_usage
    # model -> (self-hosted spec or None, {raw provider: (label, provider label, price, pair)})
    routes: dict[str, tuple[SelfHostedSpec | None, dict[str | None, _ApiName]]] = {}
    # A usage key's price is that of the name its last increment came from. The names of
    # one (label, provider) pair nearly always share one price, kept per pair; only once two
    # of them differ are prices kept per key (from then on, which is all the last one needs).
    pair_prices: dict[tuple[str, str], _PairPrice] = {}

    def api_name(model: str, raw_provider: str | None) -> _ApiName:
        price = catalog.lookup(model, raw_provider) if catalog else None
        provider = normalize_provider(raw_provider) or (price.provider if price else None)
        label = ledger.model_label(strip_route(model))
        provider_label = provider or UNKNOWN_PROVIDER
        pair = pair_prices.get((label, provider_label))
        if pair is None:
            pair = pair_prices[(label, provider_label)] = _PairPrice(price)
        elif pair.price is not price:
            pair.mixed = True
        return label, provider_label, price, pair

    for obs, delta in zip(counted, deltas, strict=True):
        route = routes.get(obs.model)
        if route is None:
            route = routes[obs.model] = (index.match(obs.model), {})
        spec = route[0]
        if spec is not None:
            if obs.role != "usage" and obs.kind == "tokens":
                k2 = (spec.model, obs.token_type)
                served[k2] = served.get(k2, 0.0) + delta
            if obs.role == "serving":
                continue
            tenant = obs.tenant or _tenant(obs, pod_tenants, resolver)
            key: UsageKey = (tenant, ledger.model_label(spec.model), spec.provider, obs.token_type)
            if obs.kind == "tokens":
                routed.sh_deltas.append((key, spec.model, delta))
                sh_key = (tenant, spec.model, obs.token_type)
                sh_usage[sh_key] = sh_usage.get(sh_key, 0.0) + delta
            continue
        if obs.role == "serving":
            continue
        tenant = obs.tenant or _tenant(obs, pod_tenants, resolver)
        names = route[1]
        resolved = names.get(obs.provider)
        if resolved is None:
            resolved = names[obs.provider] = api_name(obs.model, obs.provider)
        label, provider_label, price, pair = resolved
        if obs.kind == "spend_usd":
            routed.spend[(tenant, label, provider_label)].append(delta)
            continue
        key = (tenant, label, provider_label, obs.token_type)
        parts = routed.api_deltas.get(key)
        if parts is None:
            routed.api_deltas[key] = (pair, [delta])
        else:
            parts[1].append(delta)
        if pair.mixed:
            routed.key_price[key] = price
    return routed


_NO_ROW = -1


class _RouteCache:
    """What each row of one steady table routes to in phase 1, kept with the table across
    refreshes so a steady refresh routes its increments with array operations instead of
    resolving 100k rows again (:func:`_route_cached`).

    Valid while what the resolution read is unchanged (:meth:`holds`): the table, the price
    catalog object, the self-hosted specs (configuration and discovery), the pod tenants and
    namespace tenants the rows used. A model label is assumed per name (the name when the
    label set holds it, else ``__other__`` when the set is full) and checked each refresh
    against the ledger's set for the names with new tokens (:meth:`labels_hold`)."""

    __slots__ = (
        "api_code",
        "api_keys",
        "catalog",
        "key_price",
        "name_label",
        "names",
        "ns_keys",
        "ns_values",
        "pod_keys",
        "pod_values",
        "prices",
        "row_name",
        "row_price",
        "sh",
        "sh_code",
        "specs",
        "spend_code",
        "spend_keys",
        "table",
    )

    def __init__(
        self,
        table: TokenTable,
        index: SelfHostedIndex,
        catalog: LlmPriceCatalog | None,
        pod_tenants: Mapping[PodKey, str],
        resolver: TenantResolver,
        ledger: _Ledger,
    ) -> None:
        rows = table.rows
        n = len(rows)
        self.table, self.catalog, self.specs = table, catalog, index.specs
        pods: dict[PodKey, str | None] = {}
        namespaces: dict[str, str] = {}
        models, full = ledger.models, len(ledger.models) >= ledger.max_models
        names: dict[str, int] = {}
        self.name_label: list[str] = []
        prices: dict[int, int] = {}  # id(price) -> code
        self.prices: list[LlmPrice | None] = []
        api: dict[UsageKey, int] = {}
        spend: dict[tuple[str, str, str], int] = {}
        self.sh: list[tuple[tuple[str, str] | None, tuple[UsageKey, str, ShKey] | None]] = []
        # int32 codes: 113k rows × 5 arrays kept with the table
        row_name, row_price = np.full(n, _NO_ROW, np.int32), np.full(n, _NO_ROW, np.int32)
        api_code, spend_code = np.full(n, _NO_ROW, np.int32), np.full(n, _NO_ROW, np.int32)
        sh_code = np.full(n, _NO_ROW, np.int32)
        specs: dict[str, SelfHostedSpec | None] = {}
        api_names: dict[tuple[str, str | None], tuple[int, str, int]] = {}
        key_price: dict[int, int] = {}  # API key -> its rows' price, while they share one
        one_price = True

        def tenant_of(r: TokenSeries) -> str:  # _tenant, noting what it read
            if r.tenant:
                return r.tenant
            if r.namespace and r.pod:
                pk = (r.namespace, r.pod)
                t = pods[pk] = pod_tenants.get(pk)
                if t is not None:
                    return t
            if r.namespace:
                t = namespaces.get(r.namespace)
                if t is None:
                    t = namespaces[r.namespace] = resolver.resolve(r.namespace, {}, {})
                return t
            return UNALLOCATED_TENANT

        def name_code(name: str) -> int:
            code = names.get(name)
            if code is None:
                code = names[name] = len(names)
                # A name not labelled yet and the set not full: it would be added when it
                # first has tokens (labels_hold says no until then); its label is its name.
                self.name_label.append(OTHER_MODEL if name not in models and full else name)
            return code

        for i, r in enumerate(rows):
            if r.model in specs:
                spec = specs[r.model]
            else:
                spec = specs[r.model] = index.match(r.model)
            if spec is not None:
                served = (
                    (spec.model, r.token_type) if r.role != "usage" and r.kind == "tokens" else None
                )
                usage = None
                if r.role != "serving":
                    tenant = tenant_of(r)
                    row_name[i] = nc = name_code(spec.model)
                    if r.kind == "tokens":
                        key = (tenant, self.name_label[nc], spec.provider, r.token_type)
                        usage = (key, spec.model, (tenant, spec.model, r.token_type))
                if served or usage:
                    sh_code[i] = len(self.sh)
                    self.sh.append((served, usage))
                continue
            if r.role == "serving":
                continue
            tenant = tenant_of(r)
            resolved = api_names.get((r.model, r.provider))
            if resolved is None:
                price = catalog.lookup(r.model, r.provider) if catalog else None
                provider = normalize_provider(r.provider) or (price.provider if price else None)
                pc = prices.get(id(price))
                if pc is None:
                    pc = prices[id(price)] = len(self.prices)
                    self.prices.append(price)
                nc = name_code(strip_route(r.model))
                resolved = api_names[(r.model, r.provider)] = (nc, provider or UNKNOWN_PROVIDER, pc)
            nc, provider_label, pc = resolved
            row_name[i], row_price[i] = nc, pc
            label = self.name_label[nc]
            if r.kind == "spend_usd":
                spend_code[i] = spend.setdefault((tenant, label, provider_label), len(spend))
            else:
                key = (tenant, label, provider_label, r.token_type)
                api_code[i] = kc = api.setdefault(key, len(api))
                if key_price.setdefault(kc, pc) != pc:
                    one_price = False
        self.names = tuple(names)
        self.row_name, self.row_price, self.sh_code = row_name, row_price, sh_code
        self.api_code, self.spend_code = api_code, spend_code
        # The ledger's own key objects where it has them: 40k tuples not held twice.
        held = {k: k for k in ledger.tokens} if api else {}
        self.api_keys, self.spend_keys = tuple(map(held.get, api, api)), tuple(spend)
        # Each key's price when all its rows' names share one (else the last row's decides).
        self.key_price = (
            np.fromiter(key_price.values(), np.int32, len(key_price)) if one_price else None
        )
        self.pod_keys, self.pod_values = tuple(pods), list(pods.values())
        self.ns_keys, self.ns_values = tuple(namespaces), list(namespaces.values())

    def holds(
        self,
        table: TokenTable,
        index: SelfHostedIndex,
        catalog: LlmPriceCatalog | None,
        pod_tenants: Mapping[PodKey, str],
        resolver: TenantResolver,
    ) -> bool:
        """Whether every row would resolve as when the routes were worked out."""
        return (
            self.table is table
            and self.catalog is catalog
            and self.specs == index.specs
            and list(map(pod_tenants.get, self.pod_keys)) == self.pod_values
            and [resolver.resolve(ns, {}, {}) for ns in self.ns_keys] == self.ns_values
        )

    def labels_hold(self, rows: npt.NDArray[np.intp], ledger: _Ledger) -> bool:
        """Whether the names of ``rows`` get the assumed labels and none would be added
        (additions depend on the order of first use: the row-by-row path keeps it)."""
        models, full = ledger.models, len(ledger.models) >= ledger.max_models
        used = np.bincount(self.row_name[rows] + 1, minlength=len(self.names) + 1)[1:]
        for code in np.flatnonzero(used).tolist():
            name = self.names[code]
            label = name if name in models else (OTHER_MODEL if full else None)
            if label != self.name_label[code]:
                return False
        return True


def _groups(
    codes: npt.NDArray[np.int32], rows: npt.NDArray[np.intp], deltas: npt.NDArray[np.float64]
) -> tuple[list[int], list[list[float]], npt.NDArray[np.intp]]:
    """The increments of ``rows`` (in order) grouped by code, groups in order of first row:
    each group's code, its increments in row order and its last row. Rows with code -1
    are left out."""
    keep = codes >= 0
    codes, rows, deltas = codes[keep], rows[keep], deltas[keep]
    if not len(codes):
        return [], [], rows
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    ends = np.append(starts[1:], len(ordered))
    by_first = np.argsort(order[starts], kind="stable")
    values = deltas[order].tolist()
    slices = map(slice, starts[by_first].tolist(), ends[by_first].tolist())
    lists = list(map(values.__getitem__, slices))
    return ordered[starts[by_first]].tolist(), lists, rows[order[ends[by_first] - 1]]


def _route_cached(
    parts: Iterable[tuple[_RouteCache, npt.NDArray[np.intp], npt.NDArray[np.float64]]],
    ledger: _Ledger,
) -> _Routed:
    """Phase 1 (:func:`_route_increments`) from routes kept with the tables: the same
    usage keys, increments and prices, grouped with array operations.

    A usage key's price is that of the name of its last increment, what the row-by-row
    path's pair and per-key prices come to; the increments of a key stay a list, summed
    exactly (math.fsum) when booked. Self-hosted rows keep their sequential sums, in order."""
    routed = _Routed([], {}, defaultdict(list), {})
    api_deltas, spend = routed.api_deltas, routed.spend
    served, sh_usage, sh_deltas = ledger.served, ledger.sh_usage, routed.sh_deltas
    units: dict[int, _PairPrice] = {}  # one unit cache per price object
    parts = list(parts)
    single_api = sum(bool((c.api_code[rows] >= 0).any()) for c, rows, _ in parts) <= 1
    for cache, rows, deltas in parts:
        if len(cache.sh):
            on = cache.sh_code[rows]
            picked = on >= 0
            for code, delta in zip(on[picked].tolist(), deltas[picked].tolist(), strict=True):
                k2, usage = cache.sh[code]
                if k2 is not None:
                    served[k2] = served.get(k2, 0.0) + delta
                if usage is not None:
                    key, model, sh_key = usage
                    sh_deltas.append((key, model, delta))
                    sh_usage[sh_key] = sh_usage.get(sh_key, 0.0) + delta
        pairs = [units.setdefault(id(p), _PairPrice(p)) for p in cache.prices]
        if single_api and not api_deltas:
            sums = _exact_sums(cache, rows, deltas)
            if sums is not None:
                codes, ns, price_codes = sums
                keys_ = list(map(cache.api_keys.__getitem__, codes))
                routed.api_sums = (keys_, list(map(pairs.__getitem__, price_codes)), ns)
                _route_spend(cache, rows, deltas, spend)
                continue
        codes, lists, last = _groups(cache.api_code[rows], rows, deltas)
        keys = map(cache.api_keys.__getitem__, codes)
        key_pairs = map(pairs.__getitem__, cache.row_price[last].tolist())
        if not api_deltas:
            api_deltas.update(zip(keys, zip(key_pairs, lists, strict=True), strict=True))
        else:  # a key of an earlier table: its increments joined, the later name's price
            for key, pair, more in zip(keys, key_pairs, lists, strict=True):
                had = api_deltas.get(key)
                api_deltas[key] = (pair, more if had is None else had[1] + more)
        _route_spend(cache, rows, deltas, spend)
    return routed


def _route_spend(
    cache: _RouteCache,
    rows: npt.NDArray[np.intp],
    deltas: npt.NDArray[np.float64],
    spend: dict[tuple[str, str, str], list[float]],
) -> None:
    codes, lists, _ = _groups(cache.spend_code[rows], rows, deltas)
    keys = map(cache.spend_keys.__getitem__, codes)
    if not spend:
        spend.update(zip(keys, lists, strict=True))
        return
    for key, more in zip(keys, lists, strict=True):  # a key of an earlier table
        spend[key] += more


_EXACT = 2.0**53  # below it, sums of integral floats are exact in any order


def _exact_sums(
    cache: _RouteCache, rows: npt.NDArray[np.intp], deltas: npt.NDArray[np.float64]
) -> tuple[list[int], list[float], list[int]] | None:
    """Each API key's tokens of this table: the keys in order of first row, their sums and
    their last rows' price codes; ``None`` unless every increment is a whole number and every
    sum below 2**53. Then each partial sum is an integer the float holds exactly, so any
    order of additions (np.bincount's) gives the exact sum, which math.fsum returns too."""
    codes = cache.api_code[rows]
    keep = codes >= 0
    codes, d = codes[keep], deltas[keep]
    if not len(codes) or not bool((d == np.floor(d)).all()):
        return None if len(codes) else ([], [], [])
    totals = np.bincount(codes, weights=d, minlength=len(cache.api_keys))
    if not totals.max() < _EXACT:
        return None
    present, first = np.unique(codes, return_index=True)
    ordered = present[np.argsort(first)]
    if cache.key_price is not None:
        price_codes = cache.key_price[ordered]
    else:  # names of one key priced differently: the key's last row's name
        back, last_rev = np.unique(codes[::-1], return_index=True)
        last_of = np.empty(len(cache.api_keys), np.int32)
        last_of[back] = rows[keep][len(codes) - 1 - last_rev]
        price_codes = cache.row_price[last_of[ordered]]
    return ordered.tolist(), totals[ordered].tolist(), price_codes.tolist()


def _book_api_dollars(routed: _Routed, ledger: _Ledger) -> None:
    """Phase 2: API tokens and dollars (the price list; LiteLLM's spend for models the list
    lacks, split over token types by tokens; else unpriced), and the self-hosted tokens."""
    tokens, cost_cum = ledger.tokens, ledger.cost
    key_price = routed.key_price
    api_cost_parts: dict[str, list[float]] = defaultdict(list)
    unpriced_by_key: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for key, (pair, parts) in routed.api_deltas.items():
        n = math.fsum(parts)
        tokens[key] = tokens.get(key, 0.0) + n
        price = key_price[key] if key_price and key in key_price else pair.price
        if price is None:
            unpriced_by_key[key[:3]][key[3]] = n
            continue
        if price is pair.price:
            unit = pair.units.get(key[3])
            if unit is None:
                unit = pair.units[key[3]] = price.per_token(_token_type(key[3]))
        else:
            unit = price.per_token(_token_type(key[3]))
        usd = n * unit
        cost_cum[key] = cost_cum.get(key, 0.0) + usd
        api_cost_parts[key[0]].append(usd)
    _book_rest(routed, ledger, api_cost_parts, unpriced_by_key)


def _book_api_columns(routed: _Routed, ledger: _Ledger) -> None:
    """Phase 2 (:func:`_book_api_dollars`) for increments routed by the tables' kept routes
    (no key priced apart from its pair): per key the same float operations — the increments
    summed with math.fsum, one add to each cumulative figure, one product by the unit price
    — through C-level maps over the 40k keys instead of a Python loop."""
    tokens, cost_cum = ledger.tokens, ledger.cost
    if routed.api_sums is not None:
        keys, pairs, ns = routed.api_sums
    else:
        entries = routed.api_deltas
        keys = list(entries)
        pairs = list(map(itemgetter(0), entries.values()))
        ns = list(map(math.fsum, map(itemgetter(1), entries.values())))
    tokens.update(zip(keys, map(add, map(tokens.get, keys, repeat(0.0)), ns), strict=True))
    priced = list(map(is_not, map(attrgetter("price"), pairs), repeat(None)))
    types = list(map(itemgetter(3), keys))
    priced_pairs = list(zip(compress(pairs, priced), compress(types, priced), strict=True))
    units: dict[tuple[_PairPrice, str], float] = {}
    for pair, token_type in set(priced_pairs):
        if pair.price is not None:
            units[(pair, token_type)] = pair.price.per_token(_token_type(token_type))
    priced_keys = list(compress(keys, priced))
    unit = map(units.__getitem__, priced_pairs)
    usd = list(map(mul, compress(ns, priced), unit))
    old = map(cost_cum.get, priced_keys, repeat(0.0))
    cost_cum.update(zip(priced_keys, map(add, old, usd), strict=True))
    api_cost_parts: dict[str, list[float]] = defaultdict(list)
    for tenant, value in zip(map(itemgetter(0), priced_keys), usd, strict=True):
        api_cost_parts[tenant].append(value)
    unpriced_by_key: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    unpriced_rows = list(map(not_, priced))
    for key, n in zip(compress(keys, unpriced_rows), compress(ns, unpriced_rows), strict=True):
        unpriced_by_key[key[:3]][key[3]] = n
    _book_rest(routed, ledger, api_cost_parts, unpriced_by_key)


def _book_rest(
    routed: _Routed,
    ledger: _Ledger,
    api_cost_parts: dict[str, list[float]],
    unpriced_by_key: dict[tuple[str, str, str], dict[str, float]],
) -> None:
    """Phase 2's end: the self-hosted tokens, the models priced by LiteLLM's spend or left
    unpriced, and the API dollars per tenant."""
    tokens, cost_cum, unpriced = ledger.tokens, ledger.cost, ledger.unpriced
    for key, _, n in routed.sh_deltas:
        tokens[key] = tokens.get(key, 0.0) + n
    for k3, by_type in unpriced_by_key.items():
        reported = math.fsum(routed.spend.get(k3, ()))
        total = math.fsum(by_type.values())
        if reported > 0 and total > 0:
            for token_type, n in by_type.items():
                key = (*k3, token_type)
                usd = reported * n / total
                cost_cum[key] = cost_cum.get(key, 0.0) + usd
                api_cost_parts[k3[0]].append(usd)
        else:
            um = (k3[1], k3[2])
            unpriced[um] = unpriced.get(um, 0.0) + total
    api_cost = ledger.api_cost
    for tenant, parts in api_cost_parts.items():
        api_cost[tenant] = api_cost.get(tenant, 0.0) + math.fsum(parts)


@dataclass(frozen=True, slots=True)
class _Window:
    """Phase 3's result: the kept history (this refresh's sample last), the anchor sample at
    or before the window start, and the hours from it to now (0 without one)."""

    history: tuple[RateSample, ...]
    anchor: RateSample | None
    hours: float


def _rate_window(
    previous: Iterable[RateSample], ledger: _Ledger, now: float, window_seconds: float
) -> _Window:
    """Phase 3: this refresh's cumulative sample joins the history; the anchor of the
    slopes over the rate window."""
    sample = RateSample(now, dict(ledger.sh_usage), dict(ledger.served), dict(ledger.api_cost))
    history = [s for s in previous if s.at < now]
    anchor = _rate_anchor(history, now, window_seconds)
    history.append(sample)
    hours = (now - anchor.at) / SECONDS_PER_HOUR if anchor is not None else 0.0
    return _Window(tuple(history), anchor, hours)


def _api_cost_rates(api_cost: Mapping[str, float], window: _Window) -> dict[str, float]:
    """API token USD/hour per tenant: the slope of its cumulative cost over the window."""
    anchor, hours = window.anchor, window.hours
    out: dict[str, float] = {}
    for tenant, usd in api_cost.items():
        then = anchor.api_cost.get(tenant, 0.0) if anchor else usd
        out[tenant] = _slope(usd, then, hours) if hours > 0 else 0.0
    return out


def _pod_owner(cost: CostBreakdown) -> Callable[[PodKey], str]:
    """A serving pod's tenant as the core left it (``__other__`` when the core folded it)."""
    # The tenants the core kept (only needed when it folded some).
    kept = {t for rates in cost.rates.values() for t, _ in rates} if cost.folded_tenants else set()

    def owner(pod: PodKey) -> str:
        tenant = cost.pod_tenants.get(pod, UNALLOCATED_TENANT)
        if cost.folded_tenants and tenant not in kept and tenant not in _SENTINELS:
            return OTHER_TENANT
        return tenant

    return owner


def _serve_model(
    spec: SelfHostedSpec,
    pods: set[PodKey],
    usage: Iterable[tuple[ShKey, float]],
    ledger: _Ledger,
    window: _Window,
    ctx: TokenContext,
    cost: CostBreakdown,
    rates: dict[str, dict[tuple[str, str], float]],
    pod_owner: Callable[[PodKey], str],
) -> tuple[ModelServing | None, dict[str, float]]:
    """Phase 4, one self-hosted model: its serving cost per basis, moved from its pods'
    tenants to the tenants that sent it tokens (``rates`` updated in place), and its measured
    price per 1M tokens by type (empty when not measurable). ``None`` for a model with no
    pods and no tokens this window."""
    w = ctx.weights
    anchor, hours = window.anchor, window.hours
    served_rate: dict[str, float] = {}
    used_w: dict[str, float] = defaultdict(float)
    if hours > 0 and anchor is not None:
        for t in TOKEN_TYPES:
            k2 = (spec.model, t)
            if k2 in ledger.served:
                served_rate[t] = _slope(ledger.served[k2], anchor.served.get(k2, 0.0), hours)
        for usage_key, n in usage:
            used_w[usage_key[0]] += w.get(usage_key[2], 0.0) * _slope(
                n, anchor.self_hosted_usage.get(usage_key, 0.0), hours
            )
    weighted_served = math.fsum(w.get(t, 0.0) * r for t, r in served_rate.items())
    weighted_used = math.fsum(used_w.values())
    denominator = max(weighted_served, weighted_used)
    pod_list = tuple(sorted(pods))
    cost_rate: dict[str, float] = {}
    moved: dict[str, float] = {}
    for basis, basis_pods in cost.pod_rates.items():
        per_pod = [
            (p, r, basis_pods.get(p, {}).get(r, 0.0))
            for p in pod_list
            for r in ctx.charge_back_resources
        ]
        cost_rate[basis] = math.fsum(v for _, _, v in per_pod)
        if denominator <= 0 or basis not in rates:
            continue
        basis_rates = rates[basis]
        moved_parts: list[float] = []
        for p, r, amount in per_pod:
            if amount == 0:
                continue
            owner = pod_owner(p)
            shares = [(u, amount * wt / denominator) for u, wt in used_w.items() if wt > 0]
            out = math.fsum(v for _, v in shares)
            have = basis_rates.get((owner, r), 0.0)
            if out > have:
                # A full charge-back can round a hair above what the owner holds: move
                # exactly what it has, so its rate ends at 0, never at -1e-16.
                have = max(have, 0.0)
                shares = [(u, v * have / out) for u, v in shares]
                out = have
            basis_rates[(owner, r)] = have - out
            for u, v in shares:
                basis_rates[(u, r)] = basis_rates.get((u, r), 0.0) + v
            moved_parts.append(out)
        moved[basis] = math.fsum(moved_parts)
    measured_price: dict[str, float] = {}
    c_alloc = cost_rate.get("allocation", 0.0)
    if denominator > 0 and c_alloc > 0:
        measured_price = {
            t: c_alloc * w.get(t, 0.0) / denominator * PER_MILLION for t in TOKEN_TYPES
        }
    if not (pod_list or served_rate or used_w):
        return None, measured_price
    serving = ModelServing(
        model=spec.model,
        provider=spec.provider,
        pods=pod_list,
        cost_rate=cost_rate,
        weighted_token_rate=denominator,
        served_rate=served_rate,
        price_per_million=measured_price,
        charged_back=moved,
    )
    return serving, measured_price


def _charge_back(
    specs: Iterable[SelfHostedSpec],
    serving_pods: Mapping[str, set[PodKey]],
    allocations: AllocationSet | None,
    ledger: _Ledger,
    window: _Window,
    ctx: TokenContext,
    cost: CostBreakdown,
) -> tuple[
    dict[str, dict[tuple[str, str], float]], dict[str, ModelServing], dict[str, dict[str, float]]
]:
    """Phase 4: every self-hosted model's serving cost charged back (:func:`_serve_model`).
    Returns the per-basis tenant rates after charge-back, the models served and their
    measured prices."""
    rates: dict[str, dict[tuple[str, str], float]] = {b: dict(r) for b, r in cost.rates.items()}
    rows = allocations.allocations if allocations else ()
    serving: dict[str, ModelServing] = {}
    measured: dict[str, dict[str, float]] = {}
    owner = _pod_owner(cost)
    usage_by_model: dict[str, list[tuple[ShKey, float]]] = defaultdict(list)
    for usage_key, n in ledger.sh_usage.items():
        usage_by_model[usage_key[1]].append((usage_key, n))
    for spec in specs:
        pods = set(serving_pods.get(spec.model, ()))
        if spec.has_selector:  # discovered models select no rows: skip the 20k-row scan
            for a in rows:
                if spec.selects(a) and a.namespace and a.pod:
                    pods.add((a.namespace, a.pod))
        served, measured[spec.model] = _serve_model(
            spec, pods, usage_by_model.get(spec.model, ()), ledger, window, ctx, cost, rates, owner
        )
        if served is not None:
            serving[spec.model] = served
    return rates, serving, measured


def _book_self_hosted_dollars(
    sh_deltas: Iterable[tuple[UsageKey, str, float]],
    measured: Mapping[str, Mapping[str, float]],
    ledger: _Ledger,
) -> None:
    """Phase 5: self-hosted token dollars at the measured price (informational: the money
    itself moved through the charge-back). No price yet → unpriced, never zero."""
    cost_cum, unpriced = ledger.cost, ledger.unpriced
    for key, model, n in sh_deltas:
        spec_price = measured.get(model, {})
        if key[3] in spec_price:
            cost_cum[key] = cost_cum.get(key, 0.0) + n * spec_price[key[3]] / PER_MILLION
        else:
            um = (key[1], key[2])
            unpriced[um] = unpriced.get(um, 0.0) + n


def _published_prices(
    tokens: Iterable[UsageKey],
    specs: Mapping[str, SelfHostedSpec],
    measured: Mapping[str, Mapping[str, float]],
    catalog: LlmPriceCatalog | None,
) -> tuple[dict[tuple[str, str, str, str], float], dict[tuple[str, str, str], float]]:
    """Phase 7: USD per 1M tokens per (model, provider, type, source): the price list's for
    every API model that has tokens (looked up again each refresh, so a reloaded price list
    shows at once) and the measured ones; and each self-hosted model's API equivalent."""
    prices: dict[tuple[str, str, str, str], float] = {}
    self_hosted_labels = {(s.model, s.provider) for s in specs.values()}
    for model, provider in {(k[1], k[2]) for k in tokens} - self_hosted_labels:
        found = (
            catalog.lookup(model, None if provider == UNKNOWN_PROVIDER else provider)
            if (catalog and model != OTHER_MODEL)
            else None
        )
        if found is not None:
            for t in TOKEN_TYPES:
                prices[(model, provider, t, "price_list")] = per_million(found.per_token(t))
    for model, by_type in measured.items():
        spec = specs[model]
        for kind, v in by_type.items():
            prices[(model, spec.provider, kind, "measured")] = v
    api_eq: dict[tuple[str, str, str], float] = {}
    for spec in specs.values():
        if spec.api_equivalent and catalog is not None:
            ref = catalog.lookup(spec.api_equivalent)
            if ref is not None:
                for t in TOKEN_TYPES:
                    api_eq[(spec.model, spec.provider, t)] = per_million(ref.per_token(t))
    return prices, api_eq


def account_tokens(
    inputs: TokenInputs,
    ctx: TokenContext,
    state: TokenState,
    now: float,
    cost: CostBreakdown,
    allocations: AllocationSet | None,
    resolver: TenantResolver,
) -> tuple[TokenReport, TokenState, dict[str, dict[tuple[str, str], float]]]:
    """One refresh of token accounting, in named phases (see each).

    Returns the report, the new state and the per-basis tenant rates after charge-back, with
    resource ``tokens`` added (USD/hour; before tenant folding — the caller folds). ``cost``
    is the core's breakdown of this refresh (its per-pod rates and pod tenants are read).
    """
    catalog = inputs.catalog
    counted, deltas, last, seen_at, source_seen_at, segments = _count(
        inputs.observations, state, now, ctx.retention_seconds, inputs.sources, ctx.dip_tolerance
    )
    index, discovered, serving_pods = _self_hosted_specs(ctx, inputs.observations, state.discovered)
    ledger = _Ledger.of(state, ctx.max_models)
    routed, routes = _route(
        counted, deltas, segments, state.routes, index, catalog, cost, resolver, ledger
    )
    window = _rate_window(state.history, ledger, now, ctx.rate_window_seconds)
    api_cost_rate = _api_cost_rates(ledger.api_cost, window)
    active_specs = {s.model: s for s in index.specs}
    rates, serving, measured = _charge_back(
        active_specs.values(), serving_pods, allocations, ledger, window, ctx, cost
    )
    _book_self_hosted_dollars(routed.sh_deltas, measured, ledger)
    # Phase 6: resource "tokens", API token dollars per tenant as a rate.
    for basis_rates in rates.values():
        for tenant, value in api_cost_rate.items():
            basis_rates[(tenant, "tokens")] = value
    prices, api_eq = _published_prices(ledger.tokens, active_specs, measured, catalog)

    report = TokenReport(
        tokens=ledger.tokens,
        cost=ledger.cost,
        unpriced=ledger.unpriced,
        prices=prices,
        api_equivalent=api_eq,
        api_cost=ledger.api_cost,
        api_cost_rate=api_cost_rate,
        self_hosted=serving,
        catalog_version=catalog.version if catalog else None,
    )
    new_state = TokenState(
        last=last,
        seen_at=seen_at,
        source_seen_at=source_seen_at,
        tokens=ledger.tokens,
        cost=ledger.cost,
        unpriced=ledger.unpriced,
        api_cost=ledger.api_cost,
        self_hosted_usage=ledger.sh_usage,
        served=ledger.served,
        history=window.history,
        models=frozenset(ledger.models),
        discovered=discovered,
        routes=routes,
    )
    return report, new_state, rates


def _route(
    counted: list[Counted],
    deltas: list[float],
    segments: _Segments,
    kept: Iterable[_RouteCache | TokenTable],
    index: SelfHostedIndex,
    catalog: LlmPriceCatalog | None,
    cost: CostBreakdown,
    resolver: TenantResolver,
    ledger: _Ledger,
) -> tuple[_Routed, tuple[_RouteCache | TokenTable, ...]]:
    """Phase 1 from the routes kept with the tables (:func:`_route_cached`) when every
    increment comes from a steady table whose routes still hold, else row by row
    (:func:`_route_increments`). Returns the routes to keep: those that held, and new ones
    (worked out after routing, with its labels) for the tables steady a second refresh —
    a table only noted the first time (working routes out costs about a row-by-row pass,
    which a page whose series change every other refresh would pay for nothing)."""
    by_table = {id(c.table if isinstance(c, _RouteCache) else c): c for c in kept}
    pod_tenants = cost.pod_tenants
    valid: list[_RouteCache | None] = []
    for table, _, _ in segments.parts:
        c = by_table.get(id(table))
        held = isinstance(c, _RouteCache) and c.holds(table, index, catalog, pod_tenants, resolver)
        valid.append(c if held and isinstance(c, _RouteCache) else None)
    parts = [(c, rows, d) for c, (_, rows, d) in zip(valid, segments.parts, strict=True) if c]
    if (
        segments.only
        and len(parts) == len(segments.parts)
        and all(c.labels_hold(rows, ledger) for c, rows, _ in parts)
    ):
        routed = _route_cached(parts, ledger)
        _book_api_columns(routed, ledger)
        return routed, tuple(c for c, _, _ in parts)
    routed = _route_increments(counted, deltas, index, catalog, pod_tenants, resolver, ledger)
    _book_api_dollars(routed, ledger)
    routes: list[_RouteCache | TokenTable] = []
    for c, (table, rows, _) in zip(valid, segments.parts, strict=True):
        if c is not None and c.labels_hold(rows, ledger):
            routes.append(c)
        elif c is not None or table is _table_of(by_table.get(id(table))):
            routes.append(_RouteCache(table, index, catalog, pod_tenants, resolver, ledger))
        else:
            routes.append(table)
    return routed, tuple(routes)


def _table_of(kept: _RouteCache | TokenTable | None) -> TokenTable | None:
    return kept.table if isinstance(kept, _RouteCache) else kept


def per_million(usd_per_token: float) -> float:
    """USD per 1M tokens for a gauge, to 15 significant digits (2.5e-07 per token shows as
    0.25, not 0.24999999999999997); within 1e-15 of the exact product."""
    return float(f"{usd_per_token * PER_MILLION:.15g}")


def _token_type(value: str) -> TokenType:
    if value == "output":
        return "output"
    if value == "cached_input":
        return "cached_input"
    return "input"


def fold_token_report(report: TokenReport, owner: Callable[[str], str]) -> TokenReport:
    """``report`` with every tenant mapped through ``owner`` (tenant folding), sums kept.

    ``owner`` is asked once per distinct tenant, not once per series: folding moves a few
    tenants among the 40k token series of a fleet (see :func:`remap_tenants`)."""
    tenants = {k[0] for k in report.tokens}
    tenants.update(k[0] for k in report.cost)
    tenants.update(report.api_cost)
    tenants.update(report.api_cost_rate)
    moved = {t: o for t in tenants if (o := owner(t)) != t}

    def fold1(d: Mapping[str, float]) -> dict[str, float]:
        return {k[0]: v for k, v in remap_tenants({(t,): v for t, v in d.items()}, moved).items()}

    return TokenReport(
        tokens=remap_tenants(report.tokens, moved),
        cost=remap_tenants(report.cost, moved),
        unpriced=report.unpriced,
        prices=report.prices,
        api_equivalent=report.api_equivalent,
        api_cost=fold1(report.api_cost),
        api_cost_rate=fold1(report.api_cost_rate),
        self_hosted=report.self_hosted,
        catalog_version=report.catalog_version,
    )
