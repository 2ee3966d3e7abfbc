"""What SREs rely on: metrics after real traffic, readiness that flips, graceful stop."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.fake_entra import FakeEntra
from tests.proxy_process import ROOT, ProxyProcess, free_port, running_proxy

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_follow_the_traffic(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    for _ in range(10):
        requests.get(proxy.url(ARM), headers=META, timeout=10)
    requests.get(proxy.url("https://vault.azure.net"), headers=META, timeout=10)
    requests.get(proxy.url(ARM), timeout=10)  # no Metadata header: 400
    requests.get(proxy.base + "/readyz", timeout=10)
    metrics = proxy.metrics()

    assert sample(metrics, "imds_proxy_requests_total", route="token", code="200") == 11
    assert sample(metrics, "imds_proxy_requests_total", route="token", code="400") == 1
    assert sample(metrics, "imds_proxy_requests_total", route="readyz", code="200") >= 1
    assert sample(metrics, "imds_proxy_cache_hits_total") == 9
    assert sample(metrics, "imds_proxy_cache_misses_total") == 2
    calls = fake_entra.stats()["token_requests"]["total"]
    assert calls == 2
    assert sample(metrics, "imds_proxy_entra_exchanges_total", outcome="success") == calls
    assert sample(metrics, "imds_proxy_entra_exchange_duration_seconds_count") == calls
    assert sample(metrics, "imds_proxy_request_duration_seconds_count", route="token") == 12
    assert sample(metrics, "imds_proxy_cache_entries") == 2
    assert 3000 < sample(metrics, "imds_proxy_token_expiry_seconds") <= 3600
    assert 0 < sample(metrics, "imds_proxy_service_account_token_expiry_seconds") <= 3600 * 24
    assert sample(metrics, "imds_proxy_build_info") == 1
    assert sample(metrics, "process_resident_memory_bytes") > 0


def test_failures_are_counted_by_kind_and_code(proxy: ProxyProcess, fake_entra: FakeEntra) -> None:
    requests.get(
        proxy.url(ARM, client_id="3d1f4c2b-1111-4a4a-8b8b-9c9c9c9c9c9c"), headers=META, timeout=10
    )
    fake_entra.behave(mode="throttle", retry_after=30)
    requests.get(proxy.url(ARM), headers=META, timeout=10)
    fake_entra.behave(mode="fail", status=503)
    requests.get(proxy.url("https://vault.azure.net"), headers=META, timeout=10)
    metrics = proxy.metrics()
    assert sample(metrics, "imds_proxy_entra_exchanges_total", outcome="unavailable") == 1
    # A federation rejection (700016: unknown client) is retried once before it counts.
    assert sample(metrics, "imds_proxy_entra_exchange_duration_seconds_count") == 4
    assert (
        sample(metrics, "imds_proxy_entra_exchanges_total", outcome="rejected", aadsts="700016")
        == 2
    )
    assert (
        sample(
            metrics,
            "imds_proxy_federation_failures_total",
            cause="unknown_client",
            phase="final",
        )
        == 1
    )
    assert sample(metrics, "imds_proxy_entra_exchanges_total", outcome="throttled") == 1
    assert sample(metrics, "imds_proxy_requests_total", route="token", code="429") == 1


def test_labels_stay_bounded_after_many_bad_resources(
    proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    bad = [f"https://bad-{i}.example" for i in range(1000)]
    fake_entra.behave(unknown_resources=bad[:19])  # within the new-token burst (20)
    session = requests.Session()
    for resource in bad:
        session.get(proxy.url(resource + " x"), headers=META, timeout=10)  # invalid: 400
    for resource in bad[:19]:
        session.get(proxy.url(resource), headers=META, timeout=10)  # Entra: AADSTS500011
    metrics = proxy.metrics()
    samples = [line for line in metrics.splitlines() if line and not line.startswith("#")]
    assert len(samples) < 200
    assert "bad-" not in metrics
    assert sample(metrics, "imds_proxy_requests_total", route="token", code="400") == 1000 + 19


def test_metrics_never_hold_a_token_and_serve_nothing_else(proxy: ProxyProcess) -> None:
    token = requests.get(proxy.url(ARM), headers=META, timeout=10).json()["access_token"]
    metrics = proxy.metrics()
    assert token not in metrics and "eyJ" not in metrics
    base = f"http://127.0.0.1:{proxy.metrics_port}"
    assert (
        requests.get(
            base + f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}",
            headers=META,
            timeout=10,
        ).status_code
        == 404
    )
    assert requests.get(base + "/readyz", timeout=10).status_code == 404
    # They name the identity: pod-local (the token port) unless --expose-status.
    for page in ("/status", "/report"):
        assert requests.get(base + page, timeout=10).status_code == 404
        assert requests.get(proxy.base + page, timeout=10).status_code == 200


def test_healthz_does_not_depend_on_entra(fake_entra: FakeEntra, tmp_path: Path) -> None:
    env = {**fake_entra.env(), "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{free_port()}/"}
    with running_proxy(env, tmp_path) as proxy:
        assert requests.get(proxy.base + "/healthz", timeout=5).text == "ok"


def test_readiness_flips_with_the_token_file(fake_entra: FakeEntra, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(fake_entra.mint_assertion())
    env = {**fake_entra.env(), "AZURE_FEDERATED_TOKEN_FILE": str(token_file)}
    with running_proxy(env, tmp_path) as proxy:
        assert requests.get(proxy.base + "/readyz", timeout=5).status_code == 200
        token_file.unlink()
        gone = requests.get(proxy.base + "/readyz", timeout=5)
        assert gone.status_code == 503 and gone.json()["status"] == "not ready"
        token_file.write_text(fake_entra.mint_assertion(lifetime=-5))
        expired = requests.get(proxy.base + "/readyz", timeout=5)
        assert expired.status_code == 503 and "expired" in expired.json()["reasons"][0]
        token_file.write_text(fake_entra.mint_assertion())
        assert requests.get(proxy.base + "/readyz", timeout=5).status_code == 200


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
