"""The OpenAPI document: valid, complete (every /api route of the app), and the app answers
no generated request — valid or not — with a 5xx (schemathesis against the running app)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator

from aifinops.demo.finance import finance_config
from aifinops.demo.run import merge_config, start_demo_upstreams
from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from aifinops.web.openapi import openapi_document
from tests.web.api.conftest import T0
from tests.web.conftest import Clock

# 8 operations x 2 modes x 25 = 400 requests at most (AIFINOPS_FUZZ_EXAMPLES for more)
EXAMPLES_PER_OPERATION_AND_MODE = int(os.environ.get("AIFINOPS_FUZZ_EXAMPLES", "25"))


def test_document_is_valid_openapi_31():
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    # every $ref resolves inside the document
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for path, item in doc["paths"].items():
        for op in item.values():
            assert op["operationId"] and op["responses"], path


async def test_document_lists_every_api_route(finance_demo):
    resp = await finance_demo.client.get("/api/v1/openapi.json")
    doc = await resp.json()
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in finance_demo.client.app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/api/")
        and r.method != "HEAD"
    }
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert routes == documented
    # the start_demo_app config has push disabled: no usage route, and none documented
    assert ("post", "/api/v1/usage") not in documented


class ServedDemo:
    """The full demo and the exporter app served on 127.0.0.1 from a thread of its own, so
    synchronous clients (schemathesis uses requests) can call it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.base_url = ""
        self._stop: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        clock = Clock(T0)
        ups = await start_demo_upstreams(clock=clock)
        config = merge_config(ups.config(), finance_config(ups.cluster.sim, T0))
        app = create_app(settings_from_mapping(config), clock=clock, run_loop=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await app[REFRESHER].refresh_once()
        clock.now = T0 + 600
        await app[REFRESHER].refresh_once()
        self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"

        async def stop() -> None:
            await runner.cleanup()
            await ups.close()

        self._stop = stop

    def __enter__(self) -> ServedDemo:
        self.thread.start()
        assert self.ready.wait(60), "the demo did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def served() -> Iterator[ServedDemo]:
    with ServedDemo() as demo:
        yield demo


def fuzz(operation: Any, mode: Any, base_url: str, seen: dict[str, set[int]]) -> Any:
    """A Hypothesis test calling ``operation`` with generated ``mode`` cases."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=30)
        seen.setdefault(operation.label, set()).add(response.status_code)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        )
        if response.status_code >= 400 and operation.path != "/api/v1/usage":
            error = response.json()["error"]
            assert set(error) == {"code", "message", "field"}

    return call


def test_schemathesis_finds_no_server_error(served):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode

    with urllib.request.urlopen(f"{served.base_url}/api/v1/openapi.json") as resp:
        doc = json.load(resp)
    assert "/api/v1/usage" in doc["paths"]  # push is on in the full demo
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8
    seen: dict[str, set[int]] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, served.base_url, seen)()
            except Unsatisfiable:
                # an operation without parameters or body has no invalid variant
                assert mode == GenerationMode.NEGATIVE, operation.label
    # every operation answered something, and the valid cases were not all refused
    assert set(seen) == {op.label for op in operations}
    never_ok = {label: sorted(codes) for label, codes in seen.items() if min(codes) >= 300}
    assert not never_ok
