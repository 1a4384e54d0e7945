"""Owned GPUs: the docs' worked example to the cent through settings → model → series, the
depreciation methods, precedence against OpenCost, node pools, and bad configuration."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops import assemble
from aifinops.exposition import catalog as c
from aifinops.exposition.families import cost_families
from aifinops.exposition.render import render_family
from aifinops.model.cost import attribute_costs
from aifinops.model.inputs import AllocationSet, Inputs
from aifinops.model.owned_prices import OwnedGpuSpec, owned_hourly_cost
from aifinops.model.report import ModelState, build_report
from aifinops.settings import ConfigError, settings_from_mapping
from tests.lifecycle.proc import run_cli
from tests.model.builders import H100, L4, gpu, idle_row, pod, pricer, resolver
from tests.model.test_cost_conservation import clusters

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "owned-gpus.md"
HOUR = 3600.0


def _ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def _doc_config() -> dict[str, Any]:
    """The worked example's YAML block, read from the docs page itself."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"## Worked example.*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    data: dict[str, Any] = yaml.safe_load(block.group(1))
    return data


def _doc_cluster() -> Inputs:
    """On-prem: OpenCost bills CPU but no GPU; research holds two H100s, the third is free."""
    allocs = (
        pod("ml-research", "train-0", cpu_cost=0.10, gpu_count=1.0),
        pod("ml-research", "train-1", cpu_cost=0.10, gpu_count=1.0),
        idle_row(cpu_cost=0.05),
    )
    gpus = (
        replace(gpu("GPU-1", H100, 0.9, "ml-research", "train-0"), node="gpu-a"),
        replace(gpu("GPU-2", H100, 0.8, "ml-research", "train-1"), node="gpu-a"),
        replace(gpu("GPU-3", H100, 0.0), node="gpu-a"),
    )
    return Inputs(gpus=gpus, allocations=AllocationSet(1.0, allocs))


def test_docs_worked_example_to_the_cent_through_settings_model_and_series() -> None:
    settings = settings_from_mapping(
        {**_doc_config(), "tenancy": {"namespaces": {"ml-research": "research"}}}
    )
    ctx = assemble.model_context(settings)  # the real compile step, bundled catalog
    now = _ts("2026-06-15")  # in the second year of a four-year life
    report, _ = build_report(_doc_cluster(), ctx, ModelState(), now)

    price = report.cost.gpu_prices[(H100, "owned")]
    # The docs' hand calculation: $858.33 a GPU-month, $1.175799 a GPU-hour.
    assert round(price, 6) == 1.175799
    assert round(price * 730, 2) == 858.33
    month = {
        t: r * 730 for (t, res), r in report.tenant_rates("allocation").items() if res == "gpu"
    }
    assert round(month["research"], 2) == 1716.67
    assert round(month["__idle__"], 2) == 858.33
    assert round(math.fsum(month.values()), 2) == round(report.cost.cluster["gpu"] * 730, 2)
    assert round(report.cost.cluster["gpu"] * 730, 2) == 2575.00
    for figure in ("$858.33", "$1.175799", "**$1,716.67**", "$2,575.00", "$550.00"):
        assert figure in DOC.read_text(encoding="utf-8"), figure

    # Published: the price in use, the components and the inputs.
    text = "".join(render_family(f) for f in cost_families(report))
    assert f'aifinops_gpu_price_usd_per_hour{{gpu_model="{H100}",source="owned"}}' in text
    components = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'aifinops_owned_gpu_price_usd_per_hour\{pool="h100-onprem",gpu_model="[^"]+",'
            r'component="(\w+)"\} (\S+)',
            text,
        )
    }
    assert {k: round(v * 730, 2) for k, v in components.items()} == {
        "capital": 583.33,
        "support": 125.00,
        "hosting": 150.00,
    }
    assert (
        'aifinops_owned_gpu_price_info{pool="h100-onprem",gpu_model="NVIDIA H100 80GB HBM3",'
        'node_pattern="",purchase_date="2025-01-01",purchase_price_usd="30000",'
        'depreciation_method="straight_line",depreciation_life_years="4",'
        'residual_value_usd="2000",support_usd_per_year="1500",'
        'hosting_usd_per_gpu_month="150",precedence="opencost"} 1' in text
    )

    # The life ends 4 × 365 days in, on 2028-12-31 (the docs say so): capital stops there.
    spec = ctx.pricer.owned.entries[0]
    assert owned_hourly_cost(spec, _ts("2028-12-30")).capital > 0
    assert owned_hourly_cost(spec, _ts("2028-12-31")).capital == 0.0
    assert "on 2028-12-31" in DOC.read_text(encoding="utf-8")
    # After the life: support and hosting only, $275 a GPU-month.
    later, _ = build_report(_doc_cluster(), ctx, ModelState(), _ts("2029-03-01"))
    rates = later.tenant_rates("allocation")
    assert round(later.cost.gpu_prices[(H100, "owned")] * 730, 2) == 275.00
    assert round(rates[("research", "gpu")] * 730, 2) == 550.00


