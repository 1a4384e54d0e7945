"""Columnar token reads (:class:`TokenColumns`) count exactly what the same reads as single
observations counted before: the counters' increments, last values and times seen against the
old counting kept verbatim (tests/model/token_count_reference.py), and every token figure and
dollar of the report against the row-by-row path, refresh after refresh, through tables kept,
changed and dropped, resets, dips, NaN/±Inf/negative readings, duplicated series, outages
longer than the retention and a state saved by the old representation."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from aifinops.model.cost import CostBreakdown
from aifinops.model.inputs import (
    TokenColumns,
    TokenInputs,
    TokenItem,
    TokenObservation,
    TokenSeries,
    TokenTable,
    token_observations,
)
from aifinops.model.llm_prices import LlmPrice, LlmPriceCatalog, build_catalog
from aifinops.model.tenancy import TenantResolver
from aifinops.model.tokens import (
    CounterMap,
    SelfHostedSpec,
    TokenContext,
    TokenState,
    account_tokens,
    counter_increments,
)
from aifinops.statefile import _tokens_json
from tests.model import token_count_reference as reference

T0 = 1_750_000_000.0
RETENTION = 600.0
MODELS = [
    "gpt-4o",
    "openai/gpt-4o-mini",
    "claude-3-5-sonnet-20240620",
    "unknown-model-x",
    "llama-local",
]
TENANTS = ["team-a", "team-b", None]


def universe(
    rng: random.Random, n: int, models: Sequence[str] | None = None, provider: str | None = None
) -> list[TokenSeries]:
    """Series of one scraped source over two targets (origins), some pushed-style from zero."""
    out = []
    for i in range(n):
        model = rng.choice(models or MODELS)
        out.append(
            TokenSeries(
                source="tokens:l",
                series=f"s{i:04d}",
                # a model server's series: its model is discovered as self-hosted
                role="both" if model == "llama-local" else "usage",
                token_type=rng.choice(["input", "output", "cached_input"]),
                model=model,
                provider=provider or rng.choice([None, "openai", "anthropic"]),
                tenant=rng.choice(TENANTS),
                namespace=rng.choice([None, "ns-a"]),
                pod=rng.choice([None, "pod-0"]),
                kind="spend_usd" if rng.random() < 0.15 else "tokens",
                from_zero=rng.random() < 0.05,
                origin=rng.choice(["tokens:l#t1", "tokens:l#t2", None]),
            )
        )
    return out


def next_value(rng: random.Random, v: float) -> float:
    r = rng.random()
    if r < 0.05:
        return rng.choice([math.nan, math.inf, -math.inf, -3.0, -0.0])
    if r < 0.1:
        return float(rng.randint(0, 50))  # a reset
    if r < 0.15:
        return v * rng.choice([0.95, 0.999, 0.5])  # a dip (jitter) or a reset
    if r < 0.2:
        return v  # idle
    step = rng.randint(1, 5000) if rng.random() < 0.7 else rng.random() * 10
    return (v if math.isfinite(v) and v >= 0 else 0.0) + step


def as_obs(o: Any) -> tuple[Any, ...]:
    return (o.source, o.series, o.kind, o.token_type, o.model, o.tenant, o.origin, o.from_zero)


class Oracle:
    """The old counting, chained over the reads as single observations."""

    def __init__(self) -> None:
        self.last: dict[Any, float] = {}
        self.seen: dict[Any, float] = {}
        self.source_seen: dict[str, float] = {}

    def step(
        self, obs: Sequence[TokenObservation], now: float, origins: frozenset[str], dip: float
    ) -> list[tuple[Any, ...]]:
        counted, deltas, self.last, self.seen, self.source_seen = reference.count(
            obs, self.last, self.seen, self.source_seen, now, RETENTION, origins, dip
        )
        return [(*as_obs(o), d) for o, d in zip(counted, deltas, strict=True)]


@pytest.mark.parametrize("seed", range(16))
def test_columnar_counting_equals_the_old_counting(seed: int) -> None:
    rng = random.Random(seed)
    series = universe(rng, rng.randint(1, 60))
    values = {s.series: float(rng.randint(0, 10**6)) for s in series}
    pushed = [
        TokenObservation("push", f"p{i}", "usage", "input", "gpt-4o", 0.0, tenant="team-a")
        for i in range(3)
    ]
    state = TokenState()
    oracle = Oracle()
    table: TokenTable | None = None
    now = T0
    dip = rng.choice([0.0, 0.1])
    vectorized = 0
    for _ in range(40):
        r = rng.random()
        if table is None or r < 0.2:  # the page's series change
            rows = [s for s in series if rng.random() < 0.8]
            if rng.random() < 0.1 and rows:
                rows.insert(rng.randrange(len(rows)), rng.choice(rows))  # a duplicated series
            if rng.random() < 0.3:
                rng.shuffle(rows)
            table = TokenTable(rows)
        for s in table.rows:
            values[s.series] = next_value(rng, values[s.series])
        items: list[TokenItem] = []
        origins: set[str] = set()
        if rng.random() < 0.85:  # else the source is away this refresh (down, stale)
            cols = TokenColumns(table, np.array([values[s.series] for s in table.rows]))
            items.append(cols)
            if rng.random() < 0.7:  # else only the rows' readings name their origins
                origins.update(s.origin or s.source for s in table.rows)
        if rng.random() < 0.5:  # pushed observations before or after the columns
            p = tuple(
                TokenObservation(
                    o.source, o.series, o.role, o.token_type, o.model, now - T0, tenant=o.tenant
                )
                for o in pushed
            )
            items[rng.randrange(len(items) + 1) : 0] = p
            origins.add("push")
        if rng.random() < 0.1:
            items.append(items[0]) if items else None  # the same item twice
        u = counter_increments(items, state, now, RETENTION, frozenset(origins), dip)
        want = oracle.step(token_observations(items), now, frozenset(origins), dip)
        assert [(*as_obs(o), d) for o, d in u.increments] == want
        assert dict(u.last.items()) == oracle.last
        assert dict(u.seen_at.items()) == oracle.seen
        assert dict(u.last) == oracle.last and len(u.last) == len(oracle.last)
        assert u.source_seen_at == oracle.source_seen
        for key, v in list(oracle.last.items())[:5]:
            assert u.last[key] == v and u.seen_at[key] == oracle.seen[key]
        if isinstance(state.last, CounterMap) and state.last._counters.blocks:
            vectorized += 1
        state = TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)
        # 30 s apart, sometimes a gap longer than the retention (every series forgotten)
        now += 30.0 if rng.random() < 0.95 else RETENTION + 60.0
    assert vectorized > 0


def test_a_state_saved_as_dicts_continues_exactly() -> None:
    """A state restored from a file (plain dicts, as the old representation wrote them)
    counts the next columnar read like the old code; the state the columns leave reads back
    as the same dicts (what the state file writes)."""
    rng = random.Random(7)
    series = universe(rng, 30)
    table = TokenTable(series)
    values = np.array([float(rng.randint(0, 1000)) for _ in series])
    old_last: dict[tuple[str, str, str, str], float] = {
        (s.source, s.series, s.kind, s.token_type): float(i) for i, s in enumerate(series)
    }
    old_seen = dict.fromkeys(old_last, T0 - 30)
    sources = {"tokens:l": T0 - 30, "tokens:l#t1": T0 - 30, "tokens:l#t2": T0 - 30}
    state = TokenState(last=old_last, seen_at=old_seen, source_seen_at=sources)
    oracle = Oracle()
    oracle.last, oracle.seen, oracle.source_seen = dict(old_last), dict(old_seen), dict(sources)
    for step in range(4):
        now = T0 + 30 * step
        cols = TokenColumns(table, values)
        u = counter_increments((cols,), state, now, RETENTION, (), 0.1)
        want = oracle.step(cols.observations(), now, frozenset(), 0.1)
        assert [(*as_obs(o), d) for o, d in u.increments] == want
        assert dict(u.last.items()) == oracle.last and dict(u.seen_at.items()) == oracle.seen
        # what the state file writes: the same counters, values and times seen
        written = _tokens_json(
            TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)
        )
        old_form = _tokens_json(
            TokenState(last=oracle.last, seen_at=oracle.seen, source_seen_at=u.source_seen_at)
        )
        assert sorted(written["counters"]) == sorted(old_form["counters"])
        # the state file's form of the state, read back, continues the same way
        state = TokenState(
            last=dict(u.last.items()) if step == 2 else u.last,
            seen_at=dict(u.seen_at.items()) if step == 2 else u.seen_at,
            source_seen_at=u.source_seen_at,
        )
        values = values + np.array([float(rng.randint(0, 100)) for _ in series])


# --- the whole token report ------------------------------------------------------------------


def _report_figures(report: Any, state: TokenState) -> tuple[Any, ...]:
    return (
        list(report.tokens.items()),
        list(report.cost.items()),
        list(report.unpriced.items()),
        report.prices,
        list(report.api_cost.items()),
        report.api_cost_rate,
        report.self_hosted,
        state.tokens,
        state.served,
        state.self_hosted_usage,
        state.discovered,
        state.models,
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_models", [200, 2])
def test_the_report_equals_the_row_by_row_report(
    seed: int, max_models: int, catalog: LlmPriceCatalog
) -> None:
    """Token counts, dollars (to the bit), unpriced tokens, spend-priced models, discovered
    self-hosted models and the model-label cap (first come, first labelled) are the same
    when a read comes as columns as when it comes as observations."""
    _report_equality(seed, max_models, catalog, MODELS)


def test_a_pair_priced_two_ways_takes_each_key_s_last_name_price() -> None:
    """Two names of one (label, provider) pair with different prices (``gpt-x`` and
    ``openai/gpt-x``): each key is priced as its last increment's name, as row by row."""
    entries = {
        "gpt-x": LlmPrice("gpt-x", "openai", 1e-6, 2e-6),
        "openai/gpt-x": LlmPrice("openai/gpt-x", "openai", 3e-6, 5e-6),
    }
    catalog = build_catalog(entries, "test")
    for seed in range(8):
        _report_equality(seed, 200, catalog, ["gpt-x", "openai/gpt-x", "llama-local"], "openai")


