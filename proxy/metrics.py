"""Prometheus metrics, collected at scrape time from plain counters.

The hot path only adds to integers and a bucket list (`RouteMetrics.observe`); names,
labels and cumulative buckets are produced when Prometheus scrapes. Labels are bounded:
routes are a fixed set, failure kinds are a fixed set, AADSTS codes are Entra's, and
callers are a fixed set of SDK families (`proxy.callers`; their versions stay out of labels).
"""

from __future__ import annotations

import bisect
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import msal
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.tokens.cache import Exchange, TokenCache
from proxy.tokens.errors import TokenError
from proxy.tokens.model import AccessToken, TokenKey
from proxy.usage import CallerUsage

PREFIX = "imds_proxy"
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


class ProxyCollector(Collector):
    """Everything the proxy exports, read from its live objects at scrape time."""

    def __init__(
        self,
        requests: RequestMetrics,
        exchanges: ExchangeMetrics,
        cache: TokenCache,
        service_account_expiry: Callable[[], float | None],
        clock: Callable[[], float] = time.time,
        usage: CallerUsage | None = None,
    ) -> None:
        self._usage = usage
        self._requests = requests
        self._exchanges = exchanges
        self._cache = cache
        self._sa_expiry = service_account_expiry
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        yield from self._request_metrics()
        yield from self._cache_metrics()
        yield from self._exchange_metrics()
        yield from self._expiry_metrics()
        yield from self._caller_metrics()
        info = GaugeMetricFamily(
            f"{PREFIX}_build_info", "Build information.", labels=["version", "python", "msal"]
        )
        info.add_metric([__version__, platform.python_version(), msal.__version__], 1)
        yield info

    def _request_metrics(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            f"{PREFIX}_requests", "HTTP requests answered.", labels=["route", "code"]
        )
        routes = sorted(self._requests.routes.items())
        for route, stats in routes:
            for status, count in sorted(stats.codes.items()):
                total.add_metric([route, str(status)], count)
        yield total
        duration = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds", "Time to answer a request.", labels=["route"]
        )
        for route, stats in routes:
            duration.add_metric([route], stats.latency.buckets(), stats.latency.total)
        yield duration

    def _cache_metrics(self) -> Iterator[Metric]:
        stats = self._cache.stats
        for name, value, doc in (
            ("cache_hits", stats.hits, "Token requests answered from the cache."),
            ("cache_misses", stats.misses, "Token requests that waited for an exchange."),
            ("cache_refreshes", stats.refreshes, "Background refreshes started ahead of expiry."),
            ("cache_evictions", stats.evictions, "Entries evicted to stay within the limit."),
            (
                "cache_stale_served",
                stats.stale_served,
                "Cached tokens served because Entra ID was unavailable or throttling.",
            ),
            (
                "cache_failures_replayed",
                stats.failures_replayed,
                "Requests answered from a remembered failure without calling Entra ID.",
            ),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        yield GaugeMetricFamily(
            f"{PREFIX}_cache_entries", "Keys held in the token cache.", value=len(self._cache)
        )

    def _exchange_metrics(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            f"{PREFIX}_entra_exchanges",
            "Token exchanges with Entra ID by outcome.",
            labels=["outcome", "aadsts"],
        )
        for (outcome, aadsts), count in sorted(self._exchanges.outcomes.items()):
            outcomes.add_metric([outcome, aadsts], count)
        yield outcomes
        hist = self._exchanges.latency
        duration = HistogramMetricFamily(
            f"{PREFIX}_entra_exchange_duration_seconds",
            "Time for one token exchange with Entra ID.",
        )
        duration.add_metric([], hist.buckets(), hist.total)
        yield duration

    def _expiry_metrics(self) -> Iterator[Metric]:
        now = self._clock()
        soonest = self._cache.soonest_expiry()
        if soonest is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_token_expiry_seconds",
                "Seconds until the soonest cached access token expires.",
                value=soonest - now,
            )
        sa_expiry = self._sa_expiry()
        if sa_expiry is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_service_account_token_expiry_seconds",
                "Seconds until the projected service-account token expires.",
                value=sa_expiry - now,
            )

    def _caller_metrics(self) -> Iterator[Metric]:
        if self._usage is None:
            return
        by_client = CounterMetricFamily(
            f"{PREFIX}_token_requests_by_client",
            "Token requests by calling SDK family and whether its version could use "
            "workload identity without the sidecar (yes, no, unknown).",
            labels=["client", "supports_workload_identity"],
        )
        for (client, supports), count in sorted(self._usage.by_label.items()):
            by_client.add_metric([client, supports], count)
        yield by_client
        last = self._usage.last_request_at
        if last is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_last_token_request_timestamp_seconds",
                "Unix time of the last token request (absent until the first one).",
                value=last,
            )


def build_registry(collector: ProxyCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
