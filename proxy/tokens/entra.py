"""The token exchange: the service-account token for an Entra ID access token, via MSAL.

One `ConfidentialClientApplication` per (tenant, client id), built on first use and kept.
MSAL is synchronous, so every call runs in a worker thread of the exchange's own pool (never
the loop's default one, which readiness and scrapes must be able to use while Entra hangs).
Its HTTP calls are made on the event loop (`proxy.tokens.loophttp`) under one deadline for
the whole exchange, `timeout` seconds from when the caller asked: discovery, TLS and every
read included, however slowly the peer trickles. MSAL's own token cache and its HTTP failure
cache are switched off: `proxy.tokens.cache` alone decides when Entra is asked, so there is
one policy, not two stacked ones.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msal
from msal.exceptions import MsalServiceError

from proxy.assertion import AssertionSource
from proxy.logs import redact_text
from proxy.tokens import federation
from proxy.tokens.errors import (
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    FederationRejected,
    TokenError,
)
from proxy.tokens.loophttp import LoopHttpClient
from proxy.tokens.model import AccessToken, TokenKey

_AADSTS = re.compile(r"AADSTS(\d+)")
_DEFAULT_RETRY_AFTER = 5.0
MAX_DESCRIPTION = 1024
"""Characters of Entra's error description kept: callers, logs and /status quote it."""
EXCHANGE_THREADS = 4
"""Exchanges at once. Each thread only waits for the loop's HTTP call, at most until the
deadline; more exchanges queue (their deadline runs while they wait)."""


class EntraExchange:
    """Async callable: `await exchange(key)` returns an `AccessToken` or raises `TokenError`."""

    def __init__(
        self,
        authority_host: str,
        assertion: AssertionSource,
        *,
        ca_bundle: str | None = None,
        timeout: float = 10.0,
        user_agent: str | None = None,
        clock: Callable[[], float] = time.time,
        threads: int = EXCHANGE_THREADS,
    ) -> None:
        self._authority_host = authority_host.rstrip("/")
        self.user_agent = user_agent
        self._assertion = assertion
        self._timeout = timeout
        self._http = LoopHttpClient(tls_context(ca_bundle), user_agent=user_agent)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="imds-proxy-entra")
        self._clock = clock
        self._apps: dict[tuple[str, str], msal.ConfidentialClientApplication] = {}
        self._apps_lock = threading.Lock()

    async def __call__(self, key: TokenKey) -> AccessToken:
        loop = asyncio.get_running_loop()
        self._http.bind(loop)
        deadline = time.monotonic() + self._timeout
        work = loop.run_in_executor(self._executor, self.exchange_blocking, key, deadline)
        try:
            # The thread's HTTP call ends at the deadline; this is the backstop.
            return await asyncio.wait_for(work, self._timeout + 1.0)
        except TimeoutError:
            raise EntraUnavailable(
                f"Entra ID timed out (no answer within the {self._timeout:g} s deadline)"
            ) from None

    async def aclose(self) -> None:
        """Fail exchanges still waiting for Entra at once, drop queued ones, close sockets."""
        self._http.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self._http.aclose()

    def exchange_blocking(self, key: TokenKey, deadline: float) -> AccessToken:
        """One round trip to Entra ID (plus discovery the first time for this identity),
        in a worker thread, ending by `deadline` (`time.monotonic()`)."""
        if time.monotonic() >= deadline:  # queued behind others until too late: don't start
            raise EntraUnavailable("Entra ID timed out (the exchange's deadline passed)")
        # A missing or expired file fails here, not inside MSAL.
        claims = self._assertion.current().claims
        self._http.start_exchange(deadline)
        try:
            return self._exchange_blocking(key)
        except EntraRejected as exc:
            raise _explained(exc, claims, key) from None

    def _exchange_blocking(self, key: TokenKey) -> AccessToken:
        app = self._app_for(key.tenant_id, key.client_id)
        started = self._clock()
        try:
            result = app.acquire_token_for_client([key.scope])
        except TokenError:
            raise
        except MsalServiceError:  # MSAL raises on 5xx instead of returning
            status, retry_after = self._http.last_response()
            result = {"error": "server_error", "error_description": f"Entra ID answered {status}"}
            raise _failure_from(result, status, retry_after) from None
        except ValueError as exc:
            status, retry_after = self._http.last_response()
            if status is None:  # MSAL refused the scope itself (e.g. a reserved one)
                raise EntraRejected("invalid_resource", _bounded(str(exc)), None, 400) from None
            # An answer that is not JSON (a proxy's error page, an odd 429): not Entra's
            # judgement of the request, so a transient failure unless it says to wait.
            body = {"error": "invalid_response", "error_description": f"Entra ID answered {status}"}
            raise _failure_from(body, 429 if status == 429 else 503, retry_after) from None
        status, retry_after = self._http.last_response()
        if "access_token" in result:
            return _token_from(result, started)
        raise _failure_from(result, status, retry_after)

    def _app_for(self, tenant_id: str, client_id: str) -> msal.ConfidentialClientApplication:
        with self._apps_lock:
            app = self._apps.get((tenant_id, client_id))
            if app is None:
                app = self._apps[(tenant_id, client_id)] = self._build_app(tenant_id, client_id)
            return app

    def _build_app(self, tenant_id: str, client_id: str) -> msal.ConfidentialClientApplication:
        """Construct the client; MSAL fetches the OpenID configuration here (blocking)."""
        try:
            return msal.ConfidentialClientApplication(
                client_id,
                client_credential={"client_assertion": self._assertion},
                authority=f"{self._authority_host}/{tenant_id}",
                instance_discovery=_needs_instance_discovery(self._authority_host),
                http_client=self._http,
                http_cache=_Forgetful(),
                token_cache=_NoTokenCache(),
            )
        except EntraUnavailable as exc:
            raise EntraUnavailable(
                f"Entra ID discovery at {self._authority_host} failed: {exc.description}"
            ) from None
        except MsalServiceError:  # discovery answered 5xx
            status, _ = self._http.last_response()
            raise EntraUnavailable(
                f"Entra ID discovery at {self._authority_host} failed: answered {status}"
            ) from None
        except ValueError as exc:  # MSAL: the authority answered but is not usable
            raise EntraUnavailable(
                f"Entra ID authority is not usable: {_bounded(str(exc))}"
            ) from None


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """One context for every connection to Entra ID: the CA bundle given (REQUESTS_CA_BUNDLE),
    else certifi's, as requests would use (the scratch image has no system store)."""
    if ca_bundle is None:
        import certifi  # installed with requests, which MSAL needs

        ca_bundle = os.environ.get("SSL_CERT_FILE") or certifi.where()
    return ssl.create_default_context(cafile=ca_bundle)


