"""LLM API prices: LiteLLM's price map → a catalog with tolerant model-name matching. Pure.

The import format is LiteLLM's ``model_prices_and_context_window.json``: one object per model
key with ``input_cost_per_token``, ``output_cost_per_token`` and, where the provider has prompt
caching, ``cache_read_input_token_cost`` (all USD per token), plus ``litellm_provider`` and
``mode``. The ``sample_spec`` entry documents the format and is skipped, as are entries without
a numeric ``input_cost_per_token`` (image, audio and per-second prices).

Matching is tolerant because the same model is spelled many ways upstream (a LiteLLM route
``azure/gpt-4o``, an OpenTelemetry ``gpt-4o-2024-08-06``, a Bedrock
``us.anthropic.claude-3-5-sonnet-20240620-v1:0``, a Vertex ``claude-3-5-sonnet@20240620``).
A name is reduced step by step (see :func:`name_forms`); the most specific form that matches
a catalog entry wins, so an exact dated key in the file beats its undated alias.

Prices are floats in USD per token (a gauge-style rate, never summed here). An unknown model is
``None`` — the caller reports it as unpriced and never costs it at zero.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TokenType = Literal["input", "output", "cached_input"]
TOKEN_TYPES: tuple[TokenType, ...] = ("input", "output", "cached_input")
PriceSource = Literal["price_list", "override"]

PER_MILLION = 1_000_000.0

# Leading path segments that name a route or provider, not the model (LiteLLM's
# ``provider/model`` convention and a few OpenTelemetry/OpenAI-compatible spellings).
PROVIDER_PREFIXES = frozenset(
    {
        "openai",
        "azure",
        "azure_ai",
        "anthropic",
        "bedrock",
        "bedrock_converse",
        "converse",
        "invoke",
        "vertex_ai",
        "vertex_ai_beta",
        "gemini",
        "mistral",
        "hosted_vllm",
        "vllm",
        "huggingface",
        "text-completion-openai",
        "together_ai",
        "groq",
        "deepseek",
        "xai",
        "cohere",
        "openrouter",
        "fireworks_ai",
        "databricks",
        "sagemaker",
        "watsonx",
        "ollama",
        "ollama_chat",
    }
)
_REGION_SEGMENT = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")  # bedrock/us-east-1/...
# Bedrock cross-region inference profiles: us.anthropic.claude-..., eu., apac., global.
_INFERENCE_PROFILE = re.compile(r"^(us|eu|apac|global|jp|au|ca|us-gov)\.(?=[a-z0-9-]+\.)")
# Bedrock model ids start with the vendor: anthropic.claude-..., amazon.nova-..., meta.llama...
_BEDROCK_VENDOR = re.compile(
    r"^(anthropic|amazon|meta|mistral|cohere|ai21|deepseek|writer|qwen|openai|twelvelabs)\."
)
_VERSION_SUFFIX = re.compile(r"-v\d+(:\d+)?$|:\d+$")  # Bedrock -v1:0, -v2, :0
_DATE_SUFFIX = re.compile(r"[-@](\d{4}-\d{2}-\d{2}|\d{8})$")  # -2024-08-06, -20240620, @20240620
_LATEST_SUFFIX = re.compile(r"-latest$")

# Provider names as upstreams spell them → one label value each. LiteLLM's own names are
# kept (they are what the price map uses), folded where one provider has several routes.
_PROVIDER_ALIASES = {
    "bedrock_converse": "bedrock",
    "aws.bedrock": "bedrock",
    "aws_bedrock": "bedrock",
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "az.ai.inference": "azure_ai",
    "azure.ai.inference": "azure_ai",
    "gcp.vertex_ai": "vertex_ai",
    "gcp.gen_ai": "vertex_ai",
    "gcp.gemini": "gemini",
    "mistral_ai": "mistral",
    "text-completion-openai": "openai",
}


class LlmPriceError(ValueError):
    """The price document is not in LiteLLM's format (message names the entry)."""


