"""Hostile input against the proxy's server, in process: malformed requests that carry
secrets, and Entra ID answering garbage, never reach a caller or a log; undecodable query
values are refused. Load, hangs, signals and file limits: tests/test_e2e_resilience.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from harness.fake_entra import FakeEntra
from tests.support.in_process import running_in_process

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}


# -- nothing from a request reaches a log ----------------------------------------------

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtc3ViamVjdCJ9.c2lnbmF0dXJlLXZhbHVl"
SECRET = "app-service-secret-0123456789"


def raw_request(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


MALFORMED = [
    b"GET /metadata/identity/oauth2/token?resource=" + JWT.encode() + b" junk HTTP/1.1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\nX-Token: " + JWT.encode() + b"\x01\r\n\r\n",
    b"GET /msi/token?resource=x HTTP/1.1\r\nX-IDENTITY-HEADER: "
    + SECRET.encode()
    + b"\x7f\r\n\r\n",
    b"GET /metadata/identity/oauth2/token?resource=" + JWT.encode() + b"\r\n\r\n",  # HTTP/0.9
    b"GET /metadata/identity/oauth2/token?resource=x\rMetadata: " + JWT.encode() + b"\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\n\r\n",
]


def test_malformed_requests_are_answered_as_json_and_never_echo_or_log_secrets(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = {**fake_entra.env(), "IDENTITY_HEADER": SECRET}
    with running_in_process(env, tmp_path) as proxy:
        for payload in MALFORMED:
            answer = raw_request(proxy.port, payload)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b" 400 " in head.split(b"\r\n")[0], answer[:200]
            assert JWT.encode() not in answer and SECRET.encode() not in answer
            assert body.startswith(b'{"error": "invalid_request"'), body[:200]
        assert requests.get(proxy.url(ARM), headers=META, timeout=10).status_code == 200
        proxy.stop()
    text = proxy.log_text()
    assert JWT not in text and SECRET not in text
    assert JWT.split(".")[1] not in text
    refused = [line for line in proxy.logs() if line["event"] == "malformed request refused"]
    assert 1 <= len(refused) <= 2, "logged, at a bounded rate"


# -- Entra's answers are bounded and judged


@pytest.mark.parametrize("mode", ["html", "truncated", "huge"])
def test_entra_garbage_is_transient_bounded_and_never_passed_on(
    fake_entra: FakeEntra, tmp_path: Path, mode: str
) -> None:
    fake_entra.behave(mode=mode)
    with running_in_process(fake_entra.env(), tmp_path) as proxy:
        answer = requests.get(proxy.url(ARM), headers=META, timeout=20)
        assert answer.status_code == 503 and "Retry-After" in answer.headers
        assert len(answer.content) < 2048
        status = requests.get(proxy.base + "/status", timeout=5)
        assert len(status.content) < 4096
        proxy.stop()
    assert len(proxy.log_text().encode()) < 64 * 1024


def test_undecodable_query_values_are_refused_not_guessed(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    with running_in_process(fake_entra.env(), tmp_path) as proxy:
        answer = requests.get(
            proxy.base + "/metadata/identity/oauth2/token?api-version=2018-02-01"
            "&resource=https://X%ff%fe/",
            headers=META,
            timeout=10,
        )
        assert answer.status_code == 400 and "UTF-8" in answer.json()["error_description"]
    assert fake_entra.stats()["token_requests"]["total"] == 0
