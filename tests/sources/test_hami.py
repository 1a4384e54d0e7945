"""HAMi source: the scheduler's allocations and the vGPU monitor's use to SharedHold, both
metric generations, both fetch modes (fixtures: tests/fixtures/hami, see PROVENANCE.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.model.inputs import SharedHold
from aifinops.offload import run_cpu
from aifinops.settings import ConfigError, HamiSettings, settings_from_mapping
from aifinops.sources.base import SourceError
from aifinops.sources.hami import HAMI_NAMES, HamiSource, hami_query, shared_holds
from aifinops.sources.promtext import parse_text

QUERIES = web.AppKey("queries", list[str])
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hami"
SCHEDULER = (FIXTURES / "scheduler_metrics.txt").read_text()
MONITOR = (FIXTURES / "vgpu_monitor_metrics.txt").read_text()
DEV0 = "GPU-5f9f4b2a-1c3d-4e5f-8a9b-0c1d2e3f4a50"
DEV1 = "GPU-5f9f4b2a-1c3d-4e5f-8a9b-0c1d2e3f4a51"
LEGACY = {"GPUDeviceCoreLimit", "GPUDeviceMemoryLimit", "vGPUCoreAllocated"}
LEGACY |= {"vGPUMemoryAllocated", "Device_utilization_desc_of_container"}


def series(*pages: str) -> list[tuple[str, dict[str, str], float]]:
    return [(n, dict(lab), v) for page in pages for n, lab, v in parse_text(page)]


def summary(holds: tuple[SharedHold, ...]) -> list[tuple[object, ...]]:
    return [
        (
            h.uuid,
            h.namespace,
            h.pod,
            round(h.core_share, 9),
            round(h.memory_share, 9),
            None if h.utilization is None else round(h.utilization, 9),
            h.node,
            h.model_name,
        )
        for h in holds
    ]


# trainer-0: 50 of 100 cores, 40 of 80 GiB, 37 % SM; infer-0: two containers (15 + 10 cores,
# 10 + 10 GiB, 6 + 4 % SM); notebook-0 has made no CUDA call: no usage series (HAMi #281).
EXPECTED = [
    (DEV0, "team-a", "trainer-0", 0.5, 0.5, 0.37, "gpu-node-1", "NVIDIA H100 80GB HBM3"),
    (DEV0, "team-b", "infer-0", 0.25, 0.25, 0.1, "gpu-node-1", "NVIDIA H100 80GB HBM3"),
    (DEV1, "team-c", "notebook-0", 0.3, 0.25, None, "gpu-node-1", "NVIDIA H100 80GB HBM3"),
]


def test_both_pages_give_each_pods_shares_and_use() -> None:
    assert summary(shared_holds(series(SCHEDULER, MONITOR))) == EXPECTED


@pytest.mark.parametrize("generation", ["current", "legacy"])
def test_each_generation_alone_gives_the_same_holds(generation: str) -> None:
    every = series(SCHEDULER, MONITOR)
    wanted = [s for s in every if (s[0] in LEGACY) == (generation == "legacy")]
    assert summary(shared_holds(wanted)) == EXPECTED


def test_current_names_win_where_both_generations_disagree() -> None:
    rows = series(SCHEDULER, MONITOR)
    # A legacy page written before AMD normalisation (or stale): the current value counts.
    rows = [(n, lab, 99.0 if n == "vGPUCoreAllocated" else v) for n, lab, v in rows]
    assert summary(shared_holds(rows)) == EXPECTED


def test_a_pod_without_usage_series_is_held_not_zero() -> None:
    holds = {h.pod: h for h in shared_holds(series(SCHEDULER, MONITOR))}
    assert holds["notebook-0"].utilization is None
    # A pod that made its first CUDA call and sits at 0 % is measured at 0.
    zero = MONITOR.replace("} 37", "} 0")
    assert {h.pod: h for h in shared_holds(series(SCHEDULER, zero))}["trainer-0"].utilization == 0


def test_prometheus_renamed_labels_are_read_first() -> None:
    # A job without honor_labels: HAMi's namespace/pod/node become exported_*, and the
    # target's own labels name the HAMi pod.
    rows = []
    for name, labels, value in series(SCHEDULER, MONITOR):
        renamed = {
            ("exported_" + k if k in ("namespace", "pod", "node") else k): v
            for k, v in labels.items()
        }
        renamed |= {"namespace": "kube-system", "pod": "hami-scheduler-0", "node": "infra-1"}
        rows.append((name, renamed, value))
    assert summary(shared_holds(rows)) == EXPECTED


def test_usage_without_allocation_and_bad_values_are_skipped() -> None:
    rows = series(SCHEDULER, MONITOR)
    rows.append(
        (
            "hami_container_device_utilization_ratio",
            {"namespace": "x", "pod": "gone", "device_uuid": DEV0},
            50.0,
        )
    )
    rows.append(
        (
            "hami_vgpu_core_allocated_ratio",
            {"namespace": "x", "pod": "nan", "device_uuid": DEV0},
            float("nan"),
        )
    )
    rows.append(("hami_vgpu_core_allocated_ratio", {"namespace": "x", "pod": "no-uuid"}, 10.0))
    assert summary(shared_holds(rows)) == EXPECTED


def test_query_names_every_series_read() -> None:
    q = hami_query('{cluster="prod"}')
    assert q.endswith(',cluster="prod"}')
    for name in HAMI_NAMES:
        assert name in q


def test_settings_need_a_target_and_compile_the_core_weight() -> None:
    assert HamiSettings(enabled=False).to_model() == 1.0
    assert HamiSettings(enabled=False, billing_share="memory").to_model() == 0.0
    assert HamiSettings(enabled=False, billing_share="mix", core_weight=0.3).to_model() == 0.3
    with pytest.raises(ConfigError, match=r"sources\.hami"):
        settings_from_mapping({"sources": {"hami": {"enabled": True}}})
    with pytest.raises(ConfigError, match="core_weight"):
        settings_from_mapping({"sources": {"hami": {"enabled": False, "core_weight": 1.5}}})


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    async def page(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "broken":
            return web.Response(status=500)
        return web.Response(text=SCHEDULER if kind == "scheduler" else MONITOR)

    async def query(request: web.Request) -> web.Response:
        request.app[QUERIES].append(request.query["query"])
        result = [
            {"metric": {"__name__": n, **lab}, "value": [0, repr(v)]}
            for n, lab, v in series(SCHEDULER, MONITOR)
        ]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return web.Response(text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app[QUERIES] = []
    app.router.add_get("/{kind}/metrics", page)
    app.router.add_get("/api/v1/query", query)
    server = TestServer(app)
    async with server:
        yield server


async def test_scrape_mode_joins_the_scheduler_and_a_monitor(upstream: TestServer) -> None:
    urls = (str(upstream.make_url("/scheduler/metrics")), str(upstream.make_url("/mon/metrics")))
    source = HamiSource(HamiSettings(mode="scrape", scrape_urls=urls), run=run_cpu)
    async with httpx.AsyncClient() as client:
        holds = await source.fetch(client)
    assert summary(holds) == EXPECTED
    assert (source.name, source.slot.value) == ("hami", "shared")


async def test_prometheus_mode_asks_one_query(upstream: TestServer) -> None:
    settings = HamiSettings(prometheus_url=str(upstream.make_url("/")), selector='zone="vGPU"')
    async with httpx.AsyncClient() as client:
        holds = await HamiSource(settings, run=run_cpu).fetch(client)
    assert summary(holds) == EXPECTED
    [q] = upstream.app[QUERIES]
    assert q == hami_query('zone="vGPU"')


async def test_one_failed_page_fails_the_fetch(upstream: TestServer) -> None:
    urls = (str(upstream.make_url("/scheduler/metrics")), str(upstream.make_url("/broken/metrics")))
    source = HamiSource(HamiSettings(mode="scrape", scrape_urls=urls), run=run_cpu)
    async with httpx.AsyncClient() as client:
        with pytest.raises(SourceError) as info:
            await source.fetch(client)
    assert info.value.reason == "http_status"
