"""`imds-proxy webhook` as a real process on loopback: TLS, probes, metrics, certificate
rotation by replacing files (the way a Secret volume does it), SIGTERM, and start errors.

The certificate directory is laid out as kubelet lays out a Secret volume: `tls.crt` and
`tls.key` are links into `..data`, a link to a timestamped directory that a rotation
replaces in one rename.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import jsonpatch
import pytest
from cryptography import x509

from harness.proxy_process import free_port
from proxy.devissuer.pki import TlsFiles, generate_tls_files
from tests.support.kube_stand_in import KubeStandIn
from tests.support.webhook_process import SecretVolume, WebhookProcess, pod_creation_review

WI = "azure.workload.identity/"
CLIENT = "00000000-0000-0000-0000-000000000001"
TENANT = "00000000-0000-0000-0000-0000000000aa"


def _served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        # By address, as the API server calls a url client config: no SNI is sent.
        context.check_hostname = False
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


GUIDE_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "legacy-app",
        "labels": {WI + "use": "true"},
        "annotations": {WI + "inject-proxy-sidecar": "true"},
    },
    "spec": {
        "serviceAccountName": "workload-identity-sa",
        "containers": [{"name": "app", "image": "app"}],
    },
}


@pytest.fixture
def api() -> Iterator[KubeStandIn]:
    with KubeStandIn(version="v1.30.6") as stand_in:
        stand_in.namespace("default")
        annotations = {WI + "client-id": CLIENT, WI + "tenant-id": TENANT}
        stand_in.service_account("default", "workload-identity-sa", annotations)
        yield stand_in


@pytest.fixture
def tls(tmp_path: Path) -> tuple[SecretVolume, TlsFiles, TlsFiles]:
    first = generate_tls_files(tmp_path / "first")
    second = generate_tls_files(tmp_path / "second")
    volume = SecretVolume(tmp_path / "certs")
    volume.publish(first.cert, first.key)
    return volume, first, second


def _start(tmp_path: Path, api: KubeStandIn, certs: Path, *extra: str) -> WebhookProcess:
    port, metrics_port = free_port(), free_port()
    argv = [
        "--host=127.0.0.1",
        f"--port={port}",
        f"--metrics-port={metrics_port}",
        "--metrics-host=127.0.0.1",
        f"--tls-cert-file={certs / 'tls.crt'}",
        f"--tls-key-file={certs / 'tls.key'}",
        f"--kubeconfig={api.kubeconfig(tmp_path)}",
        *extra,
    ]
    return WebhookProcess(argv, port, metrics_port, tmp_path / "webhook.log")


def test_serves_reviews_over_tls_and_reloads_a_rotated_certificate(
    tmp_path: Path, api: KubeStandIn, tls: tuple[SecretVolume, TlsFiles, TlsFiles]
) -> None:
    volume, first, second = tls
    webhook = _start(tmp_path, api, volume.root)
    try:
        webhook.wait_ready(first.ca_bundle)
        assert webhook.get("/healthz", first.ca_bundle)[0] == 200
        status, body = webhook.review(pod_creation_review(GUIDE_POD), first.ca_bundle)
        assert status == 200
        response = json.loads(body)["response"]
        assert response["allowed"] is True
        pod = jsonpatch.apply_patch(GUIDE_POD, json.loads(base64.b64decode(response["patch"])))
        # API server 1.30 (the stand-in): a classic sidecar, the first container.
        assert [c["name"] for c in pod["spec"]["containers"]] == ["azwi-proxy", "app"]

        # The certificate alone first (its key not yet there): the old pair stays in use.
        old_serial = _served_serial(webhook.port, first.ca_bundle)
        volume.publish(second.cert, first.key)
        time.sleep(1.2)
        assert _served_serial(webhook.port, first.ca_bundle) == old_serial
        # Then the whole new pair: served from the next handshake after the next look.
        volume.publish(second.cert, second.key)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                if _served_serial(webhook.port, second.ca_bundle) != old_serial:
                    break
            except ssl.SSLError:
                continue
        else:
            raise AssertionError("the new certificate was not served")
        status, body = webhook.review(pod_creation_review(GUIDE_POD), second.ca_bundle)
        assert status == 200 and json.loads(body)["response"]["allowed"] is True
        with pytest.raises(ssl.SSLError):
            _served_serial(webhook.port, first.ca_bundle)  # the old CA no longer verifies it

        metrics = webhook.metrics()
        assert 'imds_proxy_webhook_reviews_total{result="mutated"} 2.0' in metrics
        assert 'imds_proxy_webhook_certificate_reloads_total{result="ok"} 1.0' in metrics
        assert 'imds_proxy_webhook_certificate_reloads_total{result="failed"}' in metrics
        assert "imds_proxy_webhook_certificate_not_after_timestamp_seconds" in metrics
    finally:
        code = webhook.stop()
    assert code == 0
    logs = webhook.logs()
    events = [line["event"] for line in logs]
    assert "sidecar form chosen" in events and "certificate reloaded" in events
    reviews = [line for line in logs if line["event"] == "admission review"]
    assert reviews[0]["result"] == "mutated" and reviews[0]["pod"] == "legacy-app"
    assert all(line["level"] for line in logs)
    assert "stand-in-token" not in webhook.log.read_text()
    assert api.seen and all(auth == "Bearer stand-in-token" for _, auth in api.seen)


def test_not_ready_until_the_server_version_is_known(
    tmp_path: Path, api: KubeStandIn, tls: tuple[SecretVolume, TlsFiles, TlsFiles]
) -> None:
    volume, first, _ = tls
    api.fail["/version"] = 500
    webhook = _start(tmp_path, api, volume.root)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                status, body = webhook.get("/readyz", first.ca_bundle)
                break
            except OSError:
                time.sleep(0.1)
        assert status == 503 and b"version" in body
        assert webhook.get("/healthz", first.ca_bundle)[0] == 200
        del api.fail["/version"]
        webhook.wait_ready(first.ca_bundle, timeout=15)
    finally:
        assert webhook.stop() == 0


@pytest.mark.parametrize("problem", ["missing", "not-a-certificate"])
def test_a_certificate_that_does_not_load_stops_the_start_in_one_line(
    tmp_path: Path, api: KubeStandIn, problem: str
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    if problem == "not-a-certificate":
        (certs / "tls.crt").write_text("not PEM\n")
        (certs / "tls.key").write_text("not PEM\n")
    webhook = _start(tmp_path, api, certs)
    assert webhook.proc.wait(timeout=30) == 2
    text = webhook.log.read_text()
    assert text.count("\n") == 1 and "configuration error" in text and "tls.crt" in text
