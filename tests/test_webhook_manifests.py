"""deploy/webhook: valid Kubernetes objects, and true to the webhook they deploy.

Validated as tests/test_manifests.py validates the examples (the 1.33 schemas of
kubernetes-validate, strict); cert-manager's kinds are not in those schemas and are checked
field by field. The contract checks tie the files to each other and to the code: the
Deployment's arguments parse with the webhook's own parser, the paths and ports agree, the
configuration's choices are the documented ones, and the system namespaces stay out.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.devissuer.pki import generate_tls_files
from proxy.webhook import asks, settings
from tests.support.webhook_registration import loopback_configuration

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "webhook"
K8S_VERSION = "1.33.0"
SYSTEM = {"kube-system", "kube-public", "kube-node-lease", "imds-proxy-system"}

Obj = dict[str, Any]


def _objects() -> list[tuple[str, Obj]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


OBJECTS = _objects()


def _one(kind: str) -> Obj:
    (obj,) = [o for _, o in OBJECTS if o["kind"] == kind]
    return obj


@pytest.mark.parametrize(
    "obj",
    [o for _, o in OBJECTS if not o["apiVersion"].startswith("cert-manager.io/")],
    ids=[i for i, o in OBJECTS if not o["apiVersion"].startswith("cert-manager.io/")],
)
def test_valid_against_kubernetes_schema(obj: Obj) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file_but_the_manual_secret() -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "tls-secret.yaml"}
    assert set(listed) == files


def _webhook_container() -> Obj:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_deployment_is_two_non_root_read_only_replicas() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    ctx = _webhook_container()["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_deployment_runs_the_tools_image_as_it_is_built() -> None:
    """The image Dockerfile.tools builds: its name, its user, the command on its PATH."""
    import tomllib

    container = _webhook_container()
    assert container["image"].rpartition(":")[0].endswith("/imds-proxy-tools")
    dockerfile = (ROOT / "Dockerfile.tools").read_text()
    assert "docker build -f Dockerfile.tools -t imds-proxy-tools ." in dockerfile
    pod = _one("Deployment")["spec"]["template"]["spec"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert f"\nUSER {user}\n" in dockerfile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tools = project["tool"]["imds-oidc-proxy"]["images"]["tools"]
    assert container["command"][0] in tools["scripts"]
    assert "proxy.webhook" in tools["packages"]


def test_arguments_parse_and_agree_with_mounts_ports_and_probes() -> None:
    container = _webhook_container()
    assert container["command"] == ["imds-proxy", "webhook"]
    parsed = settings.load(container["args"], {})
    mount = container["volumeMounts"][0]["mountPath"]
    assert parsed.tls_cert_file == f"{mount}/tls.crt" and parsed.tls_key_file == f"{mount}/tls.key"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhook": parsed.port, "metrics": parsed.metrics_port}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "webhook", "scheme": "HTTPS"}
    secret = _one("Deployment")["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert secret == _one("Certificate")["spec"]["secretName"]
    assert secret == _one("Secret")["metadata"]["name"]
    assert _one("Secret")["type"] == "kubernetes.io/tls"


def test_service_reaches_the_webhook_port() -> None:
    service = _one("Service")
    assert service["spec"]["selector"] == _one("Deployment")["spec"]["selector"]["matchLabels"]
    (webhook_port,) = [p for p in service["spec"]["ports"] if p["name"] == "webhook"]
    assert webhook_port == {
        "name": "webhook",
        "port": 443,
        "targetPort": "webhook",
        "protocol": "TCP",
    }


def test_certificate_names_the_service() -> None:
    service = _one("Service")["metadata"]
    names = _one("Certificate")["spec"]["dnsNames"]
    assert f"{service['name']}.{service['namespace']}.svc" in names
    annotation = _one("MutatingWebhookConfiguration")["metadata"]["annotations"]
    cert = _one("Certificate")["metadata"]
    assert annotation["cert-manager.io/inject-ca-from"] == f"{cert['namespace']}/{cert['name']}"


def test_webhook_configuration_choices() -> None:
    config = _one("MutatingWebhookConfiguration")
    service = _one("Service")["metadata"]
    labelled, namespaced = config["webhooks"]
    for hook in (labelled, namespaced):
        assert hook["clientConfig"]["service"] == {
            "name": service["name"],
            "namespace": service["namespace"],
            "path": "/mutate-v1-pod",
            "port": 443,
        }
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["rules"][0]["operations"] == ["CREATE"]
        assert hook["rules"][0]["resources"] == ["pods"]
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        # The webhook answers within --api-timeout, under the API server's wait.
        assert settings.load(_webhook_container()["args"], {}).api_timeout < hook["timeoutSeconds"]
        assert hook["timeoutSeconds"] == 5
        kept_out = [
            e
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        ]
        assert kept_out[0]["operator"] == "NotIn" and set(kept_out[0]["values"]) == SYSTEM
    assert labelled["objectSelector"] == {"matchLabels": {asks.USE_LABEL: "true"}}
    # Every other pod of an opted-in namespace: no pod reaches both entries.
    assert namespaced["objectSelector"]["matchExpressions"] == [
        {"key": asks.USE_LABEL, "operator": "NotIn", "values": ["true"]}
    ]
    assert {
        "key": asks.NAMESPACE_LABEL,
        "operator": "In",
        "values": [asks.NAMESPACE_ENABLED],
    } in namespaced["namespaceSelector"]["matchExpressions"]


def test_rbac_reads_only_what_the_webhook_reads() -> None:
    role = _one("ClusterRole")
    rules = {
        (r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"] for res in r["resources"]
    }
    assert rules == {
        ("", "serviceaccounts"): {"get"},
        ("", "namespaces"): {"get"},
        ("aadpodidentity.k8s.io", "azureidentitybindings"): {"get", "list"},
        ("aadpodidentity.k8s.io", "azureidentities"): {"get", "list"},
    }
    binding = _one("ClusterRoleBinding")
    account = _one("ServiceAccount")["metadata"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]


def test_the_loopback_registration_is_the_shipped_one_with_a_url(tmp_path: Path) -> None:
    """What the real-cluster tier registers: valid, and differing only in clientConfig."""
    tls = generate_tls_files(tmp_path)
    config = loopback_configuration(9443, tls.ca_bundle.read_bytes())
    kubernetes_validate.validate(config, K8S_VERSION, strict=True)
    shipped = _one("MutatingWebhookConfiguration")
    for ours, theirs in zip(config["webhooks"], shipped["webhooks"], strict=True):
        assert ours["clientConfig"]["url"] == "https://127.0.0.1:9443/mutate-v1-pod"
        assert base64.b64decode(ours["clientConfig"]["caBundle"]) == tls.ca_bundle.read_bytes()
        assert {k: v for k, v in ours.items() if k != "clientConfig"} == {
            k: v for k, v in theirs.items() if k != "clientConfig"
        }
