"""The LLM price catalog on LiteLLM's real price subset: parsing, tolerant matching, overrides."""

from __future__ import annotations

import pytest

from aifinops.model.llm_prices import (
    LlmPriceError,
    build_catalog,
    content_version,
    name_forms,
    normalize_provider,
    override_price,
    parse_litellm_prices,
    strip_route,
)
from tests.upstream_data import PRICE_SUBSET, price_subset


def test_subset_parses_every_priced_entry_and_skips_sample_spec():
    data = price_subset()
    entries = parse_litellm_prices(data)
    assert "sample_spec" not in entries
    assert len(entries) == len(data) - 1 == 35
    gpt4o = entries["gpt-4o"]
    assert (gpt4o.input, gpt4o.output, gpt4o.cached_input) == (2.5e-06, 1e-05, 1.25e-06)
    assert gpt4o.provider == "openai" and gpt4o.mode == "chat"
    # Bedrock's converse route and Vertex's language-models route fold into one provider.
    assert entries["amazon.nova-pro-v1:0"].provider == "bedrock"
    assert entries["gemini-2.5-pro"].provider == "vertex_ai"
    # No cache-read price: cached input is priced as input; no output price: 0.
    llama = entries["meta.llama3-3-70b-instruct-v1:0"]
    assert llama.cached_input is None and llama.per_token("cached_input") == llama.input
    assert entries["mistral/mistral-embed"].output == 0.0


@pytest.mark.parametrize(
    ("model", "provider", "expected_key"),
    [
        ("gpt-4o", None, "gpt-4o"),
        ("GPT-4o", None, "gpt-4o"),  # case
        ("gpt-4o-2024-08-06", None, "gpt-4o"),  # OpenAI dated snapshot
        ("openai/gpt-4o-mini", None, "gpt-4o-mini"),  # LiteLLM route prefix
        ("azure/gpt-4o", None, "azure/gpt-4o"),
        ("gpt-4o", "azure", "azure/gpt-4o"),  # provider hint picks the provider's entry
        ("gpt-4o", "azure.ai.openai", "azure/gpt-4o"),  # OpenTelemetry provider spelling
        ("gpt-4o", "openai", "gpt-4o"),
        ("gpt-4o", "anthropic", "gpt-4o"),  # no such provider entry: same model elsewhere
        ("gemini-2.5-pro", "gemini", "gemini/gemini-2.5-pro"),
        ("gemini-2.5-pro", "gcp.vertex_ai", "gemini-2.5-pro"),
        ("vertex_ai/gemini-2.5-flash", None, "gemini-2.5-flash"),
        ("claude-sonnet-4-5-20250929", "anthropic", "claude-sonnet-4-5"),  # -YYYYMMDD
        ("claude-3-5-sonnet@20240620", "vertex_ai", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
        (
            "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            None,
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),  # Bedrock inference profile
        (
            "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0",
            None,
            "anthropic.claude-3-5-haiku-20241022-v1:0",
        ),
        (
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            "aws.bedrock",
            "anthropic.claude-haiku-4-5-20251001-v1:0",
        ),
        ("amazon.nova-pro-v1:0", None, "amazon.nova-pro-v1:0"),
        ("bedrock/us-east-1/amazon.nova-lite-v1:0", None, "amazon.nova-lite-v1:0"),  # region
        ("nova-micro", "bedrock", "amazon.nova-micro-v1:0"),  # vendor and version dropped
        ("mistral-large", None, "mistral/mistral-large-latest"),  # -latest alias
        ("Meta.Llama3-3-70B-Instruct-v1:0", None, "meta.llama3-3-70b-instruct-v1:0"),
    ],
)
def test_tolerant_matching(catalog, model, provider, expected_key):
    found = catalog.lookup(model, provider)
    assert found is not None, model
    assert found.key == expected_key


@pytest.mark.parametrize(
    "model", ["llama-3.1-8b", "acme-llm-pro", "", "gpt-5-ultra", "meta-llama/Llama-3.1-8B"]
)
def test_unknown_models_are_none_never_zero(catalog, model):
    assert catalog.lookup(model) is None


def test_name_forms_reduce_step_by_step():
    assert name_forms("bedrock/us.anthropic.claude-3-5-sonnet-20240620-v1:0") == [
        "bedrock/us.anthropic.claude-3-5-sonnet-20240620-v1:0",
        "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
        "claude-3-5-sonnet-20240620-v1:0",
        "claude-3-5-sonnet-20240620",
        "claude-3-5-sonnet",
    ]
    # A Hugging Face organisation is part of the name, not a route.
    assert strip_route("hosted_vllm/meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"


def test_provider_normalization():
    assert normalize_provider("bedrock_converse") == "bedrock"
    assert normalize_provider("vertex_ai-language-models") == "vertex_ai"
    assert normalize_provider("aws.bedrock") == "bedrock"
    assert normalize_provider("None") is None
    assert normalize_provider("") is None
    assert normalize_provider("OpenAI") == "openai"


def test_overrides_win_and_change_the_version(catalog):
    entries = parse_litellm_prices(price_subset())
    over = override_price(
        "gpt-4o",
        input_usd_per_million_tokens=2.0,
        output_usd_per_million_tokens=8.0,
        cached_input_usd_per_million_tokens=None,
        provider="openai",
    )
    local = override_price(
        "acme-llm-pro",
        input_usd_per_million_tokens=1.0,
        output_usd_per_million_tokens=3.0,
        cached_input_usd_per_million_tokens=0.5,
        provider=None,
    )
    c = build_catalog(entries, "v1", [over, local])
    assert c.version.startswith("v1+overrides:")
    assert c.lookup("gpt-4o-2024-08-06").source == "override"
    assert c.lookup("gpt-4o").input == pytest.approx(2e-6, rel=1e-12)
    assert c.lookup("acme-llm-pro").per_token("cached_input") == pytest.approx(5e-7, rel=1e-12)
    assert c.lookup("gpt-4o-mini").source == "price_list"
    assert build_catalog(entries, "v1").version == "v1"


def test_content_version_is_a_short_stable_digest():
    content = PRICE_SUBSET.read_bytes()
    assert content_version(content) == content_version(content)
    assert content_version(content).startswith("sha256:") and len(content_version(content)) == 19
    assert content_version(content) != content_version(content + b" ")


@pytest.mark.parametrize(
    "doc",
    [[], {"sample_spec": {"input_cost_per_token": 0}}, {"m": "x"}, {"m": {"mode": "chat"}}],
)
def test_bad_documents_are_refused(doc):
    with pytest.raises(LlmPriceError):
        parse_litellm_prices(doc)


def test_non_numeric_or_negative_prices_are_skipped():
    entries = parse_litellm_prices(
        {
            "ok": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
            "img": {"input_cost_per_image": 0.04},
            "neg": {"input_cost_per_token": -1},
            "str": {"input_cost_per_token": "0.1"},
            "bool": {"input_cost_per_token": True},
        }
    )
    assert set(entries) == {"ok"}
