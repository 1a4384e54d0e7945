"""Token accounting: counter resets, prices, unpriced models, measured self-hosted cost and
charge-back, with exact expectations from literal scenarios and the real price subset."""

from __future__ import annotations

import itertools
import math

import pytest

from aifinops.model.llm_prices import PER_MILLION
from aifinops.model.tokens import SelfHostedSpec, TokenState, counter_increments
from tests.model.token_builders import LLAMA, WEIGHTS, Runner, obs, serving_cluster, token_context
from tests.upstream_data import price_subset

T0 = 1_700_000_000.0
PRICES = price_subset()


def price(key: str, token_type: str) -> float:
    e = PRICES[key]
    if token_type == "input":
        return e["input_cost_per_token"]
    if token_type == "output":
        return e["output_cost_per_token"]
    return e.get("cache_read_input_token_cost") or e["input_cost_per_token"]


# --- counters --------------------------------------------------------------------------------
def test_counter_reset_is_never_negative_or_doubled(catalog):
    r = Runner(token_context(), catalog)
    values = [1000.0, 1500.0, 1700.0, 200.0, 650.0, 650.0, 50.0]  # restarts after 1700, 650
    totals = []
    for i, v in enumerate(values):
        rep = r.step(T0 + 30 * i, [obs("tokens:vllm", "s1", "output", "gpt-4o", v, tenant="a")])
        totals.append(rep.tokens.tokens.get(("a", "gpt-4o", "openai", "output"), 0.0))
    # first reading is a baseline; increases add; a drop adds the whole new value
    assert totals == [0.0, 500.0, 700.0, 900.0, 1350.0, 1350.0, 1400.0]
    assert all(b >= a for a, b in itertools.pairwise(totals))


def test_new_series_after_start_counts_from_zero_and_push_always_does(catalog):
    r = Runner(token_context(), catalog)
    r.step(T0, [obs("tokens:l", "s1", "input", "gpt-4o", 100, tenant="a")])
    rep = r.step(
        T0 + 30,
        [
            obs("tokens:l", "s1", "input", "gpt-4o", 100, tenant="a"),
            obs("tokens:l", "s2", "input", "gpt-4o", 40, tenant="b"),  # new team, same source
            obs("tokens:push", "p1", "input", "gpt-4o", 7, tenant="c", from_zero=True),
            obs("tokens:new", "n1", "input", "gpt-4o", 999, tenant="d"),  # new source: baseline
        ],
    )
    t = rep.tokens.tokens
    assert t.get(("a", "gpt-4o", "openai", "input"), 0) == 0
    assert t[("b", "gpt-4o", "openai", "input")] == 40
    assert t[("c", "gpt-4o", "openai", "input")] == 7
    assert t.get(("d", "gpt-4o", "openai", "input"), 0) == 0


def test_source_outage_longer_than_retention_rebaselines_instead_of_doubling():
    state = TokenState()
    o = obs("tokens:l", "s1", "input", "m", 100)
    u = counter_increments([o], state, T0, 600)
    state = TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)
    u = counter_increments([obs("tokens:l", "s1", "input", "m", 150)], state, T0 + 60, 600)
    assert [d for _, d in u.increments] == [50]
    state = TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)
    # back after 2 h: forgotten series, forgotten source → a baseline, not 5000 new tokens
    u = counter_increments([obs("tokens:l", "s1", "input", "m", 5000)], state, T0 + 7260, 600)
    assert u.increments == ()
    # a short outage keeps the last value: only the growth counts
    state = TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)
    u = counter_increments([obs("tokens:l", "s1", "input", "m", 5100)], state, T0 + 7500, 600)
    assert [d for _, d in u.increments] == [100]


def test_nan_and_negative_readings_are_ignored():
    u = counter_increments(
        [obs("s", "a", "input", "m", math.nan), obs("s", "b", "input", "m", -5)],
        TokenState(source_seen_at={"s": T0}),
        T0 + 1,
        600,
    )
    assert u.increments == () and u.last == {}


