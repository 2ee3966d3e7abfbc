"""One token flow for every protocol: remembered queries, identity resolution, the cache,
and failures, whatever protocol the caller speaks.

A protocol (`proxy.imds`, `proxy.appservice`) only reads a request into a `TokenRequest`
(or an `IdentityQuery`, or a `Failure`) in one of its dialects, and a dialect checks each
request (method, headers, secret) and writes token and failure bodies in its shape.
Everything between is here, once: the same request target always means the same query, so
its meaning, log fields and rendered bodies are worked out once and remembered (one table,
bounded); identity selectors are resolved through `proxy.identities` in every protocol; a
cached token costs a table lookup, the dialect's checks, a cache lookup and a render.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from proxy.answers import JSON, Answer, Refusal
from proxy.failures import Failure, failure_for
from proxy.identities import IdentityDirectory
from proxy.query import IdentityQuery, TokenRequest
from proxy.requestlog import Fields
from proxy.tokens.cache import TokenCache
from proxy.tokens.errors import TokenError
from proxy.tokens.model import AccessToken

MAX_REMEMBERED_QUERIES = 256
"""An app asks with a handful of request targets; a flood of distinct ones costs at most
this many remembered meanings (the table starts afresh when full)."""
_JSON_HEADERS = {"Content-Type": JSON}


class TokenBody(Protocol):
    """One query's success body, re-rendered only as the token (or a countdown) changes."""

    def render(self, token: AccessToken, now: float) -> bytes: ...


class Dialect(Protocol):
    """One protocol, or one version of it: its per-request checks and its shapes."""

    def refuse(self, request: web.BaseRequest) -> Refusal | None:
        """The checks that depend on more than the request target, run on every request
        before anything is looked up (method, headers, a secret)."""

    def refusal(self, failure: Failure) -> Refusal: ...

    def token_body(self, wanted: TokenRequest) -> TokenBody: ...

    def log_fields(self, wanted: TokenRequest) -> dict[str, object]:
        """What was asked for, for the request line."""


Wanted = TokenRequest | IdentityQuery | Failure


class TokenProtocol(Protocol):
    def parse(self, request: web.BaseRequest) -> tuple[Dialect, Wanted]:
        """What the request target asks for, and the dialect to answer it in. Depends on
        the target alone, so it is worked out once per distinct target."""


class Known:
    """A valid query: its cache key, its rendered bodies, its request-log fields."""

    __slots__ = ("body", "dialect", "hit", "key", "miss")

    def __init__(self, dialect: Dialect, wanted: TokenRequest) -> None:
        self.dialect = dialect
        self.key = wanted.key
        self.body = dialect.token_body(wanted)
        fields = dialect.log_fields(wanted)
        self.hit = Fields({**fields, "cache": "hit"})
        self.miss = Fields({**fields, "cache": "miss"})


@dataclass(frozen=True, slots=True)
class Refused:
    """A query that no request can make valid, remembered with its rendered refusal."""

    dialect: Dialect
    refusal: Refusal


class TokenFlow:
    """Answers token requests of any protocol from the cache."""

    def __init__(
        self,
        cache: TokenCache,
        identities: IdentityDirectory,
        clock: Callable[[], float] = time.time,
        limit: int = MAX_REMEMBERED_QUERIES,
    ) -> None:
        self._cache = cache
        self._identities = identities
        self._clock = clock
        self._limit = limit
        self._queries: dict[str, Known | Refused] = {}

    def answer_now(self, request: web.BaseRequest, target: str) -> Answer | None:
        """What needs no waiting: a refusal, a remembered query's refusal, a cached token.
        None: the target is new or the token is not cached (see `answer`)."""
        known = self._queries.get(target)
        if known is None:
            return None
        answered = self._from_memory(known, request)
        return None if isinstance(answered, Known) else answered

    async def answer(
        self, protocol: TokenProtocol, request: web.BaseRequest, target: str
    ) -> Answer:
        """The answer to any token request; waits for identity resolution or Entra ID."""
        known = self._queries.get(target)
        if known is None:
            dialect, wanted = protocol.parse(request)
            refused = dialect.refuse(request)  # before any exchange a selector may need
            if refused is not None:
                return refused.answer()
            resolved = await self._remember(target, dialect, wanted)
            if isinstance(resolved, Refusal):
                return resolved.answer()
            known = resolved
        missing = self._from_memory(known, request)
        if not isinstance(missing, Known):
            return missing
        try:
            found = await self._cache.fetch(missing.key)
        except TokenError as exc:
            response, fields = missing.dialect.refusal(failure_for(exc)).answer()
            return response, missing.miss + fields
        return self._token(missing, found), missing.miss

    def _from_memory(self, known: Known | Refused, request: web.BaseRequest) -> Answer | Known:
        """The request's checks, then the remembered refusal or the cached token; the
        query itself when its token must be fetched."""
        refused = known.dialect.refuse(request)
        if refused is not None:
            return refused.answer()
        if isinstance(known, Refused):
            return known.refusal.answer()
        found = self._cache.lookup(known.key)
        return known if found is None else (self._token(known, found), known.hit)

    def _token(self, known: Known, token: AccessToken) -> web.Response:
        return web.Response(body=known.body.render(token, self._clock()), headers=_JSON_HEADERS)

    async def _remember(
        self, target: str, dialect: Dialect, wanted: Wanted
    ) -> Known | Refused | Refusal:
        """The meaning of a new target, remembered; a selector no identity matches yet is
        answered (a `Refusal`) but not remembered: an identity learned later may match."""
        if isinstance(wanted, IdentityQuery):
            wanted = await self._identities.resolve(wanted, self._cache.get)
            if isinstance(wanted, Failure):
                return dialect.refusal(wanted)
        known = (
            Refused(dialect, dialect.refusal(wanted))
            if isinstance(wanted, Failure)
            else Known(dialect, wanted)
        )
        if len(self._queries) >= self._limit:
            self._queries.clear()
        self._queries[target] = known
        return known