def normalize_provider(provider: str | None) -> str | None:
    """One label value per provider: lower case, LiteLLM's names, routes folded
    (``bedrock_converse`` → ``bedrock``, ``vertex_ai-language-models`` → ``vertex_ai``,
    OpenTelemetry's ``aws.bedrock`` → ``bedrock``). Empty → ``None``."""
    if provider is None:
        return None
    p = provider.strip().lower()
    if not p or p in {"none", "null", "unknown"}:
        return None
    if p.startswith("vertex_ai-"):
        return "vertex_ai"
    return _PROVIDER_ALIASES.get(p, p)


def strip_route(name: str) -> str:
    """Drop leading ``provider/`` (and Bedrock ``region/``) path segments of a model name,
    keeping case: ``azure/gpt-4o`` → ``gpt-4o``, ``hosted_vllm/meta-llama/Llama-3.1-8B`` →
    ``meta-llama/Llama-3.1-8B`` (a Hugging Face organisation is part of the name)."""
    parts = name.strip().split("/")
    while len(parts) > 1 and (
        parts[0].lower() in PROVIDER_PREFIXES or _REGION_SEGMENT.match(parts[0].lower())
    ):
        parts = parts[1:]
    return "/".join(parts)


def name_forms(name: str) -> list[str]:
    """The forms a model name is matched by, most specific first, deduplicated.

    1. lower case, trimmed; 2. route prefixes dropped (:func:`strip_route`); 3. Bedrock
    inference-profile and vendor prefixes dropped (``us.anthropic.`` / ``amazon.``);
    4. version suffix dropped (``-v1:0``); 5. date suffix dropped (``-2024-08-06``,
    ``-20240620``, ``@20240620``); 6. ``-latest`` dropped.

    >>> name_forms("bedrock/us.anthropic.claude-3-5-sonnet-20240620-v1:0")[-1]
    'claude-3-5-sonnet'
    """
    forms: list[str] = []
    current = name.strip().lower()
    forms.append(current)
    current = strip_route(current)
    forms.append(current)
    current = _BEDROCK_VENDOR.sub("", _INFERENCE_PROFILE.sub("", current))
    forms.append(current)
    current = _VERSION_SUFFIX.sub("", current)
    forms.append(current)
    current = _DATE_SUFFIX.sub("", current)
    forms.append(current)
    current = _LATEST_SUFFIX.sub("", current)
    forms.append(current)
    return [f for f in dict.fromkeys(forms) if f]


@dataclass(frozen=True, slots=True)
class LlmPrice:
    """Prices of one model in USD per token (floats).

    ``cached_input`` is ``None`` when the price list has no cache-read price; cached input
    tokens are then priced as input tokens (what a provider without a cache discount bills).
    """

    key: str
    provider: str | None
    input: float
    output: float
    cached_input: float | None = None
    mode: str | None = None
    source: PriceSource = "price_list"

    def per_token(self, token_type: TokenType) -> float:
        """USD per token of ``token_type``."""
        if token_type == "input":
            return self.input
        if token_type == "output":
            return self.output
        return self.input if self.cached_input is None else self.cached_input


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) and f >= 0 else None


def parse_litellm_prices(data: Any) -> dict[str, LlmPrice]:
    """Entries of a parsed LiteLLM price map, by key.

    Skipped without error: ``sample_spec``; entries without a finite, non-negative numeric
    ``input_cost_per_token`` (per-image, per-second or per-character prices). A missing or
    non-numeric ``output_cost_per_token`` is 0 (embeddings). Raises :class:`LlmPriceError` when
    the document is not an object of objects, or when it yields no priced entry at all (a
    truncated or wrong file must not silently empty the catalog).
    """
    if not isinstance(data, dict):
        raise LlmPriceError("the price map must be a JSON object of model entries")
    out: dict[str, LlmPrice] = {}
    for key, entry in data.items():
        if key == "sample_spec":
            continue
        if not isinstance(key, str) or not isinstance(entry, dict):
            raise LlmPriceError(f"entry {str(key)[:80]!r} is not an object")
        price_in = _number(entry.get("input_cost_per_token"))
        if price_in is None:
            continue
        provider = entry.get("litellm_provider")
        mode = entry.get("mode")
        out[key] = LlmPrice(
            key=key,
            provider=normalize_provider(provider if isinstance(provider, str) else None),
            input=price_in,
            output=_number(entry.get("output_cost_per_token")) or 0.0,
            cached_input=_number(entry.get("cache_read_input_token_cost")),
            mode=mode if isinstance(mode, str) else None,
        )
    if not out:
        raise LlmPriceError("the price map has no entry with a numeric input_cost_per_token")
    return out


