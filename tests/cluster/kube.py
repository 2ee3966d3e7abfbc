"""kubectl, as the tests use it: every call bounded in time, failures quoting the cluster.

The tests reach pods only through the API server (`kubectl exec`, `kubectl logs`), never
from the host to a pod IP. A failed expectation says what `kubectl describe` and the
containers' logs say, because that is what a user would look at first.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 60.0


class KubeError(AssertionError):
    """A kubectl call or a wait on the cluster failed; the message carries the evidence."""


class Kube:
    """kubectl with the cluster's admin kubeconfig."""

    def __init__(self, kubectl: str, kubeconfig: Path) -> None:
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig

    def command(self, *args: str) -> list[str]:
        """The full kubectl command line (for tests that run it themselves)."""
        return [self.kubectl, f"--kubeconfig={self.kubeconfig}", *args]

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                self.command(*args),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise KubeError(f"kubectl {' '.join(args)}: no answer within {timeout:g}s") from None
        if check and proc.returncode != 0:
            raise KubeError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}"
            )
        return proc

    def ok(self, *args: str, timeout: float = 10) -> bool:
        try:
            return self.run(*args, timeout=timeout, check=False).returncode == 0
        except KubeError:
            return False

    def json(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return json.loads(self.run(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, namespace: str, manifest: str, *extra: str) -> str:
        return self.run("-n", namespace, "apply", "-f", "-", *extra, input=manifest).stdout

    def jwks(self) -> str:
        """The service-account issuer's keys, as Entra ID would fetch them."""
        return self.run("get", "--raw", "/openid/v1/jwks").stdout

    # -- namespaces -------------------------------------------------------------------

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        doc = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}},
        }
        self.run("apply", "-f", "-", input=json.dumps(doc))
        self.wait_for(
            lambda: self.ok("-n", name, "get", "serviceaccount", "default"),
            60,
            f"the default ServiceAccount of namespace {name}",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        self.run("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

    # -- pods -------------------------------------------------------------------------

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("-n", namespace, "get", "pods", "-l", selector)[
            "items"
        ]
        return items

    def describe(self, namespace: str, what: str) -> str:
        proc = self.run("-n", namespace, "describe", what, check=False, timeout=30)
        return proc.stdout + proc.stderr

    def logs(self, namespace: str, pod: str, container: str, *extra: str) -> str:
        proc = self.run("-n", namespace, "logs", pod, "-c", container, *extra, check=False)
        return proc.stdout if proc.returncode == 0 else f"(kubectl logs: {proc.stderr.strip()})"

    def evidence(self, namespace: str, pod: str) -> str:
        """`kubectl describe` of the pod and every container's log: a failure's context."""
        parts = [f"--- kubectl describe pod {pod}\n{self.describe(namespace, f'pod/{pod}')}"]
        try:
            spec = self.json("-n", namespace, "get", "pod", pod)["spec"]
        except (KubeError, ValueError):
            spec = {}
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            log = self.logs(namespace, pod, c["name"], "--tail=40")
            parts.append(f"--- kubectl logs {pod} -c {c['name']}\n{log}")
        return "\n".join(parts)

    def exec(
        self, namespace: str, pod: str, container: str, argv: Sequence[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "-n", namespace, "exec", pod, "-c", container, "--", *argv, timeout=timeout, check=False
        )

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.25)
        raise KubeError(f"{what}: not within {timeout:g}s")
