"""Frozen inputs to the pure cost model: what the sources parsed, nothing more.

Every source's ``parse()`` returns one of these record types; the refresh loop bundles the
last good records of every source into one :class:`Inputs` and hands it to the model. Nothing
here knows about HTTP, clocks or configuration.

Units: money in US dollars (float, a rate or a window total as the field says), time in
hours unless the name says seconds, utilization as a 0–1 ratio.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from aifinops.model.llm_prices import LlmPriceCatalog, TokenType

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One DCGM utilization series: a whole GPU, or one MIG instance of it.

    ``uuid`` is the physical GPU's UUID (for MIG the parent GPU's). ``mig_profile`` (e.g.
    ``"1g.10gb"``) and ``mig_instance`` are set only for MIG instances. ``namespace``/``pod``
    are the pod that dcgm-exporter attributed the device to, or ``None`` when the device has
    no pod (an unallocated GPU). A time-sliced GPU shows up as several samples with the same
    ``uuid`` and no MIG fields, one per pod sharing it.

    ``utilization`` is a 0–1 ratio already (the DCGM source converts ``DCGM_FI_DEV_GPU_UTIL``
    percent to a ratio); it is clamped to [0, 1] by the parser. ``metric`` names the DCGM
    metric it was read from (empty when unknown); on a time-sliced GPU the figure may be each
    pod's own or the device's repeated on every pod (the cost model tells them apart).
    """

    uuid: str
    gpu_index: str
    model_name: str
    node: str
    utilization: float
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    mig_profile: str | None = None
    mig_instance: str | None = None
    metric: str = ""
    # dcgm-exporter's per-process series (``--kubernetes-virtual-gpus``): this pod's own
    # processes' figure, published beside the device's own series; never a repeated device value.
    per_process: bool = False


@dataclass(frozen=True, slots=True)
class SharedHold:
    """One pod's HAMi allocation on one physical GPU (its containers summed).

    ``core_share`` and ``memory_share`` are 0–1 of the device: the containers' allocated
    cores over the device's core limit (HAMi's ``gpucores``; 0 when the pod set none), and
    their allocated memory over the device's memory. ``utilization`` is the pod's live share
    of the device's time (0–1, its containers' SM use summed), or ``None`` while no container
    of the pod has touched CUDA (HAMi publishes no usage series until then: HAMi #281).
    ``model_name`` is HAMi's device type without its ``NVIDIA-`` prefix (DCGM's name wins
    where DCGM sees the device).
    """

    uuid: str
    node: str
    namespace: str
    pod: str
    core_share: float
    memory_share: float
    utilization: float | None = None
    model_name: str = ""
    gpu_index: str = ""


@dataclass(frozen=True, slots=True)
class GpuEnergy:
    """One physical GPU's energy over an interval, in joules (before PUE). ``method`` says
    where it came from: ``counter`` (DCGM's total-energy counter, a reset counted from zero as
    Prometheus' ``increase()`` does) or ``power`` (power draw × time where there is no
    counter)."""

    uuid: str
    joules: float
    method: Literal["counter", "power"] = "counter"


@dataclass(frozen=True, slots=True)
class EnergyReadings:
    """Every measured GPU's energy between two reads of the energy source, ``start`` and
    ``end`` (unix seconds). The first read has no interval: ``start == end`` and no GPUs.
    ``counter_resets``: counters seen going down in this interval. The source keeps the
    previous reading; the model only splits what it is handed (:mod:`aifinops.model.energy`),
    once per distinct ``end``."""

    start: float
    end: float
    gpus: tuple[GpuEnergy, ...] = ()
    counter_resets: int = 0


