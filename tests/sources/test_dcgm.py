"""DCGM source: dcgm-exporter labels to GpuSample; both fetch modes against fake upstreams."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.model.inputs import GpuSample
from aifinops.offload import run_cpu
from aifinops.settings import DcgmSettings
from aifinops.sources.base import SourceError
from aifinops.sources.dcgm import DcgmSource, gpu_samples_from_series, utilization_query
from aifinops.sources.promtext import parse_text

# Label sets verbatim from published dcgm-exporter output (values changed): an H100 node with
# `Hostname` and one GPU held by a pod (NVIDIA/dcgm-exporter#490), a T4 with the lowercase
# `hostname` that dcgm-exporter writes since its PR #655, and a K80 whose pod labels are empty
# (no pod holds it).
RECORDED_PAGE = (
    "\n".join(
        [
            "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-8b2281de-6d3c-22ed-0ec8-d3b864870b8b",'
            'pci_bus_id="00000000:8D:00.0",device="nvidia0",'
            'modelName="NVIDIA H100 80GB HBM3",Hostname="computeinstance-e00c1p6dpy98xytphp",'
            'DCGM_FI_DRIVER_VERSION="550.144.03",container="dcgmproftester2",'
            'namespace="default",pod="dcgmproftester2"} 87',
            'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-15338f3e-5fd9-962d-921a-979b820520f0",'
            'pci_bus_id="00000000:91:00.0",device="nvidia1",'
            'modelName="NVIDIA H100 80GB HBM3",Hostname="computeinstance-e00c1p6dpy98xytphp",'
            'DCGM_FI_DRIVER_VERSION="550.144.03"} 0',
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-8f1f4d06-07fd-27a7-52d5-e58aa060d256",'
            'pci_bus_id="00000000:00:04.0",device="nvidia0",modelName="Tesla T4",'
            'hostname="hami-workshop",container="gpu-test",namespace="default",'
            'pod="gpu-test"} 3',
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-74f7fe3b-48f2-6d8b-3cb4-e70426fb669c",'
            'device="nvidia0",modelName="Tesla K80",Hostname="dcgm-exporter-cmhft",'
            'container="",namespace="",pod=""} 100',
            "# HELP DCGM_FI_DEV_MEM_COPY_UTIL Memory utilization (in %).",
            "# TYPE DCGM_FI_DEV_MEM_COPY_UTIL gauge",
            'DCGM_FI_DEV_MEM_COPY_UTIL{gpu="0",'
            'UUID="GPU-8b2281de-6d3c-22ed-0ec8-d3b864870b8b",pci_bus_id="00000000:8D:00.0",'
            'device="nvidia0",modelName="NVIDIA H100 80GB HBM3",'
            'Hostname="computeinstance-e00c1p6dpy98xytphp",'
            'DCGM_FI_DRIVER_VERSION="550.144.03",container="dcgmproftester2",'
            'namespace="default",pod="dcgmproftester2"} 55',
        ]
    )
    + "\n"
)
H100_0 = "GPU-8b2281de-6d3c-22ed-0ec8-d3b864870b8b"
Mode = Literal["prometheus", "scrape"]


def series_of(page: str, metric: str = "DCGM_FI_DEV_GPU_UTIL") -> list[tuple[Any, float]]:
    return [(labels, value) for _, labels, value in parse_text(page, frozenset({metric}))]


def test_recorded_page_maps_every_label() -> None:
    samples = gpu_samples_from_series(series_of(RECORDED_PAGE), "DCGM_FI_DEV_GPU_UTIL")
    assert {s.metric for s in samples} == {"DCGM_FI_DEV_GPU_UTIL"}
    assert tuple(replace(s, metric="") for s in samples) == (
        GpuSample(
            uuid=H100_0,
            gpu_index="0",
            model_name="NVIDIA H100 80GB HBM3",
            node="computeinstance-e00c1p6dpy98xytphp",
            utilization=0.87,
            namespace="default",
            pod="dcgmproftester2",
            container="dcgmproftester2",
        ),
        GpuSample(
            uuid="GPU-15338f3e-5fd9-962d-921a-979b820520f0",
            gpu_index="1",
            model_name="NVIDIA H100 80GB HBM3",
            node="computeinstance-e00c1p6dpy98xytphp",
            utilization=0.0,
        ),
        GpuSample(
            uuid="GPU-8f1f4d06-07fd-27a7-52d5-e58aa060d256",
            gpu_index="0",
            model_name="Tesla T4",
            node="hami-workshop",
            utilization=0.03,
            namespace="default",
            pod="gpu-test",
            container="gpu-test",
        ),
        GpuSample(
            uuid="GPU-74f7fe3b-48f2-6d8b-3cb4-e70426fb669c",
            gpu_index="0",
            model_name="Tesla K80",
            node="dcgm-exporter-cmhft",
            utilization=1.0,
        ),
    )


BASE = {"gpu": "3", "UUID": "GPU-a", "device": "nvidia3", "modelName": "NVIDIA A100-SXM4-80GB"}


@pytest.mark.parametrize(
    ("labels", "value", "metric", "expected"),
    [
        pytest.param(
            {
                "gpu": "0",
                "uuid": "GPU-old",
                "modelName": "Tesla V100",
                "Hostname": "n1",
                "pod_name": "p",
                "pod_namespace": "ns",
                "container_name": "c",
            },
            40,
            "DCGM_FI_DEV_GPU_UTIL",
            GpuSample("GPU-old", "0", "Tesla V100", "n1", 0.4, "ns", "p", "c"),
            id="use-old-namespace",
        ),
        pytest.param(
            {
                **BASE,
                "GPU_I_PROFILE": "1g.10gb",
                "GPU_I_ID": "7",
                "Hostname": "n1",
                "namespace": "ml",
                "pod": "mig-pod",
                "container": "train",
            },
            90,
            "DCGM_FI_DEV_GPU_UTIL",
            GpuSample(
                "GPU-a",
                "3",
                "NVIDIA A100-SXM4-80GB",
                "n1",
                0.9,
                "ml",
                "mig-pod",
                "train",
                mig_profile="1g.10gb",
                mig_instance="7",
            ),
            id="mig-instance",
        ),
        pytest.param(
            {**BASE, "hostname": "new", "Hostname": "old"},
            0.42,
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            GpuSample("GPU-a", "3", "NVIDIA A100-SXM4-80GB", "new", 0.42),
            id="engine-active-is-a-ratio-and-lowercase-hostname-wins",
        ),
        pytest.param(
            {
                **BASE,
                "GPU_I_PROFILE": "",
                "GPU_I_ID": "0",
                "pod": "",
                "namespace": "",
                "container": "",
            },
            250,
            "DCGM_FI_DEV_GPU_UTIL",
            GpuSample("GPU-a", "3", "NVIDIA A100-SXM4-80GB", "", 1.0),
            id="empty-labels-are-absent-and-over-100-percent-clamps",
        ),
        pytest.param(
            {"UUID": "GPU-b"},
            -0.5,
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            GpuSample("GPU-b", "", "", "", 0.0),
            id="bare-series-and-negative-clamps",
        ),
    ],
)
def test_label_sets(labels: dict[str, str], value: float, metric: Any, expected: GpuSample) -> None:
    assert gpu_samples_from_series([(labels, value)], metric) == (replace(expected, metric=metric),)


def test_time_sliced_gpu_is_one_sample_per_pod() -> None:
    shared = {**BASE, "Hostname": "n1"}
    samples = gpu_samples_from_series(
        [
            ({**shared, "namespace": "a", "pod": "p1"}, 60),
            ({**shared, "namespace": "b", "pod": "p2"}, 60),
        ],
        "DCGM_FI_DEV_GPU_UTIL",
    )
    assert [(s.uuid, s.namespace, s.pod, s.utilization, s.mig_profile) for s in samples] == [
        ("GPU-a", "a", "p1", 0.6, None),
        ("GPU-a", "b", "p2", 0.6, None),
    ]


def test_unusable_series_are_dropped() -> None:
    series: list[tuple[Mapping[str, str], float]] = [
        (BASE, float("nan")),
        (BASE, float("inf")),
        (BASE, float("-inf")),
        ({**BASE, "UUID": ""}, 10),
        ({"gpu": "0", "modelName": "x"}, 10),
        (BASE, 10),
    ]
    assert [s.utilization for s in gpu_samples_from_series(series, "DCGM_FI_DEV_GPU_UTIL")] == [0.1]


def test_prometheus_renamed_pod_labels() -> None:
    """A job without honor_labels: dcgm-exporter's pod labels become exported_*, and the plain
    ones name the dcgm-exporter pod, also on the GPU that no pod holds."""
    target = {
        "namespace": "gpu-operator",
        "pod": "nvidia-dcgm-exporter-x7",
        "container": "exporter",
        "instance": "10.0.0.5:9400",
        "job": "dcgm",
    }
    series = [
        (
            {
                **BASE,
                **target,
                "exported_namespace": "ml",
                "exported_pod": "train",
                "exported_container": "main",
            },
            50,
        ),
        ({**BASE, **target, "UUID": "GPU-idle"}, 0),
    ]
    samples = gpu_samples_from_series(series, "DCGM_FI_DEV_GPU_UTIL")
    assert [(s.uuid, s.namespace, s.pod, s.container) for s in samples] == [
        ("GPU-a", "ml", "train", "main"),
        ("GPU-idle", None, None, None),
    ]
    # Without any renamed series the plain labels are dcgm-exporter's own.
    assert (
        gpu_samples_from_series([series[1]], "DCGM_FI_DEV_GPU_UTIL")[0].pod
        == "nvidia-dcgm-exporter-x7"
    )


@pytest.mark.parametrize(
    ("selector", "query"),
    [
        ("", "DCGM_FI_DEV_GPU_UTIL"),
        ('{cluster="x"}', 'DCGM_FI_DEV_GPU_UTIL{cluster="x"}'),
        (' cluster="x",node=~"gpu-.*" ', 'DCGM_FI_DEV_GPU_UTIL{cluster="x",node=~"gpu-.*"}'),
    ],
)
def test_utilization_query(selector: str, query: str) -> None:
    assert utilization_query("DCGM_FI_DEV_GPU_UTIL", selector) == query


# --- fetch against fake upstreams -------------------------------------------------------

OK_VECTOR = {
    "status": "success",
    "data": {
        "resultType": "vector",
        "result": [
            {
                "metric": {
                    "__name__": "DCGM_FI_DEV_GPU_UTIL",
                    **BASE,
                    "Hostname": "n1",
                    "namespace": "ml",
                    "pod": "p",
                },
                "value": [1, "25"],
            }
        ],
    },
}
QUERIES = web.AppKey("queries", list[web.Request])
PAGE_2 = 'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-z",modelName="NVIDIA L4",hostname="n2"} 5\n'


async def upstream_handler(request: web.Request) -> web.StreamResponse:
    """``/<behaviour>/...``: ok (a page or a vector), http_status, timeout, too_large, parse."""
    kind = request.match_info["kind"]
    is_api = request.path.endswith("/api/v1/query")
    if kind == "ok":
        if is_api:
            request.app[QUERIES].append(request)
            return web.json_response(OK_VECTOR)
        return web.Response(text=RECORDED_PAGE)
    if kind == "ok2":
        return web.Response(text=PAGE_2)
    if kind == "http_status":
        return web.Response(status=500, text="internal error")
    if kind == "timeout":
        await asyncio.sleep(2)
        return web.Response(text=RECORDED_PAGE)
    if kind == "too_large":
        return web.Response(text="#" * 5000)
    if kind == "too_large_chunked":
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"#" * 1000)
        return response
    # parse: garbage where the utilization metric should be
    return web.Response(
        body=b'{"not": "text format"' if is_api else b'DCGM_FI_DEV_GPU_UTIL{gpu="0" 5\n'
    )


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    app = web.Application()
    app[QUERIES] = []
    app.router.add_get("/{kind}/metrics", upstream_handler)
    app.router.add_get("/{kind}/api/v1/query", upstream_handler)
    server = TestServer(app)
    async with server:
        yield server


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def settings_for(mode: Mode, urls: list[str], **extra: Any) -> DcgmSettings:
    where: dict[str, Any] = (
        {"prometheus_url": urls[0]} if mode == "prometheus" else {"scrape_urls": tuple(urls)}
    )
    return DcgmSettings(mode=mode, timeout_seconds=0.3, max_response_bytes=4096, **where, **extra)


async def test_prometheus_mode_queries_the_metric_with_selector_and_token(
    upstream: TestServer, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    source = DcgmSource(
        settings_for(
            "prometheus",
            [str(upstream.make_url("/ok"))],
            selector='{cluster="prod"}',
            bearer_token_file=token,
        ),
        run=run_cpu,
    )
    async with httpx.AsyncClient() as client:
        samples = await source.fetch(client)
    assert [(s.uuid, s.pod, s.utilization) for s in samples] == [("GPU-a", "p", 0.25)]
    # auto: one query for both generations' names of both metrics, scoped by the selector
    [request] = upstream.app[QUERIES]
    assert request.query["query"] == (
        '{__name__=~"DCGM_FI_DEV_GPU_UTIL|DCGM_FI_DEV_GPU_UTIL_RATIO|'
        'DCGM_FI_PROF_GR_ENGINE_ACTIVE|DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO",cluster="prod"}'
    )
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert source.name == "dcgm"


async def test_scrape_mode_reads_every_page(upstream: TestServer) -> None:
    urls = [str(upstream.make_url("/ok/metrics")), str(upstream.make_url("/ok2/metrics"))]
    async with httpx.AsyncClient() as client:
        samples = await DcgmSource(settings_for("scrape", urls), run=run_cpu).fetch(client)
    assert [s.uuid for s in samples] == [
        H100_0,
        "GPU-15338f3e-5fd9-962d-921a-979b820520f0",
        "GPU-8f1f4d06-07fd-27a7-52d5-e58aa060d256",
        "GPU-74f7fe3b-48f2-6d8b-3cb4-e70426fb669c",
        "GPU-z",
    ]


@pytest.mark.parametrize("mode", ["prometheus", "scrape"])
@pytest.mark.parametrize(
    "kind", ["http_status", "connect", "timeout", "too_large", "too_large_chunked", "parse"]
)
async def test_failures_have_a_reason(upstream: TestServer, mode: Mode, kind: str) -> None:
    base = closed_port_url() if kind == "connect" else str(upstream.make_url(f"/{kind}"))
    url = base if mode == "prometheus" else f"{base}/metrics"
    # In scrape mode a good page beside the failing one does not save the fetch.
    urls = [url] if mode == "prometheus" else [str(upstream.make_url("/ok/metrics")), url]
    async with httpx.AsyncClient() as client:
        with pytest.raises(SourceError) as info:
            await DcgmSource(settings_for(mode, urls), run=run_cpu).fetch(client)
    assert info.value.reason == kind.removesuffix("_chunked")


async def test_unreadable_token_file_is_invalid(upstream: TestServer, tmp_path: Path) -> None:
    source = DcgmSource(
        settings_for(
            "scrape",
            [str(upstream.make_url("/ok/metrics"))],
            bearer_token_file=tmp_path / "missing",
        ),
        run=run_cpu,
    )
    async with httpx.AsyncClient() as client:
        with pytest.raises(SourceError) as info:
            await source.fetch(client)
    assert info.value.reason == "invalid"


# --- both dcgm-exporter generations, utilization per unit, duplicates ---------------------

NEW_PAGE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "dcgm_exporter_4.9_names_sample_page.txt"
)


def test_auto_reads_4_9_names_profiling_where_it_exists_device_metric_elsewhere() -> None:
    from aifinops.sources.dcgm import gpu_samples, metric_names

    text = NEW_PAGE.read_text()
    samples = gpu_samples(parse_text(text, frozenset(metric_names("auto"))), "auto")
    got = {(s.model_name, s.mig_instance): (s.metric, s.utilization) for s in samples}
    assert got == {
        # the H100 has both: the profiling figure is the one read
        ("NVIDIA H100 80GB HBM3", None): ("DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", 0.61),
        # a MIG instance has only the profiling metric
        ("NVIDIA A100-SXM4-80GB", "7"): ("DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO", 0.25),
        # a T4 has no profiling counters; 4.9's device utilization is a ratio, not percent
        ("Tesla T4", None): ("DCGM_FI_DEV_GPU_UTIL_RATIO", 0.03),
    }
    assert {s.node for s in samples} == {"node-a", "node-t4"}


def test_a_named_metric_reads_both_generations_and_skips_units_without_it() -> None:
    from aifinops.sources.dcgm import gpu_samples, metric_names

    text = NEW_PAGE.read_text() + RECORDED_PAGE
    names = frozenset(metric_names("DCGM_FI_PROF_GR_ENGINE_ACTIVE"))
    samples = gpu_samples(parse_text(text, names), "DCGM_FI_PROF_GR_ENGINE_ACTIVE")
    assert {s.model_name for s in samples} == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"}
    device = gpu_samples(
        parse_text(text, frozenset(metric_names("DCGM_FI_DEV_GPU_UTIL"))), "DCGM_FI_DEV_GPU_UTIL"
    )
    by_uuid = {(s.uuid, s.metric): s.utilization for s in device}
    assert (
        by_uuid[("GPU-8f1f4d06-07fd-27a7-52d5-e58aa060d256", "DCGM_FI_DEV_GPU_UTIL_RATIO")] == 0.03
    )
    assert by_uuid[(H100_0, "DCGM_FI_DEV_GPU_UTIL")] == 0.87  # 87 % on the 4.8 page


def test_the_same_series_from_two_prometheus_jobs_counts_once() -> None:
    from aifinops.sources.dcgm import gpu_samples

    labels = {**BASE, "Hostname": "n1", "namespace": "ml", "pod": "p", "container": "c"}
    twice = [
        ("DCGM_FI_DEV_GPU_UTIL", {**labels, "job": "dcgm"}, 40.0),
        ("DCGM_FI_DEV_GPU_UTIL", {**labels, "job": "gpu-operator"}, 42.0),
    ]
    for order in (twice, twice[::-1]):
        samples = gpu_samples(order, "auto")
        assert [(s.pod, s.utilization) for s in samples] == [("p", 0.42)]


@pytest.mark.parametrize(
    ("selector", "query"),
    [
        ("", '{__name__=~"DCGM_FI_DEV_GPU_UTIL|DCGM_FI_DEV_GPU_UTIL_RATIO"}'),
        (
            '{cluster="x"}',
            '{__name__=~"DCGM_FI_DEV_GPU_UTIL|DCGM_FI_DEV_GPU_UTIL_RATIO",cluster="x"}',
        ),
    ],
)
def test_utilization_query_for_several_names(selector: str, query: str) -> None:
    from aifinops.sources.dcgm import metric_names

    assert utilization_query(metric_names("DCGM_FI_DEV_GPU_UTIL"), selector) == query


def test_utilization_names_are_the_ones_dcgm_renamed_them_to() -> None:
    # The ≥ 4.9 names the source reads and the demo writes are DCGM's own renames (fixture
    # derived from dcgm_fields.h), not guesses.
    from aifinops.demo.cluster import DCGM_4_9_NAMES
    from aifinops.sources.dcgm import UTILIZATION_NAMES

    table = Path(__file__).resolve().parents[1] / "fixtures"
    renames = {}
    for line in (table / "dcgm_fields_renames_of_default_counters.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            legacy, new, _ = line.split("\t")
            if new:
                renames[legacy] = new
    for legacy in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"):
        assert legacy in UTILIZATION_NAMES and renames[legacy] in UTILIZATION_NAMES
        assert UTILIZATION_NAMES[legacy][0] == UTILIZATION_NAMES[renames[legacy]][0]
    assert renames["DCGM_FI_DRIVER_VERSION"] == "DCGM_FI_SYSTEM_DRIVER_VERSION"
    assert all(renames[legacy] == new for legacy, new in DCGM_4_9_NAMES.items())
