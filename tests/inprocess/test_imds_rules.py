"""The rules real callers depend on (IMDS-COMPAT.md section 6), each against the proxy's
server in process."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from harness.fake_entra import FakeEntra
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.imds_contract import TOKEN_FIELDS
from tests.support.in_process import InProcessProxy, running_in_process
from tests.support.jwt_claims import claims

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
UNKNOWN_CLIENT = "3d1f4c2b-1111-4a4a-8b8b-9c9c9c9c9c9c"
UNKNOWN_OBJECT_ID = "7e3a1c55-0c4f-4c41-9a27-5d0c2b7f1e99"
RESOURCE_ID = (
    "/subscriptions/1d2c3b4a-0000-4000-8000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/unknown"
)


def get(url: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    return requests.get(url, headers=META if headers is None else headers, timeout=20, **kw)


def assert_well_formed_token(response: requests.Response, resource: str) -> dict[str, Any]:
    """Each field in the form the clients that parse it need."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert list(body) == list(TOKEN_FIELDS)
    assert all(isinstance(value, str) for value in body.values())
    assert re.fullmatch(r"[0-9]+", body["expires_on"]), "integer epoch seconds"
    assert re.fullmatch(r"[0-9]+", body["expires_in"]), "an integer, never empty"
    assert re.fullmatch(r"[0-9]+", body["not_before"])
    assert re.fullmatch(r"[0-9]+", body["ext_expires_in"])
    assert body["token_type"] == "Bearer"
    assert body["resource"] == resource
    issued = claims(body["access_token"])
    assert isinstance(issued["exp"], int) and isinstance(issued["tid"], str) and issued["tid"]
    assert abs(int(body["expires_on"]) - issued["exp"]) <= 2
    expires_in = int(body["expires_in"])
    assert expires_in >= 600, "a token handed out has at least ten minutes left"
    assert abs(int(body["expires_on"]) - time.time() - expires_in) <= 2
    return body


def retry_after_of(response: requests.Response) -> int:
    value = response.headers["Retry-After"]
    assert re.fullmatch(r"[0-9]+", value), f"Retry-After {value!r} is not whole seconds"
    seconds = int(value)
    assert 1 <= seconds <= 60
    return seconds


# -- success ------------------------------------------------------------------------------


def test_success_json_is_compact_one_line_in_imds_order(proxy: InProcessProxy) -> None:
    for _ in range(2):  # the exchange, then the cached hit
        response = get(proxy.url(ARM))
        raw = response.content
        body = json.loads(raw)
        assert list(body) == list(TOKEN_FIELDS)
        assert raw == json.dumps(body, separators=(",", ":")).encode()
        assert b"\n" not in raw and b": " not in raw and b", " not in raw
        assert response.headers["Content-Type"].startswith("application/json")


def test_every_field_has_the_form_clients_parse(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    for query in ({}, {"client_id": SECOND_CLIENT_ID}, {"object_id": fake_entra.object_id()}):
        for resource in (ARM, "https://vault.azure.net"):
            assert_well_formed_token(get(proxy.url(resource, **query)), resource)  # miss
            assert_well_formed_token(get(proxy.url(resource, **query)), resource)  # hit


# -- what callers send ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "version", ["2018-02-01", "2019-08-01", "2019-11-01", "2021-02-01", "2023-07-01", "2025-04-07"]
)
def test_api_versions_from_2018_on_are_accepted(proxy: InProcessProxy, version: str) -> None:
    assert_well_formed_token(get(proxy.url(ARM, **{"api-version": version})), ARM)


@pytest.mark.parametrize(
    "resource",
    [
        "https://management.azure.com/",  # Java and Azure CLI send the trailing slash
        "https://management.azure.com",
        "https://ossrdbms-aad.database.windows.net",
        "api://5f0c7d2e-8b1a-4e6f-9c3d-2a7b8c9d0e1f/",
    ],
)
def test_unencoded_and_encoded_resources_with_or_without_trailing_slash(
    proxy: InProcessProxy, resource: str
) -> None:
    raw = assert_well_formed_token(get(proxy.url(resource)), resource)
    assert claims(raw["access_token"])["aud"] == resource
    encoded = quote(resource, safe="")
    again = assert_well_formed_token(get(proxy.url(encoded)), resource)
    assert again["access_token"] == raw["access_token"], "one token for both spellings"


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded; charset=utf-8", "application/json", "text/plain"],
)
def test_a_content_type_header_on_get_is_accepted(proxy: InProcessProxy, content_type: str) -> None:
    """ms-rest-nodeauth sends a form Content-Type on its GET."""
    response = get(proxy.url(ARM), headers={**META, "Content-Type": content_type})
    assert_well_formed_token(response, ARM)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"msi-res-id": RESOURCE_ID},  # Azure.Identity's probe
        {"object_id": UNKNOWN_OBJECT_ID},
        {"client_id": UNKNOWN_CLIENT},
        {"mi_res_id": "not-a-resource-id"},
    ],
)
def test_without_metadata_400_never_says_identity_not_found(
    proxy: InProcessProxy, fake_entra: FakeEntra, query: dict[str, str]
) -> None:
    """MSAL.NET's probe succeeds only on 400; Azure.Identity reads 'Identity not found' as
    'this identity is not assigned'."""
    for headers in ({}, {"Accept": "application/json"}, {"Metadata": "false"}):
        response = get(proxy.url(ARM, **query), headers=headers)
        assert response.status_code == 400
        assert "Identity not found" not in response.text
        assert response.json()["error_description"] == "Required metadata header not specified"
    assert fake_entra.stats()["token_requests"]["total"] == 0


