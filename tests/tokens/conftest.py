"""Shared helpers for token tests: the real LiteLLM price subset and small builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aifinops.model.llm_prices import LlmPriceCatalog, build_catalog, parse_litellm_prices

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PRICE_SUBSET = FIXTURES / "litellm_model_prices_subset.json"
VLLM_SAMPLE = FIXTURES / "vllm_metrics_v0_aibrix_runtime_doc.txt"


def price_subset() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PRICE_SUBSET.read_text())
    return data


@pytest.fixture(scope="session")
def catalog() -> LlmPriceCatalog:
    return build_catalog(parse_litellm_prices(price_subset()), "test")
