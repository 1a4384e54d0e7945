"""Token source presets on real and literal upstream payloads; both fetch modes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.model.inputs import TokenObservation, token_observations
from aifinops.offload import run_cpu
from aifinops.settings import ConfigError, TokenSourceSettings, settings_from_mapping
from aifinops.sources.promtext import parse_text
from aifinops.sources.tokens import (
    PRESETS,
    TokenSource,
    clean_value,
    mapping_for,
    observations_from_samples,
    series_digest,
    token_query,
)
from tests.upstream_data import VLLM_SAMPLE


def observe(preset: str, page: str, **overrides: Any) -> tuple[TokenObservation, ...]:
    settings = TokenSourceSettings(
        name="t",
        preset=preset,
        prometheus_url="http://p",
        **overrides,  # type: ignore[arg-type]
    )
    mapping = mapping_for(settings)
    return observations_from_samples("tokens:t", parse_text(page, mapping.wanted()), mapping)


def by_type(obs: tuple[TokenObservation, ...]) -> dict[tuple[str, str | None], float]:
    out: dict[tuple[str, str | None], float] = {}
    for o in obs:
        key = (o.token_type, o.tenant)
        out[key] = out.get(key, 0.0) + o.value
    return out


def test_vllm_v0_sample_from_aibrix_docs():
    obs = observe("vllm", VLLM_SAMPLE.read_text())
    assert [(o.token_type, o.value) for o in obs] == [("input", 148.0), ("output", 955.0)]
    for o in obs:
        assert o.model == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
        assert o.provider == "vllm" and o.role == "both" and o.kind == "tokens"
        assert o.tenant is None and o.namespace is None and o.pod is None
    assert len({o.series for o in obs}) == 2


VLLM_V1 = """\
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama-8b",namespace="llm",pod="v-0"} 1000.0
vllm:prompt_tokens_total{engine="1",model_name="llama-8b",namespace="llm",pod="v-0"} 500.0
vllm:prompt_tokens_cached_total{engine="0",model_name="llama-8b",namespace="llm",pod="v-0"} 300.0
vllm:generation_tokens_total{engine="0",model_name="llama-8b",namespace="llm",pod="v-0"} 700.0
vllm:generation_tokens_total{engine="1",model_name="llama-8b",namespace="llm",pod="v-0"} 50.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="llama-8b",source="local_compute"} 700
"""


def test_vllm_v1_subtracts_cached_prompt_tokens_per_engine():
    obs = observe("vllm", VLLM_V1)
    got = sorted((o.token_type, o.value, o.namespace, o.pod) for o in obs)
    assert got == [
        ("cached_input", 300.0, "llm", "v-0"),
        ("input", 500.0, "llm", "v-0"),  # engine 1 has no cached series: nothing subtracted
        ("input", 700.0, "llm", "v-0"),  # 1000 prompt - 300 cached
        ("output", 50.0, "llm", "v-0"),
        ("output", 700.0, "llm", "v-0"),
    ]
    assert len({(o.series, o.token_type) for o in obs}) == 5


def line(name: str, value: float, **labels: str) -> str:
    """One exposition line, labels in the order given (as the upstream wrote them)."""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value}\n"


KEY1 = {
    "api_key_alias": "k1",
    "end_user": "None",
    "hashed_api_key": "88dc28",
    "model": "gpt-4o",
    "requested_model": "gpt-4o",
    "team": "t-1",
    "team_alias": "search",
    "user": "u1",
}
KEY2 = {**KEY1, "api_key_alias": "k2", "end_user": "", "hashed_api_key": "99aa01", "user": "u2"}
NO_ALIAS = {
    **KEY1,
    "api_key_alias": "",
    "hashed_api_key": "77",
    "team": "t-2",
    "team_alias": "None",
    "user": "",
    "model": "claude-sonnet-4-5",
}
EMAIL_TEAM = {**KEY1, "hashed_api_key": "66", "team": "bob@corp.example", "team_alias": ""}
LITELLM = "".join(
    [
        "# TYPE litellm_input_tokens_metric_total counter\n",
        line("litellm_input_tokens_metric_total", 1200.0, **KEY1, user_email="alice@example.com"),
        line("litellm_input_tokens_metric_total", 800.0, **KEY2),
        line("litellm_input_tokens_metric_total", 100.0, **NO_ALIAS),
        line("litellm_input_tokens_metric_total", 10.0, **EMAIL_TEAM),
        "# TYPE litellm_input_cached_tokens_metric_total counter\n",
        line(
            "litellm_input_cached_tokens_metric_total",
            200.0,
            **KEY1,
            user_email="alice@example.com",
        ),
        "# TYPE litellm_output_tokens_metric_total counter\n",
        line("litellm_output_tokens_metric_total", 300.0, **KEY1),
        "# TYPE litellm_output_tokens_total counter\n",
        line("litellm_output_tokens_total", 999.0, **KEY1),
        "# TYPE litellm_spend_metric_total counter\n",
        line("litellm_spend_metric_total", 0.0055, **KEY1),
    ]
)


def test_litellm_tenant_from_team_and_no_personal_values():
    obs = observe("litellm", LITELLM)
    tokens = [o for o in obs if o.kind == "tokens"]
    # The tenant is the team id; team_alias ("search") is a display name, never a tenant.
    assert sorted((o.token_type, o.tenant or "-", o.model, o.value) for o in tokens) == [
        ("cached_input", "t-1", "gpt-4o", 200.0),
        ("input", "-", "gpt-4o", 10.0),  # an email-like team is never a tenant
        ("input", "t-1", "gpt-4o", 800.0),
        ("input", "t-1", "gpt-4o", 1000.0),  # 1200 input - 200 cached
        ("input", "t-2", "claude-sonnet-4-5", 100.0),
        # the newer output metric is present, so the older name is not read (no doubling)
        ("output", "t-1", "gpt-4o", 300.0),
    ]
    spend = [o for o in obs if o.kind == "spend_usd"]
    assert [(o.tenant, o.value) for o in spend] == [("t-1", 0.0055)]
    text = repr(obs)
    for secret in ("88dc28", "99aa01", "alice@example.com", "bob@corp.example", "u1", "k1"):
        assert secret not in text
    assert all(o.role == "usage" and o.namespace is None for o in obs)


def test_litellm_older_metric_names():
    page = """\
