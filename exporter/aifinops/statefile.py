"""The optional state file: the exporter's own figures survive a restart.

Infrastructure month-to-date comes from OpenCost and survives a restart by itself. What only
this process counted does not: the per-period ledger behind ``GET /api/v1/chargeback``, the
token dollars and self-hosted charge-back moves per day (month to date, the forecast's daily
series, ROI), this month's token volume (routing), the utilization peaks (rightsizing) and,
with ``energy.enabled``, this month's measured electricity per tenant (the energy budgets).
With ``state.path`` set they are written to one JSON file and read back at start-up.

The file
--------
One JSON document: ``format``, ``schema_version`` (:data:`SCHEMA_VERSION`; another version is
not read), ``exporter_version`` (informational: a rolling upgrade keeps the state),
``saved_at``, ``identity`` and ``payload``. The identity is ``state.cluster_name``,
``budgets.time_zone`` (the ledger's days and months are local to it) and a digest of the
upstreams' cluster scoping (``sources.opencost.params``, ``sources.dcgm.selector``): a file
whose identity differs is *foreign* and is not loaded (so changing the time zone starts the
ledger afresh). It holds tenants, resources, model
and provider names, GPU model names, token source names and the sources' series *digests*
(:class:`~aifinops.model.inputs.TokenObservation` ``series``): never a raw label, a user or
an API key.

Written after a refresh at most every ``state.save_interval_seconds`` and once more on
SIGTERM (the last completed refresh), on the CPU worker thread, atomically: a temp file in
the same directory, ``fsync``, ``os.replace``, then ``fsync`` of the directory. A reader
sees the old file or the new one, never a mix. A failed write is logged, counted
(``aifinops_state_save_errors_total``) and tried again an interval later; the figures stay in
memory. It is encoded on the worker thread in pieces of :data:`DUMP_CHUNK` rows, so the event
loop is never held for more than one piece (its size and cost: bench/README.md).

At start-up: no file → start empty. A path that is not a regular file (a FIFO, a link to
``/dev/zero``) stops start-up (:func:`check_state_dir`) and is never read: reads go through
:func:`aifinops.safefile.read_bounded`. A file that cannot be read, is not JSON, has another
format or schema version, a foreign identity, or a value that fails validation (a dollar
figure that is not finite, a negative token dollar, a date that is not a date) → a warning
with the reason, the file is moved aside as ``<name>.corrupt-<unix time>`` (the newest
:data:`KEEP_CORRUPT` are kept) and the exporter starts empty; it never fails to start
because of the file. Entries outside what the model keeps (periods older than
``history_months``, days before the forecast's look-back or the chargeback's months
(``exporter_daily_keep_from``), anything dated after today) are
dropped and counted in the log line.

What a restart keeps: the guarantee
------------------------------------
The file is one refresh's state, all of it from the same refresh: the ledger *and* the last
value of every upstream token counter it was computed from.

* **Token dollars and token volume are exact.** The first refresh after the restart
  compares each scraped counter with its saved value, so the tokens counted upstream after
  the saved refresh — while the old process still ran after its last write, and while no
  process ran — are counted once: not lost, not counted twice (the ledger stopped where the
  saved counter values stop). Limits, as for any counter: an upstream counter that reset
  meanwhile (a lower value) is counted from zero, as always, so what it counted between the
  save and its reset is lost (Prometheus' ``increase()`` loses the same); a series unseen for
  ``tokens.series_retention_seconds`` is forgotten and its next reading is a baseline
  (nothing doubled, the gap lost). Pushed usage (``POST /api/v1/usage``): each save holds
  what the ledger has not counted yet and the remembered record ids (``payload.push``);
  batches after it are in the push journal beside the file (``usage.py``), written
  before their 202 and replayed at start-up, so an acknowledged push is counted once.
* **Rate-based dollars** — the ledger's infrastructure dollars (rate × time) and the
  charge-back moves — exist only while a process measures. A restart whose gap (the saved
  refresh to the first refresh after it) is at most ``state.max_gap_seconds`` is bridged like
  one long refresh interval: the first refresh's rates × the gap, which is what an
  uninterrupted process does between two refreshes. So a clean restart (SIGTERM, then a new
  process) leaves the ledger, month to date and charge-back equal to an uninterrupted run on
  the same inputs. A longer gap is not estimated: its rate-based dollars are missing from the
  ledger (OpenCost's infrastructure month-to-date is unaffected). After a crash, what the old
  process counted after its last write is recounted by the bridge (within the same
  ``max_gap_seconds``), not added twice.
* **The exporter's own Prometheus counters** (``aifinops_tenant_cost_usd_total``,
  ``aifinops_tokens_total``, ``aifinops_token_cost_usd_total``) are not restored: they start
  again in the new process, a reset ``increase()`` handles, at what the first refresh counts
  across the gap. A restored counter that came back lower than the last scrape (a crash after
  the last write) would read as a reset and make ``increase()`` count its whole history
  again; restarting from the gap is bounded instead. After a clean stop the gap is what an
  uninterrupted process would have added; after a crash, what the old process counted after
  its last write (at most ``save_interval_seconds`` of it) is in both processes' counters, so
  ``increase()`` over the crash counts that part twice. The exporter's ledger does not.
* Two replicas each keep their own file (never share one: each would overwrite the other).

Not kept: the idle-GPU history (a GPU is idle again after one idle window), the GPU model per
pod (learnt again from DCGM in one refresh), sources' last good data.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from aifinops.model.chargeback import current_period
from aifinops.model.energy import EnergyState
from aifinops.model.finance import (
    PEAK_WINDOW_SECONDS,
    FinanceContext,
    FinanceState,
    exporter_daily_keep_from,
    local_date,
)
from aifinops.model.report import ModelState
from aifinops.model.tokens import RateSample, TokenState, counter_rows
from aifinops.model.vocabulary import TOKENS_RESOURCE
from aifinops.safefile import file_kind, fsync_dir, read_bounded
from aifinops.settings import ConfigError, Settings, StateSettings
from aifinops.usage import SOURCE_NAME as PUSH_SOURCE
from aifinops.usage import PushExport, PushJournal, UsageStore
from aifinops.version import __version__

log = structlog.get_logger("aifinops.statefile")

FORMAT = "aifinops-state"
SCHEMA_VERSION = 1
KEEP_CORRUPT = 3
"""Copies of discarded files kept beside the state file (the newest)."""
MAX_STATE_BYTES = 256 * 1024 * 1024
"""A larger file is not read (a state file at 500 tenants is a few MB)."""
FUTURE_TOLERANCE_SECONDS = 86400.0
"""Counter and sample times up to this far ahead of the clock are accepted (clock skew)."""


class StateFileError(Exception):
    """Why a state file was not loaded (the message is logged as the reason)."""


# --- identity ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """What a state file must match to be loaded (see the module docstring)."""

    cluster: str
    time_zone: str
    scope: str

    @classmethod
    def from_settings(cls, s: Settings) -> Identity:
        scoping = {
            "opencost_params": dict(sorted(s.sources.opencost.params.items())),
            "dcgm_selector": s.sources.dcgm.selector,
        }
        digest = hashlib.sha256(json.dumps(scoping, sort_keys=True).encode()).hexdigest()
        return cls(s.state.cluster_name, s.budgets.time_zone, digest[:16])

    def as_json(self) -> dict[str, str]:
        return {"cluster": self.cluster, "time_zone": self.time_zone, "scope": self.scope}

    def mismatch(self, other: object) -> str | None:
        """Why a file's ``identity`` is foreign, or ``None`` when it is this exporter's."""
        if not isinstance(other, Mapping):
            return "no identity"
        if other.get("cluster") != self.cluster:
            return (
                f"written for cluster {other.get('cluster')!r}, this exporter is "
                f"{self.cluster!r} (state.cluster_name)"
            )
        if other.get("time_zone") != self.time_zone:
            return (
                f"written in time zone {other.get('time_zone')!r}, this exporter uses "
                f"{self.time_zone!r} (budgets.time_zone): its days and months would be misdated"
            )
        if other.get("scope") != self.scope:
            return (
                "written for other upstream scoping (sources.opencost.params or "
                "sources.dcgm.selector differ): another cluster's figures"
            )
        return None


# --- the document's schema -----------------------------------------------------------------

Name = Annotated[StrictStr, Field(min_length=1, max_length=4096)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonPositive = Annotated[float, Field(le=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Time = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Period = Annotated[StrictStr, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]
Day = Annotated[StrictStr, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
TokenTypeName = Literal["input", "output", "cached_input"]
Basis = Literal["allocation", "usage"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RateSampleDoc(_Doc):
    """One rate sample, each figure relative to the saved total (sample − total, ≤ 0)."""

    at: Time
    self_hosted_usage: list[tuple[Name, Name, TokenTypeName, NonPositive]]
    served: list[tuple[Name, TokenTypeName, NonPositive]]
    api_cost: dict[Name, NonPositive]


class TokensDoc(_Doc):
    """:class:`TokenState` minus the process's own cumulative counters: the counters' last
    values ``(source, series digest, kind, token_type, value, seen_at)``, when each source
    was last seen, the keys of the cumulative totals (they restart at zero) and the rate
    samples relative to those totals."""

    counters: list[
        tuple[Name, Name, Literal["tokens", "spend_usd"], TokenTypeName, NonNegative, Time]
    ]
    sources_seen: dict[Name, Time]
    self_hosted_usage: list[tuple[Name, Name, TokenTypeName]]
    served: list[tuple[Name, TokenTypeName]]
    api_cost: list[Name]
    rate_history: list[RateSampleDoc]
    models: list[Name]
    discovered: dict[Name, Name]


class VolumeDoc(_Doc):
    period: Period | None
    since: Time | None
    volume: list[tuple[Name, Name, NonNegative]]


class PeakDoc(_Doc):
    tenant: Name
    gpu_model: Name
    since: Time
    hourly: list[tuple[int, Ratio]]


class FinanceDoc(_Doc):
    refreshed_at: Time | None
    periods: dict[Period, list[tuple[Name, Name, Basis, NonNegative]]]
    daily: list[tuple[Name, Name, Day, Finite]]
    token_volume: VolumeDoc
    util_peaks: list[PeakDoc]


class PushDoc(_Doc):
    """Pushed usage (``usage.py``): the last journal entry included, the pushed
    tokens the saved ledger has not counted, the remembered record ids (oldest first)."""

    seq: Annotated[int, Field(ge=0)]
    uncounted: list[
        tuple[Name, Name, Annotated[StrictStr, Field(max_length=4096)], TokenTypeName, int]
    ]
    seen: list[Annotated[StrictStr, Field(min_length=1, max_length=128)]]


class EnergyDoc(_Doc):
    """This month's measured electricity per tenant (``energy.enabled``): dollars, grams
    CO2e and joules, what the energy budgets count. The totals since start are counters and
    restart at zero, as the money counters do."""

    month: Period
    usd: dict[Name, NonNegative]
    grams: dict[Name, NonNegative]
    joules: dict[Name, NonNegative]


class PayloadDoc(_Doc):
    refreshed_at: Time | None
    tokens: TokensDoc | None
    finance: FinanceDoc
    # Absent in files written before pushes were durable (then the journal alone is replayed).
    push: PushDoc | None = None
    # Absent in files written before energy, or with energy off.
    energy: EnergyDoc | None = None


class DocumentDoc(_Doc):
    format: Literal["aifinops-state"]
    schema_version: Literal[1]
    exporter_version: str
    saved_at: Time
    identity: dict[str, str]
    payload: PayloadDoc


# --- encoding ------------------------------------------------------------------------------


_finite = math.isfinite
_K = TypeVar("_K", bound=Hashable)


def _relative(sample: Mapping[_K, float], total: Mapping[_K, float]) -> Iterator[tuple[_K, float]]:
    """``sample − total`` per key (≤ 0: the totals only grow; clamped against rounding)."""
    for k, v in sample.items():
        d = v - total.get(k, v)
        if _finite(d):
            yield k, min(0.0, d)


def _tokens_json(t: TokenState) -> dict[str, Any]:
    # The rate samples are stored relative to the totals, so the file reads the same whether
    # this state ran since the process started or was itself restored (totals at zero).
    return {
        # Push counters live in the process (their store starts empty): never restored.
        "counters": [
            [src, series, kind, token_type, v, at]
            for (src, series, kind, token_type), v, at in counter_rows(t)
            if src != PUSH_SOURCE and _finite(v) and v >= 0
        ],
        "sources_seen": {s: at for s, at in t.source_seen_at.items() if s != PUSH_SOURCE},
        "self_hosted_usage": [list(k) for k in t.self_hosted_usage],
        "served": [list(k) for k in t.served],
        "api_cost": list(t.api_cost),
        "rate_history": [
            {
                "at": s.at,
                "self_hosted_usage": [
                    [*k, d] for k, d in _relative(s.self_hosted_usage, t.self_hosted_usage)
                ],
                "served": [[*k, d] for k, d in _relative(s.served, t.served)],
                "api_cost": dict(_relative(s.api_cost, t.api_cost)),
            }
            for s in t.history
        ],
        "models": sorted(t.models),
        "discovered": dict(t.discovered),
    }


def _finance_json(f: FinanceState, saved_at: float) -> dict[str, Any]:
    # ~60 distinct days over 100k+ entries at 500 tenants: format each once.
    iso = {d: d.isoformat() for d in {k[2] for k in f.exporter_daily}}
    return {
        "refreshed_at": f.last_now,
        "periods": {
            p: [[*k, v] for k, v in ledger.items() if _finite(v) and v >= 0]
            for p, ledger in f.periods.items()
        },
        "daily": [
            [tenant, resource, iso[d], v]
            for (tenant, resource, d), v in f.exporter_daily.items()
            if _finite(v)
        ],
        "token_volume": {
            "period": f.volume_period,
            "since": f.volume_since,
            "volume": [[*k, v] for k, v in f.token_volume.items() if _finite(v) and v >= 0],
        },
        "util_peaks": [
            {
                "tenant": key[0],
                "gpu_model": key[1],
                "since": f.util_since.get(key, saved_at),
                "hourly": [[h, v] for h, v in sorted(hourly.items())],
            }
            for key, hourly in f.util_peaks.items()
        ],
    }


def encode_state(
    model: ModelState,
    finance: FinanceState,
    identity: Identity,
    saved_at: float,
    push: PushExport | None = None,
) -> bytes:
    """The document for ``model`` and ``finance`` (one refresh's state) and, with push
    enabled, the push store's export. Pure."""
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "exporter_version": __version__,
        "saved_at": saved_at,
        "identity": identity.as_json(),
        "payload": {
            "refreshed_at": model.last_now,
            "tokens": _tokens_json(model.tokens) if model.tokens is not None else None,
            "finance": _finance_json(finance, saved_at),
            **({} if push is None else {"push": _push_json(push)}),
            **_energy_json(model.energy),
        },
    }
    return _dumps(doc).encode("utf-8")


