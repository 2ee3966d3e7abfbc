"""HTTP: dispatch by path, answer, then count and log each request once.

The proxy serves a handful of routes, so it dispatches on `proxy.paths`' reading of the
path on aiohttp's low-level server instead of the router and application machinery; IMDS's
own spelling of the token path is one set lookup before anything else. A cached IMDS
token costs: two header lookups, one dictionary lookup for the (remembered) meaning of
the query, one for the token, two integers formatted into prebuilt bytes, and one
pre-escaped log line. Handlers never raise: errors are answers in the caller's protocol.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import HttpVersion10, web

from proxy.answers import error_answer as _error
from proxy.appservice import AppServiceEndpoint
from proxy.assertion import AssertionSource
from proxy.config import Settings
from proxy.counters import RequestMetrics
from proxy.forward import Forwarder
from proxy.identities import IdentityDirectory
from proxy.imds import (
    FORWARDED,
    JSON,
    TOKEN_PATH,
    ImdsError,
    TokenAnswer,
    error_for,
    header_error,
    parse_token_query,
)
from proxy.paths import Route, route_for
from proxy.query import IdentityQuery, TokenRequest, scope_for
from proxy.requestlog import RequestLog, json_field
from proxy.status import inspection_pages
from proxy.tokens.cache import TokenCache
from proxy.tokens.errors import CredentialUnavailable, TokenError
from proxy.tokens.model import AccessToken, TokenKey
from proxy.usage import CallerUsage

_INSPECTION = inspection_pages()
"""`/status` and `/report`: on the pod-local token port (they name the identity)."""
_TOKEN_PATHS = frozenset((TOKEN_PATH, TOKEN_PATH + "/"))
_TOKEN_ROUTE = Route("token")
_HTTP09 = Route("http09")
_Answer = tuple[web.StreamResponse, str]
"""A response and its request-log fields."""
JSON_HEADERS = {"Content-Type": JSON}
MAX_REMEMBERED_QUERIES = 256
"""An app asks with a handful of query strings; a flood of distinct ones costs at most this."""
_METHOD_NOT_ALLOWED = ImdsError(
    405, "invalid_request", "Only GET is supported on this path", reason="method"
)
_REFUSED = {
    "identity": ImdsError(
        404,
        "not_found",
        "No such identity endpoint: this proxy serves /metadata/identity/oauth2/token only",
        reason="identity_path",
    ),
    "other": ImdsError(404, "not_found", "No such endpoint", reason="path"),
    "invalid": ImdsError(
        400, "invalid_request", "The request path cannot be read unambiguously", reason="path"
    ),
    "http09": ImdsError(
        400, "invalid_request", "HTTP/1.0 or later is required", reason="http_version"
    ),
}


class _KnownQuery:
    """A validated token query: its cache key, its answer and its request-log fields."""

    __slots__ = ("answer", "hit", "key", "miss")

    def __init__(self, wanted: TokenRequest) -> None:
        self.answer = TokenAnswer(wanted)
        self.key = wanted.key
        fields = json_field("client_id", wanted.key.client_id) + json_field(
            "resource", wanted.resource
        )
        self.hit = fields + ', "cache": "hit"'
        self.miss = fields + ', "cache": "miss"'


@dataclass
class Proxy:
    """The live objects the routes answer from."""

    settings: Settings
    cache: TokenCache
    assertion: AssertionSource
    forwarder: Forwarder
    request_metrics: RequestMetrics
    identities: IdentityDirectory
    clock: Callable[[], float] = time.time
    callers: CallerUsage = field(default_factory=CallerUsage)

    @property
    def prefetch_keys(self) -> list[TokenKey]:
        client_id = self.settings.client_id
        if client_id is None:
            return []
        return [
            TokenKey(self.settings.tenant_id, client_id, scope_for(resource))
            for resource in self.settings.prefetch_resources
        ]

    def not_ready_reasons(self) -> list[str]:
        """Why the proxy cannot serve tokens now; empty when it can. Computed from what the
        proxy holds, on the loop, never queued behind exchanges: the token file is stat'ed
        (read only when kubelet replaced it; a projected volume is in memory)."""
        reasons = []
        try:
            self.assertion.current()
        except CredentialUnavailable as exc:
            reasons.append(exc.description)
        missing = [k.scope for k in self.prefetch_keys if not self.cache.holds_valid(k)]
        if missing:
            reasons.append("prefetched tokens not cached yet: " + ", ".join(missing))
        return reasons


class ProxyHttp:
    """The request handler of the proxy's listener (an aiohttp low-level server handler)."""

    def __init__(self, proxy: Proxy, request_log: RequestLog) -> None:
        self._proxy = proxy
        self._cache = proxy.cache
        self._callers = proxy.callers
        self._clock = proxy.clock
        self._log = request_log
        metrics = proxy.request_metrics
        self._routes = {
            name: metrics.route(name)
            for name in (
                "token",
                "appservice",
                "readyz",
                "healthz",
                "status",
                "report",
                "metadata",
                "identity",
                "invalid",
                "other",
            )
        }
        self._routes["http09"] = self._routes["invalid"]
        self._tenant_id = proxy.settings.tenant_id
        self._default_client_id = proxy.settings.client_id
        self._identities = proxy.identities
        self._queries: dict[str, _KnownQuery | ImdsError] = {}
        self._app_service = AppServiceEndpoint.from_settings(proxy.settings, proxy.cache)
        self.last_arrival = 0.0
        """`time.perf_counter()` of the latest request: a draining server waits for quiet."""

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self.last_arrival = time.perf_counter()
        target = request.raw_path
        path, _, query = target.partition("?")
        # IMDS's own spelling of the token path is matched as it stands; any other spelling
        # is read canonically first (`proxy.paths`), so that no form of an identity path
        # is ever forwarded to the node's IMDS.
        route = _TOKEN_ROUTE if path in _TOKEN_PATHS else route_for(target)
        if request.version < HttpVersion10:  # HTTP/0.9: a CR or LF cut the request line
            route = _HTTP09
        name = route.name
        if name == "token":
            event = "received token request"
            answered = self._token_now(request, query)
            response, extra = answered or await self._token_later(request, query)
            extra += self._callers.observe(request.headers)
        elif name == "appservice":
            event = "received app service token request"
            response, extra = await self._app_service(request)
            extra += self._callers.observe(request.headers)
        elif name == "metadata":
            event = "forwarded metadata request"
            if "X-Forwarded-For" in request.headers:
                response, extra = _error(FORWARDED)
            else:
                response, extra = await self._proxy.forwarder(request, route.forward_path), ""
        elif name == "readyz":
            event = "received readyz request"
            response, extra = self._readyz()
        elif name == "healthz":
            event = "received healthz request"
            response, extra = web.Response(text="ok"), ""
        elif name in _INSPECTION:
            event = "received inspection request"
            response, extra = web.json_response(_INSPECTION[name](self._proxy)), ""
        else:
            event = "received unknown request"
            response, extra = _error(_REFUSED[name])
            if name == "http09":
                response.force_close()
        elapsed = time.perf_counter() - started
        status = response.status
        self._routes[name].observe(status, elapsed)
        if self._log.enabled:
            request_id = request.headers.get("x-ms-client-request-id")
            self._log.write(event, request.method, path, status, elapsed, request_id, extra)
        return response

    def _token_now(self, request: web.BaseRequest, query: str) -> _Answer | None:
        """What needs no waiting: a refusal, a remembered query's error, a cached token.
        None: the query is new or the token is not cached (see `_token_later`)."""
        if request.method != "GET":
            return _error(_METHOD_NOT_ALLOWED)
        refused = header_error(request.headers)
        if refused is not None:
            return _error(refused)
        known = self._queries.get(query)
        if known is None:
            return None
        if isinstance(known, ImdsError):
            return _error(known)
        found = self._cache.lookup(known.key)
        if found is None:
            return None
        return self._token_response(known, found), known.hit

    async def _token_later(self, request: web.BaseRequest, query: str) -> _Answer:
        known = self._queries.get(query) or await self._remember_query(request, query)
        if isinstance(known, ImdsError):
            return _error(known)
        found = self._cache.lookup(known.key)
        if found is not None:
            return self._token_response(known, found), known.hit
        try:
            found = await self._cache.fetch(known.key)
        except TokenError as exc:
            response, extra = _error(error_for(exc))
            return response, known.miss + extra
        return self._token_response(known, found), known.miss

    def _token_response(self, known: _KnownQuery, token: AccessToken) -> web.Response:
        return web.Response(body=known.answer.render(token, self._clock()), headers=JSON_HEADERS)

    async def _remember_query(
        self, request: web.BaseRequest, query: str
    ) -> _KnownQuery | ImdsError:
        """Validate a query once; the same query string always means the same request
        (the traceback of an error would pin this request, so it is dropped)."""
        result: _KnownQuery | ImdsError
        try:
            wanted = parse_token_query(request.query, self._tenant_id, self._default_client_id)
            if isinstance(wanted, IdentityQuery):
                try:
                    wanted = await self._identities.resolve(wanted, self._cache.get)
                except ImdsError as err:  # not remembered: an identity learned later may match
                    return err.with_traceback(None)
        except ImdsError as err:
            result = err.with_traceback(None)
        else:
            result = _KnownQuery(wanted)
        if len(self._queries) >= MAX_REMEMBERED_QUERIES:
            self._queries.clear()
        self._queries[query] = result
        return result

    def _readyz(self) -> tuple[web.StreamResponse, str]:
        reasons = self._proxy.not_ready_reasons()
        if not reasons:
            return web.Response(text="ok"), ""
        body = json.dumps({"status": "not ready", "reasons": reasons})
        response = web.Response(status=503, text=body, content_type="application/json")
        return response, json_field("reason", "; ".join(reasons))
