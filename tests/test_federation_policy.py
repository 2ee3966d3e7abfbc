"""Propagation-aware answers to federation rejections, tested like a data structure.

The cache runs under a fake clock with a fake sleep (which moves that clock), and a
scripted exchange; the answers are rendered by `proxy.imds` as apps would see them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy import imds
from proxy.answers import Refusal
from proxy.failures import failure_for
from proxy.tokens import cache as cache_module
from proxy.tokens import federation
from proxy.tokens.cache import CachePolicy, TokenCache
from proxy.tokens.errors import FederationPending, FederationRejected, TokenError
from proxy.tokens.model import TokenKey
from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE
from tests.support.cache_fakes import CLIENT, KEY, OTHER, TENANT, FakeExchange, RecordingLog
from tests.support.clock import FakeClock

CLAIMS = federation.AssertionClaims(
    iss="https://oidc.prod-aks.azure.com/abc/",
    sub="system:serviceaccount:shop:orders",
    aud=TOKEN_EXCHANGE_AUDIENCE,
)
WINDOW = 300.0
CODE_OF = {cause.name: sorted(cause.codes)[0] for cause in federation.CAUSES}


def rejection(cause_name: str) -> FederationRejected:
    """What `EntraExchange` raises for this class (the table's real explanation)."""
    cause = next(c for c in federation.CAUSES if c.name == cause_name)
    code = CODE_OF[cause_name]
    text = federation.explain(cause, code, CLAIMS, CLIENT, TENANT)
    fix = federation.fill(cause.fix, CLAIMS, CLIENT, TENANT)
    return FederationRejected("invalid_client", text, code, 400, cause.name, fix, cause.propagates)


class FakeSleep:
    """`asyncio.sleep` that moves the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)


@pytest.fixture(autouse=True, name="log")
def log_fixture(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    recorder = RecordingLog()
    monkeypatch.setattr(cache_module, "log", recorder)
    return recorder


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="exchange")
def exchange_fixture(clock: FakeClock) -> FakeExchange:
    return FakeExchange(clock)


@pytest.fixture(name="sleep")
def sleep_fixture(clock: FakeClock) -> FakeSleep:
    return FakeSleep(clock)


def make_cache(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep, **policy: Any
) -> TokenCache:
    return TokenCache(exchange, CachePolicy(**policy), clock=clock, rand=lambda: 0.5, sleep=sleep)


async def answer(cache: TokenCache, key: TokenKey = KEY) -> Refusal:
    """The IMDS error an app gets for `key` (the test fails if a token comes back)."""
    with pytest.raises(TokenError) as caught:
        await cache.fetch(key)
    return imds.refusal(failure_for(caught.value))


def description(err: Refusal) -> str:
    body = json.loads(err.body)
    assert body["error"] == err.failure.code
    text: str = body["error_description"]
    return text


# -- no matching federated credential: transient inside the window --------------------


async def test_inside_the_window_no_matching_credential_is_503_with_retry_after(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep, log: RecordingLog
) -> None:
    cache = make_cache(exchange, clock, sleep)
    exchange.failure = rejection("no_matching_credential")
    err = await answer(cache)
    assert (err.status, err.failure.code) == (503, "temporarily_unavailable")
    assert err.headers["Retry-After"] == "5"
    text = description(err)
    assert "not effective yet" in text
    assert "AADSTS70021" in text
    assert f"--issuer {CLAIMS.iss} --subject {CLAIMS.sub}" in text
    assert len(exchange.calls) == 1, "no one-second retry while it may be propagating"
    assert sleep.delays == []
    (line,) = log.named("federated credential is not effective yet")
    assert line["aadsts"] == "70021"
    assert line["cause"] == "no_matching_credential"
    assert line["client_id"] == CLIENT and line["tenant_id"] == TENANT
    assert cache.stats.federation_failures == {("no_matching_credential", "propagating"): 1}
    failure = cache.last_failure
    assert failure is not None and failure.kind == "federation_pending"
    assert failure.fix is not None and f"--subject {CLAIMS.sub} " in failure.fix
    assert failure.fix in text


async def test_entra_is_asked_at_most_once_per_poll_interval_per_identity(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep
) -> None:
    cache = make_cache(exchange, clock, sleep)
    exchange.failure = rejection("no_matching_credential")
    await answer(cache)
    for _ in range(4):  # within the poll interval: the same key and another scope
        clock.advance(1)
        assert (await answer(cache)).status == 503
        assert (await answer(cache, OTHER)).status == 503
    assert len(exchange.calls) == 1
    clock.advance(1)  # five seconds after the first call
    assert (await answer(cache, OTHER)).status == 503
    assert len(exchange.calls) == 2
    # 60 s of an app retrying every second costs about one call per 5 s.
    for _ in range(60):
        clock.advance(1)
        await answer(cache)
    assert 12 <= len(exchange.calls) <= 14


async def test_once_the_credential_propagates_the_token_is_served(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep
) -> None:
    cache = make_cache(exchange, clock, sleep)
    exchange.failure = rejection("no_matching_credential")
    await answer(cache)
    exchange.failure = None
    clock.advance(2)
    assert (await answer(cache)).status == 503, "still held until the next poll"
    clock.advance(3)
    token = await cache.fetch(KEY)
    assert token.value == "token-1"
    assert await cache.fetch(OTHER), "the identity's hold is gone for every scope"


async def test_after_the_window_it_is_retried_once_then_400_explained(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep, log: RecordingLog
) -> None:
    cache = make_cache(exchange, clock, sleep, propagation_window=WINDOW)
    exchange.failure = rejection("no_matching_credential")
    await answer(cache)
    clock.advance(WINDOW)
    calls = len(exchange.calls)
    err = await answer(cache)
    assert (err.status, err.failure.code) == (400, "invalid_request")
    assert len(exchange.calls) == calls + 2, "one retry before it counts"
    assert sleep.delays == [1.0]
    text = description(err)
    assert "not effective yet" not in text
    for part in (
        "AADSTS70021",
        f"iss={CLAIMS.iss}",
        f"sub={CLAIMS.sub}",
        f"aud={CLAIMS.aud}",
        CLIENT,
        TENANT,
        "az identity federated-credential create --name <name> --identity-name <identity> "
        f"--resource-group <group> --issuer {CLAIMS.iss} --subject {CLAIMS.sub} "
        "--audience api://AzureADTokenExchange",
        "oidcIssuerProfile.issuerUrl",
        "trailing slash",
    ):
        assert part in text
    (line,) = log.named("token exchange failed")
    assert line["cause"] == "no_matching_credential"
    assert text == "Identity not found: " + line["reason"]  # the phrase SDKs look for
    assert cache.stats.federation_failures[("no_matching_credential", "final")] == 1


async def test_the_window_opens_at_the_identitys_first_exchange_not_per_scope(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep
) -> None:
    cache = make_cache(exchange, clock, sleep, propagation_window=WINDOW)
    await cache.fetch(KEY)  # worked once: the identity's window opened here
    clock.advance(WINDOW + 1)
    exchange.failure = rejection("no_matching_credential")
    assert (await answer(cache, OTHER)).status == 400


async def test_a_steady_state_blip_is_absorbed_by_the_one_retry(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep
) -> None:
    cache = make_cache(exchange, clock, sleep, propagation_window=WINDOW)
    await cache.fetch(OTHER)
    clock.advance(WINDOW + 1)
    exchange.results = [rejection("no_matching_credential")]
    token = await cache.fetch(KEY)
    assert token.value == "token-2"
    assert sleep.delays == [1.0]
    assert cache.stats.federation_failures == {}


async def test_a_cached_token_is_served_while_its_refresh_is_pending(
    exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep
) -> None:
    exchange.lifetime = 240.0  # stale after 180 s, inside the window
    cache = make_cache(exchange, clock, sleep)
    first = await cache.fetch(KEY)
    clock.advance(200)  # past the serve margin, still valid: a miss refreshes
    exchange.failure = rejection("no_matching_credential")
    assert await cache.fetch(KEY) is first


@pytest.mark.parametrize("cause", [c.name for c in federation.CAUSES if not c.propagates], ids=str)
async def test_other_causes_are_final_at_once_after_one_retry(
    cause: str, exchange: FakeExchange, clock: FakeClock, sleep: FakeSleep, log: RecordingLog
) -> None:
    cache = make_cache(exchange, clock, sleep)
    exchange.failure = rejection(cause)
    inside = await answer(cache)
    assert (inside.status, inside.failure.code) == (400, "invalid_request")
    assert len(exchange.calls) == 2 and sleep.delays == [1.0]
    text = description(inside)
    assert f"AADSTS{CODE_OF[cause]}" in text and "Fix: " in text
    assert f"iss={CLAIMS.iss}" in text and CLIENT in text and TENANT in text
    clock.advance(WINDOW + 10)
    after = await answer(cache)
    assert after.status == 400 and description(after) == text
    assert [line["cause"] for line in log.named("token exchange failed")] == [cause, cause]
    assert cache.stats.federation_failures == {(cause, "final"): 2}


def test_every_documented_code_has_one_cause() -> None:
    assert federation.classify("70021").name == "no_matching_credential"  # type: ignore[union-attr]
    for code in ("700211", "700212", "700213"):
        assert federation.classify(code) is federation.classify("70021")
    expected = {
        "700016": "unknown_client",
        "700024": "assertion_time",
        "700027": "assertion_rejected",
        "50027": "assertion_rejected",
        "50166": "issuer_unreachable",
        "90061": "issuer_unreachable",
    }
    for code, name in expected.items():
        found = federation.classify(code)
        assert found is not None and found.name == name
    assert federation.classify("500011") is None, "unknown codes pass through"
    assert federation.classify(None) is None


def test_pending_answers_cap_retry_after() -> None:
    pending = FederationPending("x", 3600.0, "no_matching_credential", "70021", "fix it")
    assert imds.refusal(failure_for(pending)).headers["Retry-After"] == "60"
