"""`imds-proxy webhook` as a process, for the tests that run it (and the cluster tier).

`WebhookProcess` starts it with its log in a file and speaks to it over TLS with a given CA;
`SecretVolume` lays out a certificate directory as kubelet lays out a Secret volume
(`tls.crt` and `tls.key` link into `..data`, a link that a rotation replaces in one rename).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def pod_creation_review(
    pod: dict[str, Any],
    uid: str = "0f0e0d0c-0000-4000-8000-000000000001",
    namespace: str = "default",
    **request: Any,
) -> dict[str, Any]:
    """An AdmissionReview v1 as the API server sends it for a pod's creation."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": pod,
            **request,
        },
    }


class SecretVolume:
    """A directory of `tls.crt`/`tls.key` links that `publish` swaps in one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.generation = 0
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    def publish(self, cert: Path, key: Path) -> None:
        self.generation += 1
        target = self.root / f"..gen{self.generation}"
        target.mkdir()
        shutil.copy(cert, target / "tls.crt")
        shutil.copy(key, target / "tls.key")
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, self.root / "..data")


class WebhookProcess:
    def __init__(
        self,
        argv: list[str],
        port: int,
        metrics_port: int,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port, self.metrics_port = port, metrics_port
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "webhook", *argv],
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        )

    def get(self, path: str, ca: Path) -> tuple[int, bytes]:
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}")
        return https_open(request, ca)

    def review(self, body: dict[str, Any], ca: Path) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.port}/mutate-v1-pod",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        return https_open(request, ca)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def wait_ready(self, ca: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.get("/readyz", ca)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


def https_open(request: urllib.request.Request, ca: Path) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), urllib.request.ProxyHandler({})
    )
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
