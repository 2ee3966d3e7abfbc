"""The client-credentials exchange: validate a federated client assertion, mint a token.

Checks run in the order Entra applies them, so each mistake gets the code a real tenant
would answer with. The assertion itself is never quoted back: only single claims, clipped.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.devissuer import errors
from proxy.devissuer.errors import EntraError, clip
from proxy.devissuer.state import FederatedCredential, IssuerState

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_SUFFIX = "/.default"
_FIC_HINT = (
    "Check your federated identity credential Subject, Audience and Issuer against the "
    "presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
)


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise EntraError(
            errors.MISSING_PARAMETER,
            "invalid_request",
            f"The request body must contain the following parameter: '{name}'.",
        )
    return value


def resource_of(state: IssuerState, scope: str) -> str:
    """The resource a client-credentials ``scope`` names (exactly one ``.../.default``)."""
    scopes = scope.split()
    if len(scopes) != 1:
        raise EntraError(
            errors.INVALID_SCOPE,
            "invalid_scope",
            f"The provided value for the input parameter 'scope' is not valid. "
            f"The scope '{clip(scope)}' is not valid.",
        )
    if not scopes[0].endswith(DEFAULT_SUFFIX) or scopes[0] == DEFAULT_SUFFIX:
        raise EntraError(
            errors.SCOPE_NOT_DEFAULT,
            "invalid_scope",
            f"The provided value for scope {clip(scope)} is not valid. Client credential flows "
            "must have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
    resource = scopes[0].removesuffix(DEFAULT_SUFFIX)
    unknown = state.behaviour.unknown_resources
    if resource in unknown or resource.rstrip("/") in unknown:
        raise EntraError(
            errors.RESOURCE_NOT_FOUND,
            "invalid_resource",
            f"The resource principal named {clip(resource)} was not found in the tenant "
            f"named {state.tenant_id}. This can happen if the application has not been "
            "installed by the administrator of the tenant or consented to by any user in the "
            "tenant. You might have sent your authentication request to the wrong tenant.",
        )
    return resource


def _malformed() -> EntraError:
    return EntraError(
        errors.MALFORMED_TOKEN, "invalid_request", "JWT token is invalid or malformed."
    )


def _claim_str(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise _malformed()
    return value


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str) and aud:
        return [aud]
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return aud
    raise _malformed()


def _int_claim(claims: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed()
    return int(value)


def verify_assertion(state: IssuerState, client_id: str, assertion: str) -> FederatedCredential:
    """Validate a service-account token presented as ``client_assertion``.

    Order: well-formed JWT, a federated credential for its issuer, signature by the
    cluster's key, validity window, then subject and audience against that issuer's
    credentials. Returns the credential that matched.
    """
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _malformed() from None
    if header.get("alg") != "RS256":
        raise _malformed()
    iss, sub = _claim_str(claims, "iss"), _claim_str(claims, "sub")
    audiences = _audiences(claims)

    now = time.time()
    credentials = [c for c in state.federated_credentials.get(client_id, ()) if c.effective(now)]
    if not credentials:
        raise EntraError(  # "invalid_request", as in the Workload ID troubleshooting guide
            errors.NO_FEDERATED_RECORD,
            "invalid_request",
            f"No matching federated identity record found for presented assertion. "
            f"Assertion Issuer: '{clip(iss)}'. Assertion Subject: '{clip(sub)}'. "
            f"Assertion Audience: '{clip(audiences[0])}'. {_FIC_HINT}",
        )
    by_issuer = [c for c in credentials if c.issuer == iss]
    if not by_issuer:
        raise EntraError(
            errors.NO_MATCHING_ISSUER,
            "invalid_client",
            f"No matching federated identity record found for presented assertion issuer "
            f"'{clip(iss)}'. {_FIC_HINT}",
        )

    kid = header.get("kid")
    key: rsa.RSAPublicKey | None = None
    if isinstance(kid, str):
        own = state.service_account_keys.get(kid)
        key = own.public_key if own is not None else state.trusted_keys.get(kid)
    if key is None:
        raise EntraError(
            errors.BAD_SIGNATURE,
            "invalid_client",
            "Client assertion failed signature validation. No key matching the assertion's "
            "key identifier was found at the issuer's JWKS endpoint.",
        )
    try:
        jwt.decode(
            assertion,
            key,
            algorithms=["RS256"],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise EntraError(
            errors.BAD_SIGNATURE, "invalid_client", "Client assertion failed signature validation."
        ) from None
    except jwt.PyJWTError:
        raise _malformed() from None

    now = int(now)
    exp = _int_claim(claims, "exp", required=True)
    nbf = _int_claim(claims, "nbf", required=False)
    iat = _int_claim(claims, "iat", required=False)
    starts = nbf if nbf is not None else iat
    if (
        exp is None
        or now >= exp
        or (starts is not None and starts > now)
        or (iat is not None and iat > now)
    ):
        raise EntraError(
            errors.ASSERTION_TIME,
            "invalid_client",
            f"Client assertion is not within its valid time range. Current time: "
            f"{_iso(now)}, assertion valid from {_iso(starts)}, expiry time of assertion "
            f"{_iso(exp)}. Review the documentation at "
            "https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
        )

    by_subject = [c for c in by_issuer if c.subject == sub]
    if not by_subject:
        raise EntraError(
            errors.NO_MATCHING_SUBJECT,
            "invalid_client",
            f"No matching federated identity record found for presented assertion subject "
            f"'{clip(sub)}'. {_FIC_HINT}",
        )
    for credential in by_subject:
        if any(a in credential.audiences for a in audiences):
            return credential
    raise EntraError(
        errors.NO_MATCHING_AUDIENCE,
        "invalid_client",
        f"No matching federated identity record found for presented assertion audience "
        f"'{clip(audiences[0])}'. {_FIC_HINT}",
    )


def _iso(ts: int | None) -> str:
    if ts is None:
        return "unspecified"
    return time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(ts))


def _uti() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def exchange(state: IssuerState, tenant: str, form: Mapping[str, str]) -> dict[str, Any]:
    """Validate a client-credentials request and return Entra's success body."""
    if not state.knows_tenant(tenant):
        raise EntraError(
            errors.TENANT_NOT_FOUND,
            "invalid_request",
            f"Tenant '{clip(tenant)}' not found. Check to make sure you have the correct tenant "
            "ID and are signing into the correct cloud.",
        )
    grant_type = _required(form, "grant_type")
    if grant_type != GRANT_TYPE:
        raise EntraError(
            errors.UNSUPPORTED_GRANT,
            "unsupported_grant_type",
            f"The app requested an unsupported grant type '{clip(grant_type)}'.",
        )
    client_id = _required(form, "client_id")
    if client_id not in state.federated_credentials:
        raise EntraError(
            errors.APP_NOT_FOUND,
            "unauthorized_client",
            f"Application with identifier '{clip(client_id)}' was not found in the directory "
            f"'{state.tenant_id}'. This can happen if the application has not been installed "
            "by the administrator of the tenant or consented to by any user in the tenant. "
            "You may have sent your authentication request to the wrong tenant.",
        )
    scope = _required(form, "scope")
    assertion = form.get("client_assertion", "")
    if not assertion or form.get("client_assertion_type") != ASSERTION_TYPE:
        raise EntraError(
            errors.MISSING_CLIENT_CREDENTIAL,
            "invalid_client",
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )
    verify_assertion(state, client_id, assertion)
    resource = resource_of(state, scope)
    return issue_access_token(state, client_id, resource)


