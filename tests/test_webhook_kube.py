"""Where the webhook's API credentials come from, and how the reads behave: in-cluster files
(the token re-read on every call, as kubelet rotates it), a kubeconfig (embedded CA over
TLS, relative paths, unsupported users refused), and an API server's Status as the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.devissuer.pki import generate_tls_files
from proxy.webhook import kube
from tests.support.kube_stand_in import KubeStandIn


async def test_in_cluster_token_is_read_on_every_call(tmp_path: Path) -> None:
    tls = generate_tls_files(tmp_path / "tls")
    with KubeStandIn(tls=tls) as api:
        api.namespace("default")
        root = tmp_path / "serviceaccount"
        root.mkdir()
        (root / "ca.crt").write_bytes(tls.ca_bundle.read_bytes())
        (root / "token").write_text("first\n")
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        client = kube.Api(kube.in_cluster(env, root), timeout=5)
        try:
            await client.get("/api/v1/namespaces/default")
            (root / "token").write_text("second\n")  # kubelet rotated it
            await client.get("/api/v1/namespaces/default")
        finally:
            await client.close()
        assert [auth for _, auth in api.seen] == ["Bearer first", "Bearer second"]


def test_outside_a_cluster_without_a_kubeconfig() -> None:
    with pytest.raises(kube.ConfigError, match="KUBERNETES_SERVICE_HOST"):
        kube.credentials(None, {})


async def test_kubeconfig_with_an_embedded_ca_over_tls(tmp_path: Path) -> None:
    tls = generate_tls_files(tmp_path / "tls")
    with KubeStandIn(tls=tls, version="v1.33.2") as api:
        creds = kube.credentials(None, {"KUBECONFIG": str(api.kubeconfig(tmp_path))})
        assert creds.ca_file is not None and Path(creds.ca_file).stat().st_mode & 0o077 == 0
        client = kube.Api(creds, timeout=5)
        try:
            assert await client.server_version() == (1, 33)
        finally:
            await client.close()


def test_kubeconfig_paths_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "config"
    path.write_text(
        "current-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', "
        "certificate-authority: ca.pem}}]\n"
        "users: [{name: u, user: {client-certificate: u.pem, client-key: u-key.pem}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    creds = kube.from_kubeconfig(str(path), tmp_path)
    assert creds.ca_file == str(tmp_path / "conf" / "ca.pem")
    assert creds.client_cert == str(tmp_path / "conf" / "u.pem")
    assert creds.server == "https://127.0.0.1:6443"


@pytest.mark.parametrize(
    ("user", "says"),
    [("{exec: {command: kubelogin}}", "not supported"), ("", "cannot read")],
)
def test_unusable_kubeconfigs_say_why(tmp_path: Path, user: str, says: str) -> None:
    path = tmp_path / "config"
    users = f"users: [{{name: u, user: {user}}}]\n" if user else ""
    path.write_text(
        "current-context: c\nclusters: [{name: k, cluster: {server: 'https://x'}}]\n"
        f"{users}contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
    )
    with pytest.raises(kube.ConfigError, match=says):
        kube.from_kubeconfig(str(path), tmp_path)


async def test_an_api_status_is_the_reason(tmp_path: Path) -> None:
    with KubeStandIn() as api:
        client = kube.Api(kube.credentials(str(api.kubeconfig(tmp_path)), {}), timeout=5)
        try:
            with pytest.raises(kube.ApiError) as raised:
                await client.get("/api/v1/namespaces/default/serviceaccounts/nobody")
        finally:
            await client.close()
    assert raised.value.status == 404
    assert str(raised.value) == (
        "GET /api/v1/namespaces/default/serviceaccounts/nobody: 404 'nobody' not found"
    )
