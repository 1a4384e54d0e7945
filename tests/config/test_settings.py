"""Configuration: the example loads, bad input names the field, env overrides apply."""

from pathlib import Path

import pytest

from aifinops.settings import ConfigError, apply_env_overrides, load_settings
from aifinops.version import RULES_VERSION
from tests.lifecycle.proc import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads_and_says_what_it_shows():
    s = load_settings(ROOT / "config" / "example.yaml", environ={})
    assert s.sources.opencost.window_hours == 1.0
    assert s.tenancy.namespaces["ml-research"] == "research"
    assert s.gpu_pricing.overrides["NVIDIA A100-SXM4-80GB"] == 3.40
    assert s.sources.dcgm.utilization_metric == "auto"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("server: {port: 70000}", "server.port"),
        ("sources: {opencost: {url: 'http://x', window: 1 week}}", "sources.opencost.window"),
        ("sources: {dcgm: {mode: scrape}}", "scrape_urls"),
        (
            "sources: {dcgm: {prometheus_url: 'http://p', utilization_metric: GPU_UTIL}}",
            "sources.dcgm.utilization_metric",
        ),
        (
            "tenancy: {namespace_patterns: [{regex: '(unclosed'}]}",
            "tenancy.namespace_patterns.0.regex",
        ),
        ("tenancy: {namespace_patterns: [{regex: '^x$'}]}", "(?P<tenant>"),
        ("idle_gpu: {window_secs: 5}", "idle_gpu.window_secs: unknown field"),
        ("gpu_pricing: {overrides: {H100: -1}}", "gpu_pricing.overrides"),
        ("- a list", "top level must be a mapping"),
        ("server: [", "not valid YAML"),
    ],
)
def test_bad_config_names_the_field(tmp_path, yaml_text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_settings(f, environ={})
    assert needle in str(err.value)


def test_env_overrides_nest_and_parse_yaml_values():
    out = apply_env_overrides(
        {"server": {"port": 1}},
        {
            "AIFINOPS__SERVER__PORT": "9900",
            "AIFINOPS__SOURCES__DCGM__SCRAPE_URLS": "[a, b]",
            "OTHER": "x",
        },
    )
    assert out == {"server": {"port": 9900}, "sources": {"dcgm": {"scrape_urls": ["a", "b"]}}}


def test_cli_exits_2_with_the_field_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("refresh: {interval_seconds: -1}\n")
    proc = run_cli("--config", str(f), "--check-config")
    assert proc.returncode == 2
    assert "refresh.interval_seconds" in proc.stderr and "-1" in proc.stderr


def test_rules_version_matches_the_bundle():
    assert (ROOT / "rules" / "VERSION").read_text().strip() == RULES_VERSION
