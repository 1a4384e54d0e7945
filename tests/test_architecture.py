"""The floors of the package, read from its own imports (docs/architecture.md).

Every ``import`` is read with :mod:`ast` — module level, function bodies and
``TYPE_CHECKING`` blocks alike — so a function-local import cannot hide an arrow. Where a
rule is not met yet, the remaining violations are listed below with a reason; each list can
only shrink: a new violation fails, and so does a listed one that no longer occurs.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "exporter"
PACKAGE = "aifinops"
SETTINGS_MODULES = frozenset({"aifinops.settings", "aifinops.settings_finance"})

# --- what is left to move (each entry: the violation and why it is still there) ----------
# (importer, imported) pairs per rule.
ALLOWED: dict[str, dict[tuple[str, str], str]] = {
    "model": {},
    "sources": {},
    "exposition": {},
    "web": {},
}
# Import cycles, as the set of modules in one strongly connected component.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}
# Source-name matches in refresh.py (the stripped line) → reason.
ALLOWED_NAME_MATCHES: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE_ROOT).parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    _module_name(p): p for p in sorted((PACKAGE_ROOT / PACKAGE).rglob("*.py"))
}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str, source: str | None = None) -> Iterator[str]:
    """Every module ``name`` imports, absolute; ``from pkg import mod`` yields ``pkg.mod``."""
    if source is None:
        source = MODULES[name].read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                drop = node.level - 1 if _is_package(name) else node.level
                base = base[: len(base) - drop] if drop else base
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yielded = False
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    yielded = True
                    yield sub
            if not yielded:
                yield target


IMPORTS: dict[str, frozenset[str]] = {m: frozenset(_imports(m)) for m in MODULES}


def _in(module: str, floor: str) -> bool:
    return module == floor or module.startswith(floor + ".")


def _violations(floor: str, forbidden: tuple[str, ...] | frozenset[str]) -> set[tuple[str, str]]:
    return {
        (m, i)
        for m, imported in IMPORTS.items()
        if _in(m, floor)
        for i in imported
        if any(_in(i, f) for f in forbidden)
    }


def _check(rule: str, found: set[tuple[str, str]]) -> None:
    allowed = set(ALLOWED[rule])
    new = sorted(found - allowed)
    gone = sorted(allowed - found)
    assert not new, f"new {rule} floor violations (see docs/architecture.md): {new}"
    assert not gone, f"{rule}: fixed, remove from ALLOWED: {gone}"


def test_scanner_sees_function_local_and_type_checking_imports() -> None:
    # The scanner itself: a rule is only as good as the imports it reads.
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import aifinops.settings\n"
        "def f():\n    from aifinops.exposition import catalog\n"
        "    from . import tenancy\n    from ..sources.base import REASONS\n"
    )
    assert set(_imports("aifinops.model.cost", src)) == {
        "typing",
        "aifinops.settings",
        "aifinops.exposition.catalog",
        "aifinops.model.tenancy",
        "aifinops.sources.base",
    }


# numpy for arrays, msgspec for compact rows (model.inputs.Allocation): neither does I/O.
_MODEL_LIBS = ("numpy", "msgspec")


def test_model_imports_only_model_stdlib_numpy_and_msgspec() -> None:
    found = set()
    for m, imported in IMPORTS.items():
        if not _in(m, "aifinops.model"):
            continue
        for i in imported:
            top = i.split(".")[0]
            if _in(i, "aifinops.model") or top in sys.stdlib_module_names or top in _MODEL_LIBS:
                continue
            found.add((m, i))
    _check("model", found)


def test_sources_import_no_web_or_exposition() -> None:
    _check("sources", _violations("aifinops.sources", ("aifinops.web", "aifinops.exposition")))


def test_sources_receive_the_cpu_worker() -> None:
    # The composition root hands each source its runner (sources.base.CpuRunner); a source
    # that imported aifinops.offload would decide for itself where its parsing runs.
    _check("sources", _violations("aifinops.sources", ("aifinops.offload",)))


def test_exposition_imports_no_sources_or_settings() -> None:
    forbidden = ("aifinops.sources", *sorted(SETTINGS_MODULES))
    _check("exposition", _violations("aifinops.exposition", forbidden))


def test_web_imports_no_source_module() -> None:
    _check("web", _violations("aifinops.web", ("aifinops.sources",)))


def _cycles() -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {
        m: sorted(i for i in imported if i in MODULES and i != m) for m, imported in IMPORTS.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    saved = dict(IMPORTS)
    try:
        IMPORTS["aifinops.version"] = saved["aifinops.version"] | {"aifinops.status"}
        IMPORTS["aifinops.status"] = saved["aifinops.status"] | {"aifinops.version"}
        assert frozenset({"aifinops.version", "aifinops.status"}) in _cycles()
    finally:
        IMPORTS.clear()
        IMPORTS.update(saved)


def test_no_import_cycle() -> None:
    found = _cycles()
    new = [sorted(c) for c in found - set(ALLOWED_CYCLES)]
    gone = [sorted(c) for c in set(ALLOWED_CYCLES) - found]
    assert not new, f"new import cycles: {new}"
    assert not gone, f"cycle gone, remove from ALLOWED_CYCLES: {gone}"


def _source_names() -> set[str]:
    """The names sources publish (``name = "dcgm"``, ``self.name = f"tokens:{...}"``)."""
    names: set[str] = set()
    for m, path in MODULES.items():
        if not _in(m, "aifinops.sources"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Assign | ast.AnnAssign):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(
                (isinstance(t, ast.Name) and t.id == "name")
                or (isinstance(t, ast.Attribute) and t.attr == "name")
                for t in targets
            ):
                continue
            v = node.value
            if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value:
                names.add(v.value)
            elif isinstance(v, ast.JoinedStr) and v.values:
                head = v.values[0]
                if isinstance(head, ast.Constant) and isinstance(head.value, str):
                    names.add(head.value)
    return names


def _name_matches(source: str, names: set[str]) -> set[str]:
    """Lines of ``source`` comparing against, or prefix-matching, a source name."""
    lines = source.splitlines()
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        consts: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            consts = [node.left, *node.comparators]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")
        ):
            consts = list(node.args)
        for c in consts:
            if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in names:
                found.add(lines[node.lineno - 1].strip())
    return found


def test_name_matcher_catches_the_patterns() -> None:
    names = {"dcgm", "tokens:"}
    src = 'if a.name == "dcgm":\n    pass\nif a.name.startswith("tokens:"):\n    pass\n'
    assert _name_matches(src, names) == {'if a.name == "dcgm":', 'if a.name.startswith("tokens:"):'}
    assert _name_matches("if a.slot is GPUS:\n    pass\n", names) == set()


def test_refresh_matches_no_source_name() -> None:
    names = _source_names()
    assert {"dcgm", "opencost", "tokens:"} <= names  # the scan still finds the names
    text = MODULES["aifinops.refresh"].read_text(encoding="utf-8")
    found = _name_matches(text, names)
    new = sorted(found - set(ALLOWED_NAME_MATCHES))
    gone = sorted(set(ALLOWED_NAME_MATCHES) - found)
    assert not new, f"refresh.py routes by source name: {new}"
    assert not gone, f"fixed, remove from ALLOWED_NAME_MATCHES: {gone}"


def _source_classes() -> set[str]:
    """The classes the source modules define (``DcgmSource``, ``TokenSource``, ...)."""
    names: set[str] = set()
    for m, path in MODULES.items():
        if _in(m, "aifinops.sources"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    return names


def _type_matches(source: str, classes: set[str]) -> set[str]:
    """Lines of ``source`` asking for a source's class: ``isinstance``/``issubclass`` against,
    or ``type(x) is``/``==``, one of ``classes`` (by name or as ``module.Class``)."""
    lines = source.splitlines()
    found: set[str] = set()

    def named(e: ast.expr) -> bool:
        if isinstance(e, ast.Tuple):
            return any(named(x) for x in e.elts)
        return (isinstance(e, ast.Name) and e.id in classes) or (
            isinstance(e, ast.Attribute) and e.attr in classes
        )

    for node in ast.walk(ast.parse(source)):
        asks_class = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
            and named(node.args[1])
        )
        compares_class = isinstance(node, ast.Compare) and any(
            named(c) for c in (node.left, *node.comparators)
        )
        if asks_class or compares_class:
            found.add(lines[getattr(node, "lineno", 1) - 1].strip())
    return found


def test_type_matcher_catches_the_patterns() -> None:
    classes = {"TokenSource", "DcgmSource"}
    src = (
        "if isinstance(s, TokenSource):\n    pass\n"
        "if isinstance(s, (int, tokens.DcgmSource)):\n    pass\n"
        "if type(s) is TokenSource:\n    pass\n"
        "if s.targets is not None:\n    pass\n"
    )
    assert _type_matches(src, classes) == {
        "if isinstance(s, TokenSource):",
        "if isinstance(s, (int, tokens.DcgmSource)):",
        "if type(s) is TokenSource:",
    }


def test_refresh_matches_no_source_class() -> None:
    # What the loop needs of a source is declared on it (sources.base.Source: slot, local,
    # min_interval_seconds, targets); asking for its class would be a name match by another
    # route, and adding a source would touch the loop again.
    classes = _source_classes()
    assert {"DcgmSource", "TokenSource", "PushSource"} <= classes  # the scan still finds them
    text = MODULES["aifinops.refresh"].read_text(encoding="utf-8")
    assert not _type_matches(text, classes), "refresh.py asks for a source's class"
    imported = {i for i in IMPORTS["aifinops.refresh"] if _in(i, "aifinops.sources")}
    assert imported <= {"aifinops.sources.base"}, f"refresh.py imports a source: {imported}"


def test_refresh_loop_knows_no_garbage_collector() -> None:
    # GC tuning is a runtime setting (offload.apply_runtime_settings), handed to the loop as
    # its after-refresh step by the composition root; the loop itself never names it.
    text = MODULES["aifinops.refresh"].read_text(encoding="utf-8")
    names = {n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)}
    assert "gc" not in IMPORTS["aifinops.refresh"]
    assert not names & {"settle_heap", "tune_gc", "apply_runtime_settings"}


# --- the front process loads no model ------------------------------------------------------
# The front (web/front.py) validates the configuration and serves what the engine publishes:
# it needs none of the model, and the model brings numpy (model.forecast, model.cost) and
# ~20 MiB of resident memory with it. Modules the front loads that still import the model at
# module level (a function-local import runs in the engine only), with why; the list can only
# shrink, and once it is empty the front must not have numpy at all.
FRONT_ALLOWED: dict[str, str] = {}
# Constants only (tenant and resource names): the exposition catalog's vocabulary.
_FRONT_MODEL_OK = frozenset({"aifinops.model", "aifinops.model.vocabulary"})

_FRONT_PROBE = """
import json, sys
import aifinops.__main__, aifinops.web.front
print(json.dumps({"modules": sorted(sys.modules), "numpy": "numpy" in sys.modules}))
"""


def _module_level_imports(name: str) -> Iterator[str]:
    """The imports ``name`` runs when it is imported: not those in function bodies (run when
    called) nor under ``if TYPE_CHECKING:``."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from _imports(name, ast.unparse(node))
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            pending.extend(getattr(node, field, []))


def test_module_level_scanner_skips_function_bodies_and_type_checking() -> None:
    imported = set(_module_level_imports("aifinops.settings"))
    assert "aifinops.settings_finance" in imported  # module level
    assert not any(_in(i, "aifinops.model") for i in imported)  # to_model and TYPE_CHECKING


def test_the_front_process_loads_no_model() -> None:
    import json
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _FRONT_PROBE], env=env, capture_output=True, check=True, text=True
    )
    loaded = json.loads(out.stdout)
    found = {
        m
        for m in loaded["modules"]
        if m in MODULES and not _in(m, "aifinops.model")
        for i in _module_level_imports(m)
        if (_in(i, "aifinops.model") and i not in _FRONT_MODEL_OK) or _in(i, "numpy")
    }
    new, gone = sorted(found - set(FRONT_ALLOWED)), sorted(set(FRONT_ALLOWED) - found)
    assert not new, f"the front now loads the model through: {new}"
    assert not gone, f"fixed, remove from FRONT_ALLOWED: {gone}"
    if not FRONT_ALLOWED:
        assert not loaded["numpy"], "numpy is loaded in the front"
