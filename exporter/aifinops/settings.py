"""Configuration: one YAML file plus environment overrides, validated strictly.

Environment overrides use ``AIFINOPS__`` and ``__`` between path parts, e.g.
``AIFINOPS__SOURCES__OPENCOST__URL=http://opencost:9003`` or
``AIFINOPS__SERVER__PORT=9900``. Values are parsed as YAML scalars/flow collections, so
``AIFINOPS__SOURCES__DCGM__SCRAPE_URLS='[http://a:9400/metrics]'`` sets a list.

Any problem is raised as :class:`ConfigError`, whose message names the field path and the
offending value; ``__main__`` prints it and exits with status 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aifinops.safefile import read_bounded
from aifinops.settings_finance import (
    BudgetsSettings,
    ChargebackSettings,
    InitiativeList,
    RecommendationsSettings,
    RoutingSettings,
)
from aifinops.status import redact_text

# The model's objects are built by the engine (``to_model``, imported there when called):
# validating a configuration needs none of them, and the front, which validates one, then
# does not load the model (nor numpy with it).
if TYPE_CHECKING:
    from aifinops.model.energy import EnergyContext, Schedule, TimeWindow
    from aifinops.model.finance import FinanceContext
    from aifinops.model.owned_prices import OwnedGpuSpec, OwnedPricing
    from aifinops.model.tenancy import TenantResolver
    from aifinops.model.tokens import TokenContext

ENV_PREFIX = "AIFINOPS__"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""A larger configuration file is refused (a big one, with thousands of tenant rules, is
well under 1 MB)."""