def _report_equality(
    seed: int,
    max_models: int,
    catalog: LlmPriceCatalog,
    models: list[str],
    provider: str | None = None,
) -> None:
    rng = random.Random(seed)
    series = universe(rng, 80, models, provider)
    values = {s.series: float(rng.randint(0, 10**5)) for s in series}
    ctx = TokenContext(max_models=max_models, retention_seconds=RETENTION, dip_tolerance=0.1)
    cost = CostBreakdown(rates={"allocation": {}}, cluster={}, shares=(), gpu_prices={})
    resolver = TenantResolver((), (), {"ns-a": "team-ns"}, ())
    a = b = TokenState()
    table = TokenTable(series)
    for step in range(10):
        if rng.random() < 0.2:
            table = TokenTable([s for s in series if rng.random() < 0.9])
        for s in table.rows:
            values[s.series] = next_value(rng, values[s.series])
        cols = TokenColumns(table, np.array([values[s.series] for s in table.rows]))
        pushed = TokenObservation(
            "push", "p", "usage", "output", "gpt-4o", 10.0 * step, tenant="t", from_zero=True
        )
        items = (pushed, cols) if step % 2 else (cols, pushed)
        origins = frozenset({"push", *table.origins})
        now = T0 + 30 * step
        ra, a, _ = account_tokens(
            TokenInputs(items, origins, catalog), ctx, a, now, cost, None, resolver
        )
        rb, b, _ = account_tokens(
            TokenInputs(token_observations(items), origins, catalog),
            ctx,
            b,
            now,
            cost,
            None,
            resolver,
        )
        assert _report_figures(ra, a) == _report_figures(rb, b)
        assert dict(a.last.items()) == dict(b.last.items())
    assert any(v > 0 for v in a.cost.values())
    if len(catalog.entries) == 2:  # the two names' keys: some priced each way
        assert len({round(v / max(a.tokens[k], 1.0), 12) for k, v in a.cost.items()}) > 1


