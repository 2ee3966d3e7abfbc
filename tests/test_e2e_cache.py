"""The token cache seen from outside: Entra ID is called once, whatever the callers do.

Token lifetimes (served while Entra is down, never once expired) are checked in process
on a fake clock: tests/inprocess/test_cache_lifetimes.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}


async def stampede(url: str, count: int) -> list[tuple[int, str]]:
    """`count` requests at once, each on its own connection."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[int, str]:
            async with session.get(url, headers=META) as response:
                body = await response.json(content_type=None)
                return response.status, body.get("access_token", "")

        return await asyncio.gather(*(one() for _ in range(count)))


def test_second_request_does_not_reach_entra(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    for _ in range(20):
        assert requests.get(proxy.url(ARM), headers=META, timeout=10).status_code == 200
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_500_concurrent_first_requests_make_one_exchange(
    proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    fake_entra.behave(delay=0.5)
    results = asyncio.run(stampede(proxy.url(ARM), 500))
    assert {status for status, _ in results} == {200}
    assert len({token for _, token in results}) == 1
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_prefetch_makes_the_first_request_a_hit(fake_entra: FakeEntra, tmp_path: Path) -> None:
    proxy = ProxyProcess(fake_entra.env(), tmp_path, [f"--prefetch-resource={ARM}"])
    proxy.start(wait_ready=True)
    try:
        assert fake_entra.stats()["token_requests"]["total"] == 1
        assert requests.get(proxy.url(ARM), headers=META, timeout=10).status_code == 200
        assert fake_entra.stats()["token_requests"]["total"] == 1
    finally:
        proxy.stop()
    logged = [line for line in proxy.logs() if line["event"] == "received token request"]
    assert [line["cache"] for line in logged] == ["hit"]


def test_readiness_waits_for_prefetch(fake_entra: FakeEntra, tmp_path: Path) -> None:
    fake_entra.behave(mode="fail", status=503)
    with running_proxy(fake_entra.env(), tmp_path, [f"--prefetch-resource={ARM}"]) as proxy:
        ready = requests.get(proxy.base + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert "prefetch" in ready.json()["reasons"][0]
        fake_entra.behave(mode="normal")
        # the next request (after the backoff) fills the cache and readiness follows
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if requests.get(proxy.url(ARM), headers=META, timeout=10).status_code == 200:
                break
            time.sleep(0.2)
        assert requests.get(proxy.base + "/readyz", timeout=5).status_code == 200
