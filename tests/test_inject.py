"""`imds-proxy inject` on a corpus of manifests: valid output, idempotent, exactly reversible.

The corpus (tests/manifests/inject/) holds every supported kind, a `kind: List`, multi-document
files with comments, pods that already have init containers and sidecars, and both sequence
indentation styles. Output is validated against the Kubernetes schema exactly as the
deploy/examples manifests are (tests/test_manifests.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy import config
from proxy.inject import cli
from proxy.inject.additions import MODES
from proxy.inject.ledger import ANNOTATION
from tests.support.manifests import EXAMPLES, K8S_VERSION

ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = ROOT / "tests" / "manifests" / "inject"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))
CLIENT = "00000000-0000-0000-0000-000000000001"
TENANT = "00000000-0000-0000-0000-0000000000aa"
IDENTITY = ["--client-id", CLIENT, "--tenant-id", TENANT]
FORMS = [(mode, classic) for mode in MODES for classic in (False, True)]
AZURE_ENV = ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"]
APP_SERVICE_ENV = ["IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET"]
POD_UID = {"fieldRef": {"fieldPath": "metadata.uid"}}

Obj = dict[str, Any]


def _run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _form_args(mode: str, classic: bool) -> list[str]:
    return ["--mode", mode, *(["--classic"] if classic else [])]


def _objects(text: str) -> list[Obj]:
    found: list[Obj] = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        found.extend(doc["items"] if doc.get("kind") == "List" else [doc])
    return found


def _pod(text: str) -> Obj:
    obj = next(o for o in _objects(text) if o["kind"] not in ("ConfigMap", "Service"))
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]  # type: ignore[no-any-return]


def _names(containers: list[Obj] | None) -> list[str]:
    return [c["name"] for c in containers or []]


def _container(pod: Obj, name: str) -> Obj:
    spec = pod["spec"]
    return next(
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    )


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _comment_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("#")]


@pytest.mark.parametrize(("mode", "classic"), FORMS)
@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_inject_validates_is_idempotent_and_reverses(
    path: Path, mode: str, classic: bool, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    original = path.read_text()
    code, injected, _ = _run(capsys, path, *IDENTITY, *_form_args(mode, classic))
    assert code == 0
    assert injected != original
    assert ANNOTATION in injected
    for obj in _objects(injected):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert set(_comment_lines(original)) <= set(_comment_lines(injected))

    first = tmp_path / "injected.yaml"
    first.write_text(injected)
    code, again, _ = _run(capsys, first, *IDENTITY, *_form_args(mode, classic))
    assert (code, again) == (0, injected)

    code, restored, _ = _run(capsys, first, "--uninject")
    assert code == 0
    assert restored == original  # byte for byte


def test_documents_without_pods_pass_through_byte_for_byte(
    capsys: pytest.CaptureFixture[str],
) -> None:
    original = (CORPUS_DIR / "multi.yaml").read_text()
    _, injected, _ = _run(capsys, CORPUS_DIR / "multi.yaml", *IDENTITY)
    config_map = original.split("---\n")[1].split("---   #")[0]
    service = original.split("---\n")[-1]
    assert config_map.startswith("apiVersion: v1\nkind: ConfigMap") and config_map in injected
    assert service.startswith("apiVersion: v1\nkind: Service") and injected.endswith(service)
    assert "---   # a comment on the document marker\n" in injected


def test_redirect_mode_is_the_webhooks_shape(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, CORPUS_DIR / "deployment.yaml", *IDENTITY)
    pod = _pod(out)
    assert _names(pod["spec"]["initContainers"]) == ["azwi-proxy-init", "azwi-proxy"]
    init, proxy, app = (_container(pod, n) for n in ("azwi-proxy-init", "azwi-proxy", "web"))
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    assert _env(init) == {"PROXY_PORT": str(config.Settings.__dataclass_fields__["port"].default)}
    assert proxy["restartPolicy"] == "Always"
    assert "IDENTITY_HEADER" not in _env(proxy)
    env = _env(app)
    assert env["LOG_LEVEL"] == "debug" and next(iter(env)) == "LOG_LEVEL"  # the app's own first
    assert {k: env[k] for k in AZURE_ENV} == {
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
    }
    assert not set(APP_SERVICE_ENV) & set(env)
    (volume,) = pod["spec"]["volumes"]
    token = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {
        "path": "azure-identity-token",
        "audience": "api://AzureADTokenExchange",
        "expirationSeconds": 3600,
    }


def test_metrics_port_is_the_proxys_default(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, CORPUS_DIR / "deployment.yaml", *IDENTITY)
    proxy = _container(_pod(out), "azwi-proxy")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    defaults = config.Settings.__dataclass_fields__
    assert ports == {"imds": defaults["port"].default, "metrics": defaults["metrics_port"].default}


@pytest.mark.parametrize("mode", ["endpoint", "both"])
def test_endpoint_mode_sets_the_app_service_environment_from_the_pod_uid(
    mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _run(capsys, CORPUS_DIR / "deployment.yaml", *IDENTITY, "--mode", mode)
    pod = _pod(out)
    expected_init = ["azwi-proxy-init", "azwi-proxy"] if mode == "both" else ["azwi-proxy"]
    assert _names(pod["spec"]["initContainers"]) == expected_init
    env = _env(_container(pod, "web"))
    url = f"http://127.0.0.1:{config.Settings.__dataclass_fields__['port'].default}/msi/token"
    assert [env[k] for k in APP_SERVICE_ENV] == [url, POD_UID, url, POD_UID]
    # The proxy expects the same secret: the same pod's uid.
    assert _env(_container(pod, "azwi-proxy"))["IDENTITY_HEADER"] == POD_UID


def test_endpoint_mode_needs_no_privilege(capsys: pytest.CaptureFixture[str]) -> None:
    """What the restricted Pod Security Standard asks of every container we add."""
    _, out, _ = _run(capsys, CORPUS_DIR / "deployment.yaml", *IDENTITY, "--mode", "endpoint")
    ctx = _container(_pod(out), "azwi-proxy")["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1501 and ctx["runAsGroup"] == 1501
    assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["readOnlyRootFilesystem"] is True
    assert "privileged: true" not in out and "NET_ADMIN" not in out


def test_classic_sidecar_goes_first_and_holds_the_app_with_post_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = _run(capsys, CORPUS_DIR / "deployment.yaml", *IDENTITY, "--classic")
    pod = _pod(out)
    assert _names(pod["spec"]["containers"]) == ["azwi-proxy", "web"]
    assert _names(pod["spec"]["initContainers"]) == ["azwi-proxy-init"]
    proxy = pod["spec"]["containers"][0]
    assert proxy["lifecycle"]["postStart"]["exec"]["command"][:2] == ["/proxy", "--probe"]
    assert "restartPolicy" not in proxy and "startupProbe" not in proxy


def test_existing_init_containers_and_sidecars(capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS_DIR / "pod-with-init-and-sidecars.yaml"
    _, out, _ = _run(capsys, path, *IDENTITY, "--mode", "both")
    pod = _pod(out)
    names = ["azwi-proxy-init", "azwi-proxy", "setup", "log-shipper"]
    assert _names(pod["spec"]["initContainers"]) == names
    assert _names(pod["spec"]["containers"]) == ["app", "metrics-exporter"]
    # The app's own client id is kept, and --uninject (byte-for-byte test) keeps it too.
    assert _env(_container(pod, "app"))["AZURE_CLIENT_ID"] == "11111111-2222-3333-4444-555555555555"
    # Init containers after the native sidecar can reach it; all get the identity.
    for name in ("setup", "log-shipper", "app", "metrics-exporter"):
        env = _env(_container(pod, name))
        assert set(APP_SERVICE_ENV) <= set(env) and set(AZURE_ENV) <= set(env), name
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["cache", "azure-identity-token"]
    # A classic sidecar starts after every init container: they get no App Service endpoint.
    _, out, _ = _run(capsys, path, *IDENTITY, "--mode", "both", "--classic")
    assert not set(APP_SERVICE_ENV) & set(_env(_container(_pod(out), "setup")))


@pytest.mark.parametrize(
    ("example", "classic"),
    [("pod-mutated-native-sidecar.yaml", False), ("pod-mutated-sidecar.yaml", True)],
)
def test_matches_the_reference_manifests(
    example: str, classic: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Injecting deploy/examples/pod.yaml gives the webhook's pod, plus seccomp and the ledger."""
    expected = yaml.safe_load((EXAMPLES / example).read_text())
    metrics = _container(expected, "azwi-proxy")["ports"][1]["containerPort"]
    argv = [*IDENTITY, "--metrics-port", str(metrics), *(["--classic"] if classic else [])]
    _, out, _ = _run(capsys, EXAMPLES / "pod.yaml", *argv)
    pod = yaml.safe_load(out)
    assert ANNOTATION in pod["metadata"]["annotations"]
    del pod["metadata"]["annotations"][ANNOTATION]
    proxy_ctx = _container(pod, "azwi-proxy")["securityContext"]
    assert proxy_ctx.pop("seccompProfile") == {"type": "RuntimeDefault"}
    assert pod == expected


