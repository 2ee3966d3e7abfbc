"""A workload as a user of the migration guide writes it, run through `imds-proxy inject`.

The Deployment holds the app (a plain python3 script asking IMDS for tokens, as a legacy
managed-identity client does) and, as a native sidecar listed first, the fake Entra ID: the
project's dev issuer on the pod's 127.0.0.1:8443, trusting the cluster's JWKS (from
`/openid/v1/jwks`, in a ConfigMap: a pod cannot reach the API server on the host's
loopback) and one federated credential naming the cluster's issuer, the pod's service
account and Entra's audience. Then `imds-proxy inject` adds the proxy exactly as for a user;
the only edits after it are the ones a user of a local issuer makes: trust its CA (the
proxy's REQUESTS_CA_BUNDLE) and, with no registry here, `imagePullPolicy: Never`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.cluster.images import APP_IMAGE, DEV_IMAGE, INIT_IMAGE, PROXY_IMAGE
from tests.cluster.kube import Kube, KubeError
from tests.cluster.settings import SERVICE_ACCOUNT_ISSUER

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "6d2a4c8e-1f3b-4a5c-9e7d-0b1c2d3e4f5a"
ENTRA_PORT = 8443
ENTRA_DIR = "/entra"
SERVICE_ACCOUNT = "workload"
PROXY = "azwi-proxy"
PROXY_INIT = "azwi-proxy-init"
FAKE_ENTRA = "fake-entra"
APP = "app"
ARM = "https://management.azure.com/"

RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""What the `restricted` Pod Security Standard asks of every container."""

APP_SCRIPT = r"""
import base64, json, os, signal, sys, threading, time, urllib.error, urllib.request

def out(**fields):
    print(json.dumps({"t": time.time(), **fields}), flush=True)

out(event="app started")
ENDPOINT = os.environ.get("IDENTITY_ENDPOINT")

def token(resource, timeout=15):
    if ENDPOINT:  # App Service protocol (endpoint mode)
        url = f"{ENDPOINT}?api-version=2019-08-01&resource={resource}"
        headers = {"X-IDENTITY-HEADER": os.environ["IDENTITY_HEADER"]}
    else:  # what a legacy managed-identity client sends: no override of the address
        url = ("http://169.254.169.254/metadata/identity/oauth2/token"
               f"?api-version=2018-02-01&resource={resource}")
        headers = {"Metadata": "true"}
    started = time.time()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError as e:
        return {"status": 0, "error": str(e), "seconds": time.time() - started}
    try:
        doc = json.loads(body)
    except ValueError:
        return {"status": status, "error": body[:200].decode(errors="replace")}
    result = {"status": status, "seconds": round(time.time() - started, 3)}
    if "access_token" in doc:
        payload = doc["access_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        result["claims"] = {k: claims.get(k) for k in ("aud", "appid", "tid", "iss")}
    else:
        result["error"] = doc
    return result

def on_term(signum, frame):
    # During its own shutdown the app still needs tokens (flushing, closing connections):
    # one request per new resource, so each needs the proxy and Entra, not a cache.
    out(event="app got SIGTERM")
    for i in range(int(os.environ.get("SHUTDOWN_REQUESTS", "0"))):
        out(event="shutdown token", n=i, **token(f"https://shutdown-{i}.example/"))
        time.sleep(0.5)
    out(event="app exits")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
for attempt in range(30):
    result = token(os.environ.get("RESOURCE", "https://management.azure.com/"))
    out(event="token", attempt=attempt, **result)
    if result["status"] == 200:
        break
    time.sleep(1)
while True:
    time.sleep(3600)
"""