# --- API prices ------------------------------------------------------------------------------
def litellm_step(now: float, elapsed: float) -> list:
    """search: gpt-4o 40 in/10 out/20 cached per s; ads: claude via bedrock route."""
    return [
        obs("tokens:l", "a-in", "input", "gpt-4o", 40 * elapsed, tenant="search"),
        obs("tokens:l", "a-out", "output", "gpt-4o", 10 * elapsed, tenant="search"),
        obs("tokens:l", "a-c", "cached_input", "gpt-4o", 20 * elapsed, tenant="search"),
        obs(
            "tokens:l",
            "b-in",
            "input",
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            30 * elapsed,
            tenant="ads",
            provider="aws.bedrock",
        ),
        obs(
            "tokens:l",
            "b-out",
            "output",
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            6 * elapsed,
            tenant="ads",
            provider="aws.bedrock",
        ),
    ]


def test_per_tenant_token_dollars_are_exact_and_the_rate_is_their_slope(catalog):
    r = Runner(token_context(rate_window_seconds=120), catalog)
    reports = [r.step(T0 + 60 * i, litellm_step(T0 + 60 * i, 60 * i + 1000)) for i in range(5)]
    rep = reports[-1]
    secs = 240  # tokens since the baseline at the first refresh
    expected = {
        ("search", "gpt-4o", "openai", "input"): 40 * secs * price("gpt-4o", "input"),
        ("search", "gpt-4o", "openai", "output"): 10 * secs * price("gpt-4o", "output"),
        ("search", "gpt-4o", "openai", "cached_input"): 20 * secs * price("gpt-4o", "cached_input"),
    }
    claude = "anthropic.claude-3-5-haiku-20241022-v1:0"
    label = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    expected[("ads", label, "bedrock", "input")] = 30 * secs * price(claude, "input")
    expected[("ads", label, "bedrock", "output")] = 6 * secs * price(claude, "output")
    assert rep.tokens.cost.keys() == expected.keys()
    for key, usd in expected.items():
        assert rep.tokens.cost[key] == pytest.approx(usd, rel=1e-12), key
    assert rep.tokens.tokens[("search", "gpt-4o", "openai", "cached_input")] == 20 * secs
    # resource "tokens": USD/h = slope of cumulative cost over the 120 s window, on every basis
    per_s = {
        "search": 40 * price("gpt-4o", "input")
        + 10 * price("gpt-4o", "output")
        + 20 * price("gpt-4o", "cached_input"),
        "ads": 30 * price(claude, "input") + 6 * price(claude, "output"),
    }
    for tenant, usd_per_s in per_s.items():
        assert rep.tenant_rates("allocation")[(tenant, "tokens")] == pytest.approx(
            usd_per_s * 3600, rel=1e-9
        )
        assert rep.accrued[(tenant, "tokens", "allocation")] == pytest.approx(
            usd_per_s * secs, rel=1e-12
        )
    assert rep.cost.cluster["tokens"] == pytest.approx(sum(per_s.values()) * 3600, rel=1e-9)
    assert ("search", "tokens") not in reports[0].tenant_rates("allocation")  # no dollars yet
    p = rep.tokens.prices
    assert p[("gpt-4o", "openai", "output", "price_list")] == pytest.approx(10.0, rel=1e-12)
    assert p[(label, "bedrock", "input", "price_list")] == pytest.approx(0.8, rel=1e-12)
    assert rep.tokens.catalog_version == "test"
    assert rep.tokens.unpriced == {}


