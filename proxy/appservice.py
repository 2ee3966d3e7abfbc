"""The App Service managed-identity protocol, for SDKs that look for it before IMDS.

Apps given `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (or the older `MSI_ENDPOINT` +
`MSI_SECRET`) ask `GET <endpoint>?resource=...&api-version=...` with the secret in a header,
and need no redirect. Two versions are in use and each is answered in its own shape, as the
SDKs' parsers read it:

- 2019-08-01: header `X-IDENTITY-HEADER`; selectors `client_id`, `principal_id`/`object_id`,
  `mi_res_id`; `expires_on` is epoch seconds as a string (go-autorest's adal reads it into a
  Go string; MSAL uses int()). Errors are `{"statusCode", "message"}` (what MSAL reads).
- 2017-09-01: header `secret`; selector `clientid` only; `expires_on` is a UTC date such as
  `06/20/2019 02:57:58 +00:00` (App Service on Linux; azure-identity 1.5, @azure/identity,
  adal and Java's MSIToken parse it). Errors are ASP.NET's `{"Message", "ExceptionMessage"}`.

The meaning of a query, the cache and the failure policy are the IMDS endpoint's
(`proxy.imds`); only the header, the names and the shapes differ. Statuses carry over, so a
transient failure is a 5xx with Retry-After here too. A missing or wrong secret is a 401 that
no client retries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from proxy.answers import error_answer
from proxy.config import Settings
from proxy.identity_header import IdentityHeaderSecret
from proxy.imds import (
    JSON,
    ImdsError,
    error_for,
    parse_wanted_token,
    selector_unresolved_here,
)
from proxy.logs import get_logger
from proxy.paths import APP_SERVICE_PATH
from proxy.query import IdentityQuery, TokenRequest
from proxy.requestlog import json_field
from proxy.tokens.cache import TokenCache
from proxy.tokens.errors import TokenError
from proxy.tokens.model import AccessToken

EXPIRES_ON_2017 = "%m/%d/%Y %H:%M:%S +00:00"
MAX_REMEMBERED_QUERIES = 4096
log = get_logger("proxy.appservice")


class AppServiceError(ImdsError):
    """A refusal in one version's shape; status, Retry-After and log label as for IMDS."""

    def __init__(
        self, status: int, body: bytes, reason: str, description: str, retry_after: float | None
    ) -> None:
        super().__init__(status, reason, description, retry_after=retry_after, reason=reason)
        self.body = body


@dataclass(frozen=True, slots=True)
class Version:
    """What differs between the protocol's versions."""

    api_version: str
    secret_header: str
    selectors: Mapping[str, str]
    """This version's identity parameters, by the IMDS name they mean."""
    render: Callable[[AccessToken, TokenRequest], bytes]
    error_body: Callable[[int, str], bytes]

    def refusal(
        self, status: int, description: str, reason: str, retry_after: float | None = None
    ) -> AppServiceError:
        return AppServiceError(
            status, self.error_body(status, description), reason, description, retry_after
        )

    def from_imds(self, err: ImdsError) -> AppServiceError:
        """The same answer (status, text, Retry-After) in this version's shape."""
        return self.refusal(err.status, err.description, err.reason, err.retry_after)

    def imds_query(self, query: Mapping[str, str]) -> dict[str, str]:
        """The query in IMDS's names, refusing the other version's selectors."""
        translated = {"resource": query.get("resource", "")}
        for name in _ALL_SELECTORS:
            if name not in query:
                continue
            meaning = self.selectors.get(name)
            if meaning is None:
                supported = ", ".join(self.selectors)
                raise self.refusal(
                    400,
                    f"'{name}' is not a parameter of api-version {self.api_version}; "
                    f"it selects an identity by {supported}",
                    "identity_selector",
                )
            translated[meaning] = query[name]
        return translated


def _s(value: str) -> bytes:
    return json.dumps(value).encode()


def _render_2019(token: AccessToken, wanted: TokenRequest) -> bytes:
    return b'{"access_token":%b,"expires_on":"%d","resource":%b,"token_type":%b,"client_id":%b}' % (
        _s(token.value),
        int(token.expires_on),
        _s(wanted.resource),
        _s(token.token_type),
        _s(wanted.key.client_id),
    )


def _render_2017(token: AccessToken, wanted: TokenRequest) -> bytes:
    expires_on = time.strftime(EXPIRES_ON_2017, time.gmtime(int(token.expires_on)))
    return b'{"access_token":%b,"expires_on":%b,"resource":%b,"token_type":%b}' % (
        _s(token.value),
        _s(expires_on),
        _s(wanted.resource),
        _s(token.token_type),
    )


def _error_2019(status: int, description: str) -> bytes:
    body = {"statusCode": status, "message": description}
    return json.dumps(body, separators=(",", ":")).encode()


def _error_2017(status: int, description: str) -> bytes:
    body = {"Message": "An error has occurred.", "ExceptionMessage": description}
    return json.dumps(body, separators=(",", ":")).encode()


V2019 = Version(
    "2019-08-01",
    "X-IDENTITY-HEADER",
    {
        "client_id": "client_id",
        "principal_id": "object_id",
        "object_id": "object_id",
        "mi_res_id": "mi_res_id",
    },
    _render_2019,
    _error_2019,
)
V2017 = Version("2017-09-01", "secret", {"clientid": "client_id"}, _render_2017, _error_2017)
VERSIONS = {v.api_version: v for v in (V2019, V2017)}
_ALL_SELECTORS = tuple(dict.fromkeys(name for v in VERSIONS.values() for name in v.selectors))


