"""The proposed use of :mod:`aifinops.offload`, applied for the bench.

The bench changes no file. :func:`apply_offload` recompiles, in this process only, the few
methods that run CPU-heavy work on the event loop, with :data:`EDITS` — the exact edits
proposed for ``refresh.py``, ``sources/dcgm.py`` and ``sources/tokens.py`` — and calls
:func:`aifinops.offload.tune_gc` (proposed for ``create_app``). A method whose module already
uses the offload module is left as it is; one whose text no longer matches an edit is left as
it is too, and the table says so.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
from typing import Any

import aifinops.offload as offload

Edit = tuple[str, str]

# (module, class, method) -> edits (old text, new text); each old text must occur once.
EDITS: dict[tuple[str, str, str], tuple[Edit, ...]] = {
    ("aifinops.refresh", "Refresher", "refresh_once"): (
        (
            "report, state = build_report(inputs, self._context, self._state, now, dcgm_at)",
            "report, state = await run_cpu(\n"
            "                    build_report, inputs, self._context, self._state, now, dcgm_at\n"
            "                )",
        ),
        (
            "report = self._with_finance(report, finance_inputs, now)",
            "report = await run_cpu(self._with_finance, report, finance_inputs, now)",
        ),
        (
            "exposition = self._render(report, status, count_dropped=True)",
            "exposition = await run_cpu(self._render, report, status, count_dropped=True)",
        ),
        (
            "            return self.snapshot\n",
            "            settle_heap()\n            return self.snapshot\n",
        ),
    ),
    ("aifinops.refresh", "Refresher", "_render"): (
        (
            "return Exposition.from_bytes(render(families))",
            "return render_and_compress(families)",
        ),
    ),
    ("aifinops.sources.dcgm", "DcgmSource", "fetch"): (
        (
            "return _not_empty(gpu_samples_from_series(series, s.utilization_metric), s)",
            "return _not_empty(\n"
            "                await run_cpu(gpu_samples_from_series, series, s.utilization_metric),"
            "\n                s,\n"
            "            )",
        ),
        (
            "        return _not_empty(\n            gpu_samples_from_series(\n",
            "        return _not_empty(\n            await run_cpu(\n"
            "                gpu_samples_from_series,\n",
        ),
        (
            "                (item for task in tasks for item in task.result()), "
            "s.utilization_metric\n",
            "                [item for task in tasks for item in task.result()],\n"
            "                s.utilization_metric,\n",
        ),
    ),
    ("aifinops.sources.dcgm", "DcgmSource", "_scrape"): (
        (
            "samples = parse_text(decode_page(body), frozenset((s.utilization_metric,)))",
            "samples = await run_cpu(\n"
            "                lambda: parse_text(decode_page(body), "
            "frozenset((s.utilization_metric,)))\n"
            "            )",
        ),
    ),
    ("aifinops.sources.tokens", "TokenSource", "fetch"): (
        (
            "return observations_from_samples(self.name, samples, self._mapping)",
            "return await run_cpu(observations_from_samples, self.name, samples, self._mapping)",
        ),
    ),
    ("aifinops.sources.tokens", "TokenSource", "_scrape"): (
        (
            "parsed = parse_text(decode_page(body), wanted)",
            "parsed = await run_cpu(lambda: parse_text(decode_page(body), wanted))",
        ),
        (
            "        return [(name, {**target_labels, **labels}, value) "
            "for name, labels, value in parsed]",
            "        return await run_cpu(\n"
            "            lambda: [(n, {**target_labels, **labels}, v) for n, labels, v in parsed]\n"
            "        )",
        ),
    ),
}
IMPORTS = ("run_cpu", "render_and_compress", "settle_heap")


def _patch(module_name: str, cls_name: str, method_name: str, edits: tuple[Edit, ...]) -> str:
    module = importlib.import_module(module_name)
    if "aifinops.offload" in inspect.getsource(module):
        return ""  # already integrated
    cls = getattr(module, cls_name)
    method = textwrap.dedent(inspect.getsource(getattr(cls, method_name)))
    method = textwrap.indent(method, "    ")
    for old, new in edits:
        if method.count(old) != 1:
            return f"{module_name}.{cls_name}.{method_name} (edit no longer matches)"
        method = method.replace(old, new)
    namespace: dict[str, Any] = vars(module)
    for name in IMPORTS:
        namespace.setdefault(name, getattr(offload, name))
    code = f"def _make():\n{method}\n    return {method_name}\n"
    scope: dict[str, Any] = {}
    exec(compile(code, f"<bench: {cls_name}.{method_name} with offload>", "exec"), namespace, scope)
    patched = scope["_make"]()
    patched.__qualname__ = f"{cls_name}.{method_name}"
    setattr(cls, method_name, patched)
    return ""


def apply_offload() -> str:
    """Apply :data:`EDITS` and :func:`~aifinops.offload.tune_gc`; say what was measured."""
    skipped = [
        problem
        for (module, cls, method), edits in EDITS.items()
        if (problem := _patch(module, cls, method, edits))
    ]
    offload.tune_gc()
    if skipped:
        return "proposed offload edits, except: " + ", ".join(skipped)
    return "the code as committed (CPU work offloaded: refresh.py, sources/dcgm.py, sources/tokens.py)"
