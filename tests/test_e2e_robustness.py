"""Bad input and floods against the real process: clear errors, no crash, bounded memory."""

from __future__ import annotations

import random
import socket
import string
import urllib.parse
from pathlib import Path

import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy
from proxy.imds import TOKEN_PATH
from tests.support.metrics_text import sample

META = {"Metadata": "true"}


def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are (no client library cleans them up) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_malformed_requests_get_json_errors_and_the_proxy_stays_up(proxy: ProxyProcess) -> None:
    path = TOKEN_PATH + "?api-version=2018-02-01&resource="
    cases = [
        path + "%ZZ",  # invalid percent-encoding (kept literally, as yarl decodes)
        path + "%00%01",  # control characters
        path + "%C3%28",  # invalid UTF-8
        path + "x" * 3000,  # too long a resource
        path + "https://a&resource=https://b",  # repeated parameter
        TOKEN_PATH + "?api-version=2018-02-01&resource=https://a&client_id=not-a-guid",
        TOKEN_PATH + "?api-version=9999-99-99x&resource=https://a",
        TOKEN_PATH + "?" + "&".join(f"p{i}=v" for i in range(500)),
    ]
    for target in cases:
        answer = raw_request(
            proxy.port,
            f"GET {target} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        status = int(answer.split(b" ", 2)[1])
        body = answer.split(b"\r\n\r\n", 1)[1]
        # Lenient decoding may leave a resource Entra would judge; otherwise a JSON 4xx.
        assert status == 200 or (400 <= status < 500 and b'"error"' in body), (target, answer)
    garbage = raw_request(proxy.port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
    # Not HTTP at all (here: a TLS hello): aiohttp's own 400, and the connection is closed.
    assert garbage == b"" or garbage.split(b" ", 2)[1] == b"400"
    assert requests.get(proxy.base + "/healthz", timeout=5).text == "ok"
    assert (
        requests.get(
            proxy.url("https://management.azure.com/"), headers=META, timeout=10
        ).status_code
        == 200
    )


def test_random_queries_never_crash_it(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    rng = random.Random(20261129)
    alphabet = string.printable + "éß中\u2028"
    session = requests.Session()
    for _ in range(300):
        params = {
            rng.choice(["api-version", "resource", "client_id", "object_id", "x"]): "".join(
                rng.choice(alphabet) for _ in range(rng.randrange(0, 40))
            )
            for _ in range(rng.randrange(0, 5))
        }
        query = urllib.parse.urlencode(params)
        response = session.get(proxy.base + TOKEN_PATH + "?" + query, headers=META, timeout=10)
        assert response.status_code in (200, 400), (query, response.text[:300])
        assert "error" in response.json() or "access_token" in response.json()
    metrics = proxy.metrics()
    for code in ("500", "502", "503"):
        assert sample(metrics, "imds_proxy_requests_total", route="token", code=code) == 0


def test_a_flood_of_distinct_resources_stays_bounded(fake_entra: FakeEntra, tmp_path: Path) -> None:
    """Each resource is a cache entry and a remembered query; both are capped (the
    new-token limit is lifted: the caps, not it, are what this checks)."""
    unlimited = ["--new-resource-rate=100000", "--new-resource-burst=100000"]
    with running_proxy(fake_entra.env(), tmp_path, ["--cache-max-entries=50", *unlimited]) as proxy:
        session = requests.Session()
        for i in range(300):
            url = proxy.url(f"https://app-{i}.example")
            assert session.get(url, headers=META, timeout=10).status_code == 200
        settled = rss_kib(proxy.proc.pid) if proxy.proc else 0
        for i in range(300, 1300):
            session.get(proxy.url(f"https://app-{i}.example/x y"), headers=META, timeout=10)
        for i in range(300, 600):
            assert (
                session.get(
                    proxy.url(f"https://app-{i}.example"), headers=META, timeout=10
                ).status_code
                == 200
            )
        metrics = proxy.metrics()
        assert sample(metrics, "imds_proxy_cache_entries") == 50
        assert sample(metrics, "imds_proxy_cache_evictions_total") == 550
        assert proxy.proc is not None
        assert rss_kib(proxy.proc.pid) - settled < 20 * 1024
    assert fake_entra.stats()["token_requests"]["total"] == 600
