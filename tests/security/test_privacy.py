"""No user identifier, email or API key reaches a label, a log field, /readyz or the status
page — through the real pipeline, with the demo LiteLLM page that carries them
(``hashed_api_key``, ``api_key_alias``, ``user``, ``end_user``, ``user_email``), healthy and
broken."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from aifinops.demo.llm import hash_hex
from tests.faults.rig import start_rig
from tests.web.conftest import T0

PERSONAL_LABELS = ("hashed_api_key", "api_key_alias", "user", "end_user", "user_email")


def personal_values(rig: Any) -> set[str]:
    values = {"alice@example.com"}
    for t in rig.fakes.llm.traffic:
        for key_index in (0, 1):
            values.add(hash_hex(t.tenant, t.model, key_index))
            values.add(f"{t.tenant}-key-{key_index}")
    return values


@pytest.mark.parametrize("mode", ["ok", "truncated", "garbage", "absurd"])
async def test_personal_data_never_leaves_the_source(aiohttp_client: Any, mode: str) -> None:
    rig = await start_rig(aiohttp_client)
    try:
        # the upstream page does carry them
        upstream = (await asyncio.to_thread(httpx.get, f"{rig.fakes.llm_url}/litellm/metrics")).text
        assert all(f'{label}="' in upstream for label in PERSONAL_LABELS)
        assert personal_values(rig) <= {v.split('"')[0] for v in upstream.split('="')[1:]}
        with capture_logs() as logs:
            await rig.refresh(T0)
            if mode != "ok":
                rig.fakes.set("litellm", mode)
            await rig.refresh(T0 + 60)
            rig.fakes.reset("litellm")
            await rig.refresh(T0 + 120)
            outputs = [
                await rig.text(),
                await (await rig.client.get("/readyz")).text(),
                await (await rig.client.get("/")).text(),
                repr(logs),
            ]
            if mode != "ok":
                # while broken, the error is on /readyz and in the log
                rig.fakes.set("litellm", mode)
                await rig.refresh(T0 + 180)
                outputs += [await (await rig.client.get("/readyz")).text(), repr(logs)]
        text = "\n".join(outputs)
        assert "tokens:litellm" in text
        for label in PERSONAL_LABELS:
            assert f'{label}="' not in text, label
        for value in personal_values(rig):
            assert value not in text, value
        # the tenants LiteLLM names are there, by team alias
        assert 'tenant="search"' in outputs[0]
    finally:
        await rig.close()
