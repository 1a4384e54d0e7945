"""The Grafana dashboards as code: :mod:`.panels` is the panel library (grid layout, panel
kinds, the shared variables and colours), :mod:`.rules` the recording rules the panels read,
and each other module builds one dashboard (``build() -> dict``).

Adding a dashboard is one module here and one line in :data:`DASHBOARDS`;
``scripts/build_dashboards.py`` renders them through the mixin into dashboards/*.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import (
    energy_carbon,
    executive,
    exporter_health,
    gpu_efficiency,
    tenant_chargeback,
    tokens_routing,
)
from .panels import THRESHOLDS

__all__ = ["DASHBOARDS", "THRESHOLDS"]

# dashboards/<file name> → its builder, in the order the files are written.
DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "executive.json": executive.build,
    "tenant-chargeback.json": tenant_chargeback.build,
    "gpu-efficiency.json": gpu_efficiency.build,
    "tokens-routing.json": tokens_routing.build,
    "exporter-health.json": exporter_health.build,
    "energy-carbon.json": energy_carbon.build,
}
