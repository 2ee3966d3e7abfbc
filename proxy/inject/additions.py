"""What one pod gets: the Workload ID identity, the proxy, its init container, the App Service
variables. One implementation with two front ends: `imds-proxy inject` (manifests) and
`imds-proxy webhook` (AdmissionReview), so a pod looks the same whichever way it was mutated.

The shapes are deploy/examples/pod-mutated-*.yaml's (the webhook's): the same names, images,
arguments, probes and security contexts. The per-pod secret for the App Service endpoint is
the pod's uid through the downward API: unique per pod, unknown outside it until the pod
exists, and nothing to create or rotate.

Everything here works on plain mappings and lists (JSON or round-trip YAML alike) and is
idempotent: a variable, mount, volume or proxy that is already there is kept, so running it
again on its own output (a webhook's reinvocation) adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy import __version__, config
from proxy.inject.ledger import Ledger, resolve
from proxy.wellknown import PROXY_UID, TOKEN_EXCHANGE_AUDIENCE

PROXY = "azwi-proxy"
PROXY_INIT = "azwi-proxy-init"
PROXY_NAMES = (PROXY, PROXY_INIT)
"""Upstream's names too: a pod has one proxy, whichever webhook or tool added it."""
TOKEN_VOLUME = "azure-identity-token"
TOKEN_DIR = "/var/run/secrets/azure/tokens"
TOKEN_SECONDS = 3600
TOKEN_SECONDS_RANGE = (3600, 86400)
"""What the Workload ID webhook accepts for `service-account-token-expiration`."""
USE_LABEL = "azure.workload.identity/use"
MODES = ("redirect", "endpoint", "both")
DEFAULT_MODE = "redirect"
IDENTITY_ONLY = "identity"
"""The ledger's mode when only the identity was added (the webhook, without a proxy)."""
DEFAULT_IMAGE = f"registry.example/imds-proxy:{__version__}"
DEFAULT_INIT_IMAGE = f"registry.example/imds-proxy-init:{__version__}"


class InjectError(Exception):
    """This pod cannot be injected; the message says why."""


class Flow(list[Any]):
    """A short list of words (a command, capabilities), best written on one line in YAML."""


@dataclass(frozen=True)
class Identity:
    """The Workload ID webhook's part: variables and the projected token, in every container.

    An empty value is left out, as the webhook does (a service account without a client id
    gives its pods no `AZURE_CLIENT_ID`).
    """

    client_id: str | None
    tenant_id: str | None
    authority_host: str = config.DEFAULT_AUTHORITY_HOST
    token_seconds: int = TOKEN_SECONDS
    skip_containers: frozenset[str] = frozenset()
    """Containers named in `azure.workload.identity/skip-containers`: given nothing."""


@dataclass(frozen=True)
class Sidecar:
    """This project's part: the proxy, and the init container that redirects IMDS to it."""

    mode: str = DEFAULT_MODE
    classic: bool = False
    image: str = DEFAULT_IMAGE
    init_image: str = DEFAULT_INIT_IMAGE
    proxy_port: int = config.DEFAULT_PROXY_PORT
    metrics_port: int = config.DEFAULT_METRICS_PORT
    log_level: str = config.DEFAULT_LOG_LEVEL
    proxy_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """More variables for the proxy alone (the webhook's carried-over identity selectors)."""

    @property
    def redirect(self) -> bool:
        return self.mode in ("redirect", "both")

    @property
    def endpoint(self) -> bool:
        return self.mode in ("endpoint", "both")

    @property
    def probe(self) -> list[str]:
        return ["/proxy", "--probe", f"--proxy-port={self.proxy_port}"]


def proxy_containers(pod: Any) -> list[str]:
    """Names of the proxy containers the pod already has (this project's or upstream's)."""
    spec = pod.get("spec") or {}
    found = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return [str(c["name"]) for c in found if isinstance(c, dict) and c.get("name") in PROXY_NAMES]


def inject(
    pod: Any, identity: Identity | None, sidecar: Sidecar | None, ledger: Ledger | None = None
) -> Ledger:
    """Add what is missing of `identity` and `sidecar` to `pod`; the ledger lists it."""
    spec = pod["spec"]
    if sidecar is not None and spec.get("hostNetwork") is True:
        raise InjectError(
            "hostNetwork pods share the node's network: the redirect would capture the "
            "node's own IMDS traffic and the proxy's ports would be the node's; refused"
        )
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if not all(isinstance(c, dict) and c.get("name") for c in containers):
        raise InjectError("every container needs a name")
    mode = sidecar.mode if sidecar is not None else IDENTITY_ONLY
    ledger = ledger if ledger is not None else Ledger(mode)
    adding = sidecar if sidecar is not None and not proxy_containers(pod) else None
    endpoint = adding if adding is not None and adding.endpoint else None
    apps = [("containers", c) for c in spec.get("containers") or []]
    inits = [("initContainers", c) for c in spec.get("initContainers") or []]
    for where, container in [*inits, *apps]:
        if container["name"] in PROXY_NAMES:
            continue  # built with what they need (or another webhook's: theirs to fill)
        path = f"spec.{where}[{container['name']}]"
        if identity is not None and container["name"] not in identity.skip_containers:
            _add_env(ledger, pod, path, _identity_env(identity))
            _add_mount(ledger, pod, path)
        # Init containers only reach a native sidecar, which starts before them.
        if endpoint is not None and (where == "containers" or not endpoint.classic):
            _add_env(ledger, pod, path, _app_service_env(endpoint))
    if adding is not None:
        proxy = _proxy_container(adding, identity)
        where = "spec.containers" if adding.classic else "spec.initContainers"
        ledger.add(pod, where, proxy, first=True)
        if adding.redirect:
            ledger.add(pod, "spec.initContainers", _init_container(adding), first=True)
    if identity is not None and all(
        v.get("name") != TOKEN_VOLUME for v in spec.get("volumes") or []
    ):
        ledger.add(pod, "spec.volumes", _token_volume(identity))
    return ledger


