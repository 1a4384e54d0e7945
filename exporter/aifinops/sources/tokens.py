"""Token counters from model servers, gateways and instrumented apps, as presets.

Each preset maps a real server's series to (tenant, model, provider, token_type). The names
are the upstreams' own:

* **vllm** — ``vllm:prompt_tokens_total`` (all prompt tokens, cached ones included),
  ``vllm:prompt_tokens_cached_total`` (prompt tokens served from the prefix cache, local or
  transferred; vLLM V1 ≥ 0.10), ``vllm:generation_tokens_total``; label ``model_name`` (the
  served model name) and, on V1, ``engine`` (one series per engine core: each is its own
  counter). ``input`` = prompt − cached, ``cached_input`` = cached. The pod comes from the
  scrape's target labels ``namespace``/``pod``. Role ``both``: vLLM knows no tenant, so its
  tokens belong to the serving pod's tenant; with a gateway in front that names the tenants
  (LiteLLM), set ``role: serving`` to avoid counting the same tokens twice.
* **litellm** (proxy ``/metrics``) — ``litellm_input_tokens_metric_total`` (older
  ``litellm_input_tokens_total``), ``litellm_input_cached_tokens_metric_total`` (provider
  prompt-cache reads, newer releases), ``litellm_output_tokens_metric_total`` (older
  ``litellm_output_tokens_total``), ``litellm_spend_metric_total`` (LiteLLM's own dollars,
  used only for models our price list lacks); labels ``team_alias``/``team`` → tenant,
  ``model`` (else ``litellm_model_name``, ``requested_model``) → model. ``hashed_api_key``,
  ``api_key_alias``, ``user``, ``user_email``, ``end_user`` are never read.
* **otel_genai** — the OpenTelemetry ``gen_ai.client.token.usage`` histogram as the
  collector's Prometheus exporter writes it: ``gen_ai_client_token_usage_sum`` with
  ``gen_ai_token_type`` (``input``/``output``; older ``prompt``/``completion``),
  ``gen_ai_request_model`` (else ``gen_ai_response_model``), ``gen_ai_provider_name`` (older
  ``gen_ai_system``). Tenant: a ``tenant`` label if the app sets one, else the namespace in
  ``k8s_namespace_name`` (resource attributes promoted to labels) by the tenancy rules.
* **tgi** — Hugging Face TGI's ``tgi_request_input_length_sum`` and
  ``tgi_request_generated_tokens_sum`` histogram sums; TGI labels no model, so ``model`` is
  configured. Role ``both``, like vLLM.

Every field of a preset can be replaced in configuration (``preset: custom`` starts empty).

Reading: ``mode: prometheus`` runs one instant query ``{__name__=~"<names>"<selector>}``;
``mode: scrape`` reads the ``/metrics`` pages directly (all concurrently; one failure fails
the fetch, and the refresh loop keeps the last good data). :func:`observations_from_samples`
is the pure mapping the tests feed with literal payloads. Each upstream series is identified
by a digest of its name and labels: raw label values other than the mapped ones never leave
this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import httpx

from aifinops.model.inputs import TokenObservation, TokenRole
from aifinops.model.llm_prices import TokenType, normalize_provider
from aifinops.offload import run_cpu
from aifinops.settings import FORBIDDEN_TENANT_LABELS, TokenMetricSettings, TokenSourceSettings
from aifinops.sources.base import SourceError, get_bytes, read_bearer_token
from aifinops.sources.promapi import instant_query
from aifinops.sources.promtext import decode_page, parse_text

Sample = tuple[str, Mapping[str, str], float]

MAX_LABEL_VALUE = 256
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_EMPTY_VALUES = frozenset({"", "none", "null", "undefined", "n/a"})


@dataclass(frozen=True, slots=True)
class MetricMap:
    """One series family → one token type (see :class:`TokenMetricSettings`)."""

    metric: str
    token_type: TokenType | None = None
    older_names: tuple[str, ...] = ()
    token_type_label: str | None = None
    token_type_values: Mapping[str, TokenType] = field(default_factory=dict)
    subtract: str | None = None
    kind: str = "tokens"

    @classmethod
    def from_settings(cls, m: TokenMetricSettings) -> MetricMap:
        return cls(
            metric=m.metric,
            token_type=m.token_type,
            older_names=m.older_names,
            token_type_label=m.token_type_label,
            token_type_values=dict(m.token_type_values),
            subtract=m.subtract,
            kind=m.kind,
        )


@dataclass(frozen=True, slots=True)
class TokenMapping:
    """A preset, or a preset with configured replacements: everything the parse needs."""

    metrics: tuple[MetricMap, ...]
    role: TokenRole
    model: str | None = None
    model_labels: tuple[str, ...] = ()
    provider: str | None = None
    provider_labels: tuple[str, ...] = ()
    tenant: str | None = None
    tenant_labels: tuple[str, ...] = ()
    namespace_labels: tuple[str, ...] = ()
    pod_labels: tuple[str, ...] = ()

    def wanted(self) -> frozenset[str]:
        """Every metric name this mapping reads (current and older names, subtrahends)."""
        names: set[str] = set()
        for m in self.metrics:
            names.add(m.metric)
            names.update(m.older_names)
            if m.subtract:
                names.add(m.subtract)
        return frozenset(names)


PRESETS: Mapping[str, TokenMapping] = {
    "vllm": TokenMapping(
        metrics=(
            MetricMap(
                "vllm:prompt_tokens_total", "input", subtract="vllm:prompt_tokens_cached_total"
            ),
            MetricMap("vllm:prompt_tokens_cached_total", "cached_input"),
            MetricMap("vllm:generation_tokens_total", "output"),
        ),
        role="both",
        model_labels=("model_name",),
        provider="vllm",
        namespace_labels=("namespace",),
        pod_labels=("pod",),
    ),
    "litellm": TokenMapping(
        metrics=(
            MetricMap(
                "litellm_input_tokens_metric_total",
                "input",
                older_names=("litellm_input_tokens_total",),
                subtract="litellm_input_cached_tokens_metric_total",
            ),
            MetricMap("litellm_input_cached_tokens_metric_total", "cached_input"),
            MetricMap(
                "litellm_output_tokens_metric_total",
                "output",
                older_names=("litellm_output_tokens_total",),
            ),
            MetricMap("litellm_spend_metric_total", "input", kind="spend_usd"),
        ),
        role="usage",
        model_labels=("model", "litellm_model_name", "requested_model"),
        provider_labels=("api_provider",),
        tenant_labels=("team_alias", "team"),
    ),
    "otel_genai": TokenMapping(
        metrics=(
            MetricMap(
                "gen_ai_client_token_usage_sum",
                token_type_label="gen_ai_token_type",
                token_type_values={
                    "input": "input",
                    "prompt": "input",
                    "output": "output",
                    "completion": "output",
                },
            ),
        ),
        role="usage",
        model_labels=("gen_ai_request_model", "gen_ai_response_model"),
        provider_labels=("gen_ai_provider_name", "gen_ai_system"),
        tenant_labels=("tenant",),
        namespace_labels=("k8s_namespace_name",),
        pod_labels=("k8s_pod_name",),
    ),
    "tgi": TokenMapping(
        metrics=(
            MetricMap("tgi_request_input_length_sum", "input"),
            MetricMap("tgi_request_generated_tokens_sum", "output"),
        ),
        role="both",
        provider="tgi",
        namespace_labels=("namespace",),
        pod_labels=("pod",),
    ),
    "custom": TokenMapping(metrics=(), role="usage"),
}


def mapping_for(s: TokenSourceSettings) -> TokenMapping:
    """The preset of ``s`` with every field ``s`` sets replacing the preset's."""
    base = PRESETS[s.preset]
    changes: dict[str, object] = {}
    if s.metrics is not None:
        changes["metrics"] = tuple(MetricMap.from_settings(m) for m in s.metrics)
    for name in (
        "role",
        "model",
        "model_labels",
        "provider",
        "provider_labels",
        "tenant",
        "tenant_labels",
        "namespace_labels",
        "pod_labels",
    ):
        value = getattr(s, name)
        if value is not None:
            changes[name] = value
    mapping = replace(base, **changes)  # type: ignore[arg-type]
    if set(mapping.tenant_labels) & FORBIDDEN_TENANT_LABELS:
        raise ValueError("tenant_labels name a person or an API key")
    return mapping


