"""Prometheus metrics, collected at scrape time from plain counters.

The hot path only adds to integers and a bucket list (`RouteMetrics.observe`); names,
labels and cumulative buckets are produced when Prometheus scrapes. Labels are bounded:
routes are a fixed set, failure kinds are a fixed set, AADSTS codes are Entra's, and
callers are a fixed set of SDK families (`proxy.callers`; their versions stay out of labels).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator

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
from proxy.counters import (
    EXCHANGE_BUCKETS,
    MAX_AADSTS_LABELS,
    REQUEST_BUCKETS,
    ExchangeMetrics,
    Histogram,
    RequestMetrics,
    RouteMetrics,
)
from proxy.tokens.cache import TokenCache
from proxy.usage import CallerUsage

__all__ = [
    "EXCHANGE_BUCKETS",
    "MAX_AADSTS_LABELS",
    "REQUEST_BUCKETS",
    "ExchangeMetrics",
    "Histogram",
    "ProxyCollector",
    "RequestMetrics",
    "RouteMetrics",
    "build_registry",
]
PREFIX = "imds_proxy"


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
        event_loop: str = "asyncio",
    ) -> None:
        self._usage = usage
        self._event_loop = event_loop
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
            f"{PREFIX}_build_info",
            "Build information.",
            labels=["version", "python", "msal", "event_loop"],
        )
        info.add_metric(
            [__version__, platform.python_version(), msal.__version__, self._event_loop], 1
        )
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
        federation = CounterMetricFamily(
            f"{PREFIX}_federation_failures",
            "Federation rejections by cause; phase 'propagating' was answered 503 inside the "
            "propagation window, 'final' 400.",
            labels=["cause", "phase"],
        )
        for (cause, phase), count in sorted(stats.federation_failures.items()):
            federation.add_metric([cause, phase], count)
        yield federation

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
