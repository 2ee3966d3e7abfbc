"""The doctor's checks, in the order a token is made: settings, service-account token,
authority, one real exchange, then the running proxy. Each yields one `Check`; a check
whose input is missing is skipped rather than guessed. Nothing here prints, and no
message carries a token or an assertion: only claims, times and Entra's answers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from proxy import config
from proxy.assertion import AssertionSource, ServiceAccountToken
from proxy.query import scope_for
from proxy.tokens.entra import EntraExchange
from proxy.tokens.errors import (
    CredentialUnavailable,
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    FederationRejected,
    TokenError,
)
from proxy.tokens.model import AccessToken, TokenKey
from proxy.wellknown import PROXY_UID, TOKEN_EXCHANGE_AUDIENCE

HTTP_TIMEOUT = 10.0
STATUS_TIMEOUT = 3.0
_WEBHOOK = (
    "label the pod azure.workload.identity/use=true, annotate its service account with "
    "azure.workload.identity/client-id=<client id>, and recreate the pod"
)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool | None
    """None: skipped, because an earlier check failed."""
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def check_settings(environ: Mapping[str, str]) -> tuple[Check, config.Settings | None]:
    name = "settings"
    try:
        settings = config.parse((), environ)
    except config.ConfigError as exc:
        return Check(name, False, str(exc), _settings_fix(str(exc))), None
    if settings.client_id is None:
        return (
            Check(
                name,
                False,
                "AZURE_CLIENT_ID: is not set (the identity to check)",
                "set AZURE_CLIENT_ID: the webhook sets it from the service account's "
                "azure.workload.identity/client-id annotation",
            ),
            None,
        )
    return (
        Check(
            name,
            True,
            f"tenant {settings.tenant_id}, client id {settings.client_id}, token file "
            f"{settings.federated_token_file}, authority {settings.authority_host}",
        ),
        settings,
    )


def _settings_fix(message: str) -> str:
    if message.startswith(("AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE")):
        return f"the webhook injects {message.split(':')[0]}: {_WEBHOOK}"
    if message.startswith("AZURE_CLIENT_ID"):
        return "set AZURE_CLIENT_ID to the identity's client id (a GUID)"
    if message.startswith("AZURE_AUTHORITY_HOST"):
        return "unset AZURE_AUTHORITY_HOST or set it to https://login.microsoftonline.com/"
    return "correct the setting named above"


def check_service_account(
    settings: config.Settings, clock: Callable[[], float] = time.time
) -> tuple[Check, ServiceAccountToken | None]:
    name = "service-account token"
    path = settings.federated_token_file
    try:
        token = AssertionSource(path, clock).current()
    except CredentialUnavailable as exc:
        return Check(name, False, exc.description, _token_fix(exc.description)), None
    claims = token.claims
    rotated = _rotated(path, clock())
    where = f"iss {claims.iss}, sub {claims.sub}, aud {claims.aud}"
    if TOKEN_EXCHANGE_AUDIENCE not in claims.aud.split():
        return (
            Check(
                name,
                False,
                f"aud is {claims.aud}, not {TOKEN_EXCHANGE_AUDIENCE} ({where})",
                f"project the token with audience {TOKEN_EXCHANGE_AUDIENCE} "
                "(serviceAccountToken.audience in the pod's volume, as the webhook writes it); "
                f"{_WEBHOOK}",
            ),
            None,
        )
    left = (
        "no exp claim" if token.expires_at is None else f"{int(token.expires_at - clock())} s left"
    )
    return Check(name, True, f"{path}: a JWT, {where}, {left}, {rotated}"), token


def _token_fix(reason: str) -> str:
    if "does not exist" in reason:
        return f"the projected token is missing: {_WEBHOOK}"
    if "expired" in reason:
        return (
            "kubelet has stopped rotating the projected token: check the node's kubelet and "
            "clock; recreating the pod writes a fresh token"
        )
    return (
        "AZURE_FEDERATED_TOKEN_FILE must be the projected service-account token "
        "(normally /var/run/secrets/azure/tokens/azure-identity-token), readable by uid "
        f"{PROXY_UID}"
    )


def _rotated(path: str, now: float) -> str:
    try:
        written = os.stat(path).st_mtime
    except OSError:
        return "last rotation unknown"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(written))
    return f"last rotated {stamp} ({int(now - written)} s ago)"


def check_authority(settings: config.Settings) -> Check:
    name = "authority"
    host = settings.authority_host.rstrip("/")
    url = f"{host}/{settings.tenant_id}/v2.0/.well-known/openid-configuration"
    parts = urlsplit(host)
    where = f"{parts.hostname}:{parts.port or 443}"
    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT, verify=settings.ca_bundle or True)
    except requests.exceptions.SSLError:
        return Check(
            name,
            False,
            f"{where} is not trusted over TLS",
            f"set REQUESTS_CA_BUNDLE to a CA bundle that trusts {where} (a TLS-inspecting "
            "proxy needs its CA), or correct AZURE_AUTHORITY_HOST",
        )
    except requests.RequestException as exc:
        reason = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
        return Check(
            name,
            False,
            f"{where} is unreachable ({reason})",
            f"allow HTTPS egress to {where} from the pod, or set HTTPS_PROXY/NO_PROXY; "
            "check AZURE_AUTHORITY_HOST",
        )
    if response.status_code != 200:
        return Check(
            name,
            False,
            f"OpenID discovery at {url} answered {response.status_code}",
            "check AZURE_TENANT_ID (the tenant's GUID or domain) and AZURE_AUTHORITY_HOST",
        )
    try:
        endpoint = response.json()["token_endpoint"]
    except (ValueError, KeyError, TypeError):
        return Check(
            name,
            False,
            f"{url} is not an OpenID configuration",
            "AZURE_AUTHORITY_HOST must be Entra ID's host, e.g. https://login.microsoftonline.com/",
        )
    return Check(name, True, f"OpenID discovery over TLS at {where}: token endpoint {endpoint}")


def check_exchange(
    settings: config.Settings, resource: str, clock: Callable[[], float] = time.time
) -> Check:
    name = "exchange"
    assert settings.client_id is not None
    exchange = EntraExchange(
        settings.authority_host,
        AssertionSource(settings.federated_token_file),
        ca_bundle=settings.ca_bundle,
        timeout=settings.entra_timeout,
    )
    key = TokenKey(settings.tenant_id, settings.client_id, scope_for(resource))

    async def once() -> AccessToken:
        try:
            return await exchange(key)
        finally:
            await exchange.aclose()

    try:
        token = asyncio.run(once())
    except TokenError as exc:
        detail, fix = _exchange_failure(exc)
        return Check(name, False, f"Entra ID refused a token for {resource}: {detail}", fix)
    left = int(token.expires_on - clock())
    return Check(name, True, f"Entra ID issued a token for {resource} ({left} s left)")


def _exchange_failure(exc: TokenError) -> tuple[str, str]:
    if isinstance(exc, FederationRejected):  # the table's cause, with its fix
        return exc.description.partition(" Fix: ")[0], exc.fix
    if isinstance(exc, EntraRejected) and exc.aadsts:
        return exc.description, (
            f"see https://login.microsoftonline.com/error?code={exc.aadsts} for AADSTS{exc.aadsts}"
        )
    if isinstance(exc, EntraUnavailable | EntraThrottled):
        return exc.description, "Entra ID is unreachable or busy: retry, and check egress"
    return exc.description, "correct the setup named above"


def check_running_proxy(host: str, port: int) -> Check:
    name = "running proxy"
    url = f"http://{host}:{port}/status"
    try:
        response = requests.get(url, timeout=STATUS_TIMEOUT)
        status = response.json()
    except (requests.RequestException, ValueError):
        return Check(
            name,
            False,
            f"no answer from {url}",
            "run doctor in the proxy's container (kubectl exec POD -c <proxy container> -- "
            "/proxy doctor) while it runs; pass --proxy-port if the proxy uses another one",
        )
    failure = status.get("last_failure")
    last = (
        "no failure so far"
        if not failure
        else f"last failure {failure.get('kind')} for {failure.get('scope')}: "
        f"{failure.get('description')}"
    )
    if status.get("ready"):
        return Check(name, True, f"ready; {last}")
    reasons = "; ".join(map(str, status.get("reasons") or ())) or "unknown"
    fix = (failure or {}).get("fix") or "fix the checks above; readiness follows"
    return Check(name, False, f"not ready: {reasons}; {last}", fix)
