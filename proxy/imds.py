"""The IMDS token protocol: what a request means and what the answer looks like.

This is the only module that knows IMDS's status codes and bodies. It reads a request
into a `TokenRequest` (or an `IdentityQuery`, when the caller names its identity by object
id or resource id, for `proxy.identities` to resolve) or raises `ImdsError`, renders tokens
exactly as IMDS does (every value a string, `expires_in` counted from now), and maps typed
token failures to errors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

from proxy.config import is_client_id, is_object_id, is_resource_id
from proxy.paths import TOKEN_PATH as TOKEN_PATH  # re-exported: part of the protocol
from proxy.query import IdentityQuery, Selector, TokenRequest, scope_for
from proxy.tokens.errors import (
    CredentialUnavailable,
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    FederationPending,
    TokenError,
)
from proxy.tokens.model import AccessToken, TokenKey

JSON = "application/json; charset=utf-8"
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
MAX_RETRY_AFTER = 60
"""Longest Retry-After sent: azidentity gives up beyond it, MSAL Python goes silent for it."""
TRANSIENT_RETRY_AFTER = 5
"""Retry-After on a transient failure when no better time is known."""
_UNKNOWN_IDENTITY_AADSTS = frozenset(("700016", "70021", "700211", "700212", "700213"))
"""Entra's ways of saying that this pod has no such identity: the app does not exist, or
trusts no federated credential matching the pod's service account."""