def test_unpriced_models_are_reported_never_costed_at_zero(catalog):
    r = Runner(token_context(), catalog)
    r.step(T0, [obs("tokens:l", "x", "input", "acme-llm-pro", 10, tenant="research")])
    rep = r.step(
        T0 + 30,
        [
            obs("tokens:l", "x", "input", "acme-llm-pro", 110, tenant="research"),
            obs("tokens:l", "y", "output", "acme-llm-pro", 5, tenant="research"),
        ],
    )
    assert rep.tokens.unpriced == {("acme-llm-pro", "unknown"): 105}
    assert rep.tokens.tokens[("research", "acme-llm-pro", "unknown", "input")] == 100
    assert not any(k[1] == "acme-llm-pro" for k in rep.tokens.cost)
    assert not any(k[1] == "acme-llm-pro" for k in rep.tokens.prices)
    assert ("research", "tokens") not in rep.tenant_rates("allocation")


def test_without_any_price_list_every_api_token_is_unpriced():
    r = Runner(token_context(), None)
    r.step(T0, [obs("tokens:l", "x", "input", "gpt-4o", 0, tenant="a")])
    rep = r.step(T0 + 30, [obs("tokens:l", "x", "input", "gpt-4o", 50, tenant="a")])
    assert rep.tokens.unpriced == {("gpt-4o", "unknown"): 50}
    assert rep.tokens.catalog_version is None


def test_litellm_spend_prices_a_model_the_list_lacks(catalog):
    r = Runner(token_context(), catalog)

    def step(now: float, n: float, usd: float) -> list:
        return [
            obs("tokens:l", "i", "input", "acme-llm-pro", 3 * n, tenant="r"),
            obs("tokens:l", "o", "output", "acme-llm-pro", n, tenant="r"),
            obs("tokens:l", "s", "input", "acme-llm-pro", usd, tenant="r", kind="spend_usd"),
        ]

    r.step(T0, step(T0, 100, 1.0))
    rep = r.step(T0 + 30, step(T0 + 30, 200, 1.5))
    assert rep.tokens.unpriced == {}
    assert rep.tokens.cost[("r", "acme-llm-pro", "unknown", "input")] == pytest.approx(0.375)
    assert rep.tokens.cost[("r", "acme-llm-pro", "unknown", "output")] == pytest.approx(0.125)
    assert rep.tokens.api_cost["r"] == pytest.approx(0.5)


# --- self-hosted -----------------------------------------------------------------------------
SERVED = {"input": 100, "output": 50, "cached_input": 30}  # tokens/s over both pods
USED = {  # tokens/s per tenant; they sum to SERVED
    "search": {"input": 30, "output": 20, "cached_input": 10},
    "chatbot": {"input": 60, "output": 20, "cached_input": 20},
    "speech": {"input": 10, "output": 10, "cached_input": 0},
}


def self_hosted_step(elapsed: float, served_scale: float = 1.0, llm_model: str = "llama-8b"):
    out = []
    for p in ("vllm-0", "vllm-1"):
        for k, rate in SERVED.items():
            out.append(
                obs(
                    "tokens:vllm",
                    f"{p}-{k}",
                    k,
                    LLAMA,
                    rate / 2 * served_scale * elapsed,
                    role="serving",
                    provider="vllm",
                    namespace="llm-serving",
                    pod=p,
                )
            )
    for tenant, rates in USED.items():
        for k, rate in rates.items():
            out.append(
                obs("tokens:l", f"{tenant}-{k}", k, llm_model, rate * elapsed, tenant=tenant)
            )
    return out


def weighted(rates: dict[str, float]) -> float:
    return sum(WEIGHTS[k] * v for k, v in rates.items())


def run_self_hosted(catalog, served_scale=1.0, llm_model="llama-8b", steps=4, **ctx_kw):
    spec = SelfHostedSpec(
        model=LLAMA, provider="vllm", aliases=("llama-8b",), api_equivalent="gpt-4o-mini"
    )
    r = Runner(token_context(specs=[spec], rate_window_seconds=60, **ctx_kw), catalog)
    allocs = serving_cluster()
    base = r.step(T0 - 1, [], allocs)  # the core alone (no token data yet)
    reports = [
        r.step(T0 + 30 * i, self_hosted_step(30 * i + 500, served_scale, llm_model), allocs)
        for i in range(steps)
    ]
    return base, reports