class Allocation(msgspec.Struct, frozen=True, gc=False):
    """One OpenCost ``/allocation/compute`` row (pod aggregation) over the query window.

    Costs are dollars accrued over the window (OpenCost's ``*Cost`` plus its ``*CostAdjustment``),
    never negative after parsing; ``None`` numbers from OpenCost (its NaN) are parsed as 0.
    ``name`` is the allocation key: ``cluster/node/namespace/pod`` style keys in OpenCost, or a
    sentinel such as ``__idle__`` / ``__unallocated__`` (see :attr:`is_idle`).

    ``gpu_count`` is the average number of GPUs requested over the window (the newer
    ``gpuAllocation.gpuRequestAverage`` when present, else the old top-level
    ``gpuRequestAverage``, else ``gpuCount``); ``gpu_usage_average`` likewise (0–n GPUs).
    ``labels`` are pod labels as OpenCost reports them (keys sanitized by Prometheus' rules, e.g.
    ``aifinops_io_tenant``); ``namespace_labels`` likewise.

    Usage over the window, for chargeback quantities (OpenCost's ``cpuCoreHours``,
    ``ramByteHours``, ``pvByteHours``; GPU-hours are ``gpu_hours``): core-hours and
    byte-hours, 0 where OpenCost does not say.

    A msgspec Struct, not a dataclass: a refresh builds one per pod (20k at fleet scale) and
    a frozen dataclass's ``__init__`` costs ten times as much; ``gc=False`` because a row
    holds no container that could close a cycle, so the collector never walks them.
    """

    name: str
    namespace: str | None
    pod: str | None
    node: str | None
    minutes: float
    cpu_cost: float = 0.0
    gpu_cost: float = 0.0
    ram_cost: float = 0.0
    pv_cost: float = 0.0
    network_cost: float = 0.0
    load_balancer_cost: float = 0.0
    shared_cost: float = 0.0
    external_cost: float = 0.0
    gpu_hours: float = 0.0
    gpu_count: float = 0.0
    gpu_usage_average: float | None = None
    labels: Mapping[str, str] = EMPTY_LABELS
    namespace_labels: Mapping[str, str] = EMPTY_LABELS
    cpu_core_hours: float = 0.0
    ram_byte_hours: float = 0.0
    pv_byte_hours: float = 0.0

    @property
    def is_idle(self) -> bool:
        """OpenCost's idle row: cluster capacity that no pod requested."""
        return self.name.endswith("__idle__")

    @property
    def is_unallocated(self) -> bool:
        """OpenCost's own unallocated row (cost it could not tie to a pod)."""
        return self.name.endswith("__unallocated__")

    @property
    def total_cost(self) -> float:
        """Sum of every cost field, in dollars over the window."""
        return (
            self.cpu_cost
            + self.gpu_cost
            + self.ram_cost
            + self.pv_cost
            + self.network_cost
            + self.load_balancer_cost
            + self.shared_cost
            + self.external_cost
        )


@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class AllocationSet:
    """All OpenCost rows for one query window, immutable.

    ``window_hours`` is the length of the query window; a rate is ``cost / window_hours``.
    :attr:`allocations` are the rows. A set is held either as those rows or, built with
    :meth:`columnar`, as one column per :class:`Allocation` field, from which
    :attr:`allocations` builds the rows each time it is read (new objects, equal ones).

    Why two forms: the rate query's rows are read several times every refresh, so they are
    kept as objects; the month's daily sets (tens of thousands of rows, kept for hours) are
    read once when a day is folded, and as columns (numbers in ``array('d')``) they take
    less than half the memory. Equality compares the window and the rows, whatever the form.
    (A dataclass, so that ``offload.release`` frees its rows a chunk at a time.)
    """

    window_hours: float
    rows: Sequence[Allocation] | None
    columns: tuple[Sequence[Any], ...] | None

    def __init__(self, window_hours: float, allocations: Sequence[Allocation]) -> None:
        object.__setattr__(self, "window_hours", window_hours)
        object.__setattr__(self, "rows", allocations)
        object.__setattr__(self, "columns", None)

    @classmethod
    def columnar(cls, window_hours: float, allocations: Iterable[Allocation]) -> AllocationSet:
        """The rows held as columns, one per :class:`Allocation` field in its order (see
        the class doc); :attr:`allocations` gives rows equal to ``allocations``, in order."""
        rows = tuple(allocations)
        if rows:
            columns = tuple(
                array("d", column) if name in _FLOAT_FIELDS else column
                for name, column in zip(
                    Allocation.__struct_fields__,
                    zip(*map(msgspec.structs.astuple, rows), strict=True),
                    strict=True,
                )
            )
        else:
            columns = tuple(() for _ in Allocation.__struct_fields__)
        out = cls(window_hours, ())
        object.__setattr__(out, "rows", None)
        object.__setattr__(out, "columns", columns)
        return out

    @property
    def allocations(self) -> Sequence[Allocation]:
        """The rows, in the order they were given."""
        if self.rows is not None:
            return self.rows
        assert self.columns is not None
        return tuple(map(Allocation, *self.columns))

    def column(self, field: str) -> Sequence[Any]:
        """One :class:`Allocation` field of every row, in row order: for a columnar set the
        column it holds (an ``array('d')`` for a float field), with no row built; for a set
        of rows a new list. For a reader that sums a column per tenant, say. ``KeyError``
        for a name that is not a field."""
        index = _FIELD_INDEX[field]
        if self.columns is not None:
            return self.columns[index]
        assert self.rows is not None
        return [getattr(row, field) for row in self.rows]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AllocationSet):
            return NotImplemented
        return self.window_hours == other.window_hours and tuple(self.allocations) == tuple(
            other.allocations
        )

    def __repr__(self) -> str:
        return (
            f"AllocationSet(window_hours={self.window_hours!r}, allocations={self.allocations!r})"
        )


