"""Pushed token usage as a source of the refresh loop.

The batch schema, the store and its journal live in ``usage.py``, beside neither floor, so
that the endpoint that fills the store (``web/usage.py``) imports no source module.
"""

from __future__ import annotations

import httpx

from aifinops.model.inputs import TokenObservation
from aifinops.sources.base import Slot
from aifinops.usage import SOURCE_NAME, UsageStore


class PushSource:
    """The store as a source of the refresh loop (it never fails)."""

    name = SOURCE_NAME
    slot = Slot.TOKENS
    local = True  # in-process data: does not make the exporter ready (see refresh.py)
    min_interval_seconds = 0.0
    first_read_baseline = False
    targets = None

    def __init__(self, store: UsageStore) -> None:
        self.store = store

    async def fetch(self, client: httpx.AsyncClient) -> tuple[TokenObservation, ...]:
        return self.store.snapshot()
