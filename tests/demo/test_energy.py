"""The owned pools' energy simulation and its answer key: DCGM's documented format and
counter semantics (mJ, device scope, reset on driver reload), power that follows the
measured use, and a key that conserves every kWh, dollar and gram."""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifinops.demo.cluster import IDLE_TENANT, UNALLOCATED_TENANT, ClusterSpec, GpuHold, SimCluster
from aifinops.demo.cluster.energy_truth import (
    DailySchedule,
    EnergyPrices,
    UnusedTo,
    energy_answer_key,
    flat,
    owned_price_usd_per_hour,
    split_epoch,
)
from aifinops.demo.cluster.power import ENERGY_METRIC, MJ_PER_KWH, POWER_METRIC, EnergySim, Hold
from aifinops.demo.cluster.spec import CounterReset, EnergySpec, owned_energy, owned_pools

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
EPOCH = 300
# 2025-06-15 12:00 UTC, on an epoch boundary; the interval below holds one explicit reset.
T0 = 1_749_988_800.0
RESET = T0 + 37 * EPOCH
T1 = T0 + 72 * EPOCH
POOLS = tuple(p.name for p in owned_pools())


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    return SimCluster(
        ClusterSpec.owned(energy=owned_energy((CounterReset("onprem-h100", 0, RESET),)))
    )


@pytest.fixture(scope="module")
def energy(sim: SimCluster) -> EnergySim:
    assert sim.energy is not None
    return sim.energy


def _boundaries(start: float, end: float, step: float = EPOCH) -> list[float]:
    return [start + k * step for k in range(round((end - start) / step) + 1)]


@dataclass(frozen=True)
class Page:
    """One read of every dcgm-exporter page: per GPU its power and energy text (every series
    of a GPU must print the same), and per (UUID, GPU_I_ID, pod) the engine-active text."""

    power: dict[str, str]
    energy: dict[str, str]
    engine: dict[tuple[str, str, str], str]
    types: dict[str, str]


def read(sim: SimCluster, t: float) -> Page:
    power: dict[str, set[str]] = defaultdict(set)
    energy: dict[str, set[str]] = defaultdict(set)
    engine: dict[tuple[str, str, str], str] = {}
    types: dict[str, str] = {}
    for text in sim.dcgm_pages(t).values():
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                types[name] = kind
                continue
            m = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            uuid, value = labels["UUID"], m.group(3)
            if m.group(1) == POWER_METRIC:
                power[uuid].add(value)
            elif m.group(1) == ENERGY_METRIC:
                energy[uuid].add(value)
            elif m.group(1) == "DCGM_FI_PROF_GR_ENGINE_ACTIVE":
                engine[(uuid, labels.get("GPU_I_ID", ""), labels.get("pod", ""))] = value
    for per_gpu in (power, energy):
        assert all(len(v) == 1 for v in per_gpu.values()), per_gpu  # device scope
    return Page(
        {u: v.pop() for u, v in power.items()},
        {u: v.pop() for u, v in energy.items()},
        engine,
        types,
    )


def counters(sim: SimCluster, uuid: str, times: list[float]) -> list[int]:
    return [int(read(sim, t).energy[uuid]) for t in times]


def _increase(values: list[int]) -> int:
    """Prometheus' ``increase()`` without extrapolation: a drop is a reset from 0."""
    total = 0
    for prev, cur in itertools.pairwise(values):
        total += cur - prev if cur >= prev else cur
    return total


# --- DCGM's documented format ----------------------------------------------------------------


