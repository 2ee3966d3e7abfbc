"""The IMDS token protocol: what a request means and what the answer looks like.

This is the only module that knows IMDS's bodies. It reads a request into a
`TokenRequest` (or an `IdentityQuery`, when the caller names its identity by object id or
resource id, for `proxy.identities` to resolve) or a `Failure`, and renders tokens exactly
as IMDS does (every value a string, `expires_in` counted from now) and failures as IMDS's
`{"error", "error_description"}`. `ImdsProtocol` is the token flow's adapter
(`proxy.tokenflow`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from aiohttp import web

from proxy.answers import JSON as JSON  # re-exported: part of the protocol
from proxy.answers import Refusal
from proxy.failures import Failure
from proxy.identity_ids import is_client_id, is_object_id, is_resource_id
from proxy.paths import TOKEN_PATH as TOKEN_PATH  # re-exported: part of the protocol
from proxy.query import IdentityQuery, Selector, TokenRequest, scope_for
from proxy.tokens.model import AccessToken, TokenKey

_OLDEST_API_VERSION = "2018-02-01"
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAX_RESOURCE_LENGTH = 2048
_SELECTORS = {
    "object_id": "object_id",
    "msi_res_id": "resource_id",
    "mi_res_id": "resource_id",
    "msi-res-id": "resource_id",
}
"""Query parameters that name an identity other than by client id, and what they name."""
_UNDECODABLE = "\ufffd"
"""What the query parser puts where percent-decoded bytes were not UTF-8 (`%ff%fe`): such a
value is refused, never sent to Entra ID with the bytes guessed at."""


def error_body(error: str, description: str) -> bytes:
    return json.dumps({"error": error, "error_description": description}).encode()


def refusal(failure: Failure) -> Refusal:
    """`failure` as IMDS answers it."""
    return Refusal.of(failure, error_body(failure.code, failure.description))


MISSING_METADATA = refusal(
    Failure(400, "invalid_request", "Required metadata header not specified", "metadata_header")
)
FORWARDED = refusal(
    Failure(
        400,
        "invalid_request",
        "Request was proxied (X-Forwarded-For is set); IMDS refuses proxied requests",
        "forwarded",
    )
)
METHOD_NOT_ALLOWED = refusal(
    Failure(405, "invalid_request", "Only GET is supported on this path", "method")
)


def header_error(headers: Mapping[str, str]) -> Refusal | None:
    """The per-request part of validation, checked first as IMDS does (the query's part
    is the same for the same query string, see `parse_token_query`)."""
    metadata = headers.get("Metadata")
    if metadata != "true" and (metadata is None or metadata.lower() != "true"):
        return MISSING_METADATA
    if "X-Forwarded-For" in headers:
        return FORWARDED
    return None


def parse_token_query(
    query: Mapping[str, str], tenant_id: str, default_client_id: str | None
) -> TokenRequest | IdentityQuery | Failure:
    """Validate the query in IMDS's order: api-version, resource, identity. The same query
    string always means the same `TokenRequest` or failure, so callers may remember them;
    an `IdentityQuery` may resolve differently once more identities are known."""
    api_version = query.get("api-version")
    if not api_version:
        return Failure(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
            reason="api_version",
        )
    if not _API_VERSION.match(api_version) or api_version < _OLDEST_API_VERSION:
        return Failure(
            400,
            "invalid_request",
            f"Invalid api-version; identity requests need {_OLDEST_API_VERSION} or later",
            reason="api_version",
        )
    return parse_wanted_token(query, tenant_id, default_client_id)


def parse_wanted_token(
    query: Mapping[str, str], tenant_id: str, default_client_id: str | None
) -> TokenRequest | IdentityQuery | Failure:
    """The version-independent part of a token query, in IMDS's order: resource, then
    identity (IMDS's selector names; other protocols translate theirs first)."""
    if any(_UNDECODABLE in value for value in query.values()):
        return Failure(
            400,
            "invalid_request",
            "The query is not valid UTF-8 once percent-decoded",
            reason="encoding",
        )
    resource = query.get("resource", "").strip()
    if not resource:
        return Failure(
            400,
            "invalid_request",
            "Required query variable 'resource' is missing",
            reason="resource",
        )
    if len(resource) > _MAX_RESOURCE_LENGTH or not resource.isprintable() or " " in resource:
        return Failure(
            400, "invalid_resource", "The resource is not a valid URI", reason="resource"
        )
    selector = _selector_in(query)
    if isinstance(selector, Failure):
        return selector
    if selector is not None:
        return IdentityQuery(resource, tenant_id, selector)
    client_id = query.get("client_id", "").strip() or default_client_id
    if client_id is None:
        return Failure(
            400,
            "invalid_request",
            "Identity not found: no client_id in the request and AZURE_CLIENT_ID "
            "is not set; annotate the service account with "
            "azure.workload.identity/client-id",
            reason="identity_unknown",
        )
    if not is_client_id(client_id):
        return Failure(
            400,
            "invalid_request",
            "Identity not found: client_id must be an application (client) id, a GUID",
            reason="identity_unknown",
        )
    return TokenRequest(resource=resource, key=TokenKey(tenant_id, client_id, scope_for(resource)))


def _selector_in(query: Mapping[str, str]) -> Selector | Failure | None:
    """The one identity the query names other than by client id, if any."""
    named: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, value) -> as first given
    for param in ("client_id", *_SELECTORS):
        if value := query.get(param, "").strip():
            named.setdefault((_SELECTORS.get(param, param), value.lower()), (param, value))
    if len(named) > 1:
        return Failure(
            400,
            "invalid_request",
            "Give only one of client_id, object_id, msi_res_id (mi_res_id): the request "
            "names " + " and ".join(sorted(param for param, _ in named.values())),
            reason="identity_ambiguous",
        )
    if not named:
        return None
    (kind, _), (param, value) = next(iter(named.items()))
    if kind == "client_id":
        return None
    valid = is_object_id(value) if kind == "object_id" else is_resource_id(value)
    if not valid:
        shape = "a GUID" if kind == "object_id" else "an Azure resource id (/subscriptions/...)"
        return Failure(
            400,
            "invalid_request",
            f"Identity not found: {param} must be {shape}",
            reason="identity_unknown",
        )
    return Selector(kind, param, value)


