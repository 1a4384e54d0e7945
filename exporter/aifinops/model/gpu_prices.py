"""GPU price catalog: USD per whole GPU-hour by GPU model, with tolerant model-name matching.

The catalog is data (``aifinops/data/gpu_prices.yaml`` or a user file, loaded by
:func:`aifinops.sources.gpu_catalog.load_gpu_catalog`); this module only looks prices up.
Lookup order: an owned-GPU entry (``gpu_pricing.owned``, priced at the pricer's ``now`` by
:mod:`aifinops.model.owned_prices`), then the configuration override, then the catalog entry
for the configured purchase option.
Names match case-insensitively after dropping an ``NVIDIA``/``Tesla`` prefix and collapsing
separators, so ``"NVIDIA A100-SXM4-80GB"``, ``"a100 sxm4 80gb"`` and an alias all match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from aifinops.model.owned_prices import (
    OwnedGpuSpec,
    OwnedHourlyCost,
    OwnedPricing,
    owned_hourly_cost,
)

PriceSource = Literal["owned", "override", "catalog"]

_PREFIX = re.compile(r"^(nvidia|tesla)\s+")
_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_gpu_model(name: str) -> str:
    """Canonical matching key for a GPU model name."""
    key = name.strip().lower()
    key = _PREFIX.sub("", key)
    return _SEPARATORS.sub(" ", key).strip()


@dataclass(frozen=True, slots=True)
class GpuPrice:
    on_demand: float
    spot: float
    source: str


@dataclass(frozen=True, slots=True)
class GpuPriceCatalog:
    version: str
    # normalized name or alias -> (display name, price)
    entries: Mapping[str, tuple[str, GpuPrice]] = field(default_factory=dict)

    def lookup(self, model_name: str) -> tuple[str, GpuPrice] | None:
        return self.entries.get(normalize_gpu_model(model_name))


@dataclass(frozen=True, slots=True)
class GpuPricer:
    """Resolves the price per GPU-hour for a model; ``None`` when nothing is known."""

    catalog: GpuPriceCatalog
    purchase_option: Literal["on_demand", "spot"] = "on_demand"
    overrides: Mapping[str, float] = field(default_factory=dict)
    owned: OwnedPricing = field(default_factory=OwnedPricing)
    # The instant owned prices are computed for; None until the model sets it (``at``): then
    # owned entries are not used (a price needs the GPU's age).
    now: float | None = None

    def at(self, now: float) -> GpuPricer:
        """This pricer with owned prices computed at ``now`` (unix seconds)."""
        return self if not self.owned.entries else replace(self, now=now)

    def owned_spec(self, model_name: str, node: str = "") -> OwnedGpuSpec | None:
        """The first owned entry for this GPU model whose ``node_pattern`` (a full match on
        the node name; none: every node) matches."""
        wanted = normalize_gpu_model(model_name)
        for spec in self.owned.entries:
            if normalize_gpu_model(spec.gpu_model) != wanted:
                continue
            if spec.node_pattern is None or re.fullmatch(spec.node_pattern, node):
                return spec
        return None

    def owned_prices(self) -> tuple[OwnedHourlyCost, ...]:
        """Every owned entry's price at ``now`` (none before ``at``)."""
        return () if self.now is None else self.owned.at(self.now)

    def price(self, model_name: str, node: str = "") -> tuple[float, PriceSource] | None:
        if self.now is not None:
            spec = self.owned_spec(model_name, node)
            if spec is not None:
                return owned_hourly_cost(spec, self.now).total, "owned"
        wanted = normalize_gpu_model(model_name)
        for name, value in self.overrides.items():
            if normalize_gpu_model(name) == wanted:
                return value, "override"
        found = self.catalog.lookup(model_name)
        if found is None:
            return None
        price = found[1]
        return (price.spot if self.purchase_option == "spot" else price.on_demand), "catalog"


# MIG: compute slices of a profile ("3g.40gb" -> 3) over the GPU's total slices.
_MIG_SLICES = re.compile(r"^(\d+)g\.")
_SEVEN_SLICE_DEFAULT = 7
_FOUR_SLICE_MODELS = ("a30",)


def mig_fraction(profile: str, model_name: str) -> float:
    """Fraction of a physical GPU a MIG instance holds, by compute slices.

    A100/H100/H200 have 7 compute slices, A30 has 4. An unrecognized profile counts as the
    whole GPU (over-counting a slice is safer than losing its cost); see the docs.
    """
    m = _MIG_SLICES.match(profile.strip().lower())
    if not m:
        return 1.0
    total = 4 if any(k in normalize_gpu_model(model_name) for k in _FOUR_SLICE_MODELS) else 7
    return min(1.0, int(m.group(1)) / total)