def object_id_of(tenant_id: str, client_id: str) -> str:
    """The object id of a client's service principal: fixed per client, not its client id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant_id}/{client_id}"))


def resource_id_of(tenant_id: str, client_id: str) -> str:
    """The ARM id of the user-assigned managed identity behind a client, as Entra writes it
    in ``xms_mirid`` (``resourcegroups`` in lower case; ARM callers send ``resourceGroups``)."""
    subscription = uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant_id}/subscription")
    return (
        f"/subscriptions/{subscription}/resourcegroups/workload-identities/providers/"
        f"Microsoft.ManagedIdentity/userAssignedIdentities/id-{client_id[:8]}"
    )


def issue_access_token(state: IssuerState, client_id: str, resource: str) -> dict[str, Any]:
    """An app-only v1 access token as Entra shapes it for a user-assigned managed identity
    with a federated credential; ``uti``/``jti`` make each unique."""
    now = int(time.time())
    lifetime = state.behaviour.token_lifetime
    tid = state.tenant_id
    iss = f"https://sts.windows.net/{tid}/"
    oid = object_id_of(tid, client_id)
    claims = {
        "aud": resource,
        "iss": iss,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "aio": _uti(),
        "appid": client_id,
        "appidacr": "2",
        "azp": client_id,
        "idp": iss,
        "idtyp": "app",
        "oid": oid,
        "rh": _uti(),
        "sub": oid,
        "tid": tid,
        "uti": _uti(),
        "jti": str(uuid.uuid4()),
        "ver": "1.0",
        "xms_mirid": resource_id_of(tid, client_id),
    }
    return {
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": state.signing_key.sign(claims, x5t=True),
    }
