"""GPU utilization from NVIDIA dcgm-exporter, per GPU (or MIG instance) and pod.

Two ways to read it, chosen by ``sources.dcgm.mode``:

* ``prometheus``: one instant query of the utilization metrics (``{__name__=~"…"}``) against a
  Prometheus (or Thanos, Mimir) that scrapes dcgm-exporter;
* ``scrape``: the dcgm-exporter ``/metrics`` pages themselves, all fetched concurrently.

Either way the series end up in :func:`gpu_samples`, the pure mapping from dcgm-exporter's
labels to :class:`~aifinops.model.inputs.GpuSample`. The source reads the same series refresh
after refresh with new values, so it works each series out once (:class:`Series`, kept by
a ``promapi.VectorReader`` or a ``SeriesReader`` per page), the samples' plan once per list of
series (:class:`GpuSamples`), and then reads only values. The label names are
dcgm-exporter's (``internal/pkg/transformation/const.go`` and its exposition template):

* ``UUID`` (``uuid`` with ``--use-old-namespace``): the GPU; for a MIG instance, its parent;
* ``gpu``: the GPU index on the node; ``modelName``: e.g. ``NVIDIA H100 80GB HBM3``;
* ``hostname``, or ``Hostname`` before dcgm-exporter PR #655: the node;
* ``GPU_I_PROFILE`` (e.g. ``1g.10gb``) and ``GPU_I_ID``: the MIG instance;
* ``pod``, ``namespace``, ``container`` (``pod_name``, ``pod_namespace``, ``container_name``
  with ``--use-old-namespace``): the pod the device is assigned to, empty when none.

Metric names, both dcgm-exporter generations, recognised without configuration (see
tests/fixtures/PROVENANCE.md for where each name was looked up):

* ≤ 4.8: ``DCGM_FI_DEV_GPU_UTIL`` (percent, 0–100) and ``DCGM_FI_PROF_GR_ENGINE_ACTIVE``
  (ratio), driver label ``DCGM_FI_DRIVER_VERSION``;
* ≥ 4.9 (DCGM 4.7 field names): ``DCGM_FI_DEV_GPU_UTIL_RATIO`` (a 0–1 ratio now) and
  ``DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO``, driver label ``DCGM_FI_SYSTEM_DRIVER_VERSION``.

``utilization_metric: auto`` (the default) picks per unit (a GPU, or a MIG instance): the
profiling metric where any series of the unit has it (MIG instances have only it), else the
device metric. A GPU without profiling counters (a T4) is measured by the device metric and
never fails the source. dcgm-exporter's per-process series (``--kubernetes-virtual-gpus``,
PR #594: the device's series without a pod beside one per pod, with ``pod_uid`` and the pod's
own processes' figure) are marked ``per_process``: each pod's own share. The same series
read twice (two Prometheus jobs scraping one dcgm-exporter) counts once: the highest value
of each (unit, pod, container, metric) is kept.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from sys import intern
from typing import Literal, TypeVar, cast

import httpx

from aifinops.model.inputs import GpuSample
from aifinops.settings import DcgmSettings
from aifinops.sources.base import CpuRunner, Slot, SourceError
from aifinops.sources.promapi import VectorReader
from aifinops.sources.promtext import SeriesEntry, SeriesReader
from aifinops.sources.transport import Transport

UtilizationMetric = Literal["auto", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"]

# Per metric name: (kind, multiplier from its unit to a 0–1 ratio). dcgm-exporter ≥ 4.9 renamed
# the fields to DCGM 4.7's names and reports device utilization as a ratio.
UTILIZATION_NAMES: Mapping[str, tuple[Literal["device", "profiling"], float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("device", 0.01),
    "DCGM_FI_DEV_GPU_UTIL_RATIO": ("device", 1.0),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("profiling", 1.0),
    "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO": ("profiling", 1.0),
}
_KIND_OF_CHOICE = {"DCGM_FI_DEV_GPU_UTIL": "device", "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "profiling"}


def metric_names(choice: UtilizationMetric) -> tuple[str, ...]:
    """The DCGM metric names read for ``choice`` (both generations' names)."""
    if choice == "auto":
        return tuple(UTILIZATION_NAMES)
    kind = _KIND_OF_CHOICE[choice]
    return tuple(n for n, (k, _) in UTILIZATION_NAMES.items() if k == kind)


# Where the pod a device is assigned to can be found, most specific first. A Prometheus job
# that does not honor the target's labels renames dcgm-exporter's pod/namespace/container to
# exported_*, and its own pod/namespace/container then name the dcgm-exporter pod itself.
_POD_LABELS = (
    ("exported_namespace", "exported_pod", "exported_container"),
    ("pod_namespace", "pod_name", "container_name"),
    ("namespace", "pod", "container"),
)


class DcgmSource:
    """Reads the configured utilization metric and returns one sample per series.

    ``fetch`` raises :class:`SourceError` when Prometheus, or any one of the scraped pages,
    fails: partial GPU data would misstate idle cost (a GPU missing from the data looks unused,
    and its whole cost would be reported as idle), so the refresh loop keeps the last complete
    data instead.
    """

    name = "dcgm"
    slot = Slot.GPUS
    local = False
    min_interval_seconds = 0.0
    first_read_baseline = False
    targets = None

    def __init__(self, settings: DcgmSettings, *, run: CpuRunner) -> None:
        self._settings = settings
        self._run = run
        self._transport = Transport(self.name, settings, run)
        # What is worked out once per series, kept between reads (bounded: the series of the
        # last read): the answer's or each page's series, and the samples' plan.
        self._answer: VectorReader[Series] = VectorReader()
        self._pages = [
            SeriesReader[Series](frozenset(metric_names(settings.utilization_metric)))
            for _ in settings.scrape_urls
        ]
        self._samples = GpuSamples(settings.utilization_metric)

    async def fetch(self, client: httpx.AsyncClient) -> tuple[GpuSample, ...]:
        s = self._settings
        names = metric_names(s.utilization_metric)
        headers = self._transport.headers()
        if s.mode == "prometheus":
            # One query for every name (both generations, both metrics): one round trip and
            # one response; each series says its metric in __name__.
            body = await self._transport.query_body(
                client, utilization_query(names, s.selector), headers
            )
            samples = await self._run(self._read_answer, body, names[0])
            return _not_empty(samples, names)
        strings: dict[str, str] = {}  # this read's (see Series.of)
        series, values = await read_pages(
            self._transport,
            s,
            client,
            headers,
            self._pages,
            lambda name, labels: Series.of(name, labels, strings),
        )
        return _not_empty(await self._run(self._samples.samples, series, values), names)

    def _read_answer(self, body: bytes, default: str) -> tuple[GpuSample, ...]:
        strings: dict[str, str] = {}  # this read's (see Series.of)

        def derive(labels: Mapping[str, str]) -> Series:
            return Series.of(labels.get("__name__") or default, labels, strings)

        series, values = self._answer.read(body, derive)
        return self._samples.samples(series, values)


S = TypeVar("S", bound=SeriesEntry)
_PageKey = tuple[int, str, tuple[tuple[str, str], ...], float, int]
# Each page read in flight, with how many readers wait for it.
_pages_in_flight: dict[_PageKey, tuple[asyncio.Task[bytes], list[int]]] = {}


async def read_pages(
    transport: Transport,
    settings: DcgmSettings,
    client: httpx.AsyncClient,
    headers: Mapping[str, str],
    readers: Sequence[SeriesReader[S]],
    derive: Callable[[str, Mapping[str, str]], S],
) -> tuple[list[S], list[float]]:
    """Every dcgm-exporter page of ``settings`` at once, each read by its own reader
    (``readers[i]`` reads ``scrape_urls[i]``) on the CPU worker as it arrives: the series
    and values of all, in URL order. The first failure cancels the other pages and is the
    one raised (a page that does not parse: reason ``parse``, named by its URL), as
    ``Transport.read_pages``."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    _read_page(transport, settings, client, url, headers, reader, derive)
                )
                for url, reader in zip(settings.scrape_urls, readers, strict=True)
            ]
    except* SourceError as failed:
        raise failed.exceptions[0] from None
    series: list[S] = []
    values: list[float] = []
    for task in tasks:
        page_series, page_values = task.result()
        series += page_series
        values += page_values
    return series, values


async def _read_page(
    transport: Transport,
    settings: DcgmSettings,
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    reader: SeriesReader[S],
    derive: Callable[[str, Mapping[str, str]], S],
) -> tuple[list[S], list[float]]:
    body = await shared_page(transport, settings, client, url, headers)
    try:
        return await transport.run(reader.read, body, derive)
    except ValueError as exc:
        raise SourceError("parse", f"{url}: {exc}") from None


async def shared_page(
    transport: Transport,
    settings: DcgmSettings,
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
) -> bytes:
    """The body of one scrape page. The DCGM and energy sources read the same dcgm-exporter
    pages, at the same time each refresh: a page one of them is already reading (same
    client, URL, headers and limits) is not asked for again, both get its one body or its
    one failure. Nothing is kept once the read is over."""
    key = (
        id(client),
        url,
        tuple(sorted(headers.items())),
        settings.timeout_seconds,
        settings.max_response_bytes,
    )
    entry = _pages_in_flight.get(key)
    if entry is None:
        task = asyncio.create_task(transport.page(client, url, headers))
        entry = _pages_in_flight[key] = (task, [0])
        task.add_done_callback(lambda done: _page_read(key, done))
    task, waiting = entry
    waiting[0] += 1
    try:
        # Shielded: one reader timing out (cancelled) does not cancel the other's read...
        return await asyncio.shield(task)
    finally:
        waiting[0] -= 1
        # ...but the last reader gone cancels it: a later refresh must not join a read
        # started by an earlier one (a hung upstream would then fail every refresh after).
        if waiting[0] == 0 and not task.done():
            task.cancel()
            # Forgotten now, not when it is done: its clean-up may await, and a reader
            # joining it meanwhile would get a cancellation it never asked for.
            if _pages_in_flight.get(key) is entry:
                del _pages_in_flight[key]


def _page_read(key: _PageKey, task: asyncio.Task[bytes]) -> None:
    entry = _pages_in_flight.get(key)
    if entry is not None and entry[0] is task:
        del _pages_in_flight[key]
    if not task.cancelled():
        task.exception()  # retrieved: when every reader was cancelled, nobody else will


def _not_empty(samples: tuple[GpuSample, ...], names: tuple[str, ...]) -> tuple[GpuSample, ...]:
    """An answer without one usable GPU series is a failure (reason ``invalid``), not an empty
    cluster: a Prometheus that lost its dcgm-exporter targets, or an exporter restarting,
    answers that way, and taking it as data would report every GPU dollar as unused. The
    last good data is kept instead, until it is stale."""
    if not samples:
        raise SourceError(
            "invalid", f"empty answer: no usable {'/'.join(names)} series with a GPU UUID"
        )
    return samples


def utilization_query(metric: str | Sequence[str], selector: str) -> str:
    """The PromQL for ``metric`` (one name, or several) scoped by ``selector``.

    ``selector`` is extra matchers, with or without braces: ``{cluster="prod"}`` and
    ``cluster="prod"`` both give ``DCGM_FI_DEV_GPU_UTIL{cluster="prod"}``; empty gives the bare
    metric name. Several names give ``{__name__=~"A|B",cluster="prod"}``.
    """
    names = [metric] if isinstance(metric, str) else list(metric)
    body = selector.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1].strip()
    if len(names) == 1:
        return names[0] + ("{" + body + "}" if body else "")
    pattern = "|".join(re.escape(n) for n in names)
    return "{" + ",".join([f'__name__=~"{pattern}"', *([body] if body else [])]) + "}"


def gpu_samples_from_series(
    series: Iterable[tuple[Mapping[str, str], float]], metric: UtilizationMetric
) -> tuple[GpuSample, ...]:
    """:func:`gpu_samples` of ``(labels, value)`` pairs: each series' metric is its
    ``__name__`` label, else ``metric`` (``DCGM_FI_DEV_GPU_UTIL`` for ``auto``)."""
    default = "DCGM_FI_DEV_GPU_UTIL" if metric == "auto" else metric
    return gpu_samples(
        ((labels.get("__name__") or default, labels, value) for labels, value in series), metric
    )


def gpu_samples(
    series: Iterable[tuple[str, Mapping[str, str], float]], choice: UtilizationMetric
) -> tuple[GpuSample, ...]:
    """Map dcgm-exporter series ``(metric name, labels, value)`` to :class:`GpuSample`
    records, in input order.

    Each name's unit becomes a 0–1 ratio (``DCGM_FI_DEV_GPU_UTIL`` percent / 100; the rest
    are ratios), clamped to [0, 1]. Per unit (a GPU, or a MIG instance) one kind of metric is
    kept: with ``choice="auto"`` the profiling metric where the unit has it, else the device
    metric; with a named metric only that kind. The same (unit, pod, container, kind) seen
    twice keeps its highest value. Skipped: unknown names, NaN and ±Inf values, and series
    without a GPU UUID (nothing to join them on). An empty label value reads as absent
    (``None`` for the optional fields, ``""`` for ``gpu_index``, ``model_name`` and ``node``).

    The pod is read from ``exported_*`` labels first (Prometheus renamed dcgm-exporter's own),
    then the ``--use-old-namespace`` names, then ``pod``/``namespace``/``container``. When any
    series of the input carries one of the first two forms, plain ``pod``/``namespace`` are
    the scrape target's labels (the dcgm-exporter pod) and are ignored on every series: an
    unassigned GPU has no pod labels of its own for Prometheus to rename. A time-sliced GPU is
    one sample per pod, each with the figure DCGM gives it; a MIG instance is one sample with
    ``mig_profile``/``mig_instance`` set.
    """
    entries: list[Series] = []
    values: list[float] = []
    strings: dict[str, str] = {}
    for name, labels, value in series:
        entries.append(Series.of(name, labels, strings))
        values.append(value)
    return GpuSamples(choice).samples(entries, values)


class Series(SeriesEntry):
    """What :func:`gpu_samples` needs of one series, worked out once from its name and labels
    (a refresh then reads only its value). ``kind`` is ``None`` for a series never used (an
    unknown name, no GPU UUID). ``namespace``/``pod``/``container``: the pod read from every
    form of pod labels; ``renamed``: it was read from a renamed form (``exported_*``,
    ``--use-old-namespace``), which is the only one read when any series of the answer has
    one. ``last``: the sample made from it last time, reused while nothing changed."""

    __slots__ = (
        "container",
        "gpu_index",
        "instance",
        "kind",
        "last",
        "last_which",
        "model_name",
        "name",
        "namespace",
        "node",
        "pod",
        "pod_uid",
        "profile",
        "renamed",
        "scale",
        "uuid",
    )

    def __init__(
        self,
        kind: Literal["device", "profiling"] | None = None,
        scale: float = 1.0,
        name: str = "",
        uuid: str = "",
        gpu_index: str = "",
        model_name: str = "",
        node: str = "",
        profile: str | None = None,
        instance: str | None = None,
        pod_uid: bool = False,
        renamed: bool = False,
        pod: _Pod = (None, None, None),
    ) -> None:
        super().__init__()  # the reader's own fields (SeriesEntry)
        self.kind = kind
        self.scale = scale
        self.name = name
        self.uuid = uuid
        self.gpu_index = gpu_index
        self.model_name = model_name
        self.node = node
        self.profile = profile
        self.instance = instance
        self.pod_uid = pod_uid
        self.renamed = renamed
        self.namespace, self.pod, self.container = pod
        self.last: GpuSample | None = None
        self.last_which = 0

    @classmethod
    def of(
        cls, name: str, labels: Mapping[str, str], strings: dict[str, str] | None = None
    ) -> Series:
        """The series ``name{labels}``. ``strings``: the UUIDs and pod names of the series
        already made in this read, so that a GPU's and a pod's series share one string (a
        GPU has a series per metric)."""
        known = UTILIZATION_NAMES.get(name)
        get = labels.get
        uuid = get("UUID") or get("uuid")
        if known is None or not uuid:
            return cls()
        profile = get("GPU_I_PROFILE") or None
        renamed = _pod_of(labels, _POD_LABELS[:2])
        plain = None if renamed else _pod_of(labels, _POD_LABELS[2:])
        namespace, pod, container = renamed or plain or (None, None, None)
        if strings is not None:
            uuid = strings.setdefault(uuid, uuid)
            if pod:
                pod = strings.setdefault(pod, pod)
        # Interned: these repeat on every GPU of a node, a model, a tenant (held once, not
        # once per series and sample).
        return cls(
            known[0],
            known[1],
            intern(name),
            uuid,
            intern(get("gpu", "")),
            intern(get("modelName", "")),
            intern(get("hostname") or get("Hostname") or ""),
            intern(profile) if profile else None,
            (get("GPU_I_ID") or None) if profile else None,
            bool(get("pod_uid")),
            renamed is not None,
            (namespace, pod, container),
        )

    def pod_in(self, which: int) -> _Pod:
        """(namespace, pod, container) where ``which`` is 1 (every form of pod labels is
        read), or 0 (only the renamed forms)."""
        if which or self.renamed:
            return self.namespace, self.pod, self.container
        return None, None, None


_Pod = tuple[str | None, str | None, str | None]


def _pod_of(labels: Mapping[str, str], sources: tuple[tuple[str, str, str], ...]) -> _Pod | None:
    for ns_key, pod_key, container_key in sources:
        namespace = labels.get(ns_key) or None
        pod = labels.get(pod_key) or None
        if namespace or pod:
            container = labels.get(container_key) or None
            return (
                intern(namespace) if namespace else None,
                pod,
                intern(container) if container else None,
            )
    return None


class _Plan:
    """Which series make which sample, for one list of series (and of non-finite values):
    ``pick`` takes the kept series' values from a read's values, ``series`` are those series
    and ``slot`` their sample's index (``None`` when each has its own: no duplicates);
    ``which`` pod labels are read (:meth:`Series.pod_in`); ``per_process`` per sample."""

    __slots__ = ("per_process", "pick", "series", "slot", "which")

    def __init__(
        self,
        index: list[int],
        series: list[Series],
        slot: list[int],
        which: int,
        per_process: list[bool],
    ) -> None:
        self.series = series
        self.slot = None if len(per_process) == len(index) else slot
        self.which = which
        self.per_process = per_process
        self.pick: Callable[[list[float]], Iterable[float]] = (
            itemgetter(*index) if len(index) > 1 else lambda values: [values[i] for i in index]
        )


class GpuSamples:
    """:func:`gpu_samples` for a source that reads the same series refresh after refresh:
    the decisions that depend only on the series (which are kept, which are duplicates of
    one another, which are per-process) are made once per distinct list of series, and a
    sample whose fields did not change is the last read's object again."""

    __slots__ = ("_choice", "_plan", "_plan_for")

    def __init__(self, choice: UtilizationMetric) -> None:
        self._choice = choice
        self._plan: _Plan | None = None
        self._plan_for: tuple[list[Series], tuple[int, ...]] = ([], ())

    def samples(self, series: list[Series], values: list[float]) -> tuple[GpuSample, ...]:
        """The samples of ``series`` with ``values`` (one per series, in order)."""
        isfinite = math.isfinite
        bad = (
            ()
            if all(map(isfinite, values))
            else tuple(i for i, v in enumerate(values) if not isfinite(v))
        )
        plan = self._plan
        if plan is None or self._plan_for[1] != bad or self._plan_for[0] != series:
            plan = self._plan = _make_plan(series, bad, self._choice)
            self._plan_for = (series, bad)
        return _apply(plan, values)


def _make_plan(series: list[Series], bad: tuple[int, ...], choice: UtilizationMetric) -> _Plan:
    wanted = None if choice == "auto" else _KIND_OF_CHOICE[choice]
    skip = set(bad)
    rows = [
        i
        for i, s in enumerate(series)
        if s.kind is not None and (wanted is None or s.kind == wanted) and i not in skip
    ]
    kept = [series[i] for i in rows]
    which = 0 if any(s.renamed for s in kept) else 1
    profiled_units = {(s.uuid, s.instance or "") for s in kept if s.kind == "profiling"}
    # dcgm-exporter's per-process form (#594) makes only the device metric per pod: on such a
    # unit the profiling metric is the device's figure repeated on every pod, so the device
    # metric is the one read there (a pod series with pod_uid beside a pod-less one).
    with_pod_uid = {
        (s.uuid, s.instance or "")
        for s in kept
        if s.pod_uid and s.kind == "device" and any(s.pod_in(which)[:2])
    }
    per_process_units: set[tuple[str, str]] = set()
    if with_pod_uid:  # else no unit can be one (most answers: one pass saved)
        pod_less = {
            (s.uuid, s.instance or "")
            for s in kept
            if s.kind == "device" and not any(s.pod_in(which)[:2])
        }
        per_process_units = with_pod_uid & pod_less
    slots: dict[tuple[str, ...], int] = {}
    with_uid: set[tuple[str, ...]] = set()  # pod series carrying pod_uid (per-process form)
    index: list[int] = []
    planned: list[Series] = []
    slot_of: list[int] = []
    for i, s in zip(rows, kept, strict=True):
        kind = s.kind or ""
        instance = s.instance or ""
        if per_process_units and (s.uuid, instance) in per_process_units:
            if kind == "profiling":
                continue  # the device's figure repeated per pod: the per-process one is read
        elif kind == "device" and (s.uuid, instance) in profiled_units:
            continue  # this unit has the profiling metric: it is the one read
        if which or s.renamed:
            pod = s.pod
            key = (s.uuid, instance, s.namespace or "", pod or "", s.container or "", kind)
        else:
            pod = None
            key = (s.uuid, instance, "", "", "", kind)
        if pod and s.pod_uid:
            with_uid.add(key)
        index.append(i)
        planned.append(s)
        slot_of.append(slots.setdefault(key, len(slots)))
    # dcgm-exporter's per-process form (--kubernetes-virtual-gpus, PR #594): the device's own
    # series (no pod) beside one series per pod with that pod's processes' figure and pod_uid.
    devices = {(k[0], k[1], k[5]) for k in slots if not k[3]}
    per_process = [k in with_uid and (k[0], k[1], k[5]) in devices for k in slots]
    return _Plan(index, planned, slot_of, which, per_process)


def _apply(plan: _Plan, values: list[float]) -> tuple[GpuSample, ...]:
    if not plan.series:
        return ()
    used = [
        min(max(v * s.scale, 0.0), 1.0) for v, s in zip(plan.pick(values), plan.series, strict=True)
    ]
    if plan.slot is None:
        winners: Iterable[tuple[float, Series]] = zip(used, plan.series, strict=True)
    else:
        best: list[tuple[float, Series] | None] = [None] * len(plan.per_process)
        for u, s, slot in zip(used, plan.series, plan.slot, strict=True):
            seen = best[slot]
            if seen is None or u > seen[0]:
                best[slot] = (u, s)  # a duplicate keeps the first position, the highest value
        winners = cast("list[tuple[float, Series]]", best)
    which = plan.which
    out = []
    for (u, s), per_process in zip(winners, plan.per_process, strict=True):
        last = s.last
        if (
            last is not None
            and last.utilization == u
            and s.last_which == which
            and last.per_process == per_process
            and (u or math.copysign(1.0, u) == math.copysign(1.0, last.utilization))
        ):
            out.append(last)  # nothing in it changed: the model gets the same object
            continue
        namespace, pod, container = s.pod_in(which)
        sample = GpuSample(
            s.uuid,
            s.gpu_index,
            s.model_name,
            s.node,
            u,
            namespace,
            pod,
            container,
            s.profile,
            s.instance,
            s.name,
            per_process,
        )
        s.last, s.last_which = sample, which
        out.append(sample)
    return tuple(out)