def _energy_json(e: EnergyState | None) -> dict[str, Any]:
    if e is None or not e.month:
        return {}
    return {
        "energy": {
            "month": e.month,
            "usd": dict(e.month_usd),
            "grams": dict(e.month_grams),
            "joules": dict(e.month_joules),
        }
    }


def _push_json(push: PushExport) -> dict[str, Any]:
    return {
        "seq": push.seq,
        "uncounted": [list(row) for row in push.uncounted],
        "seen": list(push.seen),
    }


DUMP_CHUNK = 2000
"""Rows per ``json.dumps`` call: each call holds the GIL throughout, so a big state is encoded
in pieces and the event loop gets to answer scrapes between them."""


def _dumps(obj: Any) -> str:
    """Compact JSON of ``obj`` (no NaN or infinity), big lists in :data:`DUMP_CHUNK` pieces."""
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list) and len(obj) > DUMP_CHUNK:
        pieces = (_dumps(obj[i : i + DUMP_CHUNK])[1:-1] for i in range(0, len(obj), DUMP_CHUNK))
        return "[" + ",".join(pieces) + "]"
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


# --- decoding ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    """A loaded state. ``bridged``: the gap since ``refreshed_at`` is accrued at the first
    refresh's rates (``gap_seconds`` ≤ ``state.max_gap_seconds``). ``dropped``: entries
    pruned as too old or dated in the future."""

    model: ModelState
    finance: FinanceState
    refreshed_at: float | None
    gap_seconds: float | None
    bridged: bool
    dropped: int
    saved_at: float
    exporter_version: str
    push: PushExport | None = None


def _parse(data: bytes, identity: Identity) -> dict[str, Any]:
    """The parsed document, its format, schema version and identity checked, so that the
    reason for a file that fails validation names what is wrong rather than a schema
    detail."""
    try:
        head = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFileError(f"not valid JSON ({exc})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise StateFileError(f"not an exporter state file (format is not {FORMAT!r})")
    version = head.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StateFileError(
            f"schema version {version!r}, this exporter ({__version__}) reads version "
            f"{SCHEMA_VERSION} (written by exporter {head.get('exporter_version')!r})"
        )
    foreign = identity.mismatch(head.get("identity"))
    if foreign is not None:
        raise StateFileError(f"foreign file: {foreign}")
    return head


def _validation_reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid value at {where}: {err['msg']}{more}"


def _month_index(period: str) -> int:
    year, month = period.split("-")
    return int(year) * 12 + int(month) - 1


def _restore_tokens(doc: TokensDoc, now: float) -> TokenState:
    """The token state to continue from: the counters' last values as saved; the process's
    own cumulative totals restart at zero (keys kept, so a slope over the rate window still
    sees a tenant that sent nothing since), and the rate samples are rebased on those zeros
    (sample − saved total, ≤ 0), so every slope over the window is what it would have been."""
    horizon = now + FUTURE_TOLERANCE_SECONDS
    last: dict[tuple[str, str, str, str], float] = {}
    seen: dict[tuple[str, str, str, str], float] = {}
    for src, series, kind, token_type, value, at in doc.counters:
        if src == PUSH_SOURCE or at > horizon:
            continue
        last[(src, series, kind, token_type)] = value
        seen[(src, series, kind, token_type)] = at
    history = tuple(
        RateSample(
            at=s.at,
            self_hosted_usage={(t, m, k): d for t, m, k, d in s.self_hosted_usage},
            served={(m, k): d for m, k, d in s.served},
            api_cost=dict(s.api_cost),
        )
        for s in doc.rate_history
        if s.at <= horizon
    )
    return TokenState(
        last=last,
        seen_at=seen,
        source_seen_at={
            s: at for s, at in doc.sources_seen.items() if s != PUSH_SOURCE and at <= horizon
        },
        api_cost=dict.fromkeys(doc.api_cost, 0.0),
        self_hosted_usage=dict.fromkeys(doc.self_hosted_usage, 0.0),
        served=dict.fromkeys(doc.served, 0.0),
        history=history,
        models=frozenset(doc.models),
        discovered=dict(doc.discovered),
    )


def decode_state(
    data: bytes,
    identity: Identity,
    now: float,
    ctx: FinanceContext,
    max_gap_seconds: float,
) -> Restored:
    """The state in ``data``, validated and pruned for ``now``; raises
    :class:`StateFileError` with the reason. Pure."""
    try:
        # One pass in pydantic's parser (the good file's path: a few hundred ms at 500
        # tenants); only a file that fails it is parsed again for a clearer reason.
        doc = DocumentDoc.model_validate_json(data, strict=True)
    except ValidationError as exc:
        _parse(data, identity)  # raises when format, version or identity is the problem
        raise StateFileError(_validation_reason(exc)) from None
    foreign = identity.mismatch(doc.identity)
    if foreign is not None:
        raise StateFileError(f"foreign file: {foreign}")
    payload = doc.payload
    tz = ctx.tz
    dropped = 0

    # The ledger: months from history_months ago to this one; days in the model's window.
    this_month = _month_index(current_period(now, tz))
    first_month = this_month - (max(1, ctx.history_months) - 1)
    periods: dict[str, dict[tuple[str, str, str], float]] = {}
    for period, rows in payload.finance.periods.items():
        if not first_month <= _month_index(period) <= this_month:
            dropped += len(rows)
            continue
        ledger = periods.setdefault(period, {})
        for tenant, resource, basis, usd in rows:
            key = (tenant, resource, basis)
            ledger[key] = ledger.get(key, 0.0) + usd
    today = local_date(now, tz)
    keep_from = exporter_daily_keep_from(today, ctx.lookback_days, ctx.books_months)
    daily: dict[tuple[str, str, date], float] = {}
    for i, (tenant, resource, day_text, usd) in enumerate(payload.finance.daily):
        try:
            day = date.fromisoformat(day_text)
        except ValueError:
            raise StateFileError(
                f"invalid value at payload.finance.daily.{i}: {day_text!r} is not a date"
            ) from None
        if resource == TOKENS_RESOURCE and usd < 0:
            raise StateFileError(
                f"invalid value at payload.finance.daily.{i}: token dollars {usd} < 0"
            )
        if not keep_from <= day <= today:
            dropped += 1
            continue
        daily[(tenant, resource, day)] = daily.get((tenant, resource, day), 0.0) + usd

    # This month's token volume (another month's starts again, as build_finance does).
    volume_doc = payload.finance.token_volume
    volume: dict[tuple[str, str], float] = {}
    volume_period, volume_since = volume_doc.period, volume_doc.since
    if volume_period == current_period(now, tz) and volume_since is not None:
        for tenant, model_name, n in volume_doc.volume:
            volume[(tenant, model_name)] = volume.get((tenant, model_name), 0.0) + n
    else:
        dropped += len(volume_doc.volume)
        volume_period, volume_since = None, None

    oldest_hour = math.floor((now - PEAK_WINDOW_SECONDS) / 3600.0)
    newest_hour = math.floor((now + FUTURE_TOLERANCE_SECONDS) / 3600.0)
    peaks: dict[tuple[str, str], dict[int, float]] = {}
    since: dict[tuple[str, str], float] = {}
    for peak in payload.finance.util_peaks:
        hourly = {h: v for h, v in peak.hourly if oldest_hour < h <= newest_hour}
        dropped += len(peak.hourly) - len(hourly)
        if hourly:
            peaks[(peak.tenant, peak.gpu_model)] = hourly
            since[(peak.tenant, peak.gpu_model)] = peak.since

    refreshed_at = payload.refreshed_at
    gap = now - refreshed_at if refreshed_at is not None else None
    bridged = gap is not None and 0 <= gap <= max_gap_seconds
    finance_at = payload.finance.refreshed_at
    finance_bridged = finance_at is not None and 0 <= now - finance_at <= max_gap_seconds
    tokens = _restore_tokens(payload.tokens, now) if payload.tokens is not None else None
    # The process's counters restart at zero (accrued, prev_accrued and prev_tokens empty):
    # the first refresh's values are all new, so its increments are exactly the gap's.
    # This month's electricity carries on (another month's starts again, as the model does);
    # the energy source's last reading is not saved: the restart's gap is not measured.
    energy = None
    if payload.energy is not None and payload.energy.month == current_period(now, tz):
        energy = EnergyState(
            month=payload.energy.month,
            month_usd=dict(payload.energy.usd),
            month_grams=dict(payload.energy.grams),
            month_joules=dict(payload.energy.joules),
        )
    elif payload.energy is not None:
        dropped += len(payload.energy.usd)
    model = ModelState(last_now=refreshed_at if bridged else None, tokens=tokens, energy=energy)
    finance = FinanceState(
        last_now=finance_at if finance_bridged else None,
        periods=periods,
        exporter_daily=daily,
        token_volume=volume,
        volume_period=volume_period,
        volume_since=volume_since,
        util_peaks=peaks,
        util_since=since,
    )
    return Restored(
        model=model,
        finance=finance,
        refreshed_at=refreshed_at,
        gap_seconds=gap,
        bridged=bridged,
        dropped=dropped,
        saved_at=doc.saved_at,
        exporter_version=doc.exporter_version,
        push=None
        if payload.push is None
        else PushExport(
            payload.push.seq,
            tuple((t, m, p, k, n) for t, m, p, k, n in payload.push.uncounted if n > 0),
            tuple(payload.push.seen),
        ),
    )


# --- the file ------------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``: temp file in the same directory, fsync, rename, fsync of the
    directory (so the rename itself survives a power loss). Raises OSError."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def check_state_dir(settings: StateSettings) -> None:
    """Fail fast at start-up when the state file cannot be written: its directory is created
    if missing, then a probe file is created and removed in it (``os.access`` says nothing of
    a read-only mount). Raises :class:`ConfigError` naming ``state.path``."""
    path = settings.path
    if path is None:
        return
    directory = path.parent
    try:
        if path.is_dir():
            raise ConfigError(f"invalid configuration: state.path: {path} is a directory")
        with contextlib.suppress(FileNotFoundError):
            mode = path.stat().st_mode  # follows a symlink: /dev/zero, a FIFO behind one
            if not stat.S_ISREG(mode):
                raise ConfigError(
                    f"invalid configuration: state.path: {path} is {file_kind(mode)}, not a "
                    "regular file (reading it would hang or never end); remove it"
                )
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"invalid configuration: state.path: cannot write in {directory} "
            f"({exc.strerror or exc}); mount a writable volume there or unset state.path "
            f"(got {str(path)!r})"
        ) from None


class StateStore:
    """Reads and writes one state file. ``save`` runs on the CPU worker thread (never on the
    event loop); ``load`` once at start-up. Neither raises: a problem is logged, and a failed
    write is counted for ``aifinops_state_save_errors_total``."""

    # ``save_errors`` and ``last_save`` are its self-metrics; the exposition renders them
    # (``exposition.families.state_families``).

    def __init__(
        self, settings: StateSettings, identity: Identity, usage: UsageStore | None = None
    ) -> None:
        if settings.path is None:
            raise ValueError("StateStore needs state.path")
        self.path: Path = settings.path
        # The push store (tokens.push): exported with each save, restored (with its journal)
        # at load.
        self.usage = usage
        self.journal = PushJournal(settings.path) if usage is not None else None
        self.save_interval = settings.save_interval_seconds
        self.max_gap = settings.max_gap_seconds
        self.identity = identity
        self.save_errors = 0
        self.last_save: float | None = None
        self._last_attempt: float | None = None

    @classmethod
    def from_settings(cls, s: Settings, usage: UsageStore | None = None) -> StateStore | None:
        if s.state.path is None:
            return None
        return cls(s.state, Identity.from_settings(s), usage)

    def due(self, now: float) -> bool:
        """Whether a periodic write is due (a failed write is retried an interval later)."""
        return self._last_attempt is None or now - self._last_attempt >= self.save_interval

    def save(self, model: ModelState, finance: FinanceState, now: float) -> bool:
        """Write the state of one refresh; ``False`` (logged, counted) when it failed."""
        self._last_attempt = now
        try:
            push = None
            if self.usage is not None:
                # Rotates the journal: what follows this export goes to a new segment.
                push = self.usage.export(model.tokens.last if model.tokens is not None else {})
            data = encode_state(model, finance, self.identity, now, push)
            write_atomically(self.path, data)
            if push is not None and self.journal is not None:
                self.journal.discard_through(push.seq)
        except Exception as exc:  # never into the refresh loop or the shutdown
            self.save_errors += 1
            log.warning(
                "state_save_failed", path=str(self.path), error=f"{type(exc).__name__}: {exc}"
            )
            return False
        self.last_save = now
        log.debug("state_saved", path=str(self.path), bytes=len(data))
        return True

    def load(self, now: float, ctx: FinanceContext) -> Restored | None:
        """The saved state, or ``None`` (no file, or one that was discarded: see the module
        docstring). The push store, when there is one, is restored in any case: from the
        file's export and the journal's later batches, or from the journal alone."""
        restored = self._load(now, ctx)
        if self.usage is not None:
            replayed = self.usage.restore(restored.push if restored else None, self.journal)
            skipped = self.journal.skipped if self.journal is not None else 0
            if replayed or skipped:
                log.info("push_journal_replayed", batches=replayed, unreadable_lines=skipped)
        return restored

    def _load(self, now: float, ctx: FinanceContext) -> Restored | None:
        self._remove_stale_temps()
        try:
            # Never blocks on a FIFO, never reads past the bound (a link to /dev/zero).
            data = read_bounded(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            log.info("state_file_absent", path=str(self.path))
            return None
        except OSError as exc:
            self._discard(f"cannot read: {exc.strerror or exc}", now)
            return None
        try:
            restored = decode_state(data, self.identity, now, ctx, self.max_gap)
        except StateFileError as exc:
            self._discard(str(exc), now)
            return None
        except Exception as exc:  # a bug in decoding must not stop the exporter starting
            log.exception("state_decode_crashed", path=str(self.path))
            self._discard(f"{type(exc).__name__}: {exc}", now)
            return None
        finance = restored.finance
        log.info(
            "state_restored",
            path=str(self.path),
            saved_at=restored.saved_at,
            written_by=restored.exporter_version,
            gap_seconds=None if restored.gap_seconds is None else round(restored.gap_seconds, 1),
            bridged=restored.bridged,
            periods=len(finance.periods),
            daily_entries=len(finance.exporter_daily),
            token_counters=len(restored.model.tokens.last) if restored.model.tokens else 0,
            dropped=restored.dropped,
        )
        return restored

    def _discard(self, reason: str, now: float) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(now)}")
        kept: str | None = aside.name
        try:
            os.replace(self.path, aside)
        except OSError:
            kept = None  # not even movable: the next write replaces it
        log.warning(
            "state_file_discarded",
            path=str(self.path),
            reason=reason,
            kept_as=kept,
            consequence="starting without saved state",
        )
        self._prune_corrupt()

    def _siblings(self, suffix: str) -> list[Path]:
        try:
            return list(self.path.parent.glob(f"{glob.escape(self.path.name)}{suffix}"))
        except OSError:
            return []

    def _prune_corrupt(self) -> None:
        def written(p: Path) -> int:
            stamp = p.name.rsplit("-", 1)[-1]
            return int(stamp) if stamp.isdigit() else 0

        copies = sorted(self._siblings(".corrupt-*"), key=written)
        for old in copies[:-KEEP_CORRUPT]:
            with contextlib.suppress(OSError):
                old.unlink()

    def _remove_stale_temps(self) -> None:
        # A temp file left by a write that a crash interrupted (the rename never happened).
        for tmp in self._siblings_hidden(".tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _siblings_hidden(self, suffix: str) -> list[Path]:
        try:
            return list(self.path.parent.glob(f".{glob.escape(self.path.name)}.*{suffix}"))
        except OSError:
            return []


__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "Identity",
    "Restored",
    "StateFileError",
    "StateStore",
    "check_state_dir",
    "decode_state",
    "encode_state",
    "write_atomically",
]
