"""The token endpoint of the proxy's server, in process: every IMDS error row, Entra's
failures, rotation of the service-account token, forwarding and readiness. The process
tier (tests/test_e2e_token_endpoint.py) keeps a token and what a real process logs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import FakeImds, free_port
from proxy.imds import TOKEN_PATH
from tests.support.clock import FakeClock
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.in_process import InProcessProxy, running_in_process
from tests.support.jwt_claims import claims

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
UNKNOWN_CLIENT = "3d1f4c2b-1111-4a4a-8b8b-9c9c9c9c9c9c"


def get(url: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    return requests.get(url, headers=META if headers is None else headers, timeout=20, **kw)


def error_of(response: requests.Response) -> tuple[int, str, str]:
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"}
    return response.status_code, body["error"], body["error_description"]


# -- success ------------------------------------------------------------------------------


def test_expires_in_counts_down_while_the_token_is_cached(fake_entra: FakeEntra) -> None:
    clock = FakeClock(time.time())
    with running_in_process(fake_entra.env(), clock=clock) as proxy:
        first = get(proxy.url(ARM)).json()
        clock.advance(1.1)
        second = get(proxy.url(ARM)).json()
    assert second["access_token"] == first["access_token"]
    assert second["expires_on"] == first["expires_on"]
    assert int(second["expires_in"]) < int(first["expires_in"])
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_trailing_slash_and_encoded_query(proxy: InProcessProxy) -> None:
    url = (
        proxy.base + TOKEN_PATH + "/?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net"
    )
    response = get(url)
    assert response.status_code == 200
    assert response.json()["resource"] == "https://vault.azure.net"


def test_absolute_form_requests_through_http_proxy(proxy: InProcessProxy) -> None:
    """Clients with a hard-coded IMDS address can use the proxy as their HTTP_PROXY: they
    send absolute-form requests, routed by path; nothing leaves loopback."""
    metadata_ip = "169.254.169.254"  # METADATA_IP, reached here only through HTTP_PROXY
    url = f"http://{metadata_ip}{TOKEN_PATH}?api-version=2018-02-01&resource={ARM}"
    response = requests.get(url, headers=META, proxies={"http": proxy.base}, timeout=10)
    assert response.status_code == 200
    assert response.json()["resource"] == ARM


def test_client_id_selects_the_identity(proxy: InProcessProxy) -> None:
    body = get(proxy.url(ARM, client_id=SECOND_CLIENT_ID)).json()
    assert body["client_id"] == SECOND_CLIENT_ID
    assert claims(body["access_token"])["appid"] == SECOND_CLIENT_ID


# -- IMDS request errors ------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Metadata": "false"}, {"Metadata": "1"}])
def test_metadata_header_is_required(proxy: InProcessProxy, headers: dict[str, str]) -> None:
    assert error_of(get(proxy.url(ARM), headers=headers)) == (
        400,
        "invalid_request",
        "Required metadata header not specified",
    )


def test_forwarded_requests_are_refused(proxy: InProcessProxy) -> None:
    status, error, _ = error_of(get(proxy.url(ARM), headers={**META, "X-Forwarded-For": "1.2.3.4"}))
    assert (status, error) == (400, "invalid_request")


def test_missing_api_version(proxy: InProcessProxy) -> None:
    status, _, description = error_of(get(proxy.base + TOKEN_PATH + "?resource=" + ARM))
    assert status == 400 and "api-version" in description


def test_missing_resource(proxy: InProcessProxy) -> None:
    status, _, description = error_of(get(proxy.url()))
    assert status == 400 and "resource" in description


def test_old_sdk_probe_without_query_never_gets_200(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    """azure-identity 1.5 caches a 200 to its bare probe as the token."""
    response = get(proxy.base + TOKEN_PATH)
    assert response.status_code == 400
    assert fake_entra.stats()["token_requests"]["total"] == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_other_methods_are_405(proxy: InProcessProxy, method: str) -> None:
    response = requests.request(method, proxy.url(ARM), headers=META, timeout=10)
    assert response.status_code == 405


def test_unknown_path_is_404_json(proxy: InProcessProxy) -> None:
    status, _, _ = error_of(get(proxy.base + "/nothing-here"))
    assert status == 404


# -- Entra ID failures --------------------------------------------------------------------


def test_unknown_client_is_400_identity_not_found_with_aadsts(proxy: InProcessProxy) -> None:
    response = get(proxy.url(ARM, client_id=UNKNOWN_CLIENT))
    status, error, description = error_of(response)
    assert (status, error, response.reason) == (400, "invalid_request", "Bad Request")
    assert description.startswith("Identity not found: AADSTS700016")


def test_no_matching_federated_credential(proxy: InProcessProxy, fake_entra: FakeEntra) -> None:
    fake_entra.set_federated_credentials(
        [fake_entra.matching_credential(subject="system:serviceaccount:other:sa")]
    )
    response = get(proxy.url(ARM))
    status, error, description = error_of(response)
    # Right after start it may be a credential propagating: transient, so SDKs retry.
    assert (status, error) == (503, "temporarily_unavailable")
    assert response.headers["Retry-After"] == "5"
    assert "not effective yet" in description and "AADSTS700213" in description


def test_unknown_resource_is_invalid_resource(proxy: InProcessProxy, fake_entra: FakeEntra) -> None:
    fake_entra.behave(unknown_resources=["https://nope.example"])
    status, error, description = error_of(get(proxy.url("https://nope.example")))
    assert (status, error) == (400, "invalid_resource")
    assert "AADSTS500011" in description


def test_rejection_is_remembered_briefly(proxy: InProcessProxy, fake_entra: FakeEntra) -> None:
    for _ in range(5):
        assert get(proxy.url(ARM, client_id=UNKNOWN_CLIENT)).status_code == 400
    assert fake_entra.stats()["token_requests"]["total"] == 2, "the call and its one retry"


def test_throttling_is_429_with_retry_after_and_no_extra_calls(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    fake_entra.behave(mode="throttle", retry_after=30)
    first = get(proxy.url(ARM))
    assert first.status_code == 429
    assert 1 <= int(first.headers["Retry-After"]) <= 30
    fake_entra.behave(mode="normal")  # Entra would answer now, but Retry-After still holds
    for _ in range(10):
        again = get(proxy.url(ARM))
        assert again.status_code == 429
        assert 1 <= int(again.headers["Retry-After"]) <= 30
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_entra_5xx_is_503(proxy: InProcessProxy, fake_entra: FakeEntra) -> None:
    fake_entra.behave(mode="fail", status=500)
    status, _, _ = error_of(get(proxy.url(ARM)))
    assert status == 503


def test_entra_timeout_is_bounded(fake_entra: FakeEntra, tmp_path: Path) -> None:
    fake_entra.behave(delay=5)
    with running_in_process(fake_entra.env(), tmp_path, ["--entra-timeout=1"]) as proxy:
        started = time.monotonic()
        status, _, description = error_of(get(proxy.url(ARM)))
        assert status == 503 and "timed out" in description
        assert time.monotonic() - started < 4.5


def test_entra_unreachable_is_503(fake_entra: FakeEntra, tmp_path: Path) -> None:
    env = {**fake_entra.env(), "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{free_port()}/"}
    with running_in_process(env, tmp_path) as proxy:
        status, error, description = error_of(get(proxy.url(ARM)))
        assert (status, error) == (503, "temporarily_unavailable")
        assert "connection failed" in description


# -- the service-account token ------------------------------------------------------------


def test_rotated_token_file_is_used_for_the_next_exchange(
    fake_entra: FakeEntra, fake_imds: FakeImds, tmp_path: Path
) -> None:
    # No propagation window: a rejection is final at once, and holds no identity.
    with running_in_process(
        fake_entra.env(), tmp_path, ["--propagation-window=0"], imds_upstream=fake_imds.url
    ) as proxy:
        assert get(proxy.url(ARM)).status_code == 200
        try:
            fake_entra.rotate(subject="system:serviceaccount:default:rotated")
            # A new resource forces a new exchange; Entra sees the new subject, refuses it.
            status, _, description = error_of(get(proxy.url("https://vault.azure.net")))
            assert status == 400 and "AADSTS700213" in description
            assert "sub=system:serviceaccount:default:rotated" in description
            # The still-valid token for the first resource is untouched by the rotation.
            assert get(proxy.url(ARM)).status_code == 200
        finally:
            fake_entra.rotate(subject=fake_entra.info.service_account_subject)
        assert get(proxy.url("https://storage.azure.com")).status_code == 200


def test_missing_or_expired_token_file(fake_entra: FakeEntra, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    env = {**fake_entra.env(), "AZURE_FEDERATED_TOKEN_FILE": str(token_file)}
    with running_in_process(env, tmp_path) as proxy:
        status, _, description = error_of(get(proxy.url(ARM)))
        assert status == 503 and "does not exist" in description
        ready = requests.get(proxy.base + "/readyz", timeout=5)
        assert ready.status_code == 503 and "does not exist" in ready.json()["reasons"][0]

        token_file.write_text(fake_entra.mint_assertion(lifetime=-60))
        status, _, description = error_of(get(proxy.url(ARM)))
        assert status == 503 and "expired" in description
        assert fake_entra.stats()["token_requests"]["total"] == 0

        token_file.write_text(fake_entra.mint_assertion())
        assert get(proxy.url(ARM)).status_code == 200
        assert requests.get(proxy.base + "/readyz", timeout=5).text == "ok"


# -- forwarding ---------------------------------------------------------------------------


def test_other_metadata_paths_are_forwarded(proxy: InProcessProxy, fake_imds: FakeImds) -> None:
    response = get(proxy.base + "/metadata/instance?api-version=2021-02-01&format=json")
    assert response.status_code == 200
    assert response.headers["X-Fake-Imds"] == "1"
    seen = response.json()["seen"]
    assert seen["path"] == "/metadata/instance?api-version=2021-02-01&format=json"
    assert seen["headers"]["Metadata"] == "true"

    posted = requests.post(
        proxy.base + "/metadata/scheduledevents?api-version=2020-07-01",
        headers=META,
        data=b'{"StartRequests": []}',
        timeout=10,
    )
    assert posted.json()["seen"]["method"] == "POST"
    assert posted.json()["seen"]["body"] == '{"StartRequests": []}'


def test_unreachable_imds_is_502(fake_entra: FakeEntra, tmp_path: Path) -> None:
    upstream = f"http://127.0.0.1:{free_port()}"
    with running_in_process(fake_entra.env(), tmp_path, imds_upstream=upstream) as proxy:
        status, error, _ = error_of(get(proxy.base + "/metadata/instance?api-version=2021-02-01"))
        assert (status, error) == (502, "bad_gateway")