class ConfigError(Exception):
    """A configuration problem, with the field path and value named in the message."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _paths_usable(cls, v: Any) -> Any:
        # A path the OS cannot take (a NUL, a lone surrogate) would fail later as a
        # ValueError where an OSError is handled; refuse it here, with the field named.
        for path in v if isinstance(v, tuple) else (v,):
            if isinstance(path, Path):
                try:
                    if "\0" in str(path):
                        raise ValueError
                    os.fsencode(path)
                except ValueError:  # UnicodeEncodeError included
                    raise ValueError("not a usable file path (NUL or invalid character)") from None
        return v


class ServerSettings(_Strict):
    """``web_config_file``: TLS and basic auth in the Prometheus exporter-toolkit's
    ``--web.config.file`` shape (``web/security.py``). ``enable_lifecycle``: serve
    ``POST /-/reload`` (as Prometheus' ``--web.enable-lifecycle``); SIGHUP reloads either way.
    ``max_request_body_bytes``: bodies over it are refused with 413 (the push endpoint has its
    own ``tokens.push.max_body_bytes``). ``telemetry_path``: where the Prometheus page is
    served (``--web.telemetry-path``). ``refresh_process``: ``separate`` runs the refresh in
    a child process (the engine) and serves from what it publishes, so a refresh never
    delays a scrape (``web/front.py``); ``inline`` runs both in one process. Flags override
    these (``__main__``)."""

    listen_address: str = "0.0.0.0"
    port: int = Field(9877, ge=1, le=65535)
    web_config_file: Path | None = None
    telemetry_path: str = "/metrics"
    enable_lifecycle: bool = False
    max_request_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    refresh_process: Literal["separate", "inline"] = "separate"

    @field_validator("telemetry_path")
    @classmethod
    def _own_path(cls, v: str) -> str:
        # The other routes keep their paths; a clash would hide one of them.
        if not re.fullmatch(r"/[A-Za-z0-9._~/-]*", v) or "//" in v:
            raise ValueError("must be an absolute URL path such as /metrics")
        if v in ("/", "/healthz", "/readyz", "/-/reload") or v.startswith(("/api/", "/-/")):
            raise ValueError(f"{v} is one of the exporter's own routes")
        return v


class RefreshSettings(_Strict):
    interval_seconds: float = Field(30.0, gt=0, le=3600)


class UpstreamTlsSettings(_Strict):
    """TLS to one upstream (as Prometheus' ``tls_config``). Verification is on by default:
    ``ca_file`` replaces the system's CAs for this upstream; ``cert_file`` and ``key_file``
    (together) present a client certificate; ``server_name`` is the name sent (SNI) and
    checked against the server's certificate instead of the URL's host;
    ``insecure_skip_verify`` turns verification off (never in production)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = Field(None, min_length=1, max_length=253)
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    @property
    def is_default(self) -> bool:
        return self == UpstreamTlsSettings()


class UpstreamBasicAuthSettings(_Strict):
    """HTTP basic auth to an upstream: ``username`` and the password from a file
    (``password_file``, re-read when it changes: a rotated Secret) or an environment variable
    (``password_env``, its name) — never the password itself in the configuration."""

    username: str = Field(min_length=1, max_length=256)
    password_file: Path | None = None
    password_env: str | None = None

    @field_validator("username")
    @classmethod
    def _no_colon(cls, v: str) -> str:
        if ":" in v:
            raise ValueError("a basic-auth user name holds no ':'")
        return v

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("give the environment variable's name, never the password")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> UpstreamBasicAuthSettings:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("set exactly one of password_file or password_env")
        return self


class UpstreamHttpSettings(_Strict):
    """Credentials and TLS for an HTTP upstream (``sources/upstream.py`` applies them to
    every request to the upstream's URLs). Credentials come from a file or the environment,
    at most one kind per upstream: ``bearer_token_file``, ``bearer_token_env`` (a variable's
    name) or ``basic_auth``. Credentials written into a URL (``https://user:pass@host``,
    ``?api_key=``) still work, and are never shown (``status.redact_text``), but a file is
    the place for them."""

    bearer_token_file: Path | None = None
    bearer_token_env: str | None = None
    basic_auth: UpstreamBasicAuthSettings | None = None
    tls: UpstreamTlsSettings = Field(default_factory=UpstreamTlsSettings)

    @field_validator("bearer_token_env")
    @classmethod
    def _bearer_env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("give the environment variable's name, never the token")
        return v

    @model_validator(mode="after")
    def _one_credential(self) -> UpstreamHttpSettings:
        given = [
            name
            for name, v in (
                ("bearer_token_file", self.bearer_token_file),
                ("bearer_token_env", self.bearer_token_env),
                ("basic_auth", self.basic_auth),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(f"set at most one credential, got {' and '.join(given)}")
        return self


class SourceCommon(UpstreamHttpSettings):
    enabled: bool = True
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    stale_after_seconds: float = Field(600.0, gt=0)
    max_response_bytes: int = Field(64 * 1024 * 1024, gt=0)


class DcgmSettings(SourceCommon):
    """Where GPU utilization comes from.

    ``mode: prometheus`` runs instant queries against ``prometheus_url`` (a Prometheus that
    scrapes dcgm-exporter); ``mode: scrape`` reads dcgm-exporter ``/metrics`` pages directly.
    """

    mode: Literal["prometheus", "scrape"] = "prometheus"
    prometheus_url: str | None = None
    scrape_urls: tuple[str, ...] = ()
    # "auto": per GPU (or MIG instance), the profiling metric where DCGM has it (MIG instances
    # have only it), the device metric elsewhere. Naming one metric reads only it (by either
    # dcgm-exporter generation's name); GPUs without it are then unmeasured.
    utilization_metric: Literal["auto", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"] = (
        "auto"
    )
    # Extra PromQL matchers for mode=prometheus, e.g. '{cluster="prod"}' scoping.
    selector: str = ""

    @model_validator(mode="after")
    def _target_present(self) -> DcgmSettings:
        if self.enabled and self.mode == "prometheus" and not self.prometheus_url:
            raise ValueError("mode 'prometheus' needs prometheus_url")
        if self.enabled and self.mode == "scrape" and not self.scrape_urls:
            raise ValueError("mode 'scrape' needs at least one entry in scrape_urls")
        return self


class HamiSettings(SourceCommon):
    """HAMi (Project-HAMi/HAMi) fractional GPUs: what each container was allocated on a
    device (the scheduler's metrics, ``:9395``, Service port 31993) and what it uses live (the
    device plugin's vGPU monitor, ``:9394`` on every node, Service port 31992).

    ``mode: prometheus`` reads both from a Prometheus that scrapes them; ``mode: scrape``
    reads the pages in ``scrape_urls`` (the scheduler's and every node's monitor). A device's
    billing share per container is its allocated ``cores`` share, its ``memory`` share, or
    ``mix``: ``core_weight`` × cores + (1 − ``core_weight``) × memory. See docs/shared-gpus.md.
    """

    mode: Literal["prometheus", "scrape"] = "prometheus"
    prometheus_url: str | None = None
    scrape_urls: tuple[str, ...] = ()
    # Extra PromQL matchers for mode=prometheus, e.g. '{cluster="prod"}' scoping.
    selector: str = ""
    billing_share: Literal["cores", "memory", "mix"] = "cores"
    core_weight: float = Field(0.5, ge=0.0, le=1.0)

    def to_model(self) -> float:
        """The model's core weight (``ModelContext.hami_core_weight``): 1 for ``cores``, 0 for
        ``memory``, ``core_weight`` for ``mix``."""
        return {"cores": 1.0, "memory": 0.0}.get(self.billing_share, self.core_weight)

    @model_validator(mode="after")
    def _target_present(self) -> HamiSettings:
        if self.enabled and self.mode == "prometheus" and not self.prometheus_url:
            raise ValueError("mode 'prometheus' needs prometheus_url")
        if self.enabled and self.mode == "scrape" and not self.scrape_urls:
            raise ValueError("mode 'scrape' needs at least one entry in scrape_urls")
        return self


class OpenCostSettings(SourceCommon):
    url: str | None = None
    # OpenCost duration window: the cost rate is the window's cost / its length.
    window: str = "1h"
    # Optional extra query parameters (e.g. {"filter": "cluster:\"prod\""}).
    params: Mapping[str, str] = Field(default_factory=dict)
    # The month-to-date query's aggregation: "tenancy" (namespace plus the tenancy pod label
    # keys: one row per tenant and namespace, exact for tenancy) or "pod" (one row per pod:
    # over 1 GB at 10k GPUs by a month's end). See sources/opencost.py month_aggregation.
    month_aggregation: Literal["tenancy", "pod"] = "tenancy"
    # The month query asks for this many days per request (each answer stays well under
    # max_response_bytes: ~4 MB a day at 10k GPUs / 2k tenants); a piece over the cap is split
    # in halves down to one day, and one day over it is an error naming this cap.
    month_piece_days: int = Field(7, ge=1, le=31)
    # Whole calendar months before the current one the month query also reads, so that
    # /api/v1/chargeback answers for them from OpenCost (0: this month only).
    history_months: int = Field(1, ge=0, le=12)

    @field_validator("window")
    @classmethod
    def _window_duration(cls, v: str) -> str:
        parse_duration_hours(v)
        return v

    @model_validator(mode="after")
    def _url_present(self) -> OpenCostSettings:
        if self.enabled and not self.url:
            raise ValueError("an enabled opencost source needs url")
        return self

    @property
    def window_hours(self) -> float:
        return parse_duration_hours(self.window)


class SourcesSettings(_Strict):
    dcgm: DcgmSettings = Field(default_factory=lambda: DcgmSettings(enabled=False))
    opencost: OpenCostSettings = Field(default_factory=lambda: OpenCostSettings(enabled=False))
    hami: HamiSettings = Field(default_factory=lambda: HamiSettings(enabled=False))


class NamespacePattern(_Strict):
    """A namespace regex; the tenant is ``tenant`` or the regex's ``tenant`` named group."""

    regex: str
    tenant: str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        if "tenant" not in compiled.groupindex:
            # Allowed only with a fixed tenant; checked in the model validator below.
            pass
        return v

    @model_validator(mode="after")
    def _tenant_source(self) -> NamespacePattern:
        if self.tenant is None and "tenant" not in re.compile(self.regex).groupindex:
            raise ValueError("needs either 'tenant' or a (?P<tenant>...) group in 'regex'")
        return self


class TenancySettings(_Strict):
    """Rules that pick a pod's tenant; first match wins, in this order:
    pod label keys, namespace label keys, the namespace map, namespace patterns."""

    pod_label_keys: tuple[str, ...] = ("aifinops.io/tenant", "team")
    namespace_label_keys: tuple[str, ...] = ("aifinops.io/tenant", "team")
    namespaces: Mapping[str, str] = Field(default_factory=dict)
    namespace_patterns: tuple[NamespacePattern, ...] = ()

    def to_model(self) -> TenantResolver:
        from aifinops.model.tenancy import TenantResolver

        return TenantResolver.compile(
            self.pod_label_keys,
            self.namespace_label_keys,
            self.namespaces,
            ((p.regex, p.tenant) for p in self.namespace_patterns),
        )


class IdleGpuSettings(_Strict):
    utilization_threshold: float = Field(0.05, ge=0, le=1)
    window_seconds: float = Field(900.0, gt=0)


def _finite_non_negative(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be a finite number >= 0, got {v}")
    return v


class OwnedGpuSettings(_Strict):
    """One owned GPU model (or node pool of it): what a GPU cost and costs to run, per GPU.
    The formula, the hours counted and what happens after the life ends:
    :mod:`aifinops.model.owned_prices` and docs/owned-gpus.md."""

    gpu_model: str = Field(min_length=1)
    # A name for the pool (a label); defaults to the GPU model.
    pool: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    node_pattern: str | None = None
    purchase_price_usd: float
    purchase_date: date
    depreciation_life_years: float
    depreciation_method: Literal["straight_line", "declining_balance"] = "straight_line"
    residual_value_usd: float = 0.0
    support_usd_per_year: float = 0.0
    hosting_usd_per_gpu_month: float = 0.0

    @field_validator(
        "purchase_price_usd",
        "residual_value_usd",
        "support_usd_per_year",
        "hosting_usd_per_gpu_month",
    )
    @classmethod
    def _money(cls, v: float) -> float:
        return _finite_non_negative(v)

    @field_validator("depreciation_life_years")
    @classmethod
    def _life(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"must be a finite number of years > 0, got {v}")
        return v

    @field_validator("purchase_date")
    @classmethod
    def _not_future(cls, v: date) -> date:
        # Start-up's own date (the settings side may read a clock; the model never does).
        today = datetime.now(UTC).date()
        if v > today:
            raise ValueError(f"is in the future ({v} > today, {today} UTC)")
        return v

    @field_validator("node_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OwnedGpuSettings:
        if self.residual_value_usd > self.purchase_price_usd:
            raise ValueError(
                f"residual_value_usd ({self.residual_value_usd}) is more than "
                f"purchase_price_usd ({self.purchase_price_usd})"
            )
        life = self.depreciation_life_years
        if self.depreciation_method == "declining_balance" and life != int(life):
            raise ValueError(
                f"depreciation_life_years must be whole years with declining_balance, got {life}"
            )
        return self

    def to_model(self) -> OwnedGpuSpec:
        from aifinops.model.owned_prices import OwnedGpuSpec

        start = datetime(self.purchase_date.year, self.purchase_date.month, self.purchase_date.day)
        return OwnedGpuSpec(
            pool=self.pool or self.gpu_model,
            gpu_model=self.gpu_model,
            purchase_usd=self.purchase_price_usd,
            purchase_date=self.purchase_date.isoformat(),
            purchased_at=start.replace(tzinfo=UTC).timestamp(),
            life_years=self.depreciation_life_years,
            residual_usd=self.residual_value_usd,
            support_usd_per_year=self.support_usd_per_year,
            hosting_usd_per_gpu_month=self.hosting_usd_per_gpu_month,
            method=self.depreciation_method,
            node_pattern=self.node_pattern,
        )


class OwnedGpuPricingSettings(_Strict):
    """Owned GPUs. ``precedence`` decides where OpenCost also prices GPUs: ``opencost`` keeps
    OpenCost's price billed (owned prices published beside it), ``owned`` bills owned prices
    (model/cost.py says how the sums still hold)."""

    precedence: Literal["opencost", "owned"] = "opencost"
    gpus: tuple[OwnedGpuSettings, ...] = ()

    @model_validator(mode="after")
    def _unique_pools(self) -> OwnedGpuPricingSettings:
        seen: set[str] = set()
        for i, g in enumerate(self.gpus):
            pool = g.pool or g.gpu_model
            if pool in seen:
                raise ValueError(f"gpus[{i}].pool: {pool!r} is used twice (set pool to tell apart)")
            seen.add(pool)
        return self

    def to_model(self) -> OwnedPricing:
        from aifinops.model.owned_prices import OwnedPricing

        return OwnedPricing(tuple(g.to_model() for g in self.gpus), self.precedence)


class GpuPricingSettings(_Strict):
    """GPU prices used where OpenCost has none. ``overrides`` maps a GPU model name (as DCGM's
    ``modelName`` reports it, or a catalog key) to dollars per GPU-hour. ``owned``: GPUs the
    company bought, priced from their purchase (first match per model and node wins)."""

    purchase_option: Literal["on_demand", "spot"] = "on_demand"
    catalog_file: Path | None = None
    overrides: Mapping[str, float] = Field(default_factory=dict)
    owned: OwnedGpuPricingSettings = Field(default_factory=OwnedGpuPricingSettings)

    @field_validator("overrides")
    @classmethod
    def _non_negative(cls, v: Mapping[str, float]) -> Mapping[str, float]:
        for k, price in v.items():
            if not price >= 0 or price == float("inf"):
                raise ValueError(f"price for {k!r} must be a finite number >= 0, got {price}")
        return v


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _minute_of_day(text: str) -> int:
    m = _CLOCK.match(text)
    minute = int(m.group(1)) * 60 + int(m.group(2)) if m else -1
    if not 0 <= minute <= 24 * 60:
        raise ValueError(f"expected a local time HH:MM from 00:00 to 24:00, got {text!r}")
    return minute


class _TimeWindowSettings(_Strict):
    """A daily time-of-use window in the finance time zone (``budgets.time_zone``):
    ``[start, end)`` on ``days`` (default every day). A window over midnight is two windows."""

    days: tuple[Weekday, ...] = Field(_WEEKDAYS, min_length=1)  # [] would never apply
    start: str
    end: str

    @model_validator(mode="after")
    def _ordered(self) -> _TimeWindowSettings:
        start, end = _minute_of_day(self.start), _minute_of_day(self.end)
        if end <= start:
            raise ValueError(
                f"end ({self.end}) must be after start ({self.start}); "
                "split a window over midnight in two"
            )
        return self

    def _window(self, value: float) -> TimeWindow:
        from aifinops.model.energy import TimeWindow

        return TimeWindow(
            frozenset(_WEEKDAYS.index(d) for d in self.days),
            _minute_of_day(self.start),
            _minute_of_day(self.end),
            value,
        )


class PriceWindowSettings(_TimeWindowSettings):
    usd_per_kwh: float

    @field_validator("usd_per_kwh")
    @classmethod
    def _value(cls, v: float) -> float:
        return _finite_non_negative(v)


class CarbonWindowSettings(_TimeWindowSettings):
    grams_co2e_per_kwh: float

    @field_validator("grams_co2e_per_kwh")
    @classmethod
    def _value(cls, v: float) -> float:
        return _finite_non_negative(v)


class EnergyPriceSettings(_Strict):
    """USD per kWh: ``usd_per_kwh`` (flat), except inside the first ``schedule`` window that
    covers a moment (time of use)."""

    usd_per_kwh: float = 0.0
    schedule: tuple[PriceWindowSettings, ...] = ()

    @field_validator("usd_per_kwh")
    @classmethod
    def _value(cls, v: float) -> float:
        return _finite_non_negative(v)

    def to_model(self) -> Schedule:
        from aifinops.model.energy import Schedule

        return Schedule(self.usd_per_kwh, tuple(w._window(w.usd_per_kwh) for w in self.schedule))


class EnergyCarbonSettings(_Strict):
    """Grid carbon intensity in grams CO2e per kWh: flat, or a schedule as for the price."""

    grams_co2e_per_kwh: float = 0.0
    schedule: tuple[CarbonWindowSettings, ...] = ()

    @field_validator("grams_co2e_per_kwh")
    @classmethod
    def _value(cls, v: float) -> float:
        return _finite_non_negative(v)

    def to_model(self) -> Schedule:
        from aifinops.model.energy import Schedule

        return Schedule(
            self.grams_co2e_per_kwh,
            tuple(w._window(w.grams_co2e_per_kwh) for w in self.schedule),
        )


class EnergyBudgetSettings(_Strict):
    """A tenant's monthly budget for its GPU electricity (USD) and/or its carbon (kg CO2e)."""

    tenant: str = Field(min_length=1)
    energy_usd: float | None = None
    carbon_kg: float | None = None

    @field_validator("energy_usd", "carbon_kg")
    @classmethod
    def _value(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise ValueError(f"must be a finite number > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _some(self) -> EnergyBudgetSettings:
        if self.energy_usd is None and self.carbon_kg is None:
            raise ValueError("set energy_usd, carbon_kg or both")
        return self


class EnergySettings(_Strict):
    """Measured GPU energy per tenant (docs/owned-gpus.md): read from DCGM (the source
    ``sources.dcgm`` points at: its total-energy counter, else its power draw), split like the
    usage basis, priced per kWh × ``pue`` and turned into carbon. Off unless ``enabled``."""

    enabled: bool = False
    pue: float = 1.0
    price: EnergyPriceSettings = Field(default_factory=EnergyPriceSettings)
    carbon: EnergyCarbonSettings = Field(default_factory=EnergyCarbonSettings)
    budgets: tuple[EnergyBudgetSettings, ...] = ()

    @field_validator("pue")
    @classmethod
    def _pue(cls, v: float) -> float:
        if not math.isfinite(v) or not 1.0 <= v <= 5.0:
            raise ValueError(f"must be a power usage effectiveness from 1 to 5, got {v}")
        return v

    @model_validator(mode="after")
    def _unique_tenants(self) -> EnergySettings:
        seen: set[str] = set()
        for i, b in enumerate(self.budgets):
            if b.tenant in seen:
                raise ValueError(f"budgets[{i}].tenant: {b.tenant!r} is listed twice")
            seen.add(b.tenant)
        return self

    def to_model(self, tz: str) -> EnergyContext:
        """Compiled, with the finance time zone (``budgets.time_zone``) the schedules use."""
        from aifinops.model.energy import EnergyBudget, EnergyContext

        return EnergyContext(
            pue=self.pue,
            price=self.price.to_model(),
            carbon=self.carbon.to_model(),
            tz=tz,
            budgets={
                b.tenant: EnergyBudget(
                    b.energy_usd, None if b.carbon_kg is None else b.carbon_kg * 1000.0
                )
                for b in self.budgets
            },
        )


class LimitsSettings(_Strict):
    """Cardinality caps. ``max_tenants``: the costliest tenants are kept, the rest folded into
    ``__other__``. ``max_series_per_family``: a series family over it keeps its largest
    series; the rest are summed into ``__other__`` series when the family holds dollars,
    tokens or GPUs (nothing is lost from a total), else dropped; either way counted in
    ``aifinops_series_dropped_total{family}``."""

    max_tenants: int = Field(500, ge=1)
    max_series_per_family: int = Field(20_000, ge=100)


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # logfmt and json are one line per event (tracebacks included); console is for a terminal.
    format: Literal["auto", "json", "logfmt", "console"] = "auto"


# --- LLM tokens ----------------------------------------------------------------------------
TokenTypeName = Literal["input", "output", "cached_input"]
ChargeBackResource = Literal["gpu", "cpu", "ram", "storage", "network", "shared"]

# Labels that name a person or an API key: never a tenant (their values would become series).
FORBIDDEN_TENANT_LABELS = frozenset(
    {
        "hashed_api_key",
        "api_key",
        "api_key_alias",
        "user",
        "user_id",
        "user_email",
        "end_user",
        "email",
    }
)
_TOKEN_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class TokenMetricSettings(_Strict):
    """One upstream series family mapped to a token type.

    ``token_type`` fixes the type, or ``token_type_label`` reads it from a label through
    ``token_type_values`` (unlisted values are skipped). ``older_names`` are read only when
    ``metric`` has no series (renamed upstream metrics). ``subtract`` names a series family
    whose value is subtracted (prompt tokens minus cached prompt tokens), paired on the labels
    both families carry (LiteLLM's cached counter has fewer labels than its input counter);
    where one partner meets several series it is split in proportion to their values.
    ``kind: spend_usd`` reads dollars an upstream computed (LiteLLM's spend), used only to
    price models the price list does not know.
    """

    metric: str
    older_names: tuple[str, ...] = ()
    token_type: TokenTypeName | None = None
    token_type_label: str | None = None
    token_type_values: Mapping[str, TokenTypeName] = Field(default_factory=dict)
    subtract: str | None = None
    kind: Literal["tokens", "spend_usd"] = "tokens"

    @model_validator(mode="after")
    def _consistent(self) -> TokenMetricSettings:
        for name in (self.metric, *self.older_names, *([self.subtract] if self.subtract else [])):
            if not _METRIC_NAME.match(name):
                raise ValueError(f"{name!r} is not a Prometheus metric name")
        if self.kind == "tokens" and (self.token_type is None) == (self.token_type_label is None):
            raise ValueError("set exactly one of token_type and token_type_label")
        if self.token_type_label is not None and not self.token_type_values:
            raise ValueError("token_type_label needs token_type_values")
        return self


class ScrapeTargetSettings(_Strict):
    """A ``/metrics`` URL read directly, with the labels Prometheus would have added as target
    labels (e.g. ``{namespace: llm-serving, pod: vllm-0}``); sample labels win on conflict."""

    url: str
    labels: Mapping[str, str] = Field(default_factory=dict)


class TokenSourceSettings(SourceCommon):
    """One token source: a preset (vllm, litellm, otel_genai, tgi) or ``custom``; every
    field left unset takes the preset's value. ``role``: ``usage`` counts tokens per tenant,
    ``serving`` counts what model servers processed (the denominator of the measured cost per
    token, and how serving pods are found), ``both`` does both.

    Tenant of a usage series: ``tenant`` if set, else the first non-empty ``tenant_labels``
    value (never an email-like value), else the tenant of the pod named by ``namespace_labels``
    / ``pod_labels`` (or of the namespace alone, by the tenancy rules), else __unallocated__.
    """

    name: str
    preset: Literal["vllm", "litellm", "otel_genai", "tgi", "custom"]
    mode: Literal["prometheus", "scrape"] = "prometheus"
    prometheus_url: str | None = None
    selector: str = ""
    scrape_targets: tuple[ScrapeTargetSettings, ...] = ()
    role: Literal["usage", "serving", "both"] | None = None
    metrics: tuple[TokenMetricSettings, ...] | None = None
    model: str | None = None
    model_labels: tuple[str, ...] | None = None
    provider: str | None = None
    provider_labels: tuple[str, ...] | None = None
    tenant: str | None = None
    tenant_labels: tuple[str, ...] | None = None
    namespace_labels: tuple[str, ...] | None = None
    pod_labels: tuple[str, ...] | None = None
    # The provider from the server a client talked to (OpenTelemetry's server.address): the
    # first glob pattern (fnmatch, case-insensitive) matching the host names the provider;
    # an unmatched host is "openai_compatible" where the labels say openai or nothing.
    server_address_labels: tuple[str, ...] | None = None
    server_address_providers: Mapping[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TOKEN_SOURCE_NAME.match(v) or v == "push":
            raise ValueError("must match [a-z0-9][a-z0-9_-]{0,39} and not be 'push'")
        return v

    @field_validator("tenant_labels")
    @classmethod
    def _no_personal_labels(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        bad = sorted(set(v or ()) & FORBIDDEN_TENANT_LABELS)
        if bad:
            raise ValueError(f"{bad} identify a person or an API key and cannot be a tenant")
        return v

    @model_validator(mode="after")
    def _complete(self) -> TokenSourceSettings:
        if self.enabled and self.mode == "prometheus" and not self.prometheus_url:
            raise ValueError("mode 'prometheus' needs prometheus_url")
        if self.enabled and self.mode == "scrape" and not self.scrape_targets:
            raise ValueError("mode 'scrape' needs at least one entry in scrape_targets")
        if self.preset == "custom" and not self.metrics:
            raise ValueError("preset 'custom' needs metrics")
        if self.preset in ("custom", "tgi") and not (self.model or self.model_labels):
            raise ValueError(f"preset {self.preset!r} needs model or model_labels")
        return self


class PriceOverrideSettings(_Strict):
    """A configured price in USD per 1M tokens; wins over the price file."""

    input_usd_per_million_tokens: float = Field(ge=0, allow_inf_nan=False)
    output_usd_per_million_tokens: float = Field(0.0, ge=0, allow_inf_nan=False)
    cached_input_usd_per_million_tokens: float | None = Field(None, ge=0, allow_inf_nan=False)
    provider: str | None = None


class LlmPricesSettings(UpstreamHttpSettings):
    """The LLM price list (LiteLLM's model_prices_and_context_window.json format): the bundled
    file, ``file`` (re-read when its mtime or size changes) or ``url`` (fetched every
    ``refresh_interval_seconds``); the last good copy is kept when a read or fetch fails."""

    file: Path | None = None
    url: str | None = None
    version: str | None = None
    refresh_interval_seconds: float = Field(3600.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0, le=300)
    max_response_bytes: int = Field(32 * 1024 * 1024, gt=0)
    overrides: Mapping[str, PriceOverrideSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_origin(self) -> LlmPricesSettings:
        if self.file is not None and self.url is not None:
            raise ValueError("set file or url, not both")
        return self


class PodSelectorSettings(_Strict):
    """Pods (as OpenCost reports them) that serve a model: every given criterion must hold."""

    namespaces: tuple[str, ...] = ()
    pod_regex: str | None = None
    pod_labels: Mapping[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some_criterion(self) -> PodSelectorSettings:
        if not (self.namespaces or self.pod_regex or self.pod_labels):
            raise ValueError("give at least one of namespaces, pod_regex, pod_labels")
        if self.pod_regex is not None:
            try:
                re.compile(self.pod_regex)
            except re.error as exc:
                raise ValueError(f"pod_regex is not a valid regular expression: {exc}") from exc
        return self


class SelfHostedModelSettings(_Strict):
    """A self-hosted model: its name as token series show it, other spellings, the provider
    label its series carry, the pods that serve it, and a price-list model to compare with."""

    model: str
    aliases: tuple[str, ...] = ()
    provider: str = "self_hosted"
    serving_pods: PodSelectorSettings | None = None
    api_equivalent: str | None = None


class TokenCostWeightsSettings(_Strict):
    """Relative serving cost of one token of each type (only ratios matter)."""

    input: float = Field(1.0, ge=0, allow_inf_nan=False)
    cached_input: float = Field(0.1, ge=0, allow_inf_nan=False)
    output: float = Field(4.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _positive(self) -> TokenCostWeightsSettings:
        if self.input + self.output <= 0:
            raise ValueError("input and output weights cannot both be 0")
        return self


class SelfHostedSettings(_Strict):
    models: tuple[SelfHostedModelSettings, ...] = ()
    discover_from_serving_sources: bool = True
    api_equivalents: Mapping[str, str] = Field(default_factory=dict)
    cost_weights: TokenCostWeightsSettings = Field(default_factory=TokenCostWeightsSettings)
    charge_back_resources: tuple[ChargeBackResource, ...] = ("gpu", "cpu", "ram")


class UsagePushSettings(_Strict):
    """``POST /api/v1/usage``: off unless enabled; bounded; optional bearer token."""

    enabled: bool = False
    max_body_bytes: int = Field(1024 * 1024, gt=0, le=64 * 1024 * 1024)
    max_records_per_batch: int = Field(1000, ge=1, le=100_000)
    max_tokens_per_record: int = Field(1_000_000_000, ge=1)
    max_series: int = Field(10_000, ge=1)
    idempotency_cache_size: int = Field(100_000, ge=0)
    bearer_token_file: Path | None = None
    # Token bucket per client (its bearer token, else its address): batches per second and
    # the burst allowed; over it, 429 with Retry-After. 0 turns the limit off.
    rate_limit_per_second: float = Field(20.0, ge=0, allow_inf_nan=False)
    rate_limit_burst: int = Field(40, ge=1)


class TokensSettings(_Strict):
    """LLM token analytics. Active when a source is configured or push is enabled."""

    sources: tuple[TokenSourceSettings, ...] = ()
    prices: LlmPricesSettings = Field(default_factory=LlmPricesSettings)
    self_hosted: SelfHostedSettings = Field(default_factory=SelfHostedSettings)
    push: UsagePushSettings = Field(default_factory=UsagePushSettings)
    rate_window_seconds: float = Field(300.0, gt=0, le=86_400)
    series_retention_seconds: float = Field(3600.0, gt=0)
    # A decrease of an upstream counter by at most this fraction of its highest value is read
    # jitter (HA Prometheus pairs, Thanos deduplication), not a reset: the highest value is
    # kept and only what passes it counts. A larger drop is a reset, counted from zero.
    counter_dip_tolerance_ratio: float = Field(0.1, ge=0, lt=1, allow_inf_nan=False)
    max_models: int = Field(200, ge=1)

    def to_model(self) -> TokenContext:
        from aifinops.model.llm_prices import normalize_provider
        from aifinops.model.tokens import SelfHostedSpec, TokenContext

        specs = []
        equivalents = self.self_hosted.api_equivalents
        for m in self.self_hosted.models:
            sel = m.serving_pods
            specs.append(
                SelfHostedSpec(
                    model=m.model,
                    provider=normalize_provider(m.provider) or "self_hosted",
                    aliases=m.aliases,
                    api_equivalent=m.api_equivalent or equivalents.get(m.model),
                    namespaces=frozenset(sel.namespaces) if sel else frozenset(),
                    pod_regex=re.compile(sel.pod_regex) if sel and sel.pod_regex else None,
                    pod_labels=dict(sel.pod_labels) if sel else {},
                    has_selector=sel is not None,
                )
            )
        w = self.self_hosted.cost_weights
        return TokenContext(
            models=tuple(specs),
            discover=self.self_hosted.discover_from_serving_sources,
            api_equivalents=dict(self.self_hosted.api_equivalents),
            weights={"input": w.input, "cached_input": w.cached_input, "output": w.output},
            charge_back_resources=tuple(self.self_hosted.charge_back_resources),
            rate_window_seconds=self.rate_window_seconds,
            retention_seconds=self.series_retention_seconds,
            max_models=self.max_models,
            dip_tolerance=self.counter_dip_tolerance_ratio,
        )

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: tuple[TokenSourceSettings, ...]) -> tuple[TokenSourceSettings, ...]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        return v

    @property
    def active(self) -> bool:
        return any(s.enabled for s in self.sources) or self.push.enabled


# --- measured latency for routing ----------------------------------------------------------
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LATENCY_QUERY_PARTS = ("metric", "selector", "window_seconds", "quantile")


class LatencySourceSettings(SourceCommon):
    """One source of measured p95 latency per (model, ``provider``) for the routing
    candidates, from a latency histogram (vLLM's ``vllm:e2e_request_latency_seconds``;
    ``sources/latency.py``). Candidates it measures show ``latency_source: measured``; the
    others, and all of them while it is down or stale, use their configured
    ``p95_latency_seconds``.

    ``mode: prometheus`` runs one instant query, by default
    ``histogram_quantile(<quantile>, sum by (le, <model_label>) (rate(<metric>_bucket
    <selector>[<window_seconds>s])))`` keeping only models with ``min_requests`` requests in
    the window; ``query`` replaces it whole (it must return one series per model, labelled
    ``model_label``, valued in seconds). ``mode: scrape`` reads the servers' ``/metrics``
    pages and computes the same quantile from the bucket increases over ``window_seconds``
    (``max_snapshots`` cumulative readings per series are kept). ``provider`` is the provider
    name the routing candidates give the model (``vllm`` in the demo).
    """

    name: str
    mode: Literal["prometheus", "scrape"] = "prometheus"
    prometheus_url: str | None = None
    query: str | None = Field(None, min_length=1, max_length=4000)
    metric: str = "vllm:e2e_request_latency_seconds"
    selector: str = ""
    window_seconds: int = Field(300, ge=10, le=86_400)
    quantile: float = Field(0.95, gt=0, le=1, allow_inf_nan=False)
    model_label: str = "model_name"
    provider: str = Field("vllm", min_length=1, max_length=128)
    min_requests: int = Field(20, ge=1)
    scrape_targets: tuple[ScrapeTargetSettings, ...] = ()
    max_snapshots: int = Field(32, ge=3, le=1024)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TOKEN_SOURCE_NAME.match(v):
            raise ValueError("must match [a-z0-9][a-z0-9_-]{0,39}")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not _METRIC_NAME.match(v):
            raise ValueError(f"{v!r} is not a Prometheus metric name")
        if v.endswith(("_bucket", "_count", "_sum")):
            raise ValueError("give the histogram's name without _bucket/_count/_sum")
        return v

    @field_validator("model_label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not _LABEL_NAME.match(v) or v == "le":
            raise ValueError(f"{v!r} is not a usable label name")
        return v

    @model_validator(mode="after")
    def _complete(self) -> LatencySourceSettings:
        if self.enabled and self.mode == "prometheus" and not self.prometheus_url:
            raise ValueError("mode 'prometheus' needs prometheus_url")
        if self.enabled and self.mode == "scrape" and not self.scrape_targets:
            raise ValueError("mode 'scrape' needs at least one entry in scrape_targets")
        if self.query is not None:
            if self.mode != "prometheus":
                raise ValueError("query applies to mode 'prometheus' only")
            clash = [f for f in _LATENCY_QUERY_PARTS if f in self.model_fields_set]
            if clash:
                raise ValueError(f"query replaces the built query: drop {', '.join(clash)}")
        return self


class LatencySettings(_Strict):
    """Measured latency for model routing (``routing.workloads[].candidates``): off until a
    source is listed; each is named ``latency:<name>`` in the self-metrics. Where two sources
    measure the same (model, provider), the first listed wins."""

    sources: tuple[LatencySourceSettings, ...] = ()

    @field_validator("sources")
    @classmethod
    def _unique_names(
        cls, v: tuple[LatencySourceSettings, ...]
    ) -> tuple[LatencySourceSettings, ...]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        return v


class ApiSettings(_Strict):
    """Bearer-token auth for the JSON API (``/api/*``).

    Tokens are read from files (one token per file, surrounding whitespace ignored, re-read
    when the file changes, e.g. a rotated Kubernetes Secret) or from the environment variables
    named here — never from the configuration text. Scopes: a ``read`` token allows the GET
    routes and the what-if calculators (``POST /api/v1/roi/calculate``,
    ``POST /api/v1/routing/optimize``: they change nothing); a ``write`` token allows those and
    the routes that change state (``POST /api/v1/usage``). ``require_auth_for_reads: false``
    leaves the read routes open (a token that is sent must still be valid).
    ``/api/v1/openapi.json`` is always open: it describes the API and holds no data.
    """

    require_auth_for_reads: bool = False
    read_token_files: tuple[Path, ...] = ()
    write_token_files: tuple[Path, ...] = ()
    read_token_env: tuple[str, ...] = ()
    write_token_env: tuple[str, ...] = ()

    @field_validator("read_token_env", "write_token_env")
    @classmethod
    def _env_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not an environment variable name (give the variable's name, "
                    "never the token itself)"
                )
        return v

    @model_validator(mode="after")
    def _readable(self) -> ApiSettings:
        if self.require_auth_for_reads and not self.has_tokens:
            raise ValueError(
                "require_auth_for_reads needs at least one token "
                "(read_token_files, write_token_files, read_token_env or write_token_env)"
            )
        return self

    @property
    def has_tokens(self) -> bool:
        return bool(
            self.read_token_files
            or self.write_token_files
            or self.read_token_env
            or self.write_token_env
        )


class StateSettings(_Strict):
    """The optional state file (``aifinops/statefile.py``): the exporter's own ledger
    (charge-back periods, token and charge-back dollars per day, this month's token volume,
    utilization peaks) and its token counters' last values, so they survive a restart. Off
    unless ``path`` is set; its directory must be writable at start-up (exit 2 otherwise).

    ``save_interval_seconds``: written after a refresh at most this often, and on SIGTERM.
    ``max_gap_seconds``: a restart whose gap (saved refresh to the first refresh after it)
    is at most this long is bridged like one long refresh interval; a longer one is not
    estimated. ``cluster_name``: part of the file's identity (with ``budgets.time_zone`` and
    the upstreams' cluster scoping), so a file from another cluster is never loaded.
    """

    path: Path | None = None
    save_interval_seconds: float = Field(60.0, ge=1, le=86_400, allow_inf_nan=False)
    max_gap_seconds: float = Field(900.0, ge=0, le=86_400, allow_inf_nan=False)
    cluster_name: str = Field("", max_length=256)

    @field_validator("path")
    @classmethod
    def _names_a_file(cls, v: Path | None) -> Path | None:
        if v is not None and (not v.name or v.name in (".", "..") or str(v).endswith("/")):
            raise ValueError("must name a file (its directory holds the file and temp copies)")
        return v


class Settings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings)
    refresh: RefreshSettings = Field(default_factory=RefreshSettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    tenancy: TenancySettings = Field(default_factory=TenancySettings)
    idle_gpu: IdleGpuSettings = Field(default_factory=IdleGpuSettings)
    gpu_pricing: GpuPricingSettings = Field(default_factory=GpuPricingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    tokens: TokensSettings = Field(default_factory=TokensSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    budgets: BudgetsSettings = Field(default_factory=BudgetsSettings)
    chargeback: ChargebackSettings = Field(default_factory=ChargebackSettings)
    initiatives: InitiativeList = ()
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    recommendations: RecommendationsSettings = Field(default_factory=RecommendationsSettings)
    latency: LatencySettings = Field(default_factory=LatencySettings)
    state: StateSettings = Field(default_factory=StateSettings)
    energy: EnergySettings = Field(default_factory=EnergySettings)
    # A configuration without a source publishes no cost series: refused at start-up, by
    # --check-config and by a reload (check_has_sources), unless this says it is meant.
    allow_no_sources: bool = False

    def finance_to_model(self) -> FinanceContext:
        """The finance configuration, which spans several sections, compiled."""
        from aifinops.model.finance import FinanceContext

        return FinanceContext(
            tz=self.budgets.time_zone,
            lookback_days=self.budgets.lookback_days,
            budgets=self.budgets.to_model(),
            initiatives=tuple(i.to_model() for i in self.initiatives),
            workloads=self.routing.to_model(),
            policy=self.recommendations.to_model(),
            gpu_specs=self.recommendations.gpu_specs(),
            idle_window_seconds=self.idle_gpu.window_seconds,
            books_months=self.sources.opencost.history_months,
        )


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(m|h|d)$")


def parse_duration_hours(text: str) -> float:
    """Parse an OpenCost-style duration (``30m``, ``1h``, ``7d``) to hours (> 0)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"expected a duration such as '30m', '1h' or '7d', got {text!r}")
    value = float(m.group(1)) * {"m": 1 / 60, "h": 1.0, "d": 24.0}[m.group(2)]
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {path}: {msg} (got {shown})")
    # A URL's credentials never reach stderr, in the value shown or in the message.
    return redact_text("\n".join(lines))


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return ``data`` with ``AIFINOPS__A__B=v`` values set at ``a.b`` (keys lower-cased)."""
    out: dict[str, Any] = _deep_copy(data)
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(environ[key])
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {key}: not a YAML value: {exc}") from exc
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def settings_from_mapping(
    data: Mapping[str, Any] | None, source: str = "configuration"
) -> Settings:
    """Validate a parsed mapping; raise :class:`ConfigError` naming each bad field."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"invalid configuration in {source}: top level must be a mapping")
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load ``path`` (or defaults when ``None``), apply env overrides, validate."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            # A regular file within a bound: a FIFO would hang start-up or a reload, a link to
            # /dev/zero would read until memory runs out (safefile.py).
            text = read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except ValueError as exc:  # a NUL in the path, text that is not UTF-8
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            # An empty file (a truncated ConfigMap, a failed template) would run on defaults:
            # no source, every series gone. Refused, even where allow_no_sources would pass.
            raise ConfigError(f"configuration file {path} is empty")
        if not isinstance(loaded, dict):
            raise ConfigError(f"invalid configuration in {path}: top level must be a mapping")
        data = loaded
    data = apply_env_overrides(data, env)
    if any(k.startswith(ENV_PREFIX) for k in env):
        source += " (with AIFINOPS__ environment overrides)"
    return settings_from_mapping(data, source)
