"""Idle GPU detection over a rolling window, in O(1) memory per GPU hold.

A hold (one pod on one GPU unit) is *idle* when it has been observed for at least the window
and no observation in the last window reached the utilization threshold. Instead of keeping
every sample, each hold keeps two timestamps: when it was first seen and when it was last
seen busy (utilization >= threshold). Holds not seen in the latest observation are dropped (the
pod or GPU went away). Pure: the caller passes the previous state and gets a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from aifinops.model.cost import GpuShare, IdleKey

NEVER = float("-inf")


class HoldHistory(msgspec.Struct, frozen=True, gc=False):
    """A hold's two timestamps. A msgspec Struct (no cycle: two floats), not a dataclass:
    every busy hold gets a new one each observation, thousands a refresh."""

    first_seen: float
    last_busy: float  # NEVER when it has not been busy since first seen


IdleState = Mapping[IdleKey, HoldHistory]


def observe(
    state: IdleState,
    shares: Iterable[GpuShare],
    observed_at: float,
    threshold: float,
) -> dict[IdleKey, HoldHistory]:
    """New state after one DCGM observation taken at ``observed_at`` (unix seconds)."""
    return observe_holds(state, shares, observed_at, threshold)[0]


def observe_holds(
    state: IdleState,
    shares: Iterable[GpuShare],
    observed_at: float,
    threshold: float,
) -> tuple[dict[IdleKey, HoldHistory], list[HoldHistory]]:
    """:func:`observe`, and each share's new history in the order of ``shares`` (so the
    caller need not look 12k holds up again to ask :func:`is_idle`).

    A hold whose history does not change (seen before, not busy now) keeps its previous
    (immutable) record rather than a new equal one: most holds, most refreshes."""
    out: dict[IdleKey, HoldHistory] = {}
    histories: list[HoldHistory] = []
    get = state.get
    for share in shares:
        key = share.idle_key
        prev = get(key)
        # A hold with no figure yet (HAMi before the pod's first CUDA call) is held, not idle.
        if share.utilization >= threshold or not share.measured:
            history = HoldHistory(prev.first_seen if prev is not None else observed_at, observed_at)
        elif prev is not None:
            history = prev
        else:
            history = HoldHistory(observed_at, NEVER)
        out[key] = history
        histories.append(history)
    return out, histories


def is_idle(history: HoldHistory | None, now: float, window_seconds: float) -> bool:
    """True when observed for the whole window and never busy within it."""
    if history is None:
        return False
    start = now - window_seconds
    return history.first_seen <= start and history.last_busy < start