class TokenAnswer:
    """The IMDS success body for one request, rebuilt only when the token changes.

    Everything but the two countdowns is encoded once per token into three byte strings;
    a request formats two integers between them.
    """

    __slots__ = ("_body", "_head", "_middle", "_second", "_tail", "_token", "request")

    def __init__(self, request: TokenRequest) -> None:
        self.request = request
        self._token: AccessToken | None = None
        self._head = self._middle = self._tail = self._body = b""
        self._second = -1

    def render(self, token: AccessToken, now: float) -> bytes:
        second = int(now)
        if token is self._token and second == self._second:
            return self._body  # the countdowns are whole seconds: same second, same body
        if token is not self._token:
            self._encode(token)
        # Whole seconds left at the end of this second, so the body can serve all of it.
        expires_in = max(int(token.expires_on) - second - 1, 0)
        ext_expires_in = max(int(token.ext_expires_on) - second - 1, 0)
        self._body = b"%b%d%b%d%b" % (
            self._head,
            expires_in,
            self._middle,
            ext_expires_in,
            self._tail,
        )
        self._second = second
        return self._body

    def _encode(self, token: AccessToken) -> None:
        def s(value: str) -> bytes:
            return json.dumps(value).encode()

        self._head = (
            b'{"access_token":'
            + s(token.value)
            + b',"client_id":'
            + s(self.request.key.client_id)
            + b',"expires_in":"'
        )
        self._middle = b'","expires_on":"%d","ext_expires_in":"' % int(token.expires_on)
        self._tail = (
            b'","not_before":"%d","resource":' % int(token.not_before)
            + s(self.request.resource)
            + b',"token_type":'
            + s(token.token_type)
            + b"}"
        )
        self._token = token


class ImdsProtocol:
    """The token flow's adapter for IMDS (`proxy.tokenflow`): one dialect, no versions."""

    def __init__(self, tenant_id: str, default_client_id: str | None) -> None:
        self._tenant_id = tenant_id
        self._default_client_id = default_client_id

    def parse(
        self, request: web.BaseRequest
    ) -> tuple[ImdsProtocol, TokenRequest | IdentityQuery | Failure]:
        return self, parse_token_query(request.query, self._tenant_id, self._default_client_id)

    def refuse(self, request: web.BaseRequest) -> Refusal | None:
        if request.method != "GET":
            return METHOD_NOT_ALLOWED
        return header_error(request.headers)

    def refusal(self, failure: Failure) -> Refusal:
        return refusal(failure)

    def token_body(self, wanted: TokenRequest) -> TokenAnswer:
        return TokenAnswer(wanted)

    def log_fields(self, wanted: TokenRequest) -> dict[str, object]:
        return {"client_id": wanted.key.client_id, "resource": wanted.resource}