def clean_value(value: str | None) -> str | None:
    """A label value fit to keep: ``None`` for empty/``None``-like or email-like values;
    trimmed and capped at :data:`MAX_LABEL_VALUE` characters."""
    if value is None:
        return None
    v = value.strip()
    if v.lower() in _EMPTY_VALUES or _EMAIL_LIKE.search(v):
        return None
    return v[:MAX_LABEL_VALUE]


def _first(labels: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for key in keys:
        v = clean_value(labels.get(key))
        if v:
            return v
    return None


def series_digest(name: str, labels: Mapping[str, str]) -> str:
    """A stable 16-hex id of one series (its name and every label): a counter's identity
    without keeping the raw values (API-key hashes, user names) it was built from."""
    h = hashlib.blake2b(digest_size=8)
    h.update(name.encode())
    for k, v in sorted(labels.items()):
        if k != "__name__":
            h.update(b"\0" + k.encode() + b"=" + v.encode())
    return h.hexdigest()


def _label_key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))


def observations_from_samples(
    source: str,
    samples: Iterable[Sample],
    mapping: TokenMapping,
    *,
    from_zero: bool = False,
) -> tuple[TokenObservation, ...]:
    """Map parsed samples to token observations.

    Per metric map: the first of ``metric``/``older_names`` that has samples is read; each
    sample's value minus the ``subtract`` sample with identical labels (0 when none; never
    below 0). Skipped: NaN/±Inf and negative values, samples whose token type label is
    unmapped, samples with no model. Tenant, provider and pod follow the mapping (see the
    module docstring); an email-like label value is never used.
    """
    by_name: dict[str, list[tuple[Mapping[str, str], float]]] = defaultdict(list)
    for name, labels, value in samples:
        by_name[name].append((labels, value))
    out: list[TokenObservation] = []
    for m in mapping.metrics:
        chosen = next((n for n in (m.metric, *m.older_names) if by_name.get(n)), None)
        if chosen is None:
            continue
        minus: dict[tuple[tuple[str, str], ...], float] = {}
        if m.subtract:
            minus = {
                _label_key(lbl): v for lbl, v in by_name.get(m.subtract, ()) if math.isfinite(v)
            }
        for labels, raw in by_name[chosen]:
            if not math.isfinite(raw) or raw < 0:  # a counter is never negative
                continue
            value = max(0.0, raw - minus.get(_label_key(labels), 0.0)) if minus else raw
            token_type: TokenType | None = m.token_type
            if m.token_type_label is not None:
                tt = labels.get(m.token_type_label, "").strip().lower()
                token_type = m.token_type_values.get(tt)
            if token_type is None:
                continue
            model = clean_value(mapping.model) or _first(labels, mapping.model_labels)
            if model is None:
                continue
            provider = mapping.provider or _first(labels, mapping.provider_labels)
            out.append(
                TokenObservation(
                    source=source,
                    series=series_digest(chosen, labels),
                    role=mapping.role,
                    token_type=token_type,
                    model=model,
                    value=value,
                    provider=normalize_provider(provider),
                    tenant=clean_value(mapping.tenant) or _first(labels, mapping.tenant_labels),
                    namespace=_first(labels, mapping.namespace_labels),
                    pod=_first(labels, mapping.pod_labels),
                    kind="spend_usd" if m.kind == "spend_usd" else "tokens",
                    from_zero=from_zero,
                )
            )
    return tuple(out)


