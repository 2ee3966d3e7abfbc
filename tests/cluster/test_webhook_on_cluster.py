"""`imds-proxy webhook` registered with the real API server, mutating pods that then run.

The webhook runs as a process on the host's loopback (the API server reaches 127.0.0.1)
with the shipped MutatingWebhookConfiguration pointed at it (`tests.support.webhook_registration`).
Pods written as the migration guide writes them, pods of a labelled namespace and pods
that still carry `aadpodidbinding` are created with kubectl, mutated by the API server's
call to the webhook, run on the kubelet, and their app's plain request to
169.254.169.254 gets a token from the in-pod fake Entra ID. A pod that already has a proxy
keeps one. A stuck or absent webhook holds pod creation no longer than its timeout, and the
failure policy decides the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from harness.proxy_process import free_port
from proxy.devissuer.pki import generate_tls_files
from tests.cluster.harness import Cluster
from tests.cluster.images import APP_IMAGE, INIT_IMAGE, PROXY_IMAGE
from tests.cluster.kube import Kube, KubeError
from tests.cluster.local_issuer_hook import LABEL as LOCAL_ISSUER_LABEL
from tests.cluster.local_issuer_hook import LocalIssuerHook
from tests.cluster.measure import record
from tests.cluster.workload import (
    APP,
    ARM,
    CLIENT_ID,
    ENTRA_PORT,
    PROXY,
    PROXY_INIT,
    SERVICE_ACCOUNT,
    TENANT_ID,
    Workload,
    json_lines,
)
from tests.support.webhook_process import WebhookProcess
from tests.support.webhook_registration import loopback_configuration

REGISTRATION = "imds-proxy-webhook-test"
NAMESPACE_LABEL = "imds-proxy.azure.workload.identity/inject"
DECISIONS = "imds-proxy.azure.workload.identity/decisions"
TIMEOUT_SECONDS = 5
"""The shipped configuration's timeoutSeconds."""
MARGIN = 3.0
"""What pod creation may take beyond the webhook's timeout on a loaded machine."""
SELECTOR = "legacy-orders"
"""The aadpodidbinding selector of the carry-over test."""


@dataclass
class Webhook:
    process: WebhookProcess
    ca_pem: bytes
    kube: Kube

    def registration(self) -> dict[str, Any]:
        return loopback_configuration(self.process.port, self.ca_pem, name=REGISTRATION)

    def register(self, configuration: dict[str, Any]) -> None:
        self.kube.run("apply", "-f", "-", input=json.dumps(configuration))


@pytest.fixture(scope="module")
def webhook(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """The project's webhook and the local-issuer hook, registered for this module's tests."""
    kube = cluster.kube
    workdir = tmp_path_factory.mktemp("webhook")
    tls = generate_tls_files(workdir / "pki")
    port, metrics_port = free_port(), free_port()
    process = WebhookProcess(
        [
            "--host=127.0.0.1",
            f"--port={port}",
            "--metrics-host=127.0.0.1",
            f"--metrics-port={metrics_port}",
            f"--tls-cert-file={tls.cert}",
            f"--tls-key-file={tls.key}",
            f"--kubeconfig={kube.kubeconfig}",
            f"--tenant-id={TENANT_ID}",
            f"--authority-host=https://127.0.0.1:{ENTRA_PORT}/",
            f"--proxy-image={PROXY_IMAGE}",
            f"--proxy-init-image={INIT_IMAGE}",
            "--api-timeout=3",
        ],
        port,
        metrics_port,
        workdir / "webhook.log",
    )
    hook = LocalIssuerHook(tls.server_context())
    ca_pem = tls.ca_bundle.read_bytes()
    registered = Webhook(process, ca_pem, kube)
    try:
        process.wait_ready(tls.ca_bundle)
        with hook:
            registered.register(registered.registration())
            registered.register(hook.configuration(ca_pem))
            yield registered
    finally:
        # Left registered, every later pod creation would wait on a dead URL.
        kube.run(
            "delete",
            "mutatingwebhookconfiguration",
            REGISTRATION,
            "zz-imds-proxy-test-local-issuer",
            "--ignore-not-found",
            check=False,
        )
        os.kill(process.proc.pid, signal.SIGCONT)
        process.stop()


def _pod(
    workload: Workload, name: str, labels: dict[str, str], annotations: dict[str, str]
) -> dict[str, Any]:
    """The workload's app and fake Entra ID as a bare Pod (the webhook sees pods)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {LOCAL_ISSUER_LABEL: "true", **labels},
            "annotations": annotations,
        },
        "spec": workload.pod_spec(),
    }


def _idle_pod(name: str) -> dict[str, Any]:
    """A pod the guide's way that only sleeps: for tests of admission, not of tokens."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": GUIDE_LABELS, "annotations": GUIDE_ANNOTATIONS},
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": APP,
                    "image": APP_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }
            ],
        },
    }


