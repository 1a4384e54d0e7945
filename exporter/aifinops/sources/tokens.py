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
  used only for models our price list lacks); label ``team`` (the team id) → tenant —
  ``team_alias`` is a display name, and LiteLLM writes a missing value as ``"None"`` (no
  tenant); ``model`` (else ``litellm_model_name``, ``requested_model``) → model;
  ``api_provider`` → provider. The input counter includes cached tokens; the cached counter
  lacks ``org_id``/``org_alias`` (v1.108; LIT-2825 adds them), so the two pair on the labels
  both carry. ``hashed_api_key``, ``api_key_alias``, ``user``, ``user_email``, ``end_user``
  are never read. The proxy answers ``/metrics`` with a 307 to ``/metrics/`` (followed on
  the same host, :func:`~aifinops.sources.base.same_host_redirect`) and wants a key on it
  (``bearer_token_file``).
* **otel_genai** — the OpenTelemetry ``gen_ai.client.token.usage`` histogram as the
  collector's Prometheus exporter writes it: ``gen_ai_client_token_usage_sum`` with
  ``gen_ai_token_type`` (``input``/``output``; older ``prompt``/``completion``),
  ``gen_ai_request_model`` (else ``gen_ai_response_model``), ``gen_ai_provider_name`` (older
  ``gen_ai_system``). Tenant: a ``tenant`` label if the app sets one, else the namespace in
  ``k8s_namespace_name`` (resource attributes promoted to labels) by the tenancy rules.
  ``opentelemetry-instrumentation-openai-v2`` always says ``openai``, whatever server the
  SDK talks to: the provider is named from ``server_address`` by
  ``server_address_providers`` (glob → provider, first match; :data:`OTEL_SERVER_PROVIDERS`
  by default), an unnamed server being :data:`OPENAI_COMPATIBLE`.
* **tgi** — Hugging Face TGI's ``tgi_request_input_length_sum`` and
  ``tgi_request_generated_tokens_sum`` histogram sums; TGI labels no model, so ``model`` is
  configured. Role ``both``, like vLLM.

Every field of a preset can be replaced in configuration (``preset: custom`` starts empty).

Reading: ``mode: prometheus`` runs one instant query ``{__name__=~"<names>"<selector>}``;
``mode: scrape`` reads the ``/metrics`` pages directly, all concurrently, each target its own
origin (:class:`TokenSource`): one that fails keeps its last good read and is marked down
alone; the fetch fails only when all do (the refresh loop then keeps the last good data). A
series that cannot be read is skipped and counted, never the source down.
:func:`observations_from_samples` is the pure mapping the tests feed with literal payloads.
Each upstream series is identified by a digest of its name and labels: raw label values other
than the mapped ones never leave this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from operator import attrgetter, is_, itemgetter
from typing import Any, Literal

import httpx
import numpy as np
import numpy.typing as npt
import structlog

from aifinops.model.inputs import (
    TokenColumns,
    TokenItem,
    TokenObservation,
    TokenRole,
    TokenSeries,
    TokenTable,
)
from aifinops.model.llm_prices import TokenType, normalize_provider
from aifinops.settings import FORBIDDEN_TENANT_LABELS, TokenMetricSettings, TokenSourceSettings
from aifinops.sources.base import CpuRunner, Slot, SourceError
from aifinops.sources.promtext import PageRead, SeriesEntry, SeriesReader
from aifinops.sources.transport import Transport
from aifinops.status import ScrapeTargets
from aifinops.text import clean_value  # the label sanitiser, shared with the push schema

Sample = tuple[str, Mapping[str, str], float]
log = structlog.get_logger("aifinops.sources.tokens")

# What reading a malformed series raises (a label value that is not text: the Prometheus API
# path; one that cannot be encoded: a lone surrogate from a JSON escape).
_MALFORMED = (UnicodeError, TypeError, AttributeError, ValueError)


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
    server_address_labels: tuple[str, ...] = ()
    server_address_providers: tuple[tuple[str, str], ...] = ()

    def wanted(self) -> frozenset[str]:
        """Every metric name this mapping reads (current and older names, subtrahends)."""
        names: set[str] = set()
        for m in self.metrics:
            names.add(m.metric)
            names.update(m.older_names)
            if m.subtract:
                names.add(m.subtract)
        return frozenset(names)


OTEL_SERVER_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("*.openai.azure.com", "azure"),
    ("*.cognitiveservices.azure.com", "azure"),
    ("*.services.ai.azure.com", "azure"),
)
"""The otel_genai preset's ``server_address_providers``: the OpenAI SDK instrumentation writes
``gen_ai.system``/``gen_ai.provider.name`` = ``openai`` whatever server the client talks to;
only ``server.address`` says it is Azure, vLLM or another OpenAI-compatible server."""
OPENAI_COMPATIBLE = "openai_compatible"
"""The provider of an OpenAI SDK's tokens sent to a server no pattern names."""

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
        # The team id: ``team_alias`` is a display name (two spellings of one tenant), and
        # LiteLLM writes a missing team as the string "None" (no tenant: clean_value).
        tenant_labels=("team",),
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
        server_address_labels=("server_address",),
        server_address_providers=OTEL_SERVER_PROVIDERS,
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
        "server_address_labels",
    ):
        value = getattr(s, name)
        if value is not None:
            changes[name] = value
    if s.server_address_providers is not None:
        changes["server_address_providers"] = tuple(s.server_address_providers.items())
    mapping = replace(base, **changes)  # type: ignore[arg-type]
    if set(mapping.tenant_labels) & FORBIDDEN_TENANT_LABELS:
        raise ValueError("tenant_labels name a person or an API key")
    return mapping


def series_digest(name: str, labels: Mapping[str, str]) -> str:
    """A stable 16-hex id of one series (its name and every label): a counter's identity
    without keeping the raw values (API-key hashes, user names) it was built from."""
    return _digest(name, _digest_tail(labels))


def _digest_tail(labels: Mapping[str, str]) -> bytes:
    """The labels' part of what :func:`series_digest` hashes (shared by the series of one
    label set): ``\\0name=value`` per label, sorted, ``__name__`` left out."""
    return "".join([f"\0{k}={v}" for k, v in sorted(labels.items()) if k != "__name__"]).encode()


_blake2b = hashlib.blake2b


