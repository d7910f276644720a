"""Per-key rate limits of the order API: a token bucket per key, in this process's memory.

Each key (a client address for ``POST /auth/miniprogram``, a user for ``POST /orders``)
may spend ``per_minute`` requests at once, then one more every ``60 / per_minute``
seconds. A refused request is told how long to wait (``Retry-After``). The buckets are
per replica: behind a balancer spreading requests over N replicas, a client gets up to
N times the limit, which is what these limits are for (a client hammering WeChat's
``jscode2session`` or WeChat Pay through us), not an exact quota.

Memory is bounded: at most ``max_keys`` buckets are kept, the least recently used
dropped first (a dropped key starts again with a full bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

#: Buckets kept at most, per limit (a few MB).
MAX_KEYS = 100_000


class RateLimit:
    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        #: 0: no limit.
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._max_keys = max_keys
        #: key → (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def hit(self, key: str) -> int | None:
        """Spend one request of ``key``: None when allowed, else the whole seconds to wait
        before the next one is (at least 1)."""
        if self.per_minute <= 0:
            return None
        now = self._clock()
        tokens, then = self._buckets.pop(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - then) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = None
        else:
            self._buckets[key] = (tokens, now)
            wait = max(1, math.ceil((1.0 - tokens) / self._rate))
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
