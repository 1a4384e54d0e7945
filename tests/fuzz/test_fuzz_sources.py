"""Each source's whole ``fetch`` (HTTP status, body, size cap, parse, mapping) against an
upstream that answers anything: the result, or :class:`SourceError` with a bounded reason."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from aifinops.model.inputs import TokenColumns, token_observations
from aifinops.offload import run_cpu
from aifinops.settings import (
    DcgmSettings,
    LlmPricesSettings,
    OpenCostSettings,
    TokenSourceSettings,
)
from aifinops.sources.base import REASONS, SourceError
from aifinops.sources.dcgm import DcgmSource
from aifinops.sources.llm_prices import LlmPriceSource
from aifinops.sources.opencost import OpenCostSource
from aifinops.sources.tokens import PRESETS, TokenSource, mapping_for, observations_from_samples
from tests.fuzz.conftest import FUZZ, tried
from tests.fuzz.strategies import labelsets, mutated, numbers
from tests.fuzz.test_fuzz_exposition import pages
from tests.fuzz.test_fuzz_json import allocation_docs, dumps, price_docs, vectors

URL = "http://upstream.test"
statuses = st.sampled_from([200, 200, 200, 204, 301, 404, 500, 503])


def answers(docs: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[int, bytes]]:
    return st.tuples(statuses, st.binary(max_size=200) | docs | docs.flatmap(mutated))


def fetch(source: Any, status: int, body: bytes) -> Any:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    async def run() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await source.fetch(client)

    return asyncio.run(run())


def outcome(source: Any, status: int, body: bytes) -> Any:
    try:
        return fetch(source, status, body)
    except SourceError as exc:
        assert exc.reason in REASONS
        return None


text_pages = pages().map(str.encode)
json_vectors = vectors.map(dumps)

DCGM = [
    DcgmSettings(mode="prometheus", prometheus_url=URL, max_response_bytes=4096),
    DcgmSettings(mode="scrape", scrape_urls=(f"{URL}/a", f"{URL}/b"), max_response_bytes=4096),
]


@FUZZ
@given(st.sampled_from(DCGM), answers(text_pages | json_vectors))
def test_dcgm_fetch(settings: DcgmSettings, answer: tuple[int, bytes]) -> None:
    tried("dcgm.fetch")
    samples = outcome(DcgmSource(settings, run=run_cpu), *answer)
    for s in samples or ():
        assert 0.0 <= s.utilization <= 1.0


@FUZZ
@given(answers(allocation_docs.map(dumps)))
def test_opencost_fetch(answer: tuple[int, bytes]) -> None:
    tried("opencost.fetch")
    result = outcome(
        OpenCostSource(OpenCostSettings(url=URL, max_response_bytes=4096), run=run_cpu), *answer
    )
    if result is not None:
        assert result.allocations, "an empty answer is an error, not an empty cluster"


TOKEN_SETTINGS = [
    TokenSourceSettings(
        name=f"{preset}-{mode}",
        preset=preset,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        prometheus_url=URL,
        scrape_targets=({"url": URL, "labels": {"namespace": "ns", "pod": "p"}},),  # type: ignore[arg-type]
        model="m" if preset == "tgi" else None,
        max_response_bytes=4096,
    )
    for preset in ("vllm", "litellm", "otel_genai", "tgi")
    for mode in ("prometheus", "scrape")
]


@FUZZ
@given(st.sampled_from(TOKEN_SETTINGS), answers(text_pages | json_vectors))
def test_token_fetch(settings: TokenSourceSettings, answer: tuple[int, bytes]) -> None:
    tried("tokens.fetch")
    read = outcome(TokenSource(settings, run=run_cpu), *answer) or ()
    for item in read:
        if isinstance(item, TokenColumns):  # no reading: NaN; else what an observation holds
            assert len(item.values) == len(item.table.rows)
            assert all(math.isnan(v) or (math.isfinite(v) and v >= 0) for v in item.values)
    for obs in token_observations(read):
        assert math.isfinite(obs.value) and obs.value >= 0


@FUZZ
@given(answers(price_docs.map(dumps)))
def test_price_url_fetch(answer: tuple[int, bytes]) -> None:
    tried("llm_prices.fetch")
    outcome(LlmPriceSource(LlmPricesSettings(url=URL, max_response_bytes=4096)), *answer)


@FUZZ
@given(
    st.sampled_from(sorted(set(PRESETS) - {"custom"})),
    st.lists(
        st.tuples(
            st.sampled_from(sorted({n for p in PRESETS.values() for n in p.wanted()})),
            labelsets,
            numbers.map(float),
        ),
        max_size=12,
    ),
)
def test_token_mapping(preset: str, samples: list[Any]) -> None:
    """Whatever the labels: counts are finite and non-negative, and no email, API key hash or
    user name becomes a tenant, model or provider."""
    tried("tokens.observations_from_samples")
    mapping = PRESETS[preset]
    if preset == "tgi":
        mapping = mapping_for(
            TokenSourceSettings(name="t", preset="tgi", prometheus_url=URL, model="m")
        )
    personal = {
        v
        for _, labels, _ in samples
        for k, v in labels.items()
        if k in ("hashed_api_key", "user", "end_user", "user_email", "api_key_alias")
    }
    for obs in observations_from_samples("tokens:x", samples, mapping):
        assert math.isfinite(obs.value) and obs.value >= 0
        for field in (obs.tenant, obs.model, obs.provider):
            assert field is None or "@" not in field or "." not in field.split("@")[-1]
            # the same string may legitimately be in a mapped label too; only a value that
            # came from nowhere else than a personal label would be a leak
            if field in personal:
                assert any(
                    field in (lbl.get(k) or "")
                    for _, lbl, _ in samples
                    for k in (
                        *mapping.tenant_labels,
                        *mapping.model_labels,
                        *mapping.provider_labels,
                    )
                ) or field in (mapping.model, mapping.provider, mapping.tenant)