def _digest(name: str, tail: bytes) -> str:
    return hashlib.blake2b(name.encode() + tail, digest_size=8).hexdigest()


class _LabelSet:
    """What one label set gives, whatever the series' name (LiteLLM repeats each over its
    four counters). ``token_types[i]`` is the token type metric map ``i`` gives it (``None``:
    unmapped); ``names``/``values`` are its labels (sorted, ``__name__`` left out), kept only
    where a metric subtracts another, to pair the two on the labels they share
    (:meth:`key_on`). ``skipped`` names why the series cannot be read (malformed), else
    ``None``. Read-only but for the pairing key's memo."""

    __slots__ = (
        "_key",
        "_on",
        "model",
        "names",
        "namespace",
        "pod",
        "provider",
        "skipped",
        "tenant",
        "token_types",
        "values",
    )

    def __init__(
        self,
        model: str | None,
        provider: str | None,
        tenant: str | None,
        namespace: str | None,
        pod: str | None,
        token_types: tuple[TokenType | None, ...],
        names: tuple[str, ...] = (),
        values: tuple[str, ...] = (),
        skipped: str | None = None,
    ) -> None:
        self.model = model
        self.provider = provider
        self.tenant = tenant
        self.namespace = namespace
        self.pod = pod
        self.token_types = token_types
        self.names = names
        self.values = values
        self.skipped = skipped
        self._on: tuple[str, ...] | None = None
        self._key: tuple[str, ...] = ()

    def key_on(self, on: tuple[str, ...]) -> tuple[str, ...]:
        """The values of labels ``on`` (sorted names; an absent label is ``""``, as in
        PromQL): what pairs a sample with its ``subtract`` partner. ``on`` is the same object
        while the pages keep their label names, so the key is worked out once, not per
        refresh."""
        if self._on is not on:
            if self.names == on:  # the usual partner's case: its own values, no new tuple
                self._key = self.values
            else:
                pick = _PICKS.get((self.names, on))
                if pick is None:
                    if len(_PICKS) > 256:  # label names change rarely; stay bounded
                        _PICKS.clear()
                    pick = _PICKS[(self.names, on)] = _picker(self.names, on)
                self._key = pick(self.values)
            self._on = on
        return self._key


def _picker(
    names: tuple[str, ...], on: tuple[str, ...]
) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """The values of labels ``on`` out of values named ``names`` (an absent one ``""``)."""
    at = {n: i for i, n in enumerate(names)}
    positions = [at.get(n, len(names)) for n in on]
    if len(positions) > 1:
        get = itemgetter(*positions)
        return lambda values: get((*values, ""))
    if positions:
        only = positions[0]
        return lambda values: ((*values, "")[only],)
    return lambda values: ()


# Pickers by (names, on): a page has a few label-name tuples.
_PICKS: dict[
    tuple[tuple[str, ...], tuple[str, ...]], Callable[[tuple[str, ...]], tuple[str, ...]]
] = {}


_SKIPPED = _LabelSet(None, None, None, None, None, (), skipped="malformed")
"""The label set of a series that could not be read (a label value that is not text, or not
encodable): skipped and counted, never the whole source down."""


def _unambiguous(labels: Mapping[str, str], tail: bytes) -> bool:
    """Whether ``tail`` (:func:`_digest_tail`) names ``labels`` but ``__name__`` exactly: no
    value holds a NUL, so it splits back into its pairs."""
    return tail.count(b"\0") == len(labels) - ("__name__" in labels)


class _Series(SeriesEntry):
    """One upstream series as worked out once (see :class:`_SeriesBuilder`), kept between
    refreshes by the scrape path's :class:`SeriesReader`. ``last`` is the observation made
    from it last time, handed out again when nothing in it changed (an idle counter)."""

    __slots__ = ("digest", "labels", "last", "name", "row")

    def __init__(self, name: str, digest: str, labels: _LabelSet) -> None:
        self._key = None  # SeriesEntry's, set here: ~110k of these on a first read
        self.name = name
        self.digest = digest
        self.labels = labels
        self.last: TokenObservation | None = None
        self.row: TokenSeries | None = None


class _Plan:
    """What one sequence of label names decides for :meth:`_SeriesBuilder.row`: over the
    values followed by the target labels' values (``full``), the positions of the merged
    labels (target labels under the sample's own) in sorted name order, ``__name__`` left
    out (the digest tail, ``fmt % ordered``), and of the labels the mapping reads."""

    __slots__ = (
        "fields",
        "fmt",
        "model",
        "namespace",
        "ordered",
        "pod",
        "provider",
        "read",
        "server",
        "size",
        "sorted",
        "tenant",
        "token_type",
    )

    def __init__(self, builder: _SeriesBuilder, names: tuple[str, ...]) -> None:
        position: dict[str, int] = {k: len(names) + i for i, k in enumerate(builder._target)}
        position.update((k, i) for i, k in enumerate(names))  # a later duplicate is not
        # possible: the parse refuses duplicate label names
        keys = sorted(k for k in position if k != "__name__")
        self.sorted = tuple(keys)
        self.size = len(keys)
        # A target label's name is configuration: a '%' in it stays text.
        self.fmt = "".join([f"\0{k.replace('%', '%%')}=%s" for k in keys])
        at = [position[k] for k in keys]
        self.ordered: Callable[[tuple[str, ...]], tuple[str, ...]]
        if len(at) > 1:
            self.ordered = itemgetter(*at)
        elif at:
            only = at[0]
            self.ordered = lambda full: (full[only],)
        else:
            self.ordered = lambda full: ()
        m = builder._mapping

        def where(labels: Iterable[str]) -> tuple[int, ...]:
            return tuple(position[k] for k in labels if k in position)

        self.model = where(m.model_labels)
        self.provider = where(m.provider_labels)
        self.tenant = where(m.tenant_labels)
        self.namespace = where(m.namespace_labels)
        self.pod = where(m.pod_labels)
        self.server = where(m.server_address_labels)
        self.token_type = tuple(
            position.get(metric.token_type_label, -1) if metric.token_type_label else -2
            for metric in m.metrics
        )
        # Everything the label set is made of: series that agree on these share its fields.
        read = sorted(
            {*self.model, *self.provider, *self.tenant, *self.namespace, *self.pod, *self.server}
            | {i for i in self.token_type if i >= 0}
        )
        self.read: Callable[[tuple[str, ...]], object] = (
            itemgetter(*read) if read else (lambda full: ())
        )
        self.fields: dict[object, tuple[Any, ...]] = {}

    def label_set(self, builder: _SeriesBuilder, full: tuple[str, ...]) -> _LabelSet:
        """:meth:`_SeriesBuilder._label_set` of these labels: its fields worked out once
        per distinct value of the labels the mapping reads (a few per team and model)."""
        key = self.read(full)
        fields = self.fields.get(key)
        if fields is None:
            fields = self.fields[key] = self._fields(builder, full)
        return _LabelSet(*fields)

    def _fields(self, builder: _SeriesBuilder, full: tuple[str, ...]) -> tuple[Any, ...]:
        m = builder._mapping
        first = builder._first_at
        provider = m.provider or first(full, self.provider)
        normalized = builder._providers.get(provider, "")
        if normalized == "":
            normalized = builder._providers[provider] = normalize_provider(provider)
        if self.server:
            normalized = builder._provider_of_host(first(full, self.server), normalized)
        token_types: list[TokenType | None] = []
        for metric, at in zip(m.metrics, self.token_type, strict=True):
            token_type = metric.token_type
            if at != -2:
                tt = full[at].strip().lower() if at >= 0 else ""
                token_type = metric.token_type_values.get(tt)
            token_types.append(token_type)
        types = tuple(token_types)
        return (
            builder._model or first(full, self.model),
            normalized,
            builder._tenant or first(full, self.tenant),
            first(full, self.namespace),
            first(full, self.pod),
            builder._token_types.setdefault(types, types),
        )


