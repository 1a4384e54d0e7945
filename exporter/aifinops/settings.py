"""Configuration: one YAML file plus environment overrides, validated strictly.

Environment overrides use ``AIFINOPS__`` and ``__`` between path parts, e.g.
``AIFINOPS__SOURCES__OPENCOST__URL=http://opencost:9003`` or
``AIFINOPS__SERVER__PORT=9900``. Values are parsed as YAML scalars/flow collections, so
``AIFINOPS__SOURCES__DCGM__SCRAPE_URLS='[http://a:9400/metrics]'`` sets a list.

Any problem is raised as :class:`ConfigError`, whose message names the field path and the
offending value; ``__main__`` prints it and exits with status 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "AIFINOPS__"


class ConfigError(Exception):
    """A configuration problem, with the field path and value named in the message."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    listen_address: str = "0.0.0.0"
    port: int = Field(9877, ge=1, le=65535)


class RefreshSettings(_Strict):
    interval_seconds: float = Field(30.0, gt=0, le=3600)


class SourceCommon(_Strict):
    enabled: bool = True
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    stale_after_seconds: float = Field(600.0, gt=0)
    max_response_bytes: int = Field(64 * 1024 * 1024, gt=0)
    bearer_token_file: Path | None = None


class DcgmSettings(SourceCommon):
    """Where GPU utilization comes from.

    ``mode: prometheus`` runs instant queries against ``prometheus_url`` (a Prometheus that
    scrapes dcgm-exporter); ``mode: scrape`` reads dcgm-exporter ``/metrics`` pages directly.
    """

    mode: Literal["prometheus", "scrape"] = "prometheus"
    prometheus_url: str | None = None
    scrape_urls: tuple[str, ...] = ()
    utilization_metric: Literal["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"] = (
        "DCGM_FI_DEV_GPU_UTIL"
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


class OpenCostSettings(SourceCommon):
    url: str | None = None
    # OpenCost duration window: the cost rate is the window's cost / its length.
    window: str = "1h"
    # Optional extra query parameters (e.g. {"filter": "cluster:\"prod\""}).
    params: Mapping[str, str] = Field(default_factory=dict)

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


class IdleGpuSettings(_Strict):
    utilization_threshold: float = Field(0.05, ge=0, le=1)
    window_seconds: float = Field(900.0, gt=0)


class GpuPricingSettings(_Strict):
    """GPU prices used where OpenCost has none. ``overrides`` maps a GPU model name (as DCGM's
    ``modelName`` reports it, or a catalog key) to dollars per GPU-hour."""

    purchase_option: Literal["on_demand", "spot"] = "on_demand"
    catalog_file: Path | None = None
    overrides: Mapping[str, float] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _non_negative(cls, v: Mapping[str, float]) -> Mapping[str, float]:
        for k, price in v.items():
            if not price >= 0 or price == float("inf"):
                raise ValueError(f"price for {k!r} must be a finite number >= 0, got {price}")
        return v


class LimitsSettings(_Strict):
    max_tenants: int = Field(500, ge=1)


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings)
    refresh: RefreshSettings = Field(default_factory=RefreshSettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    tenancy: TenancySettings = Field(default_factory=TenancySettings)
    idle_gpu: IdleGpuSettings = Field(default_factory=IdleGpuSettings)
    gpu_pricing: GpuPricingSettings = Field(default_factory=GpuPricingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


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
    return "\n".join(lines)


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
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"invalid configuration in {path}: top level must be a mapping")
        data = loaded or {}
    data = apply_env_overrides(data, env)
    if any(k.startswith(ENV_PREFIX) for k in env):
        source += " (with AIFINOPS__ environment overrides)"
    return settings_from_mapping(data, source)
