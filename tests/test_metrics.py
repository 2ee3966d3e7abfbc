"""Metric bookkeeping that the end-to-end scrapes cannot reach cheaply."""

from __future__ import annotations

import pytest

from proxy.metrics import MAX_AADSTS_LABELS, ExchangeMetrics, Histogram
from proxy.tokens.errors import EntraRejected
from proxy.tokens.model import AccessToken, TokenKey

KEY = TokenKey("t", "c", "s")


async def test_aadsts_labels_are_capped_without_freezing_known_ones() -> None:
    metrics = ExchangeMetrics()

    def rejecting(code: int) -> EntraRejected:
        return EntraRejected("invalid_client", f"AADSTS{code}: no", str(code), 400)

    for code in range(MAX_AADSTS_LABELS + 10):
        failure = rejecting(code)

        async def fail(key: TokenKey, failure: EntraRejected = failure) -> AccessToken:
            raise failure

        with pytest.raises(EntraRejected):
            await metrics.metered(fail)(KEY)
    with pytest.raises(EntraRejected):

        async def known(key: TokenKey) -> AccessToken:
            raise rejecting(0)

        await metrics.metered(known)(KEY)
    labels = {aadsts for _, aadsts in metrics.outcomes}
    assert len(labels) == MAX_AADSTS_LABELS + 1  # the first 50 codes and "other"
    assert metrics.outcomes[("rejected", "0")] == 2, "a known code keeps counting"
    assert metrics.outcomes[("rejected", "other")] == 10


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        hist.observe(value)
    assert hist.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert hist.total == pytest.approx(2.65)
