"""SIGTERM for both sidecar kinds, against the real process.

A classic sidecar is signalled together with the app, which may still ask for tokens
while it drains: the proxy must keep answering until requests stop. A native sidecar is
signalled after the app has exited: nobody asks any more, so it must stop within
`--drain-idle`. `--shutdown-grace` bounds both.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from proxy.server import stop_reserve

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
EXIT_MARGIN = 3.0
"""Seconds an exit may take beyond its due time on a loaded machine (interpreter teardown)."""


def _exited_within(proxy: ProxyProcess, seconds: float) -> float:
    """Wait for the process; returns when it exited (monotonic), failing after `seconds`."""
    assert proxy.proc is not None
    proxy.proc.wait(timeout=seconds)
    return time.monotonic()


def _started(fake_entra: FakeEntra, tmp_path: Path, *args: str, drain: float) -> ProxyProcess:
    proxy = ProxyProcess(fake_entra.env(), tmp_path, args, drain_idle=drain).start()
    assert requests.get(proxy.url(ARM), headers=META, timeout=10).status_code == 200
    return proxy


def test_classic_sidecar_keeps_serving_while_the_app_drains(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """SIGTERM, then the app asks for tokens for a while: every request is answered, and
    the proxy exits `--drain-idle` after the last one, with status 0."""
    drain = 1.5
    proxy = _started(fake_entra, tmp_path, "--shutdown-grace=20", drain=drain)
    assert proxy.proc is not None
    signalled = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    # A request sent before the loop runs the signal's handler is served before shutdown
    # begins; the app's requests below all come after it.
    deadline = signalled + 5
    while "shutting down" not in proxy.log_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    statuses = []
    while time.monotonic() - signalled < 3 * drain:  # longer than one drain-idle window
        sent = time.monotonic()  # the proxy's quiet starts when the request arrives
        statuses.append(requests.get(proxy.url(ARM), headers=META, timeout=10).status_code)
        last_request = sent
        assert proxy.proc.poll() is None, "exited while requests were still arriving"
        time.sleep(drain / 3)
    exited = _exited_within(proxy, drain + EXIT_MARGIN + 5)
    assert statuses and set(statuses) == {200}
    assert exited - last_request >= drain * 0.9  # it waited for quiet...
    assert exited - last_request < drain + EXIT_MARGIN  # ...and not much longer
    assert proxy.stop() == 0
    events = [line["event"] for line in proxy.logs()]
    assert events.index("shutting down") < events.index("stopped the proxy server")
    served_after = [
        line
        for line in proxy.logs()[events.index("shutting down") :]
        if line["event"] == "received token request"
    ]
    assert len(served_after) == len(statuses)


def test_native_sidecar_stops_within_drain_idle(fake_entra: FakeEntra, tmp_path: Path) -> None:
    """The app has exited before SIGTERM: nothing arrives, so the proxy is gone after one
    drain-idle window (not after the shutdown grace)."""
    drain = 1.0
    proxy = _started(fake_entra, tmp_path, "--shutdown-grace=20", drain=drain)
    assert proxy.proc is not None
    time.sleep(0.5)  # the app is gone: no request from here on
    signalled = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    exited = _exited_within(proxy, drain + EXIT_MARGIN + 5)
    assert drain * 0.9 <= exited - signalled < drain + EXIT_MARGIN
    assert proxy.stop() == 0


def test_shutdown_grace_bounds_a_drain_that_never_goes_quiet(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """Requests every 0.2 s would keep a 2 s drain open forever; the grace ends it: the
    listener closes when only the stop reserve is left, and the process exits within the
    grace."""
    grace = 2.5
    drain_ends = grace - stop_reserve(grace)
    proxy = _started(fake_entra, tmp_path, f"--shutdown-grace={grace}", drain=2.0)
    assert proxy.proc is not None
    signalled = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    refused = False
    while time.monotonic() - signalled < grace + EXIT_MARGIN + 5 and not refused:
        try:
            requests.get(proxy.url(ARM), headers=META, timeout=5)
        except requests.ConnectionError:
            refused = True
        time.sleep(0.2)
    exited = _exited_within(proxy, EXIT_MARGIN + 5)
    assert refused
    assert drain_ends * 0.9 <= exited - signalled < grace + EXIT_MARGIN
    assert proxy.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_drain_idle_zero_stops_at_once(
    fake_entra: FakeEntra, tmp_path: Path, sig: signal.Signals
) -> None:
    proxy = _started(fake_entra, tmp_path, drain=0)
    assert proxy.proc is not None
    signalled = time.monotonic()
    proxy.proc.send_signal(sig)
    _exited_within(proxy, EXIT_MARGIN + 5)
    assert time.monotonic() - signalled < EXIT_MARGIN
    assert proxy.stop() == 0