class _SeriesBuilder:
    """Makes the :class:`_Series` of (name, labels) by the rules of
    :func:`observations_from_samples`' docstring, with the target labels under the sample's
    own (Prometheus' ``honor_labels: true``). One per read (or call): it memoizes cleaned
    values and, per label mapping object, the :class:`_LabelSet`. ``target`` (a scrape
    target as shown, given when a source has several) goes into each series' digest: two
    replicas' pages with the same labels are two counters, never one that jumps between
    them."""

    def __init__(
        self, mapping: TokenMapping, target_labels: Mapping[str, str], target: str = ""
    ) -> None:
        self._mapping = mapping
        self._target = dict(target_labels)
        self._salt = f"\0\0target={target}".encode() if target else b""
        # One str object per wanted name, so that series of one name share it (cheap `is`).
        self._names = {n: n for n in mapping.wanted()}
        # The names whose series pair with a partner: a subtracting metric and its partner.
        self._pairing = frozenset(
            n for m in mapping.metrics if m.subtract for n in (m.metric, *m.older_names, m.subtract)
        )
        self._label_names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._strs: dict[str, str] = {}
        self._hosts: dict[tuple[str, str | None], str | None] = {}
        self.skipped = 0
        self._model = clean_value(mapping.model)
        self._tenant = clean_value(mapping.tenant)
        self._clean: dict[str, str | None] = {}
        self._providers: dict[str | None, str | None] = {}
        self._token_types: dict[tuple[TokenType | None, ...], tuple[TokenType | None, ...]] = {}
        self._sets: dict[int, tuple[Mapping[str, str], _LabelSet, bytes]] = {}
        # Label sets by content too (the Prometheus API gives each sample its own mapping),
        # unless the mapping reads __name__, which the digest tail leaves out.
        read = (
            *mapping.model_labels,
            *mapping.provider_labels,
            *mapping.tenant_labels,
            *mapping.namespace_labels,
            *mapping.pod_labels,
            *(m.token_type_label for m in mapping.metrics if m.token_type_label),
        )
        self._by_tail: dict[bytes, _LabelSet] | None = None if "__name__" in read else {}
        self._target_values = tuple(self._target.values())
        self._by_digest: dict[bytes, _LabelSet] | None = None if "__name__" in read else {}
        self._plans: dict[int, tuple[tuple[str, ...], _Plan]] = {}

    def row(self, name: str, names: tuple[str, ...], values: tuple[str, ...]) -> _Series:
        """:meth:`__call__` for a page's series given as label names and values (a
        :class:`SeriesReader` row): what the label names decide (the digest's order, which
        labels the mapping reads, the target labels under them) is worked out once per names
        tuple, so a new series costs a format, a digest and a few look-ups, not a dict."""
        memo = self._plans.get(id(names))
        if memo is None or memo[0] is not names:
            memo = (names, _Plan(self, names))
            self._plans[id(names)] = memo  # the names tuple is kept: its id stays its own
        plan = memo[1]
        try:
            full = values + self._target_values if self._target_values else values
            ordered = plan.ordered(full)
            head = plan.fmt % ordered if plan.fmt else ""
            tail = head.encode()
            # Label sets by a 128-bit digest of their tail, not the tail (80k tails of ~400
            # bytes at fleet scale: the first read's peak).
            by_digest = self._by_digest
            memo_key = _blake2b(tail, digest_size=16).digest() if by_digest is not None else b""
            label_set = by_digest.get(memo_key) if by_digest is not None else None
            if label_set is None:
                label_set = plan.label_set(self, full)
                # As _unambiguous: no value holds a NUL, so the tail names these labels.
                if by_digest is not None and tail.count(b"\0") == plan.size:
                    by_digest[memo_key] = label_set
            if name in self._pairing and not label_set.names:
                strs = self._strs
                label_set.values = tuple(map(strs.setdefault, ordered, ordered))
                label_set.names = self._label_names.setdefault(plan.sorted, plan.sorted)
        except _MALFORMED:
            return self._skipped(name)
        name = self._names.get(name, name)
        return _Series(name, _digest(name, tail + self._salt), label_set)

    def __call__(self, name: str, labels: Mapping[str, str]) -> _Series:
        """The series of a sample whose labels mapping may be shared with other samples (a
        parsed page shares one per label text): worked out once per mapping object. A
        series that cannot be read is given the :data:`_SKIPPED` label set (counted)."""
        memo = self._sets.get(id(labels))
        if memo is None or memo[0] is not labels:
            try:
                merged = {**self._target, **labels} if self._target else labels
                tail = _digest_tail(merged)
                label_set = self._label_set_of(merged, tail)
            except _MALFORMED:
                return self._skipped(name)
            # The labels object is kept in the memo, so its id cannot be reused meanwhile.
            memo = (labels, label_set, tail + self._salt)
            self._sets[id(labels)] = memo
        if name in self._pairing and not memo[1].names:
            self._add_pairs(memo[1], {**self._target, **labels} if self._target else labels)
        name = self._names.get(name, name)
        return _Series(name, _digest(name, memo[2]), memo[1])

    def own(self, name: str, labels: Mapping[str, str]) -> _Series:
        """The series of a sample with a labels mapping of its own (the Prometheus API's)."""
        try:
            tail = _digest_tail(labels)
            label_set = self._label_set_of(labels, tail)
            if name in self._pairing and not label_set.names:
                self._add_pairs(label_set, labels)
            name = self._names.get(name, name)
            return _Series(name, _digest(name, tail), label_set)
        except _MALFORMED:
            return self._skipped(name)

    def _skipped(self, name: object) -> _Series:
        self.skipped += 1
        return _Series(name if isinstance(name, str) else "", "", _SKIPPED)

    def _label_set_of(self, labels: Mapping[str, str], tail: bytes) -> _LabelSet:
        by_tail = self._by_tail
        label_set = by_tail.get(tail) if by_tail is not None else None
        if label_set is None:
            label_set = self._label_set(labels, tail)
            if by_tail is not None and _unambiguous(labels, tail):
                by_tail[tail] = label_set
        return label_set

    def _first(self, labels: Mapping[str, str], keys: Iterable[str]) -> str | None:
        clean = self._clean
        for key in keys:
            raw = labels.get(key)
            if raw is None:
                continue
            v = clean.get(raw, "")
            if v == "":  # not memoized yet ("" is never a clean value)
                v = clean[raw] = clean_value(raw)
            if v:
                return v
        return None

    def _first_at(self, full: tuple[str, ...], positions: tuple[int, ...]) -> str | None:
        """:meth:`_first` over the values at ``positions`` (present labels, in order)."""
        clean = self._clean
        for i in positions:
            raw = full[i]
            v = clean.get(raw, "")
            if v == "":
                v = clean[raw] = clean_value(raw)
            if v:
                return v
        return None

    def _label_set(self, labels: Mapping[str, str], tail: bytes) -> _LabelSet:
        m = self._mapping
        provider = m.provider or self._first(labels, m.provider_labels)
        normalized = self._providers.get(provider, "")
        if normalized == "":
            normalized = self._providers[provider] = normalize_provider(provider)
        token_types: list[TokenType | None] = []
        for metric in m.metrics:
            token_type = metric.token_type
            if metric.token_type_label is not None:
                tt = labels.get(metric.token_type_label, "").strip().lower()
                token_type = metric.token_type_values.get(tt)
            token_types.append(token_type)
        types = tuple(token_types)
        return _LabelSet(
            self._model or self._first(labels, m.model_labels),
            self._provider(labels, normalized),
            self._tenant or self._first(labels, m.tenant_labels),
            self._first(labels, m.namespace_labels),
            self._first(labels, m.pod_labels),
            self._token_types.setdefault(types, types),
        )

    def _add_pairs(self, label_set: _LabelSet, labels: Mapping[str, str]) -> None:
        """Keep the sorted label names and values of a label set that a series of a
        subtracting metric or of its partner has (only those pair on them; LiteLLM's spend
        series keep none); equal name tuples and values shared within the read."""
        items = sorted((k, v) for k, v in labels.items() if k != "__name__")
        names = tuple([k for k, _ in items])
        strs = self._strs
        label_set.values = tuple([strs.setdefault(v, v) for _, v in items])
        label_set.names = self._label_names.setdefault(names, names)

    def _provider(self, labels: Mapping[str, str], provider: str | None) -> str | None:
        """``provider`` (normalized), or the one ``server_address_providers`` names for the
        server the sample went to (first matching pattern); a server no pattern names is
        :data:`OPENAI_COMPATIBLE` where the labels say ``openai`` (the OpenAI SDK's fixed
        value) or nothing."""
        m = self._mapping
        host = self._first(labels, m.server_address_labels) if m.server_address_labels else None
        return self._provider_of_host(host, provider)

    def _provider_of_host(self, host: str | None, provider: str | None) -> str | None:
        if host is None:
            return provider
        m = self._mapping
        memo = self._hosts.get((host, provider), "")
        if memo == "":
            found = next(
                (
                    p
                    for pattern, p in m.server_address_providers
                    if fnmatchcase(host.lower(), pattern.lower())
                ),
                None,
            )
            if found is not None:
                memo = normalize_provider(found)
            elif provider in (None, "openai"):
                memo = OPENAI_COMPATIBLE
            else:
                memo = provider
            self._hosts[(host, provider)] = memo
        return memo