litellm_input_tokens_total{hashed_api_key="1",model="gpt-4o-mini",team="t",team_alias="ads"} 40
litellm_output_tokens_total{hashed_api_key="1",model="gpt-4o-mini",team="t",team_alias="ads"} 4
"""
    obs = observe("litellm", page)
    assert sorted((o.token_type, o.tenant, o.value) for o in obs) == [
        ("input", "t", 40.0),
        ("output", "t", 4.0),
    ]


CHAT = {"gen_ai_operation_name": "chat"}
SHOP = {"job": "checkout", "k8s_namespace_name": "team-shop"}
GPT = {**CHAT, "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}
OTEL = "".join(
    [
        "# TYPE gen_ai_client_token_usage histogram\n",
        line(
            "gen_ai_client_token_usage_bucket",
            12,
            **GPT,
            gen_ai_token_type="input",
            **SHOP,
            le="+Inf",
        ),
        line("gen_ai_client_token_usage_sum", 5400, **GPT, gen_ai_token_type="input", **SHOP),
        line("gen_ai_client_token_usage_count", 12, **GPT, gen_ai_token_type="input", **SHOP),
        line("gen_ai_client_token_usage_sum", 900, **GPT, gen_ai_token_type="output", **SHOP),
        line(
            "gen_ai_client_token_usage_sum",
            77,
            **CHAT,
            gen_ai_system="aws.bedrock",
            gen_ai_request_model="amazon.nova-pro-v1:0",
            gen_ai_token_type="completion",
            tenant="search",
        ),
        line(
            "gen_ai_client_token_usage_sum",
            5,
            **CHAT,
            gen_ai_system="openai",
            gen_ai_request_model="gpt-4o",
            gen_ai_token_type="total",
        ),
    ]
)


def test_otel_genai_collector_exposition():
    obs = observe("otel_genai", OTEL)
    got = sorted(
        (o.token_type, o.model, o.provider, o.tenant or "-", o.namespace or "-", o.value)
        for o in obs
    )
    assert got == [
        ("input", "gpt-4o", "openai", "-", "team-shop", 5400.0),
        ("output", "amazon.nova-pro-v1:0", "bedrock", "search", "-", 77.0),  # older semconv
        ("output", "gpt-4o", "openai", "-", "team-shop", 900.0),
    ]  # the bucket and count series and the unmapped "total" type are not tokens


def test_tgi_needs_a_configured_model():
    page = """\
