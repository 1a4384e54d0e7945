"""The push API (``POST /api/v1/usage``) and the web configuration file: any body gives one of
the documented answers (never a 500), any schema violation a ValidationError, any web config
text a WebConfig or a ConfigError."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from aifinops.settings import ConfigError, settings_from_mapping
from aifinops.usage import UsageBatch, UsageRejected, UsageStore
from aifinops.web.app import create_app
from aifinops.web.security import parse_web_config
from tests.faults.rig import LoopThread
from tests.fuzz.conftest import FUZZ, FUZZ_HTTP, tried
from tests.fuzz.strategies import json_values, loose_numbers, mutated

records = st.fixed_dictionaries(
    {},
    optional={
        "tenant": st.text(max_size=20) | st.sampled_from(["a", "__idle__", "x@y.io", "None"]),
        "model": st.text(max_size=20) | st.just("gpt-4o"),
        "provider": st.none() | st.text(max_size=10),
        "input_tokens": loose_numbers,
        "output_tokens": st.integers(-5, 10**12),
        "cached_input_tokens": st.integers(0, 10),
        "record_id": st.none() | st.text(max_size=6),
        "timestamp": st.none() | st.text(max_size=25) | st.floats(),
        "extra": json_values,
    },
)
batches = st.fixed_dictionaries({"records": st.lists(records | json_values, max_size=5)}) | (
    json_values
)


@FUZZ
@given(batches)
def test_usage_schema_and_store(doc: Any) -> None:
    tried("push.UsageBatch+UsageStore")
    try:
        batch = UsageBatch.model_validate(doc)
    except ValidationError:
        return
    store = UsageStore(max_series=20, max_tokens_per_record=10**9)
    try:
        store.apply(batch)
    except UsageRejected as exc:
        assert exc.status == 422
        return
    for obs in store.snapshot():
        assert obs.value >= 0 and obs.tenant and not obs.tenant.startswith("__")


@pytest.fixture(scope="module")
def push_url() -> Iterator[str]:
    loop = LoopThread()
    settings = settings_from_mapping(
        {"tokens": {"push": {"enabled": True, "max_body_bytes": 4096, "rate_limit_per_second": 0}}}
    )

    async def start() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(create_app(settings, run_loop=False))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/usage"

    runner, url = loop.call(start())
    try:
        yield url
    finally:
        loop.call(runner.cleanup())
        loop.stop()


ANSWERS = {202: None, 400: "invalid_json", 413: None, 422: None}


@FUZZ_HTTP
@given(
    st.binary(max_size=300)
    | batches.map(lambda d: json.dumps(d).encode()).flatmap(mutated)
    | st.binary(min_size=5000, max_size=6000),
    st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x"]),
)
def test_push_endpoint_answers(push_url: str, body: bytes, content_type: str) -> None:
    tried("push.http")
    resp = httpx.post(push_url, content=body, headers={"Content-Type": content_type}, timeout=10)
    assert resp.status_code in ANSWERS, (resp.status_code, resp.text)
    doc = resp.json()
    if resp.status_code != 202:
        assert doc["error"] in {
            "invalid_json",
            "invalid_record",
            "body_too_large",
            "too_many_records",
            "too_many_tokens",
            "series_limit",
        }


web_docs = st.fixed_dictionaries(
    {},
    optional={
        "basic_auth_users": st.dictionaries(
            st.text(max_size=8),
            st.text(max_size=20)
            | st.sampled_from(["$2b$04$abcdefghijklmnopqrstuu", "$2y$", "$2b$04$" + "a" * 53])
            | json_values,
            max_size=3,
        )
        | json_values,
        "tls_server_config": st.fixed_dictionaries(
            {},
            optional={
                "cert_file": st.text(max_size=10),
                "key_file": st.text(max_size=10),
                "min_version": st.sampled_from(["TLS12", "TLS13", "TLS10"]),
            },
        )
        | json_values,
        "http_server_config": json_values,
    },
)


# Certificate paths with a NUL or a lone surrogate were a ValueError (found by this suite).
@FUZZ
@given(st.text(max_size=200) | web_docs.map(lambda d: json.dumps(d)))
@example('{"tls_server_config": {"cert_file": "\\u0000", "key_file": "k"}}')
@example('{"tls_server_config": {"cert_file": "\\ud800", "key_file": "k"}}')
def test_web_config(text: str) -> None:
    tried("security.parse_web_config")
    with contextlib.suppress(ConfigError):
        parse_web_config(text, "web.yml")