def observations_from_samples(
    source: str,
    samples: Iterable[Sample],
    mapping: TokenMapping,
    *,
    from_zero: bool = False,
) -> tuple[TokenObservation, ...]:
    """Map parsed samples to token observations.

    Per metric map: the first of ``metric``/``older_names`` that has samples is read; each
    sample's value minus its ``subtract`` partner: the partner samples (summed) whose values
    of the labels both families carry are the sample's, an absent label counting as ``""``
    (0 when none; never below 0). A partner met by several samples is split among them in
    proportion to their values. Skipped: NaN/±Inf and negative values, samples whose token
    type label is unmapped, samples with no model, malformed samples. Tenant, provider and
    pod follow the mapping (see the module docstring); an email-like label value is never
    used.
    """
    build = _SeriesBuilder(mapping, {})
    series: list[_Series] = []
    values: list[float] = []
    for name, labels, value in samples:
        series.append(build(name, labels))
        values.append(value)
    return _observe(source, ((series, values, name_runs(series), None),), mapping, from_zero)


def _fast_observation() -> Callable[
    [
        str,
        str,
        TokenRole,
        TokenType,
        str,
        float,
        str | None,
        str | None,
        str | None,
        str | None,
        Literal["tokens", "spend_usd"],
        bool,
        str | None,
    ],
    TokenObservation,
]:
    """``TokenObservation(*fields)`` made the way its frozen dataclass ``__init__`` makes it
    (an empty instance, then each slot set past the frozen ``__setattr__``), without the
    ``object.__setattr__`` look-up per field (a refresh makes one per series; figures:
    bench/README.md). Checked against the class' shape at import: a change there fails
    loudly here rather than switching paths unseen."""
    fields = dataclasses.fields(TokenObservation)
    names = tuple(f.name for f in fields)
    params = getattr(TokenObservation, "__dataclass_params__", None)
    if (
        getattr(TokenObservation, "__slots__", None) != names
        or len(names) != 13
        or not all(f.init for f in fields)
        or hasattr(TokenObservation, "__post_init__")
        or params is None
        or not params.frozen
    ):
        raise RuntimeError(
            "model.inputs.TokenObservation's shape changed: update sources/tokens.py "
            "_fast_observation, which builds it slot by slot"
        )
    new = object.__new__
    cls = TokenObservation
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12 = (getattr(cls, n).__set__ for n in names)

    def make(
        source: str,
        series: str,
        role: TokenRole,
        token_type: TokenType,
        model: str,
        value: float,
        provider: str | None,
        tenant: str | None,
        namespace: str | None,
        pod: str | None,
        kind: Literal["tokens", "spend_usd"],
        from_zero: bool,
        origin: str | None,
    ) -> TokenObservation:
        o = new(cls)
        s0(o, source)
        s1(o, series)
        s2(o, role)
        s3(o, token_type)
        s4(o, model)
        s5(o, value)
        s6(o, provider)
        s7(o, tenant)
        s8(o, namespace)
        s9(o, pod)
        s10(o, kind)
        s11(o, from_zero)
        s12(o, origin)
        return o

    return make


