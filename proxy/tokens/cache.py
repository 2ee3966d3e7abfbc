"""The token cache: every app request is answered from here, Entra ID is asked rarely.

A hit is a dictionary lookup and two float comparisons (`lookup`, synchronous, no I/O).
Everything else happens on a miss (`fetch`) or in the background:

- single flight: concurrent misses for one key share one exchange;
- refresh ahead: past a jittered point of a token's life (around half of it) the next hit
  starts a background refresh, so a fleet of sidecars does not refresh in lockstep and
  callers never wait at expiry;
- stale while revalidate: a token that is still valid is answered at once, and a refresh
  starts behind it; only a token within `outage_floor` of its expiry (a tenth of its life at
  most) is no longer served, and only then does a caller wait for Entra;
- new tokens are rate-limited (`new_token_rate`, `new_token_burst`): a storm of distinct
  resources is answered 429 at once instead of becoming a storm of calls to Entra ID, while
  hits and refreshes of tokens held are never limited;
- failures are remembered by kind: Entra's 4xx briefly, 429 until its Retry-After,
  outages with exponential backoff and jitter, during which a still-valid token is served;
- federation rejections are propagation-aware: "no matching federated credential" within
  `propagation_window` of the identity's first exchange is transient (callers are told to
  retry, Entra is asked once per `propagation_poll` for that identity), and any federation
  rejection that would be final is retried once after `federation_retry_delay`;
- bounded: least-recently-used entries are evicted beyond `max_entries`.

The clock and the random source are injected so that tests are deterministic.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import structlog

from proxy.tokens.errors import (
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    FederationPending,
    FederationRejected,
    TokenError,
    TooManyNewTokens,
)
from proxy.tokens.model import AccessToken, TokenKey
from proxy.tokens.ratelimit import TokenBucket

Exchange = Callable[[TokenKey], Awaitable[AccessToken]]

log = structlog.get_logger("proxy.cache")

_NEVER = -math.inf


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """When to refresh, when to stop serving, and how long failures are remembered."""

    max_entries: int = 1024
    max_failures: int = 128
    """Entries holding only a remembered failure, at most: a flood of distinct rejected
    resources then costs a bounded few hundred KiB, not `max_entries` error texts."""
    refresh_fraction: float = 0.5
    """Refresh ahead at this fraction of a token's lifetime..."""
    refresh_jitter: float = 0.1
    """...plus or minus this fraction, drawn per token."""
    outage_floor: float = 5.0
    """A token is served until this many seconds (at most a tenth of its lifetime) before
    it expires, while its refresh runs or Entra is failing."""
    new_token_rate: float = 2.0
    """Exchanges per second, on average, for tokens not held yet."""
    new_token_burst: int = 20
    """...and at once."""
    rejected_ttl: float = 5.0
    """How long an Entra 4xx for one key is answered from memory."""
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    propagation_window: float = 300.0
    """Seconds after an identity's first exchange during which "no matching federated
    credential" means "not propagated yet" (503, retried) rather than "wrong" (400)."""
    propagation_poll: float = 5.0
    """While propagating, Entra is asked for the identity at most once per this many seconds."""
    federation_retry_delay: float = 1.0
    """A federation rejection that would be final is retried once after this delay."""


@dataclass(slots=True)
class CacheStats:
    """Plain counters: read at scrape time, so the hot path pays an integer increment."""

    hits: int = 0
    misses: int = 0
    refreshes: int = 0
    exchanges: int = 0
    exchange_failures: int = 0
    evictions: int = 0
    stale_served: int = 0
    failures_replayed: int = 0
    rate_limited: int = 0
    """New-token requests refused by the proxy's own limit (Entra ID not asked)."""
    federation_failures: dict[tuple[str, str], int] = field(default_factory=dict)
    """By (cause, phase): phase `propagating` (answered 503) or `final` (answered 400)."""


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """The last failure, as `GET /status` and `imds-proxy doctor` show it (no secrets)."""

    at: float
    kind: str
    client_id: str
    scope: str
    description: str
    aadsts: str | None = None
    cause: str | None = None
    fix: str | None = None


class _Identity:
    """Per (tenant, client id): when it was first tried, and a propagation hold."""

    __slots__ = ("first_tried", "pending", "pending_until")

    def __init__(self, now: float) -> None:
        self.first_tried = now
        self.pending: FederationPending | None = None
        self.pending_until = _NEVER


