"""The JSON parsers (Prometheus API vector, OpenCost allocations and daily sets, the LiteLLM
price file) on arbitrary bytes, arbitrary JSON and near-valid documents: a result whose
numbers are sane, or the documented error, never anything else."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from aifinops.model.inputs import AllocationSet
from aifinops.model.llm_prices import LlmPriceError, parse_litellm_prices
from aifinops.sources.base import REASONS, SourceError
from aifinops.sources.llm_prices import load_catalog
from aifinops.sources.opencost import parse_allocation_response, parse_allocation_sets
from aifinops.sources.promapi import parse_vector
from tests.fuzz.conftest import FUZZ, tried
from tests.fuzz.strategies import json_values, labelsets, loose_numbers, mutated


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def bodies(near_valid: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    docs = near_valid.map(dumps)
    return st.binary(max_size=200) | json_values.map(dumps) | docs | docs.flatmap(mutated)


def expect_source_error(exc: SourceError) -> None:
    assert exc.reason in REASONS
    assert str(exc)


# --- Prometheus API ----------------------------------------------------------------------------
vector_items = st.fixed_dictionaries(
    {
        "metric": labelsets | json_values,
        "value": st.lists(loose_numbers, max_size=3)
        | st.tuples(st.floats(), st.text(max_size=10)).map(list),
    }
)
vectors = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["success", "error", None]),
        "data": st.fixed_dictionaries(
            {
                "resultType": st.sampled_from(["vector", "matrix", "scalar"]),
                "result": st.lists(vector_items, max_size=5) | json_values,
            }
        )
        | json_values,
    }
)


# msgspec raises UnicodeDecodeError (not its DecodeError) for invalid UTF-8 in a string:
# these escaped the fast paths' except clauses (found by this suite).
@FUZZ
@given(bodies(vectors))
@example(b'"\x80"')
@example(b'{"status":"\x80"}')
def test_prometheus_vector(body: bytes) -> None:
    tried("promapi.parse_vector")
    try:
        series = parse_vector(body)
    except SourceError as exc:
        expect_source_error(exc)
        return
    for labels, value in series:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        assert isinstance(value, float)


# --- OpenCost ----------------------------------------------------------------------------------
COST_FIELDS = [
    "cpuCost",
    "gpuCost",
    "ramCost",
    "pvCost",
    "networkCost",
    "loadBalancerCost",
    "sharedCost",
    "externalCost",
    "cpuCostAdjustment",
    "gpuCostAdjustment",
    "ramCostAdjustment",
    "minutes",
    "gpuHours",
    "gpuCount",
    "gpuRequestAverage",
    "gpuUsageAverage",
    "totalCost",
]
rows = st.fixed_dictionaries(
    {},
    optional={
        **{f: loose_numbers for f in COST_FIELDS},
        "properties": st.fixed_dictionaries(
            {},
            optional={
                "namespace": st.text(max_size=10) | json_values,
                "pod": st.text(max_size=10),
                "labels": labelsets | json_values,
                "namespaceLabels": labelsets,
            },
        )
        | json_values,
        "gpuAllocation": st.fixed_dictionaries(
            {}, optional={"gpuRequestAverage": loose_numbers, "gpuUsageAverage": loose_numbers}
        )
        | json_values,
        "window": st.fixed_dictionaries(
            {},
            optional={
                "start": st.sampled_from(
                    [
                        "2025-06-01T00:00:00Z",
                        "0001-01-01T00:00:00+14:00",
                        "9999-12-31T23:59:59-14:00",
                        "2025-06-01T00:00:00",
                        "nonsense",
                    ]
                )
                | st.text(max_size=25)
            },
        ),
    },
)
allocation_docs = st.fixed_dictionaries(
    {
        "code": st.sampled_from([200, 200, 500, "200"]),
        "data": st.lists(
            st.dictionaries(st.text(max_size=12), rows | json_values, max_size=4) | st.none(),
            max_size=3,
        )
        | json_values,
    }
)


def check_allocations(a: AllocationSet) -> None:
    for row in a.allocations:
        for f in (
            "cpu_cost",
            "gpu_cost",
            "ram_cost",
            "pv_cost",
            "network_cost",
            "load_balancer_cost",
            "shared_cost",
            "external_cost",
            "minutes",
            "gpu_hours",
            "gpu_count",
        ):
            v = getattr(row, f)
            assert math.isfinite(v) and v >= 0, (f, v)


@FUZZ
@given(bodies(allocation_docs), st.floats(min_value=0.01, max_value=1000))
@example(b'"\x80"', 1.0)
def test_opencost_allocations(body: bytes, hours: float) -> None:
    tried("opencost.parse_allocation_response")
    try:
        result = parse_allocation_response(body, hours)
    except SourceError as exc:
        expect_source_error(exc)
        return
    check_allocations(result)


@FUZZ
@given(bodies(allocation_docs))
@example(b'"\x80"')
@example(b'{"code":200,"data":[{"a\x80":{}}]}')
def test_opencost_daily_sets(body: bytes) -> None:
    tried("opencost.parse_allocation_sets")
    start, end = 1_748_736_000.0, 1_750_000_000.0
    try:
        result = parse_allocation_sets(body, start, end)
    except SourceError as exc:
        expect_source_error(exc)
        return
    for set_start, set_end, allocations in result.sets:
        assert set_end > set_start
        check_allocations(allocations)


# --- LiteLLM price file ------------------------------------------------------------------------
price_entries = st.fixed_dictionaries(
    {},
    optional={
        "input_cost_per_token": loose_numbers,
        "output_cost_per_token": loose_numbers,
        "cache_read_input_token_cost": loose_numbers,
        "litellm_provider": st.text(max_size=10) | json_values,
        "mode": st.text(max_size=10) | json_values,
    },
)
price_docs = st.dictionaries(
    st.text(max_size=30) | st.sampled_from(["sample_spec", "gpt-4o", "azure/gpt-4o"]),
    price_entries | json_values,
    max_size=6,
)


@FUZZ
@given(bodies(price_docs), st.text(max_size=40), st.none() | st.text(max_size=10))
def test_price_file(body: bytes, model: str, provider: str | None) -> None:
    tried("llm_prices.load_catalog")
    try:
        catalog = load_catalog(body, "fuzz")
    except SourceError as exc:
        expect_source_error(exc)
        return
    for price in catalog.entries.values():
        for v in (price.input, price.output, price.cached_input or 0.0):
            assert math.isfinite(v) and v >= 0
    found = catalog.lookup(model, provider)
    assert found is None or found.key in catalog.entries


@FUZZ
@given(price_docs | json_values)
def test_price_map_structure(doc: Any) -> None:
    tried("llm_prices.parse_litellm_prices")
    with contextlib.suppress(LlmPriceError):
        parse_litellm_prices(doc)
