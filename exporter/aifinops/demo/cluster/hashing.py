"""Deterministic "randomness" keyed by names: the same parts give the same number on every run
and platform, so utilization, suffixes and adjustments need no random stream (adding a draw
to the layout's ``random.Random`` moves nothing that is hashed)."""

from __future__ import annotations

import hashlib
import math


def hash_unit(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (stable across runs and platforms)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def hash_suffix(*parts: object, n: int = 5) -> str:
    """A Kubernetes-style random suffix derived from ``parts`` (deterministic)."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    x = int.from_bytes(
        hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big"
    )
    out = []
    for _ in range(n):
        x, i = divmod(x, len(alphabet))
        out.append(alphabet[i])
    return "".join(out)


def diurnal(key: str, now: float) -> float:
    """0–1: a daily sine with a per-key phase plus per-minute noise (the shared-GPU pools'
    live use)."""
    phase = hash_unit(key, "phase")
    base = 0.5 + 0.35 * math.sin(2.0 * math.pi * (now / 86400.0 + phase))
    noise = 2.0 * hash_unit(key, "noise", math.floor(now / 60.0)) - 1.0
    return min(1.0, max(0.0, base + 0.15 * noise))
