"""The webhook's AdmissionReview handling, in process, against a loopback API stand-in.

Every answer's JSONPatch is applied to the pod that was sent (with `jsonpatch`, as the API
server would) and the result is what is checked, and validated against the Kubernetes
schema, so the patch and the mutation cannot disagree unnoticed.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from proxy.inject import cli
from proxy.inject.ledger import ANNOTATION as LEDGER
from proxy.webhook import kube, server
from proxy.webhook.metrics import WebhookMetrics
from proxy.webhook.mutate import Mutator
from proxy.webhook.settings import Settings
from tests.support.kube_stand_in import KubeStandIn
from tests.support.webhook_process import pod_creation_review

Obj = dict[str, Any]
EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "examples"
K8S_VERSION = "1.33.0"
"""As tests/test_manifests.py: native sidecars are in the schema from 1.29."""
CLIENT = "00000000-0000-0000-0000-000000000001"
TENANT = "00000000-0000-0000-0000-0000000000aa"
OTHER_CLIENT = "3f1c2b9a-5d4e-4f60-8a7b-9c0d1e2f3a4b"
RESOURCE_ID = (
    "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/"
    "userAssignedIdentities/legacy"
)
DECISIONS = "imds-proxy.azure.workload.identity/decisions"
WI = "azure.workload.identity/"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeStandIn]:
    with KubeStandIn() as stand_in:
        stand_in.namespace("default")
        stand_in.namespace("legacy", {"imds-proxy.azure.workload.identity/inject": "enabled"})
        annotations = {WI + "client-id": CLIENT, WI + "tenant-id": TENANT}
        stand_in.service_account("default", "workload-identity-sa", annotations)
        stand_in.service_account("legacy", "default", {})
        yield stand_in


class Webhook:
    """The webhook's aiohttp app in process, with settings a test may change."""

    def __init__(self, client: TestClient[Any, Any], mutator: Mutator) -> None:
        self.client = client
        self.mutator = mutator

    def configure(self, **changes: Any) -> None:
        self.mutator.settings = dataclasses.replace(self.mutator.settings, **changes)
        if "sidecar" in changes:
            self.mutator.classic = changes["sidecar"] == "classic"

    async def post(self, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.client.post("/mutate-v1-pod", data=data) as response:
            text = await response.text()
            return response.status, (json.loads(text) if response.status == 200 else text)

    async def review(self, pod: Obj, namespace: str = "default", **request: Any) -> tuple[Obj, Obj]:
        """The response, and the pod with its patch applied."""
        uid = "7b1e7c57-0000-4000-8000-000000000001"
        status, answer = await self.post(pod_creation_review(pod, uid, namespace, **request))
        assert status == 200, answer
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        response = answer["response"]
        assert response["uid"] == uid
        patched = copy.deepcopy(pod)
        if "patch" in response:
            assert response["patchType"] == "JSONPatch"
            ops = json.loads(base64.b64decode(response["patch"]))
            patched = jsonpatch.apply_patch(pod, ops)
            kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
        return response, patched


@pytest.fixture
async def webhook(api: KubeStandIn, tmp_path: Path) -> AsyncIterator[Webhook]:
    settings = Settings(kubeconfig=str(api.kubeconfig(tmp_path)), sidecar="native", api_timeout=1.0)
    creds = kube.credentials(settings.kubeconfig, {})
    metrics = WebhookMetrics()
    mutator = Mutator(settings, kube.Api(creds, settings.api_timeout), metrics)
    async with TestClient(TestServer(server.build_app(mutator, metrics))) as client:
        yield Webhook(client, mutator)
    await mutator.api.close()


def _example(name: str) -> Obj:
    return yaml.safe_load((EXAMPLES / name).read_text())  # type: ignore[no-any-return]


def _pod(
    labels: Obj | None = None,
    annotations: Obj | None = None,
    containers: tuple[str, ...] = ("app",),
    sa: str | None = None,
    **spec: Any,
) -> Obj:
    meta: Obj = {"generateName": "web-"}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    body: Obj = {"containers": [{"name": n, "image": "registry.example/app:1"} for n in containers]}
    if sa:
        body["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {**body, **spec}}


def _guide_pod(**annotations: str) -> Obj:
    return _pod(
        {WI + "use": "true"},
        {WI + "inject-proxy-sidecar": "true", **annotations},
        sa="workload-identity-sa",
    )


def _all(pod: Obj) -> list[Obj]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def _names(containers: list[Obj] | None) -> list[str]:
    return [c["name"] for c in containers or []]


def _container(pod: Obj, name: str) -> Obj:
    return next(c for c in _all(pod) if c["name"] == name)


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _decisions(pod: Obj) -> Obj:
    return json.loads(pod["metadata"]["annotations"][DECISIONS])  # type: ignore[no-any-return]


def _strip_ours(pod: Obj) -> Obj:
    """The pod without this project's bookkeeping (ledger, decisions, seccomp, source)."""
    pod = _without_source(pod)
    for key in (LEDGER, DECISIONS):
        pod["metadata"]["annotations"].pop(key)
    assert _container(pod, "azwi-proxy")["securityContext"].pop("seccompProfile")
    return pod


def _without_source(pod: Obj) -> Obj:
    """The pod without the proxy's IMDS_PROXY_IDENTITY_SOURCE (checked: it is there)."""
    pod = copy.deepcopy(pod)
    proxy = _container(pod, "azwi-proxy")
    sources = [e for e in proxy["env"] if e["name"] == "IMDS_PROXY_IDENTITY_SOURCE"]
    assert len(sources) == 1 and sources[0]["value"].startswith("client id ")
    proxy["env"].remove(sources[0])
    return pod


# -- the guide's annotations -------------------------------------------------------------


@pytest.mark.parametrize(
    ("sidecar", "example"),
    [("native", "pod-mutated-native-sidecar.yaml"), ("classic", "pod-mutated-sidecar.yaml")],
)
async def test_the_guides_pod_becomes_the_reference_pod(
    webhook: Webhook, sidecar: str, example: str
) -> None:
    webhook.configure(sidecar=sidecar)
    pod = _example("pod.yaml")
    response, patched = await webhook.review(pod)
    assert response["allowed"] is True and "warnings" not in response
    assert _strip_ours(patched) == _example(example)
    decisions = _decisions(patched)
    assert decisions["clientId"] == {
        "from": "service account default/workload-identity-sa",
        "value": CLIENT,
    }
    assert decisions["proxy"].startswith(f"added ({sidecar} sidecar, redirect, port 8000)")
    assert "pod label azure.workload.identity/use" in decisions["asked"]


async def test_same_mutation_as_inject(webhook: Webhook, tmp_path: Path) -> None:
    """One implementation: the webhook's pod is `imds-proxy inject`'s, ledger and all."""
    _, patched = await webhook.review(_example("pod.yaml"))
    out = tmp_path / "out.yaml"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert (
            cli.main([str(EXAMPLES / "pod.yaml"), "--client-id", CLIENT, "--tenant-id", TENANT])
            == 0
        )
    out.write_text(buffer.getvalue())
    injected = yaml.safe_load(out.read_text())
    del patched["metadata"]["annotations"][DECISIONS]
    assert _without_source(patched) == injected


async def test_proxy_port_annotation(webhook: Webhook) -> None:
    _, patched = await webhook.review(_guide_pod(**{WI + "proxy-sidecar-port": "9100"}))
    assert _env(_container(patched, "azwi-proxy-init")) == {"PROXY_PORT": "9100"}
    proxy = _container(patched, "azwi-proxy")
    assert proxy["args"][0] == "--proxy-port=9100"
    assert proxy["startupProbe"]["exec"]["command"][-1] == "--proxy-port=9100"


@pytest.mark.parametrize("port", ["eighty", "0", "70000"])
async def test_a_bad_proxy_port_is_denied_naming_the_annotation(
    webhook: Webhook, port: str
) -> None:
    response, _ = await webhook.review(_guide_pod(**{WI + "proxy-sidecar-port": port}))
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "azure.workload.identity/proxy-sidecar-port" in response["status"]["message"]


async def test_token_expiration_from_the_pod_then_the_service_account(
    webhook: Webhook, api: KubeStandIn
) -> None:
    def seconds(pod: Obj) -> int:
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "azure-identity-token"]
        return int(volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"])

    _, patched = await webhook.review(
        _guide_pod(**{WI + "service-account-token-expiration": "7200"})
    )
    assert seconds(patched) == 7200
    api.service_account(
        "default",
        "workload-identity-sa",
        {
            WI + "client-id": CLIENT,
            WI + "tenant-id": TENANT,
            WI + "service-account-token-expiration": "86400",
        },
    )
    _, patched = await webhook.review(_guide_pod())
    assert seconds(patched) == 86400
    response, _ = await webhook.review(
        _guide_pod(**{WI + "service-account-token-expiration": "60"})
    )
    assert response["allowed"] is False
    assert "service-account-token-expiration on the pod" in response["status"]["message"]


async def test_skip_containers_get_nothing(webhook: Webhook) -> None:
    pod = _guide_pod(**{WI + "skip-containers": "istio-proxy; log-shipper"})
    pod["spec"]["containers"] += [
        {"name": "istio-proxy", "image": "i"},
        {"name": "log-shipper", "image": "l"},
    ]
    _, patched = await webhook.review(pod)
    for name in ("istio-proxy", "log-shipper"):
        container = _container(patched, name)
        assert "env" not in container and "volumeMounts" not in container
    assert _env(_container(patched, "app"))["AZURE_CLIENT_ID"] == CLIENT


async def test_identity_only_without_the_proxy_annotation(
    webhook: Webhook, api: KubeStandIn
) -> None:
    """The Workload ID webhook's contract alone: variables and token, no proxy."""
    api.service_account("default", "plain", {})
    webhook.configure(tenant_id=TENANT)
    response, patched = await webhook.review(_pod({WI + "use": "true"}, sa="plain"))
    assert response["allowed"] is True
    assert (
        _names(patched["spec"]["containers"]) == ["app"] and "initContainers" not in patched["spec"]
    )
    env = _env(_container(patched, "app"))
    assert env == {
        "AZURE_TENANT_ID": TENANT,  # from the webhook's setting
        "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    }  # no client id: none is known, and an empty one is left out, as upstream
    assert any("no client id" in w for w in response["warnings"])
    assert _decisions(patched)["tenantId"] == "webhook setting"


async def test_the_proxy_needs_a_tenant(webhook: Webhook, api: KubeStandIn) -> None:
    api.service_account("default", "workload-identity-sa", {WI + "client-id": CLIENT})
    response, _ = await webhook.review(_guide_pod())
    assert response["allowed"] is False
    assert "azure.workload.identity/tenant-id" in response["status"]["message"]
    assert "--tenant-id" in response["status"]["message"]


@pytest.mark.parametrize(
    ("annotations", "says"),
    [
        ({WI + "client-id": "web-app", WI + "tenant-id": TENANT}, "client id 'web-app'"),
        ({WI + "client-id": CLIENT, WI + "tenant-id": "not a tenant"}, "tenant id 'not a tenant'"),
    ],
)
async def test_ids_the_proxy_would_refuse_are_denied(
    webhook: Webhook, api: KubeStandIn, annotations: dict[str, str], says: str
) -> None:
    """The proxy would stop at start on them (crash-looping the pod): say so at creation."""
    api.service_account("default", "workload-identity-sa", annotations)
    response, _ = await webhook.review(_guide_pod())
    assert response["allowed"] is False and says in response["status"]["message"]


async def test_endpoint_mode_annotation(webhook: Webhook) -> None:
    _, patched = await webhook.review(
        _guide_pod(**{"imds-proxy.azure.workload.identity/mode": "endpoint"})
    )
    assert _names(patched["spec"]["initContainers"]) == ["azwi-proxy"]  # no privileged init
    assert (
        _env(_container(patched, "app"))["IDENTITY_ENDPOINT"] == "http://127.0.0.1:8000/msi/token"
    )


async def test_host_network_pods_get_no_proxy(webhook: Webhook) -> None:
    response, _ = await webhook.review(
        _guide_pod() | {"spec": {**_guide_pod()["spec"], "hostNetwork": True}}
    )
    assert response["allowed"] is False and "hostNetwork" in response["status"]["message"]


async def test_a_classic_sidecar_in_a_jobs_pod_is_warned_about(webhook: Webhook) -> None:
    webhook.configure(sidecar="classic")
    pod = _guide_pod()
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "migrate", "uid": "u", "controller": True}
    ]
    response, patched = await webhook.review(pod)
    assert any("keeps a Job's pod running" in w for w in response["warnings"])
    assert patched["spec"]["containers"][0]["name"] == "azwi-proxy"


# -- namespace opt-in and pod opt-out ------------------------------------------------------


async def test_a_labelled_namespace_injects_every_pod(webhook: Webhook, api: KubeStandIn) -> None:
    api.service_account("legacy", "default", {WI + "client-id": CLIENT, WI + "tenant-id": TENANT})
    response, patched = await webhook.review(_pod(), namespace="legacy")
    assert response["allowed"] is True
    assert _names(patched["spec"]["initContainers"]) == ["azwi-proxy-init", "azwi-proxy"]
    assert _env(_container(patched, "app"))["AZURE_CLIENT_ID"] == CLIENT
    assert (
        _decisions(patched)["asked"] == "namespace label imds-proxy.azure.workload.identity/inject"
    )


async def test_an_unlabelled_namespace_leaves_plain_pods_alone(webhook: Webhook) -> None:
    response, patched = await webhook.review(_pod())
    assert response == {"uid": response["uid"], "allowed": True}
    assert patched == _pod()


async def test_the_opt_out_annotation(webhook: Webhook, api: KubeStandIn) -> None:
    api.service_account("legacy", "default", {WI + "client-id": CLIENT, WI + "tenant-id": TENANT})
    opt_out = {"imds-proxy.azure.workload.identity/inject": "false"}
    response, patched = await webhook.review(_pod(annotations=opt_out), namespace="legacy")
    assert "patch" not in response and patched == _pod(annotations=opt_out)
    # Labelled for Workload ID itself: the identity still, the proxy not.
    _, patched = await webhook.review(_pod({WI + "use": "true"}, opt_out), namespace="legacy")
    assert "initContainers" not in patched["spec"]
    assert _env(_container(patched, "app"))["AZURE_CLIENT_ID"] == CLIENT
    assert _decisions(patched)["proxy"] == "opted out"


async def test_host_network_pods_of_a_labelled_namespace_are_admitted_unchanged(
    webhook: Webhook,
) -> None:
    pod = _pod(hostNetwork=True)
    response, patched = await webhook.review(pod, namespace="legacy")
    assert response["allowed"] is True and patched == pod
    assert "hostNetwork pod: no proxy from the namespace label" in response["warnings"][0]


# -- carry-over from pod-managed identity ---------------------------------------------------


def _legacy(api: KubeStandIn, namespace: str = "legacy", **spec_case: str) -> None:
    api.service_account(namespace, "default", {WI + "tenant-id": TENANT})
    api.azure_identity(
        namespace,
        "legacy-mi",
        {"type": 0, spec_case.get("client", "clientID"): OTHER_CLIENT, "resourceID": RESOURCE_ID},
    )
    api.binding(
        namespace,
        "legacy-binding",
        {
            spec_case.get("identity", "azureIdentity"): "legacy-mi",
            spec_case.get("selector", "selector"): "legacy-app",
        },
    )


@pytest.mark.parametrize(
    "spelling",
    [{}, {"client": "ClientID", "identity": "AzureIdentity", "selector": "Selector"}],
)
async def test_aadpodidbinding_gives_the_client_id(
    webhook: Webhook, api: KubeStandIn, spelling: dict[str, str]
) -> None:
    _legacy(api, **spelling)
    pod = _pod({"aadpodidbinding": "legacy-app"})
    response, patched = await webhook.review(pod, namespace="legacy")
    assert response["allowed"] is True
    for container in ("app", "azwi-proxy"):
        assert _env(_container(patched, container))["AZURE_CLIENT_ID"] == OTHER_CLIENT
    # Callers that asked pod identity for mi_res_id=... still find it.
    proxy_env = _env(_container(patched, "azwi-proxy"))
    assert proxy_env["IMDS_PROXY_IDENTITIES"] == f"{OTHER_CLIENT},resource_id={RESOURCE_ID}"
    # The proxy reports where it came from (`imds-proxy report`).
    assert proxy_env["IMDS_PROXY_IDENTITY_SOURCE"] == (
        f"client id {OTHER_CLIENT} from aadpodidbinding legacy-app: AzureIdentityBinding "
        "legacy/legacy-binding -> AzureIdentity legacy/legacy-mi"
    )
    assert _decisions(patched)["clientId"] == {
        "from": "aadpodidbinding legacy-app: AzureIdentityBinding legacy/legacy-binding -> "
        "AzureIdentity legacy/legacy-mi",
        "value": OTHER_CLIENT,
    }


async def test_the_service_accounts_client_id_wins(webhook: Webhook, api: KubeStandIn) -> None:
    _legacy(api)
    api.service_account("legacy", "default", {WI + "client-id": CLIENT, WI + "tenant-id": TENANT})
    _, patched = await webhook.review(_pod({"aadpodidbinding": "legacy-app"}), namespace="legacy")
    assert _env(_container(patched, "app"))["AZURE_CLIENT_ID"] == CLIENT
    assert _decisions(patched)["aadpodidbinding"].startswith("ignored")


async def test_carry_over_without_the_crds_or_a_match(webhook: Webhook, api: KubeStandIn) -> None:
    _legacy(api)
    api.crds = False
    response, patched = await webhook.review(
        _pod({"aadpodidbinding": "legacy-app"}), namespace="legacy"
    )
    assert "AZURE_CLIENT_ID" not in _env(_container(patched, "app"))
    assert "not installed" in _decisions(patched)["clientId"]["from"]
    assert any("no client id" in w for w in response["warnings"])
    api.crds = True
    _, patched = await webhook.review(_pod({"aadpodidbinding": "other"}), namespace="legacy")
    assert "no AzureIdentityBinding has selector 'other'" in _decisions(patched)["clientId"]["from"]


async def test_two_identities_for_one_selector_pick_neither(
    webhook: Webhook, api: KubeStandIn
) -> None:
    _legacy(api)
    api.azure_identity("legacy", "second", {"clientID": CLIENT})
    api.binding("legacy", "second-binding", {"azureIdentity": "second", "selector": "legacy-app"})
    _, patched = await webhook.review(_pod({"aadpodidbinding": "legacy-app"}), namespace="legacy")
    assert "AZURE_CLIENT_ID" not in _env(_container(patched, "app"))
    assert "binds 2 identities" in _decisions(patched)["clientId"]["from"]


async def test_carry_over_scope(webhook: Webhook, api: KubeStandIn) -> None:
    """Bindings in another namespace count only with --pod-identity cluster."""
    _legacy(api, namespace="identities")
    api.service_account("legacy", "default", {WI + "tenant-id": TENANT})
    pod = _pod({"aadpodidbinding": "legacy-app"})
    _, patched = await webhook.review(pod, namespace="legacy")
    assert "AZURE_CLIENT_ID" not in _env(_container(patched, "app"))
    webhook.configure(pod_identity="cluster")
    _, patched = await webhook.review(pod, namespace="legacy")
    assert _env(_container(patched, "app"))["AZURE_CLIENT_ID"] == OTHER_CLIENT
    webhook.configure(pod_identity="off")
    seen = len(api.seen)
    await webhook.review(pod, namespace="legacy")
    assert not [p for p, _ in api.seen[seen:] if "aadpodidentity" in p]


# -- coexistence and reinvocation ----------------------------------------------------------


def _other_webhooks_pod() -> Obj:
    pod = _example("pod-mutated-native-sidecar.yaml")
    for name in ("azwi-proxy", "azwi-proxy-init"):
        _container(pod, name)["image"] = f"mcr.example/oss/azure/workload-identity/{name}:v1"
    return pod


async def test_another_webhooks_proxy_is_kept_with_a_warning(webhook: Webhook) -> None:
    pod = _other_webhooks_pod()
    response, patched = await webhook.review(pod)
    assert response["allowed"] is True
    assert any("another webhook" in w for w in response["warnings"])
    assert _names(patched["spec"]["initContainers"]) == ["azwi-proxy-init", "azwi-proxy"]
    assert _container(patched, "azwi-proxy")["image"].startswith("mcr.example/")
    assert _decisions(patched)["proxy"] == "kept another webhook's"


async def test_another_webhooks_proxy_replaced_when_asked(webhook: Webhook) -> None:
    webhook.configure(other_proxy="replace")
    response, patched = await webhook.review(_other_webhooks_pod())
    assert "warnings" not in response
    assert _names(patched["spec"]["initContainers"]) == ["azwi-proxy-init", "azwi-proxy"]
    for name in ("azwi-proxy", "azwi-proxy-init"):
        assert _container(patched, name)["image"].startswith("registry.example/imds-proxy")
    assert _decisions(patched)["proxy"].startswith("replaced another webhook's (native sidecar")


async def test_reinvocation_is_idempotent(webhook: Webhook) -> None:
    _, once = await webhook.review(_example("pod.yaml"))
    response, twice = await webhook.review(once)
    assert "patch" not in response and twice == once
    # Another webhook added a container since: it gets the identity, nothing else changes.
    once["spec"]["containers"].append({"name": "added-later", "image": "x"})
    response, thrice = await webhook.review(once)
    env = _env(_container(thrice, "added-later"))
    assert env["AZURE_CLIENT_ID"] == CLIENT
    assert _names(thrice["spec"]["initContainers"]) == ["azwi-proxy-init", "azwi-proxy"]
    assert len([v for v in thrice["spec"]["volumes"] if v["name"] == "azure-identity-token"]) == 1


# -- bad input, other objects, failures -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (
            {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"},
            "admissionReviewVersions",
        ),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "no request"),
        (
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"kind": {}},
            },
            "no uid",
        ),
    ],
)
async def test_a_malformed_review_is_a_400_with_the_reason(
    webhook: Webhook, body: Any, reason: str
) -> None:
    status, text = await webhook.post(body)
    assert status == 400
    assert text.startswith("malformed AdmissionReview:") and reason in text


