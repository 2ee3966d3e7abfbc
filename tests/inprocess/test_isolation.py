"""Identity isolation against the proxy's server, in process: no spelling of an identity
request reaches the real IMDS (which would answer with the node's own identity), forwarding
is an allowlist, and a dead upstream is answered fast. The process tier
(tests/test_e2e_isolation.py) checks every spelling against the real process too."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import FakeImds, free_port
from tests.support.identity_paths import (
    QUERY,
    TOKEN_SPELLINGS,
    judged_by_proxy,
    misjudged_spellings,
    raw_get,
)
from tests.support.in_process import InProcessProxy, running_in_process

META = {"Metadata": "true"}


def test_no_spelling_of_an_identity_path_reaches_the_upstream(
    proxy: InProcessProxy, fake_imds: FakeImds
) -> None:
    """One proxy, every spelling: a token where it means the token path, else a JSON 4xx."""
    assert misjudged_spellings(proxy.port) == []
    assert fake_imds.requests == []


def test_absolute_form_spellings_are_judged_the_same(
    proxy: InProcessProxy, fake_imds: FakeImds
) -> None:
    """Clients using the proxy as HTTP_PROXY send absolute-form targets."""
    for path in ("/metadata//identity/oauth2/token", "/metadata/identity/getplatformmetadata"):
        target = "http://169.254.169.254" + path + QUERY  # METADATA_IP via HTTP_PROXY only
        status, headers, body = raw_get("127.0.0.1", proxy.port, target, META)
        judged_by_proxy(status, headers, body)
    assert fake_imds.requests == []


def test_getplatformmetadata_is_404_so_msal_net_stays_on_imds_v1(proxy: InProcessProxy) -> None:
    status, headers, body = raw_get(
        "127.0.0.1", proxy.port, "/metadata/identity/getplatformmetadata?cred-api-version=2.0"
    )
    assert status == 404
    assert judged_by_proxy(status, headers, body)["error"] == "not_found"


def test_allowlisted_paths_are_forwarded_canonically(
    proxy: InProcessProxy, fake_imds: FakeImds
) -> None:
    query = "?api-version=2021-02-01&format=json"
    for target in (
        "/metadata/instance" + query,
        "/metadata//instance/./compute/../compute" + query,
        "/Metadata/Instance/compute;x" + query,
        "/metadata/attested/document" + query,
        "/metadata/loadbalancer" + query,
        "/metadata/scheduledevents" + query,
        "/metadata/versions",
    ):
        status, _, _ = raw_get("127.0.0.1", proxy.port, target, META)
        assert status == 200, target
    assert [seen["path"] for seen in fake_imds.requests] == [
        "/metadata/instance" + query,
        "/metadata/instance/compute" + query,
        "/Metadata/Instance/compute" + query,
        "/metadata/attested/document" + query,
        "/metadata/loadbalancer" + query,
        "/metadata/scheduledevents" + query,
        "/metadata/versions",
    ]
    assert all(seen["headers"]["Metadata"] == "true" for seen in fake_imds.requests)


@pytest.mark.parametrize(
    "target",
    [
        "/metadata/other",
        "/metadata",
        "/metadata/",
        "/metadata/instancex",
        "/metadata/instance/compute%20x",
        "/metadata/instance/compute./x",
        "/",
        "/favicon.ico",
    ],
)
def test_paths_outside_the_allowlist_are_not_forwarded(
    proxy: InProcessProxy, fake_imds: FakeImds, target: str
) -> None:
    status, headers, body = raw_get("127.0.0.1", proxy.port, target, META)
    judged_by_proxy(status, headers, body)
    assert status in (400, 404)
    assert fake_imds.requests == []


def test_x_forwarded_for_is_refused_on_forwarded_paths(
    proxy: InProcessProxy, fake_imds: FakeImds
) -> None:
    headers = {**META, "X-Forwarded-For": "10.1.2.3"}
    status, reply, body = raw_get("127.0.0.1", proxy.port, "/metadata/instance", headers)
    assert status == 400
    assert judged_by_proxy(status, reply, body)["error"] == "invalid_request"
    assert fake_imds.requests == []


def test_forwarding_off_answers_at_once(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with running_in_process(fake_entra.env(), tmp_path, ["--imds-upstream=none"]) as proxy:
        status, headers, body = raw_get("127.0.0.1", proxy.port, "/metadata/instance", META)
        assert status == 404
        assert "--imds-upstream=none" in judged_by_proxy(status, headers, body)["error_description"]
        status, _, _ = raw_get("127.0.0.1", proxy.port, TOKEN_SPELLINGS[0] + QUERY, META)
        assert status == 200


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An upstream that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def timed_get(port: int, target: str) -> tuple[float, int, dict[str, str], bytes]:
    started = time.monotonic()
    status, headers, body = raw_get("127.0.0.1", port, target, META, timeout=10)
    return time.monotonic() - started, status, headers, body


def test_a_silent_upstream_is_answered_within_the_probe_timeouts(
    fake_entra: FakeEntra, tmp_path: Path, black_hole: str
) -> None:
    with running_in_process(fake_entra.env(), tmp_path, imds_upstream=black_hole) as proxy:
        first, status, headers, body = timed_get(proxy.port, "/metadata/instance")
        assert status == 504 and first < 3.0, (status, first)
        assert judged_by_error(status, headers, body) == "gateway_timeout"
        second, status, headers, _ = timed_get(proxy.port, "/metadata/instance")
        assert status == 504 and second < 1.0, (status, second)
        assert 1 <= int(headers["retry-after"]) <= 5


def test_a_refusing_upstream_is_answered_at_once(fake_entra: FakeEntra, tmp_path: Path) -> None:
    upstream = f"http://127.0.0.1:{free_port()}"
    with running_in_process(fake_entra.env(), tmp_path, imds_upstream=upstream) as proxy:
        for _ in range(2):
            took, status, headers, body = timed_get(proxy.port, "/metadata/instance")
            assert status == 502 and took < 0.2, (status, took)
            assert judged_by_error(status, headers, body) == "bad_gateway"


def judged_by_error(status: int, headers: dict[str, str], body: bytes) -> str:
    """The `error` of a JSON 5xx answered by the proxy itself."""
    assert 500 <= status < 600 and headers["content-type"].startswith("application/json")
    error: str = json.loads(body)["error"]
    return error