class ImdsError(Exception):
    """An answer other than a token: status, IMDS error code and a safe description."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.retry_after = retry_after
        self.reason = reason or error
        """A short, bounded label for logs and metrics (the failure kind)."""
        self.body = error_body(error, description)  # built once: many errors are constants
        self.headers = {"Content-Type": JSON}
        if retry_after is not None:
            # Whole seconds, capped: the cache keeps honouring a longer wait on its own.
            seconds = min(max(1, math.ceil(retry_after)), MAX_RETRY_AFTER)
            self.headers["Retry-After"] = str(seconds)


def error_body(error: str, description: str) -> bytes:
    return json.dumps({"error": error, "error_description": description}).encode()


MISSING_METADATA = ImdsError(
    400, "invalid_request", "Required metadata header not specified", reason="metadata_header"
)
FORWARDED = ImdsError(
    400,
    "invalid_request",
    "Request was proxied (X-Forwarded-For is set); IMDS refuses proxied requests",
    reason="forwarded",
)


def header_error(headers: Mapping[str, str]) -> ImdsError | None:
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
) -> TokenRequest | IdentityQuery:
    """Validate the query in IMDS's order: api-version, resource, identity. The same query
    string always means the same `TokenRequest` or error, so callers may remember them; an
    `IdentityQuery` may resolve differently once more identities are known."""
    api_version = query.get("api-version")
    if not api_version:
        raise ImdsError(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
            reason="api_version",
        )
    if not _API_VERSION.match(api_version) or api_version < _OLDEST_API_VERSION:
        raise ImdsError(
            400,
            "invalid_request",
            f"Invalid api-version; identity requests need {_OLDEST_API_VERSION} or later",
            reason="api_version",
        )
    return parse_wanted_token(query, tenant_id, default_client_id)


def parse_wanted_token(
    query: Mapping[str, str], tenant_id: str, default_client_id: str | None
) -> TokenRequest | IdentityQuery:
    """The version-independent part of a token query, in IMDS's order: resource, then
    identity (IMDS's selector names; other protocols translate theirs first)."""
    if any(_UNDECODABLE in value for value in query.values()):
        raise ImdsError(
            400,
            "invalid_request",
            "The query is not valid UTF-8 once percent-decoded",
            reason="encoding",
        )
    resource = query.get("resource", "").strip()
    if not resource:
        raise ImdsError(
            400,
            "invalid_request",
            "Required query variable 'resource' is missing",
            reason="resource",
        )
    if len(resource) > _MAX_RESOURCE_LENGTH or not resource.isprintable() or " " in resource:
        raise ImdsError(
            400, "invalid_resource", "The resource is not a valid URI", reason="resource"
        )
    selector = _selector_in(query)
    if selector is not None:
        return IdentityQuery(resource, tenant_id, selector)
    client_id = query.get("client_id", "").strip() or default_client_id
    if client_id is None:
        raise ImdsError(
            400,
            "invalid_request",
            "Identity not found: no client_id in the request and AZURE_CLIENT_ID "
            "is not set; annotate the service account with "
            "azure.workload.identity/client-id",
            reason="identity_unknown",
        )
    if not is_client_id(client_id):
        raise ImdsError(
            400,
            "invalid_request",
            "Identity not found: client_id must be an application (client) id, a GUID",
            reason="identity_unknown",
        )
    return TokenRequest(resource=resource, key=TokenKey(tenant_id, client_id, scope_for(resource)))


def _selector_in(query: Mapping[str, str]) -> Selector | None:
    """The one identity the query names other than by client id, if any."""
    named: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, value) -> as first given
    for param in ("client_id", *_SELECTORS):
        if value := query.get(param, "").strip():
            named.setdefault((_SELECTORS.get(param, param), value.lower()), (param, value))
    if len(named) > 1:
        raise ImdsError(
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
        raise ImdsError(
            400,
            "invalid_request",
            f"Identity not found: {param} must be {shape}",
            reason="identity_unknown",
        )
    return Selector(kind, param, value)


def selector_unresolved_here(selector: Selector) -> ImdsError:
    """For endpoints that select identities by client id only."""
    return ImdsError(
        400,
        "invalid_request",
        f"Identity not found: {selector.param} is resolved on the IMDS token path only; "
        "select the identity by client id here",
        reason="identity_selector",
    )


def identity_not_found(selector: Selector, known: Sequence[str], unchecked: str) -> ImdsError:
    """No identity of the pod has the selected id; `known` are the client ids whose ids
    are known, `unchecked` says which could not be asked (empty when none)."""
    checked = ", ".join(known) if known else "none"
    return ImdsError(
        400,
        "invalid_request",
        f"Identity not found: no identity of this pod has {selector.param} "
        f"'{_clip(selector.value)}' (identities checked: {checked}{unchecked}); an id "
        "its tokens do not carry can be mapped with --identity or IMDS_PROXY_IDENTITIES",
        reason="identity_unknown",
    )


def _clip(value: str, limit: int = 300) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


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


def error_for(exc: TokenError) -> ImdsError:
    """The IMDS answer for a failure to get a token."""
    if isinstance(exc, EntraRejected):
        error = "invalid_resource" if exc.aadsts == "500011" else "invalid_request"
        reason = f"rejected_aadsts{exc.aadsts}" if exc.aadsts else "rejected"
        description = exc.description
        if exc.aadsts in _UNKNOWN_IDENTITY_AADSTS:
            description = "Identity not found: " + description  # the phrase SDKs look for
        return ImdsError(400, error, description, reason=reason)
    if isinstance(exc, EntraThrottled):  # Entra's 429, or the proxy's own new-token limit
        return ImdsError(
            429,
            "too_many_requests",
            exc.description,
            retry_after=exc.retry_after,
            reason=exc.kind,
        )
    if isinstance(exc, FederationPending):
        # Transient by construction: SDKs retry a 5xx, while a 400 would be final for them.
        return ImdsError(
            503,
            "temporarily_unavailable",
            exc.description,
            retry_after=exc.retry_after,
            reason="federation_pending",
        )
    if isinstance(exc, EntraUnavailable):
        return ImdsError(
            503,
            "temporarily_unavailable",
            exc.description,
            retry_after=TRANSIENT_RETRY_AFTER if exc.retry_after is None else exc.retry_after,
            reason="unavailable",
        )
    if isinstance(exc, CredentialUnavailable):
        return ImdsError(
            503,
            "temporarily_unavailable",
            exc.description,
            retry_after=TRANSIENT_RETRY_AFTER,
            reason="credential",
        )
    return ImdsError(
        500, "unknown_error", exc.description, retry_after=TRANSIENT_RETRY_AFTER, reason="internal"
    )
