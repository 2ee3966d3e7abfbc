"""The token cache with a fake clock, a fixed random source and a scripted exchange.

Times are whole seconds after `T0` unless a boundary is probed, so the float arithmetic
in the cache and in the tests lands on the same values.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from proxy.failures import failure_for
from proxy.tokens import cache as cache_module
from proxy.tokens.cache import CachePolicy, TokenCache
from proxy.tokens.errors import (
    CredentialUnavailable,
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    TokenError,
    TooManyNewTokens,
)
from proxy.tokens.model import AccessToken, TokenKey
from tests.support.cache_fakes import (
    CLIENT,
    KEY,
    LIFETIME,
    OTHER,
    TENANT,
    FakeExchange,
    RecordingLog,
)
from tests.support.clock import T0, FakeClock

THIRD = TokenKey(TENANT, CLIENT, "https://management.azure.com/.default")
STALE_AT = T0 + LIFETIME - 5.0  # served while valid: up to the default outage_floor
EXPIRES_ON = T0 + LIFETIME


def rejected() -> EntraRejected:
    return EntraRejected(
        "invalid_client",
        "AADSTS700213: No matching federated identity record found",
        "700213",
        400,
    )


@pytest.fixture(autouse=True)
def log(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    recorder = RecordingLog()
    monkeypatch.setattr(cache_module, "log", recorder)
    return recorder


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def exchange(clock: FakeClock) -> FakeExchange:
    return FakeExchange(clock)


def make_cache(
    exchange: FakeExchange, clock: FakeClock, rand: float = 0.5, **policy: Any
) -> TokenCache:
    return TokenCache(exchange, CachePolicy(**policy), clock=clock, rand=lambda: rand)


async def settle() -> None:
    """Let started tasks run until they block (the fake exchange never sleeps)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- hits and misses ---------------------------------------------------------------------


