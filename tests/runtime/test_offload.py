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


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def test_pinned_mmap_threshold_gives_freed_large_blocks_back() -> None:
    # Unpinned, glibc would raise its threshold to 30 MiB on the first free below, serve the
    # 1 MiB blocks from the heap and keep them after they are freed (the guard above them
    # stops the heap's top from being trimmed): RSS would stay 64 MiB up.
    if not sys.platform.startswith("linux") or not offload.pin_mmap_threshold():
        return  # no glibc mallopt here: the exporter runs with the allocator's defaults
    big = bytearray(30 << 20)
    del big
    before = _rss_mib()
    blocks = [bytearray(1 << 20) for _ in range(64)]
    guard = bytearray(200 << 10)
    assert _rss_mib() - before > 48
    del blocks
    assert _rss_mib() - before < 16
    del guard
