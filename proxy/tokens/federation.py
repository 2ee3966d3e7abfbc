"""Entra ID's federation failures: which AADSTS codes mean what, and what fixes each.

One table, read by the exchange (to explain a rejection), the cache (to know which
rejection may only be propagation delay) and `imds-proxy doctor` (to print the fix). The
codes and meanings follow Microsoft's AADSTS reference and the Workload ID troubleshooting
guide; a code not in the table passes through as Entra sent it.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE

_CREATE_CREDENTIAL = (
    "az identity federated-credential create --name <name> --identity-name <identity> "
    "--resource-group <group> --issuer {iss} --subject {sub} --audience " + TOKEN_EXCHANGE_AUDIENCE
)
_READ_ISSUER = (
    "az aks show --name <cluster> --resource-group <group> "
    "--query oidcIssuerProfile.issuerUrl -o tsv"
)


@dataclass(frozen=True, slots=True)
class FederationCause:
    """One class of federation failure: its codes, why it happens and how to fix it."""

    name: str
    """A short, bounded label (metrics, logs, doctor)."""
    codes: frozenset[str]
    cause: str
    fix: str
    """May name {iss}, {sub}, {aud}, {client_id} and {tenant}; `<...>` is what only the
    operator knows."""
    propagates: bool = False
    """A freshly created federated credential is rejected this way until it propagates."""


@dataclass(frozen=True, slots=True)
class AssertionClaims:
    """The service-account token's claims that matter to federation (never the token)."""

    iss: str = "<unknown>"
    sub: str = "<unknown>"
    aud: str = "<unknown>"


CAUSES: tuple[FederationCause, ...] = (
    FederationCause(
        name="no_matching_credential",
        codes=frozenset({"70021", "700211", "700212", "700213"}),
        cause="no federated identity credential of this identity matches the service-account "
        "token's issuer, subject and audience (a new one takes a few minutes to propagate)",
        fix="create the federated credential with exactly these values: "
        + _CREATE_CREDENTIAL
        + " ; if one exists, compare its issuer with the cluster's, read with `"
        + _READ_ISSUER
        + "` (a trailing slash differs, the classic), and its subject "
        "(system:serviceaccount:<namespace>:<service account>)",
        propagates=True,
    ),
    FederationCause(
        name="unknown_client",
        codes=frozenset({"700016"}),
        cause="the client id {client_id} is not an application or managed identity in "
        "tenant {tenant}",
        fix="set the service account's azure.workload.identity/client-id annotation to the "
        "identity's client id (`az identity show --name <identity> --resource-group <group> "
        "--query clientId -o tsv`) and check AZURE_TENANT_ID is the identity's tenant",
    ),
    FederationCause(
        name="assertion_time",
        codes=frozenset({"700024"}),
        cause="the service-account token is outside its valid time (expired, not yet valid, "
        "or the node's clock is off)",
        fix="check the node's clock (NTP) and that kubelet rotates the projected token "
        "(expirationSeconds 3600 to 86400); restarting the pod writes a fresh one",
    ),
    FederationCause(
        name="assertion_rejected",
        codes=frozenset({"700027", "50027"}),
        cause="Entra ID rejected the service-account token's signature or format",
        fix="the token must be the cluster's projected token signed by its OIDC issuer's "
        "current keys: check that AZURE_FEDERATED_TOKEN_FILE is the projected token and "
        "that the issuer's JWKS (`curl <issuer>/openid/v1/jwks`) has the key that signed it "
        "(after a key rotation, `az aks oidc-issuer rotate-signing-keys` and wait)",
    ),
    FederationCause(
        name="issuer_unreachable",
        codes=frozenset({"90061", "50166", "900612"}),
        cause="Entra ID could not fetch the OIDC discovery document or signing keys of the "
        "issuer {iss}",
        fix="the issuer must be public: `curl {iss}/.well-known/openid-configuration` and its "
        "jwks_uri must answer from the internet; the cluster's issuer is `"
        + _READ_ISSUER
        + "` and must equal the token's iss exactly (a trailing slash differs); on AKS "
        "`az aks update --name <cluster> --resource-group <group>` reconciles it",
    ),
)

_BY_CODE = {code: cause for cause in CAUSES for code in cause.codes}
NAMES = tuple(cause.name for cause in CAUSES)


def classify(aadsts: str | None) -> FederationCause | None:
    """The federation cause of an AADSTS code, or None when it is not a federation one."""
    return _BY_CODE.get(aadsts) if aadsts else None


def fill(template: str, claims: AssertionClaims, client_id: str, tenant: str) -> str:
    """A cause or fix with what the proxy knows filled in (claims only, never the token)."""
    return template.format(
        iss=claims.iss, sub=claims.sub, aud=claims.aud, client_id=client_id, tenant=tenant
    )


def explain(
    cause: FederationCause, aadsts: str, claims: AssertionClaims, client_id: str, tenant: str
) -> str:
    """The one-paragraph explanation callers and logs get for a federation rejection."""
    return (
        f"AADSTS{aadsts}: {fill(cause.cause, claims, client_id, tenant)}. "
        f"Service-account token: iss={claims.iss} sub={claims.sub} aud={claims.aud}; "
        f"client id {client_id}, tenant {tenant}. "
        f"Fix: {fill(cause.fix, claims, client_id, tenant)}"
    )
