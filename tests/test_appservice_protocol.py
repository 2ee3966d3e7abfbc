"""The App Service protocol: each version's query, success shape and error shape, and the
identity-header secret (constant-time check, file re-read on change)."""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path

import pytest

from proxy.answers import Refusal
from proxy.appservice import V2017, V2019, Version, parse_query
from proxy.failures import Failure, failure_for
from proxy.identity_header import IdentityHeaderSecret
from proxy.query import IdentityQuery, Selector, TokenRequest
from proxy.tokens.errors import EntraRejected, EntraThrottled, EntraUnavailable
from proxy.tokens.model import AccessToken, TokenKey

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT_CLIENT = "11111111-2222-3333-4444-555555555555"
OTHER_CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
VAULT = "https://vault.azure.net"
OBJECT_ID = "7e3a1c55-0c4f-4c41-9a27-5d0c2b7f1e99"
RESOURCE_ID = (
    "/subscriptions/1d2c3b4a-0000-4000-8000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/app"
)
EXPIRES = 1_796_077_440  # 2026-11-30 22:24:00 UTC
TOKEN = AccessToken("eyJ.header.sig", "Bearer", EXPIRES, EXPIRES + 3600, EXPIRES - 3600, 0.0)


def wants(
    query: dict[str, str], default_client_id: str | None = DEFAULT_CLIENT
) -> tuple[Version, TokenRequest]:
    version, wanted = parse_query(query, TENANT, default_client_id)
    assert version is not None and isinstance(wanted, TokenRequest), wanted
    return version, wanted


def rejects(
    query: dict[str, str], default_client_id: str | None = DEFAULT_CLIENT
) -> tuple[Refusal, dict[str, object]]:
    """The refusal as the caller gets it: in its version's shape, else in the current one."""
    version, wanted = parse_query(query, TENANT, default_client_id)
    assert isinstance(wanted, Failure), wanted
    refusal = (version or V2019).refusal(wanted)
    body = json.loads(refusal.body)
    assert isinstance(body, dict)
    return refusal, body


def test_2019_query_means_what_imds_would() -> None:
    version, wanted = wants(
        {"api-version": "2019-08-01", "resource": VAULT, "client_id": OTHER_CLIENT},
    )
    assert version is V2019
    assert wanted.resource == VAULT
    assert wanted.key == TokenKey(TENANT, OTHER_CLIENT, VAULT + "/.default")


def test_2017_selects_by_clientid_and_defaults_to_the_pod_identity() -> None:
    version, wanted = wants(
        {"api-version": "2017-09-01", "resource": VAULT + "/", "clientid": OTHER_CLIENT},
    )
    assert version is V2017
    assert wanted.key.client_id == OTHER_CLIENT
    assert wanted.key.scope == VAULT + "//.default"  # trailing slash kept, as IMDS does
    _, wanted = wants({"api-version": "2017-09-01", "resource": VAULT})
    assert wanted.key.client_id == DEFAULT_CLIENT


def test_2019_render_is_app_services_shape_with_epoch_string() -> None:
    _, wanted = wants({"api-version": "2019-08-01", "resource": VAULT})
    body = V2019.render(TOKEN, wanted)
    assert b" " not in body  # compact, one line
    decoded = json.loads(body)
    assert list(decoded) == ["access_token", "expires_on", "resource", "token_type", "client_id"]
    assert decoded["expires_on"] == str(EXPIRES)  # a string: adal reads it into a Go string
    assert decoded["access_token"] == TOKEN.value
    assert decoded["resource"] == VAULT
    assert decoded["token_type"] == "Bearer"
    assert decoded["client_id"] == DEFAULT_CLIENT


def test_2017_render_has_a_utc_date_that_the_sdk_parsers_read() -> None:
    _, wanted = wants({"api-version": "2017-09-01", "resource": VAULT})
    decoded = json.loads(V2017.render(TOKEN, wanted))
    assert list(decoded) == ["access_token", "expires_on", "resource", "token_type"]
    assert decoded["expires_on"] == "11/30/2026 22:24:00 +00:00"
    # azure-identity 1.5 strips " +00:00" and tries these two formats (Linux, Windows).
    stripped = decoded["expires_on"].removesuffix(" +00:00")
    assert calendar.timegm(time.strptime(stripped, "%m/%d/%Y %H:%M:%S")) == EXPIRES


def test_2017_date_is_zero_padded_for_early_dates() -> None:
    early = AccessToken("t", "Bearer", 1_560_999_478, 0, 0, 0)  # 2019-06-20 02:57:58 UTC
    _, wanted = wants({"api-version": "2017-09-01", "resource": VAULT}, OTHER_CLIENT)
    assert json.loads(V2017.render(early, wanted))["expires_on"] == "06/20/2019 02:57:58 +00:00"


@pytest.mark.parametrize("api_version", ["", "2018-02-01", "2019-08-15", "garbage"])
def test_unknown_api_version_is_a_400_in_the_2019_shape(api_version: str) -> None:
    err, body = rejects({"api-version": api_version, "resource": VAULT} if api_version else {})
    assert err.status == 400
    assert set(body) == {"statusCode", "message"}
    assert body["statusCode"] == 400
    assert "2019-08-01" in str(body["message"]) and "2017-09-01" in str(body["message"])


def test_missing_resource_is_refused_in_each_versions_shape() -> None:
    err, body = rejects({"api-version": "2019-08-01"})
    assert err.status == 400 and "resource" in str(body["message"])
    err, body = rejects({"api-version": "2017-09-01"})
    assert err.status == 400
    assert set(body) == {"Message", "ExceptionMessage"}
    assert "resource" in str(body["ExceptionMessage"])


