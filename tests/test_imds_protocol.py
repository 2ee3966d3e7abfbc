"""The IMDS protocol: request validation in IMDS's order, the success body, error mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from multidict import CIMultiDict

from proxy import imds
from proxy.answers import Refusal
from proxy.failures import TRANSIENT_RETRY_AFTER, Failure, failure_for
from proxy.imds import TokenAnswer, header_error, parse_token_query
from proxy.query import IdentityQuery, Selector, TokenRequest, scope_for
from proxy.tokens.errors import (
    CredentialUnavailable,
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    TokenError,
)
from proxy.tokens.model import AccessToken, TokenKey
from tests.support.imds_contract import TOKEN_FIELDS

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT_CLIENT = "11111111-2222-3333-4444-555555555555"
OTHER_CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
VAULT = "https://vault.azure.net"
IMDS_KEYS = set(TOKEN_FIELDS)
NOW = 1_700_000_000.0


def headers(**extra: str) -> CIMultiDict[str]:
    """What aiohttp hands over: case-insensitive request headers."""
    result: CIMultiDict[str] = CIMultiDict({"Metadata": "true"})
    for name, value in extra.items():
        result[name.replace("_", "-")] = value
    return result


def query(**extra: str) -> dict[str, str]:
    result = {"api-version": "2018-02-01", "resource": VAULT}
    result.update({"api-version" if n == "api_version" else n: v for n, v in extra.items()})
    return result


def parse_any(
    hdrs: Mapping[str, str] | None = None,
    qs: Mapping[str, str] | None = None,
    default_client_id: str | None = DEFAULT_CLIENT,
) -> TokenRequest | IdentityQuery | Refusal:
    """What the proxy does per request: the headers first, then the query."""
    refused = header_error(headers() if hdrs is None else hdrs)
    if refused is not None:
        return refused
    wanted = parse_token_query(query() if qs is None else qs, TENANT, default_client_id)
    return imds.refusal(wanted) if isinstance(wanted, Failure) else wanted


def parse(
    hdrs: Mapping[str, str] | None = None,
    qs: Mapping[str, str] | None = None,
    default_client_id: str | None = DEFAULT_CLIENT,
) -> TokenRequest:
    request = parse_any(hdrs, qs, default_client_id)
    assert isinstance(request, TokenRequest)
    return request


def rejects(
    hdrs: Mapping[str, str] | None = None,
    qs: Mapping[str, str] | None = None,
    default_client_id: str | None = DEFAULT_CLIENT,
) -> Refusal:
    refused = parse_any(hdrs, qs, default_client_id)
    assert isinstance(refused, Refusal)
    return refused


def error_for(exc: TokenError) -> Refusal:
    """A token failure as IMDS answers it."""
    return imds.refusal(failure_for(exc))


def body_of(error: Refusal) -> dict[str, str]:
    decoded = json.loads(error.body)
    assert isinstance(decoded, dict)
    assert set(decoded) == {"error", "error_description"}
    return decoded


def make_token(value: str = "eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ0In0.sig") -> AccessToken:
    return AccessToken(
        value=value,
        token_type="Bearer",
        expires_on=NOW + 3599.7,
        ext_expires_on=NOW + 7199.2,
        not_before=NOW - 300,
        obtained_at=NOW,
    )


# -- requests ----------------------------------------------------------------------------


def test_a_valid_request_names_the_key_and_keeps_the_resource() -> None:
    request = parse()
    assert request.resource == VAULT
    assert request.key == TokenKey(TENANT, DEFAULT_CLIENT, VAULT + "/.default")


@pytest.mark.parametrize(
    "hdrs",
    [CIMultiDict[str](), headers(Metadata="false"), headers(Metadata=""), headers(Metadata="1")],
    ids=["missing", "false", "empty", "one"],
)
def test_metadata_header_must_be_true(hdrs: CIMultiDict[str]) -> None:
    error = rejects(hdrs)
    assert error.status == 400
    assert body_of(error) == {
        "error": "invalid_request",
        "error_description": "Required metadata header not specified",
    }


def test_metadata_header_name_is_case_insensitive() -> None:
    assert parse(CIMultiDict({"metadata": "true"})).resource == VAULT


def test_metadata_header_is_checked_before_the_query() -> None:
    error = rejects(CIMultiDict[str](), {})
    assert error.failure.description == "Required metadata header not specified"


def test_proxied_requests_are_refused() -> None:
    error = rejects(headers(X_Forwarded_For="10.0.0.7"))
    assert 400 <= error.status < 500
    assert body_of(error)["error"] == "invalid_request"


def test_the_old_sdk_probe_without_a_query_never_gets_a_token() -> None:
    error = rejects(qs={})
    assert error.status == 400


@pytest.mark.parametrize("version", ["2018-02-01", "2019-08-01", "2021-02-01"])
def test_supported_api_versions(version: str) -> None:
    assert parse(qs=query(api_version=version)).resource == VAULT


@pytest.mark.parametrize("version", [None, "", "2017-01-01", "2018-01-31", "latest", "abc"])
def test_missing_or_bad_api_version_is_400_naming_it(version: str | None) -> None:
    qs = query()
    if version is None:
        del qs["api-version"]
    else:
        qs["api-version"] = version
    error = rejects(qs=qs)
    assert error.status == 400
    assert body_of(error)["error"] == "invalid_request"
    assert "api-version" in error.failure.description


@pytest.mark.parametrize("resource", [None, "", "   "])
def test_missing_resource_is_400_naming_it(resource: str | None) -> None:
    qs = query()
    if resource is None:
        del qs["resource"]
    else:
        qs["resource"] = resource
    error = rejects(qs=qs)
    assert error.status == 400
    assert body_of(error)["error"] == "invalid_request"
    assert "resource" in error.failure.description


@pytest.mark.parametrize(
    "resource",
    [
        "https://" + "a" * 4096,
        "https://vault.azure.net/ x",
        "https://vault.azure.net/\x00",
        "https://vault.azure.net/\nx",
        "https://vault.azure.net/\tx",
        "https://vault.azure.net/\x7f",
    ],
    ids=["too-long", "space", "nul", "newline", "tab", "del"],
)
def test_malformed_resource_is_invalid_resource(resource: str) -> None:
    error = rejects(qs=query(resource=resource))
    assert error.status == 400
    assert body_of(error)["error"] == "invalid_resource"


def test_a_long_but_reasonable_resource_is_accepted() -> None:
    resource = "https://example.com/" + "a" * 1000
    assert parse(qs=query(resource=resource)).resource == resource


RESOURCE_ID = "/subscriptions/0/resourceGroups/rg/providers/x/userAssignedIdentities/id"


@pytest.mark.parametrize(
    ("param", "value", "kind"),
    [
        ("object_id", OTHER_CLIENT, "object_id"),
        ("msi_res_id", RESOURCE_ID, "resource_id"),
        ("mi_res_id", RESOURCE_ID, "resource_id"),
        ("msi-res-id", RESOURCE_ID, "resource_id"),
    ],
)
def test_other_identity_selectors_leave_the_identity_to_resolve(
    param: str, value: str, kind: str
) -> None:
    request = parse_any(qs=query(**{param: value}))
    assert isinstance(request, IdentityQuery)
    assert request.selector == Selector(kind, param, value)
    assert request.resolved(OTHER_CLIENT) == TokenRequest(
        VAULT, TokenKey(TENANT, OTHER_CLIENT, VAULT + "/.default")
    )


@pytest.mark.parametrize(
    ("param", "value"),
    [("object_id", "not-a-guid"), ("msi_res_id", "id-name"), ("mi_res_id", "/resourceGroups/x")],
)
def test_malformed_selectors_are_identity_not_found(param: str, value: str) -> None:
    error = rejects(qs=query(**{param: value}))
    assert (error.status, body_of(error)["error"]) == (400, "invalid_request")
    assert (
        error.failure.description.startswith("Identity not found")
        and param in error.failure.description
    )


def test_two_identity_parameters_are_400_unless_they_say_the_same() -> None:
    error = rejects(qs=query(client_id=OTHER_CLIENT, object_id=DEFAULT_CLIENT))
    assert (error.status, body_of(error)["error"]) == (400, "invalid_request")
    assert "client_id and object_id" in error.failure.description
    assert "Identity not found" not in error.failure.description
    same = parse_any(qs=query(msi_res_id=RESOURCE_ID, mi_res_id=RESOURCE_ID.upper()))
    assert isinstance(same, IdentityQuery) and same.selector.param == "msi_res_id"


def test_empty_selectors_are_ignored() -> None:
    assert parse(qs=query(object_id="", msi_res_id=" ")).key.client_id == DEFAULT_CLIENT


def test_no_client_id_and_no_default_is_identity_not_found() -> None:
    error = rejects(default_client_id=None)
    assert error.status == 400
    assert body_of(error)["error"] == "invalid_request"
    assert error.failure.description.startswith("Identity not found")


@pytest.mark.parametrize("client_id", ["not-a-guid", "1234", OTHER_CLIENT + "0", "   x"])
def test_non_guid_client_id_is_identity_not_found(client_id: str) -> None:
    error = rejects(qs=query(client_id=client_id))
    assert error.status == 400
    assert error.failure.description.startswith("Identity not found")


def test_client_id_from_the_query_overrides_the_default() -> None:
    assert parse(qs=query(client_id=OTHER_CLIENT)).key.client_id == OTHER_CLIENT
    assert parse().key.client_id == DEFAULT_CLIENT
    assert parse(qs=query(client_id="")).key.client_id == DEFAULT_CLIENT


def test_client_id_in_the_query_needs_no_default() -> None:
    request = parse(qs=query(client_id=OTHER_CLIENT), default_client_id=None)
    assert request.key == TokenKey(TENANT, OTHER_CLIENT, VAULT + "/.default")


@pytest.mark.parametrize(
    ("resource", "scope"),
    [
        ("https://vault.azure.net", "https://vault.azure.net/.default"),
        ("https://vault.azure.net/", "https://vault.azure.net//.default"),
        ("https://vault.azure.net/.default", "https://vault.azure.net/.default"),
        ("api://my-app", "api://my-app/.default"),
    ],
)
def test_scope_for(resource: str, scope: str) -> None:
    assert scope_for(resource) == scope
    assert parse(qs=query(resource=resource)).key.scope == scope


# -- the success body --------------------------------------------------------------------


def test_render_token_has_exactly_the_imds_keys_all_strings() -> None:
    token = make_token()
    request = parse()
    body = json.loads(TokenAnswer(request).render(token, NOW))
    assert set(body) == IMDS_KEYS
    assert all(isinstance(value, str) for value in body.values())
    assert body == {
        "access_token": token.value,
        "client_id": DEFAULT_CLIENT,
        "expires_in": "3598",  # whole seconds left at the end of the current second
        "expires_on": str(int(NOW + 3599.7)),
        "ext_expires_in": "7198",
        "not_before": str(int(NOW - 300)),
        "resource": VAULT,
        "token_type": "Bearer",
    }


def test_expires_in_counts_from_now_on_memoised_fragments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = make_token()
    answer = TokenAnswer(parse())
    later = NOW + 1234.5
    first = json.loads(answer.render(token, NOW))
    encoded: list[AccessToken] = []
    monkeypatch.setattr(TokenAnswer, "_encode", lambda self, t: encoded.append(t))
    second = json.loads(answer.render(token, later))
    assert encoded == [], "the second render reuses the fragments"
    # Whole seconds left at the end of the current second: never more than really remain.
    assert first["expires_in"] == str(int(token.expires_on) - int(NOW) - 1) == "3598"
    assert second["expires_in"] == str(int(token.expires_on) - int(later) - 1) == "2364"
    assert second["ext_expires_in"] == str(int(token.ext_expires_on) - int(later) - 1)
    assert json.loads(answer.render(token, later + 0.4)) == second, "same second, same body"
    assert json.loads(answer.render(token, later + 0.6))["expires_in"] == "2363"
    assert first["expires_on"] == second["expires_on"]
    assert {k: v for k, v in first.items() if not k.endswith("expires_in")} == {
        k: v for k, v in second.items() if not k.endswith("expires_in")
    }


def test_expires_in_never_goes_negative() -> None:
    token = make_token()
    body = json.loads(TokenAnswer(parse()).render(token, token.expires_on + 30))
    assert body["expires_in"] == "0"


def test_each_request_echoes_its_own_resource_for_a_shared_token() -> None:
    token = make_token()
    plain = parse(qs=query(resource=VAULT))
    suffixed = parse(qs=query(resource=VAULT + "/.default"))
    assert plain.key == suffixed.key
    assert json.loads(TokenAnswer(plain).render(token, NOW))["resource"] == VAULT
    assert json.loads(TokenAnswer(suffixed).render(token, NOW))["resource"] == VAULT + "/.default"
    assert json.loads(TokenAnswer(plain).render(token, NOW))["resource"] == VAULT


def test_each_client_id_is_rendered_for_a_shared_token() -> None:
    token = make_token()
    ours = parse()
    theirs = parse(qs=query(client_id=OTHER_CLIENT))
    assert json.loads(TokenAnswer(ours).render(token, NOW))["client_id"] == DEFAULT_CLIENT
    assert json.loads(TokenAnswer(theirs).render(token, NOW))["client_id"] == OTHER_CLIENT


def test_resource_with_quotes_backslashes_and_unicode_is_json_escaped() -> None:
    resource = 'https://example.com/"quoted"\\path/caf\u00e9/\u2603/\U0001f511'
    request = parse(qs=query(resource=resource))
    raw = TokenAnswer(request).render(make_token(value='tok"en\\'), NOW)
    raw.decode("utf-8")
    body = json.loads(raw)
    assert body["resource"] == resource
    assert body["access_token"] == 'tok"en\\'
    assert set(body) == IMDS_KEYS


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aadsts", "code"),
    [("7000215", "invalid_request"), ("500011", "invalid_resource"), (None, "invalid_request")],
)
def test_rejection_is_400_with_the_aadsts_text(aadsts: str | None, code: str) -> None:
    description = f"AADSTS{aadsts}: something is wrong" if aadsts else "bad request"
    error = error_for(EntraRejected("invalid_request", description, aadsts, 400))
    assert error.status == 400
    assert body_of(error) == {"error": code, "error_description": description}
    assert "Retry-After" not in error.headers
    assert error.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(30.0, "30"), (2.1, "3"), (0.2, "1"), (0.0, "1")],
)
def test_throttling_is_429_with_retry_after_ceiled_and_at_least_one(
    retry_after: float, header: str
) -> None:
    error = error_for(EntraThrottled("Too many requests", retry_after=retry_after))
    assert error.status == 429
    assert body_of(error)["error_description"] == "Too many requests"
    assert error.headers["Retry-After"] == header


@pytest.mark.parametrize(("retry_after", "header"), [(4.5, "5"), (0.01, "1")])
def test_unavailable_is_503_with_retry_after_when_known(retry_after: float, header: str) -> None:
    error = error_for(EntraUnavailable("Entra ID timed out", retry_after=retry_after))
    assert error.status == 503
    assert body_of(error) == {
        "error": "temporarily_unavailable",
        "error_description": "Entra ID timed out",
    }
    assert error.headers["Retry-After"] == header


def test_unavailable_without_retry_after_is_503_with_a_small_one() -> None:
    error = error_for(EntraUnavailable("Entra ID timed out"))
    assert error.status == 503
    assert error.headers["Retry-After"] == str(TRANSIENT_RETRY_AFTER)


@pytest.mark.parametrize("error_type", [EntraThrottled, EntraUnavailable])
@pytest.mark.parametrize(("retry_after", "header"), [(61.0, "60"), (3600.0, "60"), (59.5, "60")])
def test_retry_after_on_the_wire_is_at_most_60(
    error_type: type[EntraThrottled | EntraUnavailable], retry_after: float, header: str
) -> None:
    assert error_for(error_type("slow", retry_after=retry_after)).headers["Retry-After"] == header


@pytest.mark.parametrize("aadsts", ["700016", "70021", "700211", "700212", "700213"])
def test_entra_saying_no_such_identity_is_identity_not_found(aadsts: str) -> None:
    description = f"AADSTS{aadsts}: no such application or federated credential"
    error = error_for(EntraRejected("invalid_client", description, aadsts, 400))
    assert error.status == 400
    assert error.failure.description == "Identity not found: " + description


def test_other_rejections_do_not_claim_identity_not_found() -> None:
    error = error_for(EntraRejected("invalid_resource", "AADSTS500011: no resource", "500011", 400))
    assert "Identity not found" not in error.failure.description


def test_credential_unavailable_is_a_retryable_5xx() -> None:
    description = "service-account token file /var/run/t does not exist"
    error = error_for(CredentialUnavailable(description))
    assert 500 <= error.status < 600
    assert 1 <= int(error.headers["Retry-After"]) <= 60
    assert body_of(error)["error_description"] == description


def test_any_other_token_error_is_500() -> None:
    error = error_for(TokenError("unexpected"))
    assert error.status == 500
    assert body_of(error)["error_description"] == "unexpected"


def test_error_kinds_map_to_distinct_reasons() -> None:
    errors: list[TokenError] = [
        EntraRejected("invalid_request", "x", "700213", 400),
        EntraThrottled("x", retry_after=1),
        EntraUnavailable("x"),
        CredentialUnavailable("x"),
    ]
    reasons = [failure_for(e).label for e in errors]
    assert len(set(reasons)) == len(reasons)
