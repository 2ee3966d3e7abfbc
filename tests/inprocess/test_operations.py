"""What SREs rely on, against the proxy's server in process: metrics after real traffic,
liveness without Entra ID, readiness that flips. Probes, signals, log flags and taken ports
of the real process: tests/test_e2e_operations.py."""

from __future__ import annotations

from pathlib import Path

import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import free_port
from tests.support.in_process import InProcessProxy, running_in_process
from tests.support.metrics_text import sample

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}


def test_metrics_follow_the_traffic(proxy: InProcessProxy, fake_entra: FakeEntra) -> None:
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


def test_failures_are_counted_by_kind_and_code(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
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
    proxy: InProcessProxy, fake_entra: FakeEntra
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


def test_metrics_never_hold_a_token_and_serve_nothing_else(proxy: InProcessProxy) -> None:
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
    with running_in_process(env, tmp_path) as proxy:
        assert requests.get(proxy.base + "/healthz", timeout=5).text == "ok"


def test_readiness_flips_with_the_token_file(fake_entra: FakeEntra, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(fake_entra.mint_assertion())
    env = {**fake_entra.env(), "AZURE_FEDERATED_TOKEN_FILE": str(token_file)}
    with running_in_process(env, tmp_path) as proxy:
        assert requests.get(proxy.base + "/readyz", timeout=5).status_code == 200
        token_file.unlink()
        gone = requests.get(proxy.base + "/readyz", timeout=5)
        assert gone.status_code == 503 and gone.json()["status"] == "not ready"
        token_file.write_text(fake_entra.mint_assertion(lifetime=-5))
        expired = requests.get(proxy.base + "/readyz", timeout=5)
        assert expired.status_code == 503 and "expired" in expired.json()["reasons"][0]
        token_file.write_text(fake_entra.mint_assertion())
        assert requests.get(proxy.base + "/readyz", timeout=5).status_code == 200
