"""The offload helpers: work runs off the loop thread, the switch interval comes back, and the
garbage-collector settings are what they say."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading

from aifinops import offload


def test_run_cpu_runs_on_the_worker_thread_and_restores_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    seen: dict[str, object] = {}

    def work(x: int, *, y: int) -> int:
        seen["thread"] = threading.current_thread().name
        seen["interval"] = sys.getswitchinterval()
        return x + y

    assert asyncio.run(offload.run_cpu(work, 2, y=3)) == 5
    assert str(seen["thread"]).startswith("aifinops-cpu")
    assert seen["interval"] == min(before, offload.SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == before


def test_run_cpu_passes_exceptions_through() -> None:
    def boom() -> None:
        raise KeyError("x")

    try:
        asyncio.run(offload.run_cpu(boom))
    except KeyError:
        pass
    else:
        raise AssertionError("the worker's exception must reach the caller")


def test_tune_gc_and_settle_heap() -> None:
    threshold = gc.get_threshold()
    offload.settle_heap()  # not tuned: does nothing
    assert gc.get_freeze_count() == 0
    try:
        offload.tune_gc(12_345)
        assert gc.get_threshold() == (12_345, offload.GC_NEVER, offload.GC_NEVER)
        assert gc.get_freeze_count() > 0
        offload.settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        offload._tuned = False
