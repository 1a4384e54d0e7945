"""Load the GPU price catalog (bundled YAML or a user file) into the model's lookup table."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from aifinops.model.gpu_prices import GpuPrice, GpuPriceCatalog, normalize_gpu_model
from aifinops.settings import ConfigError

BUNDLED = "gpu_prices.yaml"


def _price(entry: dict[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}.{key}: must be a finite number >= 0, got {value!r}")
    return float(value)


def parse_gpu_catalog(data: Any, origin: str) -> GpuPriceCatalog:
    """Validate a parsed catalog document; raise :class:`ConfigError` naming the bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"GPU price catalog {origin}: top level must be a mapping")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise ConfigError(f"GPU price catalog {origin}: 'version' must be a non-empty string")
    models = data.get("models")
    if not isinstance(models, list):
        raise ConfigError(f"GPU price catalog {origin}: 'models' must be a list")
    entries: dict[str, tuple[str, GpuPrice]] = {}
    for i, entry in enumerate(models):
        where = f"GPU price catalog {origin}: models[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where}: needs a 'name' string")
        price = GpuPrice(
            on_demand=_price(entry, "on_demand", where),
            spot=_price(entry, "spot", where),
            source=str(entry.get("source", "")),
        )
        aliases = entry.get("aliases") or []
        if not isinstance(aliases, list):
            raise ConfigError(f"{where}.aliases: must be a list of strings")
        for name in [entry["name"], *aliases]:
            entries[normalize_gpu_model(str(name))] = (entry["name"], price)
    return GpuPriceCatalog(version=version, entries=entries)


def load_gpu_catalog(path: Path | None = None) -> GpuPriceCatalog:
    """The catalog at ``path``, or the one bundled with the package."""
    if path is None:
        text = resources.files("aifinops.data").joinpath(BUNDLED).read_text(encoding="utf-8")
        origin = f"(bundled {BUNDLED})"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read GPU price catalog {path}: {exc.strerror}") from None
        origin = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"GPU price catalog {origin} is not valid YAML: {exc}") from None
    return parse_gpu_catalog(data, origin)
