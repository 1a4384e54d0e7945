"""``aifinops-exporter --demo``: start the fake upstreams and point the real sources at them."""

from __future__ import annotations

from typing import Any

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.upstreams import Upstreams, start_upstreams
from aifinops.settings import Settings, settings_from_mapping

# Short windows so a newcomer sees idle GPUs within a minute, not fifteen.
DEMO_OVERRIDES: dict[str, Any] = {
    "refresh": {"interval_seconds": 10},
    "idle_gpu": {"window_seconds": 60},
}


def demo_settings(base: Settings, upstreams: Upstreams) -> Settings:
    """``base`` with sources and tenancy taken from the running fakes."""
    data: dict[str, Any] = base.model_dump(mode="python")
    demo = upstreams.exporter_config()
    for section, values in {**DEMO_OVERRIDES, **demo}.items():
        if section == "sources":
            for name, source in values.items():
                data["sources"][name] = {**data["sources"][name], **source, "enabled": True}
        else:
            data[section] = {**data[section], **values}
    return settings_from_mapping(data, "demo configuration")


async def start_demo(base: Settings, spec: ClusterSpec | None = None) -> tuple[Upstreams, Settings]:
    sim = SimCluster(spec or ClusterSpec.demo())
    upstreams = await start_upstreams(sim)
    return upstreams, demo_settings(base, upstreams)
