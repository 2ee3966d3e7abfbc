"""The proxy's counters: plain integers and bucket lists the hot path adds to.

They import nothing heavy, so the token listener can count from its first request while
`proxy.metrics`, which turns them into Prometheus families at scrape time, loads later.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.tokens.cache import Exchange
from proxy.tokens.errors import TokenError
from proxy.tokens.model import AccessToken, TokenKey

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
EXCHANGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_AADSTS_LABELS = 50


@dataclass(slots=True)
class Histogram:
    """Non-cumulative bucket counts; made cumulative at scrape."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class RouteMetrics:
    """Answers by status code and their latency, for one route."""

    __slots__ = ("codes", "latency")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.latency = Histogram(REQUEST_BUCKETS)

    def observe(self, status: int, seconds: float) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.latency.observe(seconds)


class RequestMetrics:
    """Requests by route and status code, and latency by route."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteMetrics] = {}

    def route(self, name: str) -> RouteMetrics:
        """The counters of one route; callers keep it, so a request pays no lookup."""
        return self.routes.setdefault(name, RouteMetrics())


class ExchangeMetrics:
    """Entra exchanges by outcome (and AADSTS code), with their latency."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}
        self.latency = Histogram(EXCHANGE_BUCKETS)
        self._codes: set[str] = set()

    def metered(
        self, exchange: Exchange, clock: Callable[[], float] = time.perf_counter
    ) -> Exchange:
        async def timed(key: TokenKey) -> AccessToken:
            started = clock()
            try:
                token = await exchange(key)
            except TokenError as exc:
                self._count(exc.kind, getattr(exc, "aadsts", None) or "")
                raise
            except Exception:
                self._count("internal", "")
                raise
            finally:
                self.latency.observe(clock() - started)
            self._count("success", "")
            return token

        return timed

    def _count(self, outcome: str, aadsts: str) -> None:
        if aadsts and aadsts not in self._codes:
            if len(self._codes) >= MAX_AADSTS_LABELS:
                aadsts = "other"
            else:
                self._codes.add(aadsts)
        key = (outcome, aadsts)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