GUIDE_LABELS = {"azure.workload.identity/use": "true"}
GUIDE_ANNOTATIONS = {
    "azure.workload.identity/inject-proxy-sidecar": "true",
    "azure.workload.identity/proxy-sidecar-port": "8000",
}


def _create(kube: Kube, namespace: str, pod: dict[str, Any]) -> tuple[float, str]:
    """`kubectl create` of the pod: how long the API server took, and what it printed."""
    started = time.monotonic()
    proc = kube.run("-n", namespace, "create", "-f", "-", input=json.dumps(pod))
    return time.monotonic() - started, proc.stdout + proc.stderr


def _prepare(kube: Kube, namespace: str, client_id: str | None = CLIENT_ID) -> Workload:
    workload = Workload(namespace, kube.jwks())
    docs = [workload.service_account(client_id), workload.jwks_config_map()]
    kube.apply(namespace, yaml.safe_dump_all(docs))
    return workload


def _container_names(pod: dict[str, Any]) -> tuple[list[str], list[str]]:
    spec = pod["spec"]
    return (
        [c["name"] for c in spec.get("initContainers") or []],
        [c["name"] for c in spec["containers"]],
    )


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def _got_token(kube: Kube, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    """The app's first token (it asks 169.254.169.254 with no override), failing with evidence."""
    found: list[dict[str, Any]] = []

    def token() -> bool:
        lines = json_lines(kube.logs(namespace, name, APP))
        found[:] = [x for x in lines if x.get("event") == "token" and x.get("status") == 200]
        return bool(found)

    try:
        kube.wait_for(token, timeout, f"a token in the app of {name}")
    except KubeError as e:
        raise KubeError(f"{e}\n{kube.evidence(namespace, name)}") from None
    return found[0]


def _assert_injected(pod: dict[str, Any]) -> None:
    inits, containers = _container_names(pod)
    assert inits.count(PROXY_INIT) == 1 and inits.count(PROXY) == 1, inits
    assert PROXY not in containers, containers  # native sidecar: the API server is 1.34
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == PROXY)
    assert proxy.get("restartPolicy") == "Always"
    app = next(c for c in pod["spec"]["containers"] if c["name"] == APP)
    env = _env(app)
    assert env["AZURE_CLIENT_ID"] == CLIENT_ID
    assert env["AZURE_TENANT_ID"] == TENANT_ID
    assert env["AZURE_FEDERATED_TOKEN_FILE"]
    assert DECISIONS in pod["metadata"]["annotations"]


def test_the_guides_annotations_inject_the_proxy(
    webhook: Webhook, kube: Kube, namespace: str
) -> None:
    """Exactly the guide's label and annotations: the API server returns the pod mutated,
    and its app gets a token through 169.254.169.254."""
    workload = _prepare(kube, namespace)
    took, _ = _create(kube, namespace, _pod(workload, "guide", GUIDE_LABELS, GUIDE_ANNOTATIONS))
    record("pod create through the webhook", took)
    pod = kube.json("-n", namespace, "get", "pod", "guide")
    _assert_injected(pod)
    token = _got_token(kube, namespace, "guide")
    assert token["claims"]["aud"] == ARM
    assert token["claims"]["appid"] == CLIENT_ID
    assert token["claims"]["tid"] == TENANT_ID


def test_a_labelled_namespace_injects_every_pod_but_the_opted_out(
    webhook: Webhook, kube: Kube, namespace: str
) -> None:
    """A pod with no Workload ID label or annotation, in a namespace labelled for the
    webhook, is injected and gets its token; one annotation keeps a pod out."""
    kube.run("label", "namespace", namespace, f"{NAMESPACE_LABEL}=enabled")
    workload = _prepare(kube, namespace)
    _create(kube, namespace, _pod(workload, "plain", {}, {}))
    _assert_injected(kube.json("-n", namespace, "get", "pod", "plain"))
    token = _got_token(kube, namespace, "plain")
    assert token["claims"]["appid"] == CLIENT_ID

    _create(kube, namespace, _pod(workload, "opted-out", {}, {NAMESPACE_LABEL: "false"}))
    inits, containers = _container_names(kube.json("-n", namespace, "get", "pod", "opted-out"))
    assert PROXY not in inits + containers and PROXY_INIT not in inits


AAD_POD_IDENTITY_CRDS: list[dict[str, Any]] = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.aadpodidentity.k8s.io",
            # A group under k8s.io must say it is not an approved Kubernetes API.
            "annotations": {
                "api-approved.kubernetes.io": "unapproved, aad-pod-identity's own CRDs"
            },
        },
        "spec": {
            "group": "aadpodidentity.k8s.io",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": kind + "List",
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for kind, plural in (
        ("AzureIdentity", "azureidentities"),
        ("AzureIdentityBinding", "azureidentitybindings"),
    )
]


