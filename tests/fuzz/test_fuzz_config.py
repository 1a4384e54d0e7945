"""Configuration: any YAML text, any mapping near the schema and any ``AIFINOPS__``
environment give :class:`Settings` (which then compiles) or :class:`ConfigError` naming the
problem, never another exception."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from aifinops.assemble import model_context
from aifinops.settings import (
    ConfigError,
    Settings,
    apply_env_overrides,
    load_settings,
    settings_from_mapping,
)
from tests.fuzz.conftest import FUZZ, tried
from tests.fuzz.strategies import json_scalars, json_values


def field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every field name anywhere in the settings schema."""
    seen = seen or set()
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for arg in _types(info.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                seen.add(arg)
                names |= field_names(arg, seen)
    return names


def _types(annotation: Any) -> list[Any]:
    out = [annotation]
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _types(arg)
    return out


NAMES = sorted(field_names(Settings))
keys = st.sampled_from(NAMES) | st.text(max_size=8)
scalars = json_scalars | st.sampled_from(
    [
        "1h",
        "30m",
        "0m",
        "7d",
        "(?P<tenant>.*)",
        "(",
        "[",
        "prometheus",
        "scrape",
        "vllm",
        "litellm",
        "custom",
        "http://127.0.0.1:1",
        "/nonexistent",
        "-1",
        "1e309",
        "a\x00b",
        "\ud800",
        "/dev/null",
    ]
)
trees: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


def compile_or_config_error(settings: Settings) -> None:
    with contextlib.suppress(ConfigError):
        model_context(settings)


# A path the OS cannot take was a ValueError from deep inside (found by this suite).
@FUZZ
@given(st.dictionaries(keys, trees, max_size=6))
@example({"gpu_pricing": {"catalog_file": "a\x00b"}})
@example({"gpu_pricing": {"catalog_file": "\ud800"}})
@example({"server": {"web_config_file": "\x00"}})
def test_settings_from_mapping(data: dict[str, Any]) -> None:
    tried("settings.settings_from_mapping")
    try:
        settings = settings_from_mapping(data)
    except ConfigError as exc:
        assert str(exc).startswith("invalid configuration")
        return
    compile_or_config_error(settings)


@FUZZ
@given(
    st.text(max_size=200)
    | st.dictionaries(keys, trees, max_size=6).map(lambda d: yaml.safe_dump(d))
    | json_values.map(lambda d: yaml.safe_dump(d))
)
def test_yaml_file(text: str) -> None:
    tried("settings.load_settings")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(ConfigError):
            load_settings(path, environ={})


env_keys = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(
    lambda parts: "AIFINOPS__" + "__".join(p.upper() for p in parts)
) | st.text(max_size=15).map(lambda s: "AIFINOPS__" + s)


@FUZZ
@given(st.dictionaries(env_keys, st.text(max_size=30) | scalars.map(str), max_size=4))
def test_environment_overrides(environ: dict[str, str]) -> None:
    tried("settings.environment")
    try:
        data = apply_env_overrides({}, environ)
        settings_from_mapping(data)
    except ConfigError:
        pass
