"""The token exchange: the service-account token for an Entra ID access token, via MSAL.

One `ConfidentialClientApplication` per (tenant, client id), built on first use and kept.
MSAL is synchronous, so every call runs in a worker thread. MSAL's own token cache and
its HTTP failure cache are switched off: `proxy.tokens.cache` alone decides when Entra
is asked, so there is one policy, not two stacked ones. The HTTP client is wrapped to see
each response's status and `Retry-After`, which MSAL's result dict does not carry.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import msal
import requests
import requests.adapters
from msal.exceptions import MsalServiceError
from urllib3.util.ssl_ import create_urllib3_context

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
from proxy.tokens.model import AccessToken, TokenKey

_AADSTS = re.compile(r"AADSTS(\d+)")
_DEFAULT_RETRY_AFTER = 5.0


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
    ) -> None:
        self._authority_host = authority_host.rstrip("/")
        self.user_agent = user_agent
        self._assertion = assertion
        self._http = RecordingHttpClient(
            verify=ca_bundle or True, timeout=timeout, user_agent=user_agent
        )
        self._clock = clock
        self._apps: dict[tuple[str, str], msal.ConfidentialClientApplication] = {}
        self._apps_lock = threading.Lock()

    async def __call__(self, key: TokenKey) -> AccessToken:
        return await asyncio.to_thread(self.exchange_blocking, key)

    def close(self) -> None:
        self._http.close()

    def exchange_blocking(self, key: TokenKey) -> AccessToken:
        """One round trip to Entra ID (plus discovery the first time for this identity)."""
        # A missing or expired file fails here, not inside MSAL.
        claims = self._assertion.current().claims
        try:
            return self._exchange_blocking(key)
        except EntraRejected as exc:
            raise _explained(exc, claims, key) from None

    def _exchange_blocking(self, key: TokenKey) -> AccessToken:
        self._http.forget()
        app = self._app_for(key.tenant_id, key.client_id)
        started = self._clock()
        try:
            result = app.acquire_token_for_client([key.scope])
        except TokenError:
            raise
        except requests.RequestException as exc:
            raise EntraUnavailable(f"Entra ID did not answer: {_describe(exc)}") from None
        except MsalServiceError:  # MSAL raises on 5xx instead of returning
            status, retry_after = self._http.last_response()
            result = {"error": "server_error", "error_description": f"Entra ID answered {status}"}
            raise _failure_from(result, status, retry_after) from None
        except ValueError as exc:
            status, retry_after = self._http.last_response()
            if status is None:  # MSAL refused the scope itself (e.g. a reserved one)
                raise EntraRejected("invalid_resource", redact_text(str(exc)), None, 400) from None
            # An answer that is not JSON (a proxy's error page, an odd 429): judge by status.
            body = {"error": "invalid_response", "error_description": f"Entra ID answered {status}"}
            raise _failure_from(body, 503 if status < 400 else status, retry_after) from None
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
        except requests.RequestException as exc:
            raise EntraUnavailable(
                f"Entra ID discovery at {self._authority_host} failed: {_describe(exc)}"
            ) from None
        except ValueError as exc:  # MSAL: the authority answered but is not usable
            raise EntraUnavailable(
                f"Entra ID authority is not usable: {redact_text(str(exc))}"
            ) from None


class RecordingHttpClient:
    """A `requests` session with bounded timeouts that remembers, per thread, the status
    and `Retry-After` of the last response (MSAL drops both from its result)."""

    def __init__(self, verify: bool | str, timeout: float, user_agent: str | None = None) -> None:
        self._session = requests.Session()
        self._session.mount("https://", SharedTlsAdapter())
        self._verify = verify
        if user_agent:
            self._session.headers["User-Agent"] = user_agent
        self._timeout = timeout
        self._local = threading.local()

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self._record(self._session.post(url, **self._options(kwargs)))

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._record(self._session.get(url, **self._options(kwargs)))

    def close(self) -> None:
        self._session.close()

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # `verify` per request: requests lets REQUESTS_CA_BUNDLE override a session's.
        return {**kwargs, "timeout": self._timeout, "verify": self._verify}

    def forget(self) -> None:
        """Start an exchange with no response recorded (a failure before sending reads none)."""
        self._local.status = self._local.retry_after = None

    def last_response(self) -> tuple[int | None, str | None]:
        return getattr(self._local, "status", None), getattr(self._local, "retry_after", None)

    def _record(self, response: requests.Response) -> requests.Response:
        self._local.status = response.status_code
        self._local.retry_after = response.headers.get("Retry-After")
        return response


class SharedTlsAdapter(requests.adapters.HTTPAdapter):
    """One TLS context for every connection to Entra ID, direct or through HTTPS_PROXY.

    Without it urllib3 builds a context per connection and loads the CA bundle into each,
    about 1 MiB apiece: concurrent exchanges (one per worker thread) would keep several
    alive. urllib3 still sets the verify mode and loads the bundle requests names into
    this one context (reloading the same certificates adds nothing), and still matches
    the host name itself, so verification is what it was.
    """

    def __init__(self) -> None:
        self._context = create_urllib3_context()
        super().__init__()

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        super().init_poolmanager(*args, ssl_context=self._context, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return super().proxy_manager_for(proxy, ssl_context=self._context, **proxy_kwargs)


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
    error = str(result.get("error", "unknown_error"))
    description = redact_text(str(result.get("error_description", error)))
    codes = result.get("error_codes") or []
    match = _AADSTS.search(description)
    aadsts = str(codes[0]) if codes else (match.group(1) if match else None)
    if status == 429:
        return EntraThrottled(description, _retry_after_seconds(retry_after))
    if status is None or status >= 500:
        return EntraUnavailable(description, _retry_after_or_none(retry_after))
    return EntraRejected(error, description, aadsts, status)


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


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS verification failed (set REQUESTS_CA_BUNDLE to trust its CA)"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__