# -- identity errors --------------------------------------------------------------------


@pytest.fixture
def proxy_without_default(fake_entra: FakeEntra, tmp_path: Path) -> Iterator[InProcessProxy]:
    env = {k: v for k, v in fake_entra.env().items() if k != "AZURE_CLIENT_ID"}
    with running_in_process(env, tmp_path) as process:
        yield process


def test_identity_errors_are_400_identity_not_found_never_404_or_410(
    proxy: InProcessProxy, proxy_without_default: InProcessProxy, fake_entra: FakeEntra
) -> None:
    cases = [
        proxy.url(ARM, client_id=UNKNOWN_CLIENT),
        proxy.url(ARM, object_id=UNKNOWN_OBJECT_ID),
        proxy.url(ARM, object_id="not-a-guid"),
        proxy.url(ARM, msi_res_id=RESOURCE_ID),
        proxy.url(ARM, mi_res_id="userAssignedIdentities/x"),
        proxy.url(ARM, **{"msi-res-id": RESOURCE_ID}),
        proxy.url(ARM, client_id="not-a-guid"),
        proxy_without_default.url(ARM),
        proxy_without_default.url(ARM, object_id=fake_entra.object_id()),
    ]
    for url in cases:
        for _ in range(2):  # the first answer and the remembered one
            response = get(url)
            assert (response.status_code, response.reason) == (400, "Bad Request"), url
            assert "Identity not found" in response.json()["error_description"], url


def test_an_identity_not_federated_with_the_pod_is_identity_not_found(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """Once the propagation window is over (here: none), the rejection is final."""
    fake_entra.set_federated_credentials([], client_id=SECOND_CLIENT_ID)
    with running_in_process(fake_entra.env(), tmp_path, ["--propagation-window=0"]) as proxy:
        response = get(proxy.url(ARM, client_id=SECOND_CLIENT_ID))
    assert response.status_code == 400
    assert response.json()["error_description"].startswith("Identity not found: AADSTS70021")


# -- transient failures -----------------------------------------------------------------


def test_transient_failures_are_never_400_and_retry_after_is_small(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """400 is final for adal, azidentity, MSAL and Java: every passing trouble is a 5xx or
    a 429, with whole seconds of Retry-After, at most 60."""
    token_file = tmp_path / "token"
    token_file.write_text(fake_entra.mint_assertion())
    env = {**fake_entra.env(), "AZURE_FEDERATED_TOKEN_FILE": str(token_file)}
    troubles: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"mode": "fail", "status": 500}, {}),
        ({"mode": "fail", "status": 503}, {}),
        ({"mode": "throttle", "retry_after": 3600}, {}),
        ({"delay": 3}, {}),
        ({"mode": "fail", "status": 502}, {"object_id": fake_entra.object_id()}),
        ({}, {"missing_token_file": "yes"}),
    ]
    with running_in_process(env, tmp_path, ["--entra-timeout=1"]) as proxy:
        for number, (behaviour, query) in enumerate(troubles):
            fake_entra.reset()
            fake_entra.behave(**behaviour)
            if query.pop("missing_token_file", None):
                token_file.unlink()
            url = proxy.url(f"https://resource-{number}.example", **query)
            for _ in range(3):  # the exchange, then the remembered failure
                response = get(url)
                assert response.status_code in (429, 503), (behaviour, response.text)
                assert "Identity not found" not in response.text
                retry_after_of(response)


def test_retry_after_is_at_most_60_while_entras_longer_one_is_honoured(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    fake_entra.behave(mode="throttle", retry_after=3600)
    assert retry_after_of(get(proxy.url(ARM))) == 60
    fake_entra.behave(mode="normal")  # Entra would answer, but asked to wait an hour
    for _ in range(5):
        response = get(proxy.url(ARM))
        assert response.status_code == 429 and retry_after_of(response) == 60
    assert fake_entra.stats()["token_requests"]["total"] == 1
