"""``/_control``: the JSON knobs tests and demos use to steer the issuer.

Unauthenticated by design: the issuer is a local development and test tool that never
holds a real credential. Bad input gets ``400 {"error": "..."}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.devissuer.satoken import mint_service_account_token
from proxy.devissuer.state import FederatedCredential, IssuerState
from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE

Handler = Callable[[web.Request], Awaitable[web.Response]]


class _BadRequest(Exception):
    pass


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request body as an object; an empty body counts as ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise _BadRequest("body must be JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    return data


def _optional_number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadRequest(f"{name!r} must be a number")
    return float(value)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{name!r} must be a non-empty string")
    return value


def _guarded(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except (_BadRequest, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return wrapped


def add_control_routes(app: web.Application, state: IssuerState) -> None:
    """Register the control endpoints for ``state`` on ``app``."""

    async def info(_: web.Request) -> web.Response:
        return web.json_response(state.info)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(state.stats.to_json())

    async def get_behaviour(_: web.Request) -> web.Response:
        return web.json_response(state.behaviour.to_json())

    async def set_behaviour(request: web.Request) -> web.Response:
        """Apply any of ``delay``, ``mode``, ``retry_after``, ``status``, ``token_lifetime``,
        ``unknown_resources``, ``count``; unspecified knobs keep their value."""
        state.behaviour = state.behaviour.updated(await _json_object(request))
        return web.json_response(state.behaviour.to_json())

    async def reset(_: web.Request) -> web.Response:
        state.reset()
        return web.json_response(
            {"stats": state.stats.to_json(), "behaviour": state.behaviour.to_json()}
        )

    async def rotate(request: web.Request) -> web.Response:
        """Mint and atomically write a new projected token (optional ``lifetime``, ``subject``)."""
        body = await _json_object(request)
        source = state.sa_tokens
        if source is None:
            raise _BadRequest("this issuer does not write a service-account token")
        path = source.rotate(
            lifetime=_optional_number(body, "lifetime"), subject=_optional_str(body, "subject")
        )
        return web.json_response(
            {
                "token_file": str(path),
                "subject": source.subject,
                "expires_on": source.expires_on,
                "rotations": source.rotations,
            }
        )

    async def get_credentials(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "clients": {
                    client: [c.to_json() for c in creds]
                    for client, creds in state.federated_credentials.items()
                }
            }
        )

    async def set_credentials(request: web.Request) -> web.Response:
        """Replace one client's credentials (``[]`` = none); registers the client if new."""
        body = await _json_object(request)
        client_id = _optional_str(body, "client_id")
        raw = body.get("credentials")
        if client_id is None or not isinstance(raw, list):
            raise _BadRequest("need 'client_id' and a 'credentials' list")
        creds = tuple(FederatedCredential.from_json(item) for item in raw)
        state.federated_credentials[client_id] = creds
        return web.json_response(
            {"client_id": client_id, "credentials": [c.to_json() for c in creds]}
        )

    async def mint(request: web.Request) -> web.Response:
        """A service-account token signed by the cluster key, returned and not written.

        Lets tests present crafted assertions (other subject or audience, expired via a
        past ``issued_at``) that only the cluster key could have signed.
        """
        body = await _json_object(request)
        source = state.sa_tokens
        if source is None:
            raise _BadRequest("this issuer has no service-account key")
        lifetime = _optional_number(body, "lifetime")
        issued_at = _optional_number(body, "issued_at")
        token = mint_service_account_token(
            source.key,
            _optional_str(body, "issuer") or source.issuer_url,
            _optional_str(body, "subject") or source.subject,
            _optional_str(body, "audience") or TOKEN_EXCHANGE_AUDIENCE,
            source.lifetime if lifetime is None else lifetime,
            now=time.time() if issued_at is None else issued_at,
        )
        return web.json_response({"token": token})

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_control/info", info),
        ("GET", "/_control/stats", stats),
        ("GET", "/_control/behaviour", get_behaviour),
        ("POST", "/_control/behaviour", set_behaviour),
        ("POST", "/_control/reset", reset),
        ("POST", "/_control/rotate", rotate),
        ("GET", "/_control/federated-credentials", get_credentials),
        ("POST", "/_control/federated-credentials", set_credentials),
        ("POST", "/_control/service-account-token", mint),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guarded(handler))
