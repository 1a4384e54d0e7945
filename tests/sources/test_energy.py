"""The DCGM energy source (sources/energy.py): names and units as NVIDIA documents them,
counter resets like increase(), power x time where there is no counter, one value per GPU."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest import approx

from aifinops.offload import run_cpu
from aifinops.settings import DcgmSettings
from aifinops.sources.base import SourceError
from aifinops.sources.energy import (
    ENERGY_NAMES,
    EnergyMemory,
    EnergySource,
    GpuReading,
    energy_since,
    gpu_readings,
)
from aifinops.sources.promtext import decode_page, parse_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100 = 'gpu="0",UUID="GPU-h100",modelName="NVIDIA H100 80GB HBM3",hostname="node-a"'
A100 = 'gpu="1",UUID="GPU-a100",modelName="NVIDIA A100-SXM4-80GB",hostname="node-a"'


def test_names_and_units_are_nvidias():
    """≤ 4.8: the names and units of dcgm-exporter's default-counters.csv; the ≥ 4.9 power
    name is DCGM's renamed alias of DCGM_FI_DEV_POWER_USAGE (dcgm_fields.h)."""
    rows = {}
    with open(FIXTURES / "dcgm_exporter_default-counters.csv", encoding="utf-8") as f:
        for row in csv.reader(line for line in f if line.strip() and not line.startswith("#")):
            rows[row[0].strip()] = (row[1].strip(), row[2].strip())
    assert rows["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][0] == "counter"
    assert "(in mJ)" in rows["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][1]
    assert ENERGY_NAMES["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == ("energy", 1e-3)
    assert "(in W)" in rows["DCGM_FI_DEV_POWER_USAGE"][1]
    assert ENERGY_NAMES["DCGM_FI_DEV_POWER_USAGE"] == ("power", 1.0)
    renames = dict(
        line.split("\t")[:2]
        for line in (FIXTURES / "dcgm_fields_renames_of_default_counters.tsv")
        .read_text(encoding="utf-8")
        .splitlines()
        if line and not line.startswith("#")
    )
    assert ENERGY_NAMES[renames["DCGM_FI_DEV_POWER_USAGE"]] == ("power", 1.0)


def page(energy_mj: dict[str, float], watts: dict[str, float], extra: str = "") -> str:
    labels = {"GPU-h100": H100, "GPU-a100": A100}
    out = [
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
    ]
    out += [
        f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels[u]}}} {v}" for u, v in energy_mj.items()
    ]
    out += [
        "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
    ]
    out += [f"DCGM_FI_DEV_POWER_USAGE{{{labels[u]}}} {v}" for u, v in watts.items()]
    return "\n".join(out) + "\n" + extra


def read(text: str) -> dict[str, GpuReading]:
    return gpu_readings(parse_text(decode_page(text.encode()), frozenset(ENERGY_NAMES)))


def test_a_gpu_repeated_on_mig_and_pod_series_counts_once():
    # dcgm-exporter writes the device's fields on every MIG instance / pod series of a GPU.
    mig = (
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-a100",GPU_I_PROFILE="1g.10gb",'
        'GPU_I_ID="7",pod="nb",namespace="research"} 5000\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-a100",GPU_I_PROFILE="3g.40gb",'
        'GPU_I_ID="1",pod="tr",namespace="ml"} 5000\n'
    )
    got = read(page({}, {"GPU-h100": 300.0}, mig))
    assert got == {
        "GPU-a100": GpuReading(joules=5.0, watts=None),
        "GPU-h100": GpuReading(joules=None, watts=300.0),
    }