_new_observation = _fast_observation()


def _fast_series() -> Callable[
    [
        str,
        str,
        TokenRole,
        TokenType,
        str,
        str | None,
        str | None,
        str | None,
        str | None,
        Literal["tokens", "spend_usd"],
        bool,
        str | None,
    ],
    TokenSeries,
]:
    """``TokenSeries(*fields)`` made as :func:`_fast_observation` makes an observation (a
    first read makes one per series), checked against the class' shape at import alike."""
    fields = dataclasses.fields(TokenSeries)
    names = tuple(f.name for f in fields)
    params = getattr(TokenSeries, "__dataclass_params__", None)
    if (
        getattr(TokenSeries, "__slots__", None) != names
        or len(names) != 12
        or not all(f.init for f in fields)
        or hasattr(TokenSeries, "__post_init__")
        or params is None
        or not params.frozen
    ):
        raise RuntimeError(
            "model.inputs.TokenSeries' shape changed: update sources/tokens.py _fast_series, "
            "which builds it slot by slot"
        )
    new = object.__new__
    cls = TokenSeries
    setters = tuple(getattr(cls, n).__set__ for n in names)
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11 = setters

    def make(
        source: str,
        series: str,
        role: TokenRole,
        token_type: TokenType,
        model: str,
        provider: str | None,
        tenant: str | None,
        namespace: str | None,
        pod: str | None,
        kind: Literal["tokens", "spend_usd"],
        from_zero: bool,
        origin: str | None,
    ) -> TokenSeries:
        o = new(cls)
        s0(o, source)
        s1(o, series)
        s2(o, role)
        s3(o, token_type)
        s4(o, model)
        s5(o, provider)
        s6(o, tenant)
        s7(o, namespace)
        s8(o, pod)
        s9(o, kind)
        s10(o, from_zero)
        s11(o, origin)
        return o

    return make


_new_series = _fast_series()


_INF = math.inf
_NAN = math.nan
NameRuns = list[tuple[str, int, int]]
"""``(name, start, stop)``: the series of one read, cut where the name changes."""


def name_runs(series: Sequence[_Series]) -> NameRuns:
    """The runs of one name in ``series`` (a page keeps a family's lines together, so there
    are a few: observations are then made a run at a time, not sample by sample)."""
    runs: NameRuns = []
    start = 0
    name: str | None = None
    for i, s in enumerate(series):
        if s.name is not name:
            if name is not None:
                runs.append((name, start, i))
            name, start = s.name, i
    if name is not None:
        runs.append((name, start, len(series)))
    return runs


Group = tuple[Sequence[_Series], Sequence[float], NameRuns, str | None]
"""One scrape target's (or the one query's) series, values, :func:`name_runs` and origin."""


def _pairing(
    minuends: Sequence[tuple[Sequence[_Series], Sequence[float]]],
    subtrahends: Sequence[tuple[Sequence[_Series], Sequence[float]]],
) -> tuple[tuple[str, ...], dict[tuple[str, ...], float]]:
    """The labels a metric and its ``subtract`` partner are paired on (:func:`_pairing_on`)
    and the partner's values summed per key (finite, non-negative ones)."""
    on = _pairing_on([s for s, _ in minuends], [s for s, _ in subtrahends])
    minus: dict[tuple[str, ...], float] = {}
    for series, values in subtrahends:
        for s, v in zip(series, values, strict=True):
            if 0.0 <= v < _INF and s.labels.skipped is None:
                k = s.labels.key_on(on)
                minus[k] = minus.get(k, 0.0) + v
    return on, minus


def _pairing_on(
    minuends: Sequence[Sequence[_Series]], subtrahends: Sequence[Sequence[_Series]]
) -> tuple[str, ...]:
    """The labels a metric and its ``subtract`` partner are paired on — those both families
    carry (LiteLLM's cached-token counter lacks ``org_id``/``org_alias``; target labels are
    on both)."""
    mine: dict[int, tuple[str, ...]] = {}
    theirs: dict[int, tuple[str, ...]] = {}
    for runs, names in ((minuends, mine), (subtrahends, theirs)):
        for series in runs:
            found = list(map(_label_names, series))  # a few distinct tuples, by identity
            names.update(zip(map(id, found), found, strict=True))
    shared = {n for t in mine.values() for n in t} & {n for t in theirs.values() for n in t}
    on = tuple(sorted(shared))
    on = _PAIRINGS.setdefault(on, on)
    if len(_PAIRINGS) > 256:  # label names change rarely; never let the memo grow unbounded
        _PAIRINGS.clear()
    return on


