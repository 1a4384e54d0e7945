#!/usr/bin/env python3
"""Render the rule bundle through the monitoring mixin: rules/src/*.yaml.tmpl +
rules/thresholds.yaml → mixin/ (jsonnet, ``_config``) → rules/*.rules.yaml.

Plain Prometheus has no variables in rule files, so thresholds are literals in the committed
rule files; they are declared once, in ``rules/thresholds.yaml``, read into the mixin's
``_config`` (mixin/config.libsonnet), and filled in by the mixin (mixin/rules.libsonnet), which
is what kube-prometheus users import. A template names a value as ``${name}``;
``${name|percent}`` prints a 0-1 ratio as a percentage for descriptions (0.1 → ``10%``);
``${cluster}``, ``${exporter}`` and ``${runbook:anchor}`` are the mixin's cluster label,
exporter selector and runbook URL pattern; ``${selector:braces}`` / ``${selector:comma}``
put its ``aifinopsSelector`` on a raw series (see mixin/rules.libsonnet). Go-template text
such as ``{{ $value }}`` is left alone (it has no ``${``). This script checks the names
(declared, used) and writes the files; jsonnet (the ``jsonnet`` package's ``_jsonnet``)
renders them.

Usage::

    python scripts/render_rules.py          # write rules/*.rules.yaml
    python scripts/render_rules.py --check  # exit 1 if a committed file differs from its rendering

``render()`` is also imported by the tests (drift check, and the e2e test renders a copy
with short ``for:`` durations through ``overrides``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "rules"
SRC_DIR = RULES_DIR / "src"
THRESHOLDS_FILE = RULES_DIR / "thresholds.yaml"

PLACEHOLDER = re.compile(r"\$\{([a-z][a-z0-9_]*)(?:\|([a-z]+))?\}")
# Placeholders the mixin fills from its own _config fields, not from thresholds.yaml.
MIXIN_NAMES = re.compile(
    r"\$\{(?:cluster|exporter|selector:braces|selector:comma|runbook:[a-z]+)\}"
)
MIXIN = ROOT / "mixin"
FILTERS = ("percent",)


class RenderError(Exception):
    """A template or the thresholds file is wrong; the message names the file and the name."""


def load_thresholds(path: Path = THRESHOLDS_FILE) -> dict[str, Any]:
    """Return ``{name: value}`` from the thresholds file, checking each entry's shape."""
    doc = yaml.safe_load(path.read_text())
    entries = doc.get("thresholds") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise RenderError(f"{path}: expected a non-empty mapping under 'thresholds'")
    values: dict[str, Any] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != {"value", "meaning"}:
            raise RenderError(f"{path}: threshold {name!r} needs exactly 'value' and 'meaning'")
        if not PLACEHOLDER.fullmatch("${" + str(name) + "}"):
            raise RenderError(f"{path}: threshold name {name!r} is not lower_snake_case")
        if not str(entry["meaning"]).strip():
            raise RenderError(f"{path}: threshold {name!r} has an empty meaning")
        if isinstance(entry["value"], bool) or not isinstance(entry["value"], int | float | str):
            raise RenderError(f"{path}: threshold {name!r} must be a number or a string")
        values[name] = entry["value"]
    return values


def _format(name: str, value: Any, filter_: str | None, where: str) -> str:
    if filter_ is None:
        return str(value)
    if filter_ == "percent":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RenderError(f"{where}: '|percent' needs a number, {name!r} is {value!r}")
        return f"{value * 100:g}%"
    raise RenderError(f"{where}: unknown filter {filter_!r} (known: {', '.join(FILTERS)})")


