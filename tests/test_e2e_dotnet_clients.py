""".NET SDKs, unmodified, get their tokens through the real proxy process on loopback.

Azure.Identity and MSAL.NET hard-code the IMDS address; .NET's HttpClient honours
HTTP_PROXY, so they send the proxy absolute-form requests (routed by path), in a clean
environment (no IDENTITY_ENDPOINT, MSI_ENDPOINT or AZURE_* that would select another source).
The clients (tests/dotnet_clients.py):

- Azure.Identity 1.10.3 ManagedIdentityCredential and DefaultAzureCredential, whose chain
  reaches managed identity when nothing else is configured and gives IMDS 1 s per try;
- MSAL.NET ManagedIdentityApplication at 4.56.0 and 4.83.3 (4.79 and later take the later of
  `expires_in` and `expires_on`: the expiry printed must still be the token's own).

Each prints the token, the expiry it computed and its own version; all are checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SECOND_CLIENT_ID
from tests.dotnet_clients import DOTNET_PROJECT, DotnetClients, dotnet_clients
from tests.fake_entra import FakeEntra
from tests.jwt_claims import assert_client_result
from tests.proxy_process import ProxyProcess
from tests.sdk_clients import clean_env, or_skip, proxied_env, run_client

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
UNKNOWN_CLIENT_ID = "7d1b0c9e-3f2a-4b5c-8d6e-000000000000"
CLIENTS = {  # name: (app directory, GetToken's sdk argument, the version it must report)
    "ManagedIdentityCredential": ("azure-identity", "managed-identity", "1.10.3"),
    "DefaultAzureCredential": ("azure-identity", "default", "1.10.3"),
    "MSAL.NET-4.56": ("azure-identity", "msal", "4.56.0"),
    "MSAL.NET-4.83": ("msal-4.83", "msal", "4.83.3"),
}


@pytest.fixture(scope="session")
def dotnet() -> DotnetClients:
    return or_skip(dotnet_clients)


def dotnet_get_token(
    dotnet: DotnetClients,
    client: str,
    env: dict[str, str],
    resource: str,
    client_id: str | None = None,
) -> dict[str, object]:
    app, sdk, version = CLIENTS[client]
    result = run_client(dotnet.argv(app, sdk, resource, client_id), env, DOTNET_PROJECT)
    if "error" not in result:
        assert result["sdk_version"] == version, result
    return result


@pytest.mark.parametrize("client", list(CLIENTS))
def test_dotnet_client_system_assigned(
    client: str, dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    result = dotnet_get_token(dotnet, client, proxied_env(tmp_path, proxy.base), ARM)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
    assert fake_entra.stats()["token_requests"]["total"] == 1


@pytest.mark.parametrize("client", list(CLIENTS))
def test_dotnet_client_user_assigned(
    client: str, dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = proxied_env(tmp_path, proxy.base)
    result = dotnet_get_token(dotnet, client, env, VAULT, SECOND_CLIENT_ID)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=VAULT,
        client_id=SECOND_CLIENT_ID,
    )
    assert fake_entra.stats()["token_requests"]["by_client_id"] == {SECOND_CLIENT_ID: 1}


def test_azure_identity_pointed_by_pod_identity_authority_host(
    dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """Azure.Identity's own override of the IMDS address, no HTTP proxy involved."""
    env = clean_env(tmp_path, AZURE_POD_IDENTITY_AUTHORITY_HOST=proxy.base)
    result = dotnet_get_token(dotnet, "ManagedIdentityCredential", env, ARM)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