_label_names = attrgetter("labels.names")
# Pairing label tuples by value, so that each _LabelSet's key memo is kept between refreshes.
_PAIRINGS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _observe(
    source: str,
    groups: Iterable[Group],
    mapping: TokenMapping,
    from_zero: bool = False,
) -> tuple[TokenObservation, ...]:
    """:func:`observations_from_samples` on series worked out beforehand: ``groups`` are the
    series, values, :func:`name_runs` and origin of each scrape target (or of the one query),
    in order. A metric is paired with its ``subtract`` partner within one group."""
    by_name: dict[str, list[tuple[Sequence[_Series], Sequence[float], int]]] = {}
    origins: list[str | None] = []
    for g, (series, values, name_spans, origin) in enumerate(groups):
        origins.append(origin)
        for name, start, stop in name_spans:
            by_name.setdefault(name, []).append((series[start:stop], values[start:stop], g))
    out: list[TokenObservation] = []
    append = out.append
    role = mapping.role
    new_observation = _new_observation
    for i, m in enumerate(mapping.metrics):
        chosen = next((n for n in (m.metric, *m.older_names) if n in by_name), None)
        if chosen is None:
            continue
        kind: Literal["tokens", "spend_usd"] = "spend_usd" if m.kind == "spend_usd" else "tokens"
        for g, origin in enumerate(origins):
            mine = [(s, v) for s, v, gg in by_name[chosen] if gg == g]
            if not mine:
                continue
            minus: dict[tuple[str, ...], float] = {}
            on: tuple[str, ...] = ()
            if m.subtract:
                partner = [(s, v) for s, v, gg in by_name.get(m.subtract, ()) if gg == g]
                if partner:
                    on, minus = _pairing(mine, partner)
            shares: dict[tuple[str, ...], float] = {}
            if minus:
                # Where several series meet one partner (the partner has fewer labels than
                # the labels that tell them apart), it is split in proportion to their values.
                for series, values in mine:
                    for s, raw in zip(series, values, strict=True):
                        labels = s.labels
                        if (
                            0.0 <= raw < _INF
                            and labels.skipped is None
                            and labels.token_types[i]
                            and labels.model
                        ):
                            k = labels.key_on(on)
                            if k in minus:
                                shares[k] = shares.get(k, 0.0) + raw
            for series, values in mine:
                for s, raw in zip(series, values, strict=True):
                    if not 0.0 <= raw < _INF:  # NaN, ±Inf; a counter is never negative
                        continue
                    labels = s.labels
                    if labels.skipped is not None:
                        continue
                    token_type = labels.token_types[i]
                    if token_type is None or labels.model is None:
                        continue
                    value = raw
                    if minus:
                        k = labels.key_on(on)
                        c = minus.get(k)
                        if c is not None:
                            total = shares[k]
                            value = max(0.0, raw - c * (raw / total)) if total > 0 else 0.0
                    last = s.last
                    if (
                        last is not None
                        and last.value == value
                        and last.token_type == token_type
                        and last.kind == kind
                        and last.role == role
                        and last.source == source
                        and last.from_zero is from_zero
                        and last.origin == origin
                        and (value or math.copysign(1.0, value) == math.copysign(1.0, last.value))
                    ):
                        append(last)
                        continue
                    s.last = obs = new_observation(
                        source,
                        s.digest,
                        role,
                        token_type,
                        labels.model,
                        value,
                        labels.provider,
                        labels.tenant,
                        labels.namespace,
                        labels.pod,
                        kind,
                        from_zero,
                        origin,
                    )
                    append(obs)
    return tuple(out)


class _Columns:
    """A scraped source's reads as :class:`TokenColumns`: the rows :func:`_observe` would
    make (its order, its filters but the value's) as a :class:`TokenTable` worked out when
    the series change, and each read's values computed with array operations from the
    pages' values (the ``subtract`` pairing included, summed in :func:`_observe`'s order).

    A row's value is NaN where :func:`_observe` makes no observation for the reading (NaN,
    ±Inf or negative on the page); otherwise exactly :func:`_observe`'s value. While every
    target's series list is the one of the last read (a :class:`SeriesReader` hands back the
    same list for the same series) the table is the last read's: the same object."""

    __slots__ = ("_lists", "_origins", "_pairs", "_table", "_take", "mapping", "source")

    def __init__(self, source: str, mapping: TokenMapping) -> None:
        self.source = source
        self.mapping = mapping
        self._lists: tuple[Sequence[_Series], ...] = ()
        self._origins: tuple[str | None, ...] = ()
        self._table = TokenTable(())
        self._take: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        # Per paired (metric, group): the minuend rows and their key codes, the partner
        # samples (indices into the read's values) and their key codes, the number of keys.
        self._pairs: list[
            tuple[
                npt.NDArray[np.intp],
                npt.NDArray[np.intp],
                npt.NDArray[np.intp],
                npt.NDArray[np.intp],
                int,
            ]
        ] = []

    def __call__(self, groups: Sequence[Group]) -> TokenColumns:
        lists = tuple(g[0] for g in groups)
        origins = tuple(g[3] for g in groups)
        if (
            origins != self._origins
            or len(lists) != len(self._lists)
            or not all(map(is_, lists, self._lists))
        ):
            self._plan(groups)
            self._lists, self._origins = lists, origins
        parts = [np.asarray(g[1], dtype=np.float64) for g in groups]
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0)])
        out = raw[self._take]
        with np.errstate(invalid="ignore", divide="ignore"):
            bad = ~((out >= 0.0) & (out < _INF))
            for rows, codes, partners, partner_codes, size in self._pairs:
                pv = raw[partners]
                ok = (pv >= 0.0) & (pv < _INF)
                has = np.bincount(partner_codes[ok], minlength=size) > 0
                if not has.any():
                    continue  # no partner reading: the raw values stand
                minus = np.bincount(partner_codes[ok], weights=pv[ok], minlength=size)
                mv = out[rows]
                mine = (mv >= 0.0) & (mv < _INF) & has[codes]
                shares = np.bincount(codes[mine], weights=mv[mine], minlength=size)
                r = mv[mine]
                c = minus[codes[mine]]
                total = shares[codes[mine]]
                x = r - c * (r / total)
                # max(0.0, x) is x only where x > 0 (NaN included: 0).
                out[rows[mine]] = np.where(total > 0, np.where(x > 0.0, x, 0.0), 0.0)
        out[bad] = _NAN
        return TokenColumns(self._table, out)

    def _plan(self, groups: Sequence[Group]) -> None:
        """The rows, in :func:`_observe`'s order, and what their values are taken from."""
        by_name: dict[str, list[tuple[int, int, int]]] = {}
        offsets: list[int] = []
        at = 0
        for g, (series, _, name_spans, _) in enumerate(groups):
            offsets.append(at)
            at += len(series)
            for name, start, stop in name_spans:
                by_name.setdefault(name, []).append((g, start, stop))
        m_role = self.mapping.role
        source = self.source
        make = _new_series
        rows: list[TokenSeries] = []
        take: list[int] = []
        pairs: list[Any] = []
        for i, m in enumerate(self.mapping.metrics):
            chosen = next((n for n in (m.metric, *m.older_names) if n in by_name), None)
            if chosen is None:
                continue
            kind: Literal["tokens", "spend_usd"] = (
                "spend_usd" if m.kind == "spend_usd" else "tokens"
            )
            for g, group in enumerate(groups):
                series, origin = group[0], group[3]
                mine = [(a, b) for gg, a, b in by_name[chosen] if gg == g]
                if not mine:
                    continue
                partner = (
                    [(a, b) for gg, a, b in by_name.get(m.subtract, ()) if gg == g]
                    if m.subtract
                    else []
                )
                on: tuple[str, ...] | None = None
                if partner:
                    on = _pairing_on(
                        [series[a:b] for a, b in mine], [series[a:b] for a, b in partner]
                    )
                codes: dict[tuple[str, ...], int] = {}
                first = len(rows)
                mine_codes: list[int] = []
                offset = offsets[g]
                for a, b in mine:
                    for j in range(a, b):
                        s = series[j]
                        labels = s.labels
                        if labels.skipped is not None:
                            continue
                        token_type = labels.token_types[i]
                        model = labels.model
                        if token_type is None or model is None:
                            continue
                        # The series' row, the same object as last time while nothing in it
                        # changed (its labels' fields are fixed for the series' life).
                        row = s.row
                        if (
                            row is None
                            or row.token_type != token_type
                            or row.kind != kind
                            or row.origin != origin
                            or row.role != m_role
                            or row.source != source
                        ):
                            row = s.row = make(
                                source,
                                s.digest,
                                m_role,
                                token_type,
                                model,
                                labels.provider,
                                labels.tenant,
                                labels.namespace,
                                labels.pod,
                                kind,
                                False,
                                origin,
                            )
                        rows.append(row)
                        take.append(offset + j)
                        if on is not None:
                            k = labels.key_on(on)
                            mine_codes.append(codes.setdefault(k, len(codes)))
                if on is None:
                    continue
                p_idx: list[int] = []
                p_codes: list[int] = []
                for a, b in partner:
                    for j in range(a, b):
                        s = series[j]
                        if s.labels.skipped is None:
                            k = s.labels.key_on(on)
                            p_idx.append(offsets[g] + j)
                            p_codes.append(codes.setdefault(k, len(codes)))
                pairs.append(
                    (
                        np.arange(first, len(rows), dtype=np.intp),
                        np.array(mine_codes, dtype=np.intp),
                        np.array(p_idx, dtype=np.intp),
                        np.array(p_codes, dtype=np.intp),
                        len(codes),
                    )
                )
        self._table = TokenTable(rows)
        self._take = np.array(take, dtype=np.intp)
        self._pairs = pairs


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


