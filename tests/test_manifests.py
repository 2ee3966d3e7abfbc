"""The example manifests in deploy/examples: valid Kubernetes objects, and true to the contract.

Schema validation uses the Kubernetes OpenAPI schemas shipped with ``kubernetes-validate``
(offline), in strict mode, so a misspelt field fails as surely as a wrong type. The contract
checks pin what the webhook, the images and the init program agree on: uid 1501, the proxy
port in the annotation, the init container's PROXY_PORT and the proxy's arguments, the
identity environment, and the projected token's mount.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from init.settings import DEFAULT_PROXY_UID
from proxy.wellknown import PROXY_UID, TOKEN_EXCHANGE_AUDIENCE
from tests.support.manifests import EXAMPLES, K8S_VERSION

ROOT = Path(__file__).resolve().parent.parent

PROXY_PORT = "8000"
IDENTITY_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
)
PROBE_COMMAND = ["/proxy", "--probe", f"--proxy-port={PROXY_PORT}"]
GUID = re.compile(r"^[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}$")

Obj = dict[str, Any]


def _documents(path: Path) -> list[Obj]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _all_objects() -> Iterator[tuple[str, Obj]]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in _documents(path):
            yield f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc


def _validate(obj: Obj) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _load_one(name: str) -> Obj:
    docs = _documents(EXAMPLES / name)
    assert len(docs) == 1, f"{name}: expected one object, found {len(docs)}"
    return docs[0]


def _container(containers: list[Obj], name: str) -> Obj:
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"expected one container named {name!r}"
    return found[0]


def _env(container: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


OBJECTS = list(_all_objects())
MUTATED = ["pod-mutated-sidecar.yaml", "pod-mutated-native-sidecar.yaml"]


def test_examples_exist() -> None:
    names = {path.name for path in EXAMPLES.glob("*.yaml")}
    assert {"serviceaccount.yaml", "pod.yaml", *MUTATED} <= names


@pytest.mark.parametrize("obj", [o for _, o in OBJECTS], ids=[i for i, _ in OBJECTS])
def test_valid_against_kubernetes_schema(obj: Obj) -> None:
    _validate(obj)


# Each of these breaks the native-sidecar pod in a way the schema must catch; if any passed,
# the validation above would prove nothing.
def _misspelt_field(pod: Obj) -> None:
    ctx = pod["spec"]["initContainers"][1]["securityContext"]
    ctx["readOnlyRootFileSystem"] = ctx.pop("readOnlyRootFilesystem")


def _uid_as_string(pod: Obj) -> None:
    pod["spec"]["initContainers"][1]["securityContext"]["runAsUser"] = str(PROXY_UID)


def _container_without_name(pod: Obj) -> None:
    del pod["spec"]["containers"][0]["name"]


def _port_as_string(pod: Obj) -> None:
    pod["spec"]["initContainers"][1]["ports"][0]["containerPort"] = PROXY_PORT


@pytest.mark.parametrize(
    "breakage", [_misspelt_field, _uid_as_string, _container_without_name, _port_as_string]
)
def test_schema_rejects_broken_pod(breakage: Any) -> None:
    pod = copy.deepcopy(_load_one("pod-mutated-native-sidecar.yaml"))
    _validate(pod)  # the unbroken pod passes...
    breakage(pod)
    with pytest.raises(kubernetes_validate.ValidationError):  # ...and the broken one fails
        _validate(pod)


def test_annotated_pod_opts_in() -> None:
    pod = _load_one("pod.yaml")
    sa = _load_one("serviceaccount.yaml")
    meta = pod["metadata"]
    assert meta["labels"]["azure.workload.identity/use"] == "true"
    assert meta["annotations"]["azure.workload.identity/inject-proxy-sidecar"] == "true"
    assert meta["annotations"]["azure.workload.identity/proxy-sidecar-port"] == PROXY_PORT
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["metadata"]["namespace"] == sa["metadata"]["namespace"]
    # The user's pod has no proxy yet: the webhook adds it.
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    assert "initContainers" not in pod["spec"]


def test_service_account_names_the_identity() -> None:
    sa = _load_one("serviceaccount.yaml")
    assert GUID.match(sa["metadata"]["annotations"]["azure.workload.identity/client-id"])


def _proxy_and_init(name: str) -> tuple[Obj, Obj, Obj]:
    pod = _load_one(name)
    spec = pod["spec"]
    init = _container(spec["initContainers"], "azwi-proxy-init")
    if name == "pod-mutated-native-sidecar.yaml":
        proxy = _container(spec["initContainers"], "azwi-proxy")
        assert all(c["name"] != "azwi-proxy" for c in spec["containers"])
    else:
        proxy = _container(spec["containers"], "azwi-proxy")
    return pod, init, proxy


@pytest.mark.parametrize("name", MUTATED)
def test_mutated_pod_matches_the_annotated_one(name: str) -> None:
    pod, _, _ = _proxy_and_init(name)
    original = _load_one("pod.yaml")
    assert pod["metadata"] == original["metadata"]
    assert pod["spec"]["serviceAccountName"] == original["spec"]["serviceAccountName"]
    app = _container(pod["spec"]["containers"], "app")
    assert app["image"] == original["spec"]["containers"][0]["image"]


def test_the_init_program_exempts_the_proxys_uid_by_default() -> None:
    # The init image does not ship the proxy package: its default is a copy, kept equal here.
    assert DEFAULT_PROXY_UID == PROXY_UID


@pytest.mark.parametrize("name", MUTATED)
def test_init_container_contract(name: str) -> None:
    pod, init, _ = _proxy_and_init(name)
    annotations = pod["metadata"]["annotations"]
    assert _env(init)["PROXY_PORT"] == annotations["azure.workload.identity/proxy-sidecar-port"]
    # The rules exempt the proxy's uid; the default (1501) must be the uid the proxy runs as.
    assert _env(init).get("PROXY_UID", str(PROXY_UID)) == str(PROXY_UID)
    ctx = init["securityContext"]
    assert ctx["runAsUser"] == 0
    assert "NET_ADMIN" in ctx["capabilities"]["add"]
    assert ctx["privileged"] is True
    assert init.get("restartPolicy") is None, "the init container must run to completion"
    # It runs before the proxy and the app.
    assert pod["spec"]["initContainers"][0] is init


@pytest.mark.parametrize("name", MUTATED)
def test_proxy_container_contract(name: str) -> None:
    _, _, proxy = _proxy_and_init(name)
    assert proxy["args"] == [f"--proxy-port={PROXY_PORT}", "--log-level=info"]
    assert "command" not in proxy, "the image's entrypoint (/proxy) must be used"
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports["imds"] == int(PROXY_PORT)
    ctx = proxy["securityContext"]
    assert ctx["runAsUser"] == PROXY_UID
    assert ctx["runAsGroup"] == PROXY_UID
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert not ctx["capabilities"].get("add")


def test_classic_sidecar_waits_with_post_start_probe() -> None:
    pod, _, proxy = _proxy_and_init("pod-mutated-sidecar.yaml")
    assert proxy["lifecycle"]["postStart"]["exec"]["command"] == PROBE_COMMAND
    # Containers start in order and postStart blocks the next one: the proxy goes first.
    assert pod["spec"]["containers"][0] is proxy


def test_native_sidecar_restarts_and_probes_readyz() -> None:
    pod, init, proxy = _proxy_and_init("pod-mutated-native-sidecar.yaml")
    assert proxy["restartPolicy"] == "Always"
    # After the redirect exists, so the app's first call is redirected.
    assert pod["spec"]["initContainers"] == [init, proxy]
    for probe in ("startupProbe", "readinessProbe"):
        assert proxy[probe]["exec"]["command"] == PROBE_COMMAND
        # `/proxy --probe` polls /readyz for up to 7 s; a shorter timeout would kill it early.
        assert proxy[probe]["timeoutSeconds"] >= 8
    assert "lifecycle" not in proxy


@pytest.mark.parametrize("name", MUTATED)
def test_identity_env_and_token_volume(name: str) -> None:
    pod, _, proxy = _proxy_and_init(name)
    sa = _load_one("serviceaccount.yaml")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    app = _container(pod["spec"]["containers"], "app")
    for container in (proxy, app):
        env = _env(container)
        assert tuple(env) == IDENTITY_ENV
        assert (
            env["AZURE_CLIENT_ID"]
            == sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
        )
        assert env["AZURE_AUTHORITY_HOST"].startswith("https://")
        token_dir, token_name = posixpath.split(env["AZURE_FEDERATED_TOKEN_FILE"])
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == token_dir]
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True
        sources = volumes[mounts[0]["name"]]["projected"]["sources"]
        token = sources[0]["serviceAccountToken"]
        assert token["path"] == token_name
        assert token["audience"] == TOKEN_EXCHANGE_AUDIENCE


def _dockerfile_final_stage(name: str) -> list[str]:
    lines = (ROOT / name).read_text().replace("\\\n", " ").splitlines()
    instructions = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    last_from = max(i for i, ln in enumerate(instructions) if ln.upper().startswith("FROM "))
    return instructions[last_from:]


def test_images_match_the_manifests() -> None:
    """The manifests rely on the images' user and entrypoints; keep them in step."""
    proxy = _dockerfile_final_stage("Dockerfile.proxy")
    assert f"USER {PROXY_UID}:{PROXY_UID}" in proxy
    assert 'ENTRYPOINT ["/proxy"]' in proxy
    init = _dockerfile_final_stage("Dockerfile.init")
    assert 'ENTRYPOINT ["imds-proxy-init"]' in init
    # No shell, no package manager: only what deploy/image/rootfs.py assembled.
    for stage in (proxy, init):
        assert stage[0] == "FROM scratch"
        assert [ln for ln in stage if ln.upper().startswith("COPY ")] == [
            "COPY --from=builder /rootfs /"
        ]
        assert not [ln for ln in stage if ln.upper().startswith("RUN ")]
    # Both can be built from a locally made base (deploy/image-test.sh does).
    for name in ("Dockerfile.proxy", "Dockerfile.init"):
        assert re.search(r"^ARG BASE_IMAGE=\S+$", (ROOT / name).read_text(), re.MULTILINE)