def test_measured_cost_per_million_tokens_is_serving_cost_over_tokens(catalog):
    _, reports = run_self_hosted(catalog)
    rep = reports[-1]
    serving_usd_h = 2 * (4.0 + 0.5 + 0.25)  # gpu+cpu+ram of both pods (pv is not charged back)
    d = weighted(SERVED) * 3600  # weighted tokens per hour
    for k in ("input", "output", "cached_input"):
        assert rep.tokens.prices[(LLAMA, "vllm", k, "measured")] == pytest.approx(
            serving_usd_h * WEIGHTS[k] / d * PER_MILLION, rel=1e-12
        )
    # The price times the tokens served is the serving cost: nothing more, nothing less.
    billed = sum(
        rep.tokens.prices[(LLAMA, "vllm", k, "measured")] / PER_MILLION * SERVED[k] * 3600
        for k in SERVED
    )
    assert billed == pytest.approx(serving_usd_h, rel=1e-12)
    # output costs 4x input, cached input 0.1x: the documented split
    p_in = rep.tokens.prices[(LLAMA, "vllm", "input", "measured")]
    assert rep.tokens.prices[(LLAMA, "vllm", "output", "measured")] == pytest.approx(4 * p_in)
    serving = rep.tokens.self_hosted[LLAMA]
    assert serving.pods == (("llm-serving", "vllm-0"), ("llm-serving", "vllm-1"))
    assert serving.cost_rate["allocation"] == pytest.approx(serving_usd_h)
    # API equivalent: gpt-4o-mini's list price, labelled with the self-hosted model
    assert rep.tokens.api_equivalent[(LLAMA, "vllm", "output")] == pytest.approx(0.6)
    # tokens of the alias "llama-8b" land on the self-hosted model's labels
    assert rep.tokens.tokens[("search", LLAMA, "vllm", "input")] == 30 * 90
    # self-hosted token dollars at the measured price: the last refresh's 30 s of tokens
    key = ("search", LLAMA, "vllm", "output")
    assert rep.tokens.cost[key] - reports[-2].tokens.cost[key] == pytest.approx(
        20 * 30 * rep.tokens.prices[(LLAMA, "vllm", "output", "measured")] / PER_MILLION,
        rel=1e-9,
    )
    assert rep.tokens.unpriced == {}


def test_charge_back_moves_serving_cost_to_token_senders_and_conserves(catalog):
    base, reports = run_self_hosted(catalog)
    rep = reports[-1]
    total_w = weighted(SERVED)
    for basis in ("allocation",):
        before = base.tenant_rates(basis)
        after = rep.tenant_rates(basis)
        for resource in ("gpu", "cpu", "ram", "storage", "network", "shared"):
            b = math.fsum(v for (_, r), v in before.items() if r == resource)
            a = math.fsum(v for (_, r), v in after.items() if r == resource)
            assert a == pytest.approx(b, rel=1e-12, abs=1e-12), resource
            assert rep.cost.cluster.get(resource, 0.0) == pytest.approx(b, abs=1e-12)
        for resource, per_pod in (("gpu", 4.0), ("cpu", 0.5), ("ram", 0.25)):
            moved = 2 * per_pod
            for tenant, rates in USED.items():
                share = weighted(rates) / total_w
                had = before.get((tenant, resource), 0.0)
                assert after[(tenant, resource)] == pytest.approx(had + moved * share, rel=1e-12)
            # the serving tenant keeps nothing of what it served (all tokens were claimed)
            assert after[("platform", resource)] == pytest.approx(
                before[("platform", resource)] - moved, abs=1e-12
            )
        # storage is not a charge-back resource: it stays with the serving tenant
        assert after[("platform", "storage")] == before[("platform", "storage")]
    assert rep.tokens.self_hosted[LLAMA].charged_back["allocation"] == pytest.approx(9.5)


