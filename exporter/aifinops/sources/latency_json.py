"""Scratch source (issue 15, item 7 check): measured p95 latency from a JSON document
``{"<model>|<provider>": seconds, ...}`` at ``url``."""

from __future__ import annotations

import httpx

from aifinops.settings import LatencyJsonSettings
from aifinops.sources.base import Slot, SourceError, get_bytes
from aifinops.text import loads_json


def parse_latencies(body: bytes) -> dict[tuple[str, str], float]:
    try:
        doc = loads_json(body)
    except (ValueError, RecursionError) as exc:
        raise SourceError("parse", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SourceError("invalid", "not a JSON object")
    out: dict[tuple[str, str], float] = {}
    for key, seconds in doc.items():
        model, _, provider = str(key).partition("|")
        if type(seconds) in (int, float) and seconds >= 0:
            out[(model, provider)] = float(seconds)
    return out


class LatencyJsonSource:
    name = "latency_json"
    slot = Slot.LATENCY
    local = False
    min_interval_seconds = 0.0
    targets = None

    def __init__(self, settings: LatencyJsonSettings) -> None:
        self._settings = settings

    async def fetch(self, client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
        s = self._settings
        body = await get_bytes(
            client, s.url or "", timeout=s.timeout_seconds, max_bytes=s.max_response_bytes
        )
        return parse_latencies(body)
