"""A token bucket: how often the proxy may ask Entra ID for a token it does not hold yet.

Entra ID throttles per tenant and application, so one pod asking for thousands of distinct
(bogus) resources would spend the whole tenant's allowance. Tokens already held, and their
refreshes, never pass through here: only new ones, whose callers can be told when to retry.
"""

from __future__ import annotations

import math


class TokenBucket:
    """`rate` admissions per second on average, `burst` at once; the clock is the caller's."""

    __slots__ = ("_level", "_stamp", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._level = float(burst)
        self._stamp = -math.inf

    def take(self, now: float) -> float:
        """Admit one (returns 0.0), or return the seconds until one would be admitted."""
        self._level = min(self.burst, self._level + max(now - self._stamp, 0.0) * self.rate)
        self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self.rate
