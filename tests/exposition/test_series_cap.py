"""``limits.max_series_per_family``: a family over the cap keeps its largest series; the rest
are summed into ``__other__`` where the family is money, tokens or GPUs (every per-dimension
total unchanged), dropped otherwise, and counted in ``aifinops_series_dropped_total``."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aifinops.exposition import catalog as c
from aifinops.exposition.bounds import ADDITIVE, cap_family
from aifinops.exposition.render import Family
from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from tests.fuzz.conftest import FUZZ, tried
from tests.web.conftest import parse_page

# A money family with a third label that splits totals (a basis, as the cost family had
# before one family per basis): folding and rendering must handle any such dimension.
COST3 = replace(c.TENANT_COST_RATE, labels=("tenant", "resource", "basis"))


def totals(family: Family, dims: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    idx = [family.spec.labels.index(d) for d in dims]
    out: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for labels, v in family.samples:
        out[tuple(labels[i] for i in idx)].append(v)
    return {k: math.fsum(v) for k, v in out.items()}


rows = st.lists(
    st.tuples(
        st.sampled_from([f"t{i}" for i in range(40)]),
        st.sampled_from(["gpu", "cpu", "ram", "tokens"]),
        st.sampled_from(["allocation", "usage"]),
        st.floats(min_value=0, max_value=1e6),
    ),
    max_size=400,
    unique_by=lambda r: r[:3],
)


@FUZZ
@given(rows, st.integers(min_value=8, max_value=120))
def test_money_is_conserved(rows: list[Any], cap: int) -> None:
    tried("bounds.cap_family")
    family = Family(COST3, [((t, r, b), v) for t, r, b, v in rows])
    capped, lost = cap_family(family, cap)
    assert len(capped.samples) <= max(cap, 8)
    assert len({labels for labels, _ in capped.samples}) == len(capped.samples)
    before, after = totals(family, ("resource", "basis")), totals(capped, ("resource", "basis"))
    assert before.keys() == after.keys()
    for key, v in before.items():
        assert math.isclose(after[key], v, rel_tol=1e-9, abs_tol=1e-6)
    if len(rows) <= cap:
        assert lost == 0 and capped is family
    else:
        assert lost > 0
        kept = {labels for labels, _ in capped.samples if labels[0] != c.OTHER_TENANT}
        assert len(kept) == len(rows) - lost
        # what is kept is the largest
        smallest_kept = min((v for labels, v in capped.samples if labels in kept), default=0.0)
        assert all(v <= smallest_kept for t, r, b, v in rows if (t, r, b) not in kept) or not kept


def test_non_money_families_are_cut_not_summed() -> None:
    assert c.GPU_PRICE.name not in ADDITIVE
    family = Family(c.GPU_PRICE, [((f"m{i}", "catalog"), float(i)) for i in range(300)])
    capped, lost = cap_family(family, 100)
    assert lost == 200 and len(capped.samples) == 100
    assert min(v for _, v in capped.samples) == 200.0  # the largest kept


async def test_through_the_app(aiohttp_client: Any) -> None:
    settings = settings_from_mapping(
        {
            "limits": {"max_series_per_family": 100},
            "tokens": {"push": {"enabled": True, "max_series": 100_000}, "max_models": 100_000},
        }
    )
    app = create_app(settings, run_loop=False)
    client = await aiohttp_client(app)
    records = [
        {
            "tenant": f"team-{i % 7}",
            "model": f"model-{i}",
            "input_tokens": i + 1,
            "output_tokens": 1,
        }
        for i in range(300)
    ]
    resp = await client.post("/api/v1/usage", json={"records": records})
    assert resp.status == 202
    await app[REFRESHER].refresh_once()
    await app[REFRESHER].refresh_once()
    page = parse_page(await (await client.get("/metrics")).text())
    tokens = page["aifinops_tokens_total"]
    assert len(tokens) <= 100
    by_type: dict[str, float] = defaultdict(float)
    for labels, v in tokens:
        by_type[labels["token_type"]] += v
    assert by_type["input"] == sum(r["input_tokens"] for r in records)
    assert by_type["output"] == 300
    assert any(labels["model"] == c.OTHER_TENANT for labels, _ in tokens)
    dropped = {lbl["family"]: v for lbl, v in page["aifinops_series_dropped_total"]}
    assert dropped["aifinops_tokens_total"] > 0
    for name, samples in page.items():
        assert len(samples) <= 100 or name == "aifinops_source_errors_total", name


def test_split_method_families_fold_and_keep_each_method_total() -> None:
    # Their sum() is the cluster GPU rate and each method's share feeds the even-split alert:
    # over the cap they must fold into __other__ per method, not lose their smallest tenants.
    for spec in (c.TENANT_GPU_COST_BY_METHOD, c.TENANT_USAGE_GPU_COST_BY_METHOD):
        methods = ("exclusive", "even_split", "hami")
        samples = [((f"t{i:03}", m), 1.0 + i) for i in range(150) for m in methods]
        family = Family(spec, samples)
        capped, lost = cap_family(family, 100)
        assert lost > 0 and len(capped.samples) <= 100
        assert totals(capped, ("method",)) == pytest.approx(totals(family, ("method",)))
