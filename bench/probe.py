"""Time the phases of the real refresh cycle without changing it.

:class:`PhaseProbe` wraps, for the duration of a ``with`` block, the functions the refresh loop
calls by module-global name (``build_report`` in ``aifinops.refresh``, ...) and adds up how
long each took in the current cycle. A name the code no longer has is skipped, and its phase
reads as missing in the table rather than failing the run. Per-source fetch+parse durations
come from the refresh status the exporter publishes itself.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# (module, attribute, phase). Async functions are timed around their await; a class
# attribute is given as "Class.method".
PROBES: tuple[tuple[str, str, str], ...] = (
    ("aifinops.refresh", "build_report", "model"),
    ("aifinops.refresh", "cost_families", "families"),
    ("aifinops.refresh", "self_families", "families"),
    ("aifinops.refresh", "cap_families", "cap"),
    ("aifinops.refresh", "render", "render"),
    ("aifinops.refresh", "Exposition.from_bytes", "gzip"),
    ("aifinops.refresh", "Refresher._build_finance", "finance"),
    # With aifinops.offload: rendering and gzip overlap on two threads, timed together.
    ("aifinops.refresh", "render_and_compress", "render+gzip"),
)


class PhaseProbe:
    """Wall seconds per phase for the cycle in progress (:meth:`reset` between cycles)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.found: set[str] = set()

    def reset(self) -> None:
        self.seconds.clear()

    def _timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self.seconds[phase] += time.perf_counter() - started

            return timed_async

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started

        return timed

    @contextmanager
    def installed(self) -> Iterator[PhaseProbe]:
        undo: list[Callable[[], None]] = []
        try:
            for module_name, attr, phase in PROBES:
                try:
                    module = importlib.import_module(module_name)
                except ImportError:
                    continue
                owner: Any = module
                name = attr
                if "." in attr:
                    cls_name, name = attr.split(".", 1)
                    owner = getattr(module, cls_name, None)
                if owner is None or not hasattr(owner, name):
                    continue
                raw = inspect.getattr_static(owner, name)
                if isinstance(raw, classmethod):
                    wrapped: Any = classmethod(self._timed(phase, raw.__func__))
                elif isinstance(raw, staticmethod):
                    wrapped = staticmethod(self._timed(phase, raw.__func__))
                else:
                    wrapped = self._timed(phase, raw)
                setattr(owner, name, wrapped)
                undo.append(functools.partial(setattr, owner, name, raw))
                self.found.add(phase)
            yield self
        finally:
            for restore in reversed(undo):
                restore()