async def test_other_objects_and_operations_are_allowed_unchanged(webhook: Webhook) -> None:
    deployment = {"group": "apps", "version": "v1", "kind": "Deployment"}
    response, _ = await webhook.review(_guide_pod(), kind=deployment)
    assert response == {"uid": response["uid"], "allowed": True}
    response, _ = await webhook.review(_guide_pod(), operation="UPDATE")
    assert response == {"uid": response["uid"], "allowed": True}
    response, _ = await webhook.review({"kind": "Pod"})
    assert response["allowed"] is False and response["status"]["code"] == 400


@pytest.mark.parametrize("failure", ["missing", "forbidden"])
async def test_an_unreadable_service_account_denies_by_default(
    webhook: Webhook, api: KubeStandIn, failure: str
) -> None:
    pod = _guide_pod()
    if failure == "missing":
        pod["spec"]["serviceAccountName"] = "nobody"
    else:
        api.fail["/api/v1/namespaces/default/serviceaccounts"] = 403
    response, _ = await webhook.review(pod)
    assert response["allowed"] is False and response["status"]["code"] == 503
    message = response["status"]["message"]
    assert "cannot read service account default/" in message and "--on-error deny" in message
    webhook.configure(on_error="allow")
    response, patched = await webhook.review(pod)
    assert response["allowed"] is True and "patch" not in response and patched == pod
    assert "--on-error allow" in response["warnings"][0]


