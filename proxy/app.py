"""HTTP: dispatch by path, answer, then count and log each request once.

The proxy serves a handful of routes, so it dispatches on `proxy.paths`' reading of the
path on aiohttp's low-level server instead of the router and application machinery; IMDS's
own spelling of the token path is one set lookup before anything else. Both token
protocols are answered by one token flow (`proxy.tokenflow`): a cached IMDS token costs
one dictionary lookup for the (remembered) meaning of the target, two header lookups, one
dictionary lookup for the token, two integers formatted into prebuilt bytes, and one
pre-escaped log line. Handlers never raise: errors are answers in the caller's protocol.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import HttpVersion10, web

from proxy.answers import Answer
from proxy.appservice import AppServiceProtocol
from proxy.assertion import AssertionSource
from proxy.counters import RequestMetrics
from proxy.failures import Failure
from proxy.forward import Forwarder
from proxy.identities import IdentityDirectory
from proxy.imds import FORWARDED, TOKEN_PATH, ImdsProtocol, refusal
from proxy.paths import Route, route_for
from proxy.query import scope_for
from proxy.requestlog import NO_FIELDS, Fields, LogFields, RequestLog
from proxy.status import inspection_pages
from proxy.tokenflow import TokenFlow
from proxy.tokens.cache import TokenCache
from proxy.tokens.errors import CredentialUnavailable
from proxy.tokens.model import TokenKey
from proxy.usage import CallerUsage

_INSPECTION = inspection_pages()
"""`/status` and `/report`: on the pod-local token port (they name the identity)."""
_TOKEN_PATHS = frozenset((TOKEN_PATH, TOKEN_PATH + "/"))
_TOKEN_ROUTE = Route("token")
_HTTP09 = Route("http09")
_REFUSED = {
    "identity": refusal(
        Failure(
            404,
            "not_found",
            "No such identity endpoint: this proxy serves /metadata/identity/oauth2/token only",
            "identity_path",
        )
    ),
    "other": refusal(Failure(404, "not_found", "No such endpoint", "path")),
    "invalid": refusal(
        Failure(400, "invalid_request", "The request path cannot be read unambiguously", "path")
    ),
    "http09": refusal(
        Failure(400, "invalid_request", "HTTP/1.0 or later is required", "http_version")
    ),
}


@dataclass(frozen=True)
class ServedIdentity:
    """The identity the proxy answers for by default, as /status and /report show it."""

    tenant_id: str
    client_id: str | None
    source: str | None = None
    """Where the webhook found the client id (`IMDS_PROXY_IDENTITY_SOURCE`), if it did."""
    prefetch_resources: tuple[str, ...] = ()

    @property
    def prefetch_keys(self) -> list[TokenKey]:
        """The tokens fetched at start, which readiness waits for."""
        if self.client_id is None:
            return []
        return [
            TokenKey(self.tenant_id, self.client_id, scope_for(resource))
            for resource in self.prefetch_resources
        ]


@dataclass
class Proxy:
    """The live objects the routes answer from."""

    identity: ServedIdentity
    cache: TokenCache
    assertion: AssertionSource
    forwarder: Forwarder
    request_metrics: RequestMetrics
    identities: IdentityDirectory
    clock: Callable[[], float] = time.time
    callers: CallerUsage = field(default_factory=CallerUsage)

    def not_ready_reasons(self) -> list[str]:
        """Why the proxy cannot serve tokens now; empty when it can. Computed from what the
        proxy holds, on the loop, never queued behind exchanges: the token file is stat'ed
        (read only when kubelet replaced it; a projected volume is in memory)."""
        reasons = []
        try:
            self.assertion.current()
        except CredentialUnavailable as exc:
            reasons.append(exc.description)
        keys = self.identity.prefetch_keys
        missing = [k.scope for k in keys if not self.cache.holds_valid(k)]
        if missing:
            reasons.append("prefetched tokens not cached yet: " + ", ".join(missing))
        return reasons


class ProxyHttp:
    """The request handler of the proxy's listener (an aiohttp low-level server handler)."""

    def __init__(
        self,
        proxy: Proxy,
        request_log: RequestLog,
        flow: TokenFlow,
        imds: ImdsProtocol,
        app_service: AppServiceProtocol,
    ) -> None:
        self._proxy = proxy
        self._callers = proxy.callers
        self._log = request_log
        self._flow = flow
        self._imds = imds
        self._app_service = app_service
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
        self.last_arrival = 0.0
        """`time.perf_counter()` of the latest request: a draining server waits for quiet."""

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self.last_arrival = time.perf_counter()
        target = request.raw_path
        path = target.partition("?")[0]
        # IMDS's own spelling of the token path is matched as it stands; any other spelling
        # is read canonically first (`proxy.paths`), so that no form of an identity path
        # is ever forwarded to the node's IMDS.
        route = _TOKEN_ROUTE if path in _TOKEN_PATHS else route_for(target)
        if request.version < HttpVersion10:  # HTTP/0.9: a CR or LF cut the request line
            route = _HTTP09
        name = route.name
        caller: LogFields = NO_FIELDS
        if name == "token":
            event = "received token request"
            flow = self._flow
            answered = flow.answer_now(request, target)
            response, extra = answered or await flow.answer(self._imds, request, target)
            caller = self._callers.observe(request.headers)
        elif name == "appservice":
            event = "received app service token request"
            flow = self._flow
            answered = flow.answer_now(request, target)
            response, extra = answered or await flow.answer(self._app_service, request, target)
            caller = self._callers.observe(request.headers)
        elif name == "metadata":
            event = "forwarded metadata request"
            if "X-Forwarded-For" in request.headers:
                response, extra = FORWARDED.answer()
            else:
                response = await self._proxy.forwarder(request, route.forward_path)
                extra = NO_FIELDS
        elif name == "readyz":
            event = "received readyz request"
            response, extra = self._readyz()
        elif name == "healthz":
            event = "received healthz request"
            response, extra = web.Response(text="ok"), NO_FIELDS
        elif name in _INSPECTION:
            event = "received inspection request"
            response, extra = web.json_response(_INSPECTION[name](self._proxy)), NO_FIELDS
        else:
            event = "received unknown request"
            response, extra = _REFUSED[name].answer()
            if name == "http09":
                response.force_close()
        elapsed = time.perf_counter() - started
        status = response.status
        self._routes[name].observe(status, elapsed)
        if self._log.enabled:
            request_id = request.headers.get("x-ms-client-request-id")
            self._log.write(event, request.method, path, status, elapsed, request_id, extra, caller)
        return response

    def _readyz(self) -> Answer:
        reasons = self._proxy.not_ready_reasons()
        if not reasons:
            return web.Response(text="ok"), NO_FIELDS
        body = json.dumps({"status": "not ready", "reasons": reasons})
        response = web.Response(status=503, text=body, content_type="application/json")
        return response, Fields({"reason": "; ".join(reasons)})