def _spec(**kw: Any) -> OwnedGpuSpec:
    base: dict[str, Any] = dict(
        pool="p",
        gpu_model=H100,
        purchase_usd=30000.0,
        purchase_date="2025-01-01",
        purchased_at=_ts("2025-01-01"),
        life_years=4.0,
        residual_usd=2000.0,
        support_usd_per_year=1500.0,
        hosting_usd_per_gpu_month=150.0,
    )
    base.update(kw)
    return OwnedGpuSpec(**base)


def _capital_by_year(spec: OwnedGpuSpec, years: int) -> list[float]:
    year_s = 8760 * HOUR
    return [
        owned_hourly_cost(spec, spec.purchased_at + (k + 0.5) * year_s).capital * 8760
        for k in range(years)
    ]


def test_straight_line_stops_at_residual_and_support_hosting_continue() -> None:
    spec = _spec()
    capital = _capital_by_year(spec, 6)
    assert [round(x, 6) for x in capital] == [7000.0] * 4 + [0.0, 0.0]
    assert math.isclose(math.fsum(capital), 30000 - 2000)
    after = owned_hourly_cost(spec, spec.purchased_at + 5 * 8760 * HOUR)
    assert after.capital == 0.0 and after.book_value_usd == 2000.0
    assert math.isclose(after.total, 1500 / 8760 + 150 / 730)
    # A fractional life ends mid-year: 2.5 years charge 2.5 years' worth, then nothing.
    half = _spec(life_years=2.5)
    end = half.purchased_at + 2.5 * 8760 * HOUR
    assert owned_hourly_cost(half, end - HOUR).capital > 0
    assert owned_hourly_cost(half, end + HOUR).capital == 0.0


def test_declining_balance_charges_double_rate_and_lands_on_the_residual() -> None:
    spec = _spec(method="declining_balance")
    capital = _capital_by_year(spec, 5)
    assert [round(x, 6) for x in capital] == [15000.0, 7500.0, 3750.0, 1750.0, 0.0]
    assert math.isclose(math.fsum(capital), 30000 - 2000)
    # A high residual: the floor stops the charge early instead of going below it.
    floor = _capital_by_year(_spec(method="declining_balance", residual_usd=20000.0), 4)
    assert [round(x, 6) for x in floor] == [10000.0, 0.0, 0.0, 0.0]


def test_a_clock_set_before_the_purchase_counts_as_age_zero() -> None:
    spec = _spec()
    before = owned_hourly_cost(spec, spec.purchased_at - 86400)
    assert before == owned_hourly_cost(spec, spec.purchased_at)


def _owned_pricer(precedence: str, **entry: Any) -> Any:
    cfg = {"gpu_model": H100, "purchase_price_usd": 8760.0 * 2, "purchase_date": "2025-01-01"}
    cfg.update(entry)
    cfg.setdefault("depreciation_life_years", 1.0)
    s = settings_from_mapping({"gpu_pricing": {"owned": {"precedence": precedence, "gpus": [cfg]}}})
    return replace(pricer(), owned=s.gpu_pricing.owned.to_model())


def _opencost_priced_cluster() -> Inputs:
    """OpenCost prices the H100 at $4/h: pod a holds it; a second H100 is in the idle row."""
    allocs = (
        pod("team-x", "a", {"aifinops.io/tenant": "alpha"}, gpu_cost=4.0, gpu_count=1.0),
        idle_row(gpu_cost=4.0, cpu_cost=1.0),
    )
    gpus = (gpu("GPU-1", H100, 0.5, "team-x", "a"), gpu("GPU-2", H100, 0.0))
    return Inputs(gpus=gpus, allocations=AllocationSet(1.0, allocs))


def _report(p: Any, inputs: Inputs, now: float) -> Any:
    ctx = assemble.ModelContext(
        resolver=assemble.Settings().tenancy.to_model(),
        pricer=p,
        idle_threshold=0.05,
        idle_window_seconds=600.0,
    )
    return build_report(inputs, ctx, ModelState(), now)[0]


