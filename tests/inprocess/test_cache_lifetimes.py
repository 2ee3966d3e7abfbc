"""A cached token's life seen from outside, on a fake clock: served while Entra ID is down
and the token valid, never once it has expired. The proxy's server runs in process; its
token layer's clock moves when the test says so (Entra's own clock is real, so the fake
one starts at the real time)."""

from __future__ import annotations

import time

import requests

from harness.fake_entra import FakeEntra
from tests.support.clock import FakeClock
from tests.support.in_process import running_in_process

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}


def test_cached_token_is_served_while_entra_is_down(fake_entra: FakeEntra) -> None:
    """A 12 s token is past its refresh point after 9 s; with Entra failing it is still
    answered at once (it is valid) while the refresh behind it fails, with a warning in the
    log saying the cached token is still served."""
    fake_entra.behave(token_lifetime=12)
    clock = FakeClock(time.time())
    with running_in_process(fake_entra.env(), clock=clock, sleep=clock.sleep) as proxy:
        first = requests.get(proxy.url(ARM), headers=META, timeout=10).json()
        fake_entra.behave(mode="fail", status=503)
        # obtained in [not_before, not_before + 1): past the refresh point (4.8-7.2 s),
        # before the last 1.2 s (a tenth of the life) in which it is no longer served
        clock.now = max(clock.now, int(first["not_before"]) + 9.0)
        during = requests.get(proxy.url(ARM), headers=META, timeout=10)
        assert during.status_code == 200
        assert during.json()["access_token"] == first["access_token"]
        assert int(during.json()["expires_in"]) <= 3
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the refresh runs behind the answer
            if fake_entra.stats()["token_requests"]["by_outcome"].get("failed", 0) >= 1:
                break
            time.sleep(0.1)
        assert fake_entra.stats()["token_requests"]["by_outcome"].get("failed", 0) >= 1
        assert "imds_proxy_cache_refreshes_total 1.0" in proxy.metrics()
        again = requests.get(proxy.url(ARM), headers=META, timeout=10)
        assert again.json()["access_token"] == first["access_token"]
        time.sleep(1.1)  # the exposition is rendered at most once a second
        assert "imds_proxy_cache_stale_served_total 1.0" in proxy.metrics()
        proxy.stop()
    failed = [line for line in proxy.logs() if line["event"] == "token exchange failed"]
    assert failed and failed[0]["serving_cached_token"] is True
    assert failed[0]["level"] == "warning"


def test_expired_token_is_never_served(fake_entra: FakeEntra) -> None:
    fake_entra.behave(token_lifetime=3)
    clock = FakeClock(time.time())
    with running_in_process(fake_entra.env(), clock=clock, sleep=clock.sleep) as proxy:
        first = requests.get(proxy.url(ARM), headers=META, timeout=10).json()
        fake_entra.behave(mode="fail", status=503)
        clock.now = int(first["expires_on"]) + 1.2  # past the expiry
        after = requests.get(proxy.url(ARM), headers=META, timeout=10)
        assert after.status_code == 503