async def test_lookup_of_an_unknown_key_is_none_and_creates_nothing(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    assert cache.lookup(KEY) is None
    assert len(cache) == 0
    assert cache.stats.hits == 0
    assert exchange.calls == []


async def test_a_miss_exchanges_once_and_later_requests_hit(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    first = await cache.get(KEY)
    assert first.value == "token-1"
    clock.advance(60)
    for _ in range(3):
        assert await cache.get(KEY) is first
    assert exchange.calls == [KEY]
    assert (cache.stats.misses, cache.stats.hits, cache.stats.exchanges) == (1, 3, 1)


async def test_keys_are_cached_independently(exchange: FakeExchange, clock: FakeClock) -> None:
    cache = make_cache(exchange, clock)
    vault = await cache.get(KEY)
    storage = await cache.get(OTHER)
    assert vault is not storage
    assert exchange.calls == [KEY, OTHER]
    assert cache.lookup(KEY) is vault
    assert cache.lookup(OTHER) is storage
    assert len(cache) == 2


# -- expiry ------------------------------------------------------------------------------


async def test_token_is_served_up_to_stale_at_and_never_at_it_while_entra_answers(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    # refresh point == stale_at, so no background refresh muddles the boundary
    cache = make_cache(exchange, clock, refresh_fraction=1.0, refresh_jitter=0.0)
    token = await cache.get(KEY)
    clock.now = STALE_AT - 0.001
    assert cache.lookup(KEY) is token
    clock.now = STALE_AT
    assert cache.lookup(KEY) is None
    exchange.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get(KEY))
    await settle()
    assert not waiter.done(), "the old token must not be handed out at stale_at"
    assert len(exchange.calls) == 2
    exchange.gate.set()
    fresh = await waiter
    assert fresh.value == "token-2"
    assert cache.lookup(KEY) is fresh


@pytest.mark.parametrize(
    "failure",
    [EntraUnavailable("Entra ID is unreachable"), EntraThrottled("slow down", retry_after=1.0)],
    ids=["unavailable", "throttled"],
)
async def test_outage_serves_a_valid_token_until_the_outage_floor_never_past_expiry(
    exchange: FakeExchange, clock: FakeClock, failure: TokenError
) -> None:
    cache = make_cache(exchange, clock)
    token = await cache.get(KEY)
    exchange.failure = failure
    clock.now = EXPIRES_ON - 600
    assert await cache.get(KEY) is token  # at once; the refresh behind it fails
    await settle()
    assert len(exchange.calls) == 2
    clock.now = EXPIRES_ON - 5.0 - 0.001  # outage_floor defaults to 5 s
    assert await cache.get(KEY) is token
    clock.now = EXPIRES_ON - 5.0
    with pytest.raises(type(failure)):
        await cache.get(KEY)
    clock.now = EXPIRES_ON + 60
    with pytest.raises(type(failure)):
        await cache.get(KEY)
    assert cache.stats.stale_served == 1, "served while its refresh was failing"
    assert cache.lookup(KEY) is None


async def test_outage_floor_is_the_policys(exchange: FakeExchange, clock: FakeClock) -> None:
    cache = make_cache(exchange, clock, outage_floor=120.0)
    token = await cache.get(KEY)
    exchange.failure = EntraUnavailable("down")
    clock.now = EXPIRES_ON - 121
    assert await cache.get(KEY) is token
    clock.now = EXPIRES_ON - 120
    with pytest.raises(EntraUnavailable):
        await cache.get(KEY)


async def test_remembered_outage_still_serves_the_valid_token_without_calling(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    token = await cache.get(KEY)
    exchange.failure = EntraThrottled("slow down", retry_after=300.0)
    clock.now = EXPIRES_ON - 600
    assert await cache.get(KEY) is token  # the refresh behind it is throttled for 300 s
    await settle()
    clock.advance(100)
    assert await cache.get(KEY) is token
    await settle()
    assert len(exchange.calls) == 2, "no call while the throttling is remembered"
    assert cache.stats.exchange_failures == 1


async def test_rejection_is_not_hidden_by_a_still_valid_token(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    await cache.get(KEY)
    exchange.failure = rejected()
    clock.now = STALE_AT + 1
    with pytest.raises(EntraRejected):
        await cache.get(KEY)
    clock.advance(1)  # within rejected_ttl: replayed, still not served
    with pytest.raises(EntraRejected):
        await cache.get(KEY)
    assert len(exchange.calls) == 2
    assert cache.stats.stale_served == 0


# -- refresh ahead -----------------------------------------------------------------------


async def test_refresh_ahead_starts_exactly_one_background_exchange(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock, rand=0.5)  # no jitter: refresh at half the life
    first = await cache.get(KEY)
    clock.now = T0 + LIFETIME / 2 - 0.001
    assert cache.lookup(KEY) is first
    await settle()
    assert len(exchange.calls) == 1
    exchange.gate = asyncio.Event()
    clock.now = T0 + LIFETIME / 2
    assert cache.lookup(KEY) is first, "the hit that starts a refresh gets the old token"
    assert cache.stats.refreshes == 1
    await settle()
    assert len(exchange.calls) == 2
    for _ in range(10):
        clock.advance(1)
        assert await cache.get(KEY) is first
    await settle()
    assert len(exchange.calls) == 2
    assert cache.stats.refreshes == 1
    exchange.gate.set()
    await settle()
    second = cache.lookup(KEY)
    assert second is not None
    assert second.value == "token-2"
    assert await cache.get(KEY) is second
    assert cache.stats.misses == 1, "no caller ever waited"
    assert len(exchange.calls) == 2


@pytest.mark.parametrize(
    ("rand", "share"),
    [(0.0, 0.4), (0.25, 0.45), (0.75, 0.55), (1.0, 0.6)],
)
async def test_refresh_point_is_fraction_plus_minus_jitter(
    exchange: FakeExchange, clock: FakeClock, rand: float, share: float
) -> None:
    cache = make_cache(exchange, clock, rand=rand)  # defaults: 0.5 +- 0.1
    first = await cache.get(KEY)
    point = T0 + LIFETIME * share
    clock.now = point - 0.01
    assert cache.lookup(KEY) is first
    await settle()
    assert cache.stats.refreshes == 0
    assert len(exchange.calls) == 1
    clock.now = point + 0.01
    assert cache.lookup(KEY) is first
    assert cache.stats.refreshes == 1
    await settle()
    assert len(exchange.calls) == 2


async def test_refresh_point_beyond_stale_at_is_clamped_to_it(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    # 0.95 + 0.04 of the life is 3564 s, past stale_at (3595 s less the floor of 120 s)
    cache = make_cache(
        exchange, clock, rand=1.0, refresh_fraction=0.95, refresh_jitter=0.04, outage_floor=120
    )
    stale_at = EXPIRES_ON - 120
    first = await cache.get(KEY)
    clock.now = stale_at - 0.01
    assert cache.lookup(KEY) is first
    assert cache.stats.refreshes == 0
    clock.now = stale_at
    assert cache.lookup(KEY) is None
    clock.now = T0 + 3500  # before the unclamped point: still not served
    assert cache.lookup(KEY) is None
    assert not cache.holds_valid(KEY)


async def test_failed_background_refresh_keeps_serving_and_retries_after_backoff(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock, rand=1.0)  # first backoff: 1 s
    first = await cache.get(KEY)
    exchange.results = [EntraUnavailable("timeout")]
    clock.now = T0 + 2200  # past the refresh point (0.6 of the life), before stale_at
    assert cache.lookup(KEY) is first
    await settle()
    assert len(exchange.calls) == 2
    clock.advance(0.5)
    assert cache.lookup(KEY) is first
    await settle()
    assert len(exchange.calls) == 2, "no refresh inside the backoff window"
    clock.advance(0.5)
    assert cache.lookup(KEY) is first
    await settle()
    assert len(exchange.calls) == 3
    fresh = cache.lookup(KEY)
    assert fresh is not None
    assert fresh.value == "token-2"
    assert cache.stats.misses == 1


async def test_throttled_background_refresh_waits_for_retry_after(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    first = await cache.get(KEY)
    exchange.results = [EntraThrottled("slow down", retry_after=120.0)]
    clock.now = T0 + LIFETIME / 2
    assert cache.lookup(KEY) is first
    await settle()
    assert len(exchange.calls) == 2
    for second in range(120):
        clock.now = T0 + LIFETIME / 2 + second + 0.5
        assert cache.lookup(KEY) is first
        await settle()
    assert len(exchange.calls) == 2
    clock.now = T0 + LIFETIME / 2 + 120.5
    assert cache.lookup(KEY) is first
    await settle()
    assert len(exchange.calls) == 3
    fresh = cache.lookup(KEY)
    assert fresh is not None
    assert fresh.value == "token-2"


@pytest.mark.parametrize("lifetime", [60.0, 600.0, 1800.0])
async def test_short_lived_tokens_are_served_for_most_of_their_life(
    clock: FakeClock, lifetime: float
) -> None:
    exchange = FakeExchange(clock, lifetime=lifetime)
    cache = make_cache(exchange, clock, rand=0.5)  # 600 s serve margin > lifetime / 3
    step = lifetime / 120
    for i in range(240):  # two lifetimes, 120 requests per lifetime
        clock.now = T0 + i * step
        token = await cache.get(KEY)
        assert token.expires_on - clock.now >= lifetime / 3
        await settle()
    assert cache.stats.misses == 1, "only the first request waited for Entra"
    assert len(exchange.calls) == 4, "one refresh per half lifetime"


@pytest.mark.parametrize("lifetime", [1800.0, 3599.0, 5400.0, 86400.0])
async def test_a_valid_token_is_answered_at_once_while_its_refresh_hangs(
    clock: FakeClock, lifetime: float
) -> None:
    """Stale while revalidate: a refresh that does not come back never makes a caller
    wait while the token it holds is valid (up to the floor a caller needs to use it)."""
    exchange = FakeExchange(clock, lifetime=lifetime)
    cache = make_cache(exchange, clock, rand=1.0)  # the latest refresh point
    await cache.get(KEY)
    exchange.gate = asyncio.Event()  # the refresh hangs
    served = []
    for i in range(1, 1000):
        clock.now = T0 + lifetime * i / 1000
        if (token := cache.lookup(KEY)) is not None:
            served.append(token.expires_on - clock.now)
        await settle()
    assert len(exchange.calls) == 2, "one refresh, still under way"
    assert len(served) >= 990 and min(served) >= 5.0
    exchange.gate.set()
    await settle()


# -- single flight -----------------------------------------------------------------------


async def test_a_thousand_concurrent_misses_share_one_exchange(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    exchange.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.get(KEY)) for _ in range(1000)]
    await settle()
    assert len(exchange.calls) == 1
    assert not any(w.done() for w in waiters)
    exchange.gate.set()
    tokens = await asyncio.gather(*waiters)
    assert len(exchange.calls) == 1
    assert all(t is tokens[0] for t in tokens)
    assert cache.stats.exchanges == 1
    assert cache.stats.misses == 1000
    assert cache.lookup(KEY) is tokens[0]


@pytest.mark.parametrize(
    "failure",
    [
        rejected(),
        EntraThrottled("slow down", retry_after=10.0),
        EntraUnavailable("Entra ID is unreachable"),
        CredentialUnavailable("service-account token file /t does not exist"),
    ],
    ids=["rejected", "throttled", "unavailable", "credential"],
)
async def test_a_thousand_concurrent_misses_share_one_failure(
    exchange: FakeExchange, clock: FakeClock, failure: TokenError
) -> None:
    cache = make_cache(exchange, clock)
    exchange.gate = asyncio.Event()
    exchange.failure = failure
    waiters = [asyncio.create_task(cache.get(KEY)) for _ in range(1000)]
    await settle()
    exchange.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert len(exchange.calls) == 1
    assert all(type(r) is type(failure) and str(r) == str(failure) for r in results)
    # Each waiter raises its own copy: one shared object would chain all 1,000 waiters'
    # frames (and the requests they hold) onto its traceback.
    assert len({id(r) for r in results}) == len(results)
    assert max(traceback_depth(r) for r in results if isinstance(r, BaseException)) < 10
    assert cache.stats.exchange_failures == 1


def traceback_depth(exc: BaseException) -> int:
    depth, tb = 0, exc.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


async def test_a_remembered_rejection_does_not_grow_with_each_replay(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    exchange.failure = rejected()
    replays = []
    for _ in range(200):
        with pytest.raises(EntraRejected) as raised:
            await cache.get(KEY)
        replays.append(raised.value)
    assert len(exchange.calls) == 1
    assert max(traceback_depth(r) for r in replays) < 10
    assert all(r.aadsts == "700213" and r.status == 400 for r in replays)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_exchange(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    exchange.gate = asyncio.Event()
    starter = asyncio.create_task(cache.get(KEY))  # this one started the exchange
    others = [asyncio.create_task(cache.get(KEY)) for _ in range(3)]
    await settle()
    starter.cancel()
    await settle()
    assert starter.cancelled()
    assert exchange.cancelled == 0
    exchange.gate.set()
    tokens = await asyncio.gather(*others)
    assert all(t.value == "token-1" for t in tokens)
    assert len(exchange.calls) == 1
    assert cache.lookup(KEY) is tokens[0]


# -- failures by kind --------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [5.0, 30.0])
async def test_rejection_is_remembered_for_rejected_ttl_then_retried(
    exchange: FakeExchange, clock: FakeClock, ttl: float
) -> None:
    cache = make_cache(exchange, clock, rejected_ttl=ttl)
    exchange.results = [rejected()]
    with pytest.raises(EntraRejected) as first:
        await cache.get(KEY)
    clock.now = T0 + ttl - 0.01
    with pytest.raises(EntraRejected) as replayed:
        await cache.get(KEY)
    assert replayed.value.aadsts == first.value.aadsts == "700213"
    assert len(exchange.calls) == 1
    assert cache.stats.failures_replayed == 1
    clock.now = T0 + ttl
    assert (await cache.get(KEY)).value == "token-1"
    assert len(exchange.calls) == 2


async def test_throttling_blocks_until_retry_after_and_replays_the_remainder(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    exchange.results = [EntraThrottled("Too many requests", retry_after=30.0)]
    with pytest.raises(EntraThrottled) as first:
        await cache.get(KEY)
    assert first.value.retry_after == 30.0
    clock.advance(10)
    with pytest.raises(EntraThrottled) as replayed:
        await cache.get(KEY)
    assert replayed.value.retry_after == pytest.approx(20.0)
    assert failure_for(replayed.value).retry_after_header() == "20"
    clock.now = T0 + 29.5
    with pytest.raises(EntraThrottled) as late:
        await cache.get(KEY)
    assert late.value.retry_after == pytest.approx(0.5)
    assert len(exchange.calls) == 1
    clock.now = T0 + 30
    assert (await cache.get(KEY)).value == "token-1"
    assert len(exchange.calls) == 2


@pytest.mark.parametrize("rand", [0.0, 1.0])
async def test_outage_backs_off_exponentially_with_jitter_up_to_the_cap(
    exchange: FakeExchange, clock: FakeClock, rand: float
) -> None:
    cache = make_cache(exchange, clock, rand=rand)  # backoff_base 1 s, backoff_cap 60 s
    exchange.failure = EntraUnavailable("Entra ID is unreachable")
    steps = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for attempt, step in enumerate(steps, start=1):
        window = step * (0.5 + rand / 2)
        failed_at = clock.now
        with pytest.raises(EntraUnavailable) as raised:
            await cache.get(KEY)
        assert raised.value.retry_after == pytest.approx(window)  # until the next attempt
        assert len(exchange.calls) == attempt
        clock.now = failed_at + window - 0.001
        with pytest.raises(EntraUnavailable) as replayed:
            await cache.get(KEY)
        assert replayed.value.retry_after == pytest.approx(0.001, abs=1e-5)
        assert len(exchange.calls) == attempt, f"called inside window {attempt} ({window} s)"
        clock.now = failed_at + window


async def test_backoff_honours_a_longer_retry_after_from_entra(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock, rand=1.0)
    exchange.results = [EntraUnavailable("503 from Entra", retry_after=20.0)]
    with pytest.raises(EntraUnavailable):
        await cache.get(KEY)
    clock.now = T0 + 19.9
    with pytest.raises(EntraUnavailable) as replayed:
        await cache.get(KEY)
    assert replayed.value.retry_after == pytest.approx(0.1)
    assert len(exchange.calls) == 1
    clock.now = T0 + 20
    assert (await cache.get(KEY)).value == "token-1"


async def test_success_resets_the_backoff(exchange: FakeExchange, clock: FakeClock) -> None:
    cache = make_cache(exchange, clock, rand=1.0)
    exchange.results = [EntraUnavailable("down"), EntraUnavailable("down")]
    for wait in (1, 2):
        with pytest.raises(EntraUnavailable):
            await cache.get(KEY)
        clock.advance(wait)
    token = await cache.get(KEY)
    exchange.failure = EntraUnavailable("down again")
    clock.now = token.expires_on + 1  # nothing left to serve
    with pytest.raises(EntraUnavailable):
        await cache.get(KEY)
    with pytest.raises(EntraUnavailable) as replayed:
        await cache.get(KEY)
    assert replayed.value.retry_after == pytest.approx(1.0), "back to the first step"


async def test_backoff_stays_capped_through_a_long_outage(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock, rand=0.0)  # 30 s windows once capped: ~9 hours
    exchange.failure = EntraUnavailable("Entra ID is unreachable")
    for attempt in range(1, 1101):
        with pytest.raises(EntraUnavailable):
            await cache.get(KEY)
        with pytest.raises(EntraUnavailable):
            await cache.get(KEY)  # inside the window: replayed, no call
        assert len(exchange.calls) == attempt
        clock.advance(30)


async def test_credential_failures_are_not_remembered(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    exchange.results = [
        CredentialUnavailable("service-account token file /t does not exist"),
        CredentialUnavailable("service-account token file /t does not exist"),
    ]
    for attempt in (1, 2):
        with pytest.raises(CredentialUnavailable):
            await cache.get(KEY)
        assert len(exchange.calls) == attempt
    assert cache.stats.failures_replayed == 0
    assert (await cache.get(KEY)).value == "token-1"
    assert len(exchange.calls) == 3


async def test_a_crashing_exchange_becomes_unavailable_and_recovers_after_backoff(
    exchange: FakeExchange, clock: FakeClock, log: RecordingLog
) -> None:
    cache = make_cache(exchange, clock, rand=1.0)  # first backoff: 1 s
    exchange.results = [RuntimeError("bug below the cache")]
    with pytest.raises(EntraUnavailable) as raised:
        await cache.get(KEY)
    assert "RuntimeError" in raised.value.description
    assert "bug below the cache" not in raised.value.description
    assert cache.stats.exchange_failures == 1
    assert log.named("token exchange crashed")
    clock.advance(0.5)
    with pytest.raises(EntraUnavailable):
        await cache.get(KEY)
    assert len(exchange.calls) == 1
    clock.now = T0 + 1
    assert (await cache.get(KEY)).value == "token-1"
    assert len(exchange.calls) == 2


# -- bounds, introspection, lifecycle ----------------------------------------------------


async def test_least_recently_used_entry_is_evicted(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock, max_entries=2)
    await cache.get(KEY)
    await cache.get(OTHER)
    assert cache.lookup(KEY) is not None  # KEY is now the most recently used
    await cache.get(THIRD)
    assert len(cache) == 2
    assert cache.stats.evictions == 1
    assert cache.lookup(OTHER) is None
    assert cache.lookup(KEY) is not None
    assert cache.lookup(THIRD) is not None  # order now: KEY, THIRD
    await cache.get(OTHER)  # evicts KEY
    assert cache.stats.evictions == 2
    assert cache.lookup(KEY) is None
    assert exchange.calls == [KEY, OTHER, THIRD, OTHER]


async def test_an_entry_with_an_exchange_under_way_is_not_evicted(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    """Evicting it would make its waiters' next request start a second exchange."""
    cache = make_cache(exchange, clock, max_entries=2)
    gate = exchange.gate = asyncio.Event()
    waiting = asyncio.ensure_future(cache.get(KEY))
    await settle()
    exchange.gate = None  # later exchanges answer at once; KEY's stays in flight
    await cache.get(OTHER)
    await cache.get(THIRD)  # over the limit: KEY is the oldest, but busy, so OTHER goes
    assert cache.stats.evictions == 1
    assert cache.lookup(OTHER) is None
    gate.set()
    await waiting
    assert cache.lookup(KEY) is not None
    assert exchange.calls.count(KEY) == 1


async def test_holds_valid_until_stale_at(exchange: FakeExchange, clock: FakeClock) -> None:
    cache = make_cache(exchange, clock, refresh_fraction=1.0, refresh_jitter=0.0)
    assert not cache.holds_valid(KEY)
    await cache.get(KEY)
    assert cache.holds_valid(KEY)
    assert not cache.holds_valid(OTHER)
    clock.now = STALE_AT - 0.01
    assert cache.holds_valid(KEY)
    clock.now = STALE_AT
    assert not cache.holds_valid(KEY)


async def test_holds_valid_is_false_for_a_key_that_only_failed(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock)
    exchange.failure = EntraUnavailable("down")
    with pytest.raises(EntraUnavailable):
        await cache.get(KEY)
    assert len(cache) == 1
    assert not cache.holds_valid(KEY)


async def test_soonest_expiry_is_the_earliest_cached_expiry(clock: FakeClock) -> None:
    exchange = FakeExchange(clock, lifetime=3600)
    cache = make_cache(exchange, clock)
    assert cache.soonest_expiry() is None
    await cache.get(KEY)
    exchange.lifetime = 600
    clock.advance(100)
    await cache.get(OTHER)
    exchange.lifetime = 7200
    await cache.get(THIRD)
    assert cache.soonest_expiry() == T0 + 100 + 600


async def test_prefetch_fills_the_cache_and_logs_failures_without_raising(
    exchange: FakeExchange, clock: FakeClock, log: RecordingLog
) -> None:
    cache = make_cache(exchange, clock)
    exchange.by_key[OTHER] = rejected()
    await cache.prefetch([KEY, OTHER])
    assert cache.holds_valid(KEY)
    assert not cache.holds_valid(OTHER)
    assert sorted(exchange.calls) == sorted([KEY, OTHER])
    failed = log.named("prefetch failed")
    assert len(failed) == 1
    assert failed[0]["scope"] == OTHER.scope
    assert "AADSTS700213" in failed[0]["reason"]
    assert cache.lookup(KEY) is not None
    assert cache.stats.hits == 1


async def test_abandon_answers_waiters_with_a_transient_failure(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    """At shutdown, a caller still waiting for Entra gets a 503-to-be, not a cut-off."""
    cache = make_cache(exchange, clock)
    exchange.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get(KEY))
    await settle()
    await asyncio.wait_for(cache.abandon(), timeout=1)
    assert exchange.cancelled == 1
    with pytest.raises(EntraUnavailable, match="shutting down") as raised:
        await waiter
    assert raised.value.retry_after == 1.0


async def test_close_cancels_a_background_refresh(exchange: FakeExchange, clock: FakeClock) -> None:
    cache = make_cache(exchange, clock)
    first = await cache.get(KEY)
    exchange.gate = asyncio.Event()
    clock.now = T0 + LIFETIME / 2
    assert cache.lookup(KEY) is first
    await settle()
    assert len(exchange.calls) == 2
    await asyncio.wait_for(cache.abandon(), timeout=1)
    assert exchange.cancelled == 1


async def test_close_without_exchanges_returns(exchange: FakeExchange, clock: FakeClock) -> None:
    cache = make_cache(exchange, clock)
    await cache.get(KEY)
    await asyncio.wait_for(cache.abandon(), timeout=1)
    assert exchange.cancelled == 0
    assert cache.lookup(KEY) is not None


async def test_entries_holding_only_a_failure_are_evicted_before_tokens(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    """A flood of rejected resources must not push good tokens out of the cache."""
    cache = make_cache(exchange, clock, max_entries=3)
    await cache.get(KEY)
    await cache.get(OTHER)
    exchange.failure = rejected()
    for i in range(10):
        with pytest.raises(EntraRejected):
            await cache.get(TokenKey(TENANT, CLIENT, f"https://bad-{i}.example/.default"))
    assert cache.lookup(KEY) is not None and cache.lookup(OTHER) is not None
    assert len(cache) == 3 and cache.stats.evictions == 9


async def test_remembered_failures_are_bounded_below_the_cache_size(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    """Distinct rejected resources keep at most `max_failures` error texts, however many
    come, and tokens are not touched."""
    cache = make_cache(exchange, clock, max_entries=1024, max_failures=4, new_token_burst=100)
    await cache.get(KEY)
    exchange.failure = rejected()
    for i in range(50):
        with pytest.raises(EntraRejected):
            await cache.get(TokenKey(TENANT, CLIENT, f"https://bad-{i}.example/.default"))
    assert len(cache) == 1 + 4 and cache.lookup(KEY) is not None
    last = TokenKey(TENANT, CLIENT, "https://bad-49.example/.default")
    calls = len(exchange.calls)
    with pytest.raises(EntraRejected):  # the most recent failures are still remembered
        await cache.get(last)
    assert len(exchange.calls) == calls


async def test_failures_leave_no_reference_cycles(clock: FakeClock) -> None:
    """A rejected request is freed when it is answered, not at some later collection: the
    error's traceback must not keep the frames that hold it (and the caller's request)."""

    async def rejecting(key: TokenKey) -> AccessToken:
        raise rejected()

    cache = TokenCache(rejecting, CachePolicy(), clock=clock, rand=lambda: 0.5)
    keys = [TokenKey(TENANT, CLIENT, f"https://bad-{i}.example/.default") for i in range(20)]
    gc.collect()
    gc.disable()
    try:
        for key in keys:
            for _ in range(2):  # the exchange, then the remembered failure
                with pytest.raises(EntraRejected):
                    await cache.get(key)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0


# -- stale while revalidate, and the new-token limit -------------------------------------


async def test_past_its_refresh_point_a_valid_token_is_answered_while_the_refresh_runs(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock, refresh_fraction=0.5, refresh_jitter=0.0)
    first = await cache.get(KEY)
    exchange.gate = asyncio.Event()  # Entra hangs
    clock.now = EXPIRES_ON - 60  # long past the refresh point, one minute left
    assert await asyncio.wait_for(cache.get(KEY), timeout=0.1) is first
    await settle()
    assert len(exchange.calls) == 2
    exchange.gate.set()
    await settle()
    assert cache.lookup(KEY) is not first  # the refresh landed


async def test_new_tokens_are_limited_by_a_bucket_but_hits_and_refreshes_never(
    exchange: FakeExchange, clock: FakeClock
) -> None:
    cache = make_cache(exchange, clock, new_token_rate=2.0, new_token_burst=5)
    held = await cache.get(KEY)
    refused = 0
    for i in range(200):
        try:
            await cache.get(TokenKey(TENANT, CLIENT, f"https://bogus-{i}.example/.default"))
        except TooManyNewTokens as exc:
            refused += 1
            assert 0 < exc.retry_after <= 0.5
    assert (len(exchange.calls), refused) == (5, 196)
    assert cache.stats.rate_limited == 196
    assert cache.lookup(KEY) is held  # hits are never limited
    clock.now = T0 + LIFETIME * 0.7  # past the refresh point: the refresh is not limited
    assert cache.lookup(KEY) is held
    await settle()
    assert len(exchange.calls) == 6
    clock.advance(0.5)  # one more new token after half a second at 2 per second
    await cache.get(TokenKey(TENANT, CLIENT, "https://later.example/.default"))
    assert len(exchange.calls) == 7
    assert len(cache) == 1 + 4 + 1, "refused keys leave no entry behind"