def _gpu_sums(report: Any, basis: str) -> tuple[dict[str, float], float]:
    rates = {t: v for (t, r), v in report.tenant_rates(basis).items() if r == "gpu"}
    return rates, report.cost.cluster["gpu"]


def test_opencost_precedence_bills_opencost_and_shows_the_owned_price_beside() -> None:
    now = _ts("2025-06-01")  # in its one-year life: capital $2/h
    report = _report(_owned_pricer("opencost"), _opencost_priced_cluster(), now)
    rates, cluster = _gpu_sums(report, "allocation")
    assert rates == {"alpha": 4.0, "__idle__": 4.0} and cluster == 8.0
    assert report.cost.gpu_prices == {(H100, "opencost"): 4.0}
    (owned,) = report.cost.owned_prices
    assert math.isclose(owned.total, 2.0) and owned.precedence == "opencost"


def test_owned_precedence_replaces_opencost_gpu_dollars_and_keeps_every_sum() -> None:
    now = _ts("2025-06-01")
    report = _report(_owned_pricer("owned"), _opencost_priced_cluster(), now)
    for basis in ("allocation", "usage"):
        rates, cluster = _gpu_sums(report, basis)
        # Two GPUs at the owned $2/h: alpha's hold, and the free one plus nothing else idle.
        assert math.isclose(cluster, 4.0)
        assert math.isclose(math.fsum(rates.values()), cluster), basis
    alloc, _ = _gpu_sums(report, "allocation")
    assert math.isclose(alloc["alpha"], 2.0) and math.isclose(alloc["__idle__"], 2.0)
    usage, _ = _gpu_sums(report, "usage")
    assert math.isclose(usage["alpha"], 1.0)  # 50 % of a $2/h device
    assert report.cost.gpu_prices == {(H100, "owned"): pytest.approx(2.0)}
    # Non-GPU money is OpenCost's either way.
    assert report.tenant_rates("allocation")[("__idle__", "cpu")] == 1.0


def test_node_pools_price_one_model_per_node_and_other_models_keep_the_catalog() -> None:
    p = _owned_pricer("opencost", node_pattern="pool-a-.*", pool="a")
    allocs = (idle_row(cpu_cost=0.0),)
    gpus = (
        replace(gpu("GPU-1", H100, 0.0), node="pool-a-1"),
        replace(gpu("GPU-2", H100, 0.0), node="cloud-1"),
        replace(gpu("GPU-3", L4, 0.0), node="pool-a-2"),
    )
    report = _report(p, Inputs(gpus, AllocationSet(1.0, allocs)), _ts("2025-06-01"))
    idle = report.tenant_rates("allocation")[("__idle__", "gpu")]
    assert math.isclose(idle, 2.0 + 4.0 + 0.5)  # owned, catalog H100, catalog L4
    assert pytest.approx(2.0) == p.at(0.0).price(H100, "pool-a-7")[0]
    assert p.at(0.0).price(H100, "xpool-a-7") == (4.0, "catalog")  # full match only
    assert p.price(H100, "pool-a-7") == (4.0, "catalog")  # no now: no owned price