class TokenRead(tuple[TokenItem, ...]):
    """A token source's observations (or, scraped, its read's :class:`TokenColumns`), with
    the origins it read (:class:`TokenInputs` ``sources``): a target read empty is an origin
    all the same."""

    origins: frozenset[str]

    def __new__(cls, observations: Iterable[TokenItem], origins: Iterable[str]) -> TokenRead:
        self = super().__new__(cls, observations)
        self.origins = frozenset(origins)
        return self


def target_display(url: str) -> str:
    """A scrape target as shown in self-metrics and logs: host, port and path, never the
    user info or the query (where credentials hide)."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "invalid-url"
    port = f":{u.port}" if u.port is not None else ""
    return f"{u.host}{port}{u.path}"


@dataclass(slots=True)
class _Target:
    """One scrape target's state: its origin, what it last gave and whether that read
    worked. A failed target keeps giving its last good read for the source's
    ``stale_after_seconds``; the others are read as usual."""

    url: str
    labels: Mapping[str, str]
    origin: str
    display: str
    up: bool = False
    reason: str | None = None
    good: Group | None = None
    good_at: float = 0.0
    skipped: int = 0
    logged: str | None = None


class TokenSource:
    """One configured token source (``tokens.sources[]``), named ``tokens:<name>``.

    In ``mode: scrape`` each target's page is read by a :class:`SeriesReader` kept for the
    life of the source: a series is parsed and mapped (digest, model, tenant, ...) when it
    first appears, and a later refresh only reads its new value (an order of magnitude less
    CPU on a large LiteLLM page: bench/README.md). A read is handed over as
    :class:`TokenColumns` (:class:`_Columns`): the same table object while the pages' series
    stay, with this read's values. Each target is its own
    origin (with more than one): one that cannot be read is marked down alone
    (``aifinops_token_target_up``) and keeps its last good read until the source's
    ``stale_after_seconds``; the source fails only when every target does. A series that
    cannot be read is skipped and counted (``aifinops_token_series_skipped_total``), once per
    read, never the source down.
    """

    def __init__(
        self,
        settings: TokenSourceSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        run: CpuRunner,
    ) -> None:
        self._settings = settings
        self._mapping = mapping_for(settings)
        self._clock = clock
        self.name = f"tokens:{settings.name}"
        self.slot = Slot.TOKENS
        self.local = False
        self.min_interval_seconds = 0.0
        # A counter's first value is mostly a baseline (model/tokens.py counter_increments)
        # and counters lose nothing by being read a cycle later: the first cycle need not
        # wait for this read (the coldest and heaviest at fleet scale).
        self.first_read_baseline = True
        # Its scrape targets' health (aifinops_token_target_up): this source reports it.
        self.targets: ScrapeTargets | None = self
        self._transport = Transport(self.name, settings, run)
        wanted = self._mapping.wanted()
        self._readers: list[SeriesReader[_Series]] = [
            SeriesReader(wanted) for _ in settings.scrape_targets
        ]
        # Per target: the series list of the last read, its name runs and skipped series (a
        # reader hands back the same list while the page holds the same series).
        self._runs: list[tuple[list[_Series], NameRuns, int]] = [
            ([], [], 0) for _ in settings.scrape_targets
        ]
        several = len(settings.scrape_targets) > 1
        self._targets = [
            _Target(
                t.url,
                t.labels,
                f"{self.name}#{target_display(t.url)}" if several else self.name,
                target_display(t.url),
            )
            for t in settings.scrape_targets
        ]
        # mode: prometheus: the series of the last answer, by their labels' text.
        self._queried: dict[str, _Series] = {}
        self._columns = _Columns(self.name, self._mapping)
        self.skipped_total = 0
        self._skipped_logged = 0

    @property
    def mapping(self) -> TokenMapping:
        return self._mapping

    def target_status(self) -> list[tuple[str, bool]]:
        """(target as shown, whether its last read worked) per scrape target."""
        return [(t.display, t.up) for t in self._targets]

    async def fetch(self, client: httpx.AsyncClient) -> TokenRead:
        s = self._settings
        headers = self._transport.headers()
        if s.mode == "prometheus":
            malformed = [0]
            series = await self._transport.query(
                client, token_query(self._mapping.wanted(), s.selector), headers, skipped=malformed
            )
            samples = [(labels.get("__name__", ""), labels, value) for labels, value in series]
            # Pure Python over every series: off the event loop (see aifinops.offload).
            observed = await self._transport.run(self._observe_query, samples, malformed[0])
            return TokenRead(observed, (self.name,))
        results = await asyncio.gather(
            *(
                self._scrape(client, i, t.url, t.labels, headers)
                for i, t in enumerate(self._targets)
            ),
            return_exceptions=True,
        )
        now = self._clock()
        groups: list[Group] = []
        failed: list[SourceError] = []
        for t, result in zip(self._targets, results, strict=True):
            if isinstance(result, SourceError):
                failed.append(result)
                t.up, t.reason = False, result.reason
                if t.good is not None and now - t.good_at <= s.stale_after_seconds:
                    groups.append(t.good)
                else:
                    t.good = None
                continue
            if isinstance(result, BaseException):
                raise result
            read, values, spans, skipped = result
            t.up, t.reason = True, None
            good: Group = (read, values, spans, t.origin)
            t.good, t.good_at, t.skipped = good, now, skipped
            groups.append(good)
        if failed and len(failed) == len(self._targets):
            for t in self._targets:
                t.logged = None  # the refresh loop logs the source's own state change
            raise failed[0]
        self._log_targets()
        self._count_skipped(sum(t.skipped for t in self._targets if t.up))
        columns = await self._transport.run(self._columns, groups)
        return TokenRead((columns,), (g[3] or self.name for g in groups))

    def _log_targets(self) -> None:
        """One line per change of a target's state while the source is up (a source that is
        down as a whole is logged by the refresh loop)."""
        for t in self._targets:
            state = "up" if t.up else f"down:{t.reason}"
            if state == t.logged or (t.logged is None and t.up):
                t.logged = state
                continue
            if t.up:
                log.info("token_target_up", source=self.name, target=t.display)
            else:
                log.warning(
                    "token_target_down", source=self.name, target=t.display, reason=t.reason
                )
            t.logged = state

    def _count_skipped(self, skipped: int) -> None:
        """Count this read's unreadable series; log when their number changes (a line, not a
        traceback per refresh)."""
        self.skipped_total += skipped
        if skipped != self._skipped_logged:
            log.warning("token_series_skipped", source=self.name, series=skipped)
            self._skipped_logged = skipped

    async def _scrape(
        self,
        client: httpx.AsyncClient,
        index: int,
        url: str,
        target_labels: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> tuple[list[_Series], list[float], NameRuns, int]:
        # Parsed on the CPU worker as it arrives (the first read of a large page parses
        # every series; later ones only read new values), never held whole.
        return await self._transport.stream_page(
            client, url, headers, self._open(index, target_labels), where=target_display(url)
        )

    def _observe_query(
        self, samples: Iterable[Sample], malformed: int = 0
    ) -> tuple[TokenObservation, ...]:
        """``observations_from_samples`` for an instant query's answer, reusing the series of
        the last answer: a steady answer costs a ``join`` and a look-up per sample, not the
        mapping. A series is known by its labels as they came (``name=value``, NUL-separated,
        in the answer's order, which Prometheus keeps sorted); only where that text splits
        back into exactly those pairs (no NUL anywhere, no '=' in a value)."""
        build = _SeriesBuilder(self._mapping, {})
        known = self._queried
        kept: dict[str, _Series] = {}
        series: list[_Series] = []
        values: list[float] = []
        skipped = malformed  # elements the answer's parse left out
        for name, labels, value in samples:
            try:
                key = "\0".join(map("=".join, labels.items()))
            except _MALFORMED:
                series.append(build._skipped(name))
                values.append(value)
                skipped += 1
                continue
            found = known.get(key)
            if found is None:
                found = build.own(name, labels)
                n = len(labels)
                if key.count("\0") == n - 1 and key.count("=") == n:
                    kept[key] = found
            else:
                kept[key] = found
            skipped += found.labels is _SKIPPED
            series.append(found)
            values.append(value)
        self._queried = kept
        self._count_skipped(skipped)
        return _observe(self.name, ((series, values, name_runs(series), None),), self._mapping)

    def _open(self, index: int, target_labels: Mapping[str, str]) -> _PageRead:
        """A read of target ``index``'s page, fed as it arrives."""
        several = len(self._targets) > 1
        builder = _SeriesBuilder(
            self._mapping, target_labels, self._targets[index].display if several else ""
        )
        return _PageRead(self, index, self._readers[index].stream(builder.row))

    def _runs_of(
        self, index: int, series: list[_Series], values: list[float]
    ) -> tuple[list[_Series], list[float], NameRuns, int]:
        known, runs, skipped = self._runs[index]
        if series is not known:
            runs = name_runs(series)
            skipped = sum(1 for s in series if s.labels is _SKIPPED)
            self._runs[index] = (series, runs, skipped)
        return series, values, runs, skipped


class _PageRead:
    """One target's page read as it arrives (``Transport.stream_page``): its
    :class:`SeriesReader`'s streamed read, then the series' name runs."""

    __slots__ = ("_index", "_page", "_source")

    def __init__(self, source: TokenSource, index: int, page: PageRead[_Series]) -> None:
        self._source = source
        self._index = index
        self._page = page

    def feed(self, data: bytes) -> None:
        self._page.feed(data)

    def finish(self) -> tuple[list[_Series], list[float], NameRuns, int]:
        series, values = self._page.finish()
        return self._source._runs_of(self._index, series, values)
