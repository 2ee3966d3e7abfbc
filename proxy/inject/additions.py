"""What one pod gets: the proxy, its init container, the identity, the App Service variables.

The shapes are deploy/examples/pod-mutated-*.yaml's (the webhook's): the same names, images,
arguments, probes and security contexts. The per-pod secret for the App Service endpoint is
the pod's uid through the downward API: unique per pod, unknown outside it until the pod
exists, and nothing to create or rotate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ruamel.yaml.comments import CommentedSeq

from proxy import __version__, config
from proxy.inject.ledger import Ledger, resolve

PROXY = "azwi-proxy"
PROXY_INIT = "azwi-proxy-init"
TOKEN_VOLUME = "azure-identity-token"
TOKEN_DIR = "/var/run/secrets/azure/tokens"
TOKEN_AUDIENCE = "api://AzureADTokenExchange"
TOKEN_SECONDS = 3600
PROXY_UID = 1501
USE_LABEL = "azure.workload.identity/use"
MODES = ("redirect", "endpoint", "both")
DEFAULT_IMAGE = f"registry.example/imds-proxy:{__version__}"
DEFAULT_INIT_IMAGE = f"registry.example/imds-proxy-init:{__version__}"


class InjectError(Exception):
    """This pod cannot be injected; the message says why."""


@dataclass(frozen=True)
class Options:
    mode: str = "redirect"
    classic: bool = False
    client_id: str | None = None
    tenant_id: str | None = None
    authority_host: str = config.DEFAULT_AUTHORITY_HOST
    image: str = DEFAULT_IMAGE
    init_image: str = DEFAULT_INIT_IMAGE
    proxy_port: int = config._DEFAULT["port"]
    metrics_port: int = config._DEFAULT["metrics_port"]
    log_level: str = "info"

    @property
    def redirect(self) -> bool:
        return self.mode in ("redirect", "both")

    @property
    def endpoint(self) -> bool:
        return self.mode in ("endpoint", "both")

    @property
    def probe(self) -> list[str]:
        return ["/proxy", "--probe", f"--proxy-port={self.proxy_port}"]


def inject(pod: Any, opts: Options) -> Ledger | None:
    """Add everything to `pod` and return the ledger; None if it already has a proxy."""
    spec = pod["spec"]
    if spec.get("hostNetwork") is True:
        raise InjectError(
            "hostNetwork pods share the node's network: the redirect would capture the "
            "node's own IMDS traffic and the proxy's ports would be the node's; refused"
        )
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if not all(isinstance(c, dict) and c.get("name") for c in containers):
        raise InjectError("every container needs a name")
    if any(c.get("name") in (PROXY, PROXY_INIT) for c in containers):
        return None
    with_identity = _identity_from_flags(pod, opts)
    ledger = Ledger(opts.mode)
    apps = [("containers", c) for c in spec.get("containers") or []]
    inits = [("initContainers", c) for c in spec.get("initContainers") or []]
    for where, container in [*inits, *apps]:
        path = f"spec.{where}[{container['name']}]"
        if with_identity:
            _add_env(ledger, pod, path, _identity_env(opts))
            _add_mount(ledger, pod, path)
        # Init containers only reach a native sidecar, which starts before them.
        if opts.endpoint and (where == "containers" or not opts.classic):
            _add_env(ledger, pod, path, _app_service_env(opts))
    proxy = _proxy_container(opts, with_identity)
    ledger.add(pod, "spec.containers" if opts.classic else "spec.initContainers", proxy, True)
    if opts.redirect:
        ledger.add(pod, "spec.initContainers", _init_container(opts), first=True)
    if with_identity and all(v.get("name") != TOKEN_VOLUME for v in spec.get("volumes") or []):
        ledger.add(pod, "spec.volumes", _token_volume())
    return ledger


def _identity_from_flags(pod: Any, opts: Options) -> bool:
    """True: write the AZURE_* variables and the token volume; False: the webhook will."""
    if opts.client_id and opts.tenant_id:
        return True
    if opts.client_id or opts.tenant_id:
        raise InjectError("give both --client-id and --tenant-id, or neither")
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if str(labels.get(USE_LABEL)).lower() == "true":
        return False
    raise InjectError(
        f'no --client-id/--tenant-id and the pod lacks the label {USE_LABEL}: "true", '
        "so nothing would give the proxy an identity"
    )


def _add_env(ledger: Ledger, pod: Any, container_path: str, env: list[dict[str, Any]]) -> None:
    present = {e.get("name") for e in resolve(pod, container_path).get("env") or []}
    for var in env:
        if var["name"] not in present:
            ledger.add(pod, f"{container_path}.env", var)


def _add_mount(ledger: Ledger, pod: Any, container_path: str) -> None:
    mounts = resolve(pod, container_path).get("volumeMounts") or []
    if all(m.get("name") != TOKEN_VOLUME and m.get("mountPath") != TOKEN_DIR for m in mounts):
        ledger.add(pod, f"{container_path}.volumeMounts", _token_mount())


def _identity_env(opts: Options) -> list[dict[str, Any]]:
    return [
        {"name": "AZURE_CLIENT_ID", "value": opts.client_id},
        {"name": "AZURE_TENANT_ID", "value": opts.tenant_id},
        {"name": "AZURE_FEDERATED_TOKEN_FILE", "value": f"{TOKEN_DIR}/{TOKEN_VOLUME}"},
        {"name": "AZURE_AUTHORITY_HOST", "value": opts.authority_host},
    ]


def _app_service_env(opts: Options) -> list[dict[str, Any]]:
    # IDENTITY_* with MSI_*: current SDKs read MSI_* alone as Azure ML's protocol.
    url = f"http://127.0.0.1:{opts.proxy_port}/msi/token"
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


def _token_volume() -> dict[str, Any]:
    token = {"path": TOKEN_VOLUME, "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS}
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}


def _flow(*items: str) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _proxy_container(opts: Options, with_identity: bool) -> dict[str, Any]:
    ports = [{"name": "imds", "containerPort": opts.proxy_port, "protocol": "TCP"}]
    if opts.metrics_port:
        ports.append({"name": "metrics", "containerPort": opts.metrics_port, "protocol": "TCP"})
    proxy: dict[str, Any] = {
        "name": PROXY,
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [f"--proxy-port={opts.proxy_port}", f"--log-level={opts.log_level}"],
        "ports": ports,
    }
    if opts.classic:
        proxy["lifecycle"] = {"postStart": {"exec": {"command": _flow(*opts.probe)}}}
    else:
        proxy["restartPolicy"] = "Always"
        # The app waits for the startupProbe. Every second, so the first run comes within a
        # second of the proxy's start (at 10 s, the app started up to 10 s after the proxy
        # listened); one run polls /readyz for up to 7 s and answers as soon as it is ready.
        # Four failed runs of ~8 s each keep the old allowance of ~30 s.
        for name, period, failures in (("startupProbe", 1, 4), ("readinessProbe", 30, 3)):
            proxy[name] = {
                "exec": {"command": _flow(*opts.probe)},
                "timeoutSeconds": 10,  # one probe polls /readyz for up to 7 s
                "periodSeconds": period,
                "failureThreshold": failures,
            }
    env = [*(_identity_env(opts) if with_identity else [])]
    if opts.endpoint:
        env.append({"name": "IDENTITY_HEADER", **_pod_uid()})
    if env:
        proxy["env"] = env
    if with_identity:
        proxy["volumeMounts"] = [_token_mount()]
    proxy["securityContext"] = {
        "runAsUser": PROXY_UID,
        "runAsGroup": PROXY_UID,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": _flow("ALL")},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return proxy


def _init_container(opts: Options) -> dict[str, Any]:
    return {
        "name": PROXY_INIT,
        "image": opts.init_image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "PROXY_PORT", "value": str(opts.proxy_port)}],
        "securityContext": {
            # The redirect writes the pod's nat table: root with NET_ADMIN, as upstream.
            "privileged": True,
            "runAsUser": 0,
            "capabilities": {"add": _flow("NET_ADMIN"), "drop": _flow("ALL")},
        },
    }