_FIELD_INDEX = {name: i for i, name in enumerate(Allocation.__struct_fields__)}
# Allocation's float fields: a columnar set holds each in an array('d') (8 bytes a value
# where a float object and its reference take 32). gpu_usage_average may be None: not here.
_FLOAT_FIELDS = frozenset(
    name
    for name, kind in zip(
        Allocation.__struct_fields__, msgspec.structs.fields(Allocation), strict=True
    )
    if kind.type is float
)


TokenRole = Literal["usage", "serving", "both"]


@dataclass(frozen=True, slots=True)
class TokenObservation:
    """One upstream token counter as last read: a cumulative count (or, for
    ``kind="spend_usd"``, cumulative dollars an upstream computed).

    ``series`` identifies the upstream series within ``source`` (a digest of its labels: the
    raw labels, API-key hashes and user names included, never leave the source). ``model`` is
    the name as the upstream spelled it; ``provider`` a normalized provider or ``None``.
    ``tenant`` is set when a label rule named it; otherwise the model resolves it from
    ``namespace`` (the pod's tenant) or books ``__unallocated__``. ``namespace``/``pod`` are
    the model server's pod for ``serving`` observations. ``from_zero`` marks counters that
    started inside this process (the push API): their first reading is all new tokens, where
    a scraped counter's first reading is only a baseline. ``origin`` is what was read
    (one scrape target of a source; ``None``: the source as a whole): a series new to an
    origin already read counts from zero, one in the first read of an origin is a baseline.
    """

    source: str
    series: str
    role: TokenRole
    token_type: TokenType
    model: str
    value: float
    provider: str | None = None
    tenant: str | None = None
    namespace: str | None = None
    pod: str | None = None
    kind: Literal["tokens", "spend_usd"] = "tokens"
    from_zero: bool = False
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class TokenSeries:
    """One upstream token counter series: a :class:`TokenObservation` without its value (the
    same fields, the same meaning). A scraped source keeps one per series for as long as the
    series stays on its page and hands it out read after read (:class:`TokenTable`)."""

    source: str
    series: str
    role: TokenRole
    token_type: TokenType
    model: str
    provider: str | None = None
    tenant: str | None = None
    namespace: str | None = None
    pod: str | None = None
    kind: Literal["tokens", "spend_usd"] = "tokens"
    from_zero: bool = False
    origin: str | None = None

    def at(self, value: float) -> TokenObservation:
        """This series read as ``value``."""
        return TokenObservation(
            self.source,
            self.series,
            self.role,
            self.token_type,
            self.model,
            value,
            self.provider,
            self.tenant,
            self.namespace,
            self.pod,
            self.kind,
            self.from_zero,
            self.origin,
        )


counter_key = attrgetter("source", "series", "kind", "token_type")
_origin, _source, _role, _kind, _from_zero, _series = map(
    attrgetter, ("origin", "source", "role", "kind", "from_zero", "series")
)
"""A series' counter key in the model's state: (source, series, kind, token type)."""