def test_counter_delta_reset_and_power_fallback():
    m0, m1 = EnergyMemory(), None
    first, m1 = energy_since(
        m0, read(page({"GPU-h100": 1_000_000}, {"GPU-h100": 500, "GPU-a100": 200})), 100.0
    )
    assert first.start == first.end == 100.0 and first.gpus == ()  # a baseline, as increase()
    second, m2 = energy_since(
        m1, read(page({"GPU-h100": 31_000_000}, {"GPU-h100": 500, "GPU-a100": 300})), 160.0
    )
    got = {g.uuid: (g.joules, g.method) for g in second.gpus}
    assert got["GPU-h100"] == (approx(30_000.0), "counter")  # 30,000,000 mJ
    assert got["GPU-a100"] == (approx(250.0 * 60), "power")  # mean(200, 300) W x 60 s
    assert (second.start, second.end, second.counter_resets) == (100.0, 160.0, 0)
    # The driver reloaded: the counter starts again from 0; the new value is the interval's.
    third, _ = energy_since(m2, read(page({"GPU-h100": 2_000_000}, {})), 220.0)
    assert {g.uuid: g.joules for g in third.gpus} == {"GPU-h100": approx(2_000.0)}
    assert third.counter_resets == 1


def test_a_gpu_missing_from_one_read_is_covered_by_the_next():
    _, m1 = energy_since(EnergyMemory(), read(page({"GPU-h100": 0, "GPU-a100": 0}, {})), 0.0)
    gap, m2 = energy_since(m1, read(page({"GPU-h100": 1000}, {})), 60.0)
    assert [g.uuid for g in gap.gpus] == ["GPU-h100"]
    back, _ = energy_since(m2, read(page({"GPU-h100": 2000, "GPU-a100": 9000}, {})), 120.0)
    assert {g.uuid: g.joules for g in back.gpus} == {"GPU-h100": 1.0, "GPU-a100": 9.0}


PAGES: list[str] = []


async def handler(request: web.Request) -> web.Response:
    return web.Response(text=PAGES.pop(0))


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    server = TestServer(app)
    async with server:
        yield server


async def test_source_keeps_the_previous_read_and_a_failed_read_changes_nothing(
    upstream: TestServer,
) -> None:
    url = str(upstream.make_url("/metrics"))
    settings = DcgmSettings(mode="scrape", scrape_urls=(url,), timeout_seconds=1.0)
    times = iter([10.0, 70.0, 130.0])
    source = EnergySource(settings, lambda: next(times), run=run_cpu)
    PAGES[:] = [
        page({"GPU-h100": 0}, {}),
        "garbage{",  # a page that does not parse: the fetch fails, the memory stays
        page({"GPU-h100": 90_000_000}, {}),
    ]
    async with httpx.AsyncClient() as client:
        first = await source.fetch(client)
        assert first.gpus == ()
        with pytest.raises(SourceError):
            await source.fetch(client)
        second = await source.fetch(client)
    # The interval runs from the last good read (10 s); the failed read took no clock.
    assert (second.start, second.end) == (10.0, 70.0)
    assert [(g.uuid, g.joules) for g in second.gpus] == [("GPU-h100", approx(90_000.0))]


async def test_an_answer_without_energy_or_power_is_invalid(upstream: TestServer) -> None:
    url = str(upstream.make_url("/metrics"))
    settings = DcgmSettings(mode="scrape", scrape_urls=(url,), timeout_seconds=1.0)
    PAGES[:] = ['DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-h100"} 5\n']
    async with httpx.AsyncClient() as client:
        with pytest.raises(SourceError) as err:
            await EnergySource(settings, lambda: 1.0, run=run_cpu).fetch(client)
    assert err.value.reason == "invalid"


def test_gpus_gone_for_a_day_are_forgotten():
    # GPUs come and go (autoscaled nodes bring new UUIDs): the memory keeps only recent ones.
    memory = EnergyMemory()
    for hour in range(72):
        uuid = f"GPU-{hour}"
        _, memory = energy_since(memory, {uuid: GpuReading(joules=1.0)}, hour * 3600.0)
    assert len(memory.gpus) <= 26
    assert "GPU-71" in memory.gpus and "GPU-0" not in memory.gpus
    # Within the horizon a returning GPU still has its reading: the gap is counted.
    _, memory = energy_since(memory, {"GPU-60": GpuReading(joules=5.0)}, 72 * 3600.0)
    back, _ = energy_since(memory, {"GPU-60": GpuReading(joules=9.0)}, 72 * 3600.0 + 60)
    assert {g.uuid: g.joules for g in back.gpus} == {"GPU-60": 4.0}