def test_energy_and_power_families_are_as_dcgm_exporter_declares_them() -> None:
    rows = {}
    with (FIXTURES / "dcgm_exporter_default-counters.csv").open(encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and not row[0].startswith("#"):
                rows[row[0].strip()] = (row[1].strip(), row[2].strip())
    assert rows[ENERGY_METRIC][0] == "counter" and "(in mJ)" in rows[ENERGY_METRIC][1]
    assert rows[POWER_METRIC][0] == "gauge" and "(in W)" in rows[POWER_METRIC][1]
    # DCGM 4.6's renames list no new name for the energy field (see energy.ENERGY_4_9_NAME).
    renames = (FIXTURES / "dcgm_fields_renames_of_default_counters.tsv").read_text("utf-8")
    assert re.search(rf"^{ENERGY_METRIC}\t\t", renames, re.M)


def test_printed_counter_is_whole_millijoules_and_power_is_gos_percent_f(
    sim: SimCluster, energy: EnergySim
) -> None:
    page = read(sim, T0 + 123.0)
    assert page.types[ENERGY_METRIC] == "counter" and page.types[POWER_METRIC] == "gauge"
    for gpu in energy.gpus:
        assert re.fullmatch(r"[0-9]+", page.energy[gpu.uuid]), page.energy[gpu.uuid]
        assert re.fullmatch(r"[0-9]+\.[0-9]{6}", page.power[gpu.uuid]), page.power[gpu.uuid]
    owned = {g.uuid for g in energy.gpus}
    assert all(re.fullmatch(r"[01]\.[0-9]{6}", v) for k, v in page.engine.items() if k[0] in owned)
    # Every series of a MIG GPU or a time-sliced GPU repeats its device's power and energy
    # (checked in read()); there are several such series.
    shared = [k for k in page.engine if k[0] in owned and (k[1] or k[2])]
    assert len(shared) > len(owned)


def test_counter_integrates_the_printed_power_over_each_epoch(
    sim: SimCluster, energy: EnergySim
) -> None:
    times = _boundaries(T0, T0 + 4 * EPOCH)
    pages = {t: read(sim, t) for t in [*times, *(t + 100 for t in times)]}
    for gpu in energy.gpus:
        for t in times[:-1]:
            before = int(pages[t].energy[gpu.uuid])
            after = int(pages[t + EPOCH].energy[gpu.uuid])
            watts = float(pages[t + EPOCH].power[gpu.uuid])
            assert after - before == round(watts * 1000) * EPOCH  # mW × s = mJ, exactly
            assert before < int(pages[t + 100].energy[gpu.uuid]) < after


def test_a_driver_reload_starts_the_counter_from_zero(sim: SimCluster, energy: EnergySim) -> None:
    uuid = energy.gpu("onprem-h100", 0).uuid
    at_reset, after = read(sim, RESET), read(sim, RESET + 60)
    assert int(at_reset.energy[uuid]) > 10 * int(after.energy[uuid])  # at the boundary: old
    # One minute since the reload, at the power of the epoch it is in.
    assert int(after.energy[uuid]) == math.floor(float(after.power[uuid]) * 1000 * 60)
    assert energy.last_reset(uuid, RESET + 60) == RESET
    # The other GPUs go on counting; every GPU also reloads weekly (bounded counters).
    other = energy.gpu("onprem-h100", 1).uuid
    assert int(after.energy[other]) > int(at_reset.energy[other])
    assert T0 - 7 * 86400 < energy.last_reset(other, T0) < T0


def test_a_repeating_reset_recurs_on_schedule(sim: SimCluster) -> None:
    spec = EnergySpec(POOLS, resets=(CounterReset("onprem-l4-shared", 1, T0, every_s=3600),))
    e = EnergySim(spec, sim.nodes, sim.pods)
    uuid = e.gpu("onprem-l4-shared", 1).uuid
    assert e.last_reset(uuid, T0 + 5400) == T0 + 3600
    assert e.last_reset(uuid, T0 + 7200) == T0 + 3600  # left-open: still the old count
    assert e.counter_mj(uuid, T0 + 7200 + 300) == e.use(uuid, e.epoch(T0 + 7500)).energy_mj


def test_bad_energy_specs_fail(sim: SimCluster) -> None:
    with pytest.raises(ValueError, match="epoch"):
        EnergySpec(POOLS, epoch_s=7)
    with pytest.raises(ValueError, match="epoch boundaries"):
        EnergySpec(POOLS, resets=(CounterReset("onprem-h100", 0, T0 + 1),))
    with pytest.raises(ValueError, match="unknown pools"):
        EnergySim(EnergySpec(("nope",)), sim.nodes, sim.pods)
    with pytest.raises(ValueError, match="no GPU 9"):
        bad = EnergySpec(POOLS, resets=(CounterReset("onprem-h100", 9, T0),))
        EnergySim(bad, sim.nodes, sim.pods)


# --- power follows the measured use ----------------------------------------------------------


def test_printed_figures_are_the_true_shares_and_power_follows_them(
    sim: SimCluster, energy: EnergySim
) -> None:
    for t in _boundaries(T0 + EPOCH, T0 + 3 * EPOCH):
        page = read(sim, t)
        for gpu in energy.gpus:
            holds = energy.holds(gpu.uuid)
            use = energy.use(gpu.uuid, energy.epoch(t))
            printed = [float(page.engine[(gpu.uuid, h.unit, h.pod.name)]) for h in holds]
            part = [1.0 if gpu.sharing == "timeslice" else h.part for h in holds]
            assert [p * f for p, f in zip(part, printed, strict=True)] == pytest.approx(
                list(use.shares), abs=1e-12
            )
            idle_w = 0.1 * gpu.model.max_power_w
            busy = math.fsum(use.shares)
            assert float(page.power[gpu.uuid]) == pytest.approx(
                idle_w + (gpu.model.max_power_w - idle_w) * busy, abs=1e-3
            )
    unheld = [g for g in energy.gpus if not energy.holds(g.uuid)]
    assert unheld and all(energy.power_w(g.uuid, T0) == 0.1 * g.model.max_power_w for g in unheld)


def test_the_layout_has_every_case_the_key_must_handle(sim: SimCluster, energy: EnergySim) -> None:
    sharing = {g.sharing for g in energy.gpus}
    assert sharing == {"none", "mig", "timeslice"}
    holds = [h for g in energy.gpus for h in energy.holds(g.uuid)]
    assert {h.pod.busy for h in holds} == {True, False}
    assert any(len(h.pod.holds) > 1 for h in holds)  # a pod on two GPUs
    assert any(sim.tenant_of(h.pod) == UNALLOCATED_TENANT for h in holds)
    ts = [g for g in energy.gpus if g.sharing == "timeslice"]
    assert any(math.fsum(h.request for h in energy.holds(g.uuid)) < 0.99 for g in ts)
    mig = [g for g in energy.gpus if g.sharing == "mig"]
    assert any(len({h.unit for h in energy.holds(g.uuid)}) < len(g.mig) for g in mig)
    # Somewhere in the interval a time-sliced pod uses more than its replica.
    over = [
        (g.uuid, e)
        for g in ts
        for e in range(energy.epoch(T0) + 1, energy.epoch(T1) + 1)
        for h, s in zip(energy.holds(g.uuid), energy.use(g.uuid, e).shares, strict=True)
        if s > h.request
    ]
    assert over


def test_the_owned_pools_leave_the_rest_of_the_demo_cluster_as_it_was() -> None:
    spec = ClusterSpec.demo()
    cloud = tuple(p for p in spec.pools if p.name not in POOLS)
    without = SimCluster(ClusterSpec.demo(pools=cloud, energy=None))
    demo = SimCluster(spec)
    assert demo.nodes[: len(without.nodes)] == without.nodes
    assert demo.pods[: len(without.pods)] == without.pods
    owned = demo.nodes[len(without.nodes) :]
    assert {n.pool for n in owned} == set(POOLS)
    assert all(re.fullmatch(r"gpu-onprem-10-0-\d+-\d+", n.name) for n in owned)
    # The cloud GPUs' pages are as before; the owned GPUs' counters are the energy sim's.
    assert demo.energy is not None
    t = T0 + 77.0
    for node in without.nodes:
        if node.gpus:
            assert demo.dcgm_exposition(t, node=node.name) == without.dcgm_exposition(
                t, node=node.name
            )
    for node in owned:
        for gpu in node.gpus:
            assert demo.energy.covers(gpu.uuid)


# --- the answer key ----------------------------------------------------------------------------


PRICES = EnergyPrices(
    usd_per_kwh=DailySchedule(
        "America/Chicago", (("00:00", 0.08), ("07:00", 0.13), ("17:00", 0.21), ("21:00", 0.10))
    ),
    grid_gco2e_per_kwh=DailySchedule("America/Chicago", (("00:00", 450.0), ("09:00", 310.0))),
    pue=1.35,
)


def test_an_increase_reader_at_every_epoch_boundary_sees_the_keys_energy(
    sim: SimCluster, energy: EnergySim
) -> None:
    key = energy_answer_key(sim, PRICES, T0, T1)
    pages = [read(sim, t) for t in _boundaries(T0, T1)]
    for gpu in energy.gpus:
        values = [int(p.energy[gpu.uuid]) for p in pages]
        assert _increase(values) / MJ_PER_KWH == pytest.approx(key.gpu_kwh[gpu.uuid], rel=1e-12)
    reset_gpu = energy.gpu("onprem-h100", 0).uuid
    assert int(pages[-1].energy[reset_gpu]) < int(pages[0].energy[reset_gpu])  # a reset inside


def test_a_reader_that_misses_the_boundary_before_a_reset_loses_that_stretch(
    sim: SimCluster, energy: EnergySim
) -> None:
    uuid = energy.gpu("onprem-h100", 0).uuid
    times = [t for t in _boundaries(RESET - 4 * EPOCH, RESET + 4 * EPOCH) if t != RESET]
    values = counters(sim, uuid, times)
    lost = energy.use(uuid, energy.epoch(RESET)).energy_mj  # (RESET − Δ, RESET]
    assert _increase(values) == energy.energy_mj(uuid, times[0], times[-1]) - lost


def test_key_conserves_kwh_dollars_and_carbon(sim: SimCluster, energy: EnergySim) -> None:
    rules: tuple[UnusedTo, ...] = ("holder", "idle")
    for rule in rules:
        key = energy_answer_key(sim, PRICES, T0, T1, unused_to=rule)
        rows = key.tenants.values()
        assert math.fsum(r.kwh for r in rows) == pytest.approx(key.fleet_kwh, rel=1e-12)
        assert math.fsum(r.usd for r in rows) == pytest.approx(key.fleet_usd, rel=1e-12)
        assert math.fsum(r.kg_co2e for r in rows) == pytest.approx(key.fleet_kg_co2e, rel=1e-12)
        assert all(r.kwh >= 0 and r.usd >= 0 for r in rows)
        assert math.fsum(key.gpu_kwh.values()) == pytest.approx(key.fleet_kwh, rel=1e-12)
    holder = energy_answer_key(sim, PRICES, T0, T1)
    idle = energy_answer_key(sim, PRICES, T0, T1, unused_to="idle")
    moved = math.fsum(r.unused_kwh for t, r in holder.tenants.items() if t != IDLE_TENANT)
    assert moved > 0
    assert idle.tenant(IDLE_TENANT).kwh == pytest.approx(
        holder.tenant(IDLE_TENANT).kwh + moved, rel=1e-12
    )
    # Energy in kWh: the fleet of 8 GPUs over 6 h draws between idle and full power.
    gpus = energy.gpus
    hours = (T1 - T0) / 3600
    low = math.fsum(0.1 * g.model.max_power_w for g in gpus) * hours / 1000
    high = math.fsum(g.model.max_power_w for g in gpus) * hours / 1000
    assert low < holder.fleet_kwh < high


def test_key_is_additive_over_intervals_and_prices_each_epoch_by_its_local_time(
    sim: SimCluster,
) -> None:
    # 2025-06-15 17:00 CDT = 22:00 UTC: the peak price starts there.
    peak = datetime(2025, 6, 15, 22, 0, tzinfo=UTC).timestamp()
    before = energy_answer_key(sim, PRICES, peak - 3600, peak)
    after = energy_answer_key(sim, PRICES, peak, peak + 3600)
    both = energy_answer_key(sim, PRICES, peak - 3600, peak + 3600)
    assert before.fleet_usd == pytest.approx(before.fleet_kwh * 1.35 * 0.13, rel=1e-12)
    assert after.fleet_usd == pytest.approx(after.fleet_kwh * 1.35 * 0.21, rel=1e-12)
    assert before.fleet_kg_co2e == pytest.approx(before.fleet_kwh * 1.35 * 0.310, rel=1e-12)
    for name, row in both.tenants.items():
        assert row.usd == pytest.approx(
            before.tenant(name).usd + after.tenant(name).usd, rel=1e-12, abs=1e-15
        )
        assert row.kwh == pytest.approx(
            before.tenant(name).kwh + after.tenant(name).kwh, rel=1e-12, abs=1e-15
        )
    # In winter (CST, UTC-6) the same local hour is 23:00 UTC.
    jan = DailySchedule("America/Chicago", PRICES.usd_per_kwh.periods)
    assert jan.at(datetime(2025, 1, 15, 22, 59, tzinfo=UTC).timestamp()) == 0.13
    assert jan.at(datetime(2025, 1, 15, 23, 0, tzinfo=UTC).timestamp()) == 0.21
    with pytest.raises(ValueError, match="inside epoch"):
        odd = DailySchedule("UTC", (("00:00", 0.1), ("12:02", 0.2)))
        energy_answer_key(sim, EnergyPrices(odd, flat(1.0), 1.0), T0, T1)


def _holds(sim: SimCluster, specs: list[tuple[str, float, float]]) -> tuple[Hold, ...]:
    pods = [p for p in sim.pods if p.holds]
    return tuple(
        Hold(pods[i], GpuHold("GPU-x", unit, req, "m"), unit, req, part)
        for i, (unit, req, part) in enumerate(specs)
    )


def test_split_rule_on_the_readmes_time_sliced_example(sim: SimCluster) -> None:
    # A and B each request one of 4 replicas; A uses 37 % of the GPU, B 10 %; two replicas
    # are free: A pays its use, B its request (use + unused), __idle__ the rest.
    holds = _holds(sim, [("", 0.25, 1.0), ("", 0.25, 1.0)])
    used, unused = split_epoch(holds, (0.37, 0.10))
    assert used == [0.37, 0.10]
    assert unused == pytest.approx([0.0, 0.15])
    assert 1 - math.fsum(used) - math.fsum(unused) == pytest.approx(0.38)


def test_split_rule_on_mig_and_whole_gpus(sim: SimCluster) -> None:
    # A 3g slice at 50 % uses 3/7 × 0.5 of the GPU; its holder's unused is the rest of the
    # slice; an unheld slice's energy stays __idle__'s.
    holds = _holds(sim, [("1", 3 / 7, 3 / 7), ("3", 2 / 7, 2 / 7)])
    used, unused = split_epoch(holds, (3 / 7 * 0.5, 2 / 7 * 0.02))
    assert [u + w for u, w in zip(used, unused, strict=True)] == pytest.approx([3 / 7, 2 / 7])
    whole = _holds(sim, [("", 1.0, 1.0)])
    used, unused = split_epoch(whole, (0.4,))
    assert used == [0.4] and unused == pytest.approx([0.6])


# --- the owned price, by the docs' hand calculation ----------------------------------------------


def _doc_entry() -> dict[str, Any]:
    text = (ROOT / "docs" / "owned-gpus.md").read_text(encoding="utf-8")
    block = re.search(r"## Worked example.*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    entry: dict[str, Any] = yaml.safe_load(block.group(1))["gpu_pricing"]["owned"]["gpus"][0]
    return entry


def test_owned_price_reproduces_the_docs_hand_calculation_to_the_cent() -> None:
    e = _doc_entry()
    bought = datetime.combine(e["purchase_date"], datetime.min.time(), UTC).timestamp()

    def price(day: str) -> float:
        at = datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()
        return owned_price_usd_per_hour(
            purchase_usd=e["purchase_price_usd"],
            residual_usd=e["residual_value_usd"],
            life_years=e["depreciation_life_years"],
            support_usd_per_year=e["support_usd_per_year"],
            hosting_usd_per_gpu_month=e["hosting_usd_per_gpu_month"],
            purchased_at=bought,
            at=at,
        )

    text = (ROOT / "docs" / "owned-gpus.md").read_text(encoding="utf-8")
    hourly = price("2026-06-15")
    assert f"${hourly:.6f}" == "$1.175799" and "$1.175799" in text
    assert f"${hourly * 730:,.2f}" == "$858.33" and "$858.33" in text
    assert f"${2 * hourly * 730:,.2f}" == "$1,716.67" and "$1,716.67" in text
    assert f"${3 * hourly * 730:,.2f}" == "$2,575.00" and "$2,575.00" in text
    # The life ends 4 × 365 days after the purchase: 2028-12-31; then support + hosting.
    assert price("2028-12-30") > price("2028-12-31")
    assert f"${price('2029-03-01') * 730:,.2f}" == "$275.00" and "$275.00" in text
