"""Idle GPU window, efficiency and counters over several refreshes."""

import pytest

from aifinops.model.idle import HoldHistory, is_idle
from aifinops.model.inputs import AllocationSet, Inputs
from aifinops.model.report import ModelState, accrue, build_report
from tests.model.builders import H100, context, gpu, pod, small_cluster


def test_is_idle_needs_the_whole_window_below_threshold():
    assert not is_idle(None, 1000.0, 600.0)
    assert not is_idle(HoldHistory(first_seen=500.0, last_busy=float("-inf")), 1000.0, 600.0)
    assert is_idle(HoldHistory(first_seen=400.0, last_busy=float("-inf")), 1000.0, 600.0)
    assert is_idle(HoldHistory(first_seen=0.0, last_busy=399.0), 1000.0, 600.0)
    assert not is_idle(HoldHistory(first_seen=0.0, last_busy=400.0), 1000.0, 600.0)


def run(steps, ctx=None):
    """steps: list of (now, allocs, gpus); DCGM observed at each step's now."""
    ctx = ctx or context(threshold=0.05, window=600.0)
    state = ModelState()
    report = None
    for now, allocs, gpus in steps:
        inputs = Inputs(gpus=tuple(gpus), allocations=AllocationSet(1.0, tuple(allocs)))
        report, state = build_report(inputs, ctx, state, now, dcgm_observed_at=now)
    return report, state


def test_a_gpu_idle_for_the_window_is_counted_with_its_cost():
    allocs = [pod("team-a", "p", gpu_cost=4.0), pod("team-b", "q", gpu_cost=4.0)]
    quiet = [gpu("G1", H100, 0.01, "team-a", "p"), gpu("G2", H100, 0.9, "team-b", "q")]
    report, _ = run([(t, allocs, quiet) for t in (0.0, 300.0, 600.0)])
    assert report.gpu_stats[("a", H100)].idle_gpus == 1.0
    assert report.gpu_stats[("a", H100)].idle_rate == pytest.approx(4.0)
    assert report.gpu_stats[("b", H100)].idle_gpus == 0.0
    # one busy sample inside the window clears it
    busy = [gpu("G1", H100, 0.5, "team-a", "p"), quiet[1]]
    steps = [(0.0, allocs, quiet), (300.0, allocs, busy), (600.0, allocs, quiet)]
    report, _ = run(steps)
    assert report.gpu_stats[("a", H100)].idle_gpus == 0.0


def test_idle_history_does_not_advance_on_stale_dcgm_data():
    allocs = [pod("team-a", "p", gpu_cost=4.0)]
    gpus = [gpu("G1", H100, 0.0, "team-a", "p")]
    ctx = context(window=600.0)
    inputs = Inputs(gpus=tuple(gpus), allocations=AllocationSet(1.0, tuple(allocs)))
    r, s = build_report(inputs, ctx, ModelState(), 0.0, dcgm_observed_at=0.0)
    # later refreshes reuse the same (last good) observation: still counts from t=0
    r, s = build_report(inputs, ctx, s, 900.0, dcgm_observed_at=0.0)
    assert r.gpu_stats[("a", H100)].idle_gpus == 1.0
    assert s.idle[("G1", "", "team-a", "p")].first_seen == 0.0


def test_efficiency_is_used_over_held():
    allocs, gpus = small_cluster()
    report, _ = run([(0.0, allocs, gpus)])
    assert report.efficiency["alpha"] == 0.25
    assert report.efficiency["beta"] == 1.0  # used 0.5 of the L4, held 1/2: capped at 1
    assert report.efficiency["research"] == pytest.approx(0.5)


def test_counters_integrate_rates_between_refreshes():
    allocs = [pod("team-a", "p", cpu_cost=2.0)]
    report, _ = run([(0.0, allocs, []), (1800.0, allocs, []), (3600.0, allocs, [])])
    assert report.accrued[("a", "cpu", "allocation")] == pytest.approx(2.0)
    assert report.accrued[("a", "cpu", "usage")] == pytest.approx(2.0)


def test_accrue_drops_vanished_keys_and_never_decreases():
    prev = {("a", "cpu", "allocation"): 5.0, ("gone", "cpu", "allocation"): 1.0}
    out = accrue(prev, {"allocation": {("a", "cpu"): -3.0, ("new", "gpu"): 2.0}}, 0.5)
    assert out == {("a", "cpu", "allocation"): 5.0, ("new", "gpu", "allocation"): 1.0}


def stats_share_by_share(shares, histories, now, window):
    """The per-(tenant, GPU model) stats as build_report defined them before it grouped
    them column by column: one pass over the shares, in order (the oracle)."""
    import math

    parts = {}
    for share, history in zip(shares, histories, strict=True):
        p = parts.setdefault((share.tenant, share.gpu_model), ([], [], [], [], []))
        p[0].append(share.held)
        p[1].append(share.used)
        p[2].append(share.unused_rate)
        if is_idle(history, now, window):
            p[3].append(share.held)
            p[4].append(share.alloc_rate)
    return {key: tuple(math.fsum(v) for v in lists) for key, lists in parts.items()}


def test_gpu_stats_are_the_share_by_share_sums_over_chained_refreshes():
    # A time-sliced GPU, MIG slices, busy and quiet holds, a hold going away and coming
    # back, and DCGM going stale for a refresh: each report's stats (values and key order)
    # are those of one pass over its shares.
    from tests.model.builders import L4

    allocs = [
        pod("team-a", "p", gpu_cost=4.0, gpu_count=1.0),
        pod("team-b", "q", gpu_cost=1.0, gpu_count=0.5),
        pod("team-c", "r", gpu_cost=1.0, gpu_count=0.5),
        pod("team-a", "s", gpu_cost=2.0, gpu_count=1.0),
    ]
    quiet = [
        gpu("G1", H100, 0.01, "team-a", "p"),
        gpu("G2", L4, 0.30, "team-b", "q"),
        gpu("G2", L4, 0.01, "team-c", "r"),
        gpu("G3", H100, 0.0, "team-a", "s", mig="1g.10gb", mig_id="1"),
    ]
    busy = [quiet[0], gpu("G2", L4, 0.6, "team-b", "q"), quiet[2]]
    ctx = context(threshold=0.05, window=600.0)
    state = ModelState()
    steps = [(0.0, quiet, 0.0), (300.0, busy, 300.0), (600.0, quiet, 600.0)]
    steps += [(900.0, quiet, 600.0), (1500.0, quiet, 1500.0), (2400.0, busy, 2400.0)]
    seen_idle = 0
    for now, gpus, observed in steps:
        inputs = Inputs(gpus=tuple(gpus), allocations=AllocationSet(1.0, tuple(allocs)))
        report, state = build_report(inputs, ctx, state, now, dcgm_observed_at=observed)
        histories = [state.idle.get(s.idle_key) for s in report.cost.shares]
        expected = stats_share_by_share(report.cost.shares, histories, now, 600.0)
        got = {
            key: (s.held, s.used, s.unused_rate, s.idle_gpus, s.idle_rate)
            for key, s in report.gpu_stats.items()
        }
        assert list(got) == list(expected)
        assert {k: tuple(map(repr, v)) for k, v in got.items()} == {
            k: tuple(map(repr, v)) for k, v in expected.items()
        }
        seen_idle += sum(1 for s in report.gpu_stats.values() if s.idle_gpus > 0)
    assert seen_idle > 0  # the idle columns were exercised
