"""Property: with token charge-back, every dollar still lands in exactly one bucket.

On generated clusters (GPU pods, some of them vLLM servers, DCGM samples for the usage basis)
and generated token traffic, for each basis and resource the tenants sum to the cluster total
the core computed without tokens; resource ``tokens`` sums to its own cluster total; no tenant
ends below zero; and the money moved equals the serving pods' rates times the claimed share.
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops.exposition.catalog import RESOURCES
from aifinops.model.inputs import AllocationSet, Inputs, TokenInputs
from aifinops.model.report import ModelState, build_report
from aifinops.model.tokens import TokenContext
from tests.model.builders import H100, L4, context, gpu, idle_row, pod
from tests.model.token_builders import LLAMA, obs

money = st.floats(min_value=0, max_value=100, allow_nan=False)
rate = st.integers(min_value=0, max_value=500)
namespaces = st.sampled_from(["team-a", "team-b", "ml-research", "llm-serving", "default"])
token_tenants = st.sampled_from(["a", "b", "research", "newcomer", "__unallocated__"])


@st.composite
def scenarios(draw):
    allocs, gpus, serving = [], [], []
    for i in range(draw(st.integers(1, 8))):
        ns = draw(namespaces)
        labels = draw(st.sampled_from([{}, {"aifinops_io_tenant": "platform"}]))
        allocs.append(
            pod(
                ns,
                f"p{i}",
                labels,
                gpu_cost=draw(money),
                cpu_cost=draw(money),
                ram_cost=draw(money),
                pv_cost=draw(money),
            )
        )
        if draw(st.booleans()):
            gpus.append(
                gpu(f"G{i}", draw(st.sampled_from([H100, L4])), draw(st.floats(0, 1)), ns, f"p{i}")
            )
        if draw(st.booleans()):
            serving.append((ns, f"p{i}"))
    if draw(st.booleans()):
        allocs.append(idle_row(gpu_cost=draw(money), cpu_cost=draw(money)))
    served = {k: draw(rate) for k in ("input", "output", "cached_input")}
    used = {
        (draw(token_tenants), k): draw(rate)
        for _ in range(draw(st.integers(0, 4)))
        for k in ("input", "output", "cached_input")
    }
    api = {draw(token_tenants): draw(rate) for _ in range(draw(st.integers(0, 3)))}
    weights = {k: draw(st.floats(0, 5)) for k in ("input", "cached_input", "output")}
    if weights["input"] + weights["output"] == 0:
        weights["output"] = 1.0
    max_tenants = draw(st.sampled_from([None, 2, 50]))
    return allocs, gpus, serving, served, used, api, weights, max_tenants


def traffic(serving, served, used, api, t: float):
    out = []
    for ns, p in serving:
        for k, r in served.items():
            out.append(
                obs(
                    "tokens:vllm",
                    f"{ns}/{p}/{k}",
                    k,
                    LLAMA,
                    r * t / len(serving),
                    role="serving",
                    provider="vllm",
                    namespace=ns,
                    pod=p,
                )
            )
    for (tenant, k), r in used.items():
        out.append(
            obs("tokens:l", f"{tenant}/{k}", k, f"hosted_vllm/{LLAMA}", r * t, tenant=tenant)
        )
    for tenant, r in api.items():
        out.append(obs("tokens:l", f"{tenant}/api", "output", "gpt-4o", r * t, tenant=tenant))
    return out


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_charge_back_conserves_every_resource_on_every_basis(scenario, catalog):
    allocs, gpus, serving, served, used, api, weights, max_tenants = scenario
    ctx = context(max_tenants=max_tenants)
    core, _ = build_report(
        Inputs(tuple(gpus), AllocationSet(1.0, tuple(allocs))), ctx, ModelState(), 0.0
    )
    tctx = replace(
        ctx, tokens=TokenContext(api_equivalents={}, weights=weights, rate_window_seconds=60)
    )
    state = ModelState()
    for i in range(4):
        now = 1000.0 + 30 * i
        o = tuple(traffic(serving, served, used, api, now))
        inputs = Inputs(
            tuple(gpus),
            AllocationSet(1.0, tuple(allocs)),
            TokenInputs(o, frozenset(x.source for x in o), catalog),
        )
        report, state = build_report(inputs, tctx, state, now)
    for basis, rates in report.cost.rates.items():
        before = core.cost.rates[basis]
        for resource in RESOURCES:
            a = math.fsum(v for (_, r), v in rates.items() if r == resource)
            b = math.fsum(v for (_, r), v in before.items() if r == resource)
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (basis, resource)
            if resource in report.cost.cluster:
                assert math.isclose(a, report.cost.cluster[resource], rel_tol=1e-9, abs_tol=1e-9)
        tokens = math.fsum(v for (_, r), v in rates.items() if r == "tokens")
        assert math.isclose(
            tokens, report.cost.cluster.get("tokens", 0.0), rel_tol=1e-9, abs_tol=1e-12
        )
        assert all(v >= -1e-9 for v in rates.values()), basis
    assert report.tokens is not None
    serving_model = report.tokens.self_hosted.get(LLAMA)
    if serving_model is not None and serving_model.weighted_token_rate > 0:
        claimed = (
            min(
                1.0,
                math.fsum(weights[k] * r for (_, k), r in used.items())
                / (serving_model.weighted_token_rate / 3600),
            )
            if used
            else 0.0
        )
        for basis, moved in serving_model.charged_back.items():
            assert moved <= serving_model.cost_rate[basis] * (1 + 1e-9) + 1e-12
            assert math.isclose(
                moved, serving_model.cost_rate[basis] * claimed, rel_tol=1e-6, abs_tol=1e-9
            )