tgi_request_input_length_sum{namespace="tgi",pod="tgi-0"} 2048
tgi_request_input_length_count{namespace="tgi",pod="tgi-0"} 4
tgi_request_generated_tokens_sum{namespace="tgi",pod="tgi-0"} 512
"""
    obs = observe("tgi", page, model="mistralai/Mistral-7B-Instruct-v0.3")
    assert sorted((o.token_type, o.value, o.pod, o.provider, o.role) for o in obs) == [
        ("input", 2048.0, "tgi-0", "tgi", "both"),
        ("output", 512.0, "tgi-0", "tgi", "both"),
    ]
    with pytest.raises(ConfigError, match="needs model or model_labels"):
        settings_from_mapping(
            {"tokens": {"sources": [{"name": "t", "preset": "tgi", "prometheus_url": "http://p"}]}}
        )


def test_custom_mapping_from_configuration():
    page = 'myapp_llm_tokens_total{kind="prompt",llm="gpt-4o",org="acme"} 10\n'
    obs = observe(
        "custom",
        page,
        metrics=[
            {
                "metric": "myapp_llm_tokens_total",
                "token_type_label": "kind",
                "token_type_values": {"prompt": "input", "completion": "output"},
            }
        ],
        model_labels=["llm"],
        tenant_labels=["org"],
        provider="openai",
    )
    assert [(o.token_type, o.model, o.tenant, o.provider) for o in obs] == [
        ("input", "gpt-4o", "acme", "openai")
    ]


@pytest.mark.parametrize("label", ["hashed_api_key", "user", "end_user", "user_email"])
def test_personal_labels_cannot_be_tenant_labels(label):
    with pytest.raises(ConfigError, match="cannot be a tenant"):
        settings_from_mapping(
            {
                "tokens": {
                    "sources": [
                        {
                            "name": "l",
                            "preset": "litellm",
                            "prometheus_url": "http://p",
                            "tenant_labels": [label],
                        }
                    ]
                }
            }
        )


def test_non_finite_and_missing_model_are_skipped():
    page = (
        'vllm:generation_tokens_total{model_name="m"} NaN\n'
        'vllm:generation_tokens_total{model_name=""} 5\n'
        'vllm:generation_tokens_total{model_name="m",pod="p"} +Inf\n'
    )
    assert observe("vllm", page) == ()


def test_clean_value_and_digest():
    assert clean_value(" None ") is None
    assert clean_value("x@y.io") is None
    assert clean_value("a" * 300) == "a" * 256
    assert series_digest("m", {"a": "1", "b": "2"}) == series_digest("m", {"b": "2", "a": "1"})
    assert series_digest("m", {"a": "1"}) != series_digest("n", {"a": "1"})


def test_every_preset_reads_only_its_names():
    assert "vllm:prompt_tokens_cached_total" in PRESETS["vllm"].wanted()
    assert "litellm_input_tokens_total" in PRESETS["litellm"].wanted()
    assert token_query({"b", "a"}, '{cluster="prod"}') == '{__name__=~"a|b",cluster="prod"}'
    assert token_query({"a"}, "") == '{__name__=~"a"}'


# --- both fetch modes through the real source ------------------------------------------------
async def serve(routes: dict[str, Any]) -> TestServer:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_prometheus_mode_one_query():
    seen: list[str] = []

    async def query(request: web.Request) -> web.Response:
        seen.append(request.query["query"])
        return web.json_response(
            {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [
                        {
                            "metric": {
                                "__name__": "vllm:generation_tokens_total",
                                "model_name": "llama",
                                "namespace": "llm",
                                "pod": "v-1",
                                "job": "vllm",
                            },
                            "value": [1.7e9, "42"],
                        }
                    ],
                },
            }
        )

    server = await serve({"/api/v1/query": query})
    try:
        src = TokenSource(
            TokenSourceSettings(
                name="v",
                preset="vllm",
                prometheus_url=str(server.make_url("")),
                selector='cluster="a"',
            ),
            run=run_cpu,
        )
        async with httpx.AsyncClient() as client:
            obs = await src.fetch(client)
    finally:
        await server.close()
    assert src.name == "tokens:v"
    assert seen == [
        '{__name__=~"vllm:generation_tokens_total|vllm:prompt_tokens_cached_total|'
        'vllm:prompt_tokens_total",cluster="a"}'
    ]
    assert [(o.token_type, o.value, o.namespace, o.pod) for o in obs] == [
        ("output", 42.0, "llm", "v-1")
    ]


async def test_scrape_mode_adds_target_labels():
    async def page(request: web.Request) -> web.Response:
        return web.Response(text='vllm:generation_tokens_total{model_name="llama"} 7\n')

    server = await serve({"/a/metrics": page})
    try:
        good = {
            "url": str(server.make_url("/a/metrics")),
            "labels": {"namespace": "llm", "pod": "a"},
        }
        src = TokenSource(
            TokenSourceSettings(name="v", preset="vllm", mode="scrape", scrape_targets=[good]),
            run=run_cpu,
        )
        async with httpx.AsyncClient() as client:
            read = await src.fetch(client)
            obs = token_observations(read)
    finally:
        await server.close()
    assert [(o.value, o.namespace, o.pod) for o in obs] == [(7.0, "llm", "a")]
    # One target: the source is its origin (one unreachable target of several:
    # tests/sources/test_field_tokens.py).
    assert read.origins == {"tokens:v"}


def test_settings_round_trip_is_json_safe():
    s = settings_from_mapping(
        {"tokens": {"sources": [{"name": "l", "preset": "litellm", "prometheus_url": "http://p"}]}}
    )
    json.dumps(s.model_dump(mode="json"))
    assert s.tokens.active
