"""The real API server accepts what `imds-proxy inject` writes, in every mode.

A schema check (tests/test_inject.py) cannot see defaulting, admission or validation that
only the API server does (a native sidecar's restartPolicy, probe rules, Pod Security).
Every manifest of the inject corpus, after inject in each mode, passes a server-side dry
run; endpoint mode runs, for real, in a namespace enforcing the `restricted` standard,
which a redirect-mode pod (privileged init container) cannot enter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.kube import Kube
from tests.cluster.workload import (
    APP,
    ARM,
    CLIENT_ID,
    PROXY,
    Workload,
    _pod_specs,
    deploy,
    inject,
    json_lines,
)

CORPUS = Path(__file__).resolve().parents[1] / "manifests" / "inject"
MODES = [(m, c) for m in ("redirect", "endpoint", "both") for c in (False, True)]


def _in_namespace(doc: dict[str, Any], namespace: str) -> None:
    doc.setdefault("metadata", {})["namespace"] = namespace
    for item in doc.get("items") or []:
        _in_namespace(item, namespace)


def _service_accounts(docs: list[dict[str, Any]]) -> set[str]:
    return {
        spec["serviceAccountName"]
        for doc in docs
        for spec in _pod_specs(doc)
        if spec.get("serviceAccountName")
    }


@pytest.mark.parametrize(
    ("mode", "classic"), MODES, ids=[f"{m}-{(c and 'classic') or 'native'}" for m, c in MODES]
)
def test_every_injected_manifest_passes_a_server_side_dry_run(
    kube: Kube, namespace: str, mode: str, classic: bool
) -> None:
    files = sorted(CORPUS.glob("*.yaml"))
    assert files
    refused: list[str] = []
    for path in files:
        docs = [d for d in yaml.safe_load_all(inject(path.read_text(), mode, classic)) if d]
        for doc in docs:
            _in_namespace(doc, namespace)
        for sa in _service_accounts(docs):
            kube.run("-n", namespace, "create", "serviceaccount", sa, check=False)
        text = yaml.safe_dump_all(docs, sort_keys=False)
        proc = kube.run(
            "-n", namespace, "apply", "--dry-run=server", "-f", "-", input=text, check=False
        )
        if proc.returncode != 0:
            refused.append(f"{path.name}: {proc.stderr.strip()}")
    assert not refused, "\n".join(refused)


RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture
def restricted_namespace(kube: Kube, namespace: str) -> str:
    labels = ",".join(f"{k}={v}" for k, v in RESTRICTED_LABELS.items())
    kube.run("label", "namespace", namespace, *labels.split(","), "--overwrite")
    return namespace


def test_endpoint_mode_runs_under_the_restricted_standard(
    kube: Kube, restricted_namespace: str
) -> None:
    ns = restricted_namespace
    workload = Workload(ns, kube.jwks(), mode="endpoint")
    pod = deploy(kube, workload)
    tokens: list[Any] = []

    def got_token() -> bool:
        lines = json_lines(kube.logs(ns, pod, APP))
        tokens[:] = [x for x in lines if x.get("event") == "token"]
        return any(x.get("status") == 200 for x in tokens)

    kube.wait_for(got_token, 60, "the app's token through the App Service endpoint")
    ok = next(x for x in tokens if x.get("status") == 200)
    assert ok["claims"]["aud"] == ARM and ok["claims"]["appid"] == CLIENT_ID
    events = [str(x.get("event")) for x in json_lines(kube.logs(ns, pod, PROXY))]
    assert "received app service token request" in events, kube.evidence(ns, pod)
    # Endpoint mode has no redirect: no init container at all.
    spec = kube.json("-n", ns, "get", "pod", pod)["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["fake-entra", PROXY]


def test_a_redirect_mode_pod_is_refused_by_the_restricted_standard(
    kube: Kube, restricted_namespace: str
) -> None:
    ns = restricted_namespace
    deployment = next(
        d
        for d in yaml.safe_load_all(Workload(ns, kube.jwks(), mode="redirect").injected())
        if d and d["kind"] == "Deployment"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "redirect", "namespace": ns},
        "spec": deployment["spec"]["template"]["spec"],
    }
    kube.run("-n", ns, "create", "serviceaccount", "workload", check=False)
    proc = kube.run(
        "-n", ns, "apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert proc.returncode != 0
    assert 'violates PodSecurity "restricted' in proc.stderr, proc.stderr