class _Forgetful(MutableMapping[str, Any]):
    """An `http_cache` that stores nothing: MSAL must not replay failures on its own."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        pass

    def __delitem__(self, key: str) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class _NoTokenCache(msal.TokenCache):  # type: ignore[misc]
    """MSAL's token cache, kept empty: ours decides when to ask Entra again."""

    def add(self, event: Any, **kwargs: Any) -> None:
        pass

    def modify(self, *args: Any, **kwargs: Any) -> None:
        pass


def _needs_instance_discovery(authority_host: str) -> bool:
    """Only public Microsoft clouds are known to MSAL; anything else must skip discovery
    (or MSAL would call login.microsoftonline.com to validate it)."""
    return authority_host.split("://", 1)[-1].split("/", 1)[0] in (
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    )


def _token_from(result: dict[str, Any], started: float) -> AccessToken:
    expires_in = float(result.get("expires_in", 0))
    ext_expires_in = float(result.get("ext_expires_in", expires_in) or expires_in)
    return AccessToken(
        value=result["access_token"],
        token_type=_token_type(result.get("token_type")),
        expires_on=started + expires_in,
        ext_expires_on=started + max(ext_expires_in, expires_in),
        not_before=started,
        obtained_at=started,
    )


def _token_type(value: object) -> str:
    """`Bearer` as IMDS spells it, whatever case Entra used (callers prefix it verbatim)."""
    text = str(value or "Bearer")
    return "Bearer" if text.lower() == "bearer" else text


def _failure_from(
    result: dict[str, Any], status: int | None, retry_after: str | None
) -> TokenError:
    error = str(result.get("error") or "")
    if not error and status != 429:  # JSON, but not an OAuth error: not Entra's judgement
        status = 503
    description = _bounded(
        str(result.get("error_description") or error or f"Entra ID answered {status}")
    )
    codes = result.get("error_codes")
    codes = codes if isinstance(codes, list) else []
    match = _AADSTS.search(description)
    aadsts = str(codes[0]) if codes else (match.group(1) if match else None)
    if status == 429:
        return EntraThrottled(description, _retry_after_seconds(retry_after))
    if status is None or status >= 500:
        return EntraUnavailable(description, _retry_after_or_none(retry_after))
    return EntraRejected(error, description, aadsts, status)


def _bounded(text: str) -> str:
    """Entra's text as it may be quoted: redacted, and cut to `MAX_DESCRIPTION`."""
    text = redact_text(text[: MAX_DESCRIPTION * 2])
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION] + "..."


def _explained(
    exc: EntraRejected, claims: federation.AssertionClaims, key: TokenKey
) -> EntraRejected:
    """A federation rejection explained with its cause and fix; others pass through."""
    cause = federation.classify(exc.aadsts)
    if cause is None or exc.aadsts is None:
        return exc
    description = federation.explain(cause, exc.aadsts, claims, key.client_id, key.tenant_id)
    fix = federation.fill(cause.fix, claims, key.client_id, key.tenant_id)
    return FederationRejected(
        exc.error, description, exc.aadsts, exc.status, cause.name, fix, cause.propagates
    )


def _retry_after_or_none(value: str | None) -> float | None:
    return _retry_after_seconds(value) if value else None


def _retry_after_seconds(value: str | None) -> float:
    """Retry-After in seconds (delta-seconds form; an HTTP date or junk gets the default)."""
    try:
        return max(float(value), 0.0) if value else _DEFAULT_RETRY_AFTER
    except ValueError:
        return _DEFAULT_RETRY_AFTER
