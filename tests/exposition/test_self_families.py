"""Self-metrics rendered from state owned outside the model (the reload status), read back
with prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from aifinops.exposition.families import reload_families
from aifinops.exposition.render import render


@dataclass
class Reload:
    successful: bool
    success_timestamp: float


def samples(reload: Reload) -> dict[str, float]:
    text = render(reload_families(reload)).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_reload_status_follows_the_reloader() -> None:
    assert samples(Reload(True, 1_750_000_000.0)) == {
        "aifinops_config_last_reload_successful": 1.0,
        "aifinops_config_last_reload_success_timestamp_seconds": 1_750_000_000.0,
    }
    # A failed reload keeps the time of the configuration still in force.
    failed = samples(Reload(False, 1_750_000_000.0))
    assert failed["aifinops_config_last_reload_successful"] == 0.0
    assert failed["aifinops_config_last_reload_success_timestamp_seconds"] == 1_750_000_000.0