def content_version(content: bytes) -> str:
    """A short, stable version for a price file without a declared one: ``sha256:<12 hex>``."""
    return "sha256:" + hashlib.sha256(content).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class _Index:
    entries: Mapping[str, LlmPrice]
    by_form: Mapping[str, tuple[tuple[int, str], ...]]  # form -> (rank in key's forms, key)

    @classmethod
    def build(cls, entries: Mapping[str, LlmPrice]) -> _Index:
        by_form: dict[str, list[tuple[int, str]]] = {}
        for key in entries:
            for rank, form in enumerate(name_forms(key)):
                by_form.setdefault(form, []).append((rank, key))
        return cls(entries, {f: tuple(sorted(v)) for f, v in by_form.items()})

    def find(self, model: str, provider: str | None) -> LlmPrice | None:
        if provider and f"{provider}/{model}" in self.entries:
            return self.entries[f"{provider}/{model}"]
        exact = self.entries.get(model)
        if exact is not None and (provider is None or exact.provider == provider):
            return exact
        for form in name_forms(model):
            candidates = self.by_form.get(form)
            if not candidates:
                continue
            # Same provider first, then the entry whose own name is closest to this form (an
            # undated alias before a dated snapshot), then the shorter, then alphabetical.
            best = min(
                candidates,
                key=lambda c: (
                    provider is not None and self.entries[c[1]].provider != provider,
                    c[0],
                    len(c[1]),
                    c[1],
                ),
            )
            return self.entries[best[1]]
        return None


@dataclass(frozen=True, slots=True)
class LlmPriceCatalog:
    """Model prices with tolerant lookup. Overrides (from configuration) are searched first,
    with the same tolerance, then the price file.

    ``version`` names the price file in use (declared in configuration, or
    :func:`content_version` of its bytes), with ``+overrides:<6 hex>`` appended when
    configuration overrides any price, so a price change is visible in a series.
    """

    version: str
    entries: Mapping[str, LlmPrice]
    overrides: Mapping[str, LlmPrice] = field(default_factory=dict)
    _file: _Index = field(init=False, repr=False, compare=False)
    _over: _Index = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_file", _Index.build(self.entries))
        object.__setattr__(self, "_over", _Index.build(self.overrides))

    def lookup(self, model: str, provider: str | None = None) -> LlmPrice | None:
        """The price of ``model`` (as any upstream spells it) or ``None`` when unknown.

        ``provider`` (a normalized label value) prefers that provider's entry when a name is
        listed under several (``gpt-4o`` vs ``azure/gpt-4o``); with no entry of that provider,
        the same model from another provider is used (list prices rarely differ; an override
        fixes the exceptions).
        """
        if not model.strip():
            return None
        provider = normalize_provider(provider)
        return self._over.find(model, provider) or self._file.find(model, provider)


def override_price(
    key: str,
    *,
    input_usd_per_million_tokens: float,
    output_usd_per_million_tokens: float,
    cached_input_usd_per_million_tokens: float | None,
    provider: str | None,
) -> LlmPrice:
    """A configuration override (USD per 1M tokens) as a per-token :class:`LlmPrice`."""
    cached = cached_input_usd_per_million_tokens
    return LlmPrice(
        key=key,
        provider=normalize_provider(provider),
        input=input_usd_per_million_tokens / PER_MILLION,
        output=output_usd_per_million_tokens / PER_MILLION,
        cached_input=None if cached is None else cached / PER_MILLION,
        source="override",
    )


def build_catalog(
    entries: Mapping[str, LlmPrice], version: str, overrides: Iterable[LlmPrice] = ()
) -> LlmPriceCatalog:
    """A catalog of ``entries`` plus ``overrides``; the version gains an overrides digest."""
    over = {p.key: p for p in overrides}
    if over:
        digest = hashlib.sha256(
            repr(
                sorted((k, p.input, p.output, p.cached_input, p.provider) for k, p in over.items())
            ).encode()
        ).hexdigest()[:6]
        version = f"{version}+overrides:{digest}"
    return LlmPriceCatalog(version=version, entries=dict(entries), overrides=over)