def test_awkward_readings_of_a_steady_table() -> None:
    """Each rule at its edge, counted as arrays (the table is the one counted last time):
    a dip exactly at the tolerance is jitter, just below it a reset; NaN, ±Inf, negative and
    a missing reading keep the last value; -0.0 is a reading; a pushed counter counts its
    first value, a scraped one from an origin read before too, one from a new origin not."""
    rows = [
        TokenSeries("tokens:l", f"s{i}", "usage", "input", "gpt-4o", tenant="t", origin=o)
        for i, o in enumerate(["tokens:l#a"] * 6 + ["tokens:l#b"])
    ]
    rows.append(TokenSeries("tokens:l", "z", "usage", "input", "gpt-4o", from_zero=True))
    table = TokenTable(rows)
    nan, inf = math.nan, math.inf
    reads = [
        [1000.0, 1000.0, 5.0, nan, 1000.0, 7.0, nan, nan],
        [900.0, 899.0, nan, 4.0, -1.0, -0.0, nan, nan],
        [950.0, 10.0, inf, 6.0, 1001.0, 3.0, 8.0, 11.0],
        [950.0, 10.0, -inf, 2.0, 1001.0, 3.0, 9.0, 12.0],
    ]
    want = [
        {},  # baselines (the origin's first read)
        # s0: a dip of exactly 10 %: jitter; s1: below it, a reset; s3: new to a known origin
        {"s1": 899.0, "s3": 4.0},
        # s0: still under the highest value; s5: after -0.0; s6: new origin, a baseline
        {"s1": 10.0, "s3": 2.0, "s4": 1.0, "s5": 3.0, "z": 11.0},
        {"s3": 2.0, "s6": 1.0, "z": 1.0},
    ]
    state = TokenState()
    oracle = Oracle()
    origins = frozenset({"tokens:l#a"})
    for step, (values, expected) in enumerate(zip(reads, want, strict=True)):
        if step == 2:
            origins = frozenset({"tokens:l#a", "tokens:l#b"})
        cols = TokenColumns(table, np.array(values))
        now = T0 + 30 * step
        u = counter_increments((cols,), state, now, RETENTION, origins, 0.1)
        got = {o.series: d for o, d in u.increments}
        assert got == expected, step
        assert [(*as_obs(o), d) for o, d in u.increments] == oracle.step(
            cols.observations(), now, origins, 0.1
        )
        assert dict(u.last.items()) == oracle.last
        state = TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)


