"""The page built column by column, with orders, fold groups and line pieces kept between
refreshes, is byte for byte the page of the code before it (the oracles:
tests/exposition/families_reference.py, tests/exposition/bounds_reference.py and the
one-sample-at-a-time renderer of test_render_bulk.py), refresh after refresh: on the demo
cluster's real-format upstreams through the app (token usage pushed so that a family's key
set changes, the series cap engages and lets go, and the limits change as a reload changes
them), and on chained mappings built to be awkward (a key set that changes, comes back or
comes in another order; escaped label values; NaN, ±Inf, -0.0)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aifinops.refresh as refresh_module
from aifinops.exposition import bounds, families
from aifinops.exposition import catalog as c
from aifinops.exposition.render import Columns, Exposition, Family, iter_render, render
from aifinops.refresh import Refresher
from aifinops.web.app import REFRESHER
from tests.exposition import bounds_reference, families_reference
from tests.exposition.test_render_bulk import reference_render
from tests.web.conftest import Demo, start_demo_app


def pairs(samples: Any) -> list[tuple[tuple[str, ...], str]]:
    """Samples with values by ``repr`` (``0.0`` is not ``-0.0``; NaN equals NaN)."""
    return [(tuple(labels), repr(v)) for labels, v in samples]


# --- through the app, on the demo cluster ----------------------------------------------------


@contextmanager
def oracle_checked() -> Iterator[list[int]]:
    """Every page the refresher renders is compared with the page the oracles render from
    the same report, status and counters; yields the list of compared page sizes."""
    real = Refresher._render
    seen: list[int] = []

    def oracle_page(fams: Any) -> Exposition:
        return Exposition.from_bytes(reference_render(list(fams)))

    # The names the refresher calls, swapped for the oracles while the oracle page renders.
    oracles = {
        "cost_families": families_reference.cost_families,
        "cap_families": bounds_reference.cap_families,
        "render_and_compress": oracle_page,
    }

    def checked(self: Refresher, *args: Any, **kwargs: Any) -> Exposition:
        got = real(self, *args, **kwargs)
        saved = {name: getattr(refresh_module, name) for name in oracles}
        for name, oracle in oracles.items():
            setattr(refresh_module, name, oracle)
        try:
            want = real(self, *args, **{**kwargs, "count_dropped": False})
        finally:
            for name, fn in saved.items():
                setattr(refresh_module, name, fn)
        assert got.plain == want.plain
        seen.append(len(got.plain))
        return got

    Refresher._render = checked  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Refresher._render = real  # type: ignore[method-assign]


def usage(tenants: list[str], models: list[str], scale: int) -> dict[str, Any]:
    return {
        "records": [
            {
                "tenant": t,
                "model": m,
                "input_tokens": scale * (i + 1) + j,
                "output_tokens": scale + j,
            }
            for i, t in enumerate(tenants)
            for j, m in enumerate(models)
        ]
    }


async def test_the_demo_page_equals_the_oracles_page_over_chained_refreshes(
    aiohttp_client: Any,
) -> None:
    demo: Demo = await start_demo_app(
        aiohttp_client,
        config={
            "limits": {"max_series_per_family": 100},
            "tokens": {"push": {"enabled": True, "max_series": 100_000}, "max_models": 100_000},
        },
    )
    refresher = demo.client.app[REFRESHER]
    odd = ['q"uote', "back\\slash", "x}{,=", "é"]  # a newline is refused at the API
    try:
        with oracle_checked() as pages:
            await demo.refresh()
            demo.clock.now += 30
            await demo.refresh()  # the same key sets: everything kept is reused
            # Pushed usage: 4 tenants x 15 models x 2 token types = 120 series, over the cap.
            resp = await demo.client.post(
                "/api/v1/usage",
                json=usage(["team-a", "team-b", *odd[:2]], [f"m{j}" for j in range(15)], 1),
            )
            assert resp.status == 202
            demo.clock.now += 30
            await demo.refresh()
            demo.clock.now += 30
            await demo.refresh()  # the counters grow; the kept set may move at the cut
            resp = await demo.client.post(
                "/api/v1/usage", json=usage(["team-c", *odd[2:]], ["m0", "m99"], 7)
            )
            assert resp.status == 202
            demo.clock.now += 30
            await demo.refresh()  # a key set grows
            # A reload that lifts the cap, then one that brings it back.
            refresher._context = replace(refresher._context, max_series_per_family=None)
            refresher.rerender()
            demo.clock.now += 30
            await demo.refresh()
            refresher._context = replace(refresher._context, max_series_per_family=100)
            demo.clock.now += 30
            await demo.refresh()
            demo.clock.now += 3600  # an hour on: counters and rates move
            await demo.refresh()
        assert len(pages) >= 8
        page = (await (await demo.client.get("/metrics")).read()).decode()
        assert 'tenant="q\\"uote"' in page and "aifinops_series_dropped_total" in page
    finally:
        await demo.upstreams.close()


# --- chained mappings ------------------------------------------------------------------------

awkward_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e-5, math.inf, -math.inf]),
)
awkward_label = st.sampled_from(["a", "b", "__other__", 'q"x', "b\\s", "n\nl", "", "é"])
usage_key = st.tuples(awkward_label, awkward_label, st.sampled_from(["x", "y"]), awkward_label)
# One refresh's mapping: keys from a small alphabet, so that consecutive refreshes often have
# the same key set (in the same or another order) and sometimes another.
mapping = st.dictionaries(usage_key, awkward_value, max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(mapping, st.booleans(), st.booleans()), min_size=1, max_size=6))
def test_columns_are_the_sorted_items_refresh_after_refresh(
    chain: list[tuple[dict[tuple[str, ...], float], bool, bool]],
) -> None:
    previous: dict[tuple[str, ...], float] = {}
    for mapping_now, again, reverse in chain:
        if again:  # the previous key set, new values, maybe in another order
            keys = sorted(previous, reverse=reverse)
            mapping_now = {k: mapping_now.get(k, -0.0) for k in keys}
        got = families._columns("test:tokens", mapping_now)
        assert pairs(got) == pairs(sorted(mapping_now.items(), key=lambda kv: kv[0]))
        family = Family(c.TOKENS, got)
        reference = Family(c.TOKENS, sorted(mapping_now.items(), key=lambda kv: kv[0]))
        assert render([family]) == reference_render([reference])
        for cap in (1, 3, 10, 100):
            same_cap(family, reference, cap)
        previous = mapping_now


def same_cap(family: Family, reference: Family, cap: int) -> None:
    """The new cap of ``family`` is the oracle's of ``reference``: the same samples and
    count, the same page, or the same error (-inf and +inf summed into one fold)."""
    try:
        old = bounds_reference.cap_family(reference, cap)
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            bounds.cap_family(family, cap)
        return
    new = bounds.cap_family(family, cap)
    assert pairs(new[0].samples) == pairs(old[0].samples) and new[1] == old[1]
    assert render([new[0]]) == reference_render([old[0]])


accrued_key = st.tuples(awkward_label, st.sampled_from(["gpu", "cpu", "tokens"]), awkward_label)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(accrued_key, awkward_value, max_size=25), max_size=5))
def test_accrued_split_per_basis_matches_the_split_loop(
    chain: list[dict[tuple[str, str, str], float]],
) -> None:
    for accrued in [*chain, *chain]:  # every key set twice: planned, then reused
        got = families._accrued_columns(accrued)
        want: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        for (tenant, resource, basis), usd in accrued.items():
            want.setdefault(basis, []).append(((tenant, resource), usd))
        assert set(got) == set(want)
        for basis, samples in want.items():
            assert pairs(got[basis]) == pairs(sorted(samples, key=lambda kv: kv[0]))


def test_a_cap_that_engages_and_lets_go_on_a_reused_key_set() -> None:
    keys = [(f"t{i % 40}", f"m{i}", "p", ("input", "output")[i % 2]) for i in range(300)]
    for step in range(6):
        values = {k: float((i * 7919 + step * 104729) % 997) for i, k in enumerate(keys)}
        if step == 3:
            values[keys[5]] = math.nan  # the fast paths hand NaN to the definition
        family = Family(c.TOKENS, families._columns("test:cap", values))
        reference = Family(c.TOKENS, sorted(values.items(), key=lambda kv: kv[0]))
        cap = (100, 10_000, 50, 100, 299, 100)[step]
        same_cap(family, reference, cap)


def test_a_kept_row_named_like_a_fold_absorbs_it() -> None:
    values = {(c.OTHER_TENANT, c.OTHER_TENANT, c.OTHER_TENANT, "input"): 1e9}
    values.update({(f"t{i}", f"m{i}", "p", "input"): float(i) for i in range(50)})
    for _ in range(2):
        family = Family(c.TOKENS, families._columns("test:absorb", values))
        reference = Family(c.TOKENS, sorted(values.items(), key=lambda kv: kv[0]))
        new, old = bounds.cap_family(family, 10), bounds_reference.cap_family(reference, 10)
        assert pairs(new[0].samples) == pairs(old[0].samples) and new[1] == old[1] == 42


def test_columns_read_as_samples() -> None:
    cols = Columns([("a",), ("b",)], [1.0, -0.0])
    assert list(cols) == [(("a",), 1.0), (("b",), -0.0)]
    assert cols[1] == (("b",), -0.0) and list(cols[1:]) == [(("b",), -0.0)]
    assert cols == [(("a",), 1.0), (("b",), 0.0)] and len(cols) == 2
    with pytest.raises(ValueError, match="label sets"):
        Columns([("a",)], [])


def test_kept_label_columns_follow_the_key_set_and_the_chunk_size() -> None:
    first = {(f't"{i}', f"m{i % 3}", "p", "input"): float(i) for i in range(23)}
    second = {**first, ("zz", "m0", "p", "output"): -0.0}
    for values, chunk in ((first, 5), (first, 5), (first, 7), (second, 7), (first, 4)):
        family = Family(c.TOKENS, families._columns("test:render", values))
        reference = Family(c.TOKENS, sorted(values.items(), key=lambda kv: kv[0]))
        got = b"".join(iter_render([family], chunk))
        assert got == reference_render([reference])
        values = {k: v * 2.5 for k, v in values.items()}  # the same keys, new values
        family = Family(c.TOKENS, families._columns("test:render", values))
        reference = Family(c.TOKENS, sorted(values.items(), key=lambda kv: kv[0]))
        assert b"".join(iter_render([family], chunk)) == reference_render([reference])


@pytest.mark.parametrize("resources", [3, 20, 300])
def test_few_many_and_very_many_fold_groups(resources: int) -> None:
    # Three dimension labels: resources x 2 bases x 2 token types fold groups.
    spec = replace(c.TOKENS, labels=("tenant", "resource", "basis", "token_type"))
    values = {
        (f"t{i % 97}", f"r{i % resources}", ("usage", "allocation")[i % 2], f"k{i % 4 // 2}"): (
            float(i % 13) + 0.25
        )
        for i in range(2_000)
    }
    for step in range(2):
        values = {k: v * (step + 1) for k, v in values.items()}
        family = Family(spec, families._columns(f"test:groups{resources}", values))
        reference = Family(spec, sorted(values.items(), key=lambda kv: kv[0]))
        for cap in (len(values) - 100, len(values) // 2):
            same_cap(family, reference, cap)
