"""A token bucket per client, for ``POST /api/v1/usage``.

Each client (the digest of the bearer token it authenticated with, else its address) has a
bucket of ``burst`` tokens refilled at ``rate`` per second; a request takes one. An empty
bucket answers 429 with ``Retry-After`` (whole seconds until a token is back). Buckets are
kept for the :data:`MAX_CLIENTS` most recent clients (least recently used dropped: a dropped
client starts again with a full bucket, which only ever errs on the side of letting a request
through).
The clock is a parameter (monotonic seconds).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_CLIENTS = 10_000


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0.0 when allowed, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def client_key(identity: str | None, remote: str | None) -> str:
    """A client's bucket key: a digest of the credential it authenticated with (never the
    token itself), else its address. Only a *verified* credential may name a bucket: keyed
    on the raw ``Authorization`` header, a client could take a fresh bucket per request by
    varying the header (case, spaces, junk where no auth is configured)."""
    if identity:
        digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()
        return "t:" + digest[:32]
    return "a:" + (remote or "?")


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
