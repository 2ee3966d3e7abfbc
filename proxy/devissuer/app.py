"""The aiohttp application: Entra's discovery, keys and token endpoints plus ``/_control``.

URLs in the discovery document are built from the request's own ``Host`` so the same
server works whether it is reached as ``127.0.0.1``, ``localhost`` or a namespace address.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import web

from proxy.devissuer import errors
from proxy.devissuer.control import add_control_routes
from proxy.devissuer.errors import EntraError, clip
from proxy.devissuer.exchange import exchange
from proxy.devissuer.state import IssuerState

STATE_KEY = web.AppKey("state", IssuerState)
_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}


def _state(request: web.Request) -> IssuerState:
    return request.app[STATE_KEY]


def _base(request: web.Request) -> str:
    return f"https://{request.host}"


def _correlation_id(request: web.Request) -> str:
    """Entra echoes MSAL's ``client-request-id`` as the correlation id."""
    supplied = request.headers.get("client-request-id", "")
    try:
        return str(uuid.UUID(supplied))
    except ValueError:
        return str(uuid.uuid4())


def _unknown_tenant(tenant: str) -> EntraError:
    return EntraError(
        errors.TENANT_NOT_FOUND,
        "invalid_tenant",
        f"Tenant '{clip(tenant)}' not found. Check to make sure you have the correct tenant ID "
        "and are signing into the correct cloud.",
    )


def _refuse_unknown_tenant(request: web.Request) -> web.Response | None:
    """Entra's answer for a tenant it does not know, or None for ours."""
    tenant = request.match_info["tenant"]
    if _state(request).knows_tenant(tenant):
        return None
    return _unknown_tenant(tenant).response(
        host=request.host, correlation_id=_correlation_id(request)
    )


async def openid_configuration(request: web.Request) -> web.Response:
    """Enough of Entra's v2.0 discovery document for MSAL and azure-identity."""
    state = _state(request)
    state.stats.openid_config_requests += 1
    if (refusal := _refuse_unknown_tenant(request)) is not None:
        return refusal
    base, tid = _base(request), state.tenant_id
    document: dict[str, Any] = {
        "issuer": f"{base}/{tid}/v2.0",
        "authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/{tid}/oauth2/v2.0/token",
        "device_authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/devicecode",
        "end_session_endpoint": f"{base}/{tid}/oauth2/v2.0/logout",
        "jwks_uri": f"{base}/{tid}/discovery/v2.0/keys",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
        "request_uri_parameter_supported": False,
        "tenant_region_scope": "NA",
        "cloud_instance_name": request.host,
    }
    return web.json_response(document)


async def jwks(request: web.Request) -> web.Response:
    """The key that signs access tokens, for anyone who wants to verify them."""
    state = _state(request)
    state.stats.jwks_requests += 1
    if (refusal := _refuse_unknown_tenant(request)) is not None:
        return refusal
    return web.json_response(state.signing_key.jwks())


async def token(request: web.Request) -> web.StreamResponse:
    """``POST /{tenant}/oauth2/v2.0/token``: client credentials with a federated assertion.

    The request is counted on arrival and its outcome when answered, entirely between
    awaits, so the numbers are exact however many requests overlap.
    """
    state = _state(request)
    stats = state.stats
    stats.token_requests += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    correlation_id = _correlation_id(request)
    try:
        raw = await request.post()
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
        stats = state.stats  # a reset may have happened while the body was read
        if client_id := form.get("client_id"):
            stats.by_client_id[client_id] += 1
        if scope := form.get("scope"):
            stats.by_scope[scope] += 1

        if state.behaviour.delay > 0:
            await asyncio.sleep(state.behaviour.delay)
        behaviour = state.behaviour
        mode = state.take_mode()
        stats = state.stats
        if mode == "throttle":
            stats.by_outcome["throttled"] += 1
            return EntraError(
                errors.THROTTLED,
                "temporarily_unavailable",
                "The request was throttled because too many requests were made. "
                "Retry after the interval in the Retry-After header.",
                status=429,
            ).response(
                host=request.host,
                correlation_id=correlation_id,
                headers={"Retry-After": behaviour.retry_after_header},
            )
        if mode == "issuer_unreachable":
            stats.by_outcome["AADSTS90061"] += 1
            return EntraError(
                errors.ISSUER_UNREACHABLE,
                "invalid_request",
                "Request to External OIDC endpoint failed.",
            ).response(host=request.host, correlation_id=correlation_id)
        if mode in HOSTILE:
            stats.by_outcome[mode] += 1
            return await HOSTILE[mode](request, behaviour.delay)
        if mode == "fail":
            stats.by_outcome["failed"] += 1
            return EntraError(
                errors.TRANSIENT,
                "temporarily_unavailable",
                "A transient error has occurred. Please try again.",
                status=behaviour.status,
            ).response(host=request.host, correlation_id=correlation_id)
        try:
            body = exchange(state, request.match_info["tenant"], form)
        except EntraError as exc:
            stats.by_outcome[exc.outcome] += 1
            return exc.response(host=request.host, correlation_id=correlation_id)
        stats.by_outcome["success"] += 1
        return web.json_response(
            body,
            headers={
                **_NO_STORE,
                "client-request-id": correlation_id,
                "x-ms-request-id": str(uuid.uuid4()),
            },
        )
    finally:
        state.stats.in_flight = max(0, state.stats.in_flight - 1)


HANG_SECONDS = 120.0
"""How long `hang` keeps a request unanswered (bounded: the issuer is a test tool)."""
HUGE_BODY = 10 * 1024 * 1024


async def _hang(request: web.Request, delay: float) -> web.StreamResponse:
    await asyncio.sleep(HANG_SECONDS)
    return web.Response(status=503, text="hung")


async def _trickle(request: web.Request, delay: float) -> web.StreamResponse:
    """A 200 whose body never completes in time: one byte per `delay` (1 s by default)."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for byte in b'{"token_type": "Bearer", "expires_in": 3599, "access_token": "' * 4:
        await response.write(bytes([byte]))
        await asyncio.sleep(delay or 1.0)
    return response


async def _html(request: web.Request, delay: float) -> web.StreamResponse:
    return web.Response(
        status=400, text="<html><body><h1>Bad Request</h1></body></html>", content_type="text/html"
    )


async def _truncated(request: web.Request, delay: float) -> web.StreamResponse:
    return web.Response(
        status=400,
        text='{"error": "invalid_request", "error_description": "AADSTS9000',
        content_type="application/json",
    )


async def _huge(request: web.Request, delay: float) -> web.StreamResponse:
    description = "AADSTS90002: " + "x" * HUGE_BODY
    body = json.dumps({"error": "invalid_request", "error_description": description})
    return web.Response(status=400, text=body, content_type="application/json")


HOSTILE = {
    "hang": _hang,
    "trickle": _trickle,
    "html": _html,
    "truncated": _truncated,
    "huge": _huge,
}


def create_app(state: IssuerState) -> web.Application:
    """Build the issuer application around ``state``."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", jwks)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    add_control_routes(app, state)
    return app