def _add_env(ledger: Ledger, pod: Any, container_path: str, env: list[dict[str, Any]]) -> None:
    present = {e.get("name") for e in resolve(pod, container_path).get("env") or []}
    for var in env:
        if var["name"] not in present:
            ledger.add(pod, f"{container_path}.env", var)


def _add_mount(ledger: Ledger, pod: Any, container_path: str) -> None:
    mounts = resolve(pod, container_path).get("volumeMounts") or []
    if all(m.get("name") != TOKEN_VOLUME and m.get("mountPath") != TOKEN_DIR for m in mounts):
        ledger.add(pod, f"{container_path}.volumeMounts", _token_mount())


def _identity_env(identity: Identity) -> list[dict[str, Any]]:
    env = [
        ("AZURE_CLIENT_ID", identity.client_id),
        ("AZURE_TENANT_ID", identity.tenant_id),
        ("AZURE_FEDERATED_TOKEN_FILE", f"{TOKEN_DIR}/{TOKEN_VOLUME}"),
        ("AZURE_AUTHORITY_HOST", identity.authority_host),
    ]
    return [{"name": name, "value": value} for name, value in env if value]


def _app_service_env(sidecar: Sidecar) -> list[dict[str, Any]]:
    # IDENTITY_* with MSI_*: current SDKs read MSI_* alone as Azure ML's protocol.
    url = f"http://127.0.0.1:{sidecar.proxy_port}/msi/token"
    return [
        {"name": "IDENTITY_ENDPOINT", "value": url},
        {"name": "IDENTITY_HEADER", **_pod_uid()},
        {"name": "MSI_ENDPOINT", "value": url},
        {"name": "MSI_SECRET", **_pod_uid()},
    ]


def _pod_uid() -> dict[str, Any]:
    """A fresh mapping each time: a shared one would be written as a YAML anchor and alias."""
    return {"valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}


def _token_mount() -> dict[str, Any]:
    return {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}


def _token_volume(identity: Identity) -> dict[str, Any]:
    token = {
        "path": TOKEN_VOLUME,
        "audience": TOKEN_EXCHANGE_AUDIENCE,
        "expirationSeconds": identity.token_seconds,
    }
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}


def _proxy_container(sidecar: Sidecar, identity: Identity | None) -> dict[str, Any]:
    ports = [{"name": "imds", "containerPort": sidecar.proxy_port, "protocol": "TCP"}]
    if sidecar.metrics_port:
        ports.append({"name": "metrics", "containerPort": sidecar.metrics_port, "protocol": "TCP"})
    proxy: dict[str, Any] = {
        "name": PROXY,
        "image": sidecar.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [f"--proxy-port={sidecar.proxy_port}", f"--log-level={sidecar.log_level}"],
        "ports": ports,
    }
    if sidecar.classic:
        proxy["lifecycle"] = {"postStart": {"exec": {"command": Flow(sidecar.probe)}}}
    else:
        proxy["restartPolicy"] = "Always"
        # The app waits for the startupProbe. Every second, so the first run comes within a
        # second of the proxy's start (at 10 s, the app started up to 10 s after the proxy
        # listened); one run polls /readyz for up to 7 s and answers as soon as it is ready.
        # Four failed runs of ~8 s each keep the old allowance of ~30 s.
        for name, period, failures in (("startupProbe", 1, 4), ("readinessProbe", 30, 3)):
            proxy[name] = {
                "exec": {"command": Flow(sidecar.probe)},
                "timeoutSeconds": 10,  # one probe polls /readyz for up to 7 s
                "periodSeconds": period,
                "failureThreshold": failures,
            }
    env = _identity_env(identity) if identity is not None else []
    env += [{"name": name, "value": value} for name, value in sidecar.proxy_env]
    if sidecar.endpoint:
        env.append({"name": "IDENTITY_HEADER", **_pod_uid()})
    if env:
        proxy["env"] = env
    if identity is not None:
        proxy["volumeMounts"] = [_token_mount()]
    proxy["securityContext"] = {
        "runAsUser": PROXY_UID,
        "runAsGroup": PROXY_UID,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": Flow(["ALL"])},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return proxy


def _init_container(sidecar: Sidecar) -> dict[str, Any]:
    return {
        "name": PROXY_INIT,
        "image": sidecar.init_image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "PROXY_PORT", "value": str(sidecar.proxy_port)}],
        "securityContext": {
            # The redirect writes the pod's nat table: root with NET_ADMIN, as upstream.
            "privileged": True,
            "runAsUser": 0,
            "capabilities": {"add": Flow(["NET_ADMIN"]), "drop": Flow(["ALL"])},
        },
    }
