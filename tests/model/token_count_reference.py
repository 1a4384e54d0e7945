"""The token counters as :func:`aifinops.model.tokens._count` counted them before columnar
reads (one observation at a time, the state two dicts), kept verbatim as the oracle of the
columnar path (tests/model/test_token_columns.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from operator import is_
from typing import TypeVar

from aifinops.model.inputs import TokenObservation

CounterKey = tuple[str, str, str, str]
K = TypeVar("K")
_INF = float("inf")


def _unexpired(at: Mapping[K, float], now: float, retention_seconds: float) -> dict[K, float]:
    if not at or now - min(at.values()) <= retention_seconds:
        return dict(at)
    return {k: t for k, t in at.items() if now - t <= retention_seconds}


def count(
    observations: Iterable[TokenObservation],
    state_last: Mapping[CounterKey, float],
    state_seen_at: Mapping[CounterKey, float],
    state_source_seen_at: Mapping[str, float],
    now: float,
    retention_seconds: float,
    origins: Iterable[str] = (),
    dip_tolerance: float = 0.0,
) -> tuple[
    list[TokenObservation],
    list[float],
    dict[CounterKey, float],
    dict[CounterKey, float],
    dict[str, float],
]:
    seen = _unexpired(state_seen_at, now, retention_seconds)
    if (len(state_last) == len(seen) and all(map(is_, state_last, seen))) or (
        state_last.keys() <= seen.keys()
    ):
        last = dict(state_last)
    else:
        last = {k: v for k, v in state_last.items() if k in seen}
    known_sources = {
        src for src, at in state_source_seen_at.items() if now - at <= retention_seconds
    }
    obs_list = observations if isinstance(observations, tuple | list) else tuple(observations)
    counted: list[TokenObservation] = []
    deltas: list[float] = []
    get = last.get
    keep = 1.0 - dip_tolerance
    for obs in obs_list:
        v = obs.value
        if not 0.0 <= v < _INF:  # NaN, ±Inf or negative: keep the previous value
            continue
        key = (obs.source, obs.series, obs.kind, obs.token_type)
        prev = get(key)
        if prev is None:
            delta = v if obs.from_zero or (obs.origin or obs.source) in known_sources else 0.0
        elif v >= prev:
            delta = v - prev
        elif v >= prev * keep:
            delta = 0.0  # a dip: jitter between replicas, not a reset
            v = prev
        else:
            delta = v
        last[key] = v
        seen[key] = now
        if delta > 0:
            counted.append(obs)
            deltas.append(delta)
    source_seen = {s: at for s, at in state_source_seen_at.items() if now - at <= retention_seconds}
    for s in {obs.origin or obs.source for obs in obs_list}.union(origins):
        source_seen[s] = now
    return counted, deltas, last, seen, source_seen
