"""Java SDKs, unmodified, get their tokens through the real proxy process.

All three hard-code the IMDS address and the JVM ignores HTTP_PROXY, so each runs with
``-Dhttp.proxyHost/-Dhttp.proxyPort`` in a clean environment (no IDENTITY_ENDPOINT,
MSI_ENDPOINT or AZURE_* that would select another source); nothing leaves loopback:

- com.azure:azure-identity ManagedIdentityCredential: MSAL for Java underneath, driven through
  azure-core's HTTP pipeline (Netty), which reads those properties but always tunnels
  (CONNECT 169.254.169.254:80), so its proxy is a loopback tunnel to the imds-proxy
  (tests/support/connect_tunnel.py). Its other override, AZURE_POD_IDENTITY_AUTHORITY_HOST, makes
  MSAL for Java ask for `//metadata/identity/oauth2/token` (it appends a path that starts
  with two slashes): tested too, as the proxy reads paths in their canonical form;
- msal4j ManagedIdentityApplication on its own (HttpURLConnection), and
- the legacy azure-client-authentication MSICredentials (HttpURLConnection; reads only the
  first line of the body, `expires_on` with Integer.parseInt): plain absolute-form requests
  to the proxy, routed by path.

Each prints the token and the expiry it computed; both are checked against the JWT.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.connect_tunnel import ConnectTunnel
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.jwt_claims import assert_client_result
from tests.support.sdk_clients import (
    JAVA_PROJECT,
    clean_env,
    java_classpath,
    java_proxy_flags,
    or_skip,
    run_client,
)

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
CLIENTS = {
    "azure-identity": "imdsclients.AzureIdentityToken",
    "msal4j": "imdsclients.MsalToken",
    "legacy-msi-credentials": "imdsclients.LegacyMsiToken",
}


@pytest.fixture(scope="session")
def classpath() -> str:
    return or_skip(java_classpath)


def java_get_token(
    classpath: str,
    main: str,
    proxy: ProxyProcess,
    home: Path,
    resource: str,
    client_id: str | None = None,
) -> dict[str, object]:
    with contextlib.ExitStack() as stack:
        port = proxy.port
        if main == CLIENTS["azure-identity"]:
            tunnel = stack.enter_context(ConnectTunnel(proxy.port))
            port = tunnel.port
        argv = [
            "java",
            *java_proxy_flags(port),
            "-cp",
            classpath,
            main,
            resource,
            *([client_id] if client_id else []),
        ]
        result = run_client(argv, clean_env(home), JAVA_PROJECT)
        if port != proxy.port:
            assert tunnel.tunnelled, "the client did not use its proxy"
        return result


@pytest.mark.parametrize("client", list(CLIENTS))
def test_java_client_system_assigned(
    client: str, classpath: str, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    result = java_get_token(classpath, CLIENTS[client], proxy, tmp_path, ARM)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
    assert fake_entra.stats()["token_requests"]["total"] == 1


@pytest.mark.parametrize("client", list(CLIENTS))
def test_java_client_user_assigned(
    client: str, classpath: str, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    result = java_get_token(classpath, CLIENTS[client], proxy, tmp_path, VAULT, SECOND_CLIENT_ID)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=VAULT,
        client_id=SECOND_CLIENT_ID,
    )
    assert fake_entra.stats()["token_requests"]["by_client_id"] == {SECOND_CLIENT_ID: 1}


def test_azure_identity_pointed_by_pod_identity_authority_host(
    classpath: str, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = clean_env(tmp_path, AZURE_POD_IDENTITY_AUTHORITY_HOST=proxy.base)
    argv = ["java", "-cp", classpath, CLIENTS["azure-identity"], ARM]
    result = run_client(argv, env, JAVA_PROJECT)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
    proxy.stop()
    paths = {line["path"] for line in proxy.logs() if line["event"] == "received token request"}
    assert paths == {"//metadata/identity/oauth2/token"}