def test_host_network_pods_are_refused_and_nothing_is_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _run(capsys, CORPUS_DIR / "refused" / "hostnetwork.yaml", *IDENTITY)
    assert code == 1
    assert out == ""  # not even the ConfigMap before it
    assert err.count("\n") == 1
    assert "document 2 (DaemonSet/node-agent)" in err and "hostNetwork" in err


def test_without_identity_flags_the_webhook_label_is_required(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Labelled for the webhook: it adds the AZURE_* variables and the token to every container.
    code, out, _ = _run(capsys, EXAMPLES / "pod.yaml")
    assert code == 0
    pod = yaml.safe_load(out)
    assert "volumes" not in pod["spec"]
    assert not set(AZURE_ENV) & set(_env(_container(pod, "azwi-proxy")))
    # Not labelled, no flags: nothing would give the proxy an identity.
    code, out, err = _run(capsys, CORPUS_DIR / "compact.yaml")
    assert (code, out) == (1, "")
    assert "azure.workload.identity/use" in err
    code, _, err = _run(capsys, CORPUS_DIR / "compact.yaml", "--client-id", CLIENT)
    assert code == 1 and "both --client-id and --tenant-id" in err


def test_a_pod_the_webhook_already_mutated_is_left_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = EXAMPLES / "pod-mutated-native-sidecar.yaml"
    code, out, err = _run(capsys, path, *IDENTITY)
    assert (code, out) == (0, path.read_text())
    assert "already has a proxy" in err


def test_input_that_is_not_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nspec: [unclosed\n")
    code, out, err = _run(capsys, bad, *IDENTITY)
    assert (code, out) == (2, "")
    assert err.startswith(f"imds-proxy inject: {bad}:") and err.count("\n") == 1


def test_the_real_command_reads_stdin_and_reverses() -> None:
    """The installed `imds-proxy inject` as a pipeline stage: stdin in, stdout out."""
    command = [sys.executable, "-m", "proxy", "inject"]
    original = (CORPUS_DIR / "multi.yaml").read_text()
    injected = subprocess.run(
        [*command, "-", *IDENTITY, "--mode", "both"],
        input=original,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert injected.count("name: azwi-proxy\n") == 2  # the StatefulSet and the DaemonSet
    restored = subprocess.run(
        [*command, "--uninject"],
        input=injected,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert restored == original


@pytest.mark.parametrize(
    ("manifest", "argv", "reason"),
    [
        (
            f"kind: Pod\nmetadata:\n  annotations:\n    {ANNOTATION}: '{{bad'\n"
            "spec:\n  containers:\n    - name: a\n",
            ["--uninject"],
            "cannot be read",
        ),
        ("kind: Pod\nspec:\n  containers:\n    - image: a\n", IDENTITY, "needs a name"),
    ],
)
def test_pods_it_cannot_handle_are_refused_in_one_line(
    manifest: str,
    argv: list[str],
    reason: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(manifest)
    code, out, err = _run(capsys, path, *argv)
    assert (code, out) == (1, "")
    assert reason in err and err.count("\n") == 1


def test_client_id_must_be_a_guid(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(CORPUS_DIR / "compact.yaml"), "--client-id", "web", "--tenant-id", TENANT])
    assert exit_info.value.code == 2
    assert "--client-id must be" in capsys.readouterr().err


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_crlf_line_ends_are_kept(
    path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    original = path.read_bytes().replace(b"\n", b"\r\n")
    source = tmp_path / "crlf.yaml"
    source.write_bytes(original)
    _, injected, _ = _run(capsys, source, *IDENTITY, "--mode", "both")
    assert injected.count("\n") == injected.count("\r\n") > original.count(b"\n")
    first = tmp_path / "injected.yaml"
    first.write_bytes(injected.encode())
    assert _run(capsys, first, *IDENTITY, "--mode", "both")[1] == injected
    assert _run(capsys, first, "--uninject")[1].encode() == original


def test_a_classic_sidecar_in_a_job_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, CORPUS_DIR / "batch.yaml", *IDENTITY, "--classic")
    assert code == 0
    assert "document 1 (Job/migrate)" in err and "document 2 (CronJob/nightly)" in err
    assert "keeps a Job's pod running" in err
    assert _run(capsys, CORPUS_DIR / "batch.yaml", *IDENTITY)[2] == ""  # native: no warning


def test_another_mode_on_an_injected_pod_changes_nothing_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    injected = tmp_path / "injected.yaml"
    injected.write_text(_run(capsys, CORPUS_DIR / "deployment.yaml", *IDENTITY)[1])
    code, out, err = _run(capsys, injected, *IDENTITY, "--mode", "endpoint")
    assert (code, out) == (0, injected.read_text())
    assert "already injected with --mode redirect" in err
