"""The token endpoint of the real proxy process: every IMDS error row, Entra's failures,
rotation of the service-account token, forwarding, readiness, and what the logs hold."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy.imds import TOKEN_PATH
from tests.conftest import SECOND_CLIENT_ID
from tests.fake_entra import FakeEntra
from tests.imds_contract import TOKEN_FIELDS
from tests.jwt_claims import claims
from tests.proxy_process import FakeImds, ProxyProcess, free_port, running_proxy

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


def test_token_body_is_imds_shaped(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    before = time.time()
    response = get(proxy.url(ARM))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == list(TOKEN_FIELDS)
    assert all(isinstance(v, str) for v in body.values())
    assert body["resource"] == ARM
    assert body["client_id"] == fake_entra.info.client_id
    assert body["token_type"] == "Bearer"
    issued = claims(body["access_token"])
    assert issued["aud"] == ARM and issued["appid"] == fake_entra.info.client_id
    assert abs(int(body["expires_on"]) - issued["exp"]) <= 2
    assert 3500 <= int(body["expires_in"]) <= int(body["expires_on"]) - before + 1


def test_expires_in_counts_down_while_the_token_is_cached(
    proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    first = get(proxy.url(ARM)).json()
    time.sleep(1.1)
    second = get(proxy.url(ARM)).json()
    assert second["access_token"] == first["access_token"]
    assert second["expires_on"] == first["expires_on"]
    assert int(second["expires_in"]) < int(first["expires_in"])
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_trailing_slash_and_encoded_query(proxy: ProxyProcess) -> None:
    url = (
        proxy.base + TOKEN_PATH + "/?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net"
    )
    response = get(url)
    assert response.status_code == 200
    assert response.json()["resource"] == "https://vault.azure.net"


def test_absolute_form_requests_through_http_proxy(proxy: ProxyProcess) -> None:
    """Clients with a hard-coded IMDS address can use the proxy as their HTTP_PROXY: they
    send absolute-form requests, routed by path; nothing leaves loopback."""
    metadata_ip = "169.254.169.254"  # METADATA_IP, reached here only through HTTP_PROXY
    url = f"http://{metadata_ip}{TOKEN_PATH}?api-version=2018-02-01&resource={ARM}"
    response = requests.get(url, headers=META, proxies={"http": proxy.base}, timeout=10)
    assert response.status_code == 200
    assert response.json()["resource"] == ARM


def test_client_id_selects_the_identity(proxy: ProxyProcess) -> None:
    body = get(proxy.url(ARM, client_id=SECOND_CLIENT_ID)).json()
    assert body["client_id"] == SECOND_CLIENT_ID
    assert claims(body["access_token"])["appid"] == SECOND_CLIENT_ID


# -- IMDS request errors ------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Metadata": "false"}, {"Metadata": "1"}])
def test_metadata_header_is_required(proxy: ProxyProcess, headers: dict[str, str]) -> None:
    assert error_of(get(proxy.url(ARM), headers=headers)) == (
        400,
        "invalid_request",
        "Required metadata header not specified",
    )


def test_forwarded_requests_are_refused(proxy: ProxyProcess) -> None:
    status, error, _ = error_of(get(proxy.url(ARM), headers={**META, "X-Forwarded-For": "1.2.3.4"}))
    assert (status, error) == (400, "invalid_request")


def test_missing_api_version(proxy: ProxyProcess) -> None:
    status, _, description = error_of(get(proxy.base + TOKEN_PATH + "?resource=" + ARM))
    assert status == 400 and "api-version" in description


def test_missing_resource(proxy: ProxyProcess) -> None:
    status, _, description = error_of(get(proxy.url()))
    assert status == 400 and "resource" in description


def test_old_sdk_probe_without_query_never_gets_200(
    proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    """azure-identity 1.5 caches a 200 to its bare probe as the token."""
    response = get(proxy.base + TOKEN_PATH)
    assert response.status_code == 400
    assert fake_entra.stats()["token_requests"]["total"] == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_other_methods_are_405(proxy: ProxyProcess, method: str) -> None:
    response = requests.request(method, proxy.url(ARM), headers=META, timeout=10)
    assert response.status_code == 405


def test_unknown_path_is_404_json(proxy: ProxyProcess) -> None:
    status, _, _ = error_of(get(proxy.base + "/nothing-here"))
    assert status == 404


# -- Entra ID failures --------------------------------------------------------------------


def test_unknown_client_is_400_identity_not_found_with_aadsts(proxy: ProxyProcess) -> None:
    response = get(proxy.url(ARM, client_id=UNKNOWN_CLIENT))
    status, error, description = error_of(response)
    assert (status, error, response.reason) == (400, "invalid_request", "Bad Request")
    assert description.startswith("Identity not found: AADSTS700016")


def test_no_matching_federated_credential(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    fake_entra.set_federated_credentials(
        [fake_entra.matching_credential(subject="system:serviceaccount:other:sa")]
    )
    response = get(proxy.url(ARM))
    status, error, description = error_of(response)
    # Right after start it may be a credential propagating: transient, so SDKs retry.
    assert (status, error) == (503, "temporarily_unavailable")
    assert response.headers["Retry-After"] == "5"
    assert "not effective yet" in description and "AADSTS700213" in description


def test_unknown_resource_is_invalid_resource(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    fake_entra.behave(unknown_resources=["https://nope.example"])
    status, error, description = error_of(get(proxy.url("https://nope.example")))
    assert (status, error) == (400, "invalid_resource")
    assert "AADSTS500011" in description


def test_rejection_is_remembered_briefly(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    for _ in range(5):
        assert get(proxy.url(ARM, client_id=UNKNOWN_CLIENT)).status_code == 400
    assert fake_entra.stats()["token_requests"]["total"] == 2, "the call and its one retry"


def test_throttling_is_429_with_retry_after_and_no_extra_calls(
    proxy: ProxyProcess, fake_entra: FakeEntra
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


def test_entra_5xx_is_503(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    fake_entra.behave(mode="fail", status=500)
    status, _, _ = error_of(get(proxy.url(ARM)))
    assert status == 503


def test_entra_timeout_is_bounded(fake_entra: FakeEntra, tmp_path: Path) -> None:
    fake_entra.behave(delay=5)
    with running_proxy(fake_entra.env(), tmp_path, ["--entra-timeout=1"]) as proxy:
        started = time.monotonic()
        status, _, description = error_of(get(proxy.url(ARM)))
        assert status == 503 and "timed out" in description
        assert time.monotonic() - started < 4.5


def test_entra_unreachable_is_503(fake_entra: FakeEntra, tmp_path: Path) -> None:
    env = {**fake_entra.env(), "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{free_port()}/"}
    with running_proxy(env, tmp_path) as proxy:
        status, error, description = error_of(get(proxy.url(ARM)))
        assert (status, error) == (503, "temporarily_unavailable")
        assert "connection failed" in description


# -- the service-account token ------------------------------------------------------------


def test_rotated_token_file_is_used_for_the_next_exchange(
    fake_entra: FakeEntra, fake_imds: FakeImds, tmp_path: Path
) -> None:
    # No propagation window: a rejection is final at once, and holds no identity.
    with running_proxy(
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
    with running_proxy(env, tmp_path) as proxy:
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


def test_other_metadata_paths_are_forwarded(proxy: ProxyProcess, fake_imds: FakeImds) -> None:
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
    with running_proxy(fake_entra.env(), tmp_path, imds_upstream=upstream) as proxy:
        status, error, _ = error_of(get(proxy.base + "/metadata/instance?api-version=2021-02-01"))
        assert (status, error) == (502, "bad_gateway")


# -- logs ---------------------------------------------------------------------------------


def test_logs_tell_the_story_and_hold_no_secret(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    token = get(proxy.url(ARM)).json()["access_token"]
    get(proxy.url(ARM))
    get(proxy.url(ARM, client_id=UNKNOWN_CLIENT))
    requests.get(proxy.base + "/readyz", timeout=5)
    assertion = Path(fake_entra.info.token_file).read_text().strip()
    proxy.stop()

    text = proxy.log_text()
    for secret in (token, assertion, token.split(".")[1], assertion.split(".")[1]):
        assert secret not in text
    assert "eyJ" not in text
    lines = proxy.logs()  # every line parses as JSON
    events = [line["event"] for line in lines]
    for expected in (
        "starting the proxy server",
        "received token request",
        "successfully acquired token",
        "token exchange failed",
        "received readyz request",
    ):
        assert expected in events
    start = next(line for line in lines if line["event"] == "starting the proxy server")
    assert start["port"] == proxy.port and "userAgent" in start
    requests_logged = [line for line in lines if line["event"] == "received token request"]
    assert [line["cache"] for line in requests_logged] == ["miss", "hit", "miss"]
    assert requests_logged[0]["client_id"] == fake_entra.info.client_id
    failed = next(line for line in lines if line["event"] == "token exchange failed")
    assert failed["aadsts"] == "700016"
