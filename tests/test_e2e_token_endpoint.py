"""The token endpoint of the real proxy process: a token, and what the process logs.

Every other case of the endpoint (IMDS error rows, Entra's failures, rotation, forwarding,
readiness) runs against the same server in process: tests/inprocess/test_token_endpoint.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.imds_contract import TOKEN_FIELDS
from tests.support.jwt_claims import claims

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
UNKNOWN_CLIENT = "3d1f4c2b-1111-4a4a-8b8b-9c9c9c9c9c9c"


def get(url: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    return requests.get(url, headers=META if headers is None else headers, timeout=20, **kw)


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