class _Entry:
    """The state of one key. `refresh_at <= stale_at < token.expires_on` while a token is held."""

    __slots__ = (
        "blocked_until",
        "failure",
        "failures",
        "inflight",
        "refresh_at",
        "stale_at",
        "token",
    )

    def __init__(self) -> None:
        self.token: AccessToken | None = None
        self.refresh_at = _NEVER
        self.stale_at = _NEVER
        self.inflight: asyncio.Task[AccessToken] | None = None
        self.failure: TokenError | None = None
        self.blocked_until = _NEVER
        self.failures = 0


class TokenCache:
    """Tokens by (tenant, client id, scope), refreshed ahead and guarded against storms."""

    def __init__(
        self,
        exchange: Exchange,
        policy: CachePolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._exchange_fn = exchange
        self.policy = policy or CachePolicy()
        self._clock = clock
        self._rand = rand
        self._sleep = sleep
        self._entries: OrderedDict[TokenKey, _Entry] = OrderedDict()
        self._identities: OrderedDict[tuple[str, str], _Identity] = OrderedDict()
        self._new_tokens = TokenBucket(self.policy.new_token_rate, self.policy.new_token_burst)
        self.stats = CacheStats()
        self._abandoning = False
        self.last_failure: FailureRecord | None = None

    def __len__(self) -> int:
        return len(self._entries)

    # -- the hot path -------------------------------------------------------------------

    def lookup(self, key: TokenKey) -> AccessToken | None:
        """A servable token without waiting, or None when the caller must `fetch`."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.refresh_at:
            if now >= entry.stale_at:
                return None
            self._refresh_in_background(key, entry, now)
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry.token

    async def get(self, key: TokenKey) -> AccessToken:
        """A token for `key`, from memory when possible. Raises `TokenError`."""
        return self.lookup(key) or await self.fetch(key)

    # -- misses -------------------------------------------------------------------------

    async def fetch(self, key: TokenKey) -> AccessToken:
        """Join or start the exchange for `key`; remembered failures answer without one."""
        try:
            return await self._fetch(key)
        except TokenError as exc:
            # The frames below hold the error they raised, and its traceback holds them:
            # a cycle, with the caller's request in it, that only the garbage collector
            # would free. Their locals are done with: dropping them frees it all now.
            traceback.clear_frames(exc.__traceback__)
            raise

    async def _fetch(self, key: TokenKey) -> AccessToken:
        self.stats.misses += 1
        admitted = key not in self._entries
        if admitted:
            self._admit_new_token()  # a refused key leaves no entry behind
        entry = self._entry_for(key)
        task = entry.inflight
        if task is None:
            now = self._clock()
            if entry.failure is not None and now < entry.blocked_until:
                self.stats.failures_replayed += 1
                remaining = entry.blocked_until - now
                return self._serve_despite(entry, now, entry.failure.again(remaining))
            held = self._identity_hold(key, now)
            if held is not None:
                self.stats.failures_replayed += 1
                return self._serve_despite(entry, now, held)
            if entry.token is None and not admitted:
                self._admit_new_token()
            task = self._start_exchange(key, entry, "request")
        try:
            return await asyncio.shield(task)
        except TokenError as exc:  # shared by every waiter: each raises its own copy...
            now = self._clock()
            wait = entry.blocked_until - now  # ...saying when Entra will be asked again
            failure = exc.again(wait if wait > 0 else None)
        return self._serve_despite(entry, now, failure)

    def _admit_new_token(self) -> None:
        """Charge the new-token bucket, or raise `TooManyNewTokens` saying when to retry."""
        wait = self._new_tokens.take(self._clock())
        if wait > 0:
            self.stats.rate_limited += 1
            policy = self.policy
            raise TooManyNewTokens(
                "Too many requests for new tokens: this proxy asks Entra ID for at most "
                f"{policy.new_token_rate:g} new tokens per second (bursts of "
                f"{policy.new_token_burst}); retry in {math.ceil(wait)} s",
                wait,
            )

    async def prefetch(self, keys: Iterable[TokenKey]) -> None:
        """Fill the cache at start so the first app request is a hit; failures are logged."""
        wanted = list(keys)
        results = await asyncio.gather(*(self.fetch(k) for k in wanted), return_exceptions=True)
        for key, result in zip(wanted, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "prefetch failed", client_id=key.client_id, scope=key.scope, reason=str(result)
                )

    def holds_valid(self, key: TokenKey) -> bool:
        """Whether a token for `key` could be served now (for readiness)."""
        entry = self._entries.get(key)
        return entry is not None and entry.token is not None and self._clock() < entry.stale_at

    def soonest_expiry(self) -> float | None:
        """The earliest `expires_on` among cached tokens (for an expiry alert)."""
        times = [e.token.expires_on for e in self._entries.values() if e.token is not None]
        return min(times, default=None)

    async def abandon(self) -> None:
        """At shutdown: end the exchanges still running. Their waiters are answered with a
        transient failure (503 and Retry-After), not left to be cut off."""
        self._abandoning = True
        tasks = [e.inflight for e in self._entries.values() if e.inflight is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals ----------------------------------------------------------------------

    def _entry_for(self, key: TokenKey) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            if (
                len(self._entries) >= self.policy.max_entries
                or self._failure_only() >= self.policy.max_failures
            ):
                self._evict_one()
            entry = self._entries[key] = _Entry()
        else:
            self._entries.move_to_end(key)
        return entry

    def _failure_only(self) -> int:
        """Entries with no token and no exchange under way (a miss pays for the scan)."""
        return sum(1 for e in self._entries.values() if e.token is None and e.inflight is None)

    def _evict_one(self) -> None:
        """Drop the least recently used entry that holds only a remembered failure, else the
        least recently used one; never one with an exchange under way (its waiters' next
        request would start another). A flood of rejected resources thus costs good tokens
        nothing. Runs only on a miss, which costs an Entra call anyway, so a scan is fine."""
        idle = [(key, entry) for key, entry in self._entries.items() if entry.inflight is None]
        victim = next((key for key, entry in idle if entry.token is None), None)
        if victim is None and idle:
            victim = idle[0][0]
        if victim is not None:
            del self._entries[victim]
            self.stats.evictions += 1

    def _start_exchange(
        self, key: TokenKey, entry: _Entry, trigger: str
    ) -> asyncio.Task[AccessToken]:
        task = asyncio.get_running_loop().create_task(self._exchange(key, entry, trigger))
        task.add_done_callback(_retrieve_exception)
        entry.inflight = task
        return task

    def _refresh_in_background(self, key: TokenKey, entry: _Entry, now: float) -> None:
        if (
            entry.inflight is None
            and now >= entry.blocked_until
            and self._identity_hold(key, now) is None
        ):
            self.stats.refreshes += 1
            self._start_exchange(key, entry, "refresh")

    async def _exchange(self, key: TokenKey, entry: _Entry, trigger: str) -> AccessToken:
        self.stats.exchanges += 1
        identity = self._identity_for(key)
        try:
            token = await self._attempt(key, identity)
        except asyncio.CancelledError:
            if not self._abandoning:
                raise
            raise EntraUnavailable("the proxy is shutting down", 1.0) from None
        except TokenError as exc:
            # Raised unnamed: a local naming it would tie it to this frame (see `fetch`).
            raise self._remember_failure(key, entry, self._judge(identity, exc)) from None
        except Exception as exc:  # a bug below us must not poison the key forever
            log.exception("token exchange crashed", client_id=key.client_id, scope=key.scope)
            crashed = f"internal error in the token exchange ({type(exc).__name__})"
            raise self._remember_failure(key, entry, EntraUnavailable(crashed)) from None
        finally:
            entry.inflight = None
        identity.pending, identity.pending_until = None, _NEVER
        self._store(entry, token)
        log.info(
            "successfully acquired token",
            client_id=key.client_id,
            scope=key.scope,
            expires_on=int(token.expires_on),
            refresh_at=int(entry.refresh_at),
            trigger=trigger,
        )
        return token

    async def _attempt(self, key: TokenKey, identity: _Identity) -> AccessToken:
        """One exchange; a federation rejection that would be final gets a second chance
        (users report a few percent of them in steady state, gone a second later)."""
        try:
            return await self._exchange_fn(key)
        except FederationRejected as exc:
            if self._propagating(identity, exc):
                raise
            log.info(
                "federation rejected, retrying once",
                client_id=key.client_id,
                scope=key.scope,
                aadsts=exc.aadsts,
                cause=exc.cause,
            )
        await self._sleep(self.policy.federation_retry_delay)
        self.stats.exchanges += 1
        return await self._exchange_fn(key)

    def _propagating(self, identity: _Identity, exc: TokenError) -> bool:
        return (
            isinstance(exc, FederationRejected)
            and exc.propagates
            and self._clock() < identity.first_tried + self.policy.propagation_window
        )

    def _judge(self, identity: _Identity, exc: TokenError) -> TokenError:
        """A federation rejection inside the propagation window becomes transient."""
        if not isinstance(exc, FederationRejected):
            return exc
        now = self._clock()
        if not self._propagating(identity, exc):
            self._count_federation(exc.cause, "final")
            return exc
        self._count_federation(exc.cause, "propagating")
        poll = self.policy.propagation_poll
        left = identity.first_tried + self.policy.propagation_window - now
        pending = FederationPending(
            "The federated identity credential is not effective yet (Entra ID takes a few "
            f"minutes to propagate a new one); retry in {math.ceil(poll)} s. Counted as "
            f"final in {math.ceil(left)} s if it persists: {exc.description}",
            poll,
            exc.cause,
            exc.aadsts,
            exc.fix,
        )
        identity.pending, identity.pending_until = pending, now + poll
        return pending

    def _count_federation(self, cause: str, phase: str) -> None:
        counts = self.stats.federation_failures
        counts[(cause, phase)] = counts.get((cause, phase), 0) + 1

    def _identity_for(self, key: TokenKey) -> _Identity:
        """The identity's state, created (its window opened) on its first exchange."""
        name = (key.tenant_id, key.client_id)
        identity = self._identities.get(name)
        if identity is None:
            if len(self._identities) >= self.policy.max_entries:
                self._identities.popitem(last=False)
            identity = self._identities[name] = _Identity(self._clock())
        return identity

    def _identity_hold(self, key: TokenKey, now: float) -> FederationPending | None:
        """The pending answer while the identity waits for propagation, else None."""
        identity = self._identities.get((key.tenant_id, key.client_id))
        if identity is None or identity.pending is None or now >= identity.pending_until:
            return None
        return identity.pending.again(identity.pending_until - now)

    def _store(self, entry: _Entry, token: AccessToken) -> None:
        policy = self.policy
        lifetime = max(token.lifetime, 0.0)
        # Served while valid (stale while revalidate), up to a floor that leaves the caller
        # time to use it; short-lived tokens keep a proportional floor.
        entry.stale_at = token.expires_on - min(policy.outage_floor, lifetime / 10)
        share = policy.refresh_fraction + policy.refresh_jitter * (2 * self._rand() - 1)
        entry.refresh_at = min(token.obtained_at + lifetime * share, entry.stale_at)
        entry.token = token
        entry.failure = None
        entry.failures = 0
        entry.blocked_until = _NEVER

    def _remember_failure(self, key: TokenKey, entry: _Entry, exc: TokenError) -> TokenError:
        """Record `exc` for `key`; returns it, for the caller to raise."""
        now = self._clock()
        self.stats.exchange_failures += 1
        entry.failure = exc.again()
        if isinstance(exc, EntraRejected):
            entry.blocked_until = now + self.policy.rejected_ttl
        elif isinstance(exc, FederationPending | EntraThrottled):
            entry.blocked_until = now + exc.retry_after
        elif isinstance(exc, EntraUnavailable):
            entry.failures += 1
            delay = self._backoff(entry.failures)
            entry.blocked_until = now + max(delay, exc.retry_after or 0.0)
        else:  # local problems (the service-account token file) are re-checked at once
            entry.blocked_until = _NEVER
        serving = entry.token is not None and now < entry.token.expires_on
        aadsts, cause = getattr(exc, "aadsts", None), getattr(exc, "cause", None)
        self.last_failure = FailureRecord(
            now,
            exc.kind,
            key.client_id,
            key.scope,
            exc.description,
            aadsts,
            cause,
            getattr(exc, "fix", None),
        )
        log.warning(
            "federated credential is not effective yet"
            if isinstance(exc, FederationPending)
            else "token exchange failed",
            failure=exc.kind,
            aadsts=aadsts,
            cause=cause,
            client_id=key.client_id,
            tenant_id=key.tenant_id,
            scope=key.scope,
            reason=exc.description,
            retry_in=round(max(entry.blocked_until - now, 0.0), 3),
            serving_cached_token=serving,
        )
        return exc

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter in [half, full] of the step (decorrelates fleets)."""
        # The exponent is capped first: 2.0 ** 1024 overflows after a long enough outage.
        step = min(self.policy.backoff_cap, self.policy.backoff_base * 2.0 ** min(failures - 1, 62))
        return step * (0.5 + self._rand() / 2)

    def _serve_despite(self, entry: _Entry, now: float, exc: TokenError) -> AccessToken:
        """During an outage or throttling a still-valid token beats an error."""
        token = entry.token
        if (
            isinstance(exc, EntraUnavailable | EntraThrottled | FederationPending)
            and token is not None
            and now < token.expires_on - min(self.policy.outage_floor, token.lifetime / 10)
        ):
            self.stats.stale_served += 1
            return token
        raise exc


def _retrieve_exception(task: asyncio.Task[AccessToken]) -> None:
    """Background refreshes have no waiter; their failure is already logged."""
    if not task.cancelled():
        task.exception()