class TokenTable:
    """The series of one columnar read (:class:`TokenColumns`), in order, with what the model
    derives from them alone, worked out once per table rather than once per refresh: a
    steady page's table is the same object read after read (only the values change).

    ``origins``/``origin_codes``: each row's origin (``origin``, else ``source``) as an index
    into ``origins``; ``from_zero``: the rows' flags; ``serving``: the rows of model servers'
    token counters (``role != "usage"``, ``kind == "tokens"``); ``unique``: whether no two
    rows share a counter key (source, series, kind, token type) — a page with a duplicated
    series is counted row by row, in order, as a sequence of observations is.
    """

    __slots__ = ("from_zero", "origin_codes", "origins", "rows", "serving", "unique")

    def __init__(self, rows: Sequence[TokenSeries]) -> None:
        self.rows: tuple[TokenSeries, ...] = tuple(rows)
        n = len(self.rows)
        # Attribute reads through C (map, attrgetter): a first read has 113k rows.
        origin, source = list(map(_origin, self.rows)), list(map(_source, self.rows))
        named = [o or s for o, s in zip(origin, source, strict=True)]
        at = {o: i for i, o in enumerate(dict.fromkeys(named))}
        self.origins: tuple[str, ...] = tuple(at)
        self.origin_codes: npt.NDArray[np.intp] = (
            np.zeros(n, dtype=np.intp)
            if len(at) == 1
            else np.fromiter(map(at.__getitem__, named), np.intp, n)
        )
        self.from_zero: npt.NDArray[np.bool_] = np.fromiter(map(_from_zero, self.rows), np.bool_, n)
        usage = np.fromiter(map("usage".__eq__, map(_role, self.rows)), np.bool_, n)
        tokens = np.fromiter(map("tokens".__eq__, map(_kind, self.rows)), np.bool_, n)
        self.serving: tuple[int, ...] = tuple(np.flatnonzero(~usage & tokens).tolist())
        # Distinct series ids are enough (and a set of cached-hash strings is cheap); else
        # the keys decide.
        self.unique = len(set(map(_series, self.rows))) == n or (
            len(set(map(counter_key, self.rows))) == n
        )

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True, eq=False)
class TokenColumns:
    """One read of a scraped token source, columnar: its series (``table``) and this read's
    value of each (``values``, float64, one per row; NaN where the series gave no usable
    reading this time: NaN, ±Inf or negative on the page). A read of the same series as the
    last one shares its table, so the model can count a steady page with array operations.
    :meth:`observations` is the same read as a sequence of observations."""

    table: TokenTable
    values: npt.NDArray[np.float64]

    def observations(self) -> tuple[TokenObservation, ...]:
        """The rows with a usable value (finite, not negative) as observations, in order."""
        return tuple(
            row.at(v)
            for row, v in zip(self.table.rows, self.values.tolist(), strict=True)
            if 0.0 <= v < _INF
        )


_INF = float("inf")


TokenItem = TokenObservation | TokenColumns
"""What a token source hands the model: single observations (pushed, queried), or a scraped
read's columns."""


def token_observations(items: Iterable[TokenItem]) -> tuple[TokenObservation, ...]:
    """``items`` as single observations, in order (columns expanded)."""
    out: list[TokenObservation] = []
    for item in items:
        if isinstance(item, TokenColumns):
            out.extend(item.observations())
        else:
            out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TokenInputs:
    """Token counters from every token source with data this refresh, and the price list.

    ``sources`` names the origins whose data is present — the token sources, or a source's
    scrape targets (:attr:`TokenObservation.origin`) — empty reads included: a series that
    appears later in an origin read before counts from zero. A source whose data is absent
    keeps its counters' last values in the model state until they expire. ``catalog`` is
    ``None`` when no price list was ever loaded: every API token is then unpriced.
    """

    observations: tuple[TokenItem, ...]
    sources: frozenset[str]
    catalog: LlmPriceCatalog | None


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the model needs for one refresh, as the sources last saw it.

    A field is ``None`` when its source has never succeeded or its data went stale: the model
    then publishes what it can without it (no DCGM → no usage basis, no idle GPUs).
    ``tokens`` is ``None`` when token analytics is not configured.
    """

    gpus: tuple[GpuSample, ...] | None
    allocations: AllocationSet | None
    tokens: TokenInputs | None = None
    # HAMi's allocations and live use (``None``: no HAMi source, or its data went stale).
    shared: tuple[SharedHold, ...] | None = None
    energy: EnergyReadings | None = None


@dataclass(frozen=True, slots=True)
class DailyAllocationSets:
    """OpenCost allocation sets of one day each (``step=1d``, ``accumulate=false``), for
    month-to-date spend and the daily series the budget forecast fits.

    ``start``/``end`` bound the query (unix seconds; ``end`` is when it was fetched). Each set
    is ``(set start, set end, rows)``: the set's dollars are spent over ``[set start, set end)``
    (``AllocationSet.window_hours`` is that span; the last set ends at ``end``). Sets follow
    each other from ``start`` in steps of 24 h, so a set boundary falls on the month start when
    the query was built to (see :mod:`aifinops.sources.opencost`).
    """

    start: float
    end: float
    sets: tuple[tuple[float, float, AllocationSet], ...]