@pytest.fixture
def aad_pod_identity_crds(kube: Kube) -> Iterator[None]:
    kube.run("apply", "-f", "-", input=yaml.safe_dump_all(AAD_POD_IDENTITY_CRDS))
    names = [crd["metadata"]["name"] for crd in AAD_POD_IDENTITY_CRDS]
    kube.run("wait", "--for=condition=Established", *(f"crd/{n}" for n in names), "--timeout=60s")
    yield
    kube.run("delete", "crd", *names, "--wait=false", "--ignore-not-found", check=False)


def test_aadpodidbinding_carries_the_identity_over(
    webhook: Webhook, kube: Kube, namespace: str, aad_pod_identity_crds: None
) -> None:
    """A pod still labelled for pod-managed identity, whose service account names no
    client id, gets the client id of the AzureIdentity its AzureIdentityBinding names."""
    kube.run("label", "namespace", namespace, f"{NAMESPACE_LABEL}=enabled")
    workload = _prepare(kube, namespace, client_id=None)
    identity = {
        "apiVersion": "aadpodidentity.k8s.io/v1",
        "kind": "AzureIdentity",
        "metadata": {"name": "orders-identity"},
        "spec": {"type": 0, "resourceID": "/subscriptions/s/x", "clientID": CLIENT_ID},
    }
    binding = {
        "apiVersion": "aadpodidentity.k8s.io/v1",
        "kind": "AzureIdentityBinding",
        "metadata": {"name": "orders-binding"},
        "spec": {"azureIdentity": "orders-identity", "selector": SELECTOR},
    }
    kube.apply(namespace, yaml.safe_dump_all([identity, binding]))
    _create(kube, namespace, _pod(workload, "carried", {"aadpodidbinding": SELECTOR}, {}))
    pod = kube.json("-n", namespace, "get", "pod", "carried")
    _assert_injected(pod)
    decisions = pod["metadata"]["annotations"][DECISIONS]
    assert "orders-binding" in decisions or SELECTOR in decisions, decisions
    assert _got_token(kube, namespace, "carried")["claims"]["appid"] == CLIENT_ID


def test_an_injected_pod_is_not_injected_twice(
    webhook: Webhook, kube: Kube, namespace: str
) -> None:
    """A pod that another Workload ID webhook gave its proxy keeps that one proxy, and the
    user sees the webhook's warning when creating it."""
    _prepare(kube, namespace)
    pod = _idle_pod("already")
    pod["spec"]["initContainers"] = [
        {"name": PROXY_INIT, "image": INIT_IMAGE, "imagePullPolicy": "Never"},
        {
            "name": PROXY,
            "image": PROXY_IMAGE,
            "imagePullPolicy": "Never",
            "restartPolicy": "Always",
        },
    ]
    _, printed = _create(kube, namespace, pod)
    assert "Warning:" in printed and PROXY in printed, printed
    inits, containers = _container_names(kube.json("-n", namespace, "get", "pod", "already"))
    assert inits.count(PROXY) == 1 and inits.count(PROXY_INIT) == 1, inits
    assert PROXY not in containers


def test_a_stuck_or_absent_webhook_holds_pod_creation_no_longer_than_its_timeout(
    webhook: Webhook, kube: Kube, namespace: str
) -> None:
    """Stopped (SIGSTOP: it accepts, never answers) and absent (nothing listens): with
    failurePolicy Fail the pod is refused, with Ignore it is admitted unchanged, each
    within timeoutSeconds plus a margin."""
    _prepare(kube, namespace)
    pid = webhook.process.proc.pid
    shipped = webhook.registration()
    absent = webhook.registration()
    for hook in absent["webhooks"]:
        hook["clientConfig"]["url"] = f"https://127.0.0.1:{free_port()}/mutate-v1-pod"

    def with_policy(configuration: dict[str, Any], policy: str) -> dict[str, Any]:
        for hook in configuration["webhooks"]:
            hook["failurePolicy"] = policy
        return configuration

    try:
        for state, configuration in (("stuck", shipped), ("absent", absent)):
            if state == "stuck":
                os.kill(pid, signal.SIGSTOP)
            for policy in ("Fail", "Ignore"):
                webhook.register(with_policy(json.loads(json.dumps(configuration)), policy))
                name = f"{state}-{policy.lower()}"
                started = time.monotonic()
                proc = kube.run(
                    "-n",
                    namespace,
                    "create",
                    "-f",
                    "-",
                    input=json.dumps(_idle_pod(name)),
                    check=False,
                    timeout=TIMEOUT_SECONDS + 30,
                )
                took = time.monotonic() - started
                record(f"pod create, webhook {state}, failurePolicy {policy}", took)
                assert took < TIMEOUT_SECONDS + MARGIN, f"{name}: {took:.1f}s"
                if policy == "Fail":
                    assert proc.returncode != 0, proc.stdout
                    assert "imds-proxy.azure.workload.identity" in proc.stderr, proc.stderr
                else:
                    assert proc.returncode == 0, proc.stderr
                    inits, containers = _container_names(
                        kube.json("-n", namespace, "get", "pod", name)
                    )
                    assert PROXY not in inits + containers
            if state == "stuck":
                os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)
        webhook.register(webhook.registration())