_NOT_GET = V2019.refusal(405, "Only GET is supported on this path", "method")
_POST_REFUSED = V2019.refusal(
    405,
    "Only GET is supported on this path; msrestazure POSTs Cloud Shell's form here unless "
    "APPSETTING_WEBSITE_SITE_NAME is set, as App Service sets it",
    "method",
)


def version_of(query: Mapping[str, str]) -> Version:
    """The version the caller speaks; an unknown one is refused in the current shape."""
    api_version = query.get("api-version", "")
    version = VERSIONS.get(api_version)
    if version is None:
        raise V2019.refusal(
            400,
            "api-version must be one of "
            + ", ".join(VERSIONS)
            + (f" (got '{api_version[:40]}')" if api_version else " (none given)"),
            "api_version",
        )
    return version


def parse_query(
    query: Mapping[str, str], tenant_id: str, default_client_id: str | None
) -> tuple[Version, TokenRequest]:
    """What an App Service token query asks for; raises `AppServiceError`."""
    version = version_of(query)
    try:
        wanted = parse_wanted_token(version.imds_query(query), tenant_id, default_client_id)
        if isinstance(wanted, IdentityQuery):
            raise selector_unresolved_here(wanted.selector)
    except ImdsError as err:
        raise version.from_imds(err) from None
    return version, wanted


class _KnownQuery:
    """A validated query: its version, what it wants, its log fields and last body."""

    __slots__ = ("_body", "_token", "hit", "miss", "version", "wanted")

    def __init__(self, version: Version, wanted: TokenRequest) -> None:
        self.version = version
        self.wanted = wanted
        fields = (
            json_field("api_version", version.api_version)
            + json_field("client_id", wanted.key.client_id)
            + json_field("resource", wanted.resource)
        )
        self.hit = fields + ', "cache": "hit"'
        self.miss = fields + ', "cache": "miss"'
        self._token: AccessToken | None = None
        self._body = b""

    def body(self, token: AccessToken) -> bytes:
        """No countdown in this protocol: one body per token."""
        if token is not self._token:
            self._body = self.version.render(token, self.wanted)
            self._token = token
        return self._body


_Remembered = tuple[Version | None, _KnownQuery | AppServiceError]


class AppServiceEndpoint:
    """Answers `/msi/token` from the proxy's token cache."""

    def __init__(
        self,
        cache: TokenCache,
        secret: IdentityHeaderSecret,
        tenant_id: str,
        default_client_id: str | None,
    ) -> None:
        self._cache = cache
        self._secret = secret
        self._tenant_id = tenant_id
        self._default_client_id = default_client_id
        self._queries: dict[str, _Remembered] = {}
        self._told_unconfigured = False
        # Unconfigured is the normal state of a pod in redirect mode, which never uses this
        # endpoint: say so once a caller does, not at every start.
        if secret.configured:
            source = "--identity-header-file" if secret.path else "IDENTITY_HEADER"
            log.info("App Service endpoint serves tokens", path=APP_SERVICE_PATH, secret=source)

    @classmethod
    def from_settings(cls, settings: Settings, cache: TokenCache) -> AppServiceEndpoint:
        secret = IdentityHeaderSecret(settings.identity_header, settings.identity_header_file)
        return cls(cache, secret, settings.tenant_id, settings.client_id)

    async def __call__(self, request: web.BaseRequest) -> tuple[web.StreamResponse, str]:
        """The answer, and what the request line says about it (never the secret)."""
        if request.method != "GET":
            return error_answer(_POST_REFUSED if request.method == "POST" else _NOT_GET)
        remembered = self._queries.get(request.rel_url.raw_query_string)
        if remembered is None:
            remembered = self._remember_query(request)
        version, known = remembered
        # The secret first: a caller without it learns nothing about its query.
        secret = request.headers.get(version.secret_header) if version else None
        if version is not None and not self._secret.matches(secret):
            return error_answer(self._secret_refusal(version, request))
        if isinstance(known, AppServiceError):
            return error_answer(known)
        found = self._cache.lookup(known.wanted.key)
        extra = known.hit
        if found is None:
            extra = known.miss
            try:
                found = await self._cache.fetch(known.wanted.key)
            except TokenError as exc:
                response, refused = error_answer(known.version.from_imds(error_for(exc)))
                return response, extra + refused
        return web.Response(body=known.body(found), headers={"Content-Type": JSON}), extra

    def _secret_refusal(self, version: Version, request: web.BaseRequest) -> AppServiceError:
        if not self._secret.configured:
            if not self._told_unconfigured:
                self._told_unconfigured = True
                log.warning(
                    "App Service endpoint refuses every request: no IDENTITY_HEADER or "
                    "--identity-header-file is configured",
                    path=APP_SERVICE_PATH,
                )
            description = (
                "This endpoint has no identity header configured (IDENTITY_HEADER or "
                "--identity-header-file on the proxy), so it refuses every request"
            )
        elif version.secret_header not in request.headers:
            description = f"The {version.secret_header} header is missing"
        else:
            description = f"The {version.secret_header} header does not match"
        return version.refusal(401, description, "identity_header")

    def _remember_query(self, request: web.BaseRequest) -> _Remembered:
        """Validate a query once; the same query string always means the same request.
        The version is kept apart: it says which header holds the secret, even for a query
        that is refused once the secret checks out."""
        version: Version | None = None
        known: _KnownQuery | AppServiceError
        try:
            version = version_of(request.query)
            known = _KnownQuery(
                *parse_query(request.query, self._tenant_id, self._default_client_id)
            )
        except AppServiceError as err:
            known = err.with_traceback(None)  # the traceback would pin this request
        if len(self._queries) >= MAX_REMEMBERED_QUERIES:
            self._queries.clear()
        remembered = self._queries[request.rel_url.raw_query_string] = (version, known)
        return remembered