def _entry(**kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "gpu_model": H100,
        "purchase_price_usd": 30000,
        "purchase_date": "2025-01-01",
        "depreciation_life_years": 4,
    }
    e.update(kw)
    return e


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        (_entry(residual_value_usd=40000), "residual_value_usd (40000.0) is more than"),
        (_entry(depreciation_life_years=0), "gpu_pricing.owned.gpus.0.depreciation_life_years"),
        (_entry(depreciation_life_years=-1), "gpu_pricing.owned.gpus.0.depreciation_life_years"),
        (
            _entry(purchase_date=(date.today() + timedelta(days=2)).isoformat()),
            "gpu_pricing.owned.gpus.0.purchase_date: Value error, is in the future",
        ),
        (_entry(support_usd_per_year=-5), "gpu_pricing.owned.gpus.0.support_usd_per_year"),
        (_entry(node_pattern="(x"), "gpu_pricing.owned.gpus.0.node_pattern"),
        (
            _entry(depreciation_method="declining_balance", depreciation_life_years=2.5),
            "whole years with declining_balance",
        ),
        (_entry(purchase_price_usd=float("nan")), "gpu_pricing.owned.gpus.0.purchase_price_usd"),
    ],
)
def test_bad_owned_configuration_fails_naming_the_field(entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_mapping({"gpu_pricing": {"owned": {"gpus": [entry]}}})
    assert needle in str(err.value)
    assert "gpu_pricing.owned.gpus.0" in str(err.value)


def test_unknown_gpu_model_and_duplicate_pool_fail_at_start_up() -> None:
    settings = settings_from_mapping(
        {"gpu_pricing": {"owned": {"gpus": [_entry(gpu_model="H1OO")]}}}
    )
    with pytest.raises(ConfigError, match=r"gpu_pricing\.owned\.gpus\.0\.gpu_model: unknown"):
        assemble.model_context(settings)
    # An override makes a model known (a GPU the catalog lacks).
    known = settings_from_mapping(
        {"gpu_pricing": {"overrides": {"H1OO": 1.0}, "owned": {"gpus": [_entry(gpu_model="H1OO")]}}}
    )
    assert assemble.model_context(known).pricer.owned.entries[0].gpu_model == "H1OO"
    with pytest.raises(ConfigError, match=r"gpu_pricing\.owned.*used twice"):
        settings_from_mapping({"gpu_pricing": {"owned": {"gpus": [_entry(), _entry()]}}})


def test_the_owned_series_are_in_the_catalog() -> None:
    assert c.OWNED_GPU_PRICE.name == "aifinops_owned_gpu_price_usd_per_hour"
    assert "precedence" in c.OWNED_GPU_PRICE_INFO.labels


def test_the_commented_example_in_example_yaml_compiles() -> None:
    text = (ROOT / "config" / "example.yaml").read_text(encoding="utf-8")
    block = text[text.index("  # owned:") :].split("\n\n")[0]
    lines = [line.replace("  # ", "  ", 1) for line in block.splitlines() if line.startswith("  #")]
    data = yaml.safe_load("gpu_pricing:\n" + "\n".join(lines))
    spec = assemble.model_context(settings_from_mapping(data)).pricer.owned.entries[0]
    assert (spec.pool, spec.node_pattern, spec.life_years) == ("h100-onprem", "gpu-onprem-.*", 4)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        (
            "{gpu_model: H1OO, purchase_price_usd: 1, purchase_date: 2025-01-01, "
            "depreciation_life_years: 1}",
            "gpu_pricing.owned.gpus.0.gpu_model",
        ),
        (
            "{gpu_model: H100, purchase_price_usd: 1, purchase_date: 2025-01-01, "
            "depreciation_life_years: 0}",
            "gpu_pricing.owned.gpus.0.depreciation_life_years",
        ),
    ],
)
def test_check_config_exits_2_naming_the_owned_field(
    tmp_path: Path, entry: str, needle: str
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "sources: {dcgm: {mode: scrape, scrape_urls: ['http://127.0.0.1:9/metrics']}}\n"
        f"gpu_pricing: {{owned: {{gpus: [{entry}]}}}}\n"
    )
    proc = run_cli("--config", str(f), "--check-config")
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr


@settings(max_examples=150, deadline=None)
@given(clusters(), st.sampled_from(["opencost", "owned"]))
def test_owned_prices_conserve_every_dollar(cluster: Any, precedence: str) -> None:
    """On the conservation test's random clusters: with owned H100s the buckets still sum to
    the cluster total per basis and resource; precedence opencost changes no billed dollar
    where OpenCost prices GPUs; precedence owned prices every GPU DCGM sees at least once."""
    allocs, gpus, window = cluster
    rows = AllocationSet(window, tuple(allocs))
    owned = _owned_pricer(precedence).at(_ts("2025-06-01"))  # H100 at $2/h, L4 catalog $0.5
    b = attribute_costs(rows, tuple(gpus), resolver(), owned)
    for basis, rates in b.rates.items():
        for resource, total in b.cluster.items():
            parts = math.fsum(v for (_, r), v in rates.items() if r == resource)
            assert math.isclose(parts, total, rel_tol=1e-9, abs_tol=1e-9), (basis, resource)
        assert all(v >= -1e-9 for v in rates.values()), basis
    opencost_prices = any(a.gpu_cost > 0 for a in allocs)
    if precedence == "opencost" and opencost_prices:
        plain = attribute_costs(rows, tuple(gpus), resolver(), pricer())
        assert b.rates == plain.rates
    if precedence == "owned":
        device_price = {s.uuid: 2.0 if s.model_name == H100 else 0.5 for s in gpus}
        floor = math.fsum(device_price.values())
        assert b.cluster.get("gpu", 0.0) >= floor - 1e-9
        assert all(src != "opencost" for _, src in b.gpu_prices)
