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

The meaning of a query (in IMDS's names, `proxy.imds`), identity resolution, the cache
and the failure policy are the token flow's (`proxy.tokenflow`), as for IMDS; only the
header, the names and the shapes differ. Statuses carry over, so a transient failure is a
5xx with Retry-After here too. A missing or wrong secret is a 401 that no client retries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from proxy.answers import Refusal
from proxy.failures import Failure
from proxy.identity_header import IdentityHeaderSecret
from proxy.imds import parse_wanted_token
from proxy.logs import get_logger
from proxy.paths import APP_SERVICE_PATH
from proxy.query import IdentityQuery, TokenRequest
from proxy.tokens.model import AccessToken

EXPIRES_ON_2017 = "%m/%d/%Y %H:%M:%S +00:00"
log = get_logger("proxy.appservice")


@dataclass(frozen=True, slots=True)
class Version:
    """What differs between the protocol's versions."""

    api_version: str
    secret_header: str
    selectors: Mapping[str, str]
    """This version's identity parameters, by the IMDS name they mean."""
    render: Callable[[AccessToken, TokenRequest], bytes]
    error_body: Callable[[int, str], bytes]

    def refusal(self, failure: Failure) -> Refusal:
        """`failure` (status, text, Retry-After) in this version's shape."""
        return Refusal.of(failure, self.error_body(failure.status, failure.description))

    def imds_query(self, query: Mapping[str, str]) -> dict[str, str] | Failure:
        """The query in IMDS's names, refusing the other version's selectors, and two
        names of one selector (`principal_id`, `object_id`) that disagree, as IMDS refuses
        two selectors that do."""
        translated = {"resource": query.get("resource", "")}
        named_by: dict[str, str] = {}
        for name in _ALL_SELECTORS:
            if name not in query:
                continue
            meaning = self.selectors.get(name)
            if meaning is None:
                supported = ", ".join(self.selectors)
                return Failure(
                    400,
                    "invalid_request",
                    f"'{name}' is not a parameter of api-version {self.api_version}; "
                    f"it selects an identity by {supported}",
                    "identity_selector",
                )
            value = query[name]
            earlier = named_by.setdefault(meaning, name)
            if earlier != name and value.strip().lower() != translated[meaning].strip().lower():
                return Failure(
                    400,
                    "invalid_request",
                    f"Give only one of {earlier} and {name}: the request names two identities",
                    "identity_ambiguous",
                )
            translated[meaning] = value
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


def _refused(status: int, description: str, reason: str) -> Failure:
    return Failure(status, "invalid_request", description, reason)


_NOT_GET = V2019.refusal(_refused(405, "Only GET is supported on this path", "method"))
_POST_REFUSED = V2019.refusal(
    _refused(
        405,
        "Only GET is supported on this path; msrestazure POSTs Cloud Shell's form here unless "
        "APPSETTING_WEBSITE_SITE_NAME is set, as App Service sets it",
        "method",
    )
)


def version_of(query: Mapping[str, str]) -> Version | Failure:
    """The version the caller speaks; an unknown one is refused (in the current shape)."""
    api_version = query.get("api-version", "")
    version = VERSIONS.get(api_version)
    if version is None:
        return _refused(
            400,
            "api-version must be one of "
            + ", ".join(VERSIONS)
            + (f" (got '{api_version[:40]}')" if api_version else " (none given)"),
            "api_version",
        )
    return version


def parse_query(
    query: Mapping[str, str], tenant_id: str, default_client_id: str | None
) -> tuple[Version | None, TokenRequest | IdentityQuery | Failure]:
    """The version an App Service token query speaks (None: not one of ours), and what
    it asks for: selectors mean what IMDS's do, for the token flow to resolve."""
    version = version_of(query)
    if isinstance(version, Failure):
        return None, version
    imds_query = version.imds_query(query)
    if isinstance(imds_query, Failure):
        return version, imds_query
    return version, parse_wanted_token(imds_query, tenant_id, default_client_id)


class _Body:
    """No countdown in this protocol: one body per token."""

    __slots__ = ("_body", "_token", "version", "wanted")

    def __init__(self, version: Version, wanted: TokenRequest) -> None:
        self.version = version
        self.wanted = wanted
        self._token: AccessToken | None = None
        self._body = b""

    def render(self, token: AccessToken, now: float) -> bytes:
        if token is not self._token:
            self._body = self.version.render(token, self.wanted)
            self._token = token
        return self._body


class _Dialect:
    """One version as the token flow answers it: the secret in its header, its shapes.
    Without a version (an unknown api-version) there is no header to look in: the
    caller is told about the version, in the current version's shape."""

    __slots__ = ("_endpoint", "version")

    def __init__(self, endpoint: AppServiceProtocol, version: Version | None) -> None:
        self._endpoint = endpoint
        self.version = version

    def refuse(self, request: web.BaseRequest) -> Refusal | None:
        if request.method != "GET":
            return _POST_REFUSED if request.method == "POST" else _NOT_GET
        # The secret before the query: a caller without it learns nothing about its query.
        version = self.version
        if version is None or self._endpoint.secret.matches(
            request.headers.get(version.secret_header)
        ):
            return None
        return self._endpoint.secret_refusal(version, request)

    def refusal(self, failure: Failure) -> Refusal:
        return (self.version or V2019).refusal(failure)

    def token_body(self, wanted: TokenRequest) -> _Body:
        return _Body(self.version or V2019, wanted)

    def log_fields(self, wanted: TokenRequest) -> dict[str, object]:
        return {
            "api_version": (self.version or V2019).api_version,
            "client_id": wanted.key.client_id,
            "resource": wanted.resource,
        }


class AppServiceProtocol:
    """The token flow's adapter for `/msi/token` (`proxy.tokenflow`): a dialect per
    version, sharing the pod's identity-header secret."""

    def __init__(
        self, secret: IdentityHeaderSecret, tenant_id: str, default_client_id: str | None
    ) -> None:
        self.secret = secret
        self._tenant_id = tenant_id
        self._default_client_id = default_client_id
        self._dialects = {name: _Dialect(self, version) for name, version in VERSIONS.items()}
        self._unversioned = _Dialect(self, None)
        self._told_unconfigured = False
        # Unconfigured is the normal state of a pod in redirect mode, which never uses this
        # endpoint: say so once a caller does, not at every start.
        if secret.configured:
            source = "--identity-header-file" if secret.path else "IDENTITY_HEADER"
            log.info("App Service endpoint serves tokens", path=APP_SERVICE_PATH, secret=source)

    def parse(
        self, request: web.BaseRequest
    ) -> tuple[_Dialect, TokenRequest | IdentityQuery | Failure]:
        version, wanted = parse_query(request.query, self._tenant_id, self._default_client_id)
        return (
            self._unversioned if version is None else self._dialects[version.api_version]
        ), wanted

    def secret_refusal(self, version: Version, request: web.BaseRequest) -> Refusal:
        if not self.secret.configured:
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
        return version.refusal(_refused(401, description, "identity_header"))