@dataclass
class Workload:
    """One Deployment (one replica) and what it needs, in one namespace."""

    namespace: str
    jwks: str
    name: str = "app"
    mode: str = "redirect"
    classic: bool = False
    grace: int = 30
    shutdown_requests: int = 0
    restricted: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def selector(self) -> str:
        return f"app={self.name}"

    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{SERVICE_ACCOUNT}"

    def fake_entra(self) -> dict[str, Any]:
        connect = f"import socket; socket.create_connection(('127.0.0.1', {ENTRA_PORT}), 1)"
        return {
            "name": FAKE_ENTRA,
            "image": DEV_IMAGE,
            "imagePullPolicy": "Never",
            "restartPolicy": "Always",
            "command": ["python3", "-m", "proxy.devissuer"],
            "args": [
                "--host=127.0.0.1",
                f"--port={ENTRA_PORT}",
                f"--workdir={ENTRA_DIR}",
                f"--tenant-id={TENANT_ID}",
                f"--client-id={CLIENT_ID}",
                "--trust-jwks=/jwks/jwks.json",
                f"--federated-credential=issuer={SERVICE_ACCOUNT_ISSUER},subject={self.subject()}",
            ],
            "startupProbe": {
                "exec": {"command": ["python3", "-c", connect]},
                "periodSeconds": 1,
                "failureThreshold": 60,
            },
            "volumeMounts": [
                {"name": "entra", "mountPath": ENTRA_DIR},
                {"name": "jwks", "mountPath": "/jwks", "readOnly": True},
            ],
            "securityContext": {"runAsUser": 1501, "runAsGroup": 1501, **RESTRICTED},
        }

    def app(self) -> dict[str, Any]:
        env = {"SHUTDOWN_REQUESTS": str(self.shutdown_requests), **self.extra_env}
        return {
            "name": APP,
            "image": APP_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["python3", "-u", "-c", APP_SCRIPT],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, **RESTRICTED},
        }

    def service_account(self, client_id: str | None = CLIENT_ID) -> dict[str, Any]:
        """The workload's ServiceAccount, with the client id annotation unless None."""
        annotations = {"azure.workload.identity/client-id": client_id} if client_id else {}
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "annotations": annotations},
        }

    def jwks_config_map(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cluster-jwks"},
            "data": {"jwks.json": self.jwks},
        }

    def pod_spec(self) -> dict[str, Any]:
        """The app and the fake Entra ID, with the fake Entra ID's files (its CA, which the
        proxy trusts) and the cluster's keys."""
        return {
            "serviceAccountName": SERVICE_ACCOUNT,
            "terminationGracePeriodSeconds": self.grace,
            "volumes": [
                {"name": "entra", "emptyDir": {}},
                {"name": "jwks", "configMap": {"name": "cluster-jwks"}},
            ],
            "initContainers": [self.fake_entra()],
            "containers": [self.app()],
        }

    def manifest(self) -> str:
        """What the user writes: ServiceAccount, the JWKS ConfigMap, the Deployment."""
        labels = {"app": self.name}
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": self.pod_spec()},
            },
        }
        docs = [self.service_account(), self.jwks_config_map(), deployment]
        return yaml.safe_dump_all(docs, sort_keys=False)

    def injected(self) -> str:
        return after_inject(inject(self.manifest(), self.mode, self.classic))


def inject(manifest: str, mode: str, classic: bool, *, identity: bool = True) -> str:
    """`imds-proxy inject` as the guide runs it, with this cluster's images."""
    args = [
        sys.executable,
        "-m",
        "proxy",
        "inject",
        "-",
        f"--mode={mode}",
        f"--image={PROXY_IMAGE}",
        f"--init-image={INIT_IMAGE}",
        f"--authority-host=https://127.0.0.1:{ENTRA_PORT}/",
        *(["--client-id", CLIENT_ID, "--tenant-id", TENANT_ID] if identity else []),
        *(["--classic"] if classic else []),
    ]
    proc = subprocess.run(
        args, input=manifest, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"imds-proxy inject failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind = doc.get("kind")
    if kind == "List":
        return [s for item in doc.get("items") or [] for s in _pod_specs(item)]
    if kind == "Pod":
        return [doc["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    template = (doc.get("spec") or {}).get("template")
    return [template["spec"]] if isinstance(template, dict) and "spec" in template else []


def after_inject(text: str) -> str:
    """`localize` every pod template of an injected manifest."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        for spec in _pod_specs(doc):
            localize(spec)
    return yaml.safe_dump_all(docs, sort_keys=False)


def localize(spec: dict[str, Any]) -> dict[str, Any]:
    """The local issuer's CA for the proxy, and no image pulls (no registry here).

    The fake Entra ID stands for a service that exists before the pod: it goes first of
    the init containers (inject puts the proxy there), so that the app's start measures
    the proxy's startup alone. Idempotent: a second pass changes nothing.
    """
    inits = spec.get("initContainers") or []
    spec["initContainers"] = [
        *(c for c in inits if c["name"] == FAKE_ENTRA),
        *(c for c in inits if c["name"] != FAKE_ENTRA),
    ]
    for c in [*spec["initContainers"], *spec["containers"]]:
        c["imagePullPolicy"] = "Never"
        if c["name"] == PROXY:
            env = c.setdefault("env", [])
            if not any(e["name"] == "REQUESTS_CA_BUNDLE" for e in env):
                env.append({"name": "REQUESTS_CA_BUNDLE", "value": f"{ENTRA_DIR}/pki/ca.pem"})
            mounts = c.setdefault("volumeMounts", [])
            if not any(m["name"] == "entra" for m in mounts):
                mounts.append({"name": "entra", "mountPath": ENTRA_DIR, "readOnly": True})
    return spec


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a container's log (the proxy's and the app's are JSON lines)."""
    found = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            found.append(doc)
    return found


def deploy(kube: Kube, workload: Workload, timeout: float = 120) -> str:
    """Apply the injected workload; the name of its pod once Ready (failing with evidence)."""
    kube.apply(workload.namespace, workload.injected())
    pod: list[str] = []

    def ready() -> bool:
        pods = kube.pods(workload.namespace, workload.selector)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if not live:
            return False
        pod[:] = [live[0]["metadata"]["name"]]
        conditions = live[0].get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    try:
        kube.wait_for(ready, timeout, f"a Ready pod of {workload.name}")
    except KubeError as e:
        evidence = (
            kube.evidence(workload.namespace, pod[0])
            if pod
            else "no pod created:\n" + kube.describe(workload.namespace, "deployment,replicaset")
        )
        raise KubeError(f"{e}\n{evidence}") from None
    return pod[0]