def test_2017_refuses_the_2019_selectors_rather_than_ignore_them() -> None:
    """Ignoring client_id would hand out the default identity's token instead."""
    err, body = rejects({"api-version": "2017-09-01", "resource": VAULT, "client_id": OTHER_CLIENT})
    assert err.status == 400
    assert "clientid" in str(body["ExceptionMessage"])


def test_2019_refuses_the_2017_selector() -> None:
    err, body = rejects({"api-version": "2019-08-01", "resource": VAULT, "clientid": OTHER_CLIENT})
    assert err.status == 400 and "client_id" in str(body["message"])


@pytest.mark.parametrize(
    ("param", "value", "kind", "imds_param"),
    [
        ("principal_id", OBJECT_ID, "object_id", "object_id"),
        ("object_id", OBJECT_ID, "object_id", "object_id"),
        ("mi_res_id", RESOURCE_ID, "resource_id", "mi_res_id"),
    ],
)
def test_2019_selectors_are_left_to_resolve_as_imds_ones(
    param: str, value: str, kind: str, imds_param: str
) -> None:
    """They mean IMDS's object_id and mi_res_id: the token flow resolves them (never to
    the default identity)."""
    version, wanted = parse_query(
        {"api-version": "2019-08-01", "resource": VAULT, param: value}, TENANT, DEFAULT_CLIENT
    )
    assert version is V2019
    assert isinstance(wanted, IdentityQuery)
    assert wanted.selector == Selector(kind, imds_param, value)
    assert wanted.key_for(OTHER_CLIENT) == TokenKey(TENANT, OTHER_CLIENT, VAULT + "/.default")


def test_principal_id_and_object_id_must_not_disagree() -> None:
    """Both mean IMDS's object_id: two different ids are refused, never one picked."""
    other = OBJECT_ID.replace("7e3a", "8f4b")
    err, body = rejects(
        {
            "api-version": "2019-08-01",
            "resource": VAULT,
            "principal_id": OBJECT_ID,
            "object_id": other,
        }
    )
    assert err.status == 400 and err.failure.label == "identity_ambiguous"
    assert "principal_id and object_id" in str(body["message"])
    _, same = parse_query(
        {
            "api-version": "2019-08-01",
            "resource": VAULT,
            "principal_id": OBJECT_ID,
            "object_id": OBJECT_ID.upper(),
        },
        TENANT,
        DEFAULT_CLIENT,
    )
    assert isinstance(same, IdentityQuery) and same.selector.kind == "object_id"


@pytest.mark.parametrize("selector", ["principal_id", "object_id", "mi_res_id"])
def test_malformed_2019_selectors_are_identity_not_found(selector: str) -> None:
    err, body = rejects({"api-version": "2019-08-01", "resource": VAULT, selector: "x"})
    assert err.status == 400
    assert set(body) == {"statusCode", "message"}
    assert str(body["message"]).startswith("Identity not found")


def test_no_identity_at_all_is_identity_not_found() -> None:
    err, body = rejects({"api-version": "2019-08-01", "resource": VAULT}, None)
    assert err.status == 400
    assert "Identity not found" in str(body["message"])


def test_token_failures_keep_their_status_and_retry_after() -> None:
    throttled = V2019.refusal(failure_for(EntraThrottled("slow down", retry_after=7)))
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "7"
    down = V2017.refusal(failure_for(EntraUnavailable("Entra ID unreachable", retry_after=2)))
    assert down.status == 503 and down.headers["Retry-After"] == "2"
    assert json.loads(down.body)["ExceptionMessage"] == "Entra ID unreachable"
    rejected = V2019.refusal(
        failure_for(
            EntraRejected("invalid_resource", "AADSTS500011: no such resource", "500011", 400)
        )
    )
    assert rejected.status == 400
    assert "AADSTS500011" in json.loads(rejected.body)["message"]


def test_secret_from_the_environment_is_compared_exactly() -> None:
    secret = IdentityHeaderSecret("pod-uid-1234")
    assert secret.configured
    assert secret.matches("pod-uid-1234")
    assert not secret.matches("pod-uid-123")
    assert not secret.matches("pod-uid-12345")
    assert not secret.matches("")
    assert not secret.matches(None)
    assert not secret.matches("pöd-uid-1234")  # non-ASCII must not raise


def test_no_secret_refuses_everything() -> None:
    secret = IdentityHeaderSecret(None)
    assert not secret.configured
    assert not secret.matches("")
    assert not secret.matches("anything")
    assert not IdentityHeaderSecret("   ").configured


def test_secret_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "identity-header"
    path.write_text("first\n")
    now = [0.0]
    secret = IdentityHeaderSecret("from-env", str(path), clock=lambda: now[0])
    assert secret.matches("first")  # the file wins over the environment; newline stripped
    assert not secret.matches("from-env")
    path.write_text("second-value\n")
    assert secret.matches("first"), "looked at no more than once a second"
    now[0] += 1.0
    assert secret.matches("second-value")
    path.unlink()
    now[0] += 1.0
    assert not secret.configured and not secret.matches("second-value")
    path.write_text("third\n")
    now[0] += 1.0
    assert secret.matches("third")


def test_secret_file_missing_at_start_refuses(tmp_path: Path) -> None:
    secret = IdentityHeaderSecret(None, str(tmp_path / "absent"))
    assert not secret.configured
    assert not secret.matches("")
