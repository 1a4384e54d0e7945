"""The DCGM and energy sources read each series once and then only values
(promapi.VectorReader for the query answer, a SeriesReader per scrape page, a sample plan per
list of series): they must give
exactly what the reference path gives — ``parse_vector``/``parse_text`` then the old
``gpu_samples`` (tests/sources/dcgm_reference.py) — read after read, on the simulator's DCGM
answers (MIG, time-sliced, per-process and HAMi nodes, both dcgm-exporter generations,
renamed pod labels, duplicate jobs) and on hostile ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.model.inputs import GpuSample
from aifinops.offload import run_cpu
from aifinops.settings import DcgmSettings
from aifinops.sources import jsonchunks
from aifinops.sources.base import SourceError
from aifinops.sources.dcgm import (
    DcgmSource,
    GpuSamples,
    Series,
    UtilizationMetric,
    gpu_samples,
    metric_names,
    utilization_query,
)
from aifinops.sources.energy import (
    ENERGY_NAMES,
    EnergyMemory,
    EnergySeries,
    EnergySource,
    energy_since,
    gpu_readings,
    readings_of,
)
from aifinops.sources.promapi import VectorReader, parse_vector
from aifinops.sources.promtext import decode_page, parse_text
from tests.sources.dcgm_reference import reference_gpu_samples
from tests.sources.energy_reference import reference_gpu_readings

T0 = 1_750_000_000.0
CHOICES: tuple[UtilizationMetric, ...] = (
    "auto",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
)
SPECS = {
    "shared": {"shared_gpus": True},
    "renamed": {"prometheus_honor_labels": False, "shared_gpus": True},
    "duplicate-jobs": {"prometheus_duplicate_jobs": True},
    "device-timeslice": {"timeslice_util": "device"},
}


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def same(got: tuple[GpuSample, ...], want: tuple[GpuSample, ...]) -> None:
    # repr: -0.0 and 0.0 are equal floats, and the field order is part of the record
    assert repr(got) == repr(want)
    assert got == want


def reference_answer(body: bytes, choice: UtilizationMetric) -> tuple[GpuSample, ...]:
    default = metric_names(choice)[0]
    return reference_gpu_samples(
        [(labels.get("__name__") or default, labels, v) for labels, v in parse_vector(body)],
        choice,
    )


def reference_pages(pages: list[bytes], choice: UtilizationMetric) -> tuple[GpuSample, ...]:
    names = frozenset(metric_names(choice))
    return reference_gpu_samples(
        [row for page in pages for row in parse_text(decode_page(page), names)], choice
    )


class Upstream:
    """A fake Prometheus and dcgm-exporter pages from one SimCluster, at a moving ``now``;
    it keeps the bodies it served, for the reference path."""

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim
        self.now = T0
        self.served: list[bytes] = []
        self.edit: Callable[[bytes], bytes] = lambda body: body

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/query":
            body = compact(self.sim.prometheus_vector(self.now, request.url.params["query"]))
        else:
            node = request.url.path.strip("/").removesuffix("/metrics")
            body = self.sim.dcgm_exposition(self.now, node=node).encode()
        body = self.edit(body)
        self.served.append(body)
        return httpx.Response(200, content=body)


async def read_rounds(
    upstream: Upstream, settings: DcgmSettings, rounds: int
) -> list[tuple[tuple[GpuSample, ...], list[bytes]]]:
    source = DcgmSource(settings, run=run_cpu)
    out = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler)) as client:
        for i in range(rounds):
            upstream.now = T0 + 30.0 * i
            upstream.served = []
            out.append((await source.fetch(client), upstream.served))
    return out


@pytest.fixture(scope="module", params=list(SPECS))
def sim(request: pytest.FixtureRequest) -> SimCluster:
    return SimCluster(ClusterSpec.scaled(120, **SPECS[request.param]))


@pytest.mark.parametrize("choice", CHOICES)
async def test_query_reads_equal_the_reference(sim: SimCluster, choice: UtilizationMetric) -> None:
    settings = DcgmSettings(
        mode="prometheus", prometheus_url="http://prom", utilization_metric=choice
    )
    rounds = await read_rounds(Upstream(sim), settings, 4)
    for got, [body] in rounds:
        same(got, reference_answer(body, choice))
    assert len(rounds[0][0]) > 50


async def test_the_simulator_has_every_kind_of_gpu(sim: SimCluster) -> None:
    """The cases the comparison above must meet are in the answers it compares."""
    body = compact(sim.prometheus_vector(T0, utilization_query(metric_names("auto"), "")))
    samples = reference_answer(body, "auto")
    assert any(s.mig_profile for s in samples)
    assert {s.metric for s in samples} >= {
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO",
    }
    if sim.spec.shared_gpus:
        assert any(s.per_process for s in samples)
    pods_per_gpu: dict[str, int] = {}
    for s in samples:
        if s.pod and not s.mig_profile:
            pods_per_gpu[s.uuid] = pods_per_gpu.get(s.uuid, 0) + 1
    assert max(pods_per_gpu.values()) > 1  # time-sliced


# The specs whose dcgm-exporter pages differ (the others differ in Prometheus only).
SCRAPE_SPECS = [
    name
    for name, spec in SPECS.items()
    if spec.get("prometheus_honor_labels", True) and not spec.get("prometheus_duplicate_jobs")
]


@pytest.mark.parametrize("spec", SCRAPE_SPECS)
@pytest.mark.parametrize("choice", ["auto", "DCGM_FI_DEV_GPU_UTIL"])
async def test_scrape_reads_equal_the_reference(spec: str, choice: UtilizationMetric) -> None:
    sim = SimCluster(ClusterSpec.scaled(120, **SPECS[spec]))
    assert sim.spec.prometheus_honor_labels and not sim.spec.prometheus_duplicate_jobs
    nodes = sorted(sim.dcgm_pages(T0))
    settings = DcgmSettings(
        mode="scrape",
        scrape_urls=tuple(f"http://dcgm/{n}/metrics" for n in nodes),
        utilization_metric=choice,
    )
    upstream = Upstream(sim)
    rounds = await read_rounds(upstream, settings, 3)
    for i, (got, _) in enumerate(rounds):
        # the pages in URL order (they are fetched at once, served in any order)
        pages = [sim.dcgm_exposition(T0 + 30.0 * i, node=n).encode() for n in nodes]
        same(got, reference_pages(pages, choice))


async def test_unchanged_samples_are_the_same_objects_and_gone_series_are_forgotten() -> None:
    sim = SimCluster(ClusterSpec.scaled(40))
    query = utilization_query(metric_names("auto"), "")
    doc = sim.prometheus_vector(T0, query)
    body = compact(doc)
    reader: VectorReader[Series] = VectorReader()
    samples = GpuSamples("auto")

    def read(body: bytes) -> tuple[GpuSample, ...]:
        def derive(labels: Mapping[str, str]) -> Series:
            return Series.of(labels.get("__name__") or "DCGM_FI_DEV_GPU_UTIL", labels)

        return samples.samples(*reader.read(body, derive))

    first = read(body)
    again = read(body)
    assert again == first and all(a is b for a, b in zip(again, first, strict=True))
    assert len(reader) == len(doc["data"]["result"])
    # half the series go away: the reader forgets them, the rest keep their objects
    half = {**doc, "data": {**doc["data"], "result": doc["data"]["result"][::2]}}
    fewer = read(compact(half))
    same(fewer, reference_answer(compact(half), "auto"))
    assert len(reader) == len(half["data"]["result"])
    assert {id(s) for s in fewer} <= {id(s) for s in first}


def vector(*elements: Any) -> bytes:
    return compact({"status": "success", "data": {"resultType": "vector", "result": elements}})


BASE = {
    "__name__": "DCGM_FI_DEV_GPU_UTIL",
    "UUID": "GPU-a",
    "gpu": "0",
    "modelName": "NVIDIA L4",
    "Hostname": "n1",
}


def element(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": {**BASE, **labels}, "value": [T0, value]}


HOSTILE_READS: dict[str, list[bytes]] = {
    "markers-inside-labels": [
        vector(element("10", pod=',{"metric":{', namespace='"},"value":[1,"2"]}')),
        vector(element("20", pod=',{"metric":{', namespace='"},"value":[1,"2"]}')),
    ],
    "escapes-and-unicode": [
        vector(element("10", pod='a\\"b\n', namespace="t\u00e9am \u2603")),
        vector(element("11", pod='a\\"b\n', namespace="t\u00e9am \u2603")),
    ],
    "nan-comes-and-goes": [
        vector(element("10", pod="p"), element("20", pod="q")),
        vector(element("NaN", pod="p"), element("+Inf", pod="q")),
        vector(element("10", pod="p"), element("-Inf", pod="q")),
        vector(element("10", pod="p"), element("20", pod="q")),
    ],
    "negative-zero-and-clamps": [
        vector(element("-0", pod="p"), element("250", pod="q"), element("-3", pod="r")),
        vector(element("0", pod="p"), element("250", pod="q"), element("-0", pod="r")),
        vector(element("-0", pod="p"), element("1e2", pod="q"), element("0.0", pod="r")),
    ],
    "duplicates-keep-the-highest": [
        vector(element("10", job="a"), element("30", job="b"), element("30", job="a")),
        vector(element("50", job="a"), element("30", job="b"), element("50", job="a")),
        # a tie keeps the first: seen in the sample's metric and node
        vector(
            element("0.5", __name__="DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", hostname="n2"),
            element("0.5", __name__="DCGM_FI_PROF_GR_ENGINE_ACTIVE"),
        ),
    ],
    "renamed-labels-appear": [
        vector(element("10", pod="dcgm-x", namespace="gpu-operator")),
        vector(
            element("10", pod="dcgm-x", namespace="gpu-operator"),
            element("20", UUID="GPU-b", exported_pod="p", exported_namespace="t"),
        ),
        vector(element("10", pod="dcgm-x", namespace="gpu-operator")),
    ],
    "per-process-appears": [
        vector(element("60"), element("60", pod="a", namespace="t")),
        vector(element("60"), element("30", pod="a", namespace="t", pod_uid="u")),
        vector(
            element("60"),
            element("30", pod="a", namespace="t", pod_uid="u"),
            {**element("0.6"), "metric": {**BASE, "__name__": "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}},
        ),
    ],
    "invalid-utf8-then-valid": [
        vector(element("10", pod="ok")).replace(b'"ok"', b'"o\xffk"'),
        vector(element("10", pod="ok")),
        vector(element("10", pod="ok")).replace(b'"ok"', b'"o\xffk"'),
    ],
    "pretty-printed": [
        json.dumps(json.loads(vector(element("10"), element("20", UUID="GPU-b")))).encode(),
        vector(element("10"), element("20", UUID="GPU-b")),
    ],
    "duplicate-metric-key": [
        vector(element("10")).replace(b'{"metric":', b'{"metric":{"UUID":"GPU-z"},"metric":'),
        vector(element("10")),
        vector(element("10")).replace(b'"gpu":"0"', b'"gpu":"0","gpu":"1"'),
    ],
    "no-uuid-no-name-empty": [
        vector(element("10", UUID=""), {"metric": {"UUID": "GPU-q"}, "value": [T0, "5"]}),
        vector(),
        vector({"metric": {}, "value": [T0, "5"]}),
    ],
    "odd-timestamps": [
        vector({**element("10"), "value": [[T0], "10"]}, {**element("20"), "value": [None, "20"]}),
        vector({**element("11"), "value": ["x", "11"]}, {**element("21"), "value": [{}, "21"]}),
    ],
    "series-swap-order": [
        vector(element("10"), element("20", UUID="GPU-b"), element("30", UUID="GPU-c")),
        vector(element("30", UUID="GPU-c"), element("10"), element("20", UUID="GPU-b")),
    ],
}


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("case", list(HOSTILE_READS))
def test_hostile_reads_equal_the_reference(
    case: str, small: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if small:  # answers decoded in many pieces
        monkeypatch.setattr(jsonchunks, "PIECE_BYTES", 64)
    for choice in CHOICES:
        reader: VectorReader[Series] = VectorReader()
        samples = GpuSamples(choice)
        default = metric_names(choice)[0]

        def derive(labels: Mapping[str, str], default: str = default) -> Series:
            return Series.of(labels.get("__name__") or default, labels)

        for body in HOSTILE_READS[case]:
            series, values = reader.read(body, derive)
            same(samples.samples(series, values), reference_answer(body, choice))
            # the pure function on the same series agrees too
            rows = [(lb.get("__name__") or default, lb, v) for lb, v in parse_vector(body)]
            same(gpu_samples(rows, choice), reference_answer(body, choice))


@pytest.mark.parametrize(
    "body",
    [
        b"<html>gateway</html>",
        b'{"status":"error","errorType":"bad_data","error":"x"}',
        b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
        vector(element("twelve")),
        vector({"metric": {"UUID": 1}, "value": [T0, "1"]}),
        vector({"metric": {"UUID": "a"}, "value": [T0, 2]}),
        vector({"metric": "x", "value": [T0, "1"]}),
        vector(element("1_0")),
        vector({"metric": {"UUID": "a"}, "value": [T0, "1", 3]}),
        vector({"metric": {"UUID": "a"}, "value": [T0]}),
        vector({"metric": {"UUID": "a"}, "value": {"ts": T0, "text": "1"}}),
        vector({"metric": {"UUID": "a"}}),
    ],
)
def test_odd_answers_read_as_parse_vector_reads_them(body: bytes) -> None:
    reader: VectorReader[Any] = VectorReader()
    good = vector(element("10"))
    reader.read(good, lambda labels: Series.of("DCGM_FI_DEV_GPU_UTIL", labels))
    outcomes: list[Any] = []
    for read in (
        lambda: reader.read(body, lambda labels: labels)[1],
        lambda: [v for _, v in parse_vector(body)],
    ):
        try:
            outcomes.append(read())
        except SourceError as exc:
            outcomes.append((exc.reason, str(exc)))
    assert outcomes[0] == outcomes[1]
    # a failed read leaves the reader as it was
    assert len(reader) == 1


# --- the energy source: the same design, its own oracle ----------------------------------


@pytest.fixture(scope="module")
def energy_sim() -> SimCluster:
    # The demo cluster: exact energy counters (one GPU reset every 6 h), 4.8 and 4.9 nodes
    # (power only on 4.9), MIG and time-sliced series repeating the device's values.
    return SimCluster(ClusterSpec.demo(shared_gpus=True))


@pytest.mark.parametrize("mode", ["prometheus", "scrape"])
async def test_energy_reads_equal_the_reference(energy_sim: SimCluster, mode: str) -> None:
    names = tuple(ENERGY_NAMES)
    nodes = sorted(energy_sim.dcgm_pages(T0))
    settings = (
        DcgmSettings(mode="prometheus", prometheus_url="http://prom")
        if mode == "prometheus"
        else DcgmSettings(
            mode="scrape", scrape_urls=tuple(f"http://dcgm/{n}/metrics" for n in nodes)
        )
    )
    upstream = Upstream(energy_sim)
    clock = [T0]
    source = EnergySource(settings, lambda: clock[0], run=run_cpu)
    memory = EnergyMemory()
    resets = 0
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler)) as client:
        for i in range(5):
            upstream.now = clock[0] = T0 + 7200.0 * i  # across the 6-hourly counter reset
            upstream.served = []
            got = await source.fetch(client)
            if mode == "prometheus":
                [body] = upstream.served
                rows = [(lb.get("__name__", ""), lb, v) for lb, v in parse_vector(body)]
            else:
                pages = [energy_sim.dcgm_exposition(clock[0], node=n) for n in nodes]
                rows = [r for p in pages for r in parse_text(p, frozenset(names))]
            want, memory = energy_since(memory, reference_gpu_readings(rows), clock[0])
            assert got == want
            resets += want.counter_resets
            assert readings_of(*_energy_entries(rows)) == reference_gpu_readings(rows)
    assert want.gpus and {g.method for g in want.gpus} == {"counter", "power"}
    assert resets >= 1  # the reset GPU counts from zero again, as the reference does


def _energy_entries(
    rows: list[tuple[str, Mapping[str, str], float]],
) -> tuple[list[EnergySeries], list[float]]:
    return [EnergySeries.of(n, lb) for n, lb, _ in rows], [v for *_, v in rows]


def test_energy_odd_series_equal_the_reference() -> None:
    uuid = {"UUID": "GPU-a"}
    rows: list[tuple[str, Mapping[str, str], float]] = [
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", uuid, 5.0),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", uuid, 9.0),  # a MIG/pod repeat: highest
        ("DCGM_FI_DEV_POWER_USAGE", {"uuid": "GPU-b"}, -0.0),
        ("DCGM_FI_DEV_BOARD_POWER_WATTS", {"UUID": "GPU-c"}, float("nan")),
        ("DCGM_FI_DEV_POWER_USAGE", {"UUID": "GPU-c"}, float("inf")),
        ("DCGM_FI_DEV_POWER_USAGE", {"UUID": "GPU-d"}, -1.0),
        ("DCGM_FI_DEV_POWER_USAGE", {"UUID": ""}, 1.0),
        ("DCGM_FI_DEV_GPU_UTIL", uuid, 50.0),
        ("DCGM_FI_DEV_BOARD_POWER_WATTS", {"UUID": "GPU-0"}, 300.0),
    ]
    got = gpu_readings(rows)
    assert repr(got) == repr(reference_gpu_readings(rows))
    assert list(got) == ["GPU-0", "GPU-a", "GPU-b"]


# --- one page read serves both sources -----------------------------------------------------


async def test_dcgm_and_energy_read_each_page_once_when_they_read_together(
    energy_sim: SimCluster,
) -> None:
    nodes = sorted(energy_sim.dcgm_pages(T0))[:6]
    settings = DcgmSettings(
        mode="scrape", scrape_urls=tuple(f"http://dcgm/{n}/metrics" for n in nodes)
    )
    upstream = Upstream(energy_sim)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler)) as client:
        # alone: each source asks for every page
        alone = (
            await DcgmSource(settings, run=run_cpu).fetch(client),
            await EnergySource(settings, lambda: T0, run=run_cpu).fetch(client),
        )
        assert len(upstream.served) == 2 * len(nodes)
        upstream.served = []
        dcgm_source = DcgmSource(settings, run=run_cpu)
        energy_source = EnergySource(settings, lambda: T0, run=run_cpu)
        together = await asyncio.gather(dcgm_source.fetch(client), energy_source.fetch(client))
        assert len(upstream.served) == len(nodes)  # one read of each page for both
        assert together[0] == alone[0] and together[1] == alone[1]
        # a failure reaches both, each with its reason; then each reads again
        upstream.edit = lambda body: body[:-1]  # no final newline: a truncated page
        outcomes = await asyncio.gather(
            dcgm_source.fetch(client), energy_source.fetch(client), return_exceptions=True
        )
        assert [getattr(o, "reason", o) for o in outcomes] == ["parse", "parse"]
        upstream.edit = lambda body: body
        upstream.served = []
        assert await dcgm_source.fetch(client) == alone[0]
        assert len(upstream.served) == len(nodes)


async def test_a_cancelled_reader_does_not_cancel_the_others_page(energy_sim: SimCluster) -> None:
    nodes = sorted(energy_sim.dcgm_pages(T0))[:2]
    settings = DcgmSettings(
        mode="scrape", scrape_urls=tuple(f"http://dcgm/{n}/metrics" for n in nodes)
    )
    upstream = Upstream(energy_sim)
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return upstream.handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        energy = asyncio.create_task(EnergySource(settings, lambda: T0, run=run_cpu).fetch(client))
        dcgm = asyncio.create_task(DcgmSource(settings, run=run_cpu).fetch(client))
        await asyncio.sleep(0.01)
        energy.cancel()
        gate.set()
        samples = await dcgm
    assert samples and len(upstream.served) == len(nodes)
    with pytest.raises(asyncio.CancelledError):
        await energy


async def test_a_read_being_cancelled_is_not_joined_by_a_later_reader(
    energy_sim: SimCluster,
) -> None:
    """The last reader gone cancels the page read; a read that is still winding down (the
    HTTP client's clean-up awaits) must not be joined by the next refresh's reader, which
    would get a cancellation it never asked for."""
    nodes = sorted(energy_sim.dcgm_pages(T0))[:1]
    settings = DcgmSettings(
        mode="scrape", scrape_urls=tuple(f"http://dcgm/{n}/metrics" for n in nodes)
    )
    upstream = Upstream(energy_sim)
    hang = True
    winding_down = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                winding_down.set()
                await asyncio.sleep(0.05)
                raise
        return upstream.handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        first = asyncio.create_task(DcgmSource(settings, run=run_cpu).fetch(client))
        await asyncio.sleep(0.01)
        first.cancel()
        await winding_down.wait()
        hang = False
        samples = await DcgmSource(settings, run=run_cpu).fetch(client)
    assert samples and len(upstream.served) == 1
    with pytest.raises(asyncio.CancelledError):
        await first
