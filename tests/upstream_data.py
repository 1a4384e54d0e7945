"""Recorded upstream data shared by the model and source tests: the real LiteLLM price subset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aifinops.model.llm_prices import LlmPriceCatalog, build_catalog, parse_litellm_prices

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PRICE_SUBSET = FIXTURES / "litellm_model_prices_subset.json"
VLLM_SAMPLE = FIXTURES / "vllm_metrics_v0_aibrix_runtime_doc.txt"


def price_subset() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PRICE_SUBSET.read_text())
    return data


def price_catalog() -> LlmPriceCatalog:
    return build_catalog(parse_litellm_prices(price_subset()), "test")
