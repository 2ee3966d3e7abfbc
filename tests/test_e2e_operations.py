"""What SREs rely on from the real process: the probe flag, a graceful stop on SIGTERM or
SIGINT, the log flags, taken ports. Metrics, liveness and readiness are checked in process:
tests/inprocess/test_operations.py."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ROOT, ProxyProcess, free_port, running_proxy

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}


def test_probe_flag_waits_for_readiness(proxy: ProxyProcess) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "proxy", "--probe", f"--proxy-port={proxy.port}"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert ok.returncode == 0
    started = time.monotonic()
    down = subprocess.run(
        [sys.executable, "-m", "proxy", "--probe", f"--proxy-port={free_port()}"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert down.returncode == 1
    assert 6.5 < time.monotonic() - started < 20  # polled for 7 s


def test_sigterm_lets_an_in_flight_exchange_answer(fake_entra: FakeEntra, tmp_path: Path) -> None:
    fake_entra.behave(delay=2.0)
    proxy = ProxyProcess(fake_entra.env(), tmp_path).start()
    answers: list[requests.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(requests.get(proxy.url(ARM), headers=META, timeout=20))
    )
    client.start()
    deadline = time.monotonic() + 5
    while fake_entra.stats()["token_requests"].get("in_flight", 0) == 0:
        assert time.monotonic() < deadline, "the exchange never started"
        time.sleep(0.05)
    assert proxy.stop(signal.SIGTERM) == 0
    client.join(timeout=20)
    assert answers and answers[0].status_code == 200
    events = [line["event"] for line in proxy.logs()]
    assert events.index("shutting down") < events.index("stopped the proxy server")


def test_sigint_stops_cleanly(proxy: ProxyProcess) -> None:
    assert proxy.stop(signal.SIGINT) == 0


def test_console_log_format_applies_to_every_logger(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with running_proxy(fake_entra.env(), tmp_path, ["--log-format=console"]) as proxy:
        requests.get(proxy.url(ARM), headers=META, timeout=10)
    text = proxy.log_text()
    assert "received token request" in text and "cache=hit" not in text
    assert not any(line.startswith("{") for line in text.splitlines())
    # The request line's own fields, given by the token flow and the caller's classifier.
    line = next(x for x in text.splitlines() if "received token request" in x)
    for field in ("cache=miss", f"resource={ARM}", "client_id=", "client=", "status=200"):
        assert field in line, (field, line)


def test_warning_level_silences_request_lines(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with running_proxy(fake_entra.env(), tmp_path, ["--log-level=warning"]) as proxy:
        requests.get(proxy.url(ARM), headers=META, timeout=10)
        requests.get(
            proxy.url(ARM, client_id="3d1f4c2b-1111-4a4a-8b8b-9c9c9c9c9c9c"),
            headers=META,
            timeout=10,
        )
    events = [line["event"] for line in proxy.logs()]
    assert "received token request" not in events
    assert "token exchange failed" in events


def test_debug_logs_from_every_library_hold_no_secret(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """At debug level MSAL, requests/urllib3 and aiohttp log too; none may leak a token."""
    with running_proxy(fake_entra.env(), tmp_path, ["--log-level=debug"]) as proxy:
        token = requests.get(proxy.url(ARM), headers=META, timeout=10).json()["access_token"]
    text = proxy.log_text()
    assertion = Path(fake_entra.info.token_file).read_text().strip()
    assert len(text.splitlines()) > 5
    assert token not in text and assertion not in text and "eyJ" not in text
    proxy.logs()  # every line, whichever library wrote it, is JSON


def test_a_taken_metrics_port_does_not_cost_the_app_its_tokens(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """Containers in a pod share ports; the app may already listen on the metrics port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [f"--metrics-port={port}", "--metrics-host=127.0.0.1"]
        proxy = ProxyProcess(fake_entra.env(), tmp_path, args, metrics=False).start()
        try:
            assert requests.get(proxy.url(ARM), headers=META, timeout=10).status_code == 200
        finally:
            proxy.stop()
    failed = [line for line in proxy.logs() if line["event"] == "cannot serve metrics"]
    assert failed and failed[0]["port"] == port and failed[0]["level"] == "error"


def test_a_taken_proxy_port_is_one_clear_error(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "proxy", f"--proxy-port={port}", "--metrics-port=0"],
            env={**fake_entra.env(), "PATH": "/usr/bin:/bin"},
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
    assert done.returncode == 1
    output = (done.stdout + done.stderr).decode()
    assert "cannot start the proxy server" in output
    assert "Traceback" not in output and "Unclosed" not in output