def test_unclaimed_served_tokens_stay_with_the_serving_tenant(catalog):
    base, reports = run_self_hosted(catalog, served_scale=2.0)  # half the traffic bypassed us
    rep = reports[-1]
    before, after = base.tenant_rates("allocation"), rep.tenant_rates("allocation")
    assert after[("platform", "gpu")] == pytest.approx(before[("platform", "gpu")] - 4.0)
    d = 2 * weighted(SERVED) * 3600
    assert rep.tokens.prices[(LLAMA, "vllm", "input", "measured")] == pytest.approx(
        9.5 / d * PER_MILLION
    )


def test_no_cost_data_means_no_measured_price_and_unpriced_tokens(catalog):
    spec = SelfHostedSpec(model=LLAMA, provider="vllm", aliases=("llama-8b",))
    r = Runner(token_context(specs=[spec]), catalog)
    for i in range(3):
        rep = r.step(T0 + 30 * i, self_hosted_step(30 * i + 500))
    assert not any(k[3] == "measured" for k in rep.tokens.prices)
    assert rep.tokens.unpriced[(LLAMA, "vllm")] == sum(sum(v.values()) for v in USED.values()) * 60


def test_discovered_model_and_routed_names(catalog):
    # No configured model: vLLM's series make it self-hosted; LiteLLM's hosted_vllm route
    # and the bare name both match it.
    r = Runner(token_context(api_equivalents={LLAMA: "gpt-4o-mini"}), catalog)
    allocs = serving_cluster()
    for i in range(3):
        rep = r.step(
            T0 + 30 * i, self_hosted_step(30 * i + 500, llm_model=f"hosted_vllm/{LLAMA}"), allocs
        )
    assert (LLAMA, "vllm", "output", "measured") in rep.tokens.prices
    assert rep.tokens.tokens[("chatbot", LLAMA, "vllm", "output")] == 20 * 60
    assert rep.tokens.api_equivalent[(LLAMA, "vllm", "input")] == pytest.approx(0.15)


def test_configured_selector_finds_serving_pods_without_a_serving_source(catalog):
    from aifinops.settings import TokensSettings

    ctx = TokensSettings.model_validate(
        {
            "self_hosted": {
                "models": [
                    {
                        "model": LLAMA,
                        "aliases": ["llama-8b"],
                        "provider": "vllm",
                        "serving_pods": {"namespaces": ["llm-serving"], "pod_regex": "vllm-.*"},
                    }
                ]
            }
        }
    ).to_model()
    r = Runner(token_context(), catalog)
    r.ctx = __import__("dataclasses").replace(r.ctx, tokens=ctx)
    allocs = serving_cluster()
    usage_only = lambda e: [o for o in self_hosted_step(e) if o.role == "usage"]  # noqa: E731
    for i in range(3):
        rep = r.step(T0 + 30 * i, usage_only(30 * i + 500), allocs)
    assert rep.tokens.self_hosted[LLAMA].pods == (
        ("llm-serving", "vllm-0"),
        ("llm-serving", "vllm-1"),
    )
    d = weighted(SERVED) * 3600
    assert rep.tokens.prices[(LLAMA, "vllm", "input", "measured")] == pytest.approx(
        9.5 / d * PER_MILLION
    )


def test_token_only_tenants_fold_with_their_token_series(catalog):
    from tests.model.builders import context

    r = Runner(token_context(context(max_tenants=2)), catalog)
    names = [f"t{i}" for i in range(5)]
    for i in range(3):
        rep = r.step(
            T0 + 30 * i,
            [
                obs("tokens:l", n, "output", "gpt-4o", (j + 1) * 1000 * i, tenant=n)
                for j, n in enumerate(names)
            ],
            serving_cluster(),
        )
    tenants = {t for (t, _) in rep.tenant_rates("allocation")}
    assert "__other__" in tenants
    assert {k[0] for k in rep.tokens.tokens} <= tenants
    assert sum(rep.tokens.tokens.values()) == sum((j + 1) * 2000 for j in range(5))
    assert rep.cost.folded_tenants >= 3