# --- routes kept with a steady table ---------------------------------------------------------


def _whole(rng: random.Random, v: float) -> float:
    """A reading whose increments are whole numbers (token counters), edge cases kept."""
    nv = next_value(rng, v)
    return float(math.floor(nv)) if math.isfinite(nv) and nv >= 0 else nv


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("whole", [True, False])
def test_kept_routes_give_the_row_by_row_report(
    seed: int, whole: bool, catalog: LlmPriceCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steady table's increments routed and booked from the routes kept with it give the
    row-by-row report to the bit, refresh after refresh, while what the routes were worked
    out from changes under them: a price list reloaded, a configuration reload (a model made
    self-hosted), pods moving to another tenant, a namespace mapped to another tenant, the
    model-label cap filling up, the source away, the page's series changing, pushed
    counters some refreshes, names of one label priced differently, fractional increments."""
    from aifinops.model import tokens as module

    used = [0]
    cached = module._route_cached

    def spy(*args: Any) -> Any:
        used[0] += 1
        return cached(*args)

    monkeypatch.setattr(module, "_route_cached", spy)
    rng = random.Random(seed)
    names = [*MODELS, "openai/gpt-4o", "gpt-x", "openai/gpt-x", "late-model"]
    series = universe(rng, 90, names)
    late = {s.series for s in series if s.model == "late-model"}  # first tokens at step 12
    reloaded = build_catalog(
        {
            **catalog.entries,
            "gpt-x": LlmPrice("gpt-x", "openai", 1e-6, 2e-6),
            "openai/gpt-x": LlmPrice("openai/gpt-x", "openai", 3e-6, 5e-6),
        },
        "reloaded",
    )
    catalogs = [catalog, reloaded]
    cap = rng.choice([4, 200])
    contexts = [
        TokenContext(max_models=cap, retention_seconds=RETENTION, dip_tolerance=0.1),
        TokenContext(
            models=(SelfHostedSpec("gpt-4o-mini", "vllm"),),
            max_models=cap,
            retention_seconds=RETENTION,
            dip_tolerance=0.1,
        ),
    ]
    pods = [{("ns-a", "pod-0"): "team-pod"}, {("ns-a", "pod-0"): "team-moved"}, {}]
    resolvers = [
        TenantResolver((), (), {"ns-a": "team-ns"}, ()),
        TenantResolver((), (), {"ns-a": "team-other"}, ()),
    ]
    step_value = _whole if whole else next_value
    values = {s.series: float(rng.randint(0, 10**5)) for s in series}
    a = b = TokenState()
    table = TokenTable(series)
    cat, ctx, pod, resolver = catalog, contexts[0], pods[0], resolvers[0]
    for step in range(30):
        r = rng.random()
        if r < 0.06:
            table = TokenTable([s for s in series if rng.random() < 0.9])
        elif r < 0.12:
            cat = rng.choice(catalogs)
        elif r < 0.18:
            ctx = rng.choice(contexts)
        elif r < 0.24:
            pod = rng.choice(pods)
        elif r < 0.3:
            resolver = rng.choice(resolvers)
        for s in table.rows:
            if s.series not in late or step >= 12:
                values[s.series] = step_value(rng, values[s.series])
        items: list[TokenItem] = []
        if rng.random() < 0.9:  # else the source is away
            items.append(TokenColumns(table, np.array([values[s.series] for s in table.rows])))
        if rng.random() < 0.2:
            items.append(
                TokenObservation(
                    "push",
                    "p",
                    "usage",
                    "output",
                    "gpt-4o",
                    10.0 * step,
                    tenant="t",
                    from_zero=True,
                )
            )
        origins = frozenset({"push", *table.origins})
        now = T0 + 30 * step
        cost = CostBreakdown(
            rates={"allocation": {}}, cluster={}, shares=(), gpu_prices={}, pod_tenants=dict(pod)
        )
        ra, a, rates_a = account_tokens(
            TokenInputs(tuple(items), origins, cat), ctx, a, now, cost, None, resolver
        )
        rb, b, rates_b = account_tokens(
            TokenInputs(token_observations(items), origins, cat), ctx, b, now, cost, None, resolver
        )
        assert _report_figures(ra, a) == _report_figures(rb, b), step
        assert rates_a == rates_b
        assert dict(a.last.items()) == dict(b.last.items())
    assert used[0] >= 5  # the kept routes did the work in most refreshes
    assert any(v > 0 for v in a.cost.values())