def render_text(text: str, values: Mapping[str, Any], where: str) -> tuple[str, set[str]]:
    """Check the threshold placeholders of ``text``: return it with them substituted (the
    mixin's own names removed) and the names used. The committed files come from the mixin
    (:func:`render`); this is the check that names a missing or malformed placeholder.

    Raises :class:`RenderError` for a name not in ``values``.
    """
    used: set[str] = set()
    text = MIXIN_NAMES.sub("", text)

    def substitute(match: re.Match[str]) -> str:
        name, filter_ = match.group(1), match.group(2)
        if name not in values:
            raise RenderError(
                f"{where}: threshold {name!r} is not declared in rules/thresholds.yaml"
            )
        used.add(name)
        return _format(name, values[name], filter_, where)

    out = PLACEHOLDER.sub(substitute, text)
    if "${" in out:
        raise RenderError(f"{where}: malformed placeholder near {out[out.index('${') :][:40]!r}")
    return out, used


def render(
    overrides: Mapping[str, Any] | None = None,
    src_dir: Path = SRC_DIR,
    thresholds_file: Path = THRESHOLDS_FILE,
) -> dict[str, str]:
    """Render every template; return ``{output file name: text}``.

    ``overrides`` replaces declared values (tests only); an override of an undeclared name is
    an error, as is a declared threshold that no template uses.
    """
    values = load_thresholds(thresholds_file)
    for name in overrides or {}:
        if name not in values:
            raise RenderError(f"override {name!r} is not declared in rules/thresholds.yaml")
    values.update(overrides or {})
    templates = sorted(src_dir.glob("*.yaml.tmpl"))
    if not templates:
        raise RenderError(f"{src_dir}: no *.yaml.tmpl templates")
    used: set[str] = set()
    for template in templates:
        text, names = render_text(template.read_text(), values, str(template))
        used |= names
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RenderError(f"{template}: text is not YAML: {exc}") from exc
    unused = sorted(set(values) - used)
    if unused:
        raise RenderError(f"thresholds declared but used by no template: {', '.join(unused)}")
    rendered = render_mixin(overrides)
    expected = sorted(t.name.removesuffix(".yaml.tmpl") + ".rules.yaml" for t in templates)
    if sorted(rendered) != expected:
        raise RenderError(
            f"mixin/rules.libsonnet renders {sorted(rendered)}, rules/src/ has {expected}: "
            "list every template in its `sources`"
        )
    return rendered


def evaluate_mixin(
    expression: str,
    config: Mapping[str, Any] | None = None,
    ext: Mapping[str, str] | None = None,
) -> Any:
    """Evaluate ``expression`` with ``mixin`` bound to mixin/mixin.libsonnet whose ``_config``
    is extended by ``config`` (``ext``: more ``std.extVar`` strings); return the JSON value."""
    import _jsonnet  # the PyPI package `jsonnet` (test extra); imported here, used only here

    snippet = (
        "local mixin = (import 'mixin/mixin.libsonnet')"
        " + { _config+:: std.parseJson(std.extVar('config')) };\n" + expression
    )
    try:
        out = _jsonnet.evaluate_snippet(
            str(ROOT / "render.jsonnet"),
            snippet,
            ext_vars={"config": json.dumps(dict(config or {})), **(ext or {})},
        )
    except RuntimeError as exc:
        raise RenderError(f"mixin: {exc}") from exc
    return json.loads(out)


def render_mixin(config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{rules file name: text}`` as the mixin renders them with ``config`` in _config."""
    rendered: dict[str, str] = evaluate_mixin("mixin.renderedFiles", config)
    return rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed files drift")
    args = parser.parse_args(argv)
    try:
        rendered = render()
    except RenderError as exc:
        print(f"render_rules: {exc}", file=sys.stderr)
        return 2
    stale = [n for n, t in rendered.items() if _read(RULES_DIR / n) != t]
    orphans = sorted(p.name for p in RULES_DIR.glob("*.rules.yaml") if p.name not in rendered)
    if args.check:
        for name in stale:
            print(f"render_rules: rules/{name} differs from its rendering", file=sys.stderr)
        for name in orphans:
            print(f"render_rules: rules/{name} has no template in rules/src/", file=sys.stderr)
        return 1 if stale or orphans else 0
    for name in stale:
        (RULES_DIR / name).write_text(rendered[name])
        print(f"wrote rules/{name}")
    for name in orphans:
        print(f"render_rules: rules/{name} has no template in rules/src/ (remove it?)")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