async def test_a_slow_api_server_is_answered_within_the_budget(
    webhook: Webhook, api: KubeStandIn
) -> None:
    api.delay = 5.0
    started = time.monotonic()
    response, _ = await webhook.review(_guide_pod())
    assert time.monotonic() - started < 2.0  # --api-timeout 1 s, far under timeoutSeconds
    assert response["allowed"] is False and "no answer within 1 s" in response["status"]["message"]


async def test_the_api_token_is_sent_and_never_logged(
    webhook: Webhook, api: KubeStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    await webhook.review(_guide_pod())
    assert (
        "/api/v1/namespaces/default/serviceaccounts/workload-identity-sa",
        "Bearer stand-in-token",
    ) in api.seen
    assert "stand-in-token" not in capsys.readouterr().out


async def test_auto_sidecar_form_from_the_server_version(api: KubeStandIn, tmp_path: Path) -> None:
    for version, classic in (("v1.31.4", True), ("v1.32.0", False), ("v1.34.0-rc.1+k3s1", False)):
        api.version = version
        settings = Settings(kubeconfig=str(api.kubeconfig(tmp_path)), sidecar="auto")
        client = kube.Api(kube.credentials(settings.kubeconfig, {}), 1.0)
        mutator = Mutator(settings, client, WebhookMetrics())
        assert mutator.classic is None
        await server.learn_version(mutator, client)
        assert mutator.classic is classic, version
        await client.close()