def token_query(names: Iterable[str], selector: str) -> str:
    """One PromQL selector for every wanted name, scoped by ``selector`` (with or without
    braces): ``{__name__=~"a|b",cluster="prod"}``."""
    inner = selector.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1].strip()
    matchers = [f'__name__=~"{"|".join(sorted(names))}"']
    if inner:
        matchers.append(inner)
    return "{" + ",".join(matchers) + "}"


class TokenSource:
    """One configured token source (``tokens.sources[]``), named ``tokens:<name>``."""

    def __init__(self, settings: TokenSourceSettings) -> None:
        self._settings = settings
        self._mapping = mapping_for(settings)
        self.name = f"tokens:{settings.name}"

    @property
    def mapping(self) -> TokenMapping:
        return self._mapping

    async def fetch(self, client: httpx.AsyncClient) -> tuple[TokenObservation, ...]:
        s = self._settings
        headers = read_bearer_token(s.bearer_token_file)
        wanted = self._mapping.wanted()
        samples: list[Sample] = []
        if s.mode == "prometheus":
            if not s.prometheus_url:
                raise SourceError(
                    "invalid", f"{self.name}: mode 'prometheus' has no prometheus_url"
                )
            series = await instant_query(
                client,
                s.prometheus_url,
                token_query(wanted, s.selector),
                timeout=s.timeout_seconds,
                max_bytes=s.max_response_bytes,
                headers=headers,
            )
            samples = [(labels.get("__name__", ""), labels, value) for labels, value in series]
        else:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._scrape(client, t.url, t.labels, wanted, headers))
                        for t in s.scrape_targets
                    ]
            except* SourceError as failed:
                raise failed.exceptions[0] from None
            samples = [sample for task in tasks for sample in task.result()]
        # ~2 s of pure Python at 10k GPUs: off the event loop (see aifinops.offload).
        return await run_cpu(observations_from_samples, self.name, samples, self._mapping)

    async def _scrape(
        self,
        client: httpx.AsyncClient,
        url: str,
        target_labels: Mapping[str, str],
        wanted: frozenset[str],
        headers: Mapping[str, str],
    ) -> list[Sample]:
        s = self._settings
        body = await get_bytes(
            client, url, timeout=s.timeout_seconds, max_bytes=s.max_response_bytes, headers=headers
        )
        try:
            parsed = parse_text(decode_page(body), wanted)
        except ValueError as exc:
            raise SourceError("parse", f"{url}: {exc}") from None
        if not target_labels:
            return parsed
        # Target labels are added where the sample has none of its own (Prometheus'
        # honor_labels: true), so a sample's own labels win.
        return [(name, {**target_labels, **labels}, value) for name, labels, value in parsed]
