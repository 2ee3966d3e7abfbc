"""HTTP routes: the token endpoint, health, and forwarding of other metadata paths.

Each request is answered by a handler that never raises (errors are IMDS-shaped
responses), then counted and logged once by `_instrument`. The token handler's cache-hit
path is: read query, dictionary lookup, format two integers into prebuilt bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.assertion import AssertionSource
from proxy.config import Settings
from proxy.forward import Forwarder
from proxy.imds import JSON, TOKEN_PATH, ImdsError, error_for, parse_token_request, render_token
from proxy.logs import get_logger
from proxy.metrics import RequestMetrics
from proxy.tokens.cache import TokenCache
from proxy.tokens.errors import CredentialUnavailable, TokenError
from proxy.tokens.model import TokenKey

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = get_logger("proxy.http")
_METHOD_NOT_ALLOWED = ImdsError(
    405, "invalid_request", "Only GET is supported on this path", reason="method"
)


@dataclass
class Proxy:
    """The live objects the routes answer from."""

    settings: Settings
    cache: TokenCache
    assertion: AssertionSource
    forwarder: Forwarder
    request_metrics: RequestMetrics
    clock: Callable[[], float] = time.time

    @property
    def prefetch_keys(self) -> list[TokenKey]:
        from proxy.imds import scope_for

        client_id = self.settings.client_id
        if client_id is None:
            return []
        return [
            TokenKey(self.settings.tenant_id, client_id, scope_for(resource))
            for resource in self.settings.prefetch_resources
        ]

    async def not_ready_reasons(self) -> list[str]:
        """Why the proxy cannot serve tokens now; empty when it can."""
        reasons = []
        try:
            await asyncio.to_thread(self.assertion.current)
        except CredentialUnavailable as exc:
            reasons.append(exc.description)
        missing = [k.scope for k in self.prefetch_keys if not self.cache.holds_valid(k)]
        if missing:
            reasons.append("prefetched tokens not cached yet: " + ", ".join(missing))
        return reasons


def create_app(proxy: Proxy) -> web.Application:
    app = web.Application()
    app["proxy"] = proxy
    token = _instrument(proxy, "token", "received token request", _token_handler(proxy))
    app.router.add_route("*", TOKEN_PATH, token)
    app.router.add_route("*", TOKEN_PATH + "/", token)
    app.router.add_route(
        "*", "/readyz", _instrument(proxy, "readyz", "received readyz request", _readyz(proxy))
    )
    app.router.add_route(
        "*", "/healthz", _instrument(proxy, "healthz", "received healthz request", _healthz)
    )
    app.router.add_route(
        "*",
        "/metadata/{tail:.*}",
        _instrument(proxy, "metadata", "forwarded metadata request", proxy.forwarder),
    )
    app.router.add_route(
        "*", "/{tail:.*}", _instrument(proxy, "other", "received unknown request", _not_found)
    )
    return app


def _token_handler(proxy: Proxy) -> Handler:
    tenant_id = proxy.settings.tenant_id
    default_client_id = proxy.settings.client_id
    cache = proxy.cache
    clock = proxy.clock

    async def token(request: web.Request) -> web.Response:
        if request.method != "GET":
            return _error(request, _METHOD_NOT_ALLOWED)
        try:
            wanted = parse_token_request(
                request.headers, request.query, tenant_id, default_client_id
            )
        except ImdsError as err:
            return _error(request, err)
        request["client_id"] = wanted.key.client_id
        request["resource"] = wanted.resource
        found = cache.lookup(wanted.key)
        if found is None:
            request["cache"] = "miss"
            try:
                found = await cache.fetch(wanted.key)
            except TokenError as exc:
                return _error(request, error_for(exc))
        else:
            request["cache"] = "hit"
        return web.Response(
            body=render_token(found, wanted, clock()), headers={"Content-Type": JSON}
        )

    return token


def _readyz(proxy: Proxy) -> Handler:
    async def readyz(request: web.Request) -> web.Response:
        reasons = await proxy.not_ready_reasons()
        if not reasons:
            return web.Response(text="ok")
        request["reason"] = "; ".join(reasons)
        body = json.dumps({"status": "not ready", "reasons": reasons})
        return web.Response(status=503, text=body, content_type="application/json")

    return readyz


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _not_found(request: web.Request) -> web.Response:
    return _error(request, ImdsError(404, "not_found", "No such endpoint", reason="path"))


def _error(request: web.Request, err: ImdsError) -> web.Response:
    request["error"] = err.reason
    if err.status >= 500 or err.status == 429:
        request["reason"] = err.description
    return web.Response(status=err.status, body=err.body(), headers=err.headers())


_request_ids = itertools.count(1)


def _instrument(proxy: Proxy, route: str, event: str, handler: Handler) -> Handler:
    """Count, time and log each request once; the log line carries what the handler noted."""
    observe = proxy.request_metrics.observe
    info = log.info

    async def instrumented(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        elapsed = time.perf_counter() - started
        status = response.status
        observe(route, status, elapsed)
        fields: dict[str, Any] = {k: v for k, v in request.items() if isinstance(k, str)}
        info(
            event,
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round(elapsed * 1000, 3),
            request_id=request.headers.get("x-ms-client-request-id") or next(_request_ids),
            **fields,
        )
        return response

    return instrumented
