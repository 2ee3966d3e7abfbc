"""Prometheus metrics of the webhook, in a registry of its own.

Labels are fixed sets: the review's result, which read failed, where a client id came from,
how a certificate reload went. Namespaces and pod names stay out of labels (unbounded); the
log line of each review has them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

PREFIX = "imds_proxy_webhook"
RESULTS = ("mutated", "unchanged", "ignored", "denied", "allowed_on_error", "malformed")


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.reviews = Counter(
            f"{PREFIX}_reviews", "AdmissionReviews answered, by result", ["result"], registry=r
        )
        self.seconds = Histogram(
            f"{PREFIX}_review_seconds",
            "Time to answer an AdmissionReview",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.api_errors = Counter(
            f"{PREFIX}_api_errors", "API server reads that failed, by object", ["what"], registry=r
        )
        self.client_ids = Counter(
            f"{PREFIX}_client_id_source",
            "Pods given an identity, by where the client id came from",
            ["source"],
            registry=r,
        )
        self.cert_reloads = Counter(
            f"{PREFIX}_certificate_reloads",
            "Serving certificate loads after a file changed, by result",
            ["result"],
            registry=r,
        )
        self.cert_not_after = Gauge(
            f"{PREFIX}_certificate_not_after_timestamp_seconds",
            "When the serving certificate in use expires",
            registry=r,
        )
        for result in RESULTS:
            self.reviews.labels(result)
