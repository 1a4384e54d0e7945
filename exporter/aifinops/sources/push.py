"""Pushed token usage (``POST /api/v1/usage``): the batch schema, the store, the source.

For applications that count tokens themselves. A batch is ``{"records": [...]}``; a record
names ``tenant``, ``model``, optionally ``provider``, and non-negative integer
``input_tokens``/``output_tokens``/``cached_input_tokens`` (``input_tokens`` excludes the
cached ones, as every token type is priced on its own). ``record_id`` makes a record
idempotent: an id seen before (the last ``idempotency_cache_size`` ids are remembered, least
recently used evicted) is counted as a duplicate and not added again, so a client may retry a
batch safely. ``timestamp`` (unix seconds or ISO 8601) is validated and otherwise unused: the
counters are cumulative by arrival, and Prometheus dates them when it scrapes.

:class:`UsageStore` keeps one cumulative counter per (tenant, model, provider, token_type)
since this process started; :class:`PushSource` hands them to the refresh loop as
observations that count from zero. A batch is applied whole or not at all.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aifinops.model.inputs import TokenObservation
from aifinops.model.llm_prices import TokenType, normalize_provider
from aifinops.sources.tokens import clean_value

SOURCE_NAME = "tokens:push"

TokenCount = Annotated[int, Field(ge=0, strict=True)]
Reason = Literal[
    "unauthorized",
    "rate_limited",
    "body_too_large",
    "too_many_records",
    "invalid_json",
    "invalid_record",
    "too_many_tokens",
    "series_limit",
]


class UsageRecord(BaseModel):
    """One usage record; unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    tenant: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=256)
    provider: str | None = Field(None, min_length=1, max_length=64)
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cached_input_tokens: TokenCount = 0
    record_id: str | None = Field(None, min_length=1, max_length=128)
    timestamp: datetime | None = None

    @field_validator("tenant", "model", "provider")
    @classmethod
    def _label_safe(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if any(ord(c) < 32 for c in v):
            raise ValueError("control characters are not allowed")
        if clean_value(v) is None:
            raise ValueError("must not be empty, 'none'-like or look like an email address")
        if v.startswith("__"):
            raise ValueError("names starting with '__' are reserved (__idle__, __other__, ...)")
        return v

    def counts(self) -> tuple[tuple[TokenType, int], ...]:
        return (
            ("input", self.input_tokens),
            ("output", self.output_tokens),
            ("cached_input", self.cached_input_tokens),
        )


class UsageBatch(BaseModel):
    """``{"records": [...]}`` with at least one record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: list[UsageRecord] = Field(min_length=1)


class UsageRejected(Exception):
    """A batch refused whole: ``status`` (HTTP) and a machine-readable ``reason``."""

    def __init__(self, status: int, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class ApplyResult:
    accepted: int
    duplicates: int


SeriesKey = tuple[str, str, str, TokenType]  # (tenant, model, provider or "", token_type)


class UsageStore:
    """Cumulative pushed tokens, bounded in series, per-record size and remembered ids.

    Not thread-safe; used from the event loop only (``apply`` does not await, so a batch is
    atomic with respect to a refresh reading :meth:`snapshot`).
    """

    def __init__(
        self,
        *,
        max_series: int = 10_000,
        max_tokens_per_record: int = 1_000_000_000,
        idempotency_cache_size: int = 100_000,
    ) -> None:
        self.max_series = max_series
        self.max_tokens_per_record = max_tokens_per_record
        self.idempotency_cache_size = idempotency_cache_size
        self._counters: dict[SeriesKey, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def apply(self, batch: UsageBatch) -> ApplyResult:
        """Add a batch; raise :class:`UsageRejected` (nothing added) when a record exceeds
        ``max_tokens_per_record`` or the batch would create series past ``max_series``."""
        fresh: list[UsageRecord] = []
        ids_in_batch: set[str] = set()
        duplicates = 0
        for i, rec in enumerate(batch.records):
            for token_type, n in rec.counts():
                if n > self.max_tokens_per_record:
                    raise UsageRejected(
                        422,
                        "too_many_tokens",
                        f"records.{i}.{token_type}_tokens: {n} is over the "
                        f"{self.max_tokens_per_record} limit per record",
                    )
            if rec.record_id is not None:
                if rec.record_id in self._seen or rec.record_id in ids_in_batch:
                    duplicates += 1
                    continue
                ids_in_batch.add(rec.record_id)
            fresh.append(rec)
        new_keys = {
            key
            for rec in fresh
            for key, n in self._keys(rec)
            if n > 0 and key not in self._counters
        }
        if len(self._counters) + len(new_keys) > self.max_series:
            raise UsageRejected(
                422,
                "series_limit",
                f"the batch would create {len(new_keys)} new series; the store holds "
                f"{len(self._counters)} of at most {self.max_series}",
            )
        for rec in fresh:
            for key, n in self._keys(rec):
                if n > 0:
                    self._counters[key] = self._counters.get(key, 0) + n
            if rec.record_id is not None:
                self._remember(rec.record_id)
        return ApplyResult(accepted=len(fresh), duplicates=duplicates)

    @staticmethod
    def _keys(rec: UsageRecord) -> list[tuple[SeriesKey, int]]:
        provider = normalize_provider(rec.provider) or ""
        return [((rec.tenant, rec.model, provider, t), n) for t, n in rec.counts()]

    def _remember(self, record_id: str) -> None:
        if self.idempotency_cache_size <= 0:
            return
        self._seen[record_id] = None
        self._seen.move_to_end(record_id)
        while len(self._seen) > self.idempotency_cache_size:
            self._seen.popitem(last=False)

    def snapshot(self) -> tuple[TokenObservation, ...]:
        """Every counter as an observation that counts from zero."""
        out = []
        for (tenant, model, provider, token_type), n in sorted(self._counters.items()):
            digest = hashlib.blake2b(
                "\0".join((tenant, model, provider, token_type)).encode(), digest_size=8
            ).hexdigest()
            out.append(
                TokenObservation(
                    source=SOURCE_NAME,
                    series=digest,
                    role="usage",
                    token_type=token_type,
                    model=model,
                    value=float(n),
                    provider=provider or None,
                    tenant=tenant,
                    from_zero=True,
                )
            )
        return tuple(out)


class PushSource:
    """The store as a source of the refresh loop (it never fails)."""

    name = SOURCE_NAME
    local = True  # in-process data: does not make the exporter ready (see refresh.py)

    def __init__(self, store: UsageStore) -> None:
        self.store = store

    async def fetch(self, client: httpx.AsyncClient) -> tuple[TokenObservation, ...]:
        return self.store.snapshot()
