"""Pushed token usage (``POST /api/v1/usage``): the batch schema, the store, the journal.

A neutral module between the two that use it: the endpoint (``web/usage.py``) validates a
batch and applies it here, the source (``sources/push.py``) hands the store's counters to the
refresh loop, and the state file (``statefile.py``) saves and restores it; the web floor
imports no source module.

For applications that count tokens themselves. A batch is ``{"records": [...]}``; a record
names ``tenant``, ``model``, optionally ``provider``, and non-negative integer
``input_tokens``/``output_tokens``/``cached_input_tokens`` (``input_tokens`` excludes the
cached ones, as every token type is priced on its own). ``record_id`` makes a record
idempotent: an id seen before (the last ``idempotency_cache_size`` ids are remembered, least
recently used evicted) is counted as a duplicate and not added again, so a client may retry a
batch safely. ``timestamp`` (unix seconds or ISO 8601) is validated and otherwise unused: the
counters are cumulative by arrival, and Prometheus dates them when it scrapes.

:class:`UsageStore` keeps one cumulative counter per (tenant, model, provider, token_type);
``sources.push.PushSource`` hands them to the refresh loop as observations that count from zero. A
batch is applied whole or not at all.

Durability (with ``state.path``): a batch is written to the :class:`PushJournal` (appended and
``fsync``-ed) *before* it is applied and answered 202, so an acknowledged push survives
SIGTERM, a crash or a power loss. The state file (``statefile.py``) holds, from each save,
what pushes the ledger has not counted yet and the remembered record ids; at start-up
those are restored and the journal's later entries replayed, so a retry after a restart is a
duplicate and nothing is counted twice or lost. Without ``state.path`` pushes live in the
process only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aifinops.model.inputs import TokenObservation
from aifinops.model.llm_prices import TokenType, normalize_provider
from aifinops.safefile import fsync_dir
from aifinops.text import clean_value, loads_json

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
    "not_durable",
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


CounterKey = tuple[str, str, str, str]  # the token model's (source, series, kind, token_type)
JournalRecord = tuple[str, str, str, int, int, int, str | None]
"""(tenant, model, provider or "", input, output, cached_input, record_id)"""


@dataclass(frozen=True, slots=True)
class PushExport:
    """What the state file keeps of the store: ``seq`` (the last journal entry it includes),
    the pushed tokens the ledger has not counted yet, and the remembered record ids (oldest
    first)."""

    seq: int
    uncounted: tuple[tuple[str, str, str, TokenType, int], ...]
    seen: tuple[str, ...]


class PushJournal:
    """Append-only journal of accepted batches beside the state file.

    Segments ``<state>.push-journal.<first seq>``, one JSON line per batch
    ``{"seq": n, "records": [JournalRecord, ...]}``, each ``fsync``-ed before the batch is
    acknowledged. A state save rotates to a new segment when it exports the store (under the
    store's lock) and, once the state file is written, deletes the segments it covers. A line
    that does not parse (a write cut by a crash) is skipped. A batch whose write or ``fsync``
    failed is answered 503 and not applied, though its line may still reach the disk and be
    replayed: a client that retries with its ``record_id`` is never counted twice.
    """

    def __init__(self, state_path: Path) -> None:
        self.directory = state_path.parent
        self.prefix = f"{state_path.name}.push-journal."
        self._fd: int | None = None
        self._open_first: int | None = None
        self.skipped = 0

    def _segments(self) -> list[tuple[int, Path]]:
        out = []
        with contextlib.suppress(OSError):
            for p in self.directory.iterdir():
                tail = p.name[len(self.prefix) :]
                if p.name.startswith(self.prefix) and tail.isdigit():
                    out.append((int(tail), p))
        return sorted(out)

    def append(self, seq: int, records: list[JournalRecord]) -> None:
        """Write one batch durably; raises OSError (then nothing may be acknowledged)."""
        line = (json.dumps({"seq": seq, "records": records}, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                path = self.directory / f"{self.prefix}{seq:012d}"
                self._fd = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
                self._open_first = seq
                if os.fstat(self._fd).st_size > 0:
                    # The segment of a failed write, reopened: end its torn line first.
                    line = b"\n" + line
                fsync_dir(self.directory)  # the new name survives a power loss too
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            self.rotate()  # a half-written line is skipped on replay; start a clean segment
            raise

    def rotate(self) -> None:
        """Close the open segment: the next batch starts a new one."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._open_first = None, None

    def discard_through(self, seq: int) -> None:
        """Delete the closed segments whose batches are all at or before ``seq`` (in a state
        file now)."""
        for first, path in self._segments():
            if first <= seq and first != self._open_first:
                with contextlib.suppress(OSError):
                    path.unlink()

    def entries(self, after: int) -> Iterator[tuple[int, list[JournalRecord]]]:
        """The batches after ``after``, in order; unreadable lines and non-regular files are
        skipped (counted in :attr:`skipped`)."""
        self.skipped = 0
        for _, path in self._segments():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                self.skipped += 1
                continue
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    self.skipped += 1
                    continue
                for raw in f:
                    if not raw.strip():
                        continue
                    entry = _journal_line(raw)
                    if entry is None:
                        self.skipped += 1
                    elif entry[0] > after:
                        yield entry

    def close(self) -> None:
        self.rotate()


def _journal_line(raw: bytes) -> tuple[int, list[JournalRecord]] | None:
    try:
        doc = loads_json(raw)  # text.py: nothing unencodable reaches a label
        seq = doc["seq"]
        records = [
            (str(t), str(m), str(p), int(i), int(o), int(c), None if r is None else str(r))
            for t, m, p, i, o, c, r in doc["records"]
        ]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(seq, int) or any(min(r[3:6]) < 0 for r in records):
        return None
    return seq, records


class UsageStore:
    """Cumulative pushed tokens, bounded in series, per-record size and remembered ids.

    Thread-safe: with a :attr:`journal`, :meth:`apply` runs on a worker thread (it waits for
    an ``fsync``) and the state save exports from the CPU worker; one lock makes a batch's
    check, journal write and update atomic against both and against :meth:`snapshot`.
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
        self._lock = threading.Lock()
        self.seq = 0
        """The last batch applied (journal entries are numbered by it)."""
        self.journal: PushJournal | None = None

    def apply(self, batch: UsageBatch) -> ApplyResult:
        """Add a batch; raise :class:`UsageRejected` (nothing added) when a record exceeds
        ``max_tokens_per_record``, the batch would create series past ``max_series``, or the
        journal cannot be written (``not_durable``, 503)."""
        with self._lock:
            return self._apply(batch)

    def _apply(self, batch: UsageBatch) -> ApplyResult:
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
        records: list[JournalRecord] = [
            (
                r.tenant,
                r.model,
                normalize_provider(r.provider) or "",
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.record_id,
            )
            for r in fresh
        ]
        if records and self.journal is not None:
            try:
                self.journal.append(self.seq + 1, records)
            except OSError as exc:
                raise UsageRejected(
                    503, "not_durable", f"the push journal cannot be written ({exc.strerror})"
                ) from None
        if records:
            self._commit(records)
            self.seq += 1
        return ApplyResult(accepted=len(fresh), duplicates=duplicates)

    def _commit(self, records: list[JournalRecord]) -> None:
        counters = self._counters
        for tenant, model, provider, i, o, c, record_id in records:
            counts: tuple[tuple[TokenType, int], ...] = (
                ("input", i),
                ("output", o),
                ("cached_input", c),
            )
            for token_type, n in counts:
                if n > 0:
                    key: SeriesKey = (tenant, model, provider, token_type)
                    counters[key] = counters.get(key, 0) + n
            if record_id is not None:
                self._remember(record_id)

    # --- persistence (statefile.py) ---------------------------------------------------------
    def export(self, counted: Mapping[CounterKey, float]) -> PushExport:
        """The store for the state file, rotating the journal at the same instant: per
        series, what the ledger has not counted (the store's value less ``counted``, the
        token model's last value of the series), and the remembered ids."""
        with self._lock:
            if self.journal is not None:
                self.journal.rotate()
            uncounted: list[tuple[str, str, str, TokenType, int]] = []
            for key, n in self._counters.items():
                done = counted.get(_counter_key(key), 0.0)
                left = n - int(done) if 0 <= done <= n else n
                if left > 0:
                    uncounted.append((key[0], key[1], key[2], key[3], left))
            return PushExport(self.seq, tuple(uncounted), tuple(self._seen))

    def restore(self, saved: PushExport | None, journal: PushJournal | None) -> int:
        """Start from a state file's export (or nothing) plus the journal's later batches;
        then journal from here on. Returns the batches replayed."""
        with self._lock:
            self._counters.clear()
            self._seen.clear()
            self.seq = 0
            if saved is not None:
                for tenant, model, provider, token_type, n in saved.uncounted:
                    self._counters[(tenant, model, provider, token_type)] = n
                for record_id in saved.seen:
                    self._remember(record_id)
                self.seq = saved.seq
            replayed = 0
            if journal is not None:
                for seq, records in journal.entries(self.seq):
                    # A batch answered 503 whose line still reached the disk, then retried:
                    # its record ids count once.
                    self._commit([r for r in records if r[6] is None or r[6] not in self._seen])
                    self.seq = max(self.seq, seq)
                    replayed += 1
            self.journal = journal
            return replayed

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
        with self._lock:
            items = sorted(self._counters.items())
        out = []
        for (tenant, model, provider, token_type), n in items:
            digest = _series_digest((tenant, model, provider, token_type))
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


def _series_digest(key: SeriesKey) -> str:
    return hashlib.blake2b("\0".join(key).encode(), digest_size=8).hexdigest()


def _counter_key(key: SeriesKey) -> CounterKey:
    """The token model's key of a store series (as :meth:`UsageStore.snapshot` names it)."""
    return (SOURCE_NAME, _series_digest(key), "tokens", key[3])
